//! Process facts the benchmarks report: resident memory from `/proc/PID/status` and the open-file
//! limit, raised at start so tens of thousands of sockets fit.

use std::io;

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Resident set size of a process, in bytes (`VmRSS` of `/proc/PID/status`).
pub fn rss_bytes(pid: &str) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vm_rss(&status).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS line"))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut fields = line["VmRSS:".len()..].split_whitespace();
    let kib: u64 = fields.next()?.parse().ok()?;
    (fields.next()? == "kB").then_some(kib * 1024)
}

pub fn own_rss_bytes() -> u64 {
    rss_bytes("self").unwrap_or(0)
}

/// Raises the soft (and, if allowed, hard) RLIMIT_NOFILE; returns (soft, hard) now in force.
pub fn raise_nofile_limit() -> (u64, u64) {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return (0, 0);
    };
    // The kernel ceiling; raising the hard limit above the old one needs CAP_SYS_RESOURCE.
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(hard)
        .min(1 << 20);
    if ceiling > hard && setrlimit(Resource::RLIMIT_NOFILE, ceiling, ceiling).is_ok() {
        return (ceiling, ceiling);
    }
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return (hard, hard);
    }
    (soft, hard)
}

/// CPU time (user + system, all threads) a process has used, in seconds.
pub fn cpu_seconds(pid: &str) -> io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_cpu_ticks(&stat)
        .map(|ticks| ticks as f64 / CLOCK_TICKS_PER_SECOND)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc/PID/stat"))
}

/// USER_HZ, which Linux fixes at 100 on every architecture this tool runs on.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// utime + stime from /proc/PID/stat. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from the last ')'.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vm_rss() {
        assert_eq!(parse_vm_rss("Name:\tx\nVmRSS:\t   1234 kB\n"), Some(1234 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\tlots kB\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\t12 MB\n"), None);
    }

    #[test]
    fn parses_cpu_ticks() {
        let stat = "42 (a b) c)) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert_eq!(parse_cpu_ticks("42 (x) S 1 2"), None);
        assert_eq!(parse_cpu_ticks("no parenthesis"), None);
        assert!(cpu_seconds("self").is_ok_and(|s| s >= 0.0));
        assert!(cpu_seconds("0").is_err());
    }

    #[test]
    fn reads_own_rss_and_limit() {
        assert!(own_rss_bytes() > 0);
        assert!(rss_bytes("0").is_err());
        let (soft, hard) = raise_nofile_limit();
        assert!(soft > 0 && soft <= hard);
    }
}

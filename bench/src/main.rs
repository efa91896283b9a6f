//! `parley-load`: a lean XMPP load generator for comparing Parley, Prosody and ejabberd.
//!
//! It owns its own minimal client (raw streams, STARTTLS or direct TLS, SASL PLAIN/SCRAM, bind)
//! so that tens of thousands of sessions cost little memory, and three scenarios: `idle`
//! (memory per session), `login-storm` (logins/s, latency), `chat` (throughput, latency, loss) and
//! `roster-login` (shared-group rosters and presence fan-out at login).
//! It is a benchmark tool: it prints figures and asserts nothing about the server. It must not
//! depend on any Parley crate, so it measures every server through the same wire protocol only.

mod accounts;
mod chat;
mod conn;
mod hist;
mod idle;
mod roster;
mod run;
mod sasl;
mod session;
mod storm;
mod sys;
mod xml;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::sasl::Mechanism;
use crate::session::{Target, TlsMode};

#[derive(Debug, Parser)]
#[command(
    name = "parley-load",
    about = "XMPP load generator (idle memory, login storm, chat, roster-heavy login)"
)]
struct Cli {
    /// Server address to connect to (benchmarks are meant for loopback).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 5222)]
    port: u16,
    /// XMPP domain (stream `to`, TLS server name, JID domain).
    #[arg(long, default_value = "localhost")]
    domain: String,
    #[arg(long, value_enum, default_value = "starttls")]
    tls: TlsMode,
    #[arg(long, value_enum, default_value = "SCRAM-SHA-256")]
    mech: Mechanism,
    /// Account pattern over n in 1..=N: `USER:PASSWORD` with `{n}` substituted.
    #[arg(long, default_value = "user{n}:pass{n}")]
    users: String,
    /// File with `jid password` per line (instead of --users).
    #[arg(long)]
    users_file: Option<PathBuf>,
    /// Number of accounts the --users pattern covers (default: the scenario's --sessions).
    #[arg(long)]
    user_count: Option<usize>,
    /// PEM file of the CA (or self-signed certificate) to trust.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Accept any server certificate.
    #[arg(long)]
    insecure: bool,
    /// Sessions started per second (0 = unlimited).
    #[arg(long, default_value_t = 0.0)]
    connect_rate: f64,
    /// Time limit for each network step of a login.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    step_timeout: Duration,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Open N sessions, hold them, report the server's resident memory per session.
    Idle {
        #[arg(long)]
        sessions: usize,
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        hold: Duration,
        /// Server process whose VmRSS is sampled.
        #[arg(long)]
        server_pid: Option<u32>,
        /// Logins in progress at once.
        #[arg(long, default_value_t = 100)]
        concurrency: usize,
    },
    /// Full logins back to back (connect → presence → close); logins/s and latency.
    LoginStorm {
        /// Total logins to perform (accounts are reused round-robin).
        #[arg(long)]
        sessions: usize,
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
    },
    /// Sessions send chat messages to random online peers; throughput, latency, loss.
    Chat {
        #[arg(long)]
        sessions: usize,
        /// Total messages per second, or `max` (bounded by --window messages in flight).
        #[arg(long, default_value = "max", value_parser = parse_rate)]
        rate: Rate,
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        duration: Duration,
        /// How long to wait for messages still in flight after the run.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        drain: Duration,
        #[arg(long, default_value_t = 1000)]
        window: usize,
        #[arg(long, default_value_t = 100)]
        concurrency: usize,
        /// Server process whose CPU time per delivered message is measured.
        #[arg(long)]
        server_pid: Option<u32>,
    },
    /// Users in shared roster groups log in and stay online; fan-out cost and settle time.
    RosterLogin {
        #[arg(long)]
        sessions: usize,
        /// Members per shared group (account i is in group g{i / size + 1}).
        #[arg(long, default_value_t = 500)]
        group_size: usize,
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
        /// Longest wait, after the last login, for every member to see every other's presence.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        settle: Duration,
        /// Server process whose CPU time is measured.
        #[arg(long)]
        server_pid: Option<u32>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Rate {
    Max,
    PerSecond(f64),
}

fn parse_rate(text: &str) -> Result<Rate, String> {
    if text == "max" {
        return Ok(Rate::Max);
    }
    match text.parse::<f64>() {
        Ok(r) if r > 0.0 && r.is_finite() => Ok(Rate::PerSecond(r)),
        _ => Err(format!(
            "expected a positive number of messages/s or 'max', got {text:?}"
        )),
    }
}

/// `30s`, `500ms`, `2m`, or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: f64 = number.parse().map_err(|_| format!("bad duration {text:?}"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("bad duration unit in {text:?} (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("bad duration {text:?}"))
}

impl Scenario {
    fn sessions(&self) -> usize {
        match self {
            Scenario::Idle { sessions, .. }
            | Scenario::LoginStorm { sessions, .. }
            | Scenario::Chat { sessions, .. }
            | Scenario::RosterLogin { sessions, .. } => *sessions,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let (soft, hard) = sys::raise_nofile_limit();
    eprintln!("RLIMIT_NOFILE: soft {soft}, hard {hard}");
    let sessions = cli.scenario.sessions();
    // Each session needs one descriptor here; leave room for the runtime's own.
    if (sessions as u64).saturating_add(64) > soft && !matches!(cli.scenario, Scenario::LoginStorm { .. }) {
        eprintln!("warning: {sessions} sessions exceed the open-file limit {soft}; some will fail");
    }
    let accounts = match &cli.users_file {
        Some(path) => accounts::from_file(path)?,
        None => accounts::from_pattern(&cli.users, cli.user_count.unwrap_or(sessions))?,
    };
    if !matches!(cli.scenario, Scenario::LoginStorm { .. }) {
        accounts::require(&accounts, sessions)?;
    }
    let tls_config = conn::client_config(cli.ca.as_deref(), cli.insecure)?;
    let target = Target {
        host: cli.host,
        port: cli.port,
        domain: cli.domain,
        tls: cli.tls,
        mechanism: cli.mech,
        tls_config,
        step_timeout: cli.step_timeout,
    };
    let ctx = Arc::new(run::Context {
        target,
        accounts,
        connect_rate: cli.connect_rate,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(async move {
        match cli.scenario {
            Scenario::Idle {
                sessions,
                hold,
                server_pid,
                concurrency,
            } => {
                idle::run(
                    ctx,
                    idle::IdleOptions {
                        sessions,
                        hold,
                        server_pid,
                        concurrency,
                    },
                )
                .await
            }
            Scenario::LoginStorm {
                sessions,
                concurrency,
            } => {
                storm::run(
                    ctx,
                    storm::StormOptions {
                        logins: sessions,
                        concurrency,
                    },
                )
                .await
            }
            Scenario::Chat {
                sessions,
                rate,
                duration,
                drain,
                window,
                concurrency,
                server_pid,
            } => {
                let rate = match rate {
                    Rate::Max => None,
                    Rate::PerSecond(r) => Some(r),
                };
                chat::run(
                    ctx,
                    chat::ChatOptions {
                        sessions,
                        rate,
                        duration,
                        drain,
                        window,
                        concurrency,
                        server_pid,
                    },
                )
                .await
            }
            Scenario::RosterLogin {
                sessions,
                group_size,
                concurrency,
                settle,
                server_pid,
            } => {
                roster::run(
                    ctx,
                    roster::RosterOptions {
                        sessions,
                        group_size,
                        concurrency,
                        settle,
                        server_pid,
                    },
                )
                .await
            }
        }
    })?;
    println!("load tool peak: RSS {:.1} MiB", sys::mib(sys::own_rss_bytes()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("max"), Ok(Rate::Max));
        assert_eq!(parse_rate("2500"), Ok(Rate::PerSecond(2500.0)));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn cli_parses_a_full_command() {
        let cli = Cli::try_parse_from([
            "parley-load",
            "--port",
            "5322",
            "--mech",
            "SCRAM-SHA-1",
            "--tls",
            "direct",
            "--insecure",
            "chat",
            "--sessions",
            "10",
            "--rate",
            "100",
            "--duration",
            "5s",
        ])
        .unwrap();
        assert_eq!(cli.port, 5322);
        assert_eq!(cli.mech, Mechanism::ScramSha1);
        assert_eq!(cli.tls, TlsMode::Direct);
        assert_eq!(cli.scenario.sessions(), 10);
        assert!(Cli::try_parse_from(["parley-load", "--mech", "MD5", "idle", "--sessions", "1"]).is_err());
    }
}

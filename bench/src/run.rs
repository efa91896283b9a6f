//! What every scenario shares: the run context, connection pacing, failure tallies and the
//! paced, bounded-concurrency establishment of N sessions.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::session::{self, Account, Session, SessionError, Target};

pub struct Context {
    pub target: Target,
    pub accounts: Vec<Account>,
    /// Sessions started per second across the run; 0 means as fast as concurrency allows.
    pub connect_rate: f64,
}

/// Spaces session starts `1/rate` apart from a common origin, whatever task asks.
pub struct Pacer {
    origin: tokio::time::Instant,
    interval: Option<Duration>,
    next_slot: AtomicU64,
}

impl Pacer {
    pub fn new(rate: f64) -> Self {
        let interval = (rate > 0.0 && rate.is_finite()).then(|| Duration::from_secs_f64(1.0 / rate));
        Self {
            origin: tokio::time::Instant::now(),
            interval,
            next_slot: AtomicU64::new(0),
        }
    }

    pub async fn wait(&self) {
        if let Some(interval) = self.interval {
            let slot = self.next_slot.fetch_add(1, Ordering::Relaxed);
            let at = self.origin + interval.mul_f64(slot as f64);
            tokio::time::sleep_until(at).await;
        }
    }
}

/// Failures counted by cause.
#[derive(Default)]
pub struct Failures(Mutex<BTreeMap<String, u64>>);

impl Failures {
    pub fn add(&self, error: &SessionError) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(error.kind()).or_default() += 1;
    }

    pub fn add_kind(&self, kind: String) {
        *self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind)
            .or_default() += 1;
    }

    pub fn total(&self) -> u64 {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).values().sum()
    }

    pub fn print(&self) {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for (kind, count) in map.iter() {
            println!("  failure  {count:>8}  {kind}");
        }
    }
}

pub struct Established {
    pub sessions: Vec<(usize, Session)>,
    pub failures: Arc<Failures>,
    pub elapsed: Duration,
}

/// Logs in accounts `0..count` (paced, at most `concurrency` handshakes at once), each going
/// online with roster and presence. Every login is bounded by the target's step timeouts.
pub async fn establish(ctx: &Arc<Context>, count: usize, concurrency: usize) -> Established {
    let started = Instant::now();
    let pacer = Arc::new(Pacer::new(ctx.connect_rate));
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let failures = Arc::new(Failures::default());
    let done = Arc::new(AtomicU64::new(0));
    let progress = tokio::spawn(report_progress(done.clone(), failures.clone(), count as u64));
    let mut tasks = JoinSet::new();
    for index in 0..count {
        pacer.wait().await;
        let Ok(permit) = gate.clone().acquire_owned().await else {
            break;
        };
        let ctx = ctx.clone();
        let failures = failures.clone();
        let done = done.clone();
        tasks.spawn(async move {
            let result = login_online(&ctx, index).await;
            drop(permit);
            done.fetch_add(1, Ordering::Relaxed);
            match result {
                Ok(session) => Some((index, session)),
                Err(error) => {
                    failures.add(&error);
                    None
                }
            }
        });
    }
    let mut sessions = Vec::with_capacity(count);
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Some(ok)) => sessions.push(ok),
            Ok(None) => {}
            Err(join_error) => failures.add_kind(format!("task: {join_error}")),
        }
    }
    progress.abort();
    Established {
        sessions,
        failures,
        elapsed: started.elapsed(),
    }
}

async fn login_online(ctx: &Context, index: usize) -> Result<Session, SessionError> {
    let mut session = session::login(&ctx.target, &ctx.accounts[index]).await?;
    session.go_online(&ctx.target, true).await?;
    Ok(session)
}

async fn report_progress(done: Arc<AtomicU64>, failures: Arc<Failures>, total: u64) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    loop {
        tick.tick().await;
        let finished = done.load(Ordering::Relaxed);
        eprintln!(
            "  .. {finished}/{total} logins finished, {} failed",
            failures.total()
        );
    }
}

/// The bare JID to address an account at.
pub fn bare_jid(account: &Account, domain: &str) -> String {
    if account.user.contains('@') {
        account.user.clone()
    } else {
        format!("{}@{domain}", account.user)
    }
}

pub fn millis(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pacer_spaces_starts() {
        let pacer = Pacer::new(10.0);
        let t0 = tokio::time::Instant::now();
        for _ in 0..5 {
            pacer.wait().await;
        }
        let elapsed = t0.elapsed();
        assert!(elapsed >= Duration::from_millis(390), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(500), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_pacer_never_waits() {
        let pacer = Pacer::new(0.0);
        let t0 = tokio::time::Instant::now();
        for _ in 0..1000 {
            pacer.wait().await;
        }
        assert_eq!(t0.elapsed(), Duration::ZERO);
    }

    #[test]
    fn failures_count_by_kind_and_jids() {
        let failures = Failures::default();
        failures.add(&SessionError::Closed);
        failures.add(&SessionError::Closed);
        failures.add(&SessionError::AuthFailed("not-authorized".into()));
        assert_eq!(failures.total(), 3);
        let account = Account {
            user: "u1".into(),
            password: "p".into(),
        };
        assert_eq!(bare_jid(&account, "localhost"), "u1@localhost");
        let full = Account {
            user: "u1@example.org".into(),
            password: "p".into(),
        };
        assert_eq!(bare_jid(&full, "localhost"), "u1@example.org");
    }
}

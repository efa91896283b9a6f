//! Scenario `login-storm`: C workers run full logins back to back (connect, TLS, SASL, bind,
//! presence, close) until N logins are done; reports logins/s and login latency quantiles.
//! Latency runs from the TCP connect to the initial presence written; the close is not counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::hist::Histogram;
use crate::run::{Context, Failures, Pacer, millis};
use crate::session;

pub struct StormOptions {
    pub logins: usize,
    pub concurrency: usize,
}

pub async fn run(ctx: Arc<Context>, options: StormOptions) -> anyhow::Result<()> {
    anyhow::ensure!(!ctx.accounts.is_empty(), "no accounts");
    let next = Arc::new(AtomicUsize::new(0));
    let latency = Arc::new(Histogram::default());
    let failures = Arc::new(Failures::default());
    let pacer = Arc::new(Pacer::new(ctx.connect_rate));
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..options.concurrency.max(1) {
        let (ctx, next, latency, failures, pacer) = (
            ctx.clone(),
            next.clone(),
            latency.clone(),
            failures.clone(),
            pacer.clone(),
        );
        let total = options.logins;
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return;
                }
                pacer.wait().await;
                let account = &ctx.accounts[i % ctx.accounts.len()];
                let t0 = Instant::now();
                let result = async {
                    let mut s = session::login(&ctx.target, account).await?;
                    s.go_online(&ctx.target, false).await?;
                    Ok::<_, session::SessionError>(s)
                }
                .await;
                match result {
                    Ok(s) => {
                        latency.record(t0.elapsed().as_micros() as u64);
                        s.close(Duration::from_secs(5)).await;
                    }
                    Err(e) => failures.add(&e),
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);
    let ok = latency.count();
    let rate = ok as f64 / elapsed;
    println!("scenario: login-storm");
    println!(
        "logins requested: {}  concurrency: {}",
        options.logins, options.concurrency
    );
    println!("logins ok:        {ok}");
    println!("logins failed:    {}", failures.total());
    failures.print();
    println!("elapsed:          {elapsed:.2} s");
    println!("logins/s:         {rate:.1}");
    println!(
        "login latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        millis(latency.quantile(0.5)),
        millis(latency.quantile(0.9)),
        millis(latency.quantile(0.99)),
        millis(latency.max())
    );
    println!(
        "RESULT scenario=login-storm ok={ok} failed={} logins_per_s={rate:.1} p50_ms={:.2} p99_ms={:.2}",
        failures.total(),
        millis(latency.quantile(0.5)),
        millis(latency.quantile(0.99))
    );
    Ok(())
}

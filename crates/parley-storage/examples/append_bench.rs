//! Group-commit throughput of `RedbStore`: K concurrent tasks append N durable archive records of
//! ~400 bytes, then apply single-put KV batches, then time MAM-style queries on the result.
//! Figures are printed, never asserted.
//!
//! `cargo run -p parley-storage --release --example append_bench -- [tasks] [records] [kv_batches] [owners]`
//! (defaults 64, 200000, 50000, 1000). Throughput is roughly (records per commit) / (commit time):
//! more concurrent appenders make bigger groups; more distinct owners per commit dirty more pages.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parley_storage::{Archive, ArchiveQuery, KeyValue, NewRecord, RedbStore, Space, WriteBatch};

const PEERS: usize = 50;

fn arg(position: usize, default: usize) -> usize {
    std::env::args()
        .nth(position)
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn report(label: &str, count: usize, elapsed: Duration, mut latencies: Vec<Duration>) {
    latencies.sort_unstable();
    println!(
        "{label}: {count} in {:.2}s = {:.0}/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        percentile(&latencies, 1.0).as_secs_f64() * 1e3,
    );
}

/// Runs `tasks` tasks that together call `operation` `total` times; returns every call's latency.
async fn run_concurrently<F, Fut>(tasks: usize, total: usize, operation: F) -> (Duration, Vec<Duration>)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let operation = Arc::new(operation);
    let started = Instant::now();
    let mut handles = Vec::new();
    for task in 0..tasks {
        let operation = Arc::clone(&operation);
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = task;
            while n < total {
                let call = Instant::now();
                operation(n).await;
                latencies.push(call.elapsed());
                n += tasks;
            }
            latencies
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    for handle in handles {
        latencies.extend(handle.await.expect("bench task panicked"));
    }
    (started.elapsed(), latencies)
}

#[tokio::main]
async fn main() {
    let tasks = arg(1, 64).max(1);
    let records = arg(2, 200_000);
    let kv_batches = arg(3, 50_000);
    let owners = arg(4, 1000).max(1);
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(RedbStore::open(&dir.path().join("bench.redb")).expect("open store"));
    println!(
        "RedbStore in {}, {tasks} tasks, {owners} owners",
        dir.path().display()
    );

    let payload = Arc::new(vec![b'x'; 400]);
    let appender = Arc::clone(&store);
    let (elapsed, latencies) = run_concurrently(tasks, records, move |n| {
        let (store, payload) = (Arc::clone(&appender), Arc::clone(&payload));
        async move {
            let record = NewRecord {
                timestamp_micros: n as i64,
                with: format!("peer{}@example.com", n % PEERS),
                payload: payload.to_vec(),
            };
            store
                .append(Space::Compliance, &format!("user{}", n % owners), record)
                .await
                .expect("append");
        }
    })
    .await;
    report("durable appends", records, elapsed, latencies);

    let writer = Arc::clone(&store);
    let (elapsed, latencies) = run_concurrently(tasks, kv_batches, move |n| {
        let store = Arc::clone(&writer);
        async move {
            let mut batch = WriteBatch::new();
            batch.put(
                Space::Roster,
                format!("user{}", n % owners),
                format!("contact{n}"),
                vec![b'r'; 100],
            );
            store.apply(batch).await.expect("apply");
        }
    })
    .await;
    report("durable KV batches (1 put)", kv_batches, elapsed, latencies);

    // MAM-like reads on the archive just written: newest page, with-filter page, time range page.
    let reader = Arc::clone(&store);
    let queries = 2_000.min(records.max(1));
    let (elapsed, latencies) = run_concurrently(4, queries, move |n| {
        let store = Arc::clone(&reader);
        async move {
            let owner = format!("user{}", n % owners);
            let query = match n % 3 {
                0 => ArchiveQuery {
                    limit: 50,
                    reverse: true,
                    ..ArchiveQuery::default()
                },
                1 => ArchiveQuery {
                    with: Some(format!("peer{}@example.com", n % PEERS)),
                    limit: 50,
                    reverse: true,
                    ..ArchiveQuery::default()
                },
                _ => ArchiveQuery {
                    start: Some((records / 2) as i64),
                    end: Some((records / 2 + 20_000) as i64),
                    limit: 50,
                    ..ArchiveQuery::default()
                },
            };
            let page = store
                .query(Space::Compliance, &owner, &query)
                .await
                .expect("query");
            std::hint::black_box(page);
        }
    })
    .await;
    report("MAM pages of 50 (4 readers)", queries, elapsed, latencies);

    match Arc::try_unwrap(store) {
        Ok(store) => store.close().await.expect("close"),
        Err(_) => eprintln!("store still shared at exit"),
    }
}

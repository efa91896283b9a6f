//! Archive benchmarks; figures are printed, never asserted.
//!
//! `cargo run --release -p parley-archive --example archive_bench -- [MESSAGES] [EXPORT] [SENDERS]`
//!
//! 1. Durable append throughput through the router stage (chain entry + two MAM copies per
//!    message) and through the chain alone, from SENDERS concurrent "sessions".
//! 2. Export throughput (JSON Lines and CSV) over an archive of EXPORT messages.
//! 3. MAM page latency (newest 50 of one user, with and without a `with` filter) on the
//!    per-user copies written in step 1.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parley_archive::{
    ArchiveOptions, Body, ComplianceArchive, ExportFormat, MessageRecord, SearchFilter, SystemClock,
};
use parley_proto::{BareJid, Element, Stanza};
use parley_router::ComplianceStage;
use parley_storage::{ArchiveQuery, RedbStore, Space, Store};

fn arg(index: usize, default: usize) -> usize {
    std::env::args()
        .nth(index)
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn stanza(sender: usize, n: usize, users: usize) -> Stanza {
    let xml = format!(
        "<message xmlns='jabber:client' from='user{sender}@example.com/r' to='user{}@example.com' \
         type='chat' id='m{n}'><body>benchmark message {n} from {sender}, a typical short chat line</body></message>",
        (sender + 1 + n % 7) % users
    );
    Stanza::from_element(xml.parse::<Element>().expect("valid XML")).expect("a stanza")
}

async fn open(dir: &std::path::Path) -> (Arc<dyn Store>, Arc<ComplianceArchive>) {
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.join("bench.redb")).expect("store"));
    let archive = ComplianceArchive::open(
        store.clone(),
        None,
        BareJid::new("example.com").expect("domain"),
        ArchiveOptions::default(),
        Arc::new(SystemClock),
    )
    .await
    .expect("archive");
    (store, archive)
}

async fn stage_throughput(archive: &Arc<ComplianceArchive>, messages: usize, senders: usize) -> f64 {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for sender in 0..senders {
        let stage = archive.stage();
        let per_sender = messages / senders;
        tasks.spawn(async move {
            for n in 0..per_sender {
                let mut message = stanza(sender, n, senders);
                stage.record(&mut message).await.expect("recorded");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("sender task");
    }
    (messages / senders * senders) as f64 / started.elapsed().as_secs_f64()
}

async fn chain_throughput(archive: &Arc<ComplianceArchive>, messages: usize, senders: usize) -> f64 {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for sender in 0..senders {
        let chain = archive.chain().clone();
        let per_sender = messages / senders;
        tasks.spawn(async move {
            for n in 0..per_sender {
                let record = MessageRecord {
                    from: format!("user{sender}@example.com/r"),
                    to: format!("user{}@example.com", (sender + 1) % senders),
                    id: Some(format!("m{n}")),
                    message_type: Some("chat".into()),
                    thread: None,
                    subject: None,
                    body: Some(format!(
                        "benchmark message {n} from {sender}, a typical short chat line"
                    )),
                    stanza: format!(
                        "<message xmlns=\"jabber:client\" type=\"chat\" id=\"m{n}\"><body>benchmark message \
                         {n} from {sender}, a typical short chat line</body></message>"
                    ),
                };
                chain.append(Body::Message(record)).await.expect("appended");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("sender task");
    }
    (messages / senders * senders) as f64 / started.elapsed().as_secs_f64()
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let messages = arg(1, 100_000);
    let export_size = arg(2, 1_000_000);
    let senders = arg(3, 1_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let (store, archive) = open(dir.path()).await;

    let rate = stage_throughput(&archive, messages, senders).await;
    println!(
        "stage (chain + 2 MAM copies, fsynced): {rate:.0} msgs/s ({messages} messages, {senders} senders)"
    );
    let rate = chain_throughput(&archive, messages, senders).await;
    println!(
        "chain only (fsynced):                  {rate:.0} msgs/s ({messages} messages, {senders} senders)"
    );

    let head = archive.head().await.expect("head").seq as usize;
    if head < export_size {
        let started = Instant::now();
        let missing = export_size - head;
        let rate = chain_throughput(&archive, missing, senders).await;
        println!(
            "filled to {export_size} entries in {:.1} s ({rate:.0} msgs/s)",
            started.elapsed().as_secs_f64()
        );
    }
    for format in [ExportFormat::Jsonl, ExportFormat::Csv] {
        let out = dir.path().join(format!("export-{}", format.name()));
        let started = Instant::now();
        let manifest = archive
            .export("bench", &SearchFilter::default(), format, &out)
            .await
            .expect("export");
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "export {}: {} messages in {seconds:.1} s ({:.0} msgs/s, {} MiB)",
            format.name(),
            manifest.messages,
            manifest.messages as f64 / seconds,
            manifest.files[0].bytes / (1024 * 1024)
        );
    }
    let started = Instant::now();
    let report = archive.verify().await.expect("verify");
    println!("verify: {report} in {:.1} s", started.elapsed().as_secs_f64());

    // One user with a long history: MAM pages must not depend on its length.
    let owner = "big@example.com";
    let history = arg(4, 500_000);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..senders {
        let store = store.clone();
        tasks.spawn(async move {
            for n in (writer..history).step_by(senders) {
                let record = parley_storage::NewRecord {
                    timestamp_micros: 1_700_000_000_000_000 + n as i64 * 1_000_000,
                    with: format!("contact{}@example.com", n % 20),
                    payload: format!("<message xmlns=\"jabber:client\"><body>history {n}</body></message>")
                        .into_bytes(),
                };
                store
                    .append(Space::Mam, "big@example.com", record)
                    .await
                    .expect("append");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("writer task");
    }
    println!(
        "MAM history of {history} records for one owner written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let total = store
        .count(Space::Mam, owner, &ArchiveQuery::default())
        .await
        .expect("count");
    for (label, with) in [
        ("newest page", None),
        ("newest page with `with`", Some("contact7@example.com")),
    ] {
        let mut latencies = Vec::new();
        for round in 0..1000u64 {
            // Alternate the newest page and pages deep in the history (RSM `before`).
            let deep = (round % 2 == 1).then(|| 1 + (round * 7919) % (total.max(1) * 3));
            let query = ArchiveQuery {
                with: with.map(str::to_owned),
                before_id: deep,
                limit: 50,
                reverse: true,
                ..ArchiveQuery::default()
            };
            let started = Instant::now();
            let page = store.query(Space::Mam, owner, &query).await.expect("query");
            let counted = store.count(Space::Mam, owner, &query).await.expect("count");
            latencies.push(started.elapsed());
            assert!(page.records.len() <= 50 && counted <= total);
        }
        latencies.sort();
        println!(
            "MAM {label} (+count) for an owner of {total} records: p50 {:?}, p99 {:?}",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99)
        );
    }
}

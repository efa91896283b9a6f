//! Archive benchmarks; figures are printed, never asserted. Three modes:
//!
//! `cargo run --release -p parley-archive --example archive_bench -- [MESSAGES] [EXPORT] [SENDERS]`
//!
//! 1. Durable append throughput through the router stage (chain entry + two MAM copies per
//!    message) and through the chain alone, from SENDERS concurrent "sessions".
//! 2. Export throughput (JSON Lines and CSV) over an archive of EXPORT messages.
//! 3. MAM page latency (newest 50 of one user, with and without a `with` filter) on the
//!    per-user copies written in step 1.
//!
//! `... -- stage [MESSAGES]`: the stage alone (chain entry + two MAM copies, durable) with 1, 100
//! and 1000 concurrent senders, each on a fresh store: throughput and per-message latency.
//!
//! `... -- mam10m [RECORDS] [USERS]`: fills `Space::Mam` of a store under /tmp with RECORDS
//! (default 10,000,000) records of ~250-byte messages between USERS (default 1,000) users, in big
//! direct commits, then measures MAM page and count latency (p50/p99/max) and deletes the files.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parley_archive::{
    ArchiveOptions, Body, ComplianceArchive, ExportFormat, MessageRecord, SearchFilter, SystemClock,
};
use parley_proto::{BareJid, Element, Stanza};
use parley_router::{Addressee, ComplianceStage};
use parley_storage::{Archive, ArchiveAppend, ArchiveQuery, NewRecord, RedbStore, Space, Store, WriteBatch};

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
                stage
                    .record(&mut message, Addressee::LocalAccount)
                    .await
                    .expect("recorded");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("sender task");
    }
    (messages / senders * senders) as f64 / started.elapsed().as_secs_f64()
}

/// A MAM page of 50 copies written by the stage, without and with reading their stanzas from
/// the chain entries the copies refer to (what the MAM module does before answering).
async fn stanza_page_latency(store: &dyn Store) {
    let owner = "user0@example.com";
    let query = ArchiveQuery {
        limit: 50,
        reverse: true,
        ..ArchiveQuery::default()
    };
    let mut page_only = Vec::new();
    let mut with_stanzas = Vec::new();
    for _ in 0..1000 {
        let started = Instant::now();
        let page = store.query(Space::Mam, owner, &query).await.expect("query");
        page_only.push(started.elapsed());
        let keys: Vec<String> = page
            .records
            .iter()
            .filter_map(|record| parley_archive::entry::parse_entry_reference(&record.payload))
            .map(parley_archive::entry::seq_key)
            .collect();
        let entries = store
            .get_many(Space::Compliance, parley_archive::entry::CHAIN_OWNER, &keys)
            .await
            .expect("entries");
        for bytes in entries.into_iter().flatten() {
            let entry = parley_archive::entry::Entry::from_bytes(&bytes).expect("entry");
            if let Body::Message(message) = entry.body {
                let _: Element = message.stanza.parse().expect("stanza");
            }
        }
        with_stanzas.push(started.elapsed());
        assert_eq!(keys.len(), page.records.len(), "every copy refers to its entry");
    }
    println!(
        "MAM newest page of 50 (1000 rounds): page alone {}; with its stanzas from the chain {}",
        summary(&mut page_only),
        summary(&mut with_stanzas)
    );
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

fn millis(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}

/// "p50 x, p99 y, max z" of `latencies` (sorted here).
fn summary(latencies: &mut [Duration]) -> String {
    latencies.sort();
    format!(
        "p50 {}, p99 {}, max {} ({} samples)",
        millis(percentile(latencies, 0.5)),
        millis(percentile(latencies, 0.99)),
        millis(latencies.last().copied().unwrap_or_default()),
        latencies.len()
    )
}

/// The stage with 1, 100 and 1000 concurrent senders, each on a fresh store.
async fn stage_sweep(messages: usize) {
    for senders in [1usize, 100, 1000] {
        // One sender is bounded by one fsync per message: fewer messages keep the run short.
        let messages = if senders == 1 {
            messages.min(3_000)
        } else {
            messages
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, archive) = open(dir.path()).await;
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for sender in 0..senders {
            let stage = archive.stage();
            let per_sender = messages / senders;
            tasks.spawn(async move {
                let mut latencies = Vec::with_capacity(per_sender);
                for n in 0..per_sender {
                    let mut message = stanza(sender, n, senders.max(2));
                    let sent = Instant::now();
                    stage
                        .record(&mut message, Addressee::LocalAccount)
                        .await
                        .expect("recorded");
                    latencies.push(sent.elapsed());
                }
                latencies
            });
        }
        let mut latencies = Vec::with_capacity(messages);
        while let Some(done) = tasks.join_next().await {
            latencies.extend(done.expect("sender task"));
        }
        let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
        // Read-your-writes: this count returns once every MAM copy is indexed.
        store
            .count(Space::Mam, "user0@example.com", &ArchiveQuery::default())
            .await
            .expect("count");
        let indexed_rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
        println!(
            "stage (chain + 2 MAM copies, fsynced), {senders:>4} senders: {rate:>7.0} msgs/s durable \
             ({indexed_rate:.0} msgs/s until all indexed) over {} messages; per-message latency {}",
            latencies.len(),
            summary(&mut latencies)
        );
    }
}

/// Small deterministic generator, so the fill needs no extra dependency and is reproducible.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }
}

/// Contacts per user; conversations favour the first few (the `min` of two draws).
const CONTACTS: u64 = 30;
/// 2023-11-14, where the generated history starts; it spans a year.
const HISTORY_START: i64 = 1_700_000_000_000_000;
const HISTORY_SPAN: i64 = 365 * 24 * 3600 * 1_000_000;
const FILL_BATCH: usize = 32_768;
const FILL_IN_FLIGHT: usize = 4;
const QUERY_ROUNDS: u64 = 2_000;

fn user(index: u64) -> String {
    format!("user{index}@example.com")
}

/// The `k`-th contact of user `owner` (never the owner itself).
fn contact(owner: u64, k: u64, users: u64) -> u64 {
    (owner + 1 + (k * 7_919) % (users - 1).max(1)) % users
}

/// About 250 bytes, like a chat message with a chat state and a receipt request.
fn message_xml(from: u64, to: u64, n: u64) -> Vec<u8> {
    format!(
        "<message xmlns=\"jabber:client\" from=\"{}/phone\" to=\"{}\" type=\"chat\" id=\"{n:016x}\">\
         <body>message {n}: see you at the review, the slides are in the shared folder</body>\
         <active xmlns=\"http://jabber.org/protocol/chatstates\"/>\
         <request xmlns=\"urn:xmpp:receipts\"/></message>",
        user(from),
        user(to)
    )
    .into_bytes()
}

fn file_mib(path: &std::path::Path) -> f64 {
    std::fs::metadata(path).map_or(0.0, |meta| meta.len() as f64 / (1024.0 * 1024.0))
}

/// Fills `Space::Mam` with `records` records (a message gives its sender's and its recipient's
/// copy) between `users` users, then measures MAM page latencies.
async fn mam_at_scale(records: u64, users: u64) {
    let users = users.max(2);
    let dir = tempfile::Builder::new()
        .prefix("parley-mam-bench")
        .tempdir_in("/tmp")
        .expect("temp dir under /tmp");
    let path = dir.path().join("mam.redb");
    let store = Arc::new(RedbStore::open(&path).expect("store"));
    println!(
        "filling {} with {records} MAM records between {users} users",
        path.display()
    );

    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let step = (HISTORY_SPAN / records.max(1) as i64).max(1);
    let started = Instant::now();
    let mut in_flight = tokio::task::JoinSet::new();
    let mut batch = Vec::with_capacity(FILL_BATCH);
    let (mut written, mut max_id, mut next_report) = (0u64, 0u64, 1_000_000u64);
    let mut message = 0u64;
    while written < records {
        let from = rng.below(users);
        let k = rng.below(CONTACTS).min(rng.below(CONTACTS));
        let to = contact(from, k, users);
        // Concurrent sessions stamp messages a little out of order.
        let jitter = rng.below(2_000) as i64 - 1_000;
        let timestamp_micros = HISTORY_START + written as i64 * step + jitter;
        let payload = message_xml(from, to, message);
        message += 1;
        for (owner, with) in [(from, to), (to, from)] {
            batch.push(ArchiveAppend {
                space: Space::Mam,
                owner: user(owner),
                record: NewRecord {
                    timestamp_micros,
                    with: user(with),
                    payload: payload.clone(),
                },
            });
        }
        written += 2;
        if batch.len() >= FILL_BATCH || written >= records {
            let appends = std::mem::replace(&mut batch, Vec::with_capacity(FILL_BATCH));
            let store = Arc::clone(&store);
            in_flight.spawn(async move { store.apply_and_append(WriteBatch::new(), appends).await });
            while in_flight.len() >= FILL_IN_FLIGHT {
                let committed = in_flight.join_next().await.expect("a commit").expect("task");
                let ids = committed.expect("durable commit").ids;
                max_id = max_id.max(ids.last().copied().unwrap_or(0));
            }
            if written >= next_report {
                let seconds = started.elapsed().as_secs_f64();
                println!(
                    "  {written} records durable in {seconds:.0} s ({:.0} records/s)",
                    written as f64 / seconds
                );
                next_report += 1_000_000;
            }
        }
    }
    while let Some(committed) = in_flight.join_next().await {
        let ids = committed.expect("task").expect("durable commit").ids;
        max_id = max_id.max(ids.last().copied().unwrap_or(0));
    }
    let durable = started.elapsed().as_secs_f64();
    // Read-your-writes: this count waits until every record is indexed.
    let first = store
        .count(Space::Mam, &user(0), &ArchiveQuery::default())
        .await
        .expect("count");
    let indexed = started.elapsed().as_secs_f64();
    println!(
        "fill: {written} records durable in {durable:.1} s ({:.0} records/s), indexed after {indexed:.1} s \
         ({:.0} records/s); user0 holds {first}",
        written as f64 / durable,
        written as f64 / indexed
    );
    println!(
        "files: main {:.0} MiB, index {:.0} MiB",
        file_mib(&path),
        file_mib(&path.with_file_name("mam.redb.index"))
    );

    let owner_of = |rng: &mut XorShift| rng.below(users);
    let middle_time =
        |rng: &mut XorShift| HISTORY_START + HISTORY_SPAN / 4 + rng.below(HISTORY_SPAN as u64 / 2) as i64;
    let middle_id = |rng: &mut XorShift| max_id / 4 + rng.below(max_id / 2);
    const WEEK: i64 = 7 * 24 * 3600 * 1_000_000;
    type MakeQuery<'a> = Box<dyn Fn(&mut XorShift, u64) -> ArchiveQuery + 'a>;
    let page = |query: ArchiveQuery| ArchiveQuery { limit: 50, ..query };
    let cases: Vec<(&str, MakeQuery<'_>)> = vec![
        (
            "newest page of 50",
            Box::new(|_, _| {
                page(ArchiveQuery {
                    reverse: true,
                    ..ArchiveQuery::default()
                })
            }),
        ),
        (
            "newest 50 with `with`",
            Box::new(|rng, owner| {
                page(ArchiveQuery {
                    with: Some(user(contact(owner, rng.below(5), users))),
                    reverse: true,
                    ..ArchiveQuery::default()
                })
            }),
        ),
        (
            "first 50 of a week mid-history",
            Box::new(|rng, _| {
                let start = middle_time(rng);
                page(ArchiveQuery {
                    start: Some(start),
                    end: Some(start + WEEK),
                    ..ArchiveQuery::default()
                })
            }),
        ),
        (
            "50 after an id mid-history",
            Box::new(|rng, _| {
                page(ArchiveQuery {
                    after_id: Some(middle_id(rng)),
                    ..ArchiveQuery::default()
                })
            }),
        ),
        (
            "50 before an id mid-history",
            Box::new(|rng, _| {
                page(ArchiveQuery {
                    before_id: Some(middle_id(rng)),
                    reverse: true,
                    ..ArchiveQuery::default()
                })
            }),
        ),
    ];
    let counts: Vec<(&str, MakeQuery<'_>)> = vec![
        ("count (all)", Box::new(|_, _| ArchiveQuery::default())),
        (
            "count with `with`",
            Box::new(|rng, owner| ArchiveQuery {
                with: Some(user(contact(owner, rng.below(5), users))),
                ..ArchiveQuery::default()
            }),
        ),
        (
            "count of a week mid-history",
            Box::new(|rng, _| {
                let start = middle_time(rng);
                ArchiveQuery {
                    start: Some(start),
                    end: Some(start + WEEK),
                    ..ArchiveQuery::default()
                }
            }),
        ),
    ];
    // Pages and counts are timed the same way; only the call and what is averaged differ.
    let pages = cases.iter().map(|(label, make)| (label, make, false));
    let counted = counts.iter().map(|(label, make)| (label, make, true));
    for (label, make, count_only) in pages.chain(counted) {
        let mut latencies = Vec::new();
        let mut answered = 0u64;
        for _ in 0..QUERY_ROUNDS {
            let owner = owner_of(&mut rng);
            let query = make(&mut rng, owner);
            let owner = user(owner);
            let sent = Instant::now();
            answered += if count_only {
                store.count(Space::Mam, &owner, &query).await.expect("count")
            } else {
                let page = store.query(Space::Mam, &owner, &query).await.expect("query");
                page.records.len() as u64
            };
            latencies.push(sent.elapsed());
        }
        let average = answered as f64 / QUERY_ROUNDS as f64;
        let averaged = if count_only {
            format!("avg count {average:.0}")
        } else {
            format!("avg {average:.1} records/page")
        };
        println!("MAM {label:<32} {} ({averaged})", summary(&mut latencies));
    }
    match Arc::try_unwrap(store) {
        Ok(store) => store.close().await.expect("close"),
        Err(_) => println!("store still shared; dropped with the process"),
    }
    let shown = dir.path().display().to_string();
    dir.close().expect("delete the benchmark files");
    println!("deleted {shown}");
}

#[tokio::main]
async fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    if mode == "stage" {
        stage_sweep(arg(2, 100_000)).await;
        return;
    }
    if mode == "mam10m" {
        mam_at_scale(arg(2, 10_000_000) as u64, arg(3, 1_000) as u64).await;
        return;
    }
    let messages = arg(1, 100_000);
    let export_size = arg(2, 1_000_000);
    let senders = arg(3, 1_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let (store, archive) = open(dir.path()).await;

    let rate = stage_throughput(&archive, messages, senders).await;
    println!(
        "stage (chain + 2 MAM copies, fsynced): {rate:.0} msgs/s ({messages} messages, {senders} senders)"
    );
    stanza_page_latency(store.as_ref()).await;
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

//! Tests of the archive as a whole: the stage, the chain under concurrency, tampering,
//! retention with an injected clock, search, export and the access log.

use std::sync::Arc;

use parley_directory::{PersonDetails, StaticDirectory};
use parley_proto::{BareJid, Element, Stanza};
use parley_router::{Addressee, ComplianceStage};
use parley_storage::{ArchiveQuery, KeyValue, MemoryStore, RedbStore, Space, Store, WriteBatch};
use sha2::{Digest, Sha256};

use super::*;

const DAY: i64 = 86_400_000_000;
const T0: i64 = 1_750_000_000_000_000;

fn domain() -> BareJid {
    BareJid::new("example.com").unwrap()
}

fn message(from: &str, to: &str, body: &str) -> Stanza {
    let xml = format!(
        "<message xmlns='jabber:client' from='{from}' to='{to}' type='chat' id='x'><body>{body}</body></message>"
    );
    Stanza::from_element(xml.parse::<Element>().unwrap()).unwrap()
}

struct Fixture {
    store: Arc<dyn Store>,
    archive: Arc<ComplianceArchive>,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

async fn fixture_with(store: Arc<dyn Store>, options: ArchiveOptions, directory: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let directory: Option<Arc<dyn parley_directory::Directory>> = if directory {
        let users = StaticDirectory::open(dir.path().join("users.toml"))
            .await
            .unwrap();
        for (name, department, groups) in [
            ("alice", Some("Sales"), vec![]),
            ("bob", Some("Legal"), vec![]),
            ("carol", None, vec!["board".to_owned()]),
            ("dave", None, vec![]),
        ] {
            let details = PersonDetails {
                department: department.map(str::to_owned),
                groups,
                ..PersonDetails::default()
            };
            users.add_user(name, "secret-password", details).await.unwrap();
        }
        Some(Arc::new(users))
    } else {
        None
    };
    let clock = Arc::new(ManualClock::new(T0));
    let archive = ComplianceArchive::open(store.clone(), directory, domain(), options, clock.clone())
        .await
        .unwrap();
    Fixture {
        store,
        archive,
        clock,
        _dir: dir,
    }
}

async fn fixture() -> Fixture {
    fixture_with(Arc::new(MemoryStore::new()), ArchiveOptions::default(), false).await
}

async fn record(fixture: &Fixture, from: &str, to: &str, body: &str) -> Stanza {
    record_to(fixture, from, to, body, Addressee::LocalAccount).await
}

async fn record_to(fixture: &Fixture, from: &str, to: &str, body: &str, addressee: Addressee) -> Stanza {
    let mut stanza = message(from, to, body);
    fixture
        .archive
        .stage()
        .record(&mut stanza, addressee)
        .await
        .unwrap();
    stanza
}

fn stanza_ids(stanza: &Stanza) -> Vec<(String, String)> {
    stanza
        .element()
        .children()
        .filter(|child| child.is("stanza-id", NS_SID))
        .map(|child| {
            let attr = |name| child.attr(name).unwrap_or_default().to_owned();
            (attr("by"), attr("id"))
        })
        .collect()
}

async fn mam_copies(fixture: &Fixture, owner: &str) -> Vec<parley_storage::ArchiveRecord> {
    let query = ArchiveQuery {
        limit: 10,
        ..ArchiveQuery::default()
    };
    fixture
        .store
        .query(Space::Mam, owner, &query)
        .await
        .unwrap()
        .records
}

#[tokio::test]
async fn a_message_to_a_name_nobody_holds_gets_no_copy_for_that_name() {
    let fixture = fixture().await;
    let stanza = record_to(
        &fixture,
        "alice@example.com/phone",
        "ghost@example.com",
        "hello ghost",
        Addressee::Other,
    )
    .await;

    assert!(stanza_ids(&stanza).is_empty(), "no archive received it");
    assert!(
        chain_entry(fixture.store.as_ref(), 1).await.is_some(),
        "the chain has it"
    );
    assert_eq!(
        mam_copies(&fixture, "alice@example.com").await.len(),
        1,
        "the sender's copy"
    );
    assert!(
        mam_copies(&fixture, "ghost@example.com").await.is_empty(),
        "nothing waits for whoever is given the name later"
    );
}

#[tokio::test]
async fn a_message_to_oneself_is_stamped_with_the_id_of_its_one_copy() {
    let fixture = fixture().await;
    let stanza = record(
        &fixture,
        "alice@example.com/phone",
        "alice@example.com/laptop",
        "note to self",
    )
    .await;

    let copies = mam_copies(&fixture, "alice@example.com").await;
    assert_eq!(copies.len(), 1, "one archive, one copy");
    assert_eq!(
        stanza_ids(&stanza),
        vec![("alice@example.com".to_owned(), copies[0].id.to_string())],
        "XEP-0359: the id in the receiving archive, which is the sender's own"
    );
}

async fn chain_entry(kv: &dyn KeyValue, seq: u64) -> Option<Entry> {
    kv.get(Space::Compliance, CHAIN_OWNER, &seq_key(seq))
        .await
        .unwrap()
        .map(|bytes| Entry::from_bytes(&bytes).unwrap())
}

#[tokio::test]
async fn stage_records_chains_copies_and_stamps() {
    let fixture = fixture().await;
    let mut stanza = message("alice@example.com/phone", "bob@example.com", "hello");
    let forged = "<stanza-id xmlns='urn:xmpp:sid:0' by='bob@example.com' id='forged'/>";
    stanza.element_mut().append_child(forged.parse().unwrap());
    fixture
        .archive
        .stage()
        .record(&mut stanza, Addressee::LocalAccount)
        .await
        .unwrap();

    let ids = stanza_ids(&stanza);
    assert_eq!(ids.len(), 1, "the forged id is replaced by ours: {ids:?}");
    assert_eq!(ids[0].0, "bob@example.com");

    let entry = chain_entry(fixture.store.as_ref(), 1).await.expect("entry 1");
    assert_eq!(entry.prev, hex::encode(entry::GENESIS));
    assert_eq!(entry.ts, T0);
    let Body::Message(recorded) = entry.body else {
        panic!("not a message entry")
    };
    assert_eq!(recorded.from, "alice@example.com/phone");
    assert_eq!(recorded.body.as_deref(), Some("hello"));
    assert!(!recorded.stanza.contains("forged"), "{}", recorded.stanza);

    let query = ArchiveQuery {
        limit: 10,
        ..ArchiveQuery::default()
    };
    let bob = fixture
        .store
        .query(Space::Mam, "bob@example.com", &query)
        .await
        .unwrap();
    assert_eq!(bob.records.len(), 1);
    assert_eq!(
        bob.records[0].id.to_string(),
        ids[0].1,
        "stanza-id is bob's MAM id"
    );
    assert_eq!(bob.records[0].with, "alice@example.com");
    let alice = fixture
        .store
        .query(Space::Mam, "alice@example.com", &query)
        .await
        .unwrap();
    assert_eq!(alice.records.len(), 1);
    assert_eq!(alice.records[0].with, "bob@example.com");
    // Both copies point at entry 1, which holds the stanza once.
    for copy in [&alice.records[0], &bob.records[0]] {
        assert_eq!(
            entry::parse_entry_reference(&copy.payload),
            Some(1),
            "{:?}",
            copy.payload
        );
    }
    assert!(
        recorded.stanza.contains("<body>hello</body>"),
        "{}",
        recorded.stanza
    );
    let reparsed: Element = recorded.stanza.parse().unwrap();
    assert_eq!(reparsed.ns(), "jabber:client");
}

#[tokio::test]
async fn remote_and_self_messages_get_one_mam_copy_each() {
    let fixture = fixture().await;
    let remote = record(&fixture, "alice@example.com/a", "zed@other.org", "out").await;
    assert!(remote.element().get_child("stanza-id", NS_SID).is_none());
    let own = record(
        &fixture,
        "alice@example.com/a",
        "alice@example.com",
        "note to self",
    )
    .await;
    let stamped_by: Vec<String> = stanza_ids(&own).into_iter().map(|(by, _)| by).collect();
    assert_eq!(stamped_by, ["alice@example.com"], "her own archive received it");
    let query = ArchiveQuery::default();
    assert_eq!(
        fixture
            .store
            .count(Space::Mam, "alice@example.com", &query)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        fixture
            .store
            .count(Space::Mam, "zed@other.org", &query)
            .await
            .unwrap(),
        0
    );
    assert_eq!(fixture.archive.head().await.unwrap().seq, 2);
}

#[tokio::test]
async fn concurrent_sessions_form_one_gapless_chain() {
    let fixture = fixture().await;
    let mut tasks = tokio::task::JoinSet::new();
    for session in 0..20 {
        let stage = fixture.archive.stage();
        tasks.spawn(async move {
            for n in 0..50 {
                let mut stanza = message(
                    &format!("user{session}@example.com/r"),
                    "bob@example.com",
                    &format!("m{session}-{n}"),
                );
                stage.record(&mut stanza, Addressee::LocalAccount).await.unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let report = fixture.archive.verify().await.unwrap();
    assert!(report.is_intact(), "{report}");
    assert_eq!(report.messages, 1000);
    assert_eq!(report.head.seq, 1000);
    assert!(report.to_string().starts_with("intact, 1000 records"), "{report}");
}

#[tokio::test]
async fn the_chain_continues_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    {
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path).unwrap());
        let fixture = fixture_with(store, ArchiveOptions::default(), false).await;
        record(&fixture, "alice@example.com/a", "bob@example.com", "before").await;
    }
    // The chain task holds the store until its handles are gone; let it wind down.
    let store = loop {
        match RedbStore::open(&path) {
            Ok(store) => break store,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    };
    let fixture = fixture_with(Arc::new(store), ArchiveOptions::default(), false).await;
    record(&fixture, "alice@example.com/a", "bob@example.com", "after").await;
    let report = fixture.archive.verify().await.unwrap();
    assert!(report.is_intact(), "{report}");
    assert_eq!(report.messages, 2);
    assert_eq!(chain_entry(fixture.store.as_ref(), 2).await.unwrap().seq, 2);
}

/// A chain of `n` messages in a redb file, for the tamper tests.
async fn tamper_fixture(n: usize) -> (Fixture, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("db.redb")).unwrap());
    let options = ArchiveOptions {
        checkpoints: CheckpointPolicy {
            every_entries: 3,
            every_micros: i64::MAX,
        },
        ..ArchiveOptions::default()
    };
    let fixture = fixture_with(store, options, false).await;
    for n in 0..n {
        record(
            &fixture,
            "alice@example.com/a",
            "bob@example.com",
            &format!("message {n}"),
        )
        .await;
        fixture.clock.advance(1_000_000);
    }
    assert!(fixture.archive.verify().await.unwrap().is_intact());
    (fixture, dir)
}

async fn put_raw(kv: &dyn KeyValue, key: &str, value: Vec<u8>) {
    let mut batch = WriteBatch::new();
    batch.put(Space::Compliance, CHAIN_OWNER, key, value);
    kv.apply(batch).await.unwrap();
}

#[tokio::test]
async fn editing_a_record_is_found_and_named() {
    let (fixture, _dir) = tamper_fixture(10).await;
    let kv = fixture.store.as_ref();
    let mut entry = chain_entry(kv, 5).await.unwrap();
    if let Body::Message(message) = &mut entry.body {
        message.body = Some("message 4, edited".into());
    }
    put_raw(kv, &seq_key(5), entry.to_bytes()).await;
    let report = fixture.archive.verify().await.unwrap();
    assert!(
        matches!(report.problem, Some(Tamper::Edited { seq: 5, .. })),
        "{report}"
    );
    assert!(report.to_string().contains("record 5 was edited"), "{report}");
}

#[tokio::test]
async fn editing_the_newest_record_is_found() {
    let (fixture, _dir) = tamper_fixture(4).await;
    let kv = fixture.store.as_ref();
    let mut entry = chain_entry(kv, 4).await.unwrap();
    entry.ts += 1;
    put_raw(kv, &seq_key(4), entry.to_bytes()).await;
    let report = fixture.archive.verify().await.unwrap();
    assert!(
        matches!(report.problem, Some(Tamper::Edited { seq: 4, .. })),
        "{report}"
    );
}

#[tokio::test]
async fn removing_a_record_is_found_and_named() {
    for victim in [1, 6, 10] {
        let (fixture, _dir) = tamper_fixture(10).await;
        let mut batch = WriteBatch::new();
        batch.delete(Space::Compliance, CHAIN_OWNER, seq_key(victim));
        fixture.store.apply(batch).await.unwrap();
        let report = fixture.archive.verify().await.unwrap();
        assert!(
            matches!(report.problem, Some(Tamper::Removed { seq, .. }) if seq == victim),
            "removing {victim}: {report}"
        );
    }
}

/// What a careful tamperer does to hide the newest records: deletes every record after `kept`
/// (and, with `checkpoints_too`, every stored checkpoint after it) and sets the head to `kept`.
async fn cut_chain_to(fixture: &Fixture, kept: u64, checkpoints_too: bool) {
    let kv = fixture.store.as_ref();
    let head = fixture.archive.head().await.unwrap();
    let kept_bytes = kv
        .get(Space::Compliance, CHAIN_OWNER, &seq_key(kept))
        .await
        .unwrap()
        .unwrap();
    let forged_head = Checkpoint {
        seq: kept,
        hash: hash_bytes(&kept_bytes),
        ts: Entry::from_bytes(&kept_bytes).unwrap().ts,
        appended: kept,
    };
    let mut batch = WriteBatch::new();
    for seq in kept + 1..=head.seq {
        batch.delete(Space::Compliance, CHAIN_OWNER, seq_key(seq));
        if checkpoints_too {
            batch.delete(Space::Meta, entry::CHECKPOINT_OWNER, seq_key(seq));
        }
    }
    batch.put(
        Space::Meta,
        entry::META_OWNER,
        entry::HEAD_KEY,
        forged_head.to_bytes(),
    );
    kv.apply(batch).await.unwrap();
}

#[tokio::test]
async fn cutting_off_the_newest_records_and_rewriting_the_head_is_found() {
    let (fixture, _dir) = tamper_fixture(10).await;
    cut_chain_to(&fixture, 7, false).await;
    let report = fixture.archive.verify().await.unwrap();
    assert!(
        matches!(report.problem, Some(Tamper::Removed { seq: 8, .. })),
        "a checkpoint past the forged head gives it away: {report}"
    );
}

#[tokio::test]
async fn inserting_a_record_is_found_and_named() {
    let (fixture, _dir) = tamper_fixture(6).await;
    let kv = fixture.store.as_ref();
    // A well-formed entry appended after the head, correctly linked.
    let head = fixture.archive.head().await.unwrap();
    let mut forged = chain_entry(kv, 6).await.unwrap();
    forged.seq = 7;
    forged.prev = hex::encode(head.hash);
    put_raw(kv, &seq_key(7), forged.to_bytes()).await;
    let report = fixture.archive.verify().await.unwrap();
    assert!(
        matches!(&report.problem, Some(Tamper::Inserted { key, .. }) if *key == seq_key(7)),
        "{report}"
    );

    // A record squeezed between two others under a look-alike key.
    let (fixture, _dir) = tamper_fixture(6).await;
    let squeezed = format!("{}5", seq_key(3));
    put_raw(fixture.store.as_ref(), &squeezed, b"{}".to_vec()).await;
    let report = fixture.archive.verify().await.unwrap();
    assert!(
        matches!(&report.problem, Some(Tamper::Inserted { key, .. }) if *key == squeezed),
        "{report}"
    );
}

#[tokio::test]
async fn a_rewritten_record_contradicts_its_checkpoint() {
    // Rewrite record 3 and re-link record 4 to it: the chain links hold, the checkpoint does not.
    let (fixture, _dir) = tamper_fixture(6).await;
    let kv = fixture.store.as_ref();
    let mut third = chain_entry(kv, 3).await.unwrap();
    third.ts += 5;
    let third_bytes = third.to_bytes();
    let mut fourth = chain_entry(kv, 4).await.unwrap();
    fourth.prev = hex::encode(hash_bytes(&third_bytes));
    put_raw(kv, &seq_key(3), third_bytes).await;
    put_raw(kv, &seq_key(4), fourth.to_bytes()).await;
    let report = fixture.archive.verify().await.unwrap();
    assert!(report.problem.is_some(), "{report}");
    assert!(
        report.to_string().contains("record 3") || report.to_string().contains("record 4"),
        "{report}"
    );
}

/// What a careful tamperer with write access to the store does: edits record `edited`, re-links
/// every later record to it, and rewrites the head and every stored checkpoint from there on, so
/// the chain is consistent again.
async fn rewrite_chain_from(fixture: &Fixture, edited: u64) {
    let kv = fixture.store.as_ref();
    let head = fixture.archive.head().await.unwrap();
    let mut prev = None;
    let mut batch = WriteBatch::new();
    for seq in edited..=head.seq {
        let mut entry = chain_entry(kv, seq).await.unwrap();
        if seq == edited
            && let Body::Message(message) = &mut entry.body
        {
            message.body = Some("rewritten".into());
        }
        if let Some(prev) = prev {
            entry.prev = hex::encode(prev);
        }
        let bytes = entry.to_bytes();
        let hash = hash_bytes(&bytes);
        batch.put(Space::Compliance, CHAIN_OWNER, seq_key(seq), bytes);
        let rewritten = Checkpoint {
            seq,
            hash,
            ts: entry.ts,
            appended: seq,
        };
        let stored = kv
            .get(Space::Meta, entry::CHECKPOINT_OWNER, &seq_key(seq))
            .await
            .unwrap();
        if stored.is_some() {
            batch.put(
                Space::Meta,
                entry::CHECKPOINT_OWNER,
                seq_key(seq),
                rewritten.to_bytes(),
            );
        }
        if seq == head.seq {
            batch.put(
                Space::Meta,
                entry::META_OWNER,
                entry::HEAD_KEY,
                rewritten.to_bytes(),
            );
        }
        prev = Some(hash);
    }
    kv.apply(batch).await.unwrap();
}

/// Record `seq` as it is stored now, as a checkpoint kept outside.
async fn stored_checkpoint(fixture: &Fixture, seq: u64) -> OutsideCheckpoint {
    let bytes = fixture
        .store
        .get(Space::Compliance, CHAIN_OWNER, &seq_key(seq))
        .await
        .unwrap()
        .unwrap();
    OutsideCheckpoint {
        seq,
        hash: hash_bytes(&bytes),
    }
}

#[tokio::test]
async fn a_rewritten_chain_passes_alone_and_fails_against_a_checkpoint_kept_outside() {
    let (fixture, _dir) = tamper_fixture(10).await;
    let head_before = OutsideCheckpoint::from(&fixture.archive.head().await.unwrap());
    let sixth_before = stored_checkpoint(&fixture, 6).await;
    let report = fixture
        .archive
        .verify_against(&[head_before, sixth_before])
        .await
        .unwrap();
    assert!(report.is_intact(), "{report}");
    assert_eq!(report.outside_matched, 2);
    assert!(
        report
            .to_string()
            .ends_with("all 2 checkpoints kept outside match"),
        "{report}"
    );

    rewrite_chain_from(&fixture, 5).await;
    let alone = fixture.archive.verify().await.unwrap();
    assert!(
        alone.is_intact(),
        "a rewrite from the edit onwards is consistent in itself: {alone}"
    );
    let report = fixture.archive.verify_against(&[head_before]).await.unwrap();
    assert!(
        matches!(&report.problem, Some(Tamper::Edited { seq: 10, detail }) if detail.contains("kept outside")),
        "{report}"
    );
    let report = fixture
        .archive
        .verify_against(&[head_before, sixth_before])
        .await
        .unwrap();
    assert!(
        matches!(report.problem, Some(Tamper::Edited { seq: 6, .. })),
        "the oldest outside checkpoint after the edit names it first: {report}"
    );
    // Records before the edit are untouched, so an outside checkpoint below it still matches.
    let third = stored_checkpoint(&fixture, 3).await;
    let report = fixture.archive.verify_against(&[third]).await.unwrap();
    assert!(report.is_intact(), "{report}");
    assert!(
        report
            .to_string()
            .ends_with("the checkpoint kept outside matches"),
        "{report}"
    );
}

#[tokio::test]
async fn a_head_cut_below_a_checkpoint_kept_outside_is_found() {
    let (fixture, _dir) = tamper_fixture(10).await;
    let head_before = OutsideCheckpoint::from(&fixture.archive.head().await.unwrap());
    cut_chain_to(&fixture, 7, true).await;
    assert!(fixture.archive.verify().await.unwrap().is_intact());
    let report = fixture.archive.verify_against(&[head_before]).await.unwrap();
    assert!(
        matches!(&report.problem, Some(Tamper::Removed { seq: 8, detail }) if detail.contains("record 10")),
        "{report}"
    );
}

#[tokio::test]
async fn the_chain_start_as_an_outside_checkpoint() {
    let (fixture, _dir) = tamper_fixture(2).await;
    // An export of an empty archive keeps record 0 with no hash (all zeros).
    let start = OutsideCheckpoint::from(&Checkpoint::EMPTY);
    let report = fixture.archive.verify_against(&[start]).await.unwrap();
    assert!(report.is_intact(), "{report}");
    assert_eq!(report.outside_matched, 1);
    let wrong = OutsideCheckpoint {
        seq: 0,
        hash: [7; 32],
    };
    let report = fixture.archive.verify_against(&[wrong]).await.unwrap();
    assert!(
        matches!(report.problem, Some(Tamper::Edited { seq: 0, .. })),
        "{report}"
    );
}

#[test]
fn outside_checkpoints_are_read_as_seq_colon_hex() {
    let checkpoint = OutsideCheckpoint {
        seq: 42,
        hash: [0xab; 32],
    };
    let text = checkpoint.to_string();
    assert_eq!(text, format!("42:{}", "ab".repeat(32)));
    assert_eq!(text.parse::<OutsideCheckpoint>().unwrap(), checkpoint);
    assert_eq!(
        format!(" {text}\n").parse::<OutsideCheckpoint>().unwrap(),
        checkpoint
    );
    for bad in [
        "42".to_owned(),
        format!("x:{}", "ab".repeat(32)),
        format!("-1:{}", "ab".repeat(32)),
        "42:abab".to_owned(),
        format!("42:{}", "zz".repeat(32)),
        format!("42:{}00", "ab".repeat(32)),
    ] {
        let error = bad.parse::<OutsideCheckpoint>().unwrap_err();
        assert!(
            matches!(&error, ArchiveError::Invalid(why) if why.contains("SEQ:HEX")),
            "{bad}: {error}"
        );
    }
}

fn retention_options() -> ArchiveOptions {
    ArchiveOptions {
        retention: RetentionPolicy {
            default_micros: Some(30 * DAY),
            departments: [("Sales".to_owned(), Some(10 * DAY))].into(),
            groups: [("board".to_owned(), None)].into(),
        },
        ..ArchiveOptions::default()
    }
}

#[tokio::test]
async fn purge_deletes_exactly_what_expired_except_holds() {
    let fixture = fixture_with(Arc::new(MemoryStore::new()), retention_options(), true).await;
    // Day 0: alice (Sales, 10 days) to dave (default 30 days) => 30 days, the longest.
    record(
        &fixture,
        "alice@example.com/a",
        "dave@example.com",
        "d0 alice-dave",
    )
    .await; // 1
    record(
        &fixture,
        "alice@example.com/a",
        "zed@other.org",
        "d0 alice-remote",
    )
    .await; // 2
    record(
        &fixture,
        "carol@example.com/c",
        "dave@example.com",
        "d0 carol-dave",
    )
    .await; // 3
    record(&fixture, "dave@example.com/d", "bob@example.com", "d0 dave-bob").await; // 4
    fixture.clock.set(T0 + 5 * DAY);
    record(
        &fixture,
        "alice@example.com/a",
        "zed@other.org",
        "d5 alice-remote",
    )
    .await; // 5
    fixture
        .archive
        .set_hold("officer", "bob@example.com", "case 42")
        .await
        .unwrap(); // 6

    // Day 10 minus a microsecond: nothing has expired yet.
    fixture.clock.set(T0 + 10 * DAY - 1);
    let report = fixture.archive.purge("test", false).await.unwrap();
    assert_eq!(report.deleted, 0, "{report:?}");

    // Just before day 15: alice's remote message of day 0 expired (10 days), the one of day 5
    // expires a microsecond later.
    fixture.clock.set(T0 + 15 * DAY - 1);
    let dry = fixture.archive.purge("test", true).await.unwrap();
    assert_eq!(dry.ranges, vec![(2, 2)]);
    assert!(
        chain_entry(fixture.store.as_ref(), 2).await.is_some(),
        "a dry run deletes nothing"
    );
    let report = fixture.archive.purge("test", false).await.unwrap();
    assert_eq!(report.ranges, vec![(2, 2)]);
    assert_eq!(report.deleted, 1);
    assert!(chain_entry(fixture.store.as_ref(), 2).await.is_none());

    // Day 40: the 30-day messages expire; carol's (board: forever) stays; bob is on hold.
    fixture.clock.set(T0 + 40 * DAY);
    let report = fixture.archive.purge("test", false).await.unwrap();
    assert_eq!(report.ranges, vec![(1, 1), (5, 5)], "{report:?}");
    assert_eq!(report.kept_on_hold, 1);
    assert!(
        chain_entry(fixture.store.as_ref(), 3).await.is_some(),
        "board keeps forever"
    );
    assert!(
        chain_entry(fixture.store.as_ref(), 4).await.is_some(),
        "bob is on hold"
    );
    let verified = fixture.archive.verify().await.unwrap();
    assert!(verified.is_intact(), "{verified}");
    assert_eq!(verified.purged, 3);

    // Releasing the hold lets the next purge take bob's message too.
    fixture
        .archive
        .release_hold("officer", "bob@example.com", "case closed")
        .await
        .unwrap();
    let report = fixture.archive.purge("test", false).await.unwrap();
    assert_eq!(report.ranges, vec![(4, 4)]);
    let verified = fixture.archive.verify().await.unwrap();
    assert!(verified.is_intact(), "{verified}");
    assert_eq!(verified.purged, 4);
    // MAM copies follow each user's own retention: dave's (30 days) are gone, carol's are not.
    let all = ArchiveQuery::default();
    assert_eq!(
        fixture
            .store
            .count(Space::Mam, "dave@example.com", &all)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        fixture
            .store
            .count(Space::Mam, "carol@example.com", &all)
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn a_hold_on_an_outside_contact_keeps_their_messages() {
    let fixture = fixture_with(Arc::new(MemoryStore::new()), retention_options(), true).await;
    record(
        &fixture,
        "alice@example.com/a",
        "partner@other.org",
        "to the partner",
    )
    .await; // 1
    record(
        &fixture,
        "alice@example.com/a",
        "zed@other.org",
        "to someone else",
    )
    .await; // 2
    fixture
        .archive
        .set_hold("officer", "partner@other.org", "subpoena")
        .await
        .unwrap();
    fixture.clock.set(T0 + 40 * DAY);
    let report = fixture.archive.purge("test", false).await.unwrap();
    assert_eq!((report.deleted, report.kept_on_hold), (1, 1), "{report:?}");
    assert!(chain_entry(fixture.store.as_ref(), 1).await.is_some(), "held");
    assert!(chain_entry(fixture.store.as_ref(), 2).await.is_none(), "not held");
}

#[tokio::test]
async fn a_purge_chunk_is_refused_once_a_hold_changed_since_the_purge_read_them() {
    let fixture = fixture_with(Arc::new(MemoryStore::new()), retention_options(), true).await;
    record(&fixture, "alice@example.com/a", "bob@example.com", "evidence").await; // 1
    let entry = fixture
        .store
        .get(Space::Compliance, CHAIN_OWNER, &seq_key(1))
        .await
        .unwrap()
        .unwrap();
    // What a purge read before the hold below: no hold has ever changed.
    let read_before = fixture
        .store
        .get(Space::Meta, META_OWNER, HOLDS_VERSION_KEY)
        .await
        .unwrap();
    fixture
        .archive
        .set_hold("officer", "bob@example.com", "set while the purge runs")
        .await
        .unwrap();
    fixture.clock.set(T0 + 40 * DAY);
    let mut pass = PurgePass {
        actor: "test",
        dry_run: false,
        holds_version: read_before,
        victims: vec![(1, hash_bytes(&entry))],
        deleted: Vec::new(),
    };
    let mut report = PurgeReport::default();
    let refused = fixture.archive.purge_chunk(&mut pass, &mut report).await;
    assert!(matches!(refused, Err(ArchiveError::HoldsChanged)), "{refused:?}");
    assert!(
        chain_entry(fixture.store.as_ref(), 1).await.is_some(),
        "nothing deleted"
    );
    // A whole purge reads the holds afresh and keeps the held message.
    let report = fixture.archive.purge("test", false).await.unwrap();
    assert_eq!((report.deleted, report.kept_on_hold), (0, 1), "{report:?}");
    assert!(fixture.archive.verify().await.unwrap().is_intact());
}

#[tokio::test]
async fn holds_are_durable_listed_and_validated() {
    let fixture = fixture().await;
    assert!(
        fixture
            .archive
            .set_hold("officer", "bob@example.com", " ")
            .await
            .is_err()
    );
    assert!(
        fixture
            .archive
            .set_hold("officer", "not a jid@@", "r")
            .await
            .is_err()
    );
    fixture
        .archive
        .set_hold("officer", "Bob@example.com", "case 7")
        .await
        .unwrap();
    assert!(
        fixture
            .archive
            .set_hold("officer", "bob@example.com", "again")
            .await
            .is_err()
    );
    let holds = fixture.archive.holds().await.unwrap();
    assert_eq!(holds.len(), 1);
    assert_eq!(holds[0].user, "bob@example.com");
    assert_eq!(holds[0].reason, "case 7");
    assert!(
        fixture
            .archive
            .release_hold("officer", "carol@example.com", "x")
            .await
            .is_err()
    );
    let entry = chain_entry(fixture.store.as_ref(), 1).await.unwrap();
    assert!(matches!(entry.body, Body::Hold(HoldRecord { held: true, .. })));
}

#[tokio::test]
async fn a_tampered_tombstone_is_found() {
    let fixture = fixture_with(Arc::new(MemoryStore::new()), retention_options(), true).await;
    record(&fixture, "dave@example.com/d", "zed@other.org", "old").await;
    record(&fixture, "dave@example.com/d", "zed@other.org", "old too").await;
    fixture.clock.set(T0 + 31 * DAY);
    record(&fixture, "dave@example.com/d", "zed@other.org", "new").await;
    assert_eq!(fixture.archive.purge("test", false).await.unwrap().deleted, 2);
    let mut batch = WriteBatch::new();
    batch.delete(Space::Meta, TOMBSTONE_OWNER, seq_key(2));
    fixture.store.apply(batch).await.unwrap();
    let report = fixture.archive.verify().await.unwrap();
    assert!(
        matches!(report.problem, Some(Tamper::Removed { seq: 2, .. })),
        "{report}"
    );
}

async fn search_fixture() -> Fixture {
    let fixture = fixture_with(Arc::new(MemoryStore::new()), ArchiveOptions::default(), true).await;
    record(
        &fixture,
        "alice@example.com/a",
        "bob@example.com",
        "Die Straße ist gesperrt",
    )
    .await;
    fixture.clock.advance(DAY);
    record(
        &fixture,
        "bob@example.com/b",
        "alice@example.com",
        "Quarterly numbers attached",
    )
    .await;
    fixture.clock.advance(DAY);
    record(
        &fixture,
        "alice@example.com/a",
        "zed@other.org",
        "quarterly NUMBERS for you",
    )
    .await;
    record(&fixture, "carol@example.com/c", "dave@example.com", "lunch?").await;
    fixture
}

#[tokio::test]
async fn search_filters_counts_and_logs_access() {
    let fixture = search_fixture().await;
    let archive = &fixture.archive;
    let keyword = SearchFilter {
        keyword: Some("STRASSE".into()),
        ..Default::default()
    };
    let found = archive.search("officer", &keyword, 10).await.unwrap();
    assert_eq!(found.total, 1);
    assert_eq!(found.hits[0].seq, 1);

    let alice_numbers = SearchFilter {
        participants: vec!["alice@example.com".into()],
        keyword: Some("quarterly numbers".into()),
        ..Default::default()
    };
    let found = archive.search("officer", &alice_numbers, 1).await.unwrap();
    assert_eq!(found.total, 2, "counts cover all matches, not only the page");
    assert_eq!(found.hits.len(), 1);
    assert_eq!(found.by_sender.get("alice@example.com"), Some(&1));
    assert_eq!(found.by_sender.get("bob@example.com"), Some(&1));

    let day_two = SearchFilter {
        start: Some(T0 + DAY),
        end: Some(T0 + DAY),
        ..Default::default()
    };
    let found = archive.search("officer", &day_two, 10).await.unwrap();
    assert_eq!(found.hits.iter().map(|hit| hit.seq).collect::<Vec<_>>(), vec![2]);

    let sales = SearchFilter {
        department: Some("sales".into()),
        ..Default::default()
    };
    assert_eq!(archive.search("officer", &sales, 10).await.unwrap().total, 3);

    let inverted = SearchFilter {
        start: Some(2),
        end: Some(1),
        ..Default::default()
    };
    assert!(matches!(
        archive.search("officer", &inverted, 10).await,
        Err(ArchiveError::Invalid(_))
    ));

    let log = archive.access_log(100, None).await.unwrap();
    assert_eq!(log.len(), 4, "{log:?}");
    assert!(
        log.windows(2).all(|pair| pair[0].seq > pair[1].seq),
        "newest first: {log:?}"
    );
    let oldest = &log[3];
    assert_eq!(oldest.actor, "officer");
    assert_eq!(oldest.action, "search");
    assert_eq!(log[2].count, 2);
    assert_eq!(log[2].filter["keyword"], "quarterly numbers");
    let newest_two = archive.access_log(2, None).await.unwrap();
    assert_eq!(newest_two, log[..2], "a limit keeps the newest");
    let next_page = archive.access_log(2, Some(newest_two[1].seq)).await.unwrap();
    assert_eq!(
        next_page,
        log[2..],
        "the page before the second entry is the other two"
    );
    assert_eq!(
        archive.access_log(10, Some(log[3].seq)).await.unwrap(),
        [],
        "nothing is older than the oldest"
    );
    assert_eq!(archive.access_log(10, Some(0)).await.unwrap(), []);
    assert_eq!(
        archive.access_log(10, Some(u64::MAX)).await.unwrap(),
        log,
        "a bound past the head lists from the newest"
    );
    assert!(archive.verify().await.unwrap().is_intact());
}

fn sha256_file(path: &std::path::Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

#[tokio::test]
async fn exports_parse_with_real_readers_and_match_their_manifest() {
    let fixture = search_fixture().await;
    let out = tempfile::tempdir().unwrap();
    let alice = SearchFilter {
        participants: vec!["alice@example.com".into()],
        ..Default::default()
    };

    let csv_dir = out.path().join("csv");
    let manifest = fixture
        .archive
        .export("officer", &alice, ExportFormat::Csv, &csv_dir)
        .await
        .unwrap();
    assert_eq!(manifest.messages, 3);
    let mut reader = csv::Reader::from_path(csv_dir.join("messages.csv")).unwrap();
    assert_eq!(reader.headers().unwrap(), export::CSV_HEADER.as_slice());
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(&rows[0][8], "Die Straße ist gesperrt");
    assert_eq!(&rows[2][3], "zed@other.org");
    let raw = std::fs::read_to_string(csv_dir.join("messages.csv")).unwrap();
    assert_eq!(
        raw.matches("\r\n").count(),
        raw.matches('\n').count(),
        "RFC 4180: every line ends with CRLF"
    );

    let jsonl_dir = out.path().join("jsonl");
    fixture
        .archive
        .export("officer", &alice, ExportFormat::Jsonl, &jsonl_dir)
        .await
        .unwrap();
    let text = std::fs::read_to_string(jsonl_dir.join("messages.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[1]["from"], "bob@example.com/b");
    assert!(lines[1]["stanza"].as_str().unwrap().contains("<body>"));

    let eml_dir = out.path().join("eml");
    let manifest = fixture
        .archive
        .export("officer", &alice, ExportFormat::Eml, &eml_dir)
        .await
        .unwrap();
    let mut files: Vec<_> = std::fs::read_dir(eml_dir.join("messages"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 3);
    let parsed_bodies: Vec<String> = files
        .iter()
        .map(|path| {
            let bytes = std::fs::read(path).unwrap();
            let parsed = mail_parser::MessageParser::default().parse(&bytes).unwrap();
            assert!(parsed.date().is_some());
            parsed.body_text(0).unwrap().into_owned()
        })
        .collect();
    assert_eq!(parsed_bodies[0], "Die Straße ist gesperrt");
    // Every line of SHA256SUMS matches its file, and the manifest matches SHA256SUMS.
    let sums = std::fs::read_to_string(eml_dir.join("SHA256SUMS")).unwrap();
    for line in sums.lines() {
        let (hash, name) = line.split_once("  ").unwrap();
        assert_eq!(sha256_file(&eml_dir.join(name)), hash, "{name}");
    }
    assert_eq!(manifest.files[0].name, "SHA256SUMS");
    assert_eq!(manifest.files[0].sha256, sha256_file(&eml_dir.join("SHA256SUMS")));

    let mbox_dir = out.path().join("mbox");
    let manifest = fixture
        .archive
        .export("officer", &alice, ExportFormat::Mbox, &mbox_dir)
        .await
        .unwrap();
    let mbox = std::fs::read(mbox_dir.join("messages.mbox")).unwrap();
    let messages: Vec<_> = mail_parser::mailbox::mbox::MessageIterator::new(std::io::Cursor::new(&mbox))
        .map(|message| message.unwrap())
        .collect();
    assert_eq!(messages.len(), 3);
    let second = mail_parser::MessageParser::default()
        .parse(messages[1].contents())
        .unwrap();
    assert_eq!(second.body_text(0).as_deref(), Some("Quarterly numbers attached"));

    // The manifest on disk is the one returned, and its hash and checkpoint are right.
    let on_disk: ExportManifest =
        serde_json::from_slice(&std::fs::read(mbox_dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(on_disk, manifest);
    assert_eq!(
        manifest.files[0].sha256,
        sha256_file(&mbox_dir.join("messages.mbox"))
    );
    assert_eq!(manifest.files[0].bytes, mbox.len() as u64);
    assert_eq!(
        manifest.checkpoint.seq,
        fixture.archive.head().await.unwrap().seq - 1
    );
    assert_eq!(manifest.first_message_at.as_deref(), Some(rfc3339(T0).as_str()));

    let log = fixture.archive.access_log(10, None).await.unwrap();
    let actions: Vec<&str> = log.iter().map(|entry| entry.action.as_str()).collect();
    assert_eq!(
        actions,
        ["export:mbox", "export:eml", "export:jsonl", "export:csv"],
        "newest first"
    );
}

/// The wait for each message's durable record is counted, for the metrics.
#[tokio::test]
async fn each_recorded_message_is_timed() {
    let fixture = fixture().await;
    assert_eq!(fixture.archive.record_times().count, 0);
    record(&fixture, "alice@example.com/a", "bob@example.com", "one").await;
    record(&fixture, "bob@example.com/b", "alice@example.com", "two").await;
    let times = fixture.archive.record_times();
    assert_eq!(times.count, 2, "{times:?}");
    assert_eq!(
        times.buckets.last().map(|(_, count)| *count),
        Some(2),
        "both within a second: {times:?}"
    );
}

/// Pages of the access log reach entries in older blocks of the chain's index.
#[tokio::test]
async fn the_access_log_pages_back_across_index_blocks() {
    let fixture = search_fixture().await;
    let everything = SearchFilter::default();
    fixture.archive.search("first", &everything, 1).await.unwrap();
    let head = fixture.archive.head().await.unwrap().seq;
    for n in 0..entry::BLOCK_SIZE {
        record(
            &fixture,
            "alice@example.com/a",
            "bob@example.com",
            &format!("filler {n}"),
        )
        .await;
    }
    fixture.archive.search("second", &everything, 1).await.unwrap();
    assert!(fixture.archive.head().await.unwrap().seq / entry::BLOCK_SIZE > head / entry::BLOCK_SIZE);

    let newest = fixture.archive.access_log(1, None).await.unwrap();
    assert_eq!(newest[0].actor, "second");
    let older = fixture.archive.access_log(1, Some(newest[0].seq)).await.unwrap();
    assert_eq!(older.len(), 1);
    assert_eq!(older[0].actor, "first", "found in the block before");
    assert_eq!(
        fixture.archive.access_log(1, Some(older[0].seq)).await.unwrap(),
        []
    );
}

#[tokio::test]
async fn a_failed_export_is_on_record_too() {
    let fixture = search_fixture().await;
    let out = tempfile::tempdir().unwrap();
    std::fs::write(out.path().join("already-here"), b"x").unwrap();
    let everything = SearchFilter::default();
    let failed = fixture
        .archive
        .export("officer", &everything, ExportFormat::Csv, out.path())
        .await;
    assert!(matches!(failed, Err(ArchiveError::Io(_))), "{failed:?}");
    let log = fixture.archive.access_log(1, None).await.unwrap();
    assert_eq!(log[0].action, "export:csv:failed");
    assert_eq!((log[0].actor.as_str(), log[0].count), ("officer", 0));
    assert!(fixture.archive.verify().await.unwrap().is_intact());
}

/// The chain entry and its MAM copies are one commit: when the chain's commit fails (here the
/// head moved under it), no copy is stored either, and the message is refused.
#[tokio::test]
async fn a_failed_chain_commit_stores_no_mam_copy() {
    let dir = tempfile::tempdir().unwrap();
    for store in [
        Arc::new(MemoryStore::new()) as Arc<dyn Store>,
        Arc::new(RedbStore::open(&dir.path().join("db.redb")).unwrap()),
    ] {
        let fixture = fixture_with(store, ArchiveOptions::default(), false).await;
        record(&fixture, "alice@example.com/a", "bob@example.com", "first").await;
        let mut moved = WriteBatch::new();
        moved.put(Space::Meta, entry::META_OWNER, entry::HEAD_KEY, b"moved".to_vec());
        fixture.store.apply(moved).await.unwrap();

        let mut stanza = message("alice@example.com/a", "bob@example.com", "second");
        let refused = fixture
            .archive
            .stage()
            .record(&mut stanza, Addressee::LocalAccount)
            .await;
        assert!(refused.is_err(), "{refused:?}");
        assert!(stanza.element().get_child("stanza-id", NS_SID).is_none());
        for owner in ["alice@example.com", "bob@example.com"] {
            let count = fixture
                .store
                .count(Space::Mam, owner, &ArchiveQuery::default())
                .await
                .unwrap();
            assert_eq!(count, 1, "{owner} keeps only the first message's copy");
        }
    }
}

#[tokio::test]
async fn purge_takes_the_mam_copies_of_people_who_left_at_the_default_retention() {
    let fixture = fixture_with(Arc::new(MemoryStore::new()), retention_options(), true).await;
    // ghost is not (any more) in the directory; dave is, with the default 30 days.
    record(
        &fixture,
        "ghost@example.com/g",
        "dave@example.com",
        "from a leaver",
    )
    .await;
    fixture.clock.set(T0 + 20 * DAY);
    record(&fixture, "ghost@example.com/g", "dave@example.com", "later").await;
    let owned = |owner: &'static str| {
        let store = fixture.store.clone();
        async move {
            store
                .count(Space::Mam, owner, &ArchiveQuery::default())
                .await
                .unwrap()
        }
    };
    assert_eq!(owned("ghost@example.com").await, 2);

    fixture.clock.set(T0 + 31 * DAY);
    let dry = fixture.archive.purge("test", true).await.unwrap();
    assert_eq!(dry.mam_deleted, 2, "ghost's and dave's copies of day 0: {dry:?}");
    assert_eq!(owned("ghost@example.com").await, 2, "a dry run deletes nothing");
    let report = fixture.archive.purge("test", false).await.unwrap();
    assert_eq!(report.ranges, vec![(1, 1)], "{report:?}");
    assert_eq!(report.mam_deleted, 2, "{report:?}");
    assert_eq!(owned("ghost@example.com").await, 1, "the copy of day 20 is kept");
    assert_eq!(owned("dave@example.com").await, 1);
}

/// A directory that cannot answer, as when LDAP is down.
struct Unavailable;

#[async_trait::async_trait]
impl parley_directory::Directory for Unavailable {
    async fn authenticate(
        &self,
        _: &str,
        _: &str,
    ) -> Result<parley_directory::AuthOutcome, parley_directory::DirectoryError> {
        Err(down())
    }
    async fn scram_credentials(
        &self,
        _: &str,
        _: parley_directory::ScramHash,
    ) -> Result<Option<parley_directory::ScramCredentials>, parley_directory::DirectoryError> {
        Err(down())
    }
    fn supports_scram(&self) -> bool {
        false
    }
    async fn person(
        &self,
        _: &str,
    ) -> Result<Option<parley_directory::Person>, parley_directory::DirectoryError> {
        Err(down())
    }
    async fn people(&self) -> Result<Vec<parley_directory::Person>, parley_directory::DirectoryError> {
        Err(down())
    }
    async fn members(&self, _: &str) -> Result<Vec<String>, parley_directory::DirectoryError> {
        Err(down())
    }
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<parley_directory::DirectoryChange> {
        tokio::sync::broadcast::channel(1).1
    }
}

fn down() -> parley_directory::DirectoryError {
    parley_directory::DirectoryError::Unavailable("test: LDAP is down".into())
}

#[tokio::test]
async fn purge_stops_when_the_directory_cannot_say_whose_retention_applies() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(T0));
    let archive = ComplianceArchive::open(
        store.clone(),
        Some(Arc::new(Unavailable)),
        domain(),
        retention_options(),
        clock.clone(),
    )
    .await
    .unwrap();
    let mut stanza = message("alice@example.com/a", "bob@example.com", "keep me");
    archive
        .stage()
        .record(&mut stanza, Addressee::LocalAccount)
        .await
        .unwrap();
    clock.set(T0 + 400 * DAY);
    // The default would have expired it; a department may keep it for years.
    let outcome = archive.purge("test", false).await;
    assert!(matches!(outcome, Err(ArchiveError::Directory(_))), "{outcome:?}");
    assert!(chain_entry(store.as_ref(), 1).await.is_some());
    assert_eq!(
        store
            .count(Space::Mam, "bob@example.com", &ArchiveQuery::default())
            .await
            .unwrap(),
        1
    );
}

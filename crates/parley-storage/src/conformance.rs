//! The conformance suite every backend must pass. It asserts (panics) on the first divergence.
//!
//! Run [`run_all`] on a fresh, empty store: it uses fixed owners and checks exact counts.

use std::sync::Arc;

use crate::{ArchiveAppend, ArchiveQuery, MAX_WITH_LEN, NewRecord, Space, StorageError, Store, WriteBatch};

/// Every semantic check, in sequence.
pub async fn run_all<S: Store>(store: &S) {
    kv_put_get_delete(store).await;
    kv_delete_owner(store).await;
    kv_scan_order_prefix_limit(store).await;
    kv_isolation(store).await;
    kv_compare_and_set(store).await;
    kv_racing_batches(store).await;
    kv_rejects_oversized_input(store).await;
    archive_paging(store).await;
    archive_time_range_and_with(store).await;
    archive_out_of_order_timestamps(store).await;
    archive_isolation(store).await;
    archive_delete_before_and_ids(store).await;
    archive_owners(store).await;
    combined_commit(store).await;
    archive_read_your_writes(store).await;
}

fn batch(build: impl FnOnce(&mut WriteBatch)) -> WriteBatch {
    let mut batch = WriteBatch::new();
    build(&mut batch);
    batch
}

async fn kv_put_get_delete<S: Store>(store: &S) {
    assert_eq!(store.get(Space::Vcard, "kv1", "card").await.unwrap(), None);
    store
        .apply(batch(|b| {
            b.put(Space::Vcard, "kv1", "card", b"v1".to_vec());
        }))
        .await
        .unwrap();
    assert_eq!(
        store.get(Space::Vcard, "kv1", "card").await.unwrap(),
        Some(b"v1".to_vec())
    );
    store
        .apply(batch(|b| {
            b.put(Space::Vcard, "kv1", "card", b"v2".to_vec());
        }))
        .await
        .unwrap();
    assert_eq!(
        store.get(Space::Vcard, "kv1", "card").await.unwrap(),
        Some(b"v2".to_vec())
    );
    store
        .apply(batch(|b| {
            b.delete(Space::Vcard, "kv1", "card");
        }))
        .await
        .unwrap();
    assert_eq!(store.get(Space::Vcard, "kv1", "card").await.unwrap(), None);
    // Deleting an absent key is fine; an empty value is a value, not absence.
    store
        .apply(batch(|b| {
            b.delete(Space::Vcard, "kv1", "never");
        }))
        .await
        .unwrap();
    store
        .apply(batch(|b| {
            b.put(Space::Vcard, "kv1", "empty", Vec::new());
        }))
        .await
        .unwrap();
    assert_eq!(
        store.get(Space::Vcard, "kv1", "empty").await.unwrap(),
        Some(Vec::new())
    );
    // Writes of one batch apply in order.
    let ordered = batch(|b| {
        b.put(Space::Vcard, "kv1", "x", b"1".to_vec())
            .delete(Space::Vcard, "kv1", "x");
        b.put(Space::Vcard, "kv1", "y", b"1".to_vec())
            .put(Space::Vcard, "kv1", "y", b"2".to_vec());
    });
    store.apply(ordered).await.unwrap();
    assert_eq!(store.get(Space::Vcard, "kv1", "x").await.unwrap(), None);
    assert_eq!(
        store.get(Space::Vcard, "kv1", "y").await.unwrap(),
        Some(b"2".to_vec())
    );
    // Several keys at once: in the order asked, absent ones as None, other owners unseen.
    store
        .apply(batch(|b| {
            b.put(Space::Vcard, "kv-other", "y", b"other".to_vec());
        }))
        .await
        .unwrap();
    let keys = ["y", "x", "empty", "y"].map(str::to_owned);
    assert_eq!(
        store.get_many(Space::Vcard, "kv1", &keys).await.unwrap(),
        [Some(b"2".to_vec()), None, Some(Vec::new()), Some(b"2".to_vec())]
    );
    assert_eq!(store.get_many(Space::Vcard, "kv1", &[]).await.unwrap(), []);
    store.flush().await.unwrap();
}

async fn kv_delete_owner<S: Store>(store: &S) {
    let setup = batch(|b| {
        for key in ["a", "b", "c"] {
            b.put(Space::Private, "del", key, key.as_bytes().to_vec());
            b.put(Space::Private, "delx", key, key.as_bytes().to_vec());
            b.put(Space::Roster, "del", key, key.as_bytes().to_vec());
        }
    });
    store.apply(setup).await.unwrap();
    store
        .apply(batch(|b| {
            b.delete_owner(Space::Private, "del");
        }))
        .await
        .unwrap();
    assert!(
        store
            .scan_prefix(Space::Private, "del", "", 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .scan_prefix(Space::Private, "delx", "", 100)
            .await
            .unwrap()
            .len(),
        3,
        "other owner kept"
    );
    assert_eq!(
        store
            .scan_prefix(Space::Roster, "del", "", 100)
            .await
            .unwrap()
            .len(),
        3,
        "other space kept"
    );
}

async fn kv_scan_order_prefix_limit<S: Store>(store: &S) {
    let setup = batch(|b| {
        for key in ["item/b", "item/a", "item/c", "itemz", "other", "item/"] {
            b.put(Space::Roster, "scan", key, key.as_bytes().to_vec());
        }
    });
    store.apply(setup).await.unwrap();
    let keys = |entries: Vec<(String, Vec<u8>)>| -> Vec<String> {
        entries
            .into_iter()
            .map(|(key, value)| {
                assert_eq!(key.as_bytes(), value.as_slice(), "value belongs to its key");
                key
            })
            .collect()
    };
    let all = keys(store.scan_prefix(Space::Roster, "scan", "", 100).await.unwrap());
    assert_eq!(all, ["item/", "item/a", "item/b", "item/c", "itemz", "other"]);
    let items = keys(
        store
            .scan_prefix(Space::Roster, "scan", "item/", 100)
            .await
            .unwrap(),
    );
    assert_eq!(items, ["item/", "item/a", "item/b", "item/c"]);
    let limited = keys(
        store
            .scan_prefix(Space::Roster, "scan", "item/", 2)
            .await
            .unwrap(),
    );
    assert_eq!(limited, ["item/", "item/a"]);
    assert!(
        store
            .scan_prefix(Space::Roster, "scan", "item/", 0)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .scan_prefix(Space::Roster, "scan", "nothing", 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .scan_prefix(Space::Roster, "nobody", "", 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn kv_isolation<S: Store>(store: &S) {
    // "iso" is a prefix of "isolde": neither may see the other's keys, in any space.
    let setup = batch(|b| {
        b.put(Space::Offline, "iso", "lde/k", b"short owner".to_vec());
        b.put(Space::Offline, "isolde", "k", b"long owner".to_vec());
        b.put(Space::Meta, "iso", "lde/k", b"other space".to_vec());
    });
    store.apply(setup).await.unwrap();
    let short = store.scan_prefix(Space::Offline, "iso", "", 10).await.unwrap();
    assert_eq!(short, [("lde/k".to_owned(), b"short owner".to_vec())]);
    let long = store.scan_prefix(Space::Offline, "isolde", "", 10).await.unwrap();
    assert_eq!(long, [("k".to_owned(), b"long owner".to_vec())]);
    assert_eq!(store.get(Space::Offline, "isol", "de/k").await.unwrap(), None);
    assert_eq!(
        store.get(Space::Meta, "iso", "lde/k").await.unwrap(),
        Some(b"other space".to_vec())
    );
    assert_eq!(store.get(Space::Audit, "iso", "lde/k").await.unwrap(), None);
    // Unicode keys sort by bytes (code points) on every backend.
    let unicode = batch(|b| {
        b.put(Space::Private, "uni", "é", b"2".to_vec())
            .put(Space::Private, "uni", "z", b"1".to_vec());
    });
    store.apply(unicode).await.unwrap();
    let order: Vec<String> = store
        .scan_prefix(Space::Private, "uni", "", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(order, ["z", "é"]);
}

async fn kv_compare_and_set<S: Store>(store: &S) {
    let create = || {
        batch(|b| {
            b.expect(Space::Roster, "cas", "ver", None)
                .put(Space::Roster, "cas", "ver", b"1".to_vec());
        })
    };
    store.apply(create()).await.unwrap();
    assert!(
        matches!(store.apply(create()).await, Err(StorageError::Conflict)),
        "key exists now"
    );

    // A conflicting batch leaves nothing behind, not even its other writes.
    let stale = batch(|b| {
        b.put(Space::Roster, "cas", "side", b"x".to_vec());
        b.delete(Space::Roster, "cas", "ver");
        b.expect(Space::Roster, "cas", "ver", Some(b"0".to_vec()));
    });
    assert!(matches!(store.apply(stale).await, Err(StorageError::Conflict)));
    assert_eq!(store.get(Space::Roster, "cas", "side").await.unwrap(), None);
    assert_eq!(
        store.get(Space::Roster, "cas", "ver").await.unwrap(),
        Some(b"1".to_vec())
    );

    // Expectations see the state before the batch's own writes.
    let bump = batch(|b| {
        b.put(Space::Roster, "cas", "ver", b"2".to_vec());
        b.expect(Space::Roster, "cas", "ver", Some(b"1".to_vec()));
        b.expect(Space::Roster, "cas", "absent", None);
    });
    store.apply(bump).await.unwrap();
    assert_eq!(
        store.get(Space::Roster, "cas", "ver").await.unwrap(),
        Some(b"2".to_vec())
    );

    // Absent is not the empty value, and the expectation is per space.
    let empty_is_not_absent = batch(|b| {
        b.expect(Space::Roster, "cas", "absent", Some(Vec::new()));
    });
    assert!(matches!(
        store.apply(empty_is_not_absent).await,
        Err(StorageError::Conflict)
    ));
    let other_space = batch(|b| {
        b.expect(Space::Vcard, "cas", "ver", None);
    });
    store.apply(other_space).await.unwrap();
}

async fn kv_racing_batches<S: Store>(store: &S) {
    let claim = |value: &'static [u8]| {
        batch(|b| {
            b.expect(Space::Meta, "race", "lock", None)
                .put(Space::Meta, "race", "lock", value.to_vec());
        })
    };
    let unrelated = batch(|b| {
        b.put(Space::Meta, "race", "other", b"ok".to_vec());
    });
    let (first, second, third) = tokio::join!(
        store.apply(claim(b"a")),
        store.apply(claim(b"b")),
        store.apply(unrelated)
    );
    assert!(third.is_ok(), "a conflict must not fail unrelated batches");
    let winner = match (first, second) {
        (Ok(()), Err(StorageError::Conflict)) => b"a".to_vec(),
        (Err(StorageError::Conflict), Ok(())) => b"b".to_vec(),
        other => panic!("exactly one claim must win, got {other:?}"),
    };
    assert_eq!(
        store.get(Space::Meta, "race", "lock").await.unwrap(),
        Some(winner)
    );
    assert_eq!(
        store.get(Space::Meta, "race", "other").await.unwrap(),
        Some(b"ok".to_vec())
    );
}

async fn kv_rejects_oversized_input<S: Store>(store: &S) {
    let long_owner = "o".repeat(crate::MAX_OWNER_LEN + 1);
    assert!(matches!(
        store.get(Space::Roster, &long_owner, "k").await,
        Err(StorageError::TooLarge { .. })
    ));
    let long_key = "k".repeat(crate::MAX_KEY_LEN + 1);
    assert!(matches!(
        store
            .get_many(Space::Roster, "o", &["k".to_owned(), long_key])
            .await,
        Err(StorageError::TooLarge { .. })
    ));
    let too_big = batch(|b| {
        b.put(Space::Roster, "big", "k", vec![0; crate::MAX_VALUE_LEN + 1]);
    });
    assert!(matches!(
        store.apply(too_big).await,
        Err(StorageError::TooLarge { .. })
    ));
    assert_eq!(store.get(Space::Roster, "big", "k").await.unwrap(), None);
    let record = NewRecord {
        timestamp_micros: 0,
        with: "w".repeat(crate::MAX_WITH_LEN + 1),
        payload: vec![],
    };
    assert!(matches!(
        store.append(Space::Mam, "big", record).await,
        Err(StorageError::TooLarge { .. })
    ));
}

fn record(timestamp_micros: i64, with: &str) -> NewRecord {
    NewRecord {
        timestamp_micros,
        with: with.to_owned(),
        payload: format!("at {timestamp_micros}").into_bytes(),
    }
}

/// Appends ten records at times 100, 200 .. 1000, alternating `with` between bob and carol.
async fn ten_records<S: Store>(store: &S, owner: &str) -> Vec<u64> {
    let mut ids = Vec::new();
    for i in 1..=10 {
        let with = if i % 2 == 0 { "bob" } else { "carol" };
        ids.push(
            store
                .append(Space::Mam, owner, record(i * 100, with))
                .await
                .unwrap(),
        );
    }
    ids
}

async fn page_ids<S: Store>(store: &S, owner: &str, query: ArchiveQuery) -> (Vec<u64>, bool) {
    let page = store.query(Space::Mam, owner, &query).await.unwrap();
    for record in &page.records {
        assert!(
            query.matches(record),
            "record {record:?} does not match {query:?}"
        );
    }
    (page.records.iter().map(|r| r.id).collect(), page.complete)
}

async fn archive_paging<S: Store>(store: &S) {
    let ids = ten_records(store, "pager").await;
    assert!(
        ids.windows(2).all(|pair| pair[0] < pair[1]),
        "ids increase: {ids:?}"
    );
    let q = |after_id, before_id, limit, reverse| ArchiveQuery {
        after_id,
        before_id,
        limit,
        reverse,
        ..ArchiveQuery::default()
    };
    // Forward through the archive.
    assert_eq!(
        page_ids(store, "pager", q(None, None, 3, false)).await,
        (ids[0..3].to_vec(), false)
    );
    assert_eq!(
        page_ids(store, "pager", q(Some(ids[2]), None, 3, false)).await,
        (ids[3..6].to_vec(), false)
    );
    assert_eq!(
        page_ids(store, "pager", q(Some(ids[5]), None, 4, false)).await,
        (ids[6..10].to_vec(), true)
    );
    assert_eq!(
        page_ids(store, "pager", q(Some(ids[9]), None, 4, false)).await,
        (vec![], true)
    );
    // Backward from the newest, ascending within each page.
    assert_eq!(
        page_ids(store, "pager", q(None, None, 3, true)).await,
        (ids[7..10].to_vec(), false)
    );
    assert_eq!(
        page_ids(store, "pager", q(None, Some(ids[7]), 3, true)).await,
        (ids[4..7].to_vec(), false)
    );
    assert_eq!(
        page_ids(store, "pager", q(None, Some(ids[2]), 3, true)).await,
        (ids[0..2].to_vec(), true)
    );
    // Both bounds, exact page sizes and an empty page.
    assert_eq!(
        page_ids(store, "pager", q(Some(ids[1]), Some(ids[5]), 10, false))
            .await
            .0,
        ids[2..5].to_vec()
    );
    assert_eq!(
        page_ids(store, "pager", q(Some(ids[1]), Some(ids[5]), 2, true)).await,
        (ids[3..5].to_vec(), false)
    );
    assert_eq!(
        page_ids(store, "pager", q(None, None, 10, false)).await,
        (ids.clone(), true)
    );
    assert_eq!(
        page_ids(store, "pager", q(None, None, 0, false)).await,
        (vec![], false)
    );
    assert_eq!(
        page_ids(store, "pager", q(Some(ids[4]), Some(ids[5]), 5, false)).await,
        (vec![], true)
    );
    // Counting ignores paging.
    assert_eq!(
        store
            .count(Space::Mam, "pager", &q(Some(ids[4]), None, 1, false))
            .await
            .unwrap(),
        10
    );
    assert_eq!(
        store
            .count(Space::Mam, "nobody", &ArchiveQuery::default())
            .await
            .unwrap(),
        0
    );
    // Records come back whole.
    let third = store
        .get_record(Space::Mam, "pager", ids[2])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            third.timestamp_micros,
            third.with.as_str(),
            third.payload.as_slice()
        ),
        (300, "carol", &b"at 300"[..])
    );
    assert_eq!(
        store.get_record(Space::Mam, "someone", ids[2]).await.unwrap(),
        None,
        "owner scopes ids"
    );
}

async fn archive_time_range_and_with<S: Store>(store: &S) {
    let ids = ten_records(store, "timer").await;
    let range = ArchiveQuery {
        start: Some(200),
        end: Some(500),
        limit: 50,
        ..ArchiveQuery::default()
    };
    assert_eq!(
        page_ids(store, "timer", range.clone()).await,
        (ids[1..5].to_vec(), true)
    );
    assert_eq!(store.count(Space::Mam, "timer", &range).await.unwrap(), 4);
    // Bounds between records, open-ended ranges and an inverted range.
    let between = ArchiveQuery {
        start: Some(150),
        end: Some(450),
        ..range.clone()
    };
    assert_eq!(page_ids(store, "timer", between).await.0, ids[1..4].to_vec());
    let from = ArchiveQuery {
        start: Some(901),
        end: None,
        ..range.clone()
    };
    assert_eq!(page_ids(store, "timer", from).await.0, ids[9..10].to_vec());
    let until = ArchiveQuery {
        start: None,
        end: Some(100),
        ..range.clone()
    };
    assert_eq!(page_ids(store, "timer", until).await.0, ids[0..1].to_vec());
    let outside = ArchiveQuery {
        start: Some(2000),
        end: None,
        ..range.clone()
    };
    assert_eq!(page_ids(store, "timer", outside.clone()).await, (vec![], true));
    assert_eq!(store.count(Space::Mam, "timer", &outside).await.unwrap(), 0);
    let inverted = ArchiveQuery {
        start: Some(500),
        end: Some(200),
        ..range.clone()
    };
    assert_eq!(page_ids(store, "timer", inverted.clone()).await, (vec![], true));
    assert_eq!(store.count(Space::Mam, "timer", &inverted).await.unwrap(), 0);
    // Time range with paging, in both directions.
    let newest = ArchiveQuery {
        limit: 2,
        reverse: true,
        ..range.clone()
    };
    assert_eq!(
        page_ids(store, "timer", newest).await,
        (ids[3..5].to_vec(), false)
    );
    let next = ArchiveQuery {
        limit: 2,
        after_id: Some(ids[2]),
        ..range.clone()
    };
    assert_eq!(page_ids(store, "timer", next).await, (ids[3..5].to_vec(), true));
    // `with` is an exact match, alone and with a time range.
    let bob = ArchiveQuery {
        with: Some("bob".into()),
        limit: 50,
        ..ArchiveQuery::default()
    };
    let bob_ids: Vec<u64> = ids.iter().skip(1).step_by(2).copied().collect();
    assert_eq!(
        page_ids(store, "timer", bob.clone()).await,
        (bob_ids.clone(), true)
    );
    assert_eq!(store.count(Space::Mam, "timer", &bob).await.unwrap(), 5);
    let bob_newest = ArchiveQuery {
        limit: 2,
        reverse: true,
        ..bob.clone()
    };
    assert_eq!(
        page_ids(store, "timer", bob_newest).await,
        (bob_ids[3..5].to_vec(), false)
    );
    let bob_in_range = ArchiveQuery {
        start: Some(200),
        end: Some(500),
        ..bob.clone()
    };
    assert_eq!(
        page_ids(store, "timer", bob_in_range.clone()).await,
        (vec![ids[1], ids[3]], true)
    );
    assert_eq!(store.count(Space::Mam, "timer", &bob_in_range).await.unwrap(), 2);
    let bo = ArchiveQuery {
        with: Some("bo".into()),
        ..bob.clone()
    };
    assert_eq!(
        page_ids(store, "timer", bo.clone()).await,
        (vec![], true),
        "no prefix match"
    );
    assert_eq!(store.count(Space::Mam, "timer", &bo).await.unwrap(), 0);
}

async fn archive_out_of_order_timestamps<S: Store>(store: &S) {
    // A clock that went backwards: filters must still be exact.
    let mut ids = Vec::new();
    for (timestamp, with) in [(10, "a"), (30, "b"), (20, "a"), (5, "b"), (40, "a"), (25, "a")] {
        ids.push(
            store
                .append(Space::Mam, "skewed", record(timestamp, with))
                .await
                .unwrap(),
        );
    }
    let range = ArchiveQuery {
        start: Some(15),
        end: Some(35),
        limit: 10,
        ..ArchiveQuery::default()
    };
    assert_eq!(
        page_ids(store, "skewed", range.clone()).await,
        (vec![ids[1], ids[2], ids[5]], true)
    );
    assert_eq!(store.count(Space::Mam, "skewed", &range).await.unwrap(), 3);
    let newest = ArchiveQuery {
        limit: 2,
        reverse: true,
        ..range.clone()
    };
    assert_eq!(
        page_ids(store, "skewed", newest).await,
        (vec![ids[2], ids[5]], false)
    );
    let with_a = ArchiveQuery {
        with: Some("a".into()),
        ..range.clone()
    };
    assert_eq!(
        page_ids(store, "skewed", with_a.clone()).await,
        (vec![ids[2], ids[5]], true)
    );
    assert_eq!(store.count(Space::Mam, "skewed", &with_a).await.unwrap(), 2);
}

async fn archive_isolation<S: Store>(store: &S) {
    // "ali" is a prefix of "alice"; spaces are separate.
    let alice = store.append(Space::Mam, "alice", record(1, "x")).await.unwrap();
    let ali = store.append(Space::Mam, "ali", record(1, "x")).await.unwrap();
    let other_space = store
        .append(Space::Offline, "alice", record(1, "x"))
        .await
        .unwrap();
    let all = ArchiveQuery {
        limit: 50,
        ..ArchiveQuery::default()
    };
    assert_eq!(page_ids(store, "alice", all.clone()).await.0, vec![alice]);
    assert_eq!(page_ids(store, "ali", all.clone()).await.0, vec![ali]);
    assert_eq!(store.count(Space::Mam, "alic", &all).await.unwrap(), 0);
    let offline = store.query(Space::Offline, "alice", &all).await.unwrap();
    assert_eq!(
        offline.records.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![other_space]
    );
    assert_eq!(store.get_record(Space::Mam, "alice", ali).await.unwrap(), None);
}

async fn archive_owners<S: Store>(store: &S) {
    // Space::Private's archive side is used by nothing else in the suite.
    assert_eq!(
        store.owners(Space::Private, None, 10).await.unwrap(),
        Vec::<String>::new()
    );
    for owner in ["bob", "alice", "carol", "alice"] {
        store.append(Space::Private, owner, record(5, "x")).await.unwrap();
    }
    store
        .append(Space::Private, "dave", record(1, "x"))
        .await
        .unwrap();
    // The key-value side and other spaces are not archive owners here.
    store
        .apply(batch(|b| {
            b.put(Space::Private, "erin", "k", b"v".to_vec());
        }))
        .await
        .unwrap();
    store
        .append(Space::Offline, "frank", record(1, "x"))
        .await
        .unwrap();
    let all = store.owners(Space::Private, None, 10).await.unwrap();
    assert_eq!(all, ["alice", "bob", "carol", "dave"]);
    // Paged: after the last one seen, at most `limit`.
    assert_eq!(
        store.owners(Space::Private, None, 2).await.unwrap(),
        ["alice", "bob"]
    );
    assert_eq!(
        store.owners(Space::Private, Some("bob"), 2).await.unwrap(),
        ["carol", "dave"]
    );
    assert_eq!(
        store.owners(Space::Private, Some("dave"), 2).await.unwrap(),
        Vec::<String>::new()
    );
    // An owner whose records are all deleted is no owner any more.
    assert_eq!(
        store
            .delete_before(Space::Private, Some("dave"), 2)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store.owners(Space::Private, Some("bob"), 10).await.unwrap(),
        ["carol"]
    );
}

async fn archive_delete_before_and_ids<S: Store>(store: &S) {
    // Space::Audit is used by nothing else in the suite, so "all owners" is exactly x and y.
    let mut last = 0;
    for owner in ["x", "y"] {
        for timestamp in 1..=5 {
            let id = store
                .append(Space::Audit, owner, record(timestamp, "w"))
                .await
                .unwrap();
            assert!(
                id > last,
                "ids strictly increase across owners: {id} after {last}"
            );
            last = id;
        }
    }
    let all = ArchiveQuery {
        limit: 50,
        ..ArchiveQuery::default()
    };
    let times = |owner: &'static str| {
        let all = all.clone();
        async move {
            let page = store.query(Space::Audit, owner, &all).await.unwrap();
            page.records
                .iter()
                .map(|r| r.timestamp_micros)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(store.delete_before(Space::Audit, Some("x"), 3).await.unwrap(), 2);
    assert_eq!(times("x").await, [3, 4, 5]);
    assert_eq!(times("y").await, [1, 2, 3, 4, 5]);
    assert_eq!(
        store
            .delete_before(Space::Audit, Some("nobody"), 100)
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.delete_before(Space::Audit, None, 4).await.unwrap(), 4);
    assert_eq!(times("x").await, [4, 5]);
    assert_eq!(times("y").await, [4, 5]);
    assert_eq!(store.count(Space::Audit, "y", &all).await.unwrap(), 2);
    let by_with = ArchiveQuery {
        with: Some("w".into()),
        ..all.clone()
    };
    assert_eq!(
        store.count(Space::Audit, "y", &by_with).await.unwrap(),
        2,
        "with index follows deletes"
    );
    let by_time = ArchiveQuery {
        start: Some(0),
        ..all.clone()
    };
    assert_eq!(
        store.count(Space::Audit, "y", &by_time).await.unwrap(),
        2,
        "time index follows deletes"
    );
    // Emptying the space entirely still never reuses an id.
    assert_eq!(
        store.delete_before(Space::Audit, None, i64::MAX).await.unwrap(),
        4
    );
    assert!(times("y").await.is_empty());
    assert_eq!(store.count(Space::Audit, "y", &all).await.unwrap(), 0);
    let next = store.append(Space::Audit, "y", record(1, "w")).await.unwrap();
    assert!(next > last, "id {next} reused after deletes (last was {last})");
    // Records other spaces hold are untouched by this space's retention.
    assert!(store.count(Space::Mam, "pager", &all).await.unwrap() > 0);
}

/// `tasks` concurrent tasks each append `per_task` records; every id must be distinct and every
/// record readable under its owner.
pub async fn concurrent_appends<S: Store>(store: Arc<S>, tasks: usize, per_task: usize) {
    let mut handles = Vec::new();
    for task in 0..tasks {
        let store = Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            let owner = format!("user{}", task % 7);
            let mut ids = Vec::new();
            for n in 0..per_task {
                let record = record(n as i64, &format!("peer{task}"));
                ids.push((
                    owner.clone(),
                    store.append(Space::Compliance, &owner, record).await.unwrap(),
                ));
            }
            ids
        }));
    }
    let mut all = Vec::new();
    for handle in handles {
        let ids = handle.await.unwrap();
        assert!(
            ids.windows(2).all(|pair| pair[0].1 < pair[1].1),
            "one task's ids increase"
        );
        all.extend(ids);
    }
    let mut unique: Vec<u64> = all.iter().map(|(_, id)| *id).collect();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), tasks * per_task, "every append got its own id");
    for (owner, id) in &all {
        let record = store.get_record(Space::Compliance, owner, *id).await.unwrap();
        assert!(record.is_some(), "record {id} of {owner} readable");
    }
    let total: u64 = {
        let mut total = 0;
        for owner in 0..7.min(tasks) {
            total += store
                .count(
                    Space::Compliance,
                    &format!("user{owner}"),
                    &ArchiveQuery::default(),
                )
                .await
                .unwrap();
        }
        total
    };
    assert_eq!(total, (tasks * per_task) as u64);
}

fn combined_append(owner: &str, timestamp_micros: i64) -> ArchiveAppend {
    ArchiveAppend {
        space: Space::Mam,
        owner: owner.to_owned(),
        record: record(timestamp_micros, "peer"),
    }
}

/// `apply_and_append`: the batch and the records land together, or (on a failed expectation,
/// on an oversized record) neither does.
async fn combined_commit<S: Store>(store: &S) {
    let all = ArchiveQuery {
        limit: 100,
        ..ArchiveQuery::default()
    };
    let before = store.append(Space::Mam, "joint-a", record(1, "x")).await.unwrap();
    let committed = store
        .apply_and_append(
            batch(|b| {
                b.expect(Space::Meta, "joint", "head", None)
                    .put(Space::Meta, "joint", "head", b"1".to_vec());
            }),
            vec![
                combined_append("joint-a", 10),
                combined_append("joint-b", 10),
                combined_append("joint-a", 11),
            ],
        )
        .await
        .unwrap();
    let ids = committed.ids;
    committed.visible.wait().await.unwrap();
    assert_eq!(ids.len(), 3);
    assert!(
        before < ids[0] && ids.windows(2).all(|pair| pair[0] < pair[1]),
        "{ids:?}"
    );
    assert_eq!(
        store.get(Space::Meta, "joint", "head").await.unwrap(),
        Some(b"1".to_vec())
    );
    let (a_ids, _) = page_ids(store, "joint-a", all.clone()).await;
    assert_eq!(a_ids, [before, ids[0], ids[2]]);
    let stored = store
        .get_record(Space::Mam, "joint-b", ids[1])
        .await
        .unwrap()
        .unwrap();
    assert_eq!((stored.timestamp_micros, stored.with.as_str()), (10, "peer"));

    // A failed expectation: neither the write nor any record is stored.
    let conflict = store
        .apply_and_append(
            batch(|b| {
                b.expect(Space::Meta, "joint", "head", None)
                    .put(Space::Meta, "joint", "head", b"2".to_vec());
            }),
            vec![combined_append("joint-c", 12)],
        )
        .await;
    assert!(matches!(conflict, Err(StorageError::Conflict)), "{conflict:?}");
    assert_eq!(
        store.get(Space::Meta, "joint", "head").await.unwrap(),
        Some(b"1".to_vec())
    );
    assert_eq!(store.count(Space::Mam, "joint-c", &all).await.unwrap(), 0);

    // One oversized record refuses the whole commit before anything is written.
    let mut oversized = combined_append("joint-d", 13);
    oversized.record.with = "w".repeat(MAX_WITH_LEN + 1);
    let refused = store
        .apply_and_append(
            batch(|b| {
                b.put(Space::Meta, "joint", "other", b"x".to_vec());
            }),
            vec![combined_append("joint-d", 13), oversized],
        )
        .await;
    assert!(
        matches!(refused, Err(StorageError::TooLarge { what: "with", .. })),
        "{refused:?}"
    );
    assert_eq!(store.get(Space::Meta, "joint", "other").await.unwrap(), None);
    assert_eq!(store.count(Space::Mam, "joint-d", &all).await.unwrap(), 0);

    // Only records, no writes; and a commit with nothing at all.
    let only = store
        .apply_and_append(WriteBatch::new(), vec![combined_append("joint-d", 14)])
        .await
        .unwrap();
    // Two waiters on one commit both see it resolve.
    let (first, second) = tokio::join!(only.visible.clone().wait(), only.visible.wait());
    assert!(first.is_ok() && second.is_ok());
    assert!(only.ids[0] > ids[2]);
    assert_eq!(store.count(Space::Mam, "joint-d", &all).await.unwrap(), 1);
    let nothing = store
        .apply_and_append(WriteBatch::new(), Vec::new())
        .await
        .unwrap();
    assert!(nothing.ids.is_empty());
    nothing.visible.wait().await.unwrap();
}

/// Read-your-writes: a read that starts after `apply_and_append` or `append` returned sees the
/// records, although nobody waits on `Committed::visible`.
async fn archive_read_your_writes<S: Store>(store: &S) {
    let all = ArchiveQuery {
        limit: 100,
        ..ArchiveQuery::default()
    };
    let newest = ArchiveQuery {
        limit: 1,
        reverse: true,
        ..ArchiveQuery::default()
    };
    for round in 0..20i64 {
        let committed = store
            .apply_and_append(
                batch(|b| {
                    b.put(Space::Meta, "ryw", "round", round.to_be_bytes().to_vec());
                }),
                vec![
                    ArchiveAppend {
                        space: Space::Mam,
                        owner: "ryw".into(),
                        record: record(round, "peer"),
                    },
                    ArchiveAppend {
                        space: Space::Mam,
                        owner: "ryw-other".into(),
                        record: record(round, "ryw"),
                    },
                ],
            )
            .await
            .unwrap();
        let (own, other) = (committed.ids[0], committed.ids[1]);
        drop(committed.visible);
        let page = store.query(Space::Mam, "ryw", &newest).await.unwrap();
        assert_eq!(
            page.records.iter().map(|record| record.id).collect::<Vec<_>>(),
            [own],
            "round {round}"
        );
        assert_eq!(
            store.count(Space::Mam, "ryw", &all).await.unwrap(),
            round as u64 + 1
        );
        let fetched = store.get_record(Space::Mam, "ryw-other", other).await.unwrap();
        assert_eq!(fetched.map(|record| record.timestamp_micros), Some(round));

        let appended = store
            .append(Space::Audit, "ryw", record(round, "x"))
            .await
            .unwrap();
        let fetched = store.get_record(Space::Audit, "ryw", appended).await.unwrap();
        assert_eq!(fetched.map(|record| record.id), Some(appended));
    }
    // A purge right after an append sees the record too.
    store
        .append(Space::Mam, "ryw-purge", record(5, "x"))
        .await
        .unwrap();
    assert_eq!(
        store
            .delete_before(Space::Mam, Some("ryw-purge"), 10)
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.count(Space::Mam, "ryw-purge", &all).await.unwrap(), 0);
}

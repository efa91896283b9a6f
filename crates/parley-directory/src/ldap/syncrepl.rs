//! The push half of the change feed: RFC 4533 syncrepl in refreshAndPersist mode, used when the
//! server's root DSE lists the Sync Request control (OpenLDAP with `syncprov`).
//!
//! Each notification only says "something changed": it wakes the poll loop, which re-reads the
//! directory and diffs it (`full_sync`) after a short debounce, so the snapshot logic stays the
//! one the polling path uses. No sync cookie is kept; every (re)start refreshes from scratch.
//! Entries are requested with no attributes (`1.1`) to keep the refresh phase light.
//!
//! While the sync searches run, [`Feed::active`] is set and polling slows down to a safety net.
//! When a search ends or fails, the flag drops at once (polling resumes at its normal pace)
//! and syncrepl is retried with exponential backoff.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use ldap3::controls::{MakeCritical, RefreshMode, SyncInfo, SyncRequest, parse_syncinfo};
use ldap3::{Ldap, ResultEntry, Scope, SearchStream};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;

use super::{Inner, mapping, scope_of};
use crate::DirectoryError;

/// The Sync Request control (RFC 4533 §2.2), as listed in the root DSE's `supportedControl`.
pub const SYNC_REQUEST_OID: &str = "1.3.6.1.4.1.4203.1.9.1.1";

/// First wait before retrying syncrepl after it failed; doubled up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(300);
/// A sync session that lasted this long was healthy: the next failure retries quickly again.
const HEALTHY_SESSION: Duration = Duration::from_secs(60);
/// How often a quiet sync session checks that the directory still exists.
const LIVENESS_CHECK: Duration = Duration::from_secs(2);
/// Notifications buffered between the search watchers and the session.
const EVENT_BUFFER: usize = 64;

/// What the syncrepl task tells the poll loop.
#[derive(Default)]
pub struct Feed {
    /// Every sync search finished its refresh phase and is persisting.
    pub active: AtomicBool,
    /// Something changed in the directory (a permit is kept if nobody is waiting).
    pub changed: Notify,
}

impl Feed {
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }
}

/// What one message of a sync search means.
#[derive(Debug, PartialEq, Eq)]
enum Notice {
    /// A Sync Info message ending the refresh phase (refreshDone TRUE, RFC 4533 §2.5).
    RefreshDone,
    /// An entry (add, modify, delete, present) or any other Sync Info message.
    Change,
    /// An intermediate message ldap3 could not parse.
    Malformed,
}

/// Classifies a message. ldap3 parses Sync Info with `expect`/`panic!` on malformed BER; that
/// parse runs here, in our task, so the panic is caught and the session falls back to polling.
fn classify(message: ResultEntry) -> Notice {
    if !message.is_intermediate() {
        return Notice::Change;
    }
    let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| parse_syncinfo(message)));
    match parsed {
        Ok(
            SyncInfo::RefreshPresent {
                refresh_done: true, ..
            }
            | SyncInfo::RefreshDelete {
                refresh_done: true, ..
            },
        ) => Notice::RefreshDone,
        Ok(_) => Notice::Change,
        Err(_) => Notice::Malformed,
    }
}

enum Event {
    RefreshDone(usize),
    Change,
    Ended(String),
}

/// Why a sync session stopped.
enum Stop {
    /// The directory was dropped: the task ends.
    Dropped,
    /// The server does not offer the Sync Request control.
    Unsupported,
    Failed(String),
}

/// Runs sync sessions until the directory is dropped, retrying with backoff after failures.
pub async fn syncrepl_loop(weak: Weak<Inner>, feed: Arc<Feed>) {
    let mut retry = FIRST_RETRY;
    let mut told_unsupported = false;
    loop {
        let started = Instant::now();
        let stop = run_session(&weak, &feed).await;
        let was_active = feed.active.swap(false, Ordering::AcqRel);
        let wait = match stop {
            Stop::Dropped => return,
            Stop::Unsupported => {
                if !told_unsupported {
                    tracing::info!("the LDAP server does not offer syncrepl (RFC 4533); polling for changes");
                    told_unsupported = true;
                }
                // A failover may reach a server that does: look again now and then.
                MAX_RETRY
            }
            Stop::Failed(reason) => {
                if was_active {
                    tracing::warn!(%reason, "LDAP syncrepl ended; polling until it is back");
                } else {
                    tracing::debug!(%reason, "LDAP syncrepl could not start; polling");
                }
                if started.elapsed() >= HEALTHY_SESSION {
                    retry = FIRST_RETRY;
                }
                let wait = retry;
                retry = (retry * 2).min(MAX_RETRY);
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// The searches to persist: the users under the base with the user filter, and each group
/// entry that lists its members (memberOf groups change with the users).
fn searches(inner: &Inner) -> Vec<(String, Scope, String)> {
    let config = &inner.config;
    let mut searches = vec![(
        config.base_dn.clone(),
        scope_of(config.scope),
        config.user_filter.trim().to_owned(),
    )];
    searches.extend(
        config
            .groups
            .iter()
            .filter(|group| mapping::group_member_attribute(group).is_some())
            .map(|group| (group.dn.clone(), Scope::Base, "(objectClass=*)".to_owned())),
    );
    searches
}

/// Whether the root DSE of the server behind `ldap` lists the Sync Request control.
async fn offers_sync(inner: &Inner, ldap: Ldap) -> Result<bool, DirectoryError> {
    let attributes = vec!["supportedControl".to_owned()];
    let root = inner
        .pool
        .search(ldap, "", Scope::Base, "(objectClass=*)", &attributes, 1)
        .await
        .map_err(|failure| DirectoryError::Unavailable(format!("reading the root DSE: {failure:?}")))?;
    Ok(root.iter().any(|entry| {
        entry
            .values("supportedControl")
            .iter()
            .any(|oid| oid.trim() == SYNC_REQUEST_OID)
    }))
}

/// One sync session: checks support, starts every search on one dedicated connection, then
/// relays notifications until a search ends or the directory is dropped.
async fn run_session(weak: &Weak<Inner>, feed: &Feed) -> Stop {
    let (ldap, searches) = {
        // Held only while starting, so the directory can still be dropped during the session.
        let Some(inner) = weak.upgrade() else {
            return Stop::Dropped;
        };
        let ldap = match inner.pool.open_dedicated().await {
            Ok(ldap) => ldap,
            Err(error) => return Stop::Failed(error.to_string()),
        };
        match offers_sync(&inner, ldap.clone()).await {
            Ok(true) => {}
            Ok(false) => return Stop::Unsupported,
            Err(error) => return Stop::Failed(error.to_string()),
        }
        (ldap, searches(&inner))
    };
    let (events, mut received) = mpsc::channel(EVENT_BUFFER);
    // Dropping the set (any return below) aborts the watchers and so ends the searches.
    let mut watchers = JoinSet::new();
    for (index, (base, scope, filter)) in searches.iter().enumerate() {
        let mut handle = ldap.clone();
        let request = SyncRequest {
            mode: RefreshMode::RefreshAndPersist,
            cookie: None,
            reload_hint: false,
        };
        let started = handle
            .with_controls(request.critical())
            .streaming_search(base, *scope, filter, vec!["1.1".to_owned()])
            .await;
        match started {
            Ok(stream) => {
                watchers.spawn(watch(index, stream, events.clone()));
            }
            Err(error) => return Stop::Failed(format!("starting the sync search on {base}: {error}")),
        }
    }
    drop(events);
    let mut refreshed = vec![false; searches.len()];
    loop {
        let event = match tokio::time::timeout(LIVENESS_CHECK, received.recv()).await {
            Err(_) if weak.strong_count() == 0 => return Stop::Dropped,
            Err(_) => continue,
            Ok(None) => return Stop::Failed("every sync search ended".into()),
            Ok(Some(event)) => event,
        };
        match event {
            Event::RefreshDone(index) => {
                if let Some(done) = refreshed.get_mut(index) {
                    *done = true;
                }
                if refreshed.iter().all(|done| *done) && !feed.is_active() {
                    tracing::info!(searches = refreshed.len(), "LDAP syncrepl active");
                    feed.active.store(true, Ordering::Release);
                    // Catch up with whatever changed between the last read and now.
                    feed.changed.notify_one();
                }
            }
            // Entries of the refresh phase are the current content, not changes.
            Event::Change if feed.is_active() => feed.changed.notify_one(),
            Event::Change => {}
            Event::Ended(reason) => return Stop::Failed(reason),
        }
    }
}

/// Relays the messages of one sync search until it ends.
async fn watch(
    index: usize,
    mut stream: SearchStream<'static, String, Vec<String>>,
    events: mpsc::Sender<Event>,
) {
    loop {
        let event = match stream.next().await {
            Ok(Some(message)) => match classify(message) {
                Notice::RefreshDone => Event::RefreshDone(index),
                Notice::Change => Event::Change,
                Notice::Malformed => Event::Ended("malformed Sync Info message".into()),
            },
            Ok(None) => {
                let result = stream.finish().await;
                Event::Ended(format!(
                    "the server ended the sync search (result {}: {})",
                    result.rc, result.text
                ))
            }
            Err(error) => Event::Ended(format!("sync search failed: {error}")),
        };
        let last = matches!(event, Event::Ended(_));
        if events.send(event).await.is_err() || last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ldap3::asn1::{ASNTag, OctetString, Sequence, Tag, TagClass};

    fn intermediate(value: Option<Vec<u8>>) -> ResultEntry {
        let mut inner = vec![Tag::OctetString(OctetString {
            id: 0,
            class: TagClass::Context,
            inner: b"1.3.6.1.4.1.4203.1.9.1.4".to_vec(),
        })];
        if let Some(value) = value {
            inner.push(Tag::OctetString(OctetString {
                id: 1,
                class: TagClass::Context,
                inner: value,
            }));
        }
        let message = Tag::Sequence(Sequence {
            id: 25,
            class: TagClass::Application,
            inner,
        });
        ResultEntry::new(message.into_structure())
    }

    #[test]
    fn refresh_done_is_recognised() {
        // refreshPresent [2] SEQUENCE { } : refreshDone defaults to TRUE.
        assert_eq!(
            classify(intermediate(Some(vec![0xa2, 0x00]))),
            Notice::RefreshDone
        );
        // refreshDelete [1] SEQUENCE { refreshDone FALSE }: still refreshing.
        assert_eq!(
            classify(intermediate(Some(vec![0xa1, 0x03, 0x01, 0x01, 0x00]))),
            Notice::Change
        );
        // newcookie [0] "c".
        assert_eq!(
            classify(intermediate(Some(vec![0x80, 0x01, b'c']))),
            Notice::Change
        );
    }

    #[test]
    fn malformed_sync_info_is_caught_not_a_crash() {
        assert_eq!(classify(intermediate(None)), Notice::Malformed);
        assert_eq!(classify(intermediate(Some(vec![0xff, 0xff]))), Notice::Malformed);
    }

    #[test]
    fn an_entry_is_a_change() {
        let entry = Tag::Sequence(Sequence {
            id: 4,
            class: TagClass::Application,
            inner: vec![],
        });
        assert_eq!(classify(ResultEntry::new(entry.into_structure())), Notice::Change);
    }
}

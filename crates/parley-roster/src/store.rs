//! The roster store on [`KeyValue`]: one key per item, one per pending inbound request, and a
//! meta key with the roster version and counts.
//!
//! Every change runs under a per-account lock and is one compare-and-set batch that asserts
//! the keys it read, so concurrent changes to one account are serialised here and would fail
//! (and retry) rather than be lost if another writer ever shares the store.

use crate::item::StoredItem;
use parley_proto::{BareJid, StanzaError, StanzaErrorCondition};
use parley_storage::{KeyValue, Space, StorageError, WriteBatch};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::OwnedMutexGuard;

const ITEM_PREFIX: &str = "item/";
const PENDING_PREFIX: &str = "pending/";
const META_KEY: &str = "meta";
/// Attempts of one change when the compare-and-set fails.
const MAX_ATTEMPTS: usize = 3;
/// Upper bound on items read back, whatever the meta key says.
const HARD_ITEM_CAP: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum RosterError {
    #[error("roster storage failed: {0}")]
    Storage(#[from] StorageError),
    #[error("stored roster data is corrupt: {0}")]
    Corrupt(String),
    #[error("the roster kept changing under a concurrent writer")]
    Contention,
}

/// Why a change was not applied.
#[derive(Debug)]
pub enum ChangeError {
    /// The change is refused; the client gets this error.
    Refused(StanzaError),
    /// The store failed; logged, and answered `internal-server-error`.
    Failed(RosterError),
}

impl From<RosterError> for ChangeError {
    fn from(error: RosterError) -> Self {
        Self::Failed(error)
    }
}

impl From<StorageError> for ChangeError {
    fn from(error: StorageError) -> Self {
        Self::Failed(error.into())
    }
}

/// The per-account meta record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    /// Bumped on every change of a visible item (XEP-0237 / RFC 6121 §2.6).
    version: u64,
    items: usize,
    pending: usize,
}

/// One contact as a change sees it: the roster item, if any, and a stored pending inbound
/// subscription request (the request stanza, serialised), if any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    pub item: Option<StoredItem>,
    pub pending: Option<String>,
}

/// What a committed change did.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The roster version after the change.
    pub version: u64,
    /// The visible item changed (pushed to interested resources).
    pub item_changed: bool,
    /// The item after the change (`None`: removed or never there).
    pub item: Option<StoredItem>,
    /// The entry before the change.
    pub before: Entry,
}

/// A whole roster, read at one version.
#[derive(Debug, Clone, Default)]
pub struct Roster {
    pub version: u64,
    pub items: Vec<(BareJid, StoredItem)>,
}

/// Async mutexes per account, removed when nobody holds or waits for them.
#[derive(Default)]
struct AccountLocks {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

struct AccountGuard<'a> {
    guard: Option<OwnedMutexGuard<()>>,
    locks: &'a AccountLocks,
    owner: String,
}

impl AccountLocks {
    async fn lock(&self, owner: &str) -> AccountGuard<'_> {
        let mutex = {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(owner.to_owned()).or_default().clone()
        };
        let guard = mutex.lock_owned().await;
        AccountGuard {
            guard: Some(guard),
            locks: self,
            owner: owner.to_owned(),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for AccountGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.locks.map.lock().unwrap_or_else(|e| e.into_inner());
        // Clones are only made under the map lock, so a count of one means no holder or waiter.
        if map
            .get(&self.owner)
            .is_some_and(|mutex| Arc::strong_count(mutex) == 1)
        {
            map.remove(&self.owner);
        }
    }
}

pub struct RosterStore {
    kv: Arc<dyn KeyValue>,
    locks: AccountLocks,
    max_items: usize,
    max_pending: usize,
}

fn item_key(contact: &BareJid) -> String {
    format!("{ITEM_PREFIX}{contact}")
}

fn pending_key(contact: &BareJid) -> String {
    format!("{PENDING_PREFIX}{contact}")
}

fn corrupt(what: impl std::fmt::Display) -> RosterError {
    RosterError::Corrupt(what.to_string())
}

impl RosterStore {
    pub fn new(kv: Arc<dyn KeyValue>, max_items: usize, max_pending: usize) -> Self {
        Self {
            kv,
            locks: AccountLocks::default(),
            max_items,
            max_pending,
        }
    }

    async fn meta(&self, owner: &str) -> Result<(Meta, Option<Vec<u8>>), RosterError> {
        let raw = self.kv.get(Space::Roster, owner, META_KEY).await?;
        let meta = match &raw {
            Some(bytes) => {
                serde_json::from_slice(bytes).map_err(|e| corrupt(format!("meta of {owner}: {e}")))?
            }
            None => Meta::default(),
        };
        Ok((meta, raw))
    }

    /// The current roster version of `owner`.
    #[cfg(test)]
    pub async fn version(&self, owner: &BareJid) -> Result<u64, RosterError> {
        Ok(self.meta(owner.as_str()).await?.0.version)
    }

    /// The whole roster. Entries that do not decode are skipped with a warning, so one bad
    /// record cannot lock a user out of their contact list.
    pub async fn roster(&self, owner: &BareJid) -> Result<Roster, RosterError> {
        let _guard = self.locks.lock(owner.as_str()).await;
        let (meta, _) = self.meta(owner.as_str()).await?;
        let limit = meta.items.max(self.max_items).min(HARD_ITEM_CAP);
        let rows = self
            .kv
            .scan_prefix(Space::Roster, owner.as_str(), ITEM_PREFIX, limit)
            .await?;
        let mut items = Vec::with_capacity(rows.len());
        for (key, value) in rows {
            let jid = key
                .strip_prefix(ITEM_PREFIX)
                .and_then(|jid| BareJid::new(jid).ok());
            let item = serde_json::from_slice::<StoredItem>(&value);
            match (jid, item) {
                (Some(jid), Ok(item)) => items.push((jid, item)),
                (_, result) => {
                    tracing::warn!(%owner, key, error = ?result.err(), "skipping a corrupt roster item");
                }
            }
        }
        Ok(Roster {
            version: meta.version,
            items,
        })
    }

    /// The stored pending inbound subscription requests (contact, request stanza).
    pub async fn pending(&self, owner: &BareJid) -> Result<Vec<(BareJid, String)>, RosterError> {
        let rows = self
            .kv
            .scan_prefix(Space::Roster, owner.as_str(), PENDING_PREFIX, self.max_pending)
            .await?;
        let mut pending = Vec::with_capacity(rows.len());
        for (key, value) in rows {
            let jid = key
                .strip_prefix(PENDING_PREFIX)
                .and_then(|jid| BareJid::new(jid).ok());
            match (jid, String::from_utf8(value)) {
                (Some(jid), Ok(stanza)) => pending.push((jid, stanza)),
                _ => tracing::warn!(%owner, key, "skipping a corrupt pending subscription request"),
            }
        }
        Ok(pending)
    }

    /// One contact's entry.
    pub async fn entry(&self, owner: &BareJid, contact: &BareJid) -> Result<Entry, RosterError> {
        Ok(self.read_entry(owner.as_str(), contact).await?.0)
    }

    async fn read_entry(
        &self,
        owner: &str,
        contact: &BareJid,
    ) -> Result<(Entry, Option<Vec<u8>>, Option<Vec<u8>>), RosterError> {
        let raw_item = self.kv.get(Space::Roster, owner, &item_key(contact)).await?;
        let raw_pending = self.kv.get(Space::Roster, owner, &pending_key(contact)).await?;
        let item = match &raw_item {
            Some(bytes) => Some(
                serde_json::from_slice(bytes)
                    .map_err(|e| corrupt(format!("item {contact} of {owner}: {e}")))?,
            ),
            None => None,
        };
        let pending = match &raw_pending {
            Some(bytes) => Some(
                String::from_utf8(bytes.clone())
                    .map_err(|_| corrupt(format!("pending {contact} of {owner}")))?,
            ),
            None => None,
        };
        Ok((Entry { item, pending }, raw_item, raw_pending))
    }

    /// Reads one contact's entry, lets `change` edit it, and stores the result in one atomic
    /// batch. Creating an item beyond `max_items` is refused with `not-allowed`; a pending
    /// request beyond the pending bound with `resource-constraint`.
    pub async fn update<T>(
        &self,
        owner: &BareJid,
        contact: &BareJid,
        mut change: impl FnMut(&mut Entry) -> Result<T, StanzaError>,
    ) -> Result<(T, Committed), ChangeError> {
        let owner_key = owner.as_str();
        let _guard = self.locks.lock(owner_key).await;
        for _ in 0..MAX_ATTEMPTS {
            let (meta, raw_meta) = self.meta(owner_key).await?;
            let (before, raw_item, raw_pending) = self.read_entry(owner_key, contact).await?;
            let mut after = before.clone();
            let value = change(&mut after).map_err(ChangeError::Refused)?;
            if after == before {
                let committed = Committed {
                    version: meta.version,
                    item_changed: false,
                    item: after.item,
                    before,
                };
                return Ok((value, committed));
            }
            let mut new_meta = meta;
            let item_changed = after.item != before.item;
            if item_changed {
                new_meta.version += 1;
            }
            match (&before.item, &after.item) {
                (None, Some(_)) if meta.items >= self.max_items => {
                    return Err(ChangeError::Refused(StanzaError::with_text(
                        StanzaErrorCondition::NotAllowed,
                        "The roster is full",
                    )));
                }
                (None, Some(_)) => new_meta.items += 1,
                (Some(_), None) => new_meta.items = new_meta.items.saturating_sub(1),
                _ => {}
            }
            match (&before.pending, &after.pending) {
                (None, Some(_)) if meta.pending >= self.max_pending => {
                    return Err(ChangeError::Refused(StanzaError::with_text(
                        StanzaErrorCondition::ResourceConstraint,
                        "Too many subscription requests are waiting",
                    )));
                }
                (None, Some(_)) => new_meta.pending += 1,
                (Some(_), None) => new_meta.pending = new_meta.pending.saturating_sub(1),
                _ => {}
            }

            let mut batch = WriteBatch::new();
            batch.expect(Space::Roster, owner_key, META_KEY, raw_meta);
            batch.expect(Space::Roster, owner_key, item_key(contact), raw_item);
            batch.expect(Space::Roster, owner_key, pending_key(contact), raw_pending);
            let meta_bytes = serde_json::to_vec(&new_meta).map_err(corrupt)?;
            batch.put(Space::Roster, owner_key, META_KEY, meta_bytes);
            match &after.item {
                Some(item) => {
                    let bytes = serde_json::to_vec(item).map_err(corrupt)?;
                    batch.put(Space::Roster, owner_key, item_key(contact), bytes);
                }
                None => {
                    batch.delete(Space::Roster, owner_key, item_key(contact));
                }
            }
            match &after.pending {
                Some(stanza) => {
                    batch.put(
                        Space::Roster,
                        owner_key,
                        pending_key(contact),
                        stanza.as_bytes().to_vec(),
                    );
                }
                None => {
                    batch.delete(Space::Roster, owner_key, pending_key(contact));
                }
            }
            match self.kv.apply(batch).await {
                Ok(()) => {
                    let committed = Committed {
                        version: new_meta.version,
                        item_changed,
                        item: after.item,
                        before,
                    };
                    return Ok((value, committed));
                }
                Err(StorageError::Conflict) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(RosterError::Contention.into())
    }

    #[cfg(test)]
    fn lock_count(&self) -> usize {
        self.locks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parley_storage::MemoryStore;

    fn jid(s: &str) -> BareJid {
        BareJid::new(s).unwrap()
    }

    fn store(max_items: usize, max_pending: usize) -> RosterStore {
        RosterStore::new(Arc::new(MemoryStore::new()), max_items, max_pending)
    }

    #[tokio::test]
    async fn versions_move_only_when_an_item_changes() {
        let store = store(10, 10);
        let (alice, bob) = (jid("alice@x"), jid("bob@x"));
        assert_eq!(store.version(&alice).await.unwrap(), 0);
        let (_, committed) = store
            .update(&alice, &bob, |entry| {
                entry.item = Some(StoredItem {
                    name: Some("Bob".into()),
                    ..Default::default()
                });
                Ok(())
            })
            .await
            .unwrap();
        assert!(committed.item_changed);
        assert_eq!(committed.version, 1);
        // A pending request is not part of the visible roster.
        let (_, committed) = store
            .update(&alice, &bob, |entry| {
                entry.pending = Some("<presence/>".into());
                Ok(())
            })
            .await
            .unwrap();
        assert!(!committed.item_changed);
        assert_eq!(committed.version, 1);
        let roster = store.roster(&alice).await.unwrap();
        assert_eq!(roster.version, 1);
        assert_eq!(roster.items.len(), 1);
        assert_eq!(
            store.pending(&alice).await.unwrap(),
            [(bob.clone(), "<presence/>".to_owned())]
        );
        assert_eq!(store.lock_count(), 0, "locks are cleaned up");
    }

    #[tokio::test]
    async fn bounds_items_and_pending_requests() {
        let store = store(1, 1);
        let alice = jid("alice@x");
        let add = |entry: &mut Entry| {
            entry.item = Some(StoredItem::default());
            entry.pending = None;
            Ok(())
        };
        store.update(&alice, &jid("a@x"), add).await.unwrap();
        let refused = store.update(&alice, &jid("b@x"), add).await.unwrap_err();
        assert!(
            matches!(refused, ChangeError::Refused(e) if e.condition == StanzaErrorCondition::NotAllowed)
        );
        let pend = |entry: &mut Entry| {
            entry.pending = Some("<p/>".into());
            Ok(())
        };
        store.update(&alice, &jid("c@x"), pend).await.unwrap();
        let refused = store.update(&alice, &jid("d@x"), pend).await.unwrap_err();
        assert!(
            matches!(refused, ChangeError::Refused(e) if e.condition == StanzaErrorCondition::ResourceConstraint)
        );
        // Removing frees a slot.
        store
            .update(&alice, &jid("a@x"), |entry| {
                entry.item = None;
                Ok(())
            })
            .await
            .unwrap();
        store.update(&alice, &jid("b@x"), add).await.unwrap();
    }

    #[tokio::test]
    async fn concurrent_updates_are_not_lost() {
        let store = Arc::new(store(1000, 10));
        let alice = jid("alice@x");
        let mut tasks = Vec::new();
        for i in 0..20 {
            let (store, alice) = (store.clone(), alice.clone());
            tasks.push(tokio::spawn(async move {
                store
                    .update(&alice, &jid(&format!("c{i}@x")), |entry| {
                        entry.item = Some(StoredItem::default());
                        Ok(())
                    })
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("{e:?}"))
            }));
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let roster = store.roster(&alice).await.unwrap();
        assert_eq!(roster.items.len(), 20);
        assert_eq!(roster.version, 20);
    }

    #[tokio::test]
    async fn corrupt_records_are_reported_or_skipped() {
        let kv = Arc::new(MemoryStore::new());
        let store = RosterStore::new(kv.clone(), 10, 10);
        let alice = jid("alice@x");
        let mut batch = WriteBatch::new();
        batch.put(Space::Roster, "alice@x", "item/bob@x", b"garbage".to_vec());
        batch.put(Space::Roster, "alice@x", "item/carol@x", b"{}".to_vec());
        kv.apply(batch).await.unwrap();
        let roster = store.roster(&alice).await.unwrap();
        assert_eq!(roster.items.len(), 1, "the corrupt item is skipped");
        assert!(matches!(
            store.entry(&alice, &jid("bob@x")).await,
            Err(RosterError::Corrupt(_))
        ));
        let mut batch = WriteBatch::new();
        batch.put(Space::Roster, "alice@x", META_KEY, b"[".to_vec());
        kv.apply(batch).await.unwrap();
        assert!(matches!(
            store.version(&alice).await,
            Err(RosterError::Corrupt(_))
        ));
    }
}

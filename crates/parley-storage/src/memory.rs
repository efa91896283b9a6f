//! [`MemoryStore`]: the same semantics as [`crate::RedbStore`], in memory, for tests and
//! development. Everything sits behind one mutex; no lock is held across an await.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use crate::{
    Archive, ArchiveAppend, ArchivePage, ArchiveQuery, ArchiveRecord, Committed, KeyValue, NewRecord, Space,
    StorageError, Store, Visible, WriteBatch, WriteOp,
};

type KvKey = (Space, String, String);

#[derive(Debug, Default)]
struct State {
    kv: BTreeMap<KvKey, Vec<u8>>,
    /// (space, owner) -> id -> record.
    archive: HashMap<(Space, String), BTreeMap<u64, ArchiveRecord>>,
    /// Last id handed out per space; ids are never reused.
    last_id: HashMap<Space, u64>,
}

/// An in-memory store. Data is lost on drop.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied batch (batches are applied
        // after every check), so a poisoned lock still guards consistent data.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait::async_trait]
impl KeyValue for MemoryStore {
    async fn get(&self, space: Space, owner: &str, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        crate::check_owner_key(owner, key)?;
        Ok(self
            .lock()
            .kv
            .get(&(space, owner.to_owned(), key.to_owned()))
            .cloned())
    }

    async fn scan_prefix(
        &self,
        space: Space,
        owner: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        crate::check_owner_key(owner, prefix)?;
        let state = self.lock();
        let from = (space, owner.to_owned(), prefix.to_owned());
        Ok(state
            .kv
            .range(from..)
            .take_while(|((s, o, k), _)| *s == space && o == owner && k.starts_with(prefix))
            .take(limit)
            .map(|((_, _, key), value)| (key.clone(), value.clone()))
            .collect())
    }

    async fn apply(&self, batch: WriteBatch) -> Result<(), StorageError> {
        batch.validate()?;
        self.lock().apply(batch)
    }

    async fn flush(&self) -> Result<(), StorageError> {
        Ok(())
    }
}

impl State {
    /// Applies a batch unless an expectation fails (then nothing is written).
    fn apply(&mut self, batch: WriteBatch) -> Result<(), StorageError> {
        let state = self;
        for expectation in &batch.expectations {
            let key = (
                expectation.space,
                expectation.owner.clone(),
                expectation.key.clone(),
            );
            if state.kv.get(&key) != expectation.value.as_ref() {
                return Err(StorageError::Conflict);
            }
        }
        for op in batch.ops {
            match op {
                WriteOp::Put {
                    space,
                    owner,
                    key,
                    value,
                } => {
                    state.kv.insert((space, owner, key), value);
                }
                WriteOp::Delete { space, owner, key } => {
                    state.kv.remove(&(space, owner, key));
                }
                WriteOp::DeleteOwner { space, owner } => {
                    state.kv.retain(|(s, o, _), _| !(*s == space && *o == owner));
                }
            }
        }
        Ok(())
    }

    fn append(&mut self, space: Space, owner: &str, record: NewRecord) -> u64 {
        let last = self.last_id.entry(space).or_insert(0);
        *last += 1;
        let id = *last;
        let stored = ArchiveRecord {
            id,
            timestamp_micros: record.timestamp_micros,
            with: record.with,
            payload: record.payload,
        };
        self.archive
            .entry((space, owner.to_owned()))
            .or_default()
            .insert(id, stored);
        id
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn apply_and_append(
        &self,
        batch: WriteBatch,
        appends: Vec<ArchiveAppend>,
    ) -> Result<Committed, StorageError> {
        crate::validate_commit(&batch, &appends)?;
        let mut state = self.lock();
        state.apply(batch)?;
        let ids = appends
            .into_iter()
            .map(|append| state.append(append.space, &append.owner, append.record))
            .collect();
        Ok(Committed {
            ids,
            visible: Visible::now(),
        })
    }
}

#[async_trait::async_trait]
impl Archive for MemoryStore {
    async fn append(&self, space: Space, owner: &str, record: NewRecord) -> Result<u64, StorageError> {
        record.validate(owner)?;
        Ok(self.lock().append(space, owner, record))
    }

    async fn query(
        &self,
        space: Space,
        owner: &str,
        query: &ArchiveQuery,
    ) -> Result<ArchivePage, StorageError> {
        let state = self.lock();
        let Some(records) = state.archive.get(&(space, owner.to_owned())) else {
            return Ok(ArchivePage {
                records: Vec::new(),
                complete: true,
            });
        };
        let wanted = query.effective_limit() + 1;
        let matching = records.values().filter(|record| query.matches(record));
        let mut page: Vec<ArchiveRecord> = if query.reverse {
            matching.rev().take(wanted).cloned().collect()
        } else {
            matching.take(wanted).cloned().collect()
        };
        let complete = page.len() < wanted;
        page.truncate(query.effective_limit());
        if query.reverse {
            page.reverse();
        }
        Ok(ArchivePage {
            records: page,
            complete,
        })
    }

    async fn count(&self, space: Space, owner: &str, query: &ArchiveQuery) -> Result<u64, StorageError> {
        let state = self.lock();
        Ok(state
            .archive
            .get(&(space, owner.to_owned()))
            .map_or(0, |records| {
                records
                    .values()
                    .filter(|r| query.matches_for_count(r.timestamp_micros, &r.with))
                    .count() as u64
            }))
    }

    async fn get_record(
        &self,
        space: Space,
        owner: &str,
        id: u64,
    ) -> Result<Option<ArchiveRecord>, StorageError> {
        let state = self.lock();
        Ok(state
            .archive
            .get(&(space, owner.to_owned()))
            .and_then(|records| records.get(&id))
            .cloned())
    }

    async fn owners(
        &self,
        space: Space,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StorageError> {
        let state = self.lock();
        let mut owners: Vec<String> = state
            .archive
            .keys()
            .filter(|(owner_space, owner)| {
                *owner_space == space && after.is_none_or(|after| owner.as_str() > after)
            })
            .map(|(_, owner)| owner.clone())
            .collect();
        owners.sort_unstable();
        owners.truncate(limit.min(crate::MAX_QUERY_LIMIT));
        Ok(owners)
    }

    async fn delete_before(
        &self,
        space: Space,
        owner: Option<&str>,
        before_micros: i64,
    ) -> Result<u64, StorageError> {
        let mut state = self.lock();
        let mut deleted = 0u64;
        for ((record_space, record_owner), records) in state.archive.iter_mut() {
            if *record_space != space || owner.is_some_and(|wanted| wanted != record_owner) {
                continue;
            }
            let before = records.len();
            records.retain(|_, record| record.timestamp_micros >= before_micros);
            deleted += (before - records.len()) as u64;
        }
        state.archive.retain(|_, records| !records.is_empty());
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_passes_conformance() {
        let store = MemoryStore::new();
        crate::conformance::run_all(&store).await;
    }

    #[tokio::test]
    async fn memory_store_concurrent_appends_get_distinct_ids() {
        let store = std::sync::Arc::new(MemoryStore::new());
        crate::conformance::concurrent_appends(store, 16, 50).await;
    }
}

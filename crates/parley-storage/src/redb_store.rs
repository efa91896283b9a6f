//! [`RedbStore`]: the embedded default backend, one redb file.
//!
//! # Layout
//! Per space, five tables named `<space>.<kind>`, all `bytes -> bytes` (see `codec` for the key
//! encodings, which keep one owner's entries contiguous):
//! - `kv`: `(owner, key) -> value`.
//! - `records`: the archive, `(owner, id) -> (timestamp, with, payload)`.
//! - `by_time`: `(owner, timestamp, id) -> ()`.
//! - `by_with`: `(owner, with, id) -> timestamp`.
//! - `owners`: `owner -> (count, max timestamp, max lag)`.
//!
//! plus `parley.internal` (format version, each space's last archive id).
//!
//! # Why these indexes
//! A MAM page must not scan an owner's whole history. Paging by id (after/before, newest page) is a
//! range on `records`. A `with` filter is a range on `by_with`, already in id order, whose value
//! carries the timestamp so a time range is checked without touching the record; only the page's
//! records are then fetched.
//!
//! A time range maps to an id range through `by_time`. `owners` tracks, per owner, the most any
//! record's timestamp fell behind the newest one appended before it (the lag `L`: 0 when
//! timestamps never decrease, a few milliseconds of jitter when concurrent sessions stamp records
//! just before they reach the writer). The newest record older than `start - L` bounds ids from
//! below and the oldest newer than `end + L` bounds them from above (reasoning on
//! `codec::OwnerStats`); the scan in between still checks timestamps. A clock that once stepped
//! back an hour makes that owner's range queries scan up to an hour more, never answer wrongly.
//!
//! `count` without filters is O(1) from `owners`; with a time range or `with` it counts index
//! keys (no record is read).
//!
//! # Writes: group commit
//! One writer thread owns every write transaction. `apply`, `append`, `delete_before` and `flush`
//! send a job with a oneshot reply through a bounded channel; the writer drains what is pending,
//! runs it in one transaction, commits with `Durability::Immediate` (fsync), then answers every job.
//! A batch whose expectation fails is answered `Conflict` and skipped, without failing the rest.
//! A storage error fails the whole group: nothing of it was committed.
//!
//! # Reads
//! Reads open a redb read transaction (a consistent snapshot, never blocked by the writer) on the
//! blocking thread pool (`spawn_blocking`): a cold read may wait on the disk, and a MAM query may
//! read a few thousand entries, which must not stall the runtime's workers.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use crate::codec::{self, OwnerStats};
use crate::{
    Archive, ArchivePage, ArchiveQuery, ArchiveRecord, KeyValue, NewRecord, Space, StorageError, WriteBatch,
    WriteOp,
};

type Bytes = &'static [u8];

/// Version of the on-disk layout described in the module documentation.
const FORMAT_VERSION: u64 = 1;
const INTERNAL_TABLE: TableDefinition<Bytes, Bytes> = TableDefinition::new("parley.internal");
const FORMAT_KEY: &[u8] = b"format_version";
/// Pending jobs before `apply`/`append` callers wait (backpressure).
const JOB_QUEUE_CAPACITY: usize = 4096;
/// Most jobs in one commit, so one commit's latency stays bounded.
const MAX_GROUP_JOBS: usize = 2048;
/// Most bytes of values and payloads in one commit (a group always takes at least one job).
const MAX_GROUP_BYTES: usize = 64 * 1024 * 1024;
/// Most records one retention job deletes, so it never holds up appends for long.
const DELETE_CHUNK: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum TableKind {
    Kv,
    Records,
    ByTime,
    ByWith,
    Owners,
}

impl TableKind {
    const ALL: [TableKind; 5] = [
        TableKind::Kv,
        TableKind::Records,
        TableKind::ByTime,
        TableKind::ByWith,
        TableKind::Owners,
    ];

    fn suffix(self) -> &'static str {
        match self {
            TableKind::Kv => "kv",
            TableKind::Records => "records",
            TableKind::ByTime => "by_time",
            TableKind::ByWith => "by_with",
            TableKind::Owners => "owners",
        }
    }
}

fn table_name(space: Space, kind: TableKind) -> String {
    format!("{}.{}", space.name(), kind.suffix())
}

fn next_id_key(space: Space) -> Vec<u8> {
    format!("last_id.{}", space.name()).into_bytes()
}

macro_rules! from_redb_error {
    ($($error:ty),* $(,)?) => {
        $(impl From<$error> for StorageError {
            fn from(error: $error) -> Self {
                backend_error(error.into())
            }
        })*
    };
}

from_redb_error!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
);

fn backend_error(error: redb::Error) -> StorageError {
    match error {
        redb::Error::Corrupted(detail) => StorageError::Corrupt(detail),
        other => StorageError::Io(Arc::new(other)),
    }
}

impl From<std::io::Error> for StorageError {
    fn from(error: std::io::Error) -> Self {
        StorageError::Io(Arc::new(error))
    }
}

/// The embedded store: one redb file, a writer thread doing group commits, reads on the blocking
/// pool. Drop or [`RedbStore::close`] it to stop the writer after it finishes pending jobs.
pub struct RedbStore {
    db: Arc<Database>,
    jobs: Option<mpsc::Sender<Job>>,
    writer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("open", &self.jobs.is_some())
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens (or creates, with its parent directories) the database at `path` and starts the
    /// writer thread. Blocking: call it at start-up, or from `spawn_blocking`.
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let db = Arc::new(Database::create(path)?);
        let last_ids = initialise(&db)?;
        let (jobs, receiver) = mpsc::channel(JOB_QUEUE_CAPACITY);
        let writer_db = Arc::clone(&db);
        let writer = std::thread::Builder::new()
            .name("parley-storage-writer".into())
            .spawn(move || run_writer(&writer_db, receiver, last_ids))?;
        Ok(RedbStore {
            db,
            jobs: Some(jobs),
            writer: Some(writer),
        })
    }

    /// Stops accepting writes, lets the writer finish what is queued, and waits for it, so the
    /// file can be reopened as soon as this returns (if no read is still running).
    pub async fn close(mut self) -> Result<(), StorageError> {
        self.jobs = None;
        if let Some(writer) = self.writer.take() {
            let joined = tokio::task::spawn_blocking(move || writer.join())
                .await
                .map_err(|error| StorageError::Io(Arc::new(error)))?;
            if joined.is_err() {
                return Err(StorageError::Closed);
            }
        }
        Ok(())
    }

    async fn submit<T>(
        &self,
        make_job: impl FnOnce(oneshot::Sender<Result<T, StorageError>>) -> Job,
    ) -> Result<T, StorageError> {
        let jobs = self.jobs.as_ref().ok_or(StorageError::Closed)?;
        let (reply, answer) = oneshot::channel();
        jobs.send(make_job(reply))
            .await
            .map_err(|_| StorageError::Closed)?;
        answer.await.map_err(|_| StorageError::Closed)?
    }

    async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || work(&db))
            .await
            .map_err(|error| StorageError::Io(Arc::new(error)))?
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(writer) = self.writer.take() {
            // The writer only finishes the jobs already queued; waiting keeps "dropped" meaning
            // "the file is released" for whoever opens it next.
            let _ = writer.join();
        }
    }
}

/// Creates every table, checks the format version and loads each space's last archive id.
fn initialise(db: &Database) -> Result<HashMap<Space, u64>, StorageError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    let mut last_ids = HashMap::new();
    {
        let mut internal = txn.open_table(INTERNAL_TABLE)?;
        let stored_version = internal
            .get(FORMAT_KEY)?
            .map(|guard| codec::decode_u64(guard.value()));
        match stored_version {
            None => {
                internal.insert(FORMAT_KEY, FORMAT_VERSION.to_be_bytes().as_slice())?;
            }
            Some(Ok(FORMAT_VERSION)) => {}
            Some(Ok(found)) => {
                return Err(StorageError::UnsupportedFormat {
                    found,
                    supported: FORMAT_VERSION,
                });
            }
            Some(Err(error)) => return Err(error),
        }
        for space in Space::ALL {
            for kind in TableKind::ALL {
                txn.open_table(TableDefinition::<Bytes, Bytes>::new(&table_name(space, kind)))?;
            }
            let last = match internal.get(next_id_key(space).as_slice())? {
                Some(guard) => codec::decode_u64(guard.value())?,
                None => 0,
            };
            last_ids.insert(space, last);
        }
    }
    txn.commit()?;
    Ok(last_ids)
}

/// A caller waiting for its job's result; the result is set while the group runs and sent only
/// after the commit (or replaced by the commit's error).
struct Pending<T> {
    reply: oneshot::Sender<Result<T, StorageError>>,
    result: Option<Result<T, StorageError>>,
}

impl<T> Pending<T> {
    fn new(reply: oneshot::Sender<Result<T, StorageError>>) -> Self {
        Pending { reply, result: None }
    }

    fn send(self, group_failure: Option<&StorageError>) {
        let result = match group_failure {
            Some(error) => Err(error.clone()),
            // Unreachable in practice: every job of a successful group has a result.
            None => self.result.unwrap_or(Err(StorageError::Closed)),
        };
        // The caller may have given up waiting (its future dropped); nothing to do then.
        let _ = self.reply.send(result);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum DeleteScope {
    Owner(String),
    /// All owners, starting at this one (inclusive) in byte order.
    AllFrom(Option<String>),
}

struct DeleteProgress {
    deleted: u64,
    /// Where the next chunk starts; `None` when nothing older is left.
    resume: Option<DeleteScope>,
}

enum Job {
    Apply {
        batch: WriteBatch,
        done: Pending<()>,
    },
    Append {
        space: Space,
        owner: String,
        record: NewRecord,
        done: Pending<u64>,
    },
    DeleteBefore {
        space: Space,
        scope: DeleteScope,
        before_micros: i64,
        done: Pending<DeleteProgress>,
    },
    Flush {
        done: Pending<()>,
    },
}

impl Job {
    /// Bytes this job adds to a commit, for the group size bound.
    fn weight(&self) -> usize {
        match self {
            Job::Apply { batch, .. } => batch
                .ops
                .iter()
                .map(|op| match op {
                    WriteOp::Put { value, .. } => value.len(),
                    _ => 0,
                })
                .sum(),
            Job::Append { record, .. } => record.payload.len(),
            Job::DeleteBefore { .. } | Job::Flush { .. } => 0,
        }
    }

    fn finish(self, group_failure: Option<&StorageError>) {
        match self {
            Job::Apply { done, .. } | Job::Flush { done } => done.send(group_failure),
            Job::Append { done, .. } => done.send(group_failure),
            Job::DeleteBefore { done, .. } => done.send(group_failure),
        }
    }
}

fn run_writer(db: &Database, mut receiver: mpsc::Receiver<Job>, mut last_ids: HashMap<Space, u64>) {
    while let Some(first) = receiver.blocking_recv() {
        let mut weight = first.weight();
        let mut group = vec![first];
        while group.len() < MAX_GROUP_JOBS && weight < MAX_GROUP_BYTES {
            match receiver.try_recv() {
                Ok(job) => {
                    weight += job.weight();
                    group.push(job);
                }
                Err(_) => break,
            }
        }
        let mut next_last_ids = last_ids.clone();
        match write_group(db, &mut group, &mut next_last_ids) {
            Ok(()) => {
                last_ids = next_last_ids;
                group.into_iter().for_each(|job| job.finish(None));
            }
            Err(error) => {
                tracing::error!(%error, jobs = group.len(), "storage group commit failed");
                group.into_iter().for_each(|job| job.finish(Some(&error)));
            }
        }
    }
}

/// Runs every job of a group in one durable transaction.
fn write_group(
    db: &Database,
    group: &mut [Job],
    last_ids: &mut HashMap<Space, u64>,
) -> Result<(), StorageError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    {
        let mut writer = GroupWriter {
            txn: &txn,
            tables: HashMap::new(),
            stats: HashMap::new(),
            last_ids,
        };
        for job in group.iter_mut() {
            match job {
                Job::Apply { batch, done } => {
                    let applied = writer.apply(batch)?;
                    done.result = Some(if applied {
                        Ok(())
                    } else {
                        Err(StorageError::Conflict)
                    });
                }
                Job::Append {
                    space,
                    owner,
                    record,
                    done,
                } => {
                    done.result = Some(Ok(writer.append(*space, owner, record)?));
                }
                Job::DeleteBefore {
                    space,
                    scope,
                    before_micros,
                    done,
                } => {
                    done.result = Some(Ok(writer.delete_before(*space, scope, *before_micros)?));
                }
                Job::Flush { done } => done.result = Some(Ok(())),
            }
        }
        writer.finish()?;
    }
    txn.commit()?;
    Ok(())
}

/// The state of one group's transaction: open tables and cached owner statistics.
struct GroupWriter<'t> {
    txn: &'t WriteTransaction,
    tables: HashMap<(Space, TableKind), Table<'t, Bytes, Bytes>>,
    stats: HashMap<(Space, String), OwnerStats>,
    last_ids: &'t mut HashMap<Space, u64>,
}

impl<'t> GroupWriter<'t> {
    fn table(&mut self, space: Space, kind: TableKind) -> Result<&mut Table<'t, Bytes, Bytes>, StorageError> {
        match self.tables.entry((space, kind)) {
            Entry::Occupied(open) => Ok(open.into_mut()),
            Entry::Vacant(slot) => {
                let table = self
                    .txn
                    .open_table(TableDefinition::<Bytes, Bytes>::new(&table_name(space, kind)))?;
                Ok(slot.insert(table))
            }
        }
    }

    /// Applies a batch unless an expectation fails; returns whether it was applied.
    fn apply(&mut self, batch: &WriteBatch) -> Result<bool, StorageError> {
        for expectation in &batch.expectations {
            let table = self.table(expectation.space, TableKind::Kv)?;
            let key = codec::kv_key(&expectation.owner, &expectation.key);
            let current = table.get(key.as_slice())?;
            let holds = match (&current, &expectation.value) {
                (None, None) => true,
                (Some(found), Some(wanted)) => found.value() == wanted.as_slice(),
                _ => false,
            };
            if !holds {
                return Ok(false);
            }
        }
        for op in &batch.ops {
            match op {
                WriteOp::Put {
                    space,
                    owner,
                    key,
                    value,
                } => {
                    let key = codec::kv_key(owner, key);
                    self.table(*space, TableKind::Kv)?
                        .insert(key.as_slice(), value.as_slice())?;
                }
                WriteOp::Delete { space, owner, key } => {
                    let key = codec::kv_key(owner, key);
                    self.table(*space, TableKind::Kv)?.remove(key.as_slice())?;
                }
                WriteOp::DeleteOwner { space, owner } => {
                    let prefix = codec::owner_prefix(owner);
                    let table = self.table(*space, TableKind::Kv)?;
                    match prefix_end(&prefix) {
                        Some(end) => table.retain_in(prefix.as_slice()..end.as_slice(), |_, _| false)?,
                        None => table.retain_in(prefix.as_slice().., |_, _| false)?,
                    }
                }
            }
        }
        Ok(true)
    }

    fn owner_stats(&mut self, space: Space, owner: &str) -> Result<&mut OwnerStats, StorageError> {
        let cache_key = (space, owner.to_owned());
        if !self.stats.contains_key(&cache_key) {
            let loaded = read_owner_stats(self.table(space, TableKind::Owners)?, owner)?;
            self.stats
                .insert(cache_key.clone(), loaded.unwrap_or(OwnerStats::EMPTY));
        }
        self.stats
            .get_mut(&cache_key)
            .ok_or_else(|| StorageError::Corrupt("owner statistics vanished from the cache".into()))
    }

    fn append(&mut self, space: Space, owner: &str, record: &NewRecord) -> Result<u64, StorageError> {
        let last = self.last_ids.entry(space).or_insert(0);
        let id = last
            .checked_add(1)
            .ok_or_else(|| StorageError::Corrupt("archive ids exhausted".into()))?;
        *last = id;
        let timestamp = record.timestamp_micros;
        let value = codec::encode_record(timestamp, &record.with, &record.payload);
        self.table(space, TableKind::Records)?
            .insert(codec::record_key(owner, id).as_slice(), value.as_slice())?;
        self.table(space, TableKind::ByTime)?
            .insert(codec::time_key(owner, timestamp, id).as_slice(), [].as_slice())?;
        self.table(space, TableKind::ByWith)?.insert(
            codec::with_key(owner, &record.with, id).as_slice(),
            timestamp.to_be_bytes().as_slice(),
        )?;
        self.owner_stats(space, owner)?.record_appended(timestamp);
        Ok(id)
    }

    /// Deletes at most [`DELETE_CHUNK`] records older than `before_micros` in `scope`.
    fn delete_before(
        &mut self,
        space: Space,
        scope: &DeleteScope,
        before_micros: i64,
    ) -> Result<DeleteProgress, StorageError> {
        // The owner list comes from the owners table, so it must include this group's appends.
        self.write_stats()?;
        let owners: Vec<String> = match scope {
            DeleteScope::Owner(owner) => vec![owner.clone()],
            DeleteScope::AllFrom(start) => {
                let table = self.table(space, TableKind::Owners)?;
                let from = start.as_deref().unwrap_or("").as_bytes();
                let mut owners = Vec::new();
                // Bounded like the deletions: a chunk visits at most DELETE_CHUNK owners.
                for entry in table.range(from..)?.take(DELETE_CHUNK + 1) {
                    let (key, _) = entry?;
                    let owner = std::str::from_utf8(key.value())
                        .map_err(|_| StorageError::Corrupt("owner is not UTF-8".into()))?;
                    owners.push(owner.to_owned());
                }
                owners
            }
        };
        let mut deleted = 0u64;
        for (index, owner) in owners.iter().enumerate() {
            if index == DELETE_CHUNK {
                return Ok(DeleteProgress {
                    deleted,
                    resume: Some(DeleteScope::AllFrom(Some(owner.clone()))),
                });
            }
            let budget = DELETE_CHUNK - deleted as usize;
            let removed = self.delete_owner_before(space, owner, before_micros, budget)?;
            deleted += removed as u64;
            if removed == budget {
                let resume = match scope {
                    DeleteScope::Owner(owner) => DeleteScope::Owner(owner.clone()),
                    DeleteScope::AllFrom(_) => DeleteScope::AllFrom(Some(owner.clone())),
                };
                return Ok(DeleteProgress {
                    deleted,
                    resume: Some(resume),
                });
            }
        }
        Ok(DeleteProgress {
            deleted,
            resume: None,
        })
    }

    fn delete_owner_before(
        &mut self,
        space: Space,
        owner: &str,
        before_micros: i64,
        budget: usize,
    ) -> Result<usize, StorageError> {
        let from = codec::time_key(owner, i64::MIN, 0);
        let to = codec::time_key(owner, before_micros, 0);
        let mut victims = Vec::new();
        for entry in self
            .table(space, TableKind::ByTime)?
            .range(from.as_slice()..to.as_slice())?
            .take(budget)
        {
            let (key, _) = entry?;
            victims.push((key.value().to_vec(), codec::trailing_id(key.value())?));
        }
        for (time_key, id) in &victims {
            let record_key = codec::record_key(owner, *id);
            let with = match self
                .table(space, TableKind::Records)?
                .remove(record_key.as_slice())?
            {
                Some(value) => codec::split_record(value.value())?.1.to_owned(),
                None => {
                    return Err(StorageError::Corrupt(format!(
                        "time index names missing record {id}"
                    )));
                }
            };
            self.table(space, TableKind::ByTime)?
                .remove(time_key.as_slice())?;
            self.table(space, TableKind::ByWith)?
                .remove(codec::with_key(owner, &with, *id).as_slice())?;
        }
        if !victims.is_empty() {
            let stats = self.owner_stats(space, owner)?;
            stats.count = stats.count.saturating_sub(victims.len() as u64);
        }
        Ok(victims.len())
    }

    /// Writes the cached owner statistics; an owner with no record left is forgotten.
    fn write_stats(&mut self) -> Result<(), StorageError> {
        let stats = std::mem::take(&mut self.stats);
        for ((space, owner), owner_stats) in stats {
            let table = self.table(space, TableKind::Owners)?;
            if owner_stats.count == 0 {
                table.remove(owner.as_bytes())?;
            } else {
                table.insert(owner.as_bytes(), owner_stats.encode().as_slice())?;
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(), StorageError> {
        self.write_stats()?;
        let mut internal = self.txn.open_table(INTERNAL_TABLE)?;
        for (space, last) in self.last_ids.iter() {
            internal.insert(next_id_key(*space).as_slice(), last.to_be_bytes().as_slice())?;
        }
        Ok(())
    }
}

/// The smallest key greater than every key starting with `prefix` (None: no such bound).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn read_owner_stats(
    table: &impl ReadableTable<Bytes, Bytes>,
    owner: &str,
) -> Result<Option<OwnerStats>, StorageError> {
    match table.get(owner.as_bytes())? {
        Some(value) => Ok(Some(OwnerStats::decode(value.value())?)),
        None => Ok(None),
    }
}

fn open_read(
    txn: &redb::ReadTransaction,
    space: Space,
    kind: TableKind,
) -> Result<redb::ReadOnlyTable<Bytes, Bytes>, StorageError> {
    Ok(txn.open_table(TableDefinition::<Bytes, Bytes>::new(&table_name(space, kind)))?)
}

fn in_time_range(query: &ArchiveQuery, timestamp: i64) -> bool {
    query.start.is_none_or(|start| timestamp >= start) && query.end.is_none_or(|end| timestamp <= end)
}

/// Inclusive id bounds of a query's after/before; None when they leave nothing.
fn id_bounds(query: &ArchiveQuery) -> Option<(u64, u64)> {
    let low = match query.after_id {
        Some(after) => after.checked_add(1)?,
        None => 0,
    };
    let high = match query.before_id {
        Some(before) => before.checked_sub(1)?,
        None => u64::MAX,
    };
    (low <= high).then_some((low, high))
}

fn query_blocking(
    db: &Database,
    space: Space,
    owner: &str,
    query: &ArchiveQuery,
) -> Result<ArchivePage, StorageError> {
    let nothing = ArchivePage {
        records: Vec::new(),
        complete: true,
    };
    let Some((mut low, mut high)) = id_bounds(query) else {
        return Ok(nothing);
    };
    let txn = db.begin_read()?;
    let Some(stats) = read_owner_stats(&open_read(&txn, space, TableKind::Owners)?, owner)? else {
        return Ok(nothing);
    };
    let filter_time = query.start.is_some() || query.end.is_some();
    if filter_time {
        // Narrow the ids with the time index; the scan below still checks every timestamp.
        let by_time = open_read(&txn, space, TableKind::ByTime)?;
        let lag = stats.lag();
        if let Some(start) = query.start {
            let from = codec::time_key(owner, i64::MIN, 0);
            let to = codec::time_key(owner, start.saturating_sub(lag), 0);
            if let Some(entry) = by_time.range(from.as_slice()..to.as_slice())?.next_back() {
                let too_old = codec::trailing_id(entry?.0.value())?;
                low = low.max(too_old.saturating_add(1));
            }
        }
        if let Some(end) = query.end.filter(|end| end.saturating_add(lag) < i64::MAX) {
            let from = codec::time_key(owner, end.saturating_add(lag) + 1, 0);
            let to = codec::time_key(owner, i64::MAX, u64::MAX);
            if let Some(entry) = by_time.range(from.as_slice()..=to.as_slice())?.next() {
                let too_new = codec::trailing_id(entry?.0.value())?;
                match too_new.checked_sub(1) {
                    Some(bound) => high = high.min(bound),
                    None => return Ok(nothing),
                }
            }
        }
    }
    if low > high {
        return Ok(nothing);
    }
    let limit = query.effective_limit();
    let wanted = limit + 1;
    let records_table = open_read(&txn, space, TableKind::Records)?;
    let mut records = Vec::with_capacity(wanted.min(1024));
    let mut found = 0usize;
    if let Some(with) = &query.with {
        let by_with = open_read(&txn, space, TableKind::ByWith)?;
        let from = codec::with_key(owner, with, low);
        let to = codec::with_key(owner, with, high);
        let range = by_with.range(from.as_slice()..=to.as_slice())?;
        let entries: Box<dyn Iterator<Item = _>> = if query.reverse {
            Box::new(range.rev())
        } else {
            Box::new(range)
        };
        for entry in entries {
            let (key, value) = entry?;
            if filter_time && !in_time_range(query, codec::decode_i64(value.value())?) {
                continue;
            }
            found += 1;
            if found == wanted {
                break;
            }
            let id = codec::trailing_id(key.value())?;
            match records_table.get(codec::record_key(owner, id).as_slice())? {
                Some(stored) => records.push(codec::decode_record(id, stored.value())?),
                None => {
                    return Err(StorageError::Corrupt(format!(
                        "with index names missing record {id}"
                    )));
                }
            }
        }
    } else {
        let from = codec::record_key(owner, low);
        let to = codec::record_key(owner, high);
        let range = records_table.range(from.as_slice()..=to.as_slice())?;
        let entries: Box<dyn Iterator<Item = _>> = if query.reverse {
            Box::new(range.rev())
        } else {
            Box::new(range)
        };
        for entry in entries {
            let (key, value) = entry?;
            if filter_time && !in_time_range(query, codec::split_record(value.value())?.0) {
                continue;
            }
            found += 1;
            if found == wanted {
                break;
            }
            records.push(codec::decode_record(
                codec::trailing_id(key.value())?,
                value.value(),
            )?);
        }
    }
    if query.reverse {
        records.reverse();
    }
    Ok(ArchivePage {
        records,
        complete: found < wanted,
    })
}

fn count_blocking(
    db: &Database,
    space: Space,
    owner: &str,
    query: &ArchiveQuery,
) -> Result<u64, StorageError> {
    let txn = db.begin_read()?;
    let Some(stats) = read_owner_stats(&open_read(&txn, space, TableKind::Owners)?, owner)? else {
        return Ok(0);
    };
    if query.start.zip(query.end).is_some_and(|(start, end)| start > end) {
        return Ok(0);
    }
    let mut count = 0u64;
    match (&query.with, query.start.is_some() || query.end.is_some()) {
        (None, false) => count = stats.count,
        (Some(with), _) => {
            let by_with = open_read(&txn, space, TableKind::ByWith)?;
            let from = codec::with_key(owner, with, 0);
            let to = codec::with_key(owner, with, u64::MAX);
            for entry in by_with.range(from.as_slice()..=to.as_slice())? {
                let (_, value) = entry?;
                count += u64::from(in_time_range(query, codec::decode_i64(value.value())?));
            }
        }
        (None, true) => {
            let by_time = open_read(&txn, space, TableKind::ByTime)?;
            let from = codec::time_key(owner, query.start.unwrap_or(i64::MIN), 0);
            let to = codec::time_key(owner, query.end.unwrap_or(i64::MAX), u64::MAX);
            for entry in by_time.range(from.as_slice()..=to.as_slice())? {
                entry?;
                count += 1;
            }
        }
    }
    Ok(count)
}

#[async_trait::async_trait]
impl KeyValue for RedbStore {
    async fn get(&self, space: Space, owner: &str, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        crate::check_owner_key(owner, key)?;
        let key = codec::kv_key(owner, key);
        self.read(move |db| {
            let txn = db.begin_read()?;
            let table = open_read(&txn, space, TableKind::Kv)?;
            Ok(table.get(key.as_slice())?.map(|value| value.value().to_vec()))
        })
        .await
    }

    async fn scan_prefix(
        &self,
        space: Space,
        owner: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        crate::check_owner_key(owner, prefix)?;
        let owner_len = codec::owner_prefix(owner).len();
        let from = codec::kv_key(owner, prefix);
        self.read(move |db| {
            let txn = db.begin_read()?;
            let table = open_read(&txn, space, TableKind::Kv)?;
            let range = match prefix_end(&from) {
                Some(end) => table.range(from.as_slice()..end.as_slice())?,
                None => table.range(from.as_slice()..)?,
            };
            let mut out = Vec::new();
            for entry in range.take(limit) {
                let (key, value) = entry?;
                out.push((
                    codec::kv_key_suffix(key.value(), owner_len)?,
                    value.value().to_vec(),
                ));
            }
            Ok(out)
        })
        .await
    }

    async fn apply(&self, batch: WriteBatch) -> Result<(), StorageError> {
        batch.validate()?;
        self.submit(|reply| Job::Apply {
            batch,
            done: Pending::new(reply),
        })
        .await
    }

    async fn flush(&self) -> Result<(), StorageError> {
        self.submit(|reply| Job::Flush {
            done: Pending::new(reply),
        })
        .await
    }
}

#[async_trait::async_trait]
impl Archive for RedbStore {
    async fn append(&self, space: Space, owner: &str, record: NewRecord) -> Result<u64, StorageError> {
        record.validate(owner)?;
        let owner = owner.to_owned();
        self.submit(|reply| Job::Append {
            space,
            owner,
            record,
            done: Pending::new(reply),
        })
        .await
    }

    async fn query(
        &self,
        space: Space,
        owner: &str,
        query: &ArchiveQuery,
    ) -> Result<ArchivePage, StorageError> {
        crate::check_len("owner", owner.len(), crate::MAX_OWNER_LEN)?;
        let (owner, query) = (owner.to_owned(), query.clone());
        self.read(move |db| query_blocking(db, space, &owner, &query))
            .await
    }

    async fn count(&self, space: Space, owner: &str, query: &ArchiveQuery) -> Result<u64, StorageError> {
        crate::check_len("owner", owner.len(), crate::MAX_OWNER_LEN)?;
        let (owner, query) = (owner.to_owned(), query.clone());
        self.read(move |db| count_blocking(db, space, &owner, &query))
            .await
    }

    async fn get_record(
        &self,
        space: Space,
        owner: &str,
        id: u64,
    ) -> Result<Option<ArchiveRecord>, StorageError> {
        crate::check_len("owner", owner.len(), crate::MAX_OWNER_LEN)?;
        let key = codec::record_key(owner, id);
        self.read(move |db| {
            let txn = db.begin_read()?;
            let table = open_read(&txn, space, TableKind::Records)?;
            match table.get(key.as_slice())? {
                Some(value) => Ok(Some(codec::decode_record(id, value.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn delete_before(
        &self,
        space: Space,
        owner: Option<&str>,
        before_micros: i64,
    ) -> Result<u64, StorageError> {
        let mut scope = match owner {
            Some(owner) => {
                crate::check_len("owner", owner.len(), crate::MAX_OWNER_LEN)?;
                DeleteScope::Owner(owner.to_owned())
            }
            None => DeleteScope::AllFrom(None),
        };
        let mut total = 0u64;
        // Chunked, one group commit per chunk, so retention never stalls appends for long.
        loop {
            let progress = self
                .submit(|reply| Job::DeleteBefore {
                    space,
                    scope,
                    before_micros,
                    done: Pending::new(reply),
                })
                .await?;
            total += progress.deleted;
            match progress.resume {
                Some(next) => scope = next,
                None => return Ok(total),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance;

    fn temp_store() -> (tempfile::TempDir, RedbStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("nested/dir/parley.redb")).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn redb_store_passes_conformance() {
        let (_dir, store) = temp_store();
        conformance::run_all(&store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redb_store_concurrent_appends_get_distinct_ids() {
        let (_dir, store) = temp_store();
        conformance::concurrent_appends(Arc::new(store), 32, 40).await;
    }

    #[tokio::test]
    async fn data_and_id_counter_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("parley.redb");
        let store = RedbStore::open(&path).unwrap();
        let mut batch = WriteBatch::new();
        batch.put(Space::Roster, "alice", "bob", b"both".to_vec());
        store.apply(batch).await.unwrap();
        let record = |ts| NewRecord {
            timestamp_micros: ts,
            with: "bob".into(),
            payload: b"hi".to_vec(),
        };
        store.append(Space::Mam, "alice", record(1)).await.unwrap();
        let last = store.append(Space::Mam, "alice", record(2)).await.unwrap();
        // Deleting the newest record must not let its id be handed out again.
        assert_eq!(store.delete_before(Space::Mam, None, 3).await.unwrap(), 2);
        store.close().await.unwrap();

        let store = RedbStore::open(&path).unwrap();
        assert_eq!(
            store.get(Space::Roster, "alice", "bob").await.unwrap(),
            Some(b"both".to_vec())
        );
        let next = store.append(Space::Mam, "alice", record(4)).await.unwrap();
        assert!(next > last, "id {next} reused after reopen (last was {last})");
        let fetched = store
            .get_record(Space::Mam, "alice", next)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(fetched.timestamp_micros, 4);
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn second_open_of_same_file_fails_cleanly() {
        let (dir, store) = temp_store();
        let again = RedbStore::open(&dir.path().join("nested/dir/parley.redb"));
        assert!(matches!(again, Err(StorageError::Io(_))), "got {again:?}");
        drop(store);
        assert!(
            RedbStore::open(&dir.path().join("nested/dir/parley.redb")).is_ok(),
            "drop releases the file"
        );
    }

    #[tokio::test]
    async fn newer_format_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("parley.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(INTERNAL_TABLE)
                .unwrap()
                .insert(FORMAT_KEY, 99u64.to_be_bytes().as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let opened = RedbStore::open(&path);
        assert!(
            matches!(
                opened,
                Err(StorageError::UnsupportedFormat {
                    found: 99,
                    supported: FORMAT_VERSION
                })
            ),
            "got {opened:?}"
        );
    }

    /// Small deterministic generator, so the differential test needs no extra dependency.
    struct XorShift(u64);

    impl XorShift {
        fn below(&mut self, bound: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % bound
        }

        fn maybe(&mut self, value: u64) -> Option<u64> {
            (self.below(3) == 0).then_some(value)
        }
    }

    /// Random jittered timestamps (and one big clock step back) and random queries: the redb
    /// index plan must answer exactly what the brute-force MemoryStore answers.
    #[tokio::test]
    async fn random_queries_match_memory_store() {
        let (_dir, store) = temp_store();
        let reference = crate::MemoryStore::new();
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let owners = ["a", "ab", "b"];
        for n in 0..400i64 {
            let owner = owners[rng.below(3) as usize];
            let jitter = rng.below(40) as i64 - 20;
            let step_back = if n == 300 { -2_000 } else { 0 };
            let timestamp = n * 10 + jitter + step_back;
            let with = format!("peer{}", rng.below(4));
            let record = NewRecord {
                timestamp_micros: timestamp,
                with,
                payload: n.to_be_bytes().to_vec(),
            };
            let id = store.append(Space::Mam, owner, record.clone()).await.unwrap();
            assert_eq!(reference.append(Space::Mam, owner, record).await.unwrap(), id);
        }
        for _ in 0..600 {
            let owner = owners[rng.below(3) as usize];
            let query = ArchiveQuery {
                start: rng.maybe(rng.0 % 4200).map(|t| t as i64 - 100),
                end: rng.maybe(rng.0 % 4200).map(|t| t as i64 - 100),
                with: rng.maybe(0).map(|_| format!("peer{}", rng.below(5))),
                after_id: rng.maybe(rng.0 % 420),
                before_id: rng.maybe(rng.0 % 420),
                limit: rng.below(30) as usize,
                reverse: rng.below(2) == 0,
            };
            let expected = reference.query(Space::Mam, owner, &query).await.unwrap();
            assert_eq!(
                store.query(Space::Mam, owner, &query).await.unwrap(),
                expected,
                "{owner} {query:?}"
            );
            let expected_count = reference.count(Space::Mam, owner, &query).await.unwrap();
            assert_eq!(
                store.count(Space::Mam, owner, &query).await.unwrap(),
                expected_count,
                "{query:?}"
            );
        }
    }

    #[test]
    fn prefix_end_is_the_next_prefix() {
        assert_eq!(prefix_end(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }

    #[test]
    fn id_bounds_handle_extremes() {
        let query = |after, before| ArchiveQuery {
            after_id: after,
            before_id: before,
            ..Default::default()
        };
        assert_eq!(id_bounds(&query(None, None)), Some((0, u64::MAX)));
        assert_eq!(id_bounds(&query(Some(3), Some(5))), Some((4, 4)));
        assert_eq!(id_bounds(&query(Some(4), Some(5))), None);
        assert_eq!(id_bounds(&query(Some(u64::MAX), None)), None);
        assert_eq!(id_bounds(&query(None, Some(0))), None);
    }
}

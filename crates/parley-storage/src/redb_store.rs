//! [`RedbStore`]: the embedded default backend, two redb files.
//!
//! # Files and layout
//! The main file (the path given to [`RedbStore::open`]) is where every write becomes durable:
//! - `<space>.kv`: `(owner, key) -> value`, per space.
//! - `parley.journal`: every archive record, `(space, id) -> (owner, timestamp, with, payload)`.
//!   Keys only ever grow, so appending N records dirties a handful of pages, whoever owns them.
//! - `parley.internal`: format version and each space's last archive id.
//!
//! The index file (`<path>.index`) holds the archive as queries need it, per space:
//! - `records`: `(owner, id) -> (timestamp, with, payload)`.
//! - `by_with`: `(owner, with, id) -> timestamp`.
//! - `owners`: `owner -> (count, max timestamp, max lag)`.
//! - `parley.internal`: format version and, per space, the newest id indexed (the watermark).
//!
//! See `codec` for the key encodings, which keep one owner's entries contiguous. Back up both
//! files together: journal entries are dropped once the index file holds them durably. `open`
//! refuses two files that are not one database (an index holding more than the main file wrote,
//! or missing records the journal no longer has); a lost index file whose records are all still
//! in the journal is rebuilt.
//!
//! # Why the journal (throughput)
//! A record in the per-owner tables dirties about four pages per owner touched, so a commit of
//! the messages of 1,000 users between each other rewrote ~4,000 pages (16 MiB) before its fsync:
//! about 5,000 durable messages/s. The journal makes the durable commit cheap and sequential;
//! the index file is then updated by its own thread with `Durability::None` commits (no fsync)
//! and made durable about once a second, so one index fsync covers ~a second of records and
//! never holds up an acceptance commit.
//!
//! # The durability promise
//! `append`/`apply_and_append` answer as soon as the commit holding the records in the journal is
//! fsynced; they do not wait for the index file, so indexing is on no message's latency path.
//! Read-your-writes holds all the same: every read of the archive (`query`, `count`,
//! `get_record`) and `delete_before` first waits until the index thread has processed every index
//! job the writer had handed over, or was about to hand over, when the read started. The writer
//! counts a group's job before it answers the group's callers, so a caller that got its answer and
//! then reads sees its records, and so does anyone it told. A read that starts while nothing is
//! pending costs two atomic loads, no wait. (`Committed::visible` still resolves once a group is
//! indexed, for callers that want to know; nobody needs it to read their own writes.)
//!
//! If an index commit fails, the index thread indexes nothing more (the records stay in the
//! journal and the next `open` replays them): a read that would have to see records of the failed
//! or a later job answers that commit's error instead of an incomplete answer, and a read whose
//! records were all indexed before the failure is answered normally. A read never hangs on a
//! stopped index thread: it answers [`StorageError::Closed`].
//!
//! A crash loses at most index commits that were not yet durable; `open` replays every journal
//! record above the index file's durable watermark, so nothing acknowledged is lost. The main
//! writer deletes journal entries at or below that watermark (published by the index thread after
//! each durable index commit). `delete_before` commits durably, so a purge never comes back after
//! a crash.
//!
//! # Why these indexes
//! A MAM page must not scan an owner's whole history. Paging by id (after/before, newest page) is a
//! range on `records`. A `with` filter is a range on `by_with`, already in id order, whose value
//! carries the timestamp so a time range is checked without touching the record; only the page's
//! records are then fetched.
//!
//! A time range maps to an id range by binary search over the owner's `records`, since an
//! owner's timestamps grow with its ids up to a bounded lag. `owners` tracks, per owner, the most
//! any record's timestamp fell behind the newest one appended before it (the lag `L`: 0 when
//! timestamps never decrease, a few milliseconds of jitter when concurrent sessions stamp records
//! just before they reach the writer). So a record stamped before `start - L` has only records
//! older than `start` below it, and one stamped after `end + L` only records newer than `end`
//! above it (reasoning on `codec::OwnerStats`); each probe of the search is one B-tree descent,
//! and the scan in between still checks timestamps. A clock that once stepped back an hour makes
//! that owner's range queries scan up to an hour more, never answer wrongly. (Format 2 kept a
//! per-owner `by_time` table for this: one more random B-tree insert per record, about 7 % of
//! chat throughput at saturation. `open` drops it from older index files.)
//!
//! `count` without filters is O(1) from `owners`; with `with` it counts index keys, with only a
//! time range it scans the records between the searched bounds.
//!
//! # Writes: group commit
//! One writer thread owns the main file's write transactions. `apply`, `append`,
//! `apply_and_append` and `flush` send a job with a oneshot reply through a bounded channel; the
//! writer drains what is pending, runs it in one transaction, commits with
//! `Durability::Immediate` (fsync), counts the group's index job, answers every caller, then hands
//! the group's records to the index thread, which indexes whatever has queued in one commit.
//! At most `MAX_INDEX_BACKLOG` records wait for the index thread: when it falls that far behind,
//! the writer waits for it (after answering its group), which bounds both memory and how long a
//! read can wait for the index to catch up (backpressure instead of an ever-growing lag). A
//! group is never held back when nothing is waiting, however large it is.
//!
//! The index thread, unlike the writer, gathers: it keeps collecting handed-over records for up to
//! `INDEX_GATHER` before it commits, because its cost is per page touched and one owner's records
//! only share pages when a commit holds many of them. Nobody waits for that window: a read that
//! finds the index behind counts itself as waiting and sends a `Flush`, and the index thread
//! commits at once while any read waits; a writer about to wait for room in the backlog sends a
//! `Flush` too; a purge, half the backlog allowance, or closing also end it.
//! A batch whose expectation fails is answered `Conflict` and skipped, without failing the rest.
//! A storage error fails the whole group: nothing of it was committed.
//!
//! # Reads
//! Archive reads first wait for the index to catch up (see the durability promise), then open a
//! redb read transaction (a consistent snapshot, never blocked by the writer) on the
//! blocking thread pool (`spawn_blocking`): a cold read may wait on the disk, and a MAM query may
//! read a few thousand entries, which must not stall the runtime's workers.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};
use tokio::sync::{mpsc, oneshot, watch};

use crate::codec::{self, OwnerStats};
use crate::zero_ahead::ZeroAheadFile;
use crate::{
    Archive, ArchiveAppend, ArchivePage, ArchiveQuery, ArchiveRecord, Committed, KeyValue, LatencyHistogram,
    LatencySnapshot, NewRecord, Space, StorageError, Store, Visible, WriteBatch, WriteOp,
};

type Bytes = &'static [u8];

/// Version of the main file's layout described in the module documentation (1: archive tables in
/// the main file, no journal).
const FORMAT_VERSION: u64 = 2;
/// Version of the index file's layout (2: with a per-owner `by_time` table, dropped on open).
const INDEX_FORMAT_VERSION: u64 = 3;
const INTERNAL_TABLE: TableDefinition<Bytes, Bytes> = TableDefinition::new("parley.internal");
const JOURNAL_TABLE: TableDefinition<Bytes, Bytes> = TableDefinition::new("parley.journal");
const FORMAT_KEY: &[u8] = b"format_version";
/// Pending jobs before `apply`/`append` callers wait (backpressure).
const JOB_QUEUE_CAPACITY: usize = 4096;
/// Most jobs in one commit, so one commit's latency stays bounded.
const MAX_GROUP_JOBS: usize = 2048;
/// Most bytes of values and payloads in one commit (a group always takes at least one job).
const MAX_GROUP_BYTES: usize = 64 * 1024 * 1024;
/// Most records one retention job deletes, so it never holds up appends for long.
const DELETE_CHUNK: usize = 10_000;
/// The index file is made durable at least this often while records arrive...
/// A durable commit taking this long is logged.
const SLOW_COMMIT: Duration = Duration::from_millis(50);
const INDEX_DURABLE_INTERVAL: Duration = Duration::from_secs(1);
/// ...or after this many records, which bounds the journal and the replay after a crash.
const INDEX_DURABLE_RECORDS: usize = 250_000;
/// Most journal records replayed into the index file in one commit at open.
const REPLAY_CHUNK: usize = 50_000;
/// Records handed to the index thread and not yet indexed before the writer waits. A read waits
/// for everything queued when it starts: at the ~30-50k records/s one index thread manages on a
/// small machine, this is at most a second or two of lag under saturation, while still letting
/// the index thread gather large (cheaper per record) commits.
const MAX_INDEX_BACKLOG: usize = 65_536;
/// How long the index thread keeps gathering records into one commit while nobody reads. Its
/// cost is per B-tree page touched, and one owner's records share pages only when a commit holds
/// many of them: at 1,000 busy owners, gathering a quarter of a second saves ~8 % of the server's
/// CPU per message at half load (docs/benchmarks.md). A read that has to wait for the index ends
/// the gathering at once, so no query waits for this.
const INDEX_GATHER: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum TableKind {
    Kv,
    Records,
    ByWith,
    Owners,
}

impl TableKind {
    /// The per-space tables of the index file.
    const INDEX: [TableKind; 3] = [TableKind::Records, TableKind::ByWith, TableKind::Owners];

    fn suffix(self) -> &'static str {
        match self {
            TableKind::Kv => "kv",
            TableKind::Records => "records",
            TableKind::ByWith => "by_with",
            TableKind::Owners => "owners",
        }
    }
}

/// The per-owner time index of index format 2, which format 3 replaced by a search over `records`.
fn legacy_time_table(space: Space) -> String {
    format!("{}.by_time", space.name())
}

fn table_name(space: Space, kind: TableKind) -> String {
    format!("{}.{}", space.name(), kind.suffix())
}

fn next_id_key(space: Space) -> Vec<u8> {
    format!("last_id.{}", space.name()).into_bytes()
}

fn indexed_key(space: Space) -> Vec<u8> {
    format!("indexed.{}", space.name()).into_bytes()
}

/// The space's position in [`Space::ALL`]: its journal key prefix and watermark slot.
fn space_code(space: Space) -> usize {
    Space::ALL
        .iter()
        .position(|candidate| *candidate == space)
        .unwrap_or(0)
}

/// Journal key: space code, then the id, so each space's records are contiguous and in id order.
fn journal_key(space: Space, id: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = space_code(space) as u8;
    key[1..].copy_from_slice(&id.to_be_bytes());
    key
}

/// Journal value: owner (length-prefixed), then the record encoding of `codec`.
fn encode_journal(owner: &str, record: &NewRecord) -> Vec<u8> {
    let mut out = codec::owner_prefix(owner);
    out.extend_from_slice(&codec::encode_record(
        record.timestamp_micros,
        &record.with,
        &record.payload,
    ));
    out
}

fn decode_journal(bytes: &[u8]) -> Result<(String, NewRecord), StorageError> {
    let corrupt = |what: &str| StorageError::Corrupt(format!("journal entry {what}"));
    let length = bytes.get(..2).ok_or_else(|| corrupt("too short"))?;
    let owner_len = usize::from(u16::from_be_bytes([length[0], length[1]]));
    let owner = bytes
        .get(2..2 + owner_len)
        .ok_or_else(|| corrupt("owner truncated"))?;
    let owner = std::str::from_utf8(owner).map_err(|_| corrupt("owner is not UTF-8"))?;
    let (timestamp_micros, with, payload) = codec::split_record(&bytes[2 + owner_len..])?;
    Ok((
        owner.to_owned(),
        NewRecord {
            timestamp_micros,
            with: with.to_owned(),
            payload: payload.to_vec(),
        },
    ))
}

/// The index file of the store at `path`.
fn index_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".index");
    path.with_file_name(name)
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

/// Per space, the newest id the index file holds durably; journal entries up to it may go.
#[derive(Default)]
struct Watermarks([AtomicU64; Space::ALL.len()]);

impl Watermarks {
    fn get(&self, space: Space) -> u64 {
        self.0[space_code(space)].load(Ordering::Acquire)
    }

    fn publish(&self, indexed: &HashMap<Space, u64>) {
        for (space, id) in indexed {
            self.0[space_code(*space)].fetch_max(*id, Ordering::AcqRel);
        }
    }
}

/// What the index thread has done, as reads need to know it.
#[derive(Debug, Clone, Default)]
struct IndexerState {
    /// Index jobs finished, indexed or failed, in the order the writer handed them over.
    processed: u64,
    /// The number (1-based) of the first job that could not be indexed, and why; every later job
    /// fails too.
    failure: Option<(u64, StorageError)>,
    /// The index thread has ended (closed, or panicked): no further job will be processed.
    stopped: bool,
}

/// Records queued for the index thread: the writer's backpressure.
#[derive(Debug, Default)]
struct Backlog {
    records: usize,
    /// The index thread has ended: nothing will drain the backlog any more.
    stopped: bool,
}

/// Read-your-writes bookkeeping shared by the writer, the index thread and the reads.
struct IndexProgress {
    /// Index jobs the writer has handed over or is about to: bumped before it answers callers.
    handed: AtomicU64,
    /// Index jobs indexed successfully (it stops moving at a failure): the reads' fast path.
    indexed: AtomicU64,
    /// Wakes reads that wait for the index thread.
    state: watch::Sender<IndexerState>,
    backlog: Mutex<Backlog>,
    /// Wakes the writer waiting for the backlog to shrink.
    drained: Condvar,
    /// Reads waiting for the index right now: while there are any, the index thread does not
    /// gather.
    waiting_reads: AtomicUsize,
}

impl Default for IndexProgress {
    fn default() -> Self {
        IndexProgress {
            handed: AtomicU64::new(0),
            indexed: AtomicU64::new(0),
            state: watch::Sender::new(IndexerState::default()),
            backlog: Mutex::new(Backlog::default()),
            drained: Condvar::new(),
            waiting_reads: AtomicUsize::new(0),
        }
    }
}

impl IndexProgress {
    fn backlog(&self) -> MutexGuard<'_, Backlog> {
        // The guarded state is two plain fields, valid whatever panicked while holding it.
        self.backlog.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writer: adds `records` to the backlog, first waiting while that would exceed
    /// [`MAX_INDEX_BACKLOG`] (never when the backlog is empty, nor once the index thread ended).
    /// `nudge` is called once before it waits, to end the index thread's gathering.
    fn reserve_backlog(&self, records: usize, nudge: impl FnOnce()) {
        let mut backlog = self.backlog();
        let mut nudge = Some(nudge);
        while backlog.records > 0 && backlog.records + records > MAX_INDEX_BACKLOG && !backlog.stopped {
            if let Some(nudge) = nudge.take() {
                nudge();
            }
            backlog = self.drained.wait(backlog).unwrap_or_else(PoisonError::into_inner);
        }
        backlog.records += records;
    }

    /// Index thread: `records` of the backlog are done with (indexed or failed).
    fn release_backlog(&self, records: usize) {
        let mut backlog = self.backlog();
        backlog.records = backlog.records.saturating_sub(records);
        self.drained.notify_all();
    }

    /// Called by the writer before it answers the callers of a group with records.
    fn hand_over(&self) {
        self.handed.fetch_add(1, Ordering::AcqRel);
    }

    /// Called by the index thread once it has finished `jobs` index jobs; `failure` is the error
    /// of their commit, if it failed.
    fn finished(&self, jobs: u64, failure: Option<&StorageError>) {
        self.state.send_modify(|state| {
            if let Some(error) = failure
                && state.failure.is_none()
            {
                state.failure = Some((state.processed + 1, error.clone()));
            }
            state.processed += jobs;
            if state.failure.is_none() {
                self.indexed.store(state.processed, Ordering::Release);
            }
        });
    }

    fn stopped(&self) {
        self.state.send_modify(|state| state.stopped = true);
        self.backlog().stopped = true;
        self.drained.notify_all();
    }

    /// Returns once every index job handed over before this call is indexed; an error when one
    /// of them failed, or when the index thread stopped before reaching them. `nudge` is called
    /// when the read has to wait, after it counts as waiting (so it wakes a gathering index
    /// thread, which then sees the waiting read).
    async fn caught_up(&self, nudge: impl FnOnce()) -> Result<(), StorageError> {
        let target = self.handed.load(Ordering::Acquire);
        if self.indexed.load(Ordering::Acquire) >= target {
            return Ok(());
        }
        let _waiting = WaitingRead::new(&self.waiting_reads);
        nudge();
        let mut state = self.state.subscribe();
        let state = state
            .wait_for(|state| state.processed >= target || state.failure.is_some() || state.stopped)
            .await
            .map_err(|_| StorageError::Closed)?;
        match &state.failure {
            Some((failed_job, error)) if *failed_job <= target => Err(error.clone()),
            _ if state.processed >= target => Ok(()),
            _ => Err(StorageError::Closed),
        }
    }
}

/// Counts a read as waiting for the index for as long as it lives (also when the read is dropped).
struct WaitingRead<'a>(&'a AtomicUsize);

impl<'a> WaitingRead<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        WaitingRead(count)
    }
}

impl Drop for WaitingRead<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Marks the index thread stopped when it ends, even by a panic, so no read waits for it forever.
struct StopsIndexProgress<'a>(&'a IndexProgress);

impl Drop for StopsIndexProgress<'_> {
    fn drop(&mut self) {
        self.0.stopped();
    }
}

/// The embedded store: the main file with a writer thread doing group commits, the index file
/// with its own thread, reads on the blocking pool. Drop or [`RedbStore::close`] it to stop both
/// threads after they finish pending jobs.
pub struct RedbStore {
    db: Arc<Database>,
    index: Arc<Database>,
    jobs: Option<mpsc::Sender<Job>>,
    index_jobs: Option<std_mpsc::Sender<IndexJob>>,
    progress: Arc<IndexProgress>,
    writer: Option<JoinHandle<()>>,
    indexer: Option<JoinHandle<()>>,
    commit_times: Arc<LatencyHistogram>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("open", &self.jobs.is_some())
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens (or creates, with its parent directories) the database at `path` and its index file
    /// `<path>.index`, replays journal records the index file lacks, and starts the writer and
    /// index threads. Blocking: call it at start-up, or from `spawn_blocking`.
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        Self::open_with_index_gather(path, INDEX_GATHER)
    }

    fn open_with_index_gather(path: &Path, index_gather: Duration) -> Result<Self, StorageError> {
        if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let db = Arc::new(create_database(path)?);
        let last_ids = initialise_main(&db)?;
        let index = Arc::new(create_database(&index_path(path))?);
        let mut indexed = initialise_index(&index)?;
        check_files_belong_together(&db, &last_ids, &indexed, path)?;
        replay_journal(&db, &index, &mut indexed)?;
        let watermarks = Arc::new(Watermarks::default());
        watermarks.publish(&indexed);

        let progress = Arc::new(IndexProgress::default());

        let (index_jobs, index_receiver) = std_mpsc::channel();
        let indexer_db = Arc::clone(&index);
        let indexer_marks = Arc::clone(&watermarks);
        let indexer_progress = Arc::clone(&progress);
        let indexer = std::thread::Builder::new()
            .name("parley-indexer".into())
            .spawn(move || {
                let _stops = StopsIndexProgress(&indexer_progress);
                run_indexer(
                    &indexer_db,
                    &index_receiver,
                    &indexer_marks,
                    &indexer_progress,
                    indexed,
                    index_gather,
                );
            })?;

        let (jobs, receiver) = mpsc::channel(JOB_QUEUE_CAPACITY);
        let writer_db = Arc::clone(&db);
        let writer_index_jobs = index_jobs.clone();
        let writer_progress = Arc::clone(&progress);
        let commit_times = Arc::new(LatencyHistogram::default());
        let writer_commit_times = Arc::clone(&commit_times);
        let writer = std::thread::Builder::new()
            .name("parley-writer".into())
            .spawn(move || {
                let handover = Handover {
                    jobs: &writer_index_jobs,
                    progress: &writer_progress,
                    watermarks: &watermarks,
                };
                run_writer(&writer_db, receiver, last_ids, &handover, &writer_commit_times);
            })?;
        Ok(RedbStore {
            db,
            index,
            jobs: Some(jobs),
            index_jobs: Some(index_jobs),
            progress,
            writer: Some(writer),
            indexer: Some(indexer),
            commit_times,
        })
    }

    /// Stops accepting writes, lets both threads finish what is queued (the index file is made
    /// durable), and waits for them, so the files can be reopened as soon as this returns (if no
    /// read is still running).
    pub async fn close(mut self) -> Result<(), StorageError> {
        self.jobs = None;
        self.index_jobs = None;
        let threads = [self.writer.take(), self.indexer.take()];
        let joined = tokio::task::spawn_blocking(move || {
            // Join every thread, even after one failed (so no `all`, which stops early).
            let mut all_ok = true;
            for thread in threads.into_iter().flatten() {
                all_ok &= thread.join().is_ok();
            }
            all_ok
        })
        .await
        .map_err(|error| StorageError::Io(Arc::new(error)))?;
        if joined { Ok(()) } else { Err(StorageError::Closed) }
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

    /// Sends a job to the index thread after the index has caught up with every append answered
    /// before this call (the job must see them).
    async fn submit_index<T>(
        &self,
        make_job: impl FnOnce(oneshot::Sender<Result<T, StorageError>>) -> IndexJob,
    ) -> Result<T, StorageError> {
        self.index_caught_up().await?;
        let jobs = self.index_jobs.as_ref().ok_or(StorageError::Closed)?;
        let (reply, answer) = oneshot::channel();
        jobs.send(make_job(reply)).map_err(|_| StorageError::Closed)?;
        answer.await.map_err(|_| StorageError::Closed)?
    }

    /// Waits until the index holds every record appended before this call, asking the index
    /// thread to commit at once if it is gathering.
    async fn index_caught_up(&self) -> Result<(), StorageError> {
        self.progress
            .caught_up(|| {
                if let Some(jobs) = &self.index_jobs {
                    // A stopped index thread is reported by `caught_up` itself.
                    let _ = jobs.send(IndexJob::Flush);
                }
            })
            .await
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

    /// Runs `work` on the index file once it holds every record appended before this call.
    async fn read_index<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        self.index_caught_up().await?;
        let index = Arc::clone(&self.index);
        tokio::task::spawn_blocking(move || work(&index))
            .await
            .map_err(|error| StorageError::Io(Arc::new(error)))?
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        self.jobs = None;
        self.index_jobs = None;
        // The threads only finish the jobs already queued; waiting keeps "dropped" meaning "the
        // files are released" for whoever opens them next. The writer goes first: it feeds the
        // indexer.
        for thread in [self.writer.take(), self.indexer.take()].into_iter().flatten() {
            let _ = thread.join();
        }
    }
}

/// Opens (or creates) a redb file on a [`ZeroAheadFile`], so its commits write over blocks the
/// filesystem has already allocated.
fn create_database(path: &Path) -> Result<Database, StorageError> {
    let file = ZeroAheadFile::open(path)?;
    Ok(redb::Builder::new().create_with_backend(file)?)
}

/// Checks (or writes) the format version of a file.
fn check_format(internal: &mut Table<'_, Bytes, Bytes>, supported: u64) -> Result<(), StorageError> {
    match stored_format(internal)? {
        None => {
            internal.insert(FORMAT_KEY, supported.to_be_bytes().as_slice())?;
            Ok(())
        }
        Some(found) if found == supported => Ok(()),
        Some(found) => Err(StorageError::UnsupportedFormat { found, supported }),
    }
}

fn stored_format(internal: &Table<'_, Bytes, Bytes>) -> Result<Option<u64>, StorageError> {
    internal
        .get(FORMAT_KEY)?
        .map(|guard| codec::decode_u64(guard.value()))
        .transpose()
}

/// Index format 2 → 3: the per-owner time tables go; nothing else changed.
fn upgrade_index_format(
    txn: &WriteTransaction,
    internal: &mut Table<'_, Bytes, Bytes>,
) -> Result<(), StorageError> {
    if stored_format(internal)? != Some(2) {
        return Ok(());
    }
    for space in Space::ALL {
        txn.delete_table(TableDefinition::<Bytes, Bytes>::new(&legacy_time_table(space)))?;
    }
    internal.insert(FORMAT_KEY, INDEX_FORMAT_VERSION.to_be_bytes().as_slice())?;
    Ok(())
}

fn read_counter(internal: &Table<'_, Bytes, Bytes>, key: &[u8]) -> Result<u64, StorageError> {
    match internal.get(key)? {
        Some(guard) => codec::decode_u64(guard.value()),
        None => Ok(0),
    }
}

/// Creates the main file's tables, checks its format and loads each space's last archive id.
fn initialise_main(db: &Database) -> Result<HashMap<Space, u64>, StorageError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    let mut last_ids = HashMap::new();
    {
        let mut internal = txn.open_table(INTERNAL_TABLE)?;
        check_format(&mut internal, FORMAT_VERSION)?;
        txn.open_table(JOURNAL_TABLE)?;
        for space in Space::ALL {
            txn.open_table(TableDefinition::<Bytes, Bytes>::new(&table_name(
                space,
                TableKind::Kv,
            )))?;
            last_ids.insert(space, read_counter(&internal, &next_id_key(space))?);
        }
    }
    txn.commit()?;
    Ok(last_ids)
}

/// Creates the index file's tables, checks its format and loads each space's watermark.
fn initialise_index(index: &Database) -> Result<HashMap<Space, u64>, StorageError> {
    let mut txn = index.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    let mut indexed = HashMap::new();
    {
        let mut internal = txn.open_table(INTERNAL_TABLE)?;
        upgrade_index_format(&txn, &mut internal)?;
        check_format(&mut internal, INDEX_FORMAT_VERSION)?;
        for space in Space::ALL {
            for kind in TableKind::INDEX {
                txn.open_table(TableDefinition::<Bytes, Bytes>::new(&table_name(space, kind)))?;
            }
            indexed.insert(space, read_counter(&internal, &indexed_key(space))?);
        }
    }
    txn.commit()?;
    Ok(indexed)
}

/// The two files must be one database: the index file may not hold more of a space than the main
/// file ever wrote, and whatever it lacks must still be in the journal (entries leave the journal
/// only once the index file holds them). Otherwise the index file is from another database or
/// another time (a restore of one file without the other), and opening would mix two archives
/// or silently lose history: refused, naming both files.
fn check_files_belong_together(
    db: &Database,
    last_ids: &HashMap<Space, u64>,
    indexed: &HashMap<Space, u64>,
    path: &Path,
) -> Result<(), StorageError> {
    let txn = db.begin_read()?;
    let journal = txn.open_table(JOURNAL_TABLE)?;
    for space in Space::ALL {
        let written = last_ids.get(&space).copied().unwrap_or(0);
        let held = indexed.get(&space).copied().unwrap_or(0);
        let mismatch = if held > written {
            Some(format!(
                "the index holds {held} {} records, the main file wrote only {written}",
                space.name()
            ))
        } else if held < written {
            let next = journal_key(space, held + 1);
            let in_journal = journal.get(next.as_slice())?.is_some();
            (!in_journal).then(|| {
                format!(
                    "{} records {} to {written} are neither in the index nor in the main file's journal",
                    space.name(),
                    held + 1
                )
            })
        } else {
            None
        };
        if let Some(detail) = mismatch {
            return Err(StorageError::Corrupt(format!(
                "{} and {} are not one database ({detail}); restore both files from the same backup",
                path.display(),
                index_path(path).display()
            )));
        }
    }
    Ok(())
}

/// Indexes every journal record above the index file's watermark (records acknowledged before a
/// crash whose index commit was not yet durable), durably, in chunks.
fn replay_journal(
    db: &Database,
    index: &Database,
    indexed: &mut HashMap<Space, u64>,
) -> Result<(), StorageError> {
    for space in Space::ALL {
        loop {
            let from = indexed.get(&space).copied().unwrap_or(0).saturating_add(1);
            let mut chunk = Vec::new();
            {
                let txn = db.begin_read()?;
                let journal = txn.open_table(JOURNAL_TABLE)?;
                let range = journal_key(space, from)..=journal_key(space, u64::MAX);
                for entry in journal
                    .range(range.start().as_slice()..=range.end().as_slice())?
                    .take(REPLAY_CHUNK)
                {
                    let (key, value) = entry?;
                    let id = codec::trailing_id(key.value())?;
                    let (owner, record) = decode_journal(value.value())?;
                    chunk.push(Indexed {
                        space,
                        id,
                        owner,
                        record,
                    });
                }
            }
            if chunk.is_empty() {
                break;
            }
            tracing::info!(
                space = space.name(),
                records = chunk.len(),
                "replaying the archive journal"
            );
            let mut next = indexed.clone();
            let mut group = [IndexJob::Index {
                records: chunk,
                visible: Visible::pending().0,
            }];
            index_jobs(index, Durability::Immediate, &mut group, &mut next)?;
            *indexed = next;
        }
    }
    Ok(())
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

/// A job of the main writer.
enum Job {
    Apply {
        batch: WriteBatch,
        done: Pending<()>,
    },
    /// A batch plus archive records (`append` is one with an empty batch).
    Commit {
        batch: WriteBatch,
        appends: Vec<ArchiveAppend>,
        done: Pending<Committed>,
    },
    Flush {
        done: Pending<()>,
    },
}

impl Job {
    /// Bytes this job adds to a commit, for the group size bound.
    fn weight(&self) -> usize {
        let batch_weight = |batch: &WriteBatch| -> usize {
            batch
                .ops
                .iter()
                .map(|op| match op {
                    WriteOp::Put { value, .. } => value.len(),
                    _ => 0,
                })
                .sum()
        };
        match self {
            Job::Apply { batch, .. } => batch_weight(batch),
            Job::Commit { batch, appends, .. } => {
                batch_weight(batch)
                    + appends
                        .iter()
                        .map(|append| append.record.payload.len())
                        .sum::<usize>()
            }
            Job::Flush { .. } => 0,
        }
    }
}

impl Job {
    fn finish(self, group_failure: Option<&StorageError>) {
        match self {
            Job::Apply { done, .. } | Job::Flush { done } => done.send(group_failure),
            Job::Commit { done, .. } => done.send(group_failure),
        }
    }
}

type VisibleSender = tokio::sync::watch::Sender<Option<Result<(), StorageError>>>;

/// A journaled record on its way into the index file.
struct Indexed {
    space: Space,
    id: u64,
    owner: String,
    record: NewRecord,
}

/// A job of the index thread.
enum IndexJob {
    /// Records the main file holds durably; `visible` is told once they are indexed.
    Index {
        records: Vec<Indexed>,
        visible: VisibleSender,
    },
    DeleteBefore {
        space: Space,
        scope: DeleteScope,
        before_micros: i64,
        done: Pending<DeleteProgress>,
    },
    /// A read is waiting for the index: stop gathering and commit what is there.
    Flush,
}

/// The writer's side of the hand-over to the index thread.
struct Handover<'a> {
    jobs: &'a std_mpsc::Sender<IndexJob>,
    progress: &'a IndexProgress,
    watermarks: &'a Watermarks,
}

fn run_writer(
    db: &Database,
    mut receiver: mpsc::Receiver<Job>,
    mut last_ids: HashMap<Space, u64>,
    handover: &Handover<'_>,
    commit_times: &LatencyHistogram,
) {
    let watermarks = handover.watermarks;
    // Journal entries at or below this are gone (0: nothing trimmed yet this run).
    let mut trimmed: HashMap<Space, u64> = HashMap::new();
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
        let trim_to: HashMap<Space, u64> = Space::ALL
            .iter()
            .map(|space| (*space, watermarks.get(*space)))
            .filter(|(space, mark)| *mark > trimmed.get(space).copied().unwrap_or(0))
            .collect();
        let mut records = Vec::new();
        // One signal for the whole group: its records are indexed together.
        let (visible, visible_receiver) = Visible::pending();
        let started = Instant::now();
        let outcome = write_group(
            db,
            &mut group,
            &mut next_last_ids,
            &trimmed,
            &trim_to,
            &mut records,
            &visible_receiver,
        );
        let took = started.elapsed();
        commit_times.record(took);
        if took >= SLOW_COMMIT {
            // Every caller of the group waited this long: the disk or the page cache is the
            // bottleneck, which operators need to see before users do.
            tracing::warn!(
                ms = took.as_millis() as u64,
                jobs = group.len(),
                records = records.len(),
                trims_journal = !trim_to.is_empty(),
                "slow storage commit"
            );
        }
        match outcome {
            Ok(()) => {
                last_ids = next_last_ids;
                trimmed.extend(trim_to);
                // Durable now. Count the index job BEFORE answering anyone, so a caller's next
                // read waits for it; then answer, so nobody waits for the hand-over itself.
                if !records.is_empty() {
                    handover.progress.hand_over();
                }
                group.into_iter().for_each(|job| job.finish(None));
                if !records.is_empty() {
                    // Blocks while the index thread is too far behind (backpressure).
                    handover.progress.reserve_backlog(records.len(), || {
                        // Gone index thread: reported where the job is sent.
                        let _ = handover.jobs.send(IndexJob::Flush);
                    });
                    if handover.jobs.send(IndexJob::Index { records, visible }).is_err() {
                        tracing::error!(
                            "the archive index thread has stopped; records wait for the next open"
                        );
                    }
                }
            }
            Err(error) => {
                tracing::error!(%error, jobs = group.len(), "storage group commit failed");
                group.into_iter().for_each(|job| job.finish(Some(&error)));
            }
        }
    }
}

/// Runs every job of a group in one durable transaction of the main file; collects the group's
/// records for the index thread (in id order).
fn write_group(
    db: &Database,
    group: &mut [Job],
    last_ids: &mut HashMap<Space, u64>,
    trimmed: &HashMap<Space, u64>,
    trim_to: &HashMap<Space, u64>,
    records: &mut Vec<Indexed>,
    visible: &Visible,
) -> Result<(), StorageError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    {
        let mut writer = GroupWriter::new(&txn);
        let mut journal = txn.open_table(JOURNAL_TABLE)?;
        for (space, mark) in trim_to {
            let from = journal_key(*space, trimmed.get(space).copied().unwrap_or(0));
            let to = journal_key(*space, *mark);
            journal.retain_in(from.as_slice()..=to.as_slice(), |_, _| false)?;
        }
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
                Job::Commit { batch, appends, done } => {
                    if !writer.apply(batch)? {
                        done.result = Some(Err(StorageError::Conflict));
                        continue;
                    }
                    let mut ids = Vec::with_capacity(appends.len());
                    for append in appends.drain(..) {
                        let last = last_ids.entry(append.space).or_insert(0);
                        let id = last
                            .checked_add(1)
                            .ok_or_else(|| StorageError::Corrupt("archive ids exhausted".into()))?;
                        *last = id;
                        journal.insert(
                            journal_key(append.space, id).as_slice(),
                            encode_journal(&append.owner, &append.record).as_slice(),
                        )?;
                        ids.push(id);
                        records.push(Indexed {
                            space: append.space,
                            id,
                            owner: append.owner,
                            record: append.record,
                        });
                    }
                    let visible = if ids.is_empty() {
                        Visible::now()
                    } else {
                        visible.clone()
                    };
                    done.result = Some(Ok(Committed { ids, visible }));
                }
                Job::Flush { done } => done.result = Some(Ok(())),
            }
        }
        let mut internal = txn.open_table(INTERNAL_TABLE)?;
        for (space, last) in last_ids.iter() {
            internal.insert(next_id_key(*space).as_slice(), last.to_be_bytes().as_slice())?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// Indexing is background work that bursts (hundreds of records per commit): at the default
/// priority it took the CPU from the threads that accept and deliver messages in time slices of
/// several milliseconds, which showed as their p99 latency. Niced, it yields to them and still
/// catches up whenever they leave CPU over (the backlog cap bounds how far behind it can fall).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn lower_this_threads_priority() {
    /// Nice value of the indexer thread (0 is the default, 19 the lowest priority).
    const INDEXER_NICE: libc::c_int = 10;
    // SAFETY: setpriority takes plain integers and touches no memory of ours; on Linux,
    // PRIO_PROCESS with id 0 is the calling thread only.
    let outcome = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, INDEXER_NICE) };
    if outcome != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower the indexer's priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_this_threads_priority() {}

fn run_indexer(
    index: &Database,
    receiver: &std_mpsc::Receiver<IndexJob>,
    watermarks: &Watermarks,
    progress: &IndexProgress,
    mut indexed: HashMap<Space, u64>,
    gather: Duration,
) {
    lower_this_threads_priority();
    let mut last_durable = Instant::now();
    let mut since_durable = 0usize;
    // After a failed index commit nothing more is indexed (ids would skip the failed records);
    // the records stay in the journal and the next open replays them.
    let mut failure: Option<StorageError> = None;
    loop {
        let first = match receiver.recv_timeout(INDEX_DURABLE_INTERVAL) {
            Ok(job) => job,
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                if since_durable > 0 && failure.is_none() {
                    match make_durable(index, &indexed) {
                        Ok(()) => {
                            watermarks.publish(&indexed);
                            (last_durable, since_durable) = (Instant::now(), 0);
                        }
                        Err(error) => failure = Some(error),
                    }
                }
                continue;
            }
            Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut group = gather_index_jobs(first, receiver, progress, gather);
        if group.iter().all(|job| matches!(job, IndexJob::Flush)) {
            continue;
        }
        let index_job_count = group
            .iter()
            .filter(|job| matches!(job, IndexJob::Index { .. }))
            .count() as u64;
        let records: usize = group
            .iter()
            .map(|job| match job {
                IndexJob::Index { records, .. } => records.len(),
                IndexJob::DeleteBefore { .. } | IndexJob::Flush => 0,
            })
            .sum();
        if let Some(error) = &failure {
            progress.release_backlog(records);
            progress.finished(index_job_count, Some(error));
            group
                .into_iter()
                .for_each(|job| finish_index_job(job, Some(error)));
            continue;
        }
        let deletes = group
            .iter()
            .any(|job| matches!(job, IndexJob::DeleteBefore { .. }));
        // A purge must never come back after a crash, so a group with one commits durably.
        let durable = deletes
            || last_durable.elapsed() >= INDEX_DURABLE_INTERVAL
            || since_durable + records >= INDEX_DURABLE_RECORDS;
        let durability = if durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        let mut next = indexed.clone();
        let outcome = index_jobs(index, durability, &mut group, &mut next);
        match &outcome {
            Ok(()) => {
                indexed = next;
                since_durable += records;
                if durable {
                    watermarks.publish(&indexed);
                    (last_durable, since_durable) = (Instant::now(), 0);
                }
            }
            Err(error) => {
                tracing::error!(%error, "archive index commit failed; the journal keeps the records");
                failure = Some(error.clone());
            }
        }
        let group_failure = outcome.err();
        progress.release_backlog(records);
        progress.finished(index_job_count, group_failure.as_ref());
        group
            .into_iter()
            .for_each(|job| finish_index_job(job, group_failure.as_ref()));
    }
    if since_durable > 0
        && failure.is_none()
        && let Err(error) = make_durable(index, &indexed)
    {
        tracing::error!(%error, "archive index could not be made durable at close");
    }
}

fn finish_index_job(job: IndexJob, group_failure: Option<&StorageError>) {
    match job {
        IndexJob::Index { visible, .. } => {
            let outcome = group_failure.map_or(Ok(()), |error| Err(error.clone()));
            // Nobody waiting any more is fine.
            let _ = visible.send(Some(outcome));
        }
        IndexJob::DeleteBefore { done, .. } => done.send(group_failure),
        IndexJob::Flush => {}
    }
}

/// `first` and the jobs that follow it within `gather`, so one commit covers many records. It stops
/// early at a `Flush` (a read waits for the index, or the writer for room in the backlog), while
/// any read waits, when a purge arrives, at [`MAX_GROUP_JOBS`], when half the writer's backlog
/// allowance is used, or when the writer is gone.
fn gather_index_jobs(
    first: IndexJob,
    receiver: &std_mpsc::Receiver<IndexJob>,
    progress: &IndexProgress,
    gather: Duration,
) -> Vec<IndexJob> {
    let deadline = Instant::now() + gather;
    let mut group = vec![first];
    let must_commit = |group: &[IndexJob]| {
        progress.waiting_reads.load(Ordering::Acquire) > 0
            || group.len() >= MAX_GROUP_JOBS
            || matches!(
                group.last(),
                Some(IndexJob::DeleteBefore { .. } | IndexJob::Flush)
            )
            || progress.backlog().records >= MAX_INDEX_BACKLOG / 2
    };
    while !must_commit(&group) {
        let wait = deadline.saturating_duration_since(Instant::now());
        match receiver.recv_timeout(wait) {
            Ok(job) => group.push(job),
            Err(_) => break,
        }
    }
    // Whatever else is already queued rides along without waiting.
    while group.len() < MAX_GROUP_JOBS {
        match receiver.try_recv() {
            Ok(job) => group.push(job),
            Err(_) => break,
        }
    }
    group
}

/// A durable commit of the index file, which makes every earlier non-durable one durable.
fn make_durable(index: &Database, indexed: &HashMap<Space, u64>) -> Result<(), StorageError> {
    let mut txn = index.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    write_watermarks(&txn, indexed)?;
    txn.commit()?;
    Ok(())
}

fn write_watermarks(txn: &WriteTransaction, indexed: &HashMap<Space, u64>) -> Result<(), StorageError> {
    let mut internal = txn.open_table(INTERNAL_TABLE)?;
    for (space, id) in indexed {
        internal.insert(indexed_key(*space).as_slice(), id.to_be_bytes().as_slice())?;
    }
    Ok(())
}

/// Runs one group of index jobs in one transaction of the index file.
fn index_jobs(
    index: &Database,
    durability: Durability,
    group: &mut [IndexJob],
    indexed: &mut HashMap<Space, u64>,
) -> Result<(), StorageError> {
    let mut txn = index.begin_write()?;
    txn.set_durability(durability)?;
    {
        let mut writer = GroupWriter::new(&txn);
        for job in group.iter_mut() {
            match job {
                IndexJob::Index { records, .. } => {
                    for indexed_record in records.iter() {
                        writer.index(indexed_record)?;
                        indexed.insert(indexed_record.space, indexed_record.id);
                    }
                }
                IndexJob::DeleteBefore {
                    space,
                    scope,
                    before_micros,
                    done,
                } => {
                    done.result = Some(Ok(writer.delete_before(*space, scope, *before_micros)?));
                }
                IndexJob::Flush => {}
            }
        }
        writer.write_stats()?;
        write_watermarks(&txn, indexed)?;
    }
    txn.commit()?;
    Ok(())
}

/// The state of one group's transaction: open tables and cached owner statistics.
struct GroupWriter<'t> {
    txn: &'t WriteTransaction,
    tables: HashMap<(Space, TableKind), Table<'t, Bytes, Bytes>>,
    stats: HashMap<(Space, String), OwnerStats>,
}

impl<'t> GroupWriter<'t> {
    fn new(txn: &'t WriteTransaction) -> Self {
        GroupWriter {
            txn,
            tables: HashMap::new(),
            stats: HashMap::new(),
        }
    }

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

    /// Adds a journaled record to the per-owner tables.
    fn index(&mut self, indexed: &Indexed) -> Result<(), StorageError> {
        let Indexed {
            space,
            id,
            owner,
            record,
        } = indexed;
        let (space, id) = (*space, *id);
        let timestamp = record.timestamp_micros;
        let value = codec::encode_record(timestamp, &record.with, &record.payload);
        self.table(space, TableKind::Records)?
            .insert(codec::record_key(owner, id).as_slice(), value.as_slice())?;
        self.table(space, TableKind::ByWith)?.insert(
            codec::with_key(owner, &record.with, id).as_slice(),
            timestamp.to_be_bytes().as_slice(),
        )?;
        self.owner_stats(space, owner)?.record_appended(timestamp);
        Ok(())
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
        // Records come in id order; past one stamped `before + lag` or later, every record is
        // stamped `before` or later (see "Why these indexes").
        let lag = self.owner_stats(space, owner)?.lag();
        let stop_at = before_micros.saturating_add(lag);
        let from = codec::record_key(owner, 0);
        let to = codec::record_key(owner, u64::MAX);
        let mut victims = Vec::new();
        for entry in self
            .table(space, TableKind::Records)?
            .range(from.as_slice()..=to.as_slice())?
        {
            let (key, value) = entry?;
            let (timestamp, with, _) = codec::split_record(value.value())?;
            if timestamp >= stop_at || victims.len() == budget {
                break;
            }
            if timestamp < before_micros {
                victims.push((codec::trailing_id(key.value())?, with.to_owned()));
            }
        }
        for (id, with) in &victims {
            self.table(space, TableKind::Records)?
                .remove(codec::record_key(owner, *id).as_slice())?;
            self.table(space, TableKind::ByWith)?
                .remove(codec::with_key(owner, with, *id).as_slice())?;
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

/// The id and timestamp of `owner`'s first (or, `newest`, last) record with an id in `from..=to`.
fn record_at_edge(
    records: &impl ReadableTable<Bytes, Bytes>,
    owner: &str,
    from: u64,
    to: u64,
    newest: bool,
) -> Result<Option<(u64, i64)>, StorageError> {
    let low = codec::record_key(owner, from);
    let high = codec::record_key(owner, to);
    let mut range = records.range(low.as_slice()..=high.as_slice())?;
    let entry = if newest { range.next_back() } else { range.next() };
    match entry {
        None => Ok(None),
        Some(entry) => {
            let (key, value) = entry?;
            Ok(Some((
                codec::trailing_id(key.value())?,
                codec::split_record(value.value())?.0,
            )))
        }
    }
}

/// Narrows `low..=high` to ids that can hold `owner`'s records stamped within the query's time
/// range (None: no record can). Binary searches over the ids: a record stamped before
/// `start - lag` bounds the ids from below, one stamped after `end + lag` from above (module
/// documentation, "Why these indexes"). Each probe is one B-tree descent; where the lag makes the
/// search miss the tightest bound, the bound found is still a valid one.
fn time_bounds(
    records: &impl ReadableTable<Bytes, Bytes>,
    owner: &str,
    lag: i64,
    query: &ArchiveQuery,
    low: u64,
    high: u64,
) -> Result<Option<(u64, u64)>, StorageError> {
    // Search only between the owner's actual first and last ids.
    let (Some((mut low, _)), Some((mut high, _))) = (
        record_at_edge(records, owner, low, high, false)?,
        record_at_edge(records, owner, low, high, true)?,
    ) else {
        return Ok(None);
    };
    if let Some(start) = query.start {
        let too_old = start.saturating_sub(lag);
        let (mut lo, mut hi) = (low, high);
        let mut bound = None;
        while lo <= hi {
            let mid = lo + (hi - lo) / 2;
            match record_at_edge(records, owner, mid, hi, false)? {
                Some((id, timestamp)) if timestamp < too_old => {
                    bound = Some(id);
                    lo = id.saturating_add(1);
                    if id == u64::MAX {
                        break;
                    }
                }
                _ => match mid.checked_sub(1) {
                    Some(below) => hi = below,
                    None => break,
                },
            }
        }
        if let Some(id) = bound {
            match id.checked_add(1) {
                Some(next) => low = low.max(next),
                None => return Ok(None),
            }
        }
    }
    if let Some(end) = query.end
        && end.saturating_add(lag) < i64::MAX
    {
        let too_new = end.saturating_add(lag);
        let (mut lo, mut hi) = (low, high);
        let mut bound = None;
        while lo <= hi {
            let mid = lo + (hi - lo) / 2;
            match record_at_edge(records, owner, lo, mid, true)? {
                Some((id, timestamp)) if timestamp > too_new => {
                    bound = Some(id);
                    match id.checked_sub(1) {
                        Some(below) => hi = below,
                        None => break,
                    }
                }
                _ => match mid.checked_add(1) {
                    Some(above) => lo = above,
                    None => break,
                },
            }
        }
        if let Some(id) = bound {
            match id.checked_sub(1) {
                Some(previous) => high = high.min(previous),
                None => return Ok(None),
            }
        }
    }
    Ok((low <= high).then_some((low, high)))
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
    let records_table = open_read(&txn, space, TableKind::Records)?;
    if filter_time {
        // Narrow the ids to the time range; the scan below still checks every timestamp.
        match time_bounds(&records_table, owner, stats.lag(), query, low, high)? {
            Some(bounds) => (low, high) = bounds,
            None => return Ok(nothing),
        }
    }
    let limit = query.effective_limit();
    let wanted = limit + 1;
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
            let records = open_read(&txn, space, TableKind::Records)?;
            let Some((low, high)) = time_bounds(&records, owner, stats.lag(), query, 0, u64::MAX)? else {
                return Ok(0);
            };
            let from = codec::record_key(owner, low);
            let to = codec::record_key(owner, high);
            for entry in records.range(from.as_slice()..=to.as_slice())? {
                let (_, value) = entry?;
                count += u64::from(in_time_range(query, codec::split_record(value.value())?.0));
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

    async fn get_many(
        &self,
        space: Space,
        owner: &str,
        keys: &[String],
    ) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        let mut encoded = Vec::with_capacity(keys.len());
        for key in keys {
            crate::check_owner_key(owner, key)?;
            encoded.push(codec::kv_key(owner, key));
        }
        self.read(move |db| {
            let txn = db.begin_read()?;
            let table = open_read(&txn, space, TableKind::Kv)?;
            encoded
                .iter()
                .map(|key| Ok(table.get(key.as_slice())?.map(|value| value.value().to_vec())))
                .collect()
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
        let appends = vec![ArchiveAppend {
            space,
            owner: owner.to_owned(),
            record,
        }];
        let committed = self
            .submit(|reply| Job::Commit {
                batch: WriteBatch::new(),
                appends,
                done: Pending::new(reply),
            })
            .await?;
        // Durable; no wait for the index: reads catch up themselves (read-your-writes).
        committed
            .ids
            .first()
            .copied()
            .ok_or_else(|| StorageError::Corrupt("an append was answered without an id".into()))
    }

    async fn query(
        &self,
        space: Space,
        owner: &str,
        query: &ArchiveQuery,
    ) -> Result<ArchivePage, StorageError> {
        crate::check_len("owner", owner.len(), crate::MAX_OWNER_LEN)?;
        let (owner, query) = (owner.to_owned(), query.clone());
        self.read_index(move |index| query_blocking(index, space, &owner, &query))
            .await
    }

    async fn count(&self, space: Space, owner: &str, query: &ArchiveQuery) -> Result<u64, StorageError> {
        crate::check_len("owner", owner.len(), crate::MAX_OWNER_LEN)?;
        let (owner, query) = (owner.to_owned(), query.clone());
        self.read_index(move |index| count_blocking(index, space, &owner, &query))
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
        self.read_index(move |index| {
            let txn = index.begin_read()?;
            let table = open_read(&txn, space, TableKind::Records)?;
            match table.get(key.as_slice())? {
                Some(value) => Ok(Some(codec::decode_record(id, value.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn owners(
        &self,
        space: Space,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StorageError> {
        if let Some(after) = after {
            crate::check_len("owner", after.len(), crate::MAX_OWNER_LEN)?;
        }
        let after = after.map(|after| after.as_bytes().to_vec());
        let limit = limit.min(crate::MAX_QUERY_LIMIT);
        self.read_index(move |index| {
            let txn = index.begin_read()?;
            let table = open_read(&txn, space, TableKind::Owners)?;
            let range = match &after {
                Some(after) => table.range::<&[u8]>((
                    std::ops::Bound::Excluded(after.as_slice()),
                    std::ops::Bound::Unbounded,
                ))?,
                None => table.range::<&[u8]>(..)?,
            };
            let mut owners = Vec::new();
            for entry in range.take(limit) {
                let (owner, _) = entry?;
                let owner = String::from_utf8(owner.value().to_vec())
                    .map_err(|_| StorageError::Corrupt("an archive owner is not UTF-8".into()))?;
                owners.push(owner);
            }
            Ok(owners)
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
                .submit_index(|reply| IndexJob::DeleteBefore {
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

#[async_trait::async_trait]
impl Store for RedbStore {
    async fn apply_and_append(
        &self,
        batch: WriteBatch,
        appends: Vec<ArchiveAppend>,
    ) -> Result<Committed, StorageError> {
        crate::validate_commit(&batch, &appends)?;
        self.submit(|reply| Job::Commit {
            batch,
            appends,
            done: Pending::new(reply),
        })
        .await
    }

    fn commit_times(&self) -> Option<LatencySnapshot> {
        Some(self.commit_times.snapshot())
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

    async fn append_mam(store: &RedbStore, owner: &str, count: i64) {
        for n in 0..count {
            let record = NewRecord {
                timestamp_micros: n,
                with: "peer".into(),
                payload: vec![b'x'],
            };
            store.append(Space::Mam, owner, record).await.unwrap();
        }
    }

    fn refused(path: &Path) -> String {
        match RedbStore::open(path) {
            Err(StorageError::Corrupt(message)) => message,
            Err(other) => panic!("expected Corrupt, got {other}"),
            Ok(_) => panic!("a mismatched pair of files was opened"),
        }
    }

    /// A main file restored (or recreated) without its index file: the index holds records the
    /// main file never wrote, so opening would mix two archives.
    #[tokio::test]
    async fn an_index_file_from_another_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("parley.redb");
        let store = RedbStore::open(&path).unwrap();
        append_mam(&store, "alice@example.com", 5).await;
        store.close().await.unwrap();
        std::fs::remove_file(&path).unwrap();
        let message = refused(&path);
        assert!(message.contains("are not one database"), "{message}");
        assert!(message.contains("parley.redb.index"), "{message}");
    }

    /// An index file lost after the journal handed its records over: the history would be gone
    /// without a word, so opening is refused; while the journal still holds everything, a new
    /// index file is simply rebuilt from it.
    #[tokio::test]
    async fn a_lost_index_file_is_rebuilt_from_the_journal_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("parley.redb");
        let owner = "alice@example.com";
        let store = RedbStore::open(&path).unwrap();
        append_mam(&store, owner, 5).await;
        store.close().await.unwrap();
        // Nothing trimmed yet: a missing index file is rebuilt from the journal.
        std::fs::rename(index_path(&path), dir.path().join("kept.index")).unwrap();
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(
            store
                .count(Space::Mam, owner, &ArchiveQuery::default())
                .await
                .unwrap(),
            5
        );
        // The next commit trims the journal up to what the index file holds durably.
        append_mam(&store, owner, 1).await;
        store.close().await.unwrap();
        std::fs::remove_file(index_path(&path)).unwrap();
        let message = refused(&path);
        assert!(message.contains("neither in the index nor"), "{message}");
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

    /// Many concurrent appenders, each reading right after its own commit without waiting on
    /// `visible`: every one always sees its own record, among everybody else's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appenders_read_their_own_writes() {
        let (_dir, store) = temp_store();
        let store = Arc::new(store);
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..64i64 {
            let store = Arc::clone(&store);
            tasks.spawn(async move {
                // Eight owners shared by eight tasks each; `with` tells the tasks apart.
                let owner = format!("owner{}", task % 8);
                let peer = format!("peer{task}");
                for n in 0..15i64 {
                    let record = NewRecord {
                        timestamp_micros: n,
                        with: peer.clone(),
                        payload: format!("{task}/{n}").into_bytes(),
                    };
                    let appends = vec![ArchiveAppend {
                        space: Space::Mam,
                        owner: owner.clone(),
                        record,
                    }];
                    let committed = store.apply_and_append(WriteBatch::new(), appends).await.unwrap();
                    let id = committed.ids[0];
                    let newest = ArchiveQuery {
                        with: Some(peer.clone()),
                        limit: 1,
                        reverse: true,
                        ..ArchiveQuery::default()
                    };
                    let page = store.query(Space::Mam, &owner, &newest).await.unwrap();
                    assert_eq!(
                        page.records.last().map(|record| record.id),
                        Some(id),
                        "{task}/{n}"
                    );
                    let fetched = store.get_record(Space::Mam, &owner, id).await.unwrap();
                    assert_eq!(
                        fetched.map(|record| record.payload),
                        Some(format!("{task}/{n}").into_bytes())
                    );
                    let counted = store.count(Space::Mam, &owner, &newest).await.unwrap();
                    assert_eq!(counted, n as u64 + 1, "{task}/{n}");
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        let total = store
            .count(Space::Mam, "owner0", &ArchiveQuery::default())
            .await
            .unwrap();
        assert_eq!(total, 8 * 15);
    }

    async fn resolves_soon(progress: &IndexProgress) -> Option<Result<(), StorageError>> {
        tokio::time::timeout(Duration::from_millis(50), progress.caught_up(|| {}))
            .await
            .ok()
    }

    #[tokio::test]
    async fn reads_wait_for_handed_jobs_only() {
        let progress = IndexProgress::default();
        assert!(
            matches!(resolves_soon(&progress).await, Some(Ok(()))),
            "nothing handed over"
        );
        progress.hand_over();
        assert!(resolves_soon(&progress).await.is_none(), "a job is pending");
        let (waiting, ()) = tokio::join!(progress.caught_up(|| {}), async { progress.finished(1, None) });
        assert!(waiting.is_ok(), "{waiting:?}");
        assert!(matches!(resolves_soon(&progress).await, Some(Ok(()))));
    }

    #[tokio::test]
    async fn a_read_that_waits_counts_as_waiting_and_nudges_the_index_thread() {
        let progress = IndexProgress::default();
        let nudged = std::cell::Cell::new(0);
        assert!(progress.caught_up(|| nudged.set(nudged.get() + 1)).await.is_ok());
        assert_eq!(nudged.get(), 0, "nothing to wait for, nobody to wake");

        progress.hand_over();
        let seen_waiting = std::cell::Cell::new(0);
        let read = progress.caught_up(|| {
            nudged.set(nudged.get() + 1);
            seen_waiting.set(progress.waiting_reads.load(Ordering::Acquire));
        });
        let (read, ()) = tokio::join!(read, async {
            tokio::task::yield_now().await;
            progress.finished(1, None);
        });
        assert!(read.is_ok(), "{read:?}");
        assert_eq!(nudged.get(), 1);
        assert_eq!(seen_waiting.get(), 1, "the read counts before it nudges");
        assert_eq!(
            progress.waiting_reads.load(Ordering::Acquire),
            0,
            "and stops counting after"
        );
    }

    #[tokio::test]
    async fn reads_and_close_never_wait_for_the_index_gathering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("parley.redb");
        // A gathering window longer than any wait below: every answer must come from a flush
        // (and a failure is over within a minute, not an hour).
        let store = RedbStore::open_with_index_gather(&path, Duration::from_secs(60)).unwrap();
        let within = Duration::from_secs(20);
        for round in 1..=3u64 {
            append_mam(&store, "alice", 1).await;
            let counted =
                tokio::time::timeout(within, store.count(Space::Mam, "alice", &ArchiveQuery::default()))
                    .await
                    .expect("a read ends the gathering")
                    .unwrap();
            assert_eq!(counted, round);
        }
        append_mam(&store, "bob", 2).await;
        tokio::time::timeout(within, store.close())
            .await
            .expect("close ends the gathering")
            .unwrap();
        let reopened = RedbStore::open(&path).unwrap();
        let bob = reopened
            .count(Space::Mam, "bob", &ArchiveQuery::default())
            .await
            .unwrap();
        assert_eq!(bob, 2);
        reopened.close().await.unwrap();
    }

    #[tokio::test]
    async fn reads_after_an_index_failure_answer_it_instead_of_hanging() {
        let progress = IndexProgress::default();
        progress.hand_over();
        progress.finished(1, None);
        progress.hand_over();
        progress.hand_over();
        progress.finished(2, Some(&StorageError::Corrupt("index commit".into())));
        let failed = resolves_soon(&progress).await;
        assert!(
            matches!(failed, Some(Err(StorageError::Corrupt(_)))),
            "{failed:?}"
        );
        assert_eq!(
            progress.indexed.load(Ordering::Acquire),
            1,
            "the fast path stops at the failure"
        );

        // A read whose jobs were all indexed before the failure is answered normally.
        let early = IndexProgress::default();
        early.hand_over();
        early.finished(1, None);
        early.finished(0, Some(&StorageError::Corrupt("durable commit".into())));
        assert!(matches!(resolves_soon(&early).await, Some(Ok(()))));
        early.hand_over();
        early.finished(1, Some(&StorageError::Corrupt("durable commit".into())));
        assert!(matches!(
            resolves_soon(&early).await,
            Some(Err(StorageError::Corrupt(_)))
        ));
    }

    #[test]
    fn writer_waits_for_the_index_backlog_only_when_it_is_full() {
        let progress = Arc::new(IndexProgress::default());
        progress.reserve_backlog(MAX_INDEX_BACKLOG * 2, || panic!("an empty backlog never waits"));
        assert_eq!(
            progress.backlog().records,
            MAX_INDEX_BACKLOG * 2,
            "an empty backlog takes any group"
        );
        let (reserved, waited) = std_mpsc::channel();
        let nudges = Arc::new(AtomicUsize::new(0));
        let writer = {
            let progress = Arc::clone(&progress);
            let nudges = Arc::clone(&nudges);
            std::thread::spawn(move || {
                let nudge = || {
                    nudges.fetch_add(1, Ordering::SeqCst);
                };
                progress.reserve_backlog(10, nudge);
                reserved.send(()).unwrap();
                progress.reserve_backlog(MAX_INDEX_BACKLOG, nudge);
                reserved.send(()).unwrap();
            })
        };
        assert!(
            waited.recv_timeout(Duration::from_millis(100)).is_err(),
            "the backlog is full"
        );
        assert_eq!(
            nudges.load(Ordering::SeqCst),
            1,
            "the index thread is asked to commit, once"
        );
        progress.release_backlog(MAX_INDEX_BACKLOG * 2);
        waited.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(
            waited.recv_timeout(Duration::from_millis(100)).is_err(),
            "10 + MAX is too many"
        );
        progress.stopped();
        waited.recv_timeout(Duration::from_secs(5)).unwrap();
        writer.join().unwrap();
        assert_eq!(nudges.load(Ordering::SeqCst), 2, "once per wait");
    }

    #[tokio::test]
    async fn a_writer_waiting_for_backlog_room_ends_the_index_gathering() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            RedbStore::open_with_index_gather(&dir.path().join("parley.redb"), Duration::from_secs(90))
                .unwrap();
        let appends = |count: usize| -> Vec<ArchiveAppend> {
            (0..count)
                .map(|n| ArchiveAppend {
                    space: Space::Mam,
                    owner: format!("owner{}", n % 50),
                    record: NewRecord {
                        timestamp_micros: n as i64,
                        with: "peer".into(),
                        payload: vec![b'x'],
                    },
                })
                .collect()
        };
        let within = Duration::from_secs(45);
        // Under half the backlog allowance, so the index thread gathers; then one that does not
        // fit beside it, so the writer waits for room; then anything at all.
        for count in [MAX_INDEX_BACKLOG / 2 - 2_000, MAX_INDEX_BACKLOG / 2 + 8_000, 1] {
            tokio::time::timeout(within, store.apply_and_append(WriteBatch::new(), appends(count)))
                .await
                .expect("the writer does not sit out the gathering")
                .unwrap();
        }
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn reads_do_not_hang_on_a_stopped_index_thread() {
        let progress = IndexProgress::default();
        progress.hand_over();
        {
            let _stops = StopsIndexProgress(&progress);
        }
        let answer = resolves_soon(&progress).await;
        assert!(matches!(answer, Some(Err(StorageError::Closed))), "{answer:?}");
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

    fn journal_ids(path: &Path) -> Vec<u64> {
        let db = Database::open(path).unwrap();
        let txn = db.begin_read().unwrap();
        let journal = txn.open_table(JOURNAL_TABLE).unwrap();
        journal
            .iter()
            .unwrap()
            .map(|entry| codec::trailing_id(entry.unwrap().0.value()).unwrap())
            .collect()
    }

    /// The index file lost (as if none of its commits had been made durable before a crash):
    /// open rebuilds it from the journal, so every acknowledged record is queryable again.
    #[tokio::test]
    async fn lost_index_is_replayed_from_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("parley.redb");
        let store = RedbStore::open(&path).unwrap();
        let mut ids = Vec::new();
        for n in 0..5 {
            let record = NewRecord {
                timestamp_micros: n,
                with: format!("peer{}", n % 2),
                payload: vec![n as u8],
            };
            ids.push(store.append(Space::Mam, "alice", record).await.unwrap());
        }
        store.close().await.unwrap();
        assert_eq!(
            journal_ids(&path),
            ids,
            "nothing was trimmed: no commit followed the index's"
        );
        std::fs::remove_file(index_path(&path)).unwrap();

        let store = RedbStore::open(&path).unwrap();
        let query = ArchiveQuery {
            with: Some("peer0".into()),
            limit: 10,
            ..ArchiveQuery::default()
        };
        let page = store.query(Space::Mam, "alice", &query).await.unwrap();
        let found: Vec<u64> = page.records.iter().map(|record| record.id).collect();
        assert_eq!(found, [ids[0], ids[2], ids[4]]);
        assert_eq!(
            store
                .count(Space::Mam, "alice", &ArchiveQuery::default())
                .await
                .unwrap(),
            5
        );
        store.close().await.unwrap();
    }

    /// Every durable commit is timed, whoever asked for it.
    #[tokio::test]
    async fn durable_commits_are_counted_in_the_commit_times() {
        let (_dir, store) = temp_store();
        let before = store.commit_times().expect("redb has commit times").count;
        let mut batch = WriteBatch::new();
        batch.put(Space::Roster, "alice", "bob", b"item".to_vec());
        store.apply(batch).await.unwrap();
        let record = NewRecord {
            timestamp_micros: 1,
            with: "bob".into(),
            payload: b"hi".to_vec(),
        };
        store.append(Space::Mam, "alice", record).await.unwrap();
        let after = store.commit_times().unwrap();
        assert_eq!(after.count, before + 2, "{after:?}");
        assert!(
            after.sum_seconds > 0.0,
            "a commit with an fsync takes time: {after:?}"
        );
        store.close().await.unwrap();
    }

    /// Journal entries go once the index file holds them durably (here: made durable at close).
    #[tokio::test]
    async fn journal_is_trimmed_once_indexed_durably() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("parley.redb");
        let record = || NewRecord {
            timestamp_micros: 1,
            with: "bob".into(),
            payload: b"hi".to_vec(),
        };
        let store = RedbStore::open(&path).unwrap();
        store.append(Space::Mam, "alice", record()).await.unwrap();
        store.append(Space::Audit, "alice", record()).await.unwrap();
        store.close().await.unwrap();
        let store = RedbStore::open(&path).unwrap();
        let last = store.append(Space::Mam, "alice", record()).await.unwrap();
        store.close().await.unwrap();
        assert_eq!(
            journal_ids(&path),
            [last],
            "the first two were trimmed by the third commit"
        );
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(
            store
                .count(Space::Mam, "alice", &ArchiveQuery::default())
                .await
                .unwrap(),
            2
        );
        assert_eq!(
            store
                .count(Space::Audit, "alice", &ArchiveQuery::default())
                .await
                .unwrap(),
            1
        );
        store.close().await.unwrap();
    }

    #[test]
    fn malformed_journal_entries_are_corrupt_not_panics() {
        let good = encode_journal(
            "alice",
            &NewRecord {
                timestamp_micros: 7,
                with: "bob".into(),
                payload: b"xml".to_vec(),
            },
        );
        let (owner, record) = decode_journal(&good).unwrap();
        assert_eq!(
            (owner.as_str(), record.timestamp_micros, record.payload.as_slice()),
            ("alice", 7, &b"xml"[..])
        );
        for bad in [&[][..], &[0][..], &[0, 9, b'a'][..], &good[..9]] {
            assert!(
                matches!(decode_journal(bad), Err(StorageError::Corrupt(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            decode_journal(&[0, 1, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(StorageError::Corrupt(_))
        ));
    }

    #[test]
    fn journal_keys_sort_by_space_then_id() {
        assert!(journal_key(Space::Mam, u64::MAX) < journal_key(Space::Compliance, 0));
        assert!(journal_key(Space::Mam, 255) < journal_key(Space::Mam, 256));
        assert_eq!(
            index_path(Path::new("/d/parley.redb")),
            Path::new("/d/parley.redb.index")
        );
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

    /// Retention over jittered timestamps (records stamped up to 2 ms behind earlier ones): the
    /// scan in id order must delete exactly the records older than the cutoff, as the brute-force
    /// MemoryStore does, and later queries must agree too.
    #[tokio::test]
    async fn delete_before_with_out_of_order_timestamps_matches_memory_store() {
        let (_dir, store) = temp_store();
        let reference = crate::MemoryStore::new();
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        let owners = ["a", "b"];
        for n in 0..300i64 {
            let owner = owners[rng.below(2) as usize];
            let record = NewRecord {
                timestamp_micros: n * 10 + rng.below(2_000) as i64 - 1_000,
                with: format!("peer{}", rng.below(3)),
                payload: n.to_be_bytes().to_vec(),
            };
            let id = store.append(Space::Mam, owner, record.clone()).await.unwrap();
            assert_eq!(reference.append(Space::Mam, owner, record).await.unwrap(), id);
        }
        for (owner, cutoff) in [(Some("a"), 700), (None, 1_500), (Some("b"), 2_200), (None, 2_600)] {
            let expected = reference.delete_before(Space::Mam, owner, cutoff).await.unwrap();
            assert_eq!(
                store.delete_before(Space::Mam, owner, cutoff).await.unwrap(),
                expected,
                "{owner:?} {cutoff}"
            );
            assert!(expected > 0, "the cutoff {cutoff} deletes something");
            for who in owners {
                let all = ArchiveQuery {
                    limit: 1_000,
                    ..ArchiveQuery::default()
                };
                assert_eq!(
                    store.query(Space::Mam, who, &all).await.unwrap(),
                    reference.query(Space::Mam, who, &all).await.unwrap()
                );
                let recent = ArchiveQuery {
                    start: Some(cutoff),
                    ..all
                };
                assert_eq!(
                    store.count(Space::Mam, who, &recent).await.unwrap(),
                    reference.count(Space::Mam, who, &recent).await.unwrap()
                );
            }
        }
    }

    /// An index file of format 2 (with per-owner `by_time` tables) is upgraded in place: the
    /// tables go, the records stay and answer time-range queries.
    #[tokio::test]
    async fn index_format_2_is_upgraded_by_dropping_the_time_tables() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("parley.redb");
        {
            let store = RedbStore::open(&path).unwrap();
            for n in 0..5i64 {
                let record = NewRecord {
                    timestamp_micros: n * 100,
                    with: "bob@example.com".into(),
                    payload: b"<message/>".to_vec(),
                };
                store
                    .append(Space::Mam, "alice@example.com", record)
                    .await
                    .unwrap();
            }
        }
        {
            let index = Database::create(index_path(&path)).unwrap();
            let txn = index.begin_write().unwrap();
            txn.open_table(INTERNAL_TABLE)
                .unwrap()
                .insert(FORMAT_KEY, 2u64.to_be_bytes().as_slice())
                .unwrap();
            txn.open_table(TableDefinition::<Bytes, Bytes>::new(&legacy_time_table(
                Space::Mam,
            )))
            .unwrap()
            .insert(b"stale".as_slice(), b"".as_slice())
            .unwrap();
            txn.commit().unwrap();
        }
        let store = RedbStore::open(&path).unwrap();
        let query = ArchiveQuery {
            start: Some(150),
            end: Some(350),
            limit: 10,
            ..ArchiveQuery::default()
        };
        let page = store
            .query(Space::Mam, "alice@example.com", &query)
            .await
            .unwrap();
        let stamps: Vec<i64> = page
            .records
            .iter()
            .map(|record| record.timestamp_micros)
            .collect();
        assert_eq!(stamps, [200, 300]);
        drop(store);
        let index = Database::create(index_path(&path)).unwrap();
        let txn = index.begin_read().unwrap();
        let version = txn
            .open_table(INTERNAL_TABLE)
            .unwrap()
            .get(FORMAT_KEY)
            .unwrap()
            .unwrap()
            .value()
            .to_vec();
        assert_eq!(version, INDEX_FORMAT_VERSION.to_be_bytes());
        assert!(
            txn.open_table(TableDefinition::<Bytes, Bytes>::new(&legacy_time_table(
                Space::Mam
            )))
            .is_err(),
            "the time table is gone"
        );
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

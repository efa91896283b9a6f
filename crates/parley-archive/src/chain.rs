//! The chain writer: one task that orders every append into the hash chain.
//!
//! Sessions call [`ChainWriter::append`] concurrently. The task takes whatever is queued (up to
//! [`MAX_BATCH_ENTRIES`]), gives each entry the next sequence number and the previous entry's
//! hash, and writes the whole batch plus the new head, plus the entries' MAM copies (archive
//! records riding along, see `ArchiveStage`), as ONE `Store::apply_and_append`: one storage job,
//! one fsynced commit, atomic. So the head always names the newest durable entry,
//! and a crash can never leave a gap or a half batch. While a batch commits, the next one
//! queues up, which is what makes the group commit effective: the batch size grows with load.
//!
//! Only one batch is in flight: the next batch's `prev` must be the hash of an entry that is
//! durable, or a failed commit would leave the chain pointing at nothing.
//!
//! Callers are answered as soon as the commit is durable, never after the records are indexed:
//! the store promises read-your-writes (a query that starts after the answer sees the records;
//! see `parley_storage::Archive`), so indexing stays off every message's latency path.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use parley_storage::{ArchiveAppend, KeyValue, MAX_VALUE_LEN, Space, StorageError, Store, WriteBatch};
use tokio::sync::{mpsc, oneshot};

use crate::ArchiveError;
use crate::clock::Clock;
use crate::entry::{
    Body, CHAIN_OWNER, CHECKPOINT_OWNER, Checkpoint, Entry, HEAD_KEY, Hash, META_OWNER, entry_reference,
    hash_bytes, seq_key,
};
use crate::verify::OutsideCheckpoint;

/// Most entries in one chain batch.
pub const MAX_BATCH_ENTRIES: usize = 4096;
/// Most bytes of entries in one chain batch (a batch always takes at least one entry).
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Appends queued before callers wait (backpressure).
const QUEUE_CAPACITY: usize = 16 * 1024;

/// Writes that must commit atomically with an entry, given its sequence number.
pub(crate) type ExtraWrites = Box<dyn FnOnce(u64, &mut WriteBatch) + Send>;

/// Where an entry landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    pub ts: i64,
}

/// When checkpoints are kept in the checkpoint history (the head itself moves every batch).
#[derive(Debug, Clone, Copy)]
pub struct CheckpointPolicy {
    /// At least this many entries since the previous checkpoint...
    pub every_entries: u64,
    /// ...or at least this many microseconds.
    pub every_micros: i64,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        Self {
            every_entries: 10_000,
            every_micros: 60_000_000,
        }
    }
}

/// An entry and the archive ids of the records that rode along with it.
type Reply = Result<(Appended, Vec<u64>), ArchiveError>;

struct Request {
    body: Body,
    extra: Option<ExtraWrites>,
    /// Archive records committed atomically with the entry (its MAM copies); their payloads
    /// become references to the entry (see [`entry_reference`]).
    appends: Vec<ArchiveAppend>,
    /// Commits alone (a purge's many deletes must not share a batch's op budget).
    alone: bool,
    reply: oneshot::Sender<Reply>,
}

/// A handle to the chain task; cheap to clone. The task ends when every handle is dropped.
#[derive(Clone)]
pub struct ChainWriter {
    requests: mpsc::Sender<Request>,
}

impl std::fmt::Debug for ChainWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainWriter").finish_non_exhaustive()
    }
}

impl ChainWriter {
    /// Loads the head and spawns the chain task on the current runtime.
    pub async fn start(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        policy: CheckpointPolicy,
    ) -> Result<Self, ArchiveError> {
        let (head, head_bytes) = load_head(store.as_ref()).await?;
        let (requests, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let task = ChainTask {
            store,
            clock,
            policy,
            last_checkpoint: head,
            head,
            head_bytes,
        };
        tokio::spawn(task.run(receiver));
        Ok(Self { requests })
    }

    /// Appends one entry; returns once it is durable.
    pub async fn append(&self, body: Body) -> Result<Appended, ArchiveError> {
        self.send(body, None, false).await
    }

    /// Appends one entry and, in the same durable commit, `appends`, each with its payload
    /// replaced by a reference to the entry ([`entry_reference`]): the stanza is stored once, in
    /// the entry, however many MAM copies point at it. Returns as soon as both are durable, with
    /// the records' archive ids in order. It does not wait for the records to be indexed: any
    /// query that starts after it returned sees them (the store's read-your-writes).
    pub async fn append_with_references(
        &self,
        body: Body,
        appends: Vec<ArchiveAppend>,
    ) -> Result<(Appended, Vec<u64>), ArchiveError> {
        self.request(body, None, appends, false).await
    }

    /// [`ChainWriter::append_with_references`] in two steps: returns once the entry is queued
    /// (entries queued one after the other get increasing sequence numbers), with what resolves
    /// once it is durable.
    pub async fn queue_with_references(
        &self,
        body: Body,
        appends: Vec<ArchiveAppend>,
    ) -> Result<Queued, ArchiveError> {
        self.enqueue(body, None, appends, false).await
    }

    pub(crate) async fn send(
        &self,
        body: Body,
        extra: Option<ExtraWrites>,
        alone: bool,
    ) -> Result<Appended, ArchiveError> {
        Ok(self.request(body, extra, Vec::new(), alone).await?.0)
    }

    async fn request(
        &self,
        body: Body,
        extra: Option<ExtraWrites>,
        appends: Vec<ArchiveAppend>,
        alone: bool,
    ) -> Reply {
        self.enqueue(body, extra, appends, alone).await?.await
    }

    async fn enqueue(
        &self,
        body: Body,
        extra: Option<ExtraWrites>,
        appends: Vec<ArchiveAppend>,
        alone: bool,
    ) -> Result<Queued, ArchiveError> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            body,
            extra,
            appends,
            alone,
            reply,
        };
        self.requests
            .send(request)
            .await
            .map_err(|_| ArchiveError::Closed)?;
        Ok(Queued(answer))
    }
}

/// An entry in the chain's queue: resolves once it is durable, with the archive ids of the
/// records that rode along with it.
#[derive(Debug)]
pub struct Queued(oneshot::Receiver<Reply>);

impl Future for Queued {
    type Output = Reply;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Reply> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|answer| answer.unwrap_or(Err(ArchiveError::Closed)))
    }
}

/// The current head and its exact stored bytes (for the compare-and-set).
pub(crate) async fn load_head(kv: &dyn KeyValue) -> Result<(Checkpoint, Option<Vec<u8>>), ArchiveError> {
    match kv.get(Space::Meta, META_OWNER, HEAD_KEY).await? {
        None => Ok((Checkpoint::EMPTY, None)),
        Some(bytes) => {
            let head = Checkpoint::from_bytes(&bytes)
                .map_err(|error| ArchiveError::Corrupt(format!("the chain head does not decode: {error}")))?;
            Ok((head, Some(bytes)))
        }
    }
}

struct ChainTask {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    policy: CheckpointPolicy,
    head: Checkpoint,
    head_bytes: Option<Vec<u8>>,
    last_checkpoint: Checkpoint,
}

struct Prepared {
    reply: oneshot::Sender<Reply>,
    appended: Appended,
    /// How many of the commit's records are this entry's (they follow the previous entry's).
    records: usize,
}

impl ChainTask {
    async fn run(mut self, mut receiver: mpsc::Receiver<Request>) {
        let mut held_back: Option<Request> = None;
        loop {
            let first = match held_back.take() {
                Some(request) => request,
                None => match receiver.recv().await {
                    Some(request) => request,
                    None => return,
                },
            };
            let mut group = Vec::new();
            let mut bytes = first.body_weight();
            let alone = first.alone;
            group.push(first);
            while !alone && group.len() < MAX_BATCH_ENTRIES && bytes < MAX_BATCH_BYTES {
                match receiver.try_recv() {
                    Ok(request) if request.alone => {
                        held_back = Some(request);
                        break;
                    }
                    Ok(request) => {
                        bytes += request.body_weight();
                        group.push(request);
                    }
                    Err(_) => break,
                }
            }
            self.commit(group).await;
        }
    }

    async fn commit(&mut self, group: Vec<Request>) {
        let ts = self.clock.now_micros().max(self.head.ts);
        let mut batch = WriteBatch::new();
        batch.expect(Space::Meta, META_OWNER, HEAD_KEY, self.head_bytes.clone());
        let mut seq = self.head.seq;
        let mut prev: Hash = self.head.hash;
        let mut prepared = Vec::with_capacity(group.len());
        let mut appends = Vec::new();
        for request in group {
            let Some(next) = seq.checked_add(1) else {
                let _ = request.reply.send(Err(ArchiveError::Corrupt(
                    "chain sequence numbers exhausted".into(),
                )));
                continue;
            };
            let entry = Entry {
                seq: next,
                prev: hex::encode(prev),
                ts,
                body: request.body,
            };
            let encoded = entry.to_bytes();
            if encoded.len() > MAX_VALUE_LEN {
                let _ = request.reply.send(Err(ArchiveError::TooLarge {
                    len: encoded.len(),
                    max: MAX_VALUE_LEN,
                }));
                continue;
            }
            seq = next;
            prev = hash_bytes(&encoded);
            batch.put(Space::Compliance, CHAIN_OWNER, seq_key(seq), encoded);
            if let Some(extra) = request.extra {
                extra(seq, &mut batch);
            }
            let mut request_appends = request.appends;
            for append in &mut request_appends {
                append.record.payload = entry_reference(seq);
            }
            prepared.push(Prepared {
                reply: request.reply,
                appended: Appended { seq, ts },
                records: request_appends.len(),
            });
            appends.extend(request_appends);
        }
        if prepared.is_empty() {
            return;
        }
        let head = Checkpoint {
            seq,
            hash: prev,
            ts,
            appended: seq,
        };
        let head_bytes = head.to_bytes();
        let due = seq.saturating_sub(self.last_checkpoint.seq) >= self.policy.every_entries
            || ts.saturating_sub(self.last_checkpoint.ts) >= self.policy.every_micros;
        if due {
            batch.put(Space::Meta, CHECKPOINT_OWNER, seq_key(seq), head_bytes.clone());
        }
        batch.put(Space::Meta, META_OWNER, HEAD_KEY, head_bytes.clone());
        match self.store.apply_and_append(batch, appends).await {
            Ok(committed) => {
                self.head = head;
                self.head_bytes = Some(head_bytes);
                if due {
                    self.last_checkpoint = head;
                    // A copy outside the store, wherever the log goes: `parley archive verify
                    // --checkpoint` later proves nobody rewrote the chain up to here.
                    tracing::info!(
                        checkpoint = %OutsideCheckpoint::from(&head),
                        "archive checkpoint kept"
                    );
                }
                let mut ids = committed.ids.into_iter();
                for done in prepared {
                    let own: Vec<u64> = ids.by_ref().take(done.records).collect();
                    let _ = done.reply.send(Ok((done.appended, own)));
                }
            }
            Err(error) => {
                tracing::error!(%error, entries = prepared.len(), "compliance chain commit failed");
                if matches!(error, StorageError::Conflict) {
                    // Someone else moved the head: continue from what is really stored.
                    if let Ok((head, bytes)) = load_head(self.store.as_ref()).await {
                        self.head = head;
                        self.head_bytes = bytes;
                    }
                }
                for done in prepared {
                    let _ = done.reply.send(Err(ArchiveError::Storage(error.clone())));
                }
            }
        }
    }
}

impl Request {
    fn body_weight(&self) -> usize {
        let records: usize = self
            .appends
            .iter()
            .map(|append| append.record.payload.len())
            .sum();
        records
            + match &self.body {
                Body::Message(message) => message.stanza.len() + message.body.as_ref().map_or(0, String::len),
                _ => 256,
            }
    }
}

//! `parley archive verify`: walks the chain and names the first record that was edited, removed
//! or inserted.
//!
//! What it proves: every entry from 1 to the head is present (or tombstoned by a purge entry that
//! commits to exactly those tombstones), each holds the hash of its predecessor, the newest one
//! matches the head, and every kept checkpoint matches. What it cannot prove alone: that nobody
//! rewrote the whole chain and head from the edit onwards (SHA-256 is keyless). Checkpoints kept
//! outside the store close that gap ([`OutsideCheckpoint`]: the server logs every checkpoint it
//! keeps, each export manifest holds the head, and each `verify` prints it): whoever rewrote the
//! chain cannot rewrite those copies, and a record's hash that differs from one, or a head below
//! one, names the tampering.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

use parley_storage::{KeyValue, Space};

use crate::ArchiveError;
use crate::chain::load_head;
use crate::entry::{
    Body, CHECKPOINT_OWNER, Checkpoint, Entry, GENESIS, Hash, PurgeDigest, TOMBSTONE_OWNER, Tombstone,
    hash_bytes, parse_seq_key,
};
use crate::scan::BlockScan;

/// The first sign of tampering found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Tamper {
    #[error("record {seq} was edited: {detail}")]
    Edited { seq: u64, detail: String },
    #[error("record {seq} was removed: {detail}")]
    Removed { seq: u64, detail: String },
    #[error("a record was inserted at key {key:?}: {detail}")]
    Inserted { key: String, detail: String },
}

impl Tamper {
    /// The sequence number (or key) it names.
    pub fn place(&self) -> String {
        match self {
            Tamper::Edited { seq, .. } | Tamper::Removed { seq, .. } => seq.to_string(),
            Tamper::Inserted { key, .. } => key.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Entries present (messages, purges, holds, access records).
    pub records: u64,
    /// Of which messages.
    pub messages: u64,
    /// Entries purged by retention, covered by tombstones.
    pub purged: u64,
    pub head: Checkpoint,
    /// Checkpoints kept outside the store that the chain matched.
    pub outside_matched: u64,
    /// None: intact.
    pub problem: Option<Tamper>,
}

/// A record's position and hash kept outside the store, written `SEQ:HEX` (the hex of the
/// SHA-256, as `verify` prints the head and the server logs each checkpoint it keeps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutsideCheckpoint {
    pub seq: u64,
    pub hash: Hash,
}

impl From<&Checkpoint> for OutsideCheckpoint {
    fn from(checkpoint: &Checkpoint) -> Self {
        OutsideCheckpoint {
            seq: checkpoint.seq,
            hash: checkpoint.hash,
        }
    }
}

impl fmt::Display for OutsideCheckpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.seq, hex::encode(self.hash))
    }
}

impl FromStr for OutsideCheckpoint {
    type Err = ArchiveError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |why: &str| {
            ArchiveError::Invalid(format!(
                "checkpoint {text:?}: {why} (expected SEQ:HEX, the record number and its 64-digit SHA-256)"
            ))
        };
        let (seq, hash) = text.trim().split_once(':').ok_or_else(|| invalid("no ':'"))?;
        let seq = seq
            .parse()
            .map_err(|_| invalid("the record number is not a number"))?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hash, &mut bytes).map_err(|_| invalid("the hash is not 64 hex digits"))?;
        Ok(OutsideCheckpoint { seq, hash: bytes })
    }
}

impl VerifyReport {
    pub fn is_intact(&self) -> bool {
        self.problem.is_none()
    }
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.problem {
            None => {
                write!(
                    f,
                    "intact, {} records ({} messages, {} purged), head {}",
                    self.records,
                    self.messages,
                    self.purged,
                    OutsideCheckpoint::from(&self.head)
                )?;
                match self.outside_matched {
                    0 => Ok(()),
                    1 => write!(f, "; the checkpoint kept outside matches"),
                    n => write!(f, "; all {n} checkpoints kept outside match"),
                }
            }
            Some(problem) => write!(f, "TAMPERED: {problem}"),
        }
    }
}

enum Item {
    Record(Vec<u8>),
    Tomb(Tombstone),
}

struct Walk {
    head: Checkpoint,
    expected: u64,
    prev_hash: Hash,
    records: u64,
    messages: u64,
    purged: u64,
    purges: HashMap<u64, PurgeDigest>,
    /// Hashes kept outside the store, by record.
    outside: BTreeMap<u64, Vec<Hash>>,
    outside_matched: u64,
}

pub(crate) async fn verify(
    kv: &dyn KeyValue,
    outside: &[OutsideCheckpoint],
) -> Result<VerifyReport, ArchiveError> {
    let (head, _) = load_head(kv).await?;
    let mut walk = Walk {
        head,
        expected: 1,
        prev_hash: GENESIS,
        records: 0,
        messages: 0,
        purged: 0,
        purges: HashMap::new(),
        outside: BTreeMap::new(),
        outside_matched: 0,
    };
    for checkpoint in outside {
        walk.outside
            .entry(checkpoint.seq)
            .or_default()
            .push(checkpoint.hash);
    }
    // The first problem found, in this order.
    let mut problem = walk.outside_start();
    if problem.is_none() {
        problem = walk.run(kv).await?;
    }
    if problem.is_none() {
        problem = walk.outside_beyond_head();
    }
    if problem.is_none() {
        problem = checkpoint_beyond_head(kv, &head).await?;
    }
    Ok(VerifyReport {
        records: walk.records,
        messages: walk.messages,
        purged: walk.purged,
        head,
        outside_matched: walk.outside_matched,
        problem,
    })
}

/// The head is stored, not signed: whoever cuts off the newest records can rewrite it to the
/// last one kept. A checkpoint past the head gives that away (within the head's block and the
/// next; an outside copy of a recent head is what proves the rest).
async fn checkpoint_beyond_head(
    kv: &dyn KeyValue,
    head: &Checkpoint,
) -> Result<Option<Tamper>, ArchiveError> {
    let head_block = head.seq / crate::entry::BLOCK_SIZE;
    for block in head_block..=head_block.saturating_add(1) {
        for (key, _) in BlockScan::block_of(kv, Space::Meta, CHECKPOINT_OWNER, block).await? {
            if let Some(seq) = parse_seq_key(&key).filter(|seq| *seq > head.seq) {
                return Ok(Some(Tamper::Removed {
                    seq: head.seq.saturating_add(1),
                    detail: format!(
                        "checkpoint {seq} lies beyond the head ({}): the newest records were cut off",
                        head.seq
                    ),
                }));
            }
        }
    }
    Ok(None)
}

impl Walk {
    /// Record 0 is the chain's start (an export of an empty archive keeps it): its hash is fixed.
    fn outside_start(&mut self) -> Option<Tamper> {
        let hashes = self.outside.remove(&0)?;
        if hashes.iter().all(|hash| *hash == GENESIS) {
            self.outside_matched += hashes.len() as u64;
            return None;
        }
        Some(Tamper::Edited {
            seq: 0,
            detail:
                "a checkpoint kept outside the store gives record 0 a hash, but the chain starts from none"
                    .into(),
        })
    }

    /// Outside checkpoints the walk never reached: the chain was cut off below them.
    fn outside_beyond_head(&self) -> Option<Tamper> {
        let (seq, _) = self.outside.range(self.head.seq.saturating_add(1)..).next()?;
        Some(Tamper::Removed {
            seq: self.head.seq.saturating_add(1),
            detail: format!(
                "a checkpoint kept outside the store names record {seq}, beyond the head ({}): the newest records were cut off",
                self.head.seq
            ),
        })
    }

    async fn run(&mut self, kv: &dyn KeyValue) -> Result<Option<Tamper>, ArchiveError> {
        // One block past the head, so records inserted just after it are seen too.
        let mut blocks = BlockScan::chain(kv, 0, self.head.seq.saturating_add(crate::entry::BLOCK_SIZE));
        while let Some(records) = blocks.next().await? {
            let block = blocks.current_block();
            let tombs = BlockScan::block_of(kv, Space::Meta, TOMBSTONE_OWNER, block).await?;
            let checkpoints = BlockScan::block_of(kv, Space::Meta, CHECKPOINT_OWNER, block).await?;
            let mut items: BTreeMap<u64, Item> = BTreeMap::new();
            for (key, bytes) in records {
                let Some(seq) = parse_seq_key(&key) else {
                    return Ok(Some(Tamper::Inserted {
                        key,
                        detail: "not a chain key".into(),
                    }));
                };
                items.insert(seq, Item::Record(bytes));
            }
            for (key, bytes) in tombs {
                let seq = parse_seq_key(&key);
                let tomb = Tombstone::from_bytes(&bytes).ok();
                let (Some(seq), Some(tomb)) = (seq, tomb) else {
                    return Ok(Some(Tamper::Inserted {
                        key,
                        detail: "a malformed tombstone".into(),
                    }));
                };
                if items.insert(seq, Item::Tomb(tomb)).is_some() {
                    return Ok(Some(Tamper::Inserted {
                        key: crate::entry::seq_key(seq),
                        detail: format!("record {seq} was purged, yet a record is stored under its key"),
                    }));
                }
            }
            let mut kept = BTreeMap::new();
            for (key, bytes) in checkpoints {
                if let (Some(seq), Ok(checkpoint)) = (parse_seq_key(&key), Checkpoint::from_bytes(&bytes)) {
                    kept.insert(seq, checkpoint);
                }
            }
            for (seq, item) in items {
                if let Some(problem) = self.step(seq, item, kept.get(&seq)) {
                    return Ok(Some(problem));
                }
            }
        }
        Ok(self.finish())
    }

    fn step(&mut self, seq: u64, item: Item, checkpoint: Option<&Checkpoint>) -> Option<Tamper> {
        if seq > self.head.seq {
            return Some(Tamper::Inserted {
                key: crate::entry::seq_key(seq),
                detail: format!("record {seq} lies after the chain head {}", self.head.seq),
            });
        }
        if seq != self.expected {
            return Some(Tamper::Removed {
                seq: self.expected,
                detail: format!(
                    "the chain jumps from {} to {seq}",
                    self.expected.saturating_sub(1)
                ),
            });
        }
        let hash = match item {
            Item::Record(bytes) => {
                let entry = match Entry::from_bytes(&bytes) {
                    Ok(entry) => entry,
                    Err(error) => {
                        return Some(Tamper::Edited {
                            seq,
                            detail: format!("it no longer decodes ({error})"),
                        });
                    }
                };
                if entry.seq != seq {
                    return Some(Tamper::Edited {
                        seq,
                        detail: format!("it says it is record {}", entry.seq),
                    });
                }
                if entry.prev != hex::encode(self.prev_hash) {
                    return Some(if seq == 1 {
                        Tamper::Edited {
                            seq,
                            detail: "the first record does not start the chain".into(),
                        }
                    } else {
                        Tamper::Edited {
                            seq: seq - 1,
                            detail: format!(
                                "its hash no longer matches the one record {seq} holds (or record {seq} was forged)"
                            ),
                        }
                    });
                }
                let hash = hash_bytes(&bytes);
                match &entry.body {
                    Body::Message(_) => self.messages += 1,
                    Body::Purge(purge) => {
                        let found = self.purges.remove(&seq).unwrap_or_default();
                        let count = found.count;
                        if count != purge.count || found.finish() != purge.digest {
                            return Some(Tamper::Edited {
                                seq,
                                detail: format!(
                                    "this purge deleted {} records but {count} tombstones match it",
                                    purge.count
                                ),
                            });
                        }
                    }
                    Body::Access(_) | Body::Hold(_) => {}
                }
                self.records += 1;
                hash
            }
            Item::Tomb(tomb) => {
                if tomb.purge_seq <= seq {
                    return Some(Tamper::Inserted {
                        key: crate::entry::seq_key(seq),
                        detail: "a tombstone names a purge older than the record".into(),
                    });
                }
                self.purges
                    .entry(tomb.purge_seq)
                    .or_default()
                    .add(seq, &tomb.hash);
                self.purged += 1;
                tomb.hash
            }
        };
        if let Some(checkpoint) = checkpoint
            && checkpoint.hash != hash
        {
            return Some(Tamper::Edited {
                seq,
                detail: "its hash differs from the checkpoint taken when it was written".into(),
            });
        }
        if let Some(kept_outside) = self.outside.get(&seq) {
            if kept_outside.iter().any(|outside| *outside != hash) {
                return Some(Tamper::Edited {
                    seq,
                    detail: "its hash differs from the checkpoint kept outside the store".into(),
                });
            }
            self.outside_matched += kept_outside.len() as u64;
        }
        self.prev_hash = hash;
        self.expected = seq + 1;
        None
    }

    fn finish(&mut self) -> Option<Tamper> {
        if self.expected <= self.head.seq {
            return Some(Tamper::Removed {
                seq: self.expected,
                detail: format!(
                    "the chain ends at {} but its head is {}",
                    self.expected - 1,
                    self.head.seq
                ),
            });
        }
        if self.prev_hash != self.head.hash {
            return Some(Tamper::Edited {
                seq: self.head.seq,
                detail: "the newest record's hash differs from the chain head".into(),
            });
        }
        if let Some(purge_seq) = self.purges.keys().min() {
            return Some(Tamper::Inserted {
                key: crate::entry::seq_key(*purge_seq),
                detail: "tombstones name a purge record that does not exist".into(),
            });
        }
        None
    }
}

//! parley-storage: Parley's persistence layer, bytes in and bytes out.
//!
//! Owns the two storage traits every feature builds on, [`KeyValue`] (atomic batches with
//! compare-and-set) and [`Archive`] (append-only records with monotonic ids, paged queries and
//! retention), the embedded default backend [`RedbStore`], the in-memory [`MemoryStore`], and the
//! [`conformance`] suite every backend must pass.
//!
//! It must not know anything about XMPP (no JIDs, stanzas or namespaces: owners, keys and `with`
//! are opaque strings, values opaque bytes), must not see sockets or LDAP, and depends on no other
//! Parley crate: the server passes a file path. Legal hold, hash chains and MAM semantics live a
//! layer up, in `parley-archive`.

mod codec;
#[doc(hidden)]
pub mod conformance;
mod latency;
mod memory;
mod redb_store;
mod zero_ahead;

use std::sync::Arc;

pub use latency::{LatencyHistogram, LatencySnapshot};
pub use memory::MemoryStore;
pub use redb_store::RedbStore;

/// Longest owner accepted, in bytes (a bare JID is at most 3071 bytes; owners are usually
/// shorter node identifiers, and the on-disk encoding prefixes them with a `u16` length).
pub const MAX_OWNER_LEN: usize = 3071;
/// Longest key of a key-value entry, in bytes.
pub const MAX_KEY_LEN: usize = 3071;
/// Longest `with` of an archive record, in bytes (a full JID is at most 3071 bytes).
pub const MAX_WITH_LEN: usize = 3071;
/// Largest value or archive payload, in bytes.
pub const MAX_VALUE_LEN: usize = 16 * 1024 * 1024;
/// Most operations plus expectations in one [`WriteBatch`].
pub const MAX_BATCH_OPS: usize = 65_536;
/// Archive queries return at most this many records per page; larger limits are clamped (the page
/// then reports `complete: false` and the caller pages on with `after_id`/`before_id`).
pub const MAX_QUERY_LIMIT: usize = 10_000;

/// The fixed set of storage spaces. Each is its own set of tables, so owners and keys never
/// collide across spaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Space {
    Roster,
    Vcard,
    Private,
    Offline,
    Mam,
    Compliance,
    Audit,
    Meta,
}

impl Space {
    /// Every space, in a fixed order.
    pub const ALL: [Space; 8] = [
        Space::Roster,
        Space::Vcard,
        Space::Private,
        Space::Offline,
        Space::Mam,
        Space::Compliance,
        Space::Audit,
        Space::Meta,
    ];

    /// The space's name. It names on-disk tables, so it is stable forever: never change one.
    pub fn name(self) -> &'static str {
        match self {
            Space::Roster => "roster",
            Space::Vcard => "vcard",
            Space::Private => "private",
            Space::Offline => "offline",
            Space::Mam => "mam",
            Space::Compliance => "compliance",
            Space::Audit => "audit",
            Space::Meta => "meta",
        }
    }
}

/// Everything that can go wrong in a store. Cloneable because one failed group commit answers
/// many callers with the same error.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// An [`WriteBatch::expect`] did not hold; nothing of the batch was applied.
    #[error("a compare-and-set expectation failed; nothing of the batch was applied")]
    Conflict,
    /// Data read back from the store does not decode.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The database file was written by an incompatible version of this crate.
    #[error("unsupported storage format version {found} (this build reads version {supported})")]
    UnsupportedFormat { found: u64, supported: u64 },
    /// The backend (disk, file system, database engine) failed.
    #[error("storage I/O failed: {0}")]
    Io(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// The store has been closed or its writer stopped.
    #[error("the store is closed")]
    Closed,
    /// An input exceeds one of the crate's size bounds.
    #[error("{what} is {len} bytes or items, more than the maximum of {max}")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
}

fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), StorageError> {
    if len > max {
        Err(StorageError::TooLarge { what, len, max })
    } else {
        Ok(())
    }
}

/// One write of a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WriteOp {
    Put {
        space: Space,
        owner: String,
        key: String,
        value: Vec<u8>,
    },
    Delete {
        space: Space,
        owner: String,
        key: String,
    },
    DeleteOwner {
        space: Space,
        owner: String,
    },
}

/// A compare-and-set assertion of a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Expectation {
    pub(crate) space: Space,
    pub(crate) owner: String,
    pub(crate) key: String,
    pub(crate) value: Option<Vec<u8>>,
}

/// An atomic set of key-value writes, guarded by optional compare-and-set expectations.
///
/// All expectations are checked against the state *before* any write of the batch; if one fails
/// the batch is rejected with [`StorageError::Conflict`] and nothing is written. Writes then apply
/// in the order they were added (a put followed by a delete of the same key leaves it absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    pub(crate) ops: Vec<WriteOp>,
    pub(crate) expectations: Vec<Expectation>,
}

impl WriteBatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` of `owner` in `space` to `value`.
    pub fn put(
        &mut self,
        space: Space,
        owner: impl Into<String>,
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
    ) -> &mut Self {
        self.ops.push(WriteOp::Put {
            space,
            owner: owner.into(),
            key: key.into(),
            value: value.into(),
        });
        self
    }

    /// Removes `key` of `owner` in `space` (absent keys are fine).
    pub fn delete(&mut self, space: Space, owner: impl Into<String>, key: impl Into<String>) -> &mut Self {
        self.ops.push(WriteOp::Delete {
            space,
            owner: owner.into(),
            key: key.into(),
        });
        self
    }

    /// Removes every key of `owner` in `space` (key-value entries only, not archive records).
    pub fn delete_owner(&mut self, space: Space, owner: impl Into<String>) -> &mut Self {
        self.ops.push(WriteOp::DeleteOwner {
            space,
            owner: owner.into(),
        });
        self
    }

    /// Asserts that `key` of `owner` currently holds `value` (`None`: is absent).
    pub fn expect(
        &mut self,
        space: Space,
        owner: impl Into<String>,
        key: impl Into<String>,
        value: Option<Vec<u8>>,
    ) -> &mut Self {
        self.expectations.push(Expectation {
            space,
            owner: owner.into(),
            key: key.into(),
            value,
        });
        self
    }

    /// Number of writes plus expectations.
    pub fn len(&self) -> usize {
        self.ops.len() + self.expectations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks every size bound, so a backend never starts applying a batch it must refuse.
    pub(crate) fn validate(&self) -> Result<(), StorageError> {
        check_len("write batch", self.len(), MAX_BATCH_OPS)?;
        for op in &self.ops {
            match op {
                WriteOp::Put {
                    owner, key, value, ..
                } => {
                    check_owner_key(owner, key)?;
                    check_len("value", value.len(), MAX_VALUE_LEN)?;
                }
                WriteOp::Delete { owner, key, .. } => check_owner_key(owner, key)?,
                WriteOp::DeleteOwner { owner, .. } => check_len("owner", owner.len(), MAX_OWNER_LEN)?,
            }
        }
        for expectation in &self.expectations {
            check_owner_key(&expectation.owner, &expectation.key)?;
            if let Some(value) = &expectation.value {
                check_len("expected value", value.len(), MAX_VALUE_LEN)?;
            }
        }
        Ok(())
    }
}

pub(crate) fn check_owner_key(owner: &str, key: &str) -> Result<(), StorageError> {
    check_len("owner", owner.len(), MAX_OWNER_LEN)?;
    check_len("key", key.len(), MAX_KEY_LEN)
}

/// Per-owner key-value storage with atomic, compare-and-set batches.
#[async_trait::async_trait]
pub trait KeyValue: Send + Sync + 'static {
    async fn get(&self, space: Space, owner: &str, key: &str) -> Result<Option<Vec<u8>>, StorageError>;
    /// The values of `keys` of `owner`, in the order asked, read from one consistent snapshot
    /// where the backend has them (one read instead of one per key).
    async fn get_many(
        &self,
        space: Space,
        owner: &str,
        keys: &[String],
    ) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            values.push(self.get(space, owner, key).await?);
        }
        Ok(values)
    }
    /// All (key, value) of `owner` whose key starts with `prefix`, in key (byte) order, at most
    /// `limit`.
    async fn scan_prefix(
        &self,
        space: Space,
        owner: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StorageError>;
    /// Atomic and durable (fsynced) when it returns Ok.
    async fn apply(&self, batch: WriteBatch) -> Result<(), StorageError>;
    /// Returns once everything acknowledged before it is durable.
    async fn flush(&self) -> Result<(), StorageError>;
}

/// A record to append to an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    pub timestamp_micros: i64,
    pub with: String,
    pub payload: Vec<u8>,
}

impl NewRecord {
    pub(crate) fn validate(&self, owner: &str) -> Result<(), StorageError> {
        check_len("owner", owner.len(), MAX_OWNER_LEN)?;
        check_len("with", self.with.len(), MAX_WITH_LEN)?;
        check_len("payload", self.payload.len(), MAX_VALUE_LEN)
    }
}

/// A stored archive record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveRecord {
    pub id: u64,
    pub timestamp_micros: i64,
    pub with: String,
    pub payload: Vec<u8>,
}

/// Filters and paging of an archive query. Every filter is optional; they combine with AND.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveQuery {
    /// Inclusive lower bound on the timestamp, in microseconds.
    pub start: Option<i64>,
    /// Inclusive upper bound on the timestamp, in microseconds.
    pub end: Option<i64>,
    /// Exact match on the record's `with`.
    pub with: Option<String>,
    /// Only ids strictly greater than this.
    pub after_id: Option<u64>,
    /// Only ids strictly less than this.
    pub before_id: Option<u64>,
    /// Page size; clamped to [`MAX_QUERY_LIMIT`].
    pub limit: usize,
    /// Take the newest `limit` matches instead of the oldest (still returned in ascending order).
    pub reverse: bool,
}

impl ArchiveQuery {
    /// Whether `record` passes every filter (the paging limit aside). Both backends' results must
    /// equal what this predicate selects.
    pub fn matches(&self, record: &ArchiveRecord) -> bool {
        self.matches_parts(record.id, record.timestamp_micros, &record.with)
    }

    pub(crate) fn matches_parts(&self, id: u64, timestamp_micros: i64, with: &str) -> bool {
        self.matches_for_count(timestamp_micros, with)
            && self.after_id.is_none_or(|after| id > after)
            && self.before_id.is_none_or(|before| id < before)
    }

    /// The filters `count` honours: time range and `with`, not paging.
    pub(crate) fn matches_for_count(&self, timestamp_micros: i64, with: &str) -> bool {
        self.start.is_none_or(|start| timestamp_micros >= start)
            && self.end.is_none_or(|end| timestamp_micros <= end)
            && self.with.as_deref().is_none_or(|wanted| wanted == with)
    }

    pub(crate) fn effective_limit(&self) -> usize {
        self.limit.min(MAX_QUERY_LIMIT)
    }
}

/// One page of query results, in ascending id order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchivePage {
    pub records: Vec<ArchiveRecord>,
    /// True when no further match exists beyond this page in the direction of travel.
    pub complete: bool,
}

/// Append-only, per-owner record storage with ids that are unique and increasing per space.
///
/// Read-your-writes: a `query`, `count`, `get_record` or `delete_before` that starts after an
/// `append` (or [`Store::apply_and_append`]) returned sees its records, on every backend. A read
/// running concurrently with an append may or may not see it.
#[async_trait::async_trait]
pub trait Archive: Send + Sync + 'static {
    /// Durable when it returns, and visible to every read that starts afterwards; ids strictly
    /// increase within a space (across owners) and are never reused, even after deletes or a
    /// restart.
    async fn append(&self, space: Space, owner: &str, record: NewRecord) -> Result<u64, StorageError>;
    /// Records of `owner` matching start/end (inclusive, micros), `with` (exact string match),
    /// after_id/before_id (exclusive). Records are always returned in ascending id order;
    /// `reverse` selects the newest `limit` matches instead of the oldest. `complete` is true when
    /// no further match exists beyond this page in the direction of travel.
    async fn query(
        &self,
        space: Space,
        owner: &str,
        query: &ArchiveQuery,
    ) -> Result<ArchivePage, StorageError>;
    /// How many records match start/end/with (ignoring after/before/limit): RSM's count.
    async fn count(&self, space: Space, owner: &str, query: &ArchiveQuery) -> Result<u64, StorageError>;
    async fn get_record(
        &self,
        space: Space,
        owner: &str,
        id: u64,
    ) -> Result<Option<ArchiveRecord>, StorageError>;
    /// The owners that have at least one record in `space`, in byte order, starting after
    /// `after`, at most `limit` (clamped to [`MAX_QUERY_LIMIT`]): pass the last one to go on.
    async fn owners(
        &self,
        space: Space,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StorageError>;
    /// Retention: delete records with timestamp < before_micros, for one owner or (None) all
    /// owners; returns how many.
    async fn delete_before(
        &self,
        space: Space,
        owner: Option<&str>,
        before_micros: i64,
    ) -> Result<u64, StorageError>;
}

/// One archive record to append as part of [`Store::apply_and_append`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveAppend {
    pub space: Space,
    pub owner: String,
    pub record: NewRecord,
}

/// What [`Store::apply_and_append`] answers: the commit is durable, and a read that starts now
/// sees its records (read-your-writes, see [`Archive`]), whether or not anyone waits on `visible`.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The new records' ids, in the order they were given.
    pub ids: Vec<u64>,
    /// Resolves once the backend has indexed the records. Nobody needs it to read their own
    /// writes (a read waits for the index itself); it tells when that wait has become free, and
    /// reports a failed indexing early.
    pub visible: Visible,
}

/// Resolves when a commit's records are indexed: reads that start then need not wait for them.
#[derive(Debug, Clone)]
pub struct Visible(Option<tokio::sync::watch::Receiver<Option<Result<(), StorageError>>>>);

impl Visible {
    /// Already visible.
    pub fn now() -> Self {
        Visible(None)
    }

    pub(crate) fn pending() -> (tokio::sync::watch::Sender<Option<Result<(), StorageError>>>, Self) {
        let (sender, receiver) = tokio::sync::watch::channel(None);
        (sender, Visible(Some(receiver)))
    }

    /// Waits until the records are indexed. An error means they are durable but could not be
    /// indexed now (the backend indexes them again when it is next opened; until then, reads
    /// that would have to see them answer that error).
    pub async fn wait(self) -> Result<(), StorageError> {
        let Some(mut receiver) = self.0 else {
            return Ok(());
        };
        let outcome = receiver
            .wait_for(Option::is_some)
            .await
            .map_err(|_| StorageError::Closed)?;
        outcome.clone().unwrap_or(Err(StorageError::Closed))
    }
}

/// Most archive records in one [`Store::apply_and_append`].
pub const MAX_COMMIT_APPENDS: usize = 65_536;

/// A complete backend: both traits, plus the combined commit that lets one caller (the
/// compliance chain) make its key-value writes and its archive records durable in one commit.
#[async_trait::async_trait]
pub trait Store: KeyValue + Archive {
    /// Applies `batch` and appends `appends` (in order) atomically and durably: one commit, one
    /// fsync. When an expectation of `batch` fails it answers [`StorageError::Conflict`] and
    /// nothing, neither write nor record, is stored. Durable when it returns, and every read that
    /// starts afterwards sees the records (read-your-writes), so no caller waits for indexing;
    /// [`Committed::visible`] only tells when the backend has indexed them.
    async fn apply_and_append(
        &self,
        batch: WriteBatch,
        appends: Vec<ArchiveAppend>,
    ) -> Result<Committed, StorageError>;

    /// How long this backend's durable commits have taken since it opened; `None` for a
    /// backend without a disk to wait for.
    fn commit_times(&self) -> Option<LatencySnapshot> {
        None
    }
}

/// Checks every size bound of a combined commit before anything is queued.
pub(crate) fn validate_commit(batch: &WriteBatch, appends: &[ArchiveAppend]) -> Result<(), StorageError> {
    batch.validate()?;
    check_len("appends of one commit", appends.len(), MAX_COMMIT_APPENDS)?;
    appends
        .iter()
        .try_for_each(|append| append.record.validate(&append.owner))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_names_are_distinct_and_stable() {
        let names: Vec<&str> = Space::ALL.iter().map(|space| space.name()).collect();
        assert_eq!(
            names,
            [
                "roster",
                "vcard",
                "private",
                "offline",
                "mam",
                "compliance",
                "audit",
                "meta"
            ]
        );
    }

    #[test]
    fn batch_validation_rejects_oversized_parts() {
        let mut batch = WriteBatch::new();
        batch.put(Space::Roster, "a".repeat(MAX_OWNER_LEN + 1), "k", b"v".to_vec());
        assert!(matches!(
            batch.validate(),
            Err(StorageError::TooLarge { what: "owner", .. })
        ));

        let mut batch = WriteBatch::new();
        batch.expect(Space::Roster, "o", "k".repeat(MAX_KEY_LEN + 1), None);
        assert!(matches!(
            batch.validate(),
            Err(StorageError::TooLarge { what: "key", .. })
        ));

        let mut batch = WriteBatch::new();
        batch.put(Space::Roster, "o", "k", vec![0u8; MAX_VALUE_LEN + 1]);
        assert!(matches!(
            batch.validate(),
            Err(StorageError::TooLarge { what: "value", .. })
        ));

        let mut batch = WriteBatch::new();
        batch
            .put(Space::Roster, "o", "k", b"v".to_vec())
            .delete(Space::Roster, "o", "j");
        assert_eq!(batch.len(), 2);
        assert!(batch.validate().is_ok());
    }

    #[test]
    fn record_validation_rejects_oversized_with() {
        let record = NewRecord {
            timestamp_micros: 0,
            with: "w".repeat(MAX_WITH_LEN + 1),
            payload: vec![],
        };
        assert!(matches!(
            record.validate("o"),
            Err(StorageError::TooLarge { what: "with", .. })
        ));
        let record = NewRecord {
            timestamp_micros: 0,
            with: "w".into(),
            payload: vec![1],
        };
        assert!(record.validate("o").is_ok());
    }

    #[test]
    fn query_predicate_combines_filters() {
        let query = ArchiveQuery {
            start: Some(10),
            end: Some(20),
            with: Some("bob".into()),
            after_id: Some(1),
            before_id: Some(5),
            ..ArchiveQuery::default()
        };
        assert!(query.matches_parts(3, 15, "bob"));
        assert!(query.matches_parts(2, 10, "bob"), "bounds on time are inclusive");
        assert!(query.matches_parts(4, 20, "bob"));
        assert!(!query.matches_parts(1, 15, "bob"), "after_id is exclusive");
        assert!(!query.matches_parts(5, 15, "bob"), "before_id is exclusive");
        assert!(!query.matches_parts(3, 9, "bob"));
        assert!(!query.matches_parts(3, 21, "bob"));
        assert!(!query.matches_parts(3, 15, "bobby"));
        assert!(query.matches_for_count(15, "bob"));
    }
}

//! parley-archive: the company's compliance archive of every message.
//!
//! Owns: [`ArchiveStage`], the router's fixed compliance stage (every accepted message is a
//! durable chain entry before it is delivered, plus the per-user MAM copies in `Space::Mam` and
//! the XEP-0359 stanza-id); the tamper-evident hash chain in `Space::Compliance` with its head
//! and checkpoints in `Space::Meta` ([`ChainWriter`], [`ComplianceArchive::verify`]); retention,
//! legal holds and purges; search and the eDiscovery export with its manifest; and the access
//! log of every search and export, itself chained.
//!
//! Must not touch: sockets, TLS or LDAP (people come from the `Directory` trait), concrete
//! storage backends (it sees the `KeyValue` and `Archive` traits), or other feature crates. The
//! MAM protocol module (XEP-0313) and the admin HTTP API build on the library functions here.
//!
//! # Layout in the store
//! - `Space::Compliance`, KV owner `chain`, key = 20-digit sequence number: the entry's
//!   canonical JSON ([`entry::Entry`]); each holds the SHA-256 of its predecessor's bytes.
//! - `Space::Meta`, owner `archive`, key `head`: the newest entry's number and hash, written in
//!   the same atomic batch as the entries.
//! - `Space::Meta`, owners `archive.checkpoints`, `archive.tombstones`, `archive.holds`,
//!   `archive.access`: periodic checkpoints, what purges deleted, legal holds, the access log.
//! - `Space::Mam`, archive owner = user bare JID: the MAM copies (see [`ArchiveStage`]); a
//!   copy's payload is `chain:<seq>`, a reference to the entry holding the stanza.

mod chain;
mod clock;
pub mod entry;
mod export;
pub mod mam;
mod retention;
mod scan;
mod search;
mod stage;
mod verify;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use parley_directory::Directory;
use parley_proto::BareJid;
use parley_storage::{
    Archive, ArchiveQuery, KeyValue, LatencyHistogram, LatencySnapshot, Space, StorageError, Store,
    WriteBatch,
};

pub use chain::{Appended, ChainWriter, CheckpointPolicy, MAX_BATCH_ENTRIES, Queued};
pub use clock::{Clock, ManualClock, SystemClock};
pub use entry::{Body, Checkpoint, MessageRecord};
pub use export::{ExportFormat, ExportManifest, FileDigest, rfc3339};
pub use mam::{MamModule, MamOptions, MamPrefs, PrefsDefault, RosterContacts};
pub use retention::{LegalHold, PurgeReport, RetentionPolicy};
pub use search::{Hit, SearchFilter, SearchResult, fold, qualified_user};
pub use stage::{ArchiveStage, NS_SID, strip_local_stanza_ids};
pub use verify::{OutsideCheckpoint, Tamper, VerifyReport};

use entry::{
    ACCESS_OWNER, AccessRecord, CHAIN_OWNER, Entry, HOLD_OWNER, HOLDS_VERSION_KEY, HoldRecord, META_OWNER,
    PurgeDigest, PurgeRecord, TOMBSTONE_OWNER, Tombstone, hash_bytes, parse_seq_key, seq_key,
};
use scan::BlockScan;
use search::Matcher;

/// Everything that can go wrong in the archive.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    #[error("archive storage failed: {0}")]
    Storage(#[from] StorageError),
    #[error("the archive's stored state is corrupt: {0}")]
    Corrupt(String),
    #[error("the archive has stopped")]
    Closed,
    #[error("an archive entry of {len} bytes exceeds the maximum of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("the directory failed: {0}")]
    Directory(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("legal holds kept changing while the purge ran; run it again")]
    HoldsChanged,
    #[error("export I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Most purged entries in one purge entry (two writes each in one batch).
const PURGE_CHUNK: usize = 10_000;
/// What one purge pass carries from chunk to chunk.
struct PurgePass<'a> {
    actor: &'a str,
    dry_run: bool,
    /// The holds version read before the holds: a chunk commits only while it is unchanged.
    holds_version: Option<Vec<u8>>,
    /// Expired entries waiting for the next chunk, with their hashes for the tombstones.
    victims: Vec<(u64, entry::Hash)>,
    /// Every sequence number the pass deleted (or would, in a dry run).
    deleted: Vec<u64>,
}

/// Most holds or access log entries listed at once.
pub const MAX_LISTED: usize = 10_000;
/// Longest legal hold reason, in bytes.
pub const MAX_REASON_LEN: usize = 4096;

/// Options of the archive, from the `[archive]` configuration section.
#[derive(Debug, Clone, Default)]
pub struct ArchiveOptions {
    pub checkpoints: CheckpointPolicy,
    pub retention: RetentionPolicy,
}

impl ArchiveOptions {
    pub fn from_config(config: &parley_config::ArchiveConfig) -> Self {
        let micros = |duration: parley_config::Duration| {
            (!duration.is_zero()).then(|| i64::try_from(duration.get().as_micros()).unwrap_or(i64::MAX))
        };
        Self {
            checkpoints: CheckpointPolicy {
                every_entries: config.checkpoint_every.max(1),
                every_micros: micros(config.checkpoint_interval).unwrap_or(i64::MAX),
            },
            retention: RetentionPolicy {
                default_micros: micros(config.retention),
                departments: config
                    .retention_departments
                    .iter()
                    .map(|(name, duration)| (name.clone(), micros(*duration)))
                    .collect(),
                groups: config
                    .retention_groups
                    .iter()
                    .map(|(name, duration)| (name.clone(), micros(*duration)))
                    .collect(),
            },
        }
    }
}

/// One line of the access log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccessLogEntry {
    pub seq: u64,
    /// Microseconds since the epoch.
    pub ts: i64,
    pub actor: String,
    pub action: String,
    pub filter: serde_json::Value,
    pub count: u64,
}

/// The compliance archive: the chain writer plus everything that reads the chain.
pub struct ComplianceArchive {
    kv: Arc<dyn KeyValue>,
    mam: Arc<dyn Archive>,
    directory: Option<Arc<dyn Directory>>,
    domain: BareJid,
    chain: ChainWriter,
    clock: Arc<dyn Clock>,
    options: ArchiveOptions,
    /// One purge at a time: two would compute victims from the same state.
    purge_lock: tokio::sync::Mutex<()>,
    /// Shared by every stage made here: see [`ComplianceArchive::record_times`].
    record_times: Arc<LatencyHistogram>,
}

impl std::fmt::Debug for ComplianceArchive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComplianceArchive")
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl ComplianceArchive {
    /// Loads the chain head and starts the chain task on the current runtime.
    pub async fn open(
        store: Arc<dyn Store>,
        directory: Option<Arc<dyn Directory>>,
        domain: BareJid,
        options: ArchiveOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, ArchiveError> {
        let kv: Arc<dyn KeyValue> = store.clone();
        let mam: Arc<dyn Archive> = store.clone();
        let chain = ChainWriter::start(store, clock.clone(), options.checkpoints).await?;
        Ok(Arc::new(Self {
            kv,
            mam,
            directory,
            domain,
            chain,
            clock,
            options,
            purge_lock: tokio::sync::Mutex::new(()),
            record_times: Arc::default(),
        }))
    }

    /// The router stage that records into this archive.
    pub fn stage(&self) -> ArchiveStage {
        ArchiveStage::new(
            self.domain.clone(),
            self.chain.clone(),
            self.clock.clone(),
            Arc::clone(&self.record_times),
        )
    }

    /// How long accepted messages have waited for their record to be durable (the compliance
    /// stage's share of delivery latency), over every stage made by [`Self::stage`].
    pub fn record_times(&self) -> LatencySnapshot {
        self.record_times.snapshot()
    }

    /// The chain writer, for appending entries directly (benchmarks, tools).
    pub fn chain(&self) -> &ChainWriter {
        &self.chain
    }

    /// The current chain head.
    pub async fn head(&self) -> Result<Checkpoint, ArchiveError> {
        Ok(chain::load_head(self.kv.as_ref()).await?.0)
    }

    /// Walks the whole chain; see [`VerifyReport`].
    pub async fn verify(&self) -> Result<VerifyReport, ArchiveError> {
        verify::verify(self.kv.as_ref(), &[]).await
    }

    /// [`Self::verify`], and each record named by a checkpoint kept outside the store must have
    /// that hash (and lie at or below the head).
    pub async fn verify_against(&self, outside: &[OutsideCheckpoint]) -> Result<VerifyReport, ArchiveError> {
        verify::verify(self.kv.as_ref(), outside).await
    }

    /// Bare JIDs of the department's current members, from the directory.
    async fn department_members(
        &self,
        filter: &SearchFilter,
    ) -> Result<Option<HashSet<String>>, ArchiveError> {
        let Some(department) = &filter.department else {
            return Ok(None);
        };
        let directory = self
            .directory
            .as_ref()
            .ok_or_else(|| ArchiveError::Invalid("a department filter needs the directory".into()))?;
        let people = directory
            .people()
            .await
            .map_err(|error| ArchiveError::Directory(error.to_string()))?;
        let wanted = fold(department);
        Ok(Some(
            people
                .into_iter()
                .filter(|person| {
                    person
                        .department
                        .as_deref()
                        .is_some_and(|dept| fold(dept) == wanted)
                })
                .map(|person| format!("{}@{}", person.localpart, self.domain).to_lowercase())
                .collect(),
        ))
    }

    /// Starts a scan of the matching messages in chain order, one block at a time.
    async fn matches(&self, filter: &SearchFilter) -> Result<MatchScan<'_>, ArchiveError> {
        filter.check().map_err(ArchiveError::Invalid)?;
        let matcher = Matcher::new(filter, self.department_members(filter).await?);
        let head = self.head().await?;
        Ok(MatchScan {
            blocks: BlockScan::chain(self.kv.as_ref(), 0, head.seq),
            head_seq: head.seq,
            matcher,
            done: false,
        })
    }

    async fn log_access(
        &self,
        actor: &str,
        action: String,
        filter: &SearchFilter,
        count: u64,
    ) -> Result<u64, ArchiveError> {
        let record = AccessRecord {
            actor: actor.to_owned(),
            action,
            filter: serde_json::to_value(filter).unwrap_or_default(),
            count,
        };
        let index_record = record.clone();
        let extra: chain::ExtraWrites = Box::new(move |seq, batch: &mut WriteBatch| {
            let listed = serde_json::to_vec(&index_record).unwrap_or_default();
            batch.put(Space::Meta, ACCESS_OWNER, seq_key(seq), listed);
        });
        Ok(self
            .chain
            .send(Body::Access(record), Some(extra), false)
            .await?
            .seq)
    }

    /// Searches the archive and records the search in the access log.
    pub async fn search(
        &self,
        actor: &str,
        filter: &SearchFilter,
        limit: usize,
    ) -> Result<SearchResult, ArchiveError> {
        let mut result = SearchResult::default();
        let mut scan = self.matches(filter).await?;
        while let Some(matches) = scan.next().await? {
            for (seq, ts, message) in matches {
                result.total += 1;
                *result
                    .by_sender
                    .entry(search::bare_of(&message.from))
                    .or_default() += 1;
                result.first_ts.get_or_insert(ts);
                result.last_ts = Some(ts);
                if result.hits.len() < limit {
                    result.hits.push(Hit::new(seq, ts, &message));
                }
            }
        }
        self.log_access(actor, "search".into(), filter, result.total)
            .await?;
        Ok(result)
    }

    /// Exports the matching messages into `dir` (created; must be empty), writes
    /// `manifest.json`, and records the export in the access log. An export that fails is
    /// recorded too (`export:<format>:failed`, with the messages written before it failed):
    /// files may already be out, and who tried is on record either way.
    pub async fn export(
        &self,
        actor: &str,
        filter: &SearchFilter,
        format: ExportFormat,
        dir: &Path,
    ) -> Result<ExportManifest, ArchiveError> {
        let mut written = 0;
        match self.write_export(actor, filter, format, dir, &mut written).await {
            Ok(manifest) => {
                self.log_access(
                    actor,
                    format!("export:{}", format.name()),
                    filter,
                    manifest.messages,
                )
                .await?;
                Ok(manifest)
            }
            Err(error) => {
                let action = format!("export:{}:failed", format.name());
                if let Err(log_error) = self.log_access(actor, action, filter, written).await {
                    tracing::error!(%log_error, %error, "a failed export could not be recorded");
                }
                Err(error)
            }
        }
    }

    /// The export's files and manifest; `written` follows the messages written so far.
    async fn write_export(
        &self,
        actor: &str,
        filter: &SearchFilter,
        format: ExportFormat,
        dir: &Path,
        written: &mut u64,
    ) -> Result<ExportManifest, ArchiveError> {
        let checkpoint = self.head().await?;
        let generated_at = rfc3339(self.clock.now_micros());
        let dir = dir.to_path_buf();
        let domain = self.domain.to_string();
        let create_dir = dir.clone();
        let mut exporter =
            tokio::task::spawn_blocking(move || export::Exporter::create(&create_dir, format, &domain))
                .await
                .map_err(|error| ArchiveError::Io(std::io::Error::other(error)))??;
        let mut scan = self.matches(filter).await?;
        while let Some(matches) = scan.next().await? {
            if matches.is_empty() {
                continue;
            }
            // File writes go to the blocking pool, one block of messages at a time.
            exporter = tokio::task::spawn_blocking(move || {
                for (seq, ts, message) in &matches {
                    exporter.write(*seq, *ts, message)?;
                }
                Ok::<_, std::io::Error>(exporter)
            })
            .await
            .map_err(|error| ArchiveError::Io(std::io::Error::other(error)))??;
            *written = exporter.messages;
        }
        let messages = exporter.messages;
        let first = exporter.first_ts.map(rfc3339);
        let last = exporter.last_ts.map(rfc3339);
        let files = tokio::task::spawn_blocking(move || exporter.finish())
            .await
            .map_err(|error| ArchiveError::Io(std::io::Error::other(error)))??;
        let manifest = ExportManifest {
            format,
            actor: actor.to_owned(),
            generated_at,
            filter: filter.clone(),
            messages,
            first_message_at: first,
            last_message_at: last,
            files,
            checkpoint,
        };
        let manifest_bytes = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
        tokio::fs::write(dir.join("manifest.json"), manifest_bytes).await?;
        Ok(manifest)
    }

    /// The newest `limit` (≤ [`MAX_LISTED`]) entries of the access log, newest first: the
    /// searches and exports an auditor asks about are usually the recent ones. With `before`,
    /// only entries with a smaller sequence number: the next page is the one before the last
    /// entry listed, so the whole log can be read however long it is.
    pub async fn access_log(
        &self,
        limit: usize,
        before: Option<u64>,
    ) -> Result<Vec<AccessLogEntry>, ArchiveError> {
        let limit = limit.min(MAX_LISTED);
        let head = self.head().await?;
        let newest = match before {
            Some(0) => return Ok(Vec::new()),
            Some(before) => (before - 1).min(head.seq),
            None => head.seq,
        };
        // The index is keyed by sequence number: walk its blocks down from the newest's.
        let mut listed = Vec::new();
        let mut block = newest / entry::BLOCK_SIZE;
        while listed.len() < limit {
            let found = BlockScan::block_of(self.kv.as_ref(), Space::Meta, ACCESS_OWNER, block).await?;
            listed.extend(
                found
                    .into_iter()
                    .rev()
                    .filter(|(key, _)| parse_seq_key(key).is_none_or(|seq| seq <= newest))
                    .take(limit - listed.len()),
            );
            let Some(below) = block.checked_sub(1) else { break };
            block = below;
        }
        let mut entries = Vec::with_capacity(listed.len());
        for (key, bytes) in listed {
            let seq = parse_seq_key(&key)
                .ok_or_else(|| ArchiveError::Corrupt(format!("access log key {key:?}")))?;
            let record: AccessRecord = serde_json::from_slice(&bytes)
                .map_err(|error| ArchiveError::Corrupt(format!("access log entry {seq}: {error}")))?;
            let ts = match self.kv.get(Space::Compliance, CHAIN_OWNER, &key).await? {
                Some(bytes) => Entry::from_bytes(&bytes).map(|entry| entry.ts).unwrap_or(0),
                None => 0,
            };
            entries.push(AccessLogEntry {
                seq,
                ts,
                actor: record.actor,
                action: record.action,
                filter: record.filter,
                count: record.count,
            });
        }
        Ok(entries)
    }

    /// Puts `user` (a bare JID) on legal hold: none of their messages is purged until released.
    pub async fn set_hold(&self, actor: &str, user: &str, reason: &str) -> Result<LegalHold, ArchiveError> {
        self.change_hold(actor, user, reason, true).await
    }

    /// Releases a legal hold.
    pub async fn release_hold(
        &self,
        actor: &str,
        user: &str,
        reason: &str,
    ) -> Result<LegalHold, ArchiveError> {
        self.change_hold(actor, user, reason, false).await
    }

    async fn change_hold(
        &self,
        actor: &str,
        user: &str,
        reason: &str,
        held: bool,
    ) -> Result<LegalHold, ArchiveError> {
        let user = BareJid::new(user.trim())
            .map_err(|error| ArchiveError::Invalid(format!("{user:?} is not a bare JID: {error}")))?
            .to_string()
            .to_lowercase();
        if reason.trim().is_empty() || reason.len() > MAX_REASON_LEN {
            return Err(ArchiveError::Invalid(format!(
                "a legal hold needs a reason of 1 to {MAX_REASON_LEN} bytes"
            )));
        }
        let is_held = self.kv.get(Space::Meta, HOLD_OWNER, &user).await?.is_some();
        if is_held == held {
            return Err(ArchiveError::Invalid(format!(
                "{user} is {} on legal hold",
                if held { "already" } else { "not" }
            )));
        }
        let hold = LegalHold {
            user: user.clone(),
            reason: reason.to_owned(),
            actor: actor.to_owned(),
            since: self.clock.now_micros(),
        };
        let stored = serde_json::to_vec(&hold).unwrap_or_default();
        let key = user.clone();
        let extra: chain::ExtraWrites = Box::new(move |seq, batch: &mut WriteBatch| {
            if held {
                batch.put(Space::Meta, HOLD_OWNER, key, stored);
            } else {
                batch.delete(Space::Meta, HOLD_OWNER, key);
            }
            batch.put(
                Space::Meta,
                META_OWNER,
                HOLDS_VERSION_KEY,
                seq_key(seq).into_bytes(),
            );
        });
        let record = HoldRecord {
            actor: actor.to_owned(),
            user,
            held,
            reason: reason.to_owned(),
        };
        self.chain.send(Body::Hold(record), Some(extra), true).await?;
        Ok(hold)
    }

    /// The bare JIDs on legal hold.
    async fn held_users(&self) -> Result<HashSet<String>, ArchiveError> {
        Ok(self.holds().await?.into_iter().map(|hold| hold.user).collect())
    }

    /// Users on legal hold.
    pub async fn holds(&self) -> Result<Vec<LegalHold>, ArchiveError> {
        let listed = self
            .kv
            .scan_prefix(Space::Meta, HOLD_OWNER, "", MAX_LISTED)
            .await?;
        listed
            .into_iter()
            .map(|(key, bytes)| {
                serde_json::from_slice(&bytes)
                    .map_err(|error| ArchiveError::Corrupt(format!("legal hold {key}: {error}")))
            })
            .collect()
    }

    /// Local participants of a message: bare JIDs of this domain with a localpart.
    fn local_parties(&self, message: &MessageRecord) -> Vec<String> {
        let domain = self.domain.as_str().to_lowercase();
        [&message.from, &message.to]
            .into_iter()
            .map(|jid| search::bare_of(jid))
            .filter(|bare| bare.split_once('@').is_some_and(|(_, host)| host == domain))
            .collect()
    }

    /// How long `bare`'s messages are kept (None: forever). Someone the directory does not know
    /// (any more) gets the default; a directory that fails stops the purge rather than let the
    /// default shorten a longer retention.
    async fn retention_of(
        &self,
        bare: &str,
        cache: &mut HashMap<String, Option<i64>>,
    ) -> Result<Option<i64>, ArchiveError> {
        if let Some(known) = cache.get(bare) {
            return Ok(*known);
        }
        let localpart = bare.split('@').next().unwrap_or("");
        let person = match &self.directory {
            Some(directory) => directory
                .person(localpart)
                .await
                .map_err(|error| ArchiveError::Directory(error.to_string()))?,
            None => None,
        };
        let retention = self.options.retention.for_person(person.as_ref());
        cache.insert(bare.to_owned(), retention);
        Ok(retention)
    }

    /// Deletes every message whose retention has expired, except those of users on legal hold,
    /// and the expired MAM copies of users not on hold. Each chunk of deletions is one purge
    /// entry in the chain, committed atomically with its tombstones; the run is logged.
    ///
    /// A legal hold set while a purge runs takes effect at once: each chunk commits only if no
    /// hold changed since the purge read them, and the purge starts over with the new holds if
    /// one did (the chunks committed before the hold stay purged; the chain shows the order).
    pub async fn purge(&self, actor: &str, dry_run: bool) -> Result<PurgeReport, ArchiveError> {
        /// Starts over at most this often before giving up (holds changing without pause).
        const ATTEMPTS: usize = 5;
        let _one_at_a_time = self.purge_lock.lock().await;
        let mut report = PurgeReport {
            dry_run,
            ..PurgeReport::default()
        };
        for _ in 0..ATTEMPTS {
            match self.purge_pass(actor, dry_run, &mut report).await {
                Err(ArchiveError::HoldsChanged) => report.kept_on_hold = 0,
                outcome => return outcome.map(|()| report),
            }
        }
        Err(ArchiveError::HoldsChanged)
    }

    async fn purge_pass(
        &self,
        actor: &str,
        dry_run: bool,
        report: &mut PurgeReport,
    ) -> Result<(), ArchiveError> {
        let now = self.clock.now_micros();
        let Some(shortest) = self.options.retention.shortest() else {
            return Ok(());
        };
        // The version first: a hold committed between the two reads fails the first chunk
        // (harmlessly) instead of slipping past it.
        let holds_version = self.kv.get(Space::Meta, META_OWNER, HOLDS_VERSION_KEY).await?;
        let holds = self.held_users().await?;
        let mut retention_cache = HashMap::new();
        let head = self.head().await?;
        let mut pass = PurgePass {
            actor,
            dry_run,
            holds_version,
            victims: Vec::new(),
            deleted: Vec::new(),
        };
        let mut blocks = BlockScan::chain(self.kv.as_ref(), 0, head.seq);
        'scan: while let Some(records) = blocks.next().await? {
            for (key, bytes) in records {
                let Some(seq) = parse_seq_key(&key).filter(|seq| *seq <= head.seq) else {
                    continue;
                };
                let entry = Entry::from_bytes(&bytes)
                    .map_err(|error| ArchiveError::Corrupt(format!("chain entry {seq}: {error}")))?;
                if entry.ts.saturating_add(shortest) > now {
                    break 'scan;
                }
                let Body::Message(message) = &entry.body else {
                    continue;
                };
                let parties = self.local_parties(message);
                let mut retentions = Vec::with_capacity(parties.len());
                for party in &parties {
                    retentions.push(self.retention_of(party, &mut retention_cache).await?);
                }
                let retention = if parties.is_empty() {
                    self.options.retention.default_micros
                } else {
                    retention::longest(retentions)
                };
                let Some(retention) = retention else {
                    continue;
                };
                if entry.ts.saturating_add(retention) > now {
                    continue;
                }
                // A hold covers every message its holder sent or received, whoever the other
                // party is (an outside contact can be the one under hold).
                if [&message.from, &message.to]
                    .into_iter()
                    .any(|jid| holds.contains(&search::bare_of(jid)))
                {
                    report.kept_on_hold += 1;
                    continue;
                }
                pass.victims.push((seq, hash_bytes(&bytes)));
                if pass.victims.len() >= PURGE_CHUNK {
                    self.purge_chunk(&mut pass, report).await?;
                }
            }
        }
        self.purge_chunk(&mut pass, report).await?;
        report.ranges.extend(entry::to_ranges(&pass.deleted));
        // The MAM copies go through the index, not the chain: read the holds again right before.
        let holds = self.held_users().await?;
        report.mam_deleted = self.purge_mam(now, &holds, &mut retention_cache, dry_run).await?;
        tracing::info!(
            actor,
            dry_run,
            deleted = report.deleted,
            kept_on_hold = report.kept_on_hold,
            mam_deleted = report.mam_deleted,
            ranges = ?report.ranges,
            "compliance archive purge"
        );
        Ok(())
    }

    /// Deletes the pass's pending victims as one purge entry (unless a dry run).
    async fn purge_chunk(
        &self,
        pass: &mut PurgePass<'_>,
        report: &mut PurgeReport,
    ) -> Result<(), ArchiveError> {
        if pass.victims.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::take(&mut pass.victims);
        let seqs: Vec<u64> = chunk.iter().map(|(seq, _)| *seq).collect();
        if !pass.dry_run {
            let mut digest = PurgeDigest::default();
            for (seq, hash) in &chunk {
                digest.add(*seq, hash);
            }
            let record = PurgeRecord {
                actor: pass.actor.to_owned(),
                ranges: entry::to_ranges(&seqs),
                count: digest.count,
                digest: digest.finish(),
            };
            let holds_version = pass.holds_version.clone();
            let extra: chain::ExtraWrites = Box::new(move |purge_seq, batch: &mut WriteBatch| {
                batch.expect(Space::Meta, META_OWNER, HOLDS_VERSION_KEY, holds_version);
                for (seq, hash) in chunk {
                    let key = seq_key(seq);
                    batch.delete(Space::Compliance, CHAIN_OWNER, key.clone());
                    batch.put(
                        Space::Meta,
                        TOMBSTONE_OWNER,
                        key,
                        Tombstone { hash, purge_seq }.to_bytes(),
                    );
                }
            });
            let appended = match self.chain.send(Body::Purge(record), Some(extra), true).await {
                Err(ArchiveError::Storage(StorageError::Conflict)) => return Err(ArchiveError::HoldsChanged),
                other => other?,
            };
            report.purge_entries.push(appended.seq);
        }
        report.deleted += seqs.len() as u64;
        pass.deleted.extend(seqs);
        Ok(())
    }

    /// Deletes the expired MAM copies of every owner that has any, on hold or not in the
    /// directory alike: someone who has left keeps no retention of their own, so the default
    /// applies, as it does to their chain entries.
    async fn purge_mam(
        &self,
        now: i64,
        holds: &HashSet<String>,
        cache: &mut HashMap<String, Option<i64>>,
        dry_run: bool,
    ) -> Result<u64, ArchiveError> {
        let mut deleted = 0;
        let mut after: Option<String> = None;
        loop {
            let owners = self.mam.owners(Space::Mam, after.as_deref(), MAX_LISTED).await?;
            let Some(last) = owners.last().cloned() else {
                return Ok(deleted);
            };
            for owner in owners {
                if holds.contains(&owner) {
                    continue;
                }
                let Some(retention) = self.retention_of(&owner, cache).await? else {
                    continue;
                };
                let cutoff = now.saturating_sub(retention);
                deleted += if dry_run {
                    let query = ArchiveQuery {
                        end: Some(cutoff.saturating_sub(1)),
                        ..ArchiveQuery::default()
                    };
                    self.mam.count(Space::Mam, &owner, &query).await?
                } else {
                    self.mam.delete_before(Space::Mam, Some(&owner), cutoff).await?
                };
            }
            after = Some(last);
        }
    }
}

/// Matching messages, block by block (see [`ComplianceArchive::matches`]).
struct MatchScan<'a> {
    blocks: BlockScan<'a>,
    head_seq: u64,
    matcher: Matcher,
    done: bool,
}

impl MatchScan<'_> {
    /// The next block's matches (possibly none); None when the scan is over.
    async fn next(&mut self) -> Result<Option<Vec<(u64, i64, MessageRecord)>>, ArchiveError> {
        if self.done {
            return Ok(None);
        }
        let Some(records) = self.blocks.next().await? else {
            return Ok(None);
        };
        let mut matches = Vec::new();
        for (key, bytes) in records {
            if parse_seq_key(&key).is_none_or(|seq| seq > self.head_seq) {
                continue;
            }
            let entry = Entry::from_bytes(&bytes)
                .map_err(|error| ArchiveError::Corrupt(format!("chain entry {key}: {error}")))?;
            // Timestamps never decrease along the chain, so nothing later can match.
            if self.matcher.end.is_some_and(|end| entry.ts > end) {
                self.done = true;
                break;
            }
            if let Body::Message(message) = entry.body
                && self.matcher.matches(entry.ts, &message)
            {
                matches.push((entry.seq, entry.ts, message));
            }
        }
        Ok(Some(matches))
    }
}

#[cfg(test)]
mod tests;

//! The chain's records: what one entry holds, its canonical bytes, and the store keys.
//!
//! An entry's canonical bytes are its JSON serialisation (fields in declaration order, so the
//! same entry always gives the same bytes); they are stored verbatim and hashed verbatim, so
//! verification never has to re-serialise anything.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// KV owner of the chain entries in `Space::Compliance`: one owner, so a chain batch is one
/// owner's puts in one group commit (the store's fast path).
pub const CHAIN_OWNER: &str = "chain";
/// `Space::Meta` owner of the archive's own state.
pub const META_OWNER: &str = "archive";
/// `Space::Meta` key of the chain head (the latest checkpoint, written with every batch).
pub const HEAD_KEY: &str = "head";
/// `Space::Meta` owner of the periodic checkpoints, keyed by sequence number.
pub const CHECKPOINT_OWNER: &str = "archive.checkpoints";
/// `Space::Meta` owner of the tombstones purges leave, keyed by the purged sequence number.
pub const TOMBSTONE_OWNER: &str = "archive.tombstones";
/// `Space::Meta` owner of the legal holds, keyed by bare JID.
pub const HOLD_OWNER: &str = "archive.holds";
/// `Space::Meta` key (owner [`META_OWNER`]) that every change of a legal hold rewrites: a purge
/// commits each chunk only if it is unchanged since the purge read the holds.
pub const HOLDS_VERSION_KEY: &str = "holds-version";
/// `Space::Meta` owner of the access log index, keyed by sequence number.
pub const ACCESS_OWNER: &str = "archive.access";

/// Digits of a sequence key: enough for `u64::MAX`, zero-padded so byte order is numeric order.
pub const SEQ_KEY_DIGITS: usize = 20;
/// Sequence numbers per scan block: keys sharing their first 16 digits.
pub const BLOCK_SIZE: u64 = 10_000;
const BLOCK_PREFIX_DIGITS: usize = SEQ_KEY_DIGITS - 4;

/// A SHA-256 digest.
pub type Hash = [u8; 32];
/// The `prev` of the very first entry.
pub const GENESIS: Hash = [0; 32];

pub fn seq_key(seq: u64) -> String {
    format!("{seq:0width$}", width = SEQ_KEY_DIGITS)
}

/// The key prefix shared by every sequence number of `block` (`seq / BLOCK_SIZE`).
pub fn block_prefix(block: u64) -> String {
    format!("{block:0width$}", width = BLOCK_PREFIX_DIGITS)
}

/// Parses a key written by [`seq_key`]; anything else (wrong length, non-digits) is None.
pub fn parse_seq_key(key: &str) -> Option<u64> {
    if key.len() != SEQ_KEY_DIGITS || !key.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    key.parse().ok()
}

/// What a MAM copy holds instead of the stanza: `chain:` and the sequence number of the chain
/// entry that carries it. Stored stanzas start with `<`, so the two never mix up.
const ENTRY_REFERENCE_PREFIX: &[u8] = b"chain:";

/// The payload of a MAM copy whose stanza is chain entry `seq`'s.
pub fn entry_reference(seq: u64) -> Vec<u8> {
    let mut reference = ENTRY_REFERENCE_PREFIX.to_vec();
    reference.extend_from_slice(seq.to_string().as_bytes());
    reference
}

/// The chain entry a MAM copy's payload refers to; None for a payload that holds its stanza
/// itself (copies written before references existed) or is anything else.
pub fn parse_entry_reference(payload: &[u8]) -> Option<u64> {
    let digits = payload.strip_prefix(ENTRY_REFERENCE_PREFIX)?;
    if digits.is_empty() || digits.len() > SEQ_KEY_DIGITS || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

pub fn hash_bytes(bytes: &[u8]) -> Hash {
    Sha256::digest(bytes).into()
}

/// One link of the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the chain, from 1, without gaps (purged entries leave tombstones).
    pub seq: u64,
    /// Hex SHA-256 of the previous entry's canonical bytes (64 zeros for the first).
    pub prev: String,
    /// When the archive accepted it, in microseconds since the Unix epoch; never decreases
    /// along the chain.
    pub ts: i64,
    pub body: Body,
}

impl Entry {
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// What an entry records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Body {
    /// A message stanza the server accepted from a local client.
    Message(MessageRecord),
    /// Retention deleted these entries; their tombstones keep the chain verifiable.
    Purge(PurgeRecord),
    /// Someone searched or exported the archive.
    Access(AccessRecord),
    /// A legal hold was set or released.
    Hold(HoldRecord),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// The sender's full JID, as the session stamped it.
    pub from: String,
    /// The recipient as addressed (full or bare JID, or the domain).
    pub to: String,
    /// The stanza's `id` attribute, if any.
    pub id: Option<String>,
    /// The stanza's `type` attribute (`None` means `normal`).
    pub message_type: Option<String>,
    pub thread: Option<String>,
    pub subject: Option<String>,
    /// The text of the first `<body/>`, for search and export.
    pub body: Option<String>,
    /// The whole stanza as accepted, serialised XML.
    pub stanza: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeRecord {
    /// Who ran it (`"retention"` for the periodic job).
    pub actor: String,
    /// Deleted sequence numbers as inclusive ranges.
    pub ranges: Vec<(u64, u64)>,
    pub count: u64,
    /// Hex SHA-256 over `seq (8 bytes, big-endian) || hash` of every deleted entry, in order:
    /// binds the tombstones to this record.
    pub digest: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRecord {
    pub actor: String,
    /// `"search"` or `"export:<format>"`.
    pub action: String,
    /// The filter, as JSON.
    pub filter: serde_json::Value,
    /// How many messages it returned.
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldRecord {
    pub actor: String,
    /// The held user's bare JID.
    pub user: String,
    /// `true` when set, `false` when released.
    pub held: bool,
    pub reason: String,
}

/// The chain head: the newest entry's position and hash. Written atomically with every batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: u64,
    #[serde(with = "hex_hash")]
    pub hash: Hash,
    pub ts: i64,
    /// Entries ever appended (purged ones included): equals `seq`.
    pub appended: u64,
}

impl Checkpoint {
    pub const EMPTY: Checkpoint = Checkpoint {
        seq: 0,
        hash: GENESIS,
        ts: i64::MIN,
        appended: 0,
    };

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// What a purged entry leaves behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    #[serde(with = "hex_hash")]
    pub hash: Hash,
    /// The purge entry that deleted it.
    pub purge_seq: u64,
}

impl Tombstone {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Accumulates a purge digest (see [`PurgeRecord::digest`]).
#[derive(Debug, Default, Clone)]
pub struct PurgeDigest {
    hasher: Sha256,
    pub count: u64,
}

impl PurgeDigest {
    pub fn add(&mut self, seq: u64, hash: &Hash) {
        self.hasher.update(seq.to_be_bytes());
        self.hasher.update(hash);
        self.count += 1;
    }

    pub fn finish(self) -> String {
        hex::encode(self.hasher.finalize())
    }
}

/// Sorted sequence numbers as inclusive ranges.
pub fn to_ranges(seqs: &[u64]) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for &seq in seqs {
        match ranges.last_mut() {
            Some((_, end)) if end.checked_add(1) == Some(seq) => *end = seq,
            _ => ranges.push((seq, seq)),
        }
    }
    ranges
}

mod hex_hash {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(hash: &super::Hash, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(hash))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<super::Hash, D::Error> {
        let text = String::deserialize(deserializer)?;
        let mut hash = [0u8; 32];
        hex::decode_to_slice(&text, &mut hash).map_err(serde::de::Error::custom)?;
        Ok(hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_references_round_trip_and_nothing_else_parses_as_one() {
        for seq in [0, 1, 42, u64::MAX] {
            assert_eq!(parse_entry_reference(&entry_reference(seq)), Some(seq));
        }
        assert_eq!(entry_reference(42), b"chain:42");
        let not_references: [&[u8]; 7] = [
            b"<message xmlns='jabber:client'/>",
            b"chain:",
            b"chain:12a",
            b"chain:-1",
            b"chain:18446744073709551616",
            b"chain:000000000000000000001",
            b"",
        ];
        for payload in not_references {
            assert_eq!(parse_entry_reference(payload), None, "{payload:?}");
        }
    }

    fn message_entry(seq: u64) -> Entry {
        Entry {
            seq,
            prev: hex::encode(GENESIS),
            ts: 1_700_000_000_000_000,
            body: Body::Message(MessageRecord {
                from: "alice@example.com/phone".into(),
                to: "bob@example.com".into(),
                id: Some("m1".into()),
                message_type: Some("chat".into()),
                thread: None,
                subject: None,
                body: Some("Grüße \"quoted\"".into()),
                stanza: "<message/>".into(),
            }),
        }
    }

    #[test]
    fn canonical_bytes_round_trip_and_are_stable() {
        let entry = message_entry(7);
        let bytes = entry.to_bytes();
        assert_eq!(Entry::from_bytes(&bytes).unwrap(), entry);
        assert_eq!(entry.clone().to_bytes(), bytes, "same entry, same bytes");
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("{\"seq\":7,\"prev\":"), "{text}");
        assert!(text.contains("\"kind\":\"message\""), "{text}");
    }

    #[test]
    fn seq_keys_sort_numerically_and_reject_junk() {
        assert!(seq_key(9) < seq_key(10));
        assert_eq!(parse_seq_key(&seq_key(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_seq_key(&seq_key(42)), Some(42));
        assert_eq!(parse_seq_key("42"), None);
        assert_eq!(parse_seq_key("0000000000000000004x"), None);
        assert_eq!(parse_seq_key("000000000000000000042"), None, "21 digits");
        assert!(seq_key(123_456).starts_with(&block_prefix(123_456 / BLOCK_SIZE)));
        assert!(!seq_key(123_456).starts_with(&block_prefix(123_456 / BLOCK_SIZE + 1)));
    }

    #[test]
    fn ranges_merge_consecutive_numbers() {
        assert_eq!(to_ranges(&[1, 2, 3, 5, 7, 8]), vec![(1, 3), (5, 5), (7, 8)]);
        assert!(to_ranges(&[]).is_empty());
        assert_eq!(to_ranges(&[u64::MAX]), vec![(u64::MAX, u64::MAX)]);
    }

    #[test]
    fn checkpoint_rejects_a_malformed_hash() {
        let bytes = Checkpoint::EMPTY.to_bytes();
        assert_eq!(Checkpoint::from_bytes(&bytes).unwrap(), Checkpoint::EMPTY);
        let bad = br#"{"seq":1,"hash":"zz","ts":0,"appended":1}"#;
        assert!(Checkpoint::from_bytes(bad).is_err());
    }

    #[test]
    fn purge_digest_depends_on_order_and_content() {
        let mut first = PurgeDigest::default();
        first.add(1, &[1; 32]);
        first.add(2, &[2; 32]);
        let mut swapped = PurgeDigest::default();
        swapped.add(2, &[2; 32]);
        swapped.add(1, &[1; 32]);
        assert_eq!(first.count, 2);
        assert_ne!(first.finish(), swapped.finish());
    }
}

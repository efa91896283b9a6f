//! Byte encodings of the redb keys and values.
//!
//! Every key starts with the owner as a `u16` big-endian length followed by its bytes, so one
//! owner's entries are contiguous and an owner that is a prefix of another ("al" / "alice") never
//! interleaves with it. Integers are big-endian so byte order is numeric order; timestamps have
//! their sign bit flipped so negative times sort first. Decoding treats stored bytes as untrusted
//! and answers [`StorageError::Corrupt`] instead of panicking.

use crate::{ArchiveRecord, StorageError};

/// The key prefix shared by all of an owner's entries. Owners are bounded by `MAX_OWNER_LEN`
/// (< 65536) before they get here.
pub(crate) fn owner_prefix(owner: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + owner.len() + 24);
    push_short_str(&mut out, owner);
    out
}

fn push_short_str(out: &mut Vec<u8>, text: &str) {
    // Callers bound `text` to MAX_*_LEN (3071), far below u16::MAX.
    let len = u16::try_from(text.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

pub(crate) fn kv_key(owner: &str, key: &str) -> Vec<u8> {
    let mut out = owner_prefix(owner);
    out.extend_from_slice(key.as_bytes());
    out
}

/// The key part of a kv table key, given the owner prefix it starts with.
pub(crate) fn kv_key_suffix(full: &[u8], prefix_len: usize) -> Result<String, StorageError> {
    let suffix = full
        .get(prefix_len..)
        .ok_or_else(|| corrupt("key-value key shorter than its owner"))?;
    String::from_utf8(suffix.to_vec()).map_err(|_| corrupt("key-value key is not UTF-8"))
}

pub(crate) fn record_key(owner: &str, id: u64) -> Vec<u8> {
    let mut out = owner_prefix(owner);
    out.extend_from_slice(&id.to_be_bytes());
    out
}

/// `with` index key: owner, length-prefixed `with`, id.
pub(crate) fn with_key(owner: &str, with: &str, id: u64) -> Vec<u8> {
    let mut out = owner_prefix(owner);
    push_short_str(&mut out, with);
    out.extend_from_slice(&id.to_be_bytes());
    out
}

/// The id that ends every archive key and index key.
pub(crate) fn trailing_id(key: &[u8]) -> Result<u64, StorageError> {
    let start = key
        .len()
        .checked_sub(8)
        .ok_or_else(|| corrupt("archive key too short"))?;
    decode_u64(&key[start..])
}

pub(crate) fn decode_u64(bytes: &[u8]) -> Result<u64, StorageError> {
    let array: [u8; 8] = bytes
        .try_into()
        .map_err(|_| corrupt("expected an 8-byte integer"))?;
    Ok(u64::from_be_bytes(array))
}

pub(crate) fn decode_i64(bytes: &[u8]) -> Result<i64, StorageError> {
    Ok(decode_u64(bytes)? as i64)
}

/// Record value: timestamp (8), `with` length (2), `with`, payload.
pub(crate) fn encode_record(timestamp_micros: i64, with: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + with.len() + payload.len());
    out.extend_from_slice(&timestamp_micros.to_be_bytes());
    push_short_str(&mut out, with);
    out.extend_from_slice(payload);
    out
}

pub(crate) fn decode_record(id: u64, bytes: &[u8]) -> Result<ArchiveRecord, StorageError> {
    let (timestamp, with, payload) = split_record(bytes)?;
    Ok(ArchiveRecord {
        id,
        timestamp_micros: timestamp,
        with: with.to_owned(),
        payload: payload.to_vec(),
    })
}

/// Timestamp, `with` and payload of an encoded record, borrowed.
pub(crate) fn split_record(bytes: &[u8]) -> Result<(i64, &str, &[u8]), StorageError> {
    if bytes.len() < 10 {
        return Err(corrupt("archive record shorter than its header"));
    }
    let timestamp = decode_i64(&bytes[..8])?;
    let with_len = usize::from(u16::from_be_bytes([bytes[8], bytes[9]]));
    let with_bytes = bytes
        .get(10..10 + with_len)
        .ok_or_else(|| corrupt("archive record `with` truncated"))?;
    let with = std::str::from_utf8(with_bytes).map_err(|_| corrupt("archive record `with` is not UTF-8"))?;
    Ok((timestamp, with, &bytes[10 + with_len..]))
}

/// Per-owner archive statistics, kept so `count` without filters is O(1) and so time-range
/// queries can turn timestamps into id bounds.
///
/// `max_lag_micros` is the largest amount by which any record's timestamp fell behind the newest
/// timestamp appended before it (0 while timestamps never decrease with ids). With `L` that lag,
/// every record `r` satisfies `running_max(r) - L <= ts(r) <= running_max(r)`, so a record older
/// than `start - L` proves that no earlier id can reach `start`, and one newer than `end + L`
/// proves that no later id can be at or before `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OwnerStats {
    pub(crate) count: u64,
    pub(crate) max_timestamp: i64,
    pub(crate) max_lag_micros: u64,
}

impl OwnerStats {
    pub(crate) const EMPTY: OwnerStats = OwnerStats {
        count: 0,
        max_timestamp: i64::MIN,
        max_lag_micros: 0,
    };
    const ENCODED_LEN: usize = 24;

    pub(crate) fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[..8].copy_from_slice(&self.count.to_be_bytes());
        out[8..16].copy_from_slice(&self.max_timestamp.to_be_bytes());
        out[16..].copy_from_slice(&self.max_lag_micros.to_be_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, StorageError> {
        if bytes.len() != Self::ENCODED_LEN {
            return Err(corrupt("owner statistics malformed"));
        }
        Ok(OwnerStats {
            count: decode_u64(&bytes[..8])?,
            max_timestamp: decode_i64(&bytes[8..16])?,
            max_lag_micros: decode_u64(&bytes[16..])?,
        })
    }

    /// Accounts for one appended record (appends arrive in id order).
    pub(crate) fn record_appended(&mut self, timestamp_micros: i64) {
        if self.count > 0 && timestamp_micros < self.max_timestamp {
            let lag = self.max_timestamp.abs_diff(timestamp_micros);
            self.max_lag_micros = self.max_lag_micros.max(lag);
        }
        self.max_timestamp = self.max_timestamp.max(timestamp_micros);
        self.count += 1;
    }

    /// The lag as a timestamp offset (saturated; a lag beyond i64 means "no bound").
    pub(crate) fn lag(&self) -> i64 {
        i64::try_from(self.max_lag_micros).unwrap_or(i64::MAX)
    }
}

fn corrupt(what: &str) -> StorageError {
    StorageError::Corrupt(what.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_prefix_keeps_owners_apart() {
        let short = kv_key("al", "ice/x");
        let long = kv_key("alice", "x");
        assert!(!short.starts_with(&owner_prefix("alice")));
        assert!(!long.starts_with(&owner_prefix("al")));
        assert!(short.starts_with(&owner_prefix("al")));
    }

    #[test]
    fn record_round_trips() {
        let bytes = encode_record(-3, "bob@example.com", b"<message/>");
        let record = decode_record(5, &bytes).unwrap();
        assert_eq!(record.id, 5);
        assert_eq!(record.timestamp_micros, -3);
        assert_eq!(record.with, "bob@example.com");
        assert_eq!(record.payload, b"<message/>");
    }

    #[test]
    fn malformed_records_are_corrupt_not_panics() {
        assert!(matches!(decode_record(1, &[0; 9]), Err(StorageError::Corrupt(_))));
        let mut truncated = encode_record(1, "bob", b"");
        truncated.truncate(11);
        assert!(matches!(
            decode_record(1, &truncated),
            Err(StorageError::Corrupt(_))
        ));
        let mut bad_utf8 = encode_record(1, "b", b"");
        bad_utf8[10] = 0xff;
        assert!(matches!(
            decode_record(1, &bad_utf8),
            Err(StorageError::Corrupt(_))
        ));
        assert!(matches!(trailing_id(&[1, 2, 3]), Err(StorageError::Corrupt(_))));
        assert!(matches!(
            kv_key_suffix(&[0, 1, 0xff], 2),
            Err(StorageError::Corrupt(_))
        ));
        assert!(matches!(kv_key_suffix(&[0], 2), Err(StorageError::Corrupt(_))));
    }

    #[test]
    fn owner_stats_round_trip_and_track_lag() {
        let mut stats = OwnerStats::EMPTY;
        stats.record_appended(10);
        stats.record_appended(10);
        assert_eq!(stats.max_lag_micros, 0, "equal timestamps keep order");
        stats.record_appended(7);
        stats.record_appended(20);
        stats.record_appended(18);
        assert_eq!(stats.max_lag_micros, 3, "largest fall behind the running maximum");
        assert_eq!(stats.count, 5);
        assert_eq!(stats.max_timestamp, 20);
        assert_eq!(OwnerStats::decode(&stats.encode()).unwrap(), stats);
        assert!(OwnerStats::decode(&[0; 17]).is_err());
        let mut extremes = OwnerStats::EMPTY;
        extremes.record_appended(i64::MAX);
        extremes.record_appended(i64::MIN);
        assert_eq!(extremes.max_lag_micros, u64::MAX);
        assert_eq!(extremes.lag(), i64::MAX);
    }
}

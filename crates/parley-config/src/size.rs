//! `ByteSize`: a byte count written the way admins write it ("256KiB", "1 MiB", "64kB", "512").

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A number of bytes. In TOML: a bare integer (bytes) or a string with an optional unit:
/// `B`, SI `kB` `MB` `GB` `TB` (powers of 1000) or binary `KiB` `MiB` `GiB` `TiB` (powers of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

/// Why a size string was rejected. The message names what was expected, for the admin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ByteSizeError {
    /// Not a number followed by a known unit.
    #[error("expected a size like \"256KiB\" (units B, kB, MB, GB, TB, KiB, MiB, GiB, TiB), got \"{0}\"")]
    Malformed(String),
    /// The value does not fit in 64 bits.
    #[error("size \"{0}\" is too large")]
    Overflow(String),
}

const KIB: u64 = 1024;
const MIB: u64 = KIB * 1024;
const GIB: u64 = MIB * 1024;
const TIB: u64 = GIB * 1024;

/// Units in the order Display prefers them: the largest exact binary unit, then SI.
const UNITS: &[(&str, u64)] = &[
    ("TiB", TIB),
    ("GiB", GIB),
    ("MiB", MIB),
    ("KiB", KIB),
    ("TB", 1_000_000_000_000),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("kB", 1_000),
];

/// Longest input echoed back in an error message, so a pasted blob does not flood the log.
const MAX_ECHO: usize = 64;

pub(crate) fn echo(text: &str) -> String {
    if text.chars().count() <= MAX_ECHO {
        text.to_owned()
    } else {
        let mut short: String = text.chars().take(MAX_ECHO).collect();
        short.push('…');
        short
    }
}

impl ByteSize {
    /// One kibibyte multiple, for readable defaults.
    pub const fn kib(n: u64) -> Self {
        Self(n * KIB)
    }

    /// One mebibyte multiple, for readable defaults.
    pub const fn mib(n: u64) -> Self {
        Self(n * MIB)
    }

    /// The number of bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }

    /// The number of bytes as `usize`, saturating on 32-bit targets.
    pub fn to_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }

    /// Parses "256KiB", "1 MiB", "64kB", "512" or "512B".
    pub fn parse(text: &str) -> Result<Self, ByteSizeError> {
        let trimmed = text.trim();
        let digits_end = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (digits, rest) = trimmed.split_at(digits_end);
        if digits.is_empty() {
            return Err(ByteSizeError::Malformed(echo(text)));
        }
        let unit = rest.trim_start();
        let multiplier = match unit {
            "" | "B" => 1,
            other => UNITS
                .iter()
                .find(|(name, _)| *name == other)
                .map(|(_, factor)| *factor)
                .ok_or_else(|| ByteSizeError::Malformed(echo(text)))?,
        };
        // Only digits remain, so the sole parse failure is a value too long for u64.
        let count: u64 = digits.parse().map_err(|_| ByteSizeError::Overflow(echo(text)))?;
        count
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(|| ByteSizeError::Overflow(echo(text)))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 != 0 {
            for (name, factor) in UNITS {
                if self.0.is_multiple_of(*factor) {
                    return write!(f, "{}{name}", self.0 / factor);
                }
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl std::str::FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

struct ByteSizeVisitor;

impl Visitor<'_> for ByteSizeVisitor {
    type Value = ByteSize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a size like \"256KiB\" or a number of bytes")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
        Ok(ByteSize(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
        u64::try_from(v)
            .map(ByteSize)
            .map_err(|_| E::custom(format!("expected a size like \"256KiB\", got {v} (negative)")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
        ByteSize::parse(v).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ByteSizeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(ByteSize::parse("256KiB"), Ok(ByteSize(256 * 1024)));
        assert_eq!(ByteSize::parse("1 MiB"), Ok(ByteSize(1024 * 1024)));
        assert_eq!(ByteSize::parse("64kB"), Ok(ByteSize(64_000)));
        assert_eq!(ByteSize::parse("512"), Ok(ByteSize(512)));
        assert_eq!(ByteSize::parse(" 512B "), Ok(ByteSize(512)));
        assert_eq!(ByteSize::parse("2GiB"), Ok(ByteSize(2 * GIB)));
        assert_eq!(ByteSize::parse("3TB"), Ok(ByteSize(3_000_000_000_000)));
        assert_eq!(ByteSize::parse("0"), Ok(ByteSize(0)));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "huge",
            "KiB",
            "-1",
            "1.5MiB",
            "12 kib",
            "10KB",
            "1 MiB extra",
            "0x10",
            "1e3",
        ] {
            assert!(
                matches!(ByteSize::parse(bad), Err(ByteSizeError::Malformed(_))),
                "{bad:?} should be malformed"
            );
        }
    }

    #[test]
    fn rejects_overflow() {
        assert!(matches!(
            ByteSize::parse("99999999999999999999"),
            Err(ByteSizeError::Overflow(_))
        ));
        assert!(matches!(
            ByteSize::parse("17179869184GiB"),
            Err(ByteSizeError::Overflow(_))
        ));
        assert_eq!(ByteSize::parse("18446744073709551615"), Ok(ByteSize(u64::MAX)));
    }

    #[test]
    fn error_message_names_expected_form_and_bounds_echo() {
        let message = ByteSize::parse("huge").unwrap_err().to_string();
        assert!(
            message.starts_with("expected a size like \"256KiB\""),
            "{message}"
        );
        assert!(message.ends_with("got \"huge\""), "{message}");
        let long = "x".repeat(1000);
        assert!(ByteSize::parse(&long).unwrap_err().to_string().len() < 300);
    }

    #[test]
    fn display_round_trips() {
        for size in [
            0,
            1,
            512,
            1000,
            1024,
            64_000,
            256 * 1024,
            16 * MIB,
            5 * TIB,
            u64::MAX,
        ] {
            let shown = ByteSize(size).to_string();
            assert_eq!(ByteSize::parse(&shown), Ok(ByteSize(size)), "{shown}");
        }
        assert_eq!(ByteSize::kib(256).to_string(), "256KiB");
        assert_eq!(ByteSize(64_000).to_string(), "64kB");
        assert_eq!(ByteSize(513).to_string(), "513B");
    }

    #[derive(Debug, Deserialize)]
    struct Holder {
        size: ByteSize,
    }

    #[test]
    fn deserializes_integer_and_string() {
        let from_int: Holder = toml::from_str("size = 4096").unwrap();
        assert_eq!(from_int.size, ByteSize(4096));
        let from_str: Holder = toml::from_str("size = \"4 KiB\"").unwrap();
        assert_eq!(from_str.size, ByteSize(4096));
        assert!(toml::from_str::<Holder>("size = -4").is_err());
        assert!(toml::from_str::<Holder>("size = 1.5").is_err());
        assert!(toml::from_str::<Holder>("size = \"lots\"").is_err());
    }
}

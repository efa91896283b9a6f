//! `Duration`: a span of time written with units ("250ms", "30s", "5m", "1h", "7d", "1h30m").

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::size::echo;

/// A non-negative span of time with millisecond precision. In TOML always a string with units,
/// so `30` can never be misread as milliseconds or seconds: one or more `<integer><unit>` groups
/// with units `d`, `h`, `m`, `s`, `ms`, each at most once and largest first ("1h30m"). `"0"`
/// alone means zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(std::time::Duration);

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not a sequence of `<integer><unit>` groups.
    #[error("expected a duration like \"30s\" (units ms, s, m, h, d), got \"{0}\"")]
    Malformed(String),
    /// A unit repeated or out of order, e.g. "30s1h".
    #[error("duration \"{0}\" must list each unit once, largest first (like \"1h30m\")")]
    UnitOrder(String),
    /// The total does not fit.
    #[error("duration \"{0}\" is too large")]
    Overflow(String),
}

/// Units largest first; the index doubles as the ordering rank.
const UNITS: &[(&str, u64)] = &[
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

impl Duration {
    /// Whole seconds, for readable defaults.
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    /// Whole milliseconds.
    pub const fn from_millis(millis: u64) -> Self {
        Self(std::time::Duration::from_millis(millis))
    }

    /// The standard library duration.
    pub const fn get(self) -> std::time::Duration {
        self.0
    }

    /// True for a zero span (used by options where 0 disables a feature).
    pub const fn is_zero(self) -> bool {
        self.0.is_zero()
    }

    /// Parses "250ms", "30s", "5m", "1h", "7d", "1h30m", "0".
    pub fn parse(text: &str) -> Result<Self, DurationError> {
        let malformed = || DurationError::Malformed(echo(text));
        let overflow = || DurationError::Overflow(echo(text));
        let trimmed = text.trim();
        if trimmed == "0" {
            return Ok(Self::default());
        }
        if trimmed.is_empty() {
            return Err(malformed());
        }
        let mut rest = trimmed;
        let mut total_millis: u64 = 0;
        let mut next_allowed_rank = 0;
        while !rest.is_empty() {
            let digits_end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            if digits_end == 0 {
                return Err(malformed());
            }
            let count: u64 = rest[..digits_end].parse().map_err(|_| overflow())?;
            let after = &rest[digits_end..];
            let unit_end = after
                .find(|c: char| !c.is_ascii_alphabetic())
                .unwrap_or(after.len());
            let unit = &after[..unit_end];
            let rank = UNITS
                .iter()
                .position(|(name, _)| *name == unit)
                .ok_or_else(malformed)?;
            if rank < next_allowed_rank {
                return Err(DurationError::UnitOrder(echo(text)));
            }
            next_allowed_rank = rank + 1;
            let millis = count.checked_mul(UNITS[rank].1).ok_or_else(overflow)?;
            total_millis = total_millis.checked_add(millis).ok_or_else(overflow)?;
            rest = after[unit_end..].trim_start();
        }
        Ok(Self::from_millis(total_millis))
    }
}

impl From<Duration> for std::time::Duration {
    fn from(value: Duration) -> Self {
        value.0
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Parsing keeps milliseconds only, so showing milliseconds loses nothing we accept.
        let mut remaining = u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX);
        if remaining == 0 {
            return f.write_str("0s");
        }
        for (name, factor) in UNITS {
            let count = remaining / factor;
            if count > 0 {
                write!(f, "{count}{name}")?;
                remaining %= factor;
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for Duration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration string like \"30s\"")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        Err(E::custom(format!(
            "expected a duration like \"30s\" (units ms, s, m, h, d), got the bare number {v}; add a unit"
        )))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        Err(E::custom(format!(
            "expected a duration like \"30s\" (units ms, s, m, h, d), got the bare number {v}; add a unit"
        )))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        Duration::parse(v).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DurationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit_and_combinations() {
        assert_eq!(Duration::parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(Duration::parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(Duration::parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(Duration::parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(Duration::parse("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(Duration::parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(Duration::parse("1m 30s 5ms"), Ok(Duration::from_millis(90_005)));
        assert_eq!(Duration::parse("0"), Ok(Duration::default()));
        assert_eq!(Duration::parse("0s"), Ok(Duration::default()));
    }

    #[test]
    fn rejects_garbage_and_negatives() {
        for bad in [
            "", "30", "-5s", "5 s", "1.5s", "s", "5sec", "5S", "ten s", "5m-1s", "1h 30",
        ] {
            assert!(
                matches!(Duration::parse(bad), Err(DurationError::Malformed(_))),
                "{bad:?} should be malformed, got {:?}",
                Duration::parse(bad)
            );
        }
    }

    #[test]
    fn rejects_repeated_or_unordered_units() {
        assert!(matches!(
            Duration::parse("30s1h"),
            Err(DurationError::UnitOrder(_))
        ));
        assert!(matches!(
            Duration::parse("1s1s"),
            Err(DurationError::UnitOrder(_))
        ));
    }

    #[test]
    fn rejects_overflow() {
        assert!(matches!(
            Duration::parse("99999999999999999999s"),
            Err(DurationError::Overflow(_))
        ));
        assert!(matches!(
            Duration::parse("18446744073709551615d"),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn display_round_trips() {
        assert_eq!(Duration::from_secs(90).to_string(), "1m30s");
        assert_eq!(Duration::from_secs(60).to_string(), "1m");
        assert_eq!(Duration::default().to_string(), "0s");
        for millis in [0, 1, 250, 1000, 61_001, 86_400_000 * 7 + 5] {
            let shown = Duration::from_millis(millis).to_string();
            assert_eq!(
                Duration::parse(&shown),
                Ok(Duration::from_millis(millis)),
                "{shown}"
            );
        }
    }

    #[derive(Debug, Deserialize)]
    struct Holder {
        wait: Duration,
    }

    #[test]
    fn deserializes_strings_only() {
        let holder: Holder = toml::from_str("wait = \"2s\"").unwrap();
        assert_eq!(holder.wait.get(), std::time::Duration::from_secs(2));
        let bare = toml::from_str::<Holder>("wait = 30").unwrap_err().to_string();
        assert!(bare.contains("add a unit"), "{bare}");
        assert!(toml::from_str::<Holder>("wait = \"soon\"").is_err());
    }
}

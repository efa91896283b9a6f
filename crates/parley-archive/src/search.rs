//! Search filters over the chain's messages, shared by search, export and the admin API.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

use crate::entry::MessageRecord;

/// Which messages a search or export selects. Every filter is optional; they combine with AND.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchFilter {
    /// Bare JIDs that must ALL take part (as sender or recipient): one names a person's whole
    /// history, two their conversation.
    pub participants: Vec<String>,
    /// The sender's bare JID.
    pub from: Option<String>,
    /// The recipient's bare JID.
    pub to: Option<String>,
    /// A local participant must currently belong to this department (from the directory).
    pub department: Option<String>,
    /// Inclusive lower bound, microseconds since the epoch.
    pub start: Option<i64>,
    /// Inclusive upper bound, microseconds since the epoch.
    pub end: Option<i64>,
    /// Words that must all occur in the body or subject (case-insensitive, Unicode-normalised).
    pub keyword: Option<String>,
}

/// Longest keyword accepted, in bytes.
pub const MAX_KEYWORD_LEN: usize = 1024;
/// Most participants in one filter.
pub const MAX_PARTICIPANTS: usize = 64;

impl SearchFilter {
    /// Rejects filters that cannot be meant (too long, inverted time range).
    pub fn check(&self) -> Result<(), String> {
        if self.participants.len() > MAX_PARTICIPANTS {
            return Err(format!("at most {MAX_PARTICIPANTS} participants"));
        }
        if self
            .keyword
            .as_ref()
            .is_some_and(|keyword| keyword.len() > MAX_KEYWORD_LEN)
        {
            return Err(format!("the keyword is longer than {MAX_KEYWORD_LEN} bytes"));
        }
        if let (Some(start), Some(end)) = (self.start, self.end)
            && start > end
        {
            return Err("the time range ends before it starts".into());
        }
        Ok(())
    }
}

/// A filter prepared for matching: JIDs lowercased, keyword folded, department resolved.
#[derive(Debug, Clone)]
pub(crate) struct Matcher {
    participants: Vec<String>,
    from: Option<String>,
    to: Option<String>,
    /// Bare JIDs of the department's members; None when the filter has no department.
    department_members: Option<HashSet<String>>,
    pub(crate) start: Option<i64>,
    pub(crate) end: Option<i64>,
    words: Vec<String>,
}

impl Matcher {
    pub(crate) fn new(filter: &SearchFilter, department_members: Option<HashSet<String>>) -> Self {
        let lower = |jid: &String| jid.trim().to_lowercase();
        Self {
            participants: filter.participants.iter().map(lower).collect(),
            from: filter.from.as_ref().map(lower),
            to: filter.to.as_ref().map(lower),
            department_members,
            start: filter.start,
            end: filter.end,
            words: filter
                .keyword
                .as_deref()
                .map(|keyword| fold(keyword).split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default(),
        }
    }

    /// Whether `message`, accepted at `ts`, passes.
    pub(crate) fn matches(&self, ts: i64, message: &MessageRecord) -> bool {
        if self.start.is_some_and(|start| ts < start) || self.end.is_some_and(|end| ts > end) {
            return false;
        }
        let from = bare_of(&message.from);
        let to = bare_of(&message.to);
        if self.from.as_ref().is_some_and(|wanted| *wanted != from)
            || self.to.as_ref().is_some_and(|wanted| *wanted != to)
            || !self
                .participants
                .iter()
                .all(|party| *party == from || *party == to)
        {
            return false;
        }
        if let Some(members) = &self.department_members
            && !members.contains(&from)
            && !members.contains(&to)
        {
            return false;
        }
        if !self.words.is_empty() {
            let mut text = String::new();
            for part in [&message.subject, &message.body].into_iter().flatten() {
                text.push_str(part);
                text.push('\n');
            }
            let folded = fold(&text);
            return self.words.iter().all(|word| folded.contains(word.as_str()));
        }
        true
    }
}

/// The bare JID of a JID string, lowercased (JIDs are compared case-insensitively in practice:
/// nodeprep/PRECIS lowercase localparts and domains).
/// A user as compliance officers type one: a bare JID, or a localpart taken to be of `domain`.
pub fn qualified_user(user: &str, domain: &str) -> String {
    if user.contains('@') {
        user.to_owned()
    } else {
        format!("{user}@{domain}")
    }
}

pub(crate) fn bare_of(jid: &str) -> String {
    jid.split('/').next().unwrap_or("").to_lowercase()
}

/// Case-insensitive, normalisation-insensitive form of text: NFKC, then lowercase, with the two
/// full case foldings lowercase misses (ß → ss, final sigma → sigma), so "STRASSE" finds
/// "Straße" and "ΟΔΟΣ" finds "οδος".
pub fn fold(text: &str) -> String {
    let mut folded = String::with_capacity(text.len());
    for c in text.nfkc().flat_map(char::to_lowercase) {
        match c {
            'ß' | 'ẞ' => folded.push_str("ss"),
            'ς' => folded.push('σ'),
            other => folded.push(other),
        }
    }
    folded
}

/// One message found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hit {
    pub seq: u64,
    /// Microseconds since the epoch.
    pub ts: i64,
    pub from: String,
    pub to: String,
    pub message_type: Option<String>,
    pub id: Option<String>,
    pub thread: Option<String>,
    pub subject: Option<String>,
    pub body: Option<String>,
}

impl Hit {
    pub(crate) fn new(seq: u64, ts: i64, message: &MessageRecord) -> Self {
        Self {
            seq,
            ts,
            from: message.from.clone(),
            to: message.to.clone(),
            message_type: message.message_type.clone(),
            id: message.id.clone(),
            thread: message.thread.clone(),
            subject: message.subject.clone(),
            body: message.body.clone(),
        }
    }
}

/// What a search found: exact counts, and the first `limit` hits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchResult {
    /// Every matching message.
    pub total: u64,
    /// Matches per sender (bare JID).
    pub by_sender: BTreeMap<String, u64>,
    /// Earliest and latest match, microseconds.
    pub first_ts: Option<i64>,
    pub last_ts: Option<i64>,
    /// The oldest matches, at most the requested limit.
    pub hits: Vec<Hit>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(from: &str, to: &str, body: &str) -> MessageRecord {
        MessageRecord {
            from: from.into(),
            to: to.into(),
            id: None,
            message_type: Some("chat".into()),
            thread: None,
            subject: None,
            body: Some(body.into()),
            stanza: String::new(),
        }
    }

    #[test]
    fn folding_ignores_case_and_normalisation_form() {
        assert_eq!(fold("STRASSE"), fold("Straße"));
        assert_eq!(fold("ΟΔΟΣ"), fold("οδος"));
        // "é" precomposed vs "e" + combining acute.
        assert_eq!(fold("Caf\u{e9}"), fold("CAFE\u{301}"));
        assert_ne!(fold("cafe"), fold("café"));
    }

    #[test]
    fn keyword_words_must_all_occur() {
        let filter = SearchFilter {
            keyword: Some("QUARTERLY  numbers".into()),
            ..Default::default()
        };
        let matcher = Matcher::new(&filter, None);
        let hit = message("a@x/r", "b@x", "the Quarterly NUMBERS are in");
        let miss = message("a@x/r", "b@x", "the quarterly report");
        assert!(matcher.matches(0, &hit));
        assert!(!matcher.matches(0, &miss));
    }

    #[test]
    fn participants_time_and_direction_combine() {
        let filter = SearchFilter {
            participants: vec!["Alice@X".into(), "bob@x".into()],
            start: Some(10),
            end: Some(20),
            ..Default::default()
        };
        let matcher = Matcher::new(&filter, None);
        assert!(matcher.matches(10, &message("alice@x/phone", "bob@x", "hi")));
        assert!(matcher.matches(20, &message("bob@x/pc", "alice@x/phone", "hi")));
        assert!(!matcher.matches(21, &message("alice@x/phone", "bob@x", "hi")));
        assert!(!matcher.matches(15, &message("alice@x/phone", "carol@x", "hi")));
        let from = Matcher::new(
            &SearchFilter {
                from: Some("bob@x".into()),
                ..Default::default()
            },
            None,
        );
        assert!(!from.matches(0, &message("alice@x/phone", "bob@x", "hi")));
        assert!(from.matches(0, &message("bob@x/pc", "alice@x", "hi")));
    }

    #[test]
    fn department_uses_resolved_members() {
        let members: HashSet<String> = ["carol@x".to_owned()].into();
        let matcher = Matcher::new(
            &SearchFilter {
                department: Some("Sales".into()),
                ..Default::default()
            },
            Some(members),
        );
        assert!(matcher.matches(0, &message("alice@x/a", "carol@x", "hi")));
        assert!(!matcher.matches(0, &message("alice@x/a", "bob@x", "hi")));
    }

    #[test]
    fn check_rejects_inverted_ranges_and_huge_keywords() {
        let inverted = SearchFilter {
            start: Some(5),
            end: Some(4),
            ..Default::default()
        };
        assert!(inverted.check().is_err());
        let huge = SearchFilter {
            keyword: Some("x".repeat(MAX_KEYWORD_LEN + 1)),
            ..Default::default()
        };
        assert!(huge.check().is_err());
        assert!(SearchFilter::default().check().is_ok());
    }
}

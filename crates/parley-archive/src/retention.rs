//! Retention periods and legal holds.

use std::collections::BTreeMap;

use parley_directory::Person;
use serde::{Deserialize, Serialize};

/// How long messages are kept. `None` anywhere means "forever".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// For everyone without an override; None keeps messages forever.
    pub default_micros: Option<i64>,
    /// Overrides by department name (the directory's `department`).
    pub departments: BTreeMap<String, Option<i64>>,
    /// Overrides by directory group.
    pub groups: BTreeMap<String, Option<i64>>,
}

impl RetentionPolicy {
    /// A person's retention: the longest of the overrides that apply to them, else the default.
    /// Unknown people (remote, or gone from the directory) get the default.
    pub fn for_person(&self, person: Option<&Person>) -> Option<i64> {
        let Some(person) = person else {
            return self.default_micros;
        };
        let department = person
            .department
            .as_ref()
            .and_then(|department| self.departments.get(department));
        let groups = person.groups.iter().filter_map(|group| self.groups.get(group));
        let overrides: Vec<Option<i64>> = department.into_iter().chain(groups).copied().collect();
        if overrides.is_empty() {
            self.default_micros
        } else {
            longest(overrides)
        }
    }

    /// The shortest retention anyone can have: no message younger than this can expire.
    pub fn shortest(&self) -> Option<i64> {
        std::iter::once(self.default_micros)
            .chain(self.departments.values().copied())
            .chain(self.groups.values().copied())
            .flatten()
            .min()
    }
}

/// The longest of several retentions (forever beats any period).
pub fn longest(retentions: impl IntoIterator<Item = Option<i64>>) -> Option<i64> {
    let mut result = Some(i64::MIN);
    for retention in retentions {
        result = match (result, retention) {
            (Some(current), Some(next)) => Some(current.max(next)),
            _ => None,
        };
    }
    result.filter(|micros| *micros != i64::MIN)
}

/// A legal hold as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegalHold {
    pub user: String,
    pub reason: String,
    pub actor: String,
    /// Microseconds since the epoch.
    pub since: i64,
}

/// What a purge did, or (dry run) would do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeReport {
    pub dry_run: bool,
    /// Chain entries (messages) deleted.
    pub deleted: u64,
    /// Expired messages kept because a participant is on legal hold.
    pub kept_on_hold: u64,
    /// The deleted sequence numbers, as inclusive ranges.
    pub ranges: Vec<(u64, u64)>,
    /// The purge entries written into the chain.
    pub purge_entries: Vec<u64>,
    /// Per-user MAM copies deleted.
    pub mam_deleted: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000_000;

    fn person(department: Option<&str>, groups: &[&str]) -> Person {
        Person {
            localpart: "p".into(),
            display_name: None,
            email: None,
            department: department.map(str::to_owned),
            title: None,
            phone: None,
            groups: groups.iter().map(|group| (*group).to_owned()).collect(),
            admin: false,
        }
    }

    #[test]
    fn overrides_apply_and_the_longest_wins() {
        let policy = RetentionPolicy {
            default_micros: Some(30 * DAY),
            departments: BTreeMap::from([("Sales".into(), Some(7 * DAY)), ("Legal".into(), None)]),
            groups: BTreeMap::from([("board".into(), Some(3650 * DAY))]),
        };
        assert_eq!(policy.for_person(None), Some(30 * DAY));
        assert_eq!(policy.for_person(Some(&person(None, &[]))), Some(30 * DAY));
        assert_eq!(
            policy.for_person(Some(&person(Some("Sales"), &[]))),
            Some(7 * DAY)
        );
        assert_eq!(
            policy.for_person(Some(&person(Some("Sales"), &["board"]))),
            Some(3650 * DAY)
        );
        assert_eq!(policy.for_person(Some(&person(Some("Legal"), &["board"]))), None);
        assert_eq!(policy.shortest(), Some(7 * DAY));
    }

    #[test]
    fn longest_treats_none_as_forever() {
        assert_eq!(longest([Some(1), Some(5)]), Some(5));
        assert_eq!(longest([Some(1), None]), None);
        assert_eq!(longest([]), None);
        assert_eq!(RetentionPolicy::default().shortest(), None);
    }
}

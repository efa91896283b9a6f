//! Shared roster groups: contacts the directory puts on a user's roster.
//!
//! A [`SharedGroups`] provider lists, for an account, the contacts it shares with them. They
//! appear in the roster with `subscription='both'` and take part in presence as if both
//! subscriptions existed; they are never written to the store, so the directory stays the
//! source of truth. [`DirectorySharedGroups`] is the provider backed by any
//! [`parley_directory::Directory`] (LDAP or the static file): configured directory groups map
//! to roster group names, and the directory's change feed tells the roster module whom to push.

use async_trait::async_trait;
use parley_directory::{Directory, DirectoryChange, DirectoryError};
use parley_proto::BareJid;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use tokio::sync::broadcast::error::RecvError;

/// A contact put on a roster by the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedContact {
    pub jid: BareJid,
    pub name: Option<String>,
    pub groups: Vec<String>,
}

/// How one account's shared contacts changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactsChange {
    pub account: BareJid,
    pub before: Vec<SharedContact>,
    pub after: Vec<SharedContact>,
}

/// Decides which accounts a change is computed for (the roster module asks for online ones).
pub type AccountFilter<'a> = &'a (dyn Fn(&BareJid) -> bool + Send + Sync);

#[async_trait]
pub trait SharedGroups: Send + Sync + 'static {
    /// The shared contacts of `account` (never `account` itself). Bounded by the provider.
    async fn contacts(&self, account: &BareJid) -> Vec<SharedContact>;

    /// Whether `contact` is one of `account`'s shared contacts. Asked once per probe and per
    /// presence check, so providers answer it without listing every contact.
    async fn shares_with(&self, account: &BareJid, contact: &BareJid) -> bool {
        self.contacts(account)
            .await
            .iter()
            .any(|shared| shared.jid == *contact)
    }

    /// Waits until the shared contacts of some accounts `wanted` accepts change, and returns
    /// those changes. `None` means nothing will ever change (the default), so stop asking.
    async fn next_change(&self, _wanted: AccountFilter<'_>) -> Option<Vec<ContactsChange>> {
        None
    }
}

/// No shared groups: every roster is the user's own.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoSharedGroups;

#[async_trait]
impl SharedGroups for NoSharedGroups {
    async fn contacts(&self, _account: &BareJid) -> Vec<SharedContact> {
        Vec::new()
    }
}

/// One directory group shown as a roster group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedGroupMapping {
    /// The group's name in the directory (`[[ldap.groups]]` name, or a static user's group).
    pub directory_group: String,
    /// The roster group name users see.
    pub roster_group: String,
}

/// One consistent reading of the shared groups: members and their display names.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SharedView {
    /// Roster group name → member localparts (sorted, without duplicates).
    groups: BTreeMap<String, BTreeSet<String>>,
    /// Member localpart → display name from the directory.
    names: HashMap<String, Option<String>>,
    /// Distinct members over all groups: when it is within the contact cap, no roster is cut.
    member_total: usize,
}

impl SharedView {
    /// Builds a view from (roster group, members) pairs and display names. Members without a
    /// known person (disabled, removed) are left out.
    pub fn new(
        groups: impl IntoIterator<Item = (String, Vec<String>)>,
        names: HashMap<String, Option<String>>,
    ) -> Self {
        let mut merged: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (group, members) in groups {
            let entry = merged.entry(group).or_default();
            entry.extend(members.into_iter().filter(|member| names.contains_key(member)));
        }
        let member_total = merged.values().flatten().collect::<BTreeSet<_>>().len();
        Self {
            groups: merged,
            names,
            member_total,
        }
    }

    /// Every localpart in at least one shared group.
    pub fn members(&self) -> BTreeSet<&str> {
        self.groups
            .values()
            .flat_map(|members| members.iter().map(String::as_str))
            .collect()
    }

    /// Whether `a` and `b` (two different localparts) are in at least one group together.
    pub fn share_a_group(&self, a: &str, b: &str) -> bool {
        a != b
            && self
                .groups
                .values()
                .any(|members| members.contains(a) && members.contains(b))
    }

    /// The contacts `localpart` shares a group with, at most `max`, in JID order.
    pub fn contacts(&self, localpart: &str, domain: &BareJid, max: usize) -> Vec<SharedContact> {
        let mut contacts: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (group, members) in &self.groups {
            if !members.contains(localpart) {
                continue;
            }
            for member in members.iter().filter(|member| member.as_str() != localpart) {
                contacts.entry(member).or_default().push(group.clone());
            }
        }
        if contacts.len() > max {
            tracing::warn!(%localpart, shared = contacts.len(), max, "too many shared contacts; some are left out");
        }
        contacts
            .into_iter()
            .filter_map(|(member, groups)| {
                let node = jid::NodePart::new(member).ok()?;
                Some(SharedContact {
                    jid: BareJid::from_parts(Some(&node), domain.domain()),
                    name: self.names.get(member).cloned().flatten(),
                    groups,
                })
            })
            .take(max)
            .collect()
    }
}

/// Shared roster groups read from a [`Directory`], kept current by its change feed.
pub struct DirectorySharedGroups {
    directory: Arc<dyn Directory>,
    domain: BareJid,
    mappings: Vec<SharedGroupMapping>,
    max_contacts: usize,
    /// None until the first successful read.
    view: RwLock<Option<Arc<SharedView>>>,
    changes: tokio::sync::Mutex<tokio::sync::broadcast::Receiver<DirectoryChange>>,
}

impl std::fmt::Debug for DirectorySharedGroups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectorySharedGroups")
            .field("domain", &self.domain)
            .field("mappings", &self.mappings)
            .finish_non_exhaustive()
    }
}

impl DirectorySharedGroups {
    /// A provider for the accounts of `domain`, showing each mapped directory group, with at
    /// most `max_contacts` shared contacts per account. Subscribes to the change feed at once,
    /// so no change is missed before the roster module starts listening.
    pub fn new(
        directory: Arc<dyn Directory>,
        domain: BareJid,
        mappings: Vec<SharedGroupMapping>,
        max_contacts: usize,
    ) -> Self {
        let changes = directory.subscribe();
        Self {
            directory,
            domain,
            mappings,
            max_contacts,
            view: RwLock::new(None),
            changes: tokio::sync::Mutex::new(changes),
        }
    }

    /// Reads the mapped groups and their members' names from the directory.
    pub async fn read(&self) -> Result<SharedView, DirectoryError> {
        let mut groups = Vec::with_capacity(self.mappings.len());
        let mut names = HashMap::new();
        for mapping in &self.mappings {
            let members = self.directory.members(&mapping.directory_group).await?;
            for member in &members {
                if names.contains_key(member) {
                    continue;
                }
                if let Some(person) = self.directory.person(member).await? {
                    names.insert(member.clone(), person.display_name);
                }
            }
            groups.push((mapping.roster_group.clone(), members));
        }
        Ok(SharedView::new(groups, names))
    }

    fn current(&self) -> Option<Arc<SharedView>> {
        self.view
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn install(&self, view: SharedView) -> Arc<SharedView> {
        let view = Arc::new(view);
        *self
            .view
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(view.clone());
        view
    }

    /// The current view, read on first use. A failed first read shows no shared contacts and
    /// is retried on the next question.
    async fn view(&self) -> Arc<SharedView> {
        if let Some(view) = self.current() {
            return view;
        }
        match self.read().await {
            Ok(view) => self.install(view),
            Err(error) => {
                tracing::warn!(%error, "reading the shared roster groups failed");
                Arc::new(SharedView::default())
            }
        }
    }

    /// Whether `change` may change any shared contact.
    fn concerns_us(&self, change: &DirectoryChange) -> bool {
        match change {
            DirectoryChange::GroupChanged(group) => self.mappings.iter().any(|m| m.directory_group == *group),
            DirectoryChange::PersonChanged(_)
            | DirectoryChange::UserDisabled(_)
            | DirectoryChange::UserRemoved(_) => !self.mappings.is_empty(),
        }
    }

    /// The accounts in `wanted` whose contacts differ between `before` and `after`.
    fn differences(
        &self,
        before: &SharedView,
        after: &SharedView,
        wanted: AccountFilter<'_>,
    ) -> Vec<ContactsChange> {
        let mut affected = before.members();
        affected.extend(after.members());
        affected
            .into_iter()
            .filter_map(|localpart| {
                let node = jid::NodePart::new(localpart).ok()?;
                let account = BareJid::from_parts(Some(&node), self.domain.domain());
                if !wanted(&account) {
                    return None;
                }
                let old = before.contacts(localpart, &self.domain, self.max_contacts);
                let new = after.contacts(localpart, &self.domain, self.max_contacts);
                (old != new).then_some(ContactsChange {
                    account,
                    before: old,
                    after: new,
                })
            })
            .collect()
    }
}

#[async_trait]
impl SharedGroups for DirectorySharedGroups {
    async fn contacts(&self, account: &BareJid) -> Vec<SharedContact> {
        if self.mappings.is_empty() || account.domain() != self.domain.domain() {
            return Vec::new();
        }
        let Some(node) = account.node() else {
            return Vec::new();
        };
        self.view()
            .await
            .contacts(node.as_str(), &self.domain, self.max_contacts)
    }

    async fn shares_with(&self, account: &BareJid, contact: &BareJid) -> bool {
        let ours = |jid: &BareJid| jid.domain() == self.domain.domain();
        if self.mappings.is_empty() || !ours(account) || !ours(contact) {
            return false;
        }
        let (Some(account), Some(contact)) = (account.node(), contact.node()) else {
            return false;
        };
        let view = self.view().await;
        // Beyond the cap, a contact is left out of the roster, so it is not shared either.
        view.share_a_group(account.as_str(), contact.as_str())
            && (view.member_total <= self.max_contacts
                || view
                    .contacts(account.as_str(), &self.domain, self.max_contacts)
                    .iter()
                    .any(|shared| shared.jid.node() == Some(contact)))
    }

    async fn next_change(&self, wanted: AccountFilter<'_>) -> Option<Vec<ContactsChange>> {
        if self.mappings.is_empty() {
            return None;
        }
        let mut changes = self.changes.lock().await;
        loop {
            match changes.recv().await {
                Ok(change) if self.concerns_us(&change) => {}
                Ok(_) => continue,
                // Missed changes: re-reading everything below covers them.
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "shared roster groups missed directory changes");
                }
                Err(RecvError::Closed) => return None,
            }
            let before = self.view().await;
            let after = match self.read().await {
                Ok(after) => self.install(after),
                Err(error) => {
                    tracing::warn!(%error, "re-reading the shared roster groups failed; keeping the old ones");
                    continue;
                }
            };
            let differences = self.differences(&before, &after, wanted);
            if !differences.is_empty() {
                return Some(differences);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use parley_directory::{AuthOutcome, Person, ScramCredentials, ScramHash};
    use std::sync::Mutex;
    use tokio::sync::broadcast;

    /// A directory in memory: group → members, people with display names, a change feed.
    struct FakeDirectory {
        groups: Mutex<HashMap<String, Vec<String>>>,
        people: Mutex<HashMap<String, Option<String>>>,
        changes: broadcast::Sender<DirectoryChange>,
    }

    impl FakeDirectory {
        fn new(groups: &[(&str, &[&str])], people: &[(&str, &str)]) -> Arc<Self> {
            Arc::new(Self {
                groups: Mutex::new(
                    groups
                        .iter()
                        .map(|(g, m)| ((*g).to_owned(), m.iter().map(|m| (*m).to_owned()).collect()))
                        .collect(),
                ),
                people: Mutex::new(
                    people
                        .iter()
                        .map(|(p, n)| ((*p).to_owned(), Some((*n).to_owned())))
                        .collect(),
                ),
                changes: broadcast::channel(16).0,
            })
        }
    }

    #[async_trait]
    impl Directory for FakeDirectory {
        async fn authenticate(&self, _: &str, _: &str) -> Result<AuthOutcome, DirectoryError> {
            Ok(AuthOutcome::Rejected)
        }
        async fn scram_credentials(
            &self,
            _: &str,
            _: ScramHash,
        ) -> Result<Option<ScramCredentials>, DirectoryError> {
            Ok(None)
        }
        fn supports_scram(&self) -> bool {
            false
        }
        async fn person(&self, localpart: &str) -> Result<Option<Person>, DirectoryError> {
            Ok(self.people.lock().unwrap().get(localpart).map(|name| Person {
                localpart: localpart.to_owned(),
                display_name: name.clone(),
                ..Person::default()
            }))
        }
        async fn people(&self) -> Result<Vec<Person>, DirectoryError> {
            Ok(Vec::new())
        }
        async fn members(&self, group: &str) -> Result<Vec<String>, DirectoryError> {
            Ok(self
                .groups
                .lock()
                .unwrap()
                .get(group)
                .cloned()
                .unwrap_or_default())
        }
        fn subscribe(&self) -> broadcast::Receiver<DirectoryChange> {
            self.changes.subscribe()
        }
    }

    fn mapping(directory_group: &str, roster_group: &str) -> SharedGroupMapping {
        SharedGroupMapping {
            directory_group: directory_group.to_owned(),
            roster_group: roster_group.to_owned(),
        }
    }

    #[tokio::test]
    async fn provider_reads_mapped_groups_and_follows_the_change_feed() {
        let directory = FakeDirectory::new(
            &[("eng", &["alice", "bob"]), ("unmapped", &["alice", "erin"])],
            &[("alice", "Alice L"), ("bob", "Bob B"), ("erin", "Erin P")],
        );
        let provider = DirectorySharedGroups::new(
            directory.clone(),
            domain(),
            vec![mapping("eng", "Engineering")],
            100,
        );
        let alice = BareJid::new("alice@example.org").unwrap();
        let contacts = provider.contacts(&alice).await;
        assert_eq!(jids(&contacts), ["bob@example.org"]);
        assert_eq!(contacts[0].groups, ["Engineering"]);
        assert_eq!(contacts[0].name.as_deref(), Some("Bob B"));
        // Other domains never get shared contacts.
        assert!(
            provider
                .contacts(&BareJid::new("alice@elsewhere.org").unwrap())
                .await
                .is_empty()
        );

        // An unmapped group's change is ignored; a mapped one yields the differences.
        directory
            .changes
            .send(DirectoryChange::GroupChanged("unmapped".into()))
            .unwrap();
        directory
            .groups
            .lock()
            .unwrap()
            .insert("eng".into(), vec!["alice".into(), "bob".into(), "erin".into()]);
        directory
            .changes
            .send(DirectoryChange::GroupChanged("eng".into()))
            .unwrap();
        let changes = provider.next_change(&|_| true).await.expect("a change");
        assert_eq!(changes.len(), 3, "{changes:?}");
        assert_eq!(
            jids(&provider.contacts(&alice).await),
            ["bob@example.org", "erin@example.org"]
        );

        // A new display name is a change too.
        directory
            .people
            .lock()
            .unwrap()
            .insert("bob".into(), Some("Robert".into()));
        directory
            .changes
            .send(DirectoryChange::PersonChanged("bob".into()))
            .unwrap();
        let changes = provider
            .next_change(&|jid| jid == &alice)
            .await
            .expect("a change");
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].after[0].name.as_deref(), Some("Robert"));
        assert_eq!(changes[0].before[0].name.as_deref(), Some("Bob B"));
    }

    #[tokio::test]
    async fn without_mappings_nothing_is_shared_or_awaited() {
        let directory = FakeDirectory::new(&[("eng", &["alice", "bob"])], &[("alice", "A"), ("bob", "B")]);
        let provider = DirectorySharedGroups::new(directory, domain(), Vec::new(), 100);
        assert!(
            provider
                .contacts(&BareJid::new("alice@example.org").unwrap())
                .await
                .is_empty()
        );
        assert!(provider.next_change(&|_| true).await.is_none());
        assert!(NoSharedGroups.next_change(&|_| true).await.is_none());
    }

    fn domain() -> BareJid {
        BareJid::new("example.org").unwrap()
    }

    fn view(groups: &[(&str, &[&str])], people: &[(&str, Option<&str>)]) -> SharedView {
        SharedView::new(
            groups.iter().map(|(group, members)| {
                (
                    (*group).to_owned(),
                    members.iter().map(|m| (*m).to_owned()).collect(),
                )
            }),
            people
                .iter()
                .map(|(who, name)| ((*who).to_owned(), name.map(str::to_owned)))
                .collect(),
        )
    }

    fn jids(contacts: &[SharedContact]) -> Vec<String> {
        contacts.iter().map(|c| c.jid.to_string()).collect()
    }

    #[test]
    fn members_see_each_other_with_names_and_every_shared_group() {
        let view = view(
            &[
                ("Engineering", &["alice", "bob"]),
                ("Staff", &["alice", "bob", "dave"]),
            ],
            &[("alice", Some("Alice L")), ("bob", Some("Bob B")), ("dave", None)],
        );
        let alice = view.contacts("alice", &domain(), 100);
        assert_eq!(jids(&alice), ["bob@example.org", "dave@example.org"]);
        assert_eq!(alice[0].name.as_deref(), Some("Bob B"));
        assert_eq!(alice[0].groups, ["Engineering", "Staff"]);
        assert_eq!(alice[1].groups, ["Staff"]);
        assert_eq!(alice[1].name, None);
        let dave = view.contacts("dave", &domain(), 100);
        assert_eq!(jids(&dave), ["alice@example.org", "bob@example.org"]);
    }

    #[test]
    fn outsiders_unknown_people_and_bad_localparts_get_nothing() {
        let view = view(
            &[("Engineering", &["alice", "ghost", "bad@part"])],
            &[("alice", None), ("erin", None), ("bad@part", None)],
        );
        assert!(view.contacts("erin", &domain(), 100).is_empty());
        // ghost has no person (disabled); "bad@part" is no valid localpart.
        assert!(view.contacts("alice", &domain(), 100).is_empty());
        assert!(!view.members().contains("ghost"));
    }

    #[test]
    fn contacts_are_bounded() {
        let members: Vec<String> = (0..50).map(|n| format!("user{n:02}")).collect();
        let view = SharedView::new(
            [("Big".to_owned(), members.clone())],
            members.iter().map(|m| (m.clone(), None)).collect(),
        );
        let contacts = view.contacts("user00", &domain(), 10);
        assert_eq!(contacts.len(), 10);
        assert_eq!(contacts[0].jid.to_string(), "user01@example.org");
    }

    #[tokio::test]
    async fn shares_with_agrees_with_the_listed_contacts_even_past_the_cap() {
        let members: Vec<String> = (0..20).map(|n| format!("user{n:02}")).collect();
        let member_refs: Vec<&str> = members.iter().map(String::as_str).collect();
        let people: Vec<(&str, &str)> = member_refs.iter().map(|m| (*m, "Name")).collect();
        let directory = FakeDirectory::new(&[("big", &member_refs), ("other", &["zed"])], &people);
        let jid = |local: &str| BareJid::new(&format!("{local}@example.org")).unwrap();
        for cap in [100, 5] {
            let provider =
                DirectorySharedGroups::new(directory.clone(), domain(), vec![mapping("big", "Big")], cap);
            let listed = provider.contacts(&jid("user00")).await;
            for member in &members {
                assert_eq!(
                    provider.shares_with(&jid("user00"), &jid(member)).await,
                    listed.iter().any(|c| c.jid == jid(member)),
                    "cap {cap}, {member}"
                );
            }
            assert!(!provider.shares_with(&jid("user00"), &jid("zed")).await);
            let foreign = BareJid::new("user01@elsewhere.org").unwrap();
            assert!(!provider.shares_with(&jid("user00"), &foreign).await);
        }
    }

    #[test]
    fn differences_name_only_wanted_accounts_whose_contacts_changed() {
        let provider = DirectorySharedGroups::new(FakeDirectory::new(&[], &[]), domain(), Vec::new(), 100);
        let before = view(
            &[("Eng", &["alice", "bob"])],
            &[("alice", None), ("bob", None), ("erin", None), ("zed", None)],
        );
        let after = view(
            &[("Eng", &["alice", "bob", "erin"])],
            &[("alice", None), ("bob", None), ("erin", None), ("zed", None)],
        );
        let all = provider.differences(&before, &after, &|_| true);
        assert_eq!(
            all.iter().map(|c| c.account.to_string()).collect::<Vec<_>>(),
            ["alice@example.org", "bob@example.org", "erin@example.org"]
        );
        assert!(all[2].before.is_empty());
        assert_eq!(jids(&all[2].after), ["alice@example.org", "bob@example.org"]);
        let online_only = provider.differences(&before, &after, &|jid| jid.to_string().starts_with("bob"));
        assert_eq!(online_only.len(), 1);
        assert!(provider.differences(&before, &before, &|_| true).is_empty());
    }
}

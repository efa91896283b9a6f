//! [`LdapDirectory`]: the corporate directory as Parley's source of truth (OpenLDAP, 389-DS,
//! Active Directory), read-only.
//!
//! - **Login** searches the user's entry with the service account (the configured user filter,
//!   which carries the "enabled" condition, AND the localpart attribute, escaped), then binds as
//!   that entry with the given password on a connection used only for user binds (reused by the
//!   next bind, never for searches). No password or result is cached, so a changed
//!   password or a disabled account takes effect at the next login. No server reachable gives
//!   [`DirectoryError::Unavailable`] (clients see `temporary-auth-failure`).
//! - **People and groups** come from a [`Snapshot`] read in full at start, re-read when the
//!   change poll sees an entry modified (`modifyTimestamp`, refined by `entryCSN`/`uSNChanged`)
//!   or the set of entries matching the user filter change (deleted, moved, disabled), and every
//!   `full_sync_interval`. Comparing snapshots
//!   yields the change feed: `UserDisabled` (entry left the filter), `UserRemoved` (entry gone),
//!   `PersonChanged`, `GroupChanged`. A failed read changes nothing, so an outage never ends
//!   sessions.
//! - **Push**: with `syncrepl = "auto"` and a server whose root DSE lists the Sync Request
//!   control (OpenLDAP with `syncprov`), RFC 4533 refreshAndPersist searches (the users, each
//!   member-listing group) on a dedicated connection wake the same re-read-and-diff within about
//!   200 ms of a change (see [`syncrepl`]); polling then runs only every 10 × `poll_interval` as
//!   a safety net. If a sync search ends or fails, polling resumes its normal pace at once and
//!   syncrepl is retried with backoff. Active Directory has no syncrepl and is polled.
//! - **Malformed input**: ldap3 0.12 parses with `expect`/`panic!`. Sync Info messages are
//!   parsed in our task under `catch_unwind` (a bad one ends the sync session: fall back to
//!   polling). Message framing and controls are parsed in ldap3's connection task, which tokio
//!   runs as its own task: a panic there ends that one connection (its searches fail, the
//!   sync session falls back to polling), never the process. This relies on unwinding panics,
//!   so no profile may set `panic = "abort"`.

mod dn;
mod filter;
mod mapping;
mod pool;
mod syncrepl;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use ldap3::Scope;
use parley_config::{LdapConfig, LdapScope, LdapSyncrepl};
use tokio::sync::broadcast;

pub use dn::normalize_dn;
pub use filter::{changed_since_filter, escape_filter_value, user_login_filter};
pub use mapping::{MappingProblem, RawEntry, Snapshot};

use crate::{
    AuthOutcome, Directory, DirectoryChange, DirectoryError, MAX_PASSWORD_BYTES, Person, Profile,
    ScramCredentials, ScramHash, normalize_localpart,
};
use pool::{Failure, Pool};
use syncrepl::Feed;
pub use syncrepl::SYNC_REQUEST_OID;

/// Quiet time after a pushed change before re-reading, so a burst of changes costs one read.
const PUSH_DEBOUNCE: Duration = Duration::from_millis(200);

/// With syncrepl active, polling runs this many times less often, as a safety net.
const SAFETY_POLL_FACTOR: u32 = 10;

/// Attributes that tell whether an entry changed: the timestamp (seconds) plus the finer
/// change counters of OpenLDAP (`entryCSN`) and Active Directory (`uSNChanged`).
const CHANGE_ATTRIBUTES: [&str; 3] = ["modifyTimestamp", "entryCSN", "uSNChanged"];

/// Changes buffered for slow subscribers before they see `Lagged`.
const CHANGE_FEED_CAPACITY: usize = 1024;

/// Where the change poll stands.
#[derive(Default)]
struct SyncState {
    /// Newest `modifyTimestamp` seen in the last full read; None until one succeeded.
    since: Option<String>,
    /// What the change query returned right after that read.
    marker: Vec<String>,
}

struct Inner {
    config: LdapConfig,
    pool: Pool,
    snapshot: RwLock<Arc<Snapshot>>,
    sync: tokio::sync::Mutex<SyncState>,
    changes: broadcast::Sender<DirectoryChange>,
    /// Shared with the syncrepl task: whether it is active, and its change notifications.
    feed: Arc<Feed>,
}

/// The LDAP directory backend. Cheap to clone; background tasks stop when the last clone drops.
#[derive(Clone)]
pub struct LdapDirectory {
    inner: Arc<Inner>,
}

/// A user as `parley directory check --user` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectoryUser {
    pub dn: String,
    pub person: Person,
    /// Every attribute read for the user (mapped ones and those groups need), by name.
    pub attributes: BTreeMap<String, Vec<String>>,
}

impl LdapDirectory {
    /// Prepares the connections (failing only on a bad TLS setup, such as an unreadable CA
    /// file) without contacting any server. [`LdapDirectory::start`] is what the server uses.
    pub fn new(config: &LdapConfig) -> Result<Self, DirectoryError> {
        let (changes, _) = broadcast::channel(CHANGE_FEED_CAPACITY);
        Ok(Self {
            inner: Arc::new(Inner {
                config: config.clone(),
                pool: Pool::new(config)?,
                snapshot: RwLock::new(Arc::new(Snapshot::default())),
                sync: tokio::sync::Mutex::new(SyncState::default()),
                changes,
                feed: Arc::new(Feed::default()),
            }),
        })
    }

    /// Reads the directory once and starts the change poll and the health check. A directory
    /// that can't be reached is logged, not fatal: Parley starts, logins get
    /// `temporary-auth-failure`, and the first successful poll fills in the people.
    pub async fn start(config: &LdapConfig) -> Result<Self, DirectoryError> {
        let directory = Self::new(config)?;
        if let Err(error) = directory.sync().await {
            tracing::error!(%error, "reading the LDAP directory failed; retrying in the background");
        }
        directory.spawn_background_tasks();
        Ok(directory)
    }

    fn spawn_background_tasks(&self) {
        let poll_every = self.inner.config.poll_interval.get();
        let full_every = self.inner.config.full_sync_interval.get();
        let feed = self.inner.feed.clone();
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(poll_loop(weak, poll_every, full_every, feed.clone()));
        if self.inner.config.syncrepl == LdapSyncrepl::Auto {
            let weak = Arc::downgrade(&self.inner);
            tokio::spawn(syncrepl::syncrepl_loop(weak, feed));
        }
        let health_every = self.inner.config.health_check_interval.get();
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(health_every).await;
                let Some(inner) = weak.upgrade() else { return };
                inner.pool.health_check().await;
            }
        });
    }

    /// Reads every user and group now, replaces the snapshot and emits the differences.
    pub async fn sync(&self) -> Result<Arc<Snapshot>, DirectoryError> {
        self.inner.full_sync().await
    }

    /// The people, groups and mapping problems of the last successful read.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.current()
    }

    /// Whether changes are currently pushed by RFC 4533 syncrepl (false: polling).
    pub fn syncrepl_active(&self) -> bool {
        self.inner.feed.is_active()
    }

    /// Each configured server and whether it is currently considered up.
    /// Connections kept open for the next user bind (diagnostics).
    pub fn idle_bind_connections(&self) -> usize {
        self.inner.pool.idle_bind_connections()
    }

    pub fn server_status(&self) -> Vec<(String, bool)> {
        self.inner.pool.status()
    }

    /// Looks a user up in the directory now (not in the snapshot), with the raw attributes.
    pub async fn lookup(&self, localpart: &str) -> Result<Option<DirectoryUser>, DirectoryError> {
        let Ok(localpart) = normalize_localpart(localpart) else {
            return Ok(None);
        };
        let inner = &self.inner;
        let Some((entry, _)) = inner.find_login_entry(&localpart).await? else {
            return Ok(None);
        };
        let mut person = mapping::person_of(&entry, localpart.clone(), &inner.config);
        if let Some(known) = inner.current().people.get(&localpart) {
            person.groups.clone_from(&known.groups);
            person.admin = known.admin;
        }
        Ok(Some(DirectoryUser {
            dn: entry.dn,
            person,
            attributes: entry.attrs.into_iter().collect(),
        }))
    }
}

/// Re-reads the directory when syncrepl reports a change (debounced), and otherwise polls
/// every `poll_every` (every `SAFETY_POLL_FACTOR × poll_every` while syncrepl is active), with a
/// full read every `full_every`.
async fn poll_loop(weak: Weak<Inner>, poll_every: Duration, full_every: Duration, feed: Arc<Feed>) {
    let mut last_full = Instant::now();
    let mut last_poll = Instant::now();
    loop {
        let pushed = tokio::select! {
            () = tokio::time::sleep(poll_every) => false,
            () = feed.changed.notified() => true,
        };
        if pushed {
            tokio::time::sleep(PUSH_DEBOUNCE).await;
        }
        let Some(inner) = weak.upgrade() else { return };
        let full_due = last_full.elapsed() >= full_every;
        let result = if pushed || full_due {
            inner.full_sync().await.map(|_| ())
        } else if feed.is_active() && last_poll.elapsed() < poll_every * SAFETY_POLL_FACTOR {
            continue;
        } else {
            last_poll = Instant::now();
            inner.poll().await
        };
        match result {
            Ok(()) if pushed || full_due => last_full = Instant::now(),
            Ok(()) => {}
            Err(error) => tracing::debug!(%error, "LDAP change poll failed; the snapshot is kept"),
        }
    }
}

fn scope_of(scope: LdapScope) -> Scope {
    match scope {
        LdapScope::Sub => Scope::Subtree,
        LdapScope::One => Scope::OneLevel,
    }
}

fn with_change_attributes(mut attributes: Vec<String>) -> Vec<String> {
    attributes.extend(CHANGE_ATTRIBUTES.iter().map(|name| (*name).to_owned()));
    attributes
}

/// `dn|modifyTimestamp|entryCSN|uSNChanged`, the change fingerprint of one entry.
fn change_mark(entry: &RawEntry) -> String {
    let mut mark = entry.dn.to_ascii_lowercase();
    for attribute in CHANGE_ATTRIBUTES {
        mark.push('|');
        mark.push_str(entry.first(attribute).unwrap_or(""));
    }
    mark
}

impl Inner {
    fn current(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The one enabled entry for `localpart` and the server that answered, or None.
    async fn find_login_entry(&self, localpart: &str) -> Result<Option<(RawEntry, usize)>, DirectoryError> {
        self.find_entry(localpart, mapping::user_attributes(&self.config))
            .await
    }

    /// The one enabled entry for `localpart`, with `attributes`, and the server that answered.
    async fn find_entry(
        &self,
        localpart: &str,
        mut attributes: Vec<String>,
    ) -> Result<Option<(RawEntry, usize)>, DirectoryError> {
        let config = &self.config;
        let filter = user_login_filter(config, localpart);
        // The localpart attribute is needed to check the mapping below.
        if !attributes
            .iter()
            .any(|a| a.eq_ignore_ascii_case(&config.localpart_attribute))
        {
            attributes.push(config.localpart_attribute.clone());
        }
        let ((found, dn_count), server) = self
            .pool
            .with_service(|ldap| {
                let (filter, attributes) = (&filter, &attributes);
                async move {
                    match self
                        .pool
                        .search(
                            ldap,
                            &config.base_dn,
                            scope_of(config.scope),
                            filter,
                            attributes,
                            2,
                        )
                        .await
                    {
                        Ok(mut entries) => {
                            let count = entries.len();
                            Ok((if count == 1 { entries.pop() } else { None }, count))
                        }
                        // More than one match is an answer, not a server failure.
                        Err(Failure::Answer { code: 4, .. }) => Ok((None, 2)),
                        Err(other) => Err(other),
                    }
                }
            })
            .await?;
        if dn_count > 1 {
            tracing::warn!(%localpart, "several directory entries match this login; refusing it");
        }
        let Some(entry) = found else { return Ok(None) };
        // The directory's matching rules are not PRECIS: check that the entry really maps here.
        match mapping::localpart_of(&entry, config) {
            Ok(mapped) if mapped == localpart => Ok(Some((entry, server))),
            _ => Ok(None),
        }
    }

    /// The entries the user filter matches under the base, with `attributes`.
    async fn search_users(&self, attributes: &[String]) -> Result<Vec<RawEntry>, DirectoryError> {
        let config = &self.config;
        let (users, _) = self
            .pool
            .with_service(|ldap| {
                self.pool.search(
                    ldap,
                    &config.base_dn,
                    scope_of(config.scope),
                    config.user_filter.trim(),
                    attributes,
                    config.max_users,
                )
            })
            .await?;
        Ok(users)
    }

    /// Reads the users, then each configured group, into a snapshot, with the newest
    /// modification time seen.
    async fn read_all(&self) -> Result<(Snapshot, String), DirectoryError> {
        let config = &self.config;
        let users = self
            .search_users(&with_change_attributes(mapping::user_attributes(config)))
            .await?;
        let mut groups = Vec::with_capacity(config.groups.len());
        let mut newest = String::new();
        for group in &config.groups {
            let Some(member_attribute) = mapping::group_member_attribute(group) else {
                groups.push((group.clone(), Ok(None)));
                continue;
            };
            let attributes = with_change_attributes(vec![member_attribute.to_owned()]);
            let (entry, _) = self
                .pool
                .with_service(|ldap| {
                    let attributes = &attributes;
                    async move {
                        match self
                            .pool
                            .search(ldap, &group.dn, Scope::Base, "(objectClass=*)", attributes, 1)
                            .await
                        {
                            Ok(mut entries) => Ok(Ok(entries.pop())),
                            Err(Failure::Answer { code, text }) => {
                                Ok(Err(format!("LDAP error {code}: {text}")))
                            }
                            Err(failure) => Err(failure),
                        }
                    }
                })
                .await?;
            if let Ok(Some(entry)) = &entry {
                newest = newest.max(entry.first("modifyTimestamp").unwrap_or("").to_owned());
            }
            groups.push((group.clone(), entry));
        }
        for user in &users {
            if let Some(stamp) = user.first("modifyTimestamp")
                && stamp > newest.as_str()
            {
                newest = stamp.to_owned();
            }
        }
        Ok((mapping::build_snapshot(&users, &groups, config), newest))
    }

    /// The change fingerprints of entries modified at or after `since`, under the user base
    /// and for each group entry.
    async fn change_marker(&self, since: &str) -> Result<Vec<String>, DirectoryError> {
        let config = &self.config;
        let attributes: Vec<String> = CHANGE_ATTRIBUTES.iter().map(|name| (*name).to_owned()).collect();
        let filter = changed_since_filter(since);
        let (entries, _) = self
            .pool
            .with_service(|ldap| {
                self.pool.search(
                    ldap,
                    &config.base_dn,
                    Scope::Subtree,
                    &filter,
                    &attributes,
                    config.max_users,
                )
            })
            .await?;
        let mut marker: Vec<String> = entries.iter().map(change_mark).collect();
        // The modification search can't see an entry that is gone: deleted, moved out of the
        // base, or no longer matching the filter (disabled). The names of the entries the user
        // filter matches (no attributes, `1.1`) can, so such an account is noticed within one
        // poll, not at the next full read.
        let matching = self.search_users(&["1.1".to_owned()]).await?;
        marker.extend(
            matching
                .iter()
                .map(|entry| format!("user:{}", entry.dn.to_ascii_lowercase())),
        );
        for group in &config.groups {
            if mapping::group_member_attribute(group).is_none() {
                continue;
            }
            let (entries, _) = self
                .pool
                .with_service(|ldap| {
                    self.pool
                        .search(ldap, &group.dn, Scope::Base, "(objectClass=*)", &attributes, 1)
                })
                .await?;
            marker.extend(entries.iter().map(change_mark));
        }
        marker.sort();
        Ok(marker)
    }

    /// Asks whether anything changed since the last full read; if so, reads everything again.
    async fn poll(&self) -> Result<(), DirectoryError> {
        let since = self.sync.lock().await.since.clone();
        let Some(since) = since else {
            return self.full_sync().await.map(|_| ());
        };
        let marker = self.change_marker(&since).await?;
        if marker != self.sync.lock().await.marker {
            self.full_sync().await?;
        }
        Ok(())
    }

    async fn full_sync(&self) -> Result<Arc<Snapshot>, DirectoryError> {
        let mut state = self.sync.lock().await;
        let (snapshot, newest) = self.read_all().await?;
        let since = if newest.is_empty() {
            "19700101000000Z".to_owned()
        } else {
            newest
        };
        let marker = self.change_marker(&since).await?;
        let snapshot = Arc::new(snapshot);
        let first = state.since.is_none();
        let old = std::mem::replace(
            &mut *self
                .snapshot
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            snapshot.clone(),
        );
        state.since = Some(since);
        state.marker = marker;
        drop(state);
        for problem in snapshot
            .problems
            .iter()
            .filter(|p| first || !old.problems.contains(p))
        {
            tracing::warn!(%problem, "LDAP entry not mapped");
        }
        if first {
            tracing::info!(
                users = snapshot.people.len(),
                groups = snapshot.groups.len(),
                problems = snapshot.problems.len(),
                "LDAP directory read"
            );
        } else {
            self.emit_changes(&old, &snapshot).await;
        }
        Ok(snapshot)
    }

    async fn emit_changes(&self, old: &Snapshot, new: &Snapshot) {
        let (vanished, changed, groups) = mapping::diff(old, new);
        for localpart in vanished {
            let exists = match old.dns.get(&localpart) {
                Some(dn) => self.entry_exists(dn).await,
                None => true,
            };
            let change = if exists {
                DirectoryChange::UserDisabled(localpart)
            } else {
                DirectoryChange::UserRemoved(localpart)
            };
            tracing::info!(?change, "LDAP account change");
            let _ = self.changes.send(change);
        }
        for localpart in changed {
            let _ = self.changes.send(DirectoryChange::PersonChanged(localpart));
        }
        for group in groups {
            let _ = self.changes.send(DirectoryChange::GroupChanged(group));
        }
    }

    /// Whether the entry still exists (it left the filter) or was deleted. Unknown counts as
    /// existing: both end the sessions, "disabled" is the safer description.
    async fn entry_exists(&self, dn: &str) -> bool {
        let attributes = vec!["1.1".to_owned()];
        let found = self
            .pool
            .with_service(|ldap| {
                self.pool
                    .search(ldap, dn, Scope::Base, "(objectClass=*)", &attributes, 1)
            })
            .await;
        !matches!(found, Ok((entries, _)) if entries.is_empty())
    }
}

#[async_trait::async_trait]
impl Directory for LdapDirectory {
    async fn authenticate(&self, localpart: &str, password: &str) -> Result<AuthOutcome, DirectoryError> {
        let Ok(localpart) = normalize_localpart(localpart) else {
            return Ok(AuthOutcome::Rejected);
        };
        // An empty password would be an unauthenticated bind, which LDAP servers accept
        // (RFC 4513 §5.1.2): never let one through.
        if password.is_empty() || password.len() > MAX_PASSWORD_BYTES || password.contains('\0') {
            return Ok(AuthOutcome::Rejected);
        }
        let Some((entry, server)) = self.inner.find_login_entry(&localpart).await? else {
            return Ok(AuthOutcome::Rejected);
        };
        if self.inner.pool.user_bind(server, &entry.dn, password).await? {
            Ok(AuthOutcome::Accepted)
        } else {
            Ok(AuthOutcome::Rejected)
        }
    }

    async fn scram_credentials(
        &self,
        _localpart: &str,
        _hash: ScramHash,
    ) -> Result<Option<ScramCredentials>, DirectoryError> {
        Ok(None)
    }

    fn supports_scram(&self) -> bool {
        false
    }

    async fn person(&self, localpart: &str) -> Result<Option<Person>, DirectoryError> {
        let Ok(localpart) = normalize_localpart(localpart) else {
            return Ok(None);
        };
        Ok(self.inner.current().people.get(&localpart).cloned())
    }

    async fn people(&self) -> Result<Vec<Person>, DirectoryError> {
        Ok(self.inner.current().people.values().cloned().collect())
    }

    async fn members(&self, group: &str) -> Result<Vec<String>, DirectoryError> {
        Ok(self
            .inner
            .current()
            .groups
            .get(group)
            .cloned()
            .unwrap_or_default())
    }

    fn subscribe(&self) -> broadcast::Receiver<DirectoryChange> {
        self.inner.changes.subscribe()
    }

    /// Read from the directory now (photos are not kept in the snapshot); only for people in
    /// the snapshot, so a disabled or unmappable entry has no profile.
    async fn profile(&self, localpart: &str) -> Result<Option<Profile>, DirectoryError> {
        let Ok(localpart) = normalize_localpart(localpart) else {
            return Ok(None);
        };
        if !self.inner.current().people.contains_key(&localpart) {
            return Ok(None);
        }
        let config = &self.inner.config;
        let attributes: Vec<String> = [
            &config.given_name_attribute,
            &config.family_name_attribute,
            &config.nickname_attribute,
            &config.photo_attribute,
        ]
        .into_iter()
        .filter(|name| !name.is_empty())
        .cloned()
        .collect();
        let Some((entry, _)) = self.inner.find_entry(&localpart, attributes).await? else {
            return Ok(None);
        };
        Ok(Some(mapping::profile_of(&entry, config)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unreachable_config() -> LdapConfig {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        LdapConfig {
            servers: vec![format!("ldap://127.0.0.1:{port}")],
            base_dn: "dc=example,dc=com".into(),
            ..LdapConfig::default()
        }
    }

    #[tokio::test]
    async fn an_unreachable_directory_is_unavailable_not_a_rejection() {
        let directory = LdapDirectory::new(&unreachable_config()).unwrap();
        let outcome = directory.authenticate("alice", "secret").await;
        assert!(
            matches!(outcome, Err(DirectoryError::Unavailable(_))),
            "{outcome:?}"
        );
        assert!(matches!(
            directory.sync().await,
            Err(DirectoryError::Unavailable(_))
        ));
        assert_eq!(directory.person("alice").await.unwrap(), None);
        assert!(!directory.supports_scram());
    }

    #[tokio::test]
    async fn empty_or_invalid_credentials_never_reach_the_server() {
        // Refused before any connection, so even an unreachable directory says Rejected.
        let directory = LdapDirectory::new(&unreachable_config()).unwrap();
        for (user, password) in [("alice", ""), ("alice", "a\0b"), ("", "x"), ("a/b", "x")] {
            assert_eq!(
                directory.authenticate(user, password).await.unwrap(),
                AuthOutcome::Rejected,
                "{user:?}/{password:?}"
            );
        }
        let huge = "x".repeat(MAX_PASSWORD_BYTES + 1);
        assert_eq!(
            directory.authenticate("alice", &huge).await.unwrap(),
            AuthOutcome::Rejected
        );
    }

    #[test]
    fn change_marks_include_the_fine_counters() {
        let entry = RawEntry::new(
            "uid=A,dc=x",
            [
                ("modifyTimestamp".to_owned(), vec!["20240101000000Z".to_owned()]),
                (
                    "entryCSN".to_owned(),
                    vec!["20240101000000.123456Z#000000#000#000000".to_owned()],
                ),
            ],
        );
        assert_eq!(
            change_mark(&entry),
            "uid=a,dc=x|20240101000000Z|20240101000000.123456Z#000000#000#000000|"
        );
    }
}

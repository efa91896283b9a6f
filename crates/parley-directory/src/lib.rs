//! parley-directory: the source of truth for who exists.
//!
//! Owns the [`Directory`] trait (authentication, SCRAM credentials, people, groups, a change feed), the
//! PRECIS normalisation of localparts and passwords, [`ScramCredentials`], and [`StaticDirectory`], the
//! embedded default backed by one TOML file with argon2id hashes and SCRAM keys, and [`LdapDirectory`],
//! the corporate directory over LDAP (search-then-bind logins, attribute mapping, failover, change feed).
//!
//! It must not touch XMPP streams or the storage crate (LDAP connections are its only sockets), and
//! never stores or reads a password or a salted password: only argon2id PHC strings and SCRAM
//! StoredKey/ServerKey (LDAP passwords are checked by a bind, never read). The SASL protocol itself
//! lives in `parley-c2s`; this crate only answers its questions.

pub mod ldap;
mod normalize;
mod scram;
mod static_dir;

use std::path::PathBuf;

pub use ldap::{DirectoryUser, LdapDirectory, MappingProblem, Snapshot};
pub use normalize::{MAX_LOCALPART_BYTES, MAX_PASSWORD_BYTES, normalize_localpart, normalize_password};
pub use scram::{ScramCredentials, ScramHash, constant_time_eq};
pub use static_dir::{
    DEFAULT_PATH, MAX_FILE_BYTES, PersonDetails, RELOAD_CHECK_INTERVAL, SCRAM_ITERATIONS, SCRAM_SALT_LEN,
    StaticDirectory,
};

/// One account as the rest of the server sees it (vCard fields, shared-roster groups, admin flag).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Person {
    pub localpart: String,
    pub display_name: Option<String>,
    pub email: Option<String>,
    pub department: Option<String>,
    pub title: Option<String>,
    pub phone: Option<String>,
    pub groups: Vec<String>,
    pub admin: bool,
}

/// What the directory knows about a person beyond [`Person`], for vCards (XEP-0054): read
/// on demand, as a photo is too big to keep for everyone.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Profile {
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub nickname: Option<String>,
    pub photo: Option<Photo>,
}

/// A picture of a person, with its media type (`image/jpeg` for LDAP's `jpegPhoto`).
#[derive(Clone, PartialEq, Eq)]
pub struct Photo {
    pub media_type: String,
    pub data: Vec<u8>,
}

impl std::fmt::Debug for Photo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Photo({}, {} bytes)", self.media_type, self.data.len())
    }
}

/// Result of a password check. Unknown user and wrong password are deliberately the same value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthOutcome {
    Accepted,
    Rejected,
}

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// The backend cannot answer right now; SASL answers `temporary-auth-failure`.
    #[error("directory unavailable: {0}")]
    Unavailable(String),
    #[error("invalid localpart: {0}")]
    InvalidLocalpart(String),
    #[error("invalid password: {0}")]
    InvalidPassword(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The backing file exists but its content is not a valid directory.
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("user {0:?} already exists")]
    UserExists(String),
    #[error("no such user {0:?}")]
    NoSuchUser(String),
    /// A bug or a resource failure on our side (a worker thread died, hashing failed).
    #[error("internal directory error: {0}")]
    Internal(String),
}

/// Something changed in the directory; sessions and rosters react to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirectoryChange {
    /// The account still exists but may no longer log in: end its sessions.
    UserDisabled(String),
    /// The account is gone: end its sessions.
    UserRemoved(String),
    /// The membership of this group changed.
    GroupChanged(String),
    /// The person's details (vCard fields, admin flag) changed.
    PersonChanged(String),
}

/// A source of accounts. Localparts given to these methods are normalised by the implementation
/// (normalisation is idempotent, so callers may pass already-normalised values).
#[async_trait::async_trait]
pub trait Directory: Send + Sync + 'static {
    /// PLAIN. Unknown user and wrong password are both Rejected (do comparable work for both, so
    /// timing does not reveal which).
    async fn authenticate(&self, localpart: &str, password: &str) -> Result<AuthOutcome, DirectoryError>;
    /// SCRAM credentials, or None when the account does not exist.
    async fn scram_credentials(
        &self,
        localpart: &str,
        hash: ScramHash,
    ) -> Result<Option<ScramCredentials>, DirectoryError>;
    /// False for backends that cannot hold SCRAM credentials (LDAP): then only PLAIN is offered.
    fn supports_scram(&self) -> bool;
    async fn person(&self, localpart: &str) -> Result<Option<Person>, DirectoryError>;
    async fn people(&self) -> Result<Vec<Person>, DirectoryError>;
    /// Localparts of the members of `group`, sorted.
    async fn members(&self, group: &str) -> Result<Vec<String>, DirectoryError>;
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<DirectoryChange>;
    /// The profile of an existing, enabled person, or None. Backends without more than
    /// [`Person`] answer an empty profile for everyone they know.
    async fn profile(&self, localpart: &str) -> Result<Option<Profile>, DirectoryError> {
        Ok(self.person(localpart).await?.map(|_| Profile::default()))
    }
    /// Whether the person is a member of the configured admin group.
    async fn is_admin(&self, localpart: &str) -> Result<bool, DirectoryError> {
        Ok(self.person(localpart).await?.is_some_and(|person| person.admin))
    }
}

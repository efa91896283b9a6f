//! `parley-config`: the typed configuration of the Parley server.
//!
//! Owns the TOML schema (one serde struct per section, `deny_unknown_fields`, defaults that
//! match `config/parley.example.toml`), the value types admins write (`ByteSize`, `Duration`,
//! `Secret` by `env:`/`file:` reference), and the loader that reports every error with its
//! key path plus warnings for risky settings (see [`load`] for exactly what is reported).
//!
//! Must not touch: sockets, LDAP, storage or any other Parley crate. Reading the configuration
//! file and secret files or environment variables named by it is the only I/O here.

mod duration;
pub mod load;
mod model;
mod secret;
mod size;
mod validate;

pub use duration::{Duration, DurationError};
pub use load::{ConfigError, ConfigErrorKind, ConfigErrors, ConfigWarning, Loaded, MAX_CONFIG_BYTES};
pub use model::{
    AdminHttpConfig, ArchiveConfig, C2sConfig, Config, DirectoryBackend, DirectoryConfig,
    KNOWN_SASL_MECHANISMS, LdapConfig, LdapGroupConfig, LdapMemberAttribute, LdapScope, LdapSyncrepl,
    LogConfig, LogFormat, OfflineConfig, PrivateStorageConfig, RosterConfig, ServerConfig, SharedGroupConfig,
    StorageBackend, StorageConfig, TlsConfig, VcardConfig,
};
pub use secret::{MAX_SECRET_FILE_BYTES, Secret, SecretError, SecretSource};
pub use size::{ByteSize, ByteSizeError};
pub use validate::{MAX_DEPTH_LIMIT, MAX_STANZA_SIZE_LIMIT};

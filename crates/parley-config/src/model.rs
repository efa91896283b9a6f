//! The typed configuration of the whole server. Every section is a struct with
//! `#[serde(default, deny_unknown_fields)]` whose `Default` is the documented default, so an
//! empty file is a working development server. `config/parley.example.toml` shows the same
//! values; a test keeps the two equal.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{ByteSize, Duration, Secret};

/// The whole server configuration, one field per TOML section.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[server]`: identity and data location.
    pub server: ServerConfig,
    /// `[tls]`: certificate and key.
    pub tls: TlsConfig,
    /// `[c2s]`: client listeners, timeouts and per-session limits.
    pub c2s: C2sConfig,
    /// `[storage]`: where messages, rosters and archives are kept.
    pub storage: StorageConfig,
    /// `[directory]`: where users, groups and admins come from.
    pub directory: DirectoryConfig,
    /// `[ldap]`: the LDAP directory, used when `directory.backend = "ldap"`.
    pub ldap: LdapConfig,
    /// `[roster]`: contact list limits.
    pub roster: RosterConfig,
    /// `[offline]`: messages kept for users who are not online.
    pub offline: OfflineConfig,
    /// `[vcard]`: user profile limits.
    pub vcard: VcardConfig,
    /// `[private_storage]`: XEP-0049 private XML storage limits.
    pub private_storage: PrivateStorageConfig,
    /// `[archive]`: the compliance archive: checkpoints and retention.
    pub archive: ArchiveConfig,
    /// `[admin_http]`: metrics and health endpoint.
    pub admin_http: AdminHttpConfig,
    /// `[log]`: log filter and format.
    pub log: LogConfig,
}

/// Section names in file order, for messages and the loader.
pub(crate) const SECTIONS: &[&str] = &[
    "server",
    "tls",
    "c2s",
    "storage",
    "directory",
    "ldap",
    "roster",
    "offline",
    "vcard",
    "private_storage",
    "archive",
    "admin_http",
    "log",
];

impl Config {
    /// The redb file: `storage.path`, or `<data_dir>/parley.redb`.
    pub fn storage_path(&self) -> PathBuf {
        self.storage
            .path
            .clone()
            .unwrap_or_else(|| self.server.data_dir.join("parley.redb"))
    }

    /// The static user file: `directory.static_file`, or `<data_dir>/users.toml`.
    pub fn static_directory_path(&self) -> PathBuf {
        self.directory
            .static_file
            .clone()
            .unwrap_or_else(|| self.server.data_dir.join("users.toml"))
    }

    /// Where a self-signed certificate is generated when `tls.cert`/`tls.key` are unset.
    pub fn tls_dir(&self) -> PathBuf {
        self.server.data_dir.join("tls")
    }

    /// The effective configuration as TOML, for `parley check-config`. Secrets show only their
    /// reference; unset optional paths are omitted.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// The XMPP domain served: user JIDs are `user@domain`. A lowercase DNS name.
    pub domain: String,
    /// Directory for the database, generated certificates and the static user file. Relative
    /// paths are relative to the working directory of the server process.
    pub data_dir: PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            domain: "localhost".to_owned(),
            data_dir: PathBuf::from("./data"),
        }
    }
}

/// `[tls]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain. Set both `cert` and `key`, or neither: neither means a self-signed
    /// certificate generated under `<data_dir>/tls` on first start (for testing only).
    pub cert: Option<PathBuf>,
    /// PEM private key matching `cert`.
    pub key: Option<PathBuf>,
    /// How often the cert and key files are checked for change; 0 disables (SIGHUP also reloads).
    pub reload_interval: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            reload_interval: Duration::from_secs(60),
        }
    }
}

/// SASL mechanisms the server can offer, strongest first.
pub const KNOWN_SASL_MECHANISMS: &[&str] = &[
    "SCRAM-SHA-256-PLUS",
    "SCRAM-SHA-1-PLUS",
    "SCRAM-SHA-256",
    "SCRAM-SHA-1",
    "PLAIN",
];

/// `[c2s]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct C2sConfig {
    /// Addresses for plain-TCP client connections that upgrade with STARTTLS (port 5222).
    pub starttls_listen: Vec<SocketAddr>,
    /// Addresses for direct-TLS client connections (XEP-0368, port 5223).
    pub direct_tls_listen: Vec<SocketAddr>,
    /// Refuse authentication before STARTTLS. `false` is for local testing only (warned).
    pub require_starttls: bool,
    /// Time allowed from connect until authenticated and bound.
    pub pre_auth_timeout: Duration,
    /// Idle time after which the server pings the client (XEP-0199).
    pub ping_idle_after: Duration,
    /// Time to wait for the ping's answer before closing the session.
    pub ping_timeout: Duration,
    /// Time to wait for the client's `</stream>` after ours before dropping the socket.
    pub close_timeout: Duration,
    /// Largest stanza accepted, in bytes of XML (at most 16 MiB).
    pub max_stanza_size: ByteSize,
    /// Deepest element nesting accepted inside a stanza.
    pub max_depth: usize,
    /// Most attributes accepted on one element.
    pub max_attributes: usize,
    /// Longest single XML token (name, attribute value, text run) accepted.
    pub max_token_size: ByteSize,
    /// Stanzas queued for one session before it is treated as too slow and disconnected. A login
    /// receives the presence of every contact at once, so with shared groups it must be at least
    /// twice `roster.max_shared_contacts`. Queue slots are allocated as they fill, so an idle
    /// session costs the same whatever the bound.
    pub outbound_queue: usize,
    /// Bytes of stanzas queued for one session before it is treated as too slow and
    /// disconnected (estimated; at least `max_stanza_size`).
    pub outbound_queue_bytes: ByteSize,
    /// Most simultaneous resources (connected clients) per account.
    pub max_resources_per_account: usize,
    /// Most simultaneous connections from one IP address.
    pub max_connections_per_ip: usize,
    /// SASL mechanisms offered, in order of preference. Known: SCRAM-SHA-256-PLUS,
    /// SCRAM-SHA-1-PLUS, SCRAM-SHA-256, SCRAM-SHA-1, PLAIN.
    pub sasl_mechanisms: Vec<String>,
}

impl Default for C2sConfig {
    fn default() -> Self {
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        Self {
            starttls_listen: vec![SocketAddr::new(any, 5222)],
            direct_tls_listen: vec![SocketAddr::new(any, 5223)],
            require_starttls: true,
            pre_auth_timeout: Duration::from_secs(30),
            ping_idle_after: Duration::from_secs(5 * 60),
            ping_timeout: Duration::from_secs(60),
            close_timeout: Duration::from_secs(10),
            max_stanza_size: ByteSize::kib(256),
            max_depth: 32,
            max_attributes: 64,
            max_token_size: ByteSize::kib(64),
            outbound_queue: 16_384,
            outbound_queue_bytes: ByteSize::mib(8),
            max_resources_per_account: 16,
            max_connections_per_ip: 256,
            sasl_mechanisms: KNOWN_SASL_MECHANISMS
                .iter()
                .map(|name| (*name).to_owned())
                .collect(),
        }
    }
}

/// Which storage engine holds server data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// Embedded, crash-safe redb file (the default).
    #[default]
    Redb,
    /// In memory, lost on restart: tests and demos only.
    Memory,
}

/// `[storage]`
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// `"redb"` or `"memory"`.
    pub backend: StorageBackend,
    /// The redb file; unset means `<data_dir>/parley.redb`.
    pub path: Option<PathBuf>,
}

/// Which directory provides users and groups. New backends (LDAP) are new variants, each with
/// its own optional section, so adding one changes no existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DirectoryBackend {
    /// A local TOML file of users with argon2 password hashes (the default).
    #[default]
    Static,
    /// An LDAP directory (OpenLDAP, 389-DS, Active Directory), configured in `[ldap]`.
    Ldap,
}

/// `[directory]`
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DirectoryConfig {
    /// `"static"` or `"ldap"` (then `[ldap]` says where and how).
    pub backend: DirectoryBackend,
    /// The static backend's user file; unset means `<data_dir>/users.toml`.
    pub static_file: Option<PathBuf>,
}

/// How deep below `ldap.base_dn` entries are searched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LdapScope {
    /// The base entry and everything below it (the default).
    #[default]
    Sub,
    /// Only the entries directly below the base.
    One,
}

/// Whether the change feed uses RFC 4533 syncrepl (refreshAndPersist).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LdapSyncrepl {
    /// Use syncrepl when the server's root DSE lists the Sync Request control, polling
    /// otherwise (the default).
    #[default]
    Auto,
    /// Only poll (`modifyTimestamp`).
    Off,
}

/// How a group entry names its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LdapMemberAttribute {
    /// `member` holds member DNs (groupOfNames, Active Directory groups).
    #[serde(rename = "member")]
    Member,
    /// `uniqueMember` holds member DNs (groupOfUniqueNames).
    #[serde(rename = "uniqueMember")]
    UniqueMember,
    /// `memberUid` holds member user ids (posixGroup), matched against the localpart attribute.
    #[serde(rename = "memberUid")]
    MemberUid,
    /// Users carry the group's DN in their own `memberOf` (Active Directory, OpenLDAP memberof overlay).
    #[serde(rename = "memberOf")]
    MemberOf,
}

/// One `[[ldap.groups]]` entry: an LDAP group Parley knows by `name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapGroupConfig {
    /// The group's name inside Parley (shared roster group name, `ldap.admin_group`).
    pub name: String,
    /// The group entry's DN.
    pub dn: String,
    /// `"member"`, `"uniqueMember"`, `"memberUid"` or `"memberOf"`.
    pub member_attribute: LdapMemberAttribute,
}

/// `[ldap]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LdapConfig {
    /// Server URLs, tried in order: `ldaps://host:636` or `ldap://host:389` (with `starttls`).
    pub servers: Vec<String>,
    /// Upgrade `ldap://` connections with StartTLS before anything is sent.
    pub starttls: bool,
    /// PEM file of the CA(s) that signed the servers' certificates; unset means the system store.
    pub ca_file: Option<PathBuf>,
    /// Verify the servers' certificates. `false` is for testing only (warned).
    pub tls_verify: bool,
    /// DN of the service account that searches the directory; empty means an anonymous search.
    pub bind_dn: String,
    /// The service account's password, as `env:NAME` or `file:/path`.
    pub bind_password: Option<Secret>,
    /// Time allowed to open a connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// Time allowed for one LDAP operation (a search, a bind).
    pub operation_timeout: Duration,
    /// How often a server marked down is probed again; until then it is skipped.
    pub health_check_interval: Duration,
    /// Service connections kept open per server for searches.
    pub search_connections: usize,
    /// Most user binds (password checks) in flight at once.
    pub max_concurrent_binds: usize,
    /// Where users are searched.
    pub base_dn: String,
    /// `"sub"` (whole subtree) or `"one"` (one level).
    pub scope: LdapScope,
    /// LDAP filter selecting the users who may log in, including the "enabled" condition.
    pub user_filter: String,
    /// Attribute that becomes the JID localpart (`uid`, `sAMAccountName`, `mail`...).
    pub localpart_attribute: String,
    /// Take the part before '@' of the localpart attribute (for `mail`).
    pub localpart_is_email: bool,
    /// Attribute shown as the person's name; empty means not mapped.
    pub display_name_attribute: String,
    /// E-mail attribute; empty means not mapped.
    pub email_attribute: String,
    /// Department attribute; empty means not mapped.
    pub department_attribute: String,
    /// Job title attribute; empty means not mapped.
    pub title_attribute: String,
    /// Telephone attribute; empty means not mapped.
    pub phone_attribute: String,
    /// Given (first) name attribute, for vCards (`N/GIVEN`) and search; empty means not mapped.
    pub given_name_attribute: String,
    /// Family (last) name attribute, for vCards (`N/FAMILY`) and search; empty means not mapped.
    pub family_name_attribute: String,
    /// Nickname attribute, for vCards (`NICKNAME`); empty means not mapped.
    pub nickname_attribute: String,
    /// Photo attribute (JPEG bytes), for vCards (`PHOTO`); empty means not mapped.
    pub photo_attribute: String,
    /// Largest photo put into a vCard; a larger one is left out.
    pub max_photo_size: ByteSize,
    /// Groups Parley knows (shared rosters, admins).
    pub groups: Vec<LdapGroupConfig>,
    /// Name of the group in `groups` whose members are server administrators; empty means none.
    pub admin_group: String,
    /// Whether changes are pushed by the server (RFC 4533 syncrepl) where it supports that.
    pub syncrepl: LdapSyncrepl,
    /// How often the directory is polled for changes (`modifyTimestamp`); with syncrepl
    /// active, polling runs as a safety net at ten times this interval.
    pub poll_interval: Duration,
    /// How often every user and group is read again, which also finds deleted entries.
    pub full_sync_interval: Duration,
    /// Entries requested per page of a search.
    pub page_size: usize,
    /// Most users read; more is an error, so a wrong filter can't exhaust memory.
    pub max_users: usize,
}

impl Default for LdapConfig {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            starttls: true,
            ca_file: None,
            tls_verify: true,
            bind_dn: String::new(),
            bind_password: None,
            connect_timeout: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(10),
            health_check_interval: Duration::from_secs(5),
            search_connections: 2,
            max_concurrent_binds: 16,
            base_dn: String::new(),
            scope: LdapScope::Sub,
            user_filter: "(&(objectClass=inetOrgPerson)(!(pwdAccountLockedTime=*)))".to_owned(),
            localpart_attribute: "uid".to_owned(),
            localpart_is_email: false,
            display_name_attribute: "cn".to_owned(),
            email_attribute: "mail".to_owned(),
            department_attribute: "departmentNumber".to_owned(),
            title_attribute: "title".to_owned(),
            phone_attribute: "telephoneNumber".to_owned(),
            given_name_attribute: "givenName".to_owned(),
            family_name_attribute: "sn".to_owned(),
            nickname_attribute: String::new(),
            photo_attribute: "jpegPhoto".to_owned(),
            max_photo_size: ByteSize::kib(48),
            groups: Vec::new(),
            admin_group: String::new(),
            syncrepl: LdapSyncrepl::Auto,
            poll_interval: Duration::from_secs(10),
            full_sync_interval: Duration::from_secs(300),
            page_size: 500,
            max_users: 100_000,
        }
    }
}

/// `[roster]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RosterConfig {
    /// Most contacts one user may have.
    pub max_items: usize,
    /// Directory groups shown on their members' rosters (`[[roster.shared_groups]]`): every
    /// member sees every other member with subscription `both`, without any handshake.
    pub shared_groups: Vec<SharedGroupConfig>,
    /// Most shared contacts one user is shown (all shared groups together); the rest are left
    /// out and logged, so one huge group can't flood every client.
    pub max_shared_contacts: usize,
}

impl Default for RosterConfig {
    fn default() -> Self {
        Self {
            max_items: 1000,
            shared_groups: Vec::new(),
            max_shared_contacts: 5000,
        }
    }
}

/// One `[[roster.shared_groups]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedGroupConfig {
    /// The directory group: a `[[ldap.groups]]` name, or a group of the static users file.
    pub group: String,
    /// The roster group users see; defaults to `group`.
    #[serde(default)]
    pub name: Option<String>,
}

impl SharedGroupConfig {
    /// The roster group users see.
    pub fn roster_group(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.group)
    }
}

/// `[offline]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OfflineConfig {
    /// Most messages stored for one offline user; further messages bounce.
    pub max_messages: usize,
}

impl Default for OfflineConfig {
    fn default() -> Self {
        Self { max_messages: 1000 }
    }
}

/// `[vcard]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VcardConfig {
    /// Largest vCard (including its photo) a user may store.
    pub max_size: ByteSize,
    /// Answer vCards of people the directory describes from the directory (read-only); people
    /// it says nothing about keep the vCard they store themselves.
    pub from_directory: bool,
}

impl Default for VcardConfig {
    fn default() -> Self {
        Self {
            max_size: ByteSize::kib(64),
            from_directory: true,
        }
    }
}

/// `[private_storage]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivateStorageConfig {
    /// Largest private XML document a user may store.
    pub max_size: ByteSize,
}

impl Default for PrivateStorageConfig {
    fn default() -> Self {
        Self {
            max_size: ByteSize::kib(64),
        }
    }
}

/// `[archive]`: the compliance archive. It is always on: every message is recorded, with no
/// per-user opt-out; these options only say how long records are kept and how often the chain
/// is checkpointed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveConfig {
    /// How long messages are kept; "0" keeps them forever.
    pub retention: Duration,
    /// Retention overrides per department (the directory's department); "0" means forever.
    /// Where several apply (a department and groups, or two participants), the longest wins.
    pub retention_departments: std::collections::BTreeMap<String, Duration>,
    /// Retention overrides per directory group; "0" means forever.
    pub retention_groups: std::collections::BTreeMap<String, Duration>,
    /// How often the server deletes expired messages; "0" disables the periodic purge (run
    /// `parley archive purge` instead).
    pub purge_interval: Duration,
    /// A checkpoint of the chain head is kept at least every this many records...
    pub checkpoint_every: u64,
    /// ...and at least this often while messages arrive.
    pub checkpoint_interval: Duration,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(7 * 365 * 86_400),
            retention_departments: std::collections::BTreeMap::new(),
            retention_groups: std::collections::BTreeMap::new(),
            purge_interval: Duration::from_secs(3600),
            checkpoint_every: 10_000,
            checkpoint_interval: Duration::from_secs(60),
        }
    }
}

/// `[admin_http]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminHttpConfig {
    /// Address for `/metrics` and `/health`; unset disables the endpoint.
    pub listen: Option<SocketAddr>,
}

impl Default for AdminHttpConfig {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 5280)),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Filter in tracing `EnvFilter` syntax, e.g. `"info"` or `"info,parley_c2s=debug"`.
    pub level: String,
    /// `"text"` or `"json"`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// True when `path` is empty, which no option accepts.
pub(crate) fn is_empty_path(path: &Path) -> bool {
    path.as_os_str().is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_paths_default_under_data_dir() {
        let mut config = Config::default();
        config.server.data_dir = PathBuf::from("/var/lib/parley");
        assert_eq!(
            config.storage_path(),
            PathBuf::from("/var/lib/parley/parley.redb")
        );
        assert_eq!(
            config.static_directory_path(),
            PathBuf::from("/var/lib/parley/users.toml")
        );
        assert_eq!(config.tls_dir(), PathBuf::from("/var/lib/parley/tls"));
        config.storage.path = Some(PathBuf::from("/srv/db.redb"));
        config.directory.static_file = Some(PathBuf::from("/etc/parley/users.toml"));
        assert_eq!(config.storage_path(), PathBuf::from("/srv/db.redb"));
        assert_eq!(
            config.static_directory_path(),
            PathBuf::from("/etc/parley/users.toml")
        );
    }

    #[test]
    fn sections_list_matches_serialized_config() {
        let serialized = serde_json::to_value(Config::default()).unwrap();
        let keys: Vec<&str> = serialized
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected: Vec<&str> = SECTIONS.to_vec();
        expected.sort_unstable();
        let mut keys_sorted = keys.clone();
        keys_sorted.sort_unstable();
        assert_eq!(keys_sorted, expected);
    }

    fn example_text() -> String {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/parley.example.toml");
        std::fs::read_to_string(path).expect("config/parley.example.toml is readable")
    }

    #[test]
    fn shared_groups_parse_default_their_name_and_reject_empty_names() {
        let loaded = Config::from_toml_str(
            "[[roster.shared_groups]]\ngroup = \"eng\"\n\n[[roster.shared_groups]]\ngroup = \"staff\"\nname = \"Everyone\"\n",
        )
        .unwrap_or_else(|errors| panic!("{errors}"));
        let names: Vec<&str> = loaded
            .config
            .roster
            .shared_groups
            .iter()
            .map(SharedGroupConfig::roster_group)
            .collect();
        assert_eq!(names, ["eng", "Everyone"]);
        for bad in [
            "[[roster.shared_groups]]\ngroup = \" \"\n",
            "[[roster.shared_groups]]\ngroup = \"eng\"\nname = \"\"\n",
            "[[roster.shared_groups]]\nname = \"x\"\n",
            "[[roster.shared_groups]]\ngroup = \"eng\"\ncolour = \"red\"\n",
        ] {
            let errors = Config::from_toml_str(bad).expect_err(bad).to_string();
            assert!(errors.contains("roster.shared_groups"), "{bad}: {errors}");
        }
    }

    #[test]
    fn example_file_equals_defaults() {
        let loaded = Config::from_toml_str(&example_text()).unwrap_or_else(|errors| panic!("{errors}"));
        assert_eq!(loaded.config, Config::default());
    }

    /// Every section and every field of the schema must be documented in the example, set or
    /// commented out (`# name = ...`), so a new option cannot ship undocumented.
    #[test]
    fn example_file_mentions_every_option() {
        let text = example_text();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let serialized = serde_json::to_value(Config::default()).unwrap();
        let sections = serialized.as_object().unwrap();
        let mut checked = 0;
        for (section, fields) in sections {
            let header = format!("[{section}]");
            let start = lines.iter().position(|line| *line == header);
            let start = start.unwrap_or_else(|| panic!("example lacks section {header}"));
            let end = lines[start + 1..]
                .iter()
                .position(|line| line.starts_with('['))
                .map_or(lines.len(), |n| start + 1 + n);
            for field in fields.as_object().unwrap().keys() {
                let documented = lines[start..end].iter().any(|line| {
                    let line = line.trim_start_matches('#').trim_start();
                    line.strip_prefix(field.as_str())
                        .is_some_and(|rest| rest.trim_start().starts_with('='))
                });
                assert!(documented, "example section {header} lacks `{field} = ...`");
                checked += 1;
            }
        }
        assert!(checked >= 30, "walked only {checked} fields");
    }

    #[test]
    fn effective_config_round_trips_through_toml() {
        let mut config = Config::default();
        config.tls.cert = Some(PathBuf::from("/etc/cert.pem"));
        config.tls.key = Some(PathBuf::from("/etc/key.pem"));
        config.log.format = LogFormat::Json;
        let text = config.to_toml().unwrap();
        assert!(text.contains("max_stanza_size = \"256KiB\""), "{text}");
        let parsed: Config = toml::from_str(&text).unwrap();
        assert_eq!(parsed, config);
    }

    #[test]
    fn ldap_syncrepl_is_auto_by_default_and_only_auto_or_off() {
        assert_eq!(LdapConfig::default().syncrepl, LdapSyncrepl::Auto);
        let off: LdapConfig = toml::from_str("syncrepl = \"off\"").unwrap();
        assert_eq!(off.syncrepl, LdapSyncrepl::Off);
        let auto: LdapConfig = toml::from_str("syncrepl = \"auto\"").unwrap();
        assert_eq!(auto.syncrepl, LdapSyncrepl::Auto);
        assert!(toml::from_str::<LdapConfig>("syncrepl = \"on\"").is_err());
        assert!(toml::from_str::<LdapConfig>("syncrepl = true").is_err());
    }
}

//! `StaticDirectory`: accounts in one TOML file, managed by the CLI and read by the running server.
//!
//! The two are different processes, so the file is the only shared state: writers replace it atomically
//! (temp file, fsync, rename, fsync of the directory) and readers notice a new file by its metadata,
//! checked at most once per [`RELOAD_CHECK_INTERVAL`] when they are asked something.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::{
    AuthOutcome, Directory, DirectoryChange, DirectoryError, Person, ScramCredentials, ScramHash,
    normalize_localpart, normalize_password,
};

/// Where the server and the CLI look when the configuration names no file.
pub const DEFAULT_PATH: &str = "data/users.toml";
/// PBKDF2 iterations for new SCRAM credentials (RFC 7677's minimum, what clients expect).
pub const SCRAM_ITERATIONS: u32 = 4096;
pub const SCRAM_SALT_LEN: usize = 16;
/// How often a reader may stat the file to look for changes.
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// A users file larger than this is refused rather than read into memory.
pub const MAX_FILE_BYTES: u64 = 32 * 1024 * 1024;
/// Bounds on SCRAM iterations read from the file: fewer is insecure, more lets a bad file burn CPU.
const MIN_SCRAM_ITERATIONS: u32 = 4096;
const MAX_SCRAM_ITERATIONS: u32 = 10_000_000;
const CHANGE_CHANNEL_CAPACITY: usize = 256;

/// The editable details of an account, as given to [`StaticDirectory::add_user`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PersonDetails {
    pub display_name: Option<String>,
    pub email: Option<String>,
    pub department: Option<String>,
    pub title: Option<String>,
    pub phone: Option<String>,
    pub groups: Vec<String>,
    pub admin: bool,
}

// ---- file format ---------------------------------------------------------------------------------

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default, rename = "user")]
    users: Vec<UserEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    localpart: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    department: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    phone: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    admin: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password_argon2id: Option<String>,
    // Tables last: TOML needs plain values before sub-tables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scram_sha1: Option<ScramEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scram_sha256: Option<ScramEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScramEntry {
    salt: String,
    iterations: u32,
    stored_key: String,
    server_key: String,
}

// ---- in-memory model -----------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Account {
    person: Person,
    password_argon2id: Option<String>,
    scram_sha1: Option<ScramCredentials>,
    scram_sha256: Option<ScramCredentials>,
}

type Accounts = BTreeMap<String, Account>;

/// Identifies one version of the file. Writers always rename a new file into place, so the inode changes
/// even when size and mtime happen to match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(meta);
        #[cfg(not(unix))]
        let inode = 0;
        FileStamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode,
        }
    }
}

struct State {
    accounts: Arc<Accounts>,
    /// None: the file did not exist when last looked at.
    stamp: Option<FileStamp>,
    last_check: Instant,
}

struct Inner {
    path: PathBuf,
    state: Mutex<State>,
    /// Serialises reloads and writes within this process, so each change is diffed and announced once.
    reload_lock: tokio::sync::Mutex<()>,
    changes: broadcast::Sender<DirectoryChange>,
    /// Password checks running at once. Each argon2id verification holds ~19 MiB while it runs;
    /// unbounded, 50 concurrent PLAIN logins (which anyone can start, before authenticating)
    /// took the server past 1 GiB. One per core keeps the rate (they are CPU-bound) and the
    /// memory to a few tens of MiB; the rest wait without holding memory.
    password_checks: tokio::sync::Semaphore,
}

/// The embedded directory: a TOML file of accounts. Cheap to clone (shared state).
#[derive(Clone)]
pub struct StaticDirectory {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for StaticDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticDirectory")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl StaticDirectory {
    /// Load the file at `path`. A missing file is an empty directory; an unreadable or invalid one is an
    /// error naming the path.
    pub async fn open(path: impl Into<PathBuf>) -> Result<Self, DirectoryError> {
        let path = path.into();
        let load_path = path.clone();
        let (accounts, stamp) = run_blocking(move || load_file(&load_path)).await??;
        let (changes, _) = broadcast::channel(CHANGE_CHANNEL_CAPACITY);
        Ok(StaticDirectory {
            inner: Arc::new(Inner {
                path,
                state: Mutex::new(State {
                    accounts: Arc::new(accounts),
                    stamp,
                    last_check: Instant::now(),
                }),
                reload_lock: tokio::sync::Mutex::new(()),
                changes,
                password_checks: tokio::sync::Semaphore::new(
                    std::thread::available_parallelism().map_or(2, |cores| cores.get()),
                ),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Create an account. Hashing runs on the blocking pool.
    pub async fn add_user(
        &self,
        localpart: &str,
        password: &str,
        details: PersonDetails,
    ) -> Result<Person, DirectoryError> {
        let mut added = self
            .add_users(vec![(localpart.to_owned(), password.to_owned(), details)])
            .await?;
        added
            .pop()
            .ok_or_else(|| DirectoryError::Internal("no account was added".into()))
    }

    /// Create many accounts with one write of the file (a bulk import): all are added, or none
    /// if any localpart is invalid or taken. Hashing runs on the blocking pool, in parallel.
    pub async fn add_users(
        &self,
        users: Vec<(String, String, PersonDetails)>,
    ) -> Result<Vec<Person>, DirectoryError> {
        let mut normalized = Vec::with_capacity(users.len());
        for (localpart, password, details) in users {
            normalized.push((
                normalize_localpart(&localpart)?,
                normalize_password(&password)?,
                details,
            ));
        }
        let _writer = self.inner.reload_lock.lock().await;
        let mut accounts = (*self.reload_locked().await?).clone();
        let mut seen = std::collections::HashSet::new();
        for (localpart, _, _) in &normalized {
            if accounts.contains_key(localpart) || !seen.insert(localpart.clone()) {
                return Err(DirectoryError::UserExists(localpart.clone()));
            }
        }
        // Hash a few at a time: each argon2id derivation holds ~19 MiB while it runs.
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
        let passwords: Vec<String> = normalized
            .iter()
            .map(|(_, password, _)| password.clone())
            .collect();
        let mut hashing = Vec::with_capacity(passwords.len());
        for chunk in passwords.chunks(parallel) {
            let running: Vec<_> = chunk
                .iter()
                .map(|password| {
                    let password = password.clone();
                    tokio::task::spawn_blocking(move || derive_secrets(&password))
                })
                .collect();
            for task in running {
                hashing.push(
                    task.await
                        .map_err(|err| DirectoryError::Internal(format!("blocking task failed: {err}")))?,
                );
            }
        }
        let mut people = Vec::with_capacity(normalized.len());
        for ((localpart, _, details), secrets) in normalized.into_iter().zip(hashing) {
            let secrets = secrets?;
            let person = Person {
                localpart: localpart.clone(),
                display_name: details.display_name,
                email: details.email,
                department: details.department,
                title: details.title,
                phone: details.phone,
                groups: details.groups,
                admin: details.admin,
            };
            accounts.insert(
                localpart,
                Account {
                    person: person.clone(),
                    password_argon2id: Some(secrets.argon2id),
                    scram_sha1: Some(secrets.scram_sha1),
                    scram_sha256: Some(secrets.scram_sha256),
                },
            );
            people.push(person);
        }
        self.commit_locked(accounts).await?;
        Ok(people)
    }

    /// Replace an account's password (argon2id hash and both SCRAM credentials, with fresh salts).
    pub async fn set_password(&self, localpart: &str, password: &str) -> Result<(), DirectoryError> {
        let localpart = normalize_localpart(localpart)?;
        let password = normalize_password(password)?;
        let _writer = self.inner.reload_lock.lock().await;
        let mut accounts = (*self.reload_locked().await?).clone();
        if !accounts.contains_key(&localpart) {
            return Err(DirectoryError::NoSuchUser(localpart));
        }
        let secrets = run_blocking(move || derive_secrets(&password)).await??;
        let account = accounts
            .get_mut(&localpart)
            .ok_or_else(|| DirectoryError::NoSuchUser(localpart.clone()))?;
        account.password_argon2id = Some(secrets.argon2id);
        account.scram_sha1 = Some(secrets.scram_sha1);
        account.scram_sha256 = Some(secrets.scram_sha256);
        self.commit_locked(accounts).await
    }

    /// Delete an account; live sessions learn it through [`DirectoryChange::UserRemoved`].
    pub async fn remove_user(&self, localpart: &str) -> Result<(), DirectoryError> {
        let localpart = normalize_localpart(localpart)?;
        let _writer = self.inner.reload_lock.lock().await;
        let mut accounts = (*self.reload_locked().await?).clone();
        if accounts.remove(&localpart).is_none() {
            return Err(DirectoryError::NoSuchUser(localpart));
        }
        self.commit_locked(accounts).await
    }

    /// Every account, freshly read from the file, sorted by localpart.
    pub async fn list(&self) -> Result<Vec<Person>, DirectoryError> {
        let _guard = self.inner.reload_lock.lock().await;
        let accounts = self.reload_locked().await?;
        Ok(accounts.values().map(|account| account.person.clone()).collect())
    }

    /// Look at the file now (ignoring the rate limit) and reload it if it changed. Returns whether it
    /// changed. Announces removed users, changed people and changed groups.
    pub async fn reload_if_changed(&self) -> Result<bool, DirectoryError> {
        let _guard = self.inner.reload_lock.lock().await;
        let before = self.snapshot();
        let after = self.reload_locked().await?;
        Ok(!Arc::ptr_eq(&before, &after))
    }

    fn snapshot(&self) -> Arc<Accounts> {
        lock_state(&self.inner.state).accounts.clone()
    }

    /// The accounts to answer a query with: reloads first when the last look at the file is older than
    /// [`RELOAD_CHECK_INTERVAL`]. A file that became invalid is logged and the previous accounts are kept,
    /// so a typo in a hand edit does not lock everybody out.
    async fn current(&self) -> Arc<Accounts> {
        let due = {
            let mut state = lock_state(&self.inner.state);
            let due = state.last_check.elapsed() >= RELOAD_CHECK_INTERVAL;
            if due {
                state.last_check = Instant::now();
            }
            due
        };
        if due {
            // Another task reloading already? Then answer from what we have.
            if let Ok(_guard) = self.inner.reload_lock.try_lock()
                && let Err(err) = self.reload_locked().await
            {
                tracing::warn!(error = %err, "users file changed but could not be loaded; keeping the previous accounts");
            }
        }
        self.snapshot()
    }

    /// Reload if the file's stamp changed. Caller holds `reload_lock`.
    async fn reload_locked(&self) -> Result<Arc<Accounts>, DirectoryError> {
        let path = self.inner.path.clone();
        let current_stamp = match std::fs::metadata(&path) {
            Ok(meta) => Some(FileStamp::of(&meta)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(DirectoryError::Io { path, source }),
        };
        {
            let mut state = lock_state(&self.inner.state);
            state.last_check = Instant::now();
            if state.stamp == current_stamp {
                return Ok(state.accounts.clone());
            }
        }
        let (accounts, stamp) = run_blocking(move || load_file(&path)).await??;
        Ok(self.install(accounts, stamp))
    }

    /// Serialise and atomically write `accounts`, then make them current. Caller holds `reload_lock`.
    async fn commit_locked(&self, accounts: Accounts) -> Result<(), DirectoryError> {
        let text = render_file(&accounts)?;
        let path = self.inner.path.clone();
        let stamp = run_blocking(move || write_atomically(&path, text.as_bytes())).await??;
        self.install(accounts, Some(stamp));
        Ok(())
    }

    /// Swap in a new set of accounts and announce the differences.
    fn install(&self, accounts: Accounts, stamp: Option<FileStamp>) -> Arc<Accounts> {
        let accounts = Arc::new(accounts);
        let previous = {
            let mut state = lock_state(&self.inner.state);
            state.stamp = stamp;
            state.last_check = Instant::now();
            std::mem::replace(&mut state.accounts, accounts.clone())
        };
        for change in diff(&previous, &accounts) {
            // No subscribers is fine (the CLI has none).
            let _ = self.inner.changes.send(change);
        }
        accounts
    }
}

#[async_trait::async_trait]
impl Directory for StaticDirectory {
    async fn authenticate(&self, localpart: &str, password: &str) -> Result<AuthOutcome, DirectoryError> {
        let accounts = self.current().await;
        // Every path below runs one argon2 verification, against the account's hash or a dummy one, so
        // unknown users, bad input and wrong passwords cost the same.
        let hash = normalize_localpart(localpart).ok().and_then(|localpart| {
            accounts
                .get(&localpart)
                .and_then(|account| account.password_argon2id.clone())
        });
        let password = normalize_password(password).ok();
        let _permit = self
            .inner
            .password_checks
            .acquire()
            .await
            .map_err(|_| DirectoryError::Unavailable("the directory is shutting down".into()))?;
        run_blocking(move || {
            let known = hash.is_some() && password.is_some();
            let hash = hash.unwrap_or_else(|| dummy_hash().to_owned());
            let password = password.unwrap_or_default();
            let verified = match PasswordHash::new(&hash) {
                Ok(parsed) => Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok(),
                Err(_) => false,
            };
            if known && verified {
                AuthOutcome::Accepted
            } else {
                AuthOutcome::Rejected
            }
        })
        .await
    }

    async fn scram_credentials(
        &self,
        localpart: &str,
        hash: ScramHash,
    ) -> Result<Option<ScramCredentials>, DirectoryError> {
        let Ok(localpart) = normalize_localpart(localpart) else {
            return Ok(None);
        };
        let accounts = self.current().await;
        Ok(accounts.get(&localpart).and_then(|account| match hash {
            ScramHash::Sha1 => account.scram_sha1.clone(),
            ScramHash::Sha256 => account.scram_sha256.clone(),
        }))
    }

    fn supports_scram(&self) -> bool {
        true
    }

    async fn person(&self, localpart: &str) -> Result<Option<Person>, DirectoryError> {
        let Ok(localpart) = normalize_localpart(localpart) else {
            return Ok(None);
        };
        Ok(self
            .current()
            .await
            .get(&localpart)
            .map(|account| account.person.clone()))
    }

    async fn people(&self) -> Result<Vec<Person>, DirectoryError> {
        Ok(self
            .current()
            .await
            .values()
            .map(|account| account.person.clone())
            .collect())
    }

    async fn members(&self, group: &str) -> Result<Vec<String>, DirectoryError> {
        let accounts = self.current().await;
        Ok(accounts
            .values()
            .filter(|account| account.person.groups.iter().any(|g| g == group))
            .map(|account| account.person.localpart.clone())
            .collect())
    }

    fn subscribe(&self) -> broadcast::Receiver<DirectoryChange> {
        self.inner.changes.subscribe()
    }
}

// ---- helpers -------------------------------------------------------------------------------------

fn lock_state(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // A panic while holding this lock cannot leave State half-updated (every update is one assignment),
    // so a poisoned lock is still usable.
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, DirectoryError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| DirectoryError::Internal(format!("blocking task failed: {err}")))
}

/// A valid argon2id hash of a random password, verified against when the account has none, so that
/// "no such user" costs as much as "wrong password".
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        let random_password: [u8; 32] = rand::random();
        Argon2::default()
            .hash_password(&random_password)
            .map(|hash| hash.to_string())
            .unwrap_or_default()
    })
}

struct Secrets {
    argon2id: String,
    scram_sha1: ScramCredentials,
    scram_sha256: ScramCredentials,
}

fn derive_secrets(password: &str) -> Result<Secrets, DirectoryError> {
    let argon2id = Argon2::default()
        .hash_password(password.as_bytes())
        .map_err(|err| DirectoryError::Internal(format!("argon2id hashing failed: {err}")))?
        .to_string();
    let sha1_salt: [u8; SCRAM_SALT_LEN] = rand::random();
    let sha256_salt: [u8; SCRAM_SALT_LEN] = rand::random();
    Ok(Secrets {
        argon2id,
        scram_sha1: ScramCredentials::derive(ScramHash::Sha1, password, &sha1_salt, SCRAM_ITERATIONS),
        scram_sha256: ScramCredentials::derive(ScramHash::Sha256, password, &sha256_salt, SCRAM_ITERATIONS),
    })
}

fn load_file(path: &Path) -> Result<(Accounts, Option<FileStamp>), DirectoryError> {
    let io_err = |source| DirectoryError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok((Accounts::new(), None)),
        Err(err) => return Err(io_err(err)),
    };
    // Stamp the opened file, not the path: a rename after this point is picked up on the next check.
    let stamp = FileStamp::of(&file.metadata().map_err(io_err)?);
    if stamp.len > MAX_FILE_BYTES {
        return Err(corrupt(path, format!("larger than {MAX_FILE_BYTES} bytes")));
    }
    let mut text = String::new();
    // take() bounds the read even if the file grows after the metadata call.
    (&mut file)
        .take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io_err)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(corrupt(path, format!("larger than {MAX_FILE_BYTES} bytes")));
    }
    Ok((parse_file(path, &text)?, Some(stamp)))
}

fn corrupt(path: &Path, reason: String) -> DirectoryError {
    DirectoryError::Corrupt {
        path: path.to_owned(),
        reason,
    }
}

fn parse_file(path: &Path, text: &str) -> Result<Accounts, DirectoryError> {
    let file: UsersFile = toml::from_str(text).map_err(|err| corrupt(path, err.to_string()))?;
    let mut accounts = Accounts::new();
    for (index, entry) in file.users.into_iter().enumerate() {
        let where_ = |what: String| {
            corrupt(
                path,
                format!("user #{} ({:?}): {what}", index + 1, entry.localpart),
            )
        };
        let localpart = normalize_localpart(&entry.localpart).map_err(|err| where_(err.to_string()))?;
        if localpart != entry.localpart {
            return Err(where_(format!(
                "localpart is not normalised (should be {localpart:?})"
            )));
        }
        if accounts.contains_key(&localpart) {
            return Err(where_("duplicate localpart".into()));
        }
        if let Some(phc) = &entry.password_argon2id {
            PasswordHash::new(phc).map_err(|err| where_(format!("password_argon2id: {err}")))?;
        }
        let scram_sha1 = match &entry.scram_sha1 {
            Some(scram) => {
                Some(parse_scram(ScramHash::Sha1, scram).map_err(|e| where_(format!("scram_sha1: {e}")))?)
            }
            None => None,
        };
        let scram_sha256 = match &entry.scram_sha256 {
            Some(scram) => Some(
                parse_scram(ScramHash::Sha256, scram).map_err(|e| where_(format!("scram_sha256: {e}")))?,
            ),
            None => None,
        };
        let account = Account {
            person: Person {
                localpart: localpart.clone(),
                display_name: entry.display_name,
                email: entry.email,
                department: entry.department,
                title: entry.title,
                phone: entry.phone,
                groups: entry.groups,
                admin: entry.admin,
            },
            password_argon2id: entry.password_argon2id,
            scram_sha1,
            scram_sha256,
        };
        accounts.insert(localpart, account);
    }
    Ok(accounts)
}

fn parse_scram(hash: ScramHash, entry: &ScramEntry) -> Result<ScramCredentials, String> {
    let decode = |name: &str, value: &str| BASE64.decode(value).map_err(|err| format!("{name}: {err}"));
    let salt = decode("salt", &entry.salt)?;
    let stored_key = decode("stored_key", &entry.stored_key)?;
    let server_key = decode("server_key", &entry.server_key)?;
    if salt.is_empty() || salt.len() > 256 {
        return Err("salt must be 1 to 256 bytes".into());
    }
    if !(MIN_SCRAM_ITERATIONS..=MAX_SCRAM_ITERATIONS).contains(&entry.iterations) {
        return Err(format!(
            "iterations must be {MIN_SCRAM_ITERATIONS} to {MAX_SCRAM_ITERATIONS}"
        ));
    }
    if stored_key.len() != hash.output_len() || server_key.len() != hash.output_len() {
        return Err(format!(
            "stored_key and server_key must be {} bytes",
            hash.output_len()
        ));
    }
    Ok(ScramCredentials {
        hash,
        salt,
        iterations: entry.iterations,
        stored_key,
        server_key,
    })
}

fn render_scram(credentials: &ScramCredentials) -> ScramEntry {
    ScramEntry {
        salt: BASE64.encode(&credentials.salt),
        iterations: credentials.iterations,
        stored_key: BASE64.encode(&credentials.stored_key),
        server_key: BASE64.encode(&credentials.server_key),
    }
}

fn render_file(accounts: &Accounts) -> Result<String, DirectoryError> {
    let file = UsersFile {
        users: accounts
            .values()
            .map(|account| UserEntry {
                localpart: account.person.localpart.clone(),
                display_name: account.person.display_name.clone(),
                email: account.person.email.clone(),
                department: account.person.department.clone(),
                title: account.person.title.clone(),
                phone: account.person.phone.clone(),
                groups: account.person.groups.clone(),
                admin: account.person.admin,
                password_argon2id: account.password_argon2id.clone(),
                scram_sha1: account.scram_sha1.as_ref().map(render_scram),
                scram_sha256: account.scram_sha256.as_ref().map(render_scram),
            })
            .collect(),
    };
    toml::to_string(&file).map_err(|err| DirectoryError::Internal(format!("cannot render users file: {err}")))
}

/// Replace `path` with `contents` so a reader sees the old file or the new one, never a mix, and the new
/// one survives a crash once this returns.
fn write_atomically(path: &Path, contents: &[u8]) -> Result<FileStamp, DirectoryError> {
    let io_err = |p: &Path| {
        let p = p.to_owned();
        move |source| DirectoryError::Io { path: p, source }
    };
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let suffix: u64 = rand::random();
    let temp = dir.join(format!(".{file_name}.{}.{suffix:016x}.tmp", std::process::id()));

    let result = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&temp).map_err(io_err(&temp))?;
        file.write_all(contents).map_err(io_err(&temp))?;
        file.sync_all().map_err(io_err(&temp))?;
        drop(file);
        std::fs::rename(&temp, path).map_err(io_err(path))
    })();
    if let Err(err) = result {
        let _ = std::fs::remove_file(&temp);
        return Err(err);
    }
    // The rename is durable only once the directory entry is.
    #[cfg(unix)]
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(&dir))?;
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    Ok(FileStamp::of(&meta))
}

/// What changed between two versions of the accounts, in a stable order.
fn diff(old: &Accounts, new: &Accounts) -> Vec<DirectoryChange> {
    let mut changes = Vec::new();
    let mut groups = BTreeSet::new();
    for (localpart, account) in old {
        match new.get(localpart) {
            None => {
                changes.push(DirectoryChange::UserRemoved(localpart.clone()));
                groups.extend(account.person.groups.iter().cloned());
            }
            Some(updated) if updated.person != account.person => {
                changes.push(DirectoryChange::PersonChanged(localpart.clone()));
                let before: BTreeSet<_> = account.person.groups.iter().collect();
                let after: BTreeSet<_> = updated.person.groups.iter().collect();
                groups.extend(before.symmetric_difference(&after).map(|g| (*g).clone()));
            }
            Some(_) => {}
        }
    }
    for (localpart, account) in new {
        if !old.contains_key(localpart) {
            groups.extend(account.person.groups.iter().cloned());
        }
    }
    changes.extend(groups.into_iter().map(DirectoryChange::GroupChanged));
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn details(groups: &[&str]) -> PersonDetails {
        PersonDetails {
            display_name: Some("Alice Example".into()),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..PersonDetails::default()
        }
    }

    async fn temp_directory() -> (tempfile::TempDir, StaticDirectory) {
        let dir = tempfile::tempdir().unwrap();
        let directory = StaticDirectory::open(dir.path().join("users.toml"))
            .await
            .unwrap();
        (dir, directory)
    }

    #[tokio::test]
    async fn missing_file_is_empty_directory() {
        let (_dir, directory) = temp_directory().await;
        assert!(directory.people().await.unwrap().is_empty());
        assert!(directory.list().await.unwrap().is_empty());
        assert_eq!(directory.person("alice").await.unwrap(), None);
    }

    #[tokio::test]
    async fn add_authenticate_and_wrong_password() {
        let (_dir, directory) = temp_directory().await;
        let person = directory
            .add_user("Alice", "correct horse", details(&["staff"]))
            .await
            .unwrap();
        assert_eq!(person.localpart, "alice");
        assert_eq!(
            directory.authenticate("alice", "correct horse").await.unwrap(),
            AuthOutcome::Accepted
        );
        // The localpart is normalised on the way in as well.
        assert_eq!(
            directory.authenticate("ALICE", "correct horse").await.unwrap(),
            AuthOutcome::Accepted
        );
        assert_eq!(
            directory.authenticate("alice", "Correct horse").await.unwrap(),
            AuthOutcome::Rejected
        );
        assert_eq!(
            directory.authenticate("bob", "correct horse").await.unwrap(),
            AuthOutcome::Rejected
        );
        assert_eq!(
            directory.authenticate("a@b", "correct horse").await.unwrap(),
            AuthOutcome::Rejected
        );
        assert_eq!(
            directory.authenticate("alice", "").await.unwrap(),
            AuthOutcome::Rejected
        );
        assert_eq!(
            directory.members("staff").await.unwrap(),
            vec!["alice".to_string()]
        );
        assert!(directory.members("nobody").await.unwrap().is_empty());
        let stored = directory.person("alice").await.unwrap().unwrap();
        assert_eq!(stored.display_name.as_deref(), Some("Alice Example"));
    }

    #[tokio::test]
    async fn add_twice_and_invalid_names_fail() {
        let (_dir, directory) = temp_directory().await;
        directory
            .add_user("alice", "pw", PersonDetails::default())
            .await
            .unwrap();
        assert!(matches!(
            directory.add_user("ALICE", "pw2", PersonDetails::default()).await,
            Err(DirectoryError::UserExists(name)) if name == "alice"
        ));
        assert!(matches!(
            directory.add_user("a/b", "pw", PersonDetails::default()).await,
            Err(DirectoryError::InvalidLocalpart(_))
        ));
        assert!(matches!(
            directory.add_user("carol", "", PersonDetails::default()).await,
            Err(DirectoryError::InvalidPassword(_))
        ));
    }

    #[tokio::test]
    async fn scram_credentials_verify_the_password() {
        let (_dir, directory) = temp_directory().await;
        directory
            .add_user("alice", "pencil", PersonDetails::default())
            .await
            .unwrap();
        for hash in [ScramHash::Sha1, ScramHash::Sha256] {
            let creds = directory.scram_credentials("alice", hash).await.unwrap().unwrap();
            assert_eq!(creds.salt.len(), SCRAM_SALT_LEN);
            assert_eq!(creds.iterations, SCRAM_ITERATIONS);
            let again = ScramCredentials::derive(hash, "pencil", &creds.salt, creds.iterations);
            assert_eq!(again, creds);
        }
        assert_eq!(
            directory
                .scram_credentials("bob", ScramHash::Sha256)
                .await
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn set_password_and_remove() {
        let (_dir, directory) = temp_directory().await;
        directory
            .add_user("alice", "old", PersonDetails::default())
            .await
            .unwrap();
        let old_scram = directory
            .scram_credentials("alice", ScramHash::Sha256)
            .await
            .unwrap()
            .unwrap();
        directory.set_password("Alice", "new").await.unwrap();
        assert_eq!(
            directory.authenticate("alice", "old").await.unwrap(),
            AuthOutcome::Rejected
        );
        assert_eq!(
            directory.authenticate("alice", "new").await.unwrap(),
            AuthOutcome::Accepted
        );
        let new_scram = directory
            .scram_credentials("alice", ScramHash::Sha256)
            .await
            .unwrap()
            .unwrap();
        assert_ne!(old_scram.salt, new_scram.salt);
        assert!(matches!(
            directory.set_password("bob", "x").await,
            Err(DirectoryError::NoSuchUser(_))
        ));

        directory.remove_user("alice").await.unwrap();
        assert_eq!(
            directory.authenticate("alice", "new").await.unwrap(),
            AuthOutcome::Rejected
        );
        assert!(matches!(
            directory.remove_user("alice").await,
            Err(DirectoryError::NoSuchUser(_))
        ));
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn file_is_private_and_no_temp_files_remain() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, directory) = temp_directory().await;
        directory
            .add_user("alice", "pw", PersonDetails::default())
            .await
            .unwrap();
        let mode = std::fs::metadata(directory.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("users.toml")]);
        let text = std::fs::read_to_string(directory.path()).unwrap();
        assert!(text.contains("$argon2id$"), "{text}");
        assert!(!text.contains("\"pw\""), "password leaked into file");
    }

    #[tokio::test]
    async fn second_instance_sees_writes_and_removal_is_announced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("users.toml");
        let cli = StaticDirectory::open(&path).await.unwrap();
        let server = StaticDirectory::open(&path).await.unwrap();
        let mut changes = server.subscribe();

        cli.add_user("alice", "pw", details(&["staff"])).await.unwrap();
        cli.add_user("bob", "pw", details(&["staff"])).await.unwrap();
        assert!(server.reload_if_changed().await.unwrap());
        assert_eq!(
            server.authenticate("bob", "pw").await.unwrap(),
            AuthOutcome::Accepted
        );
        assert_eq!(
            changes.recv().await.unwrap(),
            DirectoryChange::GroupChanged("staff".into())
        );
        assert!(
            !server.reload_if_changed().await.unwrap(),
            "unchanged file reloaded"
        );

        cli.remove_user("bob").await.unwrap();
        assert!(server.reload_if_changed().await.unwrap());
        assert_eq!(
            changes.recv().await.unwrap(),
            DirectoryChange::UserRemoved("bob".into())
        );
        assert_eq!(
            changes.recv().await.unwrap(),
            DirectoryChange::GroupChanged("staff".into())
        );
        assert_eq!(server.members("staff").await.unwrap(), vec!["alice".to_string()]);
    }

    #[tokio::test]
    async fn queries_reload_after_the_check_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let cli = StaticDirectory::open(&path).await.unwrap();
        let server = StaticDirectory::open(&path).await.unwrap();
        cli.add_user("alice", "pw", PersonDetails::default())
            .await
            .unwrap();
        // Within the interval the server answers from memory without touching the file.
        assert_eq!(server.person("alice").await.unwrap(), None);
        tokio::time::pause();
        tokio::time::advance(RELOAD_CHECK_INTERVAL + Duration::from_millis(1)).await;
        assert!(server.person("alice").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn parse_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        std::fs::write(&path, "[[user]]\nlocalpart = \"alice\"\nunknown_key = 1\n").unwrap();
        let err = StaticDirectory::open(&path).await.unwrap_err();
        assert!(matches!(err, DirectoryError::Corrupt { .. }));
        assert!(err.to_string().contains("users.toml"), "{err}");
    }

    #[tokio::test]
    async fn invalid_entries_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let cases = [
            "[[user]]\nlocalpart = \"Alice\"\n",
            "[[user]]\nlocalpart = \"a@b\"\n",
            "[[user]]\nlocalpart = \"a\"\n[[user]]\nlocalpart = \"a\"\n",
            "[[user]]\nlocalpart = \"a\"\npassword_argon2id = \"not a phc\"\n",
            "[[user]]\nlocalpart = \"a\"\n[user.scram_sha256]\nsalt = \"AAAA\"\niterations = 4096\n\
             stored_key = \"AAAA\"\nserver_key = \"AAAA\"\n",
            "[[user]]\nlocalpart = \"a\"\n[user.scram_sha1]\nsalt = \"AAAA\"\niterations = 1\n\
             stored_key = \"AAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\nserver_key = \"AAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\n",
            "[[user]]\nlocalpart = \"a\"\n[user.scram_sha1]\nsalt = \"!!\"\niterations = 4096\n\
             stored_key = \"AAAA\"\nserver_key = \"AAAA\"\n",
            "not toml at all [",
        ];
        for case in cases {
            std::fs::write(&path, case).unwrap();
            assert!(
                matches!(
                    StaticDirectory::open(&path).await,
                    Err(DirectoryError::Corrupt { .. })
                ),
                "accepted: {case}"
            );
        }
    }

    #[tokio::test]
    async fn corrupt_file_keeps_previous_accounts_for_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let server = StaticDirectory::open(&path).await.unwrap();
        server
            .add_user("alice", "pw", PersonDetails::default())
            .await
            .unwrap();
        std::fs::write(&path, "garbage [").unwrap();
        assert!(server.reload_if_changed().await.is_err());
        tokio::time::pause();
        tokio::time::advance(RELOAD_CHECK_INTERVAL + Duration::from_millis(1)).await;
        assert!(server.person("alice").await.unwrap().is_some());
        // The CLI refuses to overwrite a file it cannot read.
        assert!(
            server
                .add_user("bob", "pw", PersonDetails::default())
                .await
                .is_err()
        );
    }

    #[test]
    fn diff_reports_people_and_groups() {
        let account = |name: &str, groups: &[&str], title: Option<&str>| Account {
            person: Person {
                localpart: name.into(),
                groups: groups.iter().map(|g| g.to_string()).collect(),
                title: title.map(String::from),
                ..Person::default()
            },
            password_argon2id: None,
            scram_sha1: None,
            scram_sha256: None,
        };
        let old: Accounts = [
            ("a".into(), account("a", &["x"], None)),
            ("b".into(), account("b", &["y"], None)),
        ]
        .into();
        let new: Accounts = [
            ("a".into(), account("a", &["z"], Some("boss"))),
            ("c".into(), account("c", &[], None)),
        ]
        .into();
        assert_eq!(
            diff(&old, &new),
            vec![
                DirectoryChange::PersonChanged("a".into()),
                DirectoryChange::UserRemoved("b".into()),
                DirectoryChange::GroupChanged("x".into()),
                DirectoryChange::GroupChanged("y".into()),
                DirectoryChange::GroupChanged("z".into()),
            ]
        );
        assert!(diff(&old, &old).is_empty());
    }
}

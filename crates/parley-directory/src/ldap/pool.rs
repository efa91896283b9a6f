//! Connections to the LDAP servers: a few service connections per server for searches (each
//! multiplexes operations), a fresh connection per user bind, TLS (StartTLS or LDAPS) with
//! verification on by default, timeouts, and failover. A server that fails is marked down and
//! skipped until the background health check reaches it again, so an outage costs one failed
//! attempt, not one per login.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapError, LdapResult, ResultEntry, Scope, SearchEntry};
use parley_config::{LdapConfig, Secret};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::sync::{Mutex, Semaphore};

use super::mapping::RawEntry;
use crate::DirectoryError;

/// Largest CA file read.
const MAX_CA_FILE_BYTES: u64 = 1024 * 1024;

/// LDAP result code 49: wrong DN or password (RFC 4511 §4.1.9).
const INVALID_CREDENTIALS: u32 = 49;

/// Why one attempt failed: the server (down, slow, broken TLS) or the request (an LDAP answer).
#[derive(Debug)]
pub enum Failure {
    /// The server could not be used; it is marked down and the next one is tried.
    Server(String),
    /// The server answered with an error result; another server would answer the same.
    Answer { code: u32, text: String },
}

impl From<LdapError> for Failure {
    fn from(error: LdapError) -> Self {
        match error {
            LdapError::LdapResult { result } => {
                // busy, unavailable, unwilling to perform, other: a server problem, not an answer.
                if matches!(result.rc, 51 | 52 | 53 | 80) {
                    Self::Server(format!("result code {}: {}", result.rc, result.text))
                } else {
                    Self::Answer {
                        code: result.rc,
                        text: result.text,
                    }
                }
            }
            other => Self::Server(other.to_string()),
        }
    }
}

struct Server {
    url: String,
    down: AtomicBool,
    search: Mutex<Vec<Ldap>>,
    next: AtomicUsize,
    /// Connections that carried a user bind and may carry the next one (LDAP allows a new bind
    /// on a bound connection). They are used for binds only, never for searches, so nothing
    /// runs with a previous user's identity; reusing them saves a TCP and TLS handshake (about
    /// half the CPU of an LDAP login, for Parley and the server alike).
    idle_binds: std::sync::Mutex<Vec<Ldap>>,
}

impl Server {
    fn bind_connections(&self) -> std::sync::MutexGuard<'_, Vec<Ldap>> {
        self.idle_binds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Every configured server and how to reach it.
pub struct Pool {
    servers: Vec<Server>,
    settings: LdapConnSettings,
    connect_timeout: Duration,
    pub operation_timeout: Duration,
    search_connections: usize,
    bind_dn: String,
    bind_password: Option<Secret>,
    binds: Semaphore,
    max_idle_binds: usize,
    page_size: i32,
}

impl Pool {
    pub fn new(config: &LdapConfig) -> Result<Self, DirectoryError> {
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(config.connect_timeout.get())
            .set_starttls(config.starttls);
        if !config.tls_verify {
            settings = settings.set_no_tls_verify(true);
        } else if let Some(path) = &config.ca_file {
            settings = settings.set_config(tls_config_trusting(path)?);
        }
        if config.servers.is_empty() {
            return Err(DirectoryError::Unavailable("no LDAP servers configured".into()));
        }
        Ok(Self {
            servers: config
                .servers
                .iter()
                .map(|url| Server {
                    url: url.clone(),
                    down: AtomicBool::new(false),
                    search: Mutex::new(Vec::new()),
                    next: AtomicUsize::new(0),
                    idle_binds: std::sync::Mutex::new(Vec::new()),
                })
                .collect(),
            settings,
            connect_timeout: config.connect_timeout.get(),
            operation_timeout: config.operation_timeout.get(),
            search_connections: config.search_connections.max(1),
            bind_dn: config.bind_dn.clone(),
            bind_password: config.bind_password.clone(),
            binds: Semaphore::new(config.max_concurrent_binds.max(1)),
            max_idle_binds: config.max_concurrent_binds.max(1),
            page_size: i32::try_from(config.page_size.max(1)).unwrap_or(i32::MAX),
        })
    }

    /// Connections kept for the next user bind, over all servers (diagnostics).
    pub fn idle_bind_connections(&self) -> usize {
        self.servers
            .iter()
            .map(|server| server.bind_connections().len())
            .sum()
    }

    /// (url, up) for every server, for diagnostics.
    pub fn status(&self) -> Vec<(String, bool)> {
        self.servers
            .iter()
            .map(|server| (server.url.clone(), !server.down.load(Ordering::Relaxed)))
            .collect()
    }

    /// Opens a connection (TCP, then TLS or StartTLS) within the connect timeout.
    async fn open(&self, url: &str) -> Result<Ldap, Failure> {
        let (connection, ldap) = tokio::time::timeout(self.connect_timeout, self.connect(url))
            .await
            .map_err(|_| Failure::Server(format!("no connection within {:?}", self.connect_timeout)))??;
        tokio::spawn(async move {
            if let Err(error) = connection.drive().await {
                tracing::debug!(%error, "LDAP connection ended");
            }
        });
        Ok(ldap)
    }

    /// Connects the TCP socket itself, with Nagle's algorithm off, and hands it to ldap3: a bind
    /// request written right after the TLS handshake otherwise waits for the server's delayed
    /// ACK (~40 ms on Linux), which capped LDAP logins at about 22 per second per bind slot.
    async fn connect(&self, url: &str) -> Result<(LdapConnAsync, Ldap), Failure> {
        let parsed = url::Url::parse(url).map_err(|error| Failure::Server(format!("{url}: {error}")))?;
        let port = match (parsed.port(), parsed.scheme()) {
            (Some(port), _) => port,
            (None, "ldaps") => 636,
            (None, "ldap") => 389,
            (None, other) => return Err(Failure::Server(format!("{url}: unsupported scheme {other}"))),
        };
        let socket = match parsed.host() {
            Some(url::Host::Domain(name)) => tokio::net::TcpStream::connect((name, port)).await,
            Some(url::Host::Ipv4(address)) => tokio::net::TcpStream::connect((address, port)).await,
            Some(url::Host::Ipv6(address)) => tokio::net::TcpStream::connect((address, port)).await,
            None => return Err(Failure::Server(format!("{url}: no host"))),
        };
        let socket = socket
            .and_then(|socket| {
                socket.set_nodelay(true)?;
                socket.into_std()
            })
            .map_err(|error| Failure::Server(format!("{url}: {error}")))?;
        let settings = self
            .settings
            .clone()
            .set_std_stream(ldap3::StdStream::Tcp(socket));
        Ok(LdapConnAsync::from_url_with_settings(settings, &parsed).await?)
    }

    /// Opens a connection bound as the service account.
    async fn open_service(&self, url: &str) -> Result<Ldap, Failure> {
        let mut ldap = self.open(url).await?;
        if let Some(password) = &self.bind_password {
            ldap.with_timeout(self.operation_timeout);
            ldap.simple_bind(&self.bind_dn, password.expose())
                .await?
                .success()?;
        }
        Ok(ldap)
    }

    /// A service connection to server `index`, opening one while fewer than configured exist.
    async fn service(&self, index: usize) -> Result<Ldap, Failure> {
        let server = &self.servers[index];
        let mut connections = server.search.lock().await;
        connections.retain(|ldap| !ldap.clone().is_closed());
        if connections.len() < self.search_connections {
            let ldap = self.open_service(&server.url).await?;
            connections.push(ldap.clone());
            return Ok(ldap);
        }
        let turn = server.next.fetch_add(1, Ordering::Relaxed) % connections.len();
        Ok(connections[turn].clone())
    }

    fn mark_down(&self, index: usize, reason: &str) {
        let server = &self.servers[index];
        if !server.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(server = %server.url, %reason, "LDAP server marked down; using the others until it answers again");
        }
        // Its connections are dead or untrustworthy: the health check opens new ones.
        if let Ok(mut connections) = server.search.try_lock() {
            connections.clear();
        }
        server.bind_connections().clear();
    }

    /// Runs `operation` on a service connection of the first server that is up; a server
    /// failure marks that server down and moves on. Returns the result and the server used.
    pub async fn with_service<T, F, Fut>(&self, operation: F) -> Result<(T, usize), DirectoryError>
    where
        F: Fn(Ldap) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut last_failure = None;
        for index in 0..self.servers.len() {
            if self.servers[index].down.load(Ordering::Relaxed) {
                continue;
            }
            let attempt = async {
                let ldap = self.service(index).await?;
                operation(ldap).await
            };
            match attempt.await {
                Ok(value) => return Ok((value, index)),
                Err(Failure::Server(reason)) => {
                    self.mark_down(index, &reason);
                    last_failure = Some(reason);
                }
                Err(Failure::Answer { code, text }) => return Err(answer_error(code, &text)),
            }
        }
        Err(no_server_answered(last_failure))
    }

    /// A new service connection to the first server that is up, outside the search set: for
    /// a long-running operation (the syncrepl search) that must not occupy a search connection.
    pub async fn open_dedicated(&self) -> Result<Ldap, DirectoryError> {
        let mut last_failure = None;
        for (index, server) in self.servers.iter().enumerate() {
            if server.down.load(Ordering::Relaxed) {
                continue;
            }
            match self.open_service(&server.url).await {
                Ok(ldap) => return Ok(ldap),
                Err(Failure::Server(reason)) => {
                    self.mark_down(index, &reason);
                    last_failure = Some(reason);
                }
                Err(Failure::Answer { code, text }) => return Err(answer_error(code, &text)),
            }
        }
        Err(no_server_answered(last_failure))
    }

    /// Checks `password` by binding as `dn` on a fresh connection to server `index`.
    /// Ok(false) for a wrong password or any refusal by the server.
    pub async fn user_bind(&self, index: usize, dn: &str, password: &str) -> Result<bool, DirectoryError> {
        let _permit = self
            .binds
            .acquire()
            .await
            .map_err(|_| DirectoryError::Internal("bind limiter closed".into()))?;
        let server = &self.servers[index];
        let reused = server.bind_connections().pop();
        let result = match reused {
            Some(ldap) => match self.bind_on(ldap, index, dn, password).await {
                // The server may have dropped an idle connection: that says nothing about the
                // server or the password, so try once more on a new one.
                Err(Failure::Server(reason)) => {
                    tracing::debug!(server = %server.url, %reason, "reused LDAP bind connection failed");
                    self.bind_fresh(index, dn, password).await
                }
                other => other,
            },
            None => self.bind_fresh(index, dn, password).await,
        };
        match result {
            Ok(outcome) if outcome.rc == 0 => Ok(true),
            Ok(outcome) if outcome.rc == INVALID_CREDENTIALS => Ok(false),
            Ok(outcome) => {
                tracing::info!(%dn, code = outcome.rc, text = %outcome.text, "LDAP refused a user bind");
                Ok(false)
            }
            Err(Failure::Answer { .. }) => Ok(false),
            Err(Failure::Server(reason)) => {
                self.mark_down(index, &reason);
                Err(DirectoryError::Unavailable(format!("LDAP bind failed: {reason}")))
            }
        }
    }

    async fn bind_fresh(&self, index: usize, dn: &str, password: &str) -> Result<LdapResult, Failure> {
        let ldap = self.open(&self.servers[index].url).await?;
        self.bind_on(ldap, index, dn, password).await
    }

    /// One simple bind; the connection goes back to the server's idle binds when the server
    /// answered (whatever the answer), up to the bind concurrency.
    async fn bind_on(
        &self,
        mut ldap: Ldap,
        index: usize,
        dn: &str,
        password: &str,
    ) -> Result<LdapResult, Failure> {
        ldap.with_timeout(self.operation_timeout);
        let outcome = ldap.simple_bind(dn, password).await?;
        let surplus = {
            let mut idle = self.servers[index].bind_connections();
            if idle.len() < self.max_idle_binds {
                idle.push(ldap);
                None
            } else {
                Some(ldap)
            }
        };
        if let Some(mut surplus) = surplus {
            let _ = surplus.unbind().await;
        }
        Ok(outcome)
    }

    /// Tries every server marked down once; those that answer are marked up again.
    pub async fn health_check(&self) {
        for server in &self.servers {
            if !server.down.load(Ordering::Relaxed) {
                continue;
            }
            match self.open_service(&server.url).await {
                Ok(ldap) => {
                    server.search.lock().await.push(ldap);
                    server.down.store(false, Ordering::Relaxed);
                    tracing::info!(server = %server.url, "LDAP server is answering again");
                }
                Err(failure) => tracing::debug!(server = %server.url, ?failure, "LDAP server still down"),
            }
        }
    }

    /// A search returning at most `limit` entries (more is an error), page by page.
    pub async fn search(
        &self,
        ldap: Ldap,
        base: &str,
        scope: Scope,
        filter: &str,
        attributes: &[String],
        limit: usize,
    ) -> Result<Vec<RawEntry>, Failure> {
        let mut ldap = ldap;
        ldap.with_timeout(self.operation_timeout);
        let adapters: Vec<Box<dyn Adapter<String, Vec<String>>>> = vec![
            Box::new(EntriesOnly::new()),
            Box::new(PagedResults::new(self.page_size)),
        ];
        let attributes = if attributes.is_empty() {
            // "1.1" asks for no attributes at all (RFC 4511 §4.5.1.8).
            vec!["1.1".to_owned()]
        } else {
            attributes.to_vec()
        };
        let started = ldap.streaming_search_with(adapters, base, scope, filter, attributes);
        let mut stream = tokio::time::timeout(self.operation_timeout, started)
            .await
            .map_err(|_| Failure::Server("search timed out".into()))??;
        let mut entries = Vec::new();
        loop {
            let next = tokio::time::timeout(self.operation_timeout, stream.next())
                .await
                .map_err(|_| Failure::Server("search timed out".into()))??;
            let Some(entry) = next else { break };
            if entries.len() >= limit {
                let _ = stream.finish().await;
                return Err(Failure::Answer {
                    code: 4,
                    text: format!("more than {limit} entries match"),
                });
            }
            match parse_entry(entry) {
                Some(entry) => entries.push(entry),
                None => return Err(Failure::Server("malformed search entry".into())),
            }
        }
        let result = stream.finish().await;
        match result.rc {
            0 => Ok(entries),
            // noSuchObject: the base does not exist, so nothing matches.
            32 => Ok(Vec::new()),
            _ => Err(LdapError::LdapResult { result }.into()),
        }
    }
}

/// Parses an entry; ldap3 panics on malformed BER, which must not take a session down.
fn parse_entry(entry: ResultEntry) -> Option<RawEntry> {
    let parsed =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| SearchEntry::construct(entry))).ok()?;
    Some(RawEntry::new(parsed.dn, parsed.attrs).with_binary(parsed.bin_attrs))
}

/// A rustls configuration trusting only the CA certificates in `path`.
fn tls_config_trusting(path: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, DirectoryError> {
    use std::io::Read;
    let io = |source| DirectoryError::Io {
        path: path.to_owned(),
        source,
    };
    let mut pem = Vec::new();
    std::fs::File::open(path)
        .map_err(io)?
        .take(MAX_CA_FILE_BYTES + 1)
        .read_to_end(&mut pem)
        .map_err(io)?;
    let corrupt = |reason: String| DirectoryError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    if pem.len() as u64 > MAX_CA_FILE_BYTES {
        return Err(corrupt(format!("larger than {MAX_CA_FILE_BYTES} bytes")));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|error| corrupt(format!("not PEM certificates: {error}")))?;
        roots
            .add(cert)
            .map_err(|error| corrupt(format!("invalid CA certificate: {error}")))?;
    }
    if roots.is_empty() {
        return Err(corrupt("contains no certificate".into()));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| DirectoryError::Internal(format!("TLS setup: {error}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// An LDAP server refused the operation itself (not a connection problem).
fn answer_error(code: u32, text: &str) -> DirectoryError {
    DirectoryError::Unavailable(format!("LDAP error {code}: {text}"))
}

/// Every configured server failed or is marked down.
fn no_server_answered(last_failure: Option<String>) -> DirectoryError {
    DirectoryError::Unavailable(match last_failure {
        Some(reason) => format!("no LDAP server answered (last: {reason})"),
        None => "every LDAP server is marked down".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_file_errors_are_typed() {
        let dir = tempfile::tempdir().unwrap();
        let missing = tls_config_trusting(&dir.path().join("absent.pem"));
        assert!(matches!(missing, Err(DirectoryError::Io { .. })));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        assert!(matches!(
            tls_config_trusting(&empty),
            Err(DirectoryError::Corrupt { .. })
        ));
    }

    #[test]
    fn result_codes_are_classified() {
        let answer = |rc| {
            Failure::from(LdapError::LdapResult {
                result: ldap3::LdapResult {
                    rc,
                    matched: String::new(),
                    text: "t".into(),
                    refs: vec![],
                    ctrls: vec![],
                },
            })
        };
        assert!(matches!(answer(32), Failure::Answer { code: 32, .. }));
        assert!(matches!(answer(52), Failure::Server(_)));
        assert!(matches!(
            Failure::from(LdapError::FilterParsing),
            Failure::Server(_)
        ));
    }

    #[tokio::test]
    async fn a_dead_server_is_skipped_until_the_health_check() {
        // A port nobody listens on: connections are refused at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = LdapConfig {
            servers: vec![format!("ldap://127.0.0.1:{port}")],
            starttls: false,
            ..LdapConfig::default()
        };
        let pool = Pool::new(&config).unwrap();
        let calls = AtomicUsize::new(0);
        let first = pool
            .with_service(|_| async {
                calls.fetch_add(1, Ordering::Relaxed);
                Ok(())
            })
            .await;
        assert!(
            matches!(first, Err(DirectoryError::Unavailable(ref m)) if m.contains("no LDAP server answered"))
        );
        assert_eq!(pool.status(), [(config.servers[0].clone(), false)]);
        let second = pool.with_service(|_| async { Ok(()) }).await;
        assert!(matches!(second, Err(DirectoryError::Unavailable(ref m)) if m.contains("marked down")));
        pool.health_check().await;
        assert!(!pool.status()[0].1, "still down");
        assert_eq!(calls.load(Ordering::Relaxed), 0, "the operation never ran");
    }
}

//! The real server, in-process, on loopback port 0 with a temp data directory.

use crate::certs::TestCa;
use parley_config::{Config, StorageBackend};
use parley_directory::{PersonDetails, StaticDirectory};
use parley_server::RunningServer;
use std::net::SocketAddr;
use std::time::Duration;

/// Adjusts the configuration before the server starts.
pub type ConfigTweak = Box<dyn FnOnce(&mut Config) + Send>;

pub struct TestServerOptions {
    pub domain: String,
    /// Accounts created before start: (localpart, password).
    pub users: Vec<(String, String)>,
    pub storage: StorageBackend,
    /// Adjusts the configuration before start.
    pub tweak: Option<ConfigTweak>,
}

impl Default for TestServerOptions {
    fn default() -> Self {
        Self {
            domain: "localhost".into(),
            users: vec![
                ("alice".into(), "alice-secret".into()),
                ("bob".into(), "bob-secret".into()),
            ],
            storage: StorageBackend::Redb,
            tweak: None,
        }
    }
}

pub struct TestServer {
    pub server: Option<RunningServer>,
    pub config: Config,
    pub ca: TestCa,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(TestServerOptions::default()).await
    }

    pub async fn start_with(options: TestServerOptions) -> Self {
        parley_server::install_crypto_provider();
        let dir = tempfile::tempdir().expect("a temp dir");
        let ca = TestCa::generate(&dir.path().join("tls"), &options.domain).expect("test certificates");
        let mut config = Config::default();
        config.server.domain = options.domain.clone();
        config.server.data_dir = dir.path().join("data");
        config.tls.cert = Some(ca.cert_path.clone());
        config.tls.key = Some(ca.key_path.clone());
        config.storage.backend = options.storage;
        let loopback: SocketAddr = "127.0.0.1:0".parse().expect("a loopback address");
        config.c2s.starttls_listen = vec![loopback];
        config.c2s.direct_tls_listen = vec![loopback];
        config.admin_http.listen = None;
        if let Some(tweak) = options.tweak {
            tweak(&mut config);
        }
        std::fs::create_dir_all(&config.server.data_dir).expect("the data dir");
        let directory = StaticDirectory::open(config.static_directory_path())
            .await
            .expect("the user file");
        for (localpart, password) in &options.users {
            directory
                .add_user(localpart, password, PersonDetails::default())
                .await
                .expect("adding a test user");
        }
        let server = parley_server::start(&config).await.expect("the server starts");
        Self {
            server: Some(server),
            config,
            ca,
            dir,
        }
    }

    fn running(&self) -> &RunningServer {
        self.server.as_ref().expect("the server is running")
    }

    pub fn domain(&self) -> &str {
        &self.config.server.domain
    }

    pub fn starttls_addr(&self) -> SocketAddr {
        self.running().starttls_addrs[0]
    }

    pub fn direct_tls_addr(&self) -> SocketAddr {
        self.running().direct_tls_addrs[0]
    }

    pub fn router(&self) -> &parley_router::Router {
        &self.running().router
    }

    /// Adds an account while the server runs, as `parley user add` would.
    pub async fn add_user(&self, localpart: &str, password: &str) {
        let directory = StaticDirectory::open(self.config.static_directory_path())
            .await
            .expect("the user file");
        directory
            .add_user(localpart, password, PersonDetails::default())
            .await
            .expect("adding a user");
    }

    /// A raw client connected to the STARTTLS port.
    pub async fn raw(&self) -> crate::RawClient {
        crate::RawClient::connect(self.starttls_addr(), self.domain(), self.ca.client_config()).await
    }

    /// Stops the server and waits until every session has closed.
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(20), server.shutdown())
                .await
                .expect("shutdown in time");
        }
    }
}

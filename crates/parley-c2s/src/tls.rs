//! TLS for client streams: certificates from PEM files, swapped at run time without a restart.

use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no usable PEM private key: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("the certificate and key do not work together: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The ALPN protocol id of XMPP over direct TLS (XEP-0368).
const XMPP_CLIENT_ALPN: &[u8] = b"xmpp-client";

struct Loaded {
    starttls: Arc<ServerConfig>,
    direct: Arc<ServerConfig>,
    stamp: Option<(SystemTime, SystemTime)>,
}

/// The current TLS configurations, one for STARTTLS and one for direct TLS (with ALPN).
pub struct TlsSettings {
    cert_path: PathBuf,
    key_path: PathBuf,
    loaded: RwLock<Loaded>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn server_config(cert_path: &Path, key_path: &Path, alpn: bool) -> Result<ServerConfig, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read(cert_path)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_owned(),
        });
    }
    let key_pem = read(key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::BadKey {
        path: key_path.to_owned(),
        reason: e.to_string(),
    })?;
    // TLS 1.2 and 1.3 only (rustls offers nothing older). Extended master secret is required
    // so the tls-exporter channel binding (RFC 9266) is sound on TLS 1.2 as well.
    let mut config =
        ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
    config.require_ems = true;
    // Session tickets cost memory per connection and clients reconnect rarely.
    config.send_tls13_tickets = 0;
    if alpn {
        config.alpn_protocols = vec![XMPP_CLIENT_ALPN.to_vec()];
    }
    Ok(config)
}

impl TlsSettings {
    /// Loads the certificate chain and key; fails with the reason if they are unusable.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let loaded = Self::read(cert_path, key_path)?;
        Ok(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            loaded: RwLock::new(loaded),
        })
    }

    fn read(cert_path: &Path, key_path: &Path) -> Result<Loaded, TlsError> {
        let stamp = modified(cert_path).zip(modified(key_path));
        Ok(Loaded {
            starttls: Arc::new(server_config(cert_path, key_path, false)?),
            direct: Arc::new(server_config(cert_path, key_path, true)?),
            stamp,
        })
    }

    pub fn starttls_config(&self) -> Arc<ServerConfig> {
        self.loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .starttls
            .clone()
    }

    pub fn direct_tls_config(&self) -> Arc<ServerConfig> {
        self.loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .direct
            .clone()
    }

    /// Re-reads the files. On failure the current certificate stays in use. New connections
    /// get the new certificate; established ones keep theirs.
    pub fn reload(&self) -> Result<(), TlsError> {
        let loaded = Self::read(&self.cert_path, &self.key_path)?;
        *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = loaded;
        Ok(())
    }

    /// Reloads when either file's modification time changed; returns whether it reloaded.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = modified(&self.cert_path).zip(modified(&self.key_path));
        let before = self.loaded.read().unwrap_or_else(|e| e.into_inner()).stamp;
        if now.is_none() || now == before {
            return Ok(false);
        }
        self.reload().map(|()| true)
    }
}

//! The byte stream under a session: plain TCP before STARTTLS, TLS after it (or from the start with
//! direct TLS), and the rustls client configuration shared by all sessions.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

#[derive(Debug, Error)]
pub enum TlsSetupError {
    #[error("reading CA file {path}: {source}")]
    CaFile {
        path: String,
        source: rustls_pki_types::pem::Error,
    },
    #[error("CA file {0} holds no usable certificate")]
    NoCertificates(String),
    #[error("neither --ca nor --insecure given: the tool has no way to trust the server")]
    NoTrust,
}

/// Builds the one client config every session shares (sessions resumption cache included).
pub fn client_config(ca: Option<&Path>, insecure: bool) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let builder = ClientConfig::builder();
    let config = if insecure {
        let provider = rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth()
    } else {
        let path = ca.ok_or(TlsSetupError::NoTrust)?;
        let mut roots = RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(path).map_err(|source| TlsSetupError::CaFile {
            path: path.display().to_string(),
            source,
        })?;
        for cert in certs {
            let cert = cert.map_err(|source| TlsSetupError::CaFile {
                path: path.display().to_string(),
                source,
            })?;
            // A PEM with a non-CA block is skipped rather than fatal; emptiness is checked below.
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err(TlsSetupError::NoCertificates(path.display().to_string()));
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// `--insecure`: any certificate is accepted, but handshake signatures are still checked so the
/// cryptographic cost stays the same as with verification on.
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A session's transport. Both variants are `Unpin`, so delegation needs no pin projection.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    pub fn is_tls(&self) -> bool {
        matches!(self, Conn::Tls(_))
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_configuration_errors() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        assert!(matches!(client_config(None, false), Err(TlsSetupError::NoTrust)));
        assert!(client_config(None, true).is_ok());
        let missing = Path::new("/nonexistent/ca.pem");
        assert!(matches!(
            client_config(Some(missing), false),
            Err(TlsSetupError::CaFile { .. })
        ));
        let dir = std::env::temp_dir().join(format!("parley-load-ca-{}", std::process::id()));
        std::fs::write(&dir, "not a certificate\n").unwrap();
        let result = client_config(Some(&dir), false);
        std::fs::remove_file(&dir).unwrap();
        assert!(matches!(result, Err(TlsSetupError::NoCertificates(_))));
    }
}

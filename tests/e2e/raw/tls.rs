//! TLS as a client sees it: STARTTLS (RFC 6120 §5), direct TLS with ALPN (XEP-0368), protocol
//! versions (RFC 9325 §3.1.1: TLS 1.2 or later) and certificate renewal without a restart.

use super::{STREAM_NAMESPACES, bound, header_with, server_with};
use base64::Engine;
use parley_config::Duration as ConfigDuration;
use parley_testkit::{TestCa, TestServer};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const TIMEOUT: Duration = Duration::from_secs(10);

/// A minimal sent/expected wire over any transport, for streams `RawClient` can't make.
struct Wire<S> {
    io: S,
    pending: String,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    fn new(io: S) -> Self {
        Self {
            io,
            pending: String::new(),
        }
    }

    async fn send(&mut self, xml: &str) {
        self.io
            .write_all(xml.as_bytes())
            .await
            .expect("writing to the server");
        self.io.flush().await.expect("flushing to the server");
    }

    /// Waits until `needle` arrived; returns everything up to and including it.
    async fn expect(&mut self, needle: &str) -> String {
        let read = async {
            loop {
                if let Some(at) = self.pending.find(needle) {
                    let rest = self.pending.split_off(at + needle.len());
                    return std::mem::replace(&mut self.pending, rest);
                }
                let mut chunk = [0u8; 4096];
                let n = self.io.read(&mut chunk).await.expect("reading from the server");
                assert!(
                    n > 0,
                    "connection closed before {needle:?}; received {:?}",
                    self.pending
                );
                self.pending.push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        };
        tokio::time::timeout(TIMEOUT, read)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {needle:?}"))
    }
}

fn open_header() -> String {
    header_with(&format!("{STREAM_NAMESPACES} to='localhost' version='1.0'"))
}

fn server_name() -> ServerName<'static> {
    ServerName::try_from("localhost").expect("a valid server name")
}

/// Plaintext stream, `<starttls/>`, `<proceed/>`, then the TLS handshake with `config`.
async fn starttls_handshake(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut wire = Wire::new(TcpStream::connect(addr).await?);
    wire.send(&open_header()).await;
    wire.expect("</stream:features>").await;
    wire.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await;
    wire.expect("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await;
    TlsConnector::from(config).connect(server_name(), wire.io).await
}

/// TLS from the first byte, as XEP-0368 direct TLS.
async fn direct_handshake(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(config).connect(server_name(), tcp).await
}

/// `base` with different ALPN protocols offered.
fn with_alpn(base: &Arc<rustls::ClientConfig>, protocols: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut config = (**base).clone();
    config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A client trusting `ca` that speaks only `version`.
fn only_version(
    ca: &TestCa,
    version: &'static rustls::SupportedProtocolVersion,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.ca_pem.as_bytes()) {
        roots
            .add(cert.expect("the test CA is PEM"))
            .expect("the test CA is a certificate");
    }
    Arc::new(
        rustls::ClientConfig::builder_with_protocol_versions(&[version])
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// The first certificate of a PEM chain file (the leaf).
fn leaf_of(path: &std::path::Path) -> CertificateDer<'static> {
    CertificateDer::pem_file_iter(path)
        .expect("the certificate file")
        .next()
        .expect("a certificate in the file")
        .expect("valid PEM")
}

fn presented_leaf(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref()
        .1
        .peer_certificates()
        .expect("the server presented a certificate")[0]
        .clone()
}

// RFC 6120 §5.4.3 and RFC 9325 §3.1.1: STARTTLS completes against the test CA on TLS 1.2 or 1.3
// (rustls cannot even offer 1.0/1.1), and the stream restarts over TLS.
#[tokio::test]
async fn starttls_negotiates_a_modern_tls_version() {
    let server = TestServer::start().await;
    let tls = starttls_handshake(server.starttls_addr(), server.ca.client_config())
        .await
        .expect("handshake");
    let version = tls.get_ref().1.protocol_version();
    assert!(
        matches!(
            version,
            Some(rustls::ProtocolVersion::TLSv1_2 | rustls::ProtocolVersion::TLSv1_3)
        ),
        "negotiated {version:?}"
    );
    let mut wire = Wire::new(tls);
    wire.send(&open_header()).await;
    let features = wire.expect("</stream:features>").await;
    assert!(features.contains("<mechanism>PLAIN</mechanism>"), "{features}");
}

// RFC 9325 §3.1.1: TLS 1.2 is still served, and the channel-binding (-PLUS) mechanisms stay
// available on it because the server requires the extended master secret (RFC 9266 §3).
#[tokio::test]
async fn tls12_client_is_served_with_channel_binding() {
    let server = TestServer::start().await;
    let tls = starttls_handshake(
        server.starttls_addr(),
        only_version(&server.ca, &rustls::version::TLS12),
    )
    .await
    .expect("a TLS 1.2 handshake");
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let mut wire = Wire::new(tls);
    wire.send(&open_header()).await;
    let features = wire.expect("</stream:features>").await;
    assert!(
        features.contains("<mechanism>SCRAM-SHA-256-PLUS</mechanism>"),
        "{features}"
    );
}

// XEP-0368 §3 and RFC 7301: direct TLS negotiates ALPN "xmpp-client"; the stream then offers
// SASL right away (no STARTTLS), and a full login works.
#[tokio::test]
async fn direct_tls_with_alpn_xmpp_client() {
    let server = TestServer::start().await;
    let config = with_alpn(&server.ca.client_config(), &[b"xmpp-client"]);
    let tls = direct_handshake(server.direct_tls_addr(), config)
        .await
        .expect("a direct TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"xmpp-client"[..]));
    let version = tls.get_ref().1.protocol_version();
    assert!(matches!(
        version,
        Some(rustls::ProtocolVersion::TLSv1_2 | rustls::ProtocolVersion::TLSv1_3)
    ));
    let mut wire = Wire::new(tls);
    wire.send(&open_header()).await;
    let features = wire.expect("</stream:features>").await;
    assert!(
        !features.contains("<starttls"),
        "no STARTTLS inside TLS: {features}"
    );
    assert!(
        features.contains("<mechanism>SCRAM-SHA-256-PLUS</mechanism>"),
        "{features}"
    );
    assert!(features.contains("<mechanism>PLAIN</mechanism>"), "{features}");
    let token = base64::engine::general_purpose::STANDARD.encode("\0alice\0alice-secret");
    wire.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
    ))
    .await;
    wire.expect("<success").await;
    wire.send(&open_header()).await;
    wire.expect("</stream:features>").await;
    wire.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>direct</resource></bind></iq>")
        .await;
    let bound = wire.expect("</iq>").await;
    assert!(bound.contains("<jid>alice@localhost/direct</jid>"), "{bound}");
}

// XEP-0368 §3: a client that sends no ALPN is still served (ALPN is a SHOULD for clients).
#[tokio::test]
async fn direct_tls_without_alpn_is_served() {
    let server = TestServer::start().await;
    let tls = direct_handshake(server.direct_tls_addr(), server.ca.client_config())
        .await
        .expect("handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    let mut wire = Wire::new(tls);
    wire.send(&open_header()).await;
    wire.expect("</stream:features>").await;
}

// RFC 7301 §3.2: a client offering only a foreign protocol is refused in the handshake.
#[tokio::test]
async fn direct_tls_with_foreign_alpn_is_refused() {
    let server = TestServer::start().await;
    let config = with_alpn(&server.ca.client_config(), &[b"h2"]);
    let result = direct_handshake(server.direct_tls_addr(), config).await;
    assert!(
        result.is_err(),
        "the handshake should fail without a common protocol"
    );
}

/// Replaces the server's certificate and key files with a fresh chain from a new CA.
fn renew_certificate(server: &TestServer, scratch: &std::path::Path) -> TestCa {
    let renewed = TestCa::generate(scratch, "localhost").expect("a second test CA");
    std::fs::copy(&renewed.key_path, &server.ca.key_path).expect("replacing the key");
    std::fs::copy(&renewed.cert_path, &server.ca.cert_path).expect("replacing the certificate");
    renewed
}

// Renewal without a restart (DESIGN: "TLS reloads"): after `reload()` new connections get the
// new certificate on both ports, the old chain is no longer presented, and a session opened
// before the renewal stays up.
#[tokio::test]
async fn certificate_reload_serves_new_chain_and_keeps_old_sessions() {
    let server = server_with(|config| config.tls.reload_interval = ConfigDuration::from_secs(0)).await;
    let mut old_session = bound(&server, "alice", "desk").await;
    let scratch = tempfile::tempdir().expect("a temp dir");
    let renewed = renew_certificate(&server, scratch.path());
    server
        .server
        .as_ref()
        .expect("running")
        .tls
        .reload()
        .expect("the renewed files load");

    let new_leaf = leaf_of(&renewed.cert_path);
    let tls = starttls_handshake(server.starttls_addr(), renewed.client_config())
        .await
        .expect("new chain");
    assert_eq!(
        presented_leaf(&tls),
        new_leaf,
        "STARTTLS presents the renewed leaf"
    );
    let tls = direct_handshake(server.direct_tls_addr(), renewed.client_config())
        .await
        .expect("new chain");
    assert_eq!(
        presented_leaf(&tls),
        new_leaf,
        "direct TLS presents the renewed leaf"
    );
    assert!(
        starttls_handshake(server.starttls_addr(), server.ca.client_config())
            .await
            .is_err(),
        "a client trusting only the old CA must no longer verify the server"
    );

    old_session
        .send("<iq type='get' id='old'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    old_session.expect("id='old'").await;
}

// The same renewal picked up by the periodic check (`tls.reload_interval`), no call needed.
#[tokio::test]
async fn certificate_reload_by_interval() {
    let server = server_with(|config| config.tls.reload_interval = ConfigDuration::from_millis(100)).await;
    let scratch = tempfile::tempdir().expect("a temp dir");
    let renewed = renew_certificate(&server, scratch.path());
    let new_leaf = leaf_of(&renewed.cert_path);
    // No event to await here: poll briefly until the timer has fired.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match direct_handshake(server.direct_tls_addr(), renewed.client_config()).await {
            Ok(tls) => {
                assert_eq!(presented_leaf(&tls), new_leaf);
                break;
            }
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "not reloaded within 5 s: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

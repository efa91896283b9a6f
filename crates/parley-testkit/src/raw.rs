//! A raw XMPP client for sent/expected XML tests of edge cases a real client never produces.

use base64::Engine;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// How long `expect` waits for the server.
const EXPECT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct RawClient {
    io: Option<Box<dyn Io>>,
    pub domain: String,
    /// The `xml:lang` of the stream headers this client sends (none by default).
    pub stream_lang: Option<String>,
    tls: Arc<rustls::ClientConfig>,
    /// Received and not yet consumed by `expect`.
    pending: String,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr, domain: &str, tls: Arc<rustls::ClientConfig>) -> Self {
        let tcp = TcpStream::connect(addr)
            .await
            .expect("connecting to the test server");
        Self {
            io: Some(Box::new(tcp)),
            domain: domain.to_owned(),
            stream_lang: None,
            tls,
            pending: String::new(),
        }
    }

    fn io(&mut self) -> &mut Box<dyn Io> {
        self.io.as_mut().expect("connected")
    }

    pub async fn send(&mut self, xml: &str) {
        self.send_bytes(xml.as_bytes()).await;
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        let io = self.io();
        // The server may already have closed; a failed write shows up in the next expect.
        let _ = io.write_all(bytes).await;
        let _ = io.flush().await;
    }

    async fn read_more(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        match self.io().read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.pending.push_str(&String::from_utf8_lossy(&chunk[..n]));
                true
            }
        }
    }

    /// Waits until `needle` has arrived; returns everything up to and including it.
    pub async fn expect(&mut self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + EXPECT_TIMEOUT;
        loop {
            if let Some(at) = self.pending.find(needle) {
                let rest = self.pending.split_off(at + needle.len());
                return std::mem::replace(&mut self.pending, rest);
            }
            match tokio::time::timeout_at(deadline, self.read_more()).await {
                Ok(true) => {}
                Ok(false) => panic!("connection closed before {needle:?}; received {:?}", self.pending),
                Err(_) => panic!("timed out waiting for {needle:?}; received {:?}", self.pending),
            }
        }
    }

    /// Reads until the server closes the connection; returns everything unread.
    pub async fn read_to_close(&mut self) -> String {
        let deadline = tokio::time::Instant::now() + EXPECT_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.read_more()).await {
                Ok(true) => {}
                Ok(false) => return std::mem::take(&mut self.pending),
                Err(_) => panic!(
                    "the server did not close the connection; received {:?}",
                    self.pending
                ),
            }
        }
    }

    /// Expects a stream error with `condition`, then the stream close and the end of the connection.
    pub async fn expect_stream_error(&mut self, condition: &str) {
        let received = self.read_to_close().await;
        let wanted = format!("<{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'");
        assert!(
            received.contains("<stream:error>") && received.contains(&wanted),
            "expected stream error {condition}, received {received:?}"
        );
        assert!(
            received.trim_end().ends_with("</stream:stream>"),
            "stream not closed: {received:?}"
        );
    }

    pub fn header(&self) -> String {
        let lang = self
            .stream_lang
            .as_ref()
            .map(|lang| format!(" xml:lang='{lang}'"))
            .unwrap_or_default();
        format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='{}' version='1.0'{lang}>",
            self.domain
        )
    }

    /// Sends a stream header and waits for the server's features.
    pub async fn open_stream(&mut self) -> String {
        let header = self.header();
        self.send(&header).await;
        self.expect("</stream:features>").await
    }

    /// STARTTLS and the new stream on top of it; returns the features offered over TLS.
    pub async fn starttls(&mut self) -> String {
        self.open_stream().await;
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await;
        self.expect("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await;
        let tcp = self.io.take().expect("connected");
        let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
        let name = rustls::pki_types::ServerName::try_from(self.domain.clone()).expect("a server name");
        let tls = connector.connect(name, tcp).await.expect("the TLS handshake");
        self.io = Some(Box::new(tls));
        self.pending.clear();
        self.open_stream().await
    }

    /// SASL PLAIN (after STARTTLS); returns the server's answer (`<success/>` or `<failure>`).
    pub async fn auth_plain(&mut self, user: &str, password: &str) -> String {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
        ))
        .await;
        // `<success/>` may be self-closing or carry additional data; `<failure>` has a child.
        let sasl = "xmlns='urn:ietf:params:xml:ns:xmpp-sasl'";
        let head = self.expect(sasl).await;
        if head.contains("<failure") {
            return head + &self.expect("</failure>").await;
        }
        let tag_end = self.expect(">").await;
        if tag_end.ends_with("/>") {
            return head + &tag_end;
        }
        head + &tag_end + &self.expect("</success>").await
    }

    /// STARTTLS, PLAIN, stream restart and bind; returns the bound full JID.
    pub async fn login(&mut self, user: &str, password: &str, resource: &str) -> String {
        self.starttls().await;
        let answer = self.auth_plain(user, password).await;
        assert!(answer.contains("<success"), "authentication failed: {answer}");
        self.open_stream().await;
        self.send(&format!(
            "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>"
        ))
        .await;
        let reply = self.expect("</iq>").await;
        let start = reply.find("<jid>").expect("a bound JID") + 5;
        let end = reply.find("</jid>").expect("a bound JID");
        reply[start..end].to_owned()
    }

    /// Waits a moment and returns whatever arrived meanwhile.
    pub async fn drain(&mut self, wait: Duration) -> String {
        let _ = tokio::time::timeout(wait, async { while self.read_more().await {} }).await;
        std::mem::take(&mut self.pending)
    }
}

//! One client session: TCP, STARTTLS or direct TLS, SASL, resource binding, then the roster and
//! initial presence. Plain strings are written; replies are read through the `xml` framer, so a
//! read may hold half a stanza or several.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::conn::Conn;
use crate::sasl::{self, Mechanism, SaslError, ScramClient};
use crate::xml::{self, Element, Event, XmlError};

const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
const NS_SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";

/// Bytes reserved per read; small because tens of thousands of sessions each own a buffer.
const READ_CHUNK: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsMode {
    /// Plain TCP, then `<starttls/>` (RFC 6120 section 5).
    Starttls,
    /// TLS from the first byte (XEP-0368).
    Direct,
}

/// Everything a session needs to reach and log in to the server; shared by all sessions.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub domain: String,
    pub tls: TlsMode,
    pub mechanism: Mechanism,
    pub tls_config: Arc<ClientConfig>,
    /// Bound for each network step of a login (connect, each reply).
    pub step_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The localpart, or a full bare JID from a users file (the domain part is then dropped).
    pub user: String,
    pub password: String,
}

#[derive(Debug, Error)]
pub enum SessionError {
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("TLS handshake: {0}")]
    Tls(io::Error),
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    #[error("XML from server: {0}")]
    Xml(#[from] XmlError),
    #[error("SASL: {0}")]
    Sasl(#[from] SaslError),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("server closed the stream")]
    Closed,
    #[error("stream error from server: {0}")]
    StreamError(String),
    #[error("server does not offer STARTTLS")]
    StartTlsNotOffered,
    #[error("server refused STARTTLS")]
    StartTlsRefused,
    #[error("mechanism {wanted} not offered (server offers: {offered})")]
    MechanismNotOffered { wanted: &'static str, offered: String },
    #[error("authentication failed: {0}")]
    AuthFailed(String),
    #[error("{step} failed: {condition}")]
    IqFailed { step: &'static str, condition: String },
    #[error("unexpected <{got}> while waiting for {step}")]
    Unexpected { step: &'static str, got: String },
    #[error("bad server name for TLS: {0}")]
    ServerName(String),
}

impl SessionError {
    /// A short category, to count failures by cause in reports.
    pub fn kind(&self) -> String {
        match self {
            SessionError::Connect(e) => format!("connect: {}", e.kind()),
            SessionError::Tls(e) => format!("tls: {}", e.to_string().chars().take(80).collect::<String>()),
            SessionError::Io(e) => format!("io: {}", e.kind()),
            SessionError::Xml(_) => "xml".into(),
            SessionError::Sasl(_) => "sasl".into(),
            SessionError::Timeout(step) => format!("timeout: {step}"),
            SessionError::Closed => "closed by server".into(),
            SessionError::StreamError(c) => format!("stream error: {c}"),
            SessionError::AuthFailed(c) => format!("auth failed: {c}"),
            SessionError::IqFailed { step, condition } => format!("{step}: {condition}"),
            other => other.to_string(),
        }
    }
}

/// Reads XMPP events from any byte source (a whole `Conn`, or the read half of a split one).
pub struct XmppReader<R> {
    pub io: R,
    buf: Vec<u8>,
    in_stream: bool,
}

impl<R: AsyncRead + Unpin> XmppReader<R> {
    pub fn new(io: R) -> Self {
        Self {
            io,
            buf: Vec::new(),
            in_stream: false,
        }
    }

    /// The next event. Cancel-safe: bytes are only appended to `buf` once a read completed.
    pub async fn next_event(&mut self) -> Result<Event, SessionError> {
        loop {
            if let Some((event, used)) = xml::next_event(&self.buf, self.in_stream)? {
                self.buf.drain(..used);
                if self.buf.is_empty() && self.buf.capacity() > 4 * READ_CHUNK {
                    // Give back what a burst grew, so idle sessions stay small.
                    self.buf = Vec::new();
                }
                match &event {
                    Event::StreamStart(_) => self.in_stream = true,
                    Event::StreamEnd => self.in_stream = false,
                    Event::Element(_) => {}
                }
                return Ok(event);
            }
            self.buf.reserve(READ_CHUNK);
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Err(SessionError::Closed);
            }
        }
    }

    /// The next top-level element; a stream error or the stream's end is an error.
    pub async fn next_element(&mut self) -> Result<Element, SessionError> {
        match self.next_event().await? {
            Event::Element(e) if e.name == "error" => Err(SessionError::StreamError(first_child_name(&e))),
            Event::Element(e) => Ok(e),
            Event::StreamEnd => Err(SessionError::Closed),
            Event::StreamStart(_) => Err(SessionError::Unexpected {
                step: "stanza",
                got: "stream".into(),
            }),
        }
    }

    /// The bytes received but not yet consumed (must be empty when TLS starts).
    fn pending(&self) -> usize {
        self.buf.len()
    }
}

fn first_child_name(e: &Element) -> String {
    e.children
        .first()
        .map(|c| c.name.clone())
        .unwrap_or_else(|| "undefined-condition".into())
}

impl XmppReader<Conn> {
    /// Splits into a reader (keeping any bytes already buffered) and a writer, so one task can
    /// receive while another sends.
    pub fn split(self) -> (XmppReader<ReadHalf<Conn>>, WriteHalf<Conn>) {
        let (read, write) = tokio::io::split(self.io);
        (
            XmppReader {
                io: read,
                buf: self.buf,
                in_stream: self.in_stream,
            },
            write,
        )
    }
}

/// A logged-in, bound session.
pub struct Session {
    pub reader: XmppReader<Conn>,
}

/// Bounds one network step.
async fn step<T>(
    limit: Duration,
    name: &'static str,
    fut: impl Future<Output = Result<T, SessionError>>,
) -> Result<T, SessionError> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| SessionError::Timeout(name))?
}

pub async fn send<W: AsyncWrite + Unpin>(io: &mut W, data: &str) -> Result<(), SessionError> {
    io.write_all(data.as_bytes()).await?;
    io.flush().await?;
    Ok(())
}

async fn tls_handshake(target: &Target, tcp: TcpStream) -> Result<Conn, SessionError> {
    let name = ServerName::try_from(target.domain.clone())
        .map_err(|_| SessionError::ServerName(target.domain.clone()))?;
    let connector = TlsConnector::from(target.tls_config.clone());
    let tls = connector.connect(name, tcp).await.map_err(SessionError::Tls)?;
    Ok(Conn::Tls(Box::new(tls)))
}

/// Sends a stream header and returns the `<features/>` that follow the server's header.
async fn open_stream(target: &Target, reader: &mut XmppReader<Conn>) -> Result<Element, SessionError> {
    let header = format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' to='{}' version='1.0' xml:lang='en'>",
        xml::escape(&target.domain)
    );
    send(&mut reader.io, &header).await?;
    reader.in_stream = false;
    step(target.step_timeout, "stream header", async {
        match reader.next_event().await? {
            Event::StreamStart(_) => Ok(()),
            Event::StreamEnd => Err(SessionError::Closed),
            Event::Element(e) => Err(SessionError::Unexpected {
                step: "stream header",
                got: e.name,
            }),
        }
    })
    .await?;
    let features = step(target.step_timeout, "stream features", reader.next_element()).await?;
    if features.name != "features" {
        return Err(SessionError::Unexpected {
            step: "stream features",
            got: features.name,
        });
    }
    Ok(features)
}

/// Runs connect → TLS → SASL → bind (and the legacy session IQ if the server requires it).
pub async fn login(target: &Target, account: &Account) -> Result<Session, SessionError> {
    let addr = (target.host.as_str(), target.port);
    let tcp = step(target.step_timeout, "connect", async {
        TcpStream::connect(addr).await.map_err(SessionError::Connect)
    })
    .await?;
    tcp.set_nodelay(true)?;
    let conn = match target.tls {
        TlsMode::Direct => step(target.step_timeout, "TLS handshake", tls_handshake(target, tcp)).await?,
        TlsMode::Starttls => Conn::Plain(tcp),
    };
    let mut reader = XmppReader::new(conn);
    let mut features = open_stream(target, &mut reader).await?;
    if !reader.io.is_tls() {
        if features.child_ns("starttls", NS_TLS).is_none() {
            return Err(SessionError::StartTlsNotOffered);
        }
        send(
            &mut reader.io,
            "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
        )
        .await?;
        let answer = step(target.step_timeout, "STARTTLS proceed", reader.next_element()).await?;
        if answer.name != "proceed" {
            return Err(SessionError::StartTlsRefused);
        }
        if reader.pending() != 0 {
            // Bytes after <proceed/> in the clear would be injected into the TLS session.
            return Err(SessionError::Unexpected {
                step: "TLS handshake",
                got: "cleartext data".into(),
            });
        }
        let Conn::Plain(tcp) = reader.io else {
            return Err(SessionError::Unexpected {
                step: "STARTTLS",
                got: "TLS already on".into(),
            });
        };
        let conn = step(target.step_timeout, "TLS handshake", tls_handshake(target, tcp)).await?;
        reader = XmppReader::new(conn);
        features = open_stream(target, &mut reader).await?;
    }
    authenticate(target, account, &mut reader, &features).await?;
    let features = open_stream(target, &mut reader).await?;
    if features.child_ns("bind", NS_BIND).is_none() {
        return Err(SessionError::Unexpected {
            step: "bind feature",
            got: "features without bind".into(),
        });
    }
    let bind = iq(
        target,
        &mut reader,
        "bind",
        "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
         <resource>load</resource></bind></iq>",
        "bind1",
    )
    .await?;
    // The JID itself is not needed; its absence means the server did not bind a resource.
    bind.child_ns("bind", NS_BIND)
        .and_then(|b| b.child("jid"))
        .filter(|j| !j.text.trim().is_empty())
        .ok_or(SessionError::IqFailed {
            step: "bind",
            condition: "no jid in result".into(),
        })?;
    // RFC 6121 dropped the session IQ; servers that still announce it without <optional/> need it.
    if features
        .child_ns("session", NS_SESSION)
        .is_some_and(|s| s.child("optional").is_none())
    {
        let request = "<iq type='set' id='sess1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>";
        iq(target, &mut reader, "session", request, "sess1").await?;
    }
    Ok(Session { reader })
}

fn bare_localpart(user: &str) -> &str {
    user.split_once('@').map_or(user, |(local, _)| local)
}

async fn authenticate(
    target: &Target,
    account: &Account,
    reader: &mut XmppReader<Conn>,
    features: &Element,
) -> Result<(), SessionError> {
    let wanted = target.mechanism.name();
    let mechanisms = features.child_ns("mechanisms", NS_SASL);
    let offered: Vec<&str> = mechanisms
        .map(|m| m.children.iter().map(|c| c.text.trim()).collect())
        .unwrap_or_default();
    if !offered.contains(&wanted) {
        return Err(SessionError::MechanismNotOffered {
            wanted,
            offered: offered.join(" "),
        });
    }
    let user = bare_localpart(&account.user);
    let mut scram = ScramClient::new(target.mechanism, user, &account.password);
    let initial = match &scram {
        Some(client) => client.client_first().into_bytes(),
        None => sasl::plain_initial(user, &account.password),
    };
    send(
        &mut reader.io,
        &format!(
            "<auth xmlns='{NS_SASL}' mechanism='{wanted}'>{}</auth>",
            B64.encode(initial)
        ),
    )
    .await?;
    let mut verified = false;
    loop {
        let reply = step(target.step_timeout, "SASL reply", reader.next_element()).await?;
        let data = decode_sasl_data(&reply.text)?;
        match (reply.name.as_str(), scram.as_mut()) {
            ("challenge", Some(client)) if !verified && client_final_pending(client) => {
                let fin = client.client_final(&data)?;
                send(
                    &mut reader.io,
                    &format!("<response xmlns='{NS_SASL}'>{}</response>", B64.encode(fin)),
                )
                .await?;
            }
            ("challenge", Some(client)) if !verified => {
                // Some servers send server-final as a challenge, then expect an empty response.
                client.verify_server_final(&data)?;
                verified = true;
                send(&mut reader.io, &format!("<response xmlns='{NS_SASL}'/>")).await?;
            }
            ("success", Some(client)) => {
                if !verified {
                    client.verify_server_final(&data)?;
                }
                return Ok(());
            }
            ("success", None) => return Ok(()),
            ("failure", _) => return Err(SessionError::AuthFailed(first_child_name(&reply))),
            (other, _) => {
                return Err(SessionError::Unexpected {
                    step: "SASL",
                    got: other.to_owned(),
                });
            }
        }
    }
}

fn client_final_pending(client: &ScramClient) -> bool {
    !client.has_server_first()
}

fn decode_sasl_data(text: &str) -> Result<Vec<u8>, SessionError> {
    let text = text.trim();
    if text.is_empty() || text == "=" {
        return Ok(Vec::new());
    }
    Ok(B64.decode(text).map_err(|_| SaslError::Base64)?)
}

/// Sends an IQ and waits for its result, skipping unrelated stanzas that arrive meanwhile.
pub async fn iq(
    target: &Target,
    reader: &mut XmppReader<Conn>,
    step_name: &'static str,
    request: &str,
    id: &str,
) -> Result<Element, SessionError> {
    send(&mut reader.io, request).await?;
    step(target.step_timeout, step_name, async {
        loop {
            let reply = reader.next_element().await?;
            if reply.name != "iq" || reply.attr("id") != Some(id) {
                continue;
            }
            return match reply.attr("type") {
                Some("result") => Ok(reply),
                _ => Err(SessionError::IqFailed {
                    step: step_name,
                    condition: reply
                        .child("error")
                        .map(first_child_name)
                        .unwrap_or_else(|| "error without condition".into()),
                }),
            };
        }
    })
    .await
}

impl Session {
    /// Fetches the roster and sends initial presence: what a real client does after bind.
    pub async fn go_online(&mut self, target: &Target, fetch_roster: bool) -> Result<(), SessionError> {
        if fetch_roster {
            let request = "<iq type='get' id='roster1'><query xmlns='jabber:iq:roster'/></iq>";
            iq(target, &mut self.reader, "roster get", request, "roster1").await?;
        }
        send(&mut self.reader.io, "<presence/>").await
    }

    /// Closes the stream politely and waits (bounded) for the server to close its side.
    pub async fn close(mut self, limit: Duration) {
        if send(&mut self.reader.io, "</stream:stream>").await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(limit, async {
            while let Ok(event) = self.reader.next_event().await {
                if event == Event::StreamEnd {
                    break;
                }
            }
        })
        .await;
        let _ = self.reader.io.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    #[tokio::test]
    async fn reader_handles_split_and_batched_input() {
        let (mut server, client) = duplex(64);
        let mut reader = XmppReader::new(client);
        let writer = tokio::spawn(async move {
            let data = b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' id='1'>\
                <presence from='a@b/c'/><message><body>hi</body></message></stream:stream>";
            for chunk in data.chunks(7) {
                server.write_all(chunk).await.unwrap();
            }
        });
        assert!(matches!(
            reader.next_event().await.unwrap(),
            Event::StreamStart(_)
        ));
        assert_eq!(reader.next_element().await.unwrap().attr("from"), Some("a@b/c"));
        assert_eq!(
            reader.next_element().await.unwrap().child("body").unwrap().text,
            "hi"
        );
        assert!(matches!(reader.next_element().await, Err(SessionError::Closed)));
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn stream_error_and_eof_are_errors() {
        let (mut server, client) = duplex(256);
        let mut reader = XmppReader::new(client);
        server
            .write_all(
                b"<stream:stream><stream:error><host-unknown \
                  xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
            )
            .await
            .unwrap();
        drop(server);
        assert!(matches!(
            reader.next_event().await.unwrap(),
            Event::StreamStart(_)
        ));
        match reader.next_element().await {
            Err(SessionError::StreamError(c)) => assert_eq!(c, "host-unknown"),
            other => panic!("expected stream error, got {other:?}"),
        }
        assert!(matches!(reader.next_event().await, Err(SessionError::Closed)));
    }

    #[test]
    fn sasl_data_and_localpart() {
        assert_eq!(decode_sasl_data(" = ").unwrap(), Vec::<u8>::new());
        assert_eq!(decode_sasl_data("YWJj").unwrap(), b"abc");
        assert!(matches!(
            decode_sasl_data("!!"),
            Err(SessionError::Sasl(SaslError::Base64))
        ));
        assert_eq!(bare_localpart("user1@localhost"), "user1");
        assert_eq!(bare_localpart("user1"), "user1");
    }
}

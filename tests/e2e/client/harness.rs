//! A real XMPP client (tokio-xmpp) pointed at an in-process [`TestServer`].
//!
//! tokio-xmpp trusts CAs through rustls-native-certs, which reads `SSL_CERT_FILE`. That variable
//! is process-wide, so every server these tests start uses one CA made once per test process
//! ([`shared_ca`]); the `ca` field of such a [`TestServer`] is *not* the CA it presents.

use futures_util::StreamExt;
use parley_config::Config;
use parley_testkit::{TestCa, TestServer, TestServerOptions};
use std::collections::BTreeSet;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Once, OnceLock};
use std::time::Duration;
use tokio_xmpp::connect::{DirectTlsServerConnector, DnsConfig, ServerConnector, StartTlsServerConnector};
use tokio_xmpp::jid::{BareJid, FullJid, Jid};
use tokio_xmpp::minidom::Element;
use tokio_xmpp::parsers::iq::Iq;
use tokio_xmpp::parsers::message::Message;
use tokio_xmpp::parsers::presence::Presence;
use tokio_xmpp::stanzastream::{Event as StreamEvent, StanzaStream, StreamEvent as StreamState};
use tokio_xmpp::xmlstream::Timeouts;
use tokio_xmpp::{IqRequest, IqResponse, Stanza};

/// How long any single expected event may take; generous for a loaded 2-core machine.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The CA every server in this test process presents, and the directory holding it (kept for
/// the life of the process: a static is never dropped).
pub fn shared_ca() -> &'static TestCa {
    static CA: OnceLock<(tempfile::TempDir, TestCa)> = OnceLock::new();
    let (_dir, ca) = CA.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("parley-e2e-ca")
            .tempdir()
            .expect("a temp dir for the CA");
        let ca = TestCa::generate(dir.path(), "localhost").expect("the shared test CA");
        (dir, ca)
    });
    ca
}

/// Makes every TLS client in this process (tokio-xmpp, go-sendxmpp children) trust [`shared_ca`].
pub fn trust_shared_ca() {
    static TRUST: Once = Once::new();
    TRUST.call_once(|| set_ssl_cert_file(&shared_ca().ca_path));
}

#[allow(unsafe_code)]
fn set_ssl_cert_file(path: &std::path::Path) {
    // SAFETY: called once (under `Once`) before this process starts any TLS client. Other test
    // threads may run, but nothing in this workspace writes the environment, and the only
    // readers of SSL_CERT_FILE are the TLS clients started after this call returns.
    unsafe { std::env::set_var("SSL_CERT_FILE", path) };
}

/// Starts a server (alice and bob exist) presenting [`shared_ca`]; `adjust` tweaks the config.
pub async fn start_server(adjust: impl FnOnce(&mut Config) + Send + 'static) -> TestServer {
    trust_shared_ca();
    let ca = shared_ca();
    let (cert, key) = (ca.cert_path.clone(), ca.key_path.clone());
    TestServer::start_with(TestServerOptions {
        tweak: Some(Box::new(move |config: &mut Config| {
            config.tls.cert = Some(cert);
            config.tls.key = Some(key);
            adjust(config);
        })),
        ..TestServerOptions::default()
    })
    .await
}

pub fn bare(jid: &str) -> BareJid {
    BareJid::new(jid).expect("a valid bare JID")
}

pub fn full(jid: &str) -> FullJid {
    FullJid::new(jid).expect("a valid full JID")
}

pub fn xml(text: &str) -> Element {
    text.parse().expect("valid XML in the test")
}

/// Which port the client uses.
#[derive(Debug, Clone, Copy)]
pub enum Transport {
    StartTls,
    DirectTls,
}

/// How many stanzas may wait in each direction of a client's stream.
const QUEUE_DEPTH: usize = 256;

/// A logged-in tokio-xmpp stanza stream with an inbox: stanzas a test did not ask for yet wait
/// in `backlog`, so expectations need not arrive in any particular order.
///
/// Built on tokio-xmpp's `StanzaStream` rather than its `Client`: in tokio-xmpp 6.0.0 the
/// `Client`'s background worker polls the stream through `StanzaReceiver::poll_next`, which
/// returns `Pending` without registering a waker when `try_lock` fails because the frontend is
/// sending at that moment; the worker then sleeps with stanzas waiting and the client stalls
/// (seen here as IQ answers and presences that never arrive, about one run in three).
/// `StanzaStream` used from one task has no such lock.
pub struct XmppClient {
    stream: StanzaStream,
    pub jid: FullJid,
    backlog: VecDeque<Stanza>,
    next_id: u64,
}

impl XmppClient {
    /// Logs in over STARTTLS as `user@localhost/resource` and waits until it is bound.
    pub async fn login(server: &TestServer, user: &str, password: &str, resource: &str) -> Self {
        Self::login_via(server, Transport::StartTls, user, password, resource).await
    }

    pub async fn login_via(
        server: &TestServer,
        transport: Transport,
        user: &str,
        password: &str,
        resource: &str,
    ) -> Self {
        trust_shared_ca();
        let jid = full(&format!("{user}@{}/{resource}", server.domain()));
        let (jid_arg, password) = (Jid::from(jid.clone()), password.to_owned());
        let mut stream = match transport {
            Transport::StartTls => StanzaStream::new_c2s(
                StartTlsServerConnector::from(addr_config(server.starttls_addr())),
                jid_arg,
                password,
                Timeouts::tight(),
                QUEUE_DEPTH,
            ),
            Transport::DirectTls => StanzaStream::new_c2s(
                DirectTlsServerConnector::from(addr_config(server.direct_tls_addr())),
                jid_arg,
                password,
                Timeouts::tight(),
                QUEUE_DEPTH,
            ),
        };
        // tokio-xmpp retries a failed login forever, logging only; a bounded wait turns that
        // into a test failure. `try_login` shows the reason.
        let first = tokio::time::timeout(EVENT_TIMEOUT, stream.next())
            .await
            .unwrap_or_else(|_| panic!("{jid} was not bound within {EVENT_TIMEOUT:?}"));
        let bound = match first {
            Some(StreamEvent::Stream(StreamState::Reset { bound_jid, .. })) => bound_jid,
            Some(other) => panic!("{jid}: unexpected {other:?} before being bound"),
            None => panic!("{jid}: the stream stopped before being bound"),
        };
        let bound = bound.try_into_full().expect("the server binds a full JID");
        Self {
            stream,
            jid: bound,
            backlog: VecDeque::new(),
            next_id: 0,
        }
    }

    pub fn bare(&self) -> BareJid {
        self.jid.to_bare()
    }

    /// Queues a stanza; the stream writes queued stanzas in order.
    pub async fn send(&mut self, stanza: impl Into<Stanza>) {
        self.stream.send(Box::new(stanza.into())).await;
    }

    /// Sends available presence (RFC 6121 §4.2), which also asks for the contacts' presence.
    pub async fn send_initial_presence(&mut self) {
        self.send(Presence::available()).await;
    }

    /// An IQ with its answer, matched by id; a timeout or a lost stream fails the test.
    pub async fn iq(&mut self, to: Option<Jid>, request: IqRequest) -> IqResponse {
        self.next_id += 1;
        let id = format!("e2e-{}", self.next_id);
        let asked = format!("{request:?} to {to:?}");
        let iq = match request {
            IqRequest::Get(payload) => Iq::Get {
                from: None,
                to,
                id: id.clone(),
                payload,
            },
            IqRequest::Set(payload) => Iq::Set {
                from: None,
                to,
                id: id.clone(),
                payload,
            },
        };
        self.send(iq).await;
        self.expect(&format!("the answer to {asked}"), |stanza| match stanza {
            Stanza::Iq(Iq::Result { id: got, payload, .. }) if *got == id => {
                Some(IqResponse::Result(payload.clone()))
            }
            Stanza::Iq(Iq::Error { id: got, error, .. }) if *got == id => {
                Some(IqResponse::Error(error.clone()))
            }
            _ => None,
        })
        .await
    }

    /// An IQ that must succeed; returns its payload.
    pub async fn iq_ok(&mut self, to: Option<Jid>, request: IqRequest) -> Option<Element> {
        match self.iq(to, request).await {
            IqResponse::Result(payload) => payload,
            IqResponse::Error(error) => panic!("{}: IQ failed: {error:?}", self.jid),
        }
    }

    /// Waits for the first stanza `wanted` picks (earlier unmatched ones stay in the backlog).
    pub async fn expect<T>(&mut self, what: &str, mut wanted: impl FnMut(&Stanza) -> Option<T>) -> T {
        if let Some(at) = self.backlog.iter().position(|stanza| wanted(stanza).is_some()) {
            let stanza = self.backlog.remove(at).expect("the position is in range");
            return wanted(&stanza).expect("matched a moment ago");
        }
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        loop {
            let event = match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(Some(event)) => event,
                Ok(None) => panic!("{}: the stream ended while waiting for {what}", self.jid),
                Err(_) => panic!(
                    "{}: no {what} within {EVENT_TIMEOUT:?}; unmatched stanzas: {:#?}",
                    self.jid, self.backlog
                ),
            };
            match event {
                StreamEvent::Stanza(stanza) => match wanted(&stanza) {
                    Some(found) => return found,
                    None => self.backlog.push_back(stanza),
                },
                // Informational only: the connection broke and is being resumed.
                StreamEvent::Stream(StreamState::Suspended | StreamState::Resumed) => {}
                StreamEvent::Stream(StreamState::Reset { .. }) => {
                    panic!(
                        "{}: the stream was reset (reconnected) while waiting for {what}",
                        self.jid
                    )
                }
            }
        }
    }

    pub async fn expect_message(&mut self, what: &str, wanted: impl Fn(&Message) -> bool) -> Message {
        self.expect(what, |stanza| match stanza {
            Stanza::Message(message) if wanted(message) => Some(message.clone()),
            _ => None,
        })
        .await
    }

    pub async fn expect_presence(&mut self, what: &str, wanted: impl Fn(&Presence) -> bool) -> Presence {
        self.expect(what, |stanza| match stanza {
            Stanza::Presence(presence) if wanted(presence) => Some(presence.clone()),
            _ => None,
        })
        .await
    }

    /// Waits for an IQ set pushed by the server (a roster push) whose payload `wanted` accepts.
    pub async fn expect_iq_set(&mut self, what: &str, wanted: impl Fn(&Element) -> bool) -> Element {
        self.expect(what, |stanza| match stanza {
            Stanza::Iq(Iq::Set { payload, .. }) if wanted(payload) => Some(payload.clone()),
            _ => None,
        })
        .await
    }

    /// Closes the stream cleanly (`</stream:stream>`), as a user logging off.
    pub async fn logout(self) {
        tokio::time::timeout(EVENT_TIMEOUT, self.stream.close())
            .await
            .expect("the stream closes in time");
    }
}

pub fn addr_config(addr: SocketAddr) -> DnsConfig {
    DnsConfig::Addr {
        addr: addr.to_string(),
    }
}

/// One login attempt over STARTTLS without the client's retry loop: connect, STARTTLS, SASL with
/// tokio-xmpp's own mechanism choice. Returns tokio-xmpp's error when the server refuses, and
/// the SASL mechanisms the server offered otherwise.
pub async fn try_login(
    server: &TestServer,
    user: &str,
    password: &str,
) -> Result<BTreeSet<String>, tokio_xmpp::Error> {
    trust_shared_ca();
    let jid: Jid = bare(&format!("{user}@{}", server.domain())).into();
    let connector = StartTlsServerConnector::from(addr_config(server.starttls_addr()));
    let (pending, channel_binding) = connector
        .connect(&jid, tokio_xmpp::parsers::ns::JABBER_CLIENT, Timeouts::tight())
        .await?;
    let (features, stream) = pending.recv_features().await?;
    let offered = features.sasl_mechanisms.clone();
    // The credentials type lives in the `sasl` crate, which this test crate does not depend on;
    // its type is taken from `client_login`'s signature instead of being named.
    let credentials = default_third_argument(
        &tokio_xmpp::client_login::<<StartTlsServerConnector as ServerConnector>::Stream>,
    )
    .with_username(user)
    .with_password(password)
    .with_channel_binding(channel_binding);
    tokio::time::timeout(
        EVENT_TIMEOUT,
        tokio_xmpp::client_login(stream, offered.clone(), credentials),
    )
    .await
    .expect("the server answers the authentication in time")?;
    Ok(offered)
}

fn default_third_argument<A, B, C: Default, R>(_function: &impl Fn(A, B, C) -> R) -> C {
    C::default()
}

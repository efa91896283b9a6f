//! One client connection, as a typestate: each phase consumes the last, so nothing is routed
//! before a resource is bound.
//!
//! `Connected → (STARTTLS) → Secured → Authenticated → Bound`. Everything before `Bound` runs
//! under the pre-authentication deadline. A bound session is one task that selects over the
//! socket, its bounded outbound queue, its control (conflict, account disabled, slow consumer),
//! server shutdown and the idle timer; one task instead of a reader and a writer keeps an idle
//! session small.

use crate::conn::{Conn, ConnError};
use crate::sasl::{self, Mechanism, SaslContext, SaslExchange, SaslStep};
use crate::tls::TlsSettings;
use parley_directory::Directory;
use parley_proto::reader::{Limits, StreamEvent, StreamHeader};
use parley_proto::stanza::{EnvelopeError, attr_name};
use parley_proto::{
    BareJid, Element, FullJid, Jid, Stanza, StanzaError, StanzaErrorCondition, StreamError,
    StreamErrorCondition as Cond, ns, writer,
};
use parley_router::{BindError, Delivering, Outbound, Router, SessionControl, SessionId};
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How a listener's connections start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerMode {
    /// Plain TCP, upgraded with STARTTLS (RFC 6120 §5).
    StartTls,
    /// TLS from the first byte (XEP-0368).
    DirectTls,
}

/// The c2s settings, resolved from the configuration by the server.
#[derive(Debug, Clone)]
pub struct C2sSettings {
    pub domain: BareJid,
    pub require_starttls: bool,
    pub pre_auth_timeout: Duration,
    pub ping_idle_after: Duration,
    pub ping_timeout: Duration,
    pub close_timeout: Duration,
    pub limits: Limits,
    pub outbound_queue: usize,
    /// Most bytes (estimated) queued for one session before it is closed as too slow.
    pub outbound_queue_bytes: usize,
    pub max_connections_per_ip: usize,
    pub mechanisms: Vec<Mechanism>,
    pub max_auth_attempts: u32,
}

/// What every connection shares.
pub struct C2sContext {
    pub router: Router,
    pub directory: Arc<dyn Directory>,
    pub tls: Arc<TlsSettings>,
    pub settings: C2sSettings,
    pub shutdown: CancellationToken,
}

fn stream_err(condition: Cond, text: &str) -> ConnError {
    ConnError::Stream(StreamError::with_text(condition, text))
}

fn random_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Drives one accepted connection to its end, whatever happens.
pub async fn handle_connection(tcp: TcpStream, peer: SocketAddr, mode: ListenerMode, ctx: Arc<C2sContext>) {
    let _ = tcp.set_nodelay(true);
    // Two stages, each its own heap allocation: the negotiation's state is large and short-lived,
    // the bound session's small and long-lived. Awaiting one inside the other would keep the
    // negotiation's layout (about 19 KB, measured) in every idle session.
    let negotiated = Box::pin(negotiate_connection(tcp, mode, ctx)).await;
    let result = match negotiated {
        Ok(session) => session.await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) | Err(ConnError::Closed) => tracing::debug!(%peer, "connection ended"),
        Err(e) => tracing::debug!(%peer, error = %e, "connection ended"),
    }
}

/// A bound session's loop, ready to run, ending with its unbind.
type BoundSession = std::pin::Pin<Box<dyn Future<Output = Result<(), ConnError>> + Send>>;

async fn negotiate_connection(
    tcp: TcpStream,
    mode: ListenerMode,
    ctx: Arc<C2sContext>,
) -> Result<BoundSession, ConnError> {
    let deadline = Instant::now() + ctx.settings.pre_auth_timeout;
    match mode {
        ListenerMode::DirectTls => {
            let acceptor = TlsAcceptor::from(ctx.tls.direct_tls_config());
            match timeout_at(deadline, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let binding = channel_binding(&tls);
                    let conn = Conn::new(tls, ctx.settings.limits);
                    secured(conn, &ctx, deadline, true, binding).await
                }
                Ok(Err(e)) => Err(ConnError::Io(e)),
                Err(_) => Err(ConnError::Closed),
            }
        }
        ListenerMode::StartTls => starttls(tcp, &ctx, deadline).await,
    }
}

/// The tls-exporter channel binding (RFC 9266) of an established TLS session.
fn channel_binding(tls: &tokio_rustls::server::TlsStream<TcpStream>) -> Option<Vec<u8>> {
    let mut out = vec![0u8; 32];
    tls.get_ref()
        .1
        .export_keying_material(&mut out, b"EXPORTER-Channel-Binding", None)
        .ok()?;
    Some(out)
}

/// Runs a negotiation phase under the pre-authentication deadline; on failure the peer gets
/// the stream error (from this server's domain) and the stream is closed.
async fn negotiate<S, T, F>(
    conn: &mut Conn<S>,
    ctx: &C2sContext,
    deadline: Instant,
    phase: F,
) -> Result<T, ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: AsyncFnOnce(&mut Conn<S>) -> Result<T, ConnError>,
{
    // Boxed: a phase's state (SASL, pending reads) is freed once it is done, instead of
    // staying inline in the connection's future, and so in every idle session, for its life.
    let result = match timeout_at(deadline, Box::pin(phase(conn))).await {
        Ok(result) => result,
        Err(_) => Err(stream_err(
            Cond::ConnectionTimeout,
            "Stream negotiation took too long",
        )),
    };
    if let Err(ConnError::Stream(error)) = &result {
        conn.send_error_and_close(error, ctx.settings.domain.as_str())
            .await;
    }
    result
}

fn starttls_feature(required: bool) -> Element {
    let mut starttls = Element::bare("starttls", ns::TLS);
    if required {
        starttls.append_child(Element::bare("required", ns::TLS));
    }
    starttls
}

fn mechanisms_feature(offered: &[Mechanism]) -> Element {
    let mut mechanisms = Element::bare("mechanisms", ns::SASL);
    for mechanism in offered {
        mechanisms.append_child(
            Element::builder("mechanism", ns::SASL)
                .append(mechanism.name())
                .build(),
        );
    }
    mechanisms
}

fn sasl_context(ctx: &C2sContext, secure: bool, channel_binding: Option<Vec<u8>>) -> SaslContext {
    SaslContext {
        secure,
        channel_binding,
        domain: ctx.settings.domain.to_string(),
    }
}

fn offered(ctx: &C2sContext, sasl: &SaslContext) -> Vec<Mechanism> {
    sasl::offered_mechanisms(&ctx.settings.mechanisms, sasl, ctx.directory.supports_scram())
}

/// Reads the client's stream header and answers with ours and `features`; returns the
/// language the client declared for its stream (`xml:lang`), if it is a plausible tag.
async fn open_stream<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    ctx: &C2sContext,
    features: Element,
) -> Result<Option<Box<str>>, ConnError> {
    let header = match conn.next_event().await? {
        StreamEvent::Header(header) => header,
        _ => return Err(stream_err(Cond::BadFormat, "Expected a stream header")),
    };
    let domain = ctx.settings.domain.as_str();
    let reply_to = header.from.as_deref().filter(|from| Jid::new(from).is_ok());
    // A BCP 47 tag is letters, digits and hyphens (RFC 5646 §2.1); anything else is ignored.
    let lang = header.lang.as_deref().filter(|lang| {
        (1..=35).contains(&lang.len()) && lang.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    conn.send_raw(&writer::stream_header(
        domain,
        reply_to,
        &random_id(),
        lang.unwrap_or("en"),
    ))
    .await?;
    conn.header_sent = true;
    check_header(&header, domain)?;
    conn.send(&features).await?;
    Ok(lang.map(Box::from))
}

/// RFC 6120 §4.7-4.8: the stream must be for our domain, in the jabber:client content
/// namespace, and speak version 1.0.
fn check_header(header: &StreamHeader, domain: &str) -> Result<(), ConnError> {
    if header.content_namespace.as_deref() != Some(ns::CLIENT) {
        return Err(stream_err(
            Cond::InvalidNamespace,
            "A client stream's content namespace is jabber:client",
        ));
    }
    if let Some(to) = header.to.as_deref()
        && !to.eq_ignore_ascii_case(domain)
    {
        return Err(stream_err(
            Cond::HostUnknown,
            "This server does not serve that domain",
        ));
    }
    let major = header
        .version
        .as_deref()
        .and_then(|v| v.split('.').next()?.parse::<u32>().ok());
    if major != Some(1) {
        return Err(stream_err(
            Cond::UnsupportedVersion,
            "Parley speaks XMPP version 1.0",
        ));
    }
    Ok(())
}

/// The next top-level element, or the end of the stream as `Closed`.
async fn next_element<S: AsyncRead + AsyncWrite + Unpin>(conn: &mut Conn<S>) -> Result<Element, ConnError> {
    match conn.next_event().await? {
        StreamEvent::Element(element) => Ok(element),
        StreamEvent::End => {
            conn.close().await;
            Err(ConnError::Closed)
        }
        StreamEvent::Header(_) => Err(stream_err(Cond::BadFormat, "Unexpected stream header")),
    }
}

/// The stream error for an element that has no place here.
fn unexpected(element: &Element, before_auth: bool) -> ConnError {
    let is_stanza_name = matches!(element.name(), "message" | "presence" | "iq");
    if is_stanza_name && !element.has_ns(ns::CLIENT) || element.has_ns("") {
        return stream_err(
            Cond::InvalidNamespace,
            "Stanzas must be in the jabber:client namespace",
        );
    }
    if is_stanza_name && before_auth {
        return stream_err(Cond::NotAuthorized, "Authenticate and bind a resource first");
    }
    stream_err(Cond::UnsupportedStanzaType, "That element is not supported here")
}

/// The plaintext phase of a STARTTLS listener: features, `<starttls/>`, `<proceed/>`, handshake.
async fn starttls(
    tcp: TcpStream,
    ctx: &Arc<C2sContext>,
    deadline: Instant,
) -> Result<BoundSession, ConnError> {
    let mut conn = Conn::new(tcp, ctx.settings.limits);
    let upgrade = negotiate(&mut conn, ctx, deadline, async |conn| {
        let mut features = Element::builder("features", ns::STREAM)
            .append(starttls_feature(ctx.settings.require_starttls))
            .build();
        if !ctx.settings.require_starttls {
            features.append_child(mechanisms_feature(&offered(ctx, &sasl_context(ctx, false, None))));
        }
        open_stream(conn, ctx, features).await?;
        loop {
            let element = next_element(conn).await?;
            if element.is("starttls", ns::TLS) {
                conn.send(&Element::bare("proceed", ns::TLS)).await?;
                return Ok(None);
            }
            if element.is("auth", ns::SASL) {
                if ctx.settings.require_starttls {
                    conn.send(&sasl::failure_element(sasl::SaslFailure::EncryptionRequired))
                        .await?;
                    continue;
                }
                return Ok(Some(element));
            }
            return Err(unexpected(&element, true));
        }
    })
    .await?;
    if let Some(first_auth) = upgrade {
        // Only with require_starttls = false: authenticate in plaintext (never with PLAIN).
        return authenticate_and_run(
            conn,
            ctx,
            deadline,
            sasl_context(ctx, false, None),
            Some(first_auth),
        )
        .await;
    }
    let acceptor = TlsAcceptor::from(ctx.tls.starttls_config());
    let tls = match timeout_at(deadline, acceptor.accept(conn.into_io())).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return Err(ConnError::Io(e)),
        Err(_) => return Err(ConnError::Closed),
    };
    let binding = channel_binding(&tls);
    let conn = Conn::new(tls, ctx.settings.limits);
    secured(conn, ctx, deadline, true, binding).await
}

/// A TLS-protected stream before authentication.
async fn secured<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    mut conn: Conn<S>,
    ctx: &Arc<C2sContext>,
    deadline: Instant,
    secure: bool,
    binding: Option<Vec<u8>>,
) -> Result<BoundSession, ConnError> {
    let sasl = sasl_context(ctx, secure, binding);
    negotiate(&mut conn, ctx, deadline, async |conn| {
        let features = Element::builder("features", ns::STREAM)
            .append(mechanisms_feature(&offered(ctx, &sasl)))
            .build();
        open_stream(conn, ctx, features).await.map(drop)
    })
    .await?;
    authenticate_and_run(conn, ctx, deadline, sasl, None).await
}

/// SASL (RFC 6120 §6), then the restarted stream, bind, and the bound session.
async fn authenticate_and_run<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    mut conn: Conn<S>,
    ctx: &Arc<C2sContext>,
    deadline: Instant,
    sasl: SaslContext,
    first_auth: Option<Element>,
) -> Result<BoundSession, ConnError> {
    let localpart = negotiate(&mut conn, ctx, deadline, async |conn| {
        authenticate(conn, ctx, sasl, first_auth).await
    })
    .await?;
    conn.restart();
    let node = jid::NodePart::new(&localpart).map_err(|_| {
        stream_err(
            Cond::InternalServerError,
            "The account name is not a valid localpart",
        )
    })?;
    let account = BareJid::from_parts(Some(&node), ctx.settings.domain.domain());
    let queue = mpsc::channel(ctx.settings.outbound_queue);
    let control = Arc::new(SessionControl::with_byte_budget(
        ctx.settings.outbound_queue_bytes,
    ));
    let (jid, id, lang) = negotiate(&mut conn, ctx, deadline, async |conn| {
        let mut features = Element::builder("features", ns::STREAM)
            .append(Element::bare("bind", ns::BIND))
            .append(
                Element::builder("session", ns::SESSION)
                    .append(Element::bare("optional", ns::SESSION))
                    .build(),
            )
            .build();
        for feature in ctx.router.stream_features() {
            features.append_child(feature.clone());
        }
        let lang = open_stream(conn, ctx, features).await?;
        let (jid, id) = bind(conn, ctx, &account, queue.0.clone(), control.clone()).await?;
        Ok((jid, id, lang))
    })
    .await?;
    drop(queue.0);
    let bound = Bound {
        conn,
        ctx: ctx.clone(),
        jid,
        id,
        queue: queue.1,
        control,
        delivering: VecDeque::new(),
        held: None,
        lang,
    };
    // The boxed future is `run` itself, so the session's state exists once.
    let session = bound.run();
    tracing::trace!(bytes = std::mem::size_of_val(&session), "bound session state");
    Ok(Box::pin(session))
}

/// The SASL exchange; returns the authenticated localpart.
async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    ctx: &C2sContext,
    sasl: SaslContext,
    mut pending: Option<Element>,
) -> Result<String, ConnError> {
    let offered = offered(ctx, &sasl);
    let mut failures = 0;
    loop {
        let element = match pending.take() {
            Some(element) => element,
            None => next_element(conn).await?,
        };
        let failure = match sasl::parse_client_message(&element) {
            None => return Err(unexpected(&element, true)),
            Some(Err(failure)) => failure,
            Some(Ok(sasl::ClientMessage::Abort)) => sasl::SaslFailure::Aborted,
            Some(Ok(sasl::ClientMessage::Response(_))) => sasl::SaslFailure::MalformedRequest,
            Some(Ok(sasl::ClientMessage::Auth {
                mechanism,
                initial_response,
            })) => match SaslExchange::start(&mechanism, &offered, sasl.clone(), ctx.directory.clone()) {
                Err(failure) => failure,
                Ok(mut exchange) => {
                    match run_exchange(conn, &mut exchange, initial_response.unwrap_or_default()).await? {
                        Ok(localpart) => return Ok(localpart),
                        Err(failure) => failure,
                    }
                }
            },
        };
        conn.send(&sasl::failure_element(failure)).await?;
        failures += 1;
        if failures >= ctx.settings.max_auth_attempts {
            return Err(stream_err(
                Cond::PolicyViolation,
                "Too many failed authentication attempts",
            ));
        }
    }
}

async fn run_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    exchange: &mut SaslExchange,
    mut data: Vec<u8>,
) -> Result<Result<String, sasl::SaslFailure>, ConnError> {
    loop {
        match exchange.step(&data).await {
            SaslStep::Success {
                localpart,
                additional_data,
            } => {
                conn.send(&sasl::success_element(additional_data.as_deref()))
                    .await?;
                return Ok(Ok(localpart));
            }
            SaslStep::Failure(failure) => return Ok(Err(failure)),
            SaslStep::Challenge(challenge) => {
                conn.send(&sasl::challenge_element(&challenge)).await?;
                let element = next_element(conn).await?;
                match sasl::parse_client_message(&element) {
                    None => return Err(unexpected(&element, true)),
                    Some(Err(failure)) => return Ok(Err(failure)),
                    Some(Ok(sasl::ClientMessage::Response(response))) => data = response,
                    Some(Ok(sasl::ClientMessage::Abort)) => return Ok(Err(sasl::SaslFailure::Aborted)),
                    Some(Ok(sasl::ClientMessage::Auth { .. })) => {
                        return Ok(Err(sasl::SaslFailure::MalformedRequest));
                    }
                }
            }
        }
    }
}

fn iq_reply(request: &Element, payload: Option<Element>) -> Element {
    let mut reply = Element::builder("iq", ns::CLIENT)
        .attr(attr_name("type"), "result")
        .build();
    if let Some(id) = request.attr("id") {
        parley_proto::stanza::set_attr(&mut reply, "id", Some(id));
    }
    if let Some(payload) = payload {
        reply.append_child(payload);
    }
    reply
}

fn iq_error(request: &Element, condition: StanzaErrorCondition) -> Element {
    let mut reply = Element::builder("iq", ns::CLIENT)
        .attr(attr_name("type"), "error")
        .build();
    if let Some(id) = request.attr("id") {
        parley_proto::stanza::set_attr(&mut reply, "id", Some(id));
    }
    reply.append_child(StanzaError::new(condition).to_element());
    reply
}

/// Resource binding (RFC 6120 §7): the client's resource or a generated one.
async fn bind<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    ctx: &C2sContext,
    account: &BareJid,
    queue: mpsc::Sender<Outbound>,
    control: Arc<SessionControl>,
) -> Result<(FullJid, u64), ConnError> {
    loop {
        let element = next_element(conn).await?;
        let bind_request = element.is("iq", ns::CLIENT)
            && element.attr("type") == Some("set")
            && element.get_child("bind", ns::BIND).is_some();
        if !bind_request {
            return Err(unexpected(&element, true));
        }
        let requested = element
            .get_child("bind", ns::BIND)
            .and_then(|b| b.get_child("resource", ns::BIND))
            .map(|r| r.text())
            .filter(|r| !r.trim().is_empty());
        let resource = requested.unwrap_or_else(|| format!("parley-{}", random_id()));
        let Ok(jid) = account.with_resource_str(&resource) else {
            conn.send(&iq_error(&element, StanzaErrorCondition::BadRequest))
                .await?;
            continue;
        };
        match ctx.router.bind(jid.clone(), queue.clone(), control.clone()).await {
            Ok(id) => {
                let payload = Element::builder("bind", ns::BIND)
                    .append(Element::builder("jid", ns::BIND).append(jid.as_str()).build())
                    .build();
                conn.send(&iq_reply(&element, Some(payload))).await?;
                return Ok((jid, id));
            }
            Err(BindError::TooManyResources) => {
                conn.send(&iq_error(&element, StanzaErrorCondition::ResourceConstraint))
                    .await?;
            }
        }
    }
}

/// A bound session: the steady state.
struct Bound<S> {
    conn: Conn<S>,
    ctx: Arc<C2sContext>,
    jid: FullJid,
    id: SessionId,
    queue: mpsc::Receiver<Outbound>,
    control: Arc<SessionControl>,
    /// The client's messages accepted in order and not yet routed (their compliance records
    /// are on their way to disk), oldest first: they are routed in this order.
    delivering: VecDeque<Delivering>,
    /// A stanza other than a message that came while messages were in `delivering`: RFC 6120
    /// §10.1 has it processed after them, and nothing more is read until then. It waits here,
    /// not in a nested loop, so the session keeps writing its own queue meanwhile (messages to
    /// oneself land there).
    held: Option<Box<Stanza>>,
    /// The language the client declared for its stream, given to its messages and IQs that name
    /// none.
    lang: Option<Box<str>>,
}

/// Most stanzas written in one go before the socket is flushed.
const WRITE_BATCH: usize = 64;

/// Most of a client's messages waiting for their compliance record at once. One durable commit
/// can then carry several of one sender's messages; at the limit the session stops reading until
/// the oldest is routed, which is the sender's backpressure.
const MAX_DELIVERING: usize = 32;

impl<S: AsyncRead + AsyncWrite + Unpin> Bound<S> {
    /// The session loop; the resource is unbound when it ends, however it ends, and BEFORE the
    /// closing handshake: a client that stopped answering may keep the handshake waiting for
    /// `close_timeout`, and nothing routed meanwhile may be queued for a session that will never
    /// write it (RFC 6121 §8.5.2.2.1: store it offline or answer with an error, never drop it).
    async fn run(mut self) -> Result<(), ConnError> {
        let ending = self.serve().await;
        // Accepted messages are routed whatever ended the session (they are in the record).
        while let Some(delivering) = self.delivering.pop_front() {
            delivering.await;
        }
        // A held stanza was never accepted: it is handled only if the client ended the stream
        // itself, not after the server closed it (shutdown, conflict, an account disabled).
        if let Some(held) = self.held.take()
            && matches!(ending, Ok(None))
        {
            self.submit(*held).await;
        }
        self.ctx.router.unbind(&self.jid, self.id).await;
        self.route_unwritten().await;
        match ending {
            Ok(None) => Ok(()),
            Ok(Some(error)) => {
                let close_timeout = self.ctx.settings.close_timeout;
                Box::pin(self.close_with(error, close_timeout)).await
            }
            Err(error) => Err(error),
        }
    }

    /// Routes again what was queued for this session but never written, now that it is unbound:
    /// a message goes the way it would have gone had the resource been offline (another
    /// resource, offline storage, or an error to its sender), a request gets its error. Presence
    /// for a resource that is gone means nothing to anyone and is dropped.
    async fn route_unwritten(&mut self) {
        self.queue.close();
        while let Ok(Outbound::Stanza(stanza)) = self.queue.try_recv() {
            self.control
                .release(parley_proto::writer::approximate_size(stanza.element()));
            if stanza.kind() != parley_proto::StanzaKind::Presence {
                self.ctx.router.route(*stanza).await;
            }
        }
    }

    /// Runs the bound session until it ends: `Ok(None)` when it is closed already, `Ok(Some)`
    /// with the stream error to close it with.
    async fn serve(&mut self) -> Result<Option<StreamError>, ConnError> {
        let settings = &self.ctx.settings;
        let (ping_idle_after, ping_timeout) = (settings.ping_idle_after, settings.ping_timeout);
        let shutdown = self.ctx.shutdown.clone();
        let control = self.control.clone();
        // Made once, not per turn of the loop: each would register with its token again.
        let shutting_down = shutdown.cancelled();
        let closed = control.closed();
        tokio::pin!(shutting_down, closed);
        let idle = tokio::time::sleep(ping_idle_after);
        tokio::pin!(idle);
        let mut ping_outstanding = false;
        let result = loop {
            tokio::select! {
                biased;
                () = &mut shutting_down => {
                    break Err(StreamError::with_text(Cond::SystemShutdown, "The server is shutting down"));
                }
                reason = &mut closed => break Err(reason),
                outbound = self.queue.recv() => {
                    let Some(Outbound::Stanza(stanza)) = outbound else { break Ok(()) };
                    self.take(&stanza);
                    for _ in 1..WRITE_BATCH {
                        match self.queue.try_recv() {
                            Ok(Outbound::Stanza(stanza)) => self.take(&stanza),
                            Err(_) => break,
                        }
                    }
                    if let Err(e) = self.conn.flush().await {
                        return Err(e.into());
                    }
                }
                () = oldest_delivered(&mut self.delivering), if !self.delivering.is_empty() => {
                    self.delivering.pop_front();
                    if self.delivering.is_empty() {
                        // A burst's buffer is not kept for the rest of an idle session.
                        self.delivering = VecDeque::new();
                        if let Some(held) = self.held.take() {
                            self.submit(*held).await;
                        }
                    }
                }
                event = self.conn.next_event(),
                    if self.delivering.len() < MAX_DELIVERING && self.held.is_none() => {
                    if self.conn.take_activity() {
                        idle.as_mut().reset(Instant::now() + ping_idle_after);
                        ping_outstanding = false;
                    }
                    match event {
                        Ok(StreamEvent::Element(element)) => {
                            if let Err(e) = Box::pin(self.inbound(element)).await {
                                match e {
                                    ConnError::Stream(error) => break Err(error),
                                    other => return Err(other),
                                }
                            }
                        }
                        Ok(StreamEvent::End) => {
                            self.conn.close().await;
                            return Ok(None);
                        }
                        Ok(StreamEvent::Header(_)) => {
                            break Err(StreamError::with_text(Cond::BadFormat, "Unexpected stream header"));
                        }
                        Err(ConnError::Stream(error)) => break Err(error),
                        Err(other) => return Err(other),
                    }
                }
                () = &mut idle => {
                    // Whitespace keepalives (RFC 6120 §4.6.1) are read without producing an
                    // event, so bytes read since the timer was set count as activity here.
                    if self.conn.take_activity() {
                        idle.as_mut().reset(Instant::now() + ping_idle_after);
                        ping_outstanding = false;
                        continue;
                    }
                    if ping_outstanding {
                        break Err(StreamError::with_text(Cond::ConnectionTimeout, "No answer to ping"));
                    }
                    // XEP-0199 §4.2: ask an idle client whether it is still there.
                    let ping = Stanza::new(parley_proto::StanzaKind::Iq)
                        .with_type("get")
                        .with_id(&format!("ping-{}", random_id()))
                        .with_from(self.ctx.settings.domain.clone())
                        .with_to(self.jid.clone())
                        .with_child(Element::bare("ping", ns::PING));
                    self.conn.send(ping.element()).await?;
                    ping_outstanding = true;
                    idle.as_mut().reset(Instant::now() + ping_timeout);
                }
            }
        };
        match result {
            Ok(()) => {
                self.conn.close().await;
                Ok(None)
            }
            Err(error) => Ok(Some(error)),
        }
    }

    /// Hands a stanza to the router; a message's routing is left in `delivering`.
    async fn submit(&mut self, stanza: Stanza) {
        // Boxed: routing's state is large and lives only while a stanza is routed; inline, it
        // would be part of every idle session's memory.
        if let Some(delivering) = Box::pin(self.ctx.router.accept(stanza)).await {
            self.delivering.push_back(delivering);
        }
    }

    /// Moves a stanza from the router's queue into the connection's write buffer, returning its
    /// share of the session's byte budget.
    fn take(&mut self, stanza: &Stanza) {
        self.control
            .release(parley_proto::writer::approximate_size(stanza.element()));
        self.conn.queue(stanza.element());
    }

    /// Sends the stream error and gives the client a moment to close its side (RFC 6120 §4.4).
    async fn close_with(&mut self, error: StreamError, close_timeout: Duration) -> Result<(), ConnError> {
        self.conn
            .send_error_and_close(&error, self.ctx.settings.domain.as_str())
            .await;
        let _ = tokio::time::timeout(close_timeout, async {
            while !matches!(self.conn.next_event().await, Err(_) | Ok(StreamEvent::End)) {}
        })
        .await;
        Err(ConnError::Stream(error))
    }

    /// One element from the client: stamp it and hand it to the router.
    async fn inbound(&mut self, mut element: Element) -> Result<(), ConnError> {
        if !element.has_ns(ns::CLIENT) || !matches!(element.name(), "message" | "presence" | "iq") {
            return Err(unexpected(&element, false));
        }
        // RFC 6120 §8.1.2.1: a client may only name itself as the sender.
        if let Some(from) = element.attr("from") {
            let claimed =
                Jid::new(from).map_err(|_| stream_err(Cond::InvalidFrom, "Malformed from address"))?;
            if claimed != self.jid.clone() && claimed != self.jid.to_bare() {
                return Err(stream_err(Cond::InvalidFrom, "You may only send as yourself"));
            }
            parley_proto::stanza::set_attr(&mut element, "from", None);
        }
        // RFC 6120 §8.1.5: a client's stanza without `xml:lang` is in its stream's language,
        // which its recipients must learn from the stanza itself. Not presence: the server keeps
        // each session's last presence for its life, and the attribute's own map (its namespace
        // is new to the element) would add about a kilobyte to every idle session.
        if let Some(lang) = &self.lang
            && element.name() != "presence"
            && parley_proto::stanza::xml_lang(&element).is_none()
        {
            parley_proto::stanza::set_xml_lang(&mut element, lang);
        }
        // Legacy session establishment (RFC 3921 §3) is a no-op that old clients still send.
        if element.name() == "iq"
            && element.attr("type") == Some("set")
            && element.get_child("session", ns::SESSION).is_some()
        {
            return Ok(self.conn.send(&iq_reply(&element, None)).await?);
        }
        let stanza = match Stanza::try_from_element(element) {
            Ok(stanza) => stanza,
            Err((EnvelopeError::BadAddress { .. }, element)) => {
                let mut element = *element;
                // Answer with jid-malformed, addressed back without the bad attribute.
                parley_proto::stanza::set_attr(&mut element, "to", None);
                if let Ok(stanza) = Stanza::from_element(element)
                    && let Some(mut reply) = stanza
                        .with_to(self.jid.clone())
                        .error_reply(&StanzaError::new(StanzaErrorCondition::JidMalformed))
                {
                    reply.set_from(None);
                    self.conn.send(reply.element()).await?;
                }
                return Ok(());
            }
            Err((EnvelopeError::BadIq, element)) if element.attr("id").is_some() => {
                // RFC 6120 §8.3.3.1: an unrecognized type is the stanza's fault, not the stream's.
                let mut reply = iq_error(&element, StanzaErrorCondition::BadRequest);
                parley_proto::stanza::set_attr(&mut reply, "to", Some(&self.jid.to_string()));
                return Ok(self.conn.send(&reply).await?);
            }
            Err((EnvelopeError::BadIq, _)) => {
                // Without an id no answer can name the request (RFC 6120 §8.2.3).
                return Err(stream_err(Cond::InvalidXml, "An iq needs an id"));
            }
            Err((EnvelopeError::NotAStanza(_), element)) => return Err(unexpected(&element, false)),
        };
        let stanza = stanza.with_from(self.jid.clone());
        if stanza.kind() != parley_proto::StanzaKind::Message && !self.delivering.is_empty() {
            // RFC 6120 §10.1, in-order processing: it waits until the messages before it are
            // routed. Messages among themselves stay in order in `delivering`.
            self.held = Some(Box::new(stanza));
            return Ok(());
        }
        self.submit(stanza).await;
        Ok(())
    }
}

/// Resolves when the oldest accepted message has been routed (never when there is none).
async fn oldest_delivered(delivering: &mut VecDeque<Delivering>) {
    std::future::poll_fn(|cx| match delivering.front_mut() {
        Some(oldest) => Pin::new(oldest).poll(cx),
        None => Poll::Pending,
    })
    .await
}

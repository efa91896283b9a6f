//! Addressing and delivery: what happens to a stanza once a session hands it over.

use crate::compliance::{Addressee, ComplianceStage, Unarchived};
use crate::module::{
    Event, Hook, HookOutcome, IqContext, Module, Registry, RegistryError, Scope, StreamFeature,
};
use crate::sessions::{
    BindError, Outbound, PresenceState, ResourceInfo, SessionControl, SessionId, SessionTable,
};
use async_trait::async_trait;
use parley_proto::{
    BareJid, Element, FullJid, Jid, Stanza, StanzaError, StanzaErrorCondition, StanzaKind, ns,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Whether a local account exists; the server answers it from the directory.
#[async_trait]
pub trait Accounts: Send + Sync + 'static {
    async fn exists(&self, localpart: &str) -> bool;
}

pub struct RouterBuilder {
    domain: BareJid,
    modules: Vec<Arc<dyn Module>>,
    compliance: Arc<dyn ComplianceStage>,
    accounts: Arc<dyn Accounts>,
    max_resources: usize,
}

impl RouterBuilder {
    pub fn module(mut self, module: Arc<dyn Module>) -> Self {
        self.modules.push(module);
        self
    }
    pub fn compliance(mut self, stage: Arc<dyn ComplianceStage>) -> Self {
        self.compliance = stage;
        self
    }
    pub fn max_resources_per_account(mut self, max: usize) -> Self {
        self.max_resources = max;
        self
    }

    /// Registers every module; two handlers for one IQ route are an error here, at start-up.
    pub fn build(self) -> Result<Router, Vec<RegistryError>> {
        let mut registry = Registry::default();
        for module in self.modules {
            registry.register_module(module);
        }
        let registry = registry.finish()?;
        Ok(Router(Arc::new(Inner {
            domain: self.domain,
            registry,
            sessions: SessionTable::new(self.max_resources),
            compliance: self.compliance,
            accounts: self.accounts,
            stream_features: std::sync::OnceLock::new(),
        })))
    }
}

struct Inner {
    domain: BareJid,
    registry: Registry,
    sessions: SessionTable,
    compliance: Arc<dyn ComplianceStage>,
    accounts: Arc<dyn Accounts>,
    stream_features: std::sync::OnceLock<Vec<Element>>,
}

/// The rest of an accepted message's way: its compliance record becoming durable, then its
/// routing. See [`Router::accept`].
#[must_use = "the message is only delivered when this is awaited"]
pub struct Delivering(Pin<Box<dyn Future<Output = ()> + Send>>);

impl Future for Delivering {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl std::fmt::Debug for Delivering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivering").finish_non_exhaustive()
    }
}

/// The stanza router. Cheap to clone; every session and module holds one.
#[derive(Clone)]
pub struct Router(Arc<Inner>);

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("domain", &self.0.domain)
            .finish_non_exhaustive()
    }
}

fn error(condition: StanzaErrorCondition) -> StanzaError {
    StanzaError::new(condition)
}

impl Router {
    pub fn builder(domain: BareJid, accounts: Arc<dyn Accounts>) -> RouterBuilder {
        RouterBuilder {
            domain,
            modules: Vec::new(),
            compliance: Arc::new(Unarchived),
            accounts,
            max_resources: 16,
        }
    }

    /// The server's own address.
    pub fn domain(&self) -> &BareJid {
        &self.0.domain
    }

    pub fn is_local(&self, jid: &Jid) -> bool {
        jid.domain() == self.0.domain.domain()
    }

    /// Whether a message's `to` names an existing local account. One with a bound session exists
    /// (the directory ends the sessions of accounts it removes), so only offline addressees need
    /// the directory lookup.
    async fn addressee(&self, stanza: &Stanza) -> Addressee {
        let Some(to) = stanza.to().filter(|to| self.is_local(to) && to.node().is_some()) else {
            return Addressee::Other;
        };
        let account = to.to_bare();
        if self.0.sessions.is_online(&account) || self.account_exists(&account).await {
            Addressee::LocalAccount
        } else {
            Addressee::Other
        }
    }

    pub fn sessions(&self) -> &SessionTable {
        &self.0.sessions
    }

    pub async fn account_exists(&self, account: &BareJid) -> bool {
        match account.node() {
            Some(node) if self.is_local(account) => self.0.accounts.exists(node.as_str()).await,
            _ => false,
        }
    }

    pub fn disco_features(&self, scope: Scope) -> &[&'static str] {
        self.0
            .registry
            .disco_features
            .get(&scope)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Stream features modules add after authentication (roster versioning, pre-approval...).
    pub fn stream_features(&self) -> &[Element] {
        self.0.stream_features.get_or_init(|| {
            self.0
                .registry
                .stream_features
                .iter()
                .map(|feature| match feature {
                    StreamFeature::Fixed(element) => element.clone(),
                    StreamFeature::Computed(make) => make(self),
                })
                .collect()
        })
    }

    /// Binds a resource (after SASL) with its outbound queue.
    pub async fn bind(
        &self,
        jid: FullJid,
        queue: mpsc::Sender<Outbound>,
        control: Arc<SessionControl>,
    ) -> Result<SessionId, BindError> {
        let (id, replaced) = self.0.sessions.bind(jid.clone(), queue, control)?;
        if let Some(replaced) = replaced {
            // The session it replaces ended here: its contacts and modules learn it now, before
            // the new one says anything (its own unbind will find the resource taken).
            self.session_ended(&jid, replaced).await;
        }
        self.emit(Event::SessionBound(jid)).await;
        Ok(id)
    }

    /// Ends a bound session: if it was available, its contacts get unavailable presence.
    pub async fn unbind(&self, jid: &FullJid, id: SessionId) {
        if let Some(info) = self.0.sessions.unbind(jid, id) {
            self.session_ended(jid, info).await;
        }
    }

    async fn session_ended(&self, jid: &FullJid, info: ResourceInfo) {
        if info.presence.available {
            let mut unavailable = Stanza::new(StanzaKind::Presence)
                .with_type("unavailable")
                .with_from(jid.clone());
            self.run_hooks(Hook::PresenceOut, &mut unavailable).await;
        }
        self.emit(Event::SessionClosed(jid.clone())).await;
    }

    pub async fn emit(&self, event: Event) {
        for handler in &self.0.registry.events {
            handler.on_event(self, &event).await;
        }
    }

    /// Queues a stanza for one bound resource; false when it is not there or too slow.
    pub fn send_to(&self, jid: &FullJid, stanza: Stanza) -> bool {
        self.0.sessions.send(jid, stanza)
    }

    /// Queues a stanza for one bound resource, waiting up to `patience` for room in its queue
    /// instead of closing it: for backlogs (offline messages) the server itself sends.
    pub async fn send_to_waiting(
        &self,
        jid: &FullJid,
        stanza: Stanza,
        patience: std::time::Duration,
    ) -> bool {
        self.0.sessions.send_waiting(jid, stanza, patience).await
    }

    async fn run_hooks(&self, hook: Hook, stanza: &mut Stanza) -> HookOutcome {
        if let Some(hooks) = self.0.registry.hooks.get(&hook) {
            for registered in hooks {
                match registered.handler.handle(self, stanza).await {
                    HookOutcome::Continue => {}
                    outcome => {
                        tracing::trace!(module = registered.module, ?hook, ?outcome, "hook decided");
                        return outcome;
                    }
                }
            }
        }
        HookOutcome::Continue
    }

    /// Answers `stanza` with an error, unless it is an error itself.
    pub async fn bounce(&self, stanza: &Stanza, error: StanzaError) {
        if let Some(reply) = stanza.error_reply(&error) {
            // Boxed: routing an error can itself bounce (never more than once, as errors are
            // never answered with errors).
            Box::pin(self.route(reply)).await;
        }
    }

    /// A stanza from a local client whose `from` the session has stamped with its full JID.
    pub async fn submit(&self, stanza: Stanza) {
        if let Some(delivering) = self.accept(stanza).await {
            delivering.await;
        }
    }

    /// [`Router::submit`] in two steps, so a session can read its next message while the last
    /// one is being recorded: the client hooks run and a message is queued for the compliance
    /// record before this returns; what is left (waiting for the record to be durable, then
    /// routing) is the [`Delivering`] returned, `None` when nothing is left. A session keeps
    /// its stanzas in order by awaiting each `accept` before the next, and each `Delivering`
    /// before the next (and before any later stanza that is not a message).
    pub async fn accept(&self, mut stanza: Stanza) -> Option<Delivering> {
        match self.run_hooks(Hook::ClientStanza, &mut stanza).await {
            HookOutcome::Handled => return None,
            HookOutcome::Reject(error) => {
                self.bounce(&stanza, error).await;
                return None;
            }
            HookOutcome::Continue => {}
        }
        match stanza.kind() {
            StanzaKind::Iq => self.submit_iq(stanza).await,
            StanzaKind::Message => {
                if stanza.to().is_none() {
                    // RFC 6120 §10.3.1: a message without `to` is for the sender's own account.
                    let own = stanza.from().map(|from| Jid::from(from.to_bare()));
                    stanza.set_to(own);
                }
                let addressee = self.addressee(&stanza).await;
                let recording = self.0.compliance.queue(&mut stanza, addressee).await;
                let router = self.clone();
                return Some(Delivering(Box::pin(async move {
                    match recording {
                        Ok(recording) => match recording.await {
                            Ok(children) => {
                                for child in children {
                                    stanza.element_mut().append_child(child);
                                }
                                // The stage changes no address, so what it was told still holds.
                                return router.route_message(stanza, addressee).await;
                            }
                            Err(err) => router.refuse_unrecorded(&stanza, &err).await,
                        },
                        Err(err) => router.refuse_unrecorded(&stanza, &err).await,
                    }
                })));
            }
            StanzaKind::Presence => self.submit_presence(stanza).await,
        }
        None
    }

    async fn refuse_unrecorded(&self, stanza: &Stanza, err: &crate::ComplianceError) {
        tracing::error!(error = %err, "message refused: compliance record failed");
        self.bounce(stanza, error(StanzaErrorCondition::InternalServerError))
            .await
    }

    /// Routes a stanza the server itself produced (replies, pushes, probes, stored messages).
    /// It skips the client hooks and the compliance stage, which saw its cause already.
    pub async fn route(&self, stanza: Stanza) {
        match stanza.kind() {
            StanzaKind::Message => {
                let addressee = self.addressee(&stanza).await;
                self.route_message(stanza, addressee).await
            }
            StanzaKind::Presence => self.route_presence(stanza).await,
            StanzaKind::Iq => {
                if let Some(Ok(full)) = stanza.to().cloned().map(Jid::try_into_full) {
                    self.send_to(&full, stanza);
                }
            }
        }
    }

    async fn submit_iq(&self, stanza: Stanza) {
        if !stanza.is_iq_request() {
            // Results and errors go to the full JID that asked; anything else has no taker.
            if let Some(Ok(full)) = stanza.to().cloned().map(Jid::try_into_full) {
                self.send_to(&full, stanza);
            }
            return;
        }
        let Some(from) = stanza.from().cloned() else {
            return;
        };
        let to = stanza.to().cloned();
        match to {
            None => {
                self.answer_iq(&stanza, &from, from.to_bare(), &[Scope::Account, Scope::Server])
                    .await
            }
            Some(to) if !self.is_local(&to) => {
                self.bounce(&stanza, error(StanzaErrorCondition::RemoteServerNotFound))
                    .await
            }
            Some(to) if to.node().is_none() => {
                if to.resource().is_some() {
                    self.bounce(&stanza, error(StanzaErrorCondition::ServiceUnavailable))
                        .await
                } else {
                    self.answer_iq(&stanza, &from, to.to_bare(), &[Scope::Server])
                        .await
                }
            }
            Some(to) => match to.try_as_full() {
                Ok(full) => {
                    if !self.send_to(full, stanza.clone()) {
                        self.bounce(&stanza, error(StanzaErrorCondition::ServiceUnavailable))
                            .await
                    }
                }
                Err(bare) => {
                    if self.account_exists(bare).await {
                        self.answer_iq(&stanza, &from, bare.clone(), &[Scope::Account])
                            .await
                    } else {
                        self.bounce(&stanza, error(StanzaErrorCondition::ServiceUnavailable))
                            .await
                    }
                }
            },
        }
    }

    /// Finds the one handler for this request and sends exactly one reply.
    async fn answer_iq(&self, request: &Stanza, from: &Jid, target: BareJid, scopes: &[Scope]) {
        let Some(payload) = request.iq_payload() else {
            return self
                .bounce(request, error(StanzaErrorCondition::BadRequest))
                .await;
        };
        let namespace = payload.ns();
        // The map is covariant in its key, so it can be searched with borrowed names.
        let routes: &std::collections::HashMap<(Scope, &str, &str), _> = &self.0.registry.iq_routes;
        let handler = scopes
            .iter()
            .find_map(|&scope| routes.get(&(scope, namespace.as_str(), payload.name())))
            .map(|(_, handler)| handler);
        let Some(handler) = handler else {
            return self
                .bounce(request, error(StanzaErrorCondition::ServiceUnavailable))
                .await;
        };
        let context = IqContext {
            router: self,
            from,
            target: &target,
        };
        let reply = match handler.handle(context, request).await {
            Ok(payload) => request.iq_result(payload),
            Err(err) => match request.error_reply(&err) {
                Some(reply) => reply,
                None => return,
            },
        };
        self.route(reply).await;
    }

    /// Routes a message whose addressee [`Router::addressee`] has looked up already (one
    /// directory lookup per message to someone offline, not two).
    async fn route_message(&self, mut stanza: Stanza, addressee: Addressee) {
        let Some(to) = stanza.to().cloned() else { return };
        let is_error = stanza.is_error();
        if !self.is_local(&to) {
            return self
                .bounce(&stanza, error(StanzaErrorCondition::RemoteServerNotFound))
                .await;
        }
        if to.node().is_none() {
            // Nothing on the server itself takes messages yet.
            return self
                .bounce(&stanza, error(StanzaErrorCondition::ServiceUnavailable))
                .await;
        }
        let account = to.to_bare();
        if addressee == Addressee::Other {
            return self
                .bounce(&stanza, error(StanzaErrorCondition::ServiceUnavailable))
                .await;
        }
        match self.run_hooks(Hook::MessageIn, &mut stanza).await {
            HookOutcome::Handled => return,
            HookOutcome::Reject(err) => return self.bounce(&stanza, err).await,
            HookOutcome::Continue => {}
        }
        let message_type = stanza.stanza_type().unwrap_or("normal").to_owned();
        if let Ok(full) = to.try_as_full() {
            match self.0.sessions.deliver(full, stanza) {
                Ok(()) => return,
                Err(unsent) => stanza = *unsent,
            }
            // RFC 6121 §8.5.3.2.1: no such resource. Only a chat message goes the bare JID's way;
            // "normal", "groupchat" and "headline" are ignored or answered with an error.
            match message_type.as_str() {
                "chat" => {}
                "error" | "headline" => return,
                _ => {
                    return self
                        .bounce(&stanza, error(StanzaErrorCondition::ServiceUnavailable))
                        .await;
                }
            }
        }
        // RFC 6121 §8.5.2: the bare JID of a local account.
        if is_error {
            return;
        }
        if message_type == "groupchat" {
            return self
                .bounce(&stanza, error(StanzaErrorCondition::ServiceUnavailable))
                .await;
        }
        let available: Vec<_> = self
            .0
            .sessions
            .resources(&account)
            .into_iter()
            .filter(|r| r.presence.available && r.presence.priority >= 0)
            .collect();
        let targets: Vec<_> = if message_type == "headline" {
            available
        } else {
            let top = available.iter().map(|r| r.presence.priority).max();
            available
                .into_iter()
                .filter(|r| Some(r.presence.priority) == top)
                .collect()
        };
        let mut delivered = false;
        let Some((last, others)) = targets.split_last() else {
            return self.offline_or_bounce(stanza, &message_type).await;
        };
        for target in others {
            delivered |= self.send_to(&target.jid, stanza.clone());
        }
        // The last target takes the stanza itself; it comes back if it could not be queued.
        match self.0.sessions.deliver(&last.jid, stanza) {
            Ok(()) => return,
            Err(unsent) => stanza = *unsent,
        }
        if delivered {
            return;
        }
        self.offline_or_bounce(stanza, &message_type).await
    }

    /// RFC 6121 §8.5.2.1.1 / §8.5.2.2.1: a message to an account with no resource that took it
    /// is stored offline (a module's hook) or bounced; a headline is dropped.
    async fn offline_or_bounce(&self, mut stanza: Stanza, message_type: &str) {
        if message_type == "headline" {
            return;
        }
        match self.run_hooks(Hook::MessageOffline, &mut stanza).await {
            HookOutcome::Handled => {}
            HookOutcome::Reject(err) => self.bounce(&stanza, err).await,
            HookOutcome::Continue => {
                self.bounce(&stanza, error(StanzaErrorCondition::ServiceUnavailable))
                    .await
            }
        }
    }

    async fn submit_presence(&self, mut stanza: Stanza) {
        let mut initial_from = None;
        if stanza.to().is_none()
            && let Some(Ok(from)) = stanza.from().map(Jid::try_as_full)
        {
            let available = match stanza.stanza_type() {
                None => Some(true),
                Some("unavailable") => Some(false),
                _ => None,
            };
            if let Some(available) = available {
                let state = PresenceState {
                    available,
                    priority: presence_priority(stanza.element()),
                    last: available.then(|| std::sync::Arc::new(stanza.element().clone())),
                };
                let change = self.0.sessions.set_presence(from, state);
                if change.became_available || change.became_reachable {
                    initial_from = Some((from.clone(), change));
                }
            }
        }
        match self.run_hooks(Hook::PresenceOut, &mut stanza).await {
            HookOutcome::Handled => {}
            HookOutcome::Reject(err) => self.bounce(&stanza, err).await,
            HookOutcome::Continue => match stanza.to() {
                // A client's directed presence to a domain Parley cannot reach (a MUC join on
                // another server, say) gets remote-server-not-found (RFC 6120 §8.3.3.16), so the
                // client does not wait for an answer forever.
                Some(to) if !self.is_local(to) && stanza.stanza_type().is_none() => {
                    self.bounce(&stanza, error(StanzaErrorCondition::RemoteServerNotFound))
                        .await
                }
                Some(_) => self.route_presence(stanza).await,
                None => {}
            },
        }
        if let Some((from, change)) = initial_from {
            if change.became_available {
                self.emit(Event::Available(from.clone())).await;
            }
            if change.became_reachable {
                self.emit(Event::InitialPresence(from)).await;
            }
        }
    }

    /// Routes a presence to its `to` address.
    async fn route_presence(&self, stanza: Stanza) {
        let Some(to) = stanza.to().cloned() else { return };
        if !self.is_local(&to) {
            // No federation: a subscription request says so; presence broadcasts and probes
            // to remote contacts are dropped rather than answered with an error each time.
            if matches!(
                stanza.stanza_type(),
                Some("subscribe" | "subscribed" | "unsubscribe" | "unsubscribed")
            ) {
                self.bounce(&stanza, error(StanzaErrorCondition::RemoteServerNotFound))
                    .await;
            }
            return;
        }
        if to.node().is_none() {
            return;
        }
        self.deliver_presence_in(stanza).await
    }

    /// Presence addressed to a local account: the PresenceIn hooks (subscriptions, probes), then
    /// delivery to the addressed resource or to every available resource (RFC 6121 §8.5.2.1.3).
    pub async fn deliver_presence_in(&self, mut stanza: Stanza) {
        match self.run_hooks(Hook::PresenceIn, &mut stanza).await {
            HookOutcome::Handled => return,
            HookOutcome::Reject(err) => return self.bounce(&stanza, err).await,
            HookOutcome::Continue => {}
        }
        let Some(to) = stanza.to().cloned() else { return };
        if matches!(stanza.stanza_type(), Some("probe")) {
            return;
        }
        match to.try_as_full() {
            Ok(full) => {
                self.send_to(full, stanza);
            }
            Err(bare) => {
                if stanza.is_error() {
                    return;
                }
                for resource in self.0.sessions.resources(bare) {
                    if resource.presence.available {
                        self.send_to(&resource.jid, stanza.clone());
                    }
                }
            }
        }
    }
}

/// The `<priority/>` of a presence, RFC 6121 §4.7.2.3 (-128..127, default 0).
pub fn presence_priority(presence: &Element) -> i8 {
    presence
        .get_child("priority", ns::CLIENT)
        .and_then(|p| p.text().trim().parse::<i8>().ok())
        .unwrap_or(0)
}

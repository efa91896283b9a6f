//! Presence: subscriptions (RFC 6121 §3, Appendix A), broadcast and probes (§4.2–§4.5) and
//! directed presence (§4.6), as PresenceOut/PresenceIn hooks and session events.
//!
//! Locks are never held while routing: a change is committed, pushed, and only then are the
//! resulting stanzas routed, so two accounts subscribing to each other cannot deadlock.

use crate::iq::internal;
use crate::state::{Inbound, SubState, SubscriptionKind};
use crate::store::ChangeError;
use crate::{Core, MAX_DIRECTED_PER_RESOURCE};
use async_trait::async_trait;
use parley_proto::{BareJid, Element, FullJid, Jid, Stanza, StanzaError, StanzaErrorCondition, StanzaKind};
use parley_router::{Event, EventHandler, HookHandler, HookOutcome, Router};
use std::sync::Arc;

/// Largest subscription request kept verbatim for an offline contact; a larger one is kept as
/// a bare `<presence type='subscribe'/>` (its extensions are dropped, the request is not).
const MAX_PENDING_STANZA: usize = 8 * 1024;

pub(crate) struct Outgoing(pub Arc<Core>);
pub(crate) struct Incoming(pub Arc<Core>);
pub(crate) struct Events(pub Arc<Core>);

fn presence(stanza_type: Option<&str>, from: impl Into<Jid>, to: impl Into<Jid>) -> Stanza {
    let mut stanza = Stanza::new(StanzaKind::Presence).with_from(from).with_to(to);
    stanza.set_type(stanza_type);
    stanza
}

fn bad_request(text: &str) -> HookOutcome {
    HookOutcome::Reject(StanzaError::with_text(StanzaErrorCondition::BadRequest, text))
}

/// Unavailable presence from every available resource of `owner` to `to`.
pub(crate) async fn send_unavailable_from_all(router: &Router, owner: &BareJid, to: &Jid) {
    for resource in router.sessions().resources(owner) {
        if resource.presence.available {
            router
                .route(presence(Some("unavailable"), resource.jid, to.clone()))
                .await;
        }
    }
}

/// The current presence of every available resource of `owner`, sent to `to` (probe answers,
/// §4.3.2, and a new subscriber, §3.1.5).
pub(crate) async fn send_current_presence(router: &Router, owner: &BareJid, to: &Jid) {
    for resource in router.sessions().resources(owner) {
        if !resource.presence.available {
            continue;
        }
        let mut stanza = resource
            .presence
            .last
            .and_then(|last| Stanza::from_element(std::sync::Arc::unwrap_or_clone(last)).ok())
            .filter(|last| last.kind() == StanzaKind::Presence)
            .unwrap_or_else(|| Stanza::new(StanzaKind::Presence));
        stanza.set_from(Some(resource.jid.into()));
        stanza.set_to(Some(to.clone()));
        router.route(stanza).await;
    }
}

/// The request as it is kept for an offline contact, bounded in size.
fn pending_form(stanza: &Stanza, contact: &BareJid, owner: &BareJid) -> String {
    let full = String::from(stanza.element());
    if full.len() <= MAX_PENDING_STANZA {
        return full;
    }
    String::from(presence(Some("subscribe"), contact.clone(), owner.clone()).element())
}

#[async_trait]
impl HookHandler for Outgoing {
    async fn handle(&self, router: &Router, stanza: &mut Stanza) -> HookOutcome {
        let Some(Ok(from)) = stanza.from().cloned().map(Jid::try_into_full) else {
            return HookOutcome::Continue;
        };
        let stanza_type = stanza.stanza_type().map(str::to_owned);
        let Some(to) = stanza.to().cloned() else {
            return match stanza_type.as_deref() {
                None | Some("unavailable") => {
                    self.0.broadcast(router, &from, stanza).await;
                    HookOutcome::Handled
                }
                Some("error") => HookOutcome::Handled,
                Some(_) => bad_request("This presence needs a 'to' address"),
            };
        };
        match stanza_type.as_deref() {
            None => {
                self.0.remember_directed(&from, to);
                HookOutcome::Continue
            }
            Some("unavailable") => {
                self.0.forget_directed(&from, &to);
                HookOutcome::Continue
            }
            Some("error") => HookOutcome::Continue,
            Some("probe") => {
                // §4.3.1: probes come from the account, not one resource.
                stanza.set_from(Some(from.to_bare().into()));
                HookOutcome::Continue
            }
            Some(other) => match SubscriptionKind::from_type(other) {
                Some(kind) => {
                    self.0
                        .outbound_subscription(router, &from, &to, kind, stanza)
                        .await
                }
                None => bad_request("Unknown presence type"),
            },
        }
    }
}

#[async_trait]
impl HookHandler for Incoming {
    async fn handle(&self, router: &Router, stanza: &mut Stanza) -> HookOutcome {
        let Some(to) = stanza.to() else {
            return HookOutcome::Continue;
        };
        let owner = to.to_bare();
        let stanza_type = stanza.stanza_type().map(str::to_owned);
        match stanza_type.as_deref() {
            // §4.6 (and §4.3.2 answers): available, unavailable and errors are delivered whatever
            // the subscription; an account without resources simply receives nothing.
            None | Some("unavailable" | "error") => HookOutcome::Continue,
            Some("probe") => {
                self.0.answer_probe(router, &owner, stanza).await;
                HookOutcome::Handled
            }
            Some(other) => match SubscriptionKind::from_type(other) {
                Some(kind) => self.0.inbound_subscription(router, &owner, kind, stanza).await,
                // Nobody can act on an unknown type; drop it rather than bounce into a loop.
                None => HookOutcome::Handled,
            },
        }
    }
}

#[async_trait]
impl EventHandler for Events {
    async fn on_event(&self, router: &Router, event: &Event) {
        crate::shared_sync::start_once(&self.0, router);
        match event {
            Event::Available(full) => self.0.initial_presence(router, full).await,
            Event::SessionClosed(full) => {
                // An available resource's targets were told by its final unavailable broadcast;
                // whatever is left was sent by a resource that never became available.
                let targets = self.0.directed_lock().remove(full).unwrap_or_default();
                for target in targets {
                    router
                        .route(presence(Some("unavailable"), full.clone(), target))
                        .await;
                }
            }
            Event::SessionBound(_) | Event::InitialPresence(_) | Event::AccountRemoved(_) => {}
        }
    }
}

impl Core {
    fn directed_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<FullJid, std::collections::HashSet<Jid>>> {
        self.directed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remember_directed(&self, from: &FullJid, to: Jid) {
        let mut directed = self.directed_lock();
        let targets = directed.entry(from.clone()).or_default();
        if targets.len() < MAX_DIRECTED_PER_RESOURCE {
            targets.insert(to);
        }
    }

    fn forget_directed(&self, from: &FullJid, to: &Jid) {
        let mut directed = self.directed_lock();
        if let Some(targets) = directed.get_mut(from) {
            targets.remove(to);
            if targets.is_empty() {
                directed.remove(from);
            }
        }
    }

    /// §4.2.2, §4.4.2, §4.5.2: broadcast presence goes to every subscriber and to the user's own
    /// available resources; unavailable also to everyone that got directed presence.
    async fn broadcast(&self, router: &Router, from: &FullJid, stanza: &Stanza) {
        let owner = from.to_bare();
        let subscribers = self.subscribers(&owner).await.unwrap_or_else(|err| {
            internal(&owner, &err);
            Vec::new()
        });
        for contact in &subscribers {
            router.route(stanza.clone().with_to(contact.clone())).await;
        }
        for resource in router.sessions().resources(&owner) {
            if resource.presence.available {
                router.send_to(&resource.jid, stanza.clone().with_to(resource.jid.clone()));
            }
        }
        if stanza.stanza_type() == Some("unavailable") {
            let targets = self.directed_lock().remove(from).unwrap_or_default();
            for target in targets {
                if !subscribers.contains(&target.to_bare()) {
                    router.route(stanza.clone().with_to(target)).await;
                }
            }
        }
    }

    /// Appendix A.2: a subscription stanza the user sends.
    async fn outbound_subscription(
        &self,
        router: &Router,
        from: &FullJid,
        to: &Jid,
        kind: SubscriptionKind,
        stanza: &mut Stanza,
    ) -> HookOutcome {
        let user = from.to_bare();
        let contact = to.to_bare();
        // §3.1.2 and friends: the server stamps both addresses as bare JIDs.
        stanza.set_from(Some(user.clone().into()));
        stanza.set_to(Some(contact.clone().into()));
        let result = self
            .store
            .update(&user, &contact, |entry| {
                let before = entry
                    .item
                    .clone()
                    .unwrap_or_default()
                    .state(entry.pending.is_some());
                let outcome = before.outbound(kind);
                let mut item = entry.item.clone().unwrap_or_default();
                item.set_state(outcome.state);
                match kind {
                    // §3.4: approving a request that was never made pre-approves it.
                    SubscriptionKind::Subscribed if !outcome.route && !before.from => item.approved = true,
                    SubscriptionKind::Unsubscribed => item.approved = false,
                    _ => {}
                }
                if outcome.state.from {
                    item.approved = false;
                }
                if !outcome.state.pending_in {
                    entry.pending = None;
                }
                if entry.item.is_some() || item != crate::StoredItem::default() {
                    entry.item = Some(item);
                }
                Ok((outcome.route, before))
            })
            .await;
        let ((route, before), committed) = match result {
            Ok(done) => done,
            Err(ChangeError::Refused(refused)) => return HookOutcome::Reject(refused),
            Err(ChangeError::Failed(err)) => return HookOutcome::Reject(internal(&user, &err)),
        };
        if let (true, Some(item)) = (committed.item_changed, &committed.item) {
            self.push(router, &user, item.to_wire(&contact), committed.version);
        }
        if !route {
            return HookOutcome::Handled;
        }
        let contact_jid = Jid::from(contact.clone());
        if kind == SubscriptionKind::Unsubscribed && before.from {
            // §3.2.2: the former subscriber sees the user go offline.
            send_unavailable_from_all(router, &user, &contact_jid).await;
        }
        router.route(stanza.clone()).await;
        if kind == SubscriptionKind::Subscribed {
            // §3.1.5: the new subscriber gets the user's current presence.
            send_current_presence(router, &user, &contact_jid).await;
        }
        HookOutcome::Handled
    }

    /// Appendix A.3: a subscription stanza addressed to the local account `owner`.
    async fn inbound_subscription(
        &self,
        router: &Router,
        owner: &BareJid,
        kind: SubscriptionKind,
        stanza: &mut Stanza,
    ) -> HookOutcome {
        let Some(contact) = stanza.from().map(Jid::to_bare) else {
            return HookOutcome::Handled;
        };
        if !router.account_exists(owner).await {
            // §3.1.3: a request to an account that does not exist is refused, nothing else said.
            if kind == SubscriptionKind::Subscribe {
                router
                    .route(presence(Some("unsubscribed"), owner.clone(), contact))
                    .await;
            }
            return HookOutcome::Handled;
        }
        stanza.set_from(Some(contact.clone().into()));
        stanza.set_to(Some(owner.clone().into()));
        let request = (kind == SubscriptionKind::Subscribe).then(|| pending_form(stanza, &contact, owner));
        let result = self
            .store
            .update(owner, &contact, |entry| {
                let mut item = entry.item.clone().unwrap_or_default();
                let before = item.state(entry.pending.is_some());
                let mut outcome = before.inbound(kind);
                if kind == SubscriptionKind::Subscribe && item.approved && !before.from {
                    // §3.4: pre-approved, so the server answers for the user.
                    let state = SubState {
                        from: true,
                        pending_in: false,
                        ..before
                    };
                    outcome = Inbound {
                        deliver: false,
                        auto_subscribed: true,
                        state,
                    };
                    item.approved = false;
                }
                item.set_state(outcome.state);
                if !outcome.state.pending_in {
                    entry.pending = None;
                } else if entry.pending.is_none() {
                    entry.pending = request.clone();
                }
                // Only the user creates roster items; a stranger's request is kept as pending.
                if entry.item.is_some() {
                    entry.item = Some(item);
                }
                Ok((outcome, before))
            })
            .await;
        let ((outcome, before), committed) = match result {
            Ok(done) => done,
            Err(ChangeError::Refused(refused)) => {
                tracing::debug!(%owner, %contact, error = %refused, "subscription stanza dropped");
                return HookOutcome::Handled;
            }
            Err(ChangeError::Failed(err)) => {
                internal(owner, &err);
                return HookOutcome::Handled;
            }
        };
        if let (true, Some(item)) = (committed.item_changed, &committed.item) {
            self.push(router, owner, item.to_wire(&contact), committed.version);
        }
        let contact_jid = Jid::from(contact.clone());
        if outcome.auto_subscribed {
            router
                .route(presence(Some("subscribed"), owner.clone(), contact))
                .await;
            send_current_presence(router, owner, &contact_jid).await;
        }
        if kind == SubscriptionKind::Unsubscribe && before.from {
            // §3.3.3: the former subscriber sees the user go offline.
            send_unavailable_from_all(router, owner, &contact_jid).await;
        }
        if outcome.deliver {
            HookOutcome::Continue
        } else {
            HookOutcome::Handled
        }
    }

    /// §4.3.2: a probe of a local account is answered with its resources' presence, only to a
    /// subscriber.
    async fn answer_probe(&self, router: &Router, owner: &BareJid, stanza: &Stanza) {
        let Some(prober) = stanza.from().cloned() else {
            return;
        };
        let prober_bare = prober.to_bare();
        let unsubscribed = presence(Some("unsubscribed"), owner.clone(), prober_bare.clone());
        if !router.account_exists(owner).await {
            return router.route(unsubscribed).await;
        }
        match self.is_subscriber(owner, &prober_bare).await {
            Ok(true) => send_current_presence(router, owner, &prober).await,
            Ok(false) => {
                // A prober still waiting for an answer to its request is not told "no" here.
                let waiting = self
                    .store
                    .entry(owner, &prober_bare)
                    .await
                    .is_ok_and(|e| e.pending.is_some());
                if !waiting {
                    router.route(unsubscribed).await;
                }
            }
            Err(err) => {
                internal(owner, &err);
            }
        }
    }

    /// §4.2: a resource became available: tell it where else its account is online (§4.2.2:
    /// an entity is implicitly subscribed to its own presence), probe the contacts it is
    /// subscribed to, and hand it the subscription requests that arrived while nobody was online
    /// (§3.1.3).
    async fn initial_presence(&self, router: &Router, full: &FullJid) {
        let owner = full.to_bare();
        for other in router.sessions().resources(&owner) {
            if other.jid == *full || !other.presence.available {
                continue;
            }
            let Some(last) = other.presence.last.as_deref() else {
                continue;
            };
            if let Ok(mut known) = Stanza::from_element(last.clone()) {
                known.set_from(Some(other.jid.clone().into()));
                known.set_to(Some(full.clone().into()));
                router.send_to(full, known);
            }
        }
        match self.subscriptions(&owner).await {
            Ok(contacts) => {
                for contact in contacts {
                    router
                        .route(presence(Some("probe"), owner.clone(), contact))
                        .await;
                }
            }
            Err(err) => {
                internal(&owner, &err);
            }
        }
        match self.store.pending(&owner).await {
            Ok(pending) => {
                for (contact, xml) in pending {
                    let request = xml
                        .parse::<Element>()
                        .ok()
                        .and_then(|e| Stanza::from_element(e).ok());
                    match request {
                        Some(request) => {
                            router.send_to(full, request);
                        }
                        None => {
                            tracing::warn!(%owner, %contact, "stored subscription request does not parse")
                        }
                    }
                }
            }
            Err(err) => {
                internal(&owner, &err);
            }
        }
    }
}

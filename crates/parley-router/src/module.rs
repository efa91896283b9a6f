//! How a module tells the router what it handles: typed routes, hooks and events, no strings.

use crate::router::Router;
use async_trait::async_trait;
use parley_proto::{BareJid, Element, FullJid, Jid, Stanza, StanzaError};
use std::collections::HashMap;
use std::sync::Arc;

/// A feature of the server. `register` declares everything it handles; the registry owns the
/// registrations, so a module cannot route around the router.
pub trait Module: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn register(self: Arc<Self>, registry: &mut Registry);
}

/// Which addresses an IQ route answers for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The server itself: `to` is the domain, or absent for a server-only payload.
    Server,
    /// An account, answered by the server on its behalf: `to` is a local bare JID, or absent
    /// (the sender's own account), RFC 6120 §10.3.3 and RFC 6121 §8.5.1.
    Account,
}

/// An IQ payload a handler answers: the qualified name of the first child, and a scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IqRoute {
    pub namespace: &'static str,
    pub name: &'static str,
    pub scope: Scope,
}

impl IqRoute {
    pub const fn server(namespace: &'static str, name: &'static str) -> Self {
        Self {
            namespace,
            name,
            scope: Scope::Server,
        }
    }
    pub const fn account(namespace: &'static str, name: &'static str) -> Self {
        Self {
            namespace,
            name,
            scope: Scope::Account,
        }
    }
}

/// What an IQ handler sees besides the request.
pub struct IqContext<'a> {
    pub router: &'a Router,
    /// The stamped sender.
    pub from: &'a Jid,
    /// The account the request is about for [`Scope::Account`] routes; the domain for server routes.
    pub target: &'a BareJid,
}

impl IqContext<'_> {
    /// The sender's bare JID.
    pub fn sender(&self) -> BareJid {
        self.from.to_bare()
    }
    /// True when a user asks about their own account.
    pub fn is_own_account(&self) -> bool {
        self.from.to_bare() == *self.target
    }
}

/// `Ok(payload)` becomes `<iq type='result'>` (with the payload, if any); `Err` an error reply.
pub type IqResult = Result<Option<Element>, StanzaError>;

#[async_trait]
pub trait IqHandler: Send + Sync + 'static {
    async fn handle(&self, context: IqContext<'_>, request: &Stanza) -> IqResult;
}

/// Points in the stanza flow where modules take part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    /// Every stanza from a local client, before the compliance stage (policy, blocking, limits).
    ClientStanza,
    /// Presence sent by a local client: broadcast, directed presence, subscriptions.
    PresenceOut,
    /// Presence addressed to a local account, before it is delivered to its resources.
    PresenceIn,
    /// A message for a local account about to be delivered to its resources.
    MessageIn,
    /// A message for a local account that no resource can take now.
    MessageOffline,
}

/// What a hook decided.
#[derive(Debug)]
pub enum HookOutcome {
    /// Let the next hook, then the router's default, process the stanza.
    Continue,
    /// The hook fully handled the stanza; nothing else runs.
    Handled,
    /// Refuse the stanza; its sender gets this error (never for an error stanza).
    Reject(StanzaError),
}

#[async_trait]
pub trait HookHandler: Send + Sync + 'static {
    async fn handle(&self, router: &Router, stanza: &mut Stanza) -> HookOutcome;
}

/// Things that happen to sessions and accounts.
#[derive(Debug, Clone)]
pub enum Event {
    /// A resource was bound.
    SessionBound(FullJid),
    /// A resource sent its initial presence (RFC 6121 §4.2): available after being unavailable,
    /// whatever its priority. Time to probe its contacts and tell it what it missed.
    Available(FullJid),
    /// A resource became reachable through its bare JID: its initial presence (RFC 6121 §4.2)
    /// with a non-negative priority, or a later one raising its priority from negative. Time
    /// for offline messages (a negative priority never receives what is sent to the bare JID).
    InitialPresence(FullJid),
    /// A resource is gone; if it was available, its unavailable presence was already routed.
    SessionClosed(FullJid),
    /// An account was removed or disabled in the directory.
    AccountRemoved(BareJid),
}

#[async_trait]
pub trait EventHandler: Send + Sync + 'static {
    async fn on_event(&self, router: &Router, event: &Event);
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("two handlers for the IQ payload {{{namespace}}}{name} ({scope:?}): {first} and {second}")]
    DuplicateIqRoute {
        namespace: &'static str,
        name: &'static str,
        scope: Scope,
        first: &'static str,
        second: &'static str,
    },
}

pub(crate) enum StreamFeature {
    Fixed(Element),
    Computed(Arc<dyn Fn(&Router) -> Element + Send + Sync>),
}

type IqRouteKey = (Scope, &'static str, &'static str);

pub(crate) struct RegisteredHook {
    pub priority: i32,
    pub module: &'static str,
    pub handler: Arc<dyn HookHandler>,
}

/// Everything the modules registered. Frozen once the router is built.
#[derive(Default)]
pub struct Registry {
    current_module: &'static str,
    pub(crate) iq_routes: HashMap<IqRouteKey, (&'static str, Arc<dyn IqHandler>)>,
    pub(crate) hooks: HashMap<Hook, Vec<RegisteredHook>>,
    pub(crate) events: Vec<Arc<dyn EventHandler>>,
    pub(crate) disco_features: HashMap<Scope, Vec<&'static str>>,
    pub(crate) stream_features: Vec<StreamFeature>,
    errors: Vec<RegistryError>,
}

impl Registry {
    pub(crate) fn register_module(&mut self, module: Arc<dyn Module>) {
        self.current_module = module.name();
        module.register(self);
    }

    /// Route IQ get/set requests with this payload to `handler`. A second handler for the same
    /// route is a start-up error.
    pub fn iq(&mut self, route: IqRoute, handler: Arc<dyn IqHandler>) {
        let key = (route.scope, route.namespace, route.name);
        if let Some((first, _)) = self.iq_routes.get(&key) {
            self.errors.push(RegistryError::DuplicateIqRoute {
                namespace: route.namespace,
                name: route.name,
                scope: route.scope,
                first,
                second: self.current_module,
            });
            return;
        }
        self.iq_routes.insert(key, (self.current_module, handler));
    }

    /// Run `handler` at `hook`; lower priorities run first.
    pub fn hook(&mut self, hook: Hook, priority: i32, handler: Arc<dyn HookHandler>) {
        let hooks = self.hooks.entry(hook).or_default();
        hooks.push(RegisteredHook {
            priority,
            module: self.current_module,
            handler,
        });
        hooks.sort_by_key(|h| h.priority);
    }

    pub fn on_event(&mut self, handler: Arc<dyn EventHandler>) {
        self.events.push(handler);
    }

    /// Advertise a feature in service discovery (XEP-0030) for the server or for accounts.
    pub fn disco_feature(&mut self, scope: Scope, namespace: &'static str) {
        let features = self.disco_features.entry(scope).or_default();
        if !features.contains(&namespace) {
            features.push(namespace);
        }
    }

    /// An element added to the stream features offered after authentication.
    pub fn stream_feature(&mut self, feature: Element) {
        self.stream_features.push(StreamFeature::Fixed(feature));
    }

    /// A stream feature computed from the finished router, once, on first use (entity
    /// capabilities hash every disco feature, which are only all known after registration).
    pub fn stream_feature_from(&mut self, make: Arc<dyn Fn(&Router) -> Element + Send + Sync>) {
        self.stream_features.push(StreamFeature::Computed(make));
    }

    pub(crate) fn finish(self) -> Result<Self, Vec<RegistryError>> {
        if self.errors.is_empty() {
            Ok(self)
        } else {
            Err(self.errors)
        }
    }
}

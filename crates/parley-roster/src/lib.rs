//! Roster and presence for Parley: RFC 6121 §2 (roster management), §3 and Appendix A
//! (the subscription state machine), §4 (presence broadcast, probes, directed presence),
//! roster versioning (§2.6, XEP-0237) and subscription pre-approval (§3.4).
//!
//! Owns: the roster store on [`parley_storage::KeyValue`] (`Space::Roster`, owner = the
//! account's bare JID), the `jabber:iq:roster` IQ handler, the PresenceOut/PresenceIn hooks
//! that run the subscription tables and fan presence out, and the [`SharedGroups`] seam through
//! which the directory will add contacts.
//!
//! Must not touch: sockets, the directory's backends, or other feature crates. It meets the
//! rest of the server only through the router's hooks, events and `route`/`send_to`.

mod iq;
mod item;
mod presence;
mod shared;
mod shared_sync;
mod state;
mod store;

#[cfg(test)]
mod tests;

pub use item::{MAX_GROUP_LEN, MAX_GROUPS, MAX_NAME_LEN, StoredItem};
pub use shared::{
    AccountFilter, ContactsChange, DirectorySharedGroups, NoSharedGroups, SharedContact, SharedGroupMapping,
    SharedGroups, SharedView,
};
pub use state::{SubState, SubscriptionKind};
pub use store::RosterError;

use parley_proto::{BareJid, Element, FullJid, Jid, Stanza, StanzaKind, ns};
use parley_router::{Hook, Module, Registry, Router};
use parley_storage::KeyValue;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use store::RosterStore;
use xmpp_parsers::roster::{Item, Roster};

/// Hook priority of the roster's presence handling: after policy hooks (blocking, limits),
/// which use lower numbers.
pub const PRESENCE_HOOK_PRIORITY: i32 = 100;
/// Most directed-presence targets remembered per resource (RFC 6121 §4.6); beyond it, further
/// targets are delivered but not told when the resource goes offline.
pub const MAX_DIRECTED_PER_RESOURCE: usize = 256;

/// Options of the roster module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RosterOptions {
    /// Most items in one roster; adding more is refused with `not-allowed`. Also bounds the
    /// subscription requests kept for an account while it is offline.
    pub max_items: usize,
}

impl Default for RosterOptions {
    fn default() -> Self {
        Self { max_items: 1000 }
    }
}

/// The roster and presence module.
pub struct RosterModule {
    core: Arc<Core>,
}

impl std::fmt::Debug for RosterModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RosterModule").finish_non_exhaustive()
    }
}

impl RosterModule {
    pub fn new(store: Arc<dyn KeyValue>, options: RosterOptions) -> Self {
        Self::with_shared_groups(store, options, Arc::new(NoSharedGroups))
    }

    /// A module whose rosters also show the contacts `shared` provides.
    pub fn with_shared_groups(
        store: Arc<dyn KeyValue>,
        options: RosterOptions,
        shared: Arc<dyn SharedGroups>,
    ) -> Self {
        let max = options.max_items;
        Self {
            core: Arc::new(Core {
                store: RosterStore::new(store, max, max),
                shared,
                directed: Mutex::default(),
                push_ids: AtomicU64::new(1),
                watching_shared: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }
}

impl RosterModule {
    /// The bare JIDs on `owner`'s roster as clients see it: stored items and shared contacts
    /// (for other modules' "roster" settings, such as MAM's `default='roster'`).
    pub async fn contacts(&self, owner: &BareJid) -> Result<Vec<BareJid>, RosterError> {
        Ok(self
            .core
            .view(owner)
            .await?
            .items
            .into_iter()
            .map(|item| item.jid)
            .collect())
    }
}

impl Module for RosterModule {
    fn name(&self) -> &'static str {
        "roster"
    }

    fn register(self: Arc<Self>, registry: &mut Registry) {
        let core = &self.core;
        registry.iq(
            parley_router::IqRoute::account(ns::ROSTER, "query"),
            Arc::new(iq::RosterIq(core.clone())),
        );
        registry.hook(
            Hook::PresenceOut,
            PRESENCE_HOOK_PRIORITY,
            Arc::new(presence::Outgoing(core.clone())),
        );
        registry.hook(
            Hook::PresenceIn,
            PRESENCE_HOOK_PRIORITY,
            Arc::new(presence::Incoming(core.clone())),
        );
        registry.on_event(Arc::new(presence::Events(core.clone())));
        registry.stream_feature(Element::bare("ver", ns::ROSTER_VER_FEATURE));
        registry.stream_feature(Element::bare("sub", ns::PRE_APPROVAL_FEATURE));
    }
}

/// State shared by the module's handlers.
pub(crate) struct Core {
    store: RosterStore,
    shared: Arc<dyn SharedGroups>,
    /// Directed-presence targets per resource (RFC 6121 §4.6), told when it goes unavailable.
    directed: Mutex<HashMap<FullJid, HashSet<Jid>>>,
    push_ids: AtomicU64,
    /// Set once the task applying shared-group changes runs (started by the first event,
    /// which is the first moment the module holds the router).
    watching_shared: std::sync::atomic::AtomicBool,
}

/// A roster as clients see it: stored items merged with shared contacts.
pub(crate) struct View {
    pub ver: String,
    pub items: Vec<Item>,
}

impl Core {
    /// Sends a roster push of `item` to every interested resource of `owner` (§2.1.6).
    fn push(&self, router: &Router, owner: &BareJid, item: Item, version: u64) {
        self.push_with_ver(router, owner, item, version.to_string());
    }

    /// A roster push carrying the version string `ver`.
    fn push_with_ver(&self, router: &Router, owner: &BareJid, item: Item, ver: String) {
        let query = Element::from(Roster {
            ver: Some(ver),
            items: vec![item],
        });
        for resource in router.sessions().resources(owner) {
            if !resource.interested {
                continue;
            }
            let id = format!("push{}", self.push_ids.fetch_add(1, Ordering::Relaxed));
            let push = Stanza::new(StanzaKind::Iq)
                .with_type("set")
                .with_id(&id)
                .with_from(owner.clone())
                .with_to(resource.jid.clone())
                .with_child(query.clone());
            router.send_to(&resource.jid, push);
        }
    }

    /// The roster of `owner` as a client sees it. Shared contacts show as `both`; as they are
    /// not versioned by the store, their digest is part of the version string.
    async fn view(&self, owner: &BareJid) -> Result<View, RosterError> {
        let roster = self.store.roster(owner).await?;
        let shared = self.shared.contacts(owner).await;
        let mut items: Vec<Item> = roster.items.iter().map(|(jid, item)| item.to_wire(jid)).collect();
        if shared.is_empty() {
            return Ok(View {
                ver: roster.version.to_string(),
                items,
            });
        }
        use std::hash::{Hash, Hasher};
        let stored: std::collections::HashMap<BareJid, usize> = items
            .iter()
            .enumerate()
            .map(|(index, item)| (item.jid.clone(), index))
            .collect();
        let mut digest = std::collections::hash_map::DefaultHasher::new();
        for contact in &shared {
            (contact.jid.as_str(), &contact.name, &contact.groups).hash(&mut digest);
            let wire = Item {
                jid: contact.jid.clone(),
                name: contact.name.clone(),
                subscription: xmpp_parsers::roster::Subscription::Both,
                ask: xmpp_parsers::roster::Ask::None,
                groups: contact
                    .groups
                    .iter()
                    .cloned()
                    .map(xmpp_parsers::roster::Group)
                    .collect(),
                approved: None,
            };
            match stored.get(&wire.jid) {
                Some(&index) => items[index].subscription = wire.subscription,
                None => items.push(wire),
            }
        }
        Ok(View {
            ver: format!("{}-{:x}", roster.version, digest.finish()),
            items,
        })
    }

    /// Contacts of `owner` whose subscription matches `wanted` (stored or shared).
    async fn contacts_where(
        &self,
        owner: &BareJid,
        wanted: impl Fn(&StoredItem) -> bool,
    ) -> Result<Vec<BareJid>, RosterError> {
        let roster = self.store.roster(owner).await?;
        let mut contacts: Vec<BareJid> = roster
            .items
            .into_iter()
            .filter(|(_, item)| wanted(item))
            .map(|(jid, _)| jid)
            .collect();
        // A set, not `contains` on the list: shared groups make rosters of thousands.
        let mut seen: std::collections::HashSet<BareJid> = contacts.iter().cloned().collect();
        for contact in self.shared.contacts(owner).await {
            if seen.insert(contact.jid.clone()) {
                contacts.push(contact.jid);
            }
        }
        Ok(contacts)
    }

    /// Contacts who receive `owner`'s presence (from/both).
    async fn subscribers(&self, owner: &BareJid) -> Result<Vec<BareJid>, RosterError> {
        self.contacts_where(owner, |item| item.from).await
    }

    /// Contacts whose presence `owner` receives (to/both).
    async fn subscriptions(&self, owner: &BareJid) -> Result<Vec<BareJid>, RosterError> {
        self.contacts_where(owner, |item| item.to).await
    }

    /// Whether `contact` may see `owner`'s presence.
    /// Shared groups first: they are in memory, the stored roster is a read of the store.
    async fn is_subscriber(&self, owner: &BareJid, contact: &BareJid) -> Result<bool, RosterError> {
        if self.shared.shares_with(owner, contact).await {
            return Ok(true);
        }
        let entry = self.store.entry(owner, contact).await?;
        Ok(entry.item.is_some_and(|item| item.from))
    }
}

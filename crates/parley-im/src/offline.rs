//! Offline messages (XEP-0160): messages for an account with no available resource are stored
//! durably and delivered, in arrival order, to the first resource that sends initial presence with
//! a non-negative priority.
//!
//! What is stored (the [`verdict`] of a message):
//! - only types `normal` (or none) and `chat`; `headline`, `groupchat` and `error` are never stored
//!   (the router bounces or drops them as RFC 6121 §8.5.2 says);
//! - not with the XEP-0334 `<no-store/>` hint: the sender gets `service-unavailable`;
//! - with a `<body/>`, a `<subject/>`, the `<store/>` hint, or any payload other than a chat state
//!   (XEP-0085), `<thread/>` and processing hints: receipts, markers, encrypted payloads... are kept;
//! - a message carrying only a chat state (typing notifications) is silently dropped: it is
//!   meaningless later, and bouncing it would only annoy the sender.
//!
//! Each stored message gets a `<delay xmlns='urn:xmpp:delay'/>` (XEP-0203) from the server with
//! the UTC arrival time. Storage layout per account (owner = bare JID), in [`Space::Offline`]:
//! `m/<sequence, 20 digits>` holds a message, and `meta` holds `head:next`, the sequence of the
//! oldest stored message and the next one to assign. Every store and delete is one atomic batch
//! that compare-and-sets `meta`, so concurrent writers never reuse a sequence or lose a count.

use crate::{ImError, owner};
use async_trait::async_trait;
use parley_proto::{BareJid, Element, FullJid, Stanza, StanzaError, StanzaErrorCondition, ns};
use parley_router::{Event, EventHandler, Hook, HookHandler, HookOutcome, Module, Registry, Router, Scope};
use parley_storage::{KeyValue, Space, StorageError, WriteBatch};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const META_KEY: &str = "meta";
const MESSAGE_PREFIX: &str = "m/";
/// Compare-and-set retries before giving up on a contended account.
const MAX_ATTEMPTS: usize = 8;
/// Messages read, queued and then forgotten at a time.
const DELIVERY_CHUNK: usize = 32;
/// How long delivery waits for room in the session's bounded queue before keeping the rest for
/// the next session (the backlog waits for the writer instead of closing the session).
const DELIVERY_PATIENCE: Duration = Duration::from_secs(5);
const CHAT_STATES: &str = "http://jabber.org/protocol/chatstates";
const HINTS: &str = "urn:xmpp:hints";

/// Options of offline storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OfflineOptions {
    /// Most messages kept per account; beyond it senders get `service-unavailable`.
    pub max_messages: u64,
}

impl Default for OfflineOptions {
    fn default() -> Self {
        Self { max_messages: 1000 }
    }
}

/// What to do with a message nobody can take now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Store,
    /// Let the router bounce it (`service-unavailable`).
    Refuse,
    /// Discard it silently.
    Drop,
}

/// Applies the storage rule of the module documentation.
pub fn verdict(message: &Element) -> Verdict {
    if !matches!(message.attr("type"), None | Some("normal" | "chat")) {
        return Verdict::Refuse;
    }
    if message.has_child("no-store", HINTS) {
        return Verdict::Refuse;
    }
    let worth_keeping = message.children().any(|child| {
        if child.has_ns(ns::CLIENT) {
            matches!(child.name(), "body" | "subject")
        } else if child.has_ns(HINTS) {
            child.name() == "store"
        } else {
            !child.has_ns(CHAT_STATES)
        }
    });
    if worth_keeping {
        Verdict::Store
    } else {
        Verdict::Drop
    }
}

/// `head:next` of an account's stored messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Meta {
    head: u64,
    next: u64,
}

impl Meta {
    fn decode(owner: &str, bytes: Option<&[u8]>) -> Result<Self, ImError> {
        let Some(bytes) = bytes else {
            return Ok(Self::default());
        };
        let corrupt = || ImError::Corrupt {
            what: "offline counter",
            owner: owner.to_owned(),
            reason: String::from_utf8_lossy(bytes).chars().take(64).collect(),
        };
        let text = std::str::from_utf8(bytes).map_err(|_| corrupt())?;
        let (head, next) = text.split_once(':').ok_or_else(corrupt)?;
        let meta = Self {
            head: head.parse().map_err(|_| corrupt())?,
            next: next.parse().map_err(|_| corrupt())?,
        };
        if meta.head > meta.next {
            return Err(corrupt());
        }
        Ok(meta)
    }

    fn encode(self) -> Vec<u8> {
        format!("{}:{}", self.head, self.next).into_bytes()
    }

    fn len(self) -> u64 {
        self.next - self.head
    }
}

fn message_key(sequence: u64) -> String {
    format!("{MESSAGE_PREFIX}{sequence:020}")
}

fn sequence_of(key: &str) -> Option<u64> {
    key.strip_prefix(MESSAGE_PREFIX)?.parse().ok()
}

/// XEP-0203 timestamp in UTC with milliseconds, e.g. `2024-05-01T12:00:00.000Z`.
fn utc_stamp(now: time::OffsetDateTime) -> String {
    let now = now.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.millisecond()
    )
}

fn delay(from: &BareJid, now: time::OffsetDateTime) -> Element {
    let mut element = Element::bare("delay", ns::DELAY);
    parley_proto::stanza::set_attr(&mut element, "from", Some(from.as_str()));
    parley_proto::stanza::set_attr(&mut element, "stamp", Some(&utc_stamp(now)));
    element
}

/// Removes an account from the set of deliveries in progress, however the delivery ends.
struct DeliveryGuard<'a> {
    delivering: &'a Mutex<HashSet<BareJid>>,
    account: BareJid,
}

impl Drop for DeliveryGuard<'_> {
    fn drop(&mut self) {
        self.delivering
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.account);
    }
}

/// XEP-0160 on the key-value store.
pub struct OfflineModule {
    store: Arc<dyn KeyValue>,
    options: OfflineOptions,
    /// Accounts whose messages are being delivered: two resources coming online together must
    /// not both get the same messages.
    delivering: Mutex<HashSet<BareJid>>,
}

impl OfflineModule {
    pub fn new(store: Arc<dyn KeyValue>, options: OfflineOptions) -> Self {
        Self {
            store,
            options,
            delivering: Mutex::default(),
        }
    }

    /// Stores `message` for `account` in one durable batch; `Ok(false)` when the account is full.
    async fn store_message(&self, account: &BareJid, message: &Element) -> Result<bool, ImError> {
        let owner = owner(account);
        let bytes = String::from(message).into_bytes();
        for _ in 0..MAX_ATTEMPTS {
            let current = self.store.get(Space::Offline, &owner, META_KEY).await?;
            let meta = Meta::decode(&owner, current.as_deref())?;
            if meta.len() >= self.options.max_messages {
                return Ok(false);
            }
            let mut batch = WriteBatch::new();
            batch
                .expect(Space::Offline, owner.as_str(), META_KEY, current)
                .put(
                    Space::Offline,
                    owner.as_str(),
                    message_key(meta.next),
                    bytes.clone(),
                )
                .put(
                    Space::Offline,
                    owner.as_str(),
                    META_KEY,
                    Meta {
                        next: meta.next + 1,
                        ..meta
                    }
                    .encode(),
                );
            match self.store.apply(batch).await {
                Ok(()) => return Ok(true),
                Err(StorageError::Conflict) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err(ImError::Contended {
            what: "offline counter",
            owner,
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Deletes the delivered `keys` and moves the head past `last`, the newest of them.
    async fn forget_through(&self, owner: &str, keys: &[String], last: Option<u64>) -> Result<(), ImError> {
        for _ in 0..MAX_ATTEMPTS {
            let current = self.store.get(Space::Offline, owner, META_KEY).await?;
            let meta = Meta::decode(owner, current.as_deref())?;
            let head = last.map_or(meta.head, |last| {
                meta.head.max(last.saturating_add(1)).min(meta.next)
            });
            let mut batch = WriteBatch::new();
            batch.expect(Space::Offline, owner, META_KEY, current);
            for key in keys {
                batch.delete(Space::Offline, owner, key.as_str());
            }
            batch.put(Space::Offline, owner, META_KEY, Meta { head, ..meta }.encode());
            match self.store.apply(batch).await {
                Ok(()) => return Ok(()),
                Err(StorageError::Conflict) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err(ImError::Contended {
            what: "offline counter",
            owner: owner.to_owned(),
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Sends the stored messages in order to `resource`, deleting each batch once queued. Stops,
    /// keeping the rest, at the first message the session does not take.
    async fn deliver(&self, router: &Router, resource: &FullJid) -> Result<usize, ImError> {
        let account = resource.to_bare();
        {
            let mut delivering = self.delivering.lock().unwrap_or_else(|e| e.into_inner());
            if !delivering.insert(account.clone()) {
                return Ok(0);
            }
        }
        let _guard = DeliveryGuard {
            delivering: &self.delivering,
            account: account.clone(),
        };
        let owner = owner(&account);
        let mut delivered = 0;
        loop {
            let page = self
                .store
                .scan_prefix(Space::Offline, &owner, MESSAGE_PREFIX, DELIVERY_CHUNK)
                .await?;
            let mut done = Vec::new();
            let mut last = None;
            let mut stopped = false;
            for (key, bytes) in &page {
                let Some(sequence) = sequence_of(key) else {
                    tracing::error!(module = "offline", key, "dropping a message with a corrupt key");
                    done.push(key.clone());
                    continue;
                };
                match decode_message(&owner, bytes) {
                    Ok(stanza) => {
                        if !router.send_to_waiting(resource, stanza, DELIVERY_PATIENCE).await {
                            stopped = true;
                            break;
                        }
                        delivered += 1;
                    }
                    // Kept, it would block every later message forever.
                    Err(err) => {
                        tracing::error!(module = "offline", error = %err, "dropping a corrupt message")
                    }
                }
                done.push(key.clone());
                last = Some(sequence);
            }
            if !done.is_empty() {
                self.forget_through(&owner, &done, last).await?;
            }
            if stopped || page.len() < DELIVERY_CHUNK {
                return Ok(delivered);
            }
        }
    }
}

fn decode_message(owner: &str, bytes: &[u8]) -> Result<Stanza, ImError> {
    let corrupt = |reason: String| ImError::Corrupt {
        what: "offline message",
        owner: owner.to_owned(),
        reason,
    };
    let text = std::str::from_utf8(bytes).map_err(|err| corrupt(err.to_string()))?;
    let element: Element = text
        .parse()
        .map_err(|err: minidom::Error| corrupt(err.to_string()))?;
    Stanza::from_element(element).map_err(|err| corrupt(err.to_string()))
}

impl Module for OfflineModule {
    fn name(&self) -> &'static str {
        "offline"
    }

    fn register(self: Arc<Self>, registry: &mut Registry) {
        registry.hook(Hook::MessageOffline, 100, self.clone());
        registry.on_event(self);
        registry.disco_feature(Scope::Server, ns::MSGOFFLINE);
    }
}

#[async_trait]
impl HookHandler for OfflineModule {
    async fn handle(&self, router: &Router, stanza: &mut Stanza) -> HookOutcome {
        match verdict(stanza.element()) {
            Verdict::Refuse => return HookOutcome::Continue,
            Verdict::Drop => return HookOutcome::Handled,
            Verdict::Store => {}
        }
        let Some(account) = stanza.to().map(|to| to.to_bare()) else {
            return HookOutcome::Continue;
        };
        let mut message = stanza.element().clone();
        message.append_child(delay(router.domain(), time::OffsetDateTime::now_utc()));
        match self.store_message(&account, &message).await {
            Ok(true) => HookOutcome::Handled,
            Ok(false) => HookOutcome::Reject(StanzaError::with_text(
                StanzaErrorCondition::ServiceUnavailable,
                "The recipient's offline storage is full",
            )),
            Err(err) => HookOutcome::Reject(err.to_stanza_error("offline")),
        }
    }
}

#[async_trait]
impl EventHandler for OfflineModule {
    async fn on_event(&self, router: &Router, event: &Event) {
        match event {
            Event::InitialPresence(resource) => {
                // The router emits this once the resource is reachable through the bare JID (a
                // negative priority never is, RFC 6121 §8.5.2.1.1); checked again here, as the
                // priority may have changed since.
                let priority = router
                    .sessions()
                    .resource(resource)
                    .map(|info| info.presence.priority);
                if priority.is_none_or(|priority| priority < 0) {
                    return;
                }
                if let Err(err) = self.deliver(router, resource).await {
                    tracing::error!(module = "offline", %resource, error = %err, "offline delivery stopped");
                }
            }
            Event::AccountRemoved(account) => {
                let mut batch = WriteBatch::new();
                batch.delete_owner(Space::Offline, owner(account));
                if let Err(err) = self.store.apply(batch).await {
                    tracing::error!(module = "offline", %account, error = %err, "could not drop offline messages");
                }
            }
            Event::SessionBound(_) | Event::Available(_) | Event::SessionClosed(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use parley_proto::{Jid, StanzaKind};
    use parley_storage::MemoryStore;

    fn setup(options: OfflineOptions) -> (Router, Arc<MemoryStore>, Arc<OfflineModule>) {
        let store = Arc::new(MemoryStore::new());
        let module = Arc::new(OfflineModule::new(store.clone(), options));
        let router = router(vec![module.clone()]);
        (router, store, module)
    }

    fn chat(from: &str, to: &str, body: &str) -> Stanza {
        Stanza::new(StanzaKind::Message)
            .with_from(full(from))
            .with_to(jid(to))
            .with_type("chat")
            .with_id(body)
            .with_child(xml(&format!("<body xmlns='jabber:client'>{body}</body>")))
    }

    fn presence(from: &str, priority: Option<i8>) -> Stanza {
        let mut stanza = Stanza::new(StanzaKind::Presence).with_from(full(from));
        if let Some(priority) = priority {
            stanza = stanza.with_child(xml(&format!(
                "<priority xmlns='jabber:client'>{priority}</priority>"
            )));
        }
        stanza
    }

    async fn stored(store: &MemoryStore, account: &str) -> Vec<(String, Vec<u8>)> {
        store
            .scan_prefix(Space::Offline, account, MESSAGE_PREFIX, 100)
            .await
            .unwrap()
    }

    #[test]
    fn verdicts_follow_the_documented_rule() {
        let case = |message: &str| verdict(&xml(message));
        assert_eq!(
            case("<message xmlns='jabber:client' type='chat'><body>hi</body></message>"),
            Verdict::Store
        );
        assert_eq!(
            case("<message xmlns='jabber:client'><subject>s</subject></message>"),
            Verdict::Store
        );
        assert_eq!(
            case("<message xmlns='jabber:client'><received xmlns='urn:xmpp:receipts'/></message>"),
            Verdict::Store
        );
        assert_eq!(
            case("<message xmlns='jabber:client'><store xmlns='urn:xmpp:hints'/></message>"),
            Verdict::Store
        );
        for refused in ["headline", "groupchat", "error"] {
            let message = format!("<message xmlns='jabber:client' type='{refused}'><body>x</body></message>");
            assert_eq!(case(&message), Verdict::Refuse, "{refused}");
        }
        assert_eq!(
            case("<message xmlns='jabber:client'><body>x</body><no-store xmlns='urn:xmpp:hints'/></message>"),
            Verdict::Refuse
        );
        assert_eq!(
            case(
                "<message xmlns='jabber:client' type='chat'><thread>t</thread>\
                 <composing xmlns='http://jabber.org/protocol/chatstates'/></message>"
            ),
            Verdict::Drop
        );
    }

    #[test]
    fn meta_round_trips_and_rejects_garbage() {
        let meta = Meta { head: 3, next: 7 };
        assert_eq!(Meta::decode("o", Some(&meta.encode())).unwrap(), meta);
        assert_eq!(Meta::decode("o", None).unwrap(), Meta::default());
        for bad in [&b"3"[..], b"x:1", b"5:2", b"\xff:1"] {
            assert!(
                matches!(Meta::decode("o", Some(bad)), Err(ImError::Corrupt { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(sequence_of(&message_key(42)), Some(42));
        assert!(message_key(9) < message_key(10), "keys sort in arrival order");
    }

    #[test]
    fn stamps_are_utc_xep_0082() {
        let moment = time::macros::datetime!(2024-05-01 14:03:09.25 +02:00);
        assert_eq!(utc_stamp(moment), "2024-05-01T12:03:09.250Z");
    }

    #[tokio::test]
    async fn stored_while_offline_then_delivered_in_order_with_a_delay() {
        let (router, store, _module) = setup(OfflineOptions::default());
        let mut bob = bind(&router, "bob@example.org/desk").await;
        for body in ["one", "two", "three"] {
            router
                .submit(chat("bob@example.org/desk", "alice@example.org", body))
                .await;
        }
        assert!(next(&mut bob).is_none(), "no error went back to the sender");
        assert_eq!(stored(&store, "alice@example.org").await.len(), 3);

        let mut alice = bind(&router, "alice@example.org/phone").await;
        assert!(next(&mut alice).is_none(), "nothing before initial presence");
        router.submit(presence("alice@example.org/phone", None)).await;
        for body in ["one", "two", "three"] {
            let message = next(&mut alice).expect("a stored message");
            assert_eq!(
                message.element().get_child("body", ns::CLIENT).unwrap().text(),
                body
            );
            assert_eq!(message.from(), Some(&Jid::from(full("bob@example.org/desk"))));
            let delay = message.element().get_child("delay", ns::DELAY).expect("a delay");
            assert_eq!(delay.attr("from"), Some(DOMAIN));
            let stamp = delay.attr("stamp").unwrap();
            assert!(
                time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339).is_ok()
            );
            assert!(stamp.ends_with('Z'));
        }
        assert!(next(&mut alice).is_none());
        assert!(
            stored(&store, "alice@example.org").await.is_empty(),
            "deleted after delivery"
        );
        let meta = store
            .get(Space::Offline, "alice@example.org", META_KEY)
            .await
            .unwrap();
        assert_eq!(
            Meta::decode("o", meta.as_deref()).unwrap(),
            Meta { head: 3, next: 3 }
        );
    }

    #[tokio::test]
    async fn beyond_the_cap_the_sender_gets_service_unavailable() {
        let (router, store, _module) = setup(OfflineOptions { max_messages: 2 });
        let mut bob = bind(&router, "bob@example.org/desk").await;
        router
            .submit(chat("bob@example.org/desk", "alice@example.org", "one"))
            .await;
        router
            .submit(chat("bob@example.org/desk", "alice@example.org", "two"))
            .await;
        assert!(next(&mut bob).is_none());
        router
            .submit(chat("bob@example.org/desk", "alice@example.org", "three"))
            .await;
        let bounce = next(&mut bob).expect("an error for the third message");
        assert_eq!(error_condition(&bounce), StanzaErrorCondition::ServiceUnavailable);
        assert_eq!(bounce.id(), Some("three"));
        assert_eq!(stored(&store, "alice@example.org").await.len(), 2);
    }

    #[tokio::test]
    async fn headline_error_and_no_store_messages_are_not_stored() {
        let (router, store, module) = setup(OfflineOptions::default());
        for message_type in ["headline", "error", "groupchat"] {
            let mut message = chat("bob@example.org/desk", "alice@example.org", "x").with_type(message_type);
            let outcome = module.handle(&router, &mut message).await;
            assert!(
                matches!(outcome, HookOutcome::Continue),
                "{message_type}: {outcome:?}"
            );
        }
        let mut bob = bind(&router, "bob@example.org/desk").await;
        let hinted = chat("bob@example.org/desk", "alice@example.org", "secret")
            .with_child(xml("<no-store xmlns='urn:xmpp:hints'/>"));
        router.submit(hinted).await;
        let bounce = next(&mut bob).expect("the router bounces what is not stored");
        assert_eq!(error_condition(&bounce), StanzaErrorCondition::ServiceUnavailable);

        let typing = Stanza::new(StanzaKind::Message)
            .with_from(full("bob@example.org/desk"))
            .with_to(jid("alice@example.org"))
            .with_type("chat")
            .with_child(xml("<composing xmlns='http://jabber.org/protocol/chatstates'/>"));
        router.submit(typing).await;
        assert!(next(&mut bob).is_none(), "chat states are dropped silently");
        assert!(stored(&store, "alice@example.org").await.is_empty());
    }

    #[tokio::test]
    async fn negative_priority_gets_nothing() {
        let (router, store, _module) = setup(OfflineOptions::default());
        router
            .submit(chat("bob@example.org/desk", "alice@example.org", "one"))
            .await;
        let mut alice = bind(&router, "alice@example.org/bot").await;
        router.submit(presence("alice@example.org/bot", Some(-1))).await;
        assert!(next(&mut alice).is_none());
        assert_eq!(stored(&store, "alice@example.org").await.len(), 1);
    }

    #[tokio::test]
    async fn a_full_queue_stops_delivery_and_keeps_the_rest() {
        let (router, store, _module) = setup(OfflineOptions::default());
        for body in ["one", "two", "three"] {
            router
                .submit(chat("bob@example.org/desk", "alice@example.org", body))
                .await;
        }
        let mut alice = bind_with_capacity(&router, "alice@example.org/phone", 1).await;
        router.submit(presence("alice@example.org/phone", Some(1))).await;
        let first = next(&mut alice).expect("one message fit");
        assert_eq!(first.id(), Some("one"));
        let left = stored(&store, "alice@example.org").await;
        assert_eq!(left.len(), 2, "the undelivered stay stored");
        assert_eq!(left[0].0, message_key(1));

        // The next initial presence (a new session) gets the rest, still in order.
        let mut tablet = bind(&router, "alice@example.org/tablet").await;
        router.submit(presence("alice@example.org/tablet", None)).await;
        assert_eq!(next(&mut tablet).unwrap().id(), Some("two"));
        assert_eq!(next(&mut tablet).unwrap().id(), Some("three"));
        assert!(stored(&store, "alice@example.org").await.is_empty());
    }

    #[tokio::test]
    async fn corrupt_messages_are_skipped_not_blocking() {
        let (router, store, _module) = setup(OfflineOptions::default());
        let mut batch = WriteBatch::new();
        batch
            .put(
                Space::Offline,
                "alice@example.org",
                message_key(0),
                b"<message".to_vec(),
            )
            .put(
                Space::Offline,
                "alice@example.org",
                META_KEY,
                Meta { head: 0, next: 1 }.encode(),
            );
        store.apply(batch).await.unwrap();
        router
            .submit(chat("bob@example.org/desk", "alice@example.org", "after"))
            .await;
        let mut alice = bind(&router, "alice@example.org/phone").await;
        router.submit(presence("alice@example.org/phone", None)).await;
        assert_eq!(next(&mut alice).unwrap().id(), Some("after"));
        assert!(stored(&store, "alice@example.org").await.is_empty());
    }

    #[tokio::test]
    async fn account_removal_drops_its_messages() {
        let (router, store, _module) = setup(OfflineOptions::default());
        router
            .submit(chat("bob@example.org/desk", "alice@example.org", "one"))
            .await;
        router
            .emit(Event::AccountRemoved(BareJid::new("alice@example.org").unwrap()))
            .await;
        assert!(stored(&store, "alice@example.org").await.is_empty());
    }
}

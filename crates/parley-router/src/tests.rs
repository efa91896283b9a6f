//! Routing rules of RFC 6121 §8 and the router's own guarantees, with fake sessions.

use crate::*;
use async_trait::async_trait;
use parley_proto::{
    BareJid, Element, FullJid, Jid, Stanza, StanzaError, StanzaErrorCondition, StanzaKind, ns,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::mpsc;

struct Known(&'static [&'static str]);

#[async_trait]
impl Accounts for Known {
    async fn exists(&self, localpart: &str) -> bool {
        self.0.contains(&localpart)
    }
}

fn router_with(modules: Vec<Arc<dyn Module>>) -> Router {
    let mut builder = Router::builder(
        BareJid::new("example.org").unwrap(),
        Arc::new(Known(&["alice", "bob"])),
    );
    for module in modules {
        builder = builder.module(module);
    }
    builder.build().unwrap_or_else(|e| panic!("{e:?}"))
}

struct Session {
    jid: FullJid,
    rx: mpsc::Receiver<Outbound>,
    control: Arc<SessionControl>,
    id: SessionId,
}

impl Session {
    fn next(&mut self) -> Option<Stanza> {
        match self.rx.try_recv() {
            Ok(Outbound::Stanza(stanza)) => Some(*stanza),
            Err(_) => None,
        }
    }
}

async fn bind(router: &Router, jid: &str, queue: usize) -> Session {
    let jid = FullJid::new(jid).unwrap();
    let (tx, rx) = mpsc::channel(queue);
    let control = Arc::new(SessionControl::default());
    let id = router.bind(jid.clone(), tx, control.clone()).await.unwrap();
    Session { jid, rx, control, id }
}

async fn available(router: &Router, session: &Session, priority: i8) {
    let mut presence = Stanza::new(StanzaKind::Presence).with_from(session.jid.clone());
    presence.element_mut().append_child(
        Element::builder("priority", ns::CLIENT)
            .append(priority.to_string())
            .build(),
    );
    router.submit(presence).await;
}

fn message(from: &FullJid, to: &str, message_type: &str) -> Stanza {
    Stanza::new(StanzaKind::Message)
        .with_from(from.clone())
        .with_to(Jid::new(to).unwrap())
        .with_type(message_type)
        .with_id("m1")
        .with_child(Element::builder("body", ns::CLIENT).append("hi").build())
}

fn condition(stanza: &Stanza) -> StanzaErrorCondition {
    stanza.error().expect("an error stanza").condition
}

#[tokio::test]
async fn a_message_to_a_bare_jid_goes_to_the_highest_non_negative_priority() {
    let router = router_with(vec![]);
    let mut alice = bind(&router, "alice@example.org/a", 8).await;
    let mut high1 = bind(&router, "bob@example.org/high1", 8).await;
    let mut high2 = bind(&router, "bob@example.org/high2", 8).await;
    let mut low = bind(&router, "bob@example.org/low", 8).await;
    let mut negative = bind(&router, "bob@example.org/neg", 8).await;
    available(&router, &high1, 5).await;
    available(&router, &high2, 5).await;
    available(&router, &low, 1).await;
    available(&router, &negative, -1).await;
    router
        .submit(message(&alice.jid, "bob@example.org", "chat"))
        .await;
    assert!(
        high1.next().is_some() && high2.next().is_some(),
        "ties both get it"
    );
    assert!(low.next().is_none(), "lower priority does not");
    assert!(negative.next().is_none(), "negative priority never does");
    assert!(alice.next().is_none(), "no error for the sender");
}

#[tokio::test]
async fn headlines_go_to_every_non_negative_resource() {
    let router = router_with(vec![]);
    let alice = bind(&router, "alice@example.org/a", 8).await;
    let mut one = bind(&router, "bob@example.org/one", 8).await;
    let mut two = bind(&router, "bob@example.org/two", 8).await;
    available(&router, &one, 5).await;
    available(&router, &two, 0).await;
    router
        .submit(message(&alice.jid, "bob@example.org", "headline"))
        .await;
    assert!(one.next().is_some() && two.next().is_some());
}

#[tokio::test]
async fn undeliverable_messages_bounce_with_the_rfc_conditions() {
    let router = router_with(vec![]);
    let mut alice = bind(&router, "alice@example.org/a", 8).await;
    // Offline account with no offline storage: service-unavailable.
    router
        .submit(message(&alice.jid, "bob@example.org", "chat"))
        .await;
    assert_eq!(
        condition(&alice.next().unwrap()),
        StanzaErrorCondition::ServiceUnavailable
    );
    // Unknown account.
    router
        .submit(message(&alice.jid, "nobody@example.org", "chat"))
        .await;
    assert_eq!(
        condition(&alice.next().unwrap()),
        StanzaErrorCondition::ServiceUnavailable
    );
    // Another domain, with no federation.
    router
        .submit(message(&alice.jid, "carol@elsewhere.net", "chat"))
        .await;
    assert_eq!(
        condition(&alice.next().unwrap()),
        StanzaErrorCondition::RemoteServerNotFound
    );
    // groupchat to a bare JID.
    let _bob = bind(&router, "bob@example.org/b", 8).await;
    router
        .submit(message(&alice.jid, "bob@example.org", "groupchat"))
        .await;
    assert_eq!(
        condition(&alice.next().unwrap()),
        StanzaErrorCondition::ServiceUnavailable
    );
    // An error is never answered with an error.
    router
        .submit(message(&alice.jid, "nobody@example.org", "error"))
        .await;
    assert!(alice.next().is_none());
}

#[tokio::test]
async fn a_message_to_a_missing_full_jid_falls_back_to_the_bare_jid() {
    let router = router_with(vec![]);
    let alice = bind(&router, "alice@example.org/a", 8).await;
    let mut bob = bind(&router, "bob@example.org/phone", 8).await;
    available(&router, &bob, 0).await;
    router
        .submit(message(&alice.jid, "bob@example.org/laptop", "chat"))
        .await;
    let delivered = bob.next().expect("delivered to the available resource");
    assert_eq!(delivered.to().unwrap().as_str(), "bob@example.org/laptop");
}

#[tokio::test]
async fn only_chat_to_a_missing_full_jid_falls_back_to_the_bare_jid() {
    let router = router_with(vec![]);
    let mut alice = bind(&router, "alice@example.org/a", 8).await;
    let mut bob = bind(&router, "bob@example.org/phone", 8).await;
    available(&router, &bob, 0).await;
    for message_type in ["normal", "groupchat"] {
        router
            .submit(message(&alice.jid, "bob@example.org/laptop", message_type))
            .await;
        assert_eq!(
            condition(&alice.next().expect("an error")),
            StanzaErrorCondition::ServiceUnavailable,
            "{message_type}"
        );
    }
    router
        .submit(message(&alice.jid, "bob@example.org/laptop", "headline"))
        .await;
    assert!(alice.next().is_none(), "a headline is dropped silently");
    assert!(bob.next().is_none(), "nothing reaches the other resource");
}

#[tokio::test]
async fn directed_presence_to_an_unreachable_domain_is_answered() {
    let router = router_with(vec![]);
    let mut alice = bind(&router, "alice@example.org/a", 8).await;
    let join = Stanza::new(StanzaKind::Presence)
        .with_from(alice.jid.clone())
        .with_to(Jid::new("room@conference.elsewhere.example/alice").unwrap());
    router.submit(join.clone()).await;
    assert_eq!(
        condition(&alice.next().expect("an error")),
        StanzaErrorCondition::RemoteServerNotFound
    );
    router.submit(join.with_type("unavailable")).await;
    assert!(alice.next().is_none(), "leaving needs no answer");
}

struct Echo;
#[async_trait]
impl IqHandler for Echo {
    async fn handle(&self, context: IqContext<'_>, _request: &Stanza) -> IqResult {
        Ok(Some(
            Element::builder("target", "urn:test")
                .append(context.target.as_str())
                .build(),
        ))
    }
}

struct EchoModule(&'static str);
impl Module for EchoModule {
    fn name(&self) -> &'static str {
        self.0
    }
    fn register(self: Arc<Self>, registry: &mut Registry) {
        registry.iq(IqRoute::account("urn:test", "q"), Arc::new(Echo));
        registry.iq(IqRoute::server("urn:test", "q"), Arc::new(Echo));
    }
}

fn iq(from: &FullJid, to: Option<&str>, payload_ns: &str) -> Stanza {
    let mut stanza = Stanza::new(StanzaKind::Iq)
        .with_from(from.clone())
        .with_type("get")
        .with_id("q1");
    if let Some(to) = to {
        stanza.set_to(Some(Jid::new(to).unwrap()));
    }
    stanza.with_child(Element::bare("q", payload_ns))
}

#[tokio::test]
async fn every_iq_request_gets_exactly_one_reply_from_the_right_scope() {
    let router = router_with(vec![Arc::new(EchoModule("echo"))]);
    let mut alice = bind(&router, "alice@example.org/a", 8).await;
    for (to, expected_target) in [
        (None, "alice@example.org"),
        (Some("example.org"), "example.org"),
        (Some("bob@example.org"), "bob@example.org"),
    ] {
        router.submit(iq(&alice.jid, to, "urn:test")).await;
        let reply = alice.next().expect("one reply");
        assert_eq!(reply.stanza_type(), Some("result"), "{to:?}");
        assert_eq!(reply.iq_payload().unwrap().text(), expected_target);
        assert!(alice.next().is_none(), "exactly one reply");
    }
    router
        .submit(iq(&alice.jid, Some("example.org"), "urn:unknown"))
        .await;
    assert_eq!(
        condition(&alice.next().unwrap()),
        StanzaErrorCondition::ServiceUnavailable
    );
    router
        .submit(iq(&alice.jid, Some("nobody@example.org"), "urn:test"))
        .await;
    assert_eq!(
        condition(&alice.next().unwrap()),
        StanzaErrorCondition::ServiceUnavailable
    );
    router
        .submit(iq(&alice.jid, Some("elsewhere.net"), "urn:test"))
        .await;
    assert_eq!(
        condition(&alice.next().unwrap()),
        StanzaErrorCondition::RemoteServerNotFound
    );
    router
        .submit(iq(&alice.jid, Some("bob@example.org/offline"), "urn:test"))
        .await;
    assert_eq!(
        condition(&alice.next().unwrap()),
        StanzaErrorCondition::ServiceUnavailable
    );
    assert!(alice.next().is_none());
}

#[test]
fn two_handlers_for_one_iq_route_fail_at_start() {
    let built = Router::builder(BareJid::new("example.org").unwrap(), Arc::new(Known(&[])))
        .module(Arc::new(EchoModule("first")))
        .module(Arc::new(EchoModule("second")))
        .build();
    let errors = built.expect_err("a registry error");
    assert!(errors.iter().any(|e| matches!(
        e,
        RegistryError::DuplicateIqRoute {
            first: "first",
            second: "second",
            ..
        }
    )));
}

#[tokio::test]
async fn binding_the_same_resource_again_closes_the_old_session_with_conflict() {
    let router = router_with(vec![]);
    let old = bind(&router, "alice@example.org/phone", 8).await;
    let new = bind(&router, "alice@example.org/phone", 8).await;
    let reason = tokio::time::timeout(std::time::Duration::from_secs(1), old.control.closed())
        .await
        .unwrap();
    assert_eq!(reason.condition, parley_proto::StreamErrorCondition::Conflict);
    // The old session's unbind must not remove the new one.
    router.unbind(&old.jid, old.id).await;
    assert_eq!(router.sessions().resource(&new.jid).map(|r| r.id), Some(new.id));
}

#[tokio::test]
async fn a_consumer_too_slow_for_its_queue_is_closed_not_buffered() {
    let router = router_with(vec![]);
    let alice = bind(&router, "alice@example.org/a", 64).await;
    let bob = bind(&router, "bob@example.org/b", 2).await;
    for _ in 0..3 {
        router
            .submit(message(&alice.jid, "bob@example.org/b", "chat"))
            .await;
    }
    let reason = tokio::time::timeout(std::time::Duration::from_secs(1), bob.control.closed())
        .await
        .unwrap();
    assert_eq!(
        reason.condition,
        parley_proto::StreamErrorCondition::PolicyViolation
    );
}

/// The byte budget closes a reader of large stanzas long before its slot bound would; what the
/// session takes off its queue makes room again.
#[tokio::test]
async fn a_queue_of_large_stanzas_is_bounded_by_bytes() {
    let router = router_with(vec![]);
    let alice = bind(&router, "alice@example.org/a", 64).await;
    let jid = FullJid::new("bob@example.org/b").unwrap();
    let (tx, mut rx) = mpsc::channel(1024);
    let control = Arc::new(SessionControl::with_byte_budget(20_000));
    router.bind(jid.clone(), tx, control.clone()).await.unwrap();
    let large = || {
        message(&alice.jid, "bob@example.org/b", "chat").with_child(
            Element::builder("x", "urn:example:pad")
                .append("p".repeat(6_000))
                .build(),
        )
    };
    for _ in 0..3 {
        router.submit(large()).await;
    }
    assert!(!control.is_closed(), "three of ~6 KB fit in 20 KB");
    // The session takes one off its queue and gives its bytes back: room for one more.
    let Ok(Outbound::Stanza(taken)) = rx.try_recv() else {
        panic!("a queued stanza")
    };
    control.release(parley_proto::writer::approximate_size(taken.element()));
    router.submit(large()).await;
    assert!(!control.is_closed());
    router.submit(large()).await;
    let reason = tokio::time::timeout(std::time::Duration::from_secs(1), control.closed())
        .await
        .unwrap();
    assert_eq!(
        reason.condition,
        parley_proto::StreamErrorCondition::PolicyViolation
    );
    assert_eq!(
        std::iter::from_fn(|| rx.try_recv().ok()).count(),
        3,
        "nothing past the budget"
    );
}

/// A router of example.org whose accounts are `known`, recording messages with `stage`.
fn router_recording_with(stage: Arc<dyn ComplianceStage>, known: &'static [&'static str]) -> Router {
    Router::builder(BareJid::new("example.org").unwrap(), Arc::new(Known(known)))
        .compliance(stage)
        .build()
        .unwrap_or_else(|e| panic!("{e:?}"))
}

struct Refuse(AtomicUsize);
#[async_trait]
impl ComplianceStage for Refuse {
    async fn record(&self, _stanza: &mut Stanza, _addressee: Addressee) -> Result<(), ComplianceError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Err(ComplianceError("disk full".into()))
    }
}

/// Accepts every message and remembers what the router said of its addressee.
#[derive(Default)]
struct Addressees(std::sync::Mutex<Vec<(String, Addressee)>>);
#[async_trait]
impl ComplianceStage for Addressees {
    async fn record(&self, stanza: &mut Stanza, addressee: Addressee) -> Result<(), ComplianceError> {
        let to = stanza.to().map(ToString::to_string).unwrap_or_default();
        self.0.lock().unwrap().push((to, addressee));
        Ok(())
    }
}

#[tokio::test]
async fn the_compliance_stage_learns_whether_the_addressee_is_an_existing_account() {
    let stage = Arc::new(Addressees::default());
    let router = router_recording_with(stage.clone(), &["alice", "bob", "carol"]);
    let alice = bind(&router, "alice@example.org/a", 8).await;
    let bob = bind(&router, "bob@example.org/b", 8).await;
    available(&router, &bob, 0).await;
    for to in [
        "bob@example.org/b",
        "carol@example.org",
        "ghost@example.org",
        "example.org",
        "dave@elsewhere.example",
    ] {
        router.submit(message(&alice.jid, to, "chat")).await;
    }
    let seen = stage.0.lock().unwrap().clone();
    let expected = [
        ("bob@example.org/b", Addressee::LocalAccount),
        ("carol@example.org", Addressee::LocalAccount),
        ("ghost@example.org", Addressee::Other),
        ("example.org", Addressee::Other),
        ("dave@elsewhere.example", Addressee::Other),
    ];
    let expected: Vec<(String, Addressee)> = expected
        .iter()
        .map(|(to, addressee)| (to.to_string(), *addressee))
        .collect();
    assert_eq!(seen, expected, "online, offline, unknown, the server, remote");
}

#[tokio::test]
async fn a_message_the_compliance_stage_cannot_record_is_not_delivered() {
    let stage = Arc::new(Refuse(AtomicUsize::new(0)));
    let router = router_recording_with(stage.clone(), &["alice", "bob"]);
    let mut alice = bind(&router, "alice@example.org/a", 8).await;
    let mut bob = bind(&router, "bob@example.org/b", 8).await;
    available(&router, &bob, 0).await;
    router
        .submit(message(&alice.jid, "bob@example.org", "chat"))
        .await;
    assert!(bob.next().is_none(), "nothing delivered");
    assert_eq!(
        condition(&alice.next().unwrap()),
        StanzaErrorCondition::InternalServerError
    );
    assert_eq!(stage.0.load(Ordering::SeqCst), 1);
}

/// Queues records in the order asked and makes each durable only when the test says so.
#[derive(Default)]
struct Gated {
    queued: std::sync::Mutex<Vec<String>>,
    gates: std::sync::Mutex<Vec<tokio::sync::oneshot::Sender<()>>>,
}
#[async_trait]
impl ComplianceStage for Gated {
    async fn record(&self, _stanza: &mut Stanza, _addressee: Addressee) -> Result<(), ComplianceError> {
        unreachable!("the router queues records")
    }
    async fn queue(&self, stanza: &mut Stanza, _addressee: Addressee) -> Result<Recording, ComplianceError> {
        let (open, gate) = tokio::sync::oneshot::channel();
        self.queued
            .lock()
            .unwrap()
            .push(stanza.id().unwrap_or_default().to_owned());
        self.gates.lock().unwrap().push(open);
        Ok(Box::pin(async move {
            gate.await.map_err(|_| ComplianceError("gate dropped".into()))?;
            Ok(vec![Element::bare("recorded", "urn:example:test")])
        }))
    }
}

#[tokio::test]
async fn accept_queues_the_record_and_delivers_only_once_it_is_durable() {
    let stage = Arc::new(Gated::default());
    let router = router_recording_with(stage.clone(), &["alice", "bob"]);
    let alice = bind(&router, "alice@example.org/a", 8).await;
    let mut bob = bind(&router, "bob@example.org/b", 8).await;
    available(&router, &bob, 0).await;
    let mut delivering = Vec::new();
    for id in ["m1", "m2"] {
        let mut stanza = message(&alice.jid, "bob@example.org", "chat");
        stanza.set_id(Some(id));
        delivering.push(
            router
                .accept(stanza)
                .await
                .expect("a message has a delivery left"),
        );
    }
    assert_eq!(
        *stage.queued.lock().unwrap(),
        ["m1", "m2"],
        "both queued, in order"
    );
    assert!(
        bob.next().is_none(),
        "nothing delivered before its record is durable"
    );
    let gates = std::mem::take(&mut *stage.gates.lock().unwrap());
    for (gate, delivering) in gates.into_iter().zip(delivering) {
        gate.send(()).unwrap();
        delivering.await;
    }
    for id in ["m1", "m2"] {
        let got = bob.next().expect("delivered once durable");
        assert_eq!(got.id(), Some(id));
        assert!(
            got.element().get_child("recorded", "urn:example:test").is_some(),
            "the stage's addition"
        );
    }
    let presence = router
        .accept(Stanza::new(StanzaKind::Presence).with_from(alice.jid.clone()))
        .await;
    assert!(presence.is_none(), "anything but a message is done when accepted");
}

struct Order(Arc<std::sync::Mutex<Vec<i32>>>, i32, bool);
#[async_trait]
impl HookHandler for Order {
    async fn handle(&self, _router: &Router, _stanza: &mut Stanza) -> HookOutcome {
        self.0.lock().unwrap().push(self.1);
        if self.2 {
            HookOutcome::Reject(StanzaError::new(StanzaErrorCondition::PolicyViolation))
        } else {
            HookOutcome::Continue
        }
    }
}
struct Hooks(Arc<std::sync::Mutex<Vec<i32>>>);
impl Module for Hooks {
    fn name(&self) -> &'static str {
        "hooks"
    }
    fn register(self: Arc<Self>, registry: &mut Registry) {
        registry.hook(Hook::ClientStanza, 20, Arc::new(Order(self.0.clone(), 20, true)));
        registry.hook(Hook::ClientStanza, 10, Arc::new(Order(self.0.clone(), 10, false)));
        registry.hook(Hook::ClientStanza, 30, Arc::new(Order(self.0.clone(), 30, false)));
    }
}

#[tokio::test]
async fn hooks_run_by_priority_and_a_rejection_stops_the_stanza() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let router = router_with(vec![Arc::new(Hooks(seen.clone()))]);
    let mut alice = bind(&router, "alice@example.org/a", 8).await;
    let mut bob = bind(&router, "bob@example.org/b", 8).await;
    router
        .submit(message(&alice.jid, "bob@example.org/b", "chat"))
        .await;
    assert_eq!(*seen.lock().unwrap(), vec![10, 20]);
    assert!(bob.next().is_none());
    assert_eq!(
        condition(&alice.next().unwrap()),
        StanzaErrorCondition::PolicyViolation
    );
}

#[tokio::test]
async fn initial_presence_fires_when_a_resource_becomes_reachable() {
    struct Count(Arc<AtomicUsize>, Arc<AtomicUsize>);
    #[async_trait]
    impl EventHandler for Count {
        async fn on_event(&self, _router: &Router, event: &Event) {
            match event {
                Event::InitialPresence(_) => self.0.fetch_add(1, Ordering::SeqCst),
                Event::Available(_) => self.1.fetch_add(1, Ordering::SeqCst),
                _ => 0,
            };
        }
    }
    struct Events(Arc<AtomicUsize>, Arc<AtomicUsize>);
    impl Module for Events {
        fn name(&self) -> &'static str {
            "events"
        }
        fn register(self: Arc<Self>, registry: &mut Registry) {
            registry.on_event(Arc::new(Count(self.0.clone(), self.1.clone())));
        }
    }
    let count = Arc::new(AtomicUsize::new(0));
    let availables = Arc::new(AtomicUsize::new(0));
    let router = router_with(vec![Arc::new(Events(count.clone(), availables.clone()))]);
    let alice = bind(&router, "alice@example.org/a", 8).await;
    available(&router, &alice, -1).await;
    assert_eq!(
        count.load(Ordering::SeqCst),
        0,
        "negative priority is not reachable"
    );
    assert_eq!(
        availables.load(Ordering::SeqCst),
        1,
        "but it is the initial presence, whatever the priority"
    );
    available(&router, &alice, 1).await;
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert_eq!(
        availables.load(Ordering::SeqCst),
        1,
        "still the same availability"
    );
    available(&router, &alice, 2).await;
    assert_eq!(count.load(Ordering::SeqCst), 1, "a later presence is not initial");
}

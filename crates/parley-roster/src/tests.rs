//! The module against a real router, a memory store and fake sessions.

use crate::{RosterModule, RosterOptions, SharedContact, SharedGroups};
use async_trait::async_trait;
use parley_proto::{BareJid, Element, FullJid, Jid, Stanza, StanzaErrorCondition, StanzaKind, ns};
use parley_router::{Accounts, Outbound, Router, SessionControl, SessionId};
use parley_storage::MemoryStore;
use std::sync::Arc;
use tokio::sync::mpsc;

const DOMAIN: &str = "example.org";

/// Accounts alice, bob, carol and dave exist; nobody else.
struct Known;

#[async_trait]
impl Accounts for Known {
    async fn exists(&self, localpart: &str) -> bool {
        matches!(localpart, "alice" | "bob" | "carol" | "dave")
    }
}

fn bare(s: &str) -> BareJid {
    BareJid::new(&format!("{s}@{DOMAIN}")).unwrap()
}

/// `full("alice/phone")` is alice@example.org/phone.
fn full(s: &str) -> FullJid {
    let (node, resource) = s.split_once('/').unwrap();
    FullJid::new(&format!("{node}@{DOMAIN}/{resource}")).unwrap()
}

fn router_with(module: RosterModule) -> Router {
    Router::builder(BareJid::new(DOMAIN).unwrap(), Arc::new(Known))
        .module(Arc::new(module))
        .build()
        .unwrap()
}

fn router(max_items: usize) -> Router {
    router_with(RosterModule::new(
        Arc::new(MemoryStore::new()),
        RosterOptions { max_items },
    ))
}

struct Client {
    jid: FullJid,
    id: SessionId,
    rx: mpsc::Receiver<Outbound>,
}

impl Client {
    /// Everything queued for this session so far.
    fn take(&mut self) -> Vec<Stanza> {
        let mut out = Vec::new();
        while let Ok(Outbound::Stanza(stanza)) = self.rx.try_recv() {
            out.push(*stanza);
        }
        out
    }
}

/// Binds a resource (`alice/phone`), nothing more.
async fn bind(router: &Router, who: &str) -> Client {
    let (tx, rx) = mpsc::channel(64);
    let jid = full(who);
    let id = router
        .bind(jid.clone(), tx, Arc::new(SessionControl::default()))
        .await
        .unwrap();
    Client { jid, id, rx }
}

/// Binds, fetches the roster (becoming interested) and sends initial presence.
async fn online(router: &Router, who: &str) -> Client {
    let mut client = bind(router, who).await;
    roster_get(router, &client, None).await;
    router
        .submit(Stanza::new(StanzaKind::Presence).with_from(client.jid.clone()))
        .await;
    client.take();
    client
}

async fn roster_get(router: &Router, client: &Client, ver: Option<&str>) {
    let mut query = Element::bare("query", ns::ROSTER);
    if let Some(ver) = ver {
        query.set_attr(
            minidom::rxml::Namespace::NONE,
            parley_proto::stanza::attr_name("ver"),
            ver,
        );
    }
    let iq = Stanza::new(StanzaKind::Iq)
        .with_type("get")
        .with_id("get1")
        .with_from(client.jid.clone());
    router.submit(iq.with_child(query)).await;
}

async fn roster_set(router: &Router, from: &FullJid, to: Option<&str>, items_xml: &str) {
    let query: Element = format!("<query xmlns='jabber:iq:roster'>{items_xml}</query>")
        .parse()
        .unwrap();
    let mut iq = Stanza::new(StanzaKind::Iq)
        .with_type("set")
        .with_id("set1")
        .with_from(from.clone());
    if let Some(to) = to {
        iq.set_to(Some(Jid::new(to).unwrap()));
    }
    router.submit(iq.with_child(query)).await;
}

async fn send_presence(router: &Router, from: &FullJid, to: Option<BareJid>, stanza_type: Option<&str>) {
    let mut stanza = Stanza::new(StanzaKind::Presence).with_from(from.clone());
    stanza.set_to(to.map(Jid::from));
    stanza.set_type(stanza_type);
    router.submit(stanza).await;
}

/// The single item of a roster push or result payload.
fn pushed_items(stanzas: &[Stanza]) -> Vec<(String, String, Option<String>)> {
    stanzas
        .iter()
        .filter(|s| s.kind() == StanzaKind::Iq && s.stanza_type() == Some("set"))
        .filter_map(|s| s.iq_payload())
        .flat_map(|query| query.children())
        .map(|item| {
            (
                item.attr("jid").unwrap_or_default().to_owned(),
                item.attr("subscription").unwrap_or("none").to_owned(),
                item.attr("ask").map(str::to_owned),
            )
        })
        .collect()
}

fn presences<'a>(stanzas: &'a [Stanza], stanza_type: Option<&str>) -> Vec<&'a Stanza> {
    stanzas
        .iter()
        .filter(|s| s.kind() == StanzaKind::Presence && s.stanza_type() == stanza_type)
        .collect()
}

fn from_of(stanza: &Stanza) -> String {
    stanza.from().map(|j| j.to_string()).unwrap_or_default()
}

fn result_or_error(stanzas: &[Stanza]) -> &Stanza {
    stanzas
        .iter()
        .find(|s| s.kind() == StanzaKind::Iq && matches!(s.stanza_type(), Some("result" | "error")))
        .expect("an IQ reply")
}

fn error_condition(stanza: &Stanza) -> StanzaErrorCondition {
    stanza.error().expect("an error reply").condition
}

/// The subscription of `contact` in `owner`'s roster, read with a roster get from a new resource.
async fn subscription_in(router: &Router, owner: &str, contact: &str) -> Option<(String, Option<String>)> {
    let mut probe = bind(router, &format!("{owner}/inspect")).await;
    roster_get(router, &probe, None).await;
    let reply = probe
        .take()
        .into_iter()
        .find(|s| s.stanza_type() == Some("result"))
        .unwrap();
    router.unbind(&probe.jid, probe.id).await;
    let query = reply.iq_payload()?.clone();
    let contact = bare(contact).to_string();
    query
        .children()
        .find(|item| item.attr("jid") == Some(contact.as_str()))
        .map(|item| {
            (
                item.attr("subscription").unwrap_or("none").to_owned(),
                item.attr("ask").map(str::to_owned),
            )
        })
}

#[tokio::test]
async fn get_set_remove_push_to_every_interested_resource() {
    let router = router(100);
    let mut phone = online(&router, "alice/phone").await;
    let mut laptop = online(&router, "alice/laptop").await;
    let mut tablet = bind(&router, "alice/tablet").await; // never asked for the roster

    roster_set(
        &router,
        &phone.jid,
        None,
        "<item jid='bob@example.org' name='Bob'><group>Work</group><group>Work</group></item>",
    )
    .await;
    let at_phone = phone.take();
    assert_eq!(result_or_error(&at_phone).stanza_type(), Some("result"));
    let push = at_phone.iter().find(|s| s.stanza_type() == Some("set")).unwrap();
    let query = push.iq_payload().unwrap();
    assert_eq!(query.attr("ver"), Some("1"));
    let item = query.children().next().unwrap();
    assert_eq!(item.attr("name"), Some("Bob"));
    assert_eq!(item.children().count(), 1, "duplicate groups are collapsed");
    assert_eq!(push.from().unwrap().to_string(), "alice@example.org");
    assert_eq!(
        pushed_items(&laptop.take()),
        [("bob@example.org".into(), "none".into(), None)]
    );
    assert!(tablet.take().is_empty(), "only interested resources get pushes");

    roster_get(&router, &laptop, None).await;
    let reply = laptop.take();
    let query = result_or_error(&reply).iq_payload().unwrap().clone();
    assert_eq!(query.attr("ver"), Some("1"));
    assert_eq!(query.children().count(), 1);

    roster_set(
        &router,
        &laptop.jid,
        None,
        "<item jid='bob@example.org' subscription='remove'/>",
    )
    .await;
    assert_eq!(result_or_error(&laptop.take()).stanza_type(), Some("result"));
    assert_eq!(
        pushed_items(&phone.take()),
        [("bob@example.org".into(), "remove".into(), None)]
    );
    assert!(subscription_in(&router, "alice", "bob").await.is_none());

    roster_set(
        &router,
        &laptop.jid,
        None,
        "<item jid='bob@example.org' subscription='remove'/>",
    )
    .await;
    assert_eq!(
        error_condition(result_or_error(&laptop.take())),
        StanzaErrorCondition::ItemNotFound
    );
}

#[tokio::test]
async fn unchanged_version_gets_an_empty_result() {
    let router = router(100);
    let mut phone = online(&router, "alice/phone").await;
    roster_set(&router, &phone.jid, None, "<item jid='bob@example.org'/>").await;
    phone.take();

    roster_get(&router, &phone, Some("1")).await;
    let reply = phone.take();
    let reply = result_or_error(&reply);
    assert_eq!(reply.stanza_type(), Some("result"));
    assert!(reply.iq_payload().is_none(), "current version: no query element");

    roster_get(&router, &phone, Some("0")).await;
    let reply = phone.take();
    let query = result_or_error(&reply).iq_payload().unwrap().clone();
    assert_eq!(query.attr("ver"), Some("1"));
    assert_eq!(query.children().count(), 1);

    let features = router.stream_features();
    assert!(features.iter().any(|f| f.is("ver", ns::ROSTER_VER_FEATURE)));
    assert!(features.iter().any(|f| f.is("sub", ns::PRE_APPROVAL_FEATURE)));
}

#[tokio::test]
async fn roster_sets_are_validated() {
    let router = router(2);
    let mut phone = online(&router, "alice/phone").await;
    let mut bob = online(&router, "bob/phone").await;
    let (alice_jid, bob_jid) = (phone.jid.clone(), bob.jid.clone());
    let cases: [(&FullJid, Option<&str>, &str, StanzaErrorCondition); 5] = [
        (
            &alice_jid,
            None,
            "<item jid='a@example.org'/><item jid='b@example.org'/>",
            StanzaErrorCondition::BadRequest,
        ),
        (&alice_jid, None, "", StanzaErrorCondition::BadRequest),
        (
            &alice_jid,
            None,
            "<item jid='a@example.org'><group/></item>",
            StanzaErrorCondition::NotAcceptable,
        ),
        (
            &alice_jid,
            None,
            "<item name='no jid'/>",
            StanzaErrorCondition::BadRequest,
        ),
        (
            &bob_jid,
            Some("alice@example.org"),
            "<item jid='x@example.org'/>",
            StanzaErrorCondition::Forbidden,
        ),
    ];
    for (from, to, items, expected) in cases {
        roster_set(&router, from, to, items).await;
        let replies = if *from == alice_jid {
            phone.take()
        } else {
            bob.take()
        };
        assert_eq!(error_condition(result_or_error(&replies)), expected, "{items}");
    }
    let long_name = "n".repeat(crate::MAX_NAME_LEN + 1);
    roster_set(
        &router,
        &phone.jid,
        None,
        &format!("<item jid='a@example.org' name='{long_name}'/>"),
    )
    .await;
    assert_eq!(
        error_condition(result_or_error(&phone.take())),
        StanzaErrorCondition::NotAcceptable
    );

    // The account's own JID is fine; a client-set subscription is ignored.
    roster_set(
        &router,
        &phone.jid,
        None,
        "<item jid='alice@example.org' subscription='both'/>",
    )
    .await;
    let replies = phone.take();
    assert_eq!(result_or_error(&replies).stanza_type(), Some("result"));
    assert_eq!(
        pushed_items(&replies),
        [("alice@example.org".into(), "none".into(), None)]
    );

    roster_set(&router, &phone.jid, None, "<item jid='b@example.org'/>").await;
    assert_eq!(result_or_error(&phone.take()).stanza_type(), Some("result"));
    roster_set(&router, &phone.jid, None, "<item jid='c@example.org'/>").await;
    assert_eq!(
        error_condition(result_or_error(&phone.take())),
        StanzaErrorCondition::NotAllowed
    );
    // Changing an existing item is still possible when the roster is full.
    roster_set(&router, &phone.jid, None, "<item jid='b@example.org' name='B'/>").await;
    assert_eq!(result_or_error(&phone.take()).stanza_type(), Some("result"));
}

/// alice and bob online; returns after the whole handshake, checking every step.
#[tokio::test]
async fn two_users_reach_both_with_the_right_pushes_and_presences() {
    let router = router(100);
    let mut alice = online(&router, "alice/phone").await;
    let mut bob = online(&router, "bob/phone").await;

    // 1. alice asks.
    send_presence(&router, &alice.jid, Some(bare("bob")), Some("subscribe")).await;
    assert_eq!(
        pushed_items(&alice.take()),
        [("bob@example.org".into(), "none".into(), Some("subscribe".into()))]
    );
    let at_bob = bob.take();
    let request = presences(&at_bob, Some("subscribe"));
    assert_eq!(request.len(), 1);
    assert_eq!(
        from_of(request[0]),
        "alice@example.org",
        "stamped with the bare JID"
    );
    assert!(
        pushed_items(&at_bob).is_empty(),
        "a request alone creates no roster item"
    );

    // 2. bob approves: both get pushes, alice gets `subscribed` and bob's presence.
    send_presence(&router, &bob.jid, Some(bare("alice")), Some("subscribed")).await;
    assert_eq!(
        pushed_items(&bob.take()),
        [("alice@example.org".into(), "from".into(), None)]
    );
    let at_alice = alice.take();
    assert_eq!(
        pushed_items(&at_alice),
        [("bob@example.org".into(), "to".into(), None)]
    );
    assert_eq!(presences(&at_alice, Some("subscribed")).len(), 1);
    let available = presences(&at_alice, None);
    assert_eq!(available.len(), 1);
    assert_eq!(from_of(available[0]), "bob@example.org/phone");

    // 3. bob asks back: alice's item does not visibly change.
    send_presence(&router, &bob.jid, Some(bare("alice")), Some("subscribe")).await;
    assert_eq!(
        pushed_items(&bob.take()),
        [(
            "alice@example.org".into(),
            "from".into(),
            Some("subscribe".into())
        )]
    );
    let at_alice = alice.take();
    assert!(pushed_items(&at_alice).is_empty());
    assert_eq!(presences(&at_alice, Some("subscribe")).len(), 1);

    // 4. alice approves.
    send_presence(&router, &alice.jid, Some(bare("bob")), Some("subscribed")).await;
    assert_eq!(
        pushed_items(&alice.take()),
        [("bob@example.org".into(), "both".into(), None)]
    );
    let at_bob = bob.take();
    assert_eq!(
        pushed_items(&at_bob),
        [("alice@example.org".into(), "both".into(), None)]
    );
    assert_eq!(presences(&at_bob, Some("subscribed")).len(), 1);
    assert_eq!(presences(&at_bob, None).len(), 1);

    assert_eq!(
        subscription_in(&router, "alice", "bob").await,
        Some(("both".into(), None))
    );
    assert_eq!(
        subscription_in(&router, "bob", "alice").await,
        Some(("both".into(), None))
    );

    // A repeated request is answered by the server (A.3.1): its `subscribed` is a no-op for
    // alice (A.3.3), but she gets bob's presence again; bob is not asked again.
    send_presence(&router, &alice.jid, Some(bare("bob")), Some("subscribe")).await;
    let at_alice = alice.take();
    assert!(presences(&at_alice, Some("subscribed")).is_empty());
    assert_eq!(presences(&at_alice, None).len(), 1);
    assert!(pushed_items(&at_alice).is_empty());
    assert!(bob.take().is_empty());
}

async fn handshake(router: &Router, subscriber: &str, contact: &str) {
    let mut s = bind(router, &format!("{subscriber}/hs")).await;
    let mut c = bind(router, &format!("{contact}/hs")).await;
    send_presence(router, &s.jid, Some(bare(contact)), Some("subscribe")).await;
    send_presence(router, &c.jid, Some(bare(subscriber)), Some("subscribed")).await;
    router.unbind(&s.jid, s.id).await;
    router.unbind(&c.jid, c.id).await;
    s.take();
    c.take();
}

#[tokio::test]
async fn a_request_to_an_offline_contact_is_redelivered_at_initial_presence() {
    let router = router(100);
    let alice = online(&router, "alice/phone").await;
    send_presence(&router, &alice.jid, Some(bare("bob")), Some("subscribe")).await;

    // Bound but not yet available: nothing yet.
    let mut bob = bind(&router, "bob/phone").await;
    assert!(bob.take().is_empty());
    send_presence(&router, &bob.jid, None, None).await;
    let at_bob = bob.take();
    let request = presences(&at_bob, Some("subscribe"));
    assert_eq!(request.len(), 1);
    assert_eq!(from_of(request[0]), "alice@example.org");

    // Still unanswered: the next login sees it again.
    let mut laptop = bind(&router, "bob/laptop").await;
    send_presence(&router, &laptop.jid, None, None).await;
    assert_eq!(presences(&laptop.take(), Some("subscribe")).len(), 1);

    // Answered: no more redelivery.
    send_presence(&router, &bob.jid, Some(bare("alice")), Some("unsubscribed")).await;
    assert_eq!(
        subscription_in(&router, "alice", "bob").await,
        Some(("none".into(), None))
    );
    let mut tablet = bind(&router, "bob/tablet").await;
    send_presence(&router, &tablet.jid, None, None).await;
    assert!(presences(&tablet.take(), Some("subscribe")).is_empty());
}

#[tokio::test]
async fn unsubscribe_and_unsubscribed_downgrade_both_sides() {
    let router = router(100);
    handshake(&router, "alice", "bob").await;
    handshake(&router, "bob", "alice").await;
    let mut alice = online(&router, "alice/phone").await;
    let mut bob = online(&router, "bob/phone").await;

    // alice stops receiving bob's presence: bob's resources go offline for her.
    send_presence(&router, &alice.jid, Some(bare("bob")), Some("unsubscribe")).await;
    let at_alice = alice.take();
    assert_eq!(
        pushed_items(&at_alice),
        [("bob@example.org".into(), "from".into(), None)]
    );
    let unavailable = presences(&at_alice, Some("unavailable"));
    assert_eq!(unavailable.len(), 1);
    assert_eq!(from_of(unavailable[0]), "bob@example.org/phone");
    let at_bob = bob.take();
    assert_eq!(
        pushed_items(&at_bob),
        [("alice@example.org".into(), "to".into(), None)]
    );
    assert_eq!(presences(&at_bob, Some("unsubscribe")).len(), 1);

    // alice cancels bob's subscription too.
    send_presence(&router, &alice.jid, Some(bare("bob")), Some("unsubscribed")).await;
    assert_eq!(
        pushed_items(&alice.take()),
        [("bob@example.org".into(), "none".into(), None)]
    );
    let at_bob = bob.take();
    assert_eq!(
        pushed_items(&at_bob),
        [("alice@example.org".into(), "none".into(), None)]
    );
    assert_eq!(presences(&at_bob, Some("unavailable")).len(), 1);
    assert_eq!(presences(&at_bob, Some("unsubscribed")).len(), 1);

    // No-ops are dropped: nothing is routed or pushed.
    send_presence(&router, &alice.jid, Some(bare("bob")), Some("unsubscribed")).await;
    assert!(alice.take().is_empty());
    assert!(bob.take().is_empty());
}

#[tokio::test]
async fn removing_a_contact_cancels_both_subscriptions() {
    let router = router(100);
    handshake(&router, "alice", "bob").await;
    handshake(&router, "bob", "alice").await;
    let mut alice = online(&router, "alice/phone").await;
    let mut bob = online(&router, "bob/phone").await;
    roster_set(
        &router,
        &alice.jid,
        None,
        "<item jid='bob@example.org' subscription='remove'/>",
    )
    .await;
    assert_eq!(
        pushed_items(&alice.take()),
        [("bob@example.org".into(), "remove".into(), None)]
    );
    let at_bob = bob.take();
    assert_eq!(presences(&at_bob, Some("unsubscribe")).len(), 1);
    assert_eq!(presences(&at_bob, Some("unsubscribed")).len(), 1);
    assert_eq!(presences(&at_bob, Some("unavailable")).len(), 1);
    assert_eq!(pushed_items(&at_bob).last().unwrap().1, "none");
    assert_eq!(
        subscription_in(&router, "bob", "alice").await,
        Some(("none".into(), None))
    );
}

#[tokio::test]
async fn probes_are_answered_only_to_subscribers() {
    let router = router(100);
    handshake(&router, "alice", "bob").await; // alice sees bob
    let mut bob = bind(&router, "bob/phone").await;
    let status: Element = "<presence xmlns='jabber:client'><status>at work</status></presence>"
        .parse()
        .unwrap();
    router
        .submit(Stanza::from_element(status).unwrap().with_from(bob.jid.clone()))
        .await;
    bob.take();

    // alice's initial presence probes bob and gets his current presence, status included.
    let mut alice = bind(&router, "alice/phone").await;
    send_presence(&router, &alice.jid, None, None).await;
    let at_alice = alice.take();
    let from_bob: Vec<_> = presences(&at_alice, None)
        .into_iter()
        .filter(|p| from_of(p) == "bob@example.org/phone")
        .collect();
    assert_eq!(from_bob.len(), 1);
    assert_eq!(
        from_bob[0]
            .element()
            .get_child("status", ns::CLIENT)
            .unwrap()
            .text(),
        "at work"
    );

    // carol is not subscribed: her probe gets `unsubscribed`, never the presence.
    let mut carol = online(&router, "carol/phone").await;
    send_presence(&router, &carol.jid, Some(bare("bob")), Some("probe")).await;
    // (The `unsubscribed` answer reaches carol's server, where A.3.4 drops it for her state.)
    assert!(carol.take().is_empty());
    // bob never sees probes.
    assert!(presences(&bob.take(), Some("probe")).is_empty());
}

#[tokio::test]
async fn broadcast_reaches_only_from_and_both_contacts() {
    let router = router(100);
    handshake(&router, "bob", "alice").await; // bob: to, alice: from
    handshake(&router, "alice", "carol").await; // alice: to, carol: from
    let mut bob = online(&router, "bob/phone").await;
    let mut carol = online(&router, "carol/phone").await;
    let mut dave = online(&router, "dave/phone").await;
    let mut laptop = online(&router, "alice/laptop").await;
    let mut alice = bind(&router, "alice/phone").await;
    bob.take();
    carol.take();

    send_presence(&router, &alice.jid, None, None).await;
    let at_bob = bob.take();
    assert_eq!(presences(&at_bob, None).len(), 1);
    assert_eq!(from_of(presences(&at_bob, None)[0]), "alice@example.org/phone");
    assert!(
        presences(&carol.take(), None).is_empty(),
        "carol has no subscription to alice"
    );
    assert!(dave.take().is_empty());
    // The user's other resources see it. (They also see carol's answer to the probe, which
    // comes from alice's bare JID per RFC 6121 §4.3.1, so it reaches every resource.)
    let at_laptop = laptop.take();
    let own: Vec<_> = presences(&at_laptop, None)
        .into_iter()
        .filter(|p| from_of(p).starts_with("alice"))
        .collect();
    assert_eq!(own.len(), 1);
    // The initial presence probed carol (alice has `to`), whose presence comes back.
    let at_alice = alice.take();
    assert!(
        presences(&at_alice, None)
            .iter()
            .any(|p| from_of(p) == "carol@example.org/phone")
    );
    assert!(
        !presences(&at_alice, None)
            .iter()
            .any(|p| from_of(p) == "bob@example.org/phone")
    );
}

#[tokio::test]
async fn directed_presence_is_withdrawn_when_the_resource_goes_away() {
    let router = router(100);
    handshake(&router, "bob", "alice").await; // bob subscribes to alice
    let mut bob = online(&router, "bob/phone").await;
    let mut dave = online(&router, "dave/phone").await;
    let alice = online(&router, "alice/phone").await;
    bob.take();

    let dave_full = Jid::from(dave.jid.clone());
    let directed = Stanza::new(StanzaKind::Presence)
        .with_from(alice.jid.clone())
        .with_to(dave_full.clone());
    router.submit(directed).await;
    let at_dave = dave.take();
    assert_eq!(
        presences(&at_dave, None).len(),
        1,
        "directed presence is delivered to a non-contact"
    );

    // Disconnect: the router runs a synthetic unavailable through PresenceOut.
    router.unbind(&alice.jid, alice.id).await;
    let at_dave = dave.take();
    assert_eq!(presences(&at_dave, Some("unavailable")).len(), 1);
    assert_eq!(
        from_of(presences(&at_dave, Some("unavailable"))[0]),
        "alice@example.org/phone"
    );
    assert_eq!(
        presences(&bob.take(), Some("unavailable")).len(),
        1,
        "subscribers hear it too"
    );

    // A directed unavailable removes the target: a later disconnect does not repeat it.
    let alice = online(&router, "alice/phone").await;
    router
        .submit(
            Stanza::new(StanzaKind::Presence)
                .with_from(alice.jid.clone())
                .with_to(dave_full.clone()),
        )
        .await;
    router
        .submit(
            Stanza::new(StanzaKind::Presence)
                .with_from(alice.jid.clone())
                .with_to(dave_full)
                .with_type("unavailable"),
        )
        .await;
    dave.take();
    router.unbind(&alice.jid, alice.id).await;
    assert!(dave.take().is_empty());

    // A resource that never sent initial presence still withdraws its directed presence.
    let shy = bind(&router, "alice/shy").await;
    let to_dave = Jid::from(dave.jid.clone());
    router
        .submit(
            Stanza::new(StanzaKind::Presence)
                .with_from(shy.jid.clone())
                .with_to(to_dave),
        )
        .await;
    assert_eq!(presences(&dave.take(), None).len(), 1);
    router.unbind(&shy.jid, shy.id).await;
    let at_dave = dave.take();
    assert_eq!(presences(&at_dave, Some("unavailable")).len(), 1);
    assert_eq!(
        from_of(presences(&at_dave, Some("unavailable"))[0]),
        "alice@example.org/shy"
    );
}

#[tokio::test]
async fn pre_approval_answers_the_later_request() {
    let router = router(100);
    let mut alice = online(&router, "alice/phone").await;
    let mut bob = online(&router, "bob/phone").await;

    send_presence(&router, &bob.jid, Some(bare("alice")), Some("subscribed")).await;
    let at_bob = bob.take();
    let push = at_bob.iter().find(|s| s.stanza_type() == Some("set")).unwrap();
    assert_eq!(
        push.iq_payload()
            .unwrap()
            .children()
            .next()
            .unwrap()
            .attr("approved"),
        Some("true")
    );
    assert!(alice.take().is_empty(), "a pre-approval is not routed");

    send_presence(&router, &alice.jid, Some(bare("bob")), Some("subscribe")).await;
    let at_alice = alice.take();
    assert_eq!(presences(&at_alice, Some("subscribed")).len(), 1);
    assert_eq!(pushed_items(&at_alice).last().unwrap().1, "to");
    let at_bob = bob.take();
    assert!(
        presences(&at_bob, Some("subscribe")).is_empty(),
        "the server answered for bob"
    );
    assert_eq!(
        pushed_items(&at_bob),
        [("alice@example.org".into(), "from".into(), None)]
    );
}

#[tokio::test]
async fn subscribing_to_a_missing_account_is_refused() {
    let router = router(100);
    let mut alice = online(&router, "alice/phone").await;
    send_presence(&router, &alice.jid, Some(bare("nobody")), Some("subscribe")).await;
    let at_alice = alice.take();
    let items = pushed_items(&at_alice);
    assert_eq!(items.first().unwrap().2.as_deref(), Some("subscribe"));
    assert_eq!(
        items.last().unwrap(),
        &("nobody@example.org".into(), "none".into(), None)
    );
    assert_eq!(presences(&at_alice, Some("unsubscribed")).len(), 1);

    // Presence types a client may not send are refused.
    send_presence(&router, &alice.jid, Some(bare("bob")), Some("bogus")).await;
    let reply = alice.take();
    assert_eq!(reply.len(), 1);
    assert_eq!(error_condition(&reply[0]), StanzaErrorCondition::BadRequest);
}

struct Colleagues;

#[async_trait]
impl SharedGroups for Colleagues {
    async fn contacts(&self, account: &BareJid) -> Vec<SharedContact> {
        ["alice", "bob"]
            .iter()
            .map(|name| bare(name))
            .filter(|jid| jid != account)
            .map(|jid| SharedContact {
                jid,
                name: None,
                groups: vec!["Staff".into()],
            })
            .collect()
    }
}

#[tokio::test]
async fn shared_contacts_show_as_both_and_see_presence() {
    let store = Arc::new(MemoryStore::new());
    let module = RosterModule::with_shared_groups(store, RosterOptions::default(), Arc::new(Colleagues));
    let router = router_with(module);
    let mut bob = online(&router, "bob/phone").await;
    assert_eq!(
        subscription_in(&router, "alice", "bob").await,
        Some(("both".into(), None))
    );
    let mut alice = online(&router, "alice/phone").await;
    // alice's initial presence reached bob, and her probe brought bob's presence back.
    assert!(
        presences(&bob.take(), None)
            .iter()
            .any(|p| from_of(p) == "alice@example.org/phone")
    );
    let mut alice_laptop = bind(&router, "alice/laptop").await;
    send_presence(&router, &alice_laptop.jid, None, None).await;
    assert!(
        presences(&alice_laptop.take(), None)
            .iter()
            .any(|p| from_of(p) == "bob@example.org/phone")
    );
    alice.take();
}

/// Shared contacts set by the test, and changes it announces one batch at a time.
struct Scripted {
    contacts: std::sync::Mutex<std::collections::HashMap<BareJid, Vec<SharedContact>>>,
    changes: tokio::sync::Mutex<mpsc::Receiver<Vec<crate::ContactsChange>>>,
}

#[async_trait]
impl SharedGroups for Scripted {
    async fn contacts(&self, account: &BareJid) -> Vec<SharedContact> {
        self.contacts
            .lock()
            .unwrap()
            .get(account)
            .cloned()
            .unwrap_or_default()
    }

    async fn next_change(&self, wanted: crate::AccountFilter<'_>) -> Option<Vec<crate::ContactsChange>> {
        let batch = self.changes.lock().await.recv().await?;
        Some(
            batch
                .into_iter()
                .filter(|change| wanted(&change.account))
                .collect(),
        )
    }
}

fn shared_contact(name: &str, display: &str) -> SharedContact {
    SharedContact {
        jid: bare(name),
        name: Some(display.into()),
        groups: vec!["Team".into()],
    }
}

/// Waits (bounded) until a stanza `wanted` accepts reaches `client`; returns it.
async fn wait_for(client: &mut Client, what: &str, wanted: impl Fn(&Stanza) -> bool) -> Stanza {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, client.rx.recv()).await {
            Ok(Some(Outbound::Stanza(stanza))) if wanted(&stanza) => return *stanza,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => panic!("{}: no {what}", client.jid),
        }
    }
}

fn pushed_item(stanza: &Stanza, contact: &str) -> Option<(String, Option<String>)> {
    let query = stanza.iq_payload()?;
    let roster = xmpp_parsers::roster::Roster::try_from(query.clone()).ok()?;
    let item = roster.items.into_iter().find(|item| item.jid == bare(contact))?;
    let subscription = String::from(Element::from(item.clone()).attr("subscription").unwrap_or("none"));
    Some((subscription, item.name))
}

#[tokio::test]
async fn shared_changes_push_items_and_presence_to_online_members() {
    let (announce, changes) = mpsc::channel(4);
    let shared = Arc::new(Scripted {
        contacts: std::sync::Mutex::new([(bare("alice"), vec![shared_contact("bob", "Bob")])].into()),
        changes: tokio::sync::Mutex::new(changes),
    });
    let store = Arc::new(MemoryStore::new());
    let router = router_with(RosterModule::with_shared_groups(
        store,
        RosterOptions::default(),
        shared.clone(),
    ));
    let mut alice = online(&router, "alice/phone").await;
    let _carol = online(&router, "carol/desk").await;
    // A personal item for carol (no subscription) beside the shared contacts.
    roster_set(
        &router,
        &alice.jid,
        None,
        "<item jid='carol@example.org' name='Caz'/>",
    )
    .await;
    alice.take();

    // carol joins alice's group and bob is renamed.
    let before = vec![shared_contact("bob", "Bob")];
    let after = vec![shared_contact("bob", "Robert"), shared_contact("carol", "Carol")];
    shared
        .contacts
        .lock()
        .unwrap()
        .insert(bare("alice"), after.clone());
    let change = crate::ContactsChange {
        account: bare("alice"),
        before: before.clone(),
        after: after.clone(),
    };
    announce.send(vec![change]).await.unwrap();
    // Pushes come in the order of the new contact list.
    let push = wait_for(&mut alice, "a push of bob", |s| pushed_item(s, "bob").is_some()).await;
    assert_eq!(
        pushed_item(&push, "bob"),
        Some(("both".into(), Some("Robert".into())))
    );
    let push = wait_for(&mut alice, "a push of carol", |s| {
        pushed_item(s, "carol").is_some()
    })
    .await;
    // The personal item wins for the name; the shared group makes it `both`.
    assert_eq!(
        pushed_item(&push, "carol"),
        Some(("both".into(), Some("Caz".into())))
    );
    wait_for(&mut alice, "carol's presence", |s| {
        s.kind() == StanzaKind::Presence
            && s.stanza_type().is_none()
            && from_of(s) == "carol@example.org/desk"
    })
    .await;

    // carol leaves the group: the personal item (subscription none) remains, presence stops.
    shared
        .contacts
        .lock()
        .unwrap()
        .insert(bare("alice"), before.clone());
    let change = crate::ContactsChange {
        account: bare("alice"),
        before: after,
        after: before,
    };
    announce.send(vec![change]).await.unwrap();
    let push = wait_for(&mut alice, "a push of carol", |s| {
        pushed_item(s, "carol").is_some()
    })
    .await;
    assert_eq!(
        pushed_item(&push, "carol"),
        Some(("none".into(), Some("Caz".into())))
    );
    wait_for(&mut alice, "carol's unavailable presence", |s| {
        s.kind() == StanzaKind::Presence
            && s.stanza_type() == Some("unavailable")
            && from_of(s) == "carol@example.org/desk"
    })
    .await;
}

#[tokio::test]
async fn a_contact_leaving_without_a_personal_item_is_removed() {
    let (announce, changes) = mpsc::channel(4);
    let shared = Arc::new(Scripted {
        contacts: std::sync::Mutex::new(std::collections::HashMap::new()),
        changes: tokio::sync::Mutex::new(changes),
    });
    let router = router_with(RosterModule::with_shared_groups(
        Arc::new(MemoryStore::new()),
        RosterOptions::default(),
        shared,
    ));
    let mut alice = online(&router, "alice/phone").await;
    // An offline account's change is not computed (the filter says who is online).
    announce
        .send(vec![
            crate::ContactsChange {
                account: bare("dave"),
                before: Vec::new(),
                after: vec![shared_contact("alice", "Alice")],
            },
            crate::ContactsChange {
                account: bare("alice"),
                before: vec![shared_contact("bob", "Bob")],
                after: Vec::new(),
            },
        ])
        .await
        .unwrap();
    let push = wait_for(&mut alice, "a removal of bob", |s| {
        pushed_item(s, "bob").is_some()
    })
    .await;
    assert_eq!(
        pushed_item(&push, "bob").map(|(sub, _)| sub),
        Some("remove".into())
    );
}

//! Normal paths through tokio-xmpp: what a user of a real client library sees.

pub mod harness;

use harness::{Transport, XmppClient, bare, full, start_server, try_login, xml};
use tokio_xmpp::jid::Jid;
use tokio_xmpp::minidom::Element;
use tokio_xmpp::parsers::delay::Delay;
use tokio_xmpp::parsers::disco::DiscoInfoResult;
use tokio_xmpp::parsers::message::{Message, MessageType};
use tokio_xmpp::parsers::presence::{Presence, Type as PresenceType};
use tokio_xmpp::parsers::roster::{Roster, Subscription};
use tokio_xmpp::parsers::sasl::DefinedCondition as SaslCondition;
use tokio_xmpp::parsers::stanza_error::{DefinedCondition, StanzaError};
use tokio_xmpp::parsers::version::VersionResult;
use tokio_xmpp::{IqRequest, IqResponse};

const ROSTER: &str = "jabber:iq:roster";
const SERVER: &str = "localhost";

fn server_jid() -> Option<Jid> {
    Some(bare(SERVER).into())
}

fn body_of(message: &Message) -> Option<String> {
    message.get_best_body_cloned(vec![]).map(|(_, body)| body)
}

fn chat(to: Jid, body: &str) -> Message {
    Message::chat(Some(to)).with_body(Default::default(), body.to_owned())
}

fn roster_item_set(contact: &str, name: &str) -> IqRequest {
    IqRequest::Set(xml(&format!(
        "<query xmlns='{ROSTER}'><item jid='{contact}' name='{name}'><group>Team</group></item></query>"
    )))
}

fn is_presence(presence: &Presence, kind: PresenceType, from: &Jid) -> bool {
    presence.type_ == kind && presence.from.as_ref() == Some(from)
}

/// A roster push (or result) naming `contact` with `subscription`.
fn roster_names(payload: &Element, contact: &str, subscription: Subscription) -> bool {
    Roster::try_from(payload.clone())
        .map(|roster| {
            roster
                .items
                .iter()
                .any(|item| item.jid.as_str() == contact && item.subscription == subscription)
        })
        .unwrap_or(false)
}

async fn roster_of(client: &mut XmppClient) -> Roster {
    let payload = client
        .iq_ok(None, IqRequest::Get(xml(&format!("<query xmlns='{ROSTER}'/>"))))
        .await
        .expect("a roster result has a query");
    Roster::try_from(payload).expect("a valid roster")
}

/// `user` asks `contact` for a subscription and `contact` approves (RFC 6121 §3.1), then
/// `user` sees `contact`'s available presence (§3.1.5, the contact is online).
async fn subscribe_and_approve(user: &mut XmppClient, contact: &mut XmppClient) {
    let (user_bare, contact_bare) = (Jid::from(user.bare()), Jid::from(contact.bare()));
    user.send(Presence::subscribe().with_to(contact_bare.clone()))
        .await;
    contact
        .expect_presence("a subscription request", |p| {
            is_presence(p, PresenceType::Subscribe, &user_bare)
        })
        .await;
    contact
        .send(Presence::subscribed().with_to(user_bare.clone()))
        .await;
    user.expect_presence("the approval", |p| {
        is_presence(p, PresenceType::Subscribed, &contact_bare)
    })
    .await;
    let contact_full = Jid::from(contact.jid.clone());
    user.expect_presence("the contact's presence", |p| {
        is_presence(p, PresenceType::None, &contact_full)
    })
    .await;
}

/// Alice puts Bob on her roster, and each subscribes to the other; both are online with presence.
async fn become_contacts(alice: &mut XmppClient, bob: &mut XmppClient) {
    alice.send_initial_presence().await;
    bob.send_initial_presence().await;
    let bob_bare = bob.bare().to_string();
    alice.iq_ok(None, roster_item_set(&bob_bare, "Bob")).await;
    subscribe_and_approve(alice, bob).await;
    subscribe_and_approve(bob, alice).await;
}

/// Login can only succeed with SCRAM-SHA-256-PLUS, the one mechanism this server offers; tokio-xmpp
/// names it so only over TLS 1.3 with tls-exporter channel binding (RFC 9266).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_sha_256_plus_contacts_presence_and_chat() {
    let mut server =
        start_server(|config| config.c2s.sasl_mechanisms = vec!["SCRAM-SHA-256-PLUS".into()]).await;
    let offered = try_login(&server, "alice", "alice-secret")
        .await
        .expect("alice authenticates");
    assert_eq!(offered.into_iter().collect::<Vec<_>>(), ["SCRAM-SHA-256-PLUS"]);

    let mut alice = XmppClient::login(&server, "alice", "alice-secret", "laptop").await;
    let mut bob = XmppClient::login(&server, "bob", "bob-secret", "phone").await;
    assert_eq!(alice.jid, full("alice@localhost/laptop"));
    assert_eq!(bob.jid, full("bob@localhost/phone"));

    become_contacts(&mut alice, &mut bob).await;
    let alice_roster = roster_of(&mut alice).await;
    let item = alice_roster
        .items
        .iter()
        .find(|item| item.jid == bare("bob@localhost"))
        .expect("bob listed");
    assert_eq!(item.subscription, Subscription::Both);
    assert_eq!(item.name.as_deref(), Some("Bob"));
    assert_eq!(
        item.groups.iter().map(|g| g.0.as_str()).collect::<Vec<_>>(),
        ["Team"]
    );
    let bob_roster = roster_of(&mut bob).await;
    assert!(
        bob_roster
            .items
            .iter()
            .any(|i| i.jid == bare("alice@localhost") && i.subscription == Subscription::Both),
        "bob's roster: {bob_roster:?}"
    );

    alice.send(chat(bob.bare().into(), "Lunch at noon?")).await;
    let alice_full = Jid::from(alice.jid.clone());
    let message = bob
        .expect_message("alice's chat", |m| m.from.as_ref() == Some(&alice_full))
        .await;
    assert_eq!(body_of(&message).as_deref(), Some("Lunch at noon?"));
    assert_eq!(message.type_, MessageType::Chat);
    assert_eq!(message.to, Some(bob.bare().into()));

    bob.send(chat(alice_full.clone(), "Sure")).await;
    let bob_full = Jid::from(bob.jid.clone());
    let reply = alice
        .expect_message("bob's reply", |m| m.from.as_ref() == Some(&bob_full))
        .await;
    assert_eq!(body_of(&reply).as_deref(), Some("Sure"));

    alice.logout().await;
    bob.logout().await;
    server.stop().await;
}

/// XEP-0160: a chat to an offline contact is stored and delivered on their return with a
/// XEP-0203 delay stamp from the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_messages_arrive_with_a_delay_stamp_on_return() {
    let mut server = start_server(|_| {}).await;
    let mut alice = XmppClient::login(&server, "alice", "alice-secret", "laptop").await;
    let mut bob = XmppClient::login(&server, "bob", "bob-secret", "phone").await;
    become_contacts(&mut alice, &mut bob).await;

    let bob_full = Jid::from(bob.jid.clone());
    bob.logout().await;
    alice
        .expect_presence("bob going offline", |p| {
            is_presence(p, PresenceType::Unavailable, &bob_full)
        })
        .await;

    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    alice
        .send(chat(bare("bob@localhost").into(), "Call me when you are back"))
        .await;
    alice
        .send(chat(bare("bob@localhost").into(), "Second thing"))
        .await;
    // The server answers this ping only after it handled the messages above, so they are stored
    // before bob returns.
    alice
        .iq_ok(server_jid(), IqRequest::Get(xml("<ping xmlns='urn:xmpp:ping'/>")))
        .await;

    let mut bob = XmppClient::login(&server, "bob", "bob-secret", "tablet").await;
    bob.send_initial_presence().await;
    bob.iq_ok(server_jid(), IqRequest::Get(xml("<ping xmlns='urn:xmpp:ping'/>")))
        .await;
    let bob_tablet = Jid::from(bob.jid.clone());
    bob.expect_presence("the echo of bob's own presence", |p| {
        is_presence(p, PresenceType::None, &bob_tablet)
    })
    .await;
    let alice_full = Jid::from(alice.jid.clone());
    for expected in ["Call me when you are back", "Second thing"] {
        let message = bob
            .expect_message(&format!("the offline message {expected:?}"), |m| {
                body_of(m).as_deref() == Some(expected)
            })
            .await;
        assert_eq!(message.from.as_ref(), Some(&alice_full));
        let delay = message
            .payloads
            .iter()
            .find(|p| p.is("delay", "urn:xmpp:delay"))
            .cloned()
            .map(|element| Delay::try_from(element).expect("a valid XEP-0203 delay"))
            .expect("a delay stamp on an offline message");
        assert_eq!(delay.from, server_jid());
        let stamp = delay.stamp.0.timestamp();
        let stamp_secs = u64::try_from(stamp).expect("a stamp after 1970");
        assert!(
            stamp_secs + 1 >= before.as_secs() && stamp_secs <= before.as_secs() + 60,
            "stamp {stamp} is not when the message was sent ({before:?})"
        );
    }
    alice.logout().await;
    bob.logout().await;
    server.stop().await;
}

/// RFC 6121 §2.1.6: a roster change made on one resource is pushed to every resource that
/// asked for the roster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_resource_receives_roster_pushes() {
    let mut server = start_server(|_| {}).await;
    let mut laptop = XmppClient::login(&server, "alice", "alice-secret", "laptop").await;
    let mut phone = XmppClient::login(&server, "alice", "alice-secret", "phone").await;
    assert!(
        roster_of(&mut phone).await.items.is_empty(),
        "a new account's roster is empty"
    );
    roster_of(&mut laptop).await;

    laptop.iq_ok(None, roster_item_set("bob@localhost", "Bob")).await;
    let push = phone
        .expect_iq_set("the roster push", |payload| {
            roster_names(payload, "bob@localhost", Subscription::None)
        })
        .await;
    let pushed = Roster::try_from(push).expect("a valid roster push");
    assert_eq!(
        pushed.items.len(),
        1,
        "a push carries exactly one item: {pushed:?}"
    );
    assert_eq!(pushed.items[0].name.as_deref(), Some("Bob"));
    laptop
        .expect_iq_set("the push to the resource that made the change", |payload| {
            roster_names(payload, "bob@localhost", Subscription::None)
        })
        .await;

    laptop
        .iq_ok(
            None,
            IqRequest::Set(xml(&format!(
                "<query xmlns='{ROSTER}'><item jid='bob@localhost' subscription='remove'/></query>"
            ))),
        )
        .await;
    phone
        .expect_iq_set("the removal push", |payload| {
            roster_names(payload, "bob@localhost", Subscription::Remove)
        })
        .await;
    assert!(roster_of(&mut phone).await.items.is_empty(), "bob was removed");
    laptop.logout().await;
    phone.logout().await;
    server.stop().await;
}

/// XEP-0368: TLS from the first byte on the direct-TLS port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_login_and_chat() {
    let mut server = start_server(|_| {}).await;
    let mut alice =
        XmppClient::login_via(&server, Transport::DirectTls, "alice", "alice-secret", "desk").await;
    let mut bob = XmppClient::login_via(&server, Transport::StartTls, "bob", "bob-secret", "phone").await;
    assert_eq!(alice.jid, full("alice@localhost/desk"));
    // Bob's full JID: a chat to a bare JID of an account without presence may wait offline.
    alice.send(chat(bob.jid.clone().into(), "over direct TLS")).await;
    let message = bob
        .expect_message("the chat", |m| body_of(m).as_deref() == Some("over direct TLS"))
        .await;
    assert_eq!(message.from, Some(alice.jid.clone().into()));
    alice.logout().await;
    bob.logout().await;
    server.stop().await;
}

/// XEP-0030 on the server: the identity and every feature the modules provide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_disco_info_lists_the_features() {
    let mut server = start_server(|_| {}).await;
    let mut alice = XmppClient::login(&server, "alice", "alice-secret", "laptop").await;
    let payload = alice
        .iq_ok(
            server_jid(),
            IqRequest::Get(xml("<query xmlns='http://jabber.org/protocol/disco#info'/>")),
        )
        .await
        .expect("a disco#info result has a query");
    let info = DiscoInfoResult::try_from(payload).expect("a valid disco#info result");
    assert!(
        info.identities
            .iter()
            .any(|i| i.category == "server" && i.type_ == "im"),
        "identities: {:?}",
        info.identities
    );
    let features: Vec<&str> = info.features.iter().map(String::as_str).collect();
    for expected in [
        "http://jabber.org/protocol/disco#info",
        "http://jabber.org/protocol/disco#items",
        "urn:xmpp:ping",
        "jabber:iq:version",
        "vcard-temp",
        "jabber:iq:private",
        "msgoffline",
    ] {
        assert!(
            features.contains(&expected),
            "{expected} missing from {features:?}"
        );
    }
    alice.logout().await;
    server.stop().await;
}

/// XEP-0199: the server answers a ping with an empty result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_answers_ping() {
    let mut server = start_server(|_| {}).await;
    let mut alice = XmppClient::login(&server, "alice", "alice-secret", "laptop").await;
    let answer = alice
        .iq(server_jid(), IqRequest::Get(xml("<ping xmlns='urn:xmpp:ping'/>")))
        .await;
    assert!(
        matches!(answer, IqResponse::Result(None)),
        "ping answer: {answer:?}"
    );
    alice.logout().await;
    server.stop().await;
}

/// XEP-0092: the server's software name and version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_reports_its_version() {
    let mut server = start_server(|_| {}).await;
    let mut alice = XmppClient::login(&server, "alice", "alice-secret", "laptop").await;
    let payload = alice
        .iq_ok(
            server_jid(),
            IqRequest::Get(xml("<query xmlns='jabber:iq:version'/>")),
        )
        .await
        .expect("a version result has a query");
    let version = VersionResult::try_from(payload).expect("a valid version result");
    assert_eq!(version.name, "Parley");
    assert!(!version.version.is_empty(), "a version string");
    alice.logout().await;
    server.stop().await;
}

/// XEP-0054: alice sets her vCard; she and bob read it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vcard_set_then_get() {
    let mut server = start_server(|_| {}).await;
    let mut alice = XmppClient::login(&server, "alice", "alice-secret", "laptop").await;
    let mut bob = XmppClient::login(&server, "bob", "bob-secret", "phone").await;
    alice
        .iq_ok(
            None,
            IqRequest::Set(xml(
                "<vCard xmlns='vcard-temp'><FN>Alice Liddell</FN><NICKNAME>al</NICKNAME></vCard>",
            )),
        )
        .await;

    for reader in [&mut alice, &mut bob] {
        let vcard = reader
            .iq_ok(
                Some(bare("alice@localhost").into()),
                IqRequest::Get(xml("<vCard xmlns='vcard-temp'/>")),
            )
            .await
            .expect("a vCard result has a vCard");
        assert!(vcard.is("vCard", "vcard-temp"), "{vcard:?}");
        assert_eq!(
            vcard.get_child("FN", "vcard-temp").map(Element::text).as_deref(),
            Some("Alice Liddell")
        );
        assert_eq!(
            vcard
                .get_child("NICKNAME", "vcard-temp")
                .map(Element::text)
                .as_deref(),
            Some("al")
        );
    }
    let bobs = bob
        .iq_ok(None, IqRequest::Get(xml("<vCard xmlns='vcard-temp'/>")))
        .await
        .expect("a vCard result has a vCard");
    assert!(
        bobs.get_child("FN", "vcard-temp").is_none(),
        "bob set no vCard: {bobs:?}"
    );
    alice.logout().await;
    bob.logout().await;
    server.stop().await;
}

/// XEP-0049: private XML is stored per account and namespace, and only for its owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_storage_set_then_get() {
    let mut server = start_server(|_| {}).await;
    let mut alice = XmppClient::login(&server, "alice", "alice-secret", "laptop").await;
    alice
        .iq_ok(
            None,
            IqRequest::Set(xml(
                "<query xmlns='jabber:iq:private'><prefs xmlns='urn:example:prefs'><theme>dark</theme></prefs></query>",
            )),
        )
        .await;
    let query = alice
        .iq_ok(
            None,
            IqRequest::Get(xml(
                "<query xmlns='jabber:iq:private'><prefs xmlns='urn:example:prefs'/></query>",
            )),
        )
        .await
        .expect("a private storage result has a query");
    let prefs = query
        .get_child("prefs", "urn:example:prefs")
        .expect("the stored element");
    assert_eq!(
        prefs
            .get_child("theme", "urn:example:prefs")
            .map(Element::text)
            .as_deref(),
        Some("dark")
    );

    let mut bob = XmppClient::login(&server, "bob", "bob-secret", "phone").await;
    let query = bob
        .iq_ok(
            None,
            IqRequest::Get(xml(
                "<query xmlns='jabber:iq:private'><prefs xmlns='urn:example:prefs'/></query>",
            )),
        )
        .await
        .expect("a private storage result has a query");
    let prefs = query
        .get_child("prefs", "urn:example:prefs")
        .expect("an empty element for nothing stored");
    assert!(
        prefs.children().next().is_none(),
        "bob sees none of alice's data: {prefs:?}"
    );
    alice.logout().await;
    bob.logout().await;
    server.stop().await;
}

/// RFC 6120 §6.5: a wrong password is `not-authorized`, seen through tokio-xmpp's own error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_refused() {
    let mut server = start_server(|_| {}).await;
    let error = try_login(&server, "alice", "not-her-password")
        .await
        .expect_err("a wrong password is refused");
    assert!(
        matches!(
            error,
            tokio_xmpp::Error::Auth(tokio_xmpp::error::AuthError::Fail(SaslCondition::NotAuthorized))
        ),
        "unexpected error: {error:?}"
    );
    let error = try_login(&server, "mallory", "anything")
        .await
        .expect_err("an unknown user is refused");
    assert!(
        matches!(
            error,
            tokio_xmpp::Error::Auth(tokio_xmpp::error::AuthError::Fail(SaslCondition::NotAuthorized))
        ),
        "unexpected error: {error:?}"
    );
    try_login(&server, "alice", "alice-secret")
        .await
        .expect("the right password still works");
    server.stop().await;
}

/// RFC 6121 §8.5.1: a message to an account that does not exist bounces with
/// `service-unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_to_an_unknown_user_returns_service_unavailable() {
    let mut server = start_server(|_| {}).await;
    let mut alice = XmppClient::login(&server, "alice", "alice-secret", "laptop").await;
    let nobody: Jid = bare("nobody@localhost").into();
    let mut message = chat(nobody.clone(), "hello?");
    message.id = Some(tokio_xmpp::parsers::message::Id("unknown-1".into()));
    alice.send(message).await;
    let bounce = alice
        .expect_message("the bounce", |m| m.type_ == MessageType::Error)
        .await;
    assert_eq!(bounce.from.as_ref(), Some(&nobody));
    assert_eq!(bounce.id.as_ref().map(|id| id.0.as_str()), Some("unknown-1"));
    let error = bounce
        .payloads
        .iter()
        .find(|p| p.name() == "error")
        .cloned()
        .map(|element| StanzaError::try_from(element).expect("a valid stanza error"))
        .expect("an error element in the bounce");
    assert_eq!(error.defined_condition, DefinedCondition::ServiceUnavailable);
    alice.logout().await;
    server.stop().await;
}

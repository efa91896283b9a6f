//! Routing as the sender sees it (RFC 6120 §8, §10 and RFC 6121 §8.5): where stanzas go, the
//! error that comes back when they can't, and exactly one reply per request.

use super::{QUIET, bound, expect_iq_error, server_with, stanza_condition};
use parley_config::ByteSize;
use parley_testkit::{RawClient, TestServer, last_attr};

/// Makes `client` available and waits until the server has processed it: stanzas of one session
/// are handled in order, so the answer to a later ping means the presence is in effect.
async fn become_available(client: &mut RawClient) {
    client.send("<presence/>").await;
    client
        .send("<iq type='get' id='sync'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    client.expect("id='sync'").await;
    client.drain(QUIET).await;
}

// RFC 6121 §8.5.3.2.1: a chat message to a full JID with no such resource goes to the bare JID,
// that is to the account's available resource; the sender gets no error.
#[tokio::test]
async fn message_to_offline_full_jid_goes_to_available_resource() {
    let server = TestServer::start().await;
    let mut bob = bound(&server, "bob", "phone").await;
    become_available(&mut bob).await;
    let mut alice = bound(&server, "alice", "desk").await;
    alice
        .send("<message to='bob@localhost/laptop' type='chat' id='m1'><body>where are you?</body></message>")
        .await;
    let received = bob.expect("</message>").await;
    assert!(
        received.contains("<body>where are you?</body>"),
        "the body arrives: {received}"
    );
    assert_eq!(
        last_attr(&received, "message", "from").as_deref(),
        Some("alice@localhost/desk")
    );
    alice.expect_silence(QUIET).await;
}

// RFC 6121 §8.5.1: an IQ to the bare JID of an account that does not exist.
#[tokio::test]
async fn iq_to_unknown_account_is_service_unavailable() {
    let server = TestServer::start().await;
    let mut alice = bound(&server, "alice", "desk").await;
    alice
        .send("<iq type='get' id='q1' to='nobody@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await;
    let reply = expect_iq_error(&mut alice, "q1", "service-unavailable").await;
    assert_eq!(
        last_attr(&reply, "iq", "from").as_deref(),
        Some("nobody@localhost"),
        "{reply}"
    );
}

// RFC 6121 §8.5.1: a message to an account that does not exist is bounced the same way.
#[tokio::test]
async fn message_to_unknown_account_is_service_unavailable() {
    let server = TestServer::start().await;
    let mut alice = bound(&server, "alice", "desk").await;
    alice
        .send("<message to='nobody@localhost' type='chat' id='m2'><body>hello?</body></message>")
        .await;
    let reply = alice.expect("</message>").await;
    assert_eq!(
        last_attr(&reply, "message", "type").as_deref(),
        Some("error"),
        "{reply}"
    );
    assert_eq!(
        last_attr(&reply, "message", "id").as_deref(),
        Some("m2"),
        "{reply}"
    );
    assert!(
        reply.contains(&stanza_condition("service-unavailable")),
        "{reply}"
    );
}

// RFC 6121 §8.5.3.1: an IQ to a full JID with no such session.
#[tokio::test]
async fn iq_to_offline_full_jid_is_service_unavailable() {
    let server = TestServer::start().await;
    let mut alice = bound(&server, "alice", "desk").await;
    alice
        .send("<iq type='get' id='q2' to='bob@localhost/nowhere'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    expect_iq_error(&mut alice, "q2", "service-unavailable").await;
}

// RFC 6120 §8.4: an IQ request the server has no handler for.
#[tokio::test]
async fn unknown_iq_payload_to_server_is_service_unavailable() {
    let server = TestServer::start().await;
    let mut alice = bound(&server, "alice", "desk").await;
    alice
        .send("<iq type='get' id='q3' to='localhost'><frobnicate xmlns='urn:example:frobnicate'/></iq>")
        .await;
    let reply = expect_iq_error(&mut alice, "q3", "service-unavailable").await;
    assert_eq!(
        last_attr(&reply, "iq", "from").as_deref(),
        Some("localhost"),
        "{reply}"
    );
    assert_eq!(
        last_attr(&reply, "iq", "to").as_deref(),
        Some("alice@localhost/desk"),
        "{reply}"
    );
}

// RFC 6120 §10.4.3 and §8.3.3.15: without federation, a remote domain can't be reached.
#[tokio::test]
async fn iq_to_remote_domain_is_remote_server_not_found() {
    let server = TestServer::start().await;
    let mut alice = bound(&server, "alice", "desk").await;
    alice
        .send("<iq type='get' id='q4' to='someone@example.org'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    expect_iq_error(&mut alice, "q4", "remote-server-not-found").await;
}

// RFC 6120 §8.3.3.8 and RFC 7622 §3.3: a `to` that is not a valid JID (empty localpart).
#[tokio::test]
async fn iq_to_invalid_jid_is_jid_malformed() {
    let server = TestServer::start().await;
    let mut alice = bound(&server, "alice", "desk").await;
    alice
        .send("<iq type='get' id='q5' to='@localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    expect_iq_error(&mut alice, "q5", "jid-malformed").await;
    alice.expect_silence(QUIET).await;
}

// RFC 6120 §8.3.3.8 and RFC 7622 §3.2: a message whose `to` has an empty domainpart.
#[tokio::test]
async fn message_to_invalid_jid_is_jid_malformed() {
    let server = TestServer::start().await;
    let mut alice = bound(&server, "alice", "desk").await;
    alice
        .send("<message to='bob@' type='chat' id='m3'><body>hi</body></message>")
        .await;
    let reply = alice.expect("</message>").await;
    assert_eq!(
        last_attr(&reply, "message", "type").as_deref(),
        Some("error"),
        "{reply}"
    );
    assert!(reply.contains(&stanza_condition("jid-malformed")), "{reply}");
}

// RFC 6120 §8.2.3: every IQ request gets exactly one response, success or error.
#[tokio::test]
async fn each_iq_gets_exactly_one_reply() {
    let server = TestServer::start().await;
    let mut alice = bound(&server, "alice", "desk").await;
    let requests = [
        (
            "one-a",
            "<iq type='get' id='one-a' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        ),
        (
            "one-b",
            "<iq type='get' id='one-b'><query xmlns='jabber:iq:roster'/></iq>",
        ),
        (
            "one-c",
            "<iq type='get' id='one-c' to='localhost'><frobnicate xmlns='urn:example:frobnicate'/></iq>",
        ),
        (
            "one-d",
            "<iq type='get' id='one-d' to='nobody@localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
        ),
    ];
    for (_, request) in requests {
        alice.send(request).await;
    }
    // Every reply arrives, then nothing else.
    let mut received = String::new();
    for (id, _) in requests {
        let needle = format!("id='{id}'");
        if !received.contains(&needle) {
            received.push_str(&alice.expect(&needle).await);
        }
    }
    received.push_str(&alice.drain(QUIET).await);
    for (id, _) in requests {
        assert_eq!(
            received.matches(&format!("id='{id}'")).count(),
            1,
            "replies to {id}: {received}"
        );
    }
}

// RFC 6120 §8.3.3.1: an IQ of an unrecognized type is answered with bad-request; the stream
// stays up.
#[tokio::test]
async fn iq_of_unknown_type_is_bad_request() {
    let server = TestServer::start().await;
    let mut alice = bound(&server, "alice", "desk").await;
    alice
        .send("<iq type='bogus' id='q9'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    expect_iq_error(&mut alice, "q9", "bad-request").await;
    alice
        .send("<iq type='get' id='q10'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let head = alice.expect("id='q10'").await;
    let reply = head + &alice.expect(">").await;
    assert_eq!(
        last_attr(&reply, "iq", "type").as_deref(),
        Some("result"),
        "the stream is still up: {reply}"
    );
}

// RFC 6121 §4.2.2: a new resource's initial presence probes the contacts it is subscribed to,
// whatever its priority (priority only decides who gets messages sent to the bare JID).
#[tokio::test]
async fn initial_presence_with_negative_priority_still_probes_contacts() {
    let server = TestServer::start().await;
    let mut bob = bound(&server, "bob", "desk").await;
    become_available(&mut bob).await;
    let mut phone = bound(&server, "alice", "phone").await;
    become_available(&mut phone).await;
    phone
        .send("<presence type='subscribe' to='bob@localhost'/>")
        .await;
    bob.expect("type='subscribe'").await;
    bob.send("<presence type='subscribed' to='alice@localhost'/>")
        .await;
    phone.expect("type='subscribed'").await;

    let mut laptop = bound(&server, "alice", "laptop").await;
    laptop.send("<presence><priority>-1</priority></presence>").await;
    let received = laptop.drain(QUIET).await;
    assert!(
        received.contains("from='bob@localhost/desk'"),
        "bob's presence answers the probe: {received}"
    );
}

// RFC 6121 §4.2.2: an entity is implicitly subscribed to its own presence, so a resource that
// becomes available learns about the account's other available resources.
#[tokio::test]
async fn a_new_resource_sees_the_accounts_other_resources() {
    let server = TestServer::start().await;
    let mut desk = bound(&server, "alice", "desk").await;
    desk.send("<presence><show>dnd</show></presence>").await;
    desk.expect("<presence").await;
    let mut phone = bound(&server, "alice", "phone").await;
    phone.send("<presence/>").await;
    let received = phone.drain(QUIET).await;
    let desk_presence = received
        .split("<presence")
        .find(|presence| presence.contains("from='alice@localhost/desk'"))
        .unwrap_or_else(|| panic!("no presence from the desk: {received}"));
    assert!(desk_presence.contains("<show>dnd</show>"), "{desk_presence}");
}

/// The numbers each `<body>` starts with, in the order they appear.
fn bodies(xml: &str) -> Vec<usize> {
    xml.split("<body>")
        .skip(1)
        .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect()
}

// RFC 6120 §10.1: a session's stanzas are processed in order, also while its messages wait for
// their compliance records together. A burst of more messages than a session keeps waiting at
// once reaches the other party in order, and a request sent after the burst is answered only
// after every message of it has been routed.
#[tokio::test]
async fn a_burst_of_messages_keeps_its_order_and_precedes_a_later_request() {
    let server = TestServer::start().await;
    let mut bob = bound(&server, "bob", "phone").await;
    become_available(&mut bob).await;
    let mut alice = bound(&server, "alice", "desk").await;
    become_available(&mut alice).await;
    const BURST: usize = 100;
    let mut burst = String::new();
    for n in 0..BURST {
        burst.push_str(&format!(
            "<message to='bob@localhost' type='chat' id='b{n}'><body>{n}</body></message>\
             <message to='alice@localhost' type='chat' id='s{n}'><body>{n}</body></message>"
        ));
    }
    burst.push_str("<iq type='get' id='after'><ping xmlns='urn:xmpp:ping'/></iq>");
    alice.send(&burst).await;
    let to_self = alice.expect("id='after'").await;
    assert_eq!(bodies(&to_self), (0..BURST).collect::<Vec<_>>());
    let mut to_bob = String::new();
    while bodies(&to_bob).len() < BURST {
        to_bob.push_str(&bob.expect("</message>").await);
    }
    assert_eq!(bodies(&to_bob), (0..BURST).collect::<Vec<_>>());
}

// RFC 6120 §8.1.5: a client's stanza without `xml:lang` reaches its recipient in the language of
// the client's stream; one with its own keeps it; a stream without a language adds none.
#[tokio::test]
async fn a_stanza_without_xml_lang_carries_its_streams_language() {
    let server = TestServer::start().await;
    let mut bob = bound(&server, "bob", "phone").await;
    become_available(&mut bob).await;
    let mut alice = server.raw().await;
    alice.stream_lang = Some("de-CH".into());
    alice.login("alice", "alice-secret", "desk").await;
    become_available(&mut alice).await;
    alice
        .send("<message to='bob@localhost' type='chat' id='l1'><body>Grüezi</body></message>")
        .await;
    alice
        .send("<message to='bob@localhost' type='chat' id='l2' xml:lang='fr'><body>Salut</body></message>")
        .await;
    let first = bob.expect("</message>").await;
    assert_eq!(
        last_attr(&first, "message", "xml:lang").as_deref(),
        Some("de-CH"),
        "{first}"
    );
    let second = bob.expect("</message>").await;
    assert_eq!(
        last_attr(&second, "message", "xml:lang").as_deref(),
        Some("fr"),
        "{second}"
    );
    bob.send("<message to='alice@localhost' type='chat' id='l3'><body>Hoi</body></message>")
        .await;
    let third = alice.expect("</message>").await;
    assert!(third.contains("id='l3'"), "{third}");
    assert_eq!(last_attr(&third, "message", "xml:lang"), None, "{third}");
}

// A request that waits for the messages before it must not stop the session from writing its
// own queue meanwhile: messages to oneself land there, and a queue over its byte budget closes
// the session as a slow consumer.
#[tokio::test]
async fn messages_to_oneself_before_a_request_do_not_overflow_the_own_queue() {
    let server = server_with(|config| {
        config.c2s.outbound_queue_bytes = ByteSize::kib(64);
        config.c2s.max_stanza_size = ByteSize::kib(16);
        config.c2s.max_token_size = ByteSize::kib(12);
    })
    .await;
    let mut alice = bound(&server, "alice", "desk").await;
    let pad = "x".repeat(10 * 1024);
    let mut burst = String::new();
    for n in 0..8 {
        burst.push_str(&format!(
            "<message to='alice@localhost/desk' type='chat' id='s{n}'><body>{n}{pad}</body></message>"
        ));
    }
    burst.push_str("<iq type='get' id='after'><ping xmlns='urn:xmpp:ping'/></iq>");
    alice.send(&burst).await;
    let received = alice.expect("id='after'").await;
    assert!(
        !received.contains("policy-violation"),
        "the session closed itself"
    );
    assert_eq!(bodies(&received), (0..8).collect::<Vec<_>>());
}

// A client that sends a burst and closes its stream at once still has every message routed, in
// order: the session routes what it accepted before it unbinds.
#[tokio::test]
async fn a_burst_then_the_clients_close_is_all_routed() {
    let server = TestServer::start().await;
    let mut bob = bound(&server, "bob", "phone").await;
    let mut alice = bound(&server, "alice", "desk").await;
    const BURST: usize = 60;
    let mut burst = String::new();
    for n in 0..BURST {
        burst.push_str(&format!(
            "<message to='bob@localhost/phone' type='chat' id='c{n}'><body>{n}</body></message>"
        ));
    }
    burst.push_str("</stream:stream>");
    alice.send(&burst).await;
    let mut to_bob = String::new();
    while bodies(&to_bob).len() < BURST {
        to_bob.push_str(&bob.expect("</message>").await);
    }
    assert_eq!(bodies(&to_bob), (0..BURST).collect::<Vec<_>>());
}

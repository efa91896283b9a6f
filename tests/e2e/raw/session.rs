//! Session lifetime: timeouts, pings, keepalives, closing, shutdown and resource limits.

use super::{QUIET, bound, expect_iq_error, server_with};
use parley_config::Duration as ConfigDuration;
use parley_testkit::{RawClient, Step, TestServer, last_attr};
use std::time::{Duration, Instant};

/// Sends a ping to the server and asserts the `result` comes back: the session is alive.
async fn assert_alive(client: &mut RawClient, id: &str) {
    client
        .send(&format!(
            "<iq type='get' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .await;
    let head = client.expect(&format!("id='{id}'")).await;
    let reply = head + &client.expect(">").await;
    assert_eq!(
        last_attr(&reply, "iq", "type").as_deref(),
        Some("result"),
        "ping failed: {reply}"
    );
}

/// Waits for the server's XEP-0199 ping and returns its id.
async fn expect_server_ping(client: &mut RawClient) -> String {
    let received = client.expect("<ping xmlns='urn:xmpp:ping'/>").await;
    assert_eq!(
        last_attr(&received, "iq", "type").as_deref(),
        Some("get"),
        "a ping is a get: {received}"
    );
    last_attr(&received, "iq", "id").expect("the ping has an id")
}

// RFC 6120 §4.9.3.4 (and §13.12 on bounding resources): a connection that never authenticates
// is closed with connection-timeout once `c2s.pre_auth_timeout` has passed.
#[tokio::test]
async fn pre_auth_timeout_is_connection_timeout() {
    let server = server_with(|config| config.c2s.pre_auth_timeout = ConfigDuration::from_secs(1)).await;
    let started = Instant::now();
    let mut client = server.raw().await;
    client.open_stream().await;
    client.expect_stream_error("connection-timeout").await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed too early: {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "closed too late: {waited:?}");
}

// RFC 6120 §4.9.3.4: a connection that sends nothing at all is timed out the same way.
#[tokio::test]
async fn silent_connection_is_timed_out() {
    let server = server_with(|config| config.c2s.pre_auth_timeout = ConfigDuration::from_secs(1)).await;
    let mut client = server.raw().await;
    client.expect_stream_error("connection-timeout").await;
}

// XEP-0199 §4.2 (server-to-client ping): an idle client is pinged; answering keeps the session.
#[tokio::test]
async fn answered_idle_ping_keeps_the_session() {
    let server = server_with(|config| {
        config.c2s.ping_idle_after = ConfigDuration::from_millis(500);
        config.c2s.ping_timeout = ConfigDuration::from_millis(500);
    })
    .await;
    let mut alice = bound(&server, "alice", "desk").await;
    for _ in 0..2 {
        let id = expect_server_ping(&mut alice).await;
        alice
            .send(&format!("<iq type='result' id='{id}' to='localhost'/>"))
            .await;
    }
    assert_alive(&mut alice, "after-pings").await;
}

// XEP-0199 §4.2 and RFC 6120 §4.9.3.4: no answer to the ping ends the session.
#[tokio::test]
async fn unanswered_idle_ping_is_connection_timeout() {
    let server = server_with(|config| {
        config.c2s.ping_idle_after = ConfigDuration::from_millis(500);
        config.c2s.ping_timeout = ConfigDuration::from_millis(500);
    })
    .await;
    let mut alice = bound(&server, "alice", "desk").await;
    expect_server_ping(&mut alice).await;
    alice.expect_stream_error("connection-timeout").await;
}

// RFC 6121 §8.5.2.2.1: a message must be stored offline or answered with an error, never
// dropped. A session timed out by an unanswered ping waits `close_timeout` for the client's
// closing tag; a message routed meanwhile must not be queued for that dead session.
#[tokio::test]
async fn a_message_arriving_while_a_dead_session_closes_is_stored_offline() {
    let server = server_with(|config| {
        config.c2s.ping_idle_after = ConfigDuration::from_millis(400);
        config.c2s.ping_timeout = ConfigDuration::from_millis(400);
        config.c2s.close_timeout = ConfigDuration::from_secs(30);
    })
    .await;
    let mut bob = bound(&server, "bob", "desk").await;
    bob.send("<presence/>").await;
    bob.expect("<presence").await;
    expect_server_ping(&mut bob).await;
    // Bob's client is gone: it answers nothing, not even the stream error, for 30 s.
    bob.expect_stream_error("connection-timeout").await;

    let mut alice = bound(&server, "alice", "phone").await;
    alice
        .send("<message to='bob@localhost' type='chat' id='m1'><body>while you were away</body></message>")
        .await;
    alice.expect_silence(QUIET).await;

    let mut laptop = bound(&server, "bob", "laptop").await;
    laptop.send("<presence/>").await;
    let stored = laptop.expect("</message>").await;
    assert!(stored.contains("while you were away"), "{stored}");
    assert!(
        stored.contains("urn:xmpp:delay"),
        "delivered from offline storage: {stored}"
    );
}

// RFC 6120 §4.6.1: whitespace between stanzas is a keepalive; it counts as activity.
#[tokio::test]
async fn whitespace_keepalives_keep_the_session() {
    let server = server_with(|config| {
        config.c2s.ping_idle_after = ConfigDuration::from_millis(600);
        config.c2s.ping_timeout = ConfigDuration::from_millis(300);
    })
    .await;
    let mut alice = bound(&server, "alice", "desk").await;
    // Three times the idle period, which unanswered would have ended the session twice over.
    for _ in 0..9 {
        alice.send(" ").await;
        let received = alice.drain(Duration::from_millis(200)).await;
        assert!(
            !received.contains("urn:xmpp:ping"),
            "a keepalive must count as activity: {received}"
        );
    }
    assert_alive(&mut alice, "after-keepalives").await;
}

// RFC 6120 §4.4: the client closes its stream; the server closes its own and the connection.
#[tokio::test]
async fn client_close_is_answered_with_close() {
    let server = TestServer::start().await;
    let mut alice = bound(&server, "alice", "desk").await;
    alice.send("</stream:stream>").await;
    let rest = alice.read_to_close().await;
    assert_eq!(
        rest.trim(),
        "</stream:stream>",
        "only the close is expected: {rest:?}"
    );
}

// RFC 6120 §4.4: the same before authentication.
#[tokio::test]
async fn client_close_before_auth_is_answered_with_close() {
    let server = TestServer::start().await;
    let mut client = server.raw().await;
    client.open_stream().await;
    client.send("</stream:stream>").await;
    let rest = client.read_to_close().await;
    assert_eq!(
        rest.trim(),
        "</stream:stream>",
        "only the close is expected: {rest:?}"
    );
}

// RFC 6120 §4.9.3.20: a server shutting down tells every session system-shutdown.
#[tokio::test]
async fn server_shutdown_is_system_shutdown() {
    let mut server = server_with(|config| config.c2s.close_timeout = ConfigDuration::from_secs(2)).await;
    let mut alice = bound(&server, "alice", "desk").await;
    let mut bob = bound(&server, "bob", "phone").await;
    let clients = async move {
        alice.expect_stream_error("system-shutdown").await;
        bob.expect_stream_error("system-shutdown").await;
    };
    tokio::join!(server.stop(), clients);
}

// RFC 6120 §7.7.2.2 and §4.9.3.3: a second session binding the same resource replaces the
// first, which gets <conflict/>.
#[tokio::test]
async fn same_resource_twice_is_conflict_for_the_first() {
    let server = TestServer::start().await;
    let mut first = bound(&server, "alice", "desk").await;
    let mut second = bound(&server, "alice", "desk").await;
    first.expect_stream_error("conflict").await;
    assert_alive(&mut second, "second-alive").await;
}

// RFC 6121 §4.5.2 (a session ends "for any reason"): the session a new one replaced has ended,
// so the account's other resources see it go unavailable, even if the new session never sends
// any presence.
#[tokio::test]
async fn a_replaced_session_goes_unavailable() {
    let server = TestServer::start().await;
    let mut phone = bound(&server, "alice", "phone").await;
    phone.send("<presence/>").await;
    phone.expect("<presence").await;
    let mut first = bound(&server, "alice", "ghost").await;
    first.send("<presence><status>first</status></presence>").await;
    phone.expect("first</status>").await;

    let mut second = bound(&server, "alice", "ghost").await;
    first.expect_stream_error("conflict").await;
    let seen = phone.expect("type='unavailable'").await;
    assert!(seen.contains("from='alice@localhost/ghost'"), "{seen}");
    assert_alive(&mut second, "second-alive").await;
}

// RFC 6120 §7.6.2.1: more resources than `c2s.max_resources_per_account` is refused with
// resource-constraint on bind; the existing session is unaffected.
#[tokio::test]
async fn too_many_resources_is_resource_constraint() {
    let server = server_with(|config| config.c2s.max_resources_per_account = 1).await;
    let mut first = bound(&server, "alice", "desk").await;
    let mut second = server.raw().await;
    second.starttls().await;
    assert!(
        second
            .auth_plain("alice", "alice-secret")
            .await
            .contains("<success")
    );
    second.open_stream().await;
    second
        .run(&[Step::Send(
            "<iq type='set' id='bind2'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>phone</resource></bind></iq>",
        )])
        .await;
    expect_iq_error(&mut second, "bind2", "resource-constraint").await;
    first.expect_silence(QUIET).await;
    assert_alive(&mut first, "first-alive").await;
}

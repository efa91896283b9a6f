//! Edge cases as raw XML streams: what a client sends byte for byte, and exactly what it must
//! see back (stream errors, SASL failures, stanza errors, TLS details). Each test names the
//! RFC 6120 / RFC 6121 / XEP section it checks.

mod routing;
mod sasl;
mod session;
mod stream_errors;
mod tls;

use parley_config::Config;
use parley_testkit::{RawClient, TestServer, TestServerOptions, last_attr};
use std::time::Duration;

/// How long "nothing more arrives" is watched for. Local delivery takes well under a millisecond.
const QUIET: Duration = Duration::from_millis(400);

/// A server with the default test users and `tweak` applied to its configuration.
async fn server_with(tweak: impl FnOnce(&mut Config) + Send + 'static) -> TestServer {
    TestServer::start_with(TestServerOptions {
        tweak: Some(Box::new(tweak)),
        ..Default::default()
    })
    .await
}

/// `user` (password `<user>-secret`) logged in over STARTTLS with PLAIN and bound to `resource`.
async fn bound(server: &TestServer, user: &str, resource: &str) -> RawClient {
    let mut client = server.raw().await;
    let jid = client.login(user, &format!("{user}-secret"), resource).await;
    assert_eq!(jid, format!("{user}@{}/{resource}", server.domain()));
    client
}

/// A stream header with the given attributes after `<stream:stream`, for header edge cases.
fn header_with(attributes: &str) -> String {
    format!("<?xml version='1.0'?><stream:stream {attributes}>")
}

/// The standard namespaces of a client stream header.
const STREAM_NAMESPACES: &str = "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'";

/// The condition element of a stanza error as the server writes it.
fn stanza_condition(condition: &str) -> String {
    format!("<{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>")
}

/// Waits for the reply to the IQ `id` and asserts it is an error with `condition`.
async fn expect_iq_error(client: &mut RawClient, id: &str, condition: &str) -> String {
    let reply = client.expect("</iq>").await;
    assert_eq!(
        last_attr(&reply, "iq", "id").as_deref(),
        Some(id),
        "reply to another iq: {reply}"
    );
    assert_eq!(
        last_attr(&reply, "iq", "type").as_deref(),
        Some("error"),
        "not an error: {reply}"
    );
    assert!(
        reply.contains(&stanza_condition(condition)),
        "expected {condition}, received {reply}"
    );
    reply
}

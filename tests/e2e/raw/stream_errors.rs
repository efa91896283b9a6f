//! Stream errors (RFC 6120 §4.9): each bad input closes the stream with the exact condition.

use super::{QUIET, STREAM_NAMESPACES, bound, header_with, server_with};
use parley_config::ByteSize;
use parley_testkit::{Step, TestServer, last_attr};

/// Opens a plain (pre-TLS) stream, sends `xml`, and expects the stream error `condition`.
async fn plain_stream_error(xml: &[u8], condition: &str) {
    let server = TestServer::start().await;
    let mut client = server.raw().await;
    client.open_stream().await;
    client.send_bytes(xml).await;
    client.expect_stream_error(condition).await;
}

/// Logs alice in, sends `xml` in the bound session, and expects the stream error `condition`.
async fn bound_stream_error(xml: &[u8], condition: &str) {
    let server = TestServer::start().await;
    let mut alice = bound(&server, "alice", "desk").await;
    alice.send_bytes(xml).await;
    alice.expect_stream_error(condition).await;
}

// RFC 6120 §4.9.3.10: the stream namespace is not http://etherx.jabber.org/streams. The error in
// the client's own header still comes inside a stream header of ours, which names this server
// (§4.9.1.2, §4.7.1).
#[tokio::test]
async fn wrong_stream_namespace_is_invalid_namespace_in_a_header_from_this_server() {
    let server = TestServer::start().await;
    let mut client = server.raw().await;
    client
        .send(&header_with(
            "xmlns='jabber:client' xmlns:stream='urn:example:not-streams' to='localhost' version='1.0'",
        ))
        .await;
    let reply = client.read_to_close().await;
    assert_eq!(
        last_attr(&reply, "stream:stream", "from").as_deref(),
        Some("localhost"),
        "{reply}"
    );
    assert!(reply.contains("<invalid-namespace "), "{reply}");
}

// RFC 6120 §4.8.2 and §4.9.3.10: a default (content) namespace other than jabber:client on a
// client stream is an unsupported content namespace.
#[tokio::test]
async fn wrong_content_namespace_in_header_is_invalid_namespace() {
    let server = TestServer::start().await;
    let mut client = server.raw().await;
    client
        .send(&header_with(
            "xmlns='urn:example:bogus' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'",
        ))
        .await;
    client.expect_stream_error("invalid-namespace").await;
}

// RFC 6120 §4.9.3.10 and §4.8.3: a stanza must be qualified by jabber:client; one in no
// namespace at all is invalid.
#[tokio::test]
async fn stanza_in_no_namespace_is_invalid_namespace() {
    bound_stream_error(
        b"<message xmlns='' to='bob@localhost'><body>hi</body></message>",
        "invalid-namespace",
    )
    .await;
}

// RFC 6120 §4.9.3.10: jabber:server is not the content namespace of a client stream.
#[tokio::test]
async fn stanza_in_server_namespace_is_invalid_namespace() {
    bound_stream_error(
        b"<message xmlns='jabber:server' to='bob@localhost'><body>hi</body></message>",
        "invalid-namespace",
    )
    .await;
}

// RFC 6120 §4.9.3.6: `to` names a domain this server does not serve.
#[tokio::test]
async fn foreign_to_domain_is_host_unknown() {
    let server = TestServer::start().await;
    let mut client = server.raw().await;
    client
        .send(&header_with(&format!(
            "{STREAM_NAMESPACES} to='example.org' version='1.0'"
        )))
        .await;
    client.expect_stream_error("host-unknown").await;
}

// RFC 6120 §4.7.5 and §4.9.3.25: no version attribute means pre-1.0 XMPP, which is not spoken.
#[tokio::test]
async fn missing_version_is_unsupported_version() {
    let server = TestServer::start().await;
    let mut client = server.raw().await;
    client
        .send(&header_with(&format!("{STREAM_NAMESPACES} to='localhost'")))
        .await;
    client.expect_stream_error("unsupported-version").await;
}

// RFC 6120 §4.7.5 and §4.9.3.25: a major version the server does not support.
#[tokio::test]
async fn major_version_two_is_unsupported_version() {
    let server = TestServer::start().await;
    let mut client = server.raw().await;
    client
        .send(&header_with(&format!(
            "{STREAM_NAMESPACES} to='localhost' version='2.0'"
        )))
        .await;
    client.expect_stream_error("unsupported-version").await;
}

// RFC 6120 §4.7.5: a higher minor version of 1.x is answered with 1.0 and negotiation goes on.
#[tokio::test]
async fn higher_minor_version_is_accepted() {
    let server = TestServer::start().await;
    let mut client = server.raw().await;
    client
        .send(&header_with(&format!(
            "{STREAM_NAMESPACES} to='localhost' version='1.5'"
        )))
        .await;
    let features = client.expect("</stream:features>").await;
    assert!(
        features.contains("version='1.0'"),
        "the server must answer with 1.0: {features}"
    );
    assert!(
        features.contains("<starttls"),
        "negotiation continues: {features}"
    );
}

// RFC 6120 §4.9.3.13: mismatched tags violate XML well-formedness.
#[tokio::test]
async fn mismatched_tags_are_not_well_formed() {
    plain_stream_error(
        b"<message to='bob@localhost'><body>hi</message>",
        "not-well-formed",
    )
    .await;
}

// RFC 6120 §4.9.3.22 (and §11.6): improperly encoded UTF-8 is "unsupported-encoding"; the RFC
// names "violating the rules of the UTF-8 encoding" as its example.
#[tokio::test]
async fn invalid_utf8_is_unsupported_encoding() {
    let mut stanza = b"<message to='bob@localhost'><body>".to_vec();
    stanza.extend_from_slice(&[0xC3, 0x28, 0xFF, 0xFE]);
    stanza.extend_from_slice(b"</body></message>");
    bound_stream_error(&stanza, "unsupported-encoding").await;
}

// RFC 6120 §4.9.3.13: an undeclared prefix violates Namespaces in XML.
#[tokio::test]
async fn undeclared_prefix_is_not_well_formed() {
    plain_stream_error(b"<nope:message to='bob@localhost'/>", "not-well-formed").await;
}

// RFC 6120 §11.1 and §4.9.3.18: a document type declaration in the prolog.
#[tokio::test]
async fn doctype_is_restricted_xml() {
    let server = TestServer::start().await;
    let mut client = server.raw().await;
    client
        .send(&format!(
            "<?xml version='1.0'?><!DOCTYPE stream:stream [<!ENTITY boom 'x'>]><stream:stream {STREAM_NAMESPACES} to='localhost' version='1.0'>"
        ))
        .await;
    client.expect_stream_error("restricted-xml").await;
}

// RFC 6120 §11.1 and §4.9.3.18: an entity declaration inside the stream.
#[tokio::test]
async fn entity_declaration_is_restricted_xml() {
    plain_stream_error(b"<!ENTITY lol 'lol'>", "restricted-xml").await;
}

// RFC 6120 §11.1 and §4.9.3.18: a reference to an entity that is not one of the predefined five.
#[tokio::test]
async fn entity_reference_is_restricted_xml() {
    bound_stream_error(
        b"<message to='bob@localhost'><body>&lol;</body></message>",
        "restricted-xml",
    )
    .await;
}

// RFC 6120 §11.1 and §4.9.3.18: processing instructions are not allowed in the stream.
#[tokio::test]
async fn processing_instruction_is_restricted_xml() {
    plain_stream_error(b"<?evil run='yes'?>", "restricted-xml").await;
}

// RFC 6120 §11.1 and §4.9.3.18: comments are not allowed in the stream.
#[tokio::test]
async fn comment_is_restricted_xml() {
    bound_stream_error(
        b"<message to='bob@localhost'><!-- hidden --><body>hi</body></message>",
        "restricted-xml",
    )
    .await;
}

/// A message from alice to bob whose whole serialisation is `total` bytes, left unclosed so
/// the server reads every byte before it rejects it (no unread data, so no TCP reset).
fn unclosed_message_of(total: usize) -> Vec<u8> {
    let open = "<message to='bob@localhost' type='chat'><body>";
    let mut stanza = open.as_bytes().to_vec();
    stanza.resize(total, b'a');
    stanza
}

// RFC 6120 §13.12 (4) and §4.9.3.14: a stanza over the size limit (default 256 KiB).
#[tokio::test]
async fn stanza_over_default_limit_is_policy_violation() {
    bound_stream_error(&unclosed_message_of(256 * 1024 + 64), "policy-violation").await;
}

// RFC 6120 §13.12 (4) and §4.9.3.14: a lowered `c2s.max_stanza_size` applies; a stanza under
// it is still delivered.
#[tokio::test]
async fn stanza_over_lowered_limit_is_policy_violation_and_under_it_is_delivered() {
    let server = server_with(|config| {
        config.c2s.max_stanza_size = ByteSize::kib(4);
        config.c2s.max_token_size = ByteSize::kib(1);
    })
    .await;
    let mut bob = bound(&server, "bob", "phone").await;
    let mut alice = bound(&server, "alice", "desk").await;
    let body = "b".repeat(3 * 1024);
    alice
        .send(&format!(
            "<message to='bob@localhost/phone' type='chat'><body>{body}</body></message>"
        ))
        .await;
    let delivered = bob.expect("</message>").await;
    assert!(delivered.contains(&body), "the 3 KiB message must arrive whole");
    alice.send_bytes(&unclosed_message_of(5 * 1024)).await;
    alice.expect_stream_error("policy-violation").await;
    bob.expect_silence(QUIET).await;
}

// RFC 6120 §13.12 (4) and §4.9.3.14: nesting deeper than `c2s.max_depth` (default 32).
#[tokio::test]
async fn deep_nesting_is_policy_violation() {
    let mut stanza = "<message to='bob@localhost'>".to_owned();
    stanza.push_str(&"<x>".repeat(40));
    bound_stream_error(stanza.as_bytes(), "policy-violation").await;
}

// RFC 6120 §13.12 (4) and §4.9.3.14: more attributes on one element than `c2s.max_attributes`.
#[tokio::test]
async fn too_many_attributes_is_policy_violation() {
    let attributes: String = (0..80).map(|i| format!(" a{i}='v'")).collect();
    bound_stream_error(
        format!("<message to='bob@localhost'{attributes}/>").as_bytes(),
        "policy-violation",
    )
    .await;
}

// RFC 6120 §4.9.3.12: a stanza before authentication, in plaintext.
#[tokio::test]
async fn stanza_before_tls_is_not_authorized() {
    plain_stream_error(
        b"<message to='bob@localhost'><body>hi</body></message>",
        "not-authorized",
    )
    .await;
}

// RFC 6120 §4.9.3.12: a stanza after TLS but before SASL.
#[tokio::test]
async fn stanza_before_sasl_is_not_authorized() {
    let server = TestServer::start().await;
    let mut client = server.raw().await;
    client.starttls().await;
    client
        .run(&[
            Step::Send("<iq type='get' id='early'><ping xmlns='urn:xmpp:ping'/></iq>"),
            Step::StreamError("not-authorized"),
        ])
        .await;
}

// RFC 6120 §7.1 and §4.9.3.12: after SASL the client must bind a resource before sending stanzas.
#[tokio::test]
async fn stanza_before_bind_is_not_authorized() {
    let server = TestServer::start().await;
    let mut client = server.raw().await;
    client.starttls().await;
    assert!(
        client
            .auth_plain("alice", "alice-secret")
            .await
            .contains("<success")
    );
    let features = client.open_stream().await;
    assert!(
        features.contains("urn:ietf:params:xml:ns:xmpp-bind"),
        "bind is offered: {features}"
    );
    client
        .run(&[
            Step::Send("<message to='bob@localhost'><body>too early</body></message>"),
            Step::StreamError("not-authorized"),
        ])
        .await;
}

// RFC 6120 §4.9.3.24: a top-level element that is not a stanza.
#[tokio::test]
async fn unknown_top_level_element_is_unsupported_stanza_type() {
    bound_stream_error(b"<telegram to='bob@localhost'/>", "unsupported-stanza-type").await;
}

// RFC 6120 §4.9.3.24: the same before authentication, in a namespace nobody negotiates.
#[tokio::test]
async fn unknown_element_before_auth_is_unsupported_stanza_type() {
    plain_stream_error(b"<hello xmlns='urn:example:hello'/>", "unsupported-stanza-type").await;
}

// RFC 6120 §8.1.2.1 and §4.9.3.9: a client may only send as itself; the spoofed stanza must
// never reach the addressee.
#[tokio::test]
async fn spoofed_from_is_invalid_from_and_never_delivered() {
    let server = TestServer::start().await;
    let mut bob = bound(&server, "bob", "phone").await;
    let mut alice = bound(&server, "alice", "desk").await;
    alice
        .run(&[
            Step::Send(
                "<message from='ceo@localhost/office' to='bob@localhost/phone' type='chat'><body>wire the money</body></message>",
            ),
            Step::StreamError("invalid-from"),
        ])
        .await;
    bob.expect_silence(QUIET).await;
    // Bob's session is untouched: the server still answers him.
    bob.send("<iq type='get' id='still-here'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    bob.expect("id='still-here'").await;
}

// RFC 6120 §8.1.2.1: naming oneself in `from` (full or bare JID) is allowed.
#[tokio::test]
async fn own_from_is_accepted() {
    let server = TestServer::start().await;
    let mut bob = bound(&server, "bob", "phone").await;
    let mut alice = bound(&server, "alice", "desk").await;
    alice
        .send("<message from='alice@localhost/desk' to='bob@localhost/phone' type='chat'><body>one</body></message>")
        .await;
    alice
        .send(
            "<message from='alice@localhost' to='bob@localhost/phone' type='chat'><body>two</body></message>",
        )
        .await;
    let received = bob.expect("<body>two</body>").await;
    assert!(
        received.contains("<body>one</body>"),
        "both messages arrive: {received}"
    );
    assert!(
        received.contains("from='alice@localhost/desk'"),
        "from is the full JID: {received}"
    );
}

// RFC 6120 §8.1.3 and §4.9.3.11: an IQ must carry an id.
#[tokio::test]
async fn iq_without_id_is_invalid_xml() {
    bound_stream_error(
        b"<iq type='get'><ping xmlns='urn:xmpp:ping'/></iq>",
        "invalid-xml",
    )
    .await;
}

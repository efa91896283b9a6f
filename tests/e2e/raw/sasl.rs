//! SASL negotiation failures (RFC 6120 §6.4 and §6.5) and which mechanisms are offered when.

use super::server_with;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use parley_testkit::{RawClient, TestServer};

const SASL_NS: &str = "urn:ietf:params:xml:ns:xmpp-sasl";

fn auth(mechanism: &str, payload: &str) -> String {
    format!("<auth xmlns='{SASL_NS}' mechanism='{mechanism}'>{payload}</auth>")
}

fn plain_token(user: &str, password: &str) -> String {
    BASE64.encode(format!("\0{user}\0{password}"))
}

/// Waits for a SASL `<failure/>` and asserts its condition.
async fn expect_failure(client: &mut RawClient, condition: &str) {
    let received = client.expect("</failure>").await;
    assert!(
        received.contains(&format!("<failure xmlns='{SASL_NS}'>")),
        "not a SASL failure: {received}"
    );
    assert!(
        received.contains(&format!("<{condition}/>")),
        "expected {condition}, received {received}"
    );
}

/// The names inside `<mechanism>` elements of a features element.
fn mechanisms(features: &str) -> Vec<String> {
    features
        .split("<mechanism>")
        .skip(1)
        .filter_map(|rest| rest.split_once("</mechanism>").map(|(name, _)| name.to_owned()))
        .collect()
}

/// A client on the STARTTLS port that completed STARTTLS.
async fn secured(server: &TestServer) -> RawClient {
    let mut client = server.raw().await;
    client.starttls().await;
    client
}

// RFC 6120 §5.3.1 and §6.4.1 with §13.8: before TLS the server requires STARTTLS and offers no
// way to send a password in the clear.
#[tokio::test]
async fn plaintext_features_require_starttls_and_offer_no_plain() {
    let server = TestServer::start().await;
    let mut client = server.raw().await;
    let features = client.open_stream().await;
    assert!(
        features.contains("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"),
        "STARTTLS must be offered as required: {features}"
    );
    assert!(
        !mechanisms(&features).contains(&"PLAIN".to_owned()),
        "PLAIN before TLS: {features}"
    );
}

// RFC 6120 §6.5.4: PLAIN before STARTTLS is encryption-required; the client may then go on
// with STARTTLS on the same stream.
#[tokio::test]
async fn plain_before_starttls_is_encryption_required() {
    let server = TestServer::start().await;
    let mut client = server.raw().await;
    client.open_stream().await;
    client
        .send(&auth("PLAIN", &plain_token("alice", "alice-secret")))
        .await;
    expect_failure(&mut client, "encryption-required").await;
    client
        .send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await;
    client
        .expect("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await;
}

// RFC 6120 §13.8 and §6.5.4: even when STARTTLS is optional, PLAIN is never offered or accepted
// without TLS; SCRAM (no channel binding, there is no TLS) is.
#[tokio::test]
async fn optional_starttls_still_keeps_plain_behind_tls() {
    let server = server_with(|config| config.c2s.require_starttls = false).await;
    let mut client = server.raw().await;
    let features = client.open_stream().await;
    let offered = mechanisms(&features);
    assert!(
        offered.contains(&"SCRAM-SHA-256".to_owned()),
        "SCRAM is offered: {features}"
    );
    assert!(
        !offered.iter().any(|m| m == "PLAIN" || m.ends_with("-PLUS")),
        "offered in plaintext: {offered:?}"
    );
    client
        .send(&auth("PLAIN", &plain_token("alice", "alice-secret")))
        .await;
    expect_failure(&mut client, "encryption-required").await;
}

// RFC 6120 §6.3.4 and RFC 9266: over TLS, the -PLUS (channel binding) mechanisms and PLAIN are offered.
#[tokio::test]
async fn after_starttls_plus_mechanisms_and_plain_are_offered() {
    let server = TestServer::start().await;
    let mut client = server.raw().await;
    let features = client.starttls().await;
    let offered = mechanisms(&features);
    for wanted in [
        "SCRAM-SHA-256-PLUS",
        "SCRAM-SHA-1-PLUS",
        "SCRAM-SHA-256",
        "SCRAM-SHA-1",
        "PLAIN",
    ] {
        assert!(
            offered.iter().any(|m| m == wanted),
            "{wanted} missing from {offered:?}"
        );
    }
    assert!(
        !features.contains("<starttls"),
        "STARTTLS again over TLS: {features}"
    );
}

// RFC 6120 §6.5.6: a mechanism the server does not offer.
#[tokio::test]
async fn unknown_mechanism_is_invalid_mechanism() {
    let server = TestServer::start().await;
    let mut client = secured(&server).await;
    client.send(&auth("X-MAGIC-WORD", "=")).await;
    expect_failure(&mut client, "invalid-mechanism").await;
}

// RFC 6120 §6.5.7 (and RFC 4616 §2): a PLAIN message without the NUL separators.
#[tokio::test]
async fn plain_without_separators_is_malformed_request() {
    let server = TestServer::start().await;
    let mut client = secured(&server).await;
    client
        .send(&auth("PLAIN", &BASE64.encode("alice alice-secret")))
        .await;
    expect_failure(&mut client, "malformed-request").await;
}

// RFC 6120 §6.5.7: a <response/> when no exchange is under way.
#[tokio::test]
async fn response_without_auth_is_malformed_request() {
    let server = TestServer::start().await;
    let mut client = secured(&server).await;
    client
        .send(&format!(
            "<response xmlns='{SASL_NS}'>{}</response>",
            BASE64.encode("hello")
        ))
        .await;
    expect_failure(&mut client, "malformed-request").await;
}

// RFC 6120 §6.5.5: the initial response is not valid base64.
#[tokio::test]
async fn bad_base64_is_incorrect_encoding() {
    let server = TestServer::start().await;
    let mut client = secured(&server).await;
    client.send(&auth("PLAIN", "not*base64!")).await;
    expect_failure(&mut client, "incorrect-encoding").await;
}

// RFC 6120 §6.4.4 and §6.5.1: <abort/> in the middle of a SCRAM exchange is answered with
// aborted, and the client may authenticate again on the same stream.
#[tokio::test]
async fn abort_mid_exchange_is_aborted() {
    let server = TestServer::start().await;
    let mut client = secured(&server).await;
    client
        .send(&auth(
            "SCRAM-SHA-256",
            &BASE64.encode("n,,n=alice,r=0123456789abcdef"),
        ))
        .await;
    let challenge = client.expect("</challenge>").await;
    assert!(
        challenge.contains(&format!("<challenge xmlns='{SASL_NS}'>")),
        "a challenge: {challenge}"
    );
    client.send(&format!("<abort xmlns='{SASL_NS}'/>")).await;
    expect_failure(&mut client, "aborted").await;
    let answer = client.auth_plain("alice", "alice-secret").await;
    assert!(answer.contains("<success"), "retry after abort: {answer}");
}

// RFC 6120 §6.5.10: a wrong password.
#[tokio::test]
async fn wrong_password_is_not_authorized() {
    let server = TestServer::start().await;
    let mut client = secured(&server).await;
    client
        .send(&auth("PLAIN", &plain_token("alice", "not-her-password")))
        .await;
    expect_failure(&mut client, "not-authorized").await;
}

// RFC 6120 §6.5.10 and §13.9.3 (no account enumeration): an unknown user looks the same.
#[tokio::test]
async fn unknown_user_is_not_authorized() {
    let server = TestServer::start().await;
    let mut client = secured(&server).await;
    client
        .send(&auth("PLAIN", &plain_token("mallory", "guess")))
        .await;
    expect_failure(&mut client, "not-authorized").await;
}

// RFC 6120 §6.4.5: after a reasonable number of retries the server closes the stream; Parley
// allows three attempts and then ends it with policy-violation.
#[tokio::test]
async fn repeated_failures_close_the_stream_with_policy_violation() {
    let server = TestServer::start().await;
    let mut client = secured(&server).await;
    for attempt in 0..2 {
        client
            .send(&auth("PLAIN", &plain_token("alice", &format!("wrong-{attempt}"))))
            .await;
        expect_failure(&mut client, "not-authorized").await;
    }
    client
        .send(&auth("PLAIN", &plain_token("alice", "wrong-2")))
        .await;
    expect_failure(&mut client, "not-authorized").await;
    client.expect_stream_error("policy-violation").await;
}

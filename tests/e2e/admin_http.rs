//! The admin HTTP API as an operator and a compliance officer use it: health and metrics for
//! monitoring, and the archive for directory admins only.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use parley_directory::{PersonDetails, StaticDirectory};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_xmpp::IqRequest;
use tokio_xmpp::jid::Jid;
use tokio_xmpp::parsers::message::Message;

use crate::client::harness::{EVENT_TIMEOUT, XmppClient, bare, start_server, xml};

/// A response: status code, raw headers, body.
struct Response {
    status: u16,
    headers: String,
    body: String,
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`, read to the end).
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    credentials: Option<(&str, &str)>,
    body: Option<&str>,
) -> Response {
    let mut stream = tokio::time::timeout(EVENT_TIMEOUT, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("the admin API accepts");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some((user, password)) = credentials {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        head.push_str(&format!("Authorization: Basic {token}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(head.as_bytes()).await.expect("send the request");
    let mut raw = Vec::new();
    tokio::time::timeout(EVENT_TIMEOUT, stream.read_to_end(&mut raw))
        .await
        .expect("the response in time")
        .expect("read the response");
    let text = String::from_utf8(raw).expect("a UTF-8 response");
    let (headers, body) = text.split_once("\r\n\r\n").expect("a header block");
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status code");
    Response {
        status,
        headers: headers.to_lowercase(),
        body: body.to_owned(),
    }
}

const ADMIN: Option<(&str, &str)> = Some(("carla", "carla-secret"));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_serves_health_metrics_and_the_archive_to_admins_only() {
    let mut server = start_server(|config| {
        config.admin_http.listen = Some("127.0.0.1:0".parse().expect("an address"));
    })
    .await;
    let admin_users = StaticDirectory::open(server.config.static_directory_path())
        .await
        .expect("the user file");
    admin_users
        .add_user(
            "carla",
            "carla-secret",
            PersonDetails {
                admin: true,
                ..PersonDetails::default()
            },
        )
        .await
        .expect("an admin");
    let addr = server
        .server
        .as_ref()
        .expect("running")
        .admin_http_addr
        .expect("the admin API listens");

    // The server notices the changed user file within a second (RELOAD_CHECK_INTERVAL).
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    loop {
        let probe = request(addr, "GET", "/archive/verify", ADMIN, None).await;
        if probe.status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new admin never got in: {} {}",
            probe.status,
            probe.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let health = request(addr, "GET", "/health", None, None).await;
    assert_eq!(health.status, 200);
    assert!(health.body.contains("\"ok\""), "{}", health.body);

    // Some traffic for the metrics and the archive.
    let mut alice = XmppClient::login(&server, "alice", "alice-secret", "phone").await;
    let mut bob = XmppClient::login(&server, "bob", "bob-secret", "laptop").await;
    bob.send_initial_presence().await;
    bob.iq_ok(None, IqRequest::Get(xml("<ping xmlns='urn:xmpp:ping'/>")))
        .await;
    for body in ["quarterly numbers", "see you"] {
        alice
            .send(
                Message::chat(Some(Jid::from(bare("bob@localhost"))))
                    .with_body(Default::default(), body.into()),
            )
            .await;
    }
    for body in ["quarterly numbers", "see you"] {
        bob.expect_message("a chat", |m| {
            m.get_best_body_cloned(vec![]).map(|(_, b)| b).as_deref() == Some(body)
        })
        .await;
    }

    let metrics = request(addr, "GET", "/metrics", None, None).await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.headers.contains("content-type: text/plain"),
        "{}",
        metrics.headers
    );
    assert!(
        metrics.body.contains("parley_sessions_online 2\n"),
        "{}",
        metrics.body
    );
    assert!(
        metrics
            .body
            .contains("parley_stanzas_received_total{kind=\"message\"} 2\n"),
        "{}",
        metrics.body
    );
    assert!(
        metrics.body.contains("parley_archive_records "),
        "{}",
        metrics.body
    );
    assert!(
        metrics.body.contains("parley_process_resident_memory_bytes "),
        "{}",
        metrics.body
    );
    // Two histograms in the Prometheus format: the two messages' waits for their records, and
    // the store's durable commits, at least one for them. Buckets only grow, up to +Inf, which
    // is the count.
    for (histogram, least) in [
        ("parley_archive_record_seconds", 2.0),
        ("parley_storage_commit_seconds", 1.0),
    ] {
        let sample = |suffix: &str| -> f64 {
            let prefix = format!("{histogram}{suffix} ");
            let line = metrics.body.lines().find(|line| line.starts_with(&prefix));
            let value = line.and_then(|line| line[prefix.len()..].parse().ok());
            value.unwrap_or_else(|| panic!("{prefix} in {}", metrics.body))
        };
        let count = sample("_count");
        assert!(count >= least, "{}", metrics.body);
        assert!(sample("_sum") > 0.0, "{}", metrics.body);
        assert_eq!(sample("_bucket{le=\"+Inf\"}"), count);
        let bucket_prefix = format!("{histogram}_bucket{{le=\"");
        let buckets: Vec<f64> = metrics
            .body
            .lines()
            .filter_map(|line| line.strip_prefix(bucket_prefix.as_str()))
            .map(|rest| {
                rest.rsplit(' ')
                    .next()
                    .and_then(|value| value.parse().ok())
                    .expect("a count")
            })
            .collect();
        assert_eq!(buckets.len(), 12, "{}", metrics.body);
        assert!(buckets.windows(2).all(|pair| pair[0] <= pair[1]), "{buckets:?}");
    }

    // Without credentials, with wrong ones, and as a non-admin: refused alike for each kind.
    let search_path = "/archive/search?participants=alice@localhost,bob@localhost&keyword=quarterly";
    let anonymous = request(addr, "GET", search_path, None, None).await;
    assert_eq!(anonymous.status, 401);
    assert!(
        anonymous.headers.contains("www-authenticate: basic"),
        "{}",
        anonymous.headers
    );
    let wrong = request(addr, "GET", search_path, Some(("carla", "guess")), None).await;
    assert_eq!(wrong.status, 401);
    let nobody = request(addr, "GET", search_path, Some(("nobody", "guess")), None).await;
    assert_eq!(nobody.status, 401);
    assert_eq!(
        nobody.body, wrong.body,
        "unknown users and wrong passwords look the same"
    );
    let not_admin = request(addr, "GET", search_path, Some(("bob", "bob-secret")), None).await;
    assert_eq!(not_admin.status, 403);
    let verify_as_bob = request(addr, "GET", "/archive/verify", Some(("bob", "bob-secret")), None).await;
    assert_eq!(verify_as_bob.status, 403);

    let found = request(addr, "GET", search_path, ADMIN, None).await;
    assert_eq!(found.status, 200, "{}", found.body);
    assert!(found.body.contains("\"total\":1"), "{}", found.body);
    assert!(found.body.contains("quarterly numbers"), "{}", found.body);
    assert!(!found.body.contains("see you"), "{}", found.body);
    let bad_time = request(addr, "GET", "/archive/search?start=someday", ADMIN, None).await;
    assert_eq!(bad_time.status, 400, "{}", bad_time.body);

    let exported = request(
        addr,
        "POST",
        "/archive/export",
        ADMIN,
        Some("{\"format\":\"csv\",\"participants\":\"alice@localhost\"}"),
    )
    .await;
    assert_eq!(exported.status, 200, "{}", exported.body);
    assert!(exported.body.contains("\"messages\":2"), "{}", exported.body);
    let exports = server.config.server.data_dir.join("exports");
    let made: Vec<_> = std::fs::read_dir(&exports)
        .expect("the export root")
        .map(|entry| entry.expect("an entry").path())
        .collect();
    assert_eq!(made.len(), 1, "{made:?}");
    assert!(made[0].join("manifest.json").is_file());
    let bad_format = request(
        addr,
        "POST",
        "/archive/export",
        ADMIN,
        Some("{\"format\":\"pdf\"}"),
    )
    .await;
    assert_eq!(bad_format.status, 400, "{}", bad_format.body);

    let held = request(
        addr,
        "POST",
        "/archive/holds/bob",
        ADMIN,
        Some("{\"reason\":\"case 42\"}"),
    )
    .await;
    assert_eq!(held.status, 200, "{}", held.body);
    let holds = request(addr, "GET", "/archive/holds", ADMIN, None).await;
    assert!(
        holds.body.contains("bob@localhost") && holds.body.contains("case 42"),
        "{}",
        holds.body
    );
    let no_reason = request(addr, "DELETE", "/archive/holds/bob", ADMIN, None).await;
    assert_eq!(no_reason.status, 400, "a release needs a reason too");
    let released = request(addr, "DELETE", "/archive/holds/bob?reason=closed", ADMIN, None).await;
    assert_eq!(released.status, 200, "{}", released.body);
    let holds = request(addr, "GET", "/archive/holds", ADMIN, None).await;
    assert!(!holds.body.contains("bob@localhost"), "{}", holds.body);

    let log = request(addr, "GET", "/archive/access-log", ADMIN, None).await;
    assert_eq!(log.status, 200);
    assert!(log.body.contains("\"actor\":\"carla@localhost\""), "{}", log.body);
    assert!(log.body.contains("\"action\":\"search\""), "{}", log.body);
    assert!(log.body.contains("\"action\":\"export:csv\""), "{}", log.body);
    let whole: serde_json::Value = serde_json::from_str(&log.body).expect("JSON");
    assert_eq!(
        whole["next_before"],
        serde_json::Value::Null,
        "everything fit: {}",
        log.body
    );
    // Paging, one entry at a time, walks the same log newest first.
    let mut paged = Vec::new();
    let mut path = "/archive/access-log?limit=1".to_owned();
    loop {
        let page = request(addr, "GET", &path, ADMIN, None).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let page: serde_json::Value = serde_json::from_str(&page.body).expect("JSON");
        paged.extend(page["entries"].as_array().expect("entries").iter().cloned());
        let Some(next) = page["next_before"].as_u64() else {
            break;
        };
        path = format!("/archive/access-log?limit=1&before={next}");
        assert!(paged.len() <= 100, "paging ends");
    }
    assert_eq!(paged, *whole["entries"].as_array().expect("entries"));

    let verified = request(addr, "GET", "/archive/verify", ADMIN, None).await;
    assert_eq!(verified.status, 200, "{}", verified.body);
    assert!(verified.body.contains("\"intact\":true"), "{}", verified.body);
    // The head it reports, kept outside, is checked on the next call; a wrong hash for the same
    // record is a tampered chain, and a malformed checkpoint a bad request.
    let report: serde_json::Value = serde_json::from_str(&verified.body).expect("JSON");
    let (seq, hash) = (
        report["head"]["seq"].as_u64().expect("head seq"),
        report["head"]["hash"].as_str().expect("head hash").to_owned(),
    );
    assert!(seq > 0, "{report}");
    let path = format!("/archive/verify?checkpoints={seq}:{hash},0:{}", "0".repeat(64));
    let against = request(addr, "GET", &path, ADMIN, None).await;
    let against: serde_json::Value = serde_json::from_str(&against.body).expect("JSON");
    assert_eq!(against["intact"], true, "{against}");
    assert_eq!(against["outside_matched"], 2, "{against}");
    let wrong = if hash.starts_with('0') { "1" } else { "0" }.repeat(64);
    let tampered = request(
        addr,
        "GET",
        &format!("/archive/verify?checkpoints={seq}:{wrong}"),
        ADMIN,
        None,
    )
    .await;
    assert_eq!(tampered.status, 200, "{}", tampered.body);
    let tampered: serde_json::Value = serde_json::from_str(&tampered.body).expect("JSON");
    assert_eq!(tampered["intact"], false, "{tampered}");
    assert!(
        tampered["problem"]
            .as_str()
            .unwrap_or_default()
            .contains("kept outside"),
        "{tampered}"
    );
    let malformed = request(addr, "GET", "/archive/verify?checkpoints=12:nothex", ADMIN, None).await;
    assert_eq!(malformed.status, 400, "{}", malformed.body);
    assert!(malformed.body.contains("SEQ:HEX"), "{}", malformed.body);

    alice.logout().await;
    bob.logout().await;
    tokio::time::timeout(Duration::from_secs(20), server.stop())
        .await
        .expect("stops in time");
}

//! The LDAP directory end to end: a real OpenLDAP `slapd` (the [`Slapd`] fixture, seeded from
//! `tests/fixtures/ldap/`) behind Parley, driven by tokio-xmpp. Without slapd these tests say
//! SKIPPED, except under `CI=true`, where they fail (the test command installs it).

use crate::client::harness::{XmppClient, full, shared_ca, start_server, try_login, xml};
use base64::Engine;
use parley_config::{DirectoryBackend, LdapConfig, LdapSyncrepl};
use parley_directory::{AuthOutcome, Directory, LdapDirectory};
use parley_testkit::{RawClient, Slapd, TestServer, free_port};
use std::time::{Duration, Instant};
use tokio_xmpp::IqRequest;
use tokio_xmpp::error::AuthError;
use tokio_xmpp::parsers::sasl::DefinedCondition as SaslCondition;

/// A seeded slapd, or None when it is not installed (outside CI).
fn slapd() -> Option<Slapd> {
    Slapd::available().then(|| Slapd::spawn().expect("slapd starts"))
}

/// Parley with `directory.backend = "ldap"` pointing at `ldap` (the shared test CA for XMPP).
async fn ldap_server(ldap: LdapConfig) -> TestServer {
    start_server(move |config| {
        config.directory.backend = DirectoryBackend::Ldap;
        config.ldap = ldap;
    })
    .await
}

fn refused_with(result: Result<impl std::fmt::Debug, tokio_xmpp::Error>, condition: SaslCondition) -> bool {
    matches!(result, Err(tokio_xmpp::Error::Auth(AuthError::Fail(ref c))) if *c == condition)
}

/// A bound session on a raw stream. tokio-xmpp 6 hides a stream the server ends (it
/// suspends and reconnects silently), so the tests that watch the server end a session read
/// the stream themselves.
async fn raw_session(server: &TestServer, user: &str, password: &str) -> RawClient {
    let mut raw = RawClient::connect(
        server.starttls_addr(),
        server.domain(),
        shared_ca().client_config(),
    )
    .await;
    raw.starttls().await;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
    raw.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
    ))
    .await;
    raw.expect("<success").await;
    raw.open_stream().await;
    raw.send(
        "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>desk</resource></bind></iq>",
    )
    .await;
    raw.expect("</iq>").await;
    raw
}

/// Pings the server on a raw session and expects the result (XEP-0199).
async fn expect_ping_answered(raw: &mut RawClient, id: &str) {
    raw.send(&format!(
        "<iq type='get' id='{id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
    ))
    .await;
    let answer = raw.expect("/>").await;
    assert!(
        answer.contains(&format!("id='{id}'")) && answer.contains("type='result'"),
        "{answer}"
    );
}

/// Waits until the server ends the stream with `not-authorized` (RFC 6120 §4.9.3.12).
async fn expect_closed_not_authorized(raw: &mut RawClient) {
    let received = raw.expect("</stream:stream>").await;
    assert!(
        received.contains("<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"),
        "the stream ended without a not-authorized stream error: {received:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_user_logs_in_with_plain_over_tls() {
    let Some(slapd) = slapd() else { return };
    let mut server = ldap_server(slapd.ldap_config()).await;
    let offered = try_login(&server, "alice", "alice-secret")
        .await
        .expect("alice authenticates");
    assert_eq!(
        offered.into_iter().collect::<Vec<_>>(),
        ["PLAIN"],
        "LDAP holds no SCRAM keys"
    );
    // The localpart is case-folded (PRECIS) before the directory is asked.
    try_login(&server, "Alice", "alice-secret")
        .await
        .expect("ALICE is alice");
    let mut alice = XmppClient::login(&server, "alice", "alice-secret", "laptop").await;
    assert_eq!(alice.jid, full("alice@localhost/laptop"));
    alice
        .iq_ok(None, IqRequest::Get(xml("<ping xmlns='urn:xmpp:ping'/>")))
        .await;
    alice.logout().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_disabled_colliding_and_unknown_users_are_refused() {
    let Some(slapd) = slapd() else { return };
    let mut server = ldap_server(slapd.ldap_config()).await;
    for (user, password, why) in [
        ("alice", "bob-secret", "a wrong password"),
        ("carol", "carol-secret", "a locked account (pwdAccountLockedTime)"),
        ("zoe", "zoe-secret", "two entries claim zoe"),
        ("mallory", "mallory-secret", "no such entry"),
        ("bob", "BOB-SECRET", "passwords are case-sensitive"),
    ] {
        let result = try_login(&server, user, password).await;
        assert!(
            refused_with(result, SaslCondition::NotAuthorized),
            "{why}: {user} was not refused"
        );
    }
    try_login(&server, "bob", "bob-secret")
        .await
        .expect("bob's own password works");
    server.stop().await;
}

/// RFC 4515 escaping: a name full of filter syntax matches itself literally, nobody else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_syntax_in_a_username_cannot_log_in_as_someone_else() {
    let Some(slapd) = slapd() else { return };
    let mut server = ldap_server(slapd.ldap_config()).await;
    for user in ["al*", "*", "*)(uid=*", "alice)(|(uid=*"] {
        let result = try_login(&server, user, "alice-secret").await;
        assert!(
            refused_with(result, SaslCondition::NotAuthorized),
            "{user:?} logged in"
        );
    }
    server.stop().await;
}

/// Logs dave in on a raw stream, disables him with `ldapmodify` (ppolicy lock), waits for the
/// server to end his session with `not-authorized`, and checks he can't log in again while
/// alice is untouched. Returns the time from `ldapmodify` to the stream error.
async fn disable_online_user(slapd: &Slapd, ldap: LdapConfig) -> Duration {
    let mut server = ldap_server(ldap).await;
    let mut dave = raw_session(&server, "dave", "dave-secret").await;
    let mut alice = XmppClient::login(&server, "alice", "alice-secret", "desk").await;

    let disabled_at = Instant::now();
    slapd
        .ldapmodify(
            "dn: uid=dave,ou=people,dc=example,dc=com\nchangetype: modify\nadd: pwdAccountLockedTime\n\
             pwdAccountLockedTime: 000001010000Z\n",
        )
        .expect("ldapmodify");
    expect_closed_not_authorized(&mut dave).await;
    let took = disabled_at.elapsed();
    let result = try_login(&server, "dave", "dave-secret").await;
    assert!(
        refused_with(result, SaslCondition::NotAuthorized),
        "dave can still log in"
    );
    // Everyone else is untouched.
    alice
        .iq_ok(None, IqRequest::Get(xml("<ping xmlns='urn:xmpp:ping'/>")))
        .await;
    server.stop().await;
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_an_online_user_closes_the_session_and_blocks_login() {
    let Some(slapd) = slapd() else { return };
    // Polling only: the path for servers without syncrepl (Active Directory).
    let ldap = LdapConfig {
        syncrepl: LdapSyncrepl::Off,
        ..slapd.ldap_config()
    };
    let poll = ldap.poll_interval.get();
    let took = disable_online_user(&slapd, ldap).await;
    eprintln!("MEASURED: ldapmodify to session closed, polling: {took:?} (poll interval {poll:?})");
    assert!(took < poll * 2 + Duration::from_secs(2), "closing took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncrepl_closes_a_disabled_users_session_long_before_the_poll() {
    let Some(slapd) = slapd() else { return };
    // The fixture's slapd runs the syncprov overlay. Polling and full reads are pushed out of
    // the test's reach, so only the RFC 4533 persist search can deliver the change in time.
    let ldap = LdapConfig {
        syncrepl: LdapSyncrepl::Auto,
        poll_interval: parley_config::Duration::from_secs(60),
        full_sync_interval: parley_config::Duration::from_secs(3600),
        ..slapd.ldap_config()
    };
    let took = disable_online_user(&slapd, ldap).await;
    eprintln!("MEASURED: ldapmodify to session closed, syncrepl: {took:?} (poll interval 60s)");
    assert!(took < Duration::from_secs(2), "closing took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_online_user_closes_the_session() {
    let Some(slapd) = slapd() else { return };
    let ldap = LdapConfig {
        // The change poll (fast in the fixture) must notice a deletion by itself; the full
        // read is pushed far out so it can't be what finds it.
        full_sync_interval: parley_config::Duration::from_secs(3600),
        ..slapd.ldap_config()
    };
    let mut server = ldap_server(ldap).await;
    let mut erin = raw_session(&server, "erin", "erin-secret").await;
    slapd
        .ldapdelete("uid=erin,ou=people,dc=example,dc=com")
        .expect("ldapdelete");
    expect_closed_not_authorized(&mut erin).await;
    let result = try_login(&server, "erin", "erin-secret").await;
    assert!(
        refused_with(result, SaslCondition::NotAuthorized),
        "a deleted user logged in"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_outage_keeps_sessions_and_refuses_logins_temporarily() {
    let Some(mut slapd) = slapd() else { return };
    let ldap = slapd.ldap_config();
    let health = ldap.health_check_interval.get();
    let mut server = ldap_server(ldap).await;
    let mut alice = raw_session(&server, "alice", "alice-secret").await;

    slapd.stop();
    let result = try_login(&server, "bob", "bob-secret").await;
    assert!(
        refused_with(result, SaslCondition::TemporaryAuthFailure),
        "a directory outage must be temporary-auth-failure"
    );
    // Several polls and health checks fail during the outage; alice stays online and served.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    expect_ping_answered(&mut alice, "during").await;

    slapd.start().expect("slapd restarts");
    let restarted = Instant::now();
    loop {
        match try_login(&server, "bob", "bob-secret").await {
            Ok(_) => break,
            Err(error) => assert!(
                restarted.elapsed() < health * 4 + Duration::from_secs(5),
                "logins did not come back after the restart: {error:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "MEASURED: logins restored {:?} after slapd restarted",
        restarted.elapsed()
    );
    expect_ping_answered(&mut alice, "after").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_work_when_the_first_of_two_servers_is_down() {
    let Some(slapd) = slapd() else { return };
    let dead = format!("ldap://127.0.0.1:{}", free_port().expect("a free port"));
    let ldap = LdapConfig {
        servers: vec![dead, slapd.ldap_url()],
        ..slapd.ldap_config()
    };
    let mut server = ldap_server(ldap).await;
    for _ in 0..3 {
        try_login(&server, "alice", "alice-secret")
            .await
            .expect("alice logs in through the second server");
    }
    let result = try_login(&server, "alice", "wrong").await;
    assert!(refused_with(result, SaslCondition::NotAuthorized));
    server.stop().await;
}

/// A user bind reuses an earlier bind's connection (LDAP allows rebinding): twenty sequential
/// logins, right and wrong passwords alike, keep using one connection, and the answers stay
/// right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_binds_reuse_their_connections() {
    let Some(slapd) = slapd() else { return };
    let directory = LdapDirectory::start(&slapd.ldap_config())
        .await
        .expect("the directory starts");
    assert_eq!(directory.idle_bind_connections(), 0);
    for round in 0..10 {
        assert_eq!(
            directory.authenticate("alice", "alice-secret").await.unwrap(),
            AuthOutcome::Accepted,
            "round {round}"
        );
        assert_eq!(
            directory.authenticate("alice", "wrong").await.unwrap(),
            AuthOutcome::Rejected,
            "round {round}"
        );
        // One at a time, every bind took the connection the one before left.
        assert_eq!(directory.idle_bind_connections(), 1, "round {round}");
    }
}

/// An Active-Directory-like layout over LDAPS: `sAMAccountName` logins, the
/// `userAccountControl` disabled bit, DNs with commas and spaces, `memberOf` groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_directory_layout_over_ldaps() {
    let Some(slapd) = slapd() else { return };
    let ad = slapd.ad_config();
    let directory = LdapDirectory::start(&ad).await.expect("the directory starts");
    let john = directory.person("jdoe").await.unwrap().expect("jdoe is mapped");
    assert_eq!(john.display_name.as_deref(), Some("John Doe"));
    assert_eq!(john.department.as_deref(), Some("Sales"));
    assert_eq!(john.groups, ["sales"]);
    assert_eq!(
        directory.members("sales").await.unwrap(),
        ["jdoe"],
        "jroe is disabled"
    );
    assert_eq!(
        directory.authenticate("jroe", "jroe-secret").await.unwrap(),
        AuthOutcome::Rejected
    );

    let mut server = ldap_server(ad).await;
    try_login(&server, "jdoe", "jdoe-secret")
        .await
        .expect("jdoe logs in over LDAPS");
    let result = try_login(&server, "jroe", "jroe-secret").await;
    assert!(
        refused_with(result, SaslCondition::NotAuthorized),
        "a disabled AD account logged in"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_maps_people_and_groups_of_every_kind() {
    let Some(slapd) = slapd() else { return };
    let directory = LdapDirectory::start(&slapd.ldap_config())
        .await
        .expect("the directory starts");
    let alice = directory.person("alice").await.unwrap().expect("alice is mapped");
    assert_eq!(alice.display_name.as_deref(), Some("Alice Liddell"));
    assert_eq!(alice.email.as_deref(), Some("alice@example.com"));
    assert_eq!(alice.department.as_deref(), Some("Engineering"));
    assert_eq!(alice.title.as_deref(), Some("Staff Engineer"));
    assert_eq!(alice.phone.as_deref(), Some("+1 555 0100"));
    assert_eq!(alice.groups, ["admins", "engineering", "posix-devs", "staff"]);
    assert!(alice.admin);
    assert!(!directory.person("bob").await.unwrap().expect("bob").admin);
    assert_eq!(directory.members("engineering").await.unwrap(), ["alice", "bob"]);
    assert_eq!(directory.members("staff").await.unwrap(), ["alice", "dave"]);
    assert_eq!(directory.members("posix-devs").await.unwrap(), ["alice", "erin"]);
    assert_eq!(
        directory.person("carol").await.unwrap(),
        None,
        "locked accounts get no JID"
    );
    assert_eq!(
        directory.person("zoe").await.unwrap(),
        None,
        "colliding entries get no JID"
    );
    let people: Vec<String> = directory
        .people()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.localpart)
        .collect();
    assert_eq!(people, ["alice", "bob", "dave", "erin"]);
    assert_eq!(
        directory.snapshot().problems.len(),
        2,
        "{:?}",
        directory.snapshot().problems
    );

    // A group change reaches subscribers within the poll interval.
    let mut changes = directory.subscribe();
    slapd
        .ldapmodify(
            "dn: cn=engineering,ou=groups,dc=example,dc=com\nchangetype: modify\nadd: member\n\
             member: uid=erin,ou=people,dc=example,dc=com\n",
        )
        .expect("ldapmodify");
    let change = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match changes.recv().await {
                Ok(parley_directory::DirectoryChange::GroupChanged(group)) => return group,
                Ok(_) => {}
                Err(error) => panic!("the feed ended: {error}"),
            }
        }
    })
    .await
    .expect("a GroupChanged within 5 s");
    assert_eq!(change, "engineering");
    assert_eq!(
        directory.members("engineering").await.unwrap(),
        ["alice", "bob", "erin"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_check_reports_matches_problems_and_one_user() {
    let Some(slapd) = slapd() else { return };
    let mut config = parley_config::Config::default();
    config.directory.backend = DirectoryBackend::Ldap;
    config.ldap = slapd.ldap_config();
    let mut out = Vec::new();
    parley_server::directory_check::run(&config, Some("alice"), &mut out)
        .await
        .expect("the check runs");
    let out = String::from_utf8(out).expect("UTF-8");
    for expected in [
        "users matching the filter: 4",
        "alice@localhost  \"Alice Liddell\"",
        "engineering: 2 member(s): alice, bob",
        "admins (admins): 1 member(s): alice",
        "entries without an account: 2",
        "uid=bad/name,ou=contractors,ou=people,dc=example,dc=com: no account",
        "\"zoe\" is claimed by 2 entries",
        "user \"alice\": uid=alice,ou=people,dc=example,dc=com",
        "title: Staff Engineer",
        "admin: yes",
        "vCard, as clients see it:",
        "<FN>Alice Liddell</FN>",
        "<TITLE>Staff Engineer</TITLE>",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }

    config.ldap.servers = vec![format!("ldap://127.0.0.1:{}", free_port().expect("a port"))];
    let failed = parley_server::directory_check::run(&config, None, &mut Vec::new()).await;
    assert!(failed.is_err(), "an unreachable directory is an error");
}

/// Login latency through LDAP (search + bind on a fresh TLS connection): prints figures.
/// Run with `cargo test -p parley-tests --test e2e -- --ignored --nocapture ldap_login_latency`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check: run it on purpose"]
async fn ldap_login_latency() {
    let Some(slapd) = slapd() else { return };
    let ldap = slapd.ldap_config();
    let directory = LdapDirectory::start(&ldap).await.expect("the directory starts");
    let mut samples = Vec::with_capacity(200);
    for _ in 0..200 {
        let started = Instant::now();
        let outcome = directory
            .authenticate("alice", "alice-secret")
            .await
            .expect("an answer");
        samples.push(started.elapsed());
        assert_eq!(outcome, AuthOutcome::Accepted);
    }
    report("LdapDirectory::authenticate", &mut samples);

    let mut server = ldap_server(ldap).await;
    let mut samples = Vec::with_capacity(200);
    for _ in 0..200 {
        let started = Instant::now();
        try_login(&server, "alice", "alice-secret")
            .await
            .expect("alice logs in");
        samples.push(started.elapsed());
    }
    report("XMPP connect + STARTTLS + SASL PLAIN via LDAP", &mut samples);
    server.stop().await;
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |fraction: f64| samples[((samples.len() as f64 * fraction) as usize).min(samples.len() - 1)];
    eprintln!(
        "MEASURED: {what}: {} logins, median {:?}, p99 {:?}, max {:?}",
        samples.len(),
        at(0.5),
        at(0.99),
        samples[samples.len() - 1]
    );
}

/// Waits (up to `within`) for the first change of the feed that `pick` accepts.
async fn next_change<T>(
    changes: &mut tokio::sync::broadcast::Receiver<parley_directory::DirectoryChange>,
    within: Duration,
    pick: impl Fn(parley_directory::DirectoryChange) -> Option<T>,
) -> Option<T> {
    tokio::time::timeout(within, async {
        loop {
            match changes.recv().await {
                Ok(change) => {
                    if let Some(found) = pick(change) {
                        return found;
                    }
                }
                Err(error) => panic!("the feed ended: {error}"),
            }
        }
    })
    .await
    .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncrepl_pushes_each_change_without_waiting_for_the_poll() {
    use parley_directory::DirectoryChange;
    let Some(slapd) = slapd() else { return };
    let directory = LdapDirectory::start(&LdapConfig {
        syncrepl: LdapSyncrepl::Auto,
        poll_interval: parley_config::Duration::from_secs(60),
        full_sync_interval: parley_config::Duration::from_secs(3600),
        ..slapd.ldap_config()
    })
    .await
    .expect("the directory starts");
    let mut changes = directory.subscribe();

    // The first change may be caught by the read that follows syncrepl's refresh phase; once
    // it is seen, that read is over, and only the persist search can deliver the next ones.
    slapd
        .ldapmodify(
            "dn: cn=engineering,ou=groups,dc=example,dc=com\nchangetype: modify\nadd: member\n\
             member: uid=erin,ou=people,dc=example,dc=com\n",
        )
        .expect("ldapmodify");
    let group = next_change(&mut changes, Duration::from_secs(5), |change| match change {
        DirectoryChange::GroupChanged(group) => Some(group),
        _ => None,
    })
    .await;
    assert_eq!(group.as_deref(), Some("engineering"));
    assert!(directory.syncrepl_active(), "the fixture's slapd runs syncprov");

    let disabled_at = Instant::now();
    slapd
        .ldapmodify(
            "dn: uid=dave,ou=people,dc=example,dc=com\nchangetype: modify\nadd: pwdAccountLockedTime\n\
             pwdAccountLockedTime: 000001010000Z\n",
        )
        .expect("ldapmodify");
    let disabled = next_change(&mut changes, Duration::from_secs(2), |change| match change {
        DirectoryChange::UserDisabled(user) => Some(user),
        _ => None,
    })
    .await;
    eprintln!(
        "MEASURED: ldapmodify to UserDisabled via syncrepl: {:?}",
        disabled_at.elapsed()
    );
    assert_eq!(
        disabled.as_deref(),
        Some("dave"),
        "no push within 2 s (poll is 60 s)"
    );
    assert_eq!(directory.person("dave").await.unwrap(), None);

    // A membership change on a group entry (its own base-scope sync search) is pushed too.
    slapd
        .ldapmodify(
            "dn: cn=posix-devs,ou=groups,dc=example,dc=com\nchangetype: modify\nadd: memberUid\n\
             memberUid: bob\n",
        )
        .expect("ldapmodify");
    // (Disabling dave also changed `staff`: wait for this group by name.)
    let group = next_change(&mut changes, Duration::from_secs(2), |change| match change {
        DirectoryChange::GroupChanged(group) if group == "posix-devs" => Some(group),
        _ => None,
    })
    .await;
    assert_eq!(
        group.as_deref(),
        Some("posix-devs"),
        "no push within 2 s (poll is 60 s)"
    );
    assert_eq!(
        directory.members("posix-devs").await.unwrap(),
        ["alice", "bob", "erin"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_syncprov_auto_falls_back_to_polling() {
    use parley_directory::DirectoryChange;
    if !Slapd::available() {
        return;
    }
    let slapd = Slapd::spawn_without_syncprov().expect("slapd starts");
    let ldap = LdapConfig {
        syncrepl: LdapSyncrepl::Auto,
        ..slapd.ldap_config()
    };
    let poll = ldap.poll_interval.get();
    let directory = LdapDirectory::start(&ldap).await.expect("the directory starts");
    let mut changes = directory.subscribe();
    let disabled_at = Instant::now();
    slapd
        .ldapmodify(
            "dn: uid=dave,ou=people,dc=example,dc=com\nchangetype: modify\nadd: pwdAccountLockedTime\n\
             pwdAccountLockedTime: 000001010000Z\n",
        )
        .expect("ldapmodify");
    let disabled = next_change(
        &mut changes,
        poll * 2 + Duration::from_secs(2),
        |change| match change {
            DirectoryChange::UserDisabled(user) => Some(user),
            _ => None,
        },
    )
    .await;
    eprintln!(
        "MEASURED: ldapmodify to UserDisabled via polling (no syncprov): {:?} (poll interval {poll:?})",
        disabled_at.elapsed()
    );
    assert_eq!(disabled.as_deref(), Some("dave"));
    assert!(
        !directory.syncrepl_active(),
        "a server without the Sync Request control can't be in syncrepl mode"
    );
}

/// The test slapd's start-up failures carry slapd's own words (its temp dir, with the log, is
/// gone by the time anyone reads the failure); a port taken before slapd binds it is the one the
/// first start works around by moving to fresh ports.
#[test]
fn a_slapd_that_cannot_bind_its_port_reports_why() {
    let Some(mut slapd) = slapd() else { return };
    slapd.stop();
    let _taken =
        std::net::TcpListener::bind(("127.0.0.1", slapd.ldap_port)).expect("the stopped slapd's port");
    let error = slapd.start().expect_err("a taken port stops slapd").to_string();
    assert!(error.contains("Address already in use"), "{error}");
    assert!(!slapd.is_running());
}

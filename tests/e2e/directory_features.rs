//! Directory-driven features end to end, with tokio-xmpp: shared roster groups (with presence
//! and live membership changes), vCards from the directory, user search (XEP-0055) and
//! admins. Each runs on the static users file and, where slapd is installed (always under
//! `CI=true`), on a real OpenLDAP.

use crate::client::harness::{XmppClient, bare, start_server, xml};
use base64::Engine;
use parley_config::{DirectoryBackend, LdapConfig, SharedGroupConfig};
use parley_directory::{Directory, LdapDirectory, PersonDetails, StaticDirectory};
use parley_testkit::{Slapd, TestServer};
use std::time::{Duration, Instant};
use tokio_xmpp::jid::Jid;
use tokio_xmpp::minidom::Element;
use tokio_xmpp::parsers::presence::Type as PresenceType;
use tokio_xmpp::parsers::roster::{Item, Roster, Subscription};
use tokio_xmpp::parsers::stanza_error::DefinedCondition;
use tokio_xmpp::{IqRequest, IqResponse};

const ROSTER: &str = "jabber:iq:roster";

fn slapd() -> Option<Slapd> {
    Slapd::available().then(|| Slapd::spawn().expect("slapd starts"))
}

fn shared(group: &str, name: &str) -> SharedGroupConfig {
    SharedGroupConfig {
        group: group.to_owned(),
        name: Some(name.to_owned()),
    }
}

/// Parley on the fixture's OpenLDAP, with `engineering` shown as the roster group "Engineering".
async fn ldap_server(ldap: LdapConfig) -> TestServer {
    start_server(move |config| {
        config.directory.backend = DirectoryBackend::Ldap;
        config.ldap = ldap;
        config.roster.shared_groups = vec![shared("engineering", "Engineering")];
    })
    .await
}

/// Adds people with details to the running server's users file, as `parley user add` would.
async fn add_people(server: &TestServer, people: &[(&str, &str, &[&str])]) {
    let directory = StaticDirectory::open(server.config.static_directory_path())
        .await
        .expect("the user file");
    for (localpart, display_name, groups) in people {
        directory
            .add_user(
                localpart,
                &format!("{localpart}-secret"),
                PersonDetails {
                    display_name: Some((*display_name).to_owned()),
                    email: Some(format!("{localpart}@example.com")),
                    department: Some("R&D".to_owned()),
                    title: Some("Engineer".to_owned()),
                    phone: Some("+1 555 0100".to_owned()),
                    groups: groups.iter().map(|g| (*g).to_owned()).collect(),
                    admin: false,
                },
            )
            .await
            .expect("adding a person");
    }
}

async fn roster_of(client: &mut XmppClient) -> Roster {
    let payload = client
        .iq_ok(None, IqRequest::Get(xml("<query xmlns='jabber:iq:roster'/>")))
        .await
        .expect("a roster result has a query");
    Roster::try_from(payload).expect("a valid roster")
}

fn item<'a>(roster: &'a Roster, jid: &str) -> Option<&'a Item> {
    roster.items.iter().find(|item| item.jid == bare(jid))
}

fn group_names(item: &Item) -> Vec<&str> {
    item.groups.iter().map(|group| group.0.as_str()).collect()
}

/// Waits for a roster push about `contact` with `subscription`; returns the pushed item.
async fn expect_push(client: &mut XmppClient, contact: &str, subscription: Subscription) -> Item {
    let contact = bare(contact);
    let payload = client
        .expect_iq_set(
            &format!("a roster push of {contact} ({subscription:?})"),
            |payload| {
                payload.is("query", ROSTER)
                    && Roster::try_from(payload.clone()).is_ok_and(|roster| {
                        roster
                            .items
                            .iter()
                            .any(|item| item.jid == contact && item.subscription == subscription)
                    })
            },
        )
        .await;
    let roster = Roster::try_from(payload).expect("a valid push");
    roster
        .items
        .into_iter()
        .find(|item| item.jid == contact)
        .expect("the pushed item")
}

/// Waits for available presence from any resource of `contact`.
async fn expect_available(client: &mut XmppClient, contact: &str) {
    let contact = bare(contact);
    client
        .expect_presence(&format!("available presence of {contact}"), |presence| {
            presence.type_ == PresenceType::None
                && presence
                    .from
                    .as_ref()
                    .is_some_and(|from| from.to_bare() == contact)
        })
        .await;
}

/// Waits for unavailable presence from `contact`.
async fn expect_unavailable(client: &mut XmppClient, contact: &str) {
    let contact = bare(contact);
    client
        .expect_presence(&format!("unavailable presence of {contact}"), |presence| {
            presence.type_ == PresenceType::Unavailable
                && presence
                    .from
                    .as_ref()
                    .is_some_and(|from| from.to_bare() == contact)
        })
        .await;
}

/// Logs in, fetches the roster (so roster pushes come) and sends initial presence.
async fn online(server: &TestServer, user: &str, password: &str) -> (XmppClient, Roster) {
    let mut client = XmppClient::login(server, user, password, "desk").await;
    let roster = roster_of(&mut client).await;
    client.send_initial_presence().await;
    (client, roster)
}

// ---- shared roster groups --------------------------------------------------------------------

/// Static users file: members of a shared group see each other (subscription `both`, the
/// directory's display name, the configured roster group) and each other's presence without a
/// subscription handshake; non-members see nothing; a personal item works beside them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_shared_group_members_see_each_other_with_presence() {
    let mut server = start_server(|config| {
        config.roster.shared_groups = vec![shared("team", "My Team")];
    })
    .await;
    add_people(
        &server,
        &[
            ("carol", "Carol Chen", &["team"]),
            ("dan", "Dan Dunn", &["team", "other"]),
            ("erin", "Erin Early", &["other"]),
        ],
    )
    .await;

    let (mut carol, carol_roster) = online(&server, "carol", "carol-secret").await;
    let dan_item = item(&carol_roster, "dan@localhost").expect("dan is on carol's roster");
    assert_eq!(dan_item.subscription, Subscription::Both);
    assert_eq!(dan_item.name.as_deref(), Some("Dan Dunn"));
    assert_eq!(group_names(dan_item), ["My Team"]);
    assert!(
        item(&carol_roster, "erin@localhost").is_none(),
        "erin is in no shared group with carol"
    );
    assert!(
        item(&carol_roster, "carol@localhost").is_none(),
        "nobody is their own contact"
    );

    let (mut dan, dan_roster) = online(&server, "dan", "dan-secret").await;
    assert_eq!(
        item(&dan_roster, "carol@localhost").map(|i| (i.subscription.clone(), i.name.clone())),
        Some((Subscription::Both, Some("Carol Chen".to_owned())))
    );
    // Dan's initial presence reaches carol (broadcast), and carol's reaches dan (probe answer).
    expect_available(&mut carol, "dan@localhost").await;
    expect_available(&mut dan, "carol@localhost").await;

    // A personal item beside the shared ones.
    carol
        .iq_ok(
            None,
            IqRequest::Set(xml(
                "<query xmlns='jabber:iq:roster'><item jid='erin@localhost' name='Erin (personal)'/></query>",
            )),
        )
        .await;
    let roster = roster_of(&mut carol).await;
    assert_eq!(
        item(&roster, "erin@localhost").map(|i| i.subscription.clone()),
        Some(Subscription::None)
    );
    assert_eq!(
        item(&roster, "dan@localhost").map(|i| i.subscription.clone()),
        Some(Subscription::Both)
    );

    // Dan logging off is seen by carol.
    dan.logout().await;
    expect_unavailable(&mut carol, "dan@localhost").await;
    carol.logout().await;
    server.stop().await;
}

/// A whole shared group logging in at once: every member gets every other member's presence
/// (probe answers and broadcasts arrive together while the roster is still being read), with the
/// smallest outbound queue `check-config` accepts (twice `max_shared_contacts`); no session is
/// closed as a slow consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_shared_group_logging_in_at_once_sees_every_presence() {
    const MEMBERS: usize = 24;
    let mut server = start_server(|config| {
        config.roster.shared_groups = vec![shared("floor", "Floor")];
        config.roster.max_shared_contacts = MEMBERS;
        config.c2s.outbound_queue = 2 * MEMBERS;
    })
    .await;
    let directory = StaticDirectory::open(server.config.static_directory_path())
        .await
        .expect("the user file");
    let people = (0..MEMBERS)
        .map(|n| {
            let details = PersonDetails {
                groups: vec!["floor".to_owned()],
                ..PersonDetails::default()
            };
            (format!("member{n}"), format!("member{n}-secret"), details)
        })
        .collect();
    directory.add_users(people).await.expect("adding the group");

    let server_ref = &server;
    let logins = (0..MEMBERS).map(|n| async move {
        let user = format!("member{n}");
        let (mut client, roster) = online(server_ref, &user, &format!("{user}-secret")).await;
        assert_eq!(roster.items.len(), MEMBERS - 1, "{user}'s roster");
        let own = bare(&format!("{user}@localhost"));
        let mut seen = std::collections::HashSet::new();
        while seen.len() < MEMBERS - 1 {
            let presence = client
                .expect_presence(&format!("{user}: presence of every member"), |presence| {
                    presence.type_ == PresenceType::None
                        && presence.from.as_ref().is_some_and(|from| from.to_bare() != own)
                })
                .await;
            seen.extend(presence.from.map(|from| from.to_bare()));
        }
        client
    });
    let clients = futures_util::future::join_all(logins).await;
    for client in clients {
        client.logout().await;
    }
    server.stop().await;
}

/// Static users file: a person added to the group while members are online is pushed to them
/// (subscription `both`), and they see the newcomer's presence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_group_membership_change_pushes_roster_items() {
    let mut server = start_server(|config| {
        config.roster.shared_groups = vec![shared("team", "Team")];
    })
    .await;
    add_people(
        &server,
        &[("carol", "Carol Chen", &["team"]), ("dan", "Dan Dunn", &["team"])],
    )
    .await;
    let (mut carol, _) = online(&server, "carol", "carol-secret").await;
    expect_roster_contains_soon(&mut carol, "dan@localhost").await;

    add_people(&server, &[("fay", "Fay Fox", &["team"])]).await;
    // The server reads the users file again when it is next asked something; fay's login does.
    let (mut fay, _) = online(&server, "fay", "fay-secret").await;
    let pushed = expect_push(&mut carol, "fay@localhost", Subscription::Both).await;
    assert_eq!(pushed.name.as_deref(), Some("Fay Fox"));
    assert_eq!(group_names(&pushed), ["Team"]);
    expect_available(&mut carol, "fay@localhost").await;
    expect_available(&mut fay, "carol@localhost").await;
    fay.logout().await;
    carol.logout().await;
    server.stop().await;
}

/// The users file is re-read at most once a second: ask until `contact` shows.
async fn expect_roster_contains_soon(client: &mut XmppClient, contact: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let roster = roster_of(client).await;
        if item(&roster, contact).is_some() {
            return;
        }
        assert!(Instant::now() < deadline, "{contact} never showed: {roster:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// OpenLDAP: `engineering` (groupOfNames) members alice and bob see each other with the
/// directory's `cn` and presence; `ldapmodify` adding dave pushes him to alice within the poll
/// interval, and pushes alice and bob to dave, with presence both ways; removing him pushes
/// `remove` and his unavailable presence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldap_shared_group_and_membership_changes() {
    let Some(slapd) = slapd() else { return };
    let ldap = slapd.ldap_config();
    let poll = ldap.poll_interval.get();
    let mut server = ldap_server(ldap).await;

    let (mut alice, alice_roster) = online(&server, "alice", "alice-secret").await;
    let bob_item = item(&alice_roster, "bob@localhost").expect("bob is on alice's roster");
    assert_eq!(bob_item.subscription, Subscription::Both);
    assert_eq!(bob_item.name.as_deref(), Some("Bob Builder"));
    assert_eq!(group_names(bob_item), ["Engineering"]);
    assert!(item(&alice_roster, "dave@localhost").is_none());
    let (mut bob, _) = online(&server, "bob", "bob-secret").await;
    expect_available(&mut alice, "bob@localhost").await;
    expect_available(&mut bob, "alice@localhost").await;
    let (mut dave, dave_roster) = online(&server, "dave", "dave-secret").await;
    assert!(item(&dave_roster, "alice@localhost").is_none(), "{dave_roster:?}");

    let changed_at = Instant::now();
    slapd
        .ldapmodify(
            "dn: cn=engineering,ou=groups,dc=example,dc=com\nchangetype: modify\nadd: member\n\
             member: uid=dave,ou=people,dc=example,dc=com\n",
        )
        .expect("ldapmodify");
    let pushed = expect_push(&mut alice, "dave@localhost", Subscription::Both).await;
    let took = changed_at.elapsed();
    eprintln!("MEASURED: ldapmodify (group add) to roster push: {took:?} (poll interval {poll:?})");
    assert!(took < poll * 2 + Duration::from_secs(3), "the push took {took:?}");
    assert_eq!(pushed.name.as_deref(), Some("Dave Departing"));
    expect_push(&mut dave, "alice@localhost", Subscription::Both).await;
    expect_push(&mut dave, "bob@localhost", Subscription::Both).await;
    expect_available(&mut alice, "dave@localhost").await;
    expect_available(&mut dave, "alice@localhost").await;

    slapd
        .ldapmodify(
            "dn: cn=engineering,ou=groups,dc=example,dc=com\nchangetype: modify\ndelete: member\n\
             member: uid=dave,ou=people,dc=example,dc=com\n",
        )
        .expect("ldapmodify");
    expect_push(&mut alice, "dave@localhost", Subscription::Remove).await;
    expect_unavailable(&mut alice, "dave@localhost").await;
    expect_push(&mut dave, "alice@localhost", Subscription::Remove).await;
    let roster = roster_of(&mut alice).await;
    assert!(item(&roster, "dave@localhost").is_none(), "{roster:?}");
    assert!(item(&roster, "bob@localhost").is_some(), "{roster:?}");

    for client in [alice, bob, dave] {
        client.logout().await;
    }
    server.stop().await;
}

/// OpenLDAP: a changed display name is pushed to the online members who share a group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldap_display_name_change_is_pushed() {
    let Some(slapd) = slapd() else { return };
    let mut server = ldap_server(slapd.ldap_config()).await;
    let (mut alice, _) = online(&server, "alice", "alice-secret").await;
    slapd
        .ldapmodify(
            "dn: uid=bob,ou=people,dc=example,dc=com\nchangetype: modify\nreplace: cn\ncn: Robert Builder\n",
        )
        .expect("ldapmodify");
    let pushed = expect_push(&mut alice, "bob@localhost", Subscription::Both).await;
    assert_eq!(pushed.name.as_deref(), Some("Robert Builder"));
    alice.logout().await;
    server.stop().await;
}

// ---- vCards ----------------------------------------------------------------------------------

const VCARD: &str = "vcard-temp";

fn to(jid: &str) -> Option<Jid> {
    Some(Jid::from(bare(jid)))
}

fn text_at(element: &Element, path: &[&str]) -> Option<String> {
    let mut node = element;
    for name in path {
        node = node.get_child(name, VCARD)?;
    }
    Some(node.text())
}

async fn vcard_of(client: &mut XmppClient, jid: &str) -> Element {
    client
        .iq_ok(to(jid), IqRequest::Get(xml("<vCard xmlns='vcard-temp'/>")))
        .await
        .expect("a vCard result has a vCard")
}

/// XEP-0054 §3.2: setting a vCard the directory owns is refused with `not-allowed`.
async fn expect_vcard_set_refused(client: &mut XmppClient) {
    let answer = client
        .iq(
            None,
            IqRequest::Set(xml("<vCard xmlns='vcard-temp'><FN>Someone Else</FN></vCard>")),
        )
        .await;
    match answer {
        IqResponse::Error(error) => assert_eq!(error.defined_condition, DefinedCondition::NotAllowed),
        IqResponse::Result(payload) => panic!("a directory vCard was overwritten: {payload:?}"),
    }
}

/// Static users file: a person with details gets a read-only vCard from them; a person without
/// details keeps storing their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_vcards_come_from_the_directory_and_are_read_only() {
    let mut server = start_server(|_| {}).await;
    add_people(&server, &[("carol", "Carol Chen", &["team"])]).await;
    let mut carol = XmppClient::login(&server, "carol", "carol-secret", "desk").await;
    let mut alice = XmppClient::login(&server, "alice", "alice-secret", "desk").await;
    let vcard = vcard_of(&mut alice, "carol@localhost").await;
    assert_eq!(text_at(&vcard, &["FN"]).as_deref(), Some("Carol Chen"));
    assert_eq!(
        text_at(&vcard, &["EMAIL", "USERID"]).as_deref(),
        Some("carol@example.com")
    );
    assert_eq!(
        text_at(&vcard, &["TEL", "NUMBER"]).as_deref(),
        Some("+1 555 0100")
    );
    assert_eq!(text_at(&vcard, &["ORG", "ORGUNIT"]).as_deref(), Some("R&D"));
    assert_eq!(text_at(&vcard, &["TITLE"]).as_deref(), Some("Engineer"));
    expect_vcard_set_refused(&mut carol).await;
    assert_eq!(
        text_at(&vcard_of(&mut carol, "carol@localhost").await, &["FN"]).as_deref(),
        Some("Carol Chen")
    );
    // alice has no details in the directory: her own vCard is hers to set.
    alice
        .iq_ok(
            None,
            IqRequest::Set(xml("<vCard xmlns='vcard-temp'><FN>Alice Self</FN></vCard>")),
        )
        .await;
    assert_eq!(
        text_at(&vcard_of(&mut carol, "alice@localhost").await, &["FN"]).as_deref(),
        Some("Alice Self")
    );
    carol.logout().await;
    alice.logout().await;
    server.stop().await;
}

/// OpenLDAP: the vCard carries the mapped attributes, N from givenName/sn and PHOTO from
/// `jpegPhoto` (base64, TYPE image/jpeg); a changed title shows at the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldap_vcard_with_photo_is_read_only() {
    let Some(slapd) = slapd() else { return };
    let photo: Vec<u8> = [0xFF, 0xD8, 0xFF, 0xE0].into_iter().chain(0..=255u8).collect();
    let encoded = base64::engine::general_purpose::STANDARD.encode(&photo);
    slapd
        .ldapmodify(&format!(
            "dn: uid=alice,ou=people,dc=example,dc=com\nchangetype: modify\nadd: jpegPhoto\njpegPhoto:: {encoded}\n"
        ))
        .expect("ldapmodify");
    let mut server = ldap_server(slapd.ldap_config()).await;
    let mut bob = XmppClient::login(&server, "bob", "bob-secret", "desk").await;
    let vcard = vcard_of(&mut bob, "alice@localhost").await;
    assert_eq!(text_at(&vcard, &["FN"]).as_deref(), Some("Alice Liddell"));
    assert_eq!(text_at(&vcard, &["N", "GIVEN"]).as_deref(), Some("Alice"));
    assert_eq!(text_at(&vcard, &["N", "FAMILY"]).as_deref(), Some("Liddell"));
    assert_eq!(
        text_at(&vcard, &["EMAIL", "USERID"]).as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(
        text_at(&vcard, &["ORG", "ORGUNIT"]).as_deref(),
        Some("Engineering")
    );
    assert_eq!(text_at(&vcard, &["TITLE"]).as_deref(), Some("Staff Engineer"));
    assert_eq!(
        text_at(&vcard, &["TEL", "NUMBER"]).as_deref(),
        Some("+1 555 0100")
    );
    assert_eq!(text_at(&vcard, &["PHOTO", "TYPE"]).as_deref(), Some("image/jpeg"));
    assert_eq!(text_at(&vcard, &["PHOTO", "BINVAL"]), Some(encoded));
    expect_vcard_set_refused(&mut bob).await;

    slapd
        .ldapmodify(
            "dn: uid=alice,ou=people,dc=example,dc=com\nchangetype: modify\nreplace: title\ntitle: Principal Engineer\n",
        )
        .expect("ldapmodify");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let title = text_at(&vcard_of(&mut bob, "alice@localhost").await, &["TITLE"]);
        if title.as_deref() == Some("Principal Engineer") {
            break;
        }
        assert!(Instant::now() < deadline, "the new title never showed: {title:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bob.logout().await;
    server.stop().await;
}

// ---- search and admins -------------------------------------------------------------------------

fn found_jids(answer: &Element) -> Vec<String> {
    answer
        .children()
        .filter(|c| c.is("item", "jabber:iq:search"))
        .filter_map(|c| c.attr("jid").map(str::to_owned))
        .collect()
}

/// OpenLDAP: XEP-0055 is advertised, returns directory data, is case-insensitive, and never
/// shows a disabled (locked) user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldap_search_finds_directory_people_but_not_disabled_ones() {
    let Some(slapd) = slapd() else { return };
    let mut server = ldap_server(slapd.ldap_config()).await;
    let mut bob = XmppClient::login(&server, "bob", "bob-secret", "desk").await;
    let info = bob
        .iq_ok(
            to("localhost"),
            IqRequest::Get(xml("<query xmlns='http://jabber.org/protocol/disco#info'/>")),
        )
        .await
        .expect("disco info");
    assert!(
        info.children()
            .any(|f| f.is("feature", "http://jabber.org/protocol/disco#info")
                && f.attr("var") == Some("jabber:iq:search")),
        "jabber:iq:search is not advertised: {info:?}"
    );
    let form = bob
        .iq_ok(
            to("localhost"),
            IqRequest::Get(xml("<query xmlns='jabber:iq:search'/>")),
        )
        .await
        .expect("the search fields");
    assert!(form.get_child("last", "jabber:iq:search").is_some(), "{form:?}");

    let answer = bob
        .iq_ok(
            to("localhost"),
            IqRequest::Set(xml(
                "<query xmlns='jabber:iq:search'><last>LIDDELL</last></query>",
            )),
        )
        .await
        .expect("search results");
    assert_eq!(found_jids(&answer), ["alice@localhost"]);
    let alice = answer.children().next().expect("one item");
    assert_eq!(
        alice
            .get_child("first", "jabber:iq:search")
            .map(Element::text)
            .as_deref(),
        Some("Alice")
    );
    assert_eq!(
        alice
            .get_child("email", "jabber:iq:search")
            .map(Element::text)
            .as_deref(),
        Some("alice@example.com")
    );
    // carol is locked (pwdAccountLockedTime): not found by name or e-mail.
    for query in [
        "<query xmlns='jabber:iq:search'><nick>carol</nick></query>",
        "<query xmlns='jabber:iq:search'><email>carol@</email></query>",
    ] {
        let answer = bob
            .iq_ok(to("localhost"), IqRequest::Set(xml(query)))
            .await
            .expect("search results");
        assert!(found_jids(&answer).is_empty(), "{query} found {answer:?}");
    }
    let everyone = bob
        .iq_ok(
            to("localhost"),
            IqRequest::Set(xml(
                "<query xmlns='jabber:iq:search'><email>@example.com</email></query>",
            )),
        )
        .await
        .expect("search results");
    let everyone = found_jids(&everyone);
    assert!(everyone.contains(&"dave@localhost".to_owned()), "{everyone:?}");
    assert!(!everyone.contains(&"carol@localhost".to_owned()), "{everyone:?}");
    bob.logout().await;
    server.stop().await;
}

/// Admins are the members of the configured admin group, on both backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_are_the_admin_group_members() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let users = StaticDirectory::open(dir.path().join("users.toml"))
        .await
        .expect("a users file");
    users
        .add_user(
            "root",
            "root-secret",
            PersonDetails {
                admin: true,
                ..PersonDetails::default()
            },
        )
        .await
        .expect("adding an admin");
    users
        .add_user("pleb", "pleb-secret", PersonDetails::default())
        .await
        .expect("adding a user");
    assert!(users.is_admin("root").await.expect("an answer"));
    assert!(!users.is_admin("pleb").await.expect("an answer"));
    assert!(!users.is_admin("nobody").await.expect("an answer"));

    let Some(slapd) = slapd() else { return };
    let ldap = LdapDirectory::start(&slapd.ldap_config())
        .await
        .expect("the LDAP directory");
    assert!(
        ldap.is_admin("alice").await.expect("an answer"),
        "alice is in cn=admins"
    );
    assert!(!ldap.is_admin("bob").await.expect("an answer"));
    assert!(
        !ldap.is_admin("carol").await.expect("an answer"),
        "a locked user is nobody"
    );
}

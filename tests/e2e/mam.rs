//! Message Archive Management (XEP-0313) as a user's client sees it: history paged forwards and
//! backwards with exact RSM counts, filters, stanza-ids that are MAM ids, and preferences that
//! hide a contact from the user while compliance still keeps everything.

use std::process::Command;

use parley_testkit::parley_binary;
use tokio_xmpp::jid::Jid;
use tokio_xmpp::minidom::Element;
use tokio_xmpp::parsers::message::Message;
use tokio_xmpp::parsers::stanza_error::DefinedCondition;
use tokio_xmpp::{IqRequest, IqResponse, Stanza};

use parley_directory::{PersonDetails, StaticDirectory};

use crate::client::harness::{XmppClient, bare, start_server, xml};

const MAM: &str = "urn:xmpp:mam:2";
const RSM: &str = "http://jabber.org/protocol/rsm";
const FORWARD: &str = "urn:xmpp:forward:0";
const DELAY: &str = "urn:xmpp:delay";
const SID: &str = "urn:xmpp:sid:0";

fn chat(to: &str, body: &str) -> Message {
    Message::chat(Some(Jid::from(bare(to)))).with_body(Default::default(), body.to_owned())
}

fn body_of(message: &Message) -> Option<String> {
    message.get_best_body_cloned(vec![]).map(|(_, body)| body)
}

/// One archived message as a MAM result shows it.
#[derive(Debug, Clone)]
struct Archived {
    id: String,
    stamp: String,
    body: String,
}

/// A finished query: its results in order and the `<fin/>`.
struct Page {
    results: Vec<Archived>,
    fin: Element,
}

impl Page {
    fn bodies(&self) -> Vec<&str> {
        self.results.iter().map(|r| r.body.as_str()).collect()
    }
    fn rsm(&self, name: &str) -> Option<String> {
        self.fin
            .get_child("set", RSM)
            .and_then(|set| set.get_child(name, RSM))
            .map(Element::text)
    }
    fn index(&self) -> Option<String> {
        self.fin
            .get_child("set", RSM)
            .and_then(|set| set.get_child("first", RSM))
            .and_then(|first| first.attr("index"))
            .map(str::to_owned)
    }
    fn complete(&self) -> bool {
        self.fin.attr("complete") == Some("true")
    }
}

fn field(var: &str, value: &str) -> String {
    format!("<field var='{var}'><value>{value}</value></field>")
}

fn query_xml(query_id: &str, fields: &str, rsm: &str) -> Element {
    xml(&format!(
        "<query xmlns='{MAM}' queryid='{query_id}'><x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE' type='hidden'><value>{MAM}</value></field>{fields}</x>\
         <set xmlns='{RSM}'>{rsm}</set></query>"
    ))
}

/// Runs a query and collects its results, which arrive before the IQ result.
async fn query(client: &mut XmppClient, fields: &str, rsm: &str) -> Page {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let query_id = format!("q{}", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let fin = client
        .iq_ok(None, IqRequest::Set(query_xml(&query_id, fields, rsm)))
        .await
        .expect("a fin");
    assert!(fin.is("fin", MAM), "{fin:?}");
    assert_eq!(fin.attr("queryid"), Some(query_id.as_str()));
    let mut results = Vec::new();
    // Results were sent before the fin, so they are all in the client's inbox by now: take them
    // until the one whose id the fin names last.
    let last = fin
        .get_child("set", RSM)
        .and_then(|set| set.get_child("last", RSM))
        .map(Element::text);
    if let Some(last) = last {
        loop {
            let own = bare(&client.bare().to_string());
            let archived = client
                .expect("a MAM result", |stanza| match stanza {
                    Stanza::Message(message) => result_of(message, &query_id, &own),
                    _ => None,
                })
                .await;
            let done = archived.id == last;
            results.push(archived);
            if done {
                break;
            }
        }
        let first = fin
            .get_child("set", RSM)
            .and_then(|set| set.get_child("first", RSM))
            .map(Element::text);
        assert_eq!(
            first.as_deref(),
            Some(results[0].id.as_str()),
            "first names the first result"
        );
    }
    Page { results, fin }
}

fn result_of(message: &Message, query_id: &str, own: &tokio_xmpp::jid::BareJid) -> Option<Archived> {
    let result = message
        .payloads
        .iter()
        .find(|payload| payload.is("result", MAM) && payload.attr("queryid") == Some(query_id))?;
    assert_eq!(
        message.from.as_ref().map(|from| from.to_bare()),
        Some(own.clone()),
        "results come from the user's own archive"
    );
    let forwarded = result.get_child("forwarded", FORWARD).expect("forwarded");
    let stamp = forwarded
        .get_child("delay", DELAY)
        .and_then(|delay| delay.attr("stamp"))
        .expect("a delay stamp")
        .to_owned();
    let inner = forwarded
        .get_child("message", "jabber:client")
        .expect("the archived message");
    Some(Archived {
        id: result.attr("id").expect("a result id").to_owned(),
        stamp,
        body: inner
            .get_child("body", "jabber:client")
            .map(Element::text)
            .unwrap_or_default(),
    })
}

/// Both online and available, so messages to their bare JIDs are delivered (RFC 6121 §8.5.2.1).
async fn alice_and_bob(server: &parley_testkit::TestServer) -> (XmppClient, XmppClient) {
    let mut alice = XmppClient::login(server, "alice", "alice-secret", "phone").await;
    alice.send_initial_presence().await;
    alice
        .iq_ok(None, IqRequest::Get(xml("<ping xmlns='urn:xmpp:ping'/>")))
        .await;
    let mut bob = XmppClient::login(server, "bob", "bob-secret", "laptop").await;
    bob.send_initial_presence().await;
    bob.iq_ok(None, IqRequest::Get(xml("<ping xmlns='urn:xmpp:ping'/>")))
        .await;
    (alice, bob)
}

/// alice sends `bodies` to bob; returns when bob has them all (so they are archived), with the
/// stanza-id bob's server stamped on each.
async fn exchange(alice: &mut XmppClient, bob: &mut XmppClient, bodies: &[String]) -> Vec<String> {
    for body in bodies {
        alice.send(chat("bob@localhost", body)).await;
    }
    let mut stanza_ids = Vec::new();
    for body in bodies {
        let delivered = bob
            .expect_message("a chat from alice", |m| body_of(m).as_deref() == Some(body))
            .await;
        let id = delivered
            .payloads
            .iter()
            .find(|payload| payload.is("stanza-id", SID) && payload.attr("by") == Some("bob@localhost"))
            .and_then(|payload| payload.attr("id"))
            .expect("a stanza-id by bob's archive")
            .to_owned();
        stanza_ids.push(id);
    }
    stanza_ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mam_pages_forwards_and_backwards_with_exact_counts() {
    let mut server = start_server(|_| {}).await;
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    let bodies: Vec<String> = (1..=7).map(|n| format!("message {n}")).collect();
    let stamped = exchange(&mut alice, &mut bob, &bodies).await;

    let first = query(&mut alice, "", "<max>3</max>").await;
    assert_eq!(first.bodies(), ["message 1", "message 2", "message 3"]);
    assert_eq!(first.rsm("count").as_deref(), Some("7"));
    assert_eq!(first.index().as_deref(), Some("0"));
    assert!(!first.complete());
    let second = query(
        &mut alice,
        "",
        &format!("<max>3</max><after>{}</after>", first.results[2].id),
    )
    .await;
    assert_eq!(second.bodies(), ["message 4", "message 5", "message 6"]);
    // XEP-0059 §2.6: `index` is optional; inside the archive it would cost a count by reading.
    assert_eq!(second.index(), None);
    assert_eq!(second.rsm("count").as_deref(), Some("7"));
    let third = query(
        &mut alice,
        "",
        &format!("<max>3</max><after>{}</after>", second.results[2].id),
    )
    .await;
    assert_eq!(third.bodies(), ["message 7"]);
    assert!(third.complete(), "the last page forwards is complete");

    let last = query(&mut alice, "", "<max>3</max><before/>").await;
    assert_eq!(last.bodies(), ["message 5", "message 6", "message 7"]);
    assert_eq!(last.index().as_deref(), Some("4"));
    assert_eq!(last.rsm("count").as_deref(), Some("7"));
    assert!(!last.complete());
    let earlier = query(
        &mut alice,
        "",
        &format!("<max>3</max><before>{}</before>", last.results[0].id),
    )
    .await;
    assert_eq!(earlier.bodies(), ["message 2", "message 3", "message 4"]);
    assert_eq!(earlier.index(), None);
    let earliest = query(
        &mut alice,
        "",
        &format!("<max>3</max><before>{}</before>", earlier.results[0].id),
    )
    .await;
    assert_eq!(earliest.bodies(), ["message 1"]);
    assert!(earliest.complete(), "the first page backwards is complete");

    // XEP-0359: what bob's client saw as stanza-ids are the ids in bob's own archive.
    let bobs = query(&mut bob, "", "").await;
    let bob_ids: Vec<&str> = bobs.results.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(bob_ids, stamped.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(bobs.complete());

    // An unknown id is item-not-found (XEP-0313 §4.1.4 / RSM §2.6).
    let unknown = alice
        .iq(
            None,
            IqRequest::Set(query_xml("bad", "", "<after>999999999</after>")),
        )
        .await;
    match unknown {
        IqResponse::Error(error) => assert_eq!(error.defined_condition, DefinedCondition::ItemNotFound),
        IqResponse::Result(payload) => panic!("an unknown id was accepted: {payload:?}"),
    }
    alice.logout().await;
    bob.logout().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mam_filters_by_with_start_and_end_and_is_advertised() {
    let mut server = start_server(|_| {}).await;
    server.add_user("carol", "carol-secret").await;
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    let mut carol = XmppClient::login(&server, "carol", "carol-secret", "tablet").await;
    carol.send_initial_presence().await;
    carol
        .iq_ok(None, IqRequest::Get(xml("<ping xmlns='urn:xmpp:ping'/>")))
        .await;
    exchange(&mut alice, &mut bob, &["to bob 1".into()]).await;
    alice.send(chat("carol@localhost", "to carol 1")).await;
    carol
        .expect_message("carol's chat", |m| body_of(m).as_deref() == Some("to carol 1"))
        .await;
    exchange(&mut alice, &mut bob, &["to bob 2".into()]).await;

    let with_bob = query(&mut alice, &field("with", "bob@localhost"), "").await;
    assert_eq!(with_bob.bodies(), ["to bob 1", "to bob 2"]);
    assert_eq!(with_bob.rsm("count").as_deref(), Some("2"));
    let with_carol = query(&mut alice, &field("with", "carol@localhost"), "").await;
    assert_eq!(with_carol.bodies(), ["to carol 1"]);

    let all = query(&mut alice, "", "").await;
    assert_eq!(all.results.len(), 3);
    // From the second message's time to the third's: what the stamps say falls in between.
    let (start, end) = (&all.results[1].stamp, &all.results[2].stamp);
    let ranged = query(
        &mut alice,
        &format!("{}{}", field("start", start), field("end", end)),
        "",
    )
    .await;
    let expected: Vec<&str> = all
        .results
        .iter()
        .filter(|r| r.stamp >= *start && r.stamp <= *end)
        .map(|r| r.body.as_str())
        .collect();
    assert_eq!(ranged.bodies(), expected);
    assert!(ranged.bodies().contains(&"to bob 2"));
    assert!(!ranged.bodies().contains(&"to bob 1") || all.results[0].stamp == *start);

    let after = query(&mut alice, &field("after-id", &all.results[0].id), "").await;
    assert_eq!(after.bodies(), ["to carol 1", "to bob 2"]);
    assert_eq!(after.rsm("count").as_deref(), Some("2"));

    // XEP-0313 §4.1.1: a full JID in `with` matches only messages to or from exactly it.
    carol.send(chat("alice@localhost", "from carol's tablet")).await;
    alice
        .expect_message("carol's reply", |m| {
            body_of(m).as_deref() == Some("from carol's tablet")
        })
        .await;
    let with_tablet = query(&mut alice, &field("with", "carol@localhost/tablet"), "").await;
    assert_eq!(with_tablet.bodies(), ["from carol's tablet"]);
    assert_eq!(with_tablet.rsm("count").as_deref(), Some("1"));
    let with_carol = query(&mut alice, &field("with", "carol@localhost"), "").await;
    assert_eq!(with_carol.bodies(), ["to carol 1", "from carol's tablet"]);

    let info = alice
        .iq_ok(
            Some(bare("alice@localhost").into()),
            IqRequest::Get(xml("<query xmlns='http://jabber.org/protocol/disco#info'/>")),
        )
        .await
        .expect("disco info");
    let features: Vec<&str> = info
        .children()
        .filter(|child| child.name() == "feature")
        .filter_map(|child| child.attr("var"))
        .collect();
    for wanted in [MAM, "urn:xmpp:mam:2#extended", SID] {
        assert!(features.contains(&wanted), "{wanted} in {features:?}");
    }
    alice.logout().await;
    bob.logout().await;
    carol.logout().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mam_prefs_never_hide_a_contact_from_the_user_but_not_from_compliance() {
    let mut server = start_server(|_| {}).await;
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    exchange(&mut alice, &mut bob, &["secret plan".into(), "lunch?".into()]).await;
    // bob answers, so both directions are in alice's archive.
    bob.send(chat("alice@localhost", "sure")).await;
    alice
        .expect_message("bob's answer", |m| body_of(m).as_deref() == Some("sure"))
        .await;

    let prefs = alice
        .iq_ok(
            None,
            IqRequest::Set(xml(&format!(
                "<prefs xmlns='{MAM}' default='always'><always/><never><jid>bob@localhost</jid></never></prefs>"
            ))),
        )
        .await
        .expect("the stored prefs");
    assert_eq!(prefs.attr("default"), Some("always"));
    let got = alice
        .iq_ok(None, IqRequest::Get(xml(&format!("<prefs xmlns='{MAM}'/>"))))
        .await
        .expect("prefs");
    let never: Vec<String> = got
        .get_child("never", MAM)
        .expect("a never list")
        .children()
        .map(Element::text)
        .collect();
    assert_eq!(never, ["bob@localhost"]);

    let hidden = query(&mut alice, "", "").await;
    assert!(hidden.results.is_empty(), "bob is hidden: {:?}", hidden.bodies());
    assert_eq!(hidden.rsm("count").as_deref(), Some("0"));
    assert!(hidden.complete());
    // bob's own view is his own business: his archive still shows the conversation.
    let bobs = query(&mut bob, "", "").await;
    assert_eq!(bobs.bodies(), ["secret plan", "lunch?", "sure"]);
    alice.logout().await;
    bob.logout().await;

    // The compliance officer's `parley archive search` still finds all of it.
    server.stop().await;
    let config = server.dir.path().join("parley.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ndomain = \"localhost\"\ndata_dir = {:?}\n",
            server.config.server.data_dir
        ),
    )
    .expect("a config for the CLI");
    let output = Command::new(parley_binary())
        .arg("--config")
        .arg(&config)
        .args([
            "archive",
            "search",
            "--participant",
            "alice@localhost",
            "--participant",
            "bob@localhost",
            "--actor",
            "compliance-officer",
        ])
        .output()
        .expect("running parley archive search");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.starts_with("3 messages\n"), "{stdout}");
    let bodies: Vec<&str> = stdout
        .lines()
        .filter(|line| line.starts_with('#'))
        .filter_map(|line| line.rsplit('\t').next())
        .collect();
    assert_eq!(bodies, ["secret plan", "lunch?", "sure"], "{stdout}");
}

/// XEP-0313 §6.1: with `default='roster'`, the user's own history shows only conversations with
/// the contacts on their roster; switching back to `always` shows everything again, because
/// preferences never change what is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mam_prefs_roster_default_shows_only_roster_contacts() {
    let mut server = start_server(|_| {}).await;
    StaticDirectory::open(server.config.static_directory_path())
        .await
        .expect("the user file")
        .add_user("carol", "carol-secret", PersonDetails::default())
        .await
        .expect("adding carol");
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    // bob is on alice's roster, carol is not.
    alice
        .iq_ok(
            None,
            IqRequest::Set(xml(
                "<query xmlns='jabber:iq:roster'><item jid='bob@localhost' name='Bob'/></query>",
            )),
        )
        .await;
    let mut carol = XmppClient::login(&server, "carol", "carol-secret", "desk").await;
    for (sender, body) in [(&mut bob, "from bob"), (&mut carol, "from carol")] {
        sender.send(chat("alice@localhost", body)).await;
        alice
            .expect_message(body, |m| body_of(m).as_deref() == Some(body))
            .await;
    }

    let set_default =
        |default: &str| IqRequest::Set(xml(&format!("<prefs xmlns='{MAM}' default='{default}'/>")));
    alice.iq_ok(None, set_default("roster")).await;
    let page = query(&mut alice, "", "").await;
    assert_eq!(page.bodies(), ["from bob"], "only the roster contact");
    assert_eq!(page.rsm("count").as_deref(), Some("1"));

    alice.iq_ok(None, set_default("always")).await;
    let page = query(&mut alice, "", "").await;
    assert_eq!(page.bodies(), ["from bob", "from carol"]);

    for client in [alice, bob, carol] {
        client.logout().await;
    }
    server.stop().await;
}

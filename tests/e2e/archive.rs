//! The compliance archive end to end: what real clients send is archived, stamped with a
//! XEP-0359 stanza-id, survives a SIGKILL of the server process, and verifies as intact.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use parley_directory::{PersonDetails, StaticDirectory};
use parley_testkit::parley_binary;
use tokio_xmpp::connect::StartTlsServerConnector;
use tokio_xmpp::jid::{FullJid, Jid};
use tokio_xmpp::minidom::Element;
use tokio_xmpp::parsers::iq::Iq;
use tokio_xmpp::parsers::message::{Message, MessageType};
use tokio_xmpp::xmlstream::Timeouts;
use tokio_xmpp::{Client, Event, IqRequest, Stanza};

use crate::client::harness::{
    EVENT_TIMEOUT, XmppClient, addr_config, bare, full, shared_ca, start_server, trust_shared_ca, xml,
};

const SID: &str = "urn:xmpp:sid:0";

fn chat(to: &str, body: &str) -> Message {
    let to = if to.contains('/') {
        Jid::from(full(to))
    } else {
        Jid::from(bare(to))
    };
    Message::chat(Some(to)).with_body(Default::default(), body.to_owned())
}

fn body_of(message: &Message) -> Option<String> {
    message.get_best_body_cloned(vec![]).map(|(_, body)| body)
}

/// The `(by, id)` of every XEP-0359 stanza-id on a delivered message.
fn stanza_ids(message: &Message) -> Vec<(String, String)> {
    message
        .payloads
        .iter()
        .filter(|payload| payload.is("stanza-id", SID))
        .map(|payload| {
            (
                payload.attr("by").unwrap_or_default().to_owned(),
                payload.attr("id").unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chats_are_archived_and_stamped_with_the_recipients_stanza_id() {
    let mut server = start_server(|_| {}).await;
    let mut alice = XmppClient::login(&server, "alice", "alice-secret", "phone").await;
    let mut bob = XmppClient::login(&server, "bob", "bob-secret", "laptop").await;
    // Messages to a bare JID reach available resources (RFC 6121 §8.5.2.1); the ping makes sure
    // bob's presence was processed before alice sends.
    bob.send_initial_presence().await;
    bob.iq_ok(None, IqRequest::Get(xml("<ping xmlns='urn:xmpp:ping'/>")))
        .await;

    // A client-supplied stanza-id claiming to be bob's archive is a forgery and is replaced.
    let mut first = chat("bob@localhost", "archived hello");
    first.payloads.push(
        format!("<stanza-id xmlns='{SID}' by='bob@localhost' id='forged-by-alice'/>")
            .parse()
            .unwrap(),
    );
    alice.send(first).await;
    alice.send(chat("bob@localhost", "second, with ünïcode")).await;
    let one = bob
        .expect_message("the first chat", |m| {
            body_of(m).as_deref() == Some("archived hello")
        })
        .await;
    let two = bob
        .expect_message("the second chat", |m| {
            body_of(m).as_deref() == Some("second, with ünïcode")
        })
        .await;
    let one_ids = stanza_ids(&one);
    let two_ids = stanza_ids(&two);
    assert_eq!(
        one_ids.len(),
        1,
        "exactly one stanza-id, the server's: {one_ids:?}"
    );
    assert_eq!(one_ids[0].0, "bob@localhost");
    assert_ne!(one_ids[0].1, "forged-by-alice");
    assert_eq!(two_ids[0].0, "bob@localhost");
    assert_ne!(one_ids[0].1, two_ids[0].1, "stanza ids are unique");
    assert!(one_ids[0].1.parse::<u64>().unwrap() < two_ids[0].1.parse::<u64>().unwrap());

    let archive = server.server.as_ref().expect("running").archive.clone();
    let found = archive
        .search("e2e", &Default::default(), 10)
        .await
        .expect("search");
    assert_eq!(found.total, 2, "{found:?}");
    assert_eq!(found.hits[0].from, "alice@localhost/phone");
    assert_eq!(found.hits[0].to, "bob@localhost");
    assert_eq!(found.hits[0].message_type.as_deref(), Some("chat"));
    assert_eq!(found.hits[1].body.as_deref(), Some("second, with ünïcode"));
    let verified = archive.verify().await.expect("verify");
    assert!(verified.is_intact(), "{verified}");
    assert_eq!(verified.messages, 2);
    let log = archive.access_log(10, None).await.expect("access log");
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].actor, "e2e");
    alice.logout().await;
    bob.logout().await;
    server.stop().await;
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
}

/// A data directory and configuration file for a `parley` child process.
struct ChildServer {
    binary: PathBuf,
    dir: tempfile::TempDir,
    config: PathBuf,
    starttls: SocketAddr,
}

impl ChildServer {
    async fn prepare(users: &[String]) -> Self {
        trust_shared_ca();
        let dir = tempfile::tempdir().expect("a temp dir");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let directory = StaticDirectory::open(data.join("users.toml")).await.unwrap();
        for user in users {
            directory
                .add_user(user, &format!("{user}-secret"), PersonDetails::default())
                .await
                .unwrap();
        }
        let mut server = Self {
            binary: parley_binary(),
            config: dir.path().join("parley.toml"),
            dir,
            starttls: free_port(),
        };
        server.configure_fresh_ports();
        server
    }

    /// Writes the configuration with listeners on ports not used before. A restarted server gets
    /// new ones, so the tokio-xmpp clients of a killed server (whose reconnectors keep retrying
    /// the old address in the background) never log in to it and replace the test's sessions.
    fn configure_fresh_ports(&mut self) {
        let ca = shared_ca();
        let (mut starttls, direct, admin) = (free_port(), free_port(), free_port());
        while starttls == self.starttls {
            starttls = free_port();
        }
        let data = self.dir.path().join("data");
        std::fs::write(
            &self.config,
            format!(
                "[server]\ndomain = \"localhost\"\ndata_dir = {data:?}\n\
                 [tls]\ncert = {cert:?}\nkey = {key:?}\n\
                 [c2s]\nstarttls_listen = [\"{starttls}\"]\ndirect_tls_listen = [\"{direct}\"]\n\
                 [admin_http]\nlisten = \"{admin}\"\n\
                 [archive]\npurge_interval = \"0\"\n\
                 [log]\nlevel = \"warn,parley_archive=info\"\n",
                cert = ca.cert_path,
                key = ca.key_path,
            ),
        )
        .unwrap();
        self.starttls = starttls;
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .arg("--config")
            .arg(&self.config)
            .current_dir(self.dir.path());
        command
    }

    /// Starts `parley serve` and waits until it accepts connections.
    async fn serve(&self) -> KillOnDrop {
        let log = std::fs::File::create(self.dir.path().join("server.log")).expect("a log file");
        let child = self
            .command()
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning parley serve");
        let mut child = KillOnDrop(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(self.starttls).await.is_err() {
            if let Ok(Some(status)) = child.0.try_wait() {
                panic!("parley serve exited early: {status}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "parley serve did not listen in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        child
    }

    /// Runs `parley archive <args>`; returns (success, stdout).
    fn archive(&self, args: &[&str]) -> (bool, String) {
        let output = self
            .command()
            .arg("archive")
            .args(args)
            .output()
            .expect("running parley archive");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        (output.status.success(), format!("{stdout}{stderr}"))
    }

    /// Every message body in the archive, through `parley archive export --format jsonl`.
    fn archived_bodies(&self, name: &str) -> Vec<String> {
        let out = self.dir.path().join(name);
        let (ok, output) = self.archive(&["export", "--format", "jsonl", "--out", out.to_str().unwrap()]);
        assert!(ok, "export failed: {output}");
        let text = std::fs::read_to_string(out.join("messages.jsonl")).unwrap();
        text.lines()
            .filter_map(|line| {
                let start = line.find("\"body\":\"")? + 8;
                let end = start + line[start..].find('"')?;
                Some(line[start..end].to_owned())
            })
            .collect()
    }
}

/// A server process that a failing test must not leave behind.
struct KillOnDrop(Child);

impl KillOnDrop {
    /// SIGKILL, then reap.
    fn kill(&mut self) {
        self.0.kill().expect("SIGKILL the server");
        self.0.wait().expect("reaping the server");
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Logs in to a child server.
async fn child_login(server: &ChildServer, user: &str) -> Client {
    let jid = FullJid::new(&format!("{user}@localhost/load")).unwrap();
    let mut client = Client::new_with_connector(
        jid.clone(),
        format!("{user}-secret"),
        StartTlsServerConnector::from(addr_config(server.starttls)),
        Timeouts::tight(),
    );
    tokio::time::timeout(EVENT_TIMEOUT, async {
        loop {
            match client.next().await {
                Some(Event::Online { .. }) => return,
                Some(Event::Disconnected(error)) => panic!("{jid}: disconnected before online: {error}"),
                Some(Event::Stanza(_)) => {}
                None => panic!("{jid}: the client stopped before going online"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{jid} did not get online"));
    client
}

/// Reads messages until the stream breaks, recording every delivered body.
async fn receive_until_disconnected(mut client: Client, delivered: Arc<Mutex<BTreeSet<String>>>) {
    while let Some(event) = client.next().await {
        match event {
            Event::Stanza(Stanza::Message(message)) if message.type_ != MessageType::Error => {
                if let Some(body) = body_of(&message) {
                    delivered.lock().unwrap().insert(body);
                }
            }
            Event::Disconnected(_) => return,
            _ => {}
        }
    }
}

/// Every body in `client`'s own MAM archive, oldest first, paging forwards (XEP-0313 with RSM).
async fn mam_bodies(client: &mut Client) -> Vec<String> {
    const MAM: &str = "urn:xmpp:mam:2";
    const RSM: &str = "http://jabber.org/protocol/rsm";
    // After a restart a query waits until the index has caught up with the journal, which on a
    // loaded 2-core CI machine has taken longer than EVENT_TIMEOUT. What this checks is
    // completeness, not speed; a page that never comes still fails it.
    const PAGE_TIMEOUT: Duration = Duration::from_secs(30);
    let mut bodies = Vec::new();
    let mut after: Option<String> = None;
    for page in 0.. {
        assert!(page < 100, "MAM paging does not end");
        let query_id = format!("all{page}");
        let rsm = after
            .as_ref()
            .map_or(String::new(), |id| format!("<after>{id}</after>"));
        let query = xml(&format!(
            "<query xmlns='{MAM}' queryid='{query_id}'><set xmlns='{RSM}'><max>250</max>{rsm}</set></query>"
        ));
        let iq = Iq::Set {
            from: None,
            to: None,
            id: query_id.clone(),
            payload: query,
        };
        client.send_stanza(iq.into()).await.expect("the query is sent");
        let fin = tokio::time::timeout(PAGE_TIMEOUT, async {
            while let Some(event) = client.next().await {
                let Event::Stanza(stanza) = event else { continue };
                match stanza {
                    Stanza::Message(message) => {
                        let Some(result) = message.payloads.iter().find(|payload| {
                            payload.is("result", MAM) && payload.attr("queryid") == Some(&query_id)
                        }) else {
                            continue;
                        };
                        let body = result
                            .get_child("forwarded", "urn:xmpp:forward:0")
                            .and_then(|forwarded| forwarded.get_child("message", "jabber:client"))
                            .and_then(|archived| archived.get_child("body", "jabber:client"))
                            .map(Element::text)
                            .expect("every result carries the archived message and its body");
                        bodies.push(body);
                    }
                    Stanza::Iq(Iq::Result { id, payload, .. }) if id == query_id => {
                        return payload.expect("a fin");
                    }
                    Stanza::Iq(Iq::Error { id, error, .. }) if id == query_id => {
                        panic!("the MAM query failed: {error:?}")
                    }
                    _ => {}
                }
            }
            panic!("the stream ended during a MAM query")
        })
        .await
        .expect("the MAM query is answered");
        if fin.attr("complete") == Some("true") {
            return bodies;
        }
        after = fin
            .get_child("set", RSM)
            .and_then(|set| set.get_child("last", RSM))
            .map(Element::text);
        assert!(after.is_some(), "an incomplete page names its last id: {fin:?}");
    }
    unreachable!("the loop returns or panics")
}

fn pseudo_random_millis(range: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    u64::from(nanos) % range
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_delivered_message_survives_a_sigkill_and_the_chain_verifies() {
    const PAIRS: usize = 8;
    const PER_SENDER: usize = 600;
    let users: Vec<String> = (0..PAIRS)
        .flat_map(|pair| [format!("sender{pair}"), format!("receiver{pair}")])
        .collect();
    let mut server = ChildServer::prepare(&users).await;
    let mut child = server.serve().await;

    let delivered = Arc::new(Mutex::new(BTreeSet::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for pair in 0..PAIRS {
        let receiver = child_login(&server, &format!("receiver{pair}")).await;
        let mut sender = child_login(&server, &format!("sender{pair}")).await;
        tasks.spawn(receive_until_disconnected(receiver, delivered.clone()));
        tasks.spawn(async move {
            for n in 0..PER_SENDER {
                let message = chat(
                    &format!("receiver{pair}@localhost/load"),
                    &format!("load-{pair}-{n}"),
                );
                if sender.send_stanza(message.into()).await.is_err() {
                    return;
                }
                if n % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            // Keep the stream open so the receiver's copy is not cut short by our close.
            while let Some(event) = sender.next().await {
                if matches!(event, Event::Disconnected(_)) {
                    return;
                }
            }
        });
    }

    // Kill at a random moment once the load is under way.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while delivered.lock().unwrap().len() < 500 {
        assert!(tokio::time::Instant::now() < deadline, "the load never got going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // KILL_DELAY_MS=n replays one moment (the moment is printed below).
    let delay = std::env::var("KILL_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| pseudo_random_millis(2500));
    tokio::time::sleep(Duration::from_millis(delay)).await;
    child.kill();
    let seen: BTreeSet<String> = delivered.lock().unwrap().clone();
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    eprintln!(
        "killed after {delay} ms of load with {} messages delivered",
        seen.len()
    );

    let (intact, report) = server.archive(&["verify"]);
    assert!(
        intact && report.starts_with("intact"),
        "verify after SIGKILL: {report}"
    );
    let archived: BTreeSet<String> = server.archived_bodies("export-1").into_iter().collect();
    let missing: Vec<&String> = seen.difference(&archived).collect();
    assert!(
        missing.is_empty(),
        "{} delivered messages are not archived: {missing:?}",
        missing.len()
    );
    assert!(archived.len() >= seen.len());

    // The first server logged the checkpoints it kept (plain text: no colours in a file); the
    // restart below starts a new log.
    let log = std::fs::read_to_string(server.dir.path().join("server.log")).expect("the server log");
    assert!(!log.contains('\u{1b}'), "no terminal escapes in a log file");
    let logged: Vec<String> = log
        .lines()
        .filter(|line| line.contains("archive checkpoint kept"))
        .filter_map(|line| line.split("checkpoint=").nth(1)?.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    assert!(
        !logged.is_empty(),
        "a new archive keeps a checkpoint at its first commit:\n{log}"
    );

    // After a restart the chain continues where it stopped.
    server.configure_fresh_ports();
    let mut child = server.serve().await;
    // If what follows is slow, the server's log says why (the server runs as a child process).
    let log_path = server.dir.path().join("server.log");
    let slow_restart_log = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(8)).await;
        let log = std::fs::read(&log_path).unwrap_or_default();
        let tail = String::from_utf8_lossy(&log[log.len().saturating_sub(20_000)..]);
        eprintln!("the server is slow after its restart; its log:\n{tail}");
    });
    let mut receiver = child_login(&server, "receiver0").await;
    let mut sender = child_login(&server, "sender0").await;
    sender
        .send_stanza(chat("receiver0@localhost/load", "after-restart").into())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(event) = receiver.next().await {
            if let Event::Stanza(Stanza::Message(message)) = event
                && body_of(&message).as_deref() == Some("after-restart")
            {
                return;
            }
        }
    })
    .await
    .expect("the message after the restart is delivered");
    // The receiver's MAM copies survived the kill too (replayed into the index on open), and each
    // shows its stanza, read from the chain entry it refers to.
    let in_mam = mam_bodies(&mut receiver).await;
    slow_restart_log.abort();
    let delivered_to_receiver0: BTreeSet<&String> =
        seen.iter().filter(|body| body.starts_with("load-0-")).collect();
    let in_mam_set: BTreeSet<&String> = in_mam.iter().collect();
    let missing: Vec<&&String> = delivered_to_receiver0.difference(&in_mam_set).collect();
    assert!(
        missing.is_empty(),
        "{} delivered messages are not in receiver0's MAM archive: {missing:?}",
        missing.len()
    );
    assert_eq!(
        in_mam.last().map(String::as_str),
        Some("after-restart"),
        "newest last"
    );
    assert_eq!(in_mam_set.len(), in_mam.len(), "no message twice in MAM");
    child.kill();
    drop((sender, receiver));

    let (intact, report) = server.archive(&["verify"]);
    assert!(intact, "verify after the restart: {report}");
    let messages_now: u64 = report
        .split(" messages")
        .next()
        .and_then(|head| head.rsplit('(').next())
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or_else(|| panic!("a message count in {report:?}"));
    assert_eq!(messages_now as usize, archived.len() + 1, "{report}");
    // Checkpoints kept outside the store: the head the first export's manifest recorded, and the
    // head this verify printed, both still hold; a different hash for that head does not.
    let manifest = server.dir.path().join("export-1").join("manifest.json");
    let head = report
        .split("head ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| c == ';' || c.is_whitespace()).next())
        .unwrap_or_else(|| panic!("a head in {report:?}"))
        .to_owned();
    let (intact, against) = server.archive(&[
        "verify",
        "--manifest",
        manifest.to_str().unwrap(),
        "--checkpoint",
        &head,
    ]);
    assert!(
        intact && against.contains("all 2 checkpoints kept outside match"),
        "{against}"
    );
    let (seq, hash) = head.split_once(':').expect("SEQ:HEX");
    let forged = format!(
        "{seq}:{}",
        if hash.starts_with('0') { "1" } else { "0" }.repeat(64)
    );
    let (intact, against) = server.archive(&["verify", "--checkpoint", &forged]);
    assert!(
        !intact && against.contains("TAMPERED") && against.contains("kept outside"),
        "{against}"
    );
    // The checkpoints the killed server logged kept outside the store too.
    let mut args = vec!["verify"];
    for checkpoint in &logged {
        args.extend(["--checkpoint", checkpoint.as_str()]);
    }
    let (intact, against) = server.archive(&args);
    assert!(intact && against.contains("kept outside match"), "{against}");
    let (ok, refused) = server.archive(&["verify", "--checkpoint", "7"]);
    assert!(!ok && refused.contains("SEQ:HEX"), "{refused}");
    let (ok, output) = server.archive(&["search", "--keyword", "AFTER-RESTART"]);
    assert!(ok && output.starts_with("1 messages"), "{output}");
    let (ok, log) = server.archive(&["access-log"]);
    assert!(
        ok && log.contains("export:jsonl") && log.contains("\tsearch\t"),
        "{log}"
    );
    // Page by page, newest first, the same lines.
    let mut paged = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut args = vec!["access-log", "--limit", "1"];
        if let Some(seq) = &before {
            args.extend(["--before", seq.as_str()]);
        }
        let (ok, page) = server.archive(&args);
        assert!(ok, "{page}");
        let Some(line) = page.lines().next() else { break };
        let seq = line
            .split('\t')
            .next()
            .and_then(|number| number.strip_prefix('#'));
        before = Some(seq.unwrap_or_else(|| panic!("a #number in {line:?}")).to_owned());
        paged.push(line.to_owned());
        assert!(paged.len() <= 100, "paging ends");
    }
    assert_eq!(paged, log.lines().collect::<Vec<_>>());
}

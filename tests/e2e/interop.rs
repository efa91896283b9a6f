//! A client program from outside the Rust ecosystem: Debian's `go-sendxmpp` (Go, go-xmpp).
//!
//! It trusts the test CA through `SSL_CERT_FILE`, which Go's crypto/x509 honours on Linux.
//! Under `CI=true` a missing `go-sendxmpp` fails the test; otherwise the test says SKIPPED.
//! Every child runs under a deadline and is killed when its guard drops.

use crate::client::harness::{XmppClient, shared_ca, start_server};
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio_xmpp::jid::Jid;

const TOOL: &str = "go-sendxmpp";
/// Longest a go-sendxmpp run may take, login included.
const CHILD_DEADLINE: Duration = Duration::from_secs(30);

/// A child process killed (and reaped) when dropped, so a failing test leaves nothing behind.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Already exited is fine: kill then reports an error we have no use for.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl ChildGuard {
    /// Waits for the exit within [`CHILD_DEADLINE`]; returns (success, stdout, stderr).
    async fn finish(mut self) -> (bool, String, String) {
        let deadline = tokio::time::Instant::now() + CHILD_DEADLINE;
        let status = loop {
            match self.0.try_wait().expect("querying the child") {
                Some(status) => break status,
                None if tokio::time::Instant::now() >= deadline => {
                    panic!("{TOOL} did not finish within {CHILD_DEADLINE:?}")
                }
                // std's Child has no async wait; a short poll keeps the runtime free.
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let mut stdout = String::new();
        let mut stderr = String::new();
        if let Some(mut out) = self.0.stdout.take() {
            let _ = out.read_to_string(&mut stdout);
        }
        if let Some(mut err) = self.0.stderr.take() {
            let _ = err.read_to_string(&mut stderr);
        }
        (status.success(), stdout, stderr)
    }
}

/// `go-sendxmpp` logged in as `user` on the STARTTLS port, trusting only the shared test CA.
fn sendxmpp(port: u16, user: &str, password: &str, args: &[&str]) -> Command {
    let mut command = Command::new(TOOL);
    command
        .env("SSL_CERT_FILE", &shared_ca().ca_path)
        // An empty HOME: no user's sendxmpprc is read.
        .env("HOME", std::env::temp_dir())
        .args([
            "-u",
            &format!("{user}@localhost"),
            "-p",
            password,
            "-j",
            &format!("localhost:{port}"),
        ])
        .args(["--timeout", "10"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// alice, as go-sendxmpp over STARTTLS, sends a message; bob (tokio-xmpp) receives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_sendxmpp_sends_a_message_over_starttls() {
    if !parley_testkit::require_tool(TOOL) {
        return;
    }
    let mut server = start_server(|_| {}).await;
    let mut bob = XmppClient::login(&server, "bob", "bob-secret", "phone").await;
    bob.send_initial_presence().await;
    bob.iq_ok(
        Some(crate::client::harness::bare("localhost").into()),
        tokio_xmpp::IqRequest::Get(crate::client::harness::xml("<ping xmlns='urn:xmpp:ping'/>")),
    )
    .await;

    let mut child = sendxmpp(
        server.starttls_addr().port(),
        "alice",
        "alice-secret",
        &["bob@localhost"],
    )
    .spawn()
    .map(ChildGuard)
    .expect("starting go-sendxmpp");
    {
        let mut stdin = child.0.stdin.take().expect("a piped stdin");
        stdin
            .write_all(b"Hello from Go\n")
            .expect("writing the message to go-sendxmpp");
        // Dropping stdin ends the message.
    }
    let (success, stdout, stderr) = child.finish().await;
    assert!(success, "go-sendxmpp failed; stdout: {stdout}\nstderr: {stderr}");

    let alice = Jid::from(crate::client::harness::bare("alice@localhost"));
    let message = bob
        .expect_message("the message from go-sendxmpp", |m| {
            m.from.as_ref().map(Jid::to_bare).map(Jid::from).as_ref() == Some(&alice)
        })
        .await;
    let body = message.get_best_body_cloned(vec![]).map(|(_, body)| body);
    assert_eq!(body.as_deref().map(str::trim_end), Some("Hello from Go"));
    bob.logout().await;
    server.stop().await;
}

/// bob, as go-sendxmpp in listen mode, receives a message alice (tokio-xmpp) sent while he was
/// offline: XEP-0160 delivery on his initial presence, read in go-xmpp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_sendxmpp_listens_and_receives_a_stored_message() {
    if !parley_testkit::require_tool(TOOL) {
        return;
    }
    let mut server = start_server(|_| {}).await;
    let mut alice = XmppClient::login(&server, "alice", "alice-secret", "laptop").await;
    let bob: Jid = crate::client::harness::bare("bob@localhost").into();
    alice
        .send(
            tokio_xmpp::parsers::message::Message::chat(Some(bob))
                .with_body(Default::default(), "Hello from Rust".to_owned()),
        )
        .await;
    // Answered only after the message above was handled, so it is stored before bob connects.
    alice
        .iq_ok(
            Some(crate::client::harness::bare("localhost").into()),
            tokio_xmpp::IqRequest::Get(crate::client::harness::xml("<ping xmlns='urn:xmpp:ping'/>")),
        )
        .await;

    let mut child = sendxmpp(server.starttls_addr().port(), "bob", "bob-secret", &["--listen"])
        .spawn()
        .map(ChildGuard)
        .expect("starting go-sendxmpp");
    let stdout = child.0.stdout.take().expect("a piped stdout");
    let (lines_tx, mut lines) = tokio::sync::mpsc::channel::<String>(64);
    // std's pipes block; one thread forwards lines until the child's stdout closes.
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let found = tokio::time::timeout(CHILD_DEADLINE, async {
        while let Some(line) = lines.recv().await {
            let hit = line.contains("Hello from Rust");
            seen.push(line);
            if hit {
                return true;
            }
        }
        false
    })
    .await;
    let line = seen.last().cloned().unwrap_or_default();
    drop(child);
    assert_eq!(
        found,
        Ok(true),
        "go-sendxmpp printed no such message; its output: {seen:?}"
    );
    assert!(line.contains("alice@localhost"), "the sender is shown: {line:?}");
    alice.logout().await;
    server.stop().await;
}

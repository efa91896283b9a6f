//! The `parley` command as an admin uses it: accounts, configuration checks, help.

use parley_testkit::parley_binary;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn parley(config: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut command = Command::new(parley_binary());
    command.arg("--config").arg(config).args(args);
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command.env_remove("PARLEY_PASSWORD");
    let mut child = command.spawn().expect("running parley");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("writing stdin");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("parley finishes")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn config_in(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("parley.toml");
    std::fs::write(&path, format!("[server]\ndata_dir = {:?}\n", dir.join("data"))).expect("config");
    path
}

#[test]
fn accounts_are_added_listed_changed_imported_and_removed() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = config_in(dir.path());
    let added = parley(
        &config,
        &["user", "add", "Alice", "--name", "Alice Example", "--admin"],
        Some("s3cret\n"),
    );
    assert!(added.status.success(), "{}", text(&added));
    assert!(
        text(&added).contains("added alice@localhost"),
        "the localpart is normalised: {}",
        text(&added)
    );

    let duplicate = parley(&config, &["user", "add", "alice"], Some("other\n"));
    assert!(!duplicate.status.success(), "a second alice is refused");

    let imported = parley(
        &config,
        &["user", "import", "-"],
        Some("bob bob-pass\n# a comment\ncarol carol-pass\n"),
    );
    assert!(imported.status.success(), "{}", text(&imported));
    assert!(text(&imported).contains("added 2 accounts"));

    let listed = parley(&config, &["user", "list"], None);
    let listing = text(&listed);
    assert!(
        listing.contains("alice@localhost\tAlice Example (admin)"),
        "{listing}"
    );
    assert!(
        listing.contains("bob@localhost") && listing.contains("carol@localhost"),
        "{listing}"
    );

    let users = std::fs::read_to_string(dir.path().join("data/users.toml")).expect("the user file");
    assert!(
        !users.contains("s3cret") && !users.contains("bob-pass"),
        "no password is stored"
    );
    assert!(
        users.contains("$argon2id$") && users.contains("stored_key"),
        "hashes and SCRAM keys are"
    );

    let changed = parley(&config, &["user", "passwd", "bob"], Some("new-pass\n"));
    assert!(changed.status.success(), "{}", text(&changed));
    let after = std::fs::read_to_string(dir.path().join("data/users.toml")).expect("the user file");
    assert_ne!(users, after, "the credentials changed");

    let removed = parley(&config, &["user", "remove", "carol"], None);
    assert!(removed.status.success(), "{}", text(&removed));
    assert!(!text(&parley(&config, &["user", "list"], None)).contains("carol@"));
    let missing = parley(&config, &["user", "remove", "carol"], None);
    assert!(
        !missing.status.success(),
        "removing a missing account is an error"
    );
}

#[test]
fn check_config_reports_every_error_with_its_key_path() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[server]\ndomain = \"Not A Domain@\"\n[c2s]\nmax_stanza_size = \"huge\"\nbogus_option = 1\n[tls]\ncert = \"/x.pem\"\n",
    )
    .expect("config");
    let checked = parley(&config, &["check-config"], None);
    let report = text(&checked);
    assert_eq!(checked.status.code(), Some(1), "{report}");
    for key in ["server.domain", "c2s.max_stanza_size", "c2s.bogus_option", "tls"] {
        assert!(report.contains(key), "{key} missing from the report:\n{report}");
    }

    let good = dir.path().join("good.toml");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/parley.example.toml"),
        &good,
    )
    .expect("the example config");
    let checked = parley(&good, &["check-config"], None);
    assert!(
        checked.status.success(),
        "the documented example is valid: {}",
        text(&checked)
    );
}

#[test]
fn help_explains_each_command() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = config_in(dir.path());
    let help = text(&parley(&config, &["--help"], None));
    for command in ["serve", "check-config", "user", "directory", "archive"] {
        assert!(help.contains(command), "{command} missing from --help:\n{help}");
    }
    let user_help = text(&parley(&config, &["user", "--help"], None));
    for action in ["add", "passwd", "remove", "list", "import"] {
        assert!(
            user_help.contains(action),
            "{action} missing from user --help:\n{user_help}"
        );
    }
}

//! The `parley` binary, for tests that run it as a separate process.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `target/<profile>/parley`, built for this run (cargo returns at once when it is fresh).
pub fn parley_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in target/<profile>/deps");
    let binary = profile_dir.join("parley");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut build = Command::new(cargo);
    build.args(["build", "--quiet", "-p", "parley-server", "--bin", "parley"]);
    if profile_dir.file_name().is_some_and(|name| name == "release") {
        build.arg("--release");
    }
    let status = build.status().expect("running cargo build for the parley binary");
    assert!(status.success(), "building the parley binary failed");
    assert!(binary.is_file(), "no parley binary at {}", binary.display());
    binary
}

//! Test fixtures for Parley; a dev-dependency only, never a normal one.
//!
//! Owns: [`TestServer`] (the real server in-process on `127.0.0.1:0` with a temp data dir),
//! [`TestCa`] (a CA and a leaf certificate generated at test time), and [`RawClient`] for
//! sent/expected XML scripts over plain TCP or STARTTLS.
//!
//! Must not touch: production code paths. It starts the server through `parley_server::start`,
//! exactly as the binary does.

mod binary;
mod certs;
mod raw;
mod script;
mod server;
mod slapd;

pub use binary::parley_binary;
pub use certs::TestCa;
pub use raw::RawClient;
pub use script::{Step, last_attr};
pub use server::{ConfigTweak, TestServer, TestServerOptions};
pub use slapd::{
    LDAP_ADMIN_DN, LDAP_ADMIN_PASSWORD, LDAP_BASE_DN, LDAP_SERVICE_DN, LDAP_SERVICE_PASSWORD, Slapd,
    free_port,
};

/// Fails the test when a required external tool is missing under `CI=true`, else says it skips.
/// Returns whether the tool is available.
pub fn require_tool(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false);
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{tool} is required under CI=true but is not installed (the test command installs it)"
        );
        eprintln!("SKIPPED: {tool} is not installed");
    }
    found
}

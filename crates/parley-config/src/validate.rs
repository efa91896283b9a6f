//! Semantic checks: values that parse but cannot work (zero limits, a cert without a key,
//! unknown SASL mechanisms...) become errors; risky but workable settings become warnings.

use std::collections::HashSet;
use std::path::Path;

use crate::ByteSize;
use crate::load::Report;
use crate::model::{Config, KNOWN_SASL_MECHANISMS, StorageBackend, is_empty_path};

/// Largest stanza limit accepted: XMPP stanzas are messages, not file transfers.
pub const MAX_STANZA_SIZE_LIMIT: ByteSize = ByteSize::mib(16);

/// Deepest element nesting accepted as a limit; deeper documents are an attack, not a need.
pub const MAX_DEPTH_LIMIT: usize = 1024;

/// Longest domain name (RFC 1035).
const MAX_DOMAIN_LEN: usize = 253;

/// Runs the checks of every section listed in `sections` (those that read cleanly).
pub(crate) fn validate(config: &Config, sections: &[&str], report: &mut Report) {
    let checked = |name: &str| sections.contains(&name);
    if checked("server") {
        check_server(config, report);
    }
    if checked("tls") {
        check_tls(config, report);
    }
    if checked("c2s") {
        check_c2s(config, report);
    }
    if checked("storage") {
        check_storage(config, report);
    }
    if checked("directory") {
        check_optional_path(
            "directory.static_file",
            config.directory.static_file.as_deref(),
            report,
        );
    }
    if checked("roster") {
        positive_count("roster.max_items", config.roster.max_items, report);
    }
    if checked("offline") {
        positive_count("offline.max_messages", config.offline.max_messages, report);
    }
    if checked("vcard") {
        check_payload_size("vcard.max_size", config.vcard.max_size, config, report);
    }
    if checked("private_storage") {
        check_payload_size(
            "private_storage.max_size",
            config.private_storage.max_size,
            config,
            report,
        );
    }
    if checked("admin_http") {
        check_admin_http(config, report);
    }
    if checked("log") {
        check_log(config, report);
    }
}

fn positive_count(path: &str, value: usize, report: &mut Report) {
    if value == 0 {
        report.reject(path, "must be greater than 0");
    }
}

fn check_optional_path(path: &str, value: Option<&Path>, report: &mut Report) {
    if value.is_some_and(is_empty_path) {
        report.reject(path, "must not be empty; remove the key to use the default");
    }
}

fn check_server(config: &Config, report: &mut Report) {
    if let Err(reason) = check_domain(&config.server.domain) {
        report.reject("server.domain", reason);
    }
    if is_empty_path(&config.server.data_dir) {
        report.reject("server.data_dir", "must not be empty");
    }
}

/// Accepts a lowercase ASCII DNS name such as `example.com` or `localhost`.
pub(crate) fn check_domain(domain: &str) -> Result<(), String> {
    let shown = crate::size::echo(domain);
    if domain.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if domain.contains(['@', '/']) {
        return Err(format!(
            "expected a bare domain like \"example.com\" without '@' or '/', got \"{shown}\""
        ));
    }
    if domain.len() > MAX_DOMAIN_LEN {
        return Err(format!("is longer than {MAX_DOMAIN_LEN} characters"));
    }
    if domain.chars().any(|c| c.is_uppercase()) {
        return Err(format!("must be lowercase, got \"{shown}\""));
    }
    if !domain.is_ascii() {
        return Err(format!(
            "must be ASCII (write internationalised names as xn--...), got \"{shown}\""
        ));
    }
    for label in domain.split('.') {
        let valid = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(format!(
                "expected a DNS name of dot-separated labels (a-z, 0-9, '-'; no leading, trailing or \
                 double dot), got \"{shown}\""
            ));
        }
    }
    Ok(())
}

fn check_tls(config: &Config, report: &mut Report) {
    let tls = &config.tls;
    match (&tls.cert, &tls.key) {
        (Some(_), None) => report.reject("tls.key", "tls.cert is set, so tls.key must be set too"),
        (None, Some(_)) => report.reject("tls.cert", "tls.key is set, so tls.cert must be set too"),
        (None, None) => report.warn(
            "tls",
            format!(
                "no certificate configured: a self-signed one is generated under {}; clients will not \
                 trust it without extra steps",
                config.tls_dir().display()
            ),
        ),
        (Some(_), Some(_)) => {}
    }
    check_optional_path("tls.cert", tls.cert.as_deref(), report);
    check_optional_path("tls.key", tls.key.as_deref(), report);
}

fn check_c2s(config: &Config, report: &mut Report) {
    let c2s = &config.c2s;
    if c2s.starttls_listen.is_empty() && c2s.direct_tls_listen.is_empty() {
        report.reject(
            "c2s",
            "no client listeners: set starttls_listen and/or direct_tls_listen",
        );
    }
    let mut seen = HashSet::new();
    let listeners = c2s
        .starttls_listen
        .iter()
        .enumerate()
        .map(|(index, addr)| (format!("c2s.starttls_listen[{index}]"), addr))
        .chain(
            c2s.direct_tls_listen
                .iter()
                .enumerate()
                .map(|(index, addr)| (format!("c2s.direct_tls_listen[{index}]"), addr)),
        );
    for (path, addr) in listeners {
        // Port 0 (any free port) is legitimately repeated, e.g. in tests.
        if addr.port() != 0 && !seen.insert(*addr) {
            report.reject(path, format!("address {addr} is listed more than once"));
        }
    }
    if !c2s.require_starttls {
        report.warn(
            "c2s.require_starttls",
            "false lets clients authenticate without TLS; use only for local testing",
        );
    }
    for (path, value) in [
        ("c2s.pre_auth_timeout", c2s.pre_auth_timeout),
        ("c2s.ping_idle_after", c2s.ping_idle_after),
        ("c2s.ping_timeout", c2s.ping_timeout),
        ("c2s.close_timeout", c2s.close_timeout),
    ] {
        if value.is_zero() {
            report.reject(path, "must be greater than 0");
        }
    }
    if c2s.max_stanza_size.bytes() == 0 {
        report.reject("c2s.max_stanza_size", "must be greater than 0");
    } else if c2s.max_stanza_size > MAX_STANZA_SIZE_LIMIT {
        report.reject(
            "c2s.max_stanza_size",
            format!("must be at most {MAX_STANZA_SIZE_LIMIT}"),
        );
    }
    if c2s.max_token_size.bytes() == 0 {
        report.reject("c2s.max_token_size", "must be greater than 0");
    } else if c2s.max_token_size > c2s.max_stanza_size {
        report.reject("c2s.max_token_size", "must not exceed c2s.max_stanza_size");
    }
    positive_count("c2s.max_depth", c2s.max_depth, report);
    if c2s.max_depth > MAX_DEPTH_LIMIT {
        report.reject("c2s.max_depth", format!("must be at most {MAX_DEPTH_LIMIT}"));
    }
    positive_count("c2s.max_attributes", c2s.max_attributes, report);
    positive_count("c2s.outbound_queue", c2s.outbound_queue, report);
    positive_count(
        "c2s.max_resources_per_account",
        c2s.max_resources_per_account,
        report,
    );
    positive_count("c2s.max_connections_per_ip", c2s.max_connections_per_ip, report);
    check_sasl(&c2s.sasl_mechanisms, report);
}

fn check_sasl(mechanisms: &[String], report: &mut Report) {
    if mechanisms.is_empty() {
        report.reject("c2s.sasl_mechanisms", "must list at least one mechanism");
    }
    let mut seen = HashSet::new();
    for (index, name) in mechanisms.iter().enumerate() {
        let path = format!("c2s.sasl_mechanisms[{index}]");
        if !KNOWN_SASL_MECHANISMS.contains(&name.as_str()) {
            let hint = if KNOWN_SASL_MECHANISMS.contains(&name.to_ascii_uppercase().as_str()) {
                " (mechanism names are upper case)"
            } else {
                ""
            };
            report.reject(
                path,
                format!(
                    "unknown SASL mechanism \"{}\"{hint}; known: {}",
                    crate::size::echo(name),
                    KNOWN_SASL_MECHANISMS.join(", ")
                ),
            );
        } else if !seen.insert(name.as_str()) {
            report.reject(path, format!("{name} is listed more than once"));
        }
    }
}

fn check_storage(config: &Config, report: &mut Report) {
    check_optional_path("storage.path", config.storage.path.as_deref(), report);
    if config.storage.backend == StorageBackend::Memory {
        report.warn(
            "storage.backend",
            "memory storage loses all data on restart; use only for tests",
        );
        if config.storage.path.is_some() {
            report.warn("storage.path", "ignored with the memory backend");
        }
    }
}

fn check_payload_size(path: &str, size: ByteSize, config: &Config, report: &mut Report) {
    if size.bytes() == 0 {
        report.reject(path, "must be greater than 0");
    } else if size > config.c2s.max_stanza_size {
        report.warn(
            path,
            "is larger than c2s.max_stanza_size, so the extra room can never be used",
        );
    }
}

fn check_admin_http(config: &Config, report: &mut Report) {
    if let Some(addr) = config.admin_http.listen
        && !addr.ip().is_loopback()
    {
        report.warn(
            "admin_http.listen",
            format!("{addr} is reachable from other hosts; metrics and health need no login"),
        );
    }
}

/// Directive levels understood by tracing's `EnvFilter`.
const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

fn check_log(config: &Config, report: &mut Report) {
    let level = config.log.level.trim();
    if level.is_empty() {
        report.reject("log.level", "must not be empty; for example \"info\"");
        return;
    }
    if level.chars().any(char::is_control) {
        report.reject("log.level", "must not contain control characters");
        return;
    }
    for directive in level.split(',').map(str::trim) {
        // Span/field directives ("target[span{field=1}]=debug") are left for EnvFilter to judge.
        if directive.contains('[') {
            continue;
        }
        match directive.rsplit_once('=') {
            Some((_, directive_level))
                if !LOG_LEVELS.contains(&directive_level.to_ascii_lowercase().as_str()) =>
            {
                report.reject(
                    "log.level",
                    format!(
                        "\"{}\" is not a level; expected one of {}",
                        crate::size::echo(directive_level),
                        LOG_LEVELS.join(", ")
                    ),
                );
            }
            None if !LOG_LEVELS.contains(&directive.to_ascii_lowercase().as_str()) => {
                // EnvFilter reads a bare word as a target name, so a typo such as "inf" would
                // silently log everything from a target called "inf".
                report.warn(
                    "log.level",
                    format!(
                        "\"{}\" is not a level, so it is read as a target name at all levels",
                        crate::size::echo(directive)
                    ),
                );
            }
            Some(_) | None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(text: &str) -> Vec<String> {
        Config::from_toml_str(text)
            .expect_err("should be rejected")
            .errors
            .into_iter()
            .map(|error| error.to_string())
            .collect()
    }

    fn warnings(text: &str) -> Vec<String> {
        Config::from_toml_str(text)
            .unwrap()
            .warnings
            .into_iter()
            .map(|warning| warning.path)
            .collect()
    }

    #[test]
    fn domain_rules() {
        for good in [
            "localhost",
            "example.com",
            "chat-1.example.co.uk",
            "xn--bcher-kva.example",
            "10.0.0.1",
        ] {
            assert_eq!(check_domain(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "Example.com",
            "user@example.com",
            "example.com/res",
            "example..com",
            "example.com.",
            "-example.com",
            "exa_mple.com",
            "bücher.example",
            "a b.com",
        ] {
            assert!(check_domain(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(check_domain(&format!("{}.com", "a".repeat(64))).is_err());
        let longest = "a.".repeat(127);
        assert_eq!(
            check_domain(longest.trim_end_matches('.')),
            Ok(()),
            "253 characters is the limit"
        );
        assert!(check_domain(&format!("bb.{}", longest.trim_end_matches('.'))).is_err());
    }

    #[test]
    fn cert_and_key_both_or_neither() {
        assert_eq!(
            rejected("[tls]\ncert = \"/c.pem\"\n"),
            ["tls.key: tls.cert is set, so tls.key must be set too"]
        );
        assert_eq!(
            rejected("[tls]\nkey = \"/k.pem\"\n"),
            ["tls.cert: tls.key is set, so tls.cert must be set too"]
        );
        let both = Config::from_toml_str("[tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n").unwrap();
        assert!(both.warnings.iter().all(|warning| warning.path != "tls"));
        assert!(
            warnings("").contains(&"tls".to_owned()),
            "self-signed default is warned about"
        );
    }

    #[test]
    fn limits_must_be_positive_and_bounded() {
        let errors = rejected(
            "[c2s]\nmax_stanza_size = \"17MiB\"\nmax_depth = 0\nmax_attributes = 0\noutbound_queue = 0\n\
             max_resources_per_account = 0\nmax_connections_per_ip = 0\npre_auth_timeout = \"0s\"\n\
             [offline]\nmax_messages = 0\n[vcard]\nmax_size = 0\n[private_storage]\nmax_size = \"0\"\n",
        );
        for path in [
            "c2s.max_stanza_size: must be at most 16MiB",
            "c2s.max_depth: must be greater than 0",
            "c2s.max_attributes: must be greater than 0",
            "c2s.outbound_queue: must be greater than 0",
            "c2s.max_resources_per_account: must be greater than 0",
            "c2s.max_connections_per_ip: must be greater than 0",
            "c2s.pre_auth_timeout: must be greater than 0",
            "offline.max_messages: must be greater than 0",
            "vcard.max_size: must be greater than 0",
            "private_storage.max_size: must be greater than 0",
        ] {
            assert!(
                errors.iter().any(|error| error == path),
                "missing {path:?} in {errors:#?}"
            );
        }
        assert!(Config::from_toml_str("[c2s]\nmax_stanza_size = \"16MiB\"\n").is_ok());
        assert_eq!(
            rejected("[c2s]\nmax_stanza_size = \"1KiB\"\nmax_token_size = \"2KiB\"\n"),
            ["c2s.max_token_size: must not exceed c2s.max_stanza_size"]
        );
        assert_eq!(
            rejected("[c2s]\nmax_depth = 5000\n"),
            ["c2s.max_depth: must be at most 1024"]
        );
    }

    #[test]
    fn listeners_required_and_unique() {
        assert_eq!(
            rejected("[c2s]\nstarttls_listen = []\ndirect_tls_listen = []\n"),
            ["c2s: no client listeners: set starttls_listen and/or direct_tls_listen"]
        );
        assert_eq!(
            rejected(
                "[c2s]\nstarttls_listen = [\"127.0.0.1:5222\"]\ndirect_tls_listen = [\"127.0.0.1:5222\"]\n"
            ),
            ["c2s.direct_tls_listen[0]: address 127.0.0.1:5222 is listed more than once"]
        );
        assert!(
            Config::from_toml_str(
                "[c2s]\nstarttls_listen = [\"127.0.0.1:0\"]\ndirect_tls_listen = [\"127.0.0.1:0\"]\n"
            )
            .is_ok()
        );
    }

    #[test]
    fn sasl_names_validated() {
        let errors = rejected(
            "[c2s]\nsasl_mechanisms = [\"SCRAM-SHA-256\", \"scram-sha-1\", \"DIGEST-MD5\", \"SCRAM-SHA-256\"]\n",
        );
        assert_eq!(errors.len(), 3, "{errors:#?}");
        assert!(
            errors[0].starts_with(
                "c2s.sasl_mechanisms[1]: unknown SASL mechanism \"scram-sha-1\" (mechanism names"
            )
        );
        assert!(errors[1].starts_with("c2s.sasl_mechanisms[2]: unknown SASL mechanism \"DIGEST-MD5\";"));
        assert_eq!(
            errors[2],
            "c2s.sasl_mechanisms[3]: SCRAM-SHA-256 is listed more than once"
        );
        assert_eq!(
            rejected("[c2s]\nsasl_mechanisms = []\n"),
            ["c2s.sasl_mechanisms: must list at least one mechanism"]
        );
    }

    #[test]
    fn log_level_checked() {
        assert_eq!(
            rejected("[log]\nlevel = \"info,parley_c2s=loud\"\n"),
            ["log.level: \"loud\" is not a level; expected one of trace, debug, info, warn, error, off"]
        );
        assert_eq!(
            rejected("[log]\nlevel = \" \"\n"),
            ["log.level: must not be empty; for example \"info\""]
        );
        assert!(warnings("[log]\nlevel = \"inf\"\n").contains(&"log.level".to_owned()));
        assert!(!warnings("[log]\nlevel = \"info,parley_c2s=debug\"\n").contains(&"log.level".to_owned()));
    }

    #[test]
    fn risky_settings_warn() {
        let found = warnings(
            "[storage]\nbackend = \"memory\"\npath = \"/x\"\n[admin_http]\nlisten = \"0.0.0.0:5280\"\n\
             [vcard]\nmax_size = \"1MiB\"\n",
        );
        for path in [
            "storage.backend",
            "storage.path",
            "admin_http.listen",
            "vcard.max_size",
        ] {
            assert!(found.contains(&path.to_owned()), "missing {path} in {found:?}");
        }
        let quiet = warnings("");
        assert!(!quiet.contains(&"admin_http.listen".to_owned()));
        assert!(!quiet.contains(&"storage.backend".to_owned()));
    }

    #[test]
    fn empty_paths_rejected() {
        let errors =
            rejected("[server]\ndata_dir = \"\"\n[storage]\npath = \"\"\n[directory]\nstatic_file = \"\"\n");
        assert_eq!(errors.len(), 3, "{errors:#?}");
    }
}

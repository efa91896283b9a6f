//! Semantic checks: values that parse but cannot work (zero limits, a cert without a key,
//! unknown SASL mechanisms...) become errors; risky but workable settings become warnings.

use std::collections::HashSet;
use std::path::Path;

use crate::ByteSize;
use crate::load::Report;
use crate::model::{
    Config, DirectoryBackend, KNOWN_SASL_MECHANISMS, LdapConfig, StorageBackend, is_empty_path,
};

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
    if checked("directory") && checked("ldap") {
        check_ldap(config, report);
    }
    if checked("roster") {
        positive_count("roster.max_items", config.roster.max_items, report);
        for (index, shared) in config.roster.shared_groups.iter().enumerate() {
            if shared.group.trim().is_empty() {
                report.reject(
                    format!("roster.shared_groups[{index}].group"),
                    "must not be empty",
                );
            }
            if shared.name.as_deref().is_some_and(|name| name.trim().is_empty()) {
                report.reject(
                    format!("roster.shared_groups[{index}].name"),
                    "must not be empty; remove the key to show the group's own name",
                );
            }
        }
    }
    if checked("roster") && checked("c2s") && !config.roster.shared_groups.is_empty() {
        let needed = config.roster.max_shared_contacts.saturating_mul(2);
        if config.c2s.outbound_queue < needed {
            report.reject(
                "c2s.outbound_queue",
                format!(
                    "must be at least {needed} (twice roster.max_shared_contacts) with shared groups: \
                     a login receives the presence of every shared contact at once"
                ),
            );
        }
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
    if checked("archive") {
        check_archive(config, report);
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
    if c2s.outbound_queue_bytes < c2s.max_stanza_size {
        report.reject(
            "c2s.outbound_queue_bytes",
            "must be at least c2s.max_stanza_size, or a stanza of the largest size could never be sent",
        );
    }
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

/// Most search connections per LDAP server: a few suffice, since each multiplexes operations.
const MAX_LDAP_SEARCH_CONNECTIONS: usize = 16;

fn check_ldap(config: &Config, report: &mut Report) {
    let ldap = &config.ldap;
    if config.directory.backend != DirectoryBackend::Ldap {
        if *ldap != LdapConfig::default() {
            report.warn("ldap", "ignored: directory.backend is not \"ldap\"");
        }
        return;
    }
    if ldap.servers.is_empty() {
        report.reject(
            "ldap.servers",
            "must list at least one server, e.g. \"ldaps://ldap.example.com\"",
        );
    }
    for (index, url) in ldap.servers.iter().enumerate() {
        let path = format!("ldap.servers[{index}]");
        match check_ldap_url(url) {
            Err(reason) => report.reject(path, reason),
            Ok(false) if !ldap.starttls => report.warn(
                path,
                "ldap:// without starttls sends passwords unencrypted; use ldaps:// or starttls = true",
            ),
            Ok(_) => {}
        }
    }
    if !ldap.tls_verify {
        report.warn(
            "ldap.tls_verify",
            "false accepts any certificate, so anyone on the path can read passwords; testing only",
        );
    }
    check_optional_path("ldap.ca_file", ldap.ca_file.as_deref(), report);
    match (ldap.bind_dn.trim().is_empty(), &ldap.bind_password) {
        (false, None) => report.reject(
            "ldap.bind_password",
            "ldap.bind_dn is set, so bind_password must be too",
        ),
        (true, Some(_)) => report.reject(
            "ldap.bind_dn",
            "ldap.bind_password is set, so bind_dn must be too",
        ),
        (true, None) => report.warn("ldap.bind_dn", "empty: the directory is searched anonymously"),
        (false, Some(secret)) => {
            if let Some(warning) = secret.literal_warning("ldap.bind_password") {
                report.warnings.push(warning);
            }
        }
    }
    for (path, value) in [
        ("ldap.connect_timeout", ldap.connect_timeout),
        ("ldap.operation_timeout", ldap.operation_timeout),
        ("ldap.health_check_interval", ldap.health_check_interval),
        ("ldap.poll_interval", ldap.poll_interval),
        ("ldap.full_sync_interval", ldap.full_sync_interval),
    ] {
        if value.is_zero() {
            report.reject(path, "must be greater than 0");
        }
    }
    if ldap.full_sync_interval < ldap.poll_interval {
        report.reject(
            "ldap.full_sync_interval",
            "must not be shorter than ldap.poll_interval",
        );
    }
    positive_count("ldap.search_connections", ldap.search_connections, report);
    if ldap.search_connections > MAX_LDAP_SEARCH_CONNECTIONS {
        report.reject(
            "ldap.search_connections",
            format!("must be at most {MAX_LDAP_SEARCH_CONNECTIONS}"),
        );
    }
    positive_count("ldap.max_concurrent_binds", ldap.max_concurrent_binds, report);
    positive_count("ldap.page_size", ldap.page_size, report);
    positive_count("ldap.max_users", ldap.max_users, report);
    if ldap.base_dn.trim().is_empty() {
        report.reject(
            "ldap.base_dn",
            "must not be empty, e.g. \"ou=people,dc=example,dc=com\"",
        );
    }
    if let Err(reason) = check_ldap_filter(&ldap.user_filter) {
        report.reject("ldap.user_filter", reason);
    }
    for (path, name, required) in [
        ("ldap.localpart_attribute", &ldap.localpart_attribute, true),
        ("ldap.display_name_attribute", &ldap.display_name_attribute, false),
        ("ldap.email_attribute", &ldap.email_attribute, false),
        ("ldap.department_attribute", &ldap.department_attribute, false),
        ("ldap.title_attribute", &ldap.title_attribute, false),
        ("ldap.phone_attribute", &ldap.phone_attribute, false),
    ] {
        if name.is_empty() {
            if required {
                report.reject(path, "must not be empty, e.g. \"uid\"");
            }
        } else if !is_attribute_name(name) {
            report.reject(
                path,
                format!("\"{}\" is not an LDAP attribute name", crate::size::echo(name)),
            );
        }
    }
    let mut names = HashSet::new();
    for (index, group) in ldap.groups.iter().enumerate() {
        if group.name.trim().is_empty() {
            report.reject(format!("ldap.groups[{index}].name"), "must not be empty");
        } else if !names.insert(group.name.as_str()) {
            report.reject(
                format!("ldap.groups[{index}].name"),
                format!(
                    "group \"{}\" is defined more than once",
                    crate::size::echo(&group.name)
                ),
            );
        }
        if group.dn.trim().is_empty() {
            report.reject(format!("ldap.groups[{index}].dn"), "must not be empty");
        }
    }
    if !ldap.admin_group.is_empty() && !names.contains(ldap.admin_group.as_str()) {
        report.reject(
            "ldap.admin_group",
            format!(
                "\"{}\" is not the name of a group in ldap.groups",
                crate::size::echo(&ldap.admin_group)
            ),
        );
    }
}

/// Accepts `ldap://host[:port]` and `ldaps://host[:port]` (an optional trailing '/').
/// Returns whether the URL is `ldaps`.
pub(crate) fn check_ldap_url(url: &str) -> Result<bool, String> {
    let shown = crate::size::echo(url);
    let (secure, rest) = if let Some(rest) = url.strip_prefix("ldaps://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("ldap://") {
        (false, rest)
    } else {
        return Err(format!(
            "expected ldaps://host[:port] or ldap://host[:port], got \"{shown}\""
        ));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') && !authority.ends_with(']') => (host, Some(port)),
        _ => (authority, None),
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
    if !host_ok {
        return Err(format!(
            "\"{shown}\" has no valid host name (no path, user or query allowed)"
        ));
    }
    if let Some(port) = port
        && !port.parse::<u16>().is_ok_and(|port| port > 0)
    {
        return Err(format!("\"{shown}\" has an invalid port"));
    }
    Ok(secure)
}

/// A light syntax check of an RFC 4515 filter: parenthesised and balanced, no NUL.
pub(crate) fn check_ldap_filter(filter: &str) -> Result<(), String> {
    let filter = filter.trim();
    if !filter.starts_with('(') || !filter.ends_with(')') {
        return Err("must be a parenthesised LDAP filter, e.g. \"(objectClass=inetOrgPerson)\"".to_owned());
    }
    let mut depth: usize = 0;
    for (index, c) in filter.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth.checked_sub(1).ok_or("has an unmatched ')'")?;
                if depth == 0 && index + 1 != filter.len() {
                    return Err("must be one filter; combine several with (&...)".to_owned());
                }
            }
            '\0' => return Err("must not contain NUL".to_owned()),
            _ => {}
        }
    }
    if depth != 0 {
        return Err("has an unmatched '('".to_owned());
    }
    Ok(())
}

/// RFC 4512 attribute descriptions: a name (letters, digits, '-') or an OID, with options after ';'.
fn is_attribute_name(name: &str) -> bool {
    name.len() <= 128
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ';'))
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

fn check_archive(config: &Config, report: &mut Report) {
    let archive = &config.archive;
    if archive.checkpoint_every == 0 {
        report.reject("archive.checkpoint_every", "must be greater than 0");
    }
    for (table, overrides) in [
        ("archive.retention_departments", &archive.retention_departments),
        ("archive.retention_groups", &archive.retention_groups),
    ] {
        for name in overrides.keys() {
            if name.trim().is_empty() || name.chars().any(char::is_control) {
                report.reject(table, format!("{name:?} is not a usable name"));
            }
        }
    }
    let short = std::time::Duration::from_secs(86_400);
    for (path, retention) in std::iter::once(("archive.retention".to_owned(), archive.retention)).chain(
        archive
            .retention_departments
            .iter()
            .chain(&archive.retention_groups)
            .map(|(name, retention)| (format!("archive retention for {name:?}"), *retention)),
    ) {
        if !retention.is_zero() && retention.get() < short {
            report.warn(path, "is shorter than a day: messages are deleted almost at once");
        }
    }
    if !archive.purge_interval.is_zero() && archive.purge_interval.get() < std::time::Duration::from_secs(60)
    {
        report.warn(
            "archive.purge_interval",
            "purging more often than every minute wastes work",
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
    fn archive_section_rules() {
        let errors =
            rejected("[archive]\ncheckpoint_every = 0\nretention_departments = { \" \" = \"30d\" }\n");
        assert!(
            errors.iter().any(|e| e.contains("archive.checkpoint_every")),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|e| e.contains("archive.retention_departments")),
            "{errors:?}"
        );
        let warned = warnings("[archive]\nretention = \"1h\"\npurge_interval = \"10s\"\n");
        assert!(warned.contains(&"archive.retention".to_owned()), "{warned:?}");
        assert!(
            warned.contains(&"archive.purge_interval".to_owned()),
            "{warned:?}"
        );
        let loaded = Config::from_toml_str(
            "[archive]\nretention = \"0\"\nretention_groups = { board = \"3650d\" }\npurge_interval = \"0\"\n",
        )
        .unwrap();
        assert!(
            !loaded.warnings.iter().any(|w| w.path.starts_with("archive")),
            "{:?}",
            loaded.warnings
        );
        assert!(loaded.config.archive.retention.is_zero());
        assert_eq!(loaded.config.archive.retention_groups.len(), 1);
        assert!(rejected("[archive]\nretention = \"forever\"\n")[0].contains("archive.retention"));
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
    fn outbound_queue_must_hold_a_login_of_shared_presence() {
        let errors = rejected(
            "[c2s]\noutbound_queue = 999\n[roster]\nmax_shared_contacts = 500\n\
             shared_groups = [{ group = \"staff\" }]\n",
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("c2s.outbound_queue: must be at least 1000")),
            "{errors:?}"
        );
        // Without shared groups the same queue is fine.
        assert!(
            Config::from_toml_str("[c2s]\noutbound_queue = 999\n[roster]\nmax_shared_contacts = 500\n")
                .is_ok()
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
        assert!(
            Config::from_toml_str("[c2s]\nmax_stanza_size = \"16MiB\"\noutbound_queue_bytes = \"16MiB\"\n")
                .is_ok()
        );
        assert_eq!(
            rejected("[c2s]\nmax_stanza_size = \"16MiB\"\n"),
            [
                "c2s.outbound_queue_bytes: must be at least c2s.max_stanza_size, or a stanza of the largest \
              size could never be sent"
            ]
        );
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

    /// A valid LDAP configuration with `extra` lines added to `[ldap]`.
    fn ldap_ok(extra: &str) -> String {
        format!(
            "[directory]\nbackend = \"ldap\"\n[ldap]\nservers = [\"ldaps://ldap.example.com\", \
             \"ldap://127.0.0.1:3389/\"]\nbind_dn = \"cn=parley,dc=example,dc=com\"\n\
             bind_password = \"file:/etc/hostname\"\nbase_dn = \"dc=example,dc=com\"\n{extra}\n\
             [[ldap.groups]]\nname = \"Staff\"\ndn = \"cn=staff,dc=example,dc=com\"\n\
             member_attribute = \"uniqueMember\"\n"
        )
    }

    #[test]
    fn ldap_section_reads_and_validates() {
        let loaded = Config::from_toml_str(&ldap_ok("admin_group = \"Staff\""))
            .unwrap_or_else(|errors| panic!("{errors}"));
        let ldap = &loaded.config.ldap;
        assert_eq!(loaded.config.directory.backend, DirectoryBackend::Ldap);
        assert_eq!(ldap.servers.len(), 2);
        assert_eq!(
            ldap.groups[0].member_attribute,
            crate::LdapMemberAttribute::UniqueMember
        );
        assert_eq!(ldap.bind_password.as_ref().map(|s| s.is_literal()), Some(false));
        assert!(
            loaded.warnings.iter().all(|w| !w.path.starts_with("ldap")),
            "{:?}",
            loaded.warnings
        );
    }

    #[test]
    fn ldap_required_fields_and_bad_values_rejected() {
        let errors = rejected(
            "[directory]\nbackend = \"ldap\"\n[ldap]\nservers = [\"http://x\", \"ldaps://a b\", \
             \"ldap://h:0\"]\nbind_dn = \"cn=x\"\nuser_filter = \"objectClass=*\"\npoll_interval = \"0s\"\n\
             localpart_attribute = \"\"\ntitle_attribute = \"ti tle\"\nadmin_group = \"nope\"\n\
             search_connections = 100\n",
        );
        for expected in [
            "ldap.servers[0]: expected ldaps://host[:port] or ldap://host[:port], got \"http://x\"",
            "ldap.servers[1]: \"ldaps://a b\" has no valid host name (no path, user or query allowed)",
            "ldap.servers[2]: \"ldap://h:0\" has an invalid port",
            "ldap.bind_password: ldap.bind_dn is set, so bind_password must be too",
            "ldap.poll_interval: must be greater than 0",
            "ldap.base_dn: must not be empty, e.g. \"ou=people,dc=example,dc=com\"",
            "ldap.localpart_attribute: must not be empty, e.g. \"uid\"",
            "ldap.title_attribute: \"ti tle\" is not an LDAP attribute name",
            "ldap.admin_group: \"nope\" is not the name of a group in ldap.groups",
            "ldap.search_connections: must be at most 16",
        ] {
            assert!(
                errors.iter().any(|e| e == expected),
                "missing {expected:?} in {errors:#?}"
            );
        }
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("ldap.user_filter: must be a parenthesised"))
        );
        assert_eq!(
            rejected("[directory]\nbackend = \"ldap\"\n").len(),
            2,
            "servers and base_dn"
        );
    }

    /// The LDAP example files load (their secret reference swapped for a literal, since the
    /// referenced file or variable does not exist here).
    #[test]
    fn ldap_example_files_are_valid() {
        for name in ["ldap-openldap.example.toml", "ldap-active-directory.example.toml"] {
            let path = format!("{}/../../config/{name}", env!("CARGO_MANIFEST_DIR"));
            let text = std::fs::read_to_string(&path).unwrap();
            let text: String = text
                .lines()
                .map(|line| {
                    if line.starts_with("bind_password") {
                        "bind_password = \"example\"".to_owned()
                    } else {
                        line.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            let loaded = Config::from_toml_str(&text).unwrap_or_else(|errors| panic!("{name}: {errors}"));
            assert_eq!(loaded.config.directory.backend, DirectoryBackend::Ldap, "{name}");
            assert!(loaded.config.ldap.groups.len() >= 2, "{name}");
        }
    }

    #[test]
    fn ldap_filter_syntax() {
        assert_eq!(check_ldap_filter("(&(uid=a)(!(x=*)))"), Ok(()));
        for bad in ["", "uid=a", "(uid=a", "(uid=a))", "(a=1)(b=2)", "(a=\0)"] {
            assert!(check_ldap_filter(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn ldap_urls() {
        assert_eq!(check_ldap_url("ldaps://ldap.example.com"), Ok(true));
        assert_eq!(check_ldap_url("ldap://127.0.0.1:389/"), Ok(false));
        assert_eq!(check_ldap_url("ldap://[::1]:389"), Ok(false));
        for bad in [
            "ldaps://",
            "ldap://h:99999",
            "ldap://u@h",
            "ldap://h/dc=x",
            "h:389",
        ] {
            assert!(check_ldap_url(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn ldap_risky_settings_warn() {
        let found = warnings(&ldap_ok("starttls = false\ntls_verify = false"));
        assert!(found.contains(&"ldap.servers[1]".to_owned()), "{found:?}");
        assert!(found.contains(&"ldap.tls_verify".to_owned()), "{found:?}");
        assert!(
            !found.contains(&"ldap.servers[0]".to_owned()),
            "ldaps needs no StartTLS"
        );
        let ignored = warnings("[ldap]\nbase_dn = \"dc=x\"\n");
        assert!(ignored.contains(&"ldap".to_owned()), "{ignored:?}");
        let literal = warnings(&ldap_ok("").replace("file:/etc/hostname", "hunter2"));
        assert!(literal.contains(&"ldap.bind_password".to_owned()), "{literal:?}");
    }

    #[test]
    fn empty_paths_rejected() {
        let errors =
            rejected("[server]\ndata_dir = \"\"\n[storage]\npath = \"\"\n[directory]\nstatic_file = \"\"\n");
        assert_eq!(errors.len(), 3, "{errors:#?}");
    }
}

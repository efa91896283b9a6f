//! The loader: TOML text to a validated [`Config`], reporting every problem it can find in one
//! pass, each with its key path.
//!
//! What "every error" covers:
//! - A TOML **syntax** error stops loading: it is the only error reported (with line and column),
//!   because nothing after it can be read reliably.
//! - Otherwise **every unknown key** and **every value of the wrong type or form** is reported,
//!   in every section. Serde stops at the first error of a struct, so the loader deserialises
//!   each top-level section on its own and, after each error, removes the offending key and
//!   tries that section again (the key then counts as its default), until the section reads
//!   cleanly. For a bad array element the whole array is removed, so a second bad element of
//!   the same array is not reported until the first is fixed.
//! - **Semantic checks** (ranges, cross-field rules, secrets) then run on every section that
//!   read cleanly; a section with a type error skips them, so a defaulted value cannot cause
//!   a confusing follow-on error.

use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;

use crate::model::{Config, SECTIONS};
use crate::validate;

/// Largest configuration file accepted.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Errors reported per section before giving up on it, bounding the retry loop.
const MAX_ERRORS_PER_SECTION: usize = 100;

/// What kind of problem a [`ConfigError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigErrorKind {
    /// The file could not be read.
    Io,
    /// The text is not valid TOML.
    Syntax,
    /// A key or section that does not exist (often a typo).
    UnknownKey,
    /// A value of the wrong type or form, e.g. `"huge"` for a size.
    InvalidValue,
    /// A well-formed value that is not acceptable, e.g. a zero limit or a cert without a key.
    Rejected,
}

/// One problem in the configuration, with the dotted key path it concerns (`c2s.max_depth`,
/// `c2s.starttls_listen[1]`); the path is empty for whole-file problems.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// Dotted key path, empty for whole-file problems.
    pub path: String,
    /// The category, for callers that react differently.
    pub kind: ConfigErrorKind,
    /// What is wrong and what is expected.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(path: impl Into<String>, kind: ConfigErrorKind, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Something accepted but worth an admin's attention (`parley check-config` prints these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// Dotted key path.
    pub path: String,
    /// What is risky and why.
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every error found, plus the warnings found on the way. Display prints one error per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// At least one error.
    pub errors: Vec<ConfigError>,
    /// Warnings collected before or alongside the errors.
    pub warnings: Vec<ConfigWarning>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.errors.iter().enumerate() {
            if index > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A configuration that passed every check, with the warnings to show the admin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The validated configuration.
    pub config: Config,
    /// Accepted but risky settings (literal secrets, plaintext authentication...).
    pub warnings: Vec<ConfigWarning>,
}

/// Errors and warnings gathered while loading.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) errors: Vec<ConfigError>,
    pub(crate) warnings: Vec<ConfigWarning>,
}

impl Report {
    /// Records a semantic error.
    pub(crate) fn reject(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors
            .push(ConfigError::new(path, ConfigErrorKind::Rejected, message));
    }

    /// Records a warning.
    pub(crate) fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(ConfigWarning {
            path: path.into(),
            message: message.into(),
        });
    }
}

impl Config {
    /// Parses and validates TOML text. See the module documentation for what is reported.
    pub fn from_toml_str(text: &str) -> Result<Loaded, ConfigErrors> {
        let mut report = Report::default();
        if text.len() as u64 > MAX_CONFIG_BYTES {
            report.errors.push(ConfigError::new(
                "",
                ConfigErrorKind::Io,
                format!("configuration is larger than {MAX_CONFIG_BYTES} bytes"),
            ));
            return Err(ConfigErrors {
                errors: report.errors,
                warnings: report.warnings,
            });
        }
        let table = match toml::from_str::<toml::Table>(text) {
            Ok(table) => table,
            Err(error) => {
                report.errors.push(syntax_error(text, &error));
                return Err(ConfigErrors {
                    errors: report.errors,
                    warnings: report.warnings,
                });
            }
        };
        let mut config = Config::default();
        let mut failed_sections: Vec<&str> = Vec::new();
        for (name, value) in table {
            let clean = match name.as_str() {
                "server" => read_section(&name, value, &mut config.server, &mut report),
                "tls" => read_section(&name, value, &mut config.tls, &mut report),
                "c2s" => read_section(&name, value, &mut config.c2s, &mut report),
                "storage" => read_section(&name, value, &mut config.storage, &mut report),
                "directory" => read_section(&name, value, &mut config.directory, &mut report),
                "ldap" => read_section(&name, value, &mut config.ldap, &mut report),
                "roster" => read_section(&name, value, &mut config.roster, &mut report),
                "offline" => read_section(&name, value, &mut config.offline, &mut report),
                "vcard" => read_section(&name, value, &mut config.vcard, &mut report),
                "private_storage" => read_section(&name, value, &mut config.private_storage, &mut report),
                "archive" => read_section(&name, value, &mut config.archive, &mut report),
                "admin_http" => read_section(&name, value, &mut config.admin_http, &mut report),
                "log" => read_section(&name, value, &mut config.log, &mut report),
                _ => {
                    report.errors.push(ConfigError::new(
                        name.clone(),
                        ConfigErrorKind::UnknownKey,
                        match closest_name(&name, SECTIONS.iter().copied()) {
                            Some(known) => format!("unknown section; did you mean [{known}]?"),
                            None => format!("unknown section; expected one of {}", SECTIONS.join(", ")),
                        },
                    ));
                    false
                }
            };
            if !clean && let Some(known) = SECTIONS.iter().find(|known| **known == name) {
                failed_sections.push(known);
            }
        }
        let checked: Vec<&str> = SECTIONS
            .iter()
            .copied()
            .filter(|name| !failed_sections.contains(name))
            .collect();
        validate::validate(&config, &checked, &mut report);
        // The table is read in key order; show errors in the order of the example file instead
        // (stable, so each section keeps its own order). Unknown sections come last.
        report.errors.sort_by_key(|error| {
            SECTIONS
                .iter()
                .position(|section| belongs_to(&error.path, section))
                .unwrap_or(SECTIONS.len())
        });
        if report.errors.is_empty() {
            Ok(Loaded {
                config,
                warnings: report.warnings,
            })
        } else {
            Err(ConfigErrors {
                errors: report.errors,
                warnings: report.warnings,
            })
        }
    }

    /// Reads (at most [`MAX_CONFIG_BYTES`]) and validates a configuration file.
    pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
        read_bounded(path)
            .map_err(|message| ConfigErrors {
                errors: vec![ConfigError::new("", ConfigErrorKind::Io, message)],
                warnings: Vec::new(),
            })
            .and_then(|text| Self::from_toml_str(&text))
    }
}

fn read_bounded(path: &Path) -> Result<String, String> {
    let file =
        std::fs::File::open(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(format!(
            "{} is larger than {MAX_CONFIG_BYTES} bytes",
            path.display()
        ));
    }
    String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))
}

fn syntax_error(text: &str, error: &toml::de::Error) -> ConfigError {
    let message = error.message().trim_end();
    let located = match error.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |last| last.chars().count()) + 1;
            format!("TOML syntax error at line {line}, column {column}: {message}")
        }
        None => format!("TOML syntax error: {message}"),
    };
    ConfigError::new("", ConfigErrorKind::Syntax, located)
}

/// Deserialises one section into `slot`, recording every error (see the module docs).
/// Returns whether the section read without error; on error `slot` keeps its default.
fn read_section<T: DeserializeOwned>(
    name: &str,
    mut value: toml::Value,
    slot: &mut T,
    report: &mut Report,
) -> bool {
    for _ in 0..MAX_ERRORS_PER_SECTION {
        match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(parsed) => {
                // Only a section that read cleanly replaces the default, so later semantic
                // checks and callers never see a half-read section.
                if report.errors.iter().all(|error| !belongs_to(&error.path, name)) {
                    *slot = parsed;
                    return true;
                }
                return false;
            }
            Err(error) => {
                let segments: Vec<Segment> = error.path().iter().cloned().collect();
                let path = join_path(name, &segments);
                report.errors.push(classify(path, error.into_inner().message()));
                if !remove_at(&mut value, &segments) {
                    return false;
                }
            }
        }
    }
    report.errors.push(ConfigError::new(
        name,
        ConfigErrorKind::InvalidValue,
        format!("more than {MAX_ERRORS_PER_SECTION} errors; stopped reading this section"),
    ));
    false
}

fn belongs_to(path: &str, section: &str) -> bool {
    path.strip_prefix(section)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

fn join_path(section: &str, segments: &[Segment]) -> String {
    let mut path = section.to_owned();
    for segment in segments {
        match segment {
            Segment::Map { key } => {
                path.push('.');
                path.push_str(key);
            }
            Segment::Seq { index } => path.push_str(&format!("[{index}]")),
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    path
}

/// Turns serde's message into ours: unknown keys get their own kind and a shorter text.
fn classify(path: String, message: &str) -> ConfigError {
    let message = message.trim_end();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (unknown, expected) = rest.split_once("`, expected ").unwrap_or((rest, ""));
        // serde lists the expected names between backticks.
        let text = match closest_name(unknown, expected.split('`').skip(1).step_by(2)) {
            Some(known) => format!("unknown key; did you mean `{known}`?"),
            None if !expected.is_empty() => format!("unknown key; expected {expected}"),
            None => "unknown key".to_owned(),
        };
        return ConfigError::new(path, ConfigErrorKind::UnknownKey, text);
    }
    if message == "invalid socket address syntax" {
        // std's message does not say what is expected; IPv6 needs brackets, names are not resolved.
        return ConfigError::new(
            path,
            ConfigErrorKind::InvalidValue,
            "expected an IP address and port like \"0.0.0.0:5222\" or \"[::]:5222\"",
        );
    }
    ConfigError::new(path, ConfigErrorKind::InvalidValue, message)
}

/// The known name a typo most likely meant, if one is close enough to suggest.
fn closest_name<'a>(unknown: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    known
        .map(|name| (edit_distance(unknown, name), name))
        .min()
        .filter(|(distance, name)| *distance <= 2.max(name.len() / 4))
        .map(|(_, name)| name)
}

/// Levenshtein distance, for "did you mean" hints on short key names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, a_char) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, b_char) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(a_char != *b_char);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// Removes the deepest table key on `segments`, so the next attempt gets past this error.
/// Returns false when nothing could be removed (the error is about the section itself).
fn remove_at(value: &mut toml::Value, segments: &[Segment]) -> bool {
    let Some((first, rest)) = segments.split_first() else {
        return false;
    };
    match (first, value) {
        (Segment::Map { key }, toml::Value::Table(table)) => {
            let removed_inside = table.get_mut(key).is_some_and(|child| remove_at(child, rest));
            removed_inside || table.remove(key).is_some()
        }
        (Segment::Enum { .. } | Segment::Unknown, child) => remove_at(child, rest),
        // An array element is never removed on its own (shifting the rest would misreport
        // later indices): returning false makes the caller drop the whole array key.
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(text: &str) -> Vec<ConfigError> {
        Config::from_toml_str(text).expect_err("should fail").errors
    }

    fn paths_of(errors: &[ConfigError]) -> Vec<&str> {
        errors.iter().map(|error| error.path.as_str()).collect()
    }

    #[test]
    fn empty_file_gives_defaults() {
        let loaded = Config::from_toml_str("").unwrap();
        assert_eq!(loaded.config, Config::default());
        assert_eq!(loaded.config.server.domain, "localhost");
        assert_eq!(loaded.config.c2s.max_stanza_size.bytes(), 256 * 1024);
    }

    #[test]
    fn reads_values() {
        let loaded = Config::from_toml_str(
            r#"
            [server]
            domain = "chat.example.com"
            [c2s]
            max_stanza_size = "1 MiB"
            pre_auth_timeout = "1m30s"
            starttls_listen = ["127.0.0.1:15222", "[::1]:15222"]
            direct_tls_listen = []
            [storage]
            backend = "memory"
            [log]
            format = "json"
            "#,
        )
        .unwrap();
        let config = loaded.config;
        assert_eq!(config.server.domain, "chat.example.com");
        assert_eq!(config.c2s.max_stanza_size.bytes(), 1024 * 1024);
        assert_eq!(config.c2s.pre_auth_timeout.get().as_secs(), 90);
        assert_eq!(config.c2s.starttls_listen.len(), 2);
        assert!(config.c2s.direct_tls_listen.is_empty());
        assert_eq!(config.storage.backend, crate::StorageBackend::Memory);
        assert_eq!(config.log.format, crate::LogFormat::Json);
    }

    #[test]
    fn reports_errors_from_several_sections_at_once() {
        let errors = errors_of(
            r#"
            [server]
            domain = "Example.COM"
            [c2s]
            max_stanza_size = "huge"
            max_depth = -3
            ping_timeout = 30
            [roster]
            max_items = 0
            [log]
            format = "xml"
            [tsl]
            cert = "x"
            "#,
        );
        let paths = paths_of(&errors);
        for expected in [
            "server.domain",
            "c2s.max_stanza_size",
            "c2s.max_depth",
            "c2s.ping_timeout",
            "roster.max_items",
            "log.format",
            "tsl",
        ] {
            assert!(paths.contains(&expected), "missing {expected} in {errors:#?}");
        }
        let size_error = errors
            .iter()
            .find(|error| error.path == "c2s.max_stanza_size")
            .unwrap();
        assert_eq!(
            size_error.to_string(),
            r#"c2s.max_stanza_size: expected a size like "256KiB" (units B, kB, MB, GB, TB, KiB, MiB, GiB, TiB), got "huge""#
        );
        assert_eq!(size_error.kind, ConfigErrorKind::InvalidValue);
        let shown = ConfigErrors {
            errors: errors.clone(),
            warnings: Vec::new(),
        }
        .to_string();
        assert_eq!(shown.lines().count(), errors.len());
    }

    #[test]
    fn reports_every_unknown_key_with_its_path() {
        let errors = errors_of(
            r#"
            [c2s]
            max_stanza_sise = "1MiB"
            require_startls = false
            [server]
            domian = "example.com"
            "#,
        );
        let mut unknown: Vec<&str> = errors
            .iter()
            .filter(|error| error.kind == ConfigErrorKind::UnknownKey)
            .map(|error| error.path.as_str())
            .collect();
        unknown.sort_unstable();
        assert_eq!(
            unknown,
            ["c2s.max_stanza_sise", "c2s.require_startls", "server.domian"]
        );
        let typo = errors.iter().find(|error| error.path == "server.domian").unwrap();
        assert_eq!(typo.message, "unknown key; did you mean `domain`?");
        // Sections are listed in the example file's order: server before c2s.
        assert_eq!(errors[0].path, "server.domian");
        let far = errors_of(
            "[server]
colour = 1
",
        );
        assert_eq!(far[0].message, "unknown key; expected `domain` or `data_dir`");
    }

    #[test]
    fn unknown_key_inside_nested_table_has_full_path() {
        let errors = errors_of(
            "[c2s.limits]
max = 1
[server]
domain = \"example.com\"\nnested = { deep = 1 }\n",
        );
        assert_eq!(paths_of(&errors), ["server.nested", "c2s.limits"]);
        let section_typo = errors_of("[tsl]\ncert = \"x\"\n");
        assert_eq!(
            section_typo[0].to_string(),
            "tsl: unknown section; did you mean [tls]?"
        );
        assert!(
            errors
                .iter()
                .all(|error| error.kind == ConfigErrorKind::UnknownKey)
        );
    }

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("domian", "domain"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("max_depth", "max_depth"), 0);
        assert_eq!(edit_distance("max_stanza_sise", "max_stanza_size"), 1);
    }

    #[test]
    fn reports_bad_array_element_with_index() {
        let errors = errors_of("[c2s]\nstarttls_listen = [\"0.0.0.0:5222\", \"not an address\"]\n");
        assert_eq!(paths_of(&errors), ["c2s.starttls_listen[1]"]);
        assert!(errors[0].message.contains("\"0.0.0.0:5222\""), "{}", errors[0]);
    }

    #[test]
    fn section_of_wrong_type_is_reported() {
        let errors = errors_of("c2s = 5\n");
        assert_eq!(paths_of(&errors), ["c2s"]);
        assert_eq!(errors[0].kind, ConfigErrorKind::InvalidValue);
    }

    #[test]
    fn type_error_skips_follow_on_semantic_checks() {
        // key is unreadable, so "cert without key" must not be reported on top of it.
        let errors = errors_of("[tls]\ncert = \"/c.pem\"\nkey = 5\n");
        assert_eq!(paths_of(&errors), ["tls.key"]);
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let errors = errors_of("[server]\ndomain = \"a\"\nthis is not toml\n");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].kind, ConfigErrorKind::Syntax);
        assert!(errors[0].message.contains("line 3"), "{}", errors[0].message);
    }

    #[test]
    fn oversized_text_is_refused() {
        let text = format!("# {}\n", "x".repeat(MAX_CONFIG_BYTES as usize));
        let errors = errors_of(&text);
        assert_eq!(errors[0].kind, ConfigErrorKind::Io);
    }

    #[test]
    fn load_reads_a_file_and_reports_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("parley.toml");
        std::fs::write(&path, "[server]\ndomain = \"example.org\"\n").unwrap();
        assert_eq!(Config::load(&path).unwrap().config.server.domain, "example.org");
        let missing = Config::load(&dir.path().join("absent.toml")).unwrap_err();
        assert_eq!(missing.errors[0].kind, ConfigErrorKind::Io);
        assert!(missing.to_string().contains("absent.toml"), "{missing}");
    }

    #[test]
    fn warns_about_plaintext_authentication() {
        let loaded = Config::from_toml_str("[c2s]\nrequire_starttls = false\n").unwrap();
        assert!(!loaded.config.c2s.require_starttls);
        assert!(
            loaded
                .warnings
                .iter()
                .any(|warning| warning.path == "c2s.require_starttls"),
            "{:?}",
            loaded.warnings
        );
        let strict = Config::from_toml_str("").unwrap();
        assert!(
            strict
                .warnings
                .iter()
                .all(|warning| warning.path != "c2s.require_starttls")
        );
    }

    /// A stand-in for a future section holding secrets (the LDAP bind password), read through
    /// the same machinery as the real sections.
    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct SecretSection {
        password: Option<crate::Secret>,
    }

    fn read_secret_section(text: &str) -> (Option<SecretSection>, Report) {
        let mut report = Report::default();
        let value: toml::Value = toml::from_str::<toml::Table>(text)
            .unwrap()
            .remove("ldap")
            .unwrap();
        let mut slot = SecretSection::default();
        let clean = read_section("ldap", value, &mut slot, &mut report);
        if let Some(password) = slot.password.as_ref().filter(|_| clean) {
            report.warnings.extend(password.literal_warning("ldap.password"));
        }
        (clean.then_some(slot), report)
    }

    #[test]
    fn secrets_resolve_with_paths_and_literals_warn() {
        let (section, report) = read_secret_section("[ldap]\npassword = \"hunter2\"\n");
        assert_eq!(section.unwrap().password.unwrap().expose(), "hunter2");
        assert_eq!(report.warnings.len(), 1);
        assert_eq!(report.warnings[0].path, "ldap.password");

        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, b"from-file\n").unwrap();
        let text = format!("[ldap]\npassword = \"file:{}\"\n", file.path().display());
        let (section, report) = read_secret_section(&text);
        assert_eq!(section.unwrap().password.unwrap().expose(), "from-file");
        assert!(report.warnings.is_empty());

        let (section, report) =
            read_secret_section("[ldap]\npassword = \"env:PARLEY_CONFIG_TEST_UNSET_42B1\"\n");
        assert!(section.is_none());
        assert_eq!(report.errors.len(), 1);
        assert_eq!(
            report.errors[0].to_string(),
            "ldap.password: environment variable PARLEY_CONFIG_TEST_UNSET_42B1 is not set"
        );

        let (_, report) = read_secret_section("[ldap]\npassword = \"file:/nonexistent/parley/secret\"\n");
        assert_eq!(report.errors[0].path, "ldap.password");
        assert!(
            report.errors[0].message.contains("cannot read secret file"),
            "{}",
            report.errors[0]
        );
    }
}

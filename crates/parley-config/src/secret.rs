//! `Secret`: a password or key given by reference (`env:NAME`, `file:/path`) or, discouraged,
//! literally. The value is resolved once, while the configuration is loaded, and is never
//! printed.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Largest secret file read; a secret is a password or token, not a document.
pub const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// Where a secret's value came from. Shown instead of the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `env:NAME`: read from the environment variable `NAME`.
    Env(String),
    /// `file:/path`: the file's contents with trailing line breaks removed.
    File(PathBuf),
    /// Written in the configuration file itself (`check-config` warns about it).
    Literal,
}

/// A resolved secret. `Debug`, `Display` and `Serialize` show only its source.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    source: SecretSource,
    value: String,
}

/// Why a secret could not be resolved. Never contains the secret itself.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The reference or literal is empty, e.g. `"env:"` or `""`.
    #[error("secret is empty")]
    Empty,
    /// `env:NAME` with a name that is not `[A-Za-z_][A-Za-z0-9_]*`.
    #[error("\"env:{0}\" is not a valid environment variable name")]
    BadEnvName(String),
    /// The environment variable is unset.
    #[error("environment variable {0} is not set")]
    EnvMissing(String),
    /// The environment variable is not valid UTF-8.
    #[error("environment variable {0} is not valid UTF-8")]
    EnvNotUnicode(String),
    /// The file could not be opened or read.
    #[error("cannot read secret file {path}: {source}")]
    FileUnreadable {
        /// The file named after `file:`.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_SECRET_FILE_BYTES`].
    #[error("secret file {0} is larger than {MAX_SECRET_FILE_BYTES} bytes")]
    FileTooLarge(PathBuf),
    /// The file is not UTF-8 text.
    #[error("secret file {0} is not UTF-8 text")]
    FileNotUtf8(PathBuf),
}

impl Secret {
    /// Resolves a configuration string: `env:NAME`, `file:/path`, or a literal value.
    pub fn resolve(text: &str) -> Result<Self, SecretError> {
        if let Some(name) = text.strip_prefix("env:") {
            return Self::from_env(name);
        }
        if let Some(path) = text.strip_prefix("file:") {
            if path.is_empty() {
                return Err(SecretError::Empty);
            }
            return Self::from_file(Path::new(path));
        }
        Self::literal(text)
    }

    /// A secret given in the configuration itself.
    pub fn literal(value: &str) -> Result<Self, SecretError> {
        if value.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Self {
            source: SecretSource::Literal,
            value: value.to_owned(),
        })
    }

    fn from_env(name: &str) -> Result<Self, SecretError> {
        if name.is_empty() {
            return Err(SecretError::Empty);
        }
        let valid_name = name
            .chars()
            .enumerate()
            .all(|(index, c)| c == '_' || c.is_ascii_alphabetic() || (index > 0 && c.is_ascii_digit()));
        if !valid_name {
            return Err(SecretError::BadEnvName(crate::size::echo(name)));
        }
        let value = std::env::var(name).map_err(|error| match error {
            std::env::VarError::NotPresent => SecretError::EnvMissing(name.to_owned()),
            std::env::VarError::NotUnicode(_) => SecretError::EnvNotUnicode(name.to_owned()),
        })?;
        if value.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Self {
            source: SecretSource::Env(name.to_owned()),
            value,
        })
    }

    fn from_file(path: &Path) -> Result<Self, SecretError> {
        let unreadable = |source| SecretError::FileUnreadable {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(unreadable)?;
        // Read one byte past the limit to tell "exactly at the limit" from "too large".
        let mut bytes = Vec::new();
        file.take(MAX_SECRET_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(unreadable)?;
        if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
            return Err(SecretError::FileTooLarge(path.to_owned()));
        }
        let mut value = String::from_utf8(bytes).map_err(|_| SecretError::FileNotUtf8(path.to_owned()))?;
        // Editors and `echo` add a final newline that is never part of the password.
        let kept = value.trim_end_matches(['\n', '\r']).len();
        value.truncate(kept);
        if value.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Self {
            source: SecretSource::File(path.to_owned()),
            value,
        })
    }

    /// The secret value. Call only where it is used (a bind, a hash), never to log it.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// Where the value came from.
    pub fn source(&self) -> &SecretSource {
        &self.source
    }

    /// The warning `check-config` shows for a secret written in the file itself, if it is one.
    /// Sections holding secrets add this to their warnings.
    pub fn literal_warning(&self, path: &str) -> Option<crate::ConfigWarning> {
        self.is_literal().then(|| crate::ConfigWarning {
            path: path.to_owned(),
            message: "secret is written in the configuration file; use \"env:NAME\" or \"file:/path\" \
                      instead"
                .to_owned(),
        })
    }

    /// True when written literally in the configuration file.
    pub fn is_literal(&self) -> bool {
        self.source == SecretSource::Literal
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            SecretSource::Env(name) => write!(f, "env:{name}"),
            SecretSource::File(path) => write!(f, "file:{}", path.display()),
            SecretSource::Literal => f.write_str("<redacted>"),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({self})")
    }
}

/// Serialises the reference, so printing the effective configuration never leaks a value.
/// A literal prints as `<redacted>`, so such output does not round-trip, by design.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

struct SecretVisitor;

impl Visitor<'_> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a secret: \"env:NAME\", \"file:/path\" or a literal string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Secret, E> {
        Secret::resolve(v).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(SecretVisitor)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// A unique name, so no other test or process can be affected by it.
    const TEST_ENV_NAME: &str = "PARLEY_CONFIG_TEST_SECRET_7F3A";

    /// `set_var` needs `unsafe` in edition 2024 (forbidden here), so the variable is set by
    /// re-running this test binary as a child with it in its environment; this probe is that
    /// child's test and is ignored in normal runs.
    #[test]
    #[ignore = "run by env_reference_reads_the_variable in a child process"]
    fn env_child_probe() {
        let secret = Secret::resolve(&format!("env:{TEST_ENV_NAME}")).unwrap();
        assert_eq!(secret.expose(), "from the environment");
        assert_eq!(secret.source(), &SecretSource::Env(TEST_ENV_NAME.to_owned()));
        assert!(!secret.is_literal());
        assert_eq!(secret.to_string(), format!("env:{TEST_ENV_NAME}"));
    }

    #[test]
    fn env_reference_reads_the_variable() {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "secret::tests::env_child_probe",
                "--include-ignored",
                "--test-threads=1",
            ])
            .env(TEST_ENV_NAME, "from the environment")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.contains("1 passed"), "{stdout}");
    }

    #[test]
    fn env_reference_reports_missing_variable() {
        let missing = Secret::resolve("env:PARLEY_CONFIG_TEST_SURELY_UNSET_9C1E").unwrap_err();
        assert!(
            matches!(missing, SecretError::EnvMissing(ref n) if n == "PARLEY_CONFIG_TEST_SURELY_UNSET_9C1E")
        );
        assert_eq!(
            missing.to_string(),
            "environment variable PARLEY_CONFIG_TEST_SURELY_UNSET_9C1E is not set"
        );
    }

    #[test]
    fn env_reference_rejects_bad_names() {
        assert!(matches!(Secret::resolve("env:"), Err(SecretError::Empty)));
        assert!(matches!(
            Secret::resolve("env:1ABC"),
            Err(SecretError::BadEnvName(_))
        ));
        assert!(matches!(
            Secret::resolve("env:A-B"),
            Err(SecretError::BadEnvName(_))
        ));
    }

    #[test]
    fn file_reference_trims_trailing_newline() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(b"s3cret value\r\n\n").unwrap();
        let secret = Secret::resolve(&format!("file:{}", file.path().display())).unwrap();
        assert_eq!(secret.expose(), "s3cret value");
        assert_eq!(secret.source(), &SecretSource::File(file.path().to_owned()));
    }

    #[test]
    fn file_reference_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("absent");
        let error = Secret::resolve(&format!("file:{}", missing.display())).unwrap_err();
        assert!(matches!(error, SecretError::FileUnreadable { .. }), "{error}");

        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        assert!(matches!(
            Secret::resolve(&format!("file:{}", empty.display())),
            Err(SecretError::Empty)
        ));

        let large = dir.path().join("large");
        std::fs::write(&large, vec![b'a'; MAX_SECRET_FILE_BYTES as usize + 1]).unwrap();
        let error = Secret::resolve(&format!("file:{}", large.display())).unwrap_err();
        assert!(matches!(error, SecretError::FileTooLarge(_)), "{error}");

        let binary = dir.path().join("binary");
        std::fs::write(&binary, [0xff, 0xfe]).unwrap();
        let error = Secret::resolve(&format!("file:{}", binary.display())).unwrap_err();
        assert!(matches!(error, SecretError::FileNotUtf8(_)), "{error}");

        assert!(matches!(Secret::resolve("file:"), Err(SecretError::Empty)));
    }

    #[test]
    fn literal_is_flagged_and_never_shown() {
        let secret = Secret::resolve("hunter2").unwrap();
        assert!(secret.is_literal());
        assert_eq!(secret.expose(), "hunter2");
        assert!(!format!("{secret}").contains("hunter2"));
        assert!(!format!("{secret:?}").contains("hunter2"));
        assert!(!serde_json::to_string(&secret).unwrap().contains("hunter2"));
        assert!(matches!(Secret::resolve(""), Err(SecretError::Empty)));
    }
}

//! Where test accounts come from: a `user{n}:pass{n}` pattern over n in 1..=N, or a file with
//! `jid password` per line. Both are operator input, so sizes are bounded and errors name the line.

use std::path::Path;

use thiserror::Error;

use crate::session::Account;

/// A users file larger than this is refused rather than read into memory.
const MAX_USERS_FILE_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AccountsError {
    #[error("--users pattern must be 'USER:PASSWORD' (with {{n}} for the index), got {0:?}")]
    BadPattern(String),
    #[error("users file {path}: {message}")]
    File { path: String, message: String },
    #[error("users file {path} line {line}: expected 'jid password'")]
    BadLine { path: String, line: usize },
    #[error("{needed} accounts needed, only {available} available")]
    TooFew { needed: usize, available: usize },
}

/// Expands the pattern for n in 1..=count.
pub fn from_pattern(pattern: &str, count: usize) -> Result<Vec<Account>, AccountsError> {
    let (user, password) = pattern
        .split_once(':')
        .ok_or_else(|| AccountsError::BadPattern(pattern.into()))?;
    if user.is_empty() || password.is_empty() {
        return Err(AccountsError::BadPattern(pattern.into()));
    }
    Ok((1..=count)
        .map(|n| {
            let n = n.to_string();
            Account {
                user: user.replace("{n}", &n),
                password: password.replace("{n}", &n),
            }
        })
        .collect())
}

/// Reads `jid password` lines; blank lines and `#` comments are skipped.
pub fn from_file(path: &Path) -> Result<Vec<Account>, AccountsError> {
    let shown = path.display().to_string();
    let file_error = |message: String| AccountsError::File {
        path: shown.clone(),
        message,
    };
    let size = std::fs::metadata(path)
        .map_err(|e| file_error(e.to_string()))?
        .len();
    if size > MAX_USERS_FILE_BYTES {
        return Err(file_error(format!("larger than {MAX_USERS_FILE_BYTES} bytes")));
    }
    let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
    parse_lines(&text, &shown)
}

fn parse_lines(text: &str, shown: &str) -> Result<Vec<Account>, AccountsError> {
    let mut accounts = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || AccountsError::BadLine {
            path: shown.to_owned(),
            line: number + 1,
        };
        let (user, password) = line.split_once(char::is_whitespace).ok_or_else(bad)?;
        let password = password.trim();
        if user.is_empty() || password.is_empty() {
            return Err(bad());
        }
        accounts.push(Account {
            user: user.to_owned(),
            password: password.to_owned(),
        });
    }
    Ok(accounts)
}

/// Checks that enough accounts exist for the requested sessions.
pub fn require(accounts: &[Account], needed: usize) -> Result<(), AccountsError> {
    if accounts.len() < needed {
        return Err(AccountsError::TooFew {
            needed,
            available: accounts.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_expands_indices() {
        let accounts = from_pattern("user{n}:pass{n}", 3).unwrap();
        assert_eq!(accounts.len(), 3);
        assert_eq!(
            accounts[2],
            Account {
                user: "user3".into(),
                password: "pass3".into()
            }
        );
        let fixed = from_pattern("bot{n}:secret:with:colons", 1).unwrap();
        assert_eq!(fixed[0].password, "secret:with:colons");
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(matches!(
            from_pattern("nocolon", 1),
            Err(AccountsError::BadPattern(_))
        ));
        assert!(matches!(
            from_pattern(":pass", 1),
            Err(AccountsError::BadPattern(_))
        ));
        assert!(matches!(
            from_pattern("user:", 1),
            Err(AccountsError::BadPattern(_))
        ));
    }

    #[test]
    fn file_lines() {
        let accounts = parse_lines("# comment\n\nalice@example.org  s3cret \nbob pw\n", "f").unwrap();
        assert_eq!(accounts.len(), 2);
        assert_eq!(
            accounts[0],
            Account {
                user: "alice@example.org".into(),
                password: "s3cret".into()
            }
        );
        assert_eq!(
            parse_lines("alice\n", "f"),
            Err(AccountsError::BadLine {
                path: "f".into(),
                line: 1
            })
        );
        assert!(matches!(
            from_file(Path::new("/nonexistent/users")),
            Err(AccountsError::File { .. })
        ));
        assert!(require(&accounts, 3).is_err());
        assert!(require(&accounts, 2).is_ok());
    }
}

//! PRECIS normalisation of localparts (RFC 8265 §3.3 + RFC 7622 §3.3) and passwords (RFC 8265 §4.2).

use precis_profiles::precis_core::profile::PrecisFastInvocation;
use precis_profiles::{OpaqueString, UsernameCaseMapped};

use crate::DirectoryError;

/// RFC 7622 §3.3.1: a localpart is at most 1023 octets.
pub const MAX_LOCALPART_BYTES: usize = 1023;
/// Passwords longer than this are refused before any PRECIS or hashing work, so an attacker can't make
/// us hash megabytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Characters RFC 7622 §3.3.1 forbids in a localpart even though UsernameCaseMapped allows them.
const FORBIDDEN_LOCALPART_CHARS: [char; 7] = ['"', '&', '\'', '/', ':', '<', '>'];

/// Normalise a JID localpart: PRECIS UsernameCaseMapped (width mapping, case folding, NFC), then the
/// extra RFC 7622 exclusions (`" & ' / : < > @`) and the 1023-byte limit.
pub fn normalize_localpart(input: &str) -> Result<String, DirectoryError> {
    // Checked on the input too, so a huge string is rejected before PRECIS walks it.
    if input.is_empty() {
        return Err(DirectoryError::InvalidLocalpart("empty".into()));
    }
    if input.len() > MAX_LOCALPART_BYTES * 4 {
        return Err(DirectoryError::InvalidLocalpart("longer than 1023 bytes".into()));
    }
    let enforced = UsernameCaseMapped::enforce(input)
        .map_err(|err| DirectoryError::InvalidLocalpart(format!("not a PRECIS username: {err}")))?;
    if enforced.is_empty() {
        return Err(DirectoryError::InvalidLocalpart("empty".into()));
    }
    if enforced.len() > MAX_LOCALPART_BYTES {
        return Err(DirectoryError::InvalidLocalpart("longer than 1023 bytes".into()));
    }
    // '@' is disallowed by RFC 7622 too; checked after mapping because width mapping turns U+FF20 into '@'.
    if let Some(bad) = enforced
        .chars()
        .find(|c| *c == '@' || FORBIDDEN_LOCALPART_CHARS.contains(c))
    {
        return Err(DirectoryError::InvalidLocalpart(format!(
            "contains forbidden character {bad:?}"
        )));
    }
    Ok(enforced.into_owned())
}

/// Normalise a password with PRECIS OpaqueString (non-ASCII spaces to U+0020, NFC, no controls).
pub fn normalize_password(input: &str) -> Result<String, DirectoryError> {
    if input.len() > MAX_PASSWORD_BYTES {
        return Err(DirectoryError::InvalidPassword("longer than 1024 bytes".into()));
    }
    let enforced = OpaqueString::enforce(input)
        .map_err(|err| DirectoryError::InvalidPassword(format!("not a PRECIS OpaqueString: {err}")))?;
    if enforced.is_empty() {
        return Err(DirectoryError::InvalidPassword("empty".into()));
    }
    Ok(enforced.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localpart_case_folds() {
        assert_eq!(normalize_localpart("Alice").unwrap(), "alice");
        assert_eq!(normalize_localpart("ÅSA").unwrap(), "åsa");
    }

    #[test]
    fn localpart_width_maps_fullwidth_letters() {
        // U+FF21 FULLWIDTH LATIN CAPITAL LETTER A, U+FF42 FULLWIDTH LATIN SMALL LETTER B
        assert_eq!(normalize_localpart("\u{FF21}\u{FF42}").unwrap(), "ab");
    }

    #[test]
    fn localpart_rejects_rfc7622_exclusions() {
        for bad in [
            "a@b",
            "a/b",
            "a:b",
            "a<b",
            "a>b",
            "a&b",
            "a'b",
            "a\"b",
            "a\u{FF20}b",
        ] {
            assert!(
                matches!(normalize_localpart(bad), Err(DirectoryError::InvalidLocalpart(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn localpart_rejects_empty_space_and_control() {
        assert!(normalize_localpart("").is_err());
        assert!(normalize_localpart("a b").is_err());
        assert!(normalize_localpart("a\u{0}b").is_err());
    }

    #[test]
    fn localpart_length_limit() {
        assert!(normalize_localpart(&"a".repeat(1023)).is_ok());
        assert!(normalize_localpart(&"a".repeat(1024)).is_err());
        assert!(normalize_localpart(&"a".repeat(100_000)).is_err());
    }

    #[test]
    fn password_maps_spaces_and_keeps_case() {
        // U+00A0 NO-BREAK SPACE becomes an ASCII space; case is preserved.
        assert_eq!(normalize_password("Pass\u{A0}Word").unwrap(), "Pass Word");
    }

    #[test]
    fn password_rejects_empty_control_and_huge() {
        assert!(normalize_password("").is_err());
        assert!(normalize_password("a\u{7}b").is_err());
        assert!(normalize_password(&"x".repeat(2000)).is_err());
    }
}

//! Search filters built from configuration and user input. Every value that comes from a user
//! or from the directory is escaped (RFC 4515 §3: `*`, `(`, `)`, `\` and NUL as `\XX`), so a
//! name like `*)(uid=*` matches itself literally and nothing else.

use parley_config::LdapConfig;

/// Escapes a value for use inside an RFC 4515 filter assertion.
pub fn escape_filter_value(value: &str) -> String {
    ldap3::ldap_escape(value).into_owned()
}

/// The filter finding the one enabled user whose localpart is `localpart` (already normalised):
/// the configured user filter AND the localpart attribute equal to it (or, for e-mail
/// localparts, starting with `localpart@`).
pub fn user_login_filter(config: &LdapConfig, localpart: &str) -> String {
    let escaped = escape_filter_value(localpart);
    let attribute = &config.localpart_attribute;
    let assertion = if config.localpart_is_email {
        format!("({attribute}={escaped}@*)")
    } else {
        format!("({attribute}={escaped})")
    };
    format!("(&{}{assertion})", config.user_filter.trim())
}

/// Entries changed at or after `since` (an LDAP GeneralizedTime taken from the directory
/// itself, so clocks never need to agree).
pub fn changed_since_filter(since: &str) -> String {
    format!("(modifyTimestamp>={})", escape_filter_value(since))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_every_special_character() {
        assert_eq!(escape_filter_value("plain.name-1"), "plain.name-1");
        assert_eq!(escape_filter_value("*)(uid=*"), "\\2a\\29\\28uid=\\2a");
        assert_eq!(escape_filter_value("a\\b"), "a\\5cb");
        assert_eq!(escape_filter_value("nul\0"), "nul\\00");
        assert_eq!(escape_filter_value("jösé"), "jösé", "UTF-8 passes as is");
    }

    #[test]
    fn login_filter_combines_the_enabled_condition() {
        let config = LdapConfig::default();
        assert_eq!(
            user_login_filter(&config, "alice"),
            "(&(&(objectClass=inetOrgPerson)(!(pwdAccountLockedTime=*)))(uid=alice))"
        );
    }

    #[test]
    fn login_filter_cannot_be_widened_by_input() {
        let config = LdapConfig::default();
        for hostile in ["*", "al*", "*)(uid=*", "x)(|(uid=*)", "a\\2a"] {
            let filter = user_login_filter(&config, hostile);
            let assertion =
                filter.strip_prefix("(&(&(objectClass=inetOrgPerson)(!(pwdAccountLockedTime=*)))(uid=");
            let value = assertion
                .and_then(|rest| rest.strip_suffix("))"))
                .unwrap_or_else(|| panic!("{filter}"));
            assert!(!value.contains(['*', '(', ')']), "{hostile:?} gave {filter}");
            assert_eq!(
                ldap3::ldap_unescape(value).unwrap(),
                hostile,
                "the value round-trips"
            );
        }
    }

    #[test]
    fn email_localparts_match_the_part_before_the_at() {
        let config = LdapConfig {
            localpart_attribute: "mail".into(),
            localpart_is_email: true,
            user_filter: "(objectClass=person)".into(),
            ..LdapConfig::default()
        };
        assert_eq!(
            user_login_filter(&config, "jo*"),
            "(&(objectClass=person)(mail=jo\\2a@*))"
        );
    }

    #[test]
    fn changed_since_is_escaped() {
        assert_eq!(
            changed_since_filter("20240101000000Z"),
            "(modifyTimestamp>=20240101000000Z)"
        );
        assert_eq!(
            changed_since_filter("1)(x=*"),
            "(modifyTimestamp>=1\\29\\28x=\\2a)"
        );
    }
}

//! Distinguished-name comparison (RFC 4514): directories write the same DN in several ways
//! (`cn=Doe\, John` and `CN=Doe\2C John`), so group members are matched on a normal form.

/// Longest DN accepted; longer values are treated as not matching anything.
pub const MAX_DN_BYTES: usize = 4096;

/// A canonical form for comparing DNs: attribute types and values lower-cased, escapes resolved
/// and re-applied one way, spaces around separators removed, multi-valued RDNs sorted.
/// Returns None for a value that is not a DN.
pub fn normalize_dn(dn: &str) -> Option<String> {
    if dn.len() > MAX_DN_BYTES {
        return None;
    }
    let mut rdns: Vec<String> = Vec::new();
    let mut avas: Vec<String> = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    let bytes = dn.as_bytes();
    let mut index = 0;
    // Positions in `current` that came from escapes, so trimming keeps escaped spaces.
    let mut escaped_until = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        match byte {
            b'\\' => {
                let next = *bytes.get(index + 1)?;
                if next.is_ascii_hexdigit() {
                    let high = hex_value(next)?;
                    let low = hex_value(*bytes.get(index + 2)?)?;
                    current.push(high << 4 | low);
                    index += 3;
                } else {
                    current.push(next);
                    index += 2;
                }
                escaped_until = current.len();
                continue;
            }
            b',' | b';' | b'+' => {
                avas.push(normalize_ava(&current, escaped_until)?);
                current.clear();
                escaped_until = 0;
                if byte != b'+' {
                    avas.sort();
                    rdns.push(avas.join("+"));
                    avas.clear();
                }
            }
            _ => current.push(byte),
        }
        index += 1;
    }
    if current.iter().all(u8::is_ascii_whitespace) && rdns.is_empty() && avas.is_empty() {
        // The empty DN (the root DSE) is valid but names no user or group.
        return None;
    }
    avas.push(normalize_ava(&current, escaped_until)?);
    avas.sort();
    rdns.push(avas.join("+"));
    Some(rdns.join(","))
}

fn hex_value(digit: u8) -> Option<u8> {
    (digit as char)
        .to_digit(16)
        .and_then(|value| u8::try_from(value).ok())
}

/// `type=value` with the value unescaped in `raw`; `escaped_until` marks escaped bytes that
/// trimming must keep.
fn normalize_ava(raw: &[u8], escaped_until: usize) -> Option<String> {
    let equals = raw.iter().position(|b| *b == b'=')?;
    let attribute = std::str::from_utf8(&raw[..equals])
        .ok()?
        .trim()
        .to_ascii_lowercase();
    if attribute.is_empty()
        || !attribute
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return None;
    }
    let mut value = &raw[equals + 1..];
    while value.first().is_some_and(u8::is_ascii_whitespace) {
        value = &value[1..];
    }
    let keep_end = escaped_until.saturating_sub(equals + 1);
    while value.len() > keep_end && value.last().is_some_and(u8::is_ascii_whitespace) {
        value = &value[..value.len() - 1];
    }
    let value = String::from_utf8_lossy(value).to_lowercase();
    let mut escaped = String::with_capacity(value.len());
    for (position, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (position == 0 && (c == '#' || c == ' '));
        if special {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    Some(format!("{attribute}={escaped}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_dn_are_equal() {
        let canonical = normalize_dn("cn=Doe\\, John,ou=Sales Team,dc=example,dc=com").unwrap();
        for variant in [
            "CN=Doe\\2C John,OU=Sales Team,DC=Example,DC=com",
            "cn=doe\\, john, ou=sales team, dc=example, dc=com",
            "cn = Doe\\2c John;ou=Sales Team,dc=example,dc=com",
        ] {
            assert_eq!(
                normalize_dn(variant).as_deref(),
                Some(canonical.as_str()),
                "{variant}"
            );
        }
        assert_eq!(canonical, "cn=doe\\, john,ou=sales team,dc=example,dc=com");
    }

    #[test]
    fn different_dns_differ() {
        assert_ne!(
            normalize_dn("uid=alice,ou=people,dc=example,dc=com"),
            normalize_dn("uid=alice,ou=contractors,dc=example,dc=com")
        );
        // An escaped comma is part of the value, not a separator.
        assert_ne!(normalize_dn("cn=a\\,b,dc=x"), normalize_dn("cn=a,b=b,dc=x"));
    }

    #[test]
    fn multi_valued_rdn_order_does_not_matter() {
        assert_eq!(normalize_dn("cn=a+uid=b,dc=x"), normalize_dn("uid=b+cn=a,dc=x"));
    }

    #[test]
    fn escaped_trailing_space_is_kept() {
        assert_ne!(normalize_dn("cn=a\\ ,dc=x"), normalize_dn("cn=a,dc=x"));
        assert_eq!(normalize_dn("cn=a ,dc=x"), normalize_dn("cn=a,dc=x"));
    }

    #[test]
    fn non_dns_are_rejected() {
        for bad in [
            "",
            "   ",
            "alice",
            "cn=a,,dc=x",
            "cn=a\\",
            "cn=a\\4",
            "=a,dc=x",
            "c n=a",
        ] {
            assert_eq!(normalize_dn(bad), None, "{bad:?}");
        }
        assert_eq!(normalize_dn(&format!("cn={}", "a".repeat(MAX_DN_BYTES))), None);
    }
}

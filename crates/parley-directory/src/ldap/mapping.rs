//! From directory entries to Parley's namespace: which entry is which localpart, what its
//! details are, who is in which configured group. Pure functions over plain data, so every
//! rule is unit-tested without a server. Entries that can't be mapped or collide get no JID
//! and are reported.

use std::collections::{BTreeMap, HashMap, HashSet};

use parley_config::{LdapConfig, LdapGroupConfig, LdapMemberAttribute};

use super::dn::normalize_dn;
use crate::{Person, normalize_localpart};

/// Longest attribute value kept for a person's details; longer values are cut (at a character
/// boundary), so a huge attribute can't bloat every roster and vCard.
pub const MAX_DETAIL_BYTES: usize = 1024;

/// One directory entry as read: its DN and attributes (names lower-cased).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawEntry {
    pub dn: String,
    pub attrs: HashMap<String, Vec<String>>,
    /// Values that are not UTF-8 (such as `jpegPhoto`), names lower-cased.
    pub binary: HashMap<String, Vec<Vec<u8>>>,
}

impl RawEntry {
    /// Builds an entry, lower-casing attribute names (LDAP names are case-insensitive).
    pub fn new(dn: impl Into<String>, attrs: impl IntoIterator<Item = (String, Vec<String>)>) -> Self {
        let mut lowered: HashMap<String, Vec<String>> = HashMap::new();
        for (name, values) in attrs {
            lowered
                .entry(name.to_ascii_lowercase())
                .or_default()
                .extend(values);
        }
        Self {
            dn: dn.into(),
            attrs: lowered,
            binary: HashMap::new(),
        }
    }

    /// Adds binary values (ldap3 keeps values that are not UTF-8 apart).
    pub fn with_binary(mut self, attrs: impl IntoIterator<Item = (String, Vec<Vec<u8>>)>) -> Self {
        for (name, values) in attrs {
            self.binary
                .entry(name.to_ascii_lowercase())
                .or_default()
                .extend(values);
        }
        self
    }

    /// The first value of `attribute` as bytes, binary or text.
    pub fn first_bytes(&self, attribute: &str) -> Option<&[u8]> {
        if attribute.is_empty() {
            return None;
        }
        let name = attribute.to_ascii_lowercase();
        self.binary
            .get(&name)
            .and_then(|values| values.first())
            .map(Vec::as_slice)
            .or_else(|| self.first(attribute).map(str::as_bytes))
    }

    /// All values of `attribute` (any case; options such as `;lang-en` are not merged).
    pub fn values(&self, attribute: &str) -> &[String] {
        self.attrs
            .get(&attribute.to_ascii_lowercase())
            .map_or(&[], Vec::as_slice)
    }

    /// The first value of `attribute`, if any.
    pub fn first(&self, attribute: &str) -> Option<&str> {
        if attribute.is_empty() {
            return None;
        }
        self.values(attribute).first().map(String::as_str)
    }
}

/// Something about the directory an admin should fix; shown by `parley directory check`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MappingProblem {
    /// The entry matches the user filter but yields no valid localpart.
    Unmappable { dn: String, reason: String },
    /// Several entries map to one localpart; none of them gets it.
    Collision { localpart: String, dns: Vec<String> },
    /// A configured group's entry was not found or could not be read.
    GroupUnreadable { group: String, reason: String },
}

impl std::fmt::Display for MappingProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unmappable { dn, reason } => write!(f, "{dn}: no account: {reason}"),
            Self::Collision { localpart, dns } => {
                write!(
                    f,
                    "\"{localpart}\" is claimed by {} entries, so none gets it: ",
                    dns.len()
                )?;
                f.write_str(&dns.join("; "))
            }
            Self::GroupUnreadable { group, reason } => write!(f, "group \"{group}\": {reason}"),
        }
    }
}

/// Everything Parley knows from one full read of the directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// People by localpart, with `groups` and `admin` filled in.
    pub people: BTreeMap<String, Person>,
    /// Each person's entry DN, by localpart.
    pub dns: BTreeMap<String, String>,
    /// Members (sorted localparts) of each configured group, by group name.
    pub groups: BTreeMap<String, Vec<String>>,
    pub problems: Vec<MappingProblem>,
}

/// The localpart an entry maps to, or why it has none.
pub fn localpart_of(entry: &RawEntry, config: &LdapConfig) -> Result<String, String> {
    let attribute = &config.localpart_attribute;
    let value = entry
        .first(attribute)
        .ok_or_else(|| format!("has no {attribute} attribute"))?;
    let local = if config.localpart_is_email {
        match value.rsplit_once('@') {
            Some((local, domain)) if !local.is_empty() && !domain.is_empty() => local,
            _ => {
                return Err(format!(
                    "{attribute} \"{}\" is not an e-mail address",
                    shorten(value)
                ));
            }
        }
    } else {
        value
    };
    normalize_localpart(local).map_err(|error| format!("{attribute} \"{}\": {error}", shorten(local)))
}

/// The person an entry describes (without groups), given its localpart.
pub fn person_of(entry: &RawEntry, localpart: String, config: &LdapConfig) -> Person {
    let detail = |attribute: &str| entry.first(attribute).map(|value| shorten(value).to_owned());
    Person {
        localpart,
        display_name: detail(&config.display_name_attribute),
        email: detail(&config.email_attribute),
        department: detail(&config.department_attribute),
        title: detail(&config.title_attribute),
        phone: detail(&config.phone_attribute),
        groups: Vec::new(),
        admin: false,
    }
}

/// The vCard details of an entry read with the profile attributes. A photo larger than
/// `max_photo_size`, or one that is not a JPEG, is left out.
pub fn profile_of(entry: &RawEntry, config: &LdapConfig) -> crate::Profile {
    let detail = |attribute: &str| entry.first(attribute).map(|value| shorten(value).to_owned());
    let photo = entry
        .first_bytes(&config.photo_attribute)
        .filter(|data| data.len() <= config.max_photo_size.to_usize() && data.starts_with(&[0xFF, 0xD8]))
        .map(|data| crate::Photo {
            media_type: "image/jpeg".to_owned(),
            data: data.to_vec(),
        });
    crate::Profile {
        given_name: detail(&config.given_name_attribute),
        family_name: detail(&config.family_name_attribute),
        nickname: detail(&config.nickname_attribute),
        photo,
    }
}

/// The attributes to request for users: the mapped ones plus those groups need.
pub fn user_attributes(config: &LdapConfig) -> Vec<String> {
    let mut attributes: Vec<String> = [
        &config.localpart_attribute,
        &config.display_name_attribute,
        &config.email_attribute,
        &config.department_attribute,
        &config.title_attribute,
        &config.phone_attribute,
    ]
    .into_iter()
    .filter(|name| !name.is_empty())
    .cloned()
    .collect();
    for group in &config.groups {
        match group.member_attribute {
            LdapMemberAttribute::MemberOf => attributes.push("memberOf".to_owned()),
            LdapMemberAttribute::MemberUid => attributes.push("uid".to_owned()),
            LdapMemberAttribute::Member | LdapMemberAttribute::UniqueMember => {}
        }
    }
    attributes.sort_by_key(|name| name.to_ascii_lowercase());
    attributes.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
    attributes
}

/// The attribute a group entry lists its members in (None for `memberOf`, read from users).
pub fn group_member_attribute(group: &LdapGroupConfig) -> Option<&'static str> {
    match group.member_attribute {
        LdapMemberAttribute::Member => Some("member"),
        LdapMemberAttribute::UniqueMember => Some("uniqueMember"),
        LdapMemberAttribute::MemberUid => Some("memberUid"),
        LdapMemberAttribute::MemberOf => None,
    }
}

/// Maps users and groups into a [`Snapshot`]. `groups` holds, for each configured group, its
/// entry or why it could not be read (`memberOf` groups need no entry: pass `Ok(None)`).
pub fn build_snapshot(
    users: &[RawEntry],
    groups: &[(LdapGroupConfig, Result<Option<RawEntry>, String>)],
    config: &LdapConfig,
) -> Snapshot {
    let mut problems = Vec::new();
    let mut claims: BTreeMap<String, Vec<&RawEntry>> = BTreeMap::new();
    for entry in users {
        match localpart_of(entry, config) {
            Ok(localpart) => claims.entry(localpart).or_default().push(entry),
            Err(reason) => problems.push(MappingProblem::Unmappable {
                dn: entry.dn.clone(),
                reason,
            }),
        }
    }
    let mut people = BTreeMap::new();
    let mut dns = BTreeMap::new();
    let mut by_dn: HashMap<String, String> = HashMap::new();
    let mut by_uid: HashMap<String, String> = HashMap::new();
    let mut member_of: HashMap<String, Vec<String>> = HashMap::new();
    for (localpart, entries) in claims {
        let [entry] = entries.as_slice() else {
            problems.push(MappingProblem::Collision {
                localpart,
                dns: entries.iter().map(|entry| entry.dn.clone()).collect(),
            });
            continue;
        };
        if let Some(dn) = normalize_dn(&entry.dn) {
            by_dn.insert(dn, localpart.clone());
        }
        for uid in entry.values("uid") {
            if let Ok(uid) = normalize_localpart(uid) {
                by_uid.insert(uid, localpart.clone());
            }
        }
        let groups_of_entry = entry
            .values("memberOf")
            .iter()
            .filter_map(|dn| normalize_dn(dn))
            .collect();
        member_of.insert(localpart.clone(), groups_of_entry);
        people.insert(localpart.clone(), person_of(entry, localpart.clone(), config));
        dns.insert(localpart, entry.dn.clone());
    }

    let mut group_members = BTreeMap::new();
    for (group, entry) in groups {
        let mut members: Vec<String> = match (group.member_attribute, entry) {
            (_, Err(reason)) => {
                problems.push(MappingProblem::GroupUnreadable {
                    group: group.name.clone(),
                    reason: reason.clone(),
                });
                Vec::new()
            }
            (LdapMemberAttribute::MemberOf, _) => {
                let group_dn = normalize_dn(&group.dn);
                member_of
                    .iter()
                    .filter(|(_, of)| group_dn.as_ref().is_some_and(|dn| of.contains(dn)))
                    .map(|(localpart, _)| localpart.clone())
                    .collect()
            }
            (LdapMemberAttribute::MemberUid, Ok(Some(entry))) => entry
                .values("memberUid")
                .iter()
                .filter_map(|uid| normalize_localpart(uid).ok())
                .filter_map(|uid| by_uid.get(&uid).cloned())
                .collect(),
            (LdapMemberAttribute::Member | LdapMemberAttribute::UniqueMember, Ok(Some(entry))) => {
                let attribute = group_member_attribute(group).unwrap_or("member");
                entry
                    .values(attribute)
                    .iter()
                    .filter_map(|value| normalize_dn(strip_unique_id(value)))
                    .filter_map(|dn| by_dn.get(&dn).cloned())
                    .collect()
            }
            (_, Ok(None)) => {
                problems.push(MappingProblem::GroupUnreadable {
                    group: group.name.clone(),
                    reason: format!("entry {} not found", group.dn),
                });
                Vec::new()
            }
        };
        members.sort();
        members.dedup();
        group_members.insert(group.name.clone(), members);
    }
    for (name, members) in &group_members {
        let admin = !config.admin_group.is_empty() && *name == config.admin_group;
        for localpart in members {
            if let Some(person) = people.get_mut(localpart) {
                person.groups.push(name.clone());
                person.admin |= admin;
            }
        }
    }
    Snapshot {
        people,
        dns,
        groups: group_members,
        problems,
    }
}

/// `uniqueMember` may carry an optional unique identifier after the DN (`dn#'0101'B`).
fn strip_unique_id(value: &str) -> &str {
    match value.rfind("#'") {
        Some(at) if value.ends_with("'B") => &value[..at],
        _ => value,
    }
}

/// Cuts a value to [`MAX_DETAIL_BYTES`] at a character boundary.
fn shorten(value: &str) -> &str {
    if value.len() <= MAX_DETAIL_BYTES {
        return value;
    }
    let mut end = MAX_DETAIL_BYTES;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

/// Directory changes between two snapshots, except removals (the caller tells a disabled entry
/// from a deleted one): (localparts that vanished, people changed or added, groups changed).
pub fn diff(old: &Snapshot, new: &Snapshot) -> (Vec<String>, Vec<String>, Vec<String>) {
    let vanished = old
        .people
        .keys()
        .filter(|localpart| !new.people.contains_key(*localpart))
        .cloned()
        .collect();
    let changed = new
        .people
        .iter()
        .filter(|(localpart, person)| old.people.get(*localpart) != Some(person))
        .map(|(localpart, _)| localpart.clone())
        .collect();
    let names: HashSet<&String> = old.groups.keys().chain(new.groups.keys()).collect();
    let mut groups: Vec<String> = names
        .into_iter()
        .filter(|name| old.groups.get(*name) != new.groups.get(*name))
        .cloned()
        .collect();
    groups.sort();
    (vanished, changed, groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(dn: &str, attrs: &[(&str, &[&str])]) -> RawEntry {
        RawEntry::new(
            dn,
            attrs.iter().map(|(name, values)| {
                (
                    (*name).to_owned(),
                    values.iter().map(|v| (*v).to_owned()).collect(),
                )
            }),
        )
    }

    fn group(name: &str, dn: &str, member_attribute: LdapMemberAttribute) -> LdapGroupConfig {
        LdapGroupConfig {
            name: name.into(),
            dn: dn.into(),
            member_attribute,
        }
    }

    #[test]
    fn profiles_take_names_and_only_small_jpeg_photos() {
        let config = LdapConfig {
            nickname_attribute: "displayName".into(),
            max_photo_size: parley_config::ByteSize::kib(1),
            ..LdapConfig::default()
        };
        let jpeg = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00];
        let with_photo = |photo: Vec<u8>| {
            entry(
                "uid=a,dc=x",
                &[
                    ("givenName", &["Alice"]),
                    ("SN", &["Liddell"]),
                    ("displayName", &["Al"]),
                ],
            )
            .with_binary([("jpegPhoto".to_owned(), vec![photo])])
        };
        let profile = profile_of(&with_photo(jpeg.clone()), &config);
        assert_eq!(profile.given_name.as_deref(), Some("Alice"));
        assert_eq!(profile.family_name.as_deref(), Some("Liddell"));
        assert_eq!(profile.nickname.as_deref(), Some("Al"));
        assert_eq!(
            profile.photo.map(|p| (p.media_type, p.data)),
            Some(("image/jpeg".into(), jpeg))
        );
        // Too big, or not a JPEG at all: no photo, the rest stays.
        let mut too_big = vec![0u8; 1025];
        too_big[..2].copy_from_slice(&[0xFF, 0xD8]);
        let big = profile_of(&with_photo(too_big), &config);
        assert_eq!(big.photo, None);
        assert_eq!(big.given_name.as_deref(), Some("Alice"));
        assert_eq!(profile_of(&with_photo(b"GIF89a".to_vec()), &config).photo, None);
        let unmapped = LdapConfig {
            photo_attribute: String::new(),
            given_name_attribute: String::new(),
            ..config
        };
        let profile = profile_of(&with_photo(vec![0xFF, 0xD8]), &unmapped);
        assert_eq!((profile.photo, profile.given_name), (None, None));
    }

    #[test]
    fn localpart_from_attribute_is_normalised() {
        let config = LdapConfig::default();
        let alice = entry("uid=Alice,dc=x", &[("UID", &["Alice"])]);
        assert_eq!(localpart_of(&alice, &config), Ok("alice".to_owned()));
        let missing = entry("cn=x,dc=x", &[("cn", &["x"])]);
        assert_eq!(
            localpart_of(&missing, &config),
            Err("has no uid attribute".to_owned())
        );
        let bad = entry("uid=a/b,dc=x", &[("uid", &["a/b"])]);
        assert!(
            localpart_of(&bad, &config)
                .unwrap_err()
                .contains("forbidden character")
        );
    }

    #[test]
    fn localpart_from_mail_takes_the_local_part() {
        let config = LdapConfig {
            localpart_attribute: "mail".into(),
            localpart_is_email: true,
            ..LdapConfig::default()
        };
        let john = entry("cn=j,dc=x", &[("mail", &["John.Doe@Example.com"])]);
        assert_eq!(localpart_of(&john, &config), Ok("john.doe".to_owned()));
        for bad in ["nobody", "@example.com", "x@"] {
            let entry = entry("cn=j,dc=x", &[("mail", &[bad])]);
            assert!(localpart_of(&entry, &config).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn details_are_mapped_and_bounded() {
        let config = LdapConfig {
            display_name_attribute: "displayName".into(),
            phone_attribute: String::new(),
            ..LdapConfig::default()
        };
        let long = "é".repeat(MAX_DETAIL_BYTES);
        let person = person_of(
            &entry(
                "uid=a,dc=x",
                &[
                    ("displayname", &["Alice A."]),
                    ("mail", &["a@x"]),
                    ("departmentNumber", &["R&D"]),
                    ("title", &[long.as_str()]),
                    ("telephoneNumber", &["123"]),
                ],
            ),
            "a".into(),
            &config,
        );
        assert_eq!(person.display_name.as_deref(), Some("Alice A."));
        assert_eq!(person.email.as_deref(), Some("a@x"));
        assert_eq!(person.department.as_deref(), Some("R&D"));
        assert_eq!(person.phone, None, "an unmapped attribute stays empty");
        let title = person.title.unwrap();
        assert!(title.len() <= MAX_DETAIL_BYTES && title.len() > MAX_DETAIL_BYTES - 2);
    }

    #[test]
    fn collisions_and_unmappable_entries_get_no_account() {
        let config = LdapConfig::default();
        let users = [
            entry("uid=Zoe,ou=a,dc=x", &[("uid", &["Zoe"])]),
            entry("uid=ZOE,ou=b,dc=x", &[("uid", &["ZOE"])]),
            entry("uid=bad/name,dc=x", &[("uid", &["bad/name"])]),
            entry("uid=bob,dc=x", &[("uid", &["bob"])]),
        ];
        let snapshot = build_snapshot(&users, &[], &config);
        assert_eq!(snapshot.people.keys().collect::<Vec<_>>(), ["bob"]);
        assert_eq!(snapshot.problems.len(), 2, "{:?}", snapshot.problems);
        assert!(snapshot.problems.contains(&MappingProblem::Collision {
            localpart: "zoe".into(),
            dns: vec!["uid=Zoe,ou=a,dc=x".into(), "uid=ZOE,ou=b,dc=x".into()],
        }));
        assert!(
            matches!(&snapshot.problems[0], MappingProblem::Unmappable { dn, .. } if dn == "uid=bad/name,dc=x")
        );
    }

    #[test]
    fn groups_of_every_kind_resolve_to_localparts() {
        let config = LdapConfig {
            admin_group: "admins".into(),
            groups: Vec::new(),
            ..LdapConfig::default()
        };
        let users = [
            entry(
                "uid=alice,ou=people,dc=x",
                &[
                    ("uid", &["alice"]),
                    ("memberOf", &["CN=Sales (EMEA),OU=Sales Team,DC=x"]),
                ],
            ),
            entry("uid=bob,ou=people,dc=x", &[("uid", &["bob"])]),
            entry("cn=Doe\\2C John,ou=people,dc=x", &[("uid", &["jdoe"])]),
        ];
        let groups = [
            (
                group("eng", "cn=eng,dc=x", LdapMemberAttribute::Member),
                Ok(Some(entry(
                    "cn=eng,dc=x",
                    &[(
                        "member",
                        &[
                            "uid=alice, ou=people, dc=x",
                            "cn=Doe\\, John,ou=people,dc=x",
                            "uid=stranger,dc=x",
                        ],
                    )],
                ))),
            ),
            (
                group("staff", "cn=staff,dc=x", LdapMemberAttribute::UniqueMember),
                Ok(Some(entry(
                    "cn=staff,dc=x",
                    &[("uniqueMember", &["uid=bob,ou=people,dc=x#'0101'B"])],
                ))),
            ),
            (
                group("posix", "cn=posix,dc=x", LdapMemberAttribute::MemberUid),
                Ok(Some(entry("cn=posix,dc=x", &[("memberUid", &["JDOE", "ghost"])]))),
            ),
            (
                group(
                    "sales",
                    "cn=Sales (EMEA),ou=Sales Team,dc=x",
                    LdapMemberAttribute::MemberOf,
                ),
                Ok(None),
            ),
            (
                group("admins", "cn=admins,dc=x", LdapMemberAttribute::Member),
                Ok(Some(entry(
                    "cn=admins,dc=x",
                    &[("member", &["uid=bob,ou=people,dc=x"])],
                ))),
            ),
            (
                group("gone", "cn=gone,dc=x", LdapMemberAttribute::Member),
                Ok(None),
            ),
        ];
        let snapshot = build_snapshot(&users, &groups, &config);
        assert_eq!(snapshot.groups["eng"], ["alice", "jdoe"]);
        assert_eq!(snapshot.groups["staff"], ["bob"]);
        assert_eq!(snapshot.groups["posix"], ["jdoe"]);
        assert_eq!(snapshot.groups["sales"], ["alice"]);
        assert!(snapshot.groups["gone"].is_empty());
        assert!(
            matches!(&snapshot.problems[..], [MappingProblem::GroupUnreadable { group, .. }] if group == "gone")
        );
        assert_eq!(snapshot.people["alice"].groups, ["eng", "sales"]);
        assert!(snapshot.people["bob"].admin);
        assert!(!snapshot.people["alice"].admin);
    }

    #[test]
    fn diff_reports_vanished_changed_and_group_changes() {
        let config = LdapConfig::default();
        let before = build_snapshot(
            &[
                entry("uid=a,dc=x", &[("uid", &["a"]), ("cn", &["A"])]),
                entry("uid=b,dc=x", &[("uid", &["b"])]),
            ],
            &[(
                group("g", "cn=g,dc=x", LdapMemberAttribute::Member),
                Ok(Some(entry("cn=g,dc=x", &[("member", &["uid=a,dc=x"])]))),
            )],
            &config,
        );
        let after = build_snapshot(
            &[
                entry("uid=a,dc=x", &[("uid", &["a"]), ("cn", &["A. Renamed"])]),
                entry("uid=c,dc=x", &[("uid", &["c"])]),
            ],
            &[(
                group("g", "cn=g,dc=x", LdapMemberAttribute::Member),
                Ok(Some(entry("cn=g,dc=x", &[("member", &["uid=a,dc=x"])]))),
            )],
            &config,
        );
        let (vanished, changed, groups) = diff(&before, &after);
        assert_eq!(vanished, ["b"]);
        assert_eq!(changed, ["a", "c"]);
        assert!(groups.is_empty());
        assert_eq!(diff(&after, &after), (vec![], vec![], vec![]));
        let (_, _, groups) = diff(&before, &build_snapshot(&[], &[], &config));
        assert_eq!(groups, ["g"]);
    }

    #[test]
    fn requested_attributes_cover_groups() {
        let config = LdapConfig {
            groups: vec![
                group("s", "cn=s", LdapMemberAttribute::MemberOf),
                group("p", "cn=p", LdapMemberAttribute::MemberUid),
            ],
            ..LdapConfig::default()
        };
        let attributes = user_attributes(&config);
        for name in ["uid", "cn", "mail", "memberOf", "title"] {
            assert!(
                attributes.iter().any(|a| a == name),
                "{name} missing in {attributes:?}"
            );
        }
        assert_eq!(
            attributes
                .iter()
                .filter(|a| a.eq_ignore_ascii_case("uid"))
                .count(),
            1
        );
        assert!(!attributes.iter().any(|a| a.eq_ignore_ascii_case("userPassword")));
    }
}

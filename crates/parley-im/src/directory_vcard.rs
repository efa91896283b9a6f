//! vCards from the directory (XEP-0054): a [`VcardSource`] that answers, read-only, for every
//! person the directory describes. FN from the display name, N from the given and family names,
//! NICKNAME, EMAIL, TEL, ORG/ORGUNIT from the department, TITLE and PHOTO (with its TYPE) —
//! which attributes feed them is the directory's mapping (`[ldap]` `*_attribute` keys). A person
//! the directory says nothing about keeps the vCard they store themselves.

use crate::vcard::{VcardSource, VcardSourceError};
use async_trait::async_trait;
use base64::Engine;
use parley_directory::{Directory, Person, Profile};
use parley_proto::{BareJid, Element, ns};
use std::sync::Arc;

/// The directory as the source of vCards.
pub struct DirectoryVcards {
    directory: Arc<dyn Directory>,
    domain: BareJid,
    organization: Option<String>,
}

impl std::fmt::Debug for DirectoryVcards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectoryVcards")
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl DirectoryVcards {
    /// vCards for the accounts of `domain`.
    pub fn new(directory: Arc<dyn Directory>, domain: BareJid) -> Self {
        Self {
            directory,
            domain,
            organization: None,
        }
    }

    /// The organisation name put in every `ORG/ORGNAME`.
    pub fn with_organization(mut self, name: impl Into<String>) -> Self {
        self.organization = Some(name.into());
        self
    }
}

fn text(name: &str, value: &str) -> Element {
    Element::builder(name, ns::VCARD).append(value).build()
}

fn empty(name: &str) -> Element {
    Element::builder(name, ns::VCARD).build()
}

/// Whether the directory holds anything for a vCard about this person.
fn describes(person: &Person, profile: &Profile) -> bool {
    [
        &person.display_name,
        &person.email,
        &person.department,
        &person.title,
        &person.phone,
        &profile.given_name,
        &profile.family_name,
        &profile.nickname,
    ]
    .iter()
    .any(|field| field.is_some())
        || profile.photo.is_some()
}

/// The vCard of `person`, addressed as `jid`.
pub fn vcard_of(person: &Person, profile: &Profile, jid: &BareJid, organization: Option<&str>) -> Element {
    let mut vcard = Element::builder("vCard", ns::VCARD).build();
    if let Some(name) = &person.display_name {
        vcard.append_child(text("FN", name));
    }
    if profile.given_name.is_some() || profile.family_name.is_some() {
        let mut n = empty("N");
        if let Some(family) = &profile.family_name {
            n.append_child(text("FAMILY", family));
        }
        if let Some(given) = &profile.given_name {
            n.append_child(text("GIVEN", given));
        }
        vcard.append_child(n);
    }
    if let Some(nickname) = &profile.nickname {
        vcard.append_child(text("NICKNAME", nickname));
    }
    if let Some(email) = &person.email {
        let mut node = empty("EMAIL");
        node.append_child(empty("INTERNET"));
        node.append_child(empty("WORK"));
        node.append_child(text("USERID", email));
        vcard.append_child(node);
    }
    if let Some(phone) = &person.phone {
        let mut node = empty("TEL");
        node.append_child(empty("WORK"));
        node.append_child(empty("VOICE"));
        node.append_child(text("NUMBER", phone));
        vcard.append_child(node);
    }
    if person.department.is_some() || organization.is_some() {
        // The DTD requires ORGNAME first; it stays empty when no organisation is configured.
        let org = match organization {
            Some(name) => text("ORGNAME", name),
            None => empty("ORGNAME"),
        };
        let mut node = empty("ORG");
        node.append_child(org);
        if let Some(department) = &person.department {
            node.append_child(text("ORGUNIT", department));
        }
        vcard.append_child(node);
    }
    if let Some(title) = &person.title {
        vcard.append_child(text("TITLE", title));
    }
    if let Some(photo) = &profile.photo {
        let mut node = empty("PHOTO");
        node.append_child(text("TYPE", &photo.media_type));
        node.append_child(text(
            "BINVAL",
            &base64::engine::general_purpose::STANDARD.encode(&photo.data),
        ));
        vcard.append_child(node);
    }
    vcard.append_child(text("JABBERID", jid.as_str()));
    vcard
}

#[async_trait]
impl VcardSource for DirectoryVcards {
    async fn vcard(&self, account: &BareJid) -> Result<Option<Element>, VcardSourceError> {
        if account.domain() != self.domain.domain() {
            return Ok(None);
        }
        let Some(localpart) = account.node() else {
            return Ok(None);
        };
        let failed = |err: parley_directory::DirectoryError| VcardSourceError(err.to_string());
        let Some(person) = self.directory.person(localpart.as_str()).await.map_err(failed)? else {
            return Ok(None);
        };
        // The profile is read live (LDAP); when that fails the snapshot's details still answer.
        let profile = match self.directory.profile(localpart.as_str()).await {
            Ok(profile) => profile.unwrap_or_default(),
            Err(error) => {
                tracing::warn!(%account, %error, "reading the directory profile failed; vCard without it");
                Profile::default()
            }
        };
        if !describes(&person, &profile) {
            return Ok(None);
        }
        Ok(Some(vcard_of(
            &person,
            &profile,
            account,
            self.organization.as_deref(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parley_directory::Photo;

    fn jid() -> BareJid {
        BareJid::new("alice@example.org").unwrap()
    }

    fn child_text(vcard: &Element, path: &[&str]) -> Option<String> {
        let mut node = vcard;
        for name in path {
            node = node.get_child(name, ns::VCARD)?;
        }
        Some(node.text())
    }

    fn alice() -> Person {
        Person {
            localpart: "alice".into(),
            display_name: Some("Alice Liddell".into()),
            email: Some("alice@example.com".into()),
            department: Some("Wonderland R&D".into()),
            title: Some("Explorer".into()),
            phone: Some("+44 1865 000000".into()),
            ..Person::default()
        }
    }

    #[test]
    fn every_mapped_field_lands_in_its_vcard_element() {
        let profile = Profile {
            given_name: Some("Alice".into()),
            family_name: Some("Liddell".into()),
            nickname: Some("Al".into()),
            photo: Some(Photo {
                media_type: "image/jpeg".into(),
                data: vec![0xFF, 0xD8, 1, 2],
            }),
        };
        let vcard = vcard_of(&alice(), &profile, &jid(), Some("Example Corp"));
        assert!(vcard.is("vCard", ns::VCARD));
        assert_eq!(child_text(&vcard, &["FN"]).as_deref(), Some("Alice Liddell"));
        assert_eq!(child_text(&vcard, &["N", "GIVEN"]).as_deref(), Some("Alice"));
        assert_eq!(child_text(&vcard, &["N", "FAMILY"]).as_deref(), Some("Liddell"));
        assert_eq!(child_text(&vcard, &["NICKNAME"]).as_deref(), Some("Al"));
        assert_eq!(
            child_text(&vcard, &["EMAIL", "USERID"]).as_deref(),
            Some("alice@example.com")
        );
        assert_eq!(
            child_text(&vcard, &["TEL", "NUMBER"]).as_deref(),
            Some("+44 1865 000000")
        );
        assert_eq!(
            child_text(&vcard, &["ORG", "ORGNAME"]).as_deref(),
            Some("Example Corp")
        );
        assert_eq!(
            child_text(&vcard, &["ORG", "ORGUNIT"]).as_deref(),
            Some("Wonderland R&D")
        );
        assert_eq!(child_text(&vcard, &["TITLE"]).as_deref(), Some("Explorer"));
        assert_eq!(
            child_text(&vcard, &["PHOTO", "TYPE"]).as_deref(),
            Some("image/jpeg")
        );
        assert_eq!(
            child_text(&vcard, &["PHOTO", "BINVAL"]).as_deref(),
            Some("/9gBAg==")
        );
        assert_eq!(
            child_text(&vcard, &["JABBERID"]).as_deref(),
            Some("alice@example.org")
        );
    }

    #[test]
    fn missing_fields_are_left_out_not_emptied() {
        let person = Person {
            localpart: "bob".into(),
            display_name: Some("Bob".into()),
            ..Person::default()
        };
        let vcard = vcard_of(&person, &Profile::default(), &jid(), None);
        for absent in ["N", "NICKNAME", "EMAIL", "TEL", "ORG", "TITLE", "PHOTO"] {
            assert!(vcard.get_child(absent, ns::VCARD).is_none(), "{absent} present");
        }
        assert_eq!(child_text(&vcard, &["FN"]).as_deref(), Some("Bob"));
        // A department without a configured organisation keeps the DTD's ORGNAME, empty.
        let with_department = Person {
            department: Some("Sales".into()),
            ..person
        };
        let vcard = vcard_of(&with_department, &Profile::default(), &jid(), None);
        assert_eq!(child_text(&vcard, &["ORG", "ORGNAME"]).as_deref(), Some(""));
    }

    #[test]
    fn a_person_without_details_is_not_described() {
        let bare_person = Person {
            localpart: "carol".into(),
            ..Person::default()
        };
        assert!(!describes(&bare_person, &Profile::default()));
        assert!(describes(&alice(), &Profile::default()));
        let with_nick = Profile {
            nickname: Some("c".into()),
            ..Profile::default()
        };
        assert!(describes(&bare_person, &with_nick));
    }
}

//! A roster item as stored, and the validation of items a client sets (RFC 6121 §2.3.3).

use crate::state::SubState;
use parley_proto::{BareJid, StanzaError, StanzaErrorCondition};
use serde::{Deserialize, Serialize};
use xmpp_parsers::roster::{Ask, Group, Item, Subscription};

/// Longest `name` of an item, in bytes.
pub const MAX_NAME_LEN: usize = 1024;
/// Longest group name, in bytes.
pub const MAX_GROUP_LEN: usize = 1024;
/// Most groups one item may be in.
pub const MAX_GROUPS: usize = 64;

/// One contact of a user's roster, as kept in the store (the contact's JID is the key).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredItem {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default)]
    pub to: bool,
    #[serde(default)]
    pub from: bool,
    /// "Pending Out": the user asked to subscribe.
    #[serde(default)]
    pub ask: bool,
    /// Pre-approved subscription request (RFC 6121 §3.4).
    #[serde(default)]
    pub approved: bool,
}

impl StoredItem {
    /// The subscription state, with "Pending In" supplied by the caller (it is kept apart).
    pub fn state(&self, pending_in: bool) -> SubState {
        SubState {
            to: self.to,
            from: self.from,
            pending_out: self.ask,
            pending_in,
        }
    }

    pub fn set_state(&mut self, state: SubState) {
        self.to = state.to;
        self.from = state.from;
        self.ask = state.pending_out;
    }

    /// The item as a client sees it.
    pub fn to_wire(&self, jid: &BareJid) -> Item {
        let subscription = match self.state(false).subscription() {
            "to" => Subscription::To,
            "from" => Subscription::From,
            "both" => Subscription::Both,
            _ => Subscription::None,
        };
        Item {
            jid: jid.clone(),
            name: self.name.clone(),
            subscription,
            ask: if self.ask { Ask::Subscribe } else { Ask::None },
            groups: self.groups.iter().cloned().map(Group).collect(),
            approved: self.approved.then_some(true),
        }
    }
}

/// The item of a removal (`subscription='remove'`), as pushed to clients.
pub fn removed_item(jid: &BareJid) -> Item {
    Item {
        jid: jid.clone(),
        name: None,
        subscription: Subscription::Remove,
        ask: Ask::None,
        groups: Vec::new(),
        approved: None,
    }
}

/// What a client may change with a roster set: the name and the groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemUpdate {
    pub name: Option<String>,
    pub groups: Vec<String>,
}

fn not_acceptable(text: &str) -> StanzaError {
    StanzaError::with_text(StanzaErrorCondition::NotAcceptable, text)
}

/// Checks an item of a roster set. Its `subscription` (other than `remove`, handled before),
/// `ask` and `approved` are the server's to decide and are ignored (§2.1.2.5, §3.4).
pub fn validate_update(item: &Item) -> Result<ItemUpdate, StanzaError> {
    let name = match &item.name {
        Some(name) if name.len() > MAX_NAME_LEN => return Err(not_acceptable("The name is too long")),
        // An empty name is the same as no name (§2.4.1).
        Some(name) if name.is_empty() => None,
        other => other.clone(),
    };
    let mut groups: Vec<String> = Vec::with_capacity(item.groups.len().min(MAX_GROUPS));
    for Group(group) in &item.groups {
        if group.is_empty() {
            return Err(not_acceptable("A group name is empty"));
        }
        if group.len() > MAX_GROUP_LEN {
            return Err(not_acceptable("A group name is too long"));
        }
        // Duplicates are collapsed rather than refused: the meaning is unambiguous.
        if !groups.contains(group) {
            groups.push(group.clone());
        }
    }
    if groups.len() > MAX_GROUPS {
        return Err(not_acceptable("The item is in too many groups"));
    }
    Ok(ItemUpdate { name, groups })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(name: Option<&str>, groups: &[&str]) -> Item {
        Item {
            jid: BareJid::new("bob@example.org").unwrap(),
            name: name.map(str::to_owned),
            subscription: Subscription::Both,
            ask: Ask::Subscribe,
            groups: groups.iter().map(|g| Group((*g).to_owned())).collect(),
            approved: Some(true),
        }
    }

    #[test]
    fn collapses_duplicate_groups_and_ignores_server_attributes() {
        let update = validate_update(&item(Some("Bob"), &["Work", "Friends", "Work"])).unwrap();
        assert_eq!(update.name.as_deref(), Some("Bob"));
        assert_eq!(update.groups, ["Work", "Friends"]);
        assert_eq!(validate_update(&item(Some(""), &[])).unwrap().name, None);
    }

    #[test]
    fn refuses_empty_or_oversized_names_and_groups() {
        let long = "x".repeat(MAX_NAME_LEN + 1);
        for bad in [
            item(Some(&long), &[]),
            item(None, &[""]),
            item(None, &[long.as_str()]),
        ] {
            let err = validate_update(&bad).unwrap_err();
            assert_eq!(err.condition, StanzaErrorCondition::NotAcceptable);
        }
        let many: Vec<String> = (0..=MAX_GROUPS).map(|i| format!("g{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(validate_update(&item(None, &many)).is_err());
        assert!(validate_update(&item(None, &many[..MAX_GROUPS])).is_ok());
    }

    #[test]
    fn wire_form_shows_subscription_ask_and_approval() {
        let jid = BareJid::new("bob@example.org").unwrap();
        let stored = StoredItem {
            to: true,
            from: false,
            ask: false,
            approved: true,
            ..Default::default()
        };
        let wire = stored.to_wire(&jid);
        assert_eq!(wire.subscription, Subscription::To);
        assert_eq!(wire.ask, Ask::None);
        assert_eq!(wire.approved, Some(true));
        let pending = StoredItem {
            ask: true,
            ..Default::default()
        }
        .to_wire(&jid);
        assert_eq!(
            (pending.subscription, pending.ask),
            (Subscription::None, Ask::Subscribe)
        );
        assert_eq!(removed_item(&jid).subscription, Subscription::Remove);
    }

    #[test]
    fn stored_form_round_trips_and_rejects_unknown_fields() {
        let stored = StoredItem {
            name: Some("B".into()),
            groups: vec!["g".into()],
            from: true,
            ..Default::default()
        };
        let bytes = serde_json::to_vec(&stored).unwrap();
        assert_eq!(serde_json::from_slice::<StoredItem>(&bytes).unwrap(), stored);
        assert!(serde_json::from_slice::<StoredItem>(br#"{"bogus":1}"#).is_err());
        assert!(serde_json::from_slice::<StoredItem>(b"not json").is_err());
    }
}

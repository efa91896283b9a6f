//! The subscription state machine of RFC 6121 Appendix A, as pure functions of a state.
//!
//! A contact's state from the user's side is four flags: whether the user receives the
//! contact's presence (`to`), whether the contact receives the user's (`from`), and the two
//! pending requests. The nine states of the RFC are the valid combinations (a pending request is
//! never kept for a subscription that already exists).

/// The subscription between a user and one contact, seen from the user's roster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubState {
    /// The user is subscribed to the contact's presence.
    pub to: bool,
    /// The contact is subscribed to the user's presence.
    pub from: bool,
    /// The user asked to subscribe and the contact has not answered ("Pending Out").
    pub pending_out: bool,
    /// The contact asked to subscribe and the user has not answered ("Pending In").
    pub pending_in: bool,
}

/// The four subscription presence types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionKind {
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
}

impl SubscriptionKind {
    pub fn from_type(stanza_type: &str) -> Option<Self> {
        match stanza_type {
            "subscribe" => Some(Self::Subscribe),
            "subscribed" => Some(Self::Subscribed),
            "unsubscribe" => Some(Self::Unsubscribe),
            "unsubscribed" => Some(Self::Unsubscribed),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Subscribe => "subscribe",
            Self::Subscribed => "subscribed",
            Self::Unsubscribe => "unsubscribe",
            Self::Unsubscribed => "unsubscribed",
        }
    }
}

/// What the user's server does with a subscription stanza the user sent (Appendix A.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outbound {
    /// Route the stanza to the contact.
    pub route: bool,
    pub state: SubState,
}

/// What the contact's server does with a subscription stanza addressed to its user (A.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inbound {
    /// Deliver the stanza to the user's available resources.
    pub deliver: bool,
    /// Answer `subscribed` on the user's behalf (the contact is already approved, §3.1.3).
    pub auto_subscribed: bool,
    pub state: SubState,
}

impl SubState {
    /// The `subscription` attribute of the roster item.
    pub fn subscription(self) -> &'static str {
        match (self.to, self.from) {
            (false, false) => "none",
            (true, false) => "to",
            (false, true) => "from",
            (true, true) => "both",
        }
    }

    /// Appendix A.2: the user sends `kind` to the contact.
    pub fn outbound(self, kind: SubscriptionKind) -> Outbound {
        let mut state = self;
        let route = match kind {
            SubscriptionKind::Subscribe => {
                if !state.to {
                    state.pending_out = true;
                }
                true
            }
            SubscriptionKind::Unsubscribe => {
                state.to = false;
                state.pending_out = false;
                true
            }
            SubscriptionKind::Subscribed => {
                if state.pending_in {
                    state.from = true;
                    state.pending_in = false;
                    true
                } else {
                    false
                }
            }
            SubscriptionKind::Unsubscribed => {
                let route = state.pending_in || state.from;
                state.from = false;
                state.pending_in = false;
                route
            }
        };
        Outbound { route, state }
    }

    /// Appendix A.3: the contact sends `kind` to the user.
    pub fn inbound(self, kind: SubscriptionKind) -> Inbound {
        let mut state = self;
        let mut auto_subscribed = false;
        let deliver = match kind {
            SubscriptionKind::Subscribe => {
                if state.from {
                    auto_subscribed = true;
                    false
                } else if state.pending_in {
                    false
                } else {
                    state.pending_in = true;
                    true
                }
            }
            SubscriptionKind::Unsubscribe => {
                let deliver = state.pending_in || state.from;
                state.from = false;
                state.pending_in = false;
                deliver
            }
            SubscriptionKind::Subscribed => {
                if state.pending_out {
                    state.to = true;
                    state.pending_out = false;
                    true
                } else {
                    false
                }
            }
            SubscriptionKind::Unsubscribed => {
                let deliver = state.pending_out || state.to;
                state.to = false;
                state.pending_out = false;
                deliver
            }
        };
        Inbound {
            deliver,
            auto_subscribed,
            state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SubscriptionKind::*;
    use super::*;

    /// The nine states by their names in RFC 6121 Appendix A.1.
    fn named(name: &str) -> SubState {
        let state = |to, from, pending_out, pending_in| SubState {
            to,
            from,
            pending_out,
            pending_in,
        };
        match name {
            "None" => state(false, false, false, false),
            "None + Pending Out" => state(false, false, true, false),
            "None + Pending In" => state(false, false, false, true),
            "None + Pending Out+In" => state(false, false, true, true),
            "To" => state(true, false, false, false),
            "To + Pending In" => state(true, false, false, true),
            "From" => state(false, true, false, false),
            "From + Pending Out" => state(false, true, true, false),
            "Both" => state(true, true, false, false),
            other => panic!("not a state of Appendix A: {other}"),
        }
    }

    const SAME: &str = "no state change";

    /// Rows of a table: (existing state, route or deliver, new state).
    type Table = [(&'static str, bool, &'static str); 9];

    fn check_outbound(kind: SubscriptionKind, table: &Table) {
        for (existing, route, new) in table {
            let expected = if *new == SAME { named(existing) } else { named(new) };
            let got = named(existing).outbound(kind);
            assert_eq!(got.route, *route, "outbound {kind:?} from {existing}: route");
            assert_eq!(
                got.state, expected,
                "outbound {kind:?} from {existing}: new state"
            );
        }
    }

    fn check_inbound(kind: SubscriptionKind, table: &Table) {
        for (existing, deliver, new) in table {
            let expected = if *new == SAME { named(existing) } else { named(new) };
            let got = named(existing).inbound(kind);
            assert_eq!(got.deliver, *deliver, "inbound {kind:?} to {existing}: deliver");
            assert_eq!(got.state, expected, "inbound {kind:?} to {existing}: new state");
        }
    }

    #[test]
    fn outbound_subscribe_follows_a_2_1() {
        check_outbound(
            Subscribe,
            &[
                ("None", true, "None + Pending Out"),
                ("None + Pending Out", true, SAME),
                ("None + Pending In", true, "None + Pending Out+In"),
                ("None + Pending Out+In", true, SAME),
                ("To", true, SAME),
                ("To + Pending In", true, SAME),
                ("From", true, "From + Pending Out"),
                ("From + Pending Out", true, SAME),
                ("Both", true, SAME),
            ],
        );
    }

    #[test]
    fn outbound_unsubscribe_follows_a_2_2() {
        check_outbound(
            Unsubscribe,
            &[
                ("None", true, SAME),
                ("None + Pending Out", true, "None"),
                ("None + Pending In", true, SAME),
                ("None + Pending Out+In", true, "None + Pending In"),
                ("To", true, "None"),
                ("To + Pending In", true, "None + Pending In"),
                ("From", true, SAME),
                ("From + Pending Out", true, "From"),
                ("Both", true, "From"),
            ],
        );
    }

    #[test]
    fn outbound_subscribed_follows_a_2_3() {
        check_outbound(
            Subscribed,
            &[
                ("None", false, SAME),
                ("None + Pending Out", false, SAME),
                ("None + Pending In", true, "From"),
                ("None + Pending Out+In", true, "From + Pending Out"),
                ("To", false, SAME),
                ("To + Pending In", true, "Both"),
                ("From", false, SAME),
                ("From + Pending Out", false, SAME),
                ("Both", false, SAME),
            ],
        );
    }

    #[test]
    fn outbound_unsubscribed_follows_a_2_4() {
        check_outbound(
            Unsubscribed,
            &[
                ("None", false, SAME),
                ("None + Pending Out", false, SAME),
                ("None + Pending In", true, "None"),
                ("None + Pending Out+In", true, "None + Pending Out"),
                ("To", false, SAME),
                ("To + Pending In", true, "To"),
                ("From", true, "None"),
                ("From + Pending Out", true, "None + Pending Out"),
                ("Both", true, "To"),
            ],
        );
    }

    #[test]
    fn inbound_subscribe_follows_a_3_1() {
        check_inbound(
            Subscribe,
            &[
                ("None", true, "None + Pending In"),
                ("None + Pending Out", true, "None + Pending Out+In"),
                ("None + Pending In", false, SAME),
                ("None + Pending Out+In", false, SAME),
                ("To", true, "To + Pending In"),
                ("To + Pending In", false, SAME),
                ("From", false, SAME),
                ("From + Pending Out", false, SAME),
                ("Both", false, SAME),
            ],
        );
        // The starred rows: an approved contact is answered `subscribed` by the server.
        for existing in ["From", "From + Pending Out", "Both"] {
            assert!(named(existing).inbound(Subscribe).auto_subscribed, "{existing}");
        }
        for existing in ["None", "None + Pending In", "To"] {
            assert!(!named(existing).inbound(Subscribe).auto_subscribed, "{existing}");
        }
    }

    #[test]
    fn inbound_unsubscribe_follows_a_3_2() {
        check_inbound(
            Unsubscribe,
            &[
                ("None", false, SAME),
                ("None + Pending Out", false, SAME),
                ("None + Pending In", true, "None"),
                ("None + Pending Out+In", true, "None + Pending Out"),
                ("To", false, SAME),
                ("To + Pending In", true, "To"),
                ("From", true, "None"),
                ("From + Pending Out", true, "None + Pending Out"),
                ("Both", true, "To"),
            ],
        );
    }

    #[test]
    fn inbound_subscribed_follows_a_3_3() {
        check_inbound(
            Subscribed,
            &[
                ("None", false, SAME),
                ("None + Pending Out", true, "To"),
                ("None + Pending In", false, SAME),
                ("None + Pending Out+In", true, "To + Pending In"),
                ("To", false, SAME),
                ("To + Pending In", false, SAME),
                ("From", false, SAME),
                ("From + Pending Out", true, "Both"),
                ("Both", false, SAME),
            ],
        );
    }

    #[test]
    fn inbound_unsubscribed_follows_a_3_4() {
        check_inbound(
            Unsubscribed,
            &[
                ("None", false, SAME),
                ("None + Pending Out", true, "None"),
                ("None + Pending In", false, SAME),
                ("None + Pending Out+In", true, "None + Pending In"),
                ("To", true, "None"),
                ("To + Pending In", true, "None + Pending In"),
                ("From", false, SAME),
                ("From + Pending Out", true, "From"),
                ("Both", true, "From"),
            ],
        );
    }

    #[test]
    fn subscription_attribute_and_kind_names() {
        assert_eq!(named("None + Pending Out").subscription(), "none");
        assert_eq!(named("To + Pending In").subscription(), "to");
        assert_eq!(named("From + Pending Out").subscription(), "from");
        assert_eq!(named("Both").subscription(), "both");
        for kind in [Subscribe, Subscribed, Unsubscribe, Unsubscribed] {
            assert_eq!(SubscriptionKind::from_type(kind.as_str()), Some(kind));
        }
        assert_eq!(SubscriptionKind::from_type("probe"), None);
        assert_eq!(SubscriptionKind::from_type(""), None);
    }
}

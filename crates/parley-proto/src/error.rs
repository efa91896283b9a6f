//! Stream errors (RFC 6120 §4.9) and stanza errors (RFC 6120 §8.3).

use crate::ns;
use minidom::Element;

macro_rules! conditions {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $wire:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            /// The element name of this condition on the wire.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $wire),+ }
            }

            /// Parses a condition from its element name.
            pub fn from_wire(name: &str) -> Option<Self> {
                match name { $($wire => Some(Self::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

conditions! {
    /// Stream error conditions, RFC 6120 §4.9.3.
    StreamErrorCondition {
        BadFormat => "bad-format",
        BadNamespacePrefix => "bad-namespace-prefix",
        Conflict => "conflict",
        ConnectionTimeout => "connection-timeout",
        HostGone => "host-gone",
        HostUnknown => "host-unknown",
        ImproperAddressing => "improper-addressing",
        InternalServerError => "internal-server-error",
        InvalidFrom => "invalid-from",
        InvalidNamespace => "invalid-namespace",
        InvalidXml => "invalid-xml",
        NotAuthorized => "not-authorized",
        NotWellFormed => "not-well-formed",
        PolicyViolation => "policy-violation",
        RemoteConnectionFailed => "remote-connection-failed",
        Reset => "reset",
        ResourceConstraint => "resource-constraint",
        RestrictedXml => "restricted-xml",
        SeeOtherHost => "see-other-host",
        SystemShutdown => "system-shutdown",
        UndefinedCondition => "undefined-condition",
        UnsupportedEncoding => "unsupported-encoding",
        UnsupportedFeature => "unsupported-feature",
        UnsupportedStanzaType => "unsupported-stanza-type",
        UnsupportedVersion => "unsupported-version",
    }
}

conditions! {
    /// Stanza error conditions, RFC 6120 §8.3.3.
    StanzaErrorCondition {
        BadRequest => "bad-request",
        Conflict => "conflict",
        FeatureNotImplemented => "feature-not-implemented",
        Forbidden => "forbidden",
        Gone => "gone",
        InternalServerError => "internal-server-error",
        ItemNotFound => "item-not-found",
        JidMalformed => "jid-malformed",
        NotAcceptable => "not-acceptable",
        NotAllowed => "not-allowed",
        NotAuthorized => "not-authorized",
        PolicyViolation => "policy-violation",
        RecipientUnavailable => "recipient-unavailable",
        Redirect => "redirect",
        RegistrationRequired => "registration-required",
        RemoteServerNotFound => "remote-server-not-found",
        RemoteServerTimeout => "remote-server-timeout",
        ResourceConstraint => "resource-constraint",
        ServiceUnavailable => "service-unavailable",
        SubscriptionRequired => "subscription-required",
        UndefinedCondition => "undefined-condition",
        UnexpectedRequest => "unexpected-request",
    }
}

/// The `type` of a stanza error, RFC 6120 §8.3.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    Auth,
    Cancel,
    Continue,
    Modify,
    Wait,
}

impl ErrorType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::Cancel => "cancel",
            Self::Continue => "continue",
            Self::Modify => "modify",
            Self::Wait => "wait",
        }
    }
}

impl StanzaErrorCondition {
    /// The error type RFC 6120 §8.3.3 recommends for this condition.
    pub fn default_type(self) -> ErrorType {
        use StanzaErrorCondition::*;
        match self {
            BadRequest | JidMalformed | NotAcceptable | PolicyViolation | Redirect => ErrorType::Modify,
            Forbidden | NotAuthorized | RegistrationRequired | SubscriptionRequired => ErrorType::Auth,
            InternalServerError | RecipientUnavailable | RemoteServerTimeout | ResourceConstraint => {
                ErrorType::Wait
            }
            UnexpectedRequest => ErrorType::Wait,
            Conflict
            | FeatureNotImplemented
            | Gone
            | ItemNotFound
            | NotAllowed
            | RemoteServerNotFound
            | ServiceUnavailable
            | UndefinedCondition => ErrorType::Cancel,
        }
    }
}

/// A stream-level error: the condition plus optional human-readable text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stream error {condition}{}", text.as_deref().map(|t| format!(": {t}")).unwrap_or_default())]
pub struct StreamError {
    pub condition: StreamErrorCondition,
    pub text: Option<String>,
}

impl StreamError {
    pub fn new(condition: StreamErrorCondition) -> Self {
        Self {
            condition,
            text: None,
        }
    }

    pub fn with_text(condition: StreamErrorCondition, text: impl Into<String>) -> Self {
        Self {
            condition,
            text: Some(text.into()),
        }
    }

    /// `<stream:error>` as an element in the streams namespace.
    pub fn to_element(&self) -> Element {
        let mut error = Element::builder("error", ns::STREAM)
            .append(Element::bare(self.condition.as_str(), ns::STREAMS))
            .build();
        if let Some(text) = &self.text {
            error.append_child(
                Element::builder("text", ns::STREAMS)
                    .append(text.as_str())
                    .build(),
            );
        }
        error
    }
}

/// A stanza-level error, RFC 6120 §8.3.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stanza error {condition}{}", text.as_deref().map(|t| format!(": {t}")).unwrap_or_default())]
pub struct StanzaError {
    pub error_type: ErrorType,
    pub condition: StanzaErrorCondition,
    pub text: Option<String>,
}

impl StanzaError {
    pub fn new(condition: StanzaErrorCondition) -> Self {
        Self {
            error_type: condition.default_type(),
            condition,
            text: None,
        }
    }

    pub fn with_text(condition: StanzaErrorCondition, text: impl Into<String>) -> Self {
        Self {
            error_type: condition.default_type(),
            condition,
            text: Some(text.into()),
        }
    }

    pub fn typed(mut self, error_type: ErrorType) -> Self {
        self.error_type = error_type;
        self
    }

    /// The `<error/>` child of a stanza in `jabber:client`.
    pub fn to_element(&self) -> Element {
        let mut error = Element::builder("error", ns::CLIENT)
            .attr(crate::stanza::attr_name("type"), self.error_type.as_str())
            .append(Element::bare(self.condition.as_str(), ns::STANZAS))
            .build();
        if let Some(text) = &self.text {
            error.append_child(
                Element::builder("text", ns::STANZAS)
                    .append(text.as_str())
                    .build(),
            );
        }
        error
    }

    /// Reads the condition from an `<error/>` element, if it names a known one.
    pub fn from_element(error: &Element) -> Option<Self> {
        let condition = error
            .children()
            .filter(|c| c.has_ns(ns::STANZAS))
            .find_map(|c| StanzaErrorCondition::from_wire(c.name()))?;
        let error_type = match error.attr("type") {
            Some("auth") => ErrorType::Auth,
            Some("continue") => ErrorType::Continue,
            Some("modify") => ErrorType::Modify,
            Some("wait") => ErrorType::Wait,
            _ => ErrorType::Cancel,
        };
        let text = error.get_child("text", ns::STANZAS).map(|t| t.text());
        Some(Self {
            error_type,
            condition,
            text,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stanza_error_round_trips_through_its_element() {
        let error = StanzaError::with_text(StanzaErrorCondition::ServiceUnavailable, "nobody home");
        let element = error.to_element();
        assert_eq!(element.attr("type"), Some("cancel"));
        assert_eq!(StanzaError::from_element(&element), Some(error));
    }

    #[test]
    fn unknown_condition_names_are_not_parsed() {
        assert_eq!(StreamErrorCondition::from_wire("made-up"), None);
        assert_eq!(
            StreamErrorCondition::from_wire("not-well-formed"),
            Some(StreamErrorCondition::NotWellFormed)
        );
    }
}

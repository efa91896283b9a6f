//! The stanza envelope: what the router reads to route a stanza, with payloads left as elements.

use crate::error::StanzaError;
use crate::ns;
use jid::Jid;
use minidom::Element;
use minidom::rxml::{Namespace, NcName};

/// The three stanza kinds of RFC 6120 §8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StanzaKind {
    Message,
    Presence,
    Iq,
}

impl StanzaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::Presence => "presence",
            Self::Iq => "iq",
        }
    }
}

/// Why an element is not a routable stanza.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("<{0}/> is not a stanza")]
    NotAStanza(String),
    #[error("the {attribute} address is not a valid JID")]
    BadAddress { attribute: &'static str },
    #[error("an iq needs an id and a type of get, set, result or error")]
    BadIq,
}

/// A stanza: the element plus its parsed addressing.
///
/// The addressing fields mirror the element's attributes; change them only through the setters so
/// the two never disagree.
#[derive(Debug, Clone, PartialEq)]
pub struct Stanza {
    kind: StanzaKind,
    from: Option<Jid>,
    to: Option<Jid>,
    element: Element,
}

/// An attribute name for static names known to be valid.
pub fn attr_name(name: &str) -> NcName {
    NcName::try_from(name).expect("attribute names in Parley's code are valid NCNames")
}

/// The element's own `xml:lang`, if it has one.
pub fn xml_lang(element: &Element) -> Option<&str> {
    element.attr_ns(crate::ns::XML, "lang")
}

/// Sets the element's `xml:lang`.
pub fn set_xml_lang(element: &mut Element, lang: &str) {
    element.set_attr(Namespace::xml().clone(), attr_name("lang"), lang);
}

/// Sets (or, with `None`, removes) an unqualified attribute.
pub fn set_attr(element: &mut Element, name: &str, value: Option<&str>) {
    match value {
        Some(value) => element.set_attr(Namespace::NONE, attr_name(name), value),
        None => {
            element.attrs_mut().remove(&Namespace::NONE, name);
        }
    }
}

impl Stanza {
    /// Reads the envelope of a top-level element received on a client stream.
    pub fn from_element(element: Element) -> Result<Self, EnvelopeError> {
        Self::try_from_element(element).map_err(|(error, _)| error)
    }

    /// Like [`Stanza::from_element`], but hands the element back with the error, so a caller
    /// that answers a bad stanza need not copy every good one beforehand.
    pub fn try_from_element(element: Element) -> Result<Self, (EnvelopeError, Box<Element>)> {
        match Self::envelope(&element) {
            Ok((kind, from, to)) => Ok(Self {
                kind,
                from,
                to,
                element,
            }),
            Err(error) => Err((error, Box::new(element))),
        }
    }

    fn envelope(element: &Element) -> Result<(StanzaKind, Option<Jid>, Option<Jid>), EnvelopeError> {
        let kind = match (element.name(), element.has_ns(ns::CLIENT)) {
            ("message", true) => StanzaKind::Message,
            ("presence", true) => StanzaKind::Presence,
            ("iq", true) => StanzaKind::Iq,
            (name, _) => return Err(EnvelopeError::NotAStanza(name.to_owned())),
        };
        let parse = |attribute: &'static str| -> Result<Option<Jid>, EnvelopeError> {
            element
                .attr(attribute)
                .map(|value| Jid::new(value).map_err(|_| EnvelopeError::BadAddress { attribute }))
                .transpose()
        };
        let from = parse("from")?;
        let to = parse("to")?;
        if kind == StanzaKind::Iq
            && (element.attr("id").is_none()
                || !matches!(element.attr("type"), Some("get" | "set" | "result" | "error")))
        {
            return Err(EnvelopeError::BadIq);
        }
        Ok((kind, from, to))
    }

    /// A new stanza of `kind` in `jabber:client`.
    pub fn new(kind: StanzaKind) -> Self {
        Self {
            kind,
            from: None,
            to: None,
            element: Element::bare(kind.as_str(), ns::CLIENT),
        }
    }

    pub fn kind(&self) -> StanzaKind {
        self.kind
    }
    pub fn from(&self) -> Option<&Jid> {
        self.from.as_ref()
    }
    pub fn to(&self) -> Option<&Jid> {
        self.to.as_ref()
    }
    pub fn id(&self) -> Option<&str> {
        self.element.attr("id")
    }
    /// The `type` attribute as written (absent means "normal"/"available" depending on kind).
    pub fn stanza_type(&self) -> Option<&str> {
        self.element.attr("type")
    }
    pub fn element(&self) -> &Element {
        &self.element
    }
    pub fn element_mut(&mut self) -> &mut Element {
        &mut self.element
    }
    pub fn into_element(self) -> Element {
        self.element
    }

    pub fn set_from(&mut self, from: Option<Jid>) {
        set_attr(&mut self.element, "from", from.as_ref().map(|j| j.as_str()));
        self.from = from;
    }
    pub fn set_to(&mut self, to: Option<Jid>) {
        set_attr(&mut self.element, "to", to.as_ref().map(|j| j.as_str()));
        self.to = to;
    }
    pub fn set_id(&mut self, id: Option<&str>) {
        set_attr(&mut self.element, "id", id);
    }
    pub fn set_type(&mut self, stanza_type: Option<&str>) {
        set_attr(&mut self.element, "type", stanza_type);
    }
    pub fn with_from(mut self, from: impl Into<Jid>) -> Self {
        self.set_from(Some(from.into()));
        self
    }
    pub fn with_to(mut self, to: impl Into<Jid>) -> Self {
        self.set_to(Some(to.into()));
        self
    }
    pub fn with_type(mut self, stanza_type: &str) -> Self {
        self.set_type(Some(stanza_type));
        self
    }
    pub fn with_id(mut self, id: &str) -> Self {
        self.set_id(Some(id));
        self
    }
    pub fn with_child(mut self, child: Element) -> Self {
        self.element.append_child(child);
        self
    }

    /// An IQ request (get or set) is one that demands exactly one reply.
    pub fn is_iq_request(&self) -> bool {
        self.kind == StanzaKind::Iq && matches!(self.stanza_type(), Some("get" | "set"))
    }

    pub fn is_error(&self) -> bool {
        self.stanza_type() == Some("error")
    }

    /// The payload of an IQ: its first child element.
    pub fn iq_payload(&self) -> Option<&Element> {
        self.element.children().next()
    }

    /// `<iq type='result'/>` answering this request, from its recipient back to its sender.
    pub fn iq_result(&self, payload: Option<Element>) -> Stanza {
        let mut reply = Stanza::new(StanzaKind::Iq).with_type("result");
        reply.set_id(self.id());
        reply.set_from(self.to.clone());
        reply.set_to(self.from.clone());
        if let Some(payload) = payload {
            reply.element.append_child(payload);
        }
        reply
    }

    /// The error reply to this stanza (RFC 6120 §8.3.1): addresses swapped, `type='error'`, the
    /// original children kept, and the error appended. `None` for an error stanza, which must
    /// never be answered with another error, and for an IQ result (RFC 6120 §8.2.3: a result or
    /// an error is never answered with a result or an error).
    pub fn error_reply(&self, error: &StanzaError) -> Option<Stanza> {
        if self.is_error() || (self.kind == StanzaKind::Iq && self.stanza_type() == Some("result")) {
            return None;
        }
        let mut element = Element::bare(self.kind.as_str(), ns::CLIENT);
        for child in self.element.children() {
            element.append_child(child.clone());
        }
        element.append_child(error.to_element());
        let mut reply = Stanza {
            kind: self.kind,
            from: None,
            to: None,
            element,
        };
        reply.set_id(self.id());
        reply.set_type(Some("error"));
        reply.set_from(self.to.clone());
        reply.set_to(self.from.clone());
        Some(reply)
    }

    /// The `<error/>` child of an error stanza.
    pub fn error(&self) -> Option<StanzaError> {
        self.element
            .get_child("error", ns::CLIENT)
            .and_then(StanzaError::from_element)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::StanzaErrorCondition;

    fn parse(xml: &str) -> Result<Stanza, EnvelopeError> {
        Stanza::from_element(xml.parse().unwrap())
    }

    #[test]
    fn reads_the_envelope_of_a_message() {
        let stanza = parse("<message xmlns='jabber:client' to='bob@example.org/phone' id='a1' type='chat'><body>hi</body></message>").unwrap();
        assert_eq!(stanza.kind(), StanzaKind::Message);
        assert_eq!(stanza.to().unwrap().as_str(), "bob@example.org/phone");
        assert_eq!(stanza.id(), Some("a1"));
        assert_eq!(stanza.stanza_type(), Some("chat"));
    }

    #[test]
    fn rejects_a_bad_address_and_a_foreign_namespace() {
        assert_eq!(
            parse("<message xmlns='jabber:client' to='@@'/>"),
            Err(EnvelopeError::BadAddress { attribute: "to" })
        );
        assert!(matches!(
            parse("<message xmlns='urn:other'/>"),
            Err(EnvelopeError::NotAStanza(_))
        ));
        assert_eq!(
            parse("<iq xmlns='jabber:client' type='get'/>"),
            Err(EnvelopeError::BadIq)
        );
        assert_eq!(
            parse("<iq xmlns='jabber:client' id='x' type='bogus'/>"),
            Err(EnvelopeError::BadIq)
        );
    }

    #[test]
    fn error_reply_swaps_addresses_and_is_never_sent_for_an_error() {
        let stanza = parse("<iq xmlns='jabber:client' from='a@x/r' to='x' id='q' type='get'><query xmlns='urn:unknown'/></iq>").unwrap();
        let reply = stanza
            .error_reply(&StanzaError::new(StanzaErrorCondition::ServiceUnavailable))
            .unwrap();
        assert_eq!(reply.to().unwrap().as_str(), "a@x/r");
        assert_eq!(reply.from().unwrap().as_str(), "x");
        assert_eq!(reply.id(), Some("q"));
        assert_eq!(
            reply.error().unwrap().condition,
            StanzaErrorCondition::ServiceUnavailable
        );
        assert!(
            reply
                .error_reply(&StanzaError::new(StanzaErrorCondition::BadRequest))
                .is_none()
        );
        let result = parse("<iq xmlns='jabber:client' from='a@x/r' to='x' id='q' type='result'/>").unwrap();
        assert!(
            result
                .error_reply(&StanzaError::new(StanzaErrorCondition::ServiceUnavailable))
                .is_none(),
            "an IQ result is never answered"
        );
    }

    #[test]
    fn setters_keep_attributes_and_fields_in_step() {
        let mut stanza = Stanza::new(StanzaKind::Message);
        stanza.set_from(Some(Jid::new("a@x/r").unwrap()));
        assert_eq!(stanza.element().attr("from"), Some("a@x/r"));
        stanza.set_from(None);
        assert_eq!(stanza.element().attr("from"), None);
        assert!(stanza.from().is_none());
    }
}

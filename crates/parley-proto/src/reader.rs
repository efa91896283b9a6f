//! The bounded, strict, incremental reader of an XMPP stream (sans-IO).
//!
//! Owns: turning bytes pushed in by the session into [`StreamEvent`]s (the stream header, each
//! top-level element whole, the stream close), enforcing restricted XML (RFC 6120 §11) and the
//! resource limits in [`Limits`], and mapping every failure to the stream error condition the
//! peer must receive.
//!
//! Must not touch: sockets, TLS, timers or session state. The session reads, calls
//! [`StreamReader::feed`], then drains [`StreamReader::next_event`] until it returns `Ok(None)`.
//!
//! XML well-formedness and most restrictions (DTD, PIs, comments, custom entities, control
//! characters, undeclared prefixes, duplicate attributes, UTF-8 only) are rxml's job; this module
//! adds the stanza byte budget, the depth and attribute limits, and the XMPP stream structure.
//!
//! Idle size: `size_of::<StreamReader>()` is 640 bytes in release builds (a test keeps it under
//! 1 KiB). Once the input is drained, the input buffer is freed if it grew beyond
//! [`IDLE_BUFFER_CAPACITY`], the element stack if it grew beyond 8 slots, and rxml's token
//! scratchpad is released (`release_temporaries`). What stays on the heap is rxml's record of the
//! open `<stream:stream>` element and its namespace declarations: a few hundred bytes by reading
//! rxml 0.14's structures, not measured (measuring needs a counting allocator, which needs
//! `unsafe`). The scratchpad (`max_token_bytes`) is allocated again while input is parsed.

use crate::error::{StreamError, StreamErrorCondition};
use crate::ns;
use minidom::Element;
use rxml::error::EndOrError;
use rxml::{Event, Namespace, Parse, Parser, WithOptions};

/// Input buffer capacity kept between reads; anything larger is freed once drained, so a burst
/// of traffic doesn't leave every idle session holding a large buffer.
pub const IDLE_BUFFER_CAPACITY: usize = 1024;

/// Resource limits of one stream. Exceeding any of them is a `policy-violation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes one top-level element (or the stream header) may span on the wire, counted as they
    /// are consumed; also the most input that may be buffered unparsed.
    pub max_stanza_bytes: usize,
    /// Element nesting below the stream element (a stanza itself is level 1).
    pub max_depth: usize,
    /// Attributes per element (namespace declarations not counted; they are bounded by bytes).
    pub max_attributes: usize,
    /// Longest element name, attribute name or attribute value. Longer text is split by rxml
    /// rather than rejected, so text is bounded by `max_stanza_bytes` only.
    pub max_token_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_stanza_bytes: 256 * 1024,
            max_depth: 32,
            max_attributes: 64,
            max_token_bytes: 64 * 1024,
        }
    }
}

/// The attributes of the peer's `<stream:stream>` header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamHeader {
    pub to: Option<String>,
    pub from: Option<String>,
    pub version: Option<String>,
    /// `xml:lang`.
    pub lang: Option<String>,
    pub id: Option<String>,
    /// The default namespace the header declares (`xmlns='jabber:client'` for a client stream):
    /// the stream's content namespace, RFC 6120 §4.8.2.
    pub content_namespace: Option<String>,
}

/// One unit read from the stream.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    Header(StreamHeader),
    /// A direct child of the stream element, complete.
    Element(Element),
    /// `</stream:stream>`.
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the `<stream:stream>` start tag (initially and after a restart).
    AwaitingHeader,
    /// Inside the stream element.
    InStream,
    /// After `</stream:stream>`: further input is ignored.
    Closed,
}

/// The incremental reader of one XMPP stream. See the module docs.
#[derive(Debug)]
pub struct StreamReader {
    limits: Limits,
    parser: Parser,
    /// Bytes fed but not yet consumed by the parser start at `buffer[consumed..]`.
    buffer: Vec<u8>,
    consumed: usize,
    phase: Phase,
    /// Elements under construction below the stream element; its length is the current depth.
    open: Vec<Element>,
    /// Bytes consumed since the last complete unit (header, element, keepalive).
    unit_bytes: usize,
    /// Before the stream header or between top-level elements, until the next `<`: only
    /// whitespace is allowed there. We check these bytes ourselves, before rxml sees them, so the
    /// error is the same however the input was split (rxml may report a later invalid character
    /// first when it sees more input at once).
    between_elements: bool,
    /// Whether rxml has been given any byte of the current document. rxml rejects even
    /// whitespace before the first markup, which a peer may well send, so we skip it ourselves.
    document_started: bool,
    /// Set on the first error; the reader then keeps returning it.
    failure: Option<StreamError>,
    /// Until the header's start tag is complete: a raw (namespace-unaware) view of the same bytes,
    /// because the resolving parser consumes `xmlns` declarations and never reports them.
    header_scan: Option<Box<HeaderScan>>,
}

/// Finds the default namespace declared on the root element.
#[derive(Debug, Default)]
struct HeaderScan {
    parser: rxml::RawParser,
    default_namespace: Option<String>,
    done: bool,
}

impl HeaderScan {
    fn scan(&mut self, mut bytes: &[u8]) {
        while !self.done {
            match self.parser.parse(&mut bytes, false) {
                Ok(Some(rxml::RawEvent::Attribute(_, (None, name), value))) if name.as_str() == "xmlns" => {
                    self.default_namespace = Some(value);
                }
                Ok(Some(rxml::RawEvent::ElementHeadClose(_))) => self.done = true,
                Ok(Some(_)) => {}
                // Errors are the resolving parser's to report.
                Ok(None) | Err(_) => return,
            }
        }
    }
}

fn policy(text: String) -> StreamError {
    StreamError::with_text(StreamErrorCondition::PolicyViolation, text)
}

fn new_parser(limits: &Limits) -> Parser {
    // rxml's default text buffering stays on until the header; `handle` switches it off inside
    // the stream.
    Parser::with_options(rxml::Options {
        max_token_length: limits.max_token_bytes,
        ..rxml::Options::default()
    })
}

/// Maps an rxml error to the stream error RFC 6120 §4.9.3 asks for.
///
/// rxml reports restricted constructs partly through `RestrictedXml` and partly through generic
/// syntax errors; the messages matched here are those of rxml 0.14 and the tests pin them.
fn map_xml_error(error: rxml::Error, limits: &Limits) -> StreamError {
    use StreamErrorCondition as C;
    match error {
        rxml::Error::RestrictedXml("only utf-8 encoding is allowed") => {
            StreamError::with_text(C::UnsupportedEncoding, "only UTF-8 is supported")
        }
        // RFC 6120 §4.9.3.22: violating the rules of UTF-8 is an unsupported encoding too.
        rxml::Error::InvalidUtf8Byte(byte) => {
            StreamError::with_text(C::UnsupportedEncoding, format!("invalid UTF-8 byte 0x{byte:02x}"))
        }
        rxml::Error::RestrictedXml("long name or reference" | "event too long") => policy(format!(
            "a name or attribute value is longer than {} bytes",
            limits.max_token_bytes
        )),
        rxml::Error::RestrictedXml(what) => {
            StreamError::with_text(C::RestrictedXml, format!("not allowed in XMPP: {what}"))
        }
        rxml::Error::UndeclaredEntity => StreamError::with_text(
            C::RestrictedXml,
            "entity references other than the predefined five",
        ),
        // `<!` not followed by `--` or `[CDATA[` is a markup declaration (DOCTYPE, ENTITY, ...).
        rxml::Error::InvalidSyntax("malformed cdata or comment section start") => {
            StreamError::with_text(C::RestrictedXml, "document type declarations are not allowed")
        }
        other => StreamError::with_text(C::NotWellFormed, other.to_string()),
    }
}

fn text_in_stream() -> StreamError {
    StreamError::with_text(
        StreamErrorCondition::BadFormat,
        "text directly inside the stream element",
    )
}

fn is_xml_whitespace(text: &str) -> bool {
    text.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

fn header_from(
    name: &rxml::NcName,
    namespace: &Namespace<'_>,
    attrs: &rxml::AttrMap,
) -> Result<StreamHeader, StreamError> {
    if name.as_str() != "stream" {
        return Err(StreamError::with_text(
            StreamErrorCondition::BadFormat,
            "the root element must be <stream:stream>",
        ));
    }
    if namespace.as_str() != ns::STREAM {
        return Err(StreamError::with_text(
            StreamErrorCondition::InvalidNamespace,
            "the stream element is not in the http://etherx.jabber.org/streams namespace",
        ));
    }
    let plain = |key: &str| attrs.get(Namespace::none(), key).cloned();
    Ok(StreamHeader {
        to: plain("to"),
        from: plain("from"),
        version: plain("version"),
        lang: attrs.get(Namespace::xml(), "lang").cloned(),
        id: plain("id"),
        content_namespace: None,
    })
}

impl StreamReader {
    pub fn new(limits: Limits) -> Self {
        Self {
            parser: new_parser(&limits),
            limits,
            buffer: Vec::new(),
            consumed: 0,
            phase: Phase::AwaitingHeader,
            open: Vec::new(),
            unit_bytes: 0,
            between_elements: true,
            document_started: false,
            failure: None,
            header_scan: Some(Box::default()),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Append bytes read from the network. Errors (policy-violation) if more than
    /// `max_stanza_bytes` would be buffered unparsed.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), StreamError> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        if self.phase == Phase::Closed {
            return Ok(());
        }
        let unparsed = self.buffer.len() - self.consumed;
        if unparsed.saturating_add(bytes.len()) > self.limits.max_stanza_bytes {
            return Err(self.fail(policy(format!(
                "more than {} bytes buffered without being parsed",
                self.limits.max_stanza_bytes
            ))));
        }
        self.buffer.drain(..self.consumed);
        self.consumed = 0;
        self.buffer.extend_from_slice(bytes);
        Ok(())
    }

    /// Parse as far as buffered input allows and return the next complete event, or `Ok(None)`
    /// when more input is needed. After an error the reader is poisoned (keeps returning it).
    pub fn next_event(&mut self) -> Result<Option<StreamEvent>, StreamError> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        if self.phase == Phase::Closed {
            self.release_input();
            return Ok(None);
        }
        match self.advance() {
            Ok(Some(event)) => Ok(Some(event)),
            Ok(None) => {
                self.release_input();
                Ok(None)
            }
            Err(error) => Err(self.fail(error)),
        }
    }

    /// Stream restart after SASL success: expect a new stream header; keep bytes already
    /// buffered (a client may pipeline its new header).
    pub fn restart(&mut self) {
        if self.failure.is_some() {
            return;
        }
        self.parser = new_parser(&self.limits);
        self.phase = Phase::AwaitingHeader;
        self.header_scan = Some(Box::default());
        self.open = Vec::new();
        self.unit_bytes = 0;
        self.between_elements = true;
        self.document_started = false;
    }

    /// Stream restart after STARTTLS: expect a new header AND drop any buffered bytes (plaintext
    /// sent after `<starttls/>` must never be read as if it came over TLS).
    pub fn restart_discarding_buffer(&mut self) {
        self.buffer = Vec::new();
        self.consumed = 0;
        self.restart();
    }

    /// Bytes fed but not yet parsed.
    pub fn buffered_len(&self) -> usize {
        self.buffer.len() - self.consumed
    }

    fn fail(&mut self, error: StreamError) -> StreamError {
        self.failure = Some(error.clone());
        self.buffer = Vec::new();
        self.consumed = 0;
        self.open = Vec::new();
        error
    }

    /// Frees what an idle reader doesn't need once all input is consumed.
    fn release_input(&mut self) {
        if self.consumed == self.buffer.len() {
            self.consumed = 0;
            if self.buffer.capacity() > IDLE_BUFFER_CAPACITY {
                self.buffer = Vec::new();
            } else {
                self.buffer.clear();
            }
        }
        self.parser.release_temporaries();
    }

    fn advance(&mut self) -> Result<Option<StreamEvent>, StreamError> {
        loop {
            self.check_between_elements()?;
            // Hand the parser at most one byte more than the unit's remaining budget, so an
            // endless element fails as soon as it crosses the limit.
            let budget = self.limits.max_stanza_bytes.saturating_sub(self.unit_bytes);
            let available = &self.buffer[self.consumed..];
            let mut input = &available[..available.len().min(budget.saturating_add(1))];
            let offered = input.len();
            let result = self.parser.parse(&mut input, false);
            let used = offered - input.len();
            if let Some(scan) = self.header_scan.as_mut() {
                scan.scan(&self.buffer[self.consumed..self.consumed + used]);
            }
            self.consumed += used;
            self.unit_bytes = self.unit_bytes.saturating_add(used);
            if self.unit_bytes > self.limits.max_stanza_bytes {
                return Err(policy(format!(
                    "a top-level element is larger than {} bytes",
                    self.limits.max_stanza_bytes
                )));
            }
            let event = match result {
                Ok(Some(event)) => event,
                // `at_eof` is never set, so a clean end of document can't be reported here.
                Ok(None) | Err(EndOrError::NeedMoreData) => return Ok(None),
                Err(EndOrError::Error(error)) => return Err(map_xml_error(error, &self.limits)),
            };
            if let Some(done) = self.handle(event)? {
                return Ok(Some(done));
            }
        }
    }

    fn check_between_elements(&mut self) -> Result<(), StreamError> {
        if !self.between_elements {
            return Ok(());
        }
        let mut skipped = 0;
        let mut result = Ok(());
        for &byte in &self.buffer[self.consumed..] {
            match byte {
                b' ' | b'\t' | b'\r' | b'\n' if !self.document_started => skipped += 1,
                b' ' | b'\t' | b'\r' | b'\n' => {}
                b'<' => {
                    self.between_elements = false;
                    self.document_started = true;
                    break;
                }
                _ if self.phase == Phase::AwaitingHeader => {
                    result = Err(StreamError::with_text(
                        StreamErrorCondition::NotWellFormed,
                        "text before the stream header",
                    ));
                    break;
                }
                _ => {
                    result = Err(text_in_stream());
                    break;
                }
            }
        }
        self.consumed += skipped;
        result
    }

    fn handle(&mut self, event: Event) -> Result<Option<StreamEvent>, StreamError> {
        match event {
            // rxml has already checked version and encoding.
            Event::XmlDeclaration(..) => {
                self.between_elements = true;
                Ok(None)
            }
            Event::StartElement(_, (namespace, name), attrs) => {
                if attrs.len() > self.limits.max_attributes {
                    return Err(policy(format!(
                        "an element has more than {} attributes",
                        self.limits.max_attributes
                    )));
                }
                if self.phase == Phase::AwaitingHeader {
                    let mut header = header_from(&name, &namespace, &attrs)?;
                    header.content_namespace =
                        self.header_scan.take().and_then(|scan| scan.default_namespace);
                    self.phase = Phase::InStream;
                    self.unit_bytes = 0;
                    self.between_elements = true;
                    // Inside the stream, text is reported as soon as it is read, so a keepalive
                    // resets the byte budget at once.
                    self.parser.set_text_buffering(false);
                    return Ok(Some(StreamEvent::Header(header)));
                }
                if self.open.len() >= self.limits.max_depth {
                    return Err(policy(format!(
                        "elements are nested more than {} levels deep",
                        self.limits.max_depth
                    )));
                }
                let mut element = Element::bare(name.as_str(), namespace.as_str());
                *element.attrs_mut() = attrs;
                self.open.push(element);
                Ok(None)
            }
            Event::Text(_, text) => match self.open.last_mut() {
                Some(parent) => {
                    parent.append_text(text);
                    Ok(None)
                }
                None if is_xml_whitespace(&text) => {
                    // A keepalive: don't let it count towards the next element's budget.
                    self.unit_bytes = 0;
                    Ok(None)
                }
                None => Err(text_in_stream()),
            },
            Event::EndElement(_) => match self.open.pop() {
                Some(element) => match self.open.last_mut() {
                    Some(parent) => {
                        parent.append_child(element);
                        Ok(None)
                    }
                    None => {
                        self.unit_bytes = 0;
                        self.between_elements = true;
                        if self.open.capacity() > 8 {
                            self.open = Vec::new();
                        }
                        Ok(Some(StreamEvent::Element(element)))
                    }
                },
                None => {
                    self.phase = Phase::Closed;
                    Ok(Some(StreamEvent::End))
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use StreamErrorCondition as C;

    const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0' xml:lang='en'>";

    fn read_all(reader: &mut StreamReader, input: &[u8]) -> Result<Vec<StreamEvent>, StreamError> {
        reader.feed(input)?;
        let mut events = Vec::new();
        while let Some(event) = reader.next_event()? {
            events.push(event);
        }
        Ok(events)
    }

    fn events(input: &[u8]) -> Result<Vec<StreamEvent>, StreamError> {
        read_all(&mut StreamReader::new(Limits::default()), input)
    }

    /// Reads a stream header followed by `body`, returning the events after the header.
    fn body_events(body: &str) -> Result<Vec<StreamEvent>, StreamError> {
        let mut all = events(format!("{HEADER}{body}").as_bytes())?;
        assert!(matches!(all.first(), Some(StreamEvent::Header(_))), "{all:?}");
        all.remove(0);
        Ok(all)
    }

    fn condition(result: Result<Vec<StreamEvent>, StreamError>) -> StreamErrorCondition {
        match result {
            Ok(events) => panic!("expected an error, got {events:?}"),
            Err(error) => error.condition,
        }
    }

    fn element(event: &StreamEvent) -> &Element {
        match event {
            StreamEvent::Element(element) => element,
            other => panic!("expected an element, got {other:?}"),
        }
    }

    /// Feeds `chunks` one by one, draining events after each, like a session would.
    fn read_in_chunks(chunks: &[&[u8]]) -> Result<Vec<StreamEvent>, StreamError> {
        let mut reader = StreamReader::new(Limits::default());
        let mut events = Vec::new();
        for chunk in chunks {
            events.extend(read_all(&mut reader, chunk)?);
        }
        Ok(events)
    }

    const SAMPLE_STREAM: &str = "<?xml version='1.0' encoding='UTF-8'?>\n<stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0' xml:lang='en'>\n\
        <message to='juliet@example.com' type='chat' xml:lang='fr'><body>Bonjour &amp; &#x263A; \
        <![CDATA[<raw>]]></body><x xmlns='urn:example' a='1' b=\"two&apos;s\"/></message> \n\t\
        <iq type='get' id='1'><query xmlns='jabber:iq:roster'/></iq>\
        <p:thing xmlns:p='urn:p' p:attr='v'>text</p:thing></stream:stream>";

    #[test]
    fn a_normal_stream_gives_header_elements_and_end() {
        let events = events(SAMPLE_STREAM.as_bytes()).unwrap();
        assert_eq!(events.len(), 5, "{events:?}");
        assert_eq!(
            events[0],
            StreamEvent::Header(StreamHeader {
                to: Some("example.com".into()),
                from: None,
                version: Some("1.0".into()),
                lang: Some("en".into()),
                id: None,
                content_namespace: Some(ns::CLIENT.into()),
            })
        );
        let message = element(&events[1]);
        assert!(message.is("message", ns::CLIENT));
        assert_eq!(message.attr("type"), Some("chat"));
        assert_eq!(message.attr_ns(ns::XML, "lang"), Some("fr"));
        assert_eq!(
            message.get_child("body", ns::CLIENT).unwrap().text(),
            "Bonjour & \u{263A} <raw>"
        );
        let x = message.get_child("x", "urn:example").unwrap();
        assert_eq!(x.attr("b"), Some("two's"));
        let iq = element(&events[2]);
        assert!(iq.has_child("query", ns::ROSTER));
        let thing = element(&events[3]);
        assert!(thing.is("thing", "urn:p"));
        assert_eq!(thing.attr_ns("urn:p", "attr"), Some("v"));
        assert_eq!(events[4], StreamEvent::End);
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        let bytes = SAMPLE_STREAM.as_bytes();
        let whole = events(bytes).unwrap();
        for split in 0..=bytes.len() {
            let (a, b) = bytes.split_at(split);
            assert_eq!(read_in_chunks(&[a, b]).unwrap(), whole, "split at {split}");
        }
    }

    #[test]
    fn byte_by_byte_gives_the_same_events() {
        let bytes = SAMPLE_STREAM.as_bytes();
        let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(read_in_chunks(&chunks).unwrap(), events(bytes).unwrap());
    }

    #[test]
    fn header_attributes_are_read() {
        let events = events(
            b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client' \
              from='a@b.c' to='b.c' id='xyz' version='1.0' xml:lang='de-CH'>",
        )
        .unwrap();
        assert_eq!(
            events,
            vec![StreamEvent::Header(StreamHeader {
                to: Some("b.c".into()),
                from: Some("a@b.c".into()),
                version: Some("1.0".into()),
                lang: Some("de-CH".into()),
                id: Some("xyz".into()),
                content_namespace: Some(ns::CLIENT.into()),
            })]
        );
    }

    #[test]
    fn incomplete_input_asks_for_more() {
        let mut reader = StreamReader::new(Limits::default());
        assert_eq!(read_all(&mut reader, HEADER.as_bytes()).unwrap().len(), 1);
        assert_eq!(read_all(&mut reader, b"<message><bo").unwrap(), vec![]);
        let rest = read_all(&mut reader, b"dy>hi</body></message>").unwrap();
        assert_eq!(
            element(&rest[0]).get_child("body", ns::CLIENT).unwrap().text(),
            "hi"
        );
    }

    #[test]
    fn whitespace_before_the_header_may_arrive_alone() {
        let header = HEADER.strip_prefix("<?xml version='1.0'?>").unwrap();
        let events = read_in_chunks(&[b"\n", b" ", header.as_bytes(), b"\n", b"<presence/>"]).unwrap();
        assert_eq!(events.len(), 2);
        // XML 1.0 wants the declaration first; we tolerate whitespace before it.
        assert_eq!(read_in_chunks(&[b"\n", HEADER.as_bytes()]).unwrap().len(), 1);
    }

    #[test]
    fn text_before_the_header_is_not_well_formed() {
        assert_eq!(condition(events(b"hello<stream:stream>")), C::NotWellFormed);
    }

    #[test]
    fn keepalive_whitespace_is_ignored() {
        let events = body_events(" \n\t \r\n<presence/>  \n ").unwrap();
        assert_eq!(events.len(), 1);
        assert!(element(&events[0]).is("presence", ns::CLIENT));
    }

    #[test]
    fn keepalives_do_not_count_towards_the_stanza_budget() {
        let limits = Limits {
            max_stanza_bytes: 200,
            ..Limits::default()
        };
        let mut reader = StreamReader::new(limits);
        read_all(&mut reader, HEADER.as_bytes()).unwrap();
        for _ in 0..100 {
            read_all(&mut reader, b"   \n").unwrap();
        }
        let events = read_all(&mut reader, b"<presence/>").unwrap();
        assert_eq!(events.len(), 1);
    }

    #[test]
    fn stream_close_is_end_and_later_input_is_ignored() {
        let mut reader = StreamReader::new(Limits::default());
        let events = read_all(&mut reader, format!("{HEADER}</stream:stream>").as_bytes()).unwrap();
        assert_eq!(events.last(), Some(&StreamEvent::End));
        assert_eq!(read_all(&mut reader, b"<message/>").unwrap(), vec![]);
    }

    #[test]
    fn text_directly_in_the_stream_is_bad_format() {
        assert_eq!(condition(body_events("hello<presence/>")), C::BadFormat);
    }

    #[test]
    fn wrong_stream_namespace_is_invalid_namespace() {
        let result = events(b"<stream:stream xmlns:stream='urn:wrong' xmlns='jabber:client'>");
        assert_eq!(condition(result), C::InvalidNamespace);
    }

    #[test]
    fn wrong_root_name_is_bad_format() {
        let result = events(b"<stream:flow xmlns:stream='http://etherx.jabber.org/streams'>");
        assert_eq!(condition(result), C::BadFormat);
        assert_eq!(condition(events(b"<html>")), C::BadFormat);
    }

    #[test]
    fn encoding_other_than_utf8_is_unsupported_encoding() {
        let result = events(b"<?xml version='1.0' encoding='ISO-8859-1'?><stream:stream>");
        assert_eq!(condition(result), C::UnsupportedEncoding);
    }

    #[test]
    fn doctype_is_restricted_xml() {
        assert_eq!(
            condition(events(b"<!DOCTYPE stream [ ]><stream:stream>")),
            C::RestrictedXml
        );
        assert_eq!(condition(body_events("<!DOCTYPE x>")), C::RestrictedXml);
    }

    #[test]
    fn entity_declaration_is_restricted_xml() {
        assert_eq!(condition(body_events("<!ENTITY lol 'lol'>")), C::RestrictedXml);
        assert_eq!(
            condition(body_events("<message><!ENTITY lol 'lol'></message>")),
            C::RestrictedXml
        );
    }

    #[test]
    fn undeclared_entity_reference_is_restricted_xml() {
        assert_eq!(
            condition(body_events("<message><body>&foo;</body></message>")),
            C::RestrictedXml
        );
        assert_eq!(condition(body_events("<message a='&nbsp;'/>")), C::RestrictedXml);
    }

    #[test]
    fn predefined_entities_and_character_references_are_allowed() {
        let events = body_events("<m>&lt;&gt;&amp;&apos;&quot;&#65;&#x42;</m>").unwrap();
        assert_eq!(element(&events[0]).text(), "<>&'\"AB");
    }

    #[test]
    fn processing_instruction_is_restricted_xml() {
        assert_eq!(condition(body_events("<?pi data?>")), C::RestrictedXml);
        assert_eq!(
            condition(body_events("<message><?pi?></message>")),
            C::RestrictedXml
        );
    }

    #[test]
    fn comment_is_restricted_xml() {
        assert_eq!(condition(body_events("<!-- hi -->")), C::RestrictedXml);
        assert_eq!(
            condition(body_events("<message><!-- hi --></message>")),
            C::RestrictedXml
        );
    }

    #[test]
    fn undeclared_prefix_is_not_well_formed() {
        assert_eq!(condition(body_events("<a:b/>")), C::NotWellFormed);
        assert_eq!(condition(body_events("<message a:b='c'/>")), C::NotWellFormed);
    }

    #[test]
    fn duplicate_attribute_is_not_well_formed() {
        assert_eq!(
            condition(body_events("<message to='a' to='b'/>")),
            C::NotWellFormed
        );
        // The same attribute reached through two prefixes of one namespace.
        let aliased = "<message xmlns:p='urn:x' xmlns:q='urn:x' p:a='1' q:a='2'/>";
        assert_eq!(condition(body_events(aliased)), C::NotWellFormed);
    }

    #[test]
    fn the_header_reports_its_declared_content_namespace_however_it_is_split() {
        let input = "<?xml version='1.0'?><stream:stream xmlns='urn:example:bogus' \
                     xmlns:stream='http://etherx.jabber.org/streams' to='b.c' version='1.0'>";
        for split in 0..input.len() {
            let mut reader = StreamReader::new(Limits::default());
            reader.feed(&input.as_bytes()[..split]).unwrap();
            let mut header = reader.next_event().unwrap();
            reader.feed(&input.as_bytes()[split..]).unwrap();
            if header.is_none() {
                header = reader.next_event().unwrap();
            }
            let Some(StreamEvent::Header(header)) = header else {
                panic!("no header at split {split}")
            };
            assert_eq!(
                header.content_namespace.as_deref(),
                Some("urn:example:bogus"),
                "split {split}"
            );
        }
    }

    #[test]
    fn bad_utf8_is_an_unsupported_encoding() {
        let mut input = HEADER.as_bytes().to_vec();
        input.extend_from_slice(b"<message><body>\xff</body></message>");
        assert_eq!(condition(events(&input)), C::UnsupportedEncoding);
    }

    #[test]
    fn control_character_is_not_well_formed() {
        assert_eq!(
            condition(body_events("<message><body>\u{1}</body></message>")),
            C::NotWellFormed
        );
        assert_eq!(
            condition(body_events("<message><body>&#1;</body></message>")),
            C::NotWellFormed
        );
    }

    #[test]
    fn mismatched_tags_are_not_well_formed() {
        assert_eq!(condition(body_events("<message></presence>")), C::NotWellFormed);
    }

    #[test]
    fn reader_is_poisoned_after_an_error() {
        let mut reader = StreamReader::new(Limits::default());
        let first = read_all(&mut reader, format!("{HEADER}<!-- x -->").as_bytes()).unwrap_err();
        assert_eq!(first.condition, C::RestrictedXml);
        assert_eq!(reader.next_event().unwrap_err(), first);
        assert_eq!(reader.feed(b"<presence/>").unwrap_err(), first);
    }

    fn oversize_limits() -> Limits {
        Limits {
            max_stanza_bytes: 1000,
            ..Limits::default()
        }
    }

    fn assert_policy(error: StreamError, mentions: &str) {
        assert_eq!(error.condition, C::PolicyViolation);
        let text = error.text.unwrap_or_default();
        assert!(text.contains(mentions), "{text:?} should mention {mentions:?}");
    }

    #[test]
    fn oversize_stanza_in_one_feed_is_a_policy_violation() {
        let mut reader = StreamReader::new(oversize_limits());
        read_all(&mut reader, HEADER.as_bytes()).unwrap();
        let stanza = format!("<message><body>{}</body></message>", "a".repeat(990));
        // More than the limit in one feed can't even be buffered...
        assert_policy(read_all(&mut reader, stanza.as_bytes()).unwrap_err(), "buffered");
        // ...and in two feeds the parser stops at the limit.
        let mut reader = StreamReader::new(oversize_limits());
        read_all(&mut reader, HEADER.as_bytes()).unwrap();
        let (first, second) = stanza.as_bytes().split_at(600);
        assert!(read_all(&mut reader, first).unwrap().is_empty());
        assert_policy(
            read_all(&mut reader, second).unwrap_err(),
            "larger than 1000 bytes",
        );
    }

    #[test]
    fn a_stanza_just_under_the_limit_is_accepted() {
        let mut reader = StreamReader::new(oversize_limits());
        read_all(&mut reader, HEADER.as_bytes()).unwrap();
        let stanza = format!("<message><body>{}</body></message>", "a".repeat(960));
        assert!(stanza.len() <= 1000);
        assert_eq!(read_all(&mut reader, stanza.as_bytes()).unwrap().len(), 1);
    }

    #[test]
    fn oversize_stanza_trickled_is_cut_off_at_the_limit() {
        let mut reader = StreamReader::new(oversize_limits());
        read_all(&mut reader, HEADER.as_bytes()).unwrap();
        read_all(&mut reader, b"<message><body>").unwrap();
        let mut sent = 15;
        let error = loop {
            match read_all(&mut reader, b"a") {
                Ok(events) => assert!(events.is_empty()),
                Err(error) => break error,
            }
            sent += 1;
            assert!(sent < 2000, "the limit never triggered");
        };
        assert_eq!(sent, 1000, "cut off exactly when crossing the limit");
        assert_policy(error, "larger than 1000 bytes");
    }

    #[test]
    fn endless_children_are_cut_off() {
        let mut reader = StreamReader::new(oversize_limits());
        read_all(&mut reader, HEADER.as_bytes()).unwrap();
        read_all(&mut reader, b"<message>").unwrap();
        let error = (0..400)
            .find_map(|_| read_all(&mut reader, b"<a/>").err())
            .unwrap();
        assert_policy(error, "larger than");
    }

    #[test]
    fn feeding_more_than_the_limit_unparsed_is_a_policy_violation() {
        let mut reader = StreamReader::new(oversize_limits());
        reader.feed(&[b' '; 600]).unwrap();
        assert_policy(reader.feed(&[b' '; 600]).unwrap_err(), "buffered");
        assert!(reader.next_event().is_err());
    }

    #[test]
    fn deep_nesting_is_a_policy_violation() {
        let body = format!("{}{}", "<a>".repeat(1000), "</a>".repeat(1000));
        assert_policy(body_events(&body).unwrap_err(), "nested more than 32 levels");
    }

    #[test]
    fn nesting_at_the_limit_is_accepted() {
        let body = format!("{}{}", "<a>".repeat(32), "</a>".repeat(32));
        assert_eq!(body_events(&body).unwrap().len(), 1);
    }

    fn with_attributes(count: usize) -> String {
        let attrs: String = (0..count).map(|i| format!(" a{i}='{i}'")).collect();
        format!("<message{attrs}/>")
    }

    #[test]
    fn many_attributes_are_a_policy_violation() {
        assert_eq!(body_events(&with_attributes(64)).unwrap().len(), 1);
        assert_policy(
            body_events(&with_attributes(65)).unwrap_err(),
            "more than 64 attributes",
        );
    }

    #[test]
    fn long_names_and_attribute_values_are_a_policy_violation() {
        let limits = Limits {
            max_token_bytes: 100,
            ..Limits::default()
        };
        let mut reader = StreamReader::new(limits);
        read_all(&mut reader, HEADER.as_bytes()).unwrap();
        let long_value = format!("<message to='{}'/>", "x".repeat(200));
        assert_policy(
            read_all(&mut reader, long_value.as_bytes()).unwrap_err(),
            "longer than 100",
        );

        let mut reader = StreamReader::new(limits);
        read_all(&mut reader, HEADER.as_bytes()).unwrap();
        let long_name = format!("<{}/>", "n".repeat(200));
        assert_policy(
            read_all(&mut reader, long_name.as_bytes()).unwrap_err(),
            "longer than 100",
        );
    }

    #[test]
    fn long_text_is_split_not_rejected() {
        let limits = Limits {
            max_token_bytes: 100,
            ..Limits::default()
        };
        let mut reader = StreamReader::new(limits);
        read_all(&mut reader, HEADER.as_bytes()).unwrap();
        let text = "y".repeat(1000);
        let events = read_all(&mut reader, format!("<m>{text}</m>").as_bytes()).unwrap();
        assert_eq!(element(&events[0]).text(), text);
    }

    #[test]
    fn restart_keeps_pipelined_bytes() {
        let mut reader = StreamReader::new(Limits::default());
        let input = format!("{HEADER}<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>{HEADER}<iq/>");
        reader.feed(input.as_bytes()).unwrap();
        assert!(matches!(
            reader.next_event().unwrap(),
            Some(StreamEvent::Header(_))
        ));
        assert!(element(&reader.next_event().unwrap().unwrap()).is("auth", ns::SASL));
        reader.restart();
        assert!(matches!(
            reader.next_event().unwrap(),
            Some(StreamEvent::Header(_))
        ));
        assert!(element(&reader.next_event().unwrap().unwrap()).is("iq", ns::CLIENT));
        assert_eq!(reader.next_event().unwrap(), None);
    }

    #[test]
    fn restart_discarding_buffer_drops_pipelined_bytes() {
        let mut reader = StreamReader::new(Limits::default());
        let input = format!("{HEADER}<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><iq/>");
        reader.feed(input.as_bytes()).unwrap();
        assert!(matches!(
            reader.next_event().unwrap(),
            Some(StreamEvent::Header(_))
        ));
        assert!(element(&reader.next_event().unwrap().unwrap()).is("starttls", ns::TLS));
        reader.restart_discarding_buffer();
        assert_eq!(reader.buffered_len(), 0);
        assert_eq!(reader.next_event().unwrap(), None);
        // Over TLS, the new stream starts from scratch.
        let events = read_all(&mut reader, format!("{HEADER}<presence/>").as_bytes()).unwrap();
        assert_eq!(events.len(), 2);
        assert!(element(&events[1]).is("presence", ns::CLIENT));
    }

    #[test]
    fn restart_without_a_header_is_rejected() {
        let mut reader = StreamReader::new(Limits::default());
        read_all(&mut reader, HEADER.as_bytes()).unwrap();
        reader.restart();
        assert_eq!(condition(read_all(&mut reader, b"<iq/>")), C::BadFormat);
    }

    #[test]
    fn idle_reader_is_small_after_a_stanza() {
        let mut reader = StreamReader::new(Limits::default());
        read_all(&mut reader, HEADER.as_bytes()).unwrap();
        let big = format!("<message><body>{}</body></message>", "z".repeat(100_000));
        assert_eq!(read_all(&mut reader, big.as_bytes()).unwrap().len(), 1);
        let size = size_of::<StreamReader>();
        assert!(size < 1024, "StreamReader is {size} bytes");
        assert_eq!(reader.buffer.capacity(), 0, "the 100 kB input buffer was freed");
        let stack = reader.open.capacity() * size_of::<Element>();
        assert!(stack <= 1024, "the element stack keeps {stack} bytes");
    }

    /// A small deterministic PRNG (xorshift64*), so the fuzz tests need no extra crate.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// What must not depend on how the input was split: the events and the error condition.
    /// (rxml's diagnostic text can differ: with more input at hand it may find a different
    /// well-formedness error first.)
    fn outcome(
        result: Result<Vec<StreamEvent>, StreamError>,
    ) -> Result<Vec<StreamEvent>, StreamErrorCondition> {
        result.map_err(|error| error.condition)
    }

    fn random_splits<'a>(rng: &mut Rng, bytes: &'a [u8]) -> Vec<&'a [u8]> {
        let mut chunks = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(1 + rng.below(rest.len().min(40)));
            chunks.push(chunk);
            rest = tail;
        }
        chunks
    }

    #[test]
    fn random_splits_of_valid_streams_agree() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let bytes = SAMPLE_STREAM.as_bytes();
        let whole = events(bytes).unwrap();
        for _ in 0..300 {
            assert_eq!(read_in_chunks(&random_splits(&mut rng, bytes)).unwrap(), whole);
        }
    }

    #[test]
    fn random_bytes_never_panic_and_splits_agree() {
        const ALPHABET: &[u8] = b"<>/='\"&;:!?-[]x \n\x01\xff\xc3abstream";
        let mut rng = Rng(42);
        for round in 0..2000 {
            let mut input = if round % 2 == 0 {
                HEADER.as_bytes().to_vec()
            } else {
                Vec::new()
            };
            let len = rng.below(200);
            input.extend((0..len).map(|_| {
                if rng.below(4) == 0 {
                    rng.next() as u8
                } else {
                    ALPHABET[rng.below(ALPHABET.len())]
                }
            }));
            let whole = outcome(events(&input));
            let split = outcome(read_in_chunks(&random_splits(&mut rng, &input)));
            assert_eq!(split, whole, "input {:?}", String::from_utf8_lossy(&input));
        }
    }

    #[test]
    fn mutated_valid_streams_never_panic_and_splits_agree() {
        let mut rng = Rng(7);
        for _ in 0..1000 {
            let mut input = SAMPLE_STREAM.as_bytes().to_vec();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(input.len());
                input[at] = rng.next() as u8;
            }
            let whole = outcome(events(&input));
            let split = outcome(read_in_chunks(&random_splits(&mut rng, &input)));
            assert_eq!(split, whole, "input {:?}", String::from_utf8_lossy(&input));
        }
    }
}

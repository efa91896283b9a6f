//! Just enough streaming XML for a load client: split an XMPP stream into its header, its
//! top-level elements and its end, then parse one element into a tiny tree.
//!
//! Servers under test are trusted to speak XMPP, but their bytes are still input: every size and
//! depth is bounded and malformed input is an error, never a panic. DTDs, processing instructions
//! (other than the XML declaration) and comments are rejected, as RFC 6120 forbids them.

use thiserror::Error;

/// Largest top-level element accepted; bigger means a broken or hostile peer.
pub const MAX_ELEMENT_BYTES: usize = 256 * 1024;
/// Deepest element nesting accepted inside a stanza.
pub const MAX_DEPTH: usize = 32;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum XmlError {
    #[error("element larger than {MAX_ELEMENT_BYTES} bytes")]
    TooLarge,
    #[error("element nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("malformed XML: {0}")]
    Malformed(&'static str),
    #[error("unsupported XML construct: {0}")]
    Unsupported(&'static str),
    #[error("invalid UTF-8 in XML")]
    Utf8,
}

/// One parsed element. Prefixes are dropped from names (`stream:features` is `features`); the
/// namespace, when it matters, is checked through the `xmlns` attribute.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
    pub text: String,
}

impl Element {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// A child matched by local name and declared namespace.
    pub fn child_ns(&self, name: &str, ns: &str) -> Option<&Element> {
        self.children
            .iter()
            .find(|c| c.name == name && c.attr("xmlns") == Some(ns))
    }
}

/// What the framer found at the front of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// `<stream:stream ...>`, with its attributes (the element is left open).
    StreamStart(Element),
    /// A complete top-level element (a stanza, features, SASL or TLS nonza).
    Element(Element),
    /// `</stream:stream>`.
    StreamEnd,
}

/// Where a byte scan of the buffer front ended.
enum Scan {
    Incomplete,
    /// A complete construct of this many bytes.
    Complete(usize),
}

/// Finds the next event at the front of `buf`. Returns the event and the number of bytes it used,
/// or `None` when more bytes are needed (partial input is normal: one read is not one stanza).
/// `in_stream` says whether the stream header has been seen, so a top-level end tag is the end.
pub fn next_event(buf: &[u8], in_stream: bool) -> Result<Option<(Event, usize)>, XmlError> {
    let mut pos = 0;
    loop {
        while pos < buf.len() && buf[pos].is_ascii_whitespace() {
            pos += 1;
        }
        if pos >= buf.len() {
            return Ok(None);
        }
        if buf[pos] != b'<' {
            // Text between stanzas is only whitespace in XMPP.
            return Err(XmlError::Malformed("text at stream level"));
        }
        let rest = &buf[pos..];
        if rest.len() < 2 {
            return Ok(None);
        }
        match rest[1] {
            b'?' => {
                // Only the XML declaration is allowed, and only before the header.
                if in_stream {
                    return Err(XmlError::Unsupported("processing instruction"));
                }
                match find(rest, b"?>") {
                    Some(end) => pos += end + 2,
                    None if rest.len() > 1024 => return Err(XmlError::TooLarge),
                    None => return Ok(None),
                }
            }
            b'!' => return Err(XmlError::Unsupported("comment, CDATA or DTD at stream level")),
            b'/' => {
                let Some(end) = memchr_byte(rest, b'>') else {
                    return if rest.len() > 1024 {
                        Err(XmlError::TooLarge)
                    } else {
                        Ok(None)
                    };
                };
                if !in_stream {
                    return Err(XmlError::Malformed("end tag before stream header"));
                }
                return Ok(Some((Event::StreamEnd, pos + end + 1)));
            }
            _ => {
                let Some(tag_len) = scan_tag(rest)? else {
                    return Ok(None);
                };
                let tag = &rest[..tag_len];
                let self_closing = tag_len >= 2 && tag[tag_len - 2] == b'/';
                let qname = tag_name(tag)?;
                if !in_stream {
                    if self_closing || local(qname) != b"stream" {
                        return Err(XmlError::Malformed("expected stream header"));
                    }
                    let (name, attrs) = parse_start_tag(tag)?;
                    let header = Element {
                        name,
                        attrs,
                        ..Element::default()
                    };
                    return Ok(Some((Event::StreamStart(header), pos + tag_len)));
                }
                return match scan_element(rest)? {
                    Scan::Incomplete => Ok(None),
                    Scan::Complete(len) => {
                        let element = parse_element(&rest[..len])?;
                        Ok(Some((Event::Element(element), pos + len)))
                    }
                };
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn memchr_byte(hay: &[u8], byte: u8) -> Option<usize> {
    hay.iter().position(|&b| b == byte)
}

fn local(qname: &[u8]) -> &[u8] {
    match memchr_byte(qname, b':') {
        Some(i) => &qname[i + 1..],
        None => qname,
    }
}

/// Length of the tag starting at `buf[0] == b'<'`, through its `>`, honouring quoted values.
fn scan_tag(buf: &[u8]) -> Result<Option<usize>, XmlError> {
    let mut quote: Option<u8> = None;
    for (i, &b) in buf.iter().enumerate().skip(1) {
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'"' || b == b'\'' => quote = Some(b),
            None if b == b'<' => return Err(XmlError::Malformed("'<' inside a tag")),
            None if b == b'>' => return Ok(Some(i + 1)),
            None => {}
        }
        if i >= MAX_ELEMENT_BYTES {
            return Err(XmlError::TooLarge);
        }
    }
    if buf.len() > MAX_ELEMENT_BYTES {
        Err(XmlError::TooLarge)
    } else {
        Ok(None)
    }
}

fn tag_name(tag: &[u8]) -> Result<&[u8], XmlError> {
    let inner = &tag[1..];
    let end = inner
        .iter()
        .position(|&b| b.is_ascii_whitespace() || b == b'/' || b == b'>')
        .unwrap_or(inner.len());
    if end == 0 {
        return Err(XmlError::Malformed("empty tag name"));
    }
    Ok(&inner[..end])
}

/// Length of the complete element starting at `buf[0]`, or incomplete.
fn scan_element(buf: &[u8]) -> Result<Scan, XmlError> {
    let mut pos = 0;
    let mut depth = 0usize;
    loop {
        if pos > MAX_ELEMENT_BYTES {
            return Err(XmlError::TooLarge);
        }
        let Some(lt) = memchr_byte(&buf[pos..], b'<') else {
            return if buf.len() > MAX_ELEMENT_BYTES {
                Err(XmlError::TooLarge)
            } else {
                Ok(Scan::Incomplete)
            };
        };
        pos += lt;
        let rest = &buf[pos..];
        if rest.len() < 2 {
            return Ok(Scan::Incomplete);
        }
        if rest.starts_with(b"<![CDATA[") {
            match find(rest, b"]]>") {
                Some(end) => pos += end + 3,
                None => return incomplete_or_too_large(buf),
            }
            continue;
        }
        if rest.starts_with(b"<!") && rest.len() < 9 && b"<![CDATA[".starts_with(rest) {
            return Ok(Scan::Incomplete);
        }
        if rest.starts_with(b"<!") || rest.starts_with(b"<?") {
            return Err(XmlError::Unsupported("comment, DTD or processing instruction"));
        }
        let Some(tag_len) = scan_tag(rest)? else {
            return incomplete_or_too_large(buf);
        };
        let tag = &rest[..tag_len];
        if tag[1] == b'/' {
            depth = depth
                .checked_sub(1)
                .ok_or(XmlError::Malformed("unbalanced end tag"))?;
        } else if tag[tag_len - 2] != b'/' {
            depth += 1;
            if depth > MAX_DEPTH {
                return Err(XmlError::TooDeep);
            }
        }
        pos += tag_len;
        if depth == 0 {
            return Ok(Scan::Complete(pos));
        }
    }
}

fn incomplete_or_too_large(buf: &[u8]) -> Result<Scan, XmlError> {
    if buf.len() > MAX_ELEMENT_BYTES {
        Err(XmlError::TooLarge)
    } else {
        Ok(Scan::Incomplete)
    }
}

/// Parses a start tag (`<name a='v' ...>` or `<name .../>`) into its local name and attributes.
fn parse_start_tag(tag: &[u8]) -> Result<(String, Vec<(String, String)>), XmlError> {
    let qname = tag_name(tag)?;
    let name = utf8(local(qname))?.to_owned();
    let mut attrs = Vec::new();
    let end = if tag.ends_with(b"/>") {
        tag.len() - 2
    } else {
        tag.len() - 1
    };
    let mut pos = 1 + qname.len();
    loop {
        while pos < end && tag[pos].is_ascii_whitespace() {
            pos += 1;
        }
        if pos >= end {
            break;
        }
        let eq = memchr_byte(&tag[pos..end], b'=').ok_or(XmlError::Malformed("attribute without value"))?;
        let key = utf8(tag[pos..pos + eq].trim_ascii())?;
        pos += eq + 1;
        while pos < end && tag[pos].is_ascii_whitespace() {
            pos += 1;
        }
        let quote = *tag
            .get(pos)
            .ok_or(XmlError::Malformed("attribute without value"))?;
        if quote != b'"' && quote != b'\'' {
            return Err(XmlError::Malformed("unquoted attribute value"));
        }
        let close =
            memchr_byte(&tag[pos + 1..end], quote).ok_or(XmlError::Malformed("unterminated value"))?;
        let value = unescape(&tag[pos + 1..pos + 1 + close])?;
        if key.is_empty() {
            return Err(XmlError::Malformed("empty attribute name"));
        }
        if attrs.iter().any(|(k, _): &(String, String)| k == key) {
            return Err(XmlError::Malformed("duplicate attribute"));
        }
        attrs.push((key.to_owned(), value));
        pos += close + 2;
    }
    Ok((name, attrs))
}

/// Parses one complete, well-nested element (as delimited by `scan_element`).
pub fn parse_element(bytes: &[u8]) -> Result<Element, XmlError> {
    let mut stack: Vec<Element> = Vec::new();
    let mut pos = 0;
    loop {
        let lt = memchr_byte(&bytes[pos..], b'<').ok_or(XmlError::Malformed("unterminated element"))?;
        if lt > 0 {
            let text = &bytes[pos..pos + lt];
            match stack.last_mut() {
                Some(open) => open.text.push_str(&unescape(text)?),
                None if text.trim_ascii().is_empty() => {}
                None => return Err(XmlError::Malformed("text outside element")),
            }
        }
        pos += lt;
        let rest = &bytes[pos..];
        if rest.starts_with(b"<![CDATA[") {
            let end = find(rest, b"]]>").ok_or(XmlError::Malformed("unterminated CDATA"))?;
            let open = stack
                .last_mut()
                .ok_or(XmlError::Malformed("CDATA outside element"))?;
            open.text.push_str(utf8(&rest[9..end])?);
            pos += end + 3;
            continue;
        }
        let tag_len = scan_tag(rest)?.ok_or(XmlError::Malformed("unterminated tag"))?;
        let tag = &rest[..tag_len];
        pos += tag_len;
        let finished = if tag[1] == b'/' {
            let closing = utf8(local(tag_name(&tag[1..])?))?;
            let done = stack.pop().ok_or(XmlError::Malformed("unbalanced end tag"))?;
            if done.name != closing {
                return Err(XmlError::Malformed("mismatched end tag"));
            }
            Some(done)
        } else {
            let (name, attrs) = parse_start_tag(tag)?;
            let element = Element {
                name,
                attrs,
                ..Element::default()
            };
            if tag.ends_with(b"/>") {
                Some(element)
            } else {
                if stack.len() >= MAX_DEPTH {
                    return Err(XmlError::TooDeep);
                }
                stack.push(element);
                None
            }
        };
        if let Some(done) = finished {
            match stack.last_mut() {
                Some(parent) => parent.children.push(done),
                None if pos == bytes.len() => return Ok(done),
                None => return Err(XmlError::Malformed("trailing bytes after element")),
            }
        }
        if pos >= bytes.len() {
            return Err(XmlError::Malformed("unterminated element"));
        }
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, XmlError> {
    std::str::from_utf8(bytes).map_err(|_| XmlError::Utf8)
}

/// Decodes the five predefined entities and character references.
pub fn unescape(raw: &[u8]) -> Result<String, XmlError> {
    let text = utf8(raw)?;
    if !text.contains('&') {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let semi = after
            .find(';')
            .filter(|&i| i <= 10)
            .ok_or(XmlError::Malformed("bad entity"))?;
        let entity = &after[..semi];
        let decoded = match entity {
            "lt" => '<',
            "gt" => '>',
            "amp" => '&',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(hex) = entity.strip_prefix("#x") {
                    u32::from_str_radix(hex, 16)
                } else if let Some(dec) = entity.strip_prefix('#') {
                    dec.parse()
                } else {
                    return Err(XmlError::Unsupported("undeclared entity"));
                };
                code.ok()
                    .and_then(char::from_u32)
                    .ok_or(XmlError::Malformed("bad character reference"))?
            }
        };
        out.push(decoded);
        rest = &after[semi + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Escapes text for element content or a single- or double-quoted attribute.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' id='abc' from='localhost' version='1.0'>";

    #[test]
    fn header_then_features_split_anywhere() {
        let mut stream = HEADER.to_vec();
        stream.extend_from_slice(
            b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
              <mechanism>PLAIN</mechanism><mechanism>SCRAM-SHA-1</mechanism></mechanisms>\
              </stream:features></stream:stream>",
        );
        // Feed every prefix: a partial input must never be an error nor a wrong event.
        for cut in 0..stream.len() {
            let part = &stream[..cut];
            match next_event(part, false).unwrap() {
                None => {}
                Some((Event::StreamStart(_), used)) => assert!(used <= cut),
                Some(other) => panic!("unexpected {other:?}"),
            }
        }
        let (header, used) = next_event(&stream, false).unwrap().unwrap();
        let Event::StreamStart(header) = header else {
            panic!("no header")
        };
        assert_eq!(header.attr("id"), Some("abc"));
        assert_eq!(header.name, "stream");
        let rest = &stream[used..];
        let (features, used2) = next_event(rest, true).unwrap().unwrap();
        for cut in 0..rest.len() {
            match next_event(&rest[..cut], true).unwrap() {
                None => assert!(cut < used2, "complete element at {cut} not reported"),
                Some((Event::Element(_), used)) => {
                    assert_eq!(used, used2);
                    assert!(cut >= used2, "element reported before it is complete");
                }
                Some(other) => panic!("unexpected {other:?}"),
            }
        }
        let Event::Element(features) = features else {
            panic!("no element")
        };
        assert_eq!(features.name, "features");
        let mechs = features
            .child_ns("mechanisms", "urn:ietf:params:xml:ns:xmpp-sasl")
            .unwrap();
        let names: Vec<_> = mechs.children.iter().map(|m| m.text.as_str()).collect();
        assert_eq!(names, ["PLAIN", "SCRAM-SHA-1"]);
        assert_eq!(
            next_event(&rest[used2..], true).unwrap().unwrap().0,
            Event::StreamEnd
        );
    }

    #[test]
    fn several_stanzas_in_one_read() {
        let buf = b"<presence/><message to='a@b' type='chat'><body>1 &lt;2&gt; &amp; &#x41;&#66;</body></message>  ";
        let (first, used) = next_event(buf, true).unwrap().unwrap();
        assert_eq!(
            first,
            Event::Element(Element {
                name: "presence".into(),
                ..Default::default()
            })
        );
        let (second, used2) = next_event(&buf[used..], true).unwrap().unwrap();
        let Event::Element(msg) = second else { panic!() };
        assert_eq!(msg.attr("type"), Some("chat"));
        assert_eq!(msg.child("body").unwrap().text, "1 <2> & AB");
        assert!(next_event(&buf[used + used2..], true).unwrap().is_none());
    }

    #[test]
    fn quoted_gt_and_cdata() {
        let buf = b"<message id='a>b'><body><![CDATA[<x>]]></body></message>";
        let (ev, used) = next_event(buf, true).unwrap().unwrap();
        assert_eq!(used, buf.len());
        let Event::Element(msg) = ev else { panic!() };
        assert_eq!(msg.attr("id"), Some("a>b"));
        assert_eq!(msg.child("body").unwrap().text, "<x>");
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(
            next_event(b"hello", true),
            Err(XmlError::Malformed("text at stream level"))
        );
        assert!(matches!(
            next_event(b"<!DOCTYPE x>", false),
            Err(XmlError::Unsupported(_))
        ));
        assert!(matches!(
            next_event(b"<a><!-- c --></a>", true),
            Err(XmlError::Unsupported(_))
        ));
        assert!(matches!(
            next_event(b"<a></b>", true),
            Err(XmlError::Malformed("mismatched end tag"))
        ));
        assert!(matches!(
            next_event(b"<a x='1' x='2'/>", true),
            Err(XmlError::Malformed(_))
        ));
        assert!(matches!(
            next_event(b"<a x=1/>", true),
            Err(XmlError::Malformed(_))
        ));
        assert!(matches!(
            next_event(b"<a>&foo;</a>", true),
            Err(XmlError::Unsupported(_))
        ));
        assert!(matches!(
            next_event(b"<a>&#xD800;</a>", true),
            Err(XmlError::Malformed(_))
        ));
        assert!(matches!(
            next_event(b"<message/>", false),
            Err(XmlError::Malformed(_))
        ));
        assert!(matches!(next_event(b"<a>\xff</a>", true), Err(XmlError::Utf8)));
    }

    #[test]
    fn bounds_depth_and_size() {
        let deep = "<a>".repeat(MAX_DEPTH + 1);
        assert_eq!(next_event(deep.as_bytes(), true), Err(XmlError::TooDeep));
        let mut big = b"<a>".to_vec();
        big.resize(MAX_ELEMENT_BYTES + 10, b'x');
        assert_eq!(next_event(&big, true), Err(XmlError::TooLarge));
        let mut open_tag = b"<a b='".to_vec();
        open_tag.resize(MAX_ELEMENT_BYTES + 10, b'x');
        assert_eq!(next_event(&open_tag, true), Err(XmlError::TooLarge));
    }

    #[test]
    fn escape_round_trips() {
        let text = "a<b>&'\"c";
        assert_eq!(unescape(escape(text).as_bytes()).unwrap(), text);
    }
}

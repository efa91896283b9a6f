//! Serialising what the server sends on a client stream.
//!
//! Owns: the stream header, the stream close, and [`write_element`], the hot-path serialiser of
//! one top-level element of a `jabber:client` stream. Must not touch: sockets or session state;
//! output goes into a caller's buffer.
//!
//! Namespaces are written relative to the stream header: `jabber:client` is the default there,
//! and `stream:` is bound to the streams namespace. Element prefixes recorded in a
//! [`minidom::Element`] are ignored; only resolved namespaces matter on the wire.
//!
//! Element names are written as they are: they come from the reader (which validated them) or
//! from Parley's code. Text and attribute values are escaped, and characters XML forbids are
//! replaced by U+FFFD so the output is always well-formed.

use crate::ns;
use minidom::{Element, Node};

/// Closes the stream.
pub const STREAM_CLOSE: &str = "</stream:stream>";

/// `<?xml version='1.0'?><stream:stream xmlns='jabber:client'
/// xmlns:stream='http://etherx.jabber.org/streams' from=.. [to=..] id=.. version='1.0'
/// xml:lang=..>`, with attribute values escaped.
pub fn stream_header(from: &str, to: Option<&str>, id: &str, lang: &str) -> String {
    let mut out = Vec::with_capacity(192);
    out.extend_from_slice(b"<?xml version='1.0'?><stream:stream xmlns='");
    out.extend_from_slice(ns::CLIENT.as_bytes());
    out.extend_from_slice(b"' xmlns:stream='");
    out.extend_from_slice(ns::STREAM.as_bytes());
    out.push(b'\'');
    write_attribute(&mut out, "", "from", from);
    if let Some(to) = to {
        write_attribute(&mut out, "", "to", to);
    }
    write_attribute(&mut out, "", "id", id);
    out.extend_from_slice(b" version='1.0'");
    write_attribute(&mut out, "xml", "lang", lang);
    out.push(b'>');
    // Only ASCII markup and escaped UTF-8 input went in.
    String::from_utf8(out).unwrap_or_default()
}

/// About the bytes `element` takes when written: names, attribute names and values, text and
/// markup, recursively, without escaping or namespace declarations. Cheap (no allocation), for
/// memory budgets of queued stanzas, never for framing.
pub fn approximate_size(element: &Element) -> usize {
    let attributes: usize = element
        .attrs()
        .iter()
        .map(|((_, name), value)| name.as_str().len() + value.len() + 4)
        .sum();
    let children: usize = element
        .nodes()
        .map(|node| match node {
            Node::Element(child) => approximate_size(child),
            Node::Text(text) => text.len(),
        })
        .sum();
    2 * element.name().len() + 5 + attributes + children
}

/// Serialise one top-level element of a `jabber:client` stream into `out`.
pub fn write_element(element: &Element, out: &mut Vec<u8>) {
    write_with_default(element, ns::CLIENT, out);
}

/// Serialises `element` as a document of its own, outside any stream: the root declares its
/// namespace (`<message xmlns='jabber:client' ...>`), so the bytes parse back to the same element
/// anywhere. For what is stored, such as the archived copy of a message.
pub fn write_standalone(element: &Element, out: &mut Vec<u8>) {
    out.reserve(approximate_size(element));
    write_with_default(element, "", out);
}

/// Writes `element` where `default_ns` is the in-scope default namespace.
fn write_with_default(element: &Element, default_ns: &str, out: &mut Vec<u8>) {
    let in_stream_ns = element.has_ns(ns::STREAM);
    out.push(b'<');
    if in_stream_ns {
        out.extend_from_slice(b"stream:");
    }
    out.extend_from_slice(element.name().as_bytes());

    // `ns()` allocates, so ask for it only when the namespace changes.
    let declared;
    // An empty default is "nothing in scope yet" (a standalone root), which `has_ns` can't tell.
    let child_default = if in_stream_ns || (!default_ns.is_empty() && element.has_ns(default_ns)) {
        default_ns
    } else {
        declared = element.ns();
        out.extend_from_slice(b" xmlns='");
        escape_into(out, &declared, true);
        out.push(b'\'');
        declared.as_str()
    };

    let mut next_prefix = 0usize;
    for ((namespace, name), value) in element.attrs().iter() {
        let namespace = namespace.as_str();
        if namespace.is_empty() {
            write_attribute(out, "", name.as_str(), value);
        } else if namespace == ns::XML {
            write_attribute(out, "xml", name.as_str(), value);
        } else if namespace == ns::STREAM {
            write_attribute(out, "stream", name.as_str(), value);
        } else {
            // Declared on this element only, so the name can't clash with anything in scope
            // except an outer `pN`, which it then shadows harmlessly.
            let prefix = format!("p{next_prefix}");
            next_prefix += 1;
            write_attribute(out, "xmlns", &prefix, namespace);
            write_attribute(out, &prefix, name.as_str(), value);
        }
    }

    let mut nodes = element.nodes().peekable();
    if nodes.peek().is_none() {
        out.extend_from_slice(b"/>");
        return;
    }
    out.push(b'>');
    for node in nodes {
        match node {
            Node::Element(child) => write_with_default(child, child_default, out),
            Node::Text(text) => escape_into(out, text, false),
        }
    }
    out.extend_from_slice(b"</");
    if in_stream_ns {
        out.extend_from_slice(b"stream:");
    }
    out.extend_from_slice(element.name().as_bytes());
    out.push(b'>');
}

fn write_attribute(out: &mut Vec<u8>, prefix: &str, name: &str, value: &str) {
    out.push(b' ');
    if !prefix.is_empty() {
        out.extend_from_slice(prefix.as_bytes());
        out.push(b':');
    }
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"='");
    escape_into(out, value, true);
    out.push(b'\'');
}

/// Whether `c` may appear in an XML 1.0 document (the `Char` production).
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

/// Appends `text` escaped for element content or for a single-quoted attribute value.
///
/// Besides the markup characters, CR is written as a reference in text (a parser would turn it
/// into LF) and TAB, LF, CR in attribute values (a parser would turn them into spaces), so
/// values survive a round trip exactly.
fn escape_into(out: &mut Vec<u8>, text: &str, attribute: bool) {
    let mut start = 0;
    for (at, c) in text.char_indices() {
        let replacement: &[u8] = match c {
            '&' => b"&amp;",
            '<' => b"&lt;",
            '>' => b"&gt;",
            '\r' => b"&#xD;",
            '\'' if attribute => b"&apos;",
            '"' if attribute => b"&quot;",
            '\n' if attribute => b"&#xA;",
            '\t' if attribute => b"&#x9;",
            c if !is_xml_char(c) => "\u{FFFD}".as_bytes(),
            _ => continue,
        };
        out.extend_from_slice(&text.as_bytes()[start..at]);
        out.extend_from_slice(replacement);
        start = at + c.len_utf8();
    }
    out.extend_from_slice(&text.as_bytes()[start..]);
}

#[cfg(test)]
mod tests {

    #[test]
    fn approximate_size_is_close_to_the_written_size() {
        let element: Element = "<message xmlns='jabber:client' to='bob@example.com' id='m1' type='chat'>\
             <body>Hello there, this is a chat line of ordinary length.</body>\
             <thread>t-1</thread></message>"
            .parse()
            .unwrap();
        let mut written = Vec::new();
        write_element(&element, &mut written);
        let estimate = approximate_size(&element);
        assert!(
            estimate * 10 >= written.len() * 8 && estimate * 10 <= written.len() * 12,
            "estimate {estimate} vs written {}",
            written.len()
        );
        let bigger: Element = format!(
            "<message xmlns='jabber:client'><body>{}</body></message>",
            "x".repeat(10_000)
        )
        .parse()
        .unwrap();
        assert!(approximate_size(&bigger) >= 10_000);
    }
    use super::*;
    use crate::reader::{Limits, StreamEvent, StreamReader};
    use crate::stanza::attr_name;
    use minidom::rxml::Namespace;

    fn written(element: &Element) -> String {
        let mut out = Vec::new();
        write_element(element, &mut out);
        String::from_utf8(out).unwrap()
    }

    /// Writes `element`, reads it back inside a stream written by `stream_header`.
    fn round_trip(element: &Element) -> Element {
        let mut reader = StreamReader::new(Limits::default());
        reader
            .feed(stream_header("example.com", Some("a@example.com"), "s1", "en").as_bytes())
            .unwrap();
        let mut bytes = Vec::new();
        write_element(element, &mut bytes);
        reader.feed(&bytes).unwrap();
        reader.feed(STREAM_CLOSE.as_bytes()).unwrap();
        assert!(matches!(
            reader.next_event().unwrap(),
            Some(StreamEvent::Header(_))
        ));
        let read = match reader.next_event().unwrap() {
            Some(StreamEvent::Element(read)) => read,
            other => panic!("expected an element, got {other:?}"),
        };
        assert_eq!(reader.next_event().unwrap(), Some(StreamEvent::End));
        read
    }

    #[test]
    fn standalone_output_declares_the_root_namespace_and_parses_back_equal() {
        let element: Element = "<message xmlns='jabber:client' to='bob@example.com' id='a&apos;b'>\
             <body>1 &lt; 2 &amp; 3</body><x xmlns='jabber:x:oob'><url>u</url></x>\
             <thread>t</thread></message>"
            .parse()
            .unwrap();
        let mut out = Vec::new();
        write_standalone(&element, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("<message xmlns='jabber:client'"), "{text}");
        let parsed: Element = text.parse().unwrap();
        assert_eq!(parsed, element);
        // Inside a stream the default namespace is implied instead.
        let in_stream = written(&element);
        assert!(in_stream.starts_with("<message id="), "{in_stream}");
        assert!(!in_stream.contains("jabber:client"), "{in_stream}");
    }

    #[test]
    fn stream_header_has_every_attribute() {
        assert_eq!(
            stream_header("example.com", Some("juliet@example.com"), "abc", "en"),
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' from='example.com' \
             to='juliet@example.com' id='abc' version='1.0' xml:lang='en'>"
        );
    }

    #[test]
    fn stream_header_omits_missing_to_and_escapes_values() {
        let header = stream_header("a'b", None, "<&>", "en");
        assert!(!header.contains(" to="));
        assert!(header.contains("from='a&apos;b' id='&lt;&amp;&gt;'"), "{header}");
    }

    #[test]
    fn stream_header_is_read_back_by_the_reader() {
        let mut reader = StreamReader::new(Limits::default());
        reader
            .feed(stream_header("example.com", None, "id'1", "fr").as_bytes())
            .unwrap();
        match reader.next_event().unwrap() {
            Some(StreamEvent::Header(header)) => {
                assert_eq!(header.from.as_deref(), Some("example.com"));
                assert_eq!(header.to, None);
                assert_eq!(header.id.as_deref(), Some("id'1"));
                assert_eq!(header.lang.as_deref(), Some("fr"));
                assert_eq!(header.version.as_deref(), Some("1.0"));
            }
            other => panic!("expected the header, got {other:?}"),
        }
    }

    #[test]
    fn client_stanza_has_no_xmlns() {
        let message = Element::builder("message", ns::CLIENT)
            .attr(attr_name("to"), "juliet@example.com")
            .append(Element::builder("body", ns::CLIENT).append("hi").build())
            .build();
        assert_eq!(
            written(&message),
            "<message to='juliet@example.com'><body>hi</body></message>"
        );
    }

    #[test]
    fn nested_namespaces_are_declared_only_where_they_change() {
        let iq = Element::builder("iq", ns::CLIENT)
            .append(
                Element::builder("query", ns::ROSTER)
                    .append(Element::builder("item", ns::ROSTER).append(Element::bare("group", ns::ROSTER)))
                    .append(Element::bare("x", "urn:other")),
            )
            .build();
        assert_eq!(
            written(&iq),
            "<iq><query xmlns='jabber:iq:roster'><item><group/></item><x xmlns='urn:other'/></query></iq>"
        );
        assert_eq!(round_trip(&iq), iq);
    }

    #[test]
    fn unnamespaced_child_undeclares_the_default() {
        let outer = Element::builder("outer", "urn:a")
            .append(Element::bare("inner", ""))
            .build();
        assert_eq!(written(&outer), "<outer xmlns='urn:a'><inner xmlns=''/></outer>");
        assert_eq!(round_trip(&outer), outer);
    }

    #[test]
    fn stream_namespace_elements_use_the_stream_prefix() {
        let features = Element::builder("features", ns::STREAM)
            .append(Element::bare("starttls", ns::TLS))
            .append(Element::bare("ver", ns::ROSTER_VER_FEATURE))
            .build();
        assert_eq!(
            written(&features),
            "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>\
             <ver xmlns='urn:xmpp:features:rosterver'/></stream:features>"
        );
        assert_eq!(round_trip(&features), features);
    }

    #[test]
    fn stream_error_round_trips() {
        let error = crate::StreamError::with_text(crate::StreamErrorCondition::PolicyViolation, "too big")
            .to_element();
        let text = written(&error);
        assert!(
            text.starts_with("<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>")
        );
        assert!(text.ends_with("</stream:error>"), "{text}");
        assert_eq!(round_trip(&error), error);
    }

    #[test]
    fn stream_namespace_child_keeps_the_client_default_for_its_children() {
        // <stream:error> doesn't change the default, so a jabber:client child needs no xmlns.
        let error = Element::builder("error", ns::STREAM)
            .append(Element::bare("x", ns::CLIENT))
            .build();
        assert_eq!(written(&error), "<stream:error><x/></stream:error>");
    }

    #[test]
    fn text_and_attributes_are_escaped() {
        let message = Element::builder("message", ns::CLIENT)
            .attr(attr_name("id"), "a'b\"c<d>&e")
            .append(
                Element::builder("body", ns::CLIENT)
                    .append("1 < 2 && 3 > 2 ]]> 'q' \"d\"")
                    .build(),
            )
            .build();
        assert_eq!(
            written(&message),
            "<message id='a&apos;b&quot;c&lt;d&gt;&amp;e'><body>1 &lt; 2 &amp;&amp; 3 &gt; 2 ]]&gt; 'q' \
             \"d\"</body></message>"
        );
        assert_eq!(round_trip(&message), message);
    }

    #[test]
    fn whitespace_in_values_and_cr_in_text_survive_a_round_trip() {
        let message = Element::builder("message", ns::CLIENT)
            .attr(attr_name("id"), "tab\tnl\ncr\r")
            .append(
                Element::builder("body", ns::CLIENT)
                    .append("line\r\nnext\ttab")
                    .build(),
            )
            .build();
        let text = written(&message);
        assert!(text.contains("id='tab&#x9;nl&#xA;cr&#xD;'"), "{text}");
        assert!(text.contains("line&#xD;\nnext\ttab"), "{text}");
        assert_eq!(round_trip(&message), message);
    }

    #[test]
    fn characters_not_allowed_in_xml_are_replaced() {
        let body = Element::builder("body", ns::CLIENT)
            .append("a\u{1}b\u{FFFE}c")
            .build();
        assert_eq!(written(&body), "<body>a\u{FFFD}b\u{FFFD}c</body>");
    }

    #[test]
    fn xml_lang_uses_the_xml_prefix() {
        let message = Element::builder("message", ns::CLIENT)
            .attr_ns(Namespace::xml().clone(), attr_name("lang"), "de")
            .build();
        assert_eq!(written(&message), "<message xml:lang='de'/>");
        assert_eq!(round_trip(&message).attr_ns(ns::XML, "lang"), Some("de"));
    }

    #[test]
    fn other_namespaced_attributes_get_a_declared_prefix() {
        let item = Element::builder("item", "urn:a")
            .attr_ns(Namespace::from("urn:b".to_owned()), attr_name("x"), "1")
            .attr_ns(Namespace::from("urn:c".to_owned()), attr_name("x"), "2")
            .attr(attr_name("x"), "3")
            .append(Element::builder("child", "urn:a").attr_ns(
                Namespace::from("urn:c".to_owned()),
                attr_name("y"),
                "4",
            ))
            .build();
        let read = round_trip(&item);
        assert_eq!(read, item);
        assert_eq!(read.attr_ns("urn:b", "x"), Some("1"));
        assert_eq!(read.attr_ns("urn:c", "x"), Some("2"));
        assert_eq!(read.attr("x"), Some("3"));
    }

    #[test]
    fn parsed_stanzas_round_trip() {
        let input = "<message xmlns='jabber:client' to='a@b' type='chat' xml:lang='en'>\
            <body>hello &amp; bye</body><thread parent='x'>t1</thread>\
            <active xmlns='http://jabber.org/protocol/chatstates'/>\
            <x xmlns='jabber:x:data' type='form'><field var='a'><value>1</value></field></x></message>";
        let original: Element = input.parse().unwrap();
        assert_eq!(round_trip(&original), original);
    }

    /// xorshift64*, so the random round trip needs no extra crate.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as usize
        }
        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[self.below(from.len())]
        }
    }

    const NAMESPACES: &[&str] = &[ns::CLIENT, ns::STREAM, ns::ROSTER, "urn:x", ""];
    const PIECES: &[&str] = &[
        "a", " ", "&", "<", ">", "'", "\"", "\r", "\n", "\t", "]]>", "é", "😀", "&amp;",
    ];

    fn random_text(rng: &mut Rng) -> String {
        (0..rng.below(6)).map(|_| rng.pick(PIECES)).collect()
    }

    fn random_element(rng: &mut Rng, depth: usize) -> Element {
        let mut element = Element::bare(rng.pick(&["a", "b", "message", "features"]), rng.pick(NAMESPACES));
        for _ in 0..rng.below(3) {
            let namespace = Namespace::from(rng.pick(&["", ns::XML, "urn:y", "urn:z"]).to_owned());
            element.set_attr(
                namespace,
                attr_name(rng.pick(&["p", "q", "lang"])),
                random_text(rng),
            );
        }
        for _ in 0..rng.below(4) {
            if depth < 4 && rng.below(2) == 0 {
                element.append_child(random_element(rng, depth + 1));
            } else {
                // An empty text node can't survive the trip (it has no bytes), so skip it.
                let text = random_text(rng);
                if !text.is_empty() {
                    element.append_text(text);
                }
            }
        }
        element
    }

    #[test]
    fn random_elements_round_trip() {
        let mut rng = Rng(0xDEAD_BEEF);
        for _ in 0..500 {
            let element = random_element(&mut rng, 0);
            assert_eq!(round_trip(&element), element, "{}", written(&element));
        }
    }
}

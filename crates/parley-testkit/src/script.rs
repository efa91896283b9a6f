//! Sent/expected scripts for [`RawClient`]: a test reads as the conversation on the wire.
//!
//! Owns: [`Step`] and [`RawClient::run`], and a few small readers of what the server sent
//! (attribute values, silence). Must not touch: the server; it only talks over the socket.

use crate::RawClient;
use std::time::Duration;

/// One line of a conversation with the server.
#[derive(Debug, Clone, Copy)]
pub enum Step<'a> {
    /// Sends this XML exactly as written.
    Send(&'a str),
    /// Waits until this text has arrived (everything before it is consumed).
    Expect(&'a str),
    /// Expects a stream error with this condition, the stream close and the end of the connection.
    StreamError(&'a str),
    /// Expects that nothing but whitespace arrives for this long.
    Silence(Duration),
}

impl RawClient {
    /// Plays `steps` in order; returns what each `Expect` consumed, in order.
    pub async fn run(&mut self, steps: &[Step<'_>]) -> Vec<String> {
        let mut received = Vec::new();
        for step in steps {
            match *step {
                Step::Send(xml) => self.send(xml).await,
                Step::Expect(needle) => received.push(self.expect(needle).await),
                Step::StreamError(condition) => self.expect_stream_error(condition).await,
                Step::Silence(wait) => self.expect_silence(wait).await,
            }
        }
        received
    }

    /// Fails if anything other than whitespace arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        let received = self.drain(wait).await;
        assert!(
            received.trim().is_empty(),
            "expected nothing from the server, received {received:?}"
        );
    }
}

/// The value of attribute `name` on the last `<tag ...>` start tag in `xml`, for picking ids out
/// of what the server sent. Handles both quote styles.
pub fn last_attr(xml: &str, tag: &str, name: &str) -> Option<String> {
    let start = xml.rfind(&format!("<{tag} "))?;
    let open_tag = &xml[start..];
    let open_tag = &open_tag[..open_tag.find('>')?];
    for quote in ['\'', '"'] {
        let marker = format!(" {name}={quote}");
        if let Some(at) = open_tag.find(&marker) {
            let value = &open_tag[at + marker.len()..];
            return Some(value[..value.find(quote)?].to_owned());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::last_attr;

    #[test]
    fn last_attr_reads_either_quote_style() {
        assert_eq!(
            last_attr("<iq type='get' id='a1'>", "iq", "id").as_deref(),
            Some("a1")
        );
        assert_eq!(
            last_attr("<iq type=\"get\" id=\"b2\"/>", "iq", "id").as_deref(),
            Some("b2")
        );
    }

    #[test]
    fn last_attr_takes_the_last_tag_and_exact_names() {
        let xml = "<iq id='first'/><iq xid='no' id='second'><ping/></iq>";
        assert_eq!(last_attr(xml, "iq", "id").as_deref(), Some("second"));
    }

    #[test]
    fn last_attr_misses_cleanly() {
        assert_eq!(last_attr("<message id='m'/>", "iq", "id"), None);
        assert_eq!(last_attr("<iq type='get'/>", "iq", "id"), None);
        assert_eq!(last_attr("<iq id='unterminated", "iq", "id"), None);
    }
}

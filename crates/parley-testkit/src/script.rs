//! Sent/expected scripts for [`RawClient`]: a test reads as the conversation on the wire.
//!
//! Owns: [`Step`] and [`RawClient::run`], a PLAIN login that accepts either form of `<success/>`
//! ([`RawClient::sign_in`]), and a few small readers of what the server sent (attribute values,
//! silence). Must not touch: the server; it only talks over the socket.

use crate::RawClient;
use base64::Engine;
use std::time::Duration;

const SASL_NS: &str = "urn:ietf:params:xml:ns:xmpp-sasl";

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

    /// SASL PLAIN (after STARTTLS); returns the server's whole answer, `<success .../>` (either
    /// form) or `<failure>...</failure>`.
    pub async fn sasl_plain(&mut self, user: &str, password: &str) -> String {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        self.send(&format!(
            "<auth xmlns='{SASL_NS}' mechanism='PLAIN'>{token}</auth>"
        ))
        .await;
        let head = self.expect(&format!("xmlns='{SASL_NS}'")).await;
        if head.contains("<failure") {
            return head + &self.expect("</failure>").await;
        }
        let tag_end = self.expect(">").await;
        if tag_end.ends_with("/>") {
            return head + &tag_end;
        }
        head + &tag_end + &self.expect("</success>").await
    }

    /// STARTTLS, PLAIN, stream restart and bind of `resource`; returns the bound full JID.
    pub async fn sign_in(&mut self, user: &str, password: &str, resource: &str) -> String {
        self.starttls().await;
        let answer = self.sasl_plain(user, password).await;
        assert!(answer.contains("<success"), "authentication failed: {answer}");
        self.open_stream().await;
        self.send(&format!(
            "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>"
        ))
        .await;
        let reply = self.expect("</iq>").await;
        let jid = reply
            .split_once("<jid>")
            .and_then(|(_, rest)| rest.split_once("</jid>"));
        jid.map(|(jid, _)| jid.to_owned())
            .unwrap_or_else(|| panic!("no bound JID in {reply}"))
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

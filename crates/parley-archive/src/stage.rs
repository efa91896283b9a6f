//! [`ArchiveStage`]: the router's fixed compliance stage.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use minidom::Node;
use parley_proto::{BareJid, Element, Jid, Stanza};
use parley_router::{Addressee, ComplianceError, ComplianceStage, Recording};
use parley_storage::{ArchiveAppend, LatencyHistogram, NewRecord, Space};

use crate::chain::ChainWriter;
use crate::clock::Clock;
use crate::entry::{Body, MessageRecord};

/// XEP-0359 unique and stable stanza IDs.
pub const NS_SID: &str = "urn:xmpp:sid:0";

/// Records every message the router accepts: one chain entry plus the sender's and the local
/// recipient's MAM copies in `Space::Mam` (a recipient copy only for an existing account, so a
/// message to a name nobody holds never waits for whoever gets that name later), all in ONE durable commit of the chain's batch (one
/// storage job per chain batch, so a message costs no extra queue hop or fsync), and the
/// recipient's XEP-0359 `<stanza-id/>` on the stanza. `record` returns once that commit is
/// durable, without waiting for the MAM copies to be indexed: a MAM query that starts afterwards
/// sees them anyway (the store's read-your-writes), so indexing is on no message's latency path.
///
/// `Space::Mam` records: owner = the user's bare JID, `with` = the other party's bare JID,
/// payload = a reference to the chain entry ([`crate::entry::entry_reference`]), whose message
/// record holds the stanza's XML as accepted (with its `jabber:client` namespace), id = the
/// archive id, which is also the `id` of the `<stanza-id/>` stamped for the recipient. The stanza
/// is stored once, not three times: each copy in the durable commit and in the MAM index is a
/// few bytes, which is most of what made the copies cost (measured in docs/benchmarks.md).
pub struct ArchiveStage {
    domain: BareJid,
    chain: ChainWriter,
    clock: Arc<dyn Clock>,
    /// From a message's acceptance to its record being durable: the wait before delivery.
    record_times: Arc<LatencyHistogram>,
}

impl std::fmt::Debug for ArchiveStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveStage")
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl ArchiveStage {
    pub fn new(
        domain: BareJid,
        chain: ChainWriter,
        clock: Arc<dyn Clock>,
        record_times: Arc<LatencyHistogram>,
    ) -> Self {
        Self {
            domain,
            chain,
            clock,
            record_times,
        }
    }

    /// Whether `bare` is an account of this server (a localpart at our domain).
    fn is_local_account(&self, bare: &BareJid) -> bool {
        bare.node().is_some() && bare.domain() == self.domain.domain()
    }
}

#[async_trait]
impl ComplianceStage for ArchiveStage {
    async fn record(&self, stanza: &mut Stanza, addressee: Addressee) -> Result<(), ComplianceError> {
        let recording = self.queue(stanza, addressee).await?;
        for child in recording.await? {
            stanza.element_mut().append_child(child);
        }
        Ok(())
    }

    async fn queue(&self, stanza: &mut Stanza, addressee: Addressee) -> Result<Recording, ComplianceError> {
        let accepted = Instant::now();
        strip_local_stanza_ids(stanza.element_mut(), &self.domain);
        let record = message_record(stanza);
        // Each party's bare JID once: it names the copy's owner and is the other copy's `with`.
        let from_bare = stanza.from().map(Jid::to_bare);
        let to_bare = stanza.to().map(Jid::to_bare);
        let sender = from_bare.filter(|bare| self.is_local_account(bare));
        let to_self = sender.is_some() && to_bare == sender;
        let recipient = to_bare
            .clone()
            .filter(|bare| addressee == Addressee::LocalAccount && self.is_local_account(bare) && !to_self);
        let ts = self.clock.now_micros();
        // The copies' payloads become references to the chain entry, which holds the stanza.
        let copy = |owner: &BareJid, with: Option<&BareJid>| ArchiveAppend {
            space: Space::Mam,
            owner: owner.as_str().to_owned(),
            record: NewRecord {
                timestamp_micros: ts,
                with: with.map(|bare| bare.as_str().to_owned()).unwrap_or_default(),
                payload: Vec::new(),
            },
        };
        let mut copies = Vec::with_capacity(2);
        if let Some(sender) = &sender {
            copies.push(copy(sender, to_bare.as_ref()));
        }
        if let Some(recipient) = &recipient {
            copies.push(copy(recipient, stanza.from().map(Jid::to_bare).as_ref()));
        }
        let queued = self
            .chain
            .queue_with_references(Body::Message(record), copies)
            .await
            .map_err(|error| ComplianceError(error.to_string()))?;
        let record_times = Arc::clone(&self.record_times);
        Ok(Box::pin(async move {
            let (_, ids) = queued.await.map_err(|error| ComplianceError(error.to_string()))?;
            record_times.record(accepted.elapsed());
            // XEP-0359 §3.1: the id of the copy in the receiving archive. The recipient's copy
            // is the last one; a message to oneself has one copy, in the sender's (= receiver's)
            // archive.
            let stamped = match (recipient, sender) {
                (Some(recipient), _) => ids.last().map(|id| (recipient, *id)),
                (None, Some(sender)) if to_self => ids.first().map(|id| (sender, *id)),
                _ => None,
            };
            Ok(stamped
                .map(|(archive, id)| {
                    Element::builder("stanza-id", NS_SID)
                        .attr(parley_proto::stanza::attr_name("id"), id.to_string())
                        .attr(parley_proto::stanza::attr_name("by"), archive.as_str())
                        .build()
                })
                .into_iter()
                .collect())
        }))
    }
}

/// XEP-0359 §3.1: a `<stanza-id/>` claiming to come from this server (its `by` is the domain or
/// one of its accounts) can only be forged by the client, so it is removed before anything else.
pub fn strip_local_stanza_ids(element: &mut Element, domain: &BareJid) {
    let forged = |child: &Element| {
        child.is("stanza-id", NS_SID)
            && child
                .attr("by")
                .and_then(|by| BareJid::new(by).ok())
                .is_none_or(|by| by.domain() == domain.domain())
    };
    if !element.children().any(forged) {
        return;
    }
    for node in element.take_nodes() {
        match node {
            Node::Element(child) if forged(&child) => {}
            other => element.append_node(other),
        }
    }
}

/// The searchable fields of a message stanza plus its serialised XML.
pub fn message_record(stanza: &Stanza) -> MessageRecord {
    let element = stanza.element();
    let child_text = |name: &str| {
        element
            .children()
            .find(|child| child.name() == name && child.has_ns(parley_proto::ns::CLIENT))
            .map(Element::text)
    };
    let mut xml = Vec::new();
    parley_proto::writer::write_standalone(element, &mut xml);
    MessageRecord {
        from: stanza.from().map(ToString::to_string).unwrap_or_default(),
        to: stanza.to().map(ToString::to_string).unwrap_or_default(),
        id: stanza.id().map(str::to_owned),
        message_type: stanza.stanza_type().map(str::to_owned),
        thread: child_text("thread"),
        subject: child_text("subject"),
        body: child_text("body"),
        stanza: String::from_utf8_lossy(&xml).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stanza(xml: &str) -> Stanza {
        Stanza::from_element(xml.parse::<Element>().unwrap()).unwrap()
    }

    #[test]
    fn forged_local_stanza_ids_are_stripped_and_foreign_ones_kept() {
        let domain = BareJid::new("example.com").unwrap();
        let mut message = stanza(
            "<message xmlns='jabber:client' to='bob@example.com'>\
               <stanza-id xmlns='urn:xmpp:sid:0' by='bob@example.com' id='forged1'/>\
               <body>hi</body>\
               <stanza-id xmlns='urn:xmpp:sid:0' by='example.com' id='forged2'/>\
               <stanza-id xmlns='urn:xmpp:sid:0' id='no-by'/>\
               <stanza-id xmlns='urn:xmpp:sid:0' by='room@muc.other.org' id='kept'/>\
             </message>",
        );
        strip_local_stanza_ids(message.element_mut(), &domain);
        let ids: Vec<&str> = message
            .element()
            .children()
            .filter(|child| child.is("stanza-id", NS_SID))
            .filter_map(|child| child.attr("id"))
            .collect();
        assert_eq!(ids, ["kept"]);
        assert_eq!(
            message
                .element()
                .get_child("body", "jabber:client")
                .unwrap()
                .text(),
            "hi"
        );
    }

    #[test]
    fn message_record_reads_the_searchable_fields() {
        let message = stanza(
            "<message xmlns='jabber:client' from='alice@example.com/a' to='bob@example.com' \
             id='m1' type='chat'><thread>t1</thread><subject>S</subject><body>Hello</body></message>",
        );
        let record = message_record(&message);
        assert_eq!(record.from, "alice@example.com/a");
        assert_eq!(record.to, "bob@example.com");
        assert_eq!(record.id.as_deref(), Some("m1"));
        assert_eq!(record.message_type.as_deref(), Some("chat"));
        assert_eq!(record.thread.as_deref(), Some("t1"));
        assert_eq!(record.subject.as_deref(), Some("S"));
        assert_eq!(record.body.as_deref(), Some("Hello"));
        assert!(record.stanza.contains("jabber:client"), "{}", record.stanza);
        let reparsed: Element = record.stanza.parse().unwrap();
        assert_eq!(reparsed.attr("id"), Some("m1"));
    }

    #[test]
    fn message_without_body_has_no_text_fields() {
        let record = message_record(&stanza("<message xmlns='jabber:client' to='bob@example.com'/>"));
        assert_eq!(record.body, None);
        assert_eq!(record.thread, None);
        assert_eq!(record.message_type, None);
    }
}

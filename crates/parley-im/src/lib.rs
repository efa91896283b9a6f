//! parley-im: the smaller XMPP features, one module (and one file) each.
//!
//! Owns: service discovery (XEP-0030) and the server's entity capabilities (XEP-0115), ping
//! (XEP-0199), software version (XEP-0092), vcard-temp (XEP-0054, with read-only vCards from the
//! directory), user directory search (XEP-0055), private XML storage (XEP-0049) and offline
//! messages (XEP-0160). Each is a [`parley_router::Module`] built by the server with the
//! handles and options it needs.
//!
//! Must not touch: sockets, the stream, the session table's internals or other feature crates
//! (roster, archive...). Features meet the rest of the server only through the router's IQ routes,
//! hooks and events, and keep their data in the [`parley_storage::KeyValue`] store they are given.

pub mod caps;
pub mod directory_vcard;
pub mod disco;
pub mod offline;
pub mod ping;
pub mod private;
pub mod search;
pub mod vcard;
pub mod version;

pub use caps::{CapsModule, ServerCaps, verification_string};
pub use directory_vcard::DirectoryVcards;
pub use disco::{DiscoModule, DiscoOptions};
pub use offline::{OfflineModule, OfflineOptions};
pub use ping::PingModule;
pub use private::{PrivateModule, PrivateOptions};
pub use search::{SearchModule, SearchOptions};
pub use vcard::{VcardModule, VcardOptions, VcardSource};
pub use version::{VersionModule, VersionOptions};

use parley_proto::{BareJid, Stanza, StanzaError, StanzaErrorCondition};
use parley_storage::StorageError;

/// What can go wrong inside a feature: always the server's fault, never the client's (client
/// mistakes are answered directly with a [`StanzaError`]).
#[derive(Debug, thiserror::Error)]
pub enum ImError {
    #[error("storage failed: {0}")]
    Storage(#[from] StorageError),
    #[error("stored {what} of {owner} is corrupt: {reason}")]
    Corrupt {
        what: &'static str,
        owner: String,
        reason: String,
    },
    #[error("the {what} of {owner} kept changing under us ({attempts} attempts)")]
    Contended {
        what: &'static str,
        owner: String,
        attempts: usize,
    },
}

impl ImError {
    /// Logs the failure with its context and returns the detail-free error the client sees.
    pub(crate) fn to_stanza_error(&self, module: &'static str) -> StanzaError {
        tracing::error!(module, error = %self, "request failed");
        StanzaError::new(StanzaErrorCondition::InternalServerError)
    }
}

/// The store owner for an account's data.
pub(crate) fn owner(account: &BareJid) -> String {
    account.as_str().to_owned()
}

/// Refuses `type='set'` for payloads the protocol only defines for `get`.
pub(crate) fn require_get(request: &Stanza) -> Result<(), StanzaError> {
    if request.stanza_type() == Some("get") {
        Ok(())
    } else {
        Err(stanza_error(
            StanzaErrorCondition::BadRequest,
            "This payload is only defined for type='get'",
        ))
    }
}

/// Builds a stanza error with an explanatory text.
pub(crate) fn stanza_error(condition: StanzaErrorCondition, text: &str) -> StanzaError {
    StanzaError::with_text(condition, text)
}

#[cfg(test)]
pub(crate) mod testing {
    //! A real router with fake sessions, shared by the tests of every module.

    use async_trait::async_trait;
    use parley_proto::{BareJid, Element, FullJid, Jid, Stanza, StanzaErrorCondition, StanzaKind};
    use parley_router::{Accounts, Module, Outbound, Router, SessionControl};
    use std::sync::Arc;
    use tokio::sync::mpsc;

    pub const DOMAIN: &str = "example.org";

    /// alice, bob and carol exist; nobody else does.
    pub struct KnownAccounts;

    #[async_trait]
    impl Accounts for KnownAccounts {
        async fn exists(&self, localpart: &str) -> bool {
            matches!(localpart, "alice" | "bob" | "carol")
        }
    }

    pub fn router(modules: Vec<Arc<dyn Module>>) -> Router {
        let mut builder = Router::builder(BareJid::new(DOMAIN).unwrap(), Arc::new(KnownAccounts));
        for module in modules {
            builder = builder.module(module);
        }
        builder.build().expect("modules register without conflicts")
    }

    pub fn full(jid: &str) -> FullJid {
        FullJid::new(jid).unwrap()
    }

    pub fn jid(jid: &str) -> Jid {
        Jid::new(jid).unwrap()
    }

    pub fn xml(text: &str) -> Element {
        text.parse().unwrap()
    }

    /// Binds a fake session and returns its outbound queue.
    pub async fn bind(router: &Router, jid: &str) -> mpsc::Receiver<Outbound> {
        bind_with_capacity(router, jid, 64).await
    }

    pub async fn bind_with_capacity(router: &Router, jid: &str, capacity: usize) -> mpsc::Receiver<Outbound> {
        let (sender, receiver) = mpsc::channel(capacity);
        router
            .bind(full(jid), sender, Arc::new(SessionControl::default()))
            .await
            .unwrap();
        receiver
    }

    /// An IQ from a (stamped) full JID, to `to` if given.
    pub fn iq(from: &str, to: Option<&str>, iq_type: &str, payload: Element) -> Stanza {
        let mut stanza = Stanza::new(StanzaKind::Iq)
            .with_from(full(from))
            .with_type(iq_type)
            .with_id("q1");
        if let Some(to) = to {
            stanza.set_to(Some(jid(to)));
        }
        stanza.with_child(payload)
    }

    /// Submits `request` as a client stanza and returns the one reply queued for the sender.
    pub async fn ask(router: &Router, receiver: &mut mpsc::Receiver<Outbound>, request: Stanza) -> Stanza {
        router.submit(request).await;
        let reply = next(receiver).expect("a reply was queued");
        assert!(receiver.try_recv().is_err(), "exactly one reply");
        reply
    }

    pub fn next(receiver: &mut mpsc::Receiver<Outbound>) -> Option<Stanza> {
        match receiver.try_recv() {
            Ok(Outbound::Stanza(stanza)) => Some(*stanza),
            Err(_) => None,
        }
    }

    /// The payload of a result, failing the test on an error reply.
    pub fn result_payload(reply: &Stanza) -> Option<Element> {
        assert_eq!(
            reply.stanza_type(),
            Some("result"),
            "expected a result, got {:?}",
            reply.element()
        );
        reply.iq_payload().cloned()
    }

    pub fn error_condition(reply: &Stanza) -> StanzaErrorCondition {
        assert_eq!(
            reply.stanza_type(),
            Some("error"),
            "expected an error, got {:?}",
            reply.element()
        );
        reply.error().expect("an error element").condition
    }
}

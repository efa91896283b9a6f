//! vcard-temp (XEP-0054): a user sets their own vCard; anyone asking this server may read any
//! local account's vCard.
//!
//! The vCard is stored whole, as XML, in [`Space::Vcard`] (one key per account), bounded by
//! [`VcardOptions::max_size`]. An account without one reads as an empty `<vCard/>` (XEP-0054 §3.1
//! allows that or `item-not-found`; clients cope better with the empty one). Setting an empty
//! vCard deletes the stored one.
//!
//! A [`VcardSource`] (the directory, later) may supply an authoritative read-only vCard: it wins
//! over the stored one, and setting one it supplies is `not-allowed`.

use crate::{ImError, owner, stanza_error};
use async_trait::async_trait;
use parley_proto::{BareJid, Element, Stanza, StanzaError, StanzaErrorCondition, ns};
use parley_router::{IqContext, IqHandler, IqResult, IqRoute, Module, Registry, Scope};
use parley_storage::{KeyValue, Space, WriteBatch};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The one key an account's vCard is stored under.
const KEY: &str = "vcard";

/// Options of vcard-temp.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VcardOptions {
    /// Largest vCard accepted, in bytes of serialised XML (photos make them big).
    pub max_size: usize,
}

impl Default for VcardOptions {
    fn default() -> Self {
        Self { max_size: 64 * 1024 }
    }
}

/// A read-only source of vCards that overrides the stored ones (the directory).
#[async_trait]
pub trait VcardSource: Send + Sync + 'static {
    /// The account's vCard (a `<vCard xmlns='vcard-temp'/>`), or `None` when this source has none
    /// for it and the stored one applies.
    async fn vcard(&self, account: &BareJid) -> Result<Option<Element>, VcardSourceError>;
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("the vCard source failed: {0}")]
pub struct VcardSourceError(pub String);

/// XEP-0054 backed by the key-value store.
pub struct VcardModule {
    store: Arc<dyn KeyValue>,
    source: Option<Arc<dyn VcardSource>>,
    options: VcardOptions,
}

impl VcardModule {
    pub fn new(store: Arc<dyn KeyValue>, options: VcardOptions) -> Self {
        Self {
            store,
            source: None,
            options,
        }
    }

    /// Lets `source` supply read-only vCards that win over stored ones.
    pub fn with_source(mut self, source: Arc<dyn VcardSource>) -> Self {
        self.source = Some(source);
        self
    }

    async fn source_vcard(&self, account: &BareJid) -> Result<Option<Element>, StanzaError> {
        let Some(source) = &self.source else {
            return Ok(None);
        };
        source.vcard(account).await.map_err(|err| {
            tracing::error!(module = "vcard", %account, error = %err, "vCard source failed");
            StanzaError::new(StanzaErrorCondition::InternalServerError)
        })
    }

    async fn stored(&self, account: &BareJid) -> Result<Option<Element>, ImError> {
        let owner = owner(account);
        let Some(bytes) = self.store.get(Space::Vcard, &owner, KEY).await? else {
            return Ok(None);
        };
        let corrupt = |reason: String| ImError::Corrupt {
            what: "vCard",
            owner: owner.clone(),
            reason,
        };
        let text = String::from_utf8(bytes).map_err(|err| corrupt(err.to_string()))?;
        let element: Element = text
            .parse()
            .map_err(|err: minidom::Error| corrupt(err.to_string()))?;
        Ok(Some(element))
    }

    async fn get(&self, account: &BareJid) -> IqResult {
        if let Some(vcard) = self.source_vcard(account).await? {
            return Ok(Some(vcard));
        }
        match self.stored(account).await {
            Ok(Some(vcard)) => Ok(Some(vcard)),
            Ok(None) => Ok(Some(Element::bare("vCard", ns::VCARD))),
            Err(err) => Err(err.to_stanza_error("vcard")),
        }
    }

    async fn set(&self, account: &BareJid, vcard: &Element) -> IqResult {
        if self.source_vcard(account).await?.is_some() {
            return Err(stanza_error(
                StanzaErrorCondition::NotAllowed,
                "This vCard comes from the directory",
            ));
        }
        let mut batch = WriteBatch::new();
        let is_empty = vcard.children().next().is_none() && vcard.text().trim().is_empty();
        if is_empty {
            batch.delete(Space::Vcard, owner(account), KEY);
        } else {
            let serialised = String::from(vcard);
            if serialised.len() > self.options.max_size {
                return Err(stanza_error(
                    StanzaErrorCondition::NotAcceptable,
                    &format!("The vCard is larger than {} bytes", self.options.max_size),
                ));
            }
            batch.put(Space::Vcard, owner(account), KEY, serialised.into_bytes());
        }
        self.store
            .apply(batch)
            .await
            .map_err(|err| ImError::from(err).to_stanza_error("vcard"))?;
        Ok(None)
    }
}

impl Module for VcardModule {
    fn name(&self) -> &'static str {
        "vcard"
    }

    fn register(self: Arc<Self>, registry: &mut Registry) {
        registry.iq(IqRoute::account(ns::VCARD, "vCard"), self);
        registry.disco_feature(Scope::Server, ns::VCARD);
    }
}

#[async_trait]
impl IqHandler for VcardModule {
    async fn handle(&self, context: IqContext<'_>, request: &Stanza) -> IqResult {
        let vcard = request
            .iq_payload()
            .ok_or_else(|| StanzaError::new(StanzaErrorCondition::BadRequest))?;
        match request.stanza_type() {
            Some("set") if !context.is_own_account() => Err(stanza_error(
                StanzaErrorCondition::Forbidden,
                "Only the owner may set a vCard",
            )),
            Some("set") => self.set(context.target, vcard).await,
            _ => self.get(context.target).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use parley_router::Router;
    use parley_storage::MemoryStore;

    const VCARD: &str = "<vCard xmlns='vcard-temp'><FN>Alice Liddell</FN><NICKNAME>al</NICKNAME></vCard>";

    fn setup(options: VcardOptions) -> (Router, Arc<MemoryStore>) {
        let store = Arc::new(MemoryStore::new());
        let router = router(vec![Arc::new(VcardModule::new(store.clone(), options))]);
        (router, store)
    }

    fn get() -> Element {
        xml("<vCard xmlns='vcard-temp'/>")
    }

    #[tokio::test]
    async fn set_then_get_own_and_others_read_it() {
        let (router, _store) = setup(VcardOptions::default());
        let mut alice = bind(&router, "alice@example.org/phone").await;
        let mut bob = bind(&router, "bob@example.org/desk").await;
        let reply = ask(
            &router,
            &mut alice,
            iq("alice@example.org/phone", None, "set", xml(VCARD)),
        )
        .await;
        assert_eq!(result_payload(&reply), None);

        let own = ask(
            &router,
            &mut alice,
            iq("alice@example.org/phone", None, "get", get()),
        )
        .await;
        assert_eq!(result_payload(&own), Some(xml(VCARD)));

        let other = ask(
            &router,
            &mut bob,
            iq("bob@example.org/desk", Some("alice@example.org"), "get", get()),
        )
        .await;
        let vcard = result_payload(&other).unwrap();
        assert_eq!(vcard.get_child("FN", ns::VCARD).unwrap().text(), "Alice Liddell");
        assert_eq!(other.from().unwrap().as_str(), "alice@example.org");
    }

    #[tokio::test]
    async fn missing_vcard_reads_as_empty() {
        let (router, _store) = setup(VcardOptions::default());
        let mut alice = bind(&router, "alice@example.org/phone").await;
        let reply = ask(
            &router,
            &mut alice,
            iq("alice@example.org/phone", Some("bob@example.org"), "get", get()),
        )
        .await;
        let vcard = result_payload(&reply).unwrap();
        assert!(vcard.is("vCard", ns::VCARD));
        assert_eq!(vcard.children().count(), 0);
    }

    #[tokio::test]
    async fn setting_someone_elses_is_forbidden() {
        let (router, store) = setup(VcardOptions::default());
        let mut alice = bind(&router, "alice@example.org/phone").await;
        let reply = ask(
            &router,
            &mut alice,
            iq(
                "alice@example.org/phone",
                Some("bob@example.org"),
                "set",
                xml(VCARD),
            ),
        )
        .await;
        assert_eq!(error_condition(&reply), StanzaErrorCondition::Forbidden);
        assert_eq!(
            store.get(Space::Vcard, "bob@example.org", KEY).await.unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn oversized_vcard_is_not_acceptable_and_not_stored() {
        let (router, store) = setup(VcardOptions { max_size: 40 });
        let mut alice = bind(&router, "alice@example.org/phone").await;
        let reply = ask(
            &router,
            &mut alice,
            iq("alice@example.org/phone", None, "set", xml(VCARD)),
        )
        .await;
        assert_eq!(error_condition(&reply), StanzaErrorCondition::NotAcceptable);
        assert_eq!(
            store.get(Space::Vcard, "alice@example.org", KEY).await.unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn setting_an_empty_vcard_deletes_it() {
        let (router, store) = setup(VcardOptions::default());
        let mut alice = bind(&router, "alice@example.org/phone").await;
        ask(
            &router,
            &mut alice,
            iq("alice@example.org/phone", None, "set", xml(VCARD)),
        )
        .await;
        assert!(
            store
                .get(Space::Vcard, "alice@example.org", KEY)
                .await
                .unwrap()
                .is_some()
        );
        let reply = ask(
            &router,
            &mut alice,
            iq("alice@example.org/phone", None, "set", get()),
        )
        .await;
        assert_eq!(result_payload(&reply), None);
        assert_eq!(
            store.get(Space::Vcard, "alice@example.org", KEY).await.unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn corrupt_stored_vcard_is_an_internal_error() {
        let (router, store) = setup(VcardOptions::default());
        let mut batch = WriteBatch::new();
        batch.put(
            Space::Vcard,
            "bob@example.org",
            KEY,
            b"<vCard xmlns='vcard-temp'>".to_vec(),
        );
        store.apply(batch).await.unwrap();
        let mut alice = bind(&router, "alice@example.org/phone").await;
        let reply = ask(
            &router,
            &mut alice,
            iq("alice@example.org/phone", Some("bob@example.org"), "get", get()),
        )
        .await;
        assert_eq!(error_condition(&reply), StanzaErrorCondition::InternalServerError);
    }

    struct Directory;

    #[async_trait]
    impl VcardSource for Directory {
        async fn vcard(&self, account: &BareJid) -> Result<Option<Element>, VcardSourceError> {
            match account.node().map(|node| node.as_str()) {
                Some("bob") => Ok(Some(xml(
                    "<vCard xmlns='vcard-temp'><FN>Bob from LDAP</FN></vCard>",
                ))),
                Some("carol") => Err(VcardSourceError("LDAP down".into())),
                _ => Ok(None),
            }
        }
    }

    #[tokio::test]
    async fn a_source_wins_and_makes_its_vcards_read_only() {
        let store = Arc::new(MemoryStore::new());
        let module = VcardModule::new(store, VcardOptions::default()).with_source(Arc::new(Directory));
        let router = router(vec![Arc::new(module)]);
        let mut bob = bind(&router, "bob@example.org/desk").await;
        let reply = ask(&router, &mut bob, iq("bob@example.org/desk", None, "get", get())).await;
        assert_eq!(
            result_payload(&reply)
                .unwrap()
                .get_child("FN", ns::VCARD)
                .unwrap()
                .text(),
            "Bob from LDAP"
        );
        let reply = ask(
            &router,
            &mut bob,
            iq("bob@example.org/desk", None, "set", xml(VCARD)),
        )
        .await;
        assert_eq!(error_condition(&reply), StanzaErrorCondition::NotAllowed);

        // Accounts the source doesn't cover still use the store.
        let mut alice = bind(&router, "alice@example.org/phone").await;
        let reply = ask(
            &router,
            &mut alice,
            iq("alice@example.org/phone", None, "set", xml(VCARD)),
        )
        .await;
        assert_eq!(result_payload(&reply), None);

        let reply = ask(
            &router,
            &mut alice,
            iq("alice@example.org/phone", Some("carol@example.org"), "get", get()),
        )
        .await;
        assert_eq!(error_condition(&reply), StanzaErrorCondition::InternalServerError);
    }
}

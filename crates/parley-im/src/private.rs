//! Private XML storage (XEP-0049): a user keeps arbitrary XML fragments on the server, each
//! stored under its qualified name `{namespace}name` in [`Space::Private`].
//!
//! Rules (XEP-0049 §3): only the owner may get or set (`forbidden` otherwise); a query needs at
//! least one child in a namespace of its own (`not-acceptable`: none, or one in `jabber:client`,
//! `jabber:server` or `jabber:iq:private`); a get names exactly one fragment (`bad-request` for
//! more) and gets back the stored fragment or the empty one it asked for. A set may carry several
//! fragments, stored in one atomic batch. Each fragment and the number of fragments per account
//! are bounded by [`PrivateOptions`].

use crate::{ImError, owner, stanza_error};
use async_trait::async_trait;
use parley_proto::{BareJid, Element, Stanza, StanzaError, StanzaErrorCondition, ns};
use parley_router::{IqContext, IqHandler, IqResult, IqRoute, Module, Registry, Scope};
use parley_storage::{KeyValue, MAX_KEY_LEN, Space, WriteBatch};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Namespaces a fragment may not use: they would make it a stanza or a private query itself.
const RESERVED: [&str; 3] = [ns::CLIENT, "jabber:server", ns::PRIVATE];

/// Options of private XML storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivateOptions {
    /// Largest fragment accepted, in bytes of serialised XML.
    pub max_size: usize,
    /// Most fragments one account may keep.
    pub max_entries: usize,
}

impl Default for PrivateOptions {
    fn default() -> Self {
        Self {
            max_size: 64 * 1024,
            max_entries: 100,
        }
    }
}

/// XEP-0049 backed by the key-value store.
pub struct PrivateModule {
    store: Arc<dyn KeyValue>,
    options: PrivateOptions,
}

impl PrivateModule {
    pub fn new(store: Arc<dyn KeyValue>, options: PrivateOptions) -> Self {
        Self { store, options }
    }

    async fn get(&self, account: &BareJid, wanted: &Element) -> IqResult {
        let owner = owner(account);
        let stored = self
            .store
            .get(Space::Private, &owner, &key_of(wanted)?)
            .await
            .map_err(|err| ImError::from(err).to_stanza_error("private"))?;
        let fragment = match stored {
            Some(bytes) => parse_fragment(&owner, bytes).map_err(|err| err.to_stanza_error("private"))?,
            // Not stored: answer with the empty element asked for.
            None => Element::bare(wanted.name(), wanted.ns()),
        };
        let mut query = Element::bare("query", ns::PRIVATE);
        query.append_child(fragment);
        Ok(Some(query))
    }

    async fn set(&self, account: &BareJid, fragments: &[&Element]) -> IqResult {
        let owner = owner(account);
        let mut batch = WriteBatch::new();
        let mut new_keys = 0;
        for fragment in fragments {
            let key = key_of(fragment)?;
            let serialised = String::from(*fragment);
            if serialised.len() > self.options.max_size {
                return Err(stanza_error(
                    StanzaErrorCondition::NotAcceptable,
                    &format!(
                        "A private fragment is larger than {} bytes",
                        self.options.max_size
                    ),
                ));
            }
            let exists = self
                .store
                .get(Space::Private, &owner, &key)
                .await
                .map_err(internal)?
                .is_some();
            if !exists {
                new_keys += 1;
            }
            batch.put(Space::Private, owner.as_str(), key, serialised.into_bytes());
        }
        if new_keys > 0 {
            let limit = self.options.max_entries;
            let existing = self
                .store
                .scan_prefix(Space::Private, &owner, "", limit.saturating_add(1))
                .await
                .map_err(internal)?;
            if existing.len() + new_keys > limit {
                return Err(stanza_error(
                    StanzaErrorCondition::PolicyViolation,
                    &format!("At most {limit} private fragments per account"),
                ));
            }
        }
        self.store.apply(batch).await.map_err(internal)?;
        Ok(None)
    }
}

fn internal(err: parley_storage::StorageError) -> StanzaError {
    ImError::from(err).to_stanza_error("private")
}

/// The storage key of a fragment, refusing reserved namespaces.
fn key_of(fragment: &Element) -> Result<String, StanzaError> {
    let namespace = fragment.ns();
    if namespace.is_empty() || RESERVED.contains(&namespace.as_str()) {
        return Err(stanza_error(
            StanzaErrorCondition::NotAcceptable,
            "Reserved namespace",
        ));
    }
    let key = format!("{{{namespace}}}{}", fragment.name());
    if key.len() > MAX_KEY_LEN {
        return Err(stanza_error(
            StanzaErrorCondition::NotAcceptable,
            "Namespace too long",
        ));
    }
    Ok(key)
}

fn parse_fragment(owner: &str, bytes: Vec<u8>) -> Result<Element, ImError> {
    let corrupt = |reason: String| ImError::Corrupt {
        what: "private fragment",
        owner: owner.to_owned(),
        reason,
    };
    let text = String::from_utf8(bytes).map_err(|err| corrupt(err.to_string()))?;
    text.parse()
        .map_err(|err: minidom::Error| corrupt(err.to_string()))
}

impl Module for PrivateModule {
    fn name(&self) -> &'static str {
        "private"
    }

    fn register(self: Arc<Self>, registry: &mut Registry) {
        registry.iq(IqRoute::account(ns::PRIVATE, "query"), self);
        registry.disco_feature(Scope::Server, ns::PRIVATE);
    }
}

#[async_trait]
impl IqHandler for PrivateModule {
    async fn handle(&self, context: IqContext<'_>, request: &Stanza) -> IqResult {
        if !context.is_own_account() {
            return Err(stanza_error(
                StanzaErrorCondition::Forbidden,
                "Private data is the owner's only",
            ));
        }
        let query = request
            .iq_payload()
            .ok_or_else(|| StanzaError::new(StanzaErrorCondition::BadRequest))?;
        let fragments: Vec<&Element> = query.children().collect();
        if fragments.is_empty() {
            return Err(stanza_error(
                StanzaErrorCondition::NotAcceptable,
                "The query needs a child element",
            ));
        }
        match request.stanza_type() {
            Some("set") => self.set(context.target, &fragments).await,
            _ => match fragments.as_slice() {
                [wanted] => self.get(context.target, wanted).await,
                _ => Err(stanza_error(
                    StanzaErrorCondition::BadRequest,
                    "Ask for one fragment at a time",
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use parley_router::Router;
    use parley_storage::MemoryStore;

    const PREFS: &str = "<prefs xmlns='exodus:prefs'><defaultnick>Hamlet</defaultnick></prefs>";

    fn setup(options: PrivateOptions) -> (Router, Arc<MemoryStore>) {
        let store = Arc::new(MemoryStore::new());
        let router = router(vec![Arc::new(PrivateModule::new(store.clone(), options))]);
        (router, store)
    }

    fn query(children: &str) -> Element {
        xml(&format!("<query xmlns='jabber:iq:private'>{children}</query>"))
    }

    #[tokio::test]
    async fn set_then_get_returns_the_fragment() {
        let (router, _store) = setup(PrivateOptions::default());
        let mut alice = bind(&router, "alice@example.org/phone").await;
        let reply = ask(
            &router,
            &mut alice,
            iq("alice@example.org/phone", None, "set", query(PREFS)),
        )
        .await;
        assert_eq!(result_payload(&reply), None);

        let reply = ask(
            &router,
            &mut alice,
            iq(
                "alice@example.org/phone",
                None,
                "get",
                query("<prefs xmlns='exodus:prefs'/>"),
            ),
        )
        .await;
        let payload = result_payload(&reply).unwrap();
        assert_eq!(payload.children().next(), Some(&xml(PREFS)));
    }

    #[tokio::test]
    async fn get_of_nothing_stored_echoes_the_empty_fragment() {
        let (router, _store) = setup(PrivateOptions::default());
        let mut alice = bind(&router, "alice@example.org/phone").await;
        let reply = ask(
            &router,
            &mut alice,
            iq(
                "alice@example.org/phone",
                Some("alice@example.org"),
                "get",
                query("<storage xmlns='storage:bookmarks'/>"),
            ),
        )
        .await;
        let payload = result_payload(&reply).unwrap();
        let fragment = payload.children().next().unwrap();
        assert!(fragment.is("storage", "storage:bookmarks"));
        assert_eq!(fragment.children().count(), 0);
    }

    #[tokio::test]
    async fn someone_elses_data_is_forbidden() {
        let (router, store) = setup(PrivateOptions::default());
        let mut alice = bind(&router, "alice@example.org/phone").await;
        for iq_type in ["get", "set"] {
            let reply = ask(
                &router,
                &mut alice,
                iq(
                    "alice@example.org/phone",
                    Some("bob@example.org"),
                    iq_type,
                    query(PREFS),
                ),
            )
            .await;
            assert_eq!(
                error_condition(&reply),
                StanzaErrorCondition::Forbidden,
                "{iq_type}"
            );
        }
        assert!(
            store
                .scan_prefix(Space::Private, "bob@example.org", "", 10)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn reserved_namespaces_and_empty_queries_are_not_acceptable() {
        let (router, _store) = setup(PrivateOptions::default());
        let mut alice = bind(&router, "alice@example.org/phone").await;
        let cases = [
            ("set", query("<x xmlns='jabber:client'/>")),
            ("set", query("<x xmlns='jabber:server'/>")),
            ("get", query("<query xmlns='jabber:iq:private'/>")),
            ("set", query("")),
            ("get", query("")),
        ];
        for (iq_type, payload) in cases {
            let shown = String::from(&payload);
            let reply = ask(
                &router,
                &mut alice,
                iq("alice@example.org/phone", None, iq_type, payload),
            )
            .await;
            assert_eq!(
                error_condition(&reply),
                StanzaErrorCondition::NotAcceptable,
                "{iq_type} {shown}"
            );
        }
    }

    #[tokio::test]
    async fn get_of_two_fragments_is_a_bad_request() {
        let (router, _store) = setup(PrivateOptions::default());
        let mut alice = bind(&router, "alice@example.org/phone").await;
        let payload = query("<a xmlns='urn:a'/><b xmlns='urn:b'/>");
        let reply = ask(
            &router,
            &mut alice,
            iq("alice@example.org/phone", None, "get", payload),
        )
        .await;
        assert_eq!(error_condition(&reply), StanzaErrorCondition::BadRequest);
    }

    #[tokio::test]
    async fn size_and_count_limits_hold() {
        let (router, store) = setup(PrivateOptions {
            max_size: 60,
            max_entries: 2,
        });
        let mut alice = bind(&router, "alice@example.org/phone").await;
        let big = query(&format!("<big xmlns='urn:big'>{}</big>", "x".repeat(100)));
        let reply = ask(
            &router,
            &mut alice,
            iq("alice@example.org/phone", None, "set", big),
        )
        .await;
        assert_eq!(error_condition(&reply), StanzaErrorCondition::NotAcceptable);

        let two = query("<a xmlns='urn:a'/><b xmlns='urn:b'/>");
        let reply = ask(
            &router,
            &mut alice,
            iq("alice@example.org/phone", None, "set", two),
        )
        .await;
        assert_eq!(result_payload(&reply), None);
        let third = query("<c xmlns='urn:c'/>");
        let reply = ask(
            &router,
            &mut alice,
            iq("alice@example.org/phone", None, "set", third),
        )
        .await;
        assert_eq!(error_condition(&reply), StanzaErrorCondition::PolicyViolation);
        // Replacing an existing fragment is still allowed at the limit.
        let replace = query("<a xmlns='urn:a'>new</a>");
        let reply = ask(
            &router,
            &mut alice,
            iq("alice@example.org/phone", None, "set", replace),
        )
        .await;
        assert_eq!(result_payload(&reply), None);
        let stored = store
            .scan_prefix(Space::Private, "alice@example.org", "", 10)
            .await
            .unwrap();
        assert_eq!(stored.len(), 2);
    }
}

//! Service discovery (XEP-0030): disco#info and disco#items for the server and for accounts.
//!
//! The server's features are whatever the modules registered with [`Scope::Server`], read from the
//! router on every request, so they can never be out of date. An account's bare JID answers with
//! the `account/registered` identity; only the account itself also sees the account features
//! (RFC 6121 §8.5.1 lets the server answer for the account; telling strangers which features an
//! account has is not needed, so they get the identity alone).

use crate::caps;
use crate::{require_get, stanza_error};
use async_trait::async_trait;
use parley_proto::{Element, Stanza, StanzaError, StanzaErrorCondition, ns};
use parley_router::{IqContext, IqHandler, IqResult, IqRoute, Module, Registry, Router, Scope};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;
use xmpp_parsers::disco::{DiscoInfoQuery, DiscoInfoResult, DiscoItemsQuery, DiscoItemsResult, Identity};

/// Options of service discovery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoOptions {
    /// The name of the server's `server/im` identity.
    pub server_name: String,
}

impl Default for DiscoOptions {
    fn default() -> Self {
        Self {
            server_name: "Parley".to_owned(),
        }
    }
}

/// XEP-0030 for the server and its accounts.
#[derive(Debug, Default)]
pub struct DiscoModule {
    options: Arc<DiscoOptions>,
}

impl DiscoModule {
    pub fn new(options: DiscoOptions) -> Self {
        Self {
            options: Arc::new(options),
        }
    }
}

impl Module for DiscoModule {
    fn name(&self) -> &'static str {
        "disco"
    }

    fn register(self: Arc<Self>, registry: &mut Registry) {
        for scope in [Scope::Server, Scope::Account] {
            let route = |namespace| match scope {
                Scope::Server => IqRoute::server(namespace, "query"),
                Scope::Account => IqRoute::account(namespace, "query"),
            };
            registry.iq(
                route(ns::DISCO_INFO),
                Arc::new(InfoHandler {
                    scope,
                    options: self.options.clone(),
                }),
            );
            registry.iq(route(ns::DISCO_ITEMS), Arc::new(ItemsHandler));
            registry.disco_feature(scope, ns::DISCO_INFO);
            registry.disco_feature(scope, ns::DISCO_ITEMS);
        }
    }
}

/// The server's disco#info: its identity and every server feature the modules registered.
/// Entity capabilities hash exactly this, so both always agree.
pub fn server_info(router: &Router, options: &DiscoOptions) -> DiscoInfoResult {
    let mut features: BTreeSet<String> = router
        .disco_features(Scope::Server)
        .iter()
        .map(|feature| (*feature).to_owned())
        .collect();
    // Any entity that answers disco supports it, even if the module list forgot to say so.
    features.insert(ns::DISCO_INFO.to_owned());
    features.insert(ns::DISCO_ITEMS.to_owned());
    DiscoInfoResult {
        node: None,
        identities: vec![Identity {
            category: "server".to_owned(),
            type_: "im".to_owned(),
            lang: None,
            name: Some(options.server_name.clone()),
        }],
        features,
        extensions: Vec::new(),
    }
}

fn account_identity() -> Identity {
    Identity::new_anonymous::<_, _, String, String>("account", "registered")
}

fn parse_node<T, E>(
    payload: &Element,
    node: impl FnOnce(T) -> Option<String>,
) -> Result<Option<String>, StanzaError>
where
    T: TryFrom<Element, Error = E>,
{
    T::try_from(payload.clone())
        .map(node)
        .map_err(|_| stanza_error(StanzaErrorCondition::BadRequest, "Malformed disco query"))
}

fn unknown_node() -> StanzaError {
    stanza_error(StanzaErrorCondition::ItemNotFound, "No such node")
}

fn payload(request: &Stanza) -> Result<&Element, StanzaError> {
    request
        .iq_payload()
        .ok_or_else(|| StanzaError::new(StanzaErrorCondition::BadRequest))
}

struct InfoHandler {
    scope: Scope,
    options: Arc<DiscoOptions>,
}

#[async_trait]
impl IqHandler for InfoHandler {
    async fn handle(&self, context: IqContext<'_>, request: &Stanza) -> IqResult {
        require_get(request)?;
        let node = parse_node(payload(request)?, |query: DiscoInfoQuery| query.node)?;
        let info = match self.scope {
            Scope::Server => {
                let mut info = server_info(context.router, &self.options);
                if let Some(node) = node {
                    // XEP-0115 §6.2: the caps node answers with the same info, node echoed.
                    if node != caps::node_for(&caps::verification_string(&info)) {
                        return Err(unknown_node());
                    }
                    info.node = Some(node);
                }
                info
            }
            Scope::Account => {
                if node.is_some() {
                    return Err(unknown_node());
                }
                let features = if context.is_own_account() {
                    context
                        .router
                        .disco_features(Scope::Account)
                        .iter()
                        .map(|f| (*f).to_owned())
                        .collect()
                } else {
                    BTreeSet::new()
                };
                DiscoInfoResult {
                    node: None,
                    identities: vec![account_identity()],
                    features,
                    extensions: Vec::new(),
                }
            }
        };
        Ok(Some(info.into()))
    }
}

/// Nothing is listed yet (MUC, upload... will add items); nodes don't exist.
struct ItemsHandler;

#[async_trait]
impl IqHandler for ItemsHandler {
    async fn handle(&self, _context: IqContext<'_>, request: &Stanza) -> IqResult {
        require_get(request)?;
        if parse_node(payload(request)?, |query: DiscoItemsQuery| query.node)?.is_some() {
            return Err(unknown_node());
        }
        Ok(Some(
            DiscoItemsResult {
                node: None,
                items: Vec::new(),
                rsm: None,
            }
            .into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use parley_router::Module;

    /// Registers one extra server feature, like any feature module would.
    struct ExtraFeature(&'static str);

    impl Module for ExtraFeature {
        fn name(&self) -> &'static str {
            "extra"
        }
        fn register(self: Arc<Self>, registry: &mut Registry) {
            registry.disco_feature(Scope::Server, self.0);
        }
    }

    fn info_query(node: Option<&str>) -> Element {
        match node {
            Some(node) => xml(&format!("<query xmlns='{}' node='{node}'/>", ns::DISCO_INFO)),
            None => xml(&format!("<query xmlns='{}'/>", ns::DISCO_INFO)),
        }
    }

    fn parse_info(reply: &Stanza) -> DiscoInfoResult {
        DiscoInfoResult::try_from(result_payload(reply).expect("a payload")).expect("a disco#info result")
    }

    fn setup() -> Router {
        router(vec![
            Arc::new(DiscoModule::default()),
            Arc::new(ExtraFeature("urn:example:feature")),
        ])
    }

    #[tokio::test]
    async fn server_info_lists_identity_and_registered_features() {
        let router = setup();
        let mut alice = bind(&router, "alice@example.org/phone").await;
        let reply = ask(
            &router,
            &mut alice,
            iq("alice@example.org/phone", Some(DOMAIN), "get", info_query(None)),
        )
        .await;
        let info = parse_info(&reply);
        assert_eq!(reply.from().unwrap().as_str(), DOMAIN);
        assert_eq!(info.identities.len(), 1);
        assert_eq!(
            (
                info.identities[0].category.as_str(),
                info.identities[0].type_.as_str()
            ),
            ("server", "im")
        );
        assert_eq!(info.identities[0].name.as_deref(), Some("Parley"));
        for feature in [ns::DISCO_INFO, ns::DISCO_ITEMS, "urn:example:feature"] {
            assert!(info.features.contains(feature), "missing {feature}");
        }
    }

    #[tokio::test]
    async fn server_info_answers_the_caps_node_and_refuses_other_nodes() {
        let router = setup();
        let mut alice = bind(&router, "alice@example.org/phone").await;
        let ver = caps::verification_string(&server_info(&router, &DiscoOptions::default()));
        let node = caps::node_for(&ver);
        let reply = ask(
            &router,
            &mut alice,
            iq(
                "alice@example.org/phone",
                Some(DOMAIN),
                "get",
                info_query(Some(&node)),
            ),
        )
        .await;
        let info = parse_info(&reply);
        assert_eq!(info.node.as_deref(), Some(node.as_str()));
        assert!(info.features.contains("urn:example:feature"));

        for bad in ["https://parley.im#stale", "other"] {
            let reply = ask(
                &router,
                &mut alice,
                iq(
                    "alice@example.org/phone",
                    Some(DOMAIN),
                    "get",
                    info_query(Some(bad)),
                ),
            )
            .await;
            assert_eq!(
                error_condition(&reply),
                StanzaErrorCondition::ItemNotFound,
                "node {bad}"
            );
        }
    }

    #[tokio::test]
    async fn account_info_shows_features_to_the_owner_and_only_the_identity_to_others() {
        let router = setup();
        let mut alice = bind(&router, "alice@example.org/phone").await;
        let mut bob = bind(&router, "bob@example.org/desk").await;

        let own = ask(
            &router,
            &mut alice,
            iq(
                "alice@example.org/phone",
                Some("alice@example.org"),
                "get",
                info_query(None),
            ),
        )
        .await;
        let info = parse_info(&own);
        assert_eq!(info.identities[0].category, "account");
        assert_eq!(info.identities[0].type_, "registered");
        assert!(info.features.contains(ns::DISCO_INFO));

        let other = ask(
            &router,
            &mut bob,
            iq(
                "bob@example.org/desk",
                Some("alice@example.org"),
                "get",
                info_query(None),
            ),
        )
        .await;
        let info = parse_info(&other);
        assert_eq!(info.identities[0].type_, "registered");
        assert!(
            info.features.is_empty(),
            "no features leak to others: {:?}",
            info.features
        );

        let node = ask(
            &router,
            &mut alice,
            iq(
                "alice@example.org/phone",
                Some("alice@example.org"),
                "get",
                info_query(Some("x")),
            ),
        )
        .await;
        assert_eq!(error_condition(&node), StanzaErrorCondition::ItemNotFound);
    }

    #[tokio::test]
    async fn info_without_to_is_about_the_senders_account() {
        let router = setup();
        let mut alice = bind(&router, "alice@example.org/phone").await;
        let reply = ask(
            &router,
            &mut alice,
            iq("alice@example.org/phone", None, "get", info_query(None)),
        )
        .await;
        assert_eq!(parse_info(&reply).identities[0].category, "account");
    }

    #[tokio::test]
    async fn items_are_empty_and_nodes_unknown() {
        let router = setup();
        let mut alice = bind(&router, "alice@example.org/phone").await;
        let query = xml(&format!("<query xmlns='{}'/>", ns::DISCO_ITEMS));
        let reply = ask(
            &router,
            &mut alice,
            iq("alice@example.org/phone", Some(DOMAIN), "get", query),
        )
        .await;
        let items = DiscoItemsResult::try_from(result_payload(&reply).unwrap()).unwrap();
        assert!(items.items.is_empty());

        let query = xml(&format!("<query xmlns='{}' node='rooms'/>", ns::DISCO_ITEMS));
        let reply = ask(
            &router,
            &mut alice,
            iq("alice@example.org/phone", Some(DOMAIN), "get", query),
        )
        .await;
        assert_eq!(error_condition(&reply), StanzaErrorCondition::ItemNotFound);
    }

    #[tokio::test]
    async fn set_and_malformed_queries_are_bad_requests() {
        let router = setup();
        let mut alice = bind(&router, "alice@example.org/phone").await;
        let reply = ask(
            &router,
            &mut alice,
            iq("alice@example.org/phone", Some(DOMAIN), "set", info_query(None)),
        )
        .await;
        assert_eq!(error_condition(&reply), StanzaErrorCondition::BadRequest);

        let malformed = xml(&format!(
            "<query xmlns='{}'><set xmlns='http://jabber.org/protocol/rsm'><max>many</max></set></query>",
            ns::DISCO_ITEMS
        ));
        let reply = ask(
            &router,
            &mut alice,
            iq("alice@example.org/phone", Some(DOMAIN), "get", malformed),
        )
        .await;
        assert_eq!(error_condition(&reply), StanzaErrorCondition::BadRequest);
    }

    #[tokio::test]
    async fn unknown_accounts_get_service_unavailable() {
        let router = setup();
        let mut alice = bind(&router, "alice@example.org/phone").await;
        let reply = ask(
            &router,
            &mut alice,
            iq(
                "alice@example.org/phone",
                Some("nobody@example.org"),
                "get",
                info_query(None),
            ),
        )
        .await;
        assert_eq!(error_condition(&reply), StanzaErrorCondition::ServiceUnavailable);
    }
}

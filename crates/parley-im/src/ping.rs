//! XMPP Ping (XEP-0199): the server answers pings to itself and, on the account's behalf, pings a
//! user sends to their own bare JID.
//!
//! A ping from someone else to an account's bare JID gets `service-unavailable`, the same answer
//! as for an account that doesn't exist (XEP-0199 §4.1 leaves bare-JID pings to the server's
//! policy; RFC 6121 §8.5.1 lets it answer for the account, and answering strangers would only tell
//! them the account exists). Pings to a full JID are routed to that client by the router.

use crate::{require_get, stanza_error};
use async_trait::async_trait;
use parley_proto::{Stanza, StanzaErrorCondition, ns};
use parley_router::{IqContext, IqHandler, IqResult, IqRoute, Module, Registry, Scope};
use std::sync::Arc;

/// XEP-0199 for the server and for accounts.
#[derive(Debug, Default)]
pub struct PingModule;

impl PingModule {
    pub fn new() -> Self {
        Self
    }
}

impl Module for PingModule {
    fn name(&self) -> &'static str {
        "ping"
    }

    fn register(self: Arc<Self>, registry: &mut Registry) {
        registry.iq(
            IqRoute::server(ns::PING, "ping"),
            Arc::new(PingHandler { scope: Scope::Server }),
        );
        registry.iq(
            IqRoute::account(ns::PING, "ping"),
            Arc::new(PingHandler {
                scope: Scope::Account,
            }),
        );
        registry.disco_feature(Scope::Server, ns::PING);
    }
}

struct PingHandler {
    scope: Scope,
}

#[async_trait]
impl IqHandler for PingHandler {
    async fn handle(&self, context: IqContext<'_>, request: &Stanza) -> IqResult {
        require_get(request)?;
        if self.scope == Scope::Account && !context.is_own_account() {
            return Err(stanza_error(
                StanzaErrorCondition::ServiceUnavailable,
                "Not answered for others",
            ));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use parley_proto::Element;

    fn ping() -> Element {
        xml("<ping xmlns='urn:xmpp:ping'/>")
    }

    fn setup() -> parley_router::Router {
        router(vec![Arc::new(PingModule::new())])
    }

    #[tokio::test]
    async fn server_ping_gets_an_empty_result() {
        let router = setup();
        let mut alice = bind(&router, "alice@example.org/phone").await;
        for to in [Some(DOMAIN), None] {
            let reply = ask(
                &router,
                &mut alice,
                iq("alice@example.org/phone", to, "get", ping()),
            )
            .await;
            assert_eq!(result_payload(&reply), None, "to {to:?}");
            assert_eq!(reply.id(), Some("q1"));
        }
        assert!(router.disco_features(Scope::Server).contains(&ns::PING));
    }

    #[tokio::test]
    async fn own_bare_jid_is_answered_others_are_not() {
        let router = setup();
        let mut alice = bind(&router, "alice@example.org/phone").await;
        let own = ask(
            &router,
            &mut alice,
            iq(
                "alice@example.org/phone",
                Some("alice@example.org"),
                "get",
                ping(),
            ),
        )
        .await;
        assert_eq!(result_payload(&own), None);

        let other = ask(
            &router,
            &mut alice,
            iq("alice@example.org/phone", Some("bob@example.org"), "get", ping()),
        )
        .await;
        assert_eq!(error_condition(&other), StanzaErrorCondition::ServiceUnavailable);
    }

    #[tokio::test]
    async fn ping_set_is_a_bad_request() {
        let router = setup();
        let mut alice = bind(&router, "alice@example.org/phone").await;
        let reply = ask(
            &router,
            &mut alice,
            iq("alice@example.org/phone", Some(DOMAIN), "set", ping()),
        )
        .await;
        assert_eq!(error_condition(&reply), StanzaErrorCondition::BadRequest);
    }
}

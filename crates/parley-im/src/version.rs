//! Software Version (XEP-0092) of the server: name and version, and the operating system only
//! when configured (it tells attackers what to aim at; XEP-0092 §3 makes it optional).

use crate::require_get;
use async_trait::async_trait;
use parley_proto::{Stanza, ns};
use parley_router::{IqContext, IqHandler, IqResult, IqRoute, Module, Registry, Scope};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use xmpp_parsers::version::VersionResult;

/// Options of the version module.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VersionOptions {
    /// The `<os/>` to report; none by default.
    pub os: Option<String>,
}

/// XEP-0092 for the server.
#[derive(Debug, Default)]
pub struct VersionModule {
    options: VersionOptions,
}

impl VersionModule {
    pub fn new(options: VersionOptions) -> Self {
        Self { options }
    }
}

impl Module for VersionModule {
    fn name(&self) -> &'static str {
        "version"
    }

    fn register(self: Arc<Self>, registry: &mut Registry) {
        registry.iq(IqRoute::server(ns::VERSION, "query"), self);
        registry.disco_feature(Scope::Server, ns::VERSION);
    }
}

#[async_trait]
impl IqHandler for VersionModule {
    async fn handle(&self, _context: IqContext<'_>, request: &Stanza) -> IqResult {
        require_get(request)?;
        let result = VersionResult {
            name: "Parley".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            os: self.options.os.clone(),
        };
        Ok(Some(result.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use parley_proto::{Element, StanzaErrorCondition};

    fn query() -> Element {
        xml("<query xmlns='jabber:iq:version'/>")
    }

    async fn version_of(module: VersionModule) -> VersionResult {
        let router = router(vec![Arc::new(module)]);
        let mut alice = bind(&router, "alice@example.org/phone").await;
        let reply = ask(
            &router,
            &mut alice,
            iq("alice@example.org/phone", Some(DOMAIN), "get", query()),
        )
        .await;
        VersionResult::try_from(result_payload(&reply).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn reports_name_and_version_without_os_by_default() {
        let version = version_of(VersionModule::default()).await;
        assert_eq!(version.name, "Parley");
        assert_eq!(version.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(version.os, None);
    }

    #[tokio::test]
    async fn reports_the_configured_os() {
        let version = version_of(VersionModule::new(VersionOptions {
            os: Some("Linux".into()),
        }))
        .await;
        assert_eq!(version.os.as_deref(), Some("Linux"));
    }

    #[tokio::test]
    async fn set_is_refused_and_accounts_are_not_answered() {
        let router = router(vec![Arc::new(VersionModule::default())]);
        let mut alice = bind(&router, "alice@example.org/phone").await;
        let reply = ask(
            &router,
            &mut alice,
            iq("alice@example.org/phone", Some(DOMAIN), "set", query()),
        )
        .await;
        assert_eq!(error_condition(&reply), StanzaErrorCondition::BadRequest);
        let reply = ask(
            &router,
            &mut alice,
            iq("alice@example.org/phone", Some("bob@example.org"), "get", query()),
        )
        .await;
        assert_eq!(error_condition(&reply), StanzaErrorCondition::ServiceUnavailable);
    }
}

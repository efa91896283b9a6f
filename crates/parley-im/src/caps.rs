//! The server's entity capabilities (XEP-0115), offered in the post-authentication stream features.
//!
//! The verification string hashes exactly what [`crate::disco::server_info`] answers, so it changes
//! whenever a module adds a feature. The `<c/>` stream feature is computed from the finished router
//! on first use, so it covers every module registered, whatever the order. The disco module answers
//! the `node#ver` query itself, from the live router.

use crate::disco::{DiscoOptions, server_info};
use base64::Engine as _;
use parley_proto::{Element, ns};
use parley_router::{Module, Registry, Router};
use sha1::{Digest, Sha1};
use std::sync::Arc;
use xmpp_parsers::disco::DiscoInfoResult;

/// The node clients see in `<c node='...'/>`; the disco node is `NODE#ver`.
pub const NODE: &str = "https://parley.im";

/// The disco node naming one version of the server's capabilities.
pub fn node_for(ver: &str) -> String {
    format!("{NODE}#{ver}")
}

/// XEP-0115 §5.1: identities (sorted by category, type, xml:lang), then features (sorted), each
/// followed by `<`, hashed with SHA-1 and base64-encoded. Parley's disco#info carries no
/// XEP-0128 extension forms yet; when it does, they must be appended here (§5.1 step 7).
pub fn verification_string(info: &DiscoInfoResult) -> String {
    let mut identities: Vec<_> = info.identities.iter().collect();
    identities.sort_by(|a, b| {
        (&a.category, &a.type_, a.lang.as_deref().unwrap_or("")).cmp(&(
            &b.category,
            &b.type_,
            b.lang.as_deref().unwrap_or(""),
        ))
    });
    let mut input = String::new();
    for identity in identities {
        let lang = identity.lang.as_deref().unwrap_or("");
        let name = identity.name.as_deref().unwrap_or("");
        input.push_str(&format!(
            "{}/{}/{lang}/{name}<",
            identity.category, identity.type_
        ));
    }
    // A BTreeSet iterates in byte order, which is the "i;octet" collation the XEP asks for.
    for feature in &info.features {
        input.push_str(feature);
        input.push('<');
    }
    base64::engine::general_purpose::STANDARD.encode(Sha1::digest(input.as_bytes()))
}

/// The `<c/>` element advertising `ver`.
pub fn caps_element(ver: &str) -> Element {
    let mut element = Element::bare("c", ns::CAPS);
    parley_proto::stanza::set_attr(&mut element, "hash", Some("sha-1"));
    parley_proto::stanza::set_attr(&mut element, "node", Some(NODE));
    parley_proto::stanza::set_attr(&mut element, "ver", Some(ver));
    element
}

/// The server's capabilities as read from a built router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerCaps {
    pub ver: String,
}

impl ServerCaps {
    /// Hashes what the router's disco#info answers with these options.
    pub fn of(router: &Router, options: &DiscoOptions) -> Self {
        Self {
            ver: verification_string(&server_info(router, options)),
        }
    }

    pub fn element(&self) -> Element {
        caps_element(&self.ver)
    }
}

/// Adds the server's `<c/>` to the stream features, hashed from the finished router so it
/// covers every module's disco features.
#[derive(Debug, Clone, Default)]
pub struct CapsModule {
    options: DiscoOptions,
}

impl CapsModule {
    /// `options` must be the ones the disco module answers with, so the hash matches its info.
    pub fn new(options: DiscoOptions) -> Self {
        Self { options }
    }
}

impl Module for CapsModule {
    fn name(&self) -> &'static str {
        "caps"
    }

    fn register(self: Arc<Self>, registry: &mut Registry) {
        registry.stream_feature_from(Arc::new(move |router: &Router| {
            ServerCaps::of(router, &self.options).element()
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disco::DiscoModule;
    use crate::testing::*;
    use parley_router::Scope;
    use std::collections::BTreeSet;
    use xmpp_parsers::disco::Identity;

    #[test]
    fn matches_the_worked_example_of_xep_0115() {
        // XEP-0115 §5.2.
        let info = DiscoInfoResult {
            node: None,
            identities: vec![Identity {
                category: "client".into(),
                type_: "pc".into(),
                lang: None,
                name: Some("Exodus 0.9.1".into()),
            }],
            features: [
                "http://jabber.org/protocol/caps",
                "http://jabber.org/protocol/disco#info",
                "http://jabber.org/protocol/disco#items",
                "http://jabber.org/protocol/muc",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            extensions: Vec::new(),
        };
        assert_eq!(verification_string(&info), "QgayPKawpkPSDYmwT/WM94uAlu0=");
    }

    #[test]
    fn identities_are_sorted_before_hashing() {
        let identity = |category: &str, name: &str| Identity {
            category: category.into(),
            type_: "x".into(),
            lang: None,
            name: Some(name.into()),
        };
        let info = |identities| DiscoInfoResult {
            node: None,
            identities,
            features: BTreeSet::new(),
            extensions: Vec::new(),
        };
        let a = info(vec![identity("a", "1"), identity("b", "2")]);
        let b = info(vec![identity("b", "2"), identity("a", "1")]);
        assert_eq!(verification_string(&a), verification_string(&b));
        let c = info(vec![identity("a", "1"), identity("b", "3")]);
        assert_ne!(verification_string(&a), verification_string(&c));
    }

    struct ExtraFeature;

    impl Module for ExtraFeature {
        fn name(&self) -> &'static str {
            "extra"
        }
        fn register(self: Arc<Self>, registry: &mut Registry) {
            registry.disco_feature(Scope::Server, "urn:example:new");
        }
    }

    #[test]
    fn ver_changes_when_a_module_adds_a_feature() {
        let options = DiscoOptions::default();
        let plain = router(vec![Arc::new(DiscoModule::default())]);
        let extended = router(vec![Arc::new(DiscoModule::default()), Arc::new(ExtraFeature)]);
        let before = ServerCaps::of(&plain, &options);
        let after = ServerCaps::of(&extended, &options);
        assert_ne!(before, after);
        assert_eq!(
            before,
            ServerCaps::of(&plain, &options),
            "stable for the same features"
        );
    }

    #[test]
    fn the_stream_feature_carries_the_routers_ver() {
        let options = DiscoOptions::default();
        // Caps registered before the module whose feature it must still cover.
        let built = router(vec![
            Arc::new(CapsModule::new(options.clone())),
            Arc::new(DiscoModule::default()),
            Arc::new(ExtraFeature),
        ]);
        let without_caps = router(vec![Arc::new(DiscoModule::default()), Arc::new(ExtraFeature)]);
        let ver = ServerCaps::of(&without_caps, &options).ver;
        assert_eq!(
            ServerCaps::of(&built, &options).ver,
            ver,
            "caps adds no feature of its own"
        );
        let feature = built
            .stream_features()
            .iter()
            .find(|f| f.is("c", ns::CAPS))
            .expect("a <c/> feature");
        assert_eq!(feature.attr("hash"), Some("sha-1"));
        assert_eq!(feature.attr("node"), Some(NODE));
        assert_eq!(feature.attr("ver"), Some(ver.as_str()));
    }
}

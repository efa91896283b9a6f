//! Normal paths through tokio-xmpp.

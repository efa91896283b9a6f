//! The XMPP wire vocabulary of Parley, with no sockets and no state.
//!
//! Owns: the bounded, strict incremental XML stream reader and the writer (`reader`, `writer`),
//! the stream header, the [`Stanza`] envelope (kind, from, to, type, id; payloads stay
//! [`Element`]s), stream and stanza error conditions, namespaces, and JID types.
//!
//! Must not touch: sockets, TLS, storage, the directory, or any server state. Everything here is
//! a pure function of its input, so every byte from the network can be tested in isolation.

pub mod error;
pub mod ns;
pub mod reader;
pub mod stanza;
pub mod writer;

pub use error::{ErrorType, StanzaError, StanzaErrorCondition, StreamError, StreamErrorCondition};
pub use jid::{BareJid, FullJid, Jid};
pub use minidom::Element;
pub use stanza::{Stanza, StanzaKind};

//! Client-to-server connections of Parley.
//!
//! Owns: listeners, TLS (STARTTLS and direct TLS on rustls, certificates reloadable at run
//! time), the typestate negotiation (stream → TLS → SASL via the `Directory` → bind), the bound
//! session loop with its bounded outbound queue, stamping `from` on everything a client sends,
//! idle pings and timeouts, and per-IP connection limits.
//!
//! Must not touch: storage, or any feature's logic: a bound session hands every stanza to the
//! router and writes whatever the router queues for it.

mod conn;
mod listener;
pub mod sasl;
mod session;
mod tls;

pub use listener::serve;
pub use session::{C2sContext, C2sSettings, ListenerMode};
pub use tls::{TlsError, TlsSettings};

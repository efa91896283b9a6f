//! The stanza router of Parley.
//!
//! Owns: the [`Module`] trait and the [`Registry`] of typed IQ routes, hooks, event handlers, disco
//! features and stream features; the [`SessionTable`] of bound resources with their bounded
//! outbound queues; addressing and delivery (RFC 6121 §8: full, bare and server JIDs); the fixed
//! compliance stage every routed message passes; and the guarantee that every IQ request gets
//! exactly one reply.
//!
//! Must not touch: sockets, TLS, storage or the directory. Modules receive their store and
//! directory handles when they are built; the router only sees the narrow [`Accounts`] and
//! [`ComplianceStage`] traits the server hands it.

mod compliance;
mod module;
mod router;
mod sessions;

pub use compliance::{Addressee, ComplianceError, ComplianceStage, Recording, Unarchived};
pub use module::{
    Event, EventHandler, Hook, HookHandler, HookOutcome, IqContext, IqHandler, IqResult, IqRoute, Module,
    Registry, RegistryError, Scope,
};
pub use router::{Accounts, Delivering, Router, RouterBuilder};
pub use sessions::{
    BindError, Outbound, PresenceState, ResourceInfo, SessionControl, SessionId, SessionTable,
};

#[cfg(test)]
mod tests;

//! The fixed compliance stage: every message the router accepts passes it before delivery.

use std::future::Future;
use std::pin::Pin;

use async_trait::async_trait;
use parley_proto::{Element, Stanza};

#[derive(Debug, thiserror::Error)]
#[error("the compliance record could not be written: {0}")]
pub struct ComplianceError(pub String);

/// What the router knows of a message's addressee when it asks for the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressee {
    /// An account of this server that exists (online, or known to the directory).
    LocalAccount,
    /// Anything else: a remote address, the server itself, or a local name nobody holds.
    Other,
}

/// Records an accepted message durably before it is delivered or acknowledged. The router calls
/// it for every message from a local client, after the client hooks and before routing; a
/// failure refuses the message (`internal-server-error` to its sender), so nothing is delivered
/// that was not recorded. No module can skip it. The stage may add to the stanza what its
/// recipients should see of the record, such as a XEP-0359 `<stanza-id/>`. Only a
/// [`Addressee::LocalAccount`] has an archive of its own to receive a copy: a message to a name
/// nobody holds must not wait in an archive for whoever gets that name later.
#[async_trait]
pub trait ComplianceStage: Send + Sync + 'static {
    async fn record(&self, stanza: &mut Stanza, addressee: Addressee) -> Result<(), ComplianceError>;

    /// The same in two steps, so one sender's messages can share a durable commit: `queue`
    /// returns once the record's place in the stage's order is fixed (records queued one after
    /// the other are recorded in that order), and the [`Recording`] resolves once it is durable,
    /// with the children to add to the stanza (what `record` would have added). The default
    /// records at once and adds nothing later.
    async fn queue(&self, stanza: &mut Stanza, addressee: Addressee) -> Result<Recording, ComplianceError> {
        self.record(stanza, addressee).await?;
        Ok(Box::pin(std::future::ready(Ok(Vec::new()))))
    }
}

/// A queued record on its way to durability; see [`ComplianceStage::queue`].
pub type Recording = Pin<Box<dyn Future<Output = Result<Vec<Element>, ComplianceError>> + Send>>;

/// The stage used until a compliance archive is configured: it records nothing and says so in
/// the log at start-up.
#[derive(Debug, Default)]
pub struct Unarchived;

#[async_trait]
impl ComplianceStage for Unarchived {
    async fn record(&self, _stanza: &mut Stanza, _addressee: Addressee) -> Result<(), ComplianceError> {
        Ok(())
    }
}

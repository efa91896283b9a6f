//! The seam for shared roster groups: contacts the directory puts on a user's roster.
//!
//! A provider (later: one backed by `parley-directory` groups) lists, for an account, the
//! contacts it shares with them. They appear in the roster with `subscription='both'` and take
//! part in presence as if both subscriptions existed; they are never written to the store, so
//! the directory stays the source of truth.

use async_trait::async_trait;
use parley_proto::BareJid;

/// A contact put on a roster by the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedContact {
    pub jid: BareJid,
    pub name: Option<String>,
    pub groups: Vec<String>,
}

#[async_trait]
pub trait SharedGroups: Send + Sync + 'static {
    /// The shared contacts of `account` (never `account` itself). Bounded by the provider.
    async fn contacts(&self, account: &BareJid) -> Vec<SharedContact>;
}

/// No shared groups: every roster is the user's own.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoSharedGroups;

#[async_trait]
impl SharedGroups for NoSharedGroups {
    async fn contacts(&self, _account: &BareJid) -> Vec<SharedContact> {
        Vec::new()
    }
}

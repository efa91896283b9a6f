//! The table of bound resources: who is online, their presence, and their outbound queues.

use parley_proto::{BareJid, Element, FullJid, Stanza, StreamError, StreamErrorCondition};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Identifies one bound session, so a replaced session can't unbind its successor.
pub type SessionId = u64;

/// What the router hands a session's writer. Boxed, so the queue's pre-allocated slots cost
/// a pointer each in every idle session rather than a whole stanza.
#[derive(Debug)]
pub enum Outbound {
    Stanza(Box<Stanza>),
}

/// Lets the router end a session from outside (conflict, slow consumer, account disabled), and
/// keeps the memory budget of what is queued for it.
#[derive(Debug)]
pub struct SessionControl {
    token: CancellationToken,
    reason: Mutex<Option<StreamError>>,
    /// Estimated bytes (`parley_proto::writer::approximate_size`) of stanzas queued and not yet
    /// taken by the session.
    queued_bytes: AtomicUsize,
    byte_budget: usize,
}

impl Default for SessionControl {
    /// No byte budget (the queue's slot bound still applies).
    fn default() -> Self {
        Self::with_byte_budget(usize::MAX)
    }
}

impl SessionControl {
    /// A session whose queued stanzas may hold at most `byte_budget` bytes (estimated): a slot
    /// bound alone would let a slow reader hold thousands of maximum-size stanzas.
    pub fn with_byte_budget(byte_budget: usize) -> Self {
        Self {
            token: CancellationToken::new(),
            reason: Mutex::new(None),
            queued_bytes: AtomicUsize::new(0),
            byte_budget,
        }
    }

    /// Whether the session was asked to close.
    pub fn is_closed(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Counts `bytes` as queued; false, counting nothing, when that would pass the budget.
    pub fn reserve(&self, bytes: usize) -> bool {
        self.queued_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                queued
                    .checked_add(bytes)
                    .filter(|total| *total <= self.byte_budget)
            })
            .is_ok()
    }

    /// The session took `bytes` (as reserved) off its queue.
    pub fn release(&self, bytes: usize) {
        // Saturating: a stanza queued without a reservation (tests, other queues) never wraps it.
        let _ = self
            .queued_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                Some(queued.saturating_sub(bytes))
            });
    }

    /// Asks the session to close with this stream error; the first reason wins. True for that
    /// first call, so its cause is logged once, not for every stanza that finds it closing.
    pub fn close(&self, reason: StreamError) -> bool {
        let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        let first = slot.is_none();
        if first {
            *slot = Some(reason);
        }
        self.token.cancel();
        first
    }

    /// Resolves once `close` was called, with its reason.
    pub async fn closed(&self) -> StreamError {
        self.token.cancelled().await;
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| StreamError::new(StreamErrorCondition::UndefinedCondition))
    }
}

/// A resource's presence as the router tracks it.
#[derive(Debug, Clone, Default)]
pub struct PresenceState {
    /// Sent available presence and not since unavailable.
    pub available: bool,
    pub priority: i8,
    /// The last broadcast presence, answered to probes. Shared: resource listings are copied
    /// on every message routed to a bare JID, the presence element need not be.
    pub last: Option<std::sync::Arc<Element>>,
}

#[derive(Debug, Clone)]
pub struct ResourceInfo {
    pub jid: FullJid,
    pub id: SessionId,
    pub presence: PresenceState,
    /// Requested the roster (RFC 6121 §2.1.6 "interested resource").
    pub interested: bool,
}

struct Resource {
    info: ResourceInfo,
    queue: mpsc::Sender<Outbound>,
    control: Arc<SessionControl>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    #[error("the account already has the most resources allowed")]
    TooManyResources,
}

/// Bound sessions by bare JID. Critical sections are short and never await.
pub struct SessionTable {
    accounts: RwLock<HashMap<BareJid, Vec<Resource>>>,
    next_id: AtomicU64,
    max_resources: usize,
}

/// What a presence broadcast changed for its resource.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PresenceChange {
    /// Available now and not before: its initial presence (RFC 6121 §4.2), at any priority.
    pub became_available: bool,
    /// Able now, and not before, to receive messages sent to the bare JID (available with a
    /// non-negative priority, RFC 6121 §8.5.2.1.1): its initial presence or a raised priority.
    pub became_reachable: bool,
}

impl SessionTable {
    pub fn new(max_resources: usize) -> Self {
        Self {
            accounts: RwLock::default(),
            next_id: AtomicU64::new(1),
            max_resources,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<BareJid, Vec<Resource>>> {
        self.accounts.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<BareJid, Vec<Resource>>> {
        self.accounts.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Binds `jid`. A session already bound to the same full JID is told to close with
    /// `<conflict/>` and replaced (RFC 6120 §7.7.2.2); its last state is returned, since it ended
    /// here and not at its own unbind.
    pub(crate) fn bind(
        &self,
        jid: FullJid,
        queue: mpsc::Sender<Outbound>,
        control: Arc<SessionControl>,
    ) -> Result<(SessionId, Option<ResourceInfo>), BindError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut accounts = self.write();
        let resources = accounts.entry(jid.to_bare()).or_default();
        let existing = resources.iter().position(|r| r.info.jid == jid);
        if existing.is_none() && resources.len() >= self.max_resources {
            return Err(BindError::TooManyResources);
        }
        let bound = Resource {
            info: ResourceInfo {
                jid,
                id,
                presence: PresenceState::default(),
                interested: false,
            },
            queue,
            control,
        };
        let Some(index) = existing else {
            resources.push(bound);
            return Ok((id, None));
        };
        let replaced = std::mem::replace(&mut resources[index], bound);
        replaced.control.close(StreamError::with_text(
            StreamErrorCondition::Conflict,
            "Replaced by a new session for the same resource",
        ));
        Ok((id, Some(replaced.info)))
    }

    /// Removes the session `id` if it still owns `jid`; returns its last state.
    pub(crate) fn unbind(&self, jid: &FullJid, id: SessionId) -> Option<ResourceInfo> {
        let mut accounts = self.write();
        let bare = jid.to_bare();
        let resources = accounts.get_mut(&bare)?;
        let index = resources
            .iter()
            .position(|r| r.info.jid == *jid && r.info.id == id)?;
        let removed = resources.swap_remove(index);
        if resources.is_empty() {
            accounts.remove(&bare);
        }
        Some(removed.info)
    }

    /// Records a presence broadcast and says what it changed.
    pub(crate) fn set_presence(&self, jid: &FullJid, presence: PresenceState) -> PresenceChange {
        let mut accounts = self.write();
        let Some(resource) = accounts
            .get_mut(&jid.to_bare())
            .and_then(|resources| resources.iter_mut().find(|r| r.info.jid == *jid))
        else {
            return PresenceChange::default();
        };
        let reachable = |p: &PresenceState| p.available && p.priority >= 0;
        let change = PresenceChange {
            became_available: presence.available && !resource.info.presence.available,
            became_reachable: reachable(&presence) && !reachable(&resource.info.presence),
        };
        resource.info.presence = presence;
        change
    }

    /// Marks the resource as interested in roster pushes.
    pub fn set_interested(&self, jid: &FullJid) {
        let mut accounts = self.write();
        if let Some(resource) = accounts
            .get_mut(&jid.to_bare())
            .and_then(|resources| resources.iter_mut().find(|r| r.info.jid == *jid))
        {
            resource.info.interested = true;
        }
    }

    /// The resources bound for an account.
    pub fn resources(&self, account: &BareJid) -> Vec<ResourceInfo> {
        self.read()
            .get(account)
            .map(|rs| rs.iter().map(|r| r.info.clone()).collect())
            .unwrap_or_default()
    }

    pub fn resource(&self, jid: &FullJid) -> Option<ResourceInfo> {
        self.read()
            .get(&jid.to_bare())?
            .iter()
            .find(|r| r.info.jid == *jid)
            .map(|r| r.info.clone())
    }

    pub fn is_online(&self, account: &BareJid) -> bool {
        self.read().contains_key(account)
    }

    /// Number of bound sessions.
    pub fn count(&self) -> usize {
        self.read().values().map(Vec::len).sum()
    }

    /// Queues a stanza for one resource. A session whose queue is full is too slow to keep up:
    /// it is closed (`policy-violation`), never buffered without bound. Returns false when the
    /// stanza was not queued.
    pub fn send(&self, jid: &FullJid, stanza: Stanza) -> bool {
        self.deliver(jid, stanza).is_ok()
    }

    /// Like `send`, but a stanza that was not queued comes back, so the caller can fall back
    /// (offline storage, another resource) without having copied it beforehand.
    pub fn deliver(&self, jid: &FullJid, stanza: Stanza) -> Result<(), Box<Stanza>> {
        let accounts = self.read();
        let Some(resource) = accounts
            .get(&jid.to_bare())
            .and_then(|rs| rs.iter().find(|r| r.info.jid == *jid))
        else {
            return Err(Box::new(stanza));
        };
        let unqueued = |outbound: Outbound| match outbound {
            Outbound::Stanza(stanza) => stanza,
        };
        let control = &resource.control;
        let size = parley_proto::writer::approximate_size(stanza.element());
        if !control.reserve(size) {
            Self::close_slow(jid, control, "bytes");
            return Err(Box::new(stanza));
        }
        match resource.queue.try_send(Outbound::Stanza(Box::new(stanza))) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(outbound)) => {
                control.release(size);
                Self::close_slow(jid, control, "stanzas");
                Err(unqueued(outbound))
            }
            Err(mpsc::error::TrySendError::Closed(outbound)) => {
                control.release(size);
                Err(unqueued(outbound))
            }
        }
    }

    /// A session that lets its queue fill up is too slow to keep up: closed, never buffered
    /// without bound; logged once.
    fn close_slow(jid: &FullJid, control: &SessionControl, limit: &'static str) {
        let first = control.close(StreamError::with_text(
            StreamErrorCondition::PolicyViolation,
            "Too many stanzas waiting to be read",
        ));
        if first {
            tracing::warn!(%jid, limit, "outbound queue full; closing the session");
        }
    }

    /// Like `send`, but waits up to `patience` for queue space instead of closing the session.
    pub async fn send_waiting(&self, jid: &FullJid, stanza: Stanza, patience: std::time::Duration) -> bool {
        let (queue, control) = {
            let accounts = self.read();
            match accounts
                .get(&jid.to_bare())
                .and_then(|rs| rs.iter().find(|r| r.info.jid == *jid))
            {
                Some(resource) => (resource.queue.clone(), resource.control.clone()),
                None => return false,
            }
        };
        // A backlog stops at the byte budget (its sender keeps the rest) rather than waiting.
        let size = parley_proto::writer::approximate_size(stanza.element());
        if !control.reserve(size) {
            return false;
        }
        let sent = matches!(
            tokio::time::timeout(patience, queue.send(Outbound::Stanza(Box::new(stanza)))).await,
            Ok(Ok(()))
        );
        if !sent {
            control.release(size);
        }
        sent
    }

    /// Closes every session of an account with `reason`.
    pub fn close_account(&self, account: &BareJid, reason: &StreamError) -> usize {
        let accounts = self.read();
        let resources = accounts.get(account).map(Vec::as_slice).unwrap_or_default();
        for resource in resources {
            resource.control.close(reason.clone());
        }
        resources.len()
    }

    /// Closes every session (shutdown).
    pub fn close_all(&self, reason: &StreamError) {
        for resource in self.read().values().flatten() {
            resource.control.close(reason.clone());
        }
    }
}

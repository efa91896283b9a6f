//! Applies shared-group changes from the directory to online users: roster pushes (RFC 6121
//! §2.1.6) of contacts that appeared, changed or left, and the presence that comes with them
//! (an appearing contact's current presence, a leaving one's unavailable), without any
//! subscription handshake.

use crate::item::removed_item;
use crate::presence::{send_current_presence, send_unavailable_from_all};
use crate::{ContactsChange, Core, SharedContact};
use parley_proto::{BareJid, Jid};
use parley_router::Router;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Starts the task that follows the shared-group provider's changes, once per module.
pub(crate) fn start_once(core: &Arc<Core>, router: &Router) {
    if core.watching_shared.swap(true, Ordering::AcqRel) {
        return;
    }
    let core = core.clone();
    let router = router.clone();
    tokio::spawn(async move {
        loop {
            let watcher = router.clone();
            let online = move |account: &parley_proto::BareJid| watcher.sessions().is_online(account);
            let Some(changes) = core.shared.next_change(&online).await else {
                return;
            };
            for change in changes {
                core.apply_shared_change(&router, change).await;
            }
        }
    });
}

/// Contacts by JID: a change of a large group touches thousands of rosters of thousands of
/// contacts each, so lookups must not be linear.
fn by_jid(contacts: &[SharedContact]) -> HashMap<&BareJid, &SharedContact> {
    contacts.iter().map(|contact| (&contact.jid, contact)).collect()
}

impl Core {
    /// Pushes what changed in `change.account`'s roster and sends the presence that follows.
    pub(crate) async fn apply_shared_change(&self, router: &Router, change: ContactsChange) {
        let ContactsChange {
            account,
            before,
            after,
        } = change;
        let view = match self.view(&account).await {
            Ok(view) => view,
            Err(err) => {
                crate::iq::internal(&account, &err);
                return;
            }
        };
        let account_jid = Jid::from(account.clone());
        let (old_contacts, new_contacts) = (by_jid(&before), by_jid(&after));
        let shown: HashMap<&BareJid, _> = view.items.iter().map(|item| (&item.jid, item)).collect();
        let mut touched: Vec<&SharedContact> = after.iter().collect();
        touched.extend(before.iter().filter(|old| !new_contacts.contains_key(&old.jid)));
        for contact in touched {
            let old = old_contacts.get(&contact.jid).copied();
            let new = new_contacts.get(&contact.jid).copied();
            if old == new {
                continue;
            }
            // What the roster now shows for this contact: merged with a personal item, the
            // personal item alone, or nothing.
            let item = shown
                .get(&contact.jid)
                .map(|item| (*item).clone())
                .unwrap_or_else(|| removed_item(&contact.jid));
            self.push_with_ver(router, &account, item, view.ver.clone());
            match (old, new) {
                (None, Some(_)) => send_current_presence(router, &contact.jid, &account_jid).await,
                (Some(_), None) => {
                    // Still subscribed personally: the contact's presence keeps flowing.
                    let subscribed = self
                        .store
                        .entry(&account, &contact.jid)
                        .await
                        .is_ok_and(|entry| entry.item.is_some_and(|item| item.to));
                    if !subscribed {
                        send_unavailable_from_all(router, &contact.jid, &account_jid).await;
                    }
                }
                _ => {}
            }
        }
    }
}

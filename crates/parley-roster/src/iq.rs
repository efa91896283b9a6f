//! `jabber:iq:roster`: get, set and remove (RFC 6121 §2.1–§2.6).

use crate::item::{removed_item, validate_update};
use crate::presence::send_unavailable_from_all;
use crate::store::ChangeError;
use crate::{Core, RosterError};
use async_trait::async_trait;
use parley_proto::{BareJid, Element, Jid, Stanza, StanzaError, StanzaErrorCondition, StanzaKind};
use parley_router::{IqContext, IqHandler, IqResult, Router};
use std::sync::Arc;
use xmpp_parsers::roster::{Roster, Subscription};

pub(crate) struct RosterIq(pub Arc<Core>);

fn error(condition: StanzaErrorCondition, text: &str) -> StanzaError {
    StanzaError::with_text(condition, text)
}

/// A store failure is ours: logged with context, answered without detail.
pub(crate) fn internal(owner: &BareJid, err: &RosterError) -> StanzaError {
    tracing::error!(%owner, error = %err, "roster operation failed");
    StanzaError::new(StanzaErrorCondition::InternalServerError)
}

fn change_error(owner: &BareJid, err: ChangeError) -> StanzaError {
    match err {
        ChangeError::Refused(refused) => refused,
        ChangeError::Failed(failed) => internal(owner, &failed),
    }
}

#[async_trait]
impl IqHandler for RosterIq {
    async fn handle(&self, context: IqContext<'_>, request: &Stanza) -> IqResult {
        // §2.1.5 / §2.3.3: a roster belongs to its account alone.
        if !context.is_own_account() {
            return Err(error(
                StanzaErrorCondition::Forbidden,
                "Only the account itself may use its roster",
            ));
        }
        let payload = request
            .iq_payload()
            .cloned()
            .ok_or_else(|| error(StanzaErrorCondition::BadRequest, "Missing roster query"))?;
        let query = Roster::try_from(payload)
            .map_err(|_| error(StanzaErrorCondition::BadRequest, "Malformed roster query"))?;
        let owner = context.target.clone();
        match request.stanza_type() {
            Some("get") => self.get(context.router, context.from, &owner, query).await,
            Some("set") => self.set(context.router, &owner, query).await,
            _ => Err(error(StanzaErrorCondition::BadRequest, "Unexpected IQ type")),
        }
    }
}

impl RosterIq {
    async fn get(&self, router: &Router, from: &Jid, owner: &BareJid, query: Roster) -> IqResult {
        if let Ok(full) = from.try_as_full() {
            router.sessions().set_interested(full);
        }
        let view = self.0.view(owner).await.map_err(|e| internal(owner, &e))?;
        // §2.6.3: the client's copy is current; pushes will bring later changes.
        if query.ver.as_deref() == Some(view.ver.as_str()) {
            return Ok(None);
        }
        Ok(Some(Element::from(Roster {
            ver: Some(view.ver),
            items: view.items,
        })))
    }

    async fn set(&self, router: &Router, owner: &BareJid, query: Roster) -> IqResult {
        // §2.3.3: exactly one item per set.
        let [item] = <[_; 1]>::try_from(query.items).map_err(|_| {
            error(
                StanzaErrorCondition::BadRequest,
                "A roster set carries exactly one item",
            )
        })?;
        let contact = item.jid.clone();
        if item.subscription == Subscription::Remove {
            return self.remove(router, owner, &contact).await;
        }
        let update = validate_update(&item)?;
        let ((), committed) = self
            .0
            .store
            .update(owner, &contact, |entry| {
                let mut stored = entry.item.clone().unwrap_or_default();
                stored.name = update.name.clone();
                stored.groups = update.groups.clone();
                entry.item = Some(stored);
                Ok(())
            })
            .await
            .map_err(|e| change_error(owner, e))?;
        if let (true, Some(stored)) = (committed.item_changed, &committed.item) {
            self.0
                .push(router, owner, stored.to_wire(&contact), committed.version);
        }
        Ok(None)
    }

    /// §2.5: removes the item and cancels both subscriptions and pending requests with it.
    async fn remove(&self, router: &Router, owner: &BareJid, contact: &BareJid) -> IqResult {
        let ((), committed) = self
            .0
            .store
            .update(owner, contact, |entry| {
                if entry.item.is_none() {
                    return Err(error(StanzaErrorCondition::ItemNotFound, "No such roster item"));
                }
                entry.item = None;
                entry.pending = None;
                Ok(())
            })
            .await
            .map_err(|e| change_error(owner, e))?;
        self.0
            .push(router, owner, removed_item(contact), committed.version);

        let before = committed.before.item.unwrap_or_default();
        let send = |kind: &str| {
            Stanza::new(StanzaKind::Presence)
                .with_type(kind)
                .with_from(owner.clone())
                .with_to(contact.clone())
        };
        // §2.5.2: the contact learns that the user no longer subscribes ...
        if before.to || before.ask {
            router.route(send("unsubscribe")).await;
        }
        // ... and no longer lets them subscribe, so they stop seeing the user's presence.
        if before.from || committed.before.pending.is_some() {
            if before.from {
                send_unavailable_from_all(router, owner, &Jid::from(contact.clone())).await;
            }
            router.route(send("unsubscribed")).await;
        }
        Ok(None)
    }
}

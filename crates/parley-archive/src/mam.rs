//! Message Archive Management for users (XEP-0313 `urn:xmpp:mam:2`) over the per-user copies the
//! [`crate::ArchiveStage`] keeps in `Space::Mam`, with Result Set Management paging (XEP-0059)
//! and data-form filters (XEP-0004).
//!
//! Preferences (`<prefs/>`) limit what a user *sees* in their own queries; they are applied at
//! query time and never change what is stored, so compliance keeps everything. They are stored
//! as JSON in the key-value side of `Space::Mam` (owner = bare JID, key [`PREFS_KEY`]).
//!
//! Ids are the storage's archive ids, the same as the `<stanza-id/>` stamped on delivery.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parley_proto::stanza::set_attr;
use parley_proto::{BareJid, Element, Jid, Stanza, StanzaError, StanzaErrorCondition, StanzaKind};
use parley_router::{IqContext, IqHandler, IqResult, IqRoute, Module, Registry, Scope};
use parley_storage::{
    Archive, ArchiveQuery, ArchiveRecord, KeyValue, MAX_QUERY_LIMIT, Space, StorageError, WriteBatch,
};
use serde::{Deserialize, Serialize};

use crate::NS_SID;
use crate::entry::{Body, CHAIN_OWNER, Entry, parse_entry_reference, seq_key};

pub const NS_MAM: &str = "urn:xmpp:mam:2";
/// `before-id`/`after-id` form fields (XEP-0313 §5.1.2).
pub const NS_MAM_EXTENDED: &str = "urn:xmpp:mam:2#extended";
pub const NS_RSM: &str = "http://jabber.org/protocol/rsm";
pub const NS_DATA: &str = "jabber:x:data";
pub const NS_FORWARD: &str = "urn:xmpp:forward:0";
pub const NS_DELAY: &str = "urn:xmpp:delay";
/// Key of a user's preferences in the key-value side of `Space::Mam`.
pub const PREFS_KEY: &str = "prefs";
/// Longest query id, id or JID value accepted in a request, in bytes.
const MAX_VALUE_LEN: usize = 3071;
/// XEP-0122 data form validation, which marks the `ids` field as open to any value.
const NS_DATA_VALIDATE: &str = "http://jabber.org/protocol/xdata-validate";
/// The most archive ids one query may name in its `ids` field.
const MAX_NAMED_IDS: usize = 100;
/// Most records read while counting or indexing past a preference filter; beyond this the
/// optional RSM `<count/>`/`index` is left out rather than reading the whole archive.
const SCAN_BUDGET: usize = 100_000;
/// How long a result message may wait for room in the requester's queue.
const SEND_PATIENCE: Duration = Duration::from_secs(5);

/// Options of the MAM module.
#[derive(Debug, Clone)]
pub struct MamOptions {
    /// Page size when the client gives no `<max/>`.
    pub default_page: usize,
    /// Largest page served; larger `<max/>` values are clamped (RSM §2.1 allows it).
    pub max_page: usize,
    /// Most JIDs in the `always` plus `never` lists of the preferences.
    pub max_pref_jids: usize,
}

impl Default for MamOptions {
    fn default() -> Self {
        Self {
            default_page: 50,
            max_page: 250,
            max_pref_jids: 256,
        }
    }
}

/// The account's roster contacts, for `default='roster'` preferences. The archive crate cannot
/// see the roster store, so the server may supply this.
#[async_trait]
pub trait RosterContacts: Send + Sync + 'static {
    /// Bare JIDs of the owner's roster items.
    async fn contacts(&self, owner: &BareJid) -> Vec<String>;
}

/// The `default` of the preferences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrefsDefault {
    #[default]
    Always,
    Never,
    Roster,
}

impl PrefsDefault {
    fn name(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::Never => "never",
            Self::Roster => "roster",
        }
    }

    fn parse(value: &str) -> Option<Self> {
        match value {
            "always" => Some(Self::Always),
            "never" => Some(Self::Never),
            "roster" => Some(Self::Roster),
            _ => None,
        }
    }
}

/// A user's MAM preferences (XEP-0313 §6).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MamPrefs {
    pub default: PrefsDefault,
    /// Bare JIDs always shown.
    pub always: BTreeSet<String>,
    /// Bare JIDs never shown; wins over `always` when a JID is in both.
    pub never: BTreeSet<String>,
}

/// Which `with` values a query may show.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Visibility {
    All,
    Only(BTreeSet<String>),
    AllExcept(BTreeSet<String>),
}

impl Visibility {
    fn shows(&self, with: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(set) => set.contains(with),
            Self::AllExcept(set) => !set.contains(with),
        }
    }
}

/// The MAM module: register it with the router.
pub struct MamModule {
    archive: Arc<dyn Archive>,
    kv: Arc<dyn KeyValue>,
    options: MamOptions,
    roster: Option<Arc<dyn RosterContacts>>,
}

struct Inner {
    archive: Arc<dyn Archive>,
    kv: Arc<dyn KeyValue>,
    options: MamOptions,
    roster: Option<Arc<dyn RosterContacts>>,
}

impl std::fmt::Debug for MamModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MamModule")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl MamModule {
    pub fn new(archive: Arc<dyn Archive>, kv: Arc<dyn KeyValue>, options: MamOptions) -> Self {
        Self {
            archive,
            kv,
            options,
            roster: None,
        }
    }

    /// Uses `roster` for `default='roster'` preferences. Without it, `roster` shows everyone
    /// not in the `never` list.
    pub fn with_roster(mut self, roster: Arc<dyn RosterContacts>) -> Self {
        self.roster = Some(roster);
        self
    }
}

#[derive(Clone, Copy)]
enum Request {
    Query,
    Prefs,
    Metadata,
}

impl Module for MamModule {
    fn name(&self) -> &'static str {
        "mam"
    }

    fn register(self: Arc<Self>, registry: &mut Registry) {
        let inner = Arc::new(Inner {
            archive: self.archive.clone(),
            kv: self.kv.clone(),
            options: self.options.clone(),
            roster: self.roster.clone(),
        });
        for (name, request) in [
            ("query", Request::Query),
            ("prefs", Request::Prefs),
            ("metadata", Request::Metadata),
        ] {
            registry.iq(
                IqRoute::account(NS_MAM, name),
                Arc::new(MamHandler {
                    inner: inner.clone(),
                    request,
                }),
            );
        }
        registry.disco_feature(Scope::Account, NS_MAM);
        registry.disco_feature(Scope::Account, NS_MAM_EXTENDED);
        registry.disco_feature(Scope::Account, NS_SID);
    }
}

struct MamHandler {
    inner: Arc<Inner>,
    request: Request,
}

fn error(condition: StanzaErrorCondition, text: &str) -> StanzaError {
    StanzaError::with_text(condition, text)
}

fn internal(error: &StorageError) -> StanzaError {
    tracing::error!(module = "mam", %error, "MAM request failed");
    StanzaError::new(StanzaErrorCondition::InternalServerError)
}

#[async_trait]
impl IqHandler for MamHandler {
    async fn handle(&self, context: IqContext<'_>, request: &Stanza) -> IqResult {
        if !context.is_own_account() {
            return Err(error(
                StanzaErrorCondition::Forbidden,
                "Only the account's owner may use its archive",
            ));
        }
        let owner = context.target.clone();
        let payload = request
            .iq_payload()
            .ok_or_else(|| error(StanzaErrorCondition::BadRequest, "No payload"))?;
        let is_set = request.stanza_type() == Some("set");
        match (self.request, is_set) {
            (Request::Query, false) => Ok(Some(query_form())),
            (Request::Query, true) => self.inner.query(&context, &owner, payload).await,
            (Request::Prefs, false) => {
                let prefs = self.inner.prefs(&owner).await.map_err(|e| internal(&e))?;
                Ok(Some(prefs_element(&prefs)))
            }
            (Request::Prefs, true) => {
                let prefs = parse_prefs(payload, self.inner.options.max_pref_jids)?;
                self.inner
                    .store_prefs(&owner, &prefs)
                    .await
                    .map_err(|e| internal(&e))?;
                Ok(Some(prefs_element(&prefs)))
            }
            (Request::Metadata, false) => self.inner.metadata(&owner).await,
            (Request::Metadata, true) => Err(error(
                StanzaErrorCondition::BadRequest,
                "Metadata is only defined for type='get'",
            )),
        }
    }
}

/// A parsed `<query/>`: the result set's filters plus the RSM window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct MamQuery {
    query_id: Option<String>,
    /// The `with` field's bare JID: what the index knows of the other party.
    with: Option<String>,
    /// The `with` field when it names a full JID: only messages to or from exactly that JID
    /// match (XEP-0313 §4.1.1), which the records are checked against one by one.
    with_exact: Option<Jid>,
    start: Option<i64>,
    end: Option<i64>,
    /// The `after-id`/`before-id` form fields: part of the result set's definition.
    after_id: Option<u64>,
    before_id: Option<u64>,
    /// RSM `<max/>`, clamped.
    max: usize,
    /// RSM `<after/>`.
    rsm_after: Option<u64>,
    /// RSM `<before/>`: `Some(None)` is the empty element, the last page.
    rsm_before: Option<Option<u64>>,
    /// The `ids` form field (XEP-0313 §4.1.3): the result set is at most these messages.
    ids: Vec<u64>,
    /// `<flip-page/>` (XEP-0313 §4.2.4): the page is sent newest first; which messages it holds
    /// does not change.
    flip_page: bool,
}

impl MamQuery {
    fn backwards(&self) -> bool {
        self.rsm_before.is_some()
    }

    /// The storage filters of the result set (no RSM window).
    fn result_set(&self) -> ArchiveQuery {
        ArchiveQuery {
            start: self.start,
            end: self.end,
            with: self.with.clone(),
            after_id: self.after_id,
            before_id: self.before_id,
            limit: 0,
            reverse: false,
        }
    }

    /// The result set narrowed to the RSM window.
    fn window(&self) -> ArchiveQuery {
        let mut query = self.result_set();
        if let Some(after) = self.rsm_after {
            query.after_id = Some(query.after_id.map_or(after, |id| id.max(after)));
        }
        if let Some(Some(before)) = self.rsm_before {
            query.before_id = Some(query.before_id.map_or(before, |id| id.min(before)));
        }
        query.limit = self.max;
        query.reverse = self.backwards();
        query
    }

    /// The ids the client named, which must exist in the archive.
    fn named_ids(&self) -> impl Iterator<Item = u64> {
        [
            self.after_id,
            self.before_id,
            self.rsm_after,
            self.rsm_before.flatten(),
        ]
        .into_iter()
        .flatten()
        .chain(self.ids.iter().copied())
    }

    /// The RSM window over records fetched by id (ascending), and whether it holds all of them.
    fn window_over(&self, mut records: Vec<ArchiveRecord>) -> (Vec<ArchiveRecord>, bool) {
        records.retain(|record| {
            self.rsm_after.is_none_or(|after| record.id > after)
                && self.rsm_before.flatten().is_none_or(|before| record.id < before)
        });
        let complete = records.len() <= self.max;
        (take_window(records, self.max, self.backwards()), complete)
    }
}

fn bounded_text(element: &Element, what: &str) -> Result<String, StanzaError> {
    let text = element.text();
    if text.len() > MAX_VALUE_LEN {
        return Err(error(
            StanzaErrorCondition::NotAcceptable,
            &format!("The {what} is too long"),
        ));
    }
    Ok(text.trim().to_owned())
}

/// A JID from a form or a preference list; `jid-malformed` if it is none.
fn parse_jid(text: &str) -> Result<Jid, StanzaError> {
    Jid::new(text).map_err(|_| error(StanzaErrorCondition::JidMalformed, "Not a valid JID"))
}

/// A JID as its bare form (the archive keys on bare JIDs).
fn parse_bare(text: &str) -> Result<String, StanzaError> {
    Ok(parse_jid(text)?.to_bare().to_string())
}

/// An archive id; anything else names no record, hence `item-not-found` (XEP-0313 §4.1.4).
fn parse_id(text: &str) -> Result<u64, StanzaError> {
    text.parse()
        .map_err(|_| error(StanzaErrorCondition::ItemNotFound, "No such archive id"))
}

/// An XEP-0082 date-time in microseconds since the epoch.
fn parse_datetime(text: &str) -> Result<i64, StanzaError> {
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| error(StanzaErrorCondition::NotAcceptable, "Not an XEP-0082 date-time"))?;
    i64::try_from(at.unix_timestamp_nanos() / 1000).map_err(|_| {
        error(
            StanzaErrorCondition::NotAcceptable,
            "The date-time is out of range",
        )
    })
}

fn parse_query(payload: &Element, options: &MamOptions) -> Result<MamQuery, StanzaError> {
    let mut query = MamQuery {
        max: options.default_page.min(options.max_page),
        ..MamQuery::default()
    };
    if payload.attr("node").is_some() {
        return Err(error(
            StanzaErrorCondition::ItemNotFound,
            "This archive has no nodes",
        ));
    }
    if let Some(id) = payload.attr("queryid") {
        if id.len() > MAX_VALUE_LEN {
            return Err(error(
                StanzaErrorCondition::NotAcceptable,
                "The queryid is too long",
            ));
        }
        query.query_id = Some(id.to_owned());
    }
    if let Some(form) = payload.get_child("x", NS_DATA) {
        parse_form(form, &mut query)?;
    }
    query.flip_page = payload.get_child("flip-page", NS_MAM).is_some();
    if let Some(set) = payload.get_child("set", NS_RSM) {
        parse_rsm(set, &mut query, options)?;
    }
    if let (Some(start), Some(end)) = (query.start, query.end)
        && start > end
    {
        return Err(error(
            StanzaErrorCondition::NotAcceptable,
            "The time range ends before it starts",
        ));
    }
    Ok(query)
}

fn parse_form(form: &Element, query: &mut MamQuery) -> Result<(), StanzaError> {
    if !matches!(form.attr("type"), Some("submit" | "form")) {
        return Err(error(
            StanzaErrorCondition::BadRequest,
            "The form must be of type 'submit'",
        ));
    }
    for field in form.children().filter(|child| child.is("field", NS_DATA)) {
        let var = field.attr("var").unwrap_or("");
        if var == "ids" {
            // A list-multi: one archive id per <value/>.
            for value in field.children().filter(|child| child.is("value", NS_DATA)) {
                if query.ids.len() == MAX_NAMED_IDS {
                    return Err(error(
                        StanzaErrorCondition::PolicyViolation,
                        &format!("At most {MAX_NAMED_IDS} ids per query"),
                    ));
                }
                query.ids.push(parse_id(&bounded_text(value, var)?)?);
            }
            continue;
        }
        let value = match field.get_child("value", NS_DATA) {
            Some(value) => bounded_text(value, var)?,
            None => continue,
        };
        if value.is_empty() && var != "FORM_TYPE" {
            continue;
        }
        match var {
            "FORM_TYPE" => {
                if value != NS_MAM {
                    return Err(error(
                        StanzaErrorCondition::BadRequest,
                        "FORM_TYPE must be urn:xmpp:mam:2",
                    ));
                }
            }
            "with" => {
                let jid = parse_jid(&value)?;
                query.with = Some(jid.to_bare().to_string());
                query.with_exact = jid.resource().is_some().then_some(jid);
            }
            "start" => query.start = Some(parse_datetime(&value)?),
            "end" => query.end = Some(parse_datetime(&value)?),
            "after-id" => query.after_id = Some(parse_id(&value)?),
            "before-id" => query.before_id = Some(parse_id(&value)?),
            _ => {
                // XEP-0313 §4.1.5: "If a client includes a form field that the server does not
                // recognise, the server MUST respond with a 'feature-not-implemented' error."
                return Err(error(
                    StanzaErrorCondition::FeatureNotImplemented,
                    &format!("Unsupported field {var:?}"),
                ));
            }
        }
    }
    Ok(())
}

fn parse_rsm(set: &Element, query: &mut MamQuery, options: &MamOptions) -> Result<(), StanzaError> {
    if let Some(max) = set.get_child("max", NS_RSM) {
        let text = bounded_text(max, "max")?;
        let max: usize = text
            .parse()
            .map_err(|_| error(StanzaErrorCondition::BadRequest, "<max/> is not a number"))?;
        query.max = max.min(options.max_page);
    }
    if let Some(after) = set.get_child("after", NS_RSM) {
        query.rsm_after = Some(parse_id(&bounded_text(after, "after")?)?);
    }
    if let Some(before) = set.get_child("before", NS_RSM) {
        let text = bounded_text(before, "before")?;
        query.rsm_before = Some(if text.is_empty() {
            None
        } else {
            Some(parse_id(&text)?)
        });
    }
    if set.get_child("index", NS_RSM).is_some() {
        return Err(error(
            StanzaErrorCondition::FeatureNotImplemented,
            "Paging by index is not supported; use after/before",
        ));
    }
    Ok(())
}

fn parse_prefs(payload: &Element, max_jids: usize) -> Result<MamPrefs, StanzaError> {
    let default = payload
        .attr("default")
        .and_then(PrefsDefault::parse)
        .ok_or_else(|| {
            error(
                StanzaErrorCondition::BadRequest,
                "default must be always, never or roster",
            )
        })?;
    let mut prefs = MamPrefs {
        default,
        ..MamPrefs::default()
    };
    let mut total = 0;
    for (list_name, list) in [("always", &mut prefs.always), ("never", &mut prefs.never)] {
        let Some(element) = payload.get_child(list_name, NS_MAM) else {
            continue;
        };
        for jid in element.children().filter(|child| child.is("jid", NS_MAM)) {
            total += 1;
            if total > max_jids {
                return Err(error(
                    StanzaErrorCondition::PolicyViolation,
                    &format!("At most {max_jids} JIDs in the preferences"),
                ));
            }
            list.insert(parse_bare(&bounded_text(jid, "jid")?)?);
        }
    }
    Ok(prefs)
}

fn text_element(name: &str, ns: &str, text: &str) -> Element {
    let mut element = Element::bare(name, ns);
    element.append_text(text);
    element
}

fn prefs_element(prefs: &MamPrefs) -> Element {
    let mut element = Element::bare("prefs", NS_MAM);
    set_attr(&mut element, "default", Some(prefs.default.name()));
    for (name, list) in [("always", &prefs.always), ("never", &prefs.never)] {
        let mut child = Element::bare(name, NS_MAM);
        for jid in list {
            child.append_child(text_element("jid", NS_MAM, jid));
        }
        element.append_child(child);
    }
    element
}

fn form_field(var: &str, field_type: &str, value: Option<&str>) -> Element {
    let mut field = Element::bare("field", NS_DATA);
    set_attr(&mut field, "var", Some(var));
    set_attr(&mut field, "type", Some(field_type));
    if let Some(value) = value {
        field.append_child(text_element("value", NS_DATA, value));
    }
    field
}

/// The fields a query may use (XEP-0313 §4.1.1).
fn query_form() -> Element {
    let mut form = Element::bare("x", NS_DATA);
    set_attr(&mut form, "type", Some("form"));
    form.append_child(form_field("FORM_TYPE", "hidden", Some(NS_MAM)));
    for (var, field_type) in [
        ("with", "jid-single"),
        ("start", "text-single"),
        ("end", "text-single"),
        ("after-id", "text-single"),
        ("before-id", "text-single"),
    ] {
        form.append_child(form_field(var, field_type, None));
    }
    // XEP-0313 §4.1.5: the ids are open to any value, never listed.
    let mut ids = form_field("ids", "list-multi", None);
    let mut validate = Element::bare("validate", NS_DATA_VALIDATE);
    set_attr(&mut validate, "datatype", Some("xs:string"));
    validate.append_child(Element::bare("open", NS_DATA_VALIDATE));
    ids.append_child(validate);
    form.append_child(ids);
    let mut query = Element::bare("query", NS_MAM);
    query.append_child(form);
    query
}

/// Where a MAM copy's message is kept.
enum Stored {
    /// In chain entry `seq`: its stored bytes, None when the entry was purged.
    Entry { seq: u64, bytes: Option<Vec<u8>> },
    /// In the copy's own payload (copies written before they referred to the chain).
    Inline,
}

/// One page of the result set.
struct Page {
    records: Vec<ArchiveRecord>,
    complete: bool,
}

impl Inner {
    async fn prefs(&self, owner: &BareJid) -> Result<MamPrefs, StorageError> {
        match self.kv.get(Space::Mam, owner.as_str(), PREFS_KEY).await? {
            // Unreadable preferences fall back to showing everything: they only ever hide.
            Some(bytes) => Ok(serde_json::from_slice(&bytes).unwrap_or_else(|error| {
                tracing::warn!(%owner, %error, "unreadable MAM preferences; using the defaults");
                MamPrefs::default()
            })),
            None => Ok(MamPrefs::default()),
        }
    }

    async fn store_prefs(&self, owner: &BareJid, prefs: &MamPrefs) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(prefs).unwrap_or_default();
        let mut batch = WriteBatch::new();
        batch.put(Space::Mam, owner.as_str(), PREFS_KEY, bytes);
        self.kv.apply(batch).await
    }

    async fn visibility(&self, owner: &BareJid) -> Result<Visibility, StorageError> {
        let prefs = self.prefs(owner).await?;
        Ok(match prefs.default {
            PrefsDefault::Always => {
                if prefs.never.is_empty() {
                    Visibility::All
                } else {
                    Visibility::AllExcept(prefs.never)
                }
            }
            PrefsDefault::Never => Visibility::Only(prefs.always.difference(&prefs.never).cloned().collect()),
            PrefsDefault::Roster => match &self.roster {
                Some(roster) => {
                    let mut shown: BTreeSet<String> = roster
                        .contacts(owner)
                        .await
                        .into_iter()
                        .filter_map(|jid| parse_bare(&jid).ok())
                        .collect();
                    shown.extend(prefs.always);
                    Visibility::Only(shown.difference(&prefs.never).cloned().collect())
                }
                None if prefs.never.is_empty() => Visibility::All,
                None => Visibility::AllExcept(prefs.never),
            },
        })
    }

    /// Reads one page of `query` (limit and direction included) that passes `visibility` and,
    /// if given, is to or from exactly the full JID `exact`.
    async fn page(
        &self,
        owner: &str,
        query: &ArchiveQuery,
        visibility: &Visibility,
        exact: Option<&Jid>,
    ) -> Result<Page, StorageError> {
        let limit = query.limit;
        if limit == 0 {
            return Ok(Page {
                records: Vec::new(),
                complete: false,
            });
        }
        if exact.is_some() {
            let (records, exhausted) = self.scan(owner, query, visibility, exact, limit + 1).await?;
            let complete = exhausted && records.len() <= limit;
            return Ok(Page {
                records: take_window(records, limit, query.reverse),
                complete,
            });
        }
        match visibility {
            Visibility::All => {
                let page = self.archive.query(Space::Mam, owner, query).await?;
                Ok(Page {
                    records: page.records,
                    complete: page.complete,
                })
            }
            Visibility::Only(shown) => {
                // One query per shown party, merged: each holds at most `limit`.
                let mut merged = Vec::new();
                let mut all_complete = true;
                for with in shown {
                    let mut one = query.clone();
                    one.with = Some(with.clone());
                    let page = self.archive.query(Space::Mam, owner, &one).await?;
                    all_complete &= page.complete;
                    merged.extend(page.records);
                }
                merged.sort_by_key(|record| record.id);
                let complete = all_complete && merged.len() <= limit;
                Ok(Page {
                    records: take_window(merged, limit, query.reverse),
                    complete,
                })
            }
            Visibility::AllExcept(_) => {
                let (records, exhausted) = self.scan(owner, query, visibility, None, limit + 1).await?;
                let complete = exhausted && records.len() <= limit;
                Ok(Page {
                    records: take_window(records, limit, query.reverse),
                    complete,
                })
            }
        }
    }

    /// Collects up to `wanted` visible records (to or from `exact`, if given) in the query's
    /// direction, reading at most [`SCAN_BUDGET`] records (and, with `exact`, their entries).
    /// Returns them in ascending order, and whether the scan reached the end of the matches.
    async fn scan(
        &self,
        owner: &str,
        query: &ArchiveQuery,
        visibility: &Visibility,
        exact: Option<&Jid>,
        wanted: usize,
    ) -> Result<(Vec<ArchiveRecord>, bool), StorageError> {
        let mut cursor = query.clone();
        cursor.limit = MAX_QUERY_LIMIT.min(wanted.max(64));
        let mut found = Vec::new();
        let mut read = 0;
        loop {
            let page = self.archive.query(Space::Mam, owner, &cursor).await?;
            read += page.records.len();
            let edge = if cursor.reverse {
                page.records.first().map(|record| record.id)
            } else {
                page.records.last().map(|record| record.id)
            };
            let mut shown: Vec<ArchiveRecord> = page
                .records
                .into_iter()
                .filter(|record| visibility.shows(&record.with))
                .collect();
            if let Some(exact) = exact {
                shown = self.to_or_from(shown, exact).await?;
            }
            if cursor.reverse {
                shown.reverse();
            }
            found.extend(shown);
            let next = edge.filter(|_| !page.complete);
            let Some(edge) = next.filter(|_| found.len() < wanted && read < SCAN_BUDGET) else {
                found.truncate(wanted);
                if cursor.reverse {
                    found.reverse();
                }
                return Ok((found, next.is_none()));
            };
            if cursor.reverse {
                cursor.before_id = Some(edge);
            } else {
                cursor.after_id = Some(edge);
            }
        }
    }

    /// How many visible records match `query` (its id bounds included); None when finding out
    /// would read more than [`SCAN_BUDGET`] records.
    async fn count(
        &self,
        owner: &str,
        query: &ArchiveQuery,
        visibility: &Visibility,
        exact: Option<&Jid>,
    ) -> Result<Option<u64>, StorageError> {
        if query.after_id.is_some() || query.before_id.is_some() || exact.is_some() {
            // Storage counts ignore id bounds and know no resources: count by reading.
            let mut forward = query.clone();
            forward.reverse = false;
            let (records, exhausted) = self.scan(owner, &forward, visibility, exact, usize::MAX).await?;
            return Ok(exhausted.then_some(records.len() as u64));
        }
        let count_with = |with: &str| {
            let mut one = query.clone();
            one.with = Some(with.to_owned());
            one
        };
        Ok(Some(match visibility {
            Visibility::All => self.archive.count(Space::Mam, owner, query).await?,
            Visibility::Only(shown) => {
                let mut total = 0;
                for with in shown {
                    total += self.archive.count(Space::Mam, owner, &count_with(with)).await?;
                }
                total
            }
            Visibility::AllExcept(hidden) => {
                let mut total = self.archive.count(Space::Mam, owner, query).await?;
                for with in hidden {
                    let hidden_count = self.archive.count(Space::Mam, owner, &count_with(with)).await?;
                    total = total.saturating_sub(hidden_count);
                }
                total
            }
        }))
    }

    /// Where each record's message is kept: the chain entry its payload refers to (all of them
    /// read at once), or the stanza the payload carries itself.
    async fn stored_messages(&self, records: &[ArchiveRecord]) -> Result<Vec<Stored>, StorageError> {
        let references: Vec<Option<u64>> = records
            .iter()
            .map(|record| parse_entry_reference(&record.payload))
            .collect();
        let keys: Vec<String> = references.iter().flatten().map(|seq| seq_key(*seq)).collect();
        let mut entries = self
            .kv
            .get_many(Space::Compliance, CHAIN_OWNER, &keys)
            .await?
            .into_iter();
        Ok(references
            .into_iter()
            .map(|reference| match reference {
                Some(seq) => Stored::Entry {
                    seq,
                    bytes: entries.next().flatten(),
                },
                None => Stored::Inline,
            })
            .collect())
    }

    /// The records whose message was sent by or to exactly the full JID `exact`, by the
    /// addresses in its chain entry (or in the stanza a copy carries itself).
    async fn to_or_from(
        &self,
        records: Vec<ArchiveRecord>,
        exact: &Jid,
    ) -> Result<Vec<ArchiveRecord>, StorageError> {
        if records.is_empty() {
            return Ok(records);
        }
        let stored = self.stored_messages(&records).await?;
        let same = |address: Option<&str>| {
            address.and_then(|address| Jid::new(address).ok()).as_ref() == Some(exact)
        };
        let mut kept = Vec::with_capacity(records.len());
        for (record, stored) in records.into_iter().zip(stored) {
            let matches = match stored {
                Stored::Entry { bytes, .. } => match bytes.map(|bytes| Entry::from_bytes(&bytes)) {
                    Some(Ok(Entry {
                        body: Body::Message(message),
                        ..
                    })) => same(Some(&message.from)) || same(Some(&message.to)),
                    _ => false,
                },
                Stored::Inline => std::str::from_utf8(&record.payload)
                    .ok()
                    .and_then(|xml| xml.parse::<Element>().ok())
                    .is_some_and(|stanza| same(stanza.attr("from")) || same(stanza.attr("to"))),
            };
            if matches {
                kept.push(record);
            }
        }
        Ok(kept)
    }

    /// The archived stanza of each record: from the chain entry its payload refers to (all of a
    /// page's entries in one read), or the payload itself for copies that carry their stanza.
    /// None (and a log line) where there is none to show: the entry was purged (the copy expired
    /// with it and goes at the next purge) or what is stored no longer parses.
    async fn archived_stanzas(
        &self,
        owner: &BareJid,
        records: &[ArchiveRecord],
    ) -> Result<Vec<Option<Element>>, StorageError> {
        let stored = self.stored_messages(records).await?;
        let mut stanzas = Vec::with_capacity(records.len());
        for (record, stored) in records.iter().zip(stored) {
            let xml = match stored {
                Stored::Inline => std::str::from_utf8(&record.payload).ok().map(str::to_owned),
                Stored::Entry { seq, bytes } => match bytes {
                    None => {
                        tracing::debug!(%owner, id = record.id, seq, "MAM copy of a purged chain entry; skipped");
                        stanzas.push(None);
                        continue;
                    }
                    Some(bytes) => match Entry::from_bytes(&bytes) {
                        Ok(Entry {
                            body: Body::Message(message),
                            ..
                        }) => Some(message.stanza),
                        _ => None,
                    },
                },
            };
            let archived = xml.and_then(|xml| xml.parse::<Element>().ok());
            if archived.is_none() {
                tracing::error!(%owner, id = record.id, "an archived MAM payload does not parse; skipped");
            }
            stanzas.push(archived);
        }
        Ok(stanzas)
    }

    async fn query(&self, context: &IqContext<'_>, owner: &BareJid, payload: &Element) -> IqResult {
        let request = parse_query(payload, &self.options)?;
        let requester = context
            .from
            .clone()
            .try_into_full()
            .map_err(|_| error(StanzaErrorCondition::BadRequest, "Queries come from a resource"))?;
        let owner_key = owner.as_str();
        let mut by_id = Vec::new();
        for id in request.named_ids() {
            let known = self
                .archive
                .get_record(Space::Mam, owner_key, id)
                .await
                .map_err(|e| internal(&e))?;
            match known {
                None => return Err(error(StanzaErrorCondition::ItemNotFound, "No such archive id")),
                Some(record) if request.ids.contains(&id) => by_id.push(record),
                Some(_) => {}
            }
        }
        let mut visibility = self.visibility(owner).await.map_err(|e| internal(&e))?;
        if let Some(with) = &request.with {
            // One party asked for: the preferences decide whether any of it is shown.
            visibility = if visibility.shows(with) {
                Visibility::All
            } else {
                Visibility::Only(BTreeSet::new())
            };
        }
        let result_set = request.result_set();
        let (page, count) = if request.ids.is_empty() {
            let exact = request.with_exact.as_ref();
            let page = self
                .page(owner_key, &request.window(), &visibility, exact)
                .await
                .map_err(|e| internal(&e))?;
            let count = self
                .count(owner_key, &result_set, &visibility, exact)
                .await
                .map_err(|e| internal(&e))?;
            (page, count)
        } else {
            // XEP-0313 §4.1.3: the named messages, as far as the other filters keep them.
            by_id.sort_by_key(|record| record.id);
            by_id.dedup_by_key(|record| record.id);
            by_id.retain(|record| result_set.matches(record) && visibility.shows(&record.with));
            if let Some(exact) = &request.with_exact {
                by_id = self.to_or_from(by_id, exact).await.map_err(|e| internal(&e))?;
            }
            let count = by_id.len() as u64;
            let (records, complete) = request.window_over(by_id);
            (Page { records, complete }, Some(count))
        };
        // RSM's `index` is optional (XEP-0059 §2.6). It is given where it costs nothing: the first
        // page and the last one. In the middle of a large archive it would take a count by reading.
        let index = match page.records.first() {
            None => None,
            Some(_) if !request.backwards() && request.rsm_after.is_none() => Some(0),
            Some(_) if request.rsm_before == Some(None) => {
                count.map(|count| count.saturating_sub(page.records.len() as u64))
            }
            Some(_) => None,
        };

        let stanzas = self
            .archived_stanzas(owner, &page.records)
            .await
            .map_err(|e| internal(&e))?;
        let mut results: Vec<_> = page.records.iter().zip(stanzas).collect();
        if request.flip_page {
            results.reverse();
        }
        for (record, archived) in results {
            let Some(archived) = archived else {
                continue;
            };
            let message = result_message(owner, &requester, request.query_id.as_deref(), record, archived);
            if !context
                .router
                .send_to_waiting(&requester, message, SEND_PATIENCE)
                .await
            {
                tracing::debug!(%requester, "MAM requester gone or too slow; query abandoned");
                return Err(StanzaError::new(StanzaErrorCondition::ResourceConstraint));
            }
        }
        // With max=0 (RSM §2.7) only the count is asked for: nothing has been paged through.
        let complete = (page.complete && request.max > 0) || count == Some(0);
        Ok(Some(fin(
            request.query_id.as_deref(),
            complete,
            &page.records,
            index,
            count,
        )))
    }

    async fn metadata(&self, owner: &BareJid) -> IqResult {
        let visibility = self.visibility(owner).await.map_err(|e| internal(&e))?;
        let mut element = Element::bare("metadata", NS_MAM);
        for (name, reverse) in [("start", false), ("end", true)] {
            let query = ArchiveQuery {
                limit: 1,
                reverse,
                ..ArchiveQuery::default()
            };
            let page = self
                .page(owner.as_str(), &query, &visibility, None)
                .await
                .map_err(|e| internal(&e))?;
            if let Some(record) = page.records.first() {
                let mut edge = Element::bare(name, NS_MAM);
                set_attr(&mut edge, "id", Some(&record.id.to_string()));
                set_attr(
                    &mut edge,
                    "timestamp",
                    Some(&crate::rfc3339(record.timestamp_micros)),
                );
                element.append_child(edge);
            }
        }
        Ok(Some(element))
    }
}

/// The `limit` records nearest the start (forwards) or the end (backwards), ascending.
fn take_window(mut records: Vec<ArchiveRecord>, limit: usize, reverse: bool) -> Vec<ArchiveRecord> {
    if records.len() > limit {
        if reverse {
            records.drain(..records.len() - limit);
        } else {
            records.truncate(limit);
        }
    }
    records
}

/// `<message><result><forwarded><delay/><message/></forwarded></result></message>`.
fn result_message(
    owner: &BareJid,
    requester: &parley_proto::FullJid,
    query_id: Option<&str>,
    record: &ArchiveRecord,
    archived: Element,
) -> Stanza {
    let mut delay = Element::bare("delay", NS_DELAY);
    set_attr(
        &mut delay,
        "stamp",
        Some(&crate::rfc3339(record.timestamp_micros)),
    );
    let mut forwarded = Element::bare("forwarded", NS_FORWARD);
    forwarded.append_child(delay);
    forwarded.append_child(archived);
    let mut result = Element::bare("result", NS_MAM);
    set_attr(&mut result, "queryid", query_id);
    set_attr(&mut result, "id", Some(&record.id.to_string()));
    result.append_child(forwarded);
    Stanza::new(StanzaKind::Message)
        .with_from(Jid::from(owner.clone()))
        .with_to(requester.clone())
        .with_child(result)
}

/// The `<fin/>` that ends a query (XEP-0313 §4.2) with its RSM summary.
fn fin(
    query_id: Option<&str>,
    complete: bool,
    records: &[ArchiveRecord],
    index: Option<u64>,
    count: Option<u64>,
) -> Element {
    let mut set = Element::bare("set", NS_RSM);
    if let (Some(first), Some(last)) = (records.first(), records.last()) {
        let mut first_element = text_element("first", NS_RSM, &first.id.to_string());
        if let Some(index) = index {
            set_attr(&mut first_element, "index", Some(&index.to_string()));
        }
        set.append_child(first_element);
        set.append_child(text_element("last", NS_RSM, &last.id.to_string()));
    }
    if let Some(count) = count {
        set.append_child(text_element("count", NS_RSM, &count.to_string()));
    }
    let mut fin = Element::bare("fin", NS_MAM);
    set_attr(&mut fin, "queryid", query_id);
    if complete {
        set_attr(&mut fin, "complete", Some("true"));
    }
    fin.append_child(set);
    fin
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ArchiveOptions, ComplianceArchive, ManualClock};
    use parley_proto::FullJid;
    use parley_router::{Accounts, Outbound, Router, SessionControl};
    use parley_storage::{MemoryStore, Store};
    use tokio::sync::mpsc;

    const T0: i64 = 1_750_000_000_000_000;
    const SECOND: i64 = 1_000_000;

    struct Everyone;

    #[async_trait]
    impl Accounts for Everyone {
        async fn exists(&self, localpart: &str) -> bool {
            matches!(localpart, "alice" | "bob" | "carol")
        }
    }

    struct Fixture {
        router: Router,
        clock: Arc<ManualClock>,
        alice: mpsc::Receiver<Outbound>,
        bob: mpsc::Receiver<Outbound>,
        store: Arc<dyn Store>,
        _archive: Arc<ComplianceArchive>,
    }

    async fn fixture() -> Fixture {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let clock = Arc::new(ManualClock::new(T0));
        let domain = BareJid::new("example.com").unwrap();
        let archive = ComplianceArchive::open(
            store.clone(),
            None,
            domain.clone(),
            ArchiveOptions::default(),
            clock.clone(),
        )
        .await
        .unwrap();
        let module = MamModule::new(
            store.clone(),
            store.clone(),
            MamOptions {
                max_page: 100,
                ..MamOptions::default()
            },
        );
        let router = Router::builder(domain, Arc::new(Everyone))
            .compliance(Arc::new(archive.stage()))
            .module(Arc::new(module))
            .build()
            .unwrap();
        let alice = bind(&router, "alice@example.com/phone").await;
        let bob = bind(&router, "bob@example.com/desk").await;
        Fixture {
            router,
            clock,
            alice,
            bob,
            store,
            _archive: archive,
        }
    }

    async fn bind(router: &Router, jid: &str) -> mpsc::Receiver<Outbound> {
        let (sender, receiver) = mpsc::channel(1024);
        router
            .bind(
                FullJid::new(jid).unwrap(),
                sender,
                Arc::new(SessionControl::default()),
            )
            .await
            .unwrap();
        receiver
    }

    fn drain(receiver: &mut mpsc::Receiver<Outbound>) -> Vec<Stanza> {
        let mut out = Vec::new();
        while let Ok(Outbound::Stanza(stanza)) = receiver.try_recv() {
            out.push(*stanza);
        }
        out
    }

    /// alice sends `body` to `to` (a full JID reaches a bound resource) one second after the previous message.
    async fn send(fixture: &mut Fixture, to: &str, body: &str) {
        send_from(fixture, "alice@example.com/phone", to, body).await;
    }

    async fn send_from(fixture: &mut Fixture, from: &str, to: &str, body: &str) {
        fixture.clock.advance(SECOND);
        let xml = format!(
            "<message xmlns='jabber:client' from='{from}' to='{to}' type='chat'>\
             <body>{body}</body></message>"
        );
        fixture
            .router
            .submit(Stanza::from_element(xml.parse().unwrap()).unwrap())
            .await;
        // Bounces for parties who are not online are not what these tests look at.
        drain(&mut fixture.alice);
    }

    fn iq(iq_type: &str, payload: &str) -> Stanza {
        let xml = format!(
            "<iq xmlns='jabber:client' from='alice@example.com/phone' type='{iq_type}' id='q1'>{payload}</iq>"
        );
        Stanza::from_element(xml.parse().unwrap()).unwrap()
    }

    struct Answer {
        bodies: Vec<String>,
        ids: Vec<String>,
        reply: Stanza,
    }

    impl Answer {
        fn fin(&self) -> &Element {
            self.reply
                .iq_payload()
                .filter(|payload| payload.is("fin", NS_MAM))
                .unwrap_or_else(|| panic!("a fin, got {:?}", self.reply.element()))
        }
        fn rsm(&self, name: &str) -> Option<String> {
            self.fin()
                .get_child("set", NS_RSM)
                .and_then(|set| set.get_child(name, NS_RSM))
                .map(Element::text)
        }
        fn index(&self) -> Option<String> {
            self.fin()
                .get_child("set", NS_RSM)
                .and_then(|set| set.get_child("first", NS_RSM))
                .and_then(|first| first.attr("index"))
                .map(str::to_owned)
        }
        fn complete(&self) -> bool {
            self.fin().attr("complete") == Some("true")
        }
        fn condition(&self) -> StanzaErrorCondition {
            self.reply.error().expect("an error reply").condition
        }
    }

    async fn ask(fixture: &mut Fixture, iq_type: &str, payload: &str) -> Answer {
        fixture.router.submit(iq(iq_type, payload)).await;
        let mut stanzas = drain(&mut fixture.alice);
        let reply = stanzas.pop().expect("a reply");
        assert_eq!(reply.kind(), StanzaKind::Iq, "{:?}", reply.element());
        let mut bodies = Vec::new();
        let mut ids = Vec::new();
        for message in stanzas {
            let result = message.element().get_child("result", NS_MAM).expect("a result");
            assert_eq!(result.attr("queryid"), Some("f"));
            assert_eq!(
                message.from().map(ToString::to_string).as_deref(),
                Some("alice@example.com")
            );
            let forwarded = result.get_child("forwarded", NS_FORWARD).unwrap();
            assert!(
                forwarded
                    .get_child("delay", NS_DELAY)
                    .unwrap()
                    .attr("stamp")
                    .is_some()
            );
            let inner = forwarded.get_child("message", "jabber:client").unwrap();
            bodies.push(inner.get_child("body", "jabber:client").unwrap().text());
            ids.push(result.attr("id").unwrap().to_owned());
        }
        Answer { bodies, ids, reply }
    }

    fn query(fields: &str, rsm: &str) -> String {
        format!(
            "<query xmlns='urn:xmpp:mam:2' queryid='f'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>{fields}</x>\
             <set xmlns='http://jabber.org/protocol/rsm'>{rsm}</set></query>"
        )
    }

    fn field(var: &str, value: &str) -> String {
        format!("<field var='{var}'><value>{value}</value></field>")
    }

    async fn five_to_bob(fixture: &mut Fixture) {
        for n in 1..=5 {
            send(fixture, "bob@example.com/desk", &format!("m{n}")).await;
        }
        drain(&mut fixture.bob);
    }

    #[tokio::test]
    async fn pages_forwards_with_exact_counts_and_indexes() {
        let mut fixture = fixture().await;
        five_to_bob(&mut fixture).await;
        let first = ask(&mut fixture, "set", &query("", "<max>2</max>")).await;
        assert_eq!(first.bodies, ["m1", "m2"]);
        assert_eq!(first.rsm("count").as_deref(), Some("5"));
        assert_eq!(first.index().as_deref(), Some("0"));
        assert_eq!(first.rsm("last").as_deref(), Some(first.ids[1].as_str()));
        assert!(!first.complete());

        let rsm = format!("<max>2</max><after>{}</after>", first.ids[1]);
        let second = ask(&mut fixture, "set", &query("", &rsm)).await;
        assert_eq!(second.bodies, ["m3", "m4"]);
        // No index inside the archive: it would cost a count by reading (XEP-0059 §2.6: optional).
        assert_eq!(second.index(), None);
        assert!(!second.complete());

        let rsm = format!("<max>2</max><after>{}</after>", second.ids[1]);
        let third = ask(&mut fixture, "set", &query("", &rsm)).await;
        assert_eq!(third.bodies, ["m5"]);
        assert_eq!(third.index(), None);
        assert_eq!(third.rsm("count").as_deref(), Some("5"));
        assert!(third.complete());
    }

    #[tokio::test]
    async fn copies_holding_their_stanza_are_served_and_copies_of_purged_entries_skipped() {
        let mut fixture = fixture().await;
        five_to_bob(&mut fixture).await;
        // A copy as older Parley versions stored it: the stanza itself, not a reference.
        let inline = "<message xmlns='jabber:client' from='alice@example.com/phone' \
                      to='carol@example.com' type='chat'><body>stored inline</body></message>";
        let record = parley_storage::NewRecord {
            timestamp_micros: T0 + 10 * SECOND,
            with: "carol@example.com".into(),
            payload: inline.as_bytes().to_vec(),
        };
        fixture
            .store
            .append(Space::Mam, "alice@example.com", record)
            .await
            .unwrap();
        // Entry 2 (m2) purged: its copies expired with it and are not shown.
        let mut purge = WriteBatch::new();
        purge.delete(Space::Compliance, CHAIN_OWNER, seq_key(2));
        fixture.store.apply(purge).await.unwrap();

        let answer = ask(&mut fixture, "set", &query("", "")).await;
        assert_eq!(answer.bodies, ["m1", "m3", "m4", "m5", "stored inline"]);
    }

    #[tokio::test]
    async fn pages_backwards_from_the_end() {
        let mut fixture = fixture().await;
        five_to_bob(&mut fixture).await;
        let last = ask(&mut fixture, "set", &query("", "<max>2</max><before/>")).await;
        assert_eq!(last.bodies, ["m4", "m5"]);
        assert_eq!(last.index().as_deref(), Some("3"));
        assert!(!last.complete());
        let rsm = format!("<max>2</max><before>{}</before>", last.ids[0]);
        let middle = ask(&mut fixture, "set", &query("", &rsm)).await;
        assert_eq!(middle.bodies, ["m2", "m3"]);
        assert_eq!(middle.index(), None);
        let rsm = format!("<max>2</max><before>{}</before>", middle.ids[0]);
        let first = ask(&mut fixture, "set", &query("", &rsm)).await;
        assert_eq!(first.bodies, ["m1"]);
        assert!(first.complete());
        assert_eq!(first.rsm("count").as_deref(), Some("5"));
    }

    #[tokio::test]
    async fn count_only_with_max_zero() {
        let mut fixture = fixture().await;
        five_to_bob(&mut fixture).await;
        let answer = ask(&mut fixture, "set", &query("", "<max>0</max>")).await;
        assert!(answer.bodies.is_empty());
        assert_eq!(answer.rsm("count").as_deref(), Some("5"));
        assert_eq!(answer.rsm("first"), None);
    }

    #[tokio::test]
    async fn with_start_end_and_id_fields_filter() {
        let mut fixture = fixture().await;
        send(&mut fixture, "bob@example.com/desk", "b1").await;
        send(&mut fixture, "carol@example.com", "c1").await;
        send(&mut fixture, "bob@example.com/desk", "b2").await;
        send(&mut fixture, "carol@example.com", "c2").await;
        let with_bob = ask(&mut fixture, "set", &query(&field("with", "bob@example.com"), "")).await;
        assert_eq!(with_bob.bodies, ["b1", "b2"]);
        assert_eq!(with_bob.rsm("count").as_deref(), Some("2"));
        assert!(with_bob.complete());

        // Messages were sent at T0+1s..T0+4s.
        let range = format!(
            "{}{}",
            field("start", &crate::rfc3339(T0 + 2 * SECOND)),
            field("end", &crate::rfc3339(T0 + 3 * SECOND))
        );
        let ranged = ask(&mut fixture, "set", &query(&range, "")).await;
        assert_eq!(ranged.bodies, ["c1", "b2"]);
        assert_eq!(ranged.rsm("count").as_deref(), Some("2"));

        let all = ask(&mut fixture, "set", &query("", "")).await;
        let after = field("after-id", &all.ids[0]);
        let after_first = ask(&mut fixture, "set", &query(&after, "<max>1</max>")).await;
        assert_eq!(after_first.bodies, ["c1"]);
        assert_eq!(after_first.rsm("count").as_deref(), Some("3"));
        let before = field("before-id", &all.ids[3]);
        let before_last = ask(&mut fixture, "set", &query(&before, "")).await;
        assert_eq!(before_last.bodies, ["b1", "c1", "b2"]);
        assert_eq!(before_last.rsm("count").as_deref(), Some("3"));
    }

    #[tokio::test]
    async fn with_a_full_jid_matches_only_that_resource() {
        let mut fixture = fixture().await;
        send(&mut fixture, "bob@example.com/desk", "d1").await;
        send(&mut fixture, "bob@example.com/phone", "p1").await;
        send(&mut fixture, "bob@example.com", "bare1").await;
        send_from(&mut fixture, "bob@example.com/desk", "alice@example.com", "d2").await;
        send(&mut fixture, "carol@example.com/desk", "c1").await;

        // XEP-0313 §4.1.1: a bare JID matches every resource of it, a full JID only itself,
        // whether it sent the message or received it.
        let bare = ask(&mut fixture, "set", &query(&field("with", "bob@example.com"), "")).await;
        assert_eq!(bare.bodies, ["d1", "p1", "bare1", "d2"]);
        let desk = field("with", "bob@example.com/desk");
        let exact = ask(&mut fixture, "set", &query(&desk, "")).await;
        assert_eq!(exact.bodies, ["d1", "d2"]);
        assert_eq!(exact.rsm("count").as_deref(), Some("2"));
        assert!(exact.complete());

        // Paged one at a time, forwards and from the end.
        let first = ask(&mut fixture, "set", &query(&desk, "<max>1</max>")).await;
        assert_eq!(first.bodies, ["d1"]);
        assert_eq!(first.rsm("count").as_deref(), Some("2"));
        assert!(!first.complete());
        let next = format!("<max>1</max><after>{}</after>", first.ids[0]);
        let second = ask(&mut fixture, "set", &query(&desk, &next)).await;
        assert_eq!(second.bodies, ["d2"]);
        assert!(second.complete());
        let last = ask(&mut fixture, "set", &query(&desk, "<max>1</max><before/>")).await;
        assert_eq!(last.bodies, ["d2"]);

        // Named ids keep only what the full JID matches.
        let ids: String = bare.ids.iter().map(|id| format!("<value>{id}</value>")).collect();
        let named = format!(
            "<field var='ids' type='list-multi'>{ids}</field>{}",
            field("with", "bob@example.com/phone")
        );
        let phone = ask(&mut fixture, "set", &query(&named, "")).await;
        assert_eq!(phone.bodies, ["p1"]);
        let nobody = ask(
            &mut fixture,
            "set",
            &query(&field("with", "bob@example.com/tablet"), ""),
        )
        .await;
        assert!(nobody.bodies.is_empty());
        assert_eq!(nobody.rsm("count").as_deref(), Some("0"));
    }

    #[tokio::test]
    async fn bad_requests_get_the_right_errors() {
        let mut fixture = fixture().await;
        five_to_bob(&mut fixture).await;
        let cases = [
            (
                query("", "<after>999999</after>"),
                StanzaErrorCondition::ItemNotFound,
            ),
            (
                query("", "<before>nope</before>"),
                StanzaErrorCondition::ItemNotFound,
            ),
            (
                query(&field("after-id", "424242"), ""),
                StanzaErrorCondition::ItemNotFound,
            ),
            (
                query(&field("start", "yesterday"), ""),
                StanzaErrorCondition::NotAcceptable,
            ),
            (
                query(&field("colour", "red"), ""),
                StanzaErrorCondition::FeatureNotImplemented,
            ),
            (query("", "<max>many</max>"), StanzaErrorCondition::BadRequest),
            (
                query(&field("with", "@@"), ""),
                StanzaErrorCondition::JidMalformed,
            ),
            (
                query(
                    &format!(
                        "{}{}",
                        field("start", "2025-01-02T00:00:00Z"),
                        field("end", "2025-01-01T00:00:00Z")
                    ),
                    "",
                ),
                StanzaErrorCondition::NotAcceptable,
            ),
        ];
        for (payload, condition) in cases {
            let answer = ask(&mut fixture, "set", &payload).await;
            assert_eq!(answer.condition(), condition, "{payload}");
            assert!(answer.bodies.is_empty());
        }
    }

    #[tokio::test]
    async fn another_users_archive_is_forbidden() {
        let mut fixture = fixture().await;
        five_to_bob(&mut fixture).await;
        let xml = format!(
            "<iq xmlns='jabber:client' from='alice@example.com/phone' to='bob@example.com' type='set' \
             id='q1'>{}</iq>",
            query("", "")
        );
        fixture
            .router
            .submit(Stanza::from_element(xml.parse().unwrap()).unwrap())
            .await;
        let replies = drain(&mut fixture.alice);
        assert_eq!(replies.len(), 1);
        assert_eq!(
            replies[0].error().unwrap().condition,
            StanzaErrorCondition::Forbidden
        );
    }

    #[tokio::test]
    async fn delivered_stanza_id_is_the_recipients_mam_id() {
        let mut fixture = fixture().await;
        send(&mut fixture, "bob@example.com/desk", "hello").await;
        let delivered = drain(&mut fixture.bob);
        let stamp = delivered[0].element().get_child("stanza-id", NS_SID).unwrap();
        assert_eq!(stamp.attr("by"), Some("bob@example.com"));
        let bob_id = stamp.attr("id").unwrap().to_owned();
        // bob asks his own archive.
        let xml = format!(
            "<iq xmlns='jabber:client' from='bob@example.com/desk' type='set' id='q1'>{}</iq>",
            query("", "")
        );
        fixture
            .router
            .submit(Stanza::from_element(xml.parse().unwrap()).unwrap())
            .await;
        let answer = drain(&mut fixture.bob);
        assert_eq!(answer.len(), 2);
        let result = answer[0].element().get_child("result", NS_MAM).unwrap();
        assert_eq!(result.attr("id"), Some(bob_id.as_str()));
    }

    #[tokio::test]
    async fn prefs_hide_from_queries_but_not_from_the_store() {
        let mut fixture = fixture().await;
        send(&mut fixture, "bob@example.com/desk", "b1").await;
        send(&mut fixture, "carol@example.com", "c1").await;
        send(&mut fixture, "bob@example.com/desk", "b2").await;
        let got = ask(&mut fixture, "get", "<prefs xmlns='urn:xmpp:mam:2'/>").await;
        assert_eq!(got.reply.iq_payload().unwrap().attr("default"), Some("always"));

        let set = "<prefs xmlns='urn:xmpp:mam:2' default='always'><always/>\
                   <never><jid>bob@example.com/any</jid></never></prefs>";
        let stored = ask(&mut fixture, "set", set).await;
        let never = stored
            .reply
            .iq_payload()
            .unwrap()
            .get_child("never", NS_MAM)
            .unwrap();
        assert_eq!(
            never.children().map(Element::text).collect::<Vec<_>>(),
            ["bob@example.com"]
        );

        let all = ask(&mut fixture, "set", &query("", "")).await;
        assert_eq!(all.bodies, ["c1"]);
        assert_eq!(all.rsm("count").as_deref(), Some("1"));
        assert!(all.complete());
        let with_bob = ask(&mut fixture, "set", &query(&field("with", "bob@example.com"), "")).await;
        assert!(with_bob.bodies.is_empty());
        assert_eq!(with_bob.rsm("count").as_deref(), Some("0"));

        let only = "<prefs xmlns='urn:xmpp:mam:2' default='never'>\
                    <always><jid>bob@example.com</jid></always></prefs>";
        ask(&mut fixture, "set", only).await;
        let page = ask(&mut fixture, "set", &query("", "<max>1</max>")).await;
        assert_eq!(page.bodies, ["b1"]);
        assert_eq!(page.rsm("count").as_deref(), Some("2"));
        assert!(!page.complete());

        let bad = ask(
            &mut fixture,
            "set",
            "<prefs xmlns='urn:xmpp:mam:2' default='sometimes'/>",
        )
        .await;
        assert_eq!(bad.condition(), StanzaErrorCondition::BadRequest);

        // The store still holds all three of alice's copies.
        let stored = fixture
            .store
            .count(Space::Mam, "alice@example.com", &ArchiveQuery::default())
            .await
            .unwrap();
        assert_eq!(stored, 3);
    }

    #[tokio::test]
    async fn too_many_pref_jids_is_a_policy_violation() {
        let mut fixture = fixture().await;
        let jids: String = (0..300).map(|n| format!("<jid>u{n}@example.com</jid>")).collect();
        let set = format!("<prefs xmlns='urn:xmpp:mam:2' default='always'><never>{jids}</never></prefs>");
        let answer = ask(&mut fixture, "set", &set).await;
        assert_eq!(answer.condition(), StanzaErrorCondition::PolicyViolation);
    }

    #[tokio::test]
    async fn a_flipped_page_holds_the_same_messages_newest_first() {
        let mut fixture = fixture().await;
        five_to_bob(&mut fixture).await;
        let plain = ask(&mut fixture, "set", &query("", "<max>3</max><before/>")).await;
        let flipped_query = query("", "<max>3</max><before/>").replace("</query>", "<flip-page/></query>");
        let flipped = ask(&mut fixture, "set", &flipped_query).await;
        assert_eq!(plain.bodies, ["m3", "m4", "m5"]);
        assert_eq!(flipped.bodies, ["m5", "m4", "m3"]);
        for summary in ["first", "last", "count"] {
            assert_eq!(
                flipped.rsm(summary),
                plain.rsm(summary),
                "{summary} describes the same page"
            );
        }
    }

    #[tokio::test]
    async fn the_ids_field_fetches_those_messages() {
        let mut fixture = fixture().await;
        five_to_bob(&mut fixture).await;
        let all = ask(&mut fixture, "set", &query("", "")).await;
        let ids = format!(
            "<field var='ids' type='list-multi'><value>{}</value><value>{}</value></field>",
            all.ids[3], all.ids[1]
        );
        let named = ask(&mut fixture, "set", &query(&ids, "")).await;
        assert_eq!(named.bodies, ["m2", "m4"], "in archive order");
        assert_eq!(named.rsm("count").as_deref(), Some("2"));
        assert!(named.complete());

        let with_other = format!("{ids}{}", field("with", "carol@example.com"));
        let filtered = ask(&mut fixture, "set", &query(&with_other, "")).await;
        assert!(filtered.bodies.is_empty(), "the other filters still apply");

        let unknown = field("ids", "999999");
        let missing = ask(&mut fixture, "set", &query(&unknown, "")).await;
        assert_eq!(missing.condition(), StanzaErrorCondition::ItemNotFound);
        let values: String = (1..=MAX_NAMED_IDS + 1)
            .map(|n| format!("<value>{n}</value>"))
            .collect();
        let too_many = format!("<field var='ids'>{values}</field>");
        let refused = ask(&mut fixture, "set", &query(&too_many, "")).await;
        assert_eq!(refused.condition(), StanzaErrorCondition::PolicyViolation);
    }

    #[tokio::test]
    async fn form_fields_and_metadata() {
        let mut fixture = fixture().await;
        let form = ask(&mut fixture, "get", "<query xmlns='urn:xmpp:mam:2'/>").await;
        let vars: Vec<String> = form
            .reply
            .iq_payload()
            .unwrap()
            .get_child("x", NS_DATA)
            .unwrap()
            .children()
            .filter_map(|field| field.attr("var").map(str::to_owned))
            .collect();
        assert_eq!(
            vars,
            [
                "FORM_TYPE",
                "with",
                "start",
                "end",
                "after-id",
                "before-id",
                "ids"
            ]
        );

        let empty = ask(&mut fixture, "get", "<metadata xmlns='urn:xmpp:mam:2'/>").await;
        assert_eq!(empty.reply.iq_payload().unwrap().children().count(), 0);
        five_to_bob(&mut fixture).await;
        let all = ask(&mut fixture, "set", &query("", "")).await;
        let metadata = ask(&mut fixture, "get", "<metadata xmlns='urn:xmpp:mam:2'/>").await;
        let payload = metadata.reply.iq_payload().unwrap();
        assert_eq!(
            payload.get_child("start", NS_MAM).unwrap().attr("id"),
            Some(all.ids[0].as_str())
        );
        assert_eq!(
            payload.get_child("end", NS_MAM).unwrap().attr("id"),
            Some(all.ids[4].as_str())
        );
    }

    #[test]
    fn disco_features_are_advertised_for_accounts() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let router = Router::builder(BareJid::new("example.com").unwrap(), Arc::new(Everyone))
            .module(Arc::new(MamModule::new(
                store.clone(),
                store,
                MamOptions::default(),
            )))
            .build()
            .unwrap();
        let features = router.disco_features(Scope::Account);
        for feature in [NS_MAM, NS_MAM_EXTENDED, NS_SID] {
            assert!(features.contains(&feature), "{feature}");
        }
    }

    #[test]
    fn take_window_keeps_the_right_end() {
        let records: Vec<ArchiveRecord> = (1..=5)
            .map(|id| ArchiveRecord {
                id,
                timestamp_micros: 0,
                with: String::new(),
                payload: Vec::new(),
            })
            .collect();
        let ids = |records: Vec<ArchiveRecord>| records.iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(ids(take_window(records.clone(), 2, false)), [1, 2]);
        assert_eq!(ids(take_window(records.clone(), 2, true)), [4, 5]);
        assert_eq!(ids(take_window(records, 9, true)), [1, 2, 3, 4, 5]);
    }
}

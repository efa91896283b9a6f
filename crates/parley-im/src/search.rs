//! User directory search (XEP-0055, `jabber:iq:search`) over the directory's people.
//!
//! Fields: `first` and `last` (matched against the directory's display name), `nick` (the
//! JID localpart) and `email`, each a case-insensitive substring; every field given must match.
//! Requests may use the plain fields or a data form (XEP-0004); the answer uses the same style.
//! Results are sorted by JID and bounded. Only people the directory currently lists are
//! searched, so disabled or removed accounts never show.

use crate::{require_get, stanza_error};
use async_trait::async_trait;
use parley_directory::{Directory, Person};
use parley_proto::stanza::set_attr;
use parley_proto::{BareJid, Element, Stanza, StanzaErrorCondition};
use parley_router::{IqContext, IqHandler, IqResult, IqRoute, Module, Registry, Scope};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub const NS_SEARCH: &str = "jabber:iq:search";
const NS_DATA: &str = "jabber:x:data";
/// Longest search term accepted per field, in bytes.
pub const MAX_TERM_BYTES: usize = 256;
/// The fields a search may use, in the order forms list them.
const FIELDS: [(&str, &str); 4] = [
    ("first", "Given name"),
    ("last", "Family name"),
    ("nick", "User name"),
    ("email", "E-mail"),
];

/// Options of the search module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchOptions {
    /// Most people one search returns.
    pub max_results: usize,
}

impl Default for SearchOptions {
    fn default() -> Self {
        Self { max_results: 50 }
    }
}

/// What a user searches for: lower-cased terms, `None` for fields left empty.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    pub first: Option<String>,
    pub last: Option<String>,
    pub nick: Option<String>,
    pub email: Option<String>,
}

impl SearchQuery {
    fn set(&mut self, field: &str, value: &str) -> Result<(), &'static str> {
        let value = value.trim();
        if value.len() > MAX_TERM_BYTES {
            return Err("A search term is too long");
        }
        let term = (!value.is_empty()).then(|| value.to_lowercase());
        match field {
            "first" => self.first = term,
            "last" => self.last = term,
            "nick" => self.nick = term,
            "email" => self.email = term,
            _ => {}
        }
        Ok(())
    }

    fn is_empty(&self) -> bool {
        self.first.is_none() && self.last.is_none() && self.nick.is_none() && self.email.is_none()
    }

    /// Whether `person` matches every term given.
    pub fn matches(&self, person: &Person) -> bool {
        let contains = |value: Option<&str>, term: &Option<String>| match term {
            None => true,
            Some(term) => value.is_some_and(|value| value.to_lowercase().contains(term.as_str())),
        };
        let name = person.display_name.as_deref();
        contains(name, &self.first)
            && contains(name, &self.last)
            && contains(Some(&person.localpart), &self.nick)
            && contains(person.email.as_deref(), &self.email)
    }
}

/// Splits a display name into (first, last): "Last, First" (Active Directory style) or
/// "First Middle Last".
pub fn split_name(display_name: &str) -> (String, String) {
    let name = display_name.trim();
    if let Some((last, first)) = name.split_once(',') {
        return (first.trim().to_owned(), last.trim().to_owned());
    }
    match name.rsplit_once(' ') {
        Some((first, last)) => (first.trim().to_owned(), last.trim().to_owned()),
        None => (name.to_owned(), String::new()),
    }
}

/// XEP-0055 over a [`Directory`].
pub struct SearchModule {
    directory: Arc<dyn Directory>,
    domain: BareJid,
    options: SearchOptions,
}

impl SearchModule {
    pub fn new(directory: Arc<dyn Directory>, domain: BareJid, options: SearchOptions) -> Self {
        Self {
            directory,
            domain,
            options,
        }
    }

    /// The people matching `query`, sorted by localpart, at most `max_results`.
    pub async fn search(&self, query: &SearchQuery) -> Result<Vec<Person>, parley_directory::DirectoryError> {
        let mut found: Vec<Person> = self
            .directory
            .people()
            .await?
            .into_iter()
            .filter(|person| query.matches(person))
            .collect();
        found.sort_by(|a, b| a.localpart.cmp(&b.localpart));
        found.truncate(self.options.max_results);
        Ok(found)
    }

    fn jid_of(&self, person: &Person) -> Option<BareJid> {
        let node = jid::NodePart::new(&person.localpart).ok()?;
        Some(BareJid::from_parts(Some(&node), self.domain.domain()))
    }
}

impl Module for SearchModule {
    fn name(&self) -> &'static str {
        "search"
    }

    fn register(self: Arc<Self>, registry: &mut Registry) {
        registry.iq(IqRoute::server(NS_SEARCH, "query"), self);
        registry.disco_feature(Scope::Server, NS_SEARCH);
    }
}

fn child(name: &str, namespace: &str, text: &str) -> Element {
    Element::builder(name, namespace).append(text).build()
}

fn form_field(var: &str, field_type: &str, label: Option<&str>, value: Option<&str>) -> Element {
    let mut field = Element::builder("field", NS_DATA).build();
    set_attr(&mut field, "var", Some(var));
    set_attr(&mut field, "type", Some(field_type));
    set_attr(&mut field, "label", label);
    if let Some(value) = value {
        field.append_child(child("value", NS_DATA, value));
    }
    field
}

/// The empty search form (§2 and §3 of XEP-0055).
fn search_form() -> Element {
    let mut query = Element::builder("query", NS_SEARCH).build();
    query.append_child(child(
        "instructions",
        NS_SEARCH,
        "Fill in any of the fields to search the user directory.",
    ));
    for (name, _) in FIELDS {
        query.append_child(Element::builder(name, NS_SEARCH).build());
    }
    let mut form = Element::builder("x", NS_DATA).build();
    set_attr(&mut form, "type", Some("form"));
    form.append_child(form_field("FORM_TYPE", "hidden", None, Some(NS_SEARCH)));
    for (var, label) in FIELDS {
        form.append_child(form_field(var, "text-single", Some(label), None));
    }
    query.append_child(form);
    query
}

/// Reads the terms of a request; `true` when it used a data form.
fn parse_request(query: &Element) -> Result<(SearchQuery, bool), &'static str> {
    let mut terms = SearchQuery::default();
    if let Some(form) = query.get_child("x", NS_DATA) {
        for field in form.children().filter(|c| c.is("field", NS_DATA)) {
            let Some(var) = field.attr("var") else { continue };
            let value = field
                .get_child("value", NS_DATA)
                .map(Element::text)
                .unwrap_or_default();
            terms.set(var, &value)?;
        }
        return Ok((terms, true));
    }
    for (name, _) in FIELDS {
        if let Some(field) = query.get_child(name, NS_SEARCH) {
            terms.set(name, &field.text())?;
        }
    }
    Ok((terms, false))
}

#[async_trait]
impl IqHandler for SearchModule {
    async fn handle(&self, context: IqContext<'_>, request: &Stanza) -> IqResult {
        if !context.router.is_local(context.from) {
            return Err(stanza_error(
                StanzaErrorCondition::Forbidden,
                "Only local users may search the directory",
            ));
        }
        let Some(query) = request.iq_payload() else {
            return Err(stanza_error(StanzaErrorCondition::BadRequest, "No query"));
        };
        if require_get(request).is_ok() {
            return Ok(Some(search_form()));
        }
        let (terms, as_form) =
            parse_request(query).map_err(|text| stanza_error(StanzaErrorCondition::NotAcceptable, text))?;
        if terms.is_empty() {
            return Err(stanza_error(
                StanzaErrorCondition::NotAcceptable,
                "Fill in at least one field",
            ));
        }
        let found = self.search(&terms).await.map_err(|error| {
            tracing::error!(module = "search", %error, "directory search failed");
            stanza_error(
                StanzaErrorCondition::ServiceUnavailable,
                "The directory is not available",
            )
        })?;
        let mut answer = Element::builder("query", NS_SEARCH).build();
        let rows = found.iter().filter_map(|person| {
            let jid = self.jid_of(person)?;
            let (first, last) = split_name(person.display_name.as_deref().unwrap_or(""));
            Some((jid, first, last, person))
        });
        if as_form {
            let mut form = Element::builder("x", NS_DATA).build();
            set_attr(&mut form, "type", Some("result"));
            form.append_child(form_field("FORM_TYPE", "hidden", None, Some(NS_SEARCH)));
            let mut reported = Element::builder("reported", NS_DATA).build();
            reported.append_child(form_field("jid", "jid-single", Some("JID"), None));
            for (var, label) in FIELDS {
                reported.append_child(form_field(var, "text-single", Some(label), None));
            }
            form.append_child(reported);
            for (jid, first, last, person) in rows {
                let mut item = Element::builder("item", NS_DATA).build();
                for (var, value) in [
                    ("jid", jid.as_str()),
                    ("first", &first),
                    ("last", &last),
                    ("nick", &person.localpart),
                    ("email", person.email.as_deref().unwrap_or("")),
                ] {
                    let mut field = Element::builder("field", NS_DATA).build();
                    set_attr(&mut field, "var", Some(var));
                    field.append_child(child("value", NS_DATA, value));
                    item.append_child(field);
                }
                form.append_child(item);
            }
            answer.append_child(form);
        } else {
            for (jid, first, last, person) in rows {
                let mut item = Element::builder("item", NS_SEARCH).build();
                set_attr(&mut item, "jid", Some(jid.as_str()));
                item.append_child(child("first", NS_SEARCH, &first));
                item.append_child(child("last", NS_SEARCH, &last));
                item.append_child(child("nick", NS_SEARCH, &person.localpart));
                item.append_child(child("email", NS_SEARCH, person.email.as_deref().unwrap_or("")));
                answer.append_child(item);
            }
        }
        Ok(Some(answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use parley_directory::{AuthOutcome, DirectoryChange, DirectoryError, ScramCredentials, ScramHash};
    use tokio::sync::broadcast;

    /// The people a snapshot lists (a disabled account is simply not among them).
    struct People(Vec<Person>);

    #[async_trait]
    impl Directory for People {
        async fn authenticate(&self, _: &str, _: &str) -> Result<AuthOutcome, DirectoryError> {
            Ok(AuthOutcome::Rejected)
        }
        async fn scram_credentials(
            &self,
            _: &str,
            _: ScramHash,
        ) -> Result<Option<ScramCredentials>, DirectoryError> {
            Ok(None)
        }
        fn supports_scram(&self) -> bool {
            false
        }
        async fn person(&self, localpart: &str) -> Result<Option<Person>, DirectoryError> {
            Ok(self.0.iter().find(|p| p.localpart == localpart).cloned())
        }
        async fn people(&self) -> Result<Vec<Person>, DirectoryError> {
            Ok(self.0.clone())
        }
        async fn members(&self, _: &str) -> Result<Vec<String>, DirectoryError> {
            Ok(Vec::new())
        }
        fn subscribe(&self) -> broadcast::Receiver<DirectoryChange> {
            broadcast::channel(1).1
        }
    }

    fn person(localpart: &str, name: &str, email: &str) -> Person {
        Person {
            localpart: localpart.into(),
            display_name: Some(name.into()),
            email: Some(email.into()),
            ..Person::default()
        }
    }

    fn module(max_results: usize) -> SearchModule {
        let people = vec![
            person("alice", "Alice Liddell", "alice@example.com"),
            person("bob", "Bob Builder", "bob@example.com"),
            person("jdoe", "Doe, John", "john.doe@example.com"),
            person("zed", "Zed Alison", "zed@other.org"),
        ];
        SearchModule::new(
            Arc::new(People(people)),
            BareJid::new(DOMAIN).unwrap(),
            SearchOptions { max_results },
        )
    }

    async fn ask_search(module: SearchModule, iq_type: &str, query: &str) -> Stanza {
        let router = router(vec![Arc::new(module)]);
        let mut alice = bind(&router, "alice@example.org/desk").await;
        ask(
            &router,
            &mut alice,
            iq("alice@example.org/desk", Some(DOMAIN), iq_type, xml(query)),
        )
        .await
    }

    fn jids(answer: &Element) -> Vec<String> {
        answer
            .children()
            .filter(|c| c.is("item", NS_SEARCH))
            .filter_map(|c| c.attr("jid").map(str::to_owned))
            .collect()
    }

    #[test]
    fn names_split_both_ways() {
        assert_eq!(split_name("Doe, John"), ("John".into(), "Doe".into()));
        assert_eq!(split_name("Mary Ann Smith"), ("Mary Ann".into(), "Smith".into()));
        assert_eq!(split_name("Cher"), ("Cher".into(), String::new()));
    }

    #[tokio::test]
    async fn get_returns_the_fields_and_a_form() {
        let reply = ask_search(module(10), "get", "<query xmlns='jabber:iq:search'/>").await;
        let query = result_payload(&reply).unwrap();
        for field in ["instructions", "first", "last", "nick", "email"] {
            assert!(query.get_child(field, NS_SEARCH).is_some(), "{field} missing");
        }
        assert_eq!(
            query.get_child("x", NS_DATA).and_then(|x| x.attr("type")),
            Some("form")
        );
    }

    #[tokio::test]
    async fn plain_fields_match_case_insensitively_and_together() {
        let reply = ask_search(
            module(10),
            "set",
            "<query xmlns='jabber:iq:search'><last>ALI</last></query>",
        )
        .await;
        let answer = result_payload(&reply).unwrap();
        assert_eq!(jids(&answer), ["alice@example.org", "zed@example.org"]);
        let first = answer.children().next().unwrap();
        assert_eq!(first.get_child("first", NS_SEARCH).unwrap().text(), "Alice");
        assert_eq!(first.get_child("last", NS_SEARCH).unwrap().text(), "Liddell");
        assert_eq!(
            first.get_child("email", NS_SEARCH).unwrap().text(),
            "alice@example.com"
        );
        // Both terms must match.
        let reply = ask_search(
            module(10),
            "set",
            "<query xmlns='jabber:iq:search'><first>ali</first><email>other.org</email></query>",
        )
        .await;
        assert_eq!(jids(&result_payload(&reply).unwrap()), ["zed@example.org"]);
        let reply = ask_search(
            module(10),
            "set",
            "<query xmlns='jabber:iq:search'><nick>nobody</nick></query>",
        )
        .await;
        assert!(jids(&result_payload(&reply).unwrap()).is_empty());
    }

    #[tokio::test]
    async fn results_are_bounded() {
        let reply = ask_search(
            module(1),
            "set",
            "<query xmlns='jabber:iq:search'><email>example</email></query>",
        )
        .await;
        assert_eq!(jids(&result_payload(&reply).unwrap()), ["alice@example.org"]);
    }

    #[tokio::test]
    async fn a_data_form_gets_a_form_back() {
        let reply = ask_search(
            module(10),
            "set",
            "<query xmlns='jabber:iq:search'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>jabber:iq:search</value></field>\
             <field var='first'><value>john</value></field></x></query>",
        )
        .await;
        let answer = result_payload(&reply).unwrap();
        let form = answer.get_child("x", NS_DATA).expect("a result form");
        assert_eq!(form.attr("type"), Some("result"));
        let items: Vec<&Element> = form.children().filter(|c| c.is("item", NS_DATA)).collect();
        assert_eq!(items.len(), 1);
        let jid = items[0]
            .children()
            .find(|f| f.attr("var") == Some("jid"))
            .and_then(|f| f.get_child("value", NS_DATA))
            .map(Element::text);
        assert_eq!(jid.as_deref(), Some("jdoe@example.org"));
    }

    #[tokio::test]
    async fn empty_or_oversized_terms_are_not_acceptable() {
        for query in [
            "<query xmlns='jabber:iq:search'/>".to_owned(),
            "<query xmlns='jabber:iq:search'><first>  </first></query>".to_owned(),
            format!(
                "<query xmlns='jabber:iq:search'><nick>{}</nick></query>",
                "x".repeat(MAX_TERM_BYTES + 1)
            ),
        ] {
            let reply = ask_search(module(10), "set", &query).await;
            assert_eq!(
                error_condition(&reply),
                StanzaErrorCondition::NotAcceptable,
                "{query}"
            );
        }
    }
}

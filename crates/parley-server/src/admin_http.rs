//! The admin HTTP API on `admin_http.listen`: `/health` and `/metrics` (Prometheus text) for
//! everyone who can reach the port, and the compliance archive's search, export, access log,
//! legal holds and verification for directory admins only (HTTP Basic, checked with
//! `Directory::authenticate` and `Directory::is_admin`).
//!
//! Every search and export is recorded in the access log by the archive itself, with the admin's
//! bare JID as the actor. Failed credentials and non-admins get 401 and 403 without saying
//! whether the account exists.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router as HttpRouter};
use base64::Engine;
use parley_archive::{ArchiveError, ComplianceArchive, ExportFormat, SearchFilter, qualified_user};
use parley_directory::{AuthOutcome, Directory};
use parley_proto::{Stanza, StanzaKind};
use parley_router::{Hook, HookHandler, HookOutcome, Module, Registry, Router};
use parley_storage::{LatencySnapshot, Store};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Most hits a search returns (the counts always cover every match).
pub const MAX_SEARCH_HITS: usize = 1000;
/// Hits returned when the request names no limit.
pub const DEFAULT_SEARCH_HITS: usize = 100;
/// Longest `Authorization` header accepted, in bytes.
const MAX_AUTH_HEADER: usize = 4096;

/// Stanzas received from local clients, by kind: plain counters the hook below maintains.
#[derive(Debug, Default)]
pub struct StanzaCounters {
    messages: AtomicU64,
    presences: AtomicU64,
    iqs: AtomicU64,
}

impl StanzaCounters {
    fn count(&self, kind: StanzaKind) {
        let counter = match kind {
            StanzaKind::Message => &self.messages,
            StanzaKind::Presence => &self.presences,
            StanzaKind::Iq => &self.iqs,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// (kind label, count) for each stanza kind.
    pub fn snapshot(&self) -> [(&'static str, u64); 3] {
        [
            ("message", self.messages.load(Ordering::Relaxed)),
            ("presence", self.presences.load(Ordering::Relaxed)),
            ("iq", self.iqs.load(Ordering::Relaxed)),
        ]
    }
}

/// Counts every client stanza, first of all hooks, and lets it through.
#[derive(Debug, Default)]
pub struct MetricsModule {
    pub counters: Arc<StanzaCounters>,
}

struct CountingHook(Arc<StanzaCounters>);

#[async_trait]
impl HookHandler for CountingHook {
    async fn handle(&self, _router: &Router, stanza: &mut Stanza) -> HookOutcome {
        self.0.count(stanza.kind());
        HookOutcome::Continue
    }
}

impl Module for MetricsModule {
    fn name(&self) -> &'static str {
        "metrics"
    }

    fn register(self: Arc<Self>, registry: &mut Registry) {
        registry.hook(
            Hook::ClientStanza,
            i32::MIN,
            Arc::new(CountingHook(self.counters.clone())),
        );
    }
}

/// What the handlers need.
pub struct AdminState {
    pub router: Router,
    pub directory: Arc<dyn Directory>,
    pub archive: Arc<ComplianceArchive>,
    /// For its commit times in the metrics.
    pub store: Arc<dyn Store>,
    pub counters: Arc<StanzaCounters>,
    /// Each export goes to a new directory below this one.
    pub export_root: PathBuf,
    pub domain: String,
}

/// Serves the API on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, shutdown: CancellationToken) {
    let app = routes(state);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Err(error) = result {
        tracing::error!(%error, "the admin HTTP server failed");
    }
}

/// The API's routes.
pub fn routes(state: Arc<AdminState>) -> HttpRouter {
    HttpRouter::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/archive/search", get(search))
        .route("/archive/export", post(export))
        .route("/archive/access-log", get(access_log))
        .route("/archive/holds", get(list_holds))
        .route("/archive/holds/{user}", post(set_hold).delete(release_hold))
        .route("/archive/verify", get(verify))
        .with_state(state)
}

/// An error answer: a status and a JSON `{"error": ...}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<ArchiveError> for ApiError {
    fn from(error: ArchiveError) -> Self {
        match error {
            ArchiveError::Invalid(reason) => Self::bad_request(reason),
            other => {
                tracing::error!(error = %other, "admin API request failed");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; see the server log",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.message }));
        if self.status == StatusCode::UNAUTHORIZED {
            (
                self.status,
                [(
                    header::WWW_AUTHENTICATE,
                    "Basic realm=\"parley\", charset=\"UTF-8\"",
                )],
                body,
            )
                .into_response()
        } else {
            (self.status, body).into_response()
        }
    }
}

/// `user:password` from a Basic `Authorization` header.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if value.len() > MAX_AUTH_HEADER {
        return None;
    }
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// The admin's bare JID, or 401 (no or wrong credentials) / 403 (not an admin).
async fn require_admin(state: &AdminState, headers: &HeaderMap) -> Result<String, ApiError> {
    let unauthorized = || ApiError::new(StatusCode::UNAUTHORIZED, "admin credentials required");
    let (user, password) = basic_credentials(headers).ok_or_else(unauthorized)?;
    // Either the localpart or the bare JID of this domain.
    let localpart = match user.rsplit_once('@') {
        Some((local, domain)) if domain.eq_ignore_ascii_case(&state.domain) => local,
        Some(_) => return Err(unauthorized()),
        None => user.as_str(),
    };
    match state.directory.authenticate(localpart, &password).await {
        Ok(AuthOutcome::Accepted) => {}
        Ok(AuthOutcome::Rejected) | Err(parley_directory::DirectoryError::InvalidLocalpart(_)) => {
            return Err(unauthorized());
        }
        Err(parley_directory::DirectoryError::InvalidPassword(_)) => return Err(unauthorized()),
        Err(error) => {
            tracing::warn!(%error, "admin API: the directory cannot check credentials");
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the directory is unavailable",
            ));
        }
    }
    match state.directory.is_admin(localpart).await {
        Ok(true) => Ok(format!("{}@{}", localpart.to_lowercase(), state.domain)),
        Ok(false) => Err(ApiError::new(StatusCode::FORBIDDEN, "admins only")),
        Err(error) => {
            tracing::warn!(%error, "admin API: the directory cannot check the admin flag");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the directory is unavailable",
            ))
        }
    }
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Resident set size of this process in bytes, from `/proc/self/status` (None elsewhere).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The Prometheus text format, one metric family after another.
#[derive(Default)]
struct MetricsText(String);

impl MetricsText {
    fn family(&mut self, name: &str, help: &str, kind: &str) {
        use std::fmt::Write;
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// A gauge or counter: one sample per optional `(label, value)` pair.
    fn samples(&mut self, name: &str, help: &str, kind: &str, samples: &[(Option<(&str, &str)>, u64)]) {
        use std::fmt::Write;
        self.family(name, help, kind);
        for (label, value) in samples {
            let _ = match label {
                Some((key, label_value)) => writeln!(self.0, "{name}{{{key}=\"{label_value}\"}} {value}"),
                None => writeln!(self.0, "{name} {value}"),
            };
        }
    }

    /// A histogram: cumulative buckets, `+Inf`, sum and count.
    fn histogram(&mut self, name: &str, help: &str, histogram: &LatencySnapshot) {
        use std::fmt::Write;
        self.family(name, help, "histogram");
        for (bound, count) in &histogram.buckets {
            let _ = writeln!(self.0, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(self.0, "{name}_bucket{{le=\"+Inf\"}} {}", histogram.count);
        let _ = writeln!(self.0, "{name}_sum {}", histogram.sum_seconds);
        let _ = writeln!(self.0, "{name}_count {}", histogram.count);
    }
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    let mut text = MetricsText::default();
    text.samples(
        "parley_sessions_online",
        "Bound client sessions.",
        "gauge",
        &[(None, state.router.sessions().count() as u64)],
    );
    let stanzas: Vec<(Option<(&str, &str)>, u64)> = state
        .counters
        .snapshot()
        .into_iter()
        .map(|(kind, count)| (Some(("kind", kind)), count))
        .collect();
    text.samples(
        "parley_stanzas_received_total",
        "Stanzas received from local clients, by kind.",
        "counter",
        &stanzas,
    );
    match state.archive.head().await {
        Ok(head) => text.samples(
            "parley_archive_records",
            "Entries in the compliance archive's chain (messages, holds, purges, access records).",
            "gauge",
            &[(None, head.seq)],
        ),
        Err(error) => tracing::warn!(%error, "metrics: cannot read the archive head"),
    }
    if let Some(rss) = resident_bytes() {
        text.samples(
            "parley_process_resident_memory_bytes",
            "Resident set size of the server process.",
            "gauge",
            &[(None, rss)],
        );
    }
    text.histogram(
        "parley_archive_record_seconds",
        "From a message's acceptance until its compliance record is durable; delivery waits for it.",
        &state.archive.record_times(),
    );
    if let Some(times) = state.store.commit_times() {
        text.histogram(
            "parley_storage_commit_seconds",
            "Durable commits of the store (group commits, fsync included); every accepted message waits for one.",
            &times,
        );
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text.0,
    )
        .into_response()
}

/// RFC 3339, a bare date (its first or, for an end, last microsecond, UTC), or microseconds.
fn parse_time(text: &str, end_of_day: bool) -> Result<i64, ApiError> {
    use time::format_description::well_known::Rfc3339;
    let text = text.trim();
    if let Ok(micros) = text.parse::<i64>() {
        return Ok(micros);
    }
    let at = if let Ok(at) = time::OffsetDateTime::parse(text, &Rfc3339) {
        at
    } else {
        let date = time::Date::parse(text, time::macros::format_description!("[year]-[month]-[day]"))
            .map_err(|_| ApiError::bad_request(format!("{text:?} is neither RFC 3339 nor a date")))?;
        let start = date.midnight().assume_utc();
        if end_of_day {
            start + time::Duration::days(1) - time::Duration::microseconds(1)
        } else {
            start
        }
    };
    i64::try_from(at.unix_timestamp_nanos() / 1000).map_err(|_| ApiError::bad_request("time out of range"))
}

/// Search and export filters as query parameters or JSON fields.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilterParams {
    /// Comma-separated bare JIDs that must all take part.
    participants: Option<String>,
    from: Option<String>,
    to: Option<String>,
    department: Option<String>,
    start: Option<String>,
    end: Option<String>,
    keyword: Option<String>,
    limit: Option<usize>,
    /// Export only: json, csv, eml, mbox...
    format: Option<String>,
}

/// A trimmed value, None when absent or blank.
fn nonempty(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

impl FilterParams {
    /// The filter, with bare localparts taken to be of `domain` (as on the command line).
    fn filter(&self, domain: &str) -> Result<SearchFilter, ApiError> {
        Ok(SearchFilter {
            participants: nonempty(&self.participants)
                .map(|list| {
                    list.split(',')
                        .map(str::trim)
                        .filter(|jid| !jid.is_empty())
                        .map(|jid| qualified_user(jid, domain))
                        .collect()
                })
                .unwrap_or_default(),
            from: nonempty(&self.from).map(|jid| qualified_user(jid, domain)),
            to: nonempty(&self.to).map(|jid| qualified_user(jid, domain)),
            department: nonempty(&self.department).map(str::to_owned),
            start: nonempty(&self.start).map(|t| parse_time(t, false)).transpose()?,
            end: nonempty(&self.end).map(|t| parse_time(t, true)).transpose()?,
            keyword: nonempty(&self.keyword).map(str::to_owned),
        })
    }
}

async fn search(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    params: Result<Query<FilterParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let actor = require_admin(&state, &headers).await?;
    let Query(params) = params.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    if params.format.is_some() {
        return Err(ApiError::bad_request("format is for exports"));
    }
    let limit = params.limit.unwrap_or(DEFAULT_SEARCH_HITS).min(MAX_SEARCH_HITS);
    let filter = params.filter(&state.domain)?;
    let result = state.archive.search(&actor, &filter, limit).await?;
    Ok(Json(result).into_response())
}

/// A name for a new export directory: UTC time plus a counter, so two exports never collide.
fn export_dir_name(now: time::OffsetDateTime, sequence: u64) -> String {
    format!(
        "export-{:04}{:02}{:02}T{:02}{:02}{:02}Z-{sequence}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

static EXPORT_SEQUENCE: AtomicU64 = AtomicU64::new(1);

async fn export(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: Result<Json<FilterParams>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let actor = require_admin(&state, &headers).await?;
    let Json(params) = body.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let format: ExportFormat = params
        .format
        .as_deref()
        .unwrap_or("jsonl")
        .parse()
        .map_err(|error: String| ApiError::bad_request(error.to_string()))?;
    if params.limit.is_some() {
        return Err(ApiError::bad_request("limit is for searches"));
    }
    let filter = params.filter(&state.domain)?;
    let dir = state.export_root.join(export_dir_name(
        time::OffsetDateTime::now_utc(),
        EXPORT_SEQUENCE.fetch_add(1, Ordering::Relaxed),
    ));
    let manifest = state.archive.export(&actor, &filter, format, &dir).await?;
    Ok(Json(serde_json::json!({
        "directory": dir.display().to_string(),
        "manifest": manifest,
    }))
    .into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct AccessLogParams {
    limit: Option<usize>,
    /// Only entries with a smaller sequence number (the previous page's `next_before`).
    before: Option<u64>,
}

async fn access_log(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    params: Result<Query<AccessLogParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers).await?;
    let Query(params) = params.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let limit = params
        .limit
        .unwrap_or(parley_archive::MAX_LISTED)
        .min(parley_archive::MAX_LISTED);
    let entries = state.archive.access_log(limit, params.before).await?;
    // A full page may have older entries behind it: say where the next page starts.
    let next_before = entries
        .last()
        .filter(|_| entries.len() == limit)
        .map(|oldest| oldest.seq);
    Ok(Json(serde_json::json!({
        "count": entries.len(),
        "entries": entries,
        "next_before": next_before,
    }))
    .into_response())
}

async fn list_holds(State(state): State<Arc<AdminState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    require_admin(&state, &headers).await?;
    let holds = state.archive.holds().await?;
    Ok(Json(serde_json::json!({ "holds": holds })).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct HoldParams {
    reason: Option<String>,
}

/// The hold reason from a JSON body `{"reason": ...}` or, without a body, `?reason=`.
fn hold_reason(body: &[u8], query: HoldParams) -> Result<String, ApiError> {
    let from_body = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let params: HoldParams = serde_json::from_slice(body)
            .map_err(|error| ApiError::bad_request(format!("the body is not a hold request: {error}")))?;
        params.reason
    };
    from_body
        .or(query.reason)
        .ok_or_else(|| ApiError::bad_request("a reason is required"))
}

async fn change_hold(
    state: &AdminState,
    headers: &HeaderMap,
    user: &str,
    query: Result<Query<HoldParams>, axum::extract::rejection::QueryRejection>,
    body: &[u8],
    held: bool,
) -> Result<Response, ApiError> {
    let actor = require_admin(state, headers).await?;
    let Query(query) = query.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let reason = hold_reason(body, query)?;
    let user = qualified_user(user, &state.domain);
    let hold = if held {
        state.archive.set_hold(&actor, &user, &reason).await?
    } else {
        state.archive.release_hold(&actor, &user, &reason).await?
    };
    Ok(Json(serde_json::json!({ "held": held, "hold": hold })).into_response())
}

async fn set_hold(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    Path(user): Path<String>,
    query: Result<Query<HoldParams>, axum::extract::rejection::QueryRejection>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    change_hold(&state, &headers, &user, query, &body, true).await
}

async fn release_hold(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    Path(user): Path<String>,
    query: Result<Query<HoldParams>, axum::extract::rejection::QueryRejection>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    change_hold(&state, &headers, &user, query, &body, false).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct VerifyParams {
    /// Checkpoints kept outside the store, `SEQ:HEX` separated by commas.
    checkpoints: Option<String>,
}

/// Most outside checkpoints one request may name.
const MAX_OUTSIDE_CHECKPOINTS: usize = 1000;

async fn verify(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    params: Result<Query<VerifyParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers).await?;
    let Query(params) = params.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let listed = params.checkpoints.unwrap_or_default();
    let outside = listed
        .split(',')
        .filter(|item| !item.trim().is_empty())
        .take(MAX_OUTSIDE_CHECKPOINTS + 1)
        .map(str::parse::<parley_archive::OutsideCheckpoint>)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| ApiError::bad_request(error.to_string()))?;
    if outside.len() > MAX_OUTSIDE_CHECKPOINTS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_OUTSIDE_CHECKPOINTS} checkpoints per request"
        )));
    }
    let report = state.archive.verify_against(&outside).await?;
    let mut body = BTreeMap::new();
    body.insert("intact", serde_json::json!(report.is_intact()));
    body.insert("records", serde_json::json!(report.records));
    body.insert("messages", serde_json::json!(report.messages));
    body.insert("purged", serde_json::json!(report.purged));
    body.insert("head", serde_json::json!(report.head));
    body.insert("outside_matched", serde_json::json!(report.outside_matched));
    body.insert("summary", serde_json::json!(report.to_string()));
    if let Some(problem) = &report.problem {
        body.insert("problem", serde_json::json!(problem.to_string()));
        body.insert("place", serde_json::json!(problem.place()));
    }
    Ok(Json(body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn basic_credentials_are_decoded_and_garbage_refused() {
        let encoded = base64::engine::general_purpose::STANDARD.encode("alice:pa:ss");
        assert_eq!(
            basic_credentials(&headers(&format!("Basic {encoded}"))),
            Some(("alice".into(), "pa:ss".into()))
        );
        assert_eq!(
            basic_credentials(&headers(&format!("basic {encoded}"))),
            Some(("alice".into(), "pa:ss".into()))
        );
        assert_eq!(basic_credentials(&headers(&format!("Bearer {encoded}"))), None);
        assert_eq!(basic_credentials(&headers("Basic !!!not-base64")), None);
        let no_colon = base64::engine::general_purpose::STANDARD.encode("alice");
        assert_eq!(basic_credentials(&headers(&format!("Basic {no_colon}"))), None);
        let huge = format!("Basic {}", "A".repeat(MAX_AUTH_HEADER));
        assert_eq!(basic_credentials(&headers(&huge)), None);
        assert_eq!(basic_credentials(&HeaderMap::new()), None);
    }

    #[test]
    fn times_parse_in_three_forms_and_refuse_junk() {
        assert_eq!(
            parse_time("1700000000000000", false).unwrap(),
            1_700_000_000_000_000
        );
        assert_eq!(parse_time("1970-01-01T00:00:01Z", false).unwrap(), 1_000_000);
        assert_eq!(parse_time("1970-01-02", false).unwrap(), 86_400_000_000);
        assert_eq!(parse_time("1970-01-01", true).unwrap(), 86_400_000_000 - 1);
        assert_eq!(
            parse_time("soon", false).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn filters_split_participants_and_drop_empty_values() {
        let params = FilterParams {
            participants: Some(" alice@x , ,bob".into()),
            from: Some("carol".into()),
            keyword: Some("  ".into()),
            start: Some("1970-01-01".into()),
            ..FilterParams::default()
        };
        let filter = params.filter("x").unwrap();
        assert_eq!(
            filter.participants,
            ["alice@x", "bob@x"],
            "a localpart is of this domain"
        );
        assert_eq!(filter.from.as_deref(), Some("carol@x"));
        assert_eq!(filter.keyword, None);
        assert_eq!(filter.start, Some(0));
    }

    #[test]
    fn counters_count_by_kind() {
        let counters = StanzaCounters::default();
        counters.count(StanzaKind::Message);
        counters.count(StanzaKind::Message);
        counters.count(StanzaKind::Iq);
        assert_eq!(counters.snapshot(), [("message", 2), ("presence", 0), ("iq", 1)]);
    }

    #[test]
    fn histograms_are_written_in_the_prometheus_text_format() {
        let histogram = LatencySnapshot {
            buckets: vec![(0.00025, 3), (0.001, 5)],
            count: 6,
            sum_seconds: 2.5,
        };
        let mut text = MetricsText::default();
        text.histogram("x_seconds", "Help.", &histogram);
        assert_eq!(
            text.0,
            "# HELP x_seconds Help.\n# TYPE x_seconds histogram\n\
             x_seconds_bucket{le=\"0.00025\"} 3\nx_seconds_bucket{le=\"0.001\"} 5\n\
             x_seconds_bucket{le=\"+Inf\"} 6\nx_seconds_sum 2.5\nx_seconds_count 6\n"
        );
    }

    #[test]
    fn export_names_are_sortable_and_unique_per_sequence() {
        let at = time::macros::datetime!(2025-03-04 05:06:07 UTC);
        assert_eq!(export_dir_name(at, 7), "export-20250304T050607Z-7");
        assert_ne!(export_dir_name(at, 7), export_dir_name(at, 8));
    }
}

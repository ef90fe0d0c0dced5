//! Reading User records over the Salesforce REST API: the subscriber's way to fill the holes a
//! change stream cannot.
//!
//! Change Data Capture tells usersync what changed, but three situations leave it with less than
//! the facts (docs/subscriber.md; docs/salesforce.md, "Change events: gaps and overflows"), and
//! each is answered by a SOQL query here:
//!
//! - **first start**: nothing has been seen yet, so every user is read ([`SalesforceRest::all_users`],
//!   or page by page with [`SalesforceRest::user_pages`]);
//! - **a `GAP_*` event**: Salesforce names the changed users but not the change, so those users
//!   are re-read by id ([`SalesforceRest::users_by_ids`]);
//! - **a `GAP_OVERFLOW` or an expired replay id**: the changes themselves are lost, so everyone
//!   modified since the last known commit (minus a safety margin the caller applies) is read
//!   ([`SalesforceRest::users_modified_since`]).
//!
//! The queries select exactly what a [`SalesforceUser`] holds ([`USER_FIELDS`]). A query on
//! `User` returns inactive users too, which matters: a deactivation is the event the remap
//! rule exists for.
//!
//! # Paging and URL length
//!
//! A result comes in pages of up to 2,000 records, each naming the next with a
//! `nextRecordsUrl` relative to the instance URL, until `done`. An org can have tens of
//! thousands of users, so [`SalesforceRest::query_pages`] is a stream that holds one page at a
//! time; the collecting methods are for results known to be small. The URL is joined to the
//! instance URL as text, never resolved as a relative reference, because an instance URL may
//! carry a path. A `nextRecordsUrl` that leads to another origin than the instance URL's is
//! refused, not followed: the request carries the bearer token (`endpoint::origin`). Every
//! answer is read up to [`API_PAGE_CAP`] bytes (`endpoint::body`).
//!
//! A re-read by id is a `GET` whose SOQL sits in the query string, and URLs have a length
//! limit on the way (Salesforce documents 16,384 bytes; proxies may allow less). Ids are
//! therefore sent in chunks of at most [`MAX_IDS_PER_QUERY`] and at most
//! [`MAX_QUERY_URL_BYTES`] of URL (percent-encoded, instance URL included), whichever is
//! smaller: 200 ids of 18 characters make about 5.5 KB.
//!
//! # Failures
//!
//! - **401** `INVALID_SESSION_ID`: the [`TokenSource`] is asked for a new token once and the
//!   request is repeated once. A second 401 is [`SalesforceRestError::SessionInvalid`]: the
//!   credentials no longer give a usable session, and the caller marks the connection
//!   `credentials_changed`.
//! - **403** `INSUFFICIENT_ACCESS…`, `API_DISABLED_FOR_ORG`, `API_CURRENTLY_DISABLED`:
//!   [`SalesforceRestError::PermissionDenied`], `permissions_changed`. `REQUEST_LIMIT_EXCEEDED`
//!   is its own variant: the org's API budget is spent and waiting is the remedy.
//! - **400** `INVALID_FIELD` on the fixed field list means a field became invisible to the
//!   integration user (field-level security), so it is also `permissions_changed`; other 400s
//!   (`MALFORMED_QUERY`, `INVALID_QUERY_LOCATOR`, …) are kept with their code and message.
//! - **5xx and network errors** are retried with jittered exponential backoff (`backon`) a few
//!   times ([`RestRetry`]) before they reach the caller, who pauses.
//!
//! Every error names what was being done (`query page 2 of SELECT …`); the caller adds why
//! (`while re-reading 3 users after a GAP_UPDATE`). The access token never appears in an error
//! or a log line.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use futures::{Stream, TryStreamExt, stream};
use reqwest::StatusCode;
use reqwest::header::ACCEPT;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::auth::{
    DisconnectReason, SalesforceAuthError, SalesforceCredentials, SalesforceSession, Secret,
    obtain_token,
};
use crate::connection::{ConnectionFailure, Verdict};
use crate::endpoint::body::{API_PAGE_CAP, BodyError, read_capped_text};
use crate::endpoint::origin::check_same_origin;
use crate::model::salesforce_id::SalesforceId;
use crate::model::salesforce_user::SalesforceUser;

/// The API version used unless another is chosen (Winter '25).
pub const DEFAULT_API_VERSION: &str = "v62.0";

/// The User fields a [`SalesforceUser`] is made of, in the order they are selected.
pub const USER_FIELDS: &[&str] = &[
    "Id",
    "Username",
    "Email",
    "FirstName",
    "LastName",
    "Title",
    "IsActive",
    "CreatedDate",
    "LastModifiedDate",
];

/// At most this many ids go into one `WHERE Id IN (…)`.
pub const MAX_IDS_PER_QUERY: usize = 200;
/// At most this many bytes of URL (instance URL, path and encoded SOQL) per query request.
pub const MAX_QUERY_URL_BYTES: usize = 8 * 1024;

const QUERY_OPTIONS_HEADER: &str = "Sforce-Query-Options";
const LIMIT_INFO_HEADER: &str = "Sforce-Limit-Info";

/// Where the client gets access tokens.
///
/// The client asks for the current token before each request; after a 401 it calls
/// [`TokenSource::renew`] with the refused token, once, and repeats the request with the
/// answer. Passing the refused token lets a shared source tell "already replaced by another
/// caller" from "mint a new one", so concurrent requests hitting one expiry cause one mint.
#[async_trait]
pub trait TokenSource: Send + Sync {
    /// The access token to use now.
    async fn access_token(&self) -> Result<Secret, SalesforceAuthError>;

    /// A token other than `rejected`, which Salesforce refused. Returning `rejected` again
    /// says no other is available; the client then fails with `SessionInvalid` without
    /// repeating the request.
    async fn renew(&self, rejected: &Secret) -> Result<Secret, SalesforceAuthError>;
}

/// A [`TokenSource`] that holds one session and gets a new one from the token endpoint with
/// the stored credentials (any of the three flows) when the old one is refused.
pub struct CredentialsTokenSource {
    http: reqwest::Client,
    credentials: SalesforceCredentials,
    session: tokio::sync::Mutex<Option<SalesforceSession>>,
}

impl fmt::Debug for CredentialsTokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialsTokenSource")
            .field("flow", &self.credentials.flow())
            .finish_non_exhaustive()
    }
}

impl CredentialsTokenSource {
    /// A source that obtains its first session on first use.
    pub fn new(http: reqwest::Client, credentials: SalesforceCredentials) -> Self {
        CredentialsTokenSource {
            http,
            credentials,
            session: tokio::sync::Mutex::new(None),
        }
    }

    /// A source starting from a session already obtained (for example the one whose
    /// `instance_url` configured the client).
    pub fn with_session(
        http: reqwest::Client,
        credentials: SalesforceCredentials,
        session: SalesforceSession,
    ) -> Self {
        CredentialsTokenSource {
            http,
            credentials,
            session: tokio::sync::Mutex::new(Some(session)),
        }
    }

    /// The current session, obtaining one if there is none yet.
    pub async fn session(&self) -> Result<SalesforceSession, SalesforceAuthError> {
        let mut held = self.session.lock().await;
        if let Some(session) = held.as_ref() {
            return Ok(session.clone());
        }
        let session = obtain_token(&self.http, &self.credentials).await?;
        *held = Some(session.clone());
        Ok(session)
    }
}

impl CredentialsTokenSource {
    /// Revokes what this source holds (a manual disconnect): the current session's access
    /// token, and with the refresh-token flow the refresh token too, which ends every session
    /// it gave — a reconnect then needs a new authorization. JWT bearer and client
    /// credentials can mint again, so only their session ends. Returns what was revoked.
    pub async fn revoke(&self) -> Result<Vec<&'static str>, super::auth::RevokeError> {
        let mut revoked = Vec::new();
        if let Some(session) = self.session.lock().await.take() {
            super::auth::revoke(
                &self.http,
                &session.instance_url,
                "access token",
                &session.access_token,
            )
            .await?;
            revoked.push("access token");
        }
        if let SalesforceCredentials::RefreshToken { refresh_token, .. } = &self.credentials {
            super::auth::revoke(
                &self.http,
                self.credentials.host(),
                "refresh token",
                refresh_token,
            )
            .await?;
            revoked.push("refresh token");
        }
        Ok(revoked)
    }
}

#[async_trait]
impl TokenSource for CredentialsTokenSource {
    async fn access_token(&self) -> Result<Secret, SalesforceAuthError> {
        Ok(self.session().await?.access_token)
    }

    async fn renew(&self, rejected: &Secret) -> Result<Secret, SalesforceAuthError> {
        let mut held = self.session.lock().await;
        if let Some(session) = held.as_ref()
            && session.access_token != *rejected
        {
            return Ok(session.access_token.clone());
        }
        let session = obtain_token(&self.http, &self.credentials).await?;
        let token = session.access_token.clone();
        *held = Some(session);
        Ok(token)
    }
}

/// The bounds of the retry of 5xx answers and network errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestRetry {
    /// Retries after the first attempt.
    pub max_retries: usize,
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RestRetry {
    /// Three retries, from half a second up to eight: about fifteen seconds of outage ridden
    /// out before the caller hears of it.
    fn default() -> Self {
        RestRetry {
            max_retries: 3,
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(8),
        }
    }
}

impl RestRetry {
    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay.min(self.max_delay))
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_retries)
            .with_jitter()
    }
}

/// What the client was doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestOperation {
    /// One page (numbered from 1) of a SOQL query.
    Query { page: u32, soql: String },
    /// `GET …/sobjects/User/{id}`.
    ReadUser { id: SalesforceId },
    /// `GET /services/data/`.
    ListVersions,
    /// Setting the client up.
    Configure,
}

impl fmt::Display for RestOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestOperation::Query { page, soql } => {
                write!(f, "query page {page} of {}", abbreviate(soql, 120))
            }
            RestOperation::ReadUser { id } => write!(f, "reading Salesforce user {id}"),
            RestOperation::ListVersions => f.write_str("listing the Salesforce API versions"),
            RestOperation::Configure => f.write_str("configuring the Salesforce REST client"),
        }
    }
}

/// At most `limit` characters of `text`, marked when cut.
fn abbreviate(text: &str, limit: usize) -> String {
    match text.char_indices().nth(limit) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// A Salesforce REST failure, after the client's own remedies (one token renewal, the
/// transient-failure retries).
#[derive(Debug, thiserror::Error)]
pub enum SalesforceRestError {
    /// 401 again with a renewed token: the session cannot be used.
    #[error(
        "while {operation}: the Salesforce session is invalid even with a renewed access token ({code}: {message})"
    )]
    SessionInvalid {
        operation: RestOperation,
        code: String,
        message: String,
    },
    /// The token source could not give a token.
    #[error("while {operation}: {source}")]
    Token {
        operation: RestOperation,
        #[source]
        source: SalesforceAuthError,
    },
    /// 403 for want of a permission: `INSUFFICIENT_ACCESS…`, `API_DISABLED_FOR_ORG`,
    /// `API_CURRENTLY_DISABLED`.
    #[error("while {operation}: permission denied (HTTP 403 {code}): {message}")]
    PermissionDenied {
        operation: RestOperation,
        code: String,
        message: String,
    },
    /// 403 `REQUEST_LIMIT_EXCEEDED`: the org's API allocation is used up for now.
    #[error("while {operation}: the org's API request limit is exhausted: {message}")]
    RequestLimitExceeded {
        operation: RestOperation,
        message: String,
    },
    /// Any other 4xx, with the body's first error.
    #[error("while {operation}: Salesforce refused (HTTP {status} {code}): {message}")]
    Refused {
        operation: RestOperation,
        status: u16,
        code: String,
        message: String,
    },
    /// A 5xx that outlasted the retries.
    #[error(
        "while {operation}: Salesforce answered HTTP {status} ({code}: {message}) after {attempts} attempts"
    )]
    Server {
        operation: RestOperation,
        status: u16,
        code: String,
        message: String,
        attempts: u32,
    },
    /// A network failure that outlasted the retries.
    #[error("while {operation}: network error after {attempts} attempts: {source}")]
    Network {
        operation: RestOperation,
        attempts: u32,
        #[source]
        source: reqwest::Error,
    },
    /// A success whose body is not what the API documents.
    #[error("while {operation}: unexpected answer: {detail}")]
    Decode {
        operation: RestOperation,
        detail: String,
    },
    #[error("while {operation}: {detail}")]
    Config {
        operation: RestOperation,
        detail: String,
    },
}

impl SalesforceRestError {
    /// The REST `errorCode`, when Salesforce sent one.
    pub fn error_code(&self) -> Option<&str> {
        match self {
            SalesforceRestError::SessionInvalid { code, .. }
            | SalesforceRestError::PermissionDenied { code, .. }
            | SalesforceRestError::Refused { code, .. }
            | SalesforceRestError::Server { code, .. } => {
                Some(code.as_str()).filter(|c| !c.is_empty())
            }
            SalesforceRestError::RequestLimitExceeded { .. } => Some("REQUEST_LIMIT_EXCEEDED"),
            _ => None,
        }
    }

    /// The reason to mark the connection disconnected, or `None` when the failure is
    /// transient (pause and try again) or about one request rather than the connection.
    pub fn disconnect_reason(&self) -> Option<DisconnectReason> {
        match self {
            SalesforceRestError::SessionInvalid { .. } => {
                Some(DisconnectReason::CredentialsChanged)
            }
            SalesforceRestError::Token { source, .. } => source.disconnect_reason(),
            SalesforceRestError::PermissionDenied { .. } => {
                Some(DisconnectReason::PermissionsChanged)
            }
            SalesforceRestError::Refused { code, .. } => match code.as_str() {
                "INVALID_FIELD" => Some(DisconnectReason::PermissionsChanged),
                "NOT_FOUND" | "INVALID_QUERY_LOCATOR" => None,
                _ => Some(DisconnectReason::Other),
            },
            SalesforceRestError::RequestLimitExceeded { .. }
            | SalesforceRestError::Server { .. }
            | SalesforceRestError::Network { .. } => None,
            SalesforceRestError::Decode { .. } | SalesforceRestError::Config { .. } => {
                Some(DisconnectReason::Other)
            }
        }
    }
}

/// What a REST failure means for the Salesforce connection: its
/// [`SalesforceRestError::disconnect_reason`], except that a refusal about one record or one
/// query page leaves the connection alone rather than degrading it.
impl ConnectionFailure for SalesforceRestError {
    fn verdict(&self) -> Verdict {
        match self {
            // About one record or one query page, not about the connection.
            SalesforceRestError::Refused { code, .. }
                if matches!(code.as_str(), "NOT_FOUND" | "INVALID_QUERY_LOCATOR") =>
            {
                Verdict::Unaffected
            }
            other => Verdict::from_reason(other.disconnect_reason()),
        }
    }
}

/// The first error object of a REST error body (a JSON array of `{message, errorCode, fields}`:
/// docs/salesforce.md, "REST: errors, queries, records"), or the body itself when it is not one.
fn first_error(body: &str) -> (String, String) {
    #[derive(Deserialize)]
    struct Item {
        #[serde(rename = "errorCode", default)]
        error_code: String,
        #[serde(default)]
        message: String,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Body {
        Many(Vec<Item>),
        One(Item),
    }
    match serde_json::from_str::<Body>(body) {
        Ok(Body::Many(items)) if !items.is_empty() => {
            let item = items.into_iter().next().expect("not empty");
            (item.error_code, item.message)
        }
        Ok(Body::One(item)) => (item.error_code, item.message),
        _ => (String::new(), abbreviate(body, 300)),
    }
}

/// The final error for a refusal that is neither 401 nor 5xx.
pub fn refusal(operation: RestOperation, status: StatusCode, body: &str) -> SalesforceRestError {
    let (code, message) = first_error(body);
    let permission = code.starts_with("INSUFFICIENT_ACCESS")
        || code == "API_DISABLED_FOR_ORG"
        || code == "API_CURRENTLY_DISABLED";
    match status {
        StatusCode::FORBIDDEN if code == "REQUEST_LIMIT_EXCEEDED" => {
            SalesforceRestError::RequestLimitExceeded { operation, message }
        }
        StatusCode::FORBIDDEN if permission => SalesforceRestError::PermissionDenied {
            operation,
            code,
            message,
        },
        _ => SalesforceRestError::Refused {
            operation,
            status: status.as_u16(),
            code,
            message,
        },
    }
}

/// How one attempt went wrong.
#[derive(Debug)]
enum Failure {
    Network(reqwest::Error),
    Server { status: StatusCode, body: String },
    Final(SalesforceRestError),
}

impl Failure {
    fn is_transient(&self) -> bool {
        matches!(self, Failure::Network(_) | Failure::Server { .. })
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Network(error) => write!(f, "network error: {error}"),
            Failure::Server { status, body } => {
                let (code, message) = first_error(body);
                write!(f, "HTTP {} {code}: {message}", status.as_u16())
            }
            Failure::Final(error) => write!(f, "{error}"),
        }
    }
}

/// What an attempt that reached Salesforce got.
enum Reply {
    Success(String),
    /// 401, with the body.
    Unauthorized(String),
}

/// `Sforce-Limit-Info: api-usage=<used>/<limit>`: the org's rolling 24-hour API budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiUsage {
    pub used: u64,
    pub limit: u64,
}

impl ApiUsage {
    /// Reads the header's value.
    pub fn parse(value: &str) -> Option<ApiUsage> {
        let usage = value
            .split([';', ','])
            .find_map(|part| part.trim().strip_prefix("api-usage="))?;
        let (used, limit) = usage.split_once('/')?;
        Some(ApiUsage {
            used: used.trim().parse().ok()?,
            limit: limit.trim().parse().ok()?,
        })
    }
}

/// One record of a query result: its `attributes` and its fields as the API named them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Record {
    #[serde(default)]
    pub attributes: Option<RecordAttributes>,
    #[serde(flatten)]
    pub fields: serde_json::Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RecordAttributes {
    #[serde(rename = "type")]
    pub sobject_type: String,
    #[serde(default)]
    pub url: Option<String>,
}

impl Record {
    /// A field's value; null when absent.
    pub fn get(&self, field: &str) -> &Value {
        self.fields.get(field).unwrap_or(&Value::Null)
    }
}

/// One page of a query result.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryPage<T> {
    /// 1 for the first page.
    pub number: u32,
    /// The size of the whole result.
    pub total_size: u64,
    /// True on the last page.
    pub done: bool,
    pub records: Vec<T>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct QueryResponse {
    total_size: u64,
    done: bool,
    #[serde(default)]
    next_records_url: Option<String>,
    records: Vec<Record>,
}

/// One API version the org serves, from `GET /services/data/`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ApiVersion {
    pub label: String,
    pub url: String,
    pub version: String,
}

/// Which users a [`SalesforceRest::user_pages`] query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserQuery {
    /// Every user, active or not (the initial load).
    All,
    /// Users whose `LastModifiedDate` is at or after the moment (the resync). The moment is
    /// rounded down to the second, as SOQL datetime literals are written, so nothing at the
    /// boundary is missed.
    ModifiedSince(DateTime<Utc>),
}

impl UserQuery {
    /// Users modified at or after `since` minus `margin`. `since` comes from a change event's
    /// commit timestamp, which may be anywhere in chrono's calendar: a margin reaching before
    /// its start stops there instead of overflowing.
    pub fn modified_since(since: DateTime<Utc>, margin: Duration) -> UserQuery {
        let from = TimeDelta::from_std(margin)
            .ok()
            .and_then(|margin| since.checked_sub_signed(margin))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        UserQuery::ModifiedSince(from)
    }

    /// The SOQL statement.
    pub fn soql(&self) -> String {
        let select = format!("SELECT {} FROM User", USER_FIELDS.join(", "));
        match self {
            UserQuery::All => format!("{select} ORDER BY Id"),
            UserQuery::ModifiedSince(since) => format!(
                "{select} WHERE LastModifiedDate >= {} ORDER BY Id",
                soql_datetime(*since)
            ),
        }
    }
}

/// A SOQL datetime literal (unquoted, UTC, whole seconds).
pub fn soql_datetime(moment: DateTime<Utc>) -> String {
    moment.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The SOQL re-read of `ids`.
fn users_by_ids_soql(ids: &[SalesforceId]) -> String {
    let list: Vec<String> = ids.iter().map(|id| format!("'{id}'")).collect();
    format!(
        "SELECT {} FROM User WHERE Id IN ({})",
        USER_FIELDS.join(", "),
        list.join(",")
    )
}

/// The length of `text` percent-encoded in a query string.
fn encoded_len(text: &str) -> usize {
    url::form_urlencoded::byte_serialize(text.as_bytes())
        .map(str::len)
        .sum()
}

/// A Salesforce datetime as the REST API renders it (`2024-06-18T11:30:45.000+0000`); RFC 3339
/// is accepted too.
pub fn parse_datetime(raw: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M:%S%.f%z")
        .or_else(|_| DateTime::parse_from_rfc3339(raw))
        .map(|moment| moment.with_timezone(&Utc))
        .map_err(|error| format!("{raw:?} is not a Salesforce datetime: {error}"))
}

/// A [`SalesforceUser`] from a record holding [`USER_FIELDS`].
pub fn user_from_record(record: &Record) -> Result<SalesforceUser, String> {
    let text = |field: &str| -> Result<Option<String>, String> {
        match record.get(field) {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s.clone())),
            other => Err(format!("{field} is {other}, not text")),
        }
    };
    let date = |field: &str| -> Result<Option<DateTime<Utc>>, String> {
        text(field)?
            .map(|raw| parse_datetime(&raw).map_err(|e| format!("{field}: {e}")))
            .transpose()
    };
    let raw_id = text("Id")?.ok_or("the record has no Id")?;
    let id = SalesforceId::parse(&raw_id).map_err(|e| e.to_string())?;
    let is_active = record.get("IsActive").as_bool().ok_or_else(|| {
        format!(
            "user {id}: IsActive is {}, not a boolean",
            record.get("IsActive")
        )
    })?;
    let with_id = |error: String| format!("user {id}: {error}");
    Ok(SalesforceUser {
        email: text("Email").map_err(with_id)?,
        username: text("Username").map_err(with_id)?,
        first_name: text("FirstName").map_err(with_id)?,
        last_name: text("LastName").map_err(with_id)?,
        title: text("Title").map_err(with_id)?,
        is_active,
        created_date: date("CreatedDate").map_err(with_id)?,
        last_modified_date: date("LastModifiedDate").map_err(with_id)?,
        applied: None,
        id,
    })
}

/// Reads the body of `GET …/sobjects/User/{id}`: the user, who must be the one asked for.
/// Pure.
pub fn read_user(body: &str, asked: &SalesforceId) -> Result<SalesforceUser, String> {
    let record: Record = serde_json::from_str(body).map_err(|error| error.to_string())?;
    let user = user_from_record(&record)?;
    if user.id != *asked {
        return Err(format!("asked for user {asked}, got user {}", user.id));
    }
    Ok(user)
}

/// Reads page `number` of a query result from its body: the records converted by `convert`,
/// and the absolute URL of the next page unless this one is the last. Pure.
pub fn read_query_page<T>(
    body: &str,
    number: u32,
    instance_url: &str,
    convert: fn(Record) -> Result<T, String>,
) -> Result<(QueryPage<T>, Option<String>), String> {
    let body: QueryResponse = serde_json::from_str(body).map_err(|error| error.to_string())?;
    let next = match (body.done, body.next_records_url) {
        (true, _) => None,
        (false, Some(path)) => Some(next_page_url(instance_url, &path)?),
        (false, None) => return Err("done is false but there is no nextRecordsUrl".to_owned()),
    };
    let records = body
        .records
        .into_iter()
        .map(convert)
        .collect::<Result<Vec<T>, String>>()?;
    let page = QueryPage {
        number,
        total_size: body.total_size,
        done: next.is_none(),
        records,
    };
    Ok((page, next))
}

/// `nextRecordsUrl` as an absolute URL. Salesforce sends a path under the instance URL, joined
/// as text because the instance URL may carry a path (a protocol-relative `//host/…` stays a
/// path); an absolute URL is taken as it is. Either way it must stay on the instance's origin,
/// the only place the access token goes ([`crate::endpoint::origin`]).
pub fn next_page_url(instance_url: &str, next: &str) -> Result<String, String> {
    let joined = if next.starts_with("https://") || next.starts_with("http://") {
        next.to_owned()
    } else {
        format!(
            "{}/{}",
            instance_url.trim_end_matches('/'),
            next.trim_start_matches('/')
        )
    };
    let instance = url::Url::parse(instance_url)
        .map_err(|error| format!("instance URL {instance_url:?}: {error}"))?;
    let url = url::Url::parse(&joined)
        .map_err(|error| format!("nextRecordsUrl {next:?} does not make a URL: {error}"))?;
    check_same_origin(&instance, &url)
        .map_err(|foreign| format!("nextRecordsUrl: {foreign}; not followed"))?;
    Ok(url.into())
}

/// The Salesforce REST client for User records. Cheap to share behind an `Arc`; every method
/// takes `&self`.
pub struct SalesforceRest {
    http: reqwest::Client,
    /// Scheme, host and any path, without a trailing slash.
    instance_url: String,
    /// `v62.0`.
    version: String,
    tokens: Arc<dyn TokenSource>,
    retry: RestRetry,
    batch_size: Option<u16>,
    api_usage: Mutex<Option<ApiUsage>>,
}

impl fmt::Debug for SalesforceRest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SalesforceRest")
            .field("instance_url", &self.instance_url)
            .field("version", &self.version)
            .field("retry", &self.retry)
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

impl SalesforceRest {
    /// A client for `instance_url` (the session's `instance_url`) at [`DEFAULT_API_VERSION`].
    pub fn new(
        instance_url: &str,
        tokens: Arc<dyn TokenSource>,
    ) -> Result<SalesforceRest, SalesforceRestError> {
        let config = |detail: String| SalesforceRestError::Config {
            operation: RestOperation::Configure,
            detail,
        };
        let parsed = url::Url::parse(instance_url)
            .map_err(|error| config(format!("instance URL {instance_url:?}: {error}")))?;
        if !matches!(parsed.scheme(), "https" | "http") || parsed.host().is_none() {
            return Err(config(format!(
                "instance URL {instance_url:?} is not an http(s) URL with a host"
            )));
        }
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .user_agent(concat!("usersync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| config(format!("building the HTTP client: {error}")))?;
        Ok(SalesforceRest {
            http,
            instance_url: instance_url.trim_end_matches('/').to_owned(),
            version: DEFAULT_API_VERSION.to_owned(),
            tokens,
            retry: RestRetry::default(),
            batch_size: None,
            api_usage: Mutex::new(None),
        })
    }

    /// Uses API version `version`, written `v62.0` or `62.0`.
    pub fn with_api_version(mut self, version: &str) -> Result<Self, SalesforceRestError> {
        let number = version.strip_prefix('v').unwrap_or(version);
        let valid = number.split_once('.').is_some_and(|(major, minor)| {
            !major.is_empty()
                && !minor.is_empty()
                && major
                    .chars()
                    .chain(minor.chars())
                    .all(|c| c.is_ascii_digit())
        });
        if !valid {
            return Err(SalesforceRestError::Config {
                operation: RestOperation::Configure,
                detail: format!("API version {version:?} is not of the form v62.0"),
            });
        }
        self.version = format!("v{number}");
        Ok(self)
    }

    /// Bounds the retry of 5xx answers and network errors.
    pub fn with_retry(mut self, retry: RestRetry) -> Self {
        self.retry = retry;
        self
    }

    /// Asks for pages of `size` records (`Sforce-Query-Options: batchSize`; Salesforce takes
    /// 200 to 2,000 and may send fewer).
    pub fn with_batch_size(mut self, size: u16) -> Self {
        self.batch_size = Some(size);
        self
    }

    /// Uses `http` for requests (shared connection pool, custom timeouts).
    pub fn with_http(mut self, http: reqwest::Client) -> Self {
        self.http = http;
        self
    }

    /// `v62.0`.
    pub fn api_version(&self) -> &str {
        &self.version
    }

    pub fn instance_url(&self) -> &str {
        &self.instance_url
    }

    /// The org's API usage as the last answer reported it.
    pub fn last_api_usage(&self) -> Option<ApiUsage> {
        *self
            .api_usage
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    // ---- Queries ---------------------------------------------------------------------------

    /// The pages of `soql`'s result, fetched one at a time as the stream is polled, following
    /// `nextRecordsUrl` until `done`.
    pub fn query_pages(
        &self,
        soql: &str,
    ) -> impl Stream<Item = Result<QueryPage<Record>, SalesforceRestError>> + Send + '_ {
        self.pages(soql.to_owned(), Ok)
    }

    /// Every record of `soql`'s result. For results that may be large, use
    /// [`SalesforceRest::query_pages`].
    pub async fn query_all(&self, soql: &str) -> Result<Vec<Record>, SalesforceRestError> {
        collect(self.query_pages(soql)).await
    }

    /// The users `query` selects, one page at a time: the initial load and the resync of an
    /// org of any size.
    pub fn user_pages(
        &self,
        query: UserQuery,
    ) -> impl Stream<Item = Result<QueryPage<SalesforceUser>, SalesforceRestError>> + Send + '_
    {
        self.pages(query.soql(), |record| user_from_record(&record))
    }

    /// Every user, active or not. Holds the whole directory; [`SalesforceRest::user_pages`]
    /// with [`UserQuery::All`] holds one page.
    pub async fn all_users(&self) -> Result<Vec<SalesforceUser>, SalesforceRestError> {
        collect(self.user_pages(UserQuery::All)).await
    }

    /// Every user whose `LastModifiedDate` is at or after `since` (the caller subtracts its
    /// safety margin first).
    pub async fn users_modified_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<SalesforceUser>, SalesforceRestError> {
        collect(self.user_pages(UserQuery::ModifiedSince(since))).await
    }

    /// The users among `ids` that exist, each once, read with as few queries as the URL
    /// budget allows (see the module documentation). Ids Salesforce does not know are simply
    /// absent from the answer.
    pub async fn users_by_ids(
        &self,
        ids: &[SalesforceId],
    ) -> Result<Vec<SalesforceUser>, SalesforceRestError> {
        let mut unique: Vec<SalesforceId> = Vec::with_capacity(ids.len());
        let mut seen = std::collections::HashSet::new();
        for id in ids {
            if seen.insert(id) {
                unique.push(id.clone());
            }
        }
        let mut users = Vec::with_capacity(unique.len());
        for chunk in unique.chunks(self.ids_per_query()) {
            users.extend(
                collect(self.pages(users_by_ids_soql(chunk), |r| user_from_record(&r))).await?,
            );
        }
        Ok(users)
    }

    /// How many ids fit in one re-read: [`MAX_IDS_PER_QUERY`], or fewer if the URL would pass
    /// [`MAX_QUERY_URL_BYTES`].
    fn ids_per_query(&self) -> usize {
        let base = self.query_url().len() + "?q=".len() + encoded_len(&users_by_ids_soql(&[]));
        // Every id is 18 letters and digits, quoted and comma-separated.
        let per_id = encoded_len("'005000000000000AAA',");
        let fit = MAX_QUERY_URL_BYTES.saturating_sub(base) / per_id;
        fit.clamp(1, MAX_IDS_PER_QUERY)
    }

    /// One user by id (`GET …/sobjects/User/{id}`); `None` when Salesforce has no such record.
    pub async fn user(
        &self,
        id: &SalesforceId,
    ) -> Result<Option<SalesforceUser>, SalesforceRestError> {
        let operation = RestOperation::ReadUser { id: id.clone() };
        let url = format!(
            "{}/services/data/{}/sobjects/User/{id}?fields={}",
            self.instance_url,
            self.version,
            USER_FIELDS.join(",")
        );
        match self.get_text(&operation, &url, None).await {
            Ok(body) => read_user(&body, id)
                .map(Some)
                .map_err(|detail| SalesforceRestError::Decode { operation, detail }),
            Err(SalesforceRestError::Refused { status: 404, .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// The API versions the org serves (`GET /services/data/`): a connection test that needs
    /// no permission.
    pub async fn versions(&self) -> Result<Vec<ApiVersion>, SalesforceRestError> {
        let url = format!("{}/services/data/", self.instance_url);
        self.get_json(&RestOperation::ListVersions, &url, None)
            .await
    }

    // ---- Transport ---------------------------------------------------------------------------

    fn query_url(&self) -> String {
        format!("{}/services/data/{}/query", self.instance_url, self.version)
    }

    /// The pages of `soql`, each record converted by `convert`. A `nextRecordsUrl` seen before
    /// ends the stream with an error instead of paging forever.
    fn pages<T: Send + 'static>(
        &self,
        soql: String,
        convert: fn(Record) -> Result<T, String>,
    ) -> impl Stream<Item = Result<QueryPage<T>, SalesforceRestError>> + Send + '_ {
        enum Next {
            First,
            Url(String),
            Done,
        }
        let soql: Arc<str> = soql.into();
        let visited = std::collections::HashSet::<String>::new();
        stream::try_unfold(
            (Next::First, 0_u32, visited),
            move |(next, number, mut visited)| {
                let soql = soql.clone();
                async move {
                    let (url, query) = match next {
                        Next::Done => return Ok(None),
                        Next::First => (self.query_url(), Some(&*soql)),
                        Next::Url(url) => (url, None),
                    };
                    let operation = RestOperation::Query {
                        page: number.saturating_add(1),
                        soql: soql.to_string(),
                    };
                    let decode = |detail: String| SalesforceRestError::Decode {
                        operation: operation.clone(),
                        detail,
                    };
                    let number = number.checked_add(1).ok_or_else(|| {
                        decode("the result has more pages than can be counted".into())
                    })?;
                    let body: String = self.get_text(&operation, &url, query).await?;
                    let (page, next_url) =
                        read_query_page(&body, number, &self.instance_url, convert)
                            .map_err(decode)?;
                    let next = match next_url {
                        None => Next::Done,
                        Some(next_url) if !visited.insert(next_url.clone()) => {
                            return Err(decode(format!(
                                "nextRecordsUrl {next_url} was already read: the result loops"
                            )));
                        }
                        Some(next_url) => Next::Url(next_url),
                    };
                    Ok(Some((page, (next, number, visited))))
                }
            },
        )
    }

    /// A `GET` whose success is JSON.
    async fn get_json<T: DeserializeOwned>(
        &self,
        operation: &RestOperation,
        url: &str,
        soql: Option<&str>,
    ) -> Result<T, SalesforceRestError> {
        let body = self.get_text(operation, url, soql).await?;
        decode_json(operation, &body)
    }

    /// A `GET`'s successful body: the token, one renewal after a 401, the retries.
    async fn get_text(
        &self,
        operation: &RestOperation,
        url: &str,
        soql: Option<&str>,
    ) -> Result<String, SalesforceRestError> {
        let token_error = |source| SalesforceRestError::Token {
            operation: operation.clone(),
            source,
        };
        let token = self.tokens.access_token().await.map_err(token_error)?;
        let body = match self.send(operation, url, soql, &token).await? {
            Reply::Success(body) => body,
            Reply::Unauthorized(refused) => {
                let renewed = self.tokens.renew(&token).await.map_err(token_error)?;
                let refused = if renewed == token {
                    refused
                } else {
                    match self.send(operation, url, soql, &renewed).await? {
                        Reply::Success(body) => return Ok(body),
                        Reply::Unauthorized(refused) => refused,
                    }
                };
                let (code, message) = first_error(&refused);
                return Err(SalesforceRestError::SessionInvalid {
                    operation: operation.clone(),
                    code,
                    message,
                });
            }
        };
        Ok(body)
    }

    /// One request with `token`, retried while it fails transiently.
    async fn send(
        &self,
        operation: &RestOperation,
        url: &str,
        soql: Option<&str>,
        token: &Secret,
    ) -> Result<Reply, SalesforceRestError> {
        let mut retries = 0_u32;
        let result = (|| self.attempt(operation, url, soql, token))
            .retry(self.retry.backoff())
            .when(Failure::is_transient)
            .notify(|failure, delay| {
                retries += 1;
                tracing::warn!(
                    operation = %operation,
                    attempt = retries,
                    delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    cause = %failure,
                    "Salesforce REST request failed; retrying"
                );
            })
            .await;
        let attempts = retries + 1;
        result.map_err(|failure| match failure {
            Failure::Network(source) => SalesforceRestError::Network {
                operation: operation.clone(),
                attempts,
                source,
            },
            Failure::Server { status, body } => {
                let (code, message) = first_error(&body);
                SalesforceRestError::Server {
                    operation: operation.clone(),
                    status: status.as_u16(),
                    code,
                    message,
                    attempts,
                }
            }
            Failure::Final(error) => error,
        })
    }

    async fn attempt(
        &self,
        operation: &RestOperation,
        url: &str,
        soql: Option<&str>,
        token: &Secret,
    ) -> Result<Reply, Failure> {
        let mut request = self
            .http
            .get(url)
            .header(ACCEPT, "application/json")
            .bearer_auth(token.expose());
        if let Some(soql) = soql {
            request = request.query(&[("q", soql)]);
        }
        if let Some(size) = self.batch_size {
            request = request.header(QUERY_OPTIONS_HEADER, format!("batchSize={size}"));
        }
        let response = request.send().await.map_err(Failure::Network)?;
        let status = response.status();
        if let Some(usage) = response
            .headers()
            .get(LIMIT_INFO_HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(ApiUsage::parse)
        {
            *self
                .api_usage
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(usage);
        }
        let body = read_capped_text(response, API_PAGE_CAP)
            .await
            .map_err(|error| match error {
                BodyError::Network { source, .. } => Failure::Network(source),
                too_large @ BodyError::TooLarge { .. } => {
                    Failure::Final(SalesforceRestError::Decode {
                        operation: operation.clone(),
                        detail: too_large.to_string(),
                    })
                }
            })?;
        if status.is_success() {
            Ok(Reply::Success(body))
        } else if status == StatusCode::UNAUTHORIZED {
            Ok(Reply::Unauthorized(body))
        } else if status.is_server_error() {
            Err(Failure::Server { status, body })
        } else {
            Err(Failure::Final(refusal(operation.clone(), status, &body)))
        }
    }
}

fn decode_json<T: DeserializeOwned>(
    operation: &RestOperation,
    body: &str,
) -> Result<T, SalesforceRestError> {
    serde_json::from_str(body).map_err(|error| SalesforceRestError::Decode {
        operation: operation.clone(),
        detail: error.to_string(),
    })
}

/// Every record of every page.
async fn collect<T>(
    pages: impl Stream<Item = Result<QueryPage<T>, SalesforceRestError>>,
) -> Result<Vec<T>, SalesforceRestError> {
    let mut pages = std::pin::pin!(pages);
    let mut records = Vec::new();
    while let Some(page) = pages.try_next().await? {
        records.extend(page.records);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn record(value: Value) -> Record {
        serde_json::from_value(value).unwrap()
    }

    struct NoTokens;

    #[async_trait]
    impl TokenSource for NoTokens {
        async fn access_token(&self) -> Result<Secret, SalesforceAuthError> {
            Ok(Secret::new("unused"))
        }
        async fn renew(&self, rejected: &Secret) -> Result<Secret, SalesforceAuthError> {
            Ok(rejected.clone())
        }
    }

    fn client(instance_url: &str) -> SalesforceRest {
        SalesforceRest::new(instance_url, Arc::new(NoTokens)).unwrap()
    }

    #[test]
    fn a_user_record_becomes_a_salesforce_user() {
        let user = user_from_record(&record(json!({
            "attributes": {"type": "User", "url": "/services/data/v62.0/sobjects/User/005000000000001AAA"},
            "Id": "005000000000001",
            "Username": "ann@acme.example",
            "Email": "Ann@Acme.example",
            "FirstName": "Ann",
            "LastName": null,
            "Title": "AE",
            "IsActive": false,
            "CreatedDate": "2024-06-18T11:30:45.000+0000",
            "LastModifiedDate": "2024-06-19T08:00:00.250+0000",
        })))
        .unwrap();
        assert_eq!(user.id.as_str(), "005000000000001AAA", "15 → 18 characters");
        assert_eq!(user.email.as_deref(), Some("Ann@Acme.example"));
        assert_eq!(user.last_name, None);
        assert!(!user.is_active);
        assert_eq!(
            user.created_date,
            Some("2024-06-18T11:30:45Z".parse::<DateTime<Utc>>().unwrap())
        );
        assert_eq!(
            user.last_modified_date,
            Some("2024-06-19T08:00:00.250Z".parse::<DateTime<Utc>>().unwrap())
        );
        assert_eq!(user.applied, None);
    }

    #[test]
    fn bad_records_are_refused_with_the_reason() {
        let missing_active = record(json!({"Id": "005000000000001AAA"}));
        assert!(
            user_from_record(&missing_active)
                .unwrap_err()
                .contains("IsActive")
        );
        let bad_id = record(json!({"Id": "005000000000001ZZZ", "IsActive": true}));
        assert!(user_from_record(&bad_id).unwrap_err().contains("checksum"));
        let bad_date =
            record(json!({"Id": "005000000000001", "IsActive": true, "CreatedDate": "yesterday"}));
        assert!(
            user_from_record(&bad_date)
                .unwrap_err()
                .contains("CreatedDate")
        );
    }

    #[test]
    fn datetimes_parse_in_both_renderings() {
        let expected: DateTime<Utc> = "2024-06-18T09:30:45Z".parse().unwrap();
        assert_eq!(
            parse_datetime("2024-06-18T09:30:45.000+0000").unwrap(),
            expected
        );
        assert_eq!(
            parse_datetime("2024-06-18T11:30:45.000+0200").unwrap(),
            expected
        );
        assert_eq!(parse_datetime("2024-06-18T09:30:45Z").unwrap(), expected);
        assert!(parse_datetime("2024-06-18").is_err());
    }

    #[test]
    fn the_resync_literal_is_rounded_down_to_the_second() {
        let since: DateTime<Utc> = "2024-06-18T11:30:45.999Z".parse().unwrap();
        assert_eq!(soql_datetime(since), "2024-06-18T11:30:45Z");
        assert_eq!(
            UserQuery::ModifiedSince(since).soql(),
            "SELECT Id, Username, Email, FirstName, LastName, Title, IsActive, CreatedDate, \
             LastModifiedDate FROM User WHERE LastModifiedDate >= 2024-06-18T11:30:45Z ORDER BY Id"
        );
    }

    #[test]
    fn id_chunks_keep_the_url_under_the_budget() {
        let rest = client("https://a-rather-long-my-domain-name-for-an-org.my.salesforce.com");
        let per_query = rest.ids_per_query();
        assert_eq!(per_query, MAX_IDS_PER_QUERY);
        let ids: Vec<SalesforceId> = (0..per_query)
            .map(|i| SalesforceId::parse(&format!("005Dn{i:010}")).unwrap())
            .collect();
        let mut url = url::Url::parse(&rest.query_url()).unwrap();
        url.query_pairs_mut()
            .append_pair("q", &users_by_ids_soql(&ids));
        assert!(
            url.as_str().len() <= MAX_QUERY_URL_BYTES,
            "{}",
            url.as_str().len()
        );

        let huge = client(&format!("https://{}.my.salesforce.com", "x".repeat(6000)));
        assert!(huge.ids_per_query() < MAX_IDS_PER_QUERY);
        assert!(huge.ids_per_query() >= 1);
    }

    #[test]
    fn error_bodies_keep_code_and_message() {
        let op = RestOperation::Query {
            page: 2,
            soql: "SELECT Id FROM User".to_owned(),
        };
        let body =
            r#"[{"message":"No such column 'Foo' on entity 'User'.","errorCode":"INVALID_FIELD"}]"#;
        let error = refusal(op.clone(), StatusCode::BAD_REQUEST, body);
        assert_eq!(error.error_code(), Some("INVALID_FIELD"));
        assert!(
            error
                .to_string()
                .starts_with("while query page 2 of SELECT Id FROM User: "),
            "{error}"
        );
        assert!(error.to_string().contains("No such column 'Foo'"));
        assert_eq!(
            error.disconnect_reason(),
            Some(DisconnectReason::PermissionsChanged)
        );
    }

    #[test]
    fn forbidden_answers_are_told_apart() {
        let op = RestOperation::ListVersions;
        let forbidden = |code: &str| {
            let body = json!([{"message": "m", "errorCode": code}]).to_string();
            refusal(op.clone(), StatusCode::FORBIDDEN, &body)
        };
        for code in [
            "INSUFFICIENT_ACCESS",
            "INSUFFICIENT_ACCESS_OR_READONLY",
            "API_DISABLED_FOR_ORG",
            "API_CURRENTLY_DISABLED",
        ] {
            let error = forbidden(code);
            assert!(
                matches!(error, SalesforceRestError::PermissionDenied { .. }),
                "{code}"
            );
            assert_eq!(
                error.disconnect_reason(),
                Some(DisconnectReason::PermissionsChanged)
            );
            assert_eq!(error.error_code(), Some(code));
        }
        let limit = forbidden("REQUEST_LIMIT_EXCEEDED");
        assert!(matches!(
            limit,
            SalesforceRestError::RequestLimitExceeded { .. }
        ));
        assert_eq!(limit.disconnect_reason(), None, "wait, do not disconnect");
        let other = refusal(op, StatusCode::BAD_GATEWAY, "<html>proxy</html>");
        assert_eq!(other.error_code(), None);
        assert!(other.to_string().contains("<html>proxy</html>"));
    }

    /// Salesforce REST errors (docs/operations.md).
    #[test]
    fn salesforce_rest_refusals() {
        use crate::connection::DisconnectReason::*;
        const D: fn(DisconnectReason) -> Verdict = Verdict::Disconnected;
        let rows: &[(u16, &str, Verdict)] = &[
            (
                403,
                r#"[{"message":"Insufficient access rights on cross-reference id","errorCode":"INSUFFICIENT_ACCESS_ON_CROSS_REFERENCE_ENTITY"}]"#,
                D(PermissionsChanged),
            ),
            (
                403,
                r#"[{"message":"insufficient access","errorCode":"INSUFFICIENT_ACCESS"}]"#,
                D(PermissionsChanged),
            ),
            (
                403,
                r#"[{"message":"The REST API is not enabled for this Organization.","errorCode":"API_DISABLED_FOR_ORG"}]"#,
                D(PermissionsChanged),
            ),
            (
                403,
                r#"[{"message":"TotalRequests Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]"#,
                Verdict::Degraded,
            ),
            (
                404,
                r#"[{"message":"The requested resource does not exist","errorCode":"NOT_FOUND"}]"#,
                Verdict::Unaffected,
            ),
            (
                400,
                r#"[{"message":"No such column 'Foo__c' on entity 'User'.","errorCode":"INVALID_FIELD"}]"#,
                D(PermissionsChanged),
            ),
            (
                400,
                r#"[{"message":"unexpected token: FROM","errorCode":"MALFORMED_QUERY"}]"#,
                D(Other),
            ),
        ];
        for (status, body, expected) in rows {
            let error = refusal(
                RestOperation::ListVersions,
                StatusCode::from_u16(*status).unwrap(),
                body,
            );
            assert_eq!(error.verdict(), *expected, "{status} {body} ({error})");
        }
    }

    #[test]
    fn long_queries_are_abbreviated_in_messages() {
        let op = RestOperation::Query {
            page: 1,
            soql: format!("SELECT Id FROM User WHERE Id IN ({})", "'x',".repeat(500)),
        };
        assert!(op.to_string().chars().count() < 160);
        assert!(op.to_string().ends_with('…'));
    }

    #[test]
    fn a_resync_margin_stops_at_the_start_of_the_calendar() {
        let margin = Duration::from_secs(300);
        let since: DateTime<Utc> = "2026-01-01T00:05:00Z".parse().unwrap();
        assert_eq!(
            UserQuery::modified_since(since, margin),
            UserQuery::ModifiedSince("2026-01-01T00:00:00Z".parse().unwrap())
        );
        let first = DateTime::<Utc>::MIN_UTC;
        assert_eq!(
            UserQuery::modified_since(first, margin),
            UserQuery::ModifiedSince(first)
        );
        assert_eq!(
            UserQuery::modified_since(since, Duration::MAX),
            UserQuery::ModifiedSince(first)
        );
    }

    #[test]
    fn a_next_page_stays_on_the_instance() {
        let instance = "https://acme.my.salesforce.com";
        assert_eq!(
            next_page_url(
                instance,
                "/services/data/v62.0/query/01gD0000002HU6KIAW-2000"
            ),
            Ok(
                "https://acme.my.salesforce.com/services/data/v62.0/query/01gD0000002HU6KIAW-2000"
                    .to_owned()
            )
        );
        assert_eq!(
            next_page_url("https://acme.example/sf/", "query/x-2000"),
            Ok("https://acme.example/sf/query/x-2000".to_owned()),
            "an instance path is kept"
        );
        assert!(next_page_url(instance, "https://acme.my.salesforce.com/q/x-2000").is_ok());
        assert_eq!(
            next_page_url(instance, "//evil.example/q").unwrap(),
            "https://acme.my.salesforce.com/evil.example/q"
        );
        for elsewhere in [
            "https://evil.example/services/data/v62.0/query/x-2000",
            "http://acme.my.salesforce.com/q/x-2000",
            "https://acme.my.salesforce.com:8443/q/x-2000",
        ] {
            let error = next_page_url(instance, elsewhere).unwrap_err();
            assert!(
                error.contains("not followed")
                    && error.contains("another origin")
                    && error.contains(elsewhere),
                "{elsewhere}: {error}"
            );
        }
    }

    #[test]
    fn a_query_page_names_its_next_page_or_is_the_last() {
        let instance = "https://acme.my.salesforce.com";
        let body = json!({"totalSize": 3, "done": false,
            "nextRecordsUrl": "/services/data/v62.0/query/01g-1",
            "records": [{"attributes": {"type": "User"}, "Id": "005000000000001",
                         "IsActive": true}]})
        .to_string();
        let (page, next) = read_query_page(&body, 1, instance, |r| user_from_record(&r)).unwrap();
        assert_eq!(page.records.len(), 1);
        assert!(!page.done);
        assert_eq!(page.total_size, 3);
        assert_eq!(
            next.as_deref(),
            Some("https://acme.my.salesforce.com/services/data/v62.0/query/01g-1")
        );
        let last = json!({"totalSize": 3, "done": true, "records": []}).to_string();
        let (page, next) = read_query_page(&last, 2, instance, Ok).unwrap();
        assert!(page.done && next.is_none());
        for (bad, why) in [
            (
                json!({"totalSize": 1, "done": false, "records": []}),
                "no nextRecordsUrl",
            ),
            (
                json!({"totalSize": -1, "done": true, "records": []}),
                "invalid value",
            ),
            (
                json!({"totalSize": 1, "done": false, "nextRecordsUrl": "https://evil.example/q",
                    "records": []}),
                "not followed",
            ),
        ] {
            let error = read_query_page(&bad.to_string(), 1, instance, Ok).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn a_user_read_must_be_the_user_asked_for() {
        let asked = SalesforceId::parse("005000000000001").unwrap();
        let body = |id: &str| json!({"Id": id, "IsActive": true}).to_string();
        assert_eq!(
            read_user(&body("005000000000001AAA"), &asked).unwrap().id,
            asked
        );
        let error = read_user(&body("005000000000002AAA"), &asked).unwrap_err();
        assert!(
            error.contains("asked for user 005000000000001AAA"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_result_whose_next_page_loops_back_ends_in_an_error() {
        use axum::routing::get;
        use std::sync::atomic::{AtomicU32, Ordering};
        let served = Arc::new(AtomicU32::new(0));
        let page = {
            let served = served.clone();
            move || {
                let served = served.clone();
                async move {
                    served.fetch_add(1, Ordering::SeqCst);
                    axum::Json(json!({"totalSize": 5, "done": false,
                        "nextRecordsUrl": "/services/data/v62.0/query/01g-again",
                        "records": []}))
                }
            }
        };
        let app = axum::Router::new()
            .route("/services/data/v62.0/query", get(page.clone()))
            .route("/services/data/v62.0/query/01g-again", get(page));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });

        let error = client(&format!("http://{address}"))
            .query_all("SELECT Id FROM User")
            .await
            .unwrap_err();

        assert!(error.to_string().contains("the result loops"), "{error}");
        assert_eq!(
            served.load(Ordering::SeqCst),
            2,
            "the first page and the loop"
        );
    }

    #[test]
    fn api_usage_header_is_read() {
        assert_eq!(
            ApiUsage::parse("api-usage=25/15000"),
            Some(ApiUsage {
                used: 25,
                limit: 15000
            })
        );
        assert_eq!(
            ApiUsage::parse("api-usage=3/5000; per-app-api-usage=1/100(appName=x)"),
            Some(ApiUsage {
                used: 3,
                limit: 5000
            })
        );
        assert_eq!(ApiUsage::parse("nonsense"), None);
    }

    #[test]
    fn configuration_is_checked() {
        assert!(SalesforceRest::new("not a url", Arc::new(NoTokens)).is_err());
        assert!(SalesforceRest::new("ftp://x.example", Arc::new(NoTokens)).is_err());
        let rest = client("https://acme.my.salesforce.com/");
        assert_eq!(rest.instance_url(), "https://acme.my.salesforce.com");
        assert_eq!(rest.api_version(), DEFAULT_API_VERSION);
        assert_eq!(
            client("https://x.example")
                .with_api_version("61.0")
                .unwrap()
                .api_version(),
            "v61.0"
        );
        assert!(
            client("https://x.example")
                .with_api_version("latest")
                .is_err()
        );
        assert_eq!(
            next_page_url(rest.instance_url(), "/services/data/v62.0/query/01gX-2000"),
            Ok("https://acme.my.salesforce.com/services/data/v62.0/query/01gX-2000".to_owned())
        );
    }

    /// Hands out one fixed token.
    struct FixedToken;

    #[async_trait]
    impl TokenSource for FixedToken {
        async fn access_token(&self) -> Result<Secret, SalesforceAuthError> {
            Ok(Secret::new("bearer-of-acme"))
        }
        async fn renew(&self, rejected: &Secret) -> Result<Secret, SalesforceAuthError> {
            Ok(rejected.clone())
        }
    }

    #[tokio::test]
    async fn the_bearer_token_never_follows_a_next_page_to_another_host() {
        use crate::endpoint::test_support::serve;
        use axum::routing::get;
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let recorder = seen.clone();
        let elsewhere = serve(axum::Router::new().fallback(
            move |headers: axum::http::HeaderMap| async move {
                recorder.lock().unwrap().push(format!("{headers:?}"));
                axum::Json(json!({"totalSize": 1, "done": true, "records": []}))
            },
        ))
        .await;
        let instance = serve(axum::Router::new().route(
            "/services/data/v62.0/query",
            get(move || async move {
                axum::Json(json!({
                    "totalSize": 2,
                    "done": false,
                    "nextRecordsUrl": format!("http://{elsewhere}/services/data/v62.0/query/01g-1"),
                    "records": [],
                }))
            }),
        ))
        .await;
        let rest = SalesforceRest::new(&format!("http://{instance}"), Arc::new(FixedToken))
            .unwrap()
            .with_retry(RestRetry {
                max_retries: 0,
                ..RestRetry::default()
            });
        let refused = rest.query_all("SELECT Id FROM User").await.unwrap_err();
        assert!(
            matches!(&refused, SalesforceRestError::Decode { detail, .. }
                if detail.contains("another origin") && detail.contains(&elsewhere.to_string())),
            "{refused}"
        );
        assert!(
            seen.lock().unwrap().is_empty(),
            "the other host got a request: {:?}",
            seen.lock().unwrap()
        );
    }

    #[tokio::test]
    async fn an_answer_over_the_cap_is_refused_naming_the_endpoint() {
        let instance =
            crate::endpoint::test_support::oversized(StatusCode::OK, API_PAGE_CAP + 1).await;
        let rest =
            SalesforceRest::new(&format!("http://{instance}"), Arc::new(FixedToken)).unwrap();
        let refused = rest.versions().await.unwrap_err();
        assert!(
            matches!(&refused, SalesforceRestError::Decode { detail, .. }
                if detail.contains(&format!("http://{instance}/services/data/"))
                    && detail.contains(&format!("larger than {API_PAGE_CAP} bytes"))),
            "{refused}"
        );
    }

    #[test]
    fn the_client_never_prints_its_token() {
        let rest = client("https://x.example");
        assert!(!format!("{rest:?}").contains("unused"));
    }
}

//! The REST data API of the simulated org: SOQL queries over User, query locators, one record
//! by id, and the list of API versions.
//!
//! The subscriber reads users over REST three ways (docs/simulators.md, "The Salesforce
//! simulator"): the whole directory at the first start, the users a `GAP_*` event names (`WHERE Id
//! IN (…)`), and everyone changed since a moment when replay is impossible (`WHERE
//! LastModifiedDate >= …`). Those are the shapes served here, and they are served with the real
//! service's wire details, because that is where clients break:
//!
//! - results come in pages (2,000 records by default, `Sforce-Query-Options: batchSize=N`
//!   asks for 200 to 2,000) and the client must follow `nextRecordsUrl`, relative to the
//!   instance URL, until `done`;
//! - a query locator is opaque, lives 15 minutes after its last use, and a user keeps at most
//!   10 open (older ones are closed); a dead one is `INVALID_QUERY_LOCATOR`;
//! - dates are rendered `2024-06-18T11:30:45.000+0000`, not RFC 3339;
//! - errors are a JSON array of `{message, errorCode}` (docs/salesforce.md, "REST: errors, queries,
//!   records"): `INVALID_SESSION_ID` (401),
//!   `MALFORMED_QUERY`, `INVALID_FIELD`, `INVALID_TYPE`, `INVALID_QUERY_FILTER_OPERATOR`,
//!   `INVALID_QUERY_LOCATOR` (400), `API_DISABLED_FOR_ORG` (403), `NOT_FOUND` (404);
//! - every answer to an authenticated call carries `Sforce-Limit-Info: api-usage=N/15000`.
//!
//! # The SOQL subset
//!
//! `SELECT f1, f2, … FROM User [WHERE c1 AND c2 …] [ORDER BY Id [ASC|DESC]] [LIMIT n]`, with
//! keywords, field and object names case-insensitive (the answer uses the canonical names).
//! A condition is `Field op value` or `Field IN (v1, v2, …)`:
//!
//! - `Id`: `=`, `!=`, `IN`; quoted 15- or 18-character ids, compared in the 18-character form;
//! - text fields: `=`, `!=`, `IN`; quoted strings, compared case-insensitively as SOQL does;
//! - `IsActive` and other booleans: `=`, `!=` with unquoted `true` / `false`;
//! - `CreatedDate`, `LastModifiedDate`: `=`, `!=`, `<`, `<=`, `>`, `>=` with an unquoted
//!   SOQL datetime literal (`2024-06-18T11:30:45Z`, `…+02:00`, fractions allowed);
//! - any field: `= null`, `!= null`.
//!
//! The columns are `Id` and the flat fields of the org's current change-event schema
//! (standard fields and custom ones added with `add_custom_field`); the compound `Name` and
//! `Address` are not selectable here. Anything else (OR, NOT, functions, sub-queries, other
//! objects' fields) is refused as `MALFORMED_QUERY` rather than answered wrongly.
//!
//! # Choices where Salesforce is silent
//!
//! - Without `ORDER BY` results are in id order (Salesforce promises no order).
//! - A query's result is fixed when it runs: later pages show the records as they were then.
//! - A locator stays usable at any offset until it expires, even after its last page was read.
//! - A `batchSize` outside 200..=2000 is clamped; one that does not parse is ignored. A page
//!   request may carry its own `batchSize`; without one it keeps the query's.
//! - `GET /services/data/` answers without a session, as the real resource does.
//!
//! The parser, the planner and the locator store are pure; [`routes`] is the HTTP layer.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use chrono::{DateTime, Utc};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde_json::{Value, json};

use super::directory::UserRecord;
use super::oauth::with_checksum;
use super::schema::{FieldKind, SchemaVersion};
use super::{Shared, SimState, json_response, now_ms};

/// The page size when the client asks for none.
pub const DEFAULT_PAGE_SIZE: usize = 2000;
/// The range `Sforce-Query-Options: batchSize=N` may ask for.
pub const MIN_BATCH_SIZE: usize = 200;
pub const MAX_BATCH_SIZE: usize = 2000;
/// A locator dies this long after its last use.
pub const LOCATOR_IDLE_MS: i64 = 15 * 60 * 1000;
/// Open locators per user; opening one more closes the oldest.
pub const MAX_OPEN_LOCATORS: usize = 10;
/// The daily API allocation reported in `Sforce-Limit-Info`.
pub const DAILY_API_LIMIT: u64 = 15_000;

/// The API versions the simulated org serves: (version, release label).
pub const API_VERSIONS: &[(&str, &str)] = &[
    ("58.0", "Summer '23"),
    ("59.0", "Winter '24"),
    ("60.0", "Spring '24"),
    ("61.0", "Summer '24"),
    ("62.0", "Winter '25"),
    ("63.0", "Spring '25"),
    ("64.0", "Summer '25"),
];

/// A refused request: the HTTP status and the one error object of the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl RestError {
    fn bad_request(code: &'static str, message: impl Into<String>) -> RestError {
        RestError {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
        }
    }

    fn malformed(column: usize, message: impl std::fmt::Display) -> RestError {
        RestError::bad_request("MALFORMED_QUERY", at(column, message))
    }

    fn not_found() -> RestError {
        RestError {
            status: StatusCode::NOT_FOUND,
            code: "NOT_FOUND",
            message: "The requested resource does not exist".to_owned(),
        }
    }

    fn invalid_session() -> RestError {
        RestError {
            status: StatusCode::UNAUTHORIZED,
            code: "INVALID_SESSION_ID",
            message: "Session expired or invalid".to_owned(),
        }
    }

    fn invalid_locator() -> RestError {
        RestError::bad_request("INVALID_QUERY_LOCATOR", "invalid query locator")
    }

    fn into_response(self) -> Response {
        json_response(
            self.status,
            &json!([{"message": self.message, "errorCode": self.code}]),
        )
    }
}

/// Salesforce's position prefix on a query error.
fn at(column: usize, message: impl std::fmt::Display) -> String {
    format!("ERROR at Row:1:Column:{column}\n{message}")
}

// ---- Tokens ---------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// A keyword or a name.
    Word(String),
    /// A quoted string, unescaped.
    Text(String),
    /// An unquoted literal starting with a digit: a number or a datetime.
    Bare(String),
    Comma,
    Open,
    Close,
    Op(CompareOp),
}

/// A token and the 1-based column it starts at.
type Spanned = (Token, usize);

fn tokenize(soql: &str) -> Result<Vec<Spanned>, RestError> {
    let chars: Vec<char> = soql.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let take_while = |mut j: usize, keep: fn(char) -> bool| {
            while j < chars.len() && keep(chars[j]) {
                j += 1;
            }
            j
        };
        let (token, next) = match c {
            ',' => (Token::Comma, i + 1),
            '(' => (Token::Open, i + 1),
            ')' => (Token::Close, i + 1),
            '=' => (Token::Op(CompareOp::Eq), i + 1),
            '!' if chars.get(i + 1) == Some(&'=') => (Token::Op(CompareOp::Ne), i + 2),
            '<' | '>' => {
                let (op, len) = match (c, chars.get(i + 1)) {
                    ('<', Some('=')) => (CompareOp::Le, 2),
                    ('<', Some('>')) => (CompareOp::Ne, 2),
                    ('<', _) => (CompareOp::Lt, 1),
                    ('>', Some('=')) => (CompareOp::Ge, 2),
                    _ => (CompareOp::Gt, 1),
                };
                (Token::Op(op), i + len)
            }
            '\'' => {
                let mut text = String::new();
                let mut j = i + 1;
                loop {
                    match chars.get(j) {
                        None => return Err(RestError::malformed(column, "unterminated string")),
                        Some('\'') => break,
                        Some('\\') => {
                            let escaped = match chars.get(j + 1) {
                                Some('n') => '\n',
                                Some('t') => '\t',
                                Some(other @ ('\'' | '"' | '\\')) => *other,
                                _ => {
                                    return Err(RestError::malformed(
                                        j + 1,
                                        "invalid escape sequence in a string",
                                    ));
                                }
                            };
                            text.push(escaped);
                            j += 2;
                        }
                        Some(other) => {
                            text.push(*other);
                            j += 1;
                        }
                    }
                }
                (Token::Text(text), j + 1)
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let end = take_while(i, |c| c.is_ascii_alphanumeric() || c == '_');
                (Token::Word(chars[i..end].iter().collect()), end)
            }
            c if c.is_ascii_digit() => {
                let end = take_while(i, |c| {
                    c.is_ascii_alphanumeric() || matches!(c, ':' | '.' | '+' | '-')
                });
                (Token::Bare(chars[i..end].iter().collect()), end)
            }
            other => {
                return Err(RestError::malformed(
                    column,
                    format!("unexpected token: '{other}'"),
                ));
            }
        };
        tokens.push((token, column));
        i = next;
    }
    Ok(tokens)
}

// ---- Syntax ---------------------------------------------------------------------------------

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A name as written, with where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    pub text: String,
    pub column: usize,
}

/// A value as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Literal {
    Text(String),
    Bool(bool),
    Null,
    /// Unquoted, starting with a digit: a number or a datetime.
    Bare(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Test {
    Compare(CompareOp, Literal),
    In(Vec<Literal>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub field: Name,
    pub test: Test,
}

/// A parsed statement, names not yet checked against the object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub fields: Vec<Name>,
    pub object: Name,
    pub conditions: Vec<Condition>,
    /// The `ORDER BY` field and whether it is descending.
    pub order: Option<(Name, bool)>,
    pub limit: Option<usize>,
}

struct Parser {
    tokens: Vec<Spanned>,
    at: usize,
    /// The column just past the end, for "unexpected end".
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at).map(|(t, _)| t)
    }

    fn column(&self) -> usize {
        self.tokens.get(self.at).map_or(self.end, |(_, c)| *c)
    }

    fn next(&mut self) -> Option<Spanned> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }

    fn unexpected(&self) -> RestError {
        match self.tokens.get(self.at) {
            Some((token, column)) => {
                RestError::malformed(*column, format!("unexpected token: '{}'", show(token)))
            }
            None => RestError::malformed(self.end, "unexpected end of query"),
        }
    }

    fn is_keyword(&self, keyword: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(w)) if w.eq_ignore_ascii_case(keyword))
    }

    fn keyword(&mut self, keyword: &str) -> Result<(), RestError> {
        if self.is_keyword(keyword) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.unexpected())
        }
    }

    fn name(&mut self) -> Result<Name, RestError> {
        match self.peek() {
            Some(Token::Word(word)) if !RESERVED.iter().any(|r| r.eq_ignore_ascii_case(word)) => {
                let (Token::Word(text), column) = self.next().expect("peeked") else {
                    unreachable!("peeked a word")
                };
                if self.peek() == Some(&Token::Open) {
                    return Err(RestError::malformed(
                        column,
                        format!("the simulator supports no functions such as {text}()"),
                    ));
                }
                Ok(Name { text, column })
            }
            _ => Err(self.unexpected()),
        }
    }

    fn literal(&mut self) -> Result<Literal, RestError> {
        let literal = match self.peek() {
            Some(Token::Text(text)) => Literal::Text(text.clone()),
            Some(Token::Bare(raw)) => Literal::Bare(raw.clone()),
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("true") => Literal::Bool(true),
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("false") => Literal::Bool(false),
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("null") => Literal::Null,
            _ => return Err(self.unexpected()),
        };
        self.at += 1;
        Ok(literal)
    }

    fn condition(&mut self) -> Result<Condition, RestError> {
        let field = self.name()?;
        let test = match self.peek() {
            Some(Token::Op(op)) => {
                let op = *op;
                self.at += 1;
                Test::Compare(op, self.literal()?)
            }
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("IN") => {
                self.at += 1;
                if self.next().map(|(t, _)| t) != Some(Token::Open) {
                    self.at -= 1;
                    return Err(self.unexpected());
                }
                let mut values = vec![self.literal()?];
                while self.peek() == Some(&Token::Comma) {
                    self.at += 1;
                    values.push(self.literal()?);
                }
                if self.peek() != Some(&Token::Close) {
                    return Err(self.unexpected());
                }
                self.at += 1;
                Test::In(values)
            }
            _ => return Err(self.unexpected()),
        };
        Ok(Condition { field, test })
    }
}

/// Words that end a field list or a condition; they cannot be names.
const RESERVED: &[&str] = &[
    "SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "IN", "ORDER", "BY", "LIMIT", "ASC", "DESC",
    "TRUE", "FALSE", "NULL", "GROUP", "HAVING", "OFFSET",
];

fn show(token: &Token) -> String {
    match token {
        Token::Word(w) | Token::Bare(w) => w.clone(),
        Token::Text(t) => format!("'{t}'"),
        Token::Comma => ",".to_owned(),
        Token::Open => "(".to_owned(),
        Token::Close => ")".to_owned(),
        Token::Op(op) => match op {
            CompareOp::Eq => "=",
            CompareOp::Ne => "!=",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
        }
        .to_owned(),
    }
}

/// Parses the SOQL subset; names are checked later, by [`plan`].
pub fn parse(soql: &str) -> Result<Statement, RestError> {
    let tokens = tokenize(soql)?;
    let mut parser = Parser {
        tokens,
        at: 0,
        end: soql.chars().count() + 1,
    };
    parser.keyword("SELECT")?;
    let mut fields = vec![parser.name()?];
    while parser.peek() == Some(&Token::Comma) {
        parser.at += 1;
        fields.push(parser.name()?);
    }
    parser.keyword("FROM")?;
    let object = parser.name()?;
    let mut conditions = Vec::new();
    if parser.is_keyword("WHERE") {
        parser.at += 1;
        conditions.push(parser.condition()?);
        while parser.is_keyword("AND") {
            parser.at += 1;
            conditions.push(parser.condition()?);
        }
        if parser.is_keyword("OR") || parser.is_keyword("NOT") {
            return Err(RestError::malformed(
                parser.column(),
                "the simulator joins conditions with AND only",
            ));
        }
    }
    let mut order = None;
    if parser.is_keyword("ORDER") {
        parser.at += 1;
        parser.keyword("BY")?;
        let field = parser.name()?;
        let descending = if parser.is_keyword("DESC") {
            parser.at += 1;
            true
        } else {
            if parser.is_keyword("ASC") {
                parser.at += 1;
            }
            false
        };
        order = Some((field, descending));
    }
    let mut limit = None;
    if parser.is_keyword("LIMIT") {
        parser.at += 1;
        let column = parser.column();
        match parser.next() {
            Some((Token::Bare(raw), _)) => {
                limit = Some(raw.parse::<usize>().map_err(|_| {
                    RestError::malformed(column, format!("invalid LIMIT value: {raw}"))
                })?);
            }
            _ => {
                parser.at -= 1;
                return Err(parser.unexpected());
            }
        }
    }
    if parser.peek().is_some() {
        return Err(parser.unexpected());
    }
    Ok(Statement {
        fields,
        object,
        conditions,
        order,
        limit,
    })
}

// ---- Planning against the User columns --------------------------------------------------------

/// What a column holds, for filtering and rendering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    Id,
    Text,
    Boolean,
    /// Stored as epoch milliseconds, rendered as Salesforce REST does.
    DateTime,
    /// Multi-valued (the preference lists): rendered as stored, not filterable.
    List,
}

/// The User columns of a schema version: `Id`, then every flat body field.
pub fn user_columns(schema: &SchemaVersion) -> Vec<(String, ColumnKind)> {
    let mut columns = vec![("Id".to_owned(), ColumnKind::Id)];
    for (name, kind) in &schema.fields {
        match kind {
            FieldKind::String => columns.push((name.clone(), ColumnKind::Text)),
            FieldKind::Boolean => columns.push((name.clone(), ColumnKind::Boolean)),
            FieldKind::DateTime => columns.push((name.clone(), ColumnKind::DateTime)),
            FieldKind::StringArray => columns.push((name.clone(), ColumnKind::List)),
            FieldKind::Compound(_, parts) => columns.extend(
                parts
                    .iter()
                    .map(|part| ((*part).to_owned(), ColumnKind::Text)),
            ),
        }
    }
    columns
}

/// One condition, checked and typed.
#[derive(Debug, Clone, PartialEq)]
enum Filter {
    /// `Id = …`, `Id != …`, `Id IN (…)`: 18-character ids.
    Id {
        ids: BTreeSet<String>,
        negated: bool,
    },
    /// Text equality (case-insensitive); `None` stands for null.
    Text {
        field: String,
        values: Vec<Option<String>>,
        negated: bool,
    },
    Boolean {
        field: String,
        value: Option<bool>,
        negated: bool,
    },
    DateTime {
        field: String,
        op: CompareOp,
        value: Option<i64>,
    },
}

impl Filter {
    fn matches(&self, record: &UserRecord) -> bool {
        match self {
            Filter::Id { ids, negated } => ids.contains(&record.id) != *negated,
            Filter::Text {
                field,
                values,
                negated,
            } => {
                let actual = record.get(field).as_str();
                let hit = values.iter().any(|value| match (value, actual) {
                    (None, None) => true,
                    (Some(want), Some(have)) => want.to_lowercase() == have.to_lowercase(),
                    _ => false,
                });
                hit != *negated
            }
            Filter::Boolean {
                field,
                value,
                negated,
            } => (record.get(field).as_bool() == *value) != *negated,
            Filter::DateTime { field, op, value } => {
                let actual = record.get(field).as_i64();
                match (op, actual, value) {
                    (CompareOp::Eq, a, v) => a == *v,
                    (CompareOp::Ne, a, v) => a != *v,
                    (_, Some(a), Some(v)) => match op {
                        CompareOp::Lt => a < *v,
                        CompareOp::Le => a <= *v,
                        CompareOp::Gt => a > *v,
                        CompareOp::Ge => a >= *v,
                        CompareOp::Eq | CompareOp::Ne => unreachable!("handled above"),
                    },
                    _ => false,
                }
            }
        }
    }
}

/// A query ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Canonical names, in the order asked.
    pub select: Vec<(String, ColumnKind)>,
    filters: Vec<Filter>,
    pub descending: bool,
    pub limit: Option<usize>,
}

/// Checks a statement's names and values against the User columns.
pub fn plan(statement: &Statement, columns: &[(String, ColumnKind)]) -> Result<Plan, RestError> {
    if !statement.object.text.eq_ignore_ascii_case("User") {
        return Err(RestError::bad_request(
            "INVALID_TYPE",
            at(
                statement.object.column,
                format!("sObject type '{}' is not supported.", statement.object.text),
            ),
        ));
    }
    let column = |name: &Name| -> Result<(String, ColumnKind), RestError> {
        columns
            .iter()
            .find(|(canonical, _)| canonical.eq_ignore_ascii_case(&name.text))
            .cloned()
            .ok_or_else(|| {
                RestError::bad_request(
                    "INVALID_FIELD",
                    at(
                        name.column,
                        format!("No such column '{}' on entity 'User'.", name.text),
                    ),
                )
            })
    };
    let mut select: Vec<(String, ColumnKind)> = Vec::new();
    for name in &statement.fields {
        let resolved = column(name)?;
        if select.iter().any(|(seen, _)| *seen == resolved.0) {
            return Err(RestError::malformed(
                name.column,
                format!("duplicate field selected: {}", resolved.0),
            ));
        }
        select.push(resolved);
    }
    let filters = statement
        .conditions
        .iter()
        .map(|condition| {
            let (field, kind) = column(&condition.field)?;
            filter(condition, field, kind)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let descending = match &statement.order {
        None => false,
        Some((name, descending)) => {
            if column(name)?.1 != ColumnKind::Id {
                return Err(RestError::malformed(
                    name.column,
                    "the simulator orders by Id only",
                ));
            }
            *descending
        }
    };
    Ok(Plan {
        select,
        filters,
        descending,
        limit: statement.limit,
    })
}

fn filter(condition: &Condition, field: String, kind: ColumnKind) -> Result<Filter, RestError> {
    let column = condition.field.column;
    let bad_operator = |what: &str| {
        RestError::bad_request(
            "INVALID_QUERY_FILTER_OPERATOR",
            at(
                column,
                format!("invalid operator on {what} field '{field}'"),
            ),
        )
    };
    let wrong_type = |expected: &str, quoted: bool| {
        let quoting = if quoted {
            "must be enclosed in quotes"
        } else {
            "must not be enclosed in quotes"
        };
        RestError::bad_request(
            "INVALID_FIELD",
            at(
                column,
                format!(
                    "the value compared with field '{field}' must be of type {expected} and {quoting}"
                ),
            ),
        )
    };
    // Equality-style tests: the values and whether the test is negated.
    let equality = |test: &Test| -> Option<(Vec<Literal>, bool)> {
        match test {
            Test::Compare(CompareOp::Eq, value) => Some((vec![value.clone()], false)),
            Test::Compare(CompareOp::Ne, value) => Some((vec![value.clone()], true)),
            Test::In(values) => Some((values.clone(), false)),
            Test::Compare(..) => None,
        }
    };
    match kind {
        ColumnKind::Id => {
            let (values, negated) = equality(&condition.test).ok_or_else(|| bad_operator("id"))?;
            let ids = values
                .iter()
                .map(|value| match value {
                    Literal::Text(raw) => normalize_id(raw).ok_or_else(|| {
                        RestError::bad_request(
                            "INVALID_QUERY_FILTER_OPERATOR",
                            at(column, format!("invalid ID field: {raw}")),
                        )
                    }),
                    _ => Err(wrong_type("id", true)),
                })
                .collect::<Result<BTreeSet<_>, _>>()?;
            Ok(Filter::Id { ids, negated })
        }
        ColumnKind::Text => {
            let (values, negated) =
                equality(&condition.test).ok_or_else(|| bad_operator("text"))?;
            let values = values
                .into_iter()
                .map(|value| match value {
                    Literal::Text(text) => Ok(Some(text)),
                    Literal::Null => Ok(None),
                    _ => Err(wrong_type("string", true)),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Filter::Text {
                field,
                values,
                negated,
            })
        }
        ColumnKind::Boolean => {
            let (op, value) = match &condition.test {
                Test::Compare(op @ (CompareOp::Eq | CompareOp::Ne), value) => (*op, value),
                _ => return Err(bad_operator("boolean")),
            };
            let value = match value {
                Literal::Bool(b) => Some(*b),
                Literal::Null => None,
                _ => return Err(wrong_type("boolean", false)),
            };
            Ok(Filter::Boolean {
                field,
                value,
                negated: op == CompareOp::Ne,
            })
        }
        ColumnKind::DateTime => {
            let Test::Compare(op, value) = &condition.test else {
                return Err(bad_operator("datetime"));
            };
            let value = match value {
                Literal::Bare(raw) => Some(parse_datetime(raw).ok_or_else(|| {
                    RestError::malformed(column, format!("invalid datetime literal: {raw}"))
                })?),
                Literal::Null if matches!(op, CompareOp::Eq | CompareOp::Ne) => None,
                _ => return Err(wrong_type("dateTime", false)),
            };
            Ok(Filter::DateTime {
                field,
                op: *op,
                value,
            })
        }
        ColumnKind::List => Err(bad_operator("multi-valued")),
    }
}

/// The 18-character form of a 15- or 18-character id (the suffix is recomputed, as the first
/// fifteen characters alone identify the record).
pub fn normalize_id(raw: &str) -> Option<String> {
    let valid =
        (raw.len() == 15 || raw.len() == 18) && raw.chars().all(|c| c.is_ascii_alphanumeric());
    valid.then(|| with_checksum(&raw[..15]))
}

/// A SOQL datetime literal as epoch milliseconds.
pub fn parse_datetime(raw: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(raw)
        .ok()
        .map(|moment| moment.timestamp_millis())
}

/// Epoch milliseconds as Salesforce REST renders a datetime: `2024-06-18T11:30:45.000+0000`.
pub fn render_datetime(ms: i64) -> Option<String> {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|moment| moment.format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string())
}

/// The path of a record under an API version.
fn record_url(version: &str, id: &str) -> String {
    format!("/services/data/v{version}/sobjects/User/{id}")
}

/// One record as the REST API returns it: `attributes`, then the columns asked for (null when
/// unset).
pub fn render(record: &UserRecord, select: &[(String, ColumnKind)], version: &str) -> Value {
    let mut object = serde_json::Map::new();
    object.insert(
        "attributes".to_owned(),
        json!({"type": "User", "url": record_url(version, &record.id)}),
    );
    for (name, kind) in select {
        let value = record.get(name);
        let rendered = match (kind, value) {
            (ColumnKind::DateTime, Value::Number(n)) => n
                .as_i64()
                .and_then(render_datetime)
                .map_or(Value::Null, Value::String),
            _ => value.clone(),
        };
        object.insert(name.clone(), rendered);
    }
    Value::Object(object)
}

/// Runs a plan over the records (in id order): the rendered result set.
pub fn run<'a>(
    plan: &Plan,
    records: impl Iterator<Item = &'a UserRecord>,
    version: &str,
) -> Vec<Value> {
    let mut matching: Vec<&UserRecord> = records
        .filter(|record| plan.filters.iter().all(|f| f.matches(record)))
        .collect();
    if plan.descending {
        matching.reverse();
    }
    matching
        .into_iter()
        .take(plan.limit.unwrap_or(usize::MAX))
        .map(|record| render(record, &plan.select, version))
        .collect()
}

// ---- Query locators -------------------------------------------------------------------------

/// One page of a result set.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub total_size: usize,
    pub records: Vec<Value>,
    /// The locator and offset of the next page; `None` when this page is the last.
    pub next: Option<(String, usize)>,
}

#[derive(Debug)]
struct Cursor {
    owner: String,
    records: Vec<Value>,
    batch: usize,
    last_used_ms: i64,
}

/// The open query locators.
#[derive(Debug, Default)]
pub struct Locators {
    cursors: HashMap<String, Cursor>,
    /// Locators in the order they were opened, for closing a user's oldest.
    opened: VecDeque<String>,
}

impl Locators {
    /// The first page of `records` for `owner`; opens a locator when more pages follow.
    pub fn open(&mut self, owner: &str, records: Vec<Value>, batch: usize, now_ms: i64) -> Page {
        let batch = batch.max(1);
        let total_size = records.len();
        if total_size <= batch {
            return Page {
                total_size,
                records,
                next: None,
            };
        }
        let first = records[..batch].to_vec();
        let locator = new_locator();
        let owned: Vec<&String> = self
            .opened
            .iter()
            .filter(|l| self.cursors.get(*l).is_some_and(|c| c.owner == owner))
            .collect();
        if owned.len() >= MAX_OPEN_LOCATORS {
            let oldest = owned[0].clone();
            self.close(&oldest);
        }
        self.cursors.insert(
            locator.clone(),
            Cursor {
                owner: owner.to_owned(),
                records,
                batch,
                last_used_ms: now_ms,
            },
        );
        self.opened.push_back(locator.clone());
        Page {
            total_size,
            records: first,
            next: Some((locator, batch)),
        }
    }

    /// The page at `offset` of an open locator, for its owner. `batch` overrides the query's
    /// page size.
    pub fn page(
        &mut self,
        owner: &str,
        locator: &str,
        offset: usize,
        batch: Option<usize>,
        now_ms: i64,
    ) -> Result<Page, RestError> {
        self.expire(now_ms);
        let cursor = self
            .cursors
            .get_mut(locator)
            .filter(|cursor| cursor.owner == owner)
            .ok_or_else(RestError::invalid_locator)?;
        let total_size = cursor.records.len();
        if offset == 0 || offset >= total_size {
            return Err(RestError::invalid_locator());
        }
        cursor.last_used_ms = now_ms;
        let batch = batch.unwrap_or(cursor.batch).max(1);
        let end = (offset + batch).min(total_size);
        Ok(Page {
            total_size,
            records: cursor.records[offset..end].to_vec(),
            next: (end < total_size).then(|| (locator.to_owned(), end)),
        })
    }

    /// Closes every locator idle for [`LOCATOR_IDLE_MS`].
    fn expire(&mut self, now_ms: i64) {
        let dead: Vec<String> = self
            .cursors
            .iter()
            .filter(|(_, c)| now_ms - c.last_used_ms >= LOCATOR_IDLE_MS)
            .map(|(l, _)| l.clone())
            .collect();
        for locator in dead {
            self.close(&locator);
        }
    }

    fn close(&mut self, locator: &str) {
        self.cursors.remove(locator);
        self.opened.retain(|l| l != locator);
    }

    /// Closes every locator (as if all had been idle too long).
    pub fn close_all(&mut self) {
        self.cursors.clear();
        self.opened.clear();
    }

    pub fn open_count(&self) -> usize {
        self.cursors.len()
    }
}

/// A new locator: an 18-character id with the query-locator key prefix `01g`.
fn new_locator() -> String {
    let body: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(12)
        .map(char::from)
        .collect();
    with_checksum(&format!("01g{body}"))
}

/// The page size a `Sforce-Query-Options` value asks for: `batchSize=N`, clamped.
pub fn batch_size(options: &str) -> Option<usize> {
    options.split(',').find_map(|option| {
        let (key, value) = option.split_once('=')?;
        if !key.trim().eq_ignore_ascii_case("batchSize") {
            return None;
        }
        let size: usize = value.trim().parse().ok()?;
        Some(size.clamp(MIN_BATCH_SIZE, MAX_BATCH_SIZE))
    })
}

// ---- The REST state and its faults ------------------------------------------------------------

/// What the REST data API keeps between requests.
#[derive(Debug)]
pub struct RestState {
    pub locators: Locators,
    /// The page size when a request asks for none.
    pub default_page_size: usize,
    /// Usernames whose API access is off (`API_DISABLED_FOR_ORG`).
    pub api_disabled: BTreeSet<String>,
    /// Statuses the next requests get instead of an answer (a fault switch).
    pub failures: VecDeque<u16>,
    /// Authenticated calls answered, for `Sforce-Limit-Info`.
    pub api_calls: u64,
}

impl Default for RestState {
    fn default() -> Self {
        RestState {
            locators: Locators::default(),
            default_page_size: DEFAULT_PAGE_SIZE,
            api_disabled: BTreeSet::new(),
            failures: VecDeque::new(),
            api_calls: 0,
        }
    }
}

// ---- HTTP -----------------------------------------------------------------------------------

/// The REST data API's routes, mounted on the My Domain host.
pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/services/data", get(versions))
        .route("/services/data/", get(versions))
        .route("/services/data/{version}/query", get(query))
        .route("/services/data/{version}/query/", get(query))
        .route("/services/data/{version}/query/{locator}", get(query_more))
        .route(
            "/services/data/{version}/sobjects/User/{id}",
            get(user_by_id),
        )
}

/// The version number in a `v62.0` path segment, if the org serves it.
fn api_version(segment: &str) -> Result<&str, RestError> {
    segment
        .strip_prefix('v')
        .filter(|v| API_VERSIONS.iter().any(|(known, _)| known == v))
        .ok_or_else(RestError::not_found)
}

/// The pipeline in front of every data call: an injected failure, the version, the session,
/// the user's API access. Returns the session's username and the API version.
fn admit<'a>(
    state: &mut SimState,
    headers: &HeaderMap,
    version: &'a str,
) -> Result<(String, &'a str), RestError> {
    if let Some(status) = state.rest.failures.pop_front() {
        return Err(RestError {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code: "SERVER_UNAVAILABLE",
            message: "The server is temporarily unable to answer (injected fault)".to_owned(),
        });
    }
    let version = api_version(version)?;
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    let username = state
        .oauth
        .session_user(token)
        .map(|user| user.username.clone())
        .ok_or_else(RestError::invalid_session)?;
    state.rest.api_calls += 1;
    if state.rest.api_disabled.contains(&username) {
        return Err(RestError {
            status: StatusCode::FORBIDDEN,
            code: "API_DISABLED_FOR_ORG",
            message: "API access is not enabled for this user".to_owned(),
        });
    }
    Ok((username, version))
}

/// A JSON answer with the `Sforce-Limit-Info` header.
fn answer(state: &SimState, result: Result<Value, RestError>) -> Response {
    let mut response = match result {
        Ok(body) => json_response(StatusCode::OK, &body),
        Err(error) => error.into_response(),
    };
    if state.rest.api_calls > 0 {
        let usage = format!("api-usage={}/{DAILY_API_LIMIT}", state.rest.api_calls);
        if let Ok(value) = HeaderValue::from_str(&usage) {
            response.headers_mut().insert("sforce-limit-info", value);
        }
    }
    response
}

fn page_body(page: Page, version: &str) -> Value {
    let mut body = json!({
        "totalSize": page.total_size,
        "done": page.next.is_none(),
        "records": page.records,
    });
    if let Some((locator, offset)) = page.next {
        body["nextRecordsUrl"] = Value::String(format!(
            "/services/data/v{version}/query/{locator}-{offset}"
        ));
    }
    body
}

fn requested_batch(headers: &HeaderMap) -> Option<usize> {
    headers
        .get("sforce-query-options")
        .and_then(|value| value.to_str().ok())
        .and_then(batch_size)
}

async fn versions(State(shared): State<Arc<Shared>>) -> Response {
    let base = "/services/data";
    let list: Vec<Value> = API_VERSIONS
        .iter()
        .map(|(version, label)| json!({"label": label, "url": format!("{base}/v{version}"), "version": version}))
        .collect();
    let state = shared.lock();
    answer(&state, Ok(Value::Array(list)))
}

async fn query(
    State(shared): State<Arc<Shared>>,
    Path(version): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut state = shared.lock();
    let result = admit(&mut state, &headers, &version).and_then(|(username, version)| {
        let soql = params
            .get("q")
            .filter(|q| !q.trim().is_empty())
            .ok_or_else(|| {
                RestError::bad_request("MALFORMED_QUERY", "A query string has to be specified")
            })?;
        let statement = parse(soql)?;
        let columns = user_columns(state.bus.current_schema());
        let plan = plan(&statement, &columns)?;
        let records = run(&plan, state.directory.all(), version);
        let batch = requested_batch(&headers).unwrap_or(state.rest.default_page_size);
        let page = state
            .rest
            .locators
            .open(&username, records, batch, now_ms());
        Ok(page_body(page, version))
    });
    answer(&state, result)
}

async fn query_more(
    State(shared): State<Arc<Shared>>,
    Path((version, locator)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut state = shared.lock();
    let result = admit(&mut state, &headers, &version).and_then(|(username, version)| {
        let (locator, offset) = locator
            .rsplit_once('-')
            .and_then(|(locator, offset)| Some((locator, offset.parse::<usize>().ok()?)))
            .ok_or_else(RestError::invalid_locator)?;
        let batch = requested_batch(&headers);
        let page = state
            .rest
            .locators
            .page(&username, locator, offset, batch, now_ms())?;
        Ok(page_body(page, version))
    });
    answer(&state, result)
}

async fn user_by_id(
    State(shared): State<Arc<Shared>>,
    Path((version, id)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut state = shared.lock();
    let result = admit(&mut state, &headers, &version).and_then(|(_, version)| {
        let columns = user_columns(state.bus.current_schema());
        let select = match params.get("fields") {
            None => columns,
            Some(list) => list
                .split(',')
                .map(|name| {
                    columns
                        .iter()
                        .find(|(canonical, _)| canonical.eq_ignore_ascii_case(name.trim()))
                        .cloned()
                        .ok_or_else(|| {
                            RestError::bad_request(
                                "INVALID_FIELD",
                                format!("No such column '{}' on entity 'User'.", name.trim()),
                            )
                        })
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        let record = normalize_id(&id)
            .and_then(|id| state.directory.get(&id))
            .ok_or_else(RestError::not_found)?;
        Ok(render(record, &select, version))
    });
    answer(&state, result)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::salesforce::directory::{Directory, Writer};

    fn columns() -> Vec<(String, ColumnKind)> {
        user_columns(&SchemaVersion::build(&[]))
    }

    fn planned(soql: &str) -> Result<Plan, RestError> {
        plan(&parse(soql)?, &columns())
    }

    fn code(soql: &str) -> &'static str {
        planned(soql).expect_err("refused").code
    }

    /// A directory of `n` users `u<i>@x.test`, even ones inactive, created at `1000 * i` ms.
    fn directory(n: usize) -> (Directory, Vec<String>) {
        let mut directory = Directory::new("00DSIM000000001");
        let ids = (0..n)
            .map(|i| {
                let fields: BTreeMap<String, Value> = serde_json::from_value(json!({
                    "Username": format!("u{i}@x.test"),
                    "Email": format!("U{i}@X.test"),
                    "FirstName": "Ann",
                    "IsActive": i % 2 == 1,
                }))
                .unwrap();
                let at = 1_718_710_245_000 + 1000 * i as i64;
                directory.create(fields, &Writer::default(), at).unwrap().0
            })
            .collect();
        (directory, ids)
    }

    fn ids_of(rows: &[Value]) -> Vec<String> {
        rows.iter()
            .map(|row| row["Id"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn parses_the_subset_with_any_keyword_case() {
        let statement = parse(
            "select Id, email FROM user where Id IN ('005SIM000000001', '005SIM000000002AAA') \
             and IsActive = TRUE And LastModifiedDate >= 2024-06-18T11:30:45Z order by id desc limit 5",
        )
        .unwrap();
        assert_eq!(statement.fields.len(), 2);
        assert_eq!(statement.object.text, "user");
        assert_eq!(statement.conditions.len(), 3);
        assert_eq!(
            statement.conditions[1].test,
            Test::Compare(CompareOp::Eq, Literal::Bool(true))
        );
        assert_eq!(
            statement.conditions[2].test,
            Test::Compare(CompareOp::Ge, Literal::Bare("2024-06-18T11:30:45Z".into()))
        );
        assert_eq!(statement.order.as_ref().map(|(_, desc)| *desc), Some(true));
        assert_eq!(statement.limit, Some(5));

        let plan = planned("SELECT id, EMAIL FROM User").unwrap();
        let names: Vec<&str> = plan.select.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["Id", "Email"], "canonical names in the answer");
    }

    #[test]
    fn strings_unescape_quotes_and_backslashes() {
        let statement = parse(r"SELECT Id FROM User WHERE Email = 'o\'hara\\x@y.test'").unwrap();
        assert_eq!(
            statement.conditions[0].test,
            Test::Compare(CompareOp::Eq, Literal::Text(r"o'hara\x@y.test".into()))
        );
    }

    #[test]
    fn malformed_queries_say_where() {
        for soql in [
            "",
            "SELECT FROM User",
            "SELECT Id User",
            "SELECT Id, FROM User",
            "SELECT Id FROM User WHERE",
            "SELECT Id FROM User WHERE Email = 'a' OR Email = 'b'",
            "SELECT Id FROM User WHERE Email = 'unterminated",
            "SELECT Id FROM User LIMIT x",
            "SELECT Id FROM User LIMIT 5 extra",
            "SELECT COUNT() FROM User",
            "SELECT Id FROM User WHERE Id IN ('005SIM000000001'",
            "SELECT Id FROM User ORDER BY Email",
            "SELECT Id, Id FROM User",
        ] {
            let error = planned(soql).expect_err(soql);
            assert_eq!(error.code, "MALFORMED_QUERY", "{soql}: {}", error.message);
            assert_eq!(error.status, StatusCode::BAD_REQUEST);
        }
        let error = planned("SELECT Id FROM User WHERE Email = 'a' OR Email = 'b'").unwrap_err();
        assert!(
            error.message.starts_with("ERROR at Row:1:Column:39"),
            "{}",
            error.message
        );
    }

    #[test]
    fn unknown_fields_and_objects_have_their_own_codes() {
        let error = planned("SELECT Id, Foo FROM User").unwrap_err();
        assert_eq!(error.code, "INVALID_FIELD");
        assert!(
            error
                .message
                .contains("No such column 'Foo' on entity 'User'")
        );
        assert_eq!(code("SELECT Id FROM User WHERE Foo = 'x'"), "INVALID_FIELD");
        let error = planned("SELECT Id FROM Account").unwrap_err();
        assert_eq!(error.code, "INVALID_TYPE");
        assert!(error.message.contains("'Account'"));
    }

    #[test]
    fn values_must_have_their_field_type() {
        assert_eq!(
            code("SELECT Id FROM User WHERE LastModifiedDate >= '2024-06-18T11:30:45Z'"),
            "INVALID_FIELD"
        );
        assert_eq!(
            code("SELECT Id FROM User WHERE IsActive = 'true'"),
            "INVALID_FIELD"
        );
        assert_eq!(
            code("SELECT Id FROM User WHERE Email = true"),
            "INVALID_FIELD"
        );
        assert_eq!(
            code("SELECT Id FROM User WHERE Id = 'not-an-id'"),
            "INVALID_QUERY_FILTER_OPERATOR"
        );
        assert_eq!(
            code("SELECT Id FROM User WHERE IsActive > true"),
            "INVALID_QUERY_FILTER_OPERATOR"
        );
        assert_eq!(
            code("SELECT Id FROM User WHERE LastModifiedDate IN (2024-06-18T11:30:45Z)"),
            "INVALID_QUERY_FILTER_OPERATOR"
        );
        assert_eq!(
            code("SELECT Id FROM User WHERE LastModifiedDate >= 2024-13-18T11:30:45Z"),
            "MALFORMED_QUERY"
        );
    }

    #[test]
    fn filters_select_the_right_users() {
        let (directory, ids) = directory(6);
        let rows = |soql: &str| run(&planned(soql).unwrap(), directory.all(), "62.0");
        // Ids in either form, a repeated one counted once.
        let in_list = format!(
            "SELECT Id FROM User WHERE Id IN ('{}', '{}', '{}')",
            &ids[1][..15],
            ids[3],
            ids[3]
        );
        assert_eq!(ids_of(&rows(&in_list)), [ids[1].clone(), ids[3].clone()]);
        assert_eq!(
            ids_of(&rows(&format!(
                "SELECT Id FROM User WHERE Id = '{}'",
                ids[2]
            ))),
            [ids[2].clone()]
        );
        assert_eq!(
            ids_of(&rows("SELECT Id FROM User WHERE IsActive = false")),
            [ids[0].clone(), ids[2].clone(), ids[4].clone()]
        );
        // Email equality ignores case.
        assert_eq!(
            ids_of(&rows("SELECT Id FROM User WHERE Email = 'u4@x.TEST'")),
            [ids[4].clone()]
        );
        // Created at 11:30:45, :46, :47 … UTC on 2024-06-18; a +02:00 literal is the same instant.
        assert_eq!(
            ids_of(&rows(
                "SELECT Id FROM User WHERE LastModifiedDate >= 2024-06-18T11:30:49Z"
            )),
            [ids[4].clone(), ids[5].clone()]
        );
        assert_eq!(
            ids_of(&rows(
                "SELECT Id FROM User WHERE LastModifiedDate > 2024-06-18T13:30:49.000+02:00 AND IsActive = true"
            )),
            [ids[5].clone()]
        );
        assert_eq!(rows("SELECT Id FROM User WHERE Title = null").len(), 6);
        assert_eq!(rows("SELECT Id FROM User WHERE Title != null").len(), 0);
        assert_eq!(
            ids_of(&rows("SELECT Id FROM User ORDER BY Id DESC LIMIT 2")),
            [ids[5].clone(), ids[4].clone()]
        );
    }

    #[test]
    fn records_render_dates_and_nulls_as_the_rest_api_does() {
        let (directory, ids) = directory(1);
        let rows = run(
            &planned("SELECT Id, Title, CreatedDate, IsActive FROM User").unwrap(),
            directory.all(),
            "62.0",
        );
        assert_eq!(
            rows,
            [json!({
                "attributes": {"type": "User", "url": format!("/services/data/v62.0/sobjects/User/{}", ids[0])},
                "Id": ids[0],
                "Title": null,
                "CreatedDate": "2024-06-18T11:30:45.000+0000",
                "IsActive": false,
            })]
        );
        assert_eq!(
            render_datetime(1_718_710_245_123).unwrap(),
            "2024-06-18T11:30:45.123+0000"
        );
    }

    fn rows(n: usize) -> Vec<Value> {
        (0..n).map(|i| json!({"n": i})).collect()
    }

    #[test]
    fn a_result_within_one_page_opens_no_locator() {
        let mut locators = Locators::default();
        let page = locators.open("a", rows(2000), 2000, 0);
        assert_eq!(
            (page.total_size, page.records.len(), page.next),
            (2000, 2000, None)
        );
        assert_eq!(locators.open_count(), 0);
    }

    #[test]
    fn pages_follow_the_locator_to_the_end() {
        let mut locators = Locators::default();
        let first = locators.open("a", rows(4500), 2000, 0);
        let (locator, offset) = first.next.clone().expect("more pages");
        assert_eq!((first.records.len(), offset), (2000, 2000));
        assert!(locator.starts_with("01g") && locator.len() == 18);
        assert!(locator.chars().all(|c| c.is_ascii_alphanumeric()));

        let second = locators.page("a", &locator, offset, None, 1).unwrap();
        assert_eq!(second.records[0], json!({"n": 2000}));
        let (_, offset) = second.next.clone().unwrap();
        let third = locators.page("a", &locator, offset, None, 2).unwrap();
        assert_eq!((third.records.len(), third.next), (500, None));
        assert_eq!(third.records[499], json!({"n": 4499}));
        assert_eq!(third.total_size, 4500);

        // A page may ask for its own size.
        let small = locators.page("a", &locator, 2000, Some(300), 3).unwrap();
        assert_eq!(small.records.len(), 300);
        assert_eq!(small.next.map(|(_, o)| o), Some(2300));
    }

    #[test]
    fn unknown_foreign_out_of_range_and_idle_locators_are_invalid() {
        let mut locators = Locators::default();
        let (locator, _) = locators.open("a", rows(10), 4, 0).next.unwrap();
        let invalid = |result: Result<Page, RestError>| result.unwrap_err().code;
        assert_eq!(
            invalid(locators.page("a", "01gNOPE", 4, None, 0)),
            "INVALID_QUERY_LOCATOR"
        );
        assert_eq!(
            invalid(locators.page("b", &locator, 4, None, 0)),
            "INVALID_QUERY_LOCATOR"
        );
        assert_eq!(
            invalid(locators.page("a", &locator, 10, None, 0)),
            "INVALID_QUERY_LOCATOR"
        );
        assert_eq!(
            invalid(locators.page("a", &locator, 0, None, 0)),
            "INVALID_QUERY_LOCATOR"
        );
        // Use keeps it alive; idleness kills it.
        assert!(
            locators
                .page("a", &locator, 4, None, LOCATOR_IDLE_MS - 1)
                .is_ok()
        );
        assert!(
            locators
                .page("a", &locator, 4, None, 2 * LOCATOR_IDLE_MS - 2)
                .is_ok()
        );
        assert_eq!(
            invalid(locators.page("a", &locator, 4, None, 3 * LOCATOR_IDLE_MS)),
            "INVALID_QUERY_LOCATOR"
        );
        assert_eq!(locators.open_count(), 0);
    }

    #[test]
    fn an_eleventh_locator_closes_the_users_oldest() {
        let mut locators = Locators::default();
        let other = locators.open("b", rows(3), 1, 0).next.unwrap().0;
        let opened: Vec<String> = (0..=MAX_OPEN_LOCATORS)
            .map(|_| locators.open("a", rows(3), 1, 0).next.unwrap().0)
            .collect();
        assert!(locators.page("a", &opened[0], 1, None, 0).is_err());
        assert!(locators.page("a", &opened[1], 1, None, 0).is_ok());
        assert!(locators.page("b", &other, 1, None, 0).is_ok());
        assert_eq!(locators.open_count(), MAX_OPEN_LOCATORS + 1);
    }

    #[test]
    fn batch_size_option_is_read_and_clamped() {
        assert_eq!(batch_size("batchSize=500"), Some(500));
        assert_eq!(batch_size("foo=1, batchsize = 250"), Some(250));
        assert_eq!(batch_size("batchSize=10"), Some(MIN_BATCH_SIZE));
        assert_eq!(batch_size("batchSize=5000"), Some(MAX_BATCH_SIZE));
        assert_eq!(batch_size("batchSize=many"), None);
        assert_eq!(batch_size(""), None);
    }

    #[test]
    fn custom_fields_become_columns() {
        let columns = user_columns(&SchemaVersion::build(&["Badge__c".to_owned()]));
        let statement = parse("SELECT Badge__c, FirstName, City FROM User").unwrap();
        assert!(plan(&statement, &columns).is_ok());
        assert!(plan(&statement, &self::columns()).is_err());
    }
}

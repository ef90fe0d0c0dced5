//! Query parameters of `GET /api/v2/users` and `GET /api/v2/users/{id}`: parsing and filter
//! evaluation, pure.
//!
//! The simulator is strict on purpose: a parameter it does not simulate is refused with a
//! 400 naming it, instead of being silently ignored, so a client never passes a test by
//! relying on behaviour the simulator only pretends to have.
//!
//! Supported (as documented for Outreach, docs/simulators.md):
//! - `filter[<attr>]` on the filterable user attributes `id`, `email`, `username`,
//!   `firstName`, `lastName`, `locked`, `createdAt`, `updatedAt`, `currentSignInAt`, with
//!   the value forms `a`, `a,b,c`, `a..b`, `a..inf`, `neginf..b`, `__null__`, `__notnull__`.
//!   `filter[email]` matches case-insensitively and ignores surrounding spaces (an inference;
//!   Outreach does not document it); other text filters match exactly. The simulator never
//!   records sign-ins, so `currentSignInAt` is null for everyone.
//! - `page[size]` (default 50, 1..=1000), `page[after]` (an opaque cursor from
//!   `links.next`), `fields[user]`, `count=true|false`.
//!
//! Chosen status codes (Outreach does not document them): a filter on an attribute that is
//! not filterable (or unknown), or a filter value of the wrong type, is a **422**
//! `validationError` — the OAS declares 422 for a bad query on `GET /users`; malformed
//! paging/fieldset/count parameters, a `page[size]` above 1000, and parameters the simulator
//! does not implement (`sort`, `include`, `page[before]`, offset paging, `newFilterSyntax`,
//! `provide…` metadata) are a **400** `badRequest`.

use std::collections::HashSet;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

use super::cursor;
use super::directory::email_key;
use super::user::SimUser;

pub const DEFAULT_PAGE_SIZE: usize = 50;
pub const MAX_PAGE_SIZE: usize = 1000;

/// Every name `fields[user]` may list: the rendered attributes and relationships.
pub const USER_FIELDS: &[&str] = &[
    "email",
    "username",
    "firstName",
    "lastName",
    "name",
    "title",
    "locked",
    "custom1",
    "custom2",
    "custom3",
    "custom4",
    "custom5",
    "createdAt",
    "updatedAt",
    "mailboxes",
];

/// A parameter the simulator refused, with the HTTP status it warrants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryError {
    /// 400 `badRequest`.
    BadParameter { parameter: String, detail: String },
    /// 422 `validationError`.
    InvalidFilter { parameter: String, detail: String },
}

/// A parsed collection request.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionQuery {
    pub filters: Vec<Filter>,
    pub page_size: usize,
    pub after: Option<i64>,
    pub fields: Option<Vec<String>>,
    pub count: bool,
}

impl CollectionQuery {
    /// Whether `user` passes every filter.
    pub fn matches(&self, user: &SimUser) -> bool {
        self.filters.iter().all(|filter| filter.matches(user))
    }
}

/// One `filter[...]` parameter, typed by its attribute.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    Id(Condition<i64>),
    Email(Condition<String>),
    Text(TextAttribute, Condition<String>),
    Locked(Condition<bool>),
    Time(TimeAttribute, Condition<DateTime<Utc>>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextAttribute {
    Username,
    FirstName,
    LastName,
}

/// The variants are named after Outreach's attributes, which all end in `At`.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeAttribute {
    CreatedAt,
    UpdatedAt,
    CurrentSignInAt,
}

/// The value forms of a filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition<T> {
    /// `a` or `a,b,c`.
    AnyOf(Vec<T>),
    /// `a..b`, with `inf` / `neginf` as open ends; both ends inclusive.
    Range(Option<T>, Option<T>),
    /// `__null__`.
    Null,
    /// `__notnull__`.
    NotNull,
}

impl<T: PartialOrd> Condition<T> {
    fn holds(&self, value: Option<&T>, equal: impl Fn(&T, &T) -> bool) -> bool {
        match (self, value) {
            (Condition::Null, value) => value.is_none(),
            (Condition::NotNull, value) => value.is_some(),
            (_, None) => false,
            (Condition::AnyOf(wanted), Some(value)) => wanted.iter().any(|w| equal(w, value)),
            (Condition::Range(low, high), Some(value)) => {
                low.as_ref().is_none_or(|low| value >= low)
                    && high.as_ref().is_none_or(|high| value <= high)
            }
        }
    }
}

impl Filter {
    pub fn matches(&self, user: &SimUser) -> bool {
        match self {
            Filter::Id(condition) => condition.holds(Some(&user.id), |a, b| a == b),
            Filter::Email(condition) => {
                condition.holds(Some(&user.email), |a, b| email_key(a) == email_key(b))
            }
            Filter::Text(attribute, condition) => {
                let value = match attribute {
                    TextAttribute::Username => &user.username,
                    TextAttribute::FirstName => &user.first_name,
                    TextAttribute::LastName => &user.last_name,
                };
                condition.holds(value.as_ref(), |a, b| a == b)
            }
            Filter::Locked(condition) => condition.holds(Some(&user.locked), |a, b| a == b),
            Filter::Time(attribute, condition) => {
                let value = match attribute {
                    TimeAttribute::CreatedAt => Some(&user.created_at),
                    TimeAttribute::UpdatedAt => Some(&user.updated_at),
                    TimeAttribute::CurrentSignInAt => None,
                };
                condition.holds(value, |a, b| a == b)
            }
        }
    }
}

/// Parses the decoded query pairs of a collection request.
pub fn parse_collection(pairs: &[(String, String)]) -> Result<CollectionQuery, QueryError> {
    reject_repeats(pairs)?;
    let mut query = CollectionQuery {
        filters: Vec::new(),
        page_size: DEFAULT_PAGE_SIZE,
        after: None,
        fields: None,
        count: false,
    };
    for (key, value) in pairs {
        if let Some(attribute) = bracketed(key, "filter") {
            query.filters.push(parse_filter(key, attribute, value)?);
        } else if key == "page[size]" {
            query.page_size = parse_page_size(value)?;
        } else if key == "page[after]" {
            let after = cursor::decode(value)
                .ok_or_else(|| bad(key, "The cursor is not valid; follow links.next."))?;
            query.after = Some(after);
        } else if key == "count" {
            query.count = parse_bool(value).ok_or_else(|| bad(key, "Expected true or false."))?;
        } else if !parse_fields_pair(key, value, &mut query.fields)? {
            return Err(unsupported(key));
        }
    }
    Ok(query)
}

/// Parses the query of a single-resource request, where only sparse fieldsets apply.
pub fn parse_single(pairs: &[(String, String)]) -> Result<Option<Vec<String>>, QueryError> {
    reject_repeats(pairs)?;
    let mut fields = None;
    for (key, value) in pairs {
        if !parse_fields_pair(key, value, &mut fields)? {
            return Err(unsupported(key));
        }
    }
    Ok(fields)
}

/// Handles a `fields[...]` pair; returns whether the key was one.
fn parse_fields_pair(
    key: &str,
    value: &str,
    fields: &mut Option<Vec<String>>,
) -> Result<bool, QueryError> {
    let Some(resource_type) = bracketed(key, "fields") else {
        return Ok(false);
    };
    // Other types' fieldsets would apply to included resources, which the simulator never
    // returns, so they are accepted and have nothing to act on.
    if resource_type == "user" {
        let names = split_list(value);
        if let Some(unknown) = names
            .iter()
            .find(|name| !USER_FIELDS.contains(&name.as_str()))
        {
            return Err(bad(key, &format!("'{unknown}' is not a field of 'user'.")));
        }
        *fields = Some(names);
    }
    Ok(true)
}

fn parse_filter(key: &str, attribute: &str, value: &str) -> Result<Filter, QueryError> {
    let invalid = |detail: &str| QueryError::InvalidFilter {
        parameter: key.to_owned(),
        detail: detail.to_owned(),
    };
    let type_error =
        |kind: &str| invalid(&format!("'{value}' is not a valid {kind} filter value."));
    let text = |value: &str| Some(value.to_owned());
    Ok(match attribute {
        "id" => Filter::Id(
            parse_condition(value, |v| v.parse().ok()).ok_or_else(|| type_error("integer"))?,
        ),
        "email" => Filter::Email(parse_condition(value, text).ok_or_else(|| type_error("text"))?),
        "username" | "firstName" | "lastName" => {
            let text_attribute = match attribute {
                "username" => TextAttribute::Username,
                "firstName" => TextAttribute::FirstName,
                _ => TextAttribute::LastName,
            };
            Filter::Text(
                text_attribute,
                parse_condition(value, text).ok_or_else(|| type_error("text"))?,
            )
        }
        "locked" => {
            Filter::Locked(parse_condition(value, parse_bool).ok_or_else(|| type_error("boolean"))?)
        }
        "createdAt" | "updatedAt" | "currentSignInAt" => {
            let time_attribute = match attribute {
                "createdAt" => TimeAttribute::CreatedAt,
                "updatedAt" => TimeAttribute::UpdatedAt,
                _ => TimeAttribute::CurrentSignInAt,
            };
            Filter::Time(
                time_attribute,
                parse_condition(value, parse_time).ok_or_else(|| type_error("date-time"))?,
            )
        }
        other => {
            return Err(invalid(&format!(
                "'{other}' is not a filterable attribute of 'user'."
            )));
        }
    })
}

/// Parses the filter value forms; `None` when a value does not parse as `T`.
fn parse_condition<T>(raw: &str, parse: impl Fn(&str) -> Option<T>) -> Option<Condition<T>> {
    match raw {
        "__null__" => return Some(Condition::Null),
        "__notnull__" => return Some(Condition::NotNull),
        _ => {}
    }
    if let Some((low, high)) = raw.split_once("..") {
        let low = if low == "neginf" {
            None
        } else {
            Some(parse(low)?)
        };
        let high = if high == "inf" {
            None
        } else {
            Some(parse(high)?)
        };
        return Some(Condition::Range(low, high));
    }
    let values = raw.split(',').map(parse).collect::<Option<Vec<T>>>()?;
    Some(Condition::AnyOf(values))
}

fn parse_page_size(value: &str) -> Result<usize, QueryError> {
    match value.parse::<usize>() {
        Ok(size) if (1..=MAX_PAGE_SIZE).contains(&size) => Ok(size),
        _ => Err(bad(
            "page[size]",
            &format!("page[size] must be an integer from 1 to {MAX_PAGE_SIZE}."),
        )),
    }
}

fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// RFC 3339, a zone-less `YYYY-MM-DDTHH:MM:SS[.fff]` (read as UTC), or a bare date
/// (midnight UTC).
fn parse_time(value: &str) -> Option<DateTime<Utc>> {
    if let Ok(time) = DateTime::parse_from_rfc3339(value) {
        return Some(time.with_timezone(&Utc));
    }
    if let Ok(time) = NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S%.f") {
        return Some(time.and_utc());
    }
    let date = NaiveDate::parse_from_str(value, "%Y-%m-%d").ok()?;
    Some(date.and_hms_opt(0, 0, 0)?.and_utc())
}

/// `name[inner]` → `inner`.
fn bracketed<'a>(key: &'a str, name: &str) -> Option<&'a str> {
    key.strip_prefix(name)?.strip_prefix('[')?.strip_suffix(']')
}

fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect()
}

fn reject_repeats(pairs: &[(String, String)]) -> Result<(), QueryError> {
    let mut seen = HashSet::new();
    match pairs.iter().find(|(key, _)| !seen.insert(key.as_str())) {
        Some((key, _)) => Err(bad(
            key,
            &format!("The parameter '{key}' is given more than once."),
        )),
        None => Ok(()),
    }
}

fn unsupported(key: &str) -> QueryError {
    bad(
        key,
        &format!("The query parameter '{key}' is not supported by the Outreach simulator."),
    )
}

fn bad(parameter: &str, detail: &str) -> QueryError {
    QueryError::BadParameter {
        parameter: parameter.to_owned(),
        detail: detail.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn pairs(query: &str) -> Vec<(String, String)> {
        url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect()
    }

    fn collection(query: &str) -> Result<CollectionQuery, QueryError> {
        parse_collection(&pairs(query))
    }

    fn user(id: i64, email: &str) -> SimUser {
        SimUser::new(id, email)
    }

    #[test]
    fn defaults_when_nothing_is_given() {
        let query = collection("").unwrap();
        assert_eq!(query.page_size, 50);
        assert_eq!(query.after, None);
        assert_eq!(query.fields, None);
        assert!(!query.count);
        assert!(query.filters.is_empty());
    }

    #[test]
    fn page_size_must_be_between_one_and_a_thousand() {
        assert_eq!(collection("page[size]=1000").unwrap().page_size, 1000);
        assert_eq!(collection("page%5Bsize%5D=7").unwrap().page_size, 7);
        for bad in ["0", "1001", "-1", "ten"] {
            assert!(
                matches!(
                    collection(&format!("page[size]={bad}")),
                    Err(QueryError::BadParameter { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn page_after_takes_only_our_cursors() {
        let query = collection(&format!("page[after]={}", cursor::encode(50))).unwrap();
        assert_eq!(query.after, Some(50));
        assert!(matches!(
            collection("page[after]=50"),
            Err(QueryError::BadParameter { .. })
        ));
    }

    #[test]
    fn email_filter_matches_case_insensitively() {
        let query = collection("filter[email]=Jane@Acme.TEST").unwrap();
        assert!(query.matches(&user(1, "jane@acme.test")));
        assert!(!query.matches(&user(2, "john@acme.test")));
    }

    #[test]
    fn plus_in_an_email_must_be_percent_encoded() {
        let query = collection("filter[email]=a%2Bb@x.test").unwrap();
        assert!(query.matches(&user(1, "a+b@x.test")));
        let unencoded = collection("filter[email]=a+b@x.test").unwrap();
        assert!(!unencoded.matches(&user(1, "a+b@x.test")));
    }

    #[test]
    fn id_filter_takes_single_values_lists_and_ranges() {
        let ids = |query: &str| {
            let query = collection(query).unwrap();
            (1..=10)
                .filter(|&id| query.matches(&user(id, "a@x.test")))
                .collect::<Vec<_>>()
        };
        assert_eq!(ids("filter[id]=3"), [3]);
        assert_eq!(ids("filter[id]=1,4,9"), [1, 4, 9]);
        assert_eq!(ids("filter[id]=4..6"), [4, 5, 6]);
        assert_eq!(ids("filter[id]=8..inf"), [8, 9, 10]);
        assert_eq!(ids("filter[id]=neginf..2"), [1, 2]);
    }

    #[test]
    fn locked_filter_is_boolean() {
        let query = collection("filter[locked]=true").unwrap();
        let mut locked = user(1, "a@x.test");
        locked.locked = true;
        assert!(query.matches(&locked));
        assert!(!query.matches(&user(2, "b@x.test")));
        assert!(matches!(
            collection("filter[locked]=yes"),
            Err(QueryError::InvalidFilter { .. })
        ));
    }

    #[test]
    fn null_forms_test_presence() {
        let mut named = user(1, "a@x.test");
        named.username = Some("ann".into());
        let unnamed = user(2, "b@x.test");
        let null = collection("filter[username]=__null__").unwrap();
        let not_null = collection("filter[username]=__notnull__").unwrap();
        assert!(!null.matches(&named) && null.matches(&unnamed));
        assert!(not_null.matches(&named) && !not_null.matches(&unnamed));
    }

    #[test]
    fn time_ranges_accept_dates_and_instants() {
        let mut old = user(1, "a@x.test");
        old.updated_at = Utc.with_ymd_and_hms(2020, 5, 1, 12, 0, 0).unwrap();
        let recent = collection("filter[updatedAt]=2021-01-01..inf").unwrap();
        assert!(!recent.matches(&old));
        let window =
            collection("filter[updatedAt]=2020-05-01T00:00:00Z..2020-05-01T12:00:00").unwrap();
        assert!(window.matches(&old));
        assert!(matches!(
            collection("filter[updatedAt]=yesterday"),
            Err(QueryError::InvalidFilter { .. })
        ));
    }

    #[test]
    fn nobody_has_signed_in() {
        let query = collection("filter[currentSignInAt]=__null__").unwrap();
        assert!(query.matches(&user(1, "a@x.test")));
    }

    #[test]
    fn filters_combine_with_and() {
        let query = collection("filter[id]=1,2&filter[email]=b@x.test").unwrap();
        assert!(!query.matches(&user(1, "a@x.test")));
        assert!(query.matches(&user(2, "b@x.test")));
    }

    #[test]
    fn non_filterable_attributes_are_422() {
        for key in ["title", "custom1", "nickname", "profile][id"] {
            assert!(
                matches!(
                    collection(&format!("filter[{key}]=x")),
                    Err(QueryError::InvalidFilter { .. })
                ),
                "{key}"
            );
        }
        assert!(matches!(
            collection("filter[id]=abc"),
            Err(QueryError::InvalidFilter { .. })
        ));
    }

    #[test]
    fn sparse_fieldsets_name_known_fields_only() {
        let query = collection("fields[user]=email,locked").unwrap();
        assert_eq!(
            query.fields,
            Some(vec!["email".to_owned(), "locked".to_owned()])
        );
        assert_eq!(collection("fields[user]=").unwrap().fields, Some(vec![]));
        assert!(matches!(
            collection("fields[user]=email,salary"),
            Err(QueryError::BadParameter { .. })
        ));
        assert_eq!(collection("fields[profile]=name").unwrap().fields, None);
    }

    #[test]
    fn count_is_a_boolean() {
        assert!(collection("count=true").unwrap().count);
        assert!(!collection("count=false").unwrap().count);
        assert!(matches!(
            collection("count=1"),
            Err(QueryError::BadParameter { .. })
        ));
    }

    #[test]
    fn unsimulated_and_repeated_parameters_are_refused() {
        for query in [
            "sort=lastName",
            "include=profile",
            "page[offset]=5",
            "newFilterSyntax=true",
        ] {
            assert!(
                matches!(collection(query), Err(QueryError::BadParameter { .. })),
                "{query}"
            );
        }
        assert!(matches!(
            collection("filter[id]=1&filter[id]=2"),
            Err(QueryError::BadParameter { .. })
        ));
    }

    #[test]
    fn single_resource_queries_take_only_fieldsets() {
        assert_eq!(
            parse_single(&pairs("fields[user]=email")).unwrap(),
            Some(vec!["email".to_owned()])
        );
        assert!(parse_single(&pairs("filter[id]=1")).is_err());
    }
}

//! JSON:API documents as Outreach writes and reads them, built from `serde_json` values.
//!
//! The simulator renders and parses the wire format itself (never through the product's
//! types), following docs/simulators.md:
//!
//! - a user is `{"type":"user","id":<integer>,"attributes":{…},"relationships":{…},
//!   "links":{"self":…}}`; timestamps are UTC with milliseconds and a `Z`;
//! - `relationships` carries only the links-only to-many `mailboxes`, the most common form,
//!   so clients exercise relationship tolerance;
//! - errors are `{"errors":[{"id","title","detail","source"?}]}` with the error code in `id`;
//! - write bodies are `{"data":{"type":"user",…}}`; every attribute problem is reported (one
//!   error object each, with a `source.pointer`), as a Rails validation would.
//!
//! Inferences (Outreach does not document them): read-only attributes and attributes the
//! simulator does not know are rejected with 422 rather than ignored; a PATCH naming `email`
//! is rejected with 422 (the API documents that email cannot be updated); `data.id` in a
//! PATCH must be a JSON integer (the OAS types it so) — a string id is refused.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

use super::directory::UserChanges;
use super::user::SimUser;

/// Maximum length of the plain string attributes (OAS `maxLength`).
const MAX_TEXT: usize = 255;
/// Maximum length of `custom1..5` (OAS says 225).
const MAX_CUSTOM: usize = 225;

/// Attributes the API serves but never accepts.
const READ_ONLY: &[&str] = &[
    "name",
    "createdAt",
    "updatedAt",
    "currentSignInAt",
    "lastSignInAt",
    "passwordExpiresAt",
    "userGuid",
];

/// Renders one user. `fields` is the `fields[user]` sparse fieldset, if given.
pub fn user_resource(user: &SimUser, api_url: &str, fields: Option<&[String]>) -> Value {
    let wanted = |name: &str| fields.is_none_or(|fields| fields.iter().any(|f| f == name));
    let mut attributes = user_attributes(user);
    attributes.retain(|name, _| wanted(name));

    let mut resource = json!({
        "type": "user",
        "id": user.id,
        "attributes": attributes,
        "links": {"self": format!("{api_url}/users/{}", user.id)},
    });
    if wanted("mailboxes") {
        resource["relationships"] = json!({
            "mailboxes": {"links": {"related": format!("{api_url}/mailboxes?filter[user][id]={}", user.id)}}
        });
    }
    resource
}

/// Every attribute of a user, as the API renders it (also the source of webhook payloads).
pub fn user_attributes(user: &SimUser) -> Map<String, Value> {
    let mut attributes = Map::new();
    let mut put = |name: &str, value: Value| {
        attributes.insert(name.to_owned(), value);
    };
    put("email", json!(user.email));
    put("username", json!(user.username));
    put("firstName", json!(user.first_name));
    put("lastName", json!(user.last_name));
    put("name", json!(user.name()));
    put("title", json!(user.title));
    put("locked", json!(user.locked));
    for (index, value) in user.custom.iter().enumerate() {
        put(&format!("custom{}", index + 1), json!(value));
    }
    put("createdAt", json!(timestamp(user.created_at)));
    put("updatedAt", json!(timestamp(user.updated_at)));
    attributes
}

/// The wire form of a timestamp: `2025-01-02T03:04:05.000Z`.
pub fn timestamp(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `{"errors":[{"id","title","detail"}]}`.
pub fn error(id: &str, title: &str, detail: &str) -> Value {
    json!({"errors": [{"id": id, "title": title, "detail": detail}]})
}

/// An error whose `source.pointer` names the offending member of the request document.
pub fn pointer_error(id: &str, title: &str, detail: &str, pointer: &str) -> Value {
    json!({"errors": [{"id": id, "title": title, "detail": detail, "source": {"pointer": pointer}}]})
}

/// An error whose `source.parameter` names the offending query parameter.
pub fn parameter_error(id: &str, title: &str, detail: &str, parameter: &str) -> Value {
    json!({"errors": [{"id": id, "title": title, "detail": detail, "source": {"parameter": parameter}}]})
}

/// One 422 problem in a write body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub pointer: String,
    pub detail: String,
}

impl Invalid {
    pub fn new(pointer: &str, detail: impl Into<String>) -> Invalid {
        Invalid {
            pointer: pointer.to_owned(),
            detail: detail.into(),
        }
    }

    fn attribute(name: &str, detail: impl Into<String>) -> Invalid {
        Invalid::new(&format!("/data/attributes/{name}"), detail)
    }
}

/// Why a write body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteError {
    /// 400: the body is not JSON at all.
    Malformed(String),
    /// 422: the document is JSON but breaks the rules.
    Invalid(Vec<Invalid>),
}

/// Renders the 422 document for `problems`.
pub fn validation_errors(problems: &[Invalid]) -> Value {
    let errors: Vec<Value> = problems
        .iter()
        .map(|problem| {
            json!({
                "id": "validationError",
                "title": "Validation Error",
                "detail": problem.detail,
                "source": {"pointer": problem.pointer},
            })
        })
        .collect();
    json!({ "errors": errors })
}

/// Parses a `POST /users` body into a user to create (id 0, timestamps left to the caller).
pub fn parse_create(body: &[u8]) -> Result<SimUser, WriteError> {
    let data = parse_data(body)?;
    let mut problems = check_type(&data);
    if data.contains_key("id") {
        problems.push(Invalid::new("/data/id", "Ids are assigned by the server."));
    }
    let attributes = attributes_of(&data, &mut problems);
    let mut user = SimUser::new(0, "");
    match attributes.get("email") {
        Some(Value::String(email)) => user.email = email.clone(),
        Some(_) => problems.push(Invalid::attribute("email", "Email must be a string.")),
        None => problems.push(Invalid::attribute("email", "Email can't be blank")),
    }
    let changes = parse_changes(&attributes, &mut problems);
    if !problems.is_empty() {
        return Err(WriteError::Invalid(problems));
    }
    let UserChanges {
        username,
        first_name,
        last_name,
        title,
        locked,
        custom,
    } = changes;
    user.username = username.flatten();
    user.first_name = first_name.flatten();
    user.last_name = last_name.flatten();
    user.title = title.flatten();
    user.locked = locked.unwrap_or(false);
    user.custom = custom.map(Option::flatten);
    Ok(user)
}

/// Parses a `PATCH /users/{id}` body for the user `url_id`.
pub fn parse_update(body: &[u8], url_id: i64) -> Result<UserChanges, WriteError> {
    let data = parse_data(body)?;
    let mut problems = check_type(&data);
    match data.get("id") {
        None => problems.push(Invalid::new("/data/id", "Id is required.")),
        Some(id) if id.as_i64() == Some(url_id) && id.is_i64() => {}
        Some(Value::Number(id)) if id.is_i64() => problems.push(Invalid::new(
            "/data/id",
            format!("Id {id} does not match the id in the URL ({url_id})."),
        )),
        Some(_) => problems.push(Invalid::new("/data/id", "Id must be an integer.")),
    }
    let attributes = attributes_of(&data, &mut problems);
    if attributes.contains_key("email") {
        problems.push(Invalid::attribute(
            "email",
            "Email cannot be updated via the API.",
        ));
    }
    let changes = parse_changes(&attributes, &mut problems);
    if problems.is_empty() {
        Ok(changes)
    } else {
        Err(WriteError::Invalid(problems))
    }
}

pub fn parse_data(body: &[u8]) -> Result<Map<String, Value>, WriteError> {
    let document: Value = serde_json::from_slice(body).map_err(|error| {
        WriteError::Malformed(format!("The request body is not valid JSON: {error}."))
    })?;
    match document.get("data") {
        Some(Value::Object(data)) => Ok(data.clone()),
        _ => Err(WriteError::Invalid(vec![Invalid::new(
            "/data",
            "The document must contain a 'data' resource object.",
        )])),
    }
}

fn check_type(data: &Map<String, Value>) -> Vec<Invalid> {
    match data.get("type") {
        Some(Value::String(kind)) if kind == "user" => Vec::new(),
        Some(other) => vec![Invalid::new(
            "/data/type",
            format!("Type must be 'user', not {other}."),
        )],
        None => vec![Invalid::new("/data/type", "Type is required.")],
    }
}

fn attributes_of(data: &Map<String, Value>, problems: &mut Vec<Invalid>) -> Map<String, Value> {
    match data.get("attributes") {
        None => Map::new(),
        Some(Value::Object(attributes)) => attributes.clone(),
        Some(_) => {
            problems.push(Invalid::new(
                "/data/attributes",
                "Attributes must be an object.",
            ));
            Map::new()
        }
    }
}

/// Checks every writable attribute except `email`, collecting problems.
fn parse_changes(attributes: &Map<String, Value>, problems: &mut Vec<Invalid>) -> UserChanges {
    let mut changes = UserChanges::default();
    for (name, value) in attributes {
        let mut text = |max: usize| match value {
            Value::Null => Some(None),
            Value::String(text) if text.chars().count() <= max => Some(Some(text.clone())),
            Value::String(_) => {
                problems.push(Invalid::attribute(
                    name,
                    format!("{name} is too long (maximum is {max} characters)"),
                ));
                None
            }
            _ => {
                problems.push(Invalid::attribute(
                    name,
                    format!("{name} must be a string or null."),
                ));
                None
            }
        };
        match name.as_str() {
            "email" => {}
            "username" => changes.username = text(MAX_TEXT),
            "firstName" => changes.first_name = text(MAX_TEXT),
            "lastName" => changes.last_name = text(MAX_TEXT),
            "title" => changes.title = text(MAX_TEXT),
            "locked" => match value {
                Value::Bool(locked) => changes.locked = Some(*locked),
                _ => problems.push(Invalid::attribute(name, "locked must be true or false.")),
            },
            custom if custom_index(custom).is_some() => {
                let index = custom_index(custom).unwrap_or_default();
                changes.custom[index] = text(MAX_CUSTOM);
            }
            read_only if READ_ONLY.contains(&read_only) => problems.push(Invalid::attribute(
                name,
                format!("The attribute '{name}' is read-only."),
            )),
            _ => problems.push(Invalid::attribute(
                name,
                format!("Unknown attribute '{name}'."),
            )),
        }
    }
    changes
}

/// `custom3` → `Some(2)`.
fn custom_index(name: &str) -> Option<usize> {
    match name.strip_prefix("custom")? {
        digit @ ("1" | "2" | "3" | "4" | "5") => digit.parse::<usize>().ok().map(|n| n - 1),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const API: &str = "http://sim/api/v2";

    fn pointers(error: WriteError) -> Vec<String> {
        match error {
            WriteError::Invalid(problems) => problems.into_iter().map(|p| p.pointer).collect(),
            WriteError::Malformed(detail) => panic!("unexpected malformed: {detail}"),
        }
    }

    #[test]
    fn renders_a_user_resource_with_integer_id_and_camel_case_attributes() {
        let mut user = SimUser::new(42, "jane@acme.test");
        user.first_name = Some("Jane".into());
        user.last_name = Some("Doe".into());
        user.custom[4] = Some("five".into());
        let resource = user_resource(&user, API, None);
        assert_eq!(resource["type"], "user");
        assert_eq!(resource["id"], 42);
        assert_eq!(resource["attributes"]["firstName"], "Jane");
        assert_eq!(resource["attributes"]["name"], "Jane Doe");
        assert_eq!(resource["attributes"]["custom5"], "five");
        assert_eq!(resource["attributes"]["username"], Value::Null);
        assert_eq!(resource["links"]["self"], "http://sim/api/v2/users/42");
        assert!(resource["relationships"]["mailboxes"]["links"]["related"].is_string());
        let created = resource["attributes"]["createdAt"].as_str().unwrap();
        assert!(created.ends_with('Z') && created.len() == 24, "{created}");
    }

    #[test]
    fn sparse_fieldsets_keep_only_named_members() {
        let user = SimUser::new(1, "a@x.test");
        let fields = vec!["email".to_owned(), "locked".to_owned()];
        let resource = user_resource(&user, API, Some(&fields));
        let names: Vec<&String> = resource["attributes"].as_object().unwrap().keys().collect();
        assert_eq!(names, ["email", "locked"]);
        assert!(resource.get("relationships").is_none());
        assert_eq!(resource["id"], 1);
    }

    #[test]
    fn create_reads_the_writable_attributes() {
        let body = br#"{"data":{"type":"user","attributes":{"email":"n@x.test","firstName":"N","locked":true,"custom2":"c"},
            "relationships":{"profile":{"data":{"type":"profile","id":3}}}}}"#;
        let user = parse_create(body).unwrap();
        assert_eq!(user.email, "n@x.test");
        assert_eq!(user.first_name.as_deref(), Some("N"));
        assert!(user.locked);
        assert_eq!(user.custom[1].as_deref(), Some("c"));
    }

    #[test]
    fn create_requires_email_and_type_user() {
        assert_eq!(
            pointers(parse_create(br#"{"data":{"type":"user","attributes":{}}}"#).unwrap_err()),
            ["/data/attributes/email"]
        );
        assert_eq!(
            pointers(
                parse_create(br#"{"data":{"type":"prospect","attributes":{"email":"a@x.test"}}}"#)
                    .unwrap_err()
            ),
            ["/data/type"]
        );
        assert_eq!(
            pointers(parse_create(br#"{"meta":{}}"#).unwrap_err()),
            ["/data"]
        );
    }

    #[test]
    fn create_refuses_client_ids_read_only_and_unknown_attributes() {
        let body = br#"{"data":{"type":"user","id":9,"attributes":{"email":"a@x.test","name":"X","createdAt":"2020-01-01T00:00:00Z","salary":1}}}"#;
        let mut found = pointers(parse_create(body).unwrap_err());
        found.sort();
        assert_eq!(
            found,
            [
                "/data/attributes/createdAt",
                "/data/attributes/name",
                "/data/attributes/salary",
                "/data/id"
            ]
        );
    }

    #[test]
    fn attribute_types_and_lengths_are_checked() {
        let long = "x".repeat(226);
        let body = format!(
            r#"{{"data":{{"type":"user","id":1,"attributes":{{"locked":"yes","title":5,"custom1":"{long}"}}}}}}"#
        );
        let mut found = pointers(parse_update(body.as_bytes(), 1).unwrap_err());
        found.sort();
        assert_eq!(
            found,
            [
                "/data/attributes/custom1",
                "/data/attributes/locked",
                "/data/attributes/title"
            ]
        );
    }

    #[test]
    fn update_reads_set_and_cleared_attributes() {
        let body = br#"{"data":{"type":"user","id":4,"attributes":{"locked":true,"title":null,"custom1":"v"}}}"#;
        let changes = parse_update(body, 4).unwrap();
        assert_eq!(changes.locked, Some(true));
        assert_eq!(changes.title, Some(None));
        assert_eq!(changes.custom[0], Some(Some("v".into())));
        assert_eq!(changes.first_name, None);
    }

    #[test]
    fn update_refuses_email_even_unchanged() {
        let body = br#"{"data":{"type":"user","id":4,"attributes":{"email":"same@x.test"}}}"#;
        assert_eq!(
            pointers(parse_update(body, 4).unwrap_err()),
            ["/data/attributes/email"]
        );
    }

    #[test]
    fn update_id_must_be_the_urls_integer() {
        let missing = br#"{"data":{"type":"user","attributes":{}}}"#;
        let other = br#"{"data":{"type":"user","id":5,"attributes":{}}}"#;
        let string = br#"{"data":{"type":"user","id":"4","attributes":{}}}"#;
        for body in [&missing[..], &other[..], &string[..]] {
            assert_eq!(pointers(parse_update(body, 4).unwrap_err()), ["/data/id"]);
        }
    }

    #[test]
    fn malformed_json_is_not_a_validation_error() {
        assert!(matches!(
            parse_create(b"{not json"),
            Err(WriteError::Malformed(_))
        ));
        assert!(matches!(
            parse_update(b"", 1),
            Err(WriteError::Malformed(_))
        ));
    }

    #[test]
    fn validation_errors_carry_id_title_and_pointer() {
        let document =
            validation_errors(&[Invalid::attribute("email", "Email has already been taken")]);
        assert_eq!(
            document,
            json!({"errors":[{"id":"validationError","title":"Validation Error",
                "detail":"Email has already been taken","source":{"pointer":"/data/attributes/email"}}]})
        );
    }
}

//! Bayeux messages as Salesforce sends them, and what its error strings mean.
//!
//! Every Streaming API response body is a JSON array of messages (docs/salesforce.md,
//! "CometD: messages, replay, timeouts, errors"). [`parse_messages`] is the only door from the
//! network into the client: it is pure, takes bytes, and for any input returns either the messages
//! or a [`CometdParseError`] saying which message and which field is wrong — never a panic, so it
//! doubles as the fuzz entry point. Only the shape Bayeux itself promises is checked here
//! (`channel` is a string, the typed fields have their types); what a data message carries is
//! [`payload`](super::payload)'s business.
//!
//! Salesforce reports failures as strings of the form `code:args:text` in `error`, and on a refused
//! handshake also in `ext.sfdc.failureReason` (docs/salesforce.md,
//! "CometD: messages, replay, timeouts, errors": both must be read). [`Message::refusal`] turns
//! them into a [`Refusal`]: the one place that decides which failure means "new token",
//! "handshake again", "the replay id is gone" or "stop". Choices where Salesforce is silent:
//!
//! - A single object instead of an array is accepted as one message (Bayeux allows both).
//! - `402::Unknown client` (older documentation) reads as `403::Unknown client`, and so does
//!   any unsuccessful reply whose advice is `reconnect: handshake`.
//! - `400::The replayId for channel … wasn't found using the provided replay ID map …` is *not*
//!   a rejected replay id: it means the client sent a map without its channel (docs/salesforce.md,
//!   "Failures seen in other clients": empty replay map after re-authentication), so it is a
//!   plain failure, never papered over by a replay policy.

use serde_json::{Map, Value};

/// One Bayeux message. Fields the client does not read are dropped; `ext` and `data` are kept
/// as JSON.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Message {
    pub channel: String,
    pub id: Option<String>,
    pub client_id: Option<String>,
    pub successful: Option<bool>,
    pub error: Option<String>,
    pub advice: Option<Advice>,
    /// `subscription`, a string or an array of strings on the wire.
    pub subscription: Vec<String>,
    pub supported_connection_types: Vec<String>,
    pub ext: Option<Map<String, Value>>,
    pub data: Option<Value>,
}

/// What the server advises the client to do next.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Advice {
    pub reconnect: Option<Reconnect>,
    /// Milliseconds to wait before the next connect.
    pub interval: Option<i64>,
    /// Milliseconds the server holds a connect open.
    pub timeout: Option<i64>,
}

/// `advice.reconnect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconnect {
    Retry,
    Handshake,
    None,
    Other(String),
}

impl Reconnect {
    fn parse(raw: &str) -> Self {
        match raw {
            "retry" => Reconnect::Retry,
            "handshake" => Reconnect::Handshake,
            "none" => Reconnect::None,
            other => Reconnect::Other(other.to_owned()),
        }
    }
}

/// Why a response body is not a list of Bayeux messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CometdParseError {
    #[error("the body is not JSON (line {line}, column {column}): {detail}")]
    Json {
        line: usize,
        column: usize,
        detail: String,
    },
    #[error("the body is a JSON {found}, expected an array of messages")]
    NotAnArray { found: &'static str },
    #[error("message {index} is a JSON {found}, expected an object")]
    NotAnObject { index: usize, found: &'static str },
    #[error("message {index} has no channel")]
    MissingChannel { index: usize },
    #[error("message {index}: {field} is a JSON {found}, expected {expected}")]
    FieldType {
        index: usize,
        field: &'static str,
        expected: &'static str,
        found: &'static str,
    },
}

/// Parses one response body.
pub fn parse_messages(body: &[u8]) -> Result<Vec<Message>, CometdParseError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| CometdParseError::Json {
        line: e.line(),
        column: e.column(),
        detail: e.to_string(),
    })?;
    match value {
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(index, item)| message(index, item))
            .collect(),
        object @ Value::Object(_) => Ok(vec![message(0, object)?]),
        other => Err(CometdParseError::NotAnArray {
            found: kind(&other),
        }),
    }
}

fn message(index: usize, value: Value) -> Result<Message, CometdParseError> {
    let Value::Object(mut fields) = value else {
        return Err(CometdParseError::NotAnObject {
            index,
            found: kind(&value),
        });
    };
    let wrong =
        |field: &'static str, expected: &'static str, found: &Value| CometdParseError::FieldType {
            index,
            field,
            expected,
            found: kind(found),
        };
    let channel = take_string(&mut fields, index, "channel")?
        .ok_or(CometdParseError::MissingChannel { index })?;
    let id = match fields.remove("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        // Some servers number messages; the id is only echoed, so keep its text.
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(other) => return Err(wrong("id", "a string", &other)),
    };
    let client_id = take_string(&mut fields, index, "clientId")?;
    let error = take_string(&mut fields, index, "error")?;
    let successful = match fields.remove("successful") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(b),
        Some(other) => return Err(wrong("successful", "a boolean", &other)),
    };
    let strings = |field: &'static str, value: Option<Value>| match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s]),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::String(s) => Ok(s),
                other => Err(wrong(field, "an array of strings", &other)),
            })
            .collect(),
        Some(other) => Err(wrong(field, "a string or an array of strings", &other)),
    };
    let subscription = strings("subscription", fields.remove("subscription"))?;
    let supported_connection_types = strings(
        "supportedConnectionTypes",
        fields.remove("supportedConnectionTypes"),
    )?;
    let advice = match fields.remove("advice") {
        None | Some(Value::Null) => None,
        Some(Value::Object(advice)) => Some(parse_advice(index, &advice)?),
        Some(other) => return Err(wrong("advice", "an object", &other)),
    };
    let ext = match fields.remove("ext") {
        None | Some(Value::Null) => None,
        Some(Value::Object(ext)) => Some(ext),
        Some(other) => return Err(wrong("ext", "an object", &other)),
    };
    let data = fields.remove("data").filter(|d| !d.is_null());
    Ok(Message {
        channel,
        id,
        client_id,
        successful,
        error,
        advice,
        subscription,
        supported_connection_types,
        ext,
        data,
    })
}

fn take_string(
    fields: &mut Map<String, Value>,
    index: usize,
    field: &'static str,
) -> Result<Option<String>, CometdParseError> {
    match fields.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(CometdParseError::FieldType {
            index,
            field,
            expected: "a string",
            found: kind(&other),
        }),
    }
}

fn parse_advice(index: usize, advice: &Map<String, Value>) -> Result<Advice, CometdParseError> {
    let wrong =
        |field: &'static str, expected: &'static str, found: &Value| CometdParseError::FieldType {
            index,
            field,
            expected,
            found: kind(found),
        };
    let reconnect = match advice.get("reconnect") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(Reconnect::parse(s)),
        Some(other) => return Err(wrong("advice.reconnect", "a string", other)),
    };
    let millis = |field: &'static str, name: &str| match advice.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            // A fractional or huge number of milliseconds: keep what makes sense.
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| wrong(field, "a number", &Value::Number(n.clone()))),
        Some(other) => Err(wrong(field, "a number", other)),
    };
    Ok(Advice {
        reconnect,
        interval: millis("advice.interval", "interval")?,
        timeout: millis("advice.timeout", "timeout")?,
    })
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// What an unsuccessful reply asks of the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The token was revoked or has expired (`401::Authentication invalid`, also as the
    /// handshake's `failureReason`): get a new token, handshake and resubscribe.
    AuthenticationInvalid { error: String },
    /// The server forgot the client (`403::Unknown client`, advice `handshake`): handshake and
    /// resubscribe from the stored replay ids.
    UnknownClient { error: String },
    /// The replay id the subscribe sent is outside retention or invalid.
    ReplayRejected {
        replay_id: Option<i64>,
        error: String,
    },
    /// A limit (`403::Organization total events daily limit exceeded`, the concurrent-client
    /// limit, `503::Server is too busy`): back off and try again later.
    Throttled { error: String },
    /// Any other `403`: a missing permission. Retrying the same way will not help.
    Denied { error: String },
    /// Anything else that was not successful.
    Failed { error: String },
}

impl Refusal {
    /// The error text as Salesforce sent it.
    pub fn error(&self) -> &str {
        match self {
            Refusal::AuthenticationInvalid { error }
            | Refusal::UnknownClient { error }
            | Refusal::ReplayRejected { error, .. }
            | Refusal::Throttled { error }
            | Refusal::Denied { error }
            | Refusal::Failed { error } => error,
        }
    }
}

/// A Salesforce error string split into its parts: `401::Authentication invalid` is code
/// 401, no arguments, text `Authentication invalid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorString<'a> {
    pub code: Option<u16>,
    pub args: &'a str,
    pub text: &'a str,
}

impl<'a> ErrorString<'a> {
    pub fn parse(raw: &'a str) -> Self {
        let mut parts = raw.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(code), Some(args), Some(text)) if code.trim().parse::<u16>().is_ok() => {
                ErrorString {
                    code: code.trim().parse().ok(),
                    args,
                    text,
                }
            }
            _ => ErrorString {
                code: None,
                args: "",
                text: raw,
            },
        }
    }
}

impl Message {
    /// Whether this is a reply on a `/meta/` channel (not a data message).
    pub fn is_meta(&self) -> bool {
        self.channel.starts_with("/meta/")
    }

    /// `ext.sfdc.failureReason`, where a refused handshake puts the real cause.
    pub fn failure_reason(&self) -> Option<&str> {
        self.ext
            .as_ref()?
            .get("sfdc")?
            .get("failureReason")?
            .as_str()
    }

    /// `None` for a successful reply; otherwise what the failure asks of the client.
    pub fn refusal(&self) -> Option<Refusal> {
        if self.successful == Some(true) {
            return None;
        }
        let error = self.error.clone().unwrap_or_default();
        let reason = self.failure_reason().map(ErrorString::parse);
        let parsed = ErrorString::parse(&error);
        if parsed.code == Some(401) || reason.as_ref().is_some_and(|r| r.code == Some(401)) {
            let shown = match self.failure_reason() {
                Some(reason) if parsed.code != Some(401) => format!("{error} ({reason})"),
                _ => error,
            };
            return Some(Refusal::AuthenticationInvalid { error: shown });
        }
        let text = parsed.text.to_ascii_lowercase();
        if text.contains("unknown client")
            || self
                .advice
                .as_ref()
                .is_some_and(|a| a.reconnect == Some(Reconnect::Handshake))
        {
            return Some(Refusal::UnknownClient { error });
        }
        if parsed.code == Some(400) && text.contains("replayid") && text.contains("was invalid") {
            return Some(Refusal::ReplayRejected {
                replay_id: braced_number(parsed.text),
                error,
            });
        }
        if text.contains("limit exceeded") || parsed.code == Some(503) {
            return Some(Refusal::Throttled { error });
        }
        if parsed.code == Some(403) {
            return Some(Refusal::Denied { error });
        }
        Some(Refusal::Failed {
            error: if error.is_empty() {
                format!("{} was not successful and gave no error", self.channel)
            } else {
                error
            },
        })
    }
}

/// The first `{N}` in `text`, as Salesforce quotes the refused replay id.
fn braced_number(text: &str) -> Option<i64> {
    let start = text.find('{')?;
    let rest = &text[start + 1..];
    let end = rest.find('}')?;
    rest[..end].trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(body: Value) -> Message {
        let mut all = parse_messages(body.to_string().as_bytes()).unwrap();
        assert_eq!(all.len(), 1);
        all.remove(0)
    }

    #[test]
    fn a_handshake_reply_is_read_whole() {
        let m = one(json!([{
            "channel": "/meta/handshake",
            "clientId": "2z1nq8z5ze4qv1l6b0",
            "successful": true,
            "version": "1.0",
            "supportedConnectionTypes": ["long-polling"],
            "advice": {"reconnect": "retry", "interval": 0, "timeout": 110000},
            "ext": {"replay": true, "payload.format": true}
        }]));
        assert_eq!(m.channel, "/meta/handshake");
        assert_eq!(m.client_id.as_deref(), Some("2z1nq8z5ze4qv1l6b0"));
        assert_eq!(m.successful, Some(true));
        assert_eq!(m.supported_connection_types, ["long-polling"]);
        assert_eq!(
            m.advice,
            Some(Advice {
                reconnect: Some(Reconnect::Retry),
                interval: Some(0),
                timeout: Some(110_000)
            })
        );
        assert_eq!(m.ext.as_ref().unwrap()["replay"], true);
        assert!(m.refusal().is_none());
    }

    #[test]
    fn a_connect_response_holds_data_messages_beside_the_reply() {
        let body = json!([
            {"channel": "/data/UserChangeEvent", "data": {"schema": "s", "payload": {}, "event": {"replayId": 7}}},
            {"channel": "/meta/connect", "clientId": "c", "successful": true, "id": 4}
        ]);
        let all = parse_messages(body.to_string().as_bytes()).unwrap();
        assert_eq!(all.len(), 2);
        assert!(!all[0].is_meta());
        assert_eq!(all[0].data.as_ref().unwrap()["event"]["replayId"], 7);
        assert!(all[1].is_meta());
        assert_eq!(
            all[1].id.as_deref(),
            Some("4"),
            "numeric ids are kept as text"
        );
        let single = one(json!({"channel": "/meta/disconnect", "successful": true}));
        assert_eq!(single.channel, "/meta/disconnect");
    }

    #[test]
    fn garbage_is_an_error_naming_what_is_wrong() {
        let err = |body: &[u8]| parse_messages(body).unwrap_err();
        assert!(matches!(err(b""), CometdParseError::Json { .. }));
        assert!(matches!(
            err(b"<html>502 Bad Gateway</html>"),
            CometdParseError::Json { line: 1, .. }
        ));
        assert!(matches!(
            err(&[0xff, 0xfe, 0x00]),
            CometdParseError::Json { .. }
        ));
        assert_eq!(err(b"42"), CometdParseError::NotAnArray { found: "number" });
        assert_eq!(
            err(br#"[{"channel":"/meta/connect"}, "x"]"#),
            CometdParseError::NotAnObject {
                index: 1,
                found: "string"
            }
        );
        assert_eq!(
            err(br#"[{"clientId":"c"}]"#),
            CometdParseError::MissingChannel { index: 0 }
        );
        assert_eq!(
            err(br#"[{"channel": 5}]"#).to_string(),
            "message 0: channel is a JSON number, expected a string"
        );
        assert_eq!(
            err(br#"[{"channel":"/meta/connect","successful":"yes"}]"#),
            CometdParseError::FieldType {
                index: 0,
                field: "successful",
                expected: "a boolean",
                found: "string"
            }
        );
        assert!(matches!(
            err(br#"[{"channel":"/meta/connect","advice":{"timeout":"soon"}}]"#),
            CometdParseError::FieldType {
                field: "advice.timeout",
                ..
            }
        ));
        assert!(matches!(
            err(br#"[{"channel":"/meta/subscribe","subscription":[1]}]"#),
            CometdParseError::FieldType {
                field: "subscription",
                ..
            }
        ));
        assert!(matches!(
            err(br#"[{"channel":"/x","ext":[]}]"#),
            CometdParseError::FieldType { field: "ext", .. }
        ));
        // Deeply nested or truncated input is refused, not a stack overflow or a panic.
        let deep = "[".repeat(10_000);
        assert!(matches!(
            err(deep.as_bytes()),
            CometdParseError::Json { .. }
        ));
        assert!(parse_messages(b"[]").unwrap().is_empty());
    }

    #[test]
    fn every_prefix_of_a_real_body_parses_or_fails_cleanly() {
        let body = json!([
            {"channel": "/data/UserChangeEvent", "data": {"schema": "s", "payload": {"ChangeEventHeader": {}}, "event": {"replayId": 7}}},
            {"channel": "/meta/connect", "clientId": "c", "successful": false, "error": "403::Unknown client", "advice": {"reconnect": "handshake"}}
        ])
        .to_string();
        for end in 0..body.len() {
            let _ = parse_messages(&body.as_bytes()[..end]);
        }
        assert_eq!(parse_messages(body.as_bytes()).unwrap().len(), 2);
    }

    fn refusal(reply: Value) -> Refusal {
        one(reply).refusal().expect("a refusal")
    }

    #[test]
    fn salesforce_errors_map_to_what_the_client_must_do() {
        assert_eq!(
            refusal(json!({"channel": "/meta/connect", "successful": false,
                "error": "401::Authentication invalid", "advice": {"reconnect": "none"}})),
            Refusal::AuthenticationInvalid {
                error: "401::Authentication invalid".into()
            }
        );
        // A refused handshake says 403 and hides the 401 in ext.sfdc.failureReason
        // (docs/salesforce.md, "CometD: messages, replay, timeouts, errors").
        let denied = refusal(json!({"channel": "/meta/handshake", "successful": false,
            "error": "403::Handshake denied",
            "ext": {"sfdc": {"failureReason": "401::Authentication invalid"}}}));
        assert_eq!(
            denied,
            Refusal::AuthenticationInvalid {
                error: "403::Handshake denied (401::Authentication invalid)".into()
            }
        );
        for error in ["403::Unknown client", "402::Unknown client"] {
            assert!(matches!(
                refusal(
                    json!({"channel": "/meta/connect", "successful": false, "error": error,
                    "advice": {"reconnect": "handshake"}})
                ),
                Refusal::UnknownClient { .. }
            ));
        }
        assert!(matches!(
            refusal(json!({"channel": "/meta/connect", "successful": false,
                "advice": {"reconnect": "handshake"}})),
            Refusal::UnknownClient { .. }
        ));
        // The stored id is outside retention (docs/salesforce.md,
        // "Failures seen in other clients": invalid replay id, silently).
        assert_eq!(
            refusal(json!({"channel": "/meta/subscribe", "successful": false,
                "error": "400::The replayId {18098301} you provided was invalid.  Please provide a valid ID, -2 to replay all events, or -1 to replay only new events."})),
            Refusal::ReplayRejected {
                replay_id: Some(18_098_301),
                error: "400::The replayId {18098301} you provided was invalid.  Please provide a valid ID, -2 to replay all events, or -1 to replay only new events.".into()
            }
        );
        // The map lacked the channel: our bug, not a retention problem (docs/salesforce.md,
        // "Failures seen in other clients": empty replay map after re-authentication).
        assert!(matches!(
            refusal(json!({"channel": "/meta/subscribe", "successful": false,
                "error": "400::The replayId for channel {/data/UserChangeEvent} wasn't found using the provided replay ID map {{}}"})),
            Refusal::Failed { .. }
        ));
        for limit in [
            "403::Organization total events daily limit exceeded",
            "403::Organization concurrent user limit exceeded",
            "503::Server is too busy",
        ] {
            assert!(matches!(
                refusal(json!({"channel": "/meta/subscribe", "successful": false, "error": limit})),
                Refusal::Throttled { .. }
            ));
        }
        assert!(matches!(
            refusal(json!({"channel": "/meta/subscribe", "successful": false,
                "error": "403::Insufficient privileges"})),
            Refusal::Denied { .. }
        ));
        assert_eq!(
            refusal(json!({"channel": "/meta/subscribe", "successful": false})).error(),
            "/meta/subscribe was not successful and gave no error"
        );
    }

    #[test]
    fn error_strings_split_into_code_args_and_text() {
        assert_eq!(
            ErrorString::parse("400:ws,foo:Invalid connection type: ws"),
            ErrorString {
                code: Some(400),
                args: "ws,foo",
                text: "Invalid connection type: ws"
            }
        );
        assert_eq!(ErrorString::parse("oops").code, None);
        assert_eq!(ErrorString::parse("oops").text, "oops");
    }
}

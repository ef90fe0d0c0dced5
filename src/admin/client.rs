//! The CLI verbs that talk to a running usersync's admin API: `usersync status`,
//! `usersync reconnect`, `usersync disconnect`, `usersync test-connection`, `usersync settings`,
//! `usersync mappings find`, `usersync tail`, `usersync resync`, `usersync replay`.
//!
//! They print the same states, reasons and advice the API and `docs/operations.md` use. A
//! refused request prints the API's own error message (which names what is wrong) and exits
//! non-zero.

use anyhow::Context;
use futures::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::connection::{Connection, LeaseRole, Side};
use crate::salesforce::replay_from::ReplayPlan;

/// The admin API's address when none is given.
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:8700";

/// A running usersync's admin API: its base URL and the admin token, when it has one.
pub struct AdminApi {
    url: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl AdminApi {
    pub fn new(url: &str, token: Option<String>) -> AdminApi {
        AdminApi {
            url: url.trim_end_matches('/').to_owned(),
            token: token.filter(|t| !t.is_empty()),
            http: reqwest::Client::new(),
        }
    }

    /// A request to `path` (under the base URL), carrying the token. A call that changes
    /// something says `Content-Type: application/json` even without a body: the admin server
    /// refuses it otherwise (docs/security.md, "Admin server").
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let changes = !method.is_safe();
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if changes {
            request = request.header(reqwest::header::CONTENT_TYPE, "application/json");
        }
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// `GET path` (under the base URL, with the query): the JSON answer, or an error saying
    /// `what` failed and why.
    pub async fn get(&self, path: &str, what: &str) -> anyhow::Result<Value> {
        self.send(self.request(reqwest::Method::GET, path), what)
            .await
    }

    /// Sends it; the JSON answer, or the API's own error message naming what is wrong.
    async fn send(&self, request: reqwest::RequestBuilder, what: &str) -> anyhow::Result<Value> {
        let response = request
            .send()
            .await
            .with_context(|| format!("reaching the admin API at {}", self.url))?;
        answer(response, what).await
    }
}

async fn answer(response: reqwest::Response, what: &str) -> anyhow::Result<Value> {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let message = body["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| body.to_string());
        anyhow::bail!("{what}: the admin API answered {status}: {message}");
    }
    Ok(body)
}

/// One connection as lines for a person: the summary, then the advice when there is some.
pub fn describe(connection: &Connection) -> String {
    let mut text = format!(
        "{} (since {})",
        connection.summary(),
        connection.since.format("%Y-%m-%d %H:%M:%S UTC")
    );
    if let Some(advice) = &connection.advice {
        text.push_str(&format!("\n  what to do: {advice}"));
    }
    if let Some(lease) = &connection.subscriber {
        text.push_str(&format!("\n  subscriber {}: ", lease.instance));
        text.push_str(&match (lease.role, &lease.holder, lease.epoch) {
            (LeaseRole::Active, _, Some(epoch)) => format!("active (lease epoch {epoch})"),
            (LeaseRole::Standby, Some(holder), _) => {
                format!("standby ({holder} holds the lease and streams)")
            }
            (LeaseRole::Unleased, _, _) => "active (no lease: the store is not shared)".into(),
            (role, _, _) => role.as_str().to_owned(),
        });
    }
    text
}

fn connection_of(value: &Value) -> anyhow::Result<Connection> {
    serde_json::from_value(value.clone()).context("reading a connection from the admin API")
}

/// `usersync status`: both connections.
pub async fn status(admin: &AdminApi) -> anyhow::Result<()> {
    let body = admin
        .send(
            admin.request(reqwest::Method::GET, "/api/v1/status"),
            "reading the status",
        )
        .await?;
    for side in Side::ALL {
        println!(
            "{}",
            describe(&connection_of(&body["connections"][side.as_str()])?)
        );
    }
    Ok(())
}

/// `usersync reconnect <side>`: with `authorization` (a JSON object) when new credentials
/// are given.
pub async fn reconnect(
    admin: &AdminApi,
    side: Side,
    authorization: Option<Value>,
) -> anyhow::Result<()> {
    let mut request = admin.request(
        reqwest::Method::POST,
        &format!("/api/v1/connections/{side}/reconnect"),
    );
    if let Some(body) = authorization {
        request = request.json(&body);
    }
    let body = admin.send(request, &format!("reconnecting {side}")).await?;
    println!("{}", describe(&connection_of(&body["connection"])?));
    if let Some(key) = body["stored_with_key"].as_str() {
        println!("  new authorization stored, sealed with key {key}");
    }
    println!("  follow it with: usersync tail");
    Ok(())
}

/// `usersync test-connection <side>`: every step; an error when one failed.
pub async fn test_connection(admin: &AdminApi, side: Side) -> anyhow::Result<()> {
    let request = admin.request(
        reqwest::Method::POST,
        &format!("/api/v1/connections/{side}/test"),
    );
    let body = admin.send(request, &format!("testing {side}")).await?;
    let checklist: crate::connection::checklist::Checklist =
        serde_json::from_value(body["checklist"].clone()).context("reading the checklist")?;
    for line in checklist.lines() {
        println!("{line}");
    }
    if !checklist.passed {
        anyhow::bail!("the {side} connection test failed");
    }
    println!("{side}: every check passed");
    Ok(())
}

/// `usersync disconnect <side>`.
pub async fn disconnect(admin: &AdminApi, side: Side) -> anyhow::Result<()> {
    let request = admin.request(
        reqwest::Method::POST,
        &format!("/api/v1/connections/{side}/disconnect"),
    );
    let body = admin
        .send(request, &format!("disconnecting {side}"))
        .await?;
    println!("{}", describe(&connection_of(&body["connection"])?));
    Ok(())
}

/// One feed message as a line for a person.
pub fn feed_line(message: &Value) -> String {
    match message["type"].as_str() {
        Some("decision") => {
            let d = &message["decision"];
            format!(
                "{} {:<8} {} — {}{}",
                d["at"].as_str().unwrap_or(""),
                d["action"].as_str().unwrap_or("?"),
                d["email"].as_str().unwrap_or("(no email)"),
                d["message"].as_str().unwrap_or(""),
                by(&d["actor"])
            )
        }
        Some("connection") => match connection_of(&message["connection"]) {
            Ok(connection) => format!("connection {}", describe(&connection)),
            Err(_) => message.to_string(),
        },
        Some("admin_action") => {
            let a = &message["admin_action"];
            let from = match a["detail"]["from"].as_str() {
                Some(from) => format!(" from {from}"),
                None => String::new(),
            };
            let side = match a["detail"]["side"].as_str() {
                Some(side) => format!(" {side}"),
                None => String::new(),
            };
            format!(
                "{} admin    {}{side}{from}{} (admin action {})",
                a["at"].as_str().unwrap_or(""),
                a["action"].as_str().unwrap_or("?"),
                by(&a["actor"]),
                a["sequence"]
            )
        }
        _ => message.to_string(),
    }
}

/// ` by <name>` when a feed message names who acted; nothing for the processor's decisions
/// and for actions recorded before the actor was kept.
fn by(actor: &Value) -> String {
    match actor.as_str() {
        Some(name) => format!(" by {name}"),
        None => String::new(),
    }
}

/// `usersync tail`: follows the live feed until it closes; `json` prints messages as they come.
pub async fn tail(admin: &AdminApi, json: bool) -> anyhow::Result<()> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!(
        "{}/api/v1/feed",
        admin
            .url
            .replacen("http://", "ws://", 1)
            .replacen("https://", "wss://", 1)
    );
    let mut request = url
        .as_str()
        .into_client_request()
        .with_context(|| format!("{url} is not a WebSocket address"))?;
    if let Some(token) = &admin.token {
        let value = format!("Bearer {token}")
            .parse()
            .context("the admin token is not valid in an HTTP header")?;
        request.headers_mut().insert("authorization", value);
    }
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .with_context(|| format!("opening the live feed at {url}"))?;
    while let Some(message) = socket.next().await {
        match message.context("reading the live feed")? {
            Message::Text(text) => {
                if json {
                    println!("{text}");
                } else {
                    let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    println!("{}", feed_line(&value));
                }
            }
            Message::Close(frame) => {
                if let Some(frame) = frame {
                    anyhow::bail!(
                        "the feed was closed: {} ({})",
                        frame.reason,
                        u16::from(frame.code)
                    );
                }
                return Ok(());
            }
            _ => {}
        }
    }
    Ok(())
}

/// `usersync settings get`: the settings in force, as the API body (and `[sync]`) spells them.
pub async fn settings_get(admin: &AdminApi) -> anyhow::Result<()> {
    let request = admin.request(reqwest::Method::GET, "/api/v1/settings");
    let body = admin.send(request, "reading the settings").await?;
    println!("{}", serde_json::to_string_pretty(&body["settings"])?);
    Ok(())
}

/// `usersync settings set KEY=VALUE…`: reads the settings in force, changes the named ones,
/// saves the whole; a refused save names the rule and changes nothing.
pub async fn settings_set(admin: &AdminApi, changes: &[(String, Value)]) -> anyhow::Result<()> {
    let request = admin.request(reqwest::Method::GET, "/api/v1/settings");
    let mut settings = admin.send(request, "reading the settings").await?["settings"].take();
    for (key, value) in changes {
        let (section, name) = key.split_once('.').with_context(|| {
            format!("{key:?} is not section.name (user_mapping.inbound_create, email_field.dedupe)")
        })?;
        let slot = settings
            .get_mut(section)
            .and_then(|s| s.get_mut(name))
            .with_context(|| format!("{key} is not a setting"))?;
        *slot = value.clone();
    }
    let request = admin
        .request(reqwest::Method::PUT, "/api/v1/settings")
        .json(&settings);
    let body = admin.send(request, "saving the settings").await?;
    println!(
        "saved:\n{}",
        serde_json::to_string_pretty(&body["settings"])?
    );
    Ok(())
}

/// `usersync mappings find`: the mappings matching every filter given, one per line.
pub async fn mappings_find(admin: &AdminApi, filters: &[(&str, String)]) -> anyhow::Result<()> {
    let request = admin
        .request(reqwest::Method::GET, "/api/v1/mappings")
        .query(filters);
    let body = admin.send(request, "finding mappings").await?;
    let mappings = body["mappings"].as_array().cloned().unwrap_or_default();
    if mappings.is_empty() {
        println!("no mapping matches");
    }
    for mapping in mappings {
        println!(
            "Outreach user {} <> Salesforce user {}{}",
            mapping["outreach_user_id"],
            mapping["salesforce_user_id"].as_str().unwrap_or("?"),
            if mapping["locked_by_usersync"].as_bool() == Some(true) {
                " (locked by usersync)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// `usersync resync`: asks the subscriber to read every Salesforce user again.
pub async fn resync(admin: &AdminApi) -> anyhow::Result<()> {
    let request = admin.request(reqwest::Method::POST, "/api/v1/resync");
    admin.send(request, "asking for a resync").await?;
    println!(
        "resync requested: every Salesforce user is read again; follow it with: usersync tail"
    );
    Ok(())
}

/// `usersync replay --from …`: shows the plan the admin API answers, then asks `confirm`
/// (which asks on the terminal, or was answered by `--yes`) before asking for the replay.
/// Declining changes nothing and is an error, so a script sees it.
pub async fn replay(
    admin: &AdminApi,
    from: &str,
    confirm: impl FnOnce(&ReplayPlan) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let request = admin
        .request(reqwest::Method::POST, "/api/v1/replay")
        .json(&serde_json::json!({ "from": from }));
    let body = admin.send(request, "asking for the replay plan").await?;
    let plan: ReplayPlan =
        serde_json::from_value(body["plan"].clone()).context("reading the replay plan")?;
    for line in plan.lines() {
        println!("{line}");
    }
    if !confirm(&plan)? {
        anyhow::bail!(
            "the replay from {} was not confirmed: nothing changed",
            plan.from
        );
    }
    let request = admin
        .request(reqwest::Method::POST, "/api/v1/replay")
        .json(&serde_json::json!({ "from": from, "confirm": true }));
    let body = admin.send(request, "asking for the replay").await?;
    println!(
        "replay requested (admin action {}): the subscriber starts again from {}; follow it \
         with: usersync tail",
        body["admin_action"]["sequence"], plan.from
    );
    Ok(())
}

/// Asks on `output` whether to replay as `plan` says, and reads one line of `input`: only
/// `yes` goes on.
pub fn typed_yes(
    mut input: impl std::io::BufRead,
    mut output: impl std::io::Write,
    plan: &ReplayPlan,
) -> std::io::Result<bool> {
    write!(output, "Type yes to replay from {}: ", plan.from)?;
    output.flush()?;
    let mut line = String::new();
    input.read_line(&mut line)?;
    Ok(line.trim() == "yes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Transport;
    use crate::salesforce::replay::ReplayPolicy;
    use crate::salesforce::replay_from::{ReplayFrom, plan};

    #[test]
    fn only_yes_typed_goes_on() {
        let plan = plan(
            &ReplayFrom::Latest,
            Transport::Pubsub,
            None,
            ReplayPolicy::Resync,
            false,
            chrono::Utc::now(),
        );
        for (typed, goes_on) in [
            ("yes\n", true),
            ("  yes  \n", true),
            ("y\n", false),
            ("YES\n", false),
            ("no\n", false),
            ("", false),
        ] {
            let mut asked = Vec::new();
            let answer = typed_yes(typed.as_bytes(), &mut asked, &plan).unwrap();
            assert_eq!(answer, goes_on, "{typed:?}");
            assert_eq!(
                String::from_utf8(asked).unwrap(),
                "Type yes to replay from latest: "
            );
        }
    }

    #[test]
    fn an_admin_action_on_the_feed_is_one_line() {
        let message = serde_json::json!({
            "type": "admin_action",
            "admin_action": {
                "sequence": 3,
                "at": "2025-03-04T05:06:07Z",
                "action": "replay",
                "detail": {"from": "earliest", "checkpoint_before": null},
                "actor": "ops",
            },
        });
        assert_eq!(
            feed_line(&message),
            "2025-03-04T05:06:07Z admin    replay from earliest by ops (admin action 3)"
        );
        let older = serde_json::json!({
            "type": "admin_action",
            "admin_action": {
                "sequence": 1,
                "at": "2025-03-04T05:06:07Z",
                "action": "disconnect",
                "detail": {"side": "outreach"},
                "actor": null,
            },
        });
        assert_eq!(
            feed_line(&older),
            "2025-03-04T05:06:07Z admin    disconnect outreach (admin action 1)"
        );
    }

    #[test]
    fn a_decision_made_by_hand_on_the_feed_names_who_made_it() {
        let decision = |actor: Value| {
            serde_json::json!({
                "type": "decision",
                "decision": {
                    "at": "2025-03-04T05:06:07Z",
                    "action": "unlink",
                    "email": "ann@acme.example",
                    "message": "An admin unmapped Outreach user 7.",
                    "actor": actor,
                },
            })
        };
        assert_eq!(
            feed_line(&decision(Value::from("ops"))),
            "2025-03-04T05:06:07Z unlink   ann@acme.example — An admin unmapped Outreach user 7. \
             by ops"
        );
        assert_eq!(
            feed_line(&decision(Value::Null)),
            "2025-03-04T05:06:07Z unlink   ann@acme.example — An admin unmapped Outreach user 7."
        );
    }
}

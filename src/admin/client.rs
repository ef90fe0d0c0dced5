//! The CLI verbs that talk to a running usersync's admin API: `usersync status`,
//! `usersync reconnect`, `usersync disconnect`, `usersync tail`.
//!
//! They print the same states, reasons and advice the API and `docs/operations.md` use. A
//! refused request prints the API's own error message (which names what is wrong) and exits
//! non-zero.

use anyhow::Context;
use futures::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::connection::{Connection, Side};

/// The admin API's address when none is given.
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:8700";

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
    text
}

fn connection_of(value: &Value) -> anyhow::Result<Connection> {
    serde_json::from_value(value.clone()).context("reading a connection from the admin API")
}

/// `usersync status`: both connections.
pub async fn status(admin: &str) -> anyhow::Result<()> {
    let response = reqwest::get(format!("{admin}/api/v1/status"))
        .await
        .with_context(|| format!("reaching the admin API at {admin}"))?;
    let body = answer(response, "reading the status").await?;
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
    admin: &str,
    side: Side,
    authorization: Option<Value>,
) -> anyhow::Result<()> {
    let mut request =
        reqwest::Client::new().post(format!("{admin}/api/v1/connections/{side}/reconnect"));
    if let Some(body) = authorization {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("reaching the admin API at {admin}"))?;
    let body = answer(response, &format!("reconnecting {side}")).await?;
    println!("{}", describe(&connection_of(&body["connection"])?));
    if let Some(key) = body["stored_with_key"].as_str() {
        println!("  new authorization stored, sealed with key {key}");
    }
    println!("  follow it with: usersync tail");
    Ok(())
}

/// `usersync test-connection <side>`: every step; an error when one failed.
pub async fn test_connection(admin: &str, side: Side) -> anyhow::Result<()> {
    let response = reqwest::Client::new()
        .post(format!("{admin}/api/v1/connections/{side}/test"))
        .send()
        .await
        .with_context(|| format!("reaching the admin API at {admin}"))?;
    let body = answer(response, &format!("testing {side}")).await?;
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
pub async fn disconnect(admin: &str, side: Side) -> anyhow::Result<()> {
    let response = reqwest::Client::new()
        .post(format!("{admin}/api/v1/connections/{side}/disconnect"))
        .send()
        .await
        .with_context(|| format!("reaching the admin API at {admin}"))?;
    let body = answer(response, &format!("disconnecting {side}")).await?;
    println!("{}", describe(&connection_of(&body["connection"])?));
    Ok(())
}

/// One feed message as a line for a person.
pub fn feed_line(message: &Value) -> String {
    match message["type"].as_str() {
        Some("decision") => {
            let d = &message["decision"];
            format!(
                "{} {:<8} {} — {}",
                d["at"].as_str().unwrap_or(""),
                d["action"].as_str().unwrap_or("?"),
                d["email"].as_str().unwrap_or("(no email)"),
                d["message"].as_str().unwrap_or("")
            )
        }
        Some("connection") => match connection_of(&message["connection"]) {
            Ok(connection) => format!("connection {}", describe(&connection)),
            Err(_) => message.to_string(),
        },
        _ => message.to_string(),
    }
}

/// `usersync tail`: follows the live feed until it closes; `json` prints messages as they come.
pub async fn tail(admin: &str, json: bool) -> anyhow::Result<()> {
    let url = format!(
        "{}/api/v1/feed",
        admin
            .replacen("http://", "ws://", 1)
            .replacen("https://", "wss://", 1)
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(&url)
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

//! `GET /api/v1/feed`: the live feed — decisions and connection changes as they happen, one
//! JSON text message each, over WebSocket.
//!
//! Messages: `{"type": "decision", "decision": {…}}` (the decision record, as the decision log
//! shows it), `{"type": "connection", "connection": {…}}` (as `GET /api/v1/status` shows it) and
//! `{"type": "admin_action", "admin_action": {…}}` (a replay, resync, settings save, reconnect
//! or disconnect an admin asked for, as `GET /api/v1/admin-actions` lists it). A decision made
//! by hand and every admin action carry their `actor`, the name of the admin token that asked.
//! On connect the client first gets both connections' current state, so a page or `usersync
//! tail` starts from the truth rather than from the next change.
//!
//! The processor never waits for a watcher: it publishes into a bounded broadcast channel and
//! moves on. A client that falls more than [`FEED_BACKLOG`] messages behind has missed some,
//! so it is closed with code 1008 and the reason `too slow: N messages missed; reconnect and
//! read /api/v1/decisions for what was missed` — better a clear close than a feed that silently
//! skips.

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::AdminState;
use crate::connection::{Connection, Side};
use crate::engine::decision::DecisionRecord;
use crate::store::AdminAction;

/// How many messages a client may fall behind before it is closed.
pub const FEED_BACKLOG: usize = 1024;

/// The close code for a client that cannot keep up (policy violation).
pub const TOO_SLOW: u16 = 1008;

/// Admin actions as they are recorded, for every watcher of the feed; cheap to clone.
#[derive(Clone)]
pub struct AdminActionFeed(broadcast::Sender<(i64, AdminAction)>);

impl Default for AdminActionFeed {
    fn default() -> Self {
        AdminActionFeed(broadcast::channel(FEED_BACKLOG).0)
    }
}

impl AdminActionFeed {
    /// Shows a recorded action (with its sequence number) to whoever watches; never waits.
    pub fn announce(&self, sequence: i64, action: AdminAction) {
        let _ = self.0.send((sequence, action));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<(i64, AdminAction)> {
        self.0.subscribe()
    }
}

/// One admin action as the API and the feed show it.
pub(super) fn admin_action_json(sequence: i64, action: &AdminAction) -> Value {
    json!({
        "sequence": sequence,
        "at": action.at,
        "action": action.action,
        "detail": action.detail,
        "actor": action.actor,
    })
}

pub(super) async fn feed(State(state): State<AdminState>, upgrade: WebSocketUpgrade) -> Response {
    let sources = Sources {
        decisions: state.decisions.as_ref().map(broadcast::Sender::subscribe),
        connections: state.connections.changes(),
        actions: state.actions.subscribe(),
    };
    let current: Vec<Connection> = Side::ALL
        .iter()
        .map(|side| state.connections.get(*side))
        .collect();
    upgrade.on_upgrade(move |socket| follow(socket, current, sources))
}

/// What the feed follows.
struct Sources {
    decisions: Option<broadcast::Receiver<DecisionRecord>>,
    connections: broadcast::Receiver<Connection>,
    actions: broadcast::Receiver<(i64, AdminAction)>,
}

fn decision_message(record: &DecisionRecord) -> Value {
    json!({"type": "decision", "decision": record})
}

fn connection_message(connection: &Connection) -> Value {
    json!({"type": "connection", "connection": connection})
}

async fn send(socket: &mut WebSocket, message: Value) -> bool {
    socket
        .send(Message::Text(message.to_string().into()))
        .await
        .is_ok()
}

async fn close_too_slow(mut socket: WebSocket, missed: u64) {
    tracing::warn!(missed, "live feed client too slow; closing it");
    let reason = format!(
        "too slow: {missed} messages missed; reconnect and read /api/v1/decisions for what was missed"
    );
    let close = socket.send(Message::Close(Some(CloseFrame {
        code: TOO_SLOW,
        reason: Utf8Bytes::from(reason),
    })));
    // A client that reads nothing would hold the close frame too: give up on it.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), close).await;
}

/// Waits for the next decision; never resolves when there is no decision source.
async fn next_decision(
    decisions: &mut Option<broadcast::Receiver<DecisionRecord>>,
) -> Result<DecisionRecord, broadcast::error::RecvError> {
    match decisions {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

async fn follow(mut socket: WebSocket, current: Vec<Connection>, sources: Sources) {
    let Sources {
        mut decisions,
        mut connections,
        mut actions,
    } = sources;
    for connection in &current {
        if !send(&mut socket, connection_message(connection)).await {
            return;
        }
    }
    loop {
        let message = tokio::select! {
            decision = next_decision(&mut decisions) => match decision {
                Ok(record) => decision_message(&record),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    return close_too_slow(socket, missed).await;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            connection = connections.recv() => match connection {
                Ok(connection) => connection_message(&connection),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    return close_too_slow(socket, missed).await;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            action = actions.recv() => match action {
                Ok((sequence, action)) => json!({
                    "type": "admin_action",
                    "admin_action": admin_action_json(sequence, &action),
                }),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    return close_too_slow(socket, missed).await;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            incoming = socket.recv() => match incoming {
                // The client closed, or went away.
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                // Pings are answered by axum; anything else a client sends is ignored.
                Some(Ok(_)) => continue,
            },
        };
        if !send(&mut socket, message).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite;

    use super::*;
    use crate::connection::{Connections, DisconnectReason};
    use crate::engine::decision::{Action, Reason};

    fn record(n: usize) -> DecisionRecord {
        DecisionRecord {
            event_id: format!("sf:00D000000000001EAA:005000000000001AAA:tx-{n}:1"),
            at: chrono::Utc::now(),
            action: Action::Create,
            reason: Reason::NewActiveUser,
            email: Some(format!("u{n}@acme.example")),
            outreach_user_id: None,
            salesforce_user_id: None,
            previous_salesforce_user_id: None,
            message: format!(
                "created Outreach user for u{n}@acme.example, padded {}",
                "x".repeat(400)
            ),
            outreach_calls: 1,
            actor: None,
        }
    }

    async fn serve() -> (String, broadcast::Sender<DecisionRecord>, Connections) {
        let (url, decisions, connections, _) = serve_with_actions().await;
        (url, decisions, connections)
    }

    async fn serve_with_actions() -> (
        String,
        broadcast::Sender<DecisionRecord>,
        Connections,
        AdminActionFeed,
    ) {
        let store = crate::store::open("sqlite::memory:").await.unwrap();
        let (decisions, _) = broadcast::channel(FEED_BACKLOG);
        let connections = Connections::new();
        let actions = AdminActionFeed::default();
        let listener = super::super::bind("127.0.0.1:0".parse().unwrap(), &[])
            .await
            .unwrap();
        let state = AdminState {
            store,
            connections: connections.clone(),
            authorizations: None,
            decisions: Some(decisions.clone()),
            config: None,
            outreach: None,
            tokens: Default::default(),
            pending: Default::default(),
            actions: actions.clone(),
            addresses: super::super::AdminAddresses::loopback(listener.local_addr().unwrap()),
        };
        let url = format!("ws://{}/api/v1/feed", listener.local_addr().unwrap());
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let _keep = _stop;
            super::super::serve(listener, super::super::router(state), shutdown).await
        });
        (url, decisions, connections, actions)
    }

    async fn next_json(
        socket: &mut (impl StreamExt<Item = Result<tungstenite::Message, tungstenite::Error>> + Unpin),
    ) -> Value {
        loop {
            match socket.next().await.unwrap().unwrap() {
                tungstenite::Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                tungstenite::Message::Close(frame) => panic!("closed: {frame:?}"),
                _ => continue,
            }
        }
    }

    #[tokio::test]
    async fn a_client_gets_the_current_state_then_decisions_and_connection_changes() {
        let (url, decisions, connections) = serve().await;
        let (mut socket, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        let first = next_json(&mut socket).await;
        let second = next_json(&mut socket).await;
        assert_eq!(
            (
                first["connection"]["side"].as_str(),
                second["connection"]["side"].as_str()
            ),
            (Some("salesforce"), Some("outreach"))
        );
        decisions.send(record(1)).unwrap();
        let decision = next_json(&mut socket).await;
        assert_eq!(decision["type"], "decision");
        assert_eq!(decision["decision"]["email"], "u1@acme.example");
        connections.disconnect_manually(Side::Outreach);
        let change = next_json(&mut socket).await;
        assert_eq!(change["type"], "connection");
        assert_eq!(
            change["connection"]["reason"],
            DisconnectReason::Manual.code()
        );
        socket.close(None).await.unwrap();
    }

    /// A page of another site may open a WebSocket to loopback (the same-origin rule does not
    /// hold the handshake back); the browser names that page in `Origin`, and the upgrade is
    /// refused before any message is sent. The server's own page, and the CLI (no `Origin`),
    /// are let in.
    #[tokio::test]
    async fn an_upgrade_from_a_page_of_another_origin_is_refused() {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let (url, _decisions, _connections) = serve().await;
        let with_origin = |origin: &str| {
            let mut request = url.as_str().into_client_request().unwrap();
            request
                .headers_mut()
                .insert("origin", origin.parse().unwrap());
            request
        };
        for foreign in ["http://evil.example", "http://localhost:1"] {
            match tokio_tungstenite::connect_async(with_origin(foreign)).await {
                Err(tungstenite::Error::Http(response)) => {
                    assert_eq!(response.status(), 403, "{foreign}");
                    let body = String::from_utf8(response.body().clone().unwrap()).unwrap();
                    assert!(
                        body.contains("origin_refused") && body.contains(foreign),
                        "{body}"
                    );
                }
                other => panic!("{foreign}: the upgrade was not refused: {other:?}"),
            }
        }
        let own = url.replace("ws://", "http://").replace("/api/v1/feed", "");
        let (mut socket, _) = tokio_tungstenite::connect_async(with_origin(&own))
            .await
            .unwrap();
        assert_eq!(next_json(&mut socket).await["type"], "connection");
        let (mut cli, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        assert_eq!(next_json(&mut cli).await["type"], "connection");
    }

    #[tokio::test]
    async fn an_admin_action_reaches_the_feed_with_its_sequence_detail_and_actor() {
        let (url, _decisions, _connections, actions) = serve_with_actions().await;
        let (mut socket, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        next_json(&mut socket).await;
        next_json(&mut socket).await;
        actions.announce(
            7,
            AdminAction {
                at: chrono::Utc::now(),
                action: crate::store::AdminActionKind::Replay,
                detail: json!({"from": "latest"}),
                actor: Some("ops".into()),
            },
        );
        let message = next_json(&mut socket).await;
        assert_eq!(message["type"], "admin_action");
        assert_eq!(message["admin_action"]["sequence"], 7);
        assert_eq!(message["admin_action"]["action"], "replay");
        assert_eq!(message["admin_action"]["detail"]["from"], "latest");
        assert_eq!(message["admin_action"]["actor"], "ops");
    }

    #[tokio::test]
    async fn a_client_that_cannot_keep_up_is_closed_with_the_reason_and_the_sender_never_waits() {
        let (url, decisions, _connections) = serve().await;
        let (mut socket, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        next_json(&mut socket).await;
        next_json(&mut socket).await;
        // The client reads nothing while far more than the backlog is published; publishing
        // never blocks (a broadcast send only fails without receivers).
        for n in 0..40 * FEED_BACKLOG {
            let _ = decisions.send(record(n));
        }
        let close = loop {
            match socket.next().await {
                Some(Ok(tungstenite::Message::Close(frame))) => break frame,
                Some(Ok(_)) => continue,
                other => panic!("the feed ended without a close frame: {other:?}"),
            }
        };
        let frame = close.expect("a close frame with a reason");
        assert_eq!(u16::from(frame.code), TOO_SLOW);
        assert!(frame.reason.starts_with("too slow: "), "{}", frame.reason);
    }
}

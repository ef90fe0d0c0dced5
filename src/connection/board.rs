//! [`Connections`]: the live state of both sides, written by the roles that make the calls and
//! read by status, metrics and the live feed.
//!
//! The roles report what happened (a sign-in with its identity, a call that worked, a failure)
//! and the board turns it into the state of docs/operations.md. A transition is logged once;
//! a failing call that leaves the state and reason as they were is not logged again here (the
//! role logs its own retries at debug), so an outage is one warning and one recovery line, not
//! a line per attempt.

use std::sync::Arc;

use chrono::Utc;
use tokio::sync::{broadcast, watch};

use super::{
    AuthorizedIdentity, Checklist, Connection, ConnectionFailure, ConnectionState,
    DisconnectReason, ReplayFrom, Side, SubscriberLease, Verdict,
};

/// How many transitions a slow watcher of [`Connections::changes`] may fall behind.
const CHANGE_BACKLOG: usize = 64;

/// Both sides' connection state; cheap to clone, shared by every role of a process.
#[derive(Clone)]
pub struct Connections {
    inner: Arc<Inner>,
}

struct Inner {
    salesforce: watch::Sender<Connection>,
    outreach: watch::Sender<Connection>,
    changes: broadcast::Sender<Connection>,
    /// Per side, a counter an admin's "Reconnect" bumps; a parked role waits for it.
    reconnects: [watch::Sender<u64>; 2],
    /// A counter an admin's "Resync" bumps; the subscriber reads every user again.
    resyncs: watch::Sender<u64>,
    /// Where an admin last asked the subscriber to replay from; each request is a change, even
    /// to the same place.
    replays: watch::Sender<Option<ReplayFrom>>,
}

impl Default for Connections {
    fn default() -> Self {
        Connections::new()
    }
}

impl Connections {
    /// Both sides `not_configured`.
    pub fn new() -> Connections {
        Connections {
            inner: Arc::new(Inner {
                salesforce: watch::channel(Connection::not_configured(Side::Salesforce)).0,
                outreach: watch::channel(Connection::not_configured(Side::Outreach)).0,
                changes: broadcast::channel(CHANGE_BACKLOG).0,
                reconnects: [watch::channel(0).0, watch::channel(0).0],
                resyncs: watch::channel(0).0,
                replays: watch::channel(None).0,
            }),
        }
    }

    fn side(&self, side: Side) -> &watch::Sender<Connection> {
        match side {
            Side::Salesforce => &self.inner.salesforce,
            Side::Outreach => &self.inner.outreach,
        }
    }

    /// The side's connection now.
    pub fn get(&self, side: Side) -> Connection {
        self.side(side).borrow().clone()
    }

    /// The side's state and reason now, without copying the rest (for per-event checks).
    pub fn state(&self, side: Side) -> (ConnectionState, Option<DisconnectReason>) {
        let now = self.side(side).borrow();
        (now.state, now.reason)
    }

    /// Follows one side (the latest state; intermediate ones may be skipped).
    pub fn watch(&self, side: Side) -> watch::Receiver<Connection> {
        self.side(side).subscribe()
    }

    /// Every transition of either side, in order (for the live feed).
    pub fn changes(&self) -> broadcast::Receiver<Connection> {
        self.inner.changes.subscribe()
    }

    /// Asks the side's role to sign in again (after an admin fixed what broke, or stored a new
    /// authorization).
    pub fn request_reconnect(&self, side: Side) {
        self.inner.reconnects[side as usize].send_modify(|n| *n += 1);
    }

    /// Follows the side's reconnect requests: `changed()` resolves at the next one.
    pub fn reconnect_requests(&self, side: Side) -> watch::Receiver<u64> {
        self.inner.reconnects[side as usize].subscribe()
    }

    /// Asks the subscriber to read every Salesforce user again (`POST /api/v1/resync`).
    pub fn request_resync(&self) {
        self.inner.resyncs.send_modify(|n| *n += 1);
    }

    /// Follows the resync requests: `changed()` resolves at the next one.
    pub fn resync_requests(&self) -> watch::Receiver<u64> {
        self.inner.resyncs.subscribe()
    }

    /// Asks the subscriber to end its stream and start it again from `from`
    /// (`POST /api/v1/replay`).
    pub fn request_replay(&self, from: ReplayFrom) {
        self.inner.replays.send_replace(Some(from));
    }

    /// Follows the replay requests: `changed()` resolves at the next one, which
    /// `borrow_and_update()` then reads.
    pub fn replay_requests(&self) -> watch::Receiver<Option<ReplayFrom>> {
        self.inner.replays.subscribe()
    }

    /// An admin disconnected the side: it stops until a reconnect.
    pub fn disconnect_manually(&self, side: Side) {
        self.disconnected(
            side,
            DisconnectReason::Manual,
            "disconnected by an admin".into(),
        );
    }

    /// Signing in, reconnecting or testing has begun.
    pub fn connecting(&self, side: Side) {
        self.transition(side, |now| {
            let mut next = fresh(now, ConnectionState::Connecting);
            next.identity = now.identity.clone();
            next.permissions_checked_at = now.permissions_checked_at;
            Some(next)
        });
    }

    /// Signed in and checked: `identity` is who the authorization belongs to now (a reconnect
    /// as another user shows the new one at once); `None` when the provider does not say
    /// (Outreach's token names no user).
    pub fn connected(&self, side: Side, identity: Option<AuthorizedIdentity>) {
        self.transition(side, |now| {
            let mut next = fresh(now, ConnectionState::Connected);
            if now.state == ConnectionState::Connected && now.identity == identity {
                next.since = now.since;
            }
            next.identity = identity;
            next.permissions_checked_at = Some(Utc::now());
            Some(next)
        });
    }

    /// A call worked: a degraded or connecting side is connected again. A disconnected side
    /// stays disconnected until it is connected with [`connected`](Self::connected): one call
    /// that slips through proves nothing about the permissions.
    pub fn succeeded(&self, side: Side) {
        self.transition(side, |now| match now.state {
            ConnectionState::Degraded | ConnectionState::Connecting => {
                let mut next = fresh(now, ConnectionState::Connected);
                next.identity = now.identity.clone();
                next.permissions_checked_at = now.permissions_checked_at;
                Some(next)
            }
            _ => None,
        });
    }

    /// A call failed: the failure's [`Verdict`] decides. Returns it, so the caller can stop
    /// (disconnected) or retry (degraded) accordingly.
    pub fn failed(&self, side: Side, failure: &dyn ConnectionFailure) -> Verdict {
        let verdict = failure.verdict();
        match verdict {
            Verdict::Unaffected => {}
            Verdict::Degraded => self.degraded(side, failure.to_string()),
            Verdict::Disconnected(reason) => self.disconnected(side, reason, failure.to_string()),
        }
        verdict
    }

    /// Transient trouble, described by `error`.
    pub fn degraded(&self, side: Side, error: String) {
        self.transition(side, |now| {
            if now.state == ConnectionState::Disconnected {
                // A disconnected side waits for an admin; transient noise does not hide why.
                return None;
            }
            let mut next = fresh(now, ConnectionState::Degraded);
            if now.state == ConnectionState::Degraded {
                next.since = now.since;
            }
            next.identity = now.identity.clone();
            next.permissions_checked_at = now.permissions_checked_at;
            next.upstream_error = Some(error);
            Some(next)
        });
    }

    /// Only an admin can fix it. The identity stays, so the admin sees whose authorization broke.
    pub fn disconnected(&self, side: Side, reason: DisconnectReason, error: String) {
        self.transition(side, |now| {
            let mut next = fresh(now, ConnectionState::Disconnected);
            next.identity = now.identity.clone();
            next.permissions_checked_at = now.permissions_checked_at;
            next.reason = Some(reason);
            next.advice = Some(reason.advice(side).to_owned());
            next.upstream_error = Some(error);
            Some(next)
        });
    }

    /// A "test connection" checklist ran: it is kept on the side's connection and announced
    /// (the live feed shows it). Not a state change: the roles report those from their own
    /// calls; the checklist only tells the admin what each step found.
    pub fn checked(&self, side: Side, checklist: Checklist) {
        let mut now = None;
        self.side(side).send_modify(|current| {
            current.last_check = Some(checklist);
            now = Some(current.clone());
        });
        if let Some(connection) = now {
            let _ = self.inner.changes.send(connection);
        }
    }

    /// This process's subscriber took or lost the lease, or renewed it: kept on the Salesforce
    /// connection and announced when its role or holder changed.
    pub fn subscriber(&self, lease: SubscriberLease) {
        let mut announced = None;
        self.inner.salesforce.send_modify(|current| {
            let before = current.subscriber.as_ref();
            let changed = before.map(|b| (b.role, &b.holder, b.epoch))
                != Some((lease.role, &lease.holder, lease.epoch));
            current.subscriber = Some(lease);
            if changed {
                announced = Some(current.clone());
            }
        });
        if let Some(connection) = announced {
            if let Some(lease) = &connection.subscriber {
                tracing::info!(
                    instance = %lease.instance,
                    role = lease.role.as_str(),
                    holder = lease.holder.as_deref(),
                    epoch = lease.epoch,
                    "subscriber lease"
                );
            }
            let _ = self.inner.changes.send(connection);
        }
    }

    /// No authorization is stored for the side (never configured, or removed).
    pub fn not_configured(&self, side: Side) {
        self.transition(side, |now| {
            (now.state != ConnectionState::NotConfigured).then(|| Connection {
                subscriber: now.subscriber.clone(),
                ..Connection::not_configured(side)
            })
        });
    }

    /// Applies `change` to the side's connection; logs and announces it when the state, the
    /// reason or the identity changed. An unchanged upstream error text is not a transition.
    fn transition(&self, side: Side, change: impl FnOnce(&Connection) -> Option<Connection>) {
        let mut announced = None;
        self.side(side).send_if_modified(|current| {
            let Some(next) = change(current) else {
                return false;
            };
            let meaningful = next.state != current.state
                || next.reason != current.reason
                || next.identity != current.identity;
            let modified = next != *current;
            if meaningful {
                announced = Some(next.clone());
            }
            *current = next;
            modified
        });
        if let Some(connection) = announced {
            log(&connection);
            let _ = self.inner.changes.send(connection);
        }
    }
}

/// A connection in `state` since now, carrying over only the last checklist.
fn fresh(now: &Connection, state: ConnectionState) -> Connection {
    let mut next = Connection::not_configured(now.side);
    next.state = state;
    next.last_check = now.last_check.clone();
    next.subscriber = now.subscriber.clone();
    next
}

fn log(connection: &Connection) {
    let side = connection.side.as_str();
    let state = connection.state.as_str();
    let user = connection.identity.as_ref().map(|i| i.username.as_str());
    let error = connection.upstream_error.as_deref();
    match connection.state {
        ConnectionState::Disconnected => tracing::error!(
            side,
            state,
            reason = connection.reason.map(DisconnectReason::code),
            user,
            error,
            advice = connection.advice.as_deref(),
            "connection disconnected"
        ),
        ConnectionState::Degraded => {
            tracing::warn!(side, state, user, error, "connection degraded; retrying")
        }
        _ => tracing::info!(side, state, user, "connection {state}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann() -> AuthorizedIdentity {
        AuthorizedIdentity {
            user_id: "005000000000001AAA".into(),
            username: "ann@acme.example".into(),
            org_id: Some("00D000000000001EAA".into()),
        }
    }

    fn bob() -> AuthorizedIdentity {
        AuthorizedIdentity {
            user_id: "005000000000002AAA".into(),
            username: "bob@acme.example".into(),
            org_id: Some("00D000000000001EAA".into()),
        }
    }

    /// A failure with a fixed verdict, standing in for a protocol error.
    struct Failure(Verdict, &'static str);

    impl std::fmt::Display for Failure {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.1)
        }
    }

    impl ConnectionFailure for Failure {
        fn verdict(&self) -> Verdict {
            self.0
        }
    }

    fn drain(changes: &mut broadcast::Receiver<Connection>) -> Vec<String> {
        let mut seen = Vec::new();
        while let Ok(change) = changes.try_recv() {
            seen.push(change.summary());
        }
        seen
    }

    #[test]
    fn a_checklist_is_announced_and_kept_through_later_transitions() {
        let board = Connections::new();
        board.connecting(Side::Outreach);
        board.connected(Side::Outreach, None);
        let mut changes = board.changes();
        let mut checklist = Checklist::new(Side::Outreach);
        checklist.pass("token", "an access token was minted");
        checklist.fail("write_scope", "users.write is missing", "403 Forbidden");
        board.checked(Side::Outreach, checklist.clone());
        let announced = changes.try_recv().unwrap();
        assert_eq!(
            announced.state,
            ConnectionState::Connected,
            "no state change"
        );
        assert_eq!(announced.last_check.as_ref(), Some(&checklist));

        board.disconnected(
            Side::Outreach,
            DisconnectReason::Manual,
            "by an admin".into(),
        );
        board.connecting(Side::Outreach);
        assert_eq!(board.get(Side::Outreach).last_check, Some(checklist));
        assert!(board.get(Side::Salesforce).last_check.is_none(), "per side");
    }

    #[test]
    fn an_outage_is_one_transition_each_way_however_many_calls_fail() {
        let board = Connections::new();
        let mut changes = board.changes();
        board.connecting(Side::Salesforce);
        board.connected(Side::Salesforce, Some(ann()));
        for _ in 0..5 {
            let verdict = board.failed(
                Side::Salesforce,
                &Failure(Verdict::Degraded, "UNAVAILABLE: RST_STREAM"),
            );
            assert_eq!(verdict, Verdict::Degraded);
        }
        board.succeeded(Side::Salesforce);
        board.succeeded(Side::Salesforce);
        assert_eq!(
            drain(&mut changes),
            [
                "salesforce: connecting",
                "salesforce: connected as ann@acme.example",
                "salesforce: degraded as ann@acme.example: UNAVAILABLE: RST_STREAM",
                "salesforce: connected as ann@acme.example",
            ]
        );
        assert_eq!(
            board.get(Side::Outreach).state,
            ConnectionState::NotConfigured,
            "the other side is untouched"
        );
    }

    #[test]
    fn a_disconnect_carries_reason_advice_error_and_whose_authorization_broke() {
        let board = Connections::new();
        board.connected(Side::Salesforce, Some(ann()));
        let verdict = board.failed(
            Side::Salesforce,
            &Failure(
                Verdict::Disconnected(DisconnectReason::UserInactive),
                "invalid_grant: inactive user",
            ),
        );
        assert_eq!(
            verdict,
            Verdict::Disconnected(DisconnectReason::UserInactive)
        );
        let now = board.get(Side::Salesforce);
        assert_eq!(now.state, ConnectionState::Disconnected);
        assert_eq!(now.reason, Some(DisconnectReason::UserInactive));
        assert_eq!(
            now.advice.as_deref(),
            Some(DisconnectReason::UserInactive.advice(Side::Salesforce))
        );
        assert_eq!(now.identity, Some(ann()));

        // Transient noise and stray successes do not hide why it is disconnected.
        board.degraded(Side::Salesforce, "timeout".into());
        board.succeeded(Side::Salesforce);
        assert_eq!(
            board.get(Side::Salesforce).reason,
            Some(DisconnectReason::UserInactive)
        );
    }

    #[test]
    fn reconnecting_as_another_user_shows_the_new_user_at_once() {
        let board = Connections::new();
        let mut watch = board.watch(Side::Salesforce);
        board.connected(Side::Salesforce, Some(ann()));
        board.disconnected(
            Side::Salesforce,
            DisconnectReason::PermissionsChanged,
            "PERMISSION_DENIED".into(),
        );
        board.connecting(Side::Salesforce);
        board.connected(Side::Salesforce, Some(bob()));
        let now = watch.borrow_and_update().clone();
        assert_eq!(now.state, ConnectionState::Connected);
        assert_eq!(now.identity, Some(bob()));
        assert_eq!(
            (now.reason, now.advice, now.upstream_error),
            (None, None, None)
        );
        assert!(now.permissions_checked_at.is_some());
    }

    #[tokio::test]
    async fn a_reconnect_request_wakes_the_sides_role_only() {
        let board = Connections::new();
        let mut salesforce = board.reconnect_requests(Side::Salesforce);
        let outreach = board.reconnect_requests(Side::Outreach);
        board.request_reconnect(Side::Salesforce);
        salesforce.changed().await.unwrap();
        assert!(!outreach.has_changed().unwrap());
        board.disconnect_manually(Side::Outreach);
        let now = board.get(Side::Outreach);
        assert_eq!(
            (now.state, now.reason),
            (
                ConnectionState::Disconnected,
                Some(DisconnectReason::Manual)
            )
        );
        assert!(
            !outreach.has_changed().unwrap(),
            "a disconnect is not a reconnect"
        );
    }

    #[tokio::test]
    async fn each_replay_request_is_seen_with_where_it_goes_even_the_same_twice() {
        let board = Connections::new();
        let mut replays = board.replay_requests();
        assert!(!replays.has_changed().unwrap());
        board.request_replay(ReplayFrom::Latest);
        replays.changed().await.unwrap();
        assert_eq!(*replays.borrow_and_update(), Some(ReplayFrom::Latest));
        board.request_replay(ReplayFrom::Latest);
        assert!(replays.has_changed().unwrap(), "asked again");
        assert_eq!(*replays.borrow_and_update(), Some(ReplayFrom::Latest));
        assert!(
            !board.resync_requests().has_changed().unwrap(),
            "a replay is not a resync"
        );
    }

    #[test]
    fn a_failure_unrelated_to_the_connection_changes_nothing() {
        let board = Connections::new();
        board.connected(Side::Outreach, Some(ann()));
        let mut changes = board.changes();
        let before = board.get(Side::Outreach);
        board.failed(
            Side::Outreach,
            &Failure(Verdict::Unaffected, "422 Email has already been taken"),
        );
        assert_eq!(board.get(Side::Outreach), before);
        assert!(drain(&mut changes).is_empty());
    }

    #[test]
    fn a_new_upstream_error_while_degraded_updates_the_state_without_a_new_transition() {
        let board = Connections::new();
        board.connected(Side::Outreach, Some(ann()));
        board.degraded(Side::Outreach, "429".into());
        let since = board.get(Side::Outreach).since;
        let mut changes = board.changes();
        board.degraded(Side::Outreach, "503".into());
        let now = board.get(Side::Outreach);
        assert_eq!(now.upstream_error.as_deref(), Some("503"));
        assert_eq!(now.since, since, "still the same outage");
        assert!(drain(&mut changes).is_empty());
    }
}

//! The test-connection checklist, run by itself: once at start and after every reconnect, as
//! docs/operations.md ("Test connection") asks, so the admin sees each step's result without
//! pressing "Test connection".
//!
//! The roles sign in on their own; this only watches the board. It waits until the side has
//! settled (it left `connecting`, or [`SETTLE`] passed), runs the side's checklist, and keeps
//! it on the side's connection, where status, the live feed and the page show it. A checklist
//! never changes a side's state: a failed step is information for the admin; the state
//! follows the calls the roles make.

use std::time::Duration;

use tokio::sync::watch;

use super::AdminState;
use super::connections::run_checklist;
use crate::connection::{ConnectionState, Side};

/// How long a side may stay `connecting` (or not report at all) before its checklist runs
/// anyway: the checklist then shows where signing in is stuck.
pub const SETTLE: Duration = Duration::from_secs(30);

/// Runs both sides' checklists at start and after each of their reconnects, until `stopped`.
pub async fn follow(state: AdminState, stopped: watch::Receiver<bool>) -> anyhow::Result<()> {
    tokio::join!(
        follow_side(&state, Side::Salesforce, stopped.clone()),
        follow_side(&state, Side::Outreach, stopped),
    );
    Ok(())
}

async fn follow_side(state: &AdminState, side: Side, mut stopped: watch::Receiver<bool>) {
    let mut reconnects = state.connections.reconnect_requests(side);
    reconnects.borrow_and_update();
    loop {
        tokio::select! {
            () = settled(state, side) => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        tokio::select! {
            checked = run_checklist(state, side) => if let Err(error) = checked {
                tracing::warn!(%side, error = %error.message, "the automatic connection check did not run");
            },
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        tokio::select! {
            changed = reconnects.changed() => if changed.is_err() { return },
            _ = stopped.wait_for(|stop| *stop) => return,
        }
    }
}

/// Returns once the side has a settled state (connected, degraded or disconnected), or after
/// [`SETTLE`].
async fn settled(state: &AdminState, side: Side) {
    let mut connection = state.connections.watch(side);
    let settled = connection.wait_for(|c| {
        !matches!(
            c.state,
            ConnectionState::Connecting | ConnectionState::NotConfigured
        )
    });
    let _ = tokio::time::timeout(SETTLE, settled).await;
}

//! The retention of the decision log and the applied-event log (`store.retention_days`,
//! docs/store.md "Retention"): rows older than the retention are deleted, in batches, at the
//! processor's start and every [`PRUNE_EVERY`] after.
//!
//! The processor prunes, not the admin server: the processor writes both logs and runs
//! wherever they grow (`usersync run`, and every `usersync processor` replica of a scaled
//! deployment), while the admin server is optional (`admin.listen` empty) and never part of a
//! processor run alone. Replicas pruning at once share the work: each batch is one short
//! statement, and on PostgreSQL it skips the rows another pruner holds.
//!
//! How far back the applied-event log must reach is set at configuration load
//! ([`crate::config::MIN_RETENTION_DAYS`]): a redelivered event older than what is kept would
//! not be recognized as applied.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::watch;

use crate::metrics::{self, PrunedTable};
use crate::store::{Pruned, Store, StoreError};

/// How often the logs are pruned while the processor runs.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// The most rows one statement deletes: small enough that no writer waits long on it.
pub const PRUNE_BATCH: u32 = 1000;

/// The oldest moment kept: `now - keep`; `None` when that is before any date (nothing to
/// prune).
pub fn cutoff(now: DateTime<Utc>, keep: Duration) -> Option<DateTime<Utc>> {
    TimeDelta::from_std(keep)
        .ok()
        .and_then(|keep| now.checked_sub_signed(keep))
}

/// Deletes what is older than `keep` at `now`; logs the counts and adds them to
/// `usersync_store_pruned_rows_total`.
pub async fn prune(
    store: &dyn Store,
    keep: Duration,
    now: DateTime<Utc>,
) -> Result<Pruned, StoreError> {
    let Some(before) = cutoff(now, keep) else {
        return Ok(Pruned::default());
    };
    let pruned = store.prune_before(before, PRUNE_BATCH).await?;
    metrics::global().pruned(PrunedTable::decisions, pruned.decisions);
    metrics::global().pruned(PrunedTable::applied_events, pruned.applied_events);
    if pruned == Pruned::default() {
        tracing::debug!(%before, "retention: nothing older to prune");
    } else {
        tracing::info!(
            %before,
            decisions = pruned.decisions,
            applied_events = pruned.applied_events,
            "retention: pruned the decision and applied-event logs"
        );
    }
    Ok(pruned)
}

/// Prunes now and every [`PRUNE_EVERY`] until `shutdown` turns true. A store that fails is
/// logged and tried again at the next turn: pruning late loses nothing.
pub async fn follow(store: Arc<dyn Store>, keep: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut timer = tokio::time::interval(PRUNE_EVERY);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*shutdown.borrow() {
        tokio::select! {
            _ = timer.tick() => {
                if let Err(error) = prune(store.as_ref(), keep, Utc::now()).await {
                    tracing::warn!(%error, "retention: the logs could not be pruned; trying again later");
                }
            }
            changed = shutdown.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::decision::{Action, DecisionRecord, Reason};
    use crate::store::AppliedEvent;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    /// An event applied at `when` with one decision made then.
    fn applied(event_id: &str, when: DateTime<Utc>) -> AppliedEvent {
        AppliedEvent {
            event_id: event_id.into(),
            read_versions: Default::default(),
            salesforce_user: None,
            outreach_users: Vec::new(),
            mapping_changes: Vec::new(),
            decisions: vec![DecisionRecord {
                event_id: event_id.into(),
                at: when,
                action: Action::Skip,
                reason: Reason::UpToDate,
                email: None,
                outreach_user_id: None,
                salesforce_user_id: None,
                previous_salesforce_user_id: None,
                message: format!("{event_id} was up to date"),
                outreach_calls: 0,
                actor: None,
            }],
        }
    }

    #[test]
    fn the_cutoff_is_the_retention_before_now_and_never_a_panic() {
        let now = at("2025-06-30T00:00:00Z");
        assert_eq!(
            cutoff(now, Duration::from_secs(90 * 86_400)),
            Some(at("2025-04-01T00:00:00Z"))
        );
        assert_eq!(cutoff(now, Duration::MAX), None);
    }

    #[tokio::test]
    async fn rows_older_than_the_retention_go_and_the_newer_stay() {
        let store = crate::store::open("sqlite::memory:").await.unwrap();
        // An event is applied at the moment it is recorded (now); its decision says it was
        // made in January.
        store
            .record(&applied("ev-1", at("2025-01-01T00:00:00Z")))
            .await
            .unwrap();
        let keep = Duration::from_secs(7 * 86_400);
        let now = Utc::now();
        let pruned = prune(store.as_ref(), keep, now).await.unwrap();
        assert_eq!(
            pruned,
            Pruned {
                decisions: 1,
                applied_events: 0
            },
            "the decision made in January goes; the event applied just now stays"
        );
        assert!(store.is_applied("ev-1").await.unwrap());
        let pruned = prune(store.as_ref(), keep, now + TimeDelta::days(8))
            .await
            .unwrap();
        assert_eq!(
            pruned,
            Pruned {
                decisions: 0,
                applied_events: 1
            },
            "eight days on, the event is older than the week kept"
        );
        assert!(!store.is_applied("ev-1").await.unwrap());
    }
}

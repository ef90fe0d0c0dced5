//! `GET /api/v1/conflicts`: the conflicts that still need a human.
//!
//! A conflict is a decision (`action: conflict`): two active Salesforce users with one email,
//! an Outreach user whose email is taken with matching off, and so on (`decisions.md`). It is
//! open while it is the newest decision about its email (skips of a redelivered or stale event
//! decide nothing and do not count): once a later change of that email
//! group decides anything else (the admin deactivated one of the two users, say), it is
//! resolved. The log is read newest first, so the answer is the conflicts' emails each with
//! its newest conflict, at most [`MAX_CONFLICTS`] of them.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::{AdminState, ApiError, store_failed};
use crate::engine::decision::{Action, Reason};
use crate::store::DecisionQuery;

/// How many open conflicts one answer lists.
pub const MAX_CONFLICTS: usize = 200;

pub(super) async fn open(State(state): State<AdminState>) -> Result<Json<Value>, ApiError> {
    let mut seen = BTreeSet::new();
    let mut open = Vec::new();
    let mut after = None;
    'pages: loop {
        let page = state
            .store
            .decisions(&DecisionQuery {
                after,
                action: Some(Action::Conflict),
                email: None,
                limit: crate::store::MAX_DECISION_PAGE,
            })
            .await
            .map_err(store_failed)?;
        for (sequence, conflict) in page.records {
            let Some(email) = conflict.email.clone() else {
                continue;
            };
            if !seen.insert(email.clone()) {
                continue;
            }
            let newest = state
                .store
                .decisions(&DecisionQuery {
                    after: None,
                    action: None,
                    email: Some(email),
                    limit: 20,
                })
                .await
                .map_err(store_failed)?;
            let deciding = newest
                .records
                .iter()
                .find(|(_, d)| !matches!(d.reason, Reason::DuplicateEvent | Reason::StaleEvent));
            if deciding.map(|(s, _)| *s) == Some(sequence) {
                open.push(json!({"sequence": sequence, "decision": conflict}));
                if open.len() == MAX_CONFLICTS {
                    break 'pages;
                }
            }
        }
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    Ok(Json(json!({ "conflicts": open })))
}

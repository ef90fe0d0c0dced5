//! `POST /api/v1/mappings` and `DELETE /api/v1/mappings/{outreach_user_id}`: an admin maps or
//! unmaps by hand, the way a conflict is settled when no rule can (`decisions.md`).
//!
//! Each is written like a processed event: one store transaction holds the mapping change and
//! its decision record (`link` or `remap` with `manual_link`, `unlink` with `manual_unlink`)
//! with its `actor`, the name of the admin token that asked, so the decision log says who
//! changed what, and the live feed shows it. Nothing is sent to
//! Outreach here: the next change of that email group brings the Outreach user in line (names,
//! the id mirror). Both users must be known to the store; a Salesforce user already mapped to
//! another Outreach user is refused (409) until that mapping is removed, so one click never
//! silently takes a user from another.

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};

use super::actor::Actor;
use super::{AdminState, ApiError, bad_request, store_failed};
use crate::engine::decision::{Action, DecisionRecord, Reason};
use crate::engine::state::{Mapping, StateScope, SyncState};
use crate::model::salesforce_id::SalesforceId;
use crate::outreach::OutreachUserId;
use crate::store::{AppliedEvent, MappingWrite, StoreError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ManualMapping {
    outreach_user_id: i64,
    salesforce_user_id: String,
}

/// An id for the admin's action in the applied-event log, unique per call.
fn admin_event_id() -> String {
    format!(
        "admin:{}:{:016x}",
        Utc::now().format("%Y%m%dT%H%M%S%.6fZ"),
        rand::random::<u64>()
    )
}

fn refused(error: StoreError) -> ApiError {
    match error {
        StoreError::MappingConflict { .. } => ApiError {
            status: StatusCode::CONFLICT,
            code: "mapping_conflict",
            message: error.to_string(),
        },
        StoreError::StaleState { .. } => ApiError {
            status: StatusCode::CONFLICT,
            code: "state_changed",
            message: format!(
                "{error}: the users changed while the mapping was being made; try again"
            ),
        },
        StoreError::UnknownMappedUser { .. } => ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "unknown_user",
            message: format!("{error}: usersync has not seen that user yet"),
        },
        other => store_failed(other),
    }
}

pub(super) async fn map(
    State(state): State<AdminState>,
    Extension(actor): Extension<Actor>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(&body);
    let wanted: ManualMapping = serde_path_to_error::deserialize(de).map_err(|e| ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        code: "invalid_mapping",
        message: format!(
            "{}: {} (the body is {{\"outreach_user_id\": 123, \"salesforce_user_id\": \"005…\"}})",
            e.path(),
            e.inner()
        ),
    })?;
    let salesforce_user_id = SalesforceId::parse(&wanted.salesforce_user_id).map_err(|e| {
        bad_request(format!(
            "salesforce_user_id {:?}: {e}",
            wanted.salesforce_user_id
        ))
    })?;
    let outreach_user_id = OutreachUserId(wanted.outreach_user_id);
    let scope = StateScope {
        salesforce_user_ids: vec![salesforce_user_id.clone()],
        outreach_user_ids: vec![outreach_user_id],
        ..StateScope::default()
    };
    let mapping = Mapping {
        outreach_user_id,
        salesforce_user_id: salesforce_user_id.clone(),
        locked_by_usersync: false,
    };
    let mut attempt = 1;
    loop {
        let read = load(&state, &scope).await?;
        let email = read
            .salesforce_user(&salesforce_user_id)
            .and_then(|u| u.email_normalized());
        let (action, previous, message, mut changes) = match read
            .mapping_of_outreach(outreach_user_id)
        {
            Some(held) if held.salesforce_user_id == salesforce_user_id => {
                return Ok((StatusCode::OK, Json(json!({ "mapping": held }))));
            }
            Some(held) => (
                Action::Remap,
                Some(held.salesforce_user_id.clone()),
                format!(
                    "An admin remapped Outreach user {outreach_user_id} from Salesforce user {} to {salesforce_user_id} by hand.",
                    held.salesforce_user_id
                ),
                vec![MappingWrite::Remove(outreach_user_id)],
            ),
            None => (
                Action::Link,
                None,
                format!(
                    "An admin mapped Outreach user {outreach_user_id} to Salesforce user {salesforce_user_id} by hand."
                ),
                Vec::new(),
            ),
        };
        changes.push(MappingWrite::Put(mapping.clone()));
        let record = DecisionRecord {
            event_id: admin_event_id(),
            at: Utc::now(),
            action,
            reason: Reason::ManualLink,
            email,
            outreach_user_id: Some(outreach_user_id),
            salesforce_user_id: Some(salesforce_user_id.clone()),
            previous_salesforce_user_id: previous,
            message,
            outreach_calls: 0,
            actor: Some(actor.name.clone()),
        };
        match record_by_hand(&state, &read, changes, record, attempt).await? {
            Recorded::Yes => return Ok((StatusCode::CREATED, Json(json!({ "mapping": mapping })))),
            Recorded::ReadAgain => attempt += 1,
        }
    }
}

pub(super) async fn unmap(
    State(state): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let outreach_user_id = super::outreach_user_id(&raw)?;
    let scope = StateScope {
        outreach_user_ids: vec![outreach_user_id],
        ..StateScope::default()
    };
    let mut attempt = 1;
    loop {
        let read = load(&state, &scope).await?;
        let Some(held) = read.mapping_of_outreach(outreach_user_id).cloned() else {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                code: "not_mapped",
                message: format!("Outreach user {outreach_user_id} is not mapped"),
            });
        };
        let email = read
            .salesforce_user(&held.salesforce_user_id)
            .and_then(|u| u.email_normalized());
        let record = DecisionRecord {
            event_id: admin_event_id(),
            at: Utc::now(),
            action: Action::Unlink,
            reason: Reason::ManualUnlink,
            email,
            outreach_user_id: Some(outreach_user_id),
            salesforce_user_id: None,
            previous_salesforce_user_id: Some(held.salesforce_user_id.clone()),
            message: format!(
                "An admin unmapped Outreach user {outreach_user_id} from Salesforce user {} by hand.",
                held.salesforce_user_id
            ),
            outreach_calls: 0,
            actor: Some(actor.name.clone()),
        };
        let changes = vec![MappingWrite::Remove(outreach_user_id)];
        match record_by_hand(&state, &read, changes, record, attempt).await? {
            Recorded::Yes => return Ok(Json(json!({ "unmapped": held }))),
            Recorded::ReadAgain => attempt += 1,
        }
    }
}

/// The users and mappings a change by hand is about, with the versions the store checks when
/// the change is recorded.
async fn load(state: &AdminState, scope: &StateScope) -> Result<SyncState, ApiError> {
    state.store.load_state(scope).await.map_err(store_failed)
}

/// How many times a change by hand is read and tried when the processor keeps changing the
/// same users at the same moment.
const ATTEMPTS: u32 = 3;

/// Whether a change by hand went in, or must be read and decided again.
enum Recorded {
    Yes,
    ReadAgain,
}

/// One transaction: the mapping changes and their decision; then the feed hears of it.
/// Refused, without a write, when the processor changed the users in between: then the change
/// is read again (up to [`ATTEMPTS`] times), so it never undoes what the processor just did.
async fn record_by_hand(
    state: &AdminState,
    read: &SyncState,
    mapping_changes: Vec<MappingWrite>,
    record: DecisionRecord,
    attempt: u32,
) -> Result<Recorded, ApiError> {
    let written = state
        .store
        .record(&AppliedEvent {
            event_id: record.event_id.clone(),
            read_versions: read.versions().clone(),
            salesforce_user: None,
            outreach_users: Vec::new(),
            mapping_changes,
            decisions: vec![record.clone()],
        })
        .await;
    match written {
        Ok(()) => {}
        Err(StoreError::StaleState { .. }) if attempt < ATTEMPTS => {
            return Ok(Recorded::ReadAgain);
        }
        Err(error) => return Err(refused(error)),
    }
    tracing::info!(
        action = %record.action,
        actor = record.actor.as_deref().unwrap_or_default(),
        message = %record.message,
        "mapping changed by an admin"
    );
    crate::metrics::global().decision(record.action);
    if let Some(feed) = &state.decisions {
        let _ = feed.send(record);
    }
    Ok(Recorded::Yes)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use crate::admin::{AdminAddresses, AdminState, bind, router, serve};
    use crate::connection::Connections;
    use crate::model::salesforce_id::SalesforceId;
    use crate::model::salesforce_user::SalesforceUser;
    use crate::outreach::{OutreachUser, OutreachUserId};
    use crate::store::{DecisionQuery, Store};

    const X: &str = "005000000000001AAA";
    const Y: &str = "005000000000002AAA";

    fn salesforce_user(id: &str) -> SalesforceUser {
        SalesforceUser {
            id: SalesforceId::parse(id).unwrap(),
            email: Some("abc@def.com".into()),
            username: None,
            first_name: None,
            last_name: None,
            title: None,
            is_active: true,
            created_date: None,
            last_modified_date: None,
            applied: None,
        }
    }

    async fn serve_with_users() -> (String, Arc<dyn Store>, tokio::sync::watch::Sender<bool>) {
        let store = crate::store::open("sqlite::memory:").await.unwrap();
        store
            .put_salesforce_users(&[salesforce_user(X), salesforce_user(Y)])
            .await
            .unwrap();
        store
            .put_outreach_users(&[OutreachUser {
                id: OutreachUserId(1),
                email: "abc@def.com".into(),
                username: None,
                first_name: None,
                last_name: None,
                title: None,
                locked: false,
                custom: Default::default(),
                updated_at: None,
            }])
            .await
            .unwrap();
        let listener = bind("127.0.0.1:0".parse().unwrap(), &[]).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let state = AdminState {
            store: store.clone(),
            connections: Connections::new(),
            authorizations: None,
            decisions: None,
            config: None,
            outreach: None,
            tokens: Default::default(),
            pending: Default::default(),
            actions: Default::default(),
            addresses: AdminAddresses::loopback(listener.local_addr().unwrap()),
        };
        tokio::spawn(serve(listener, router(state), shutdown));
        (url, store, stop)
    }

    #[tokio::test]
    async fn mapping_remapping_and_unmapping_by_hand_are_recorded_as_decisions() {
        let (url, store, _stop) = serve_with_users().await;
        let http = reqwest::Client::new();
        let post = |body: serde_json::Value| {
            http.post(format!("{url}/api/v1/mappings"))
                .json(&body)
                .send()
        };

        let linked = post(json!({"outreach_user_id": 1, "salesforce_user_id": X}))
            .await
            .unwrap();
        assert_eq!(linked.status(), 201);
        let remapped = post(json!({"outreach_user_id": 1, "salesforce_user_id": Y}))
            .await
            .unwrap();
        assert_eq!(remapped.status(), 201);
        let unknown = post(json!({"outreach_user_id": 2, "salesforce_user_id": X}))
            .await
            .unwrap();
        assert_eq!(unknown.status(), 422, "Outreach user 2 is not known");
        let body: serde_json::Value = unknown.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unknown_user");
        let malformed = post(json!({"outreach_user_id": "one", "salesforce_user_id": X}))
            .await
            .unwrap();
        assert_eq!(malformed.status(), 422);
        let body: serde_json::Value = malformed.json().await.unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("outreach_user_id"),
            "{body}"
        );

        let unmapped = http
            .delete(format!("{url}/api/v1/mappings/1"))
            .header("content-type", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(unmapped.status(), 200);
        let again = http
            .delete(format!("{url}/api/v1/mappings/1"))
            .header("content-type", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 404);

        let log = store.decisions(&DecisionQuery::default()).await.unwrap();
        let seen: Vec<(String, String)> = log
            .records
            .iter()
            .map(|(_, d)| (d.action.as_str().to_owned(), d.reason.as_str().to_owned()))
            .collect();
        assert_eq!(
            seen,
            [
                ("unlink".to_owned(), "manual_unlink".to_owned()),
                ("remap".to_owned(), "manual_link".to_owned()),
                ("link".to_owned(), "manual_link".to_owned()),
            ],
            "newest first"
        );
        assert_eq!(
            log.records[1]
                .1
                .previous_salesforce_user_id
                .as_ref()
                .map(|i| i.as_str()),
            Some(X)
        );
        assert_eq!(log.records[0].1.email.as_deref(), Some("abc@def.com"));
        assert!(
            store
                .mappings(&Default::default())
                .await
                .unwrap()
                .is_empty()
        );
    }
}

//! What each store operation means, written once for every backend.
//!
//! A backend supplies sessions ([`Backend`]) that run the statements ([`Statements`]); this
//! module decides which statements an operation runs, in which order, in which kind of
//! session, and what a failure means to the caller. That keeps the two backends from drifting
//! apart on the parts that matter most: the slice of state a decision sees (`load_state`) and
//! what recording an applied event writes (`record`).
//!
//! Both also keep the optimistic check between processor replicas in one place: every part of
//! the state (an email group, a Salesforce user an event names) has a version; `load_state`
//! returns the versions of the parts it read, every write moves the versions of the parts it
//! touches, and `record` writes only when the parts its decisions were made on are still at
//! the versions read.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use sqlx::error::ErrorKind;

use super::session::Session;
use super::statements::{Access, Backend, PrunedLog, Statements};
use super::{
    AdminAction, AppliedEvent, Context, DecisionPage, DecisionQuery, Lease, LeaseAnswer,
    LeaseClaim, MAX_ADMIN_ACTIONS, MAX_DECISION_PAGE, MappingFilter, MappingWrite, Pruned,
    ReplayCheckpoint, SealedAuthorization, Store, StoreError,
};
use crate::engine::decision::DecisionRecord;
use crate::engine::settings::SyncSettings;
use crate::engine::state::{Mapping, StateScope, StateVersions, SyncState};
use crate::model::event::{Position, normalize_email};
use crate::model::outreach_user::{OutreachUser, OutreachUserId};
use crate::model::salesforce_id::SalesforceId;
use crate::model::salesforce_user::SalesforceUser;

#[async_trait::async_trait]
impl<B> Store for B
where
    B: Backend,
    Session<B::Dialect>: Statements + Send,
{
    async fn load_state(&self, scope: &StateScope) -> Result<SyncState, StoreError> {
        let mut session = self
            .session(Access::Read)
            .await
            .context(|| "begin the read of a decision's state".into())?;
        let state = load_state(&mut session, scope).await?;
        session
            .commit()
            .await
            .context(|| "end the read of a decision's state".into())
            .map(|()| state)
    }

    async fn record(&self, applied: &AppliedEvent) -> Result<(), StoreError> {
        let operation = || format!("record event {}", applied.event_id);
        let mut session = self.session(Access::Write).await.context(operation)?;
        record(&mut session, applied).await?;
        session.commit().await.context(operation)
    }

    async fn salesforce_user(
        &self,
        id: &SalesforceId,
    ) -> Result<Option<SalesforceUser>, StoreError> {
        let operation = || format!("read Salesforce user {id}");
        let mut session = self.session(Access::Single).await.context(operation)?;
        let rows = session
            .salesforce_users_by_id(&[id.to_string()])
            .await
            .context(operation)?;
        rows.into_iter()
            .next()
            .map(SalesforceUser::try_from)
            .transpose()
    }

    async fn put_salesforce_users(&self, users: &[SalesforceUser]) -> Result<(), StoreError> {
        let operation = || format!("store {} Salesforce users", users.len());
        let mut session = self.session(Access::Write).await.context(operation)?;
        let ids: Vec<SalesforceId> = users.iter().map(|u| u.id.clone()).collect();
        let mut parts = stored_parts(&mut session, &ids, &[])
            .await
            .context(operation)?;
        parts.extend(users.iter().flat_map(salesforce_parts));
        advance_versions(&mut session, &StateVersions::new(), parts)
            .await
            .context(operation)?;
        for user in users {
            session
                .upsert_salesforce_user(user)
                .await
                .context(|| format!("store Salesforce user {}", user.id))?;
        }
        session.commit().await.context(operation)
    }

    async fn outreach_user(&self, id: OutreachUserId) -> Result<Option<OutreachUser>, StoreError> {
        let operation = || format!("read Outreach user {id}");
        let mut session = self.session(Access::Single).await.context(operation)?;
        let rows = session
            .outreach_users_by_id(&[id.0])
            .await
            .context(operation)?;
        Ok(rows.into_iter().next().map(OutreachUser::from))
    }

    async fn outreach_users_by_email(
        &self,
        email_normalized: &str,
    ) -> Result<Vec<OutreachUser>, StoreError> {
        let email = normalize_email(email_normalized);
        let operation = || format!("read the Outreach users with email {email}");
        let mut session = self.session(Access::Single).await.context(operation)?;
        let rows = session
            .outreach_users_by_email(std::slice::from_ref(&email))
            .await
            .context(operation)?;
        Ok(rows.into_iter().map(OutreachUser::from).collect())
    }

    async fn put_outreach_users(&self, users: &[OutreachUser]) -> Result<(), StoreError> {
        let operation = || format!("store {} Outreach users", users.len());
        let mut session = self.session(Access::Write).await.context(operation)?;
        put_outreach_users(&mut session, users, false).await?;
        session.commit().await.context(operation)
    }

    async fn keep_superseded_calls(
        &self,
        users: &[OutreachUser],
        decisions: &[DecisionRecord],
    ) -> Result<(), StoreError> {
        let operation = || {
            format!(
                "keep {} Outreach users as Outreach returned them and the {} decisions that \
                 called it",
                users.len(),
                decisions.len()
            )
        };
        let mut session = self.session(Access::Write).await.context(operation)?;
        put_outreach_users(&mut session, users, true).await?;
        for decision in decisions {
            session.append_decision(decision).await.context(|| {
                format!(
                    "append a superseded {} decision of event {}",
                    decision.action, decision.event_id
                )
            })?;
        }
        session.commit().await.context(operation)
    }

    async fn mappings(&self, filter: &MappingFilter) -> Result<Vec<Mapping>, StoreError> {
        let operation = || format!("read mappings matching {filter:?}");
        let email = filter.email.as_deref().map(normalize_email);
        let salesforce = filter.salesforce_user_id.as_ref().map(SalesforceId::as_str);
        let outreach = filter.outreach_user_id.map(|id| id.0);
        let mut session = self.session(Access::Single).await.context(operation)?;
        let rows = session
            .mappings_matching(email.as_deref(), salesforce, outreach)
            .await
            .context(operation)?;
        rows.into_iter().map(Mapping::try_from).collect()
    }

    async fn put_mapping(&self, mapping: &Mapping) -> Result<(), StoreError> {
        let operation = || {
            format!(
                "map Outreach user {} to Salesforce user {}",
                mapping.outreach_user_id, mapping.salesforce_user_id
            )
        };
        let mut session = self.session(Access::Write).await.context(operation)?;
        let parts = mapping_parts(
            &mut session,
            std::slice::from_ref(&mapping.salesforce_user_id),
            &[mapping.outreach_user_id],
        )
        .await?;
        advance_versions(&mut session, &StateVersions::new(), parts)
            .await
            .context(operation)?;
        put_mapping(&mut session, mapping).await?;
        session.commit().await.context(operation)
    }

    async fn remove_mapping(
        &self,
        outreach_user_id: OutreachUserId,
    ) -> Result<Option<Mapping>, StoreError> {
        let operation = || format!("remove the mapping of Outreach user {outreach_user_id}");
        let mut session = self.session(Access::Write).await.context(operation)?;
        let parts = mapping_parts(&mut session, &[], &[outreach_user_id]).await?;
        advance_versions(&mut session, &StateVersions::new(), parts)
            .await
            .context(operation)?;
        let row = session
            .delete_mapping(outreach_user_id.0)
            .await
            .context(operation)?;
        let removed = row.map(Mapping::try_from).transpose()?;
        session.commit().await.context(operation)?;
        Ok(removed)
    }

    async fn is_applied(&self, event_id: &str) -> Result<bool, StoreError> {
        let operation = || format!("look up applied event {event_id}");
        let mut session = self.session(Access::Single).await.context(operation)?;
        let found = session
            .applied_among(&[event_id.to_string()])
            .await
            .context(operation)?;
        Ok(!found.is_empty())
    }

    async fn decisions(&self, query: &DecisionQuery) -> Result<DecisionPage, StoreError> {
        let operation = || format!("read the decision log ({query:?})");
        let limit = query.limit.clamp(1, MAX_DECISION_PAGE);
        let email = query.email.as_deref().map(normalize_email);
        let mut session = self.session(Access::Single).await.context(operation)?;
        // One more than asked tells whether an older page exists.
        let rows = session
            .decisions_before(
                query.after,
                query.action.map(|a| a.as_str()),
                email.as_deref(),
                i64::from(limit) + 1,
            )
            .await
            .context(operation)?;
        let more = rows.len() > limit as usize;
        let records = rows
            .into_iter()
            .take(limit as usize)
            .map(<(i64, _)>::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let next_after = if more {
            records.last().map(|(sequence, _)| *sequence)
        } else {
            None
        };
        Ok(DecisionPage {
            records,
            next_after,
        })
    }

    async fn settings(&self) -> Result<Option<SyncSettings>, StoreError> {
        let operation = || "read the settings".to_string();
        let mut session = self.session(Access::Single).await.context(operation)?;
        let document = session.settings_document().await.context(operation)?;
        document
            .map(|text| {
                serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                    table: "settings",
                    column: "document",
                    value: text.clone(),
                    problem: e.to_string(),
                })
            })
            .transpose()
    }

    async fn save_settings(&self, settings: &SyncSettings) -> Result<(), StoreError> {
        let operation = || "save the settings".to_string();
        let document = serde_json::to_string(settings).expect("settings serialize to JSON");
        let mut session = self.session(Access::Single).await.context(operation)?;
        session
            .save_settings_document(&document, Utc::now())
            .await
            .context(operation)
    }

    async fn save_settings_recorded(
        &self,
        settings: &SyncSettings,
        action: &AdminAction,
    ) -> Result<i64, StoreError> {
        let operation = || "save the settings and record who saved them".to_string();
        let document = serde_json::to_string(settings).expect("settings serialize to JSON");
        let mut session = self.session(Access::Write).await.context(operation)?;
        session
            .save_settings_document(&document, action.at)
            .await
            .context(operation)?;
        let sequence = append_admin_action(&mut session, action).await?;
        session.commit().await.context(operation)?;
        Ok(sequence)
    }

    async fn authorization(&self, side: &str) -> Result<Option<SealedAuthorization>, StoreError> {
        let operation = || format!("read the stored {side} authorization");
        let mut session = self.session(Access::Single).await.context(operation)?;
        let row = session.authorization(side).await.context(operation)?;
        Ok(row.map(|(sealed, generation)| SealedAuthorization { sealed, generation }))
    }

    async fn save_authorization(
        &self,
        side: &str,
        sealed: &[u8],
        key_fingerprint: &str,
        generation: i64,
    ) -> Result<bool, StoreError> {
        let operation = || format!("save the {side} authorization");
        let mut session = self.session(Access::Single).await.context(operation)?;
        session
            .save_authorization(side, sealed, key_fingerprint, generation, Utc::now())
            .await
            .context(operation)
    }

    async fn append_admin_action(&self, action: &AdminAction) -> Result<i64, StoreError> {
        let operation = || format!("record the admin action {}", action.action);
        let mut session = self.session(Access::Single).await.context(operation)?;
        append_admin_action(&mut session, action).await
    }

    async fn admin_actions(&self, limit: u32) -> Result<Vec<(i64, AdminAction)>, StoreError> {
        let operation = || "read the admin actions".to_string();
        let limit = limit.clamp(1, MAX_ADMIN_ACTIONS);
        let mut session = self.session(Access::Single).await.context(operation)?;
        let rows = session
            .admin_actions_newest(i64::from(limit))
            .await
            .context(operation)?;
        rows.into_iter()
            .map(<(i64, AdminAction)>::try_from)
            .collect()
    }

    async fn prune_before(&self, before: DateTime<Utc>, batch: u32) -> Result<Pruned, StoreError> {
        let limit = i64::from(batch.max(1));
        let mut pruned = Pruned::default();
        for (log, what, count) in [
            (
                PrunedLog::Decisions,
                "decisions recorded",
                &mut pruned.decisions,
            ),
            (
                PrunedLog::AppliedEvents,
                "events applied",
                &mut pruned.applied_events,
            ),
        ] {
            let operation = || format!("prune the {what} before {before}");
            loop {
                let mut session = self.session(Access::Single).await.context(operation)?;
                let gone = session
                    .delete_older(log, before, limit)
                    .await
                    .context(operation)?;
                *count += gone;
                if gone < limit as u64 {
                    break;
                }
            }
        }
        Ok(pruned)
    }

    async fn checkpoint(&self, topic: &str) -> Result<Option<ReplayCheckpoint>, StoreError> {
        let operation = || format!("read the replay checkpoint of {topic}");
        let mut session = self.session(Access::Single).await.context(operation)?;
        let row = session.checkpoint(topic).await.context(operation)?;
        Ok(row.map(ReplayCheckpoint::from))
    }

    async fn save_checkpoint(&self, checkpoint: &ReplayCheckpoint) -> Result<(), StoreError> {
        let operation = || format!("save the replay checkpoint of {}", checkpoint.topic);
        let mut session = self.session(Access::Single).await.context(operation)?;
        session.save_checkpoint(checkpoint).await.context(operation)
    }

    async fn save_checkpoint_as(
        &self,
        checkpoint: &ReplayCheckpoint,
        claim: &LeaseClaim,
    ) -> Result<(), StoreError> {
        let operation = || {
            format!(
                "save the replay checkpoint of {} as {} (epoch {})",
                checkpoint.topic, claim.holder, claim.epoch
            )
        };
        let mut session = self.session(Access::Write).await.context(operation)?;
        if !session.holds_lease(claim).await.context(operation)? {
            return Err(StoreError::LeaseLost {
                name: claim.name.clone(),
                holder: claim.holder.clone(),
                epoch: claim.epoch,
            });
        }
        session
            .save_checkpoint(checkpoint)
            .await
            .context(operation)?;
        session.commit().await.context(operation)
    }

    async fn take_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<LeaseAnswer, StoreError> {
        let operation = || format!("take lease {name:?} for {holder}");
        let mut session = self.session(Access::Write).await.context(operation)?;
        let now = Utc::now();
        let answer = match session
            .take_lease(name, holder, ttl, now)
            .await
            .context(operation)?
        {
            Some(taken) => LeaseAnswer::Granted(Lease::from(taken)),
            None => {
                let held = session.lease(name, now).await.context(operation)?;
                // Refused only because a valid row exists, so it is there to be read.
                let held = held.ok_or_else(|| StoreError::Corrupt {
                    table: "subscriber_leases",
                    column: "name",
                    value: name.to_owned(),
                    problem: "the lease was refused but has no row".into(),
                })?;
                LeaseAnswer::HeldBy(Lease::from(held))
            }
        };
        session.commit().await.context(operation)?;
        Ok(answer)
    }

    async fn renew_lease(
        &self,
        claim: &LeaseClaim,
        ttl: std::time::Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let operation = || {
            format!(
                "renew lease {:?} of {} (epoch {})",
                claim.name, claim.holder, claim.epoch
            )
        };
        let mut session = self.session(Access::Single).await.context(operation)?;
        let renewed = session
            .renew_lease(claim, ttl, Utc::now())
            .await
            .context(operation)?;
        Ok(renewed.map(Lease::from))
    }

    async fn release_lease(&self, claim: &LeaseClaim) -> Result<(), StoreError> {
        let operation = || {
            format!(
                "release lease {:?} of {} (epoch {})",
                claim.name, claim.holder, claim.epoch
            )
        };
        let mut session = self.session(Access::Single).await.context(operation)?;
        session
            .release_lease(claim, Utc::now())
            .await
            .context(operation)
    }

    async fn lease(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        let operation = || format!("read lease {name:?}");
        let mut session = self.session(Access::Single).await.context(operation)?;
        let row = session.lease(name, Utc::now()).await.context(operation)?;
        Ok(row.map(Lease::from))
    }

    async fn last_known_users(
        &self,
        org_id: &SalesforceId,
        ids: &[SalesforceId],
    ) -> Result<Vec<SalesforceUser>, StoreError> {
        let operation = || {
            format!(
                "read the subscriber's last-known state of {} users of org {org_id}",
                ids.len()
            )
        };
        let ids: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
        let mut session = self.session(Access::Single).await.context(operation)?;
        let rows = session
            .subscriber_users_by_id(org_id.as_str(), &ids)
            .await
            .context(operation)?;
        rows.into_iter().map(SalesforceUser::try_from).collect()
    }

    async fn newest_commit(
        &self,
        org_id: &SalesforceId,
    ) -> Result<Option<(i64, DateTime<Utc>)>, StoreError> {
        let operation = || format!("read the newest commit the subscriber saw of org {org_id}");
        let mut session = self.session(Access::Single).await.context(operation)?;
        session
            .newest_subscriber_commit(org_id.as_str())
            .await
            .context(operation)
    }

    async fn put_last_known_users(
        &self,
        org_id: &SalesforceId,
        users: &[(SalesforceUser, Option<Position>)],
    ) -> Result<(), StoreError> {
        let operation = || {
            format!(
                "store the subscriber's last-known state of {} users of org {org_id}",
                users.len()
            )
        };
        let now = Utc::now();
        let mut session = self.session(Access::Write).await.context(operation)?;
        for (user, position) in users {
            let written = session
                .upsert_subscriber_user(org_id.as_str(), user, position.as_ref(), now)
                .await
                .context(|| {
                    format!(
                        "store the subscriber's last-known state of user {} of org {org_id}",
                        user.id
                    )
                })?;
            if !written {
                tracing::debug!(
                    org = %org_id,
                    user = %user.id,
                    ?position,
                    "kept the subscriber's stored state of a user: its position is newer"
                );
            }
        }
        session.commit().await.context(operation)
    }
}

/// Gathers the closure described on [`Store::load_state`].
async fn load_state<S: Statements + Send>(
    session: &mut S,
    scope: &StateScope,
) -> Result<SyncState, StoreError> {
    let operation = || format!("load the state of {scope:?}");
    let mut salesforce: BTreeMap<SalesforceId, SalesforceUser> = BTreeMap::new();
    let mut outreach: BTreeMap<OutreachUserId, OutreachUser> = BTreeMap::new();

    // The users the event names, and through their stored emails the groups they may leave.
    let listed: Vec<String> = scope
        .salesforce_user_ids
        .iter()
        .map(|id| id.to_string())
        .collect();
    for row in session
        .salesforce_users_by_id(&listed)
        .await
        .context(operation)?
    {
        let user = SalesforceUser::try_from(row)?;
        salesforce.insert(user.id.clone(), user);
    }
    // The Outreach users the event names: their stored emails are groups they may leave. And
    // the Outreach users the listed Salesforce users are mapped to: after an email change their
    // group is a third one the event can change (engine::decide, kept links).
    let mut outreach_ids: Vec<i64> = scope.outreach_user_ids.iter().map(|id| id.0).collect();
    outreach_ids.extend(
        session
            .mappings_touching(&[], &listed)
            .await
            .context(operation)?
            .into_iter()
            .map(Mapping::try_from)
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .map(|m| m.outreach_user_id.0),
    );
    for row in session
        .outreach_users_by_id(&outreach_ids)
        .await
        .context(operation)?
    {
        let user = OutreachUser::from(row);
        outreach.insert(user.id, user);
    }
    let mut emails: BTreeSet<String> = scope.emails.iter().map(|e| normalize_email(e)).collect();
    emails.extend(
        salesforce
            .values()
            .filter_map(SalesforceUser::email_normalized),
    );
    emails.extend(outreach.values().map(OutreachUser::email_normalized));
    emails.remove("");
    let emails: Vec<String> = emails.into_iter().collect();

    // Both sides of every email group involved.
    for row in session
        .salesforce_users_by_email(&emails)
        .await
        .context(operation)?
    {
        let user = SalesforceUser::try_from(row)?;
        salesforce.insert(user.id.clone(), user);
    }
    for row in session
        .outreach_users_by_email(&emails)
        .await
        .context(operation)?
    {
        let user = OutreachUser::from(row);
        outreach.insert(user.id, user);
    }

    // The mappings of every loaded user, and whoever is at their other end.
    let outreach_ids: Vec<i64> = outreach.keys().map(|id| id.0).collect();
    let salesforce_ids: Vec<String> = salesforce.keys().map(|id| id.to_string()).collect();
    let mappings = session
        .mappings_touching(&outreach_ids, &salesforce_ids)
        .await
        .context(operation)?
        .into_iter()
        .map(Mapping::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    let missing_salesforce: Vec<String> = mappings
        .iter()
        .filter(|m| !salesforce.contains_key(&m.salesforce_user_id))
        .map(|m| m.salesforce_user_id.to_string())
        .collect();
    let missing_outreach: Vec<i64> = mappings
        .iter()
        .filter(|m| !outreach.contains_key(&m.outreach_user_id))
        .map(|m| m.outreach_user_id.0)
        .collect();
    for row in session
        .salesforce_users_by_id(&missing_salesforce)
        .await
        .context(operation)?
    {
        let user = SalesforceUser::try_from(row)?;
        salesforce.insert(user.id.clone(), user);
    }
    for row in session
        .outreach_users_by_id(&missing_outreach)
        .await
        .context(operation)?
    {
        let user = OutreachUser::from(row);
        outreach.insert(user.id, user);
    }

    let applied = session
        .applied_among(&scope.event_ids)
        .await
        .context(operation)?;

    // The versions of every part read, so that `record` can tell whether any moved: the
    // scope's groups (an empty one too: a user may join it), the group of every loaded user,
    // and the Salesforce users the event names (known or not yet).
    let mut parts: BTreeSet<String> = emails.iter().map(|e| email_part(e)).collect();
    parts.extend(
        salesforce
            .values()
            .flat_map(SalesforceUser::email_normalized)
            .map(|e| email_part(&e)),
    );
    parts.extend(
        outreach
            .values()
            .map(OutreachUser::email_normalized)
            .filter(|e| !e.is_empty())
            .map(|e| email_part(&e)),
    );
    parts.extend(scope.salesforce_user_ids.iter().map(salesforce_part));
    let parts: Vec<String> = parts.into_iter().collect();
    let mut versions: StateVersions = parts.iter().map(|part| (part.clone(), 0)).collect();
    versions.extend(session.versions_of(&parts).await.context(operation)?);

    let mut state = SyncState::new();
    state.set_versions(versions);
    salesforce
        .into_values()
        .for_each(|u| state.put_salesforce_user(u));
    outreach
        .into_values()
        .for_each(|u| state.put_outreach_user(u));
    for mapping in mappings {
        let described = format!(
            "{} -> {}",
            mapping.outreach_user_id, mapping.salesforce_user_id
        );
        state.map(mapping).map_err(|e| StoreError::Corrupt {
            table: "mappings",
            column: "salesforce_user_id",
            value: described,
            problem: e.to_string(),
        })?;
    }
    applied.into_iter().for_each(|id| state.mark_applied(id));
    Ok(state)
}

/// Writes one applied event; an event already in the log writes nothing.
async fn record<S: Statements + Send>(
    session: &mut S,
    applied: &AppliedEvent,
) -> Result<(), StoreError> {
    let event = &applied.event_id;
    // First, so that a concurrent writer of the same event waits here and then sees it applied.
    let first_time = session
        .insert_applied_event(event, Utc::now())
        .await
        .context(|| format!("log event {event} as applied"))?;
    if !first_time {
        return Ok(());
    }
    // Every part the record writes, as stored now and as written, moves to a new version with
    // those it was decided on; one of those having moved already refuses the whole record.
    let salesforce_ids: Vec<SalesforceId> = applied
        .salesforce_user
        .iter()
        .map(|u| u.id.clone())
        .collect();
    let outreach_ids: Vec<OutreachUserId> = applied.outreach_users.iter().map(|u| u.id).collect();
    let mut parts = stored_parts(session, &salesforce_ids, &outreach_ids)
        .await
        .context(|| format!("read what event {event} changes"))?;
    let mut mapped_salesforce = Vec::new();
    let mut mapped_outreach = Vec::new();
    for change in &applied.mapping_changes {
        match change {
            MappingWrite::Put(m) => {
                mapped_salesforce.push(m.salesforce_user_id.clone());
                mapped_outreach.push(m.outreach_user_id);
            }
            MappingWrite::Remove(id) => mapped_outreach.push(*id),
        }
    }
    parts.extend(mapping_parts(session, &mapped_salesforce, &mapped_outreach).await?);
    parts.extend(applied.salesforce_user.iter().flat_map(salesforce_parts));
    parts.extend(applied.outreach_users.iter().flat_map(outreach_parts));
    if let Some((part, read)) = advance_versions(session, &applied.read_versions, parts)
        .await
        .context(|| format!("check the state event {event} was decided on"))?
    {
        return Err(StoreError::StaleState {
            event_id: event.clone(),
            part,
            read,
        });
    }
    if let Some(user) = &applied.salesforce_user {
        session
            .upsert_salesforce_user(user)
            .await
            .context(|| format!("store Salesforce user {} for event {event}", user.id))?;
    }
    for user in &applied.outreach_users {
        session
            .upsert_outreach_user(user, false)
            .await
            .context(|| format!("store Outreach user {} for event {event}", user.id))?;
    }
    for change in &applied.mapping_changes {
        match change {
            MappingWrite::Put(mapping) => put_mapping(session, mapping).await?,
            MappingWrite::Remove(id) => {
                session.delete_mapping(id.0).await.context(|| {
                    format!("remove the mapping of Outreach user {id} for event {event}")
                })?;
            }
        }
    }
    for decision in &applied.decisions {
        session
            .append_decision(decision)
            .await
            .context(|| format!("append a {} decision of event {event}", decision.action))?;
    }
    Ok(())
}

/// Adds a mapping unless one of its sides is mapped elsewhere. The schema has the last word:
/// a conflict a concurrent writer created after the check is refused by the unique keys.
async fn put_mapping<S: Statements + Send>(
    session: &mut S,
    mapping: &Mapping,
) -> Result<(), StoreError> {
    let operation = || {
        format!(
            "map Outreach user {} to Salesforce user {}",
            mapping.outreach_user_id, mapping.salesforce_user_id
        )
    };
    let holders = session
        .mappings_touching(
            &[mapping.outreach_user_id.0],
            &[mapping.salesforce_user_id.to_string()],
        )
        .await
        .context(operation)?;
    for holder in holders {
        let holder = Mapping::try_from(holder)?;
        if holder.outreach_user_id != mapping.outreach_user_id
            || holder.salesforce_user_id != mapping.salesforce_user_id
        {
            return Err(StoreError::MappingConflict {
                wanted: mapping.clone(),
                existing: Some(holder),
            });
        }
    }
    match session.upsert_mapping(mapping).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(StoreError::MappingConflict {
            wanted: mapping.clone(),
            existing: None,
        }),
        Err(sqlx::Error::Database(e)) if e.kind() == ErrorKind::UniqueViolation => {
            Err(StoreError::MappingConflict {
                wanted: mapping.clone(),
                existing: None,
            })
        }
        Err(sqlx::Error::Database(e)) if e.kind() == ErrorKind::ForeignKeyViolation => {
            Err(StoreError::UnknownMappedUser {
                outreach_user_id: mapping.outreach_user_id,
                salesforce_user_id: mapping.salesforce_user_id.clone(),
            })
        }
        Err(e) => Err(e).context(operation),
    }
}

/// Appends one admin action, its detail as JSON text, with its actor; its sequence number.
async fn append_admin_action<S: Statements + Send>(
    session: &mut S,
    action: &AdminAction,
) -> Result<i64, StoreError> {
    let detail = action.detail.to_string();
    session
        .append_admin_action(
            action.at,
            action.action.as_str(),
            &detail,
            action.actor.as_deref(),
        )
        .await
        .context(|| format!("record the admin action {}", action.action))
}

/// The versioned part of an email group.
fn email_part(email_normalized: &str) -> String {
    format!("email:{email_normalized}")
}

/// The versioned part of one Salesforce user (for the events that name it).
fn salesforce_part(id: &SalesforceId) -> String {
    format!("salesforce:{id}")
}

/// The parts a Salesforce user's row belongs to with the state given.
fn salesforce_parts(user: &SalesforceUser) -> Vec<String> {
    let mut parts = vec![salesforce_part(&user.id)];
    parts.extend(user.email_normalized().map(|e| email_part(&e)));
    parts
}

/// The part an Outreach user's row belongs to with the state given.
fn outreach_parts(user: &OutreachUser) -> Option<String> {
    Some(user.email_normalized())
        .filter(|e| !e.is_empty())
        .map(|e| email_part(&e))
}

/// The parts the stored rows of these users belong to now (a user not stored has none, but a
/// Salesforce user's own part is named anyway).
async fn stored_parts<S: Statements + Send>(
    session: &mut S,
    salesforce_ids: &[SalesforceId],
    outreach_ids: &[OutreachUserId],
) -> sqlx::Result<BTreeSet<String>> {
    let mut parts: BTreeSet<String> = salesforce_ids.iter().map(salesforce_part).collect();
    if !salesforce_ids.is_empty() {
        let ids: Vec<String> = salesforce_ids.iter().map(|id| id.to_string()).collect();
        for row in session.salesforce_users_by_id(&ids).await? {
            parts.extend(
                row.email
                    .as_deref()
                    .map(normalize_email)
                    .filter(|e| !e.is_empty())
                    .map(|e| email_part(&e)),
            );
        }
    }
    if !outreach_ids.is_empty() {
        let ids: Vec<i64> = outreach_ids.iter().map(|id| id.0).collect();
        for row in session.outreach_users_by_id(&ids).await? {
            parts.extend(outreach_parts(&OutreachUser::from(row)));
        }
    }
    Ok(parts)
}

/// The parts of the users named and of whoever they are mapped to now: a mapping row belongs
/// to the parts of both its users.
async fn mapping_parts<S: Statements + Send>(
    session: &mut S,
    salesforce_ids: &[SalesforceId],
    outreach_ids: &[OutreachUserId],
) -> Result<BTreeSet<String>, StoreError> {
    let mut salesforce: BTreeSet<SalesforceId> = salesforce_ids.iter().cloned().collect();
    let mut outreach: BTreeSet<OutreachUserId> = outreach_ids.iter().copied().collect();
    if !salesforce.is_empty() || !outreach.is_empty() {
        let listed: Vec<String> = salesforce.iter().map(|id| id.to_string()).collect();
        let ids: Vec<i64> = outreach.iter().map(|id| id.0).collect();
        let rows = session
            .mappings_touching(&ids, &listed)
            .await
            .context(|| "read the mappings of the users written".into())?;
        for row in rows {
            let mapping = Mapping::try_from(row)?;
            salesforce.insert(mapping.salesforce_user_id);
            outreach.insert(mapping.outreach_user_id);
        }
    }
    let salesforce: Vec<SalesforceId> = salesforce.into_iter().collect();
    let outreach: Vec<OutreachUserId> = outreach.into_iter().collect();
    stored_parts(session, &salesforce, &outreach)
        .await
        .context(|| "read the users of the mappings written".into())
}

/// Moves every part named to its next version, those of `read` only when still at the
/// version read; the first part that moved is returned (and the caller must roll back).
/// Parts go in one order (sorted) for every writer, so two writers never wait for each other
/// in a circle.
async fn advance_versions<S: Statements + Send>(
    session: &mut S,
    read: &StateVersions,
    parts: BTreeSet<String>,
) -> sqlx::Result<Option<(String, i64)>> {
    let mut parts = parts;
    parts.extend(read.keys().cloned());
    for part in parts {
        let expected = read.get(&part).copied();
        if !session.advance_version(&part, expected).await? {
            return Ok(Some((part, expected.unwrap_or_default())));
        }
    }
    Ok(None)
}

/// Upserts Outreach users after moving the versions of the parts they leave and join.
async fn put_outreach_users<S: Statements + Send>(
    session: &mut S,
    users: &[OutreachUser],
    keep_newer: bool,
) -> Result<(), StoreError> {
    let ids: Vec<OutreachUserId> = users.iter().map(|u| u.id).collect();
    let mut parts = stored_parts(session, &[], &ids)
        .await
        .context(|| "read the Outreach users written".into())?;
    parts.extend(users.iter().flat_map(outreach_parts));
    advance_versions(session, &StateVersions::new(), parts)
        .await
        .context(|| "move the versions of the Outreach users written".into())?;
    for user in users {
        let written = session
            .upsert_outreach_user(user, keep_newer)
            .await
            .context(|| format!("store Outreach user {}", user.id))?;
        if !written {
            tracing::debug!(
                outreach_user_id = user.id.0,
                "kept a newer stored state of an Outreach user"
            );
        }
    }
    Ok(())
}

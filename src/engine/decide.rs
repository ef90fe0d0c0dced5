//! The rules of `decisions.md` as one pure function.
//!
//! One event can change the answer for two email groups: the one its user is in now, and the
//! one it left when its email changed. Both are evaluated, the group left first, against a view
//! of the state with the event's new user state laid over it and with the mapping changes of
//! the first evaluation visible to the second. The rules look at the whole group, not only at
//! the event's user, which is what makes the end state independent of delivery order: whichever
//! event of a group arrives last sees the group's final Salesforce state and decides from it.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use crate::engine::decision::{Action, Decision, MappingChange, OutreachCall, Reason};
use crate::engine::settings::SyncSettings;
use crate::engine::state::{Mapping, SyncState};
use crate::model::event::{Source, UserChange};
use crate::model::outreach_user::{OutreachUser, OutreachUserId, UserAttributes};
use crate::model::salesforce_id::SalesforceId;
use crate::model::salesforce_user::SalesforceUser;

/// What one event leads to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    pub decisions: Vec<Decision>,
    /// The Salesforce user's new last-known state, to record.
    pub salesforce_user: Option<SalesforceUser>,
    /// The Outreach user's new state in the index (Outreach events).
    pub outreach_user: Option<OutreachUser>,
    /// Whether the event id is to be recorded as applied (false for a duplicate).
    pub record_event: bool,
}

/// Decides what one event means for its email group(s).
pub fn decide(settings: &SyncSettings, state: &SyncState, event: &UserChange) -> Outcome {
    if state.is_applied(&event.event_id) {
        let mut d = Decision::note(
            Action::Skip,
            Reason::DuplicateEvent,
            format!(
                "Event {} was already applied; nothing to do.",
                event.event_id
            ),
        )
        .email(event.user.email_normalized.as_deref());
        if let Some(id) = event.salesforce_user_id() {
            d = d.salesforce(&id);
        }
        return Outcome {
            decisions: vec![d],
            record_event: false,
            ..Default::default()
        };
    }
    match event.source {
        Source::Salesforce => decide_salesforce(settings, state, event),
        Source::Outreach => decide_outreach(settings, state, event),
    }
}

fn decide_salesforce(settings: &SyncSettings, state: &SyncState, event: &UserChange) -> Outcome {
    let Some(id) = event.salesforce_user_id() else {
        // Validation rejects such events before they reach the engine; say so if one slips by.
        return Outcome {
            decisions: vec![Decision::note(
                Action::Skip,
                Reason::InvalidEvent,
                format!("Event {} has no valid Salesforce user id.", event.event_id),
            )],
            record_event: true,
            ..Default::default()
        };
    };
    let previous = state.salesforce_user(&id);
    if let Some(applied) = previous.and_then(|p| p.applied.as_ref())
        && event.position().compare(applied) != Ordering::Greater
    {
        let d = Decision::note(
                Action::Skip,
                Reason::StaleEvent,
                format!(
                    "Event {} is not newer than the change already applied to Salesforce user {id}; nothing to do.",
                    event.event_id
                ),
            )
            .salesforce(&id)
            .email(event.user.email_normalized.as_deref());
        return Outcome {
            decisions: vec![d],
            record_event: true,
            ..Default::default()
        };
    }

    let mut user = SalesforceUser::from_event(id.clone(), event);
    if event.change == crate::model::event::ChangeKind::Delete {
        // Users cannot be deleted in Salesforce: a delete reads as a deactivation, and the
        // all-null body of a delete must not wipe what was known.
        if let Some(prev) = previous {
            user = SalesforceUser {
                is_active: false,
                applied: user.applied,
                ..prev.clone()
            };
        }
    }
    let old_email = previous.and_then(SalesforceUser::email_normalized);
    let new_email = user.email_normalized();

    let mut view = View::new(state);
    view.salesforce_override = Some(user.clone());
    let trigger = Trigger::Salesforce(id.clone());
    let mut decisions = Vec::new();
    if let Some(old) = old_email
        .as_deref()
        .filter(|old| Some(*old) != new_email.as_deref())
    {
        decisions.extend(evaluate_group(settings, &mut view, old, &trigger));
    }
    // A kept link after an email change: the user's Outreach user is in a third group, which
    // this event can change too (its deactivation frees the Outreach user for a replacement).
    let linked_email = state
        .mapping_of_salesforce(&id)
        .and_then(|m| state.outreach_user(m.outreach_user_id))
        .map(OutreachUser::email_normalized)
        .filter(|e| Some(e) != old_email.as_ref() && Some(e) != new_email.as_ref());
    if let Some(linked) = linked_email.as_deref() {
        decisions.extend(evaluate_group(settings, &mut view, linked, &trigger));
    }
    match new_email.as_deref() {
        Some(email) => decisions.extend(evaluate_group(settings, &mut view, email, &trigger)),
        None => decisions.push(
            Decision::note(
                Action::Skip,
                Reason::NoEmail,
                format!("Salesforce user {id} has no email, so it cannot be matched to an Outreach user."),
            )
            .salesforce(&id),
        ),
    }
    if !decisions.iter().any(|d| d.concerns(&id)) {
        decisions.push(note_for_trigger(&view, &user, new_email.as_deref()));
    }
    Outcome {
        decisions,
        salesforce_user: Some(user),
        outreach_user: None,
        record_event: true,
    }
}

fn decide_outreach(settings: &SyncSettings, state: &SyncState, event: &UserChange) -> Outcome {
    let Some(id) = event.user_id.parse::<i64>().ok().map(OutreachUserId) else {
        return Outcome {
            decisions: vec![Decision::note(
                Action::Skip,
                Reason::InvalidEvent,
                format!("Event {} has no valid Outreach user id.", event.event_id),
            )],
            record_event: true,
            ..Default::default()
        };
    };
    let previous = state.outreach_user(id);
    let position = event.outreach_time();
    if let Some(updated) = previous.and_then(|p| p.updated_at)
        && position <= updated
    {
        return Outcome {
                decisions: vec![
                    Decision::note(
                        Action::Skip,
                        Reason::StaleEvent,
                        format!(
                            "Event {} is not newer than what is known of Outreach user {id}; nothing to do.",
                            event.event_id
                        ),
                    )
                    .outreach(id),
                ],
                record_event: true,
                ..Default::default()
            };
    }
    // A webhook carries the identity attributes; keep what it does not know (title, custom
    // fields) from the index.
    let mut user = previous.cloned().unwrap_or(OutreachUser {
        id,
        email: String::new(),
        username: None,
        first_name: None,
        last_name: None,
        title: None,
        locked: false,
        custom: Default::default(),
        updated_at: None,
    });
    user.email = event.user.email.clone().unwrap_or_default();
    user.username = event.user.username.clone();
    user.first_name = event.user.first_name.clone();
    user.last_name = event.user.last_name.clone();
    user.locked = event.user.locked.unwrap_or(user.locked);
    user.updated_at = Some(position);

    let old_email = previous.map(OutreachUser::email_normalized);
    let new_email = user.email_normalized();
    let mut view = View::new(state);
    view.outreach_override = Some(user.clone());
    let trigger = Trigger::Outreach;
    let mut decisions = Vec::new();
    if let Some(old) = old_email.as_deref().filter(|old| *old != new_email) {
        decisions.extend(evaluate_group(settings, &mut view, old, &trigger));
    }
    decisions.extend(evaluate_group(settings, &mut view, &new_email, &trigger));
    if decisions.is_empty() {
        decisions.push(
            Decision::note(
                Action::Skip,
                Reason::UpToDate,
                format!("Outreach user {id} ({new_email}) is known; nothing to change."),
            )
            .outreach(id)
            .email(Some(&new_email)),
        );
    }
    Outcome {
        decisions,
        salesforce_user: None,
        outreach_user: Some(user),
        record_event: true,
    }
}

/// The user whose event is being decided.
enum Trigger {
    Salesforce(SalesforceId),
    Outreach,
}

impl Trigger {
    fn is(&self, id: &SalesforceId) -> bool {
        matches!(self, Trigger::Salesforce(t) if t == id)
    }
}

/// The state as the engine sees it while deciding one event: the stored state, the event's
/// new user state, and the mapping changes already planned for this event.
struct View<'a> {
    state: &'a SyncState,
    salesforce_override: Option<SalesforceUser>,
    outreach_override: Option<OutreachUser>,
    /// Planned mapping changes: Outreach user -> its mapping (None = unmapped).
    outreach_mapping: BTreeMap<OutreachUserId, Option<Mapping>>,
    /// Planned mapping changes: Salesforce user -> mapped or not.
    salesforce_mapped: BTreeMap<SalesforceId, bool>,
}

impl<'a> View<'a> {
    fn new(state: &'a SyncState) -> Self {
        Self {
            state,
            salesforce_override: None,
            outreach_override: None,
            outreach_mapping: BTreeMap::new(),
            salesforce_mapped: BTreeMap::new(),
        }
    }

    fn salesforce_user(&self, id: &SalesforceId) -> Option<&SalesforceUser> {
        match &self.salesforce_override {
            Some(u) if &u.id == id => Some(u),
            _ => self.state.salesforce_user(id),
        }
    }

    /// The Salesforce users of group `email`, with the event's user where its new email says.
    fn salesforce_group(&self, email: &str) -> Vec<&SalesforceUser> {
        let overridden = self.salesforce_override.as_ref();
        let mut members: Vec<&SalesforceUser> = self
            .state
            .salesforce_group(email)
            .filter(|u| overridden.is_none_or(|o| o.id != u.id))
            .collect();
        if let Some(o) = overridden
            && o.email_normalized().as_deref() == Some(email)
        {
            members.push(o);
        }
        members
    }

    fn outreach_group(&self, email: &str) -> Vec<&OutreachUser> {
        let overridden = self.outreach_override.as_ref();
        let mut members: Vec<&OutreachUser> = self
            .state
            .outreach_group(email)
            .filter(|u| overridden.is_none_or(|o| o.id != u.id))
            .collect();
        if let Some(o) = overridden
            && o.email_normalized() == email
        {
            members.push(o);
        }
        members
    }

    fn mapping_of_outreach(&self, id: OutreachUserId) -> Option<Mapping> {
        match self.outreach_mapping.get(&id) {
            Some(planned) => planned.clone(),
            None => self.state.mapping_of_outreach(id).cloned(),
        }
    }

    fn is_mapped(&self, id: &SalesforceId) -> bool {
        match self.salesforce_mapped.get(id) {
            Some(&mapped) => mapped,
            None => self.state.mapping_of_salesforce(id).is_some(),
        }
    }

    fn plan_mapping(&mut self, outreach: OutreachUserId, to: Option<Mapping>) {
        if let Some(old) = self.mapping_of_outreach(outreach) {
            self.salesforce_mapped.insert(old.salesforce_user_id, false);
        }
        if let Some(new) = &to {
            self.salesforce_mapped
                .insert(new.salesforce_user_id.clone(), true);
        }
        self.outreach_mapping.insert(outreach, to);
    }
}

/// The active Salesforce users of a group that no Outreach user is mapped to, best first:
/// newest `created_date`, then greatest id.
fn active_candidates<'v>(
    view: &View<'v>,
    members: &[&'v SalesforceUser],
) -> Vec<&'v SalesforceUser> {
    let mut candidates: Vec<&SalesforceUser> = members
        .iter()
        .copied()
        .filter(|u| u.is_active && !view.is_mapped(&u.id))
        .collect();
    candidates.sort_by(|a, b| {
        b.created_date
            .cmp(&a.created_date)
            .then_with(|| b.id.cmp(&a.id))
    });
    candidates
}

/// The attributes that would make `outreach` show `user` (names, title, id mirror); empty when
/// they already agree.
fn attributes_for(
    settings: &SyncSettings,
    outreach: &OutreachUser,
    user: &SalesforceUser,
    with_names: bool,
) -> UserAttributes {
    let mut attrs = UserAttributes::default();
    if with_names {
        if outreach.first_name != user.first_name {
            attrs.first_name = Some(user.first_name.clone());
        }
        if outreach.last_name != user.last_name {
            attrs.last_name = Some(user.last_name.clone());
        }
        if outreach.title != user.title {
            attrs.title = Some(user.title.clone());
        }
    }
    if let Ok(Some(slot)) = settings.mirror_slot() {
        let id = Some(user.id.to_string());
        if outreach.custom[slot] != id {
            attrs.custom[slot] = Some(id);
        }
    }
    attrs
}

fn patch(id: OutreachUserId, attrs: UserAttributes) -> Option<OutreachCall> {
    (!attrs.is_empty()).then_some(OutreachCall::Update(id, attrs))
}

fn others_note(candidates: &[SalesforceUser]) -> String {
    match candidates.len() {
        0 | 1 => String::new(),
        n => format!(
            " {} other active Salesforce users share this email ({}); the newest was chosen.",
            n - 1,
            candidates[1..]
                .iter()
                .map(|u| u.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Evaluates rules 1–5 for one email group and plans the decisions.
fn evaluate_group(
    settings: &SyncSettings,
    view: &mut View<'_>,
    email: &str,
    trigger: &Trigger,
) -> Vec<Decision> {
    let members = view.salesforce_group(email);
    let outreach_members = view.outreach_group(email);
    let mapping_settings = &settings.user_mapping;

    if outreach_members.len() > 1 {
        let ids: Vec<String> = outreach_members.iter().map(|o| o.id.to_string()).collect();
        let mut d = Decision::note(
            Action::Conflict,
            Reason::MultipleOutreachUsers,
            format!(
                "Outreach users {} all have email {email}; Outreach allows one. An admin must rename all but one.",
                ids.join(", ")
            ),
        )
        .email(Some(email));
        if let Trigger::Salesforce(id) = trigger {
            d = d.salesforce(id);
        }
        return vec![d];
    }
    let candidates: Vec<SalesforceUser> = active_candidates(view, &members)
        .into_iter()
        .cloned()
        .collect();
    let outreach = outreach_members.first().map(|o| (*o).clone());

    let Some(outreach) = outreach else {
        // Rule 3: no Outreach user has this email.
        let Some(best) = candidates.first() else {
            return Vec::new();
        };
        if !mapping_settings.inbound_create {
            return candidates
                .iter()
                .map(|y| {
                    Decision::note(
                        Action::Skip,
                        Reason::InboundCreateDisabled,
                        format!(
                            "Salesforce user {} ({email}) has no Outreach user, and User <> User Create is off.",
                            y.id
                        ),
                    )
                    .salesforce(&y.id)
                    .email(Some(email))
                })
                .collect();
        }
        let mut attrs = UserAttributes {
            email: best.email.as_deref().map(|e| e.trim().to_string()),
            first_name: Some(best.first_name.clone()),
            last_name: Some(best.last_name.clone()),
            title: Some(best.title.clone()),
            ..Default::default()
        };
        if let Ok(Some(slot)) = settings.mirror_slot() {
            attrs.custom[slot] = Some(Some(best.id.to_string()));
        }
        let mut out = vec![
            Decision::note(
                Action::Create,
                Reason::NewActiveUser,
                format!(
                    "Created an Outreach user for Salesforce user {} ({email}), which had none.",
                    best.id
                ),
            )
            .salesforce(&best.id)
            .email(Some(email))
            .call(OutreachCall::Create(attrs))
            .mapping(MappingChange::Map {
                salesforce_user_id: best.id.clone(),
            }),
        ];
        let best_id = best.id.clone();
        for other in &candidates[1..] {
            out.push(
                Decision::note(
                    Action::Conflict,
                    Reason::MultipleActiveSalesforceUsers,
                    format!(
                        "Salesforce users {} and {} are both active with email {email}; Outreach allows one user per email, so {} was not created.",
                        best_id, other.id, other.id
                    ),
                )
                .salesforce(&other.id)
                .email(Some(email)),
            );
        }
        view.salesforce_mapped.insert(best_id, true);
        return out;
    };

    match view.mapping_of_outreach(outreach.id) {
        Some(mapping) => evaluate_mapped(
            settings,
            view,
            email,
            trigger,
            &outreach,
            &mapping,
            &candidates,
        ),
        None => evaluate_unmapped(settings, view, email, &outreach, &candidates),
    }
}

/// Rule 1 (and 4): the group's Outreach user O is mapped to Salesforce user M.
fn evaluate_mapped(
    settings: &SyncSettings,
    view: &mut View<'_>,
    email: &str,
    trigger: &Trigger,
    outreach: &OutreachUser,
    mapping: &Mapping,
    candidates: &[SalesforceUser],
) -> Vec<Decision> {
    let m = &settings.user_mapping;
    let mapped_id = mapping.salesforce_user_id.clone();
    let mapped = view.salesforce_user(&mapped_id).cloned();
    let o = outreach.id;
    let Some(known) = mapped.as_ref() else {
        // Never move a mapping on a guess: the mapped user's state arrives with its own event,
        // or with the initial load, and the group is decided again then.
        return vec![
            Decision::note(
                Action::Skip,
                Reason::MappedUserUnknown,
                format!(
                    "Outreach user {o} ({email}) is mapped to Salesforce user {mapped_id}, whose state usersync has not seen yet; nothing moves until it has."
                ),
            )
            .outreach(o)
            .previous(&mapped_id)
            .email(Some(email)),
        ];
    };
    let mapped_active = known.is_active;
    let mut out = Vec::new();

    if mapped_active {
        let mapped = known.clone();
        let diverged = mapped.email_normalized().as_deref() != Some(email);
        if diverged {
            // The link stays with M, so a lock usersync set only because M was inactive has
            // lost its reason. Lifted on any event of the group, like the undiverged unlock;
            // names stay, since O no longer shares M's email.
            if needs_unlock(outreach, mapping) {
                out.extend(refresh_mapped(settings, outreach, mapping, &mapped, false));
            }
            if trigger.is(&mapped_id) {
                out.push(
                    Decision::note(
                        Action::Skip,
                        Reason::EmailDiverged,
                        format!(
                            "Salesforce user {mapped_id} now has email {}, but its Outreach user {o} still has {}. The link is kept; the Outreach API cannot change an email, so an admin must.",
                            mapped.email.as_deref().unwrap_or("(none)"),
                            outreach.email
                        ),
                    )
                    .outreach(o)
                    .salesforce(&mapped_id)
                    .email(Some(email)),
                );
            }
        } else if trigger.is(&mapped_id) || needs_unlock(outreach, mapping) {
            out.extend(refresh_mapped(
                settings,
                outreach,
                mapping,
                &mapped,
                trigger.is(&mapped_id),
            ));
        }
        // Rule 4: an active, unmapped user of this email meets an Outreach user held by another
        // active user. Re-evaluated with the group, so a later deactivation remaps.
        if let Trigger::Salesforce(t) = trigger
            && let Some(y) = candidates.iter().find(|c| &c.id == t)
        {
            out.push(
                    Decision::note(
                        Action::Conflict,
                        Reason::EmailMappedToOtherActiveUser,
                        format!(
                            "Salesforce user {} has email {email}, whose Outreach user {o} is mapped to active Salesforce user {mapped_id}. Deactivate one of them, or map by hand.",
                            y.id
                        ),
                    )
                    .outreach(o)
                    .salesforce(&y.id)
                    .previous(&mapped_id)
                    .email(Some(email)),
                );
        }
        return out;
    }

    // M is inactive.
    if m.auto_remap_on_inactive {
        if let Some(y) = candidates.first() {
            let mut attrs = attributes_for(settings, outreach, y, true);
            let unlock = needs_unlock(outreach, mapping);
            if unlock {
                attrs.locked = Some(false);
            }
            let d = Decision::note(
                Action::Remap,
                Reason::MappedUserInactive,
                format!(
                    "Remapped Outreach user {o} ({email}) from inactive Salesforce user {mapped_id} to active Salesforce user {}.{}",
                    y.id,
                    others_note(candidates)
                ),
            )
            .outreach(o)
            .salesforce(&y.id)
            .previous(&mapped_id)
            .email(Some(email))
            .mapping(MappingChange::Remap {
                from: mapped_id.clone(),
                to: y.id.clone(),
            });
            let d = match patch(o, attrs) {
                Some(call) => d.call(call),
                None => d,
            };
            view.plan_mapping(
                o,
                Some(Mapping {
                    outreach_user_id: o,
                    salesforce_user_id: y.id.clone(),
                    locked_by_usersync: false,
                }),
            );
            return vec![d];
        }
    } else {
        // Remapping is off: the replacement needs a human. Say so when the replacement or the
        // deactivated user is the event's user.
        let replacement = match trigger {
            Trigger::Salesforce(t) if t == &mapped_id => candidates.first(),
            Trigger::Salesforce(t) => candidates.iter().find(|c| &c.id == t),
            Trigger::Outreach => None,
        };
        if let Some(y) = replacement {
            out.push(
                Decision::note(
                    Action::Conflict,
                    Reason::AutoRemapDisabled,
                    format!(
                        "Salesforce user {} is active with email {email}, whose Outreach user {o} is mapped to inactive Salesforce user {mapped_id}. \"Automatically remap when Salesforce User is marked Inactive\" is off: map by hand or turn it on.",
                        y.id
                    ),
                )
                .outreach(o)
                .salesforce(&y.id)
                .previous(&mapped_id)
                .email(Some(email)),
            );
        }
    }
    if m.lock_when_inactive && !outreach.locked {
        let lock = UserAttributes {
            locked: Some(true),
            ..Default::default()
        };
        out.push(
            Decision::note(
                Action::Lock,
                Reason::MappedUserInactive,
                format!(
                    "Locked Outreach user {o} ({email}): its Salesforce user {mapped_id} is inactive and no active user replaces it."
                ),
            )
            .outreach(o)
            .salesforce(&mapped_id)
            .email(Some(email))
            .call(OutreachCall::Update(o, lock))
            .mapping(MappingChange::LockedByUsersync(true)),
        );
    } else if trigger.is(&mapped_id) && out.is_empty() {
        out.push(
            Decision::note(
                Action::Skip,
                Reason::NoActiveReplacement,
                format!(
                    "Salesforce user {mapped_id} is inactive; no active user with email {email} replaces it, so Outreach user {o} stays mapped to it."
                ),
            )
            .outreach(o)
            .salesforce(&mapped_id)
            .email(Some(email)),
        );
    }
    out
}

fn needs_unlock(outreach: &OutreachUser, mapping: &Mapping) -> bool {
    mapping.locked_by_usersync && outreach.locked
}

/// M is active and still holds O's email: bring O up to date with M (the event is M's, or
/// usersync's own lock must be lifted).
fn refresh_mapped(
    settings: &SyncSettings,
    outreach: &OutreachUser,
    mapping: &Mapping,
    mapped: &SalesforceUser,
    event_is_mapped_users: bool,
) -> Vec<Decision> {
    let o = outreach.id;
    let email = outreach.email_normalized();
    let inbound_update = settings.user_mapping.inbound_update;
    // decisions.md: on M's own event and with inbound_update, O follows M's names, title and
    // id mirror. (Creates, links and remaps write the mirror whatever inbound_update says.)
    let mut attrs = if event_is_mapped_users && inbound_update {
        attributes_for(settings, outreach, mapped, true)
    } else {
        UserAttributes::default()
    };
    if needs_unlock(outreach, mapping) {
        attrs.locked = Some(false);
        let d = Decision::note(
            Action::Unlock,
            Reason::MappedUserReactivated,
            format!(
                "Unlocked Outreach user {o} ({email}): its Salesforce user {} is active again.",
                mapped.id
            ),
        )
        .outreach(o)
        .salesforce(&mapped.id)
        .email(Some(&email))
        .call(OutreachCall::Update(o, attrs))
        .mapping(MappingChange::LockedByUsersync(false));
        return vec![d];
    }
    if let Some(call) = patch(o, attrs) {
        return vec![
            Decision::note(
                Action::Update,
                Reason::MappedUserChanged,
                format!(
                    "Updated Outreach user {o} ({email}) from its Salesforce user {}.",
                    mapped.id
                ),
            )
            .outreach(o)
            .salesforce(&mapped.id)
            .email(Some(&email))
            .call(call),
        ];
    }
    let differs = !attributes_for(settings, outreach, mapped, true).is_empty();
    let (reason, message) = if differs && !inbound_update {
        (
            Reason::InboundUpdateDisabled,
            format!(
                "Salesforce user {}'s names or title differ from Outreach user {o}, but inbound updates are off.",
                mapped.id
            ),
        )
    } else {
        (
            Reason::UpToDate,
            format!(
                "Outreach user {o} ({email}) stays mapped to Salesforce user {}; nothing to change.",
                mapped.id
            ),
        )
    };
    vec![
        Decision::note(Action::Skip, reason, message)
            .outreach(o)
            .salesforce(&mapped.id)
            .email(Some(&email)),
    ]
}

/// Rule 2: the group's Outreach user O is not mapped to anyone.
fn evaluate_unmapped(
    settings: &SyncSettings,
    view: &mut View<'_>,
    email: &str,
    outreach: &OutreachUser,
    candidates: &[SalesforceUser],
) -> Vec<Decision> {
    let o = outreach.id;
    let Some(best) = candidates.first() else {
        return Vec::new();
    };
    if !settings.email_field.dedupe.matches_inbound() {
        return candidates
            .iter()
            .map(|y| {
                Decision::note(
                    Action::Conflict,
                    Reason::OutreachEmailTaken,
                    format!(
                        "Outreach user {o} already has email {email}, and Email <> Email Record Deduping does not match inbound (it is \"{}\"), so Salesforce user {} can neither be linked nor created.",
                        settings.email_field.dedupe.as_str(),
                        y.id
                    ),
                )
                .outreach(o)
                .salesforce(&y.id)
                .email(Some(email))
            })
            .collect();
    }
    let attrs = attributes_for(
        settings,
        outreach,
        best,
        settings.user_mapping.inbound_update,
    );
    let d = Decision::note(
        Action::Link,
        Reason::EmailMatch,
        format!(
            "Linked Outreach user {o} to Salesforce user {} by their shared email {email}.{}",
            best.id,
            others_note(candidates)
        ),
    )
    .outreach(o)
    .salesforce(&best.id)
    .email(Some(email))
    .mapping(MappingChange::Map {
        salesforce_user_id: best.id.clone(),
    });
    let d = match patch(o, attrs) {
        Some(call) => d.call(call),
        None => d,
    };
    view.plan_mapping(
        o,
        Some(Mapping {
            outreach_user_id: o,
            salesforce_user_id: best.id.clone(),
            locked_by_usersync: false,
        }),
    );
    vec![d]
}

/// The decision that explains an event whose group evaluation did not name its user.
fn note_for_trigger(view: &View<'_>, user: &SalesforceUser, email: Option<&str>) -> Decision {
    let id = &user.id;
    let email_text = email.unwrap_or("(no email)");
    let d = if !user.is_active {
        Decision::note(
            Action::Skip,
            Reason::InactiveUser,
            format!(
                "Salesforce user {id} ({email_text}) is inactive; inactive users are never created or linked."
            ),
        )
    } else if let Some(m) = view
        .state
        .mapping_of_salesforce(id)
        .filter(|_| view.is_mapped(id))
    {
        let o = m.outreach_user_id;
        let diverged = view
            .state
            .outreach_user(o)
            .is_some_and(|ou| Some(ou.email_normalized().as_str()) != email);
        if diverged {
            Decision::note(
                Action::Skip,
                Reason::EmailDiverged,
                format!(
                    "Salesforce user {id} has email {email_text}, but its Outreach user {o} has another. The link is kept; an admin must change the Outreach email."
                ),
            )
            .outreach(o)
        } else {
            Decision::note(
                Action::Skip,
                Reason::UpToDate,
                format!(
                    "Salesforce user {id} stays mapped to Outreach user {o}; nothing to change."
                ),
            )
            .outreach(o)
        }
    } else {
        Decision::note(
            Action::Skip,
            Reason::UpToDate,
            format!("Salesforce user {id} ({email_text}): nothing to change."),
        )
    };
    d.salesforce(id).email(email)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Action;
    use crate::engine::model::ModelSync;
    use crate::engine::model::events::{change, created, user_id};
    use crate::engine::settings::Dedupe;
    use crate::model::outreach_user::OutreachUser;

    const EMAIL: &str = "abc@def.com";

    fn outreach_user(id: i64, email: &str) -> OutreachUser {
        OutreachUser {
            id: OutreachUserId(id),
            email: email.into(),
            username: None,
            first_name: Some("Ann".into()),
            last_name: Some("Lee".into()),
            title: None,
            locked: false,
            custom: Default::default(),
            updated_at: None,
        }
    }

    /// Outreach user 1 (abc@def.com) mapped to active Salesforce user X (user 1).
    fn seed() -> ModelSync {
        let mut sync = ModelSync::default();
        sync.seed_outreach_user(outreach_user(1, EMAIL));
        sync.apply(&SyncSettings::default(), &created(1, EMAIL, true, 1));
        // The create above found Outreach user 1 and linked it.
        assert_eq!(sync.count(Action::Link), 1);
        sync.log.clear();
        sync.outreach.calls = 0;
        sync
    }

    fn mapped_to(sync: &ModelSync, outreach: i64) -> Option<SalesforceId> {
        sync.state
            .mapping_of_outreach(OutreachUserId(outreach))
            .map(|m| m.salesforce_user_id.clone())
    }

    #[test]
    fn seed_example_y_created_then_x_deactivated() {
        let settings = SyncSettings::default();
        let mut sync = seed();
        let y = sync.apply(&settings, &created(2, EMAIL, true, 10));
        assert_eq!(y.len(), 1);
        assert_eq!(y[0].action, Action::Conflict);
        assert_eq!(y[0].reason, Reason::EmailMappedToOtherActiveUser);
        let x = sync.apply(&settings, &change(1, Some(EMAIL), false, 11));
        assert_eq!(x.len(), 1);
        assert_eq!(x[0].action, Action::Remap);
        assert_eq!(x[0].reason, Reason::MappedUserInactive);
        assert_eq!(x[0].outreach_user_id, Some(OutreachUserId(1)));
        assert_eq!(x[0].salesforce_user_id, Some(user_id(2)));
        assert_eq!(x[0].previous_salesforce_user_id, Some(user_id(1)));
        assert_eq!(x[0].outreach_calls, 1);
        assert_eq!(mapped_to(&sync, 1), Some(user_id(2)));
        assert_eq!(sync.outreach.users.len(), 1, "no Outreach user created");
        assert_eq!(sync.count(Action::Remap), 1);
        assert_eq!(
            sync.outreach.users[&OutreachUserId(1)].custom[0].as_deref(),
            Some(user_id(2).as_str())
        );
    }

    #[test]
    fn seed_example_x_deactivated_then_y_created() {
        let settings = SyncSettings::default();
        let mut sync = seed();
        let x = sync.apply(&settings, &change(1, Some(EMAIL), false, 10));
        assert_eq!(x[0].action, Action::Skip);
        assert_eq!(x[0].reason, Reason::NoActiveReplacement);
        let y = sync.apply(&settings, &created(2, EMAIL, true, 11));
        assert_eq!(y.len(), 1);
        assert_eq!(y[0].action, Action::Remap);
        assert_eq!(mapped_to(&sync, 1), Some(user_id(2)));
        assert_eq!(sync.outreach.users.len(), 1);
        assert_eq!(sync.count(Action::Remap), 1);
        assert_eq!(sync.count(Action::Create), 0);
    }

    #[test]
    fn with_remap_off_the_mapping_never_moves() {
        let mut settings = SyncSettings::default();
        settings.user_mapping.auto_remap_on_inactive = false;
        for order in [[0, 1], [1, 0]] {
            let mut sync = seed();
            let events = [
                created(2, EMAIL, true, 10),
                change(1, Some(EMAIL), false, 11),
            ];
            for i in order {
                sync.apply(&settings, &events[i]);
            }
            assert_eq!(mapped_to(&sync, 1), Some(user_id(1)));
            assert_eq!(sync.count(Action::Remap), 0);
            assert!(
                sync.log
                    .iter()
                    .any(|r| r.reason == Reason::AutoRemapDisabled)
            );
        }
    }

    #[test]
    fn create_costs_one_call_and_repeats_cost_none() {
        let settings = SyncSettings::default();
        let mut sync = ModelSync::default();
        let event = created(5, "new@x.com", true, 1);
        let first = sync.apply(&settings, &event);
        assert_eq!(first[0].action, Action::Create);
        assert_eq!(first[0].outreach_calls, 1);
        assert_eq!(sync.outreach.calls, 1);
        let again = sync.apply(&settings, &event);
        assert_eq!(again[0].reason, Reason::DuplicateEvent);
        let stale = sync.apply(&settings, &change(5, Some("new@x.com"), true, 0));
        assert_eq!(stale[0].reason, Reason::StaleEvent);
        assert_eq!(sync.outreach.calls, 1);
    }

    #[test]
    fn create_copies_names_and_mirrors_the_id() {
        let mut sync = ModelSync::default();
        sync.apply(&SyncSettings::default(), &created(5, " New@X.com", true, 1));
        let user = &sync.outreach.users[&OutreachUserId(1)];
        assert_eq!(user.email, "New@X.com");
        assert_eq!(user.first_name.as_deref(), Some("First5"));
        assert_eq!(user.custom[0].as_deref(), Some(user_id(5).as_str()));
        assert_eq!(mapped_to(&sync, 1), Some(user_id(5)));
    }

    #[test]
    fn inactive_users_are_never_created_or_linked() {
        let mut sync = ModelSync::default();
        sync.seed_outreach_user(outreach_user(1, "taken@x.com"));
        let r = sync.apply(
            &SyncSettings::default(),
            &created(3, "taken@x.com", false, 1),
        );
        assert_eq!(r[0].reason, Reason::InactiveUser);
        let r = sync.apply(
            &SyncSettings::default(),
            &created(4, "free@x.com", false, 1),
        );
        assert_eq!(r[0].reason, Reason::InactiveUser);
        assert_eq!(sync.outreach.calls, 0);
        assert_eq!(sync.state.mappings().count(), 0);
    }

    #[test]
    fn inbound_create_off_creates_nothing() {
        let mut settings = SyncSettings::default();
        settings.user_mapping.inbound_create = false;
        settings.user_mapping.auto_remap_on_inactive = false;
        let mut sync = ModelSync::default();
        let r = sync.apply(&settings, &created(3, "a@x.com", true, 1));
        assert_eq!(r[0].reason, Reason::InboundCreateDisabled);
        assert!(sync.outreach.users.is_empty());
    }

    #[test]
    fn dedupe_off_or_outbound_links_nothing_and_reports_the_collision() {
        for dedupe in [Dedupe::Off, Dedupe::Outbound] {
            let mut settings = SyncSettings::default();
            settings.user_mapping.auto_remap_on_inactive = false;
            settings.email_field.dedupe = dedupe;
            let mut sync = ModelSync::default();
            sync.seed_outreach_user(outreach_user(1, "a@x.com"));
            let r = sync.apply(&settings, &created(3, "A@x.com", true, 1));
            assert_eq!(r[0].action, Action::Conflict);
            assert_eq!(r[0].reason, Reason::OutreachEmailTaken);
            assert_eq!(sync.state.mappings().count(), 0);
            assert_eq!(sync.outreach.calls, 0);
        }
    }

    #[test]
    fn dedupe_inbound_links_by_email() {
        let mut settings = SyncSettings::default();
        settings.user_mapping.auto_remap_on_inactive = false;
        settings.email_field.dedupe = Dedupe::Inbound;
        let mut sync = ModelSync::default();
        sync.seed_outreach_user(outreach_user(7, "a@x.com"));
        let r = sync.apply(&settings, &created(3, "a@x.com", true, 1));
        assert_eq!(r[0].action, Action::Link);
        assert_eq!(r[0].outreach_calls, 1, "names and id mirror written");
        assert_eq!(mapped_to(&sync, 7), Some(user_id(3)));
    }

    #[test]
    fn two_active_users_without_outreach_user_create_one_and_flag_the_other() {
        let settings = SyncSettings::default();
        let mut sync = ModelSync::default();
        // User 3 arrives inactive, user 4 active: 4 is created.
        sync.apply(&settings, &created(3, "a@x.com", false, 1));
        sync.apply(&settings, &created(4, "a@x.com", true, 2));
        assert_eq!(sync.count(Action::Create), 1);
        // User 3 is activated while 4 holds the Outreach user.
        let r = sync.apply(&settings, &change(3, Some("a@x.com"), true, 3));
        assert_eq!(r[0].reason, Reason::EmailMappedToOtherActiveUser);
        assert_eq!(sync.outreach.users.len(), 1);
    }

    #[test]
    fn the_newest_active_candidate_wins_and_the_others_are_named() {
        let settings = SyncSettings::default();
        let mut sync = seed();
        // Two replacements arrive while X is active, then X is deactivated.
        sync.apply(&settings, &created(2, EMAIL, true, 10));
        sync.apply(&settings, &created(3, EMAIL, true, 11));
        let r = sync.apply(&settings, &change(1, Some(EMAIL), false, 12));
        assert_eq!(r[0].action, Action::Remap);
        assert_eq!(
            r[0].salesforce_user_id,
            Some(user_id(3)),
            "newest created_date"
        );
        assert!(
            r[0].message.contains(user_id(2).as_str()),
            "{}",
            r[0].message
        );
    }

    #[test]
    fn lock_when_inactive_locks_then_unlocks_on_reactivation() {
        let mut settings = SyncSettings::default();
        settings.user_mapping.lock_when_inactive = true;
        let mut sync = seed();
        let r = sync.apply(&settings, &change(1, Some(EMAIL), false, 10));
        assert_eq!(r[0].action, Action::Lock);
        assert!(sync.outreach.users[&OutreachUserId(1)].locked);
        // Locking again is not needed.
        let r = sync.apply(&settings, &change(1, Some(EMAIL), false, 11));
        assert_eq!(r[0].action, Action::Skip);
        let r = sync.apply(&settings, &change(1, Some(EMAIL), true, 12));
        assert_eq!(r[0].action, Action::Unlock);
        assert!(!sync.outreach.users[&OutreachUserId(1)].locked);
    }

    /// Found by the convergence property: X was locked while inactive, then came back active
    /// with another email. The link is kept (`email_diverged`), so X still holds its Outreach
    /// user, and a lock that only said "X is inactive" must go.
    #[test]
    fn reactivation_with_another_email_lifts_usersyncs_lock() {
        let mut settings = SyncSettings::default();
        settings.user_mapping.lock_when_inactive = true;
        let mut sync = seed();
        sync.apply(&settings, &change(1, Some(EMAIL), false, 10));
        assert!(sync.outreach.users[&OutreachUserId(1)].locked);
        let mut back = change(1, Some("new@def.com"), true, 11);
        back.user.first_name = Some("Renamed".into());
        let r = sync.apply(&settings, &back);
        assert!(
            r.iter()
                .any(|d| (d.action, d.reason) == (Action::Unlock, Reason::MappedUserReactivated)),
            "{r:?}"
        );
        assert!(r.iter().any(|d| d.reason == Reason::EmailDiverged), "{r:?}");
        assert!(!sync.outreach.users[&OutreachUserId(1)].locked);
        assert_eq!(mapped_to(&sync, 1), Some(user_id(1)), "the link is kept");
        assert_eq!(
            sync.outreach.users[&OutreachUserId(1)]
                .first_name
                .as_deref(),
            Some("First1"),
            "a diverged link lifts the lock and nothing else"
        );
        // usersync's lock is gone: X's next event changes nothing in Outreach.
        let calls = sync.outreach.calls;
        let mut again = change(1, Some("new@def.com"), true, 12);
        again.user.first_name = Some("Renamed".into());
        sync.apply(&settings, &again);
        assert_eq!(sync.outreach.calls, calls);
    }

    #[test]
    fn remap_unlocks_a_user_usersync_locked() {
        let mut settings = SyncSettings::default();
        settings.user_mapping.lock_when_inactive = true;
        let mut sync = seed();
        sync.apply(&settings, &change(1, Some(EMAIL), false, 10));
        assert!(sync.outreach.users[&OutreachUserId(1)].locked);
        let r = sync.apply(&settings, &created(2, EMAIL, true, 11));
        assert_eq!(r[0].action, Action::Remap);
        assert!(!sync.outreach.users[&OutreachUserId(1)].locked);
        assert_eq!(
            r[0].outreach_calls, 1,
            "one PATCH for names, mirror and unlock"
        );
    }

    #[test]
    fn an_email_change_keeps_the_link_and_says_so() {
        let settings = SyncSettings::default();
        let mut sync = seed();
        let r = sync.apply(&settings, &change(1, Some("new@def.com"), true, 10));
        assert!(r.iter().any(|d| d.reason == Reason::EmailDiverged), "{r:?}");
        assert_eq!(mapped_to(&sync, 1), Some(user_id(1)));
        assert_eq!(sync.outreach.calls, 0);
        // A later active user with the old email meets the kept link.
        let r = sync.apply(&settings, &created(2, EMAIL, true, 11));
        assert_eq!(r[0].reason, Reason::EmailMappedToOtherActiveUser);
    }

    /// The review's case: M moves from G to H keeping its link, Y arrives in G, M is then
    /// deactivated. M's deactivation must revisit G (where its Outreach user is) in both orders.
    #[test]
    fn a_moved_users_deactivation_frees_its_outreach_user() {
        let settings = SyncSettings::default();
        let moved = change(1, Some("h@def.com"), true, 10);
        let y = created(2, EMAIL, true, 11);
        let gone = change(1, Some("h@def.com"), false, 12);
        for order in [[&moved, &y, &gone], [&moved, &gone, &y]] {
            let mut sync = seed();
            for e in order {
                sync.apply(&settings, e);
            }
            assert_eq!(mapped_to(&sync, 1), Some(user_id(2)), "{:?}", sync.log);
            assert_eq!(sync.count(Action::Remap), 1);
            assert_eq!(sync.count(Action::Create), 0);
        }
    }

    #[test]
    fn updates_follow_the_mapped_user() {
        let settings = SyncSettings::default();
        let mut sync = seed();
        let mut e = change(1, Some(EMAIL), true, 10);
        e.user.title = Some("VP Sales".into());
        let r = sync.apply(&settings, &e);
        assert_eq!(r[0].action, Action::Update);
        assert_eq!(r[0].outreach_calls, 1);
        assert_eq!(
            sync.outreach.users[&OutreachUserId(1)].title.as_deref(),
            Some("VP Sales")
        );
        let mut e = change(1, Some(EMAIL), true, 11);
        e.user.title = Some("VP Sales".into());
        let r = sync.apply(&settings, &e);
        assert_eq!(r[0].reason, Reason::UpToDate);
        assert_eq!(r[0].outreach_calls, 0);
    }

    #[test]
    fn inbound_update_off_leaves_names_alone() {
        let mut settings = SyncSettings::default();
        settings.user_mapping.inbound_update = false;
        let mut sync = seed();
        let mut e = change(1, Some(EMAIL), true, 10);
        e.user.title = Some("VP Sales".into());
        let r = sync.apply(&settings, &e);
        assert_eq!(r[0].reason, Reason::InboundUpdateDisabled);
        assert_eq!(sync.outreach.users[&OutreachUserId(1)].title, None);
    }

    #[test]
    fn delete_reads_as_deactivation_and_keeps_the_known_state() {
        let settings = SyncSettings::default();
        let mut sync = seed();
        sync.apply(&settings, &created(2, EMAIL, true, 10));
        let mut delete = change(1, None, false, 11);
        delete.change = crate::model::event::ChangeKind::Delete;
        delete.user = Default::default();
        let r = sync.apply(&settings, &delete);
        assert_eq!(r[0].action, Action::Remap);
        let known = sync.state.salesforce_user(&user_id(1)).unwrap();
        assert_eq!(known.email.as_deref(), Some(EMAIL));
        assert!(!known.is_active);
    }

    #[test]
    fn several_outreach_users_with_one_email_are_a_conflict() {
        let mut sync = ModelSync::default();
        sync.seed_outreach_user(outreach_user(1, "a@x.com"));
        sync.seed_outreach_user(outreach_user(2, "A@X.com"));
        let r = sync.apply(&SyncSettings::default(), &created(3, "a@x.com", true, 1));
        assert_eq!(r[0].reason, Reason::MultipleOutreachUsers);
        assert_eq!(sync.outreach.calls, 0);
    }

    #[test]
    fn a_mapping_to_an_unseen_user_never_moves_on_a_guess() {
        let settings = SyncSettings::default();
        let mut sync = ModelSync::default();
        sync.seed_outreach_user(outreach_user(1, EMAIL));
        sync.state
            .map(Mapping {
                outreach_user_id: OutreachUserId(1),
                salesforce_user_id: user_id(1),
                locked_by_usersync: false,
            })
            .unwrap();
        let r = sync.apply(&settings, &created(2, EMAIL, true, 10));
        assert_eq!(r[0].reason, Reason::MappedUserUnknown);
        assert_eq!(mapped_to(&sync, 1), Some(user_id(1)));
        // Once the mapped user's state is known (inactive), the group is decided again.
        let r = sync.apply(&settings, &change(1, Some(EMAIL), false, 11));
        assert_eq!(r[0].action, Action::Remap);
        assert_eq!(mapped_to(&sync, 1), Some(user_id(2)));
    }

    #[test]
    fn with_inbound_update_off_the_mapped_users_events_change_nothing() {
        let mut settings = SyncSettings::default();
        settings.user_mapping.inbound_update = false;
        let mut sync = seed();
        // The mirror field is empty on the seeded Outreach user; the link wrote it.
        assert!(sync.outreach.users[&OutreachUserId(1)].custom[0].is_some());
        sync.outreach
            .users
            .get_mut(&OutreachUserId(1))
            .unwrap()
            .custom[0] = None;
        let mut cleared = sync.state.outreach_user(OutreachUserId(1)).unwrap().clone();
        cleared.custom[0] = None;
        sync.state.put_outreach_user(cleared);
        let r = sync.apply(&settings, &change(1, Some(EMAIL), true, 10));
        assert_eq!(r[0].outreach_calls, 0);
        assert_eq!(sync.outreach.users[&OutreachUserId(1)].custom[0], None);
    }

    #[test]
    fn with_create_off_every_active_candidate_hears_why() {
        let mut settings = SyncSettings::default();
        settings.user_mapping.inbound_create = false;
        settings.user_mapping.auto_remap_on_inactive = false;
        let mut sync = ModelSync::default();
        sync.apply(&settings, &created(3, "a@x.com", true, 1));
        let r = sync.apply(&settings, &created(4, "a@x.com", true, 2));
        assert!(r.iter().any(|d| d.salesforce_user_id == Some(user_id(3))
            && d.reason == Reason::InboundCreateDisabled));
        assert!(r.iter().any(|d| d.salesforce_user_id == Some(user_id(4))
            && d.reason == Reason::InboundCreateDisabled));
    }

    #[test]
    fn an_outreach_user_made_by_hand_is_linked_not_duplicated() {
        use crate::engine::model::events::outreach;
        let settings = SyncSettings::default();
        let mut sync = ModelSync::default();
        // Salesforce user 3 is active, but creating is off for now.
        let mut no_create = settings.clone();
        no_create.user_mapping.inbound_create = false;
        no_create.user_mapping.auto_remap_on_inactive = false;
        sync.apply(&no_create, &created(3, "dana@def.com", true, 1));
        assert!(sync.outreach.users.is_empty());
        // An admin creates Dana in Outreach; its webhook arrives.
        sync.outreach.seed(outreach_user(9, "Dana@def.com"));
        let r = sync.apply(&settings, &outreach(9, "Dana@def.com", 5));
        assert_eq!(
            (r[0].action, r[0].reason),
            (Action::Link, Reason::EmailMatch)
        );
        assert_eq!(mapped_to(&sync, 9), Some(user_id(3)));
        assert_eq!(sync.outreach.users.len(), 1, "linked, not duplicated");
        // The same delivery again is a duplicate; an older one is stale.
        let r = sync.apply(&settings, &outreach(9, "Dana@def.com", 5));
        assert_eq!(r[0].reason, Reason::DuplicateEvent);
        let r = sync.apply(&settings, &outreach(9, "Dana@def.com", 4));
        assert_eq!(r[0].reason, Reason::StaleEvent);
    }

    #[test]
    fn an_outreach_email_change_is_seen_in_both_groups() {
        use crate::engine::model::events::outreach;
        let settings = SyncSettings::default();
        let mut sync = seed();
        // An admin renames Outreach user 1's email in the UI to that of new hire 4.
        let r = sync.apply(&settings, &created(4, "new@def.com", true, 10));
        assert_eq!(r[0].action, Action::Create, "4 gets its own user first");
        sync.log.clear();
        let r = sync.apply(&settings, &outreach(1, "other@def.com", 20));
        // X (user 1) no longer shares its Outreach user's email: the kept link is reported.
        assert!(r.iter().all(|d| d.outreach_calls == 0), "{r:?}");
        assert_eq!(mapped_to(&sync, 1), Some(user_id(1)));
        assert_eq!(
            sync.state.outreach_user(OutreachUserId(1)).unwrap().email,
            "other@def.com"
        );
        assert_eq!(sync.state.outreach_group(EMAIL).count(), 0);
    }

    #[test]
    fn users_without_email_are_skipped() {
        let mut sync = ModelSync::default();
        let r = sync.apply(&SyncSettings::default(), &change(3, None, true, 1));
        assert_eq!(r[0].reason, Reason::NoEmail);
    }
}

//! What the end state must be, judged from the ground truth alone: the Salesforce simulator's
//! final records, the Outreach simulator's final users and the store's mappings. Nothing here
//! runs usersync's engine or apply path, so an event the subscriber drops or mistranslates, or a
//! rule applied wrongly, shows here even when `usersync decide` agrees with the processor.
//!
//! The rules it checks are the ones an admin can state without reading the code:
//!
//! - the store's last-known Salesforce users are the simulator's records (email, username,
//!   names, title, active);
//! - no two Outreach users share an email, no two mirror one Salesforce user, and the store's
//!   mapping is one to one, every mapped Outreach user carrying its Salesforce user's id in the
//!   mirror field;
//! - with create on, inbound deduping and auto remap on: every email with exactly one active
//!   Salesforce user has exactly one Outreach user mapped to that user, and an email with
//!   several active users has its Outreach user mapped to one of them;
//! - a mapped Outreach user whose email is its Salesforce user's shows that user: names and
//!   title equal (with inbound update on), unlocked while the user is active, locked (with lock
//!   when inactive on) when no active Salesforce user has its email.
//!
//! One exception is the rules' own: a link kept after the Salesforce user's email changed (the
//! Outreach email cannot be changed through the API, docs/decisions.md) stays where it is, and
//! the Outreach user keeps the names it showed at the change; it is unlocked while that user is
//! active all the same. The active users of the email that Outreach user still carries are in
//! conflict with the kept link, and get no Outreach user of their own. A user that moved to an
//! email keeping its link is no candidate for that email's Outreach user: when every active user
//! of an email is such a user, the email's Outreach user may stay with an inactive one.
//!
//! Another comes with several processor replicas: a user created by a decision whose record the
//! store then refused (another replica had changed the email group first) cannot be taken back.
//! It stays in Outreach, unmapped, with the id it was created for in its mirror field, while
//! that Salesforce user may end up with another (docs/processor.md, "Several replicas"). The
//! caller names such users ([`Sources::superseded_creates`], from the decision log); while
//! unmapped, they are left out of the one-mirror rule.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::Value;
use usersync::engine::settings::SyncSettings;
use usersync::model::salesforce_id::SalesforceId;
use usersync::store::{MappingFilter, Store};

/// A Salesforce user as the simulator holds it (its flat record).
#[derive(Debug, Clone)]
pub struct TrueUser {
    pub id: SalesforceId,
    pub email: Option<String>,
    pub username: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub title: Option<String>,
    pub active: bool,
}

impl TrueUser {
    fn from_record(record: &Value) -> TrueUser {
        let text = |field: &str| record[field].as_str().map(str::to_owned);
        let id = text("Id").unwrap_or_else(|| panic!("a record without an Id: {record}"));
        TrueUser {
            id: SalesforceId::parse(&id).unwrap_or_else(|e| panic!("record id {id}: {e}")),
            email: text("Email"),
            username: text("Username"),
            first_name: text("FirstName"),
            last_name: text("LastName"),
            title: text("Title"),
            active: record["IsActive"]
                .as_bool()
                .unwrap_or_else(|| panic!("record {id} without a boolean IsActive: {record}")),
        }
    }

    fn group(&self) -> Option<String> {
        self.email.as_deref().map(group).filter(|g| !g.is_empty())
    }
}

/// An Outreach user as the simulator holds it.
#[derive(Debug, Clone, Deserialize)]
pub struct OutreachUser {
    pub id: i64,
    pub email: String,
    #[serde(default)]
    pub first_name: Option<String>,
    #[serde(default)]
    pub last_name: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub locked: bool,
    #[serde(default)]
    pub custom: Vec<Option<String>>,
}

/// The email group: Outreach compares emails without case, and surrounding spaces are typing.
fn group(email: &str) -> String {
    email.trim().to_lowercase()
}

/// Where to read the ground truth from.
pub struct Sources<'a> {
    pub http: &'a reqwest::Client,
    /// The Salesforce simulator's control address (`/_sim/users` under it).
    pub salesforce_url: &'a str,
    /// The Outreach simulator's control address.
    pub outreach_url: &'a str,
    pub store: &'a dyn Store,
    /// The sync settings in force during the run.
    pub settings: &'a SyncSettings,
    /// Outreach users created by decisions whose record the store refused (see the module's
    /// documentation); empty with one processor.
    pub superseded_creates: &'a BTreeSet<i64>,
}

async fn get(http: &reqwest::Client, url: String) -> Value {
    let response = http
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert!(
        response.status().is_success(),
        "GET {url}: {}",
        response.status()
    );
    response
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// Every rule of the module's documentation that the end state breaks, one line each; empty
/// when it holds.
pub async fn violations(sources: &Sources<'_>) -> Vec<String> {
    let records = get(
        sources.http,
        format!("{}/_sim/users", sources.salesforce_url),
    )
    .await;
    let truth: Vec<TrueUser> = records
        .as_array()
        .expect("the Salesforce simulator lists its records")
        .iter()
        .map(TrueUser::from_record)
        .collect();
    let outreach: Vec<OutreachUser> = serde_json::from_value(
        get(sources.http, format!("{}/_sim/users", sources.outreach_url)).await,
    )
    .expect("the Outreach simulator lists its users");
    let mappings = sources
        .store
        .mappings(&MappingFilter::default())
        .await
        .expect("the store lists its mappings");
    let mut stored = BTreeMap::new();
    for user in &truth {
        let known = sources
            .store
            .salesforce_user(&user.id)
            .await
            .unwrap_or_else(|e| panic!("the store reads {}: {e}", user.id));
        stored.insert(user.id.clone(), known);
    }
    let mut found = Vec::new();
    let mapped: Vec<(i64, SalesforceId)> = mappings
        .iter()
        .map(|m| (m.outreach_user_id.0, m.salesforce_user_id.clone()))
        .collect();
    judge(
        &truth,
        &outreach,
        &mapped,
        &stored,
        sources.settings,
        sources.superseded_creates,
        &mut found,
    );
    found
}

/// Panics with every violation when the end state breaks a rule.
pub async fn assert_holds(sources: &Sources<'_>) {
    let found = violations(sources).await;
    assert!(
        found.is_empty(),
        "the end state breaks what the Salesforce records require:\n  {}",
        found.join("\n  ")
    );
}

/// The rules, over plain values.
fn judge(
    truth: &[TrueUser],
    outreach: &[OutreachUser],
    mappings: &[(i64, SalesforceId)],
    stored: &BTreeMap<SalesforceId, Option<usersync::model::salesforce_user::SalesforceUser>>,
    settings: &SyncSettings,
    superseded_creates: &BTreeSet<i64>,
    found: &mut Vec<String>,
) {
    let rules = &settings.user_mapping;
    let mirror = settings
        .mirror_slot()
        .expect("the run's settings are valid");
    let by_id: BTreeMap<&SalesforceId, &TrueUser> = truth.iter().map(|u| (&u.id, u)).collect();
    let outreach_by_id: BTreeMap<i64, &OutreachUser> = outreach.iter().map(|u| (u.id, u)).collect();

    // The store's last-known users are Salesforce's.
    for user in truth {
        match stored.get(&user.id).and_then(Option::as_ref) {
            None => found.push(format!("{}: not in the store", user.id)),
            Some(known) => {
                let pairs = [
                    ("email", &known.email, &user.email),
                    ("username", &known.username, &user.username),
                    ("first name", &known.first_name, &user.first_name),
                    ("last name", &known.last_name, &user.last_name),
                    ("title", &known.title, &user.title),
                ];
                for (what, have, want) in pairs {
                    if have != want {
                        found.push(format!(
                            "{}: the store has {what} {have:?}, Salesforce {want:?}",
                            user.id
                        ));
                    }
                }
                if known.is_active != user.active {
                    found.push(format!(
                        "{}: the store has active = {}, Salesforce {}",
                        user.id, known.is_active, user.active
                    ));
                }
            }
        }
    }

    // Outreach's and the mapping's uniqueness.
    let mut outreach_by_group: BTreeMap<String, Vec<&OutreachUser>> = BTreeMap::new();
    for user in outreach {
        outreach_by_group
            .entry(group(&user.email))
            .or_default()
            .push(user);
    }
    for (email, users) in &outreach_by_group {
        if users.len() > 1 {
            let ids: Vec<i64> = users.iter().map(|u| u.id).collect();
            found.push(format!("{email}: {} Outreach users {ids:?}", users.len()));
        }
    }
    if let Some(slot) = mirror {
        let mapped: BTreeSet<i64> = mappings.iter().map(|(o, _)| *o).collect();
        let mut mirrored: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for user in outreach {
            if superseded_creates.contains(&user.id) && !mapped.contains(&user.id) {
                continue;
            }
            if let Some(Some(id)) = user.custom.get(slot)
                && !id.is_empty()
            {
                mirrored.entry(id.clone()).or_default().push(user.id);
            }
        }
        for (id, users) in mirrored {
            if users.len() > 1 {
                found.push(format!("{id}: mirrored by Outreach users {users:?}"));
            }
        }
    }
    let mut mapped_to: BTreeMap<&SalesforceId, Vec<i64>> = BTreeMap::new();
    for (outreach_id, salesforce_id) in mappings {
        mapped_to
            .entry(salesforce_id)
            .or_default()
            .push(*outreach_id);
    }
    for (salesforce_id, users) in &mapped_to {
        if users.len() > 1 {
            found.push(format!(
                "{salesforce_id}: mapped from Outreach users {users:?}"
            ));
        }
    }

    // Each mapping, against the two sides.
    let active_groups: BTreeSet<String> = truth
        .iter()
        .filter(|u| u.active)
        .filter_map(TrueUser::group)
        .collect();
    for (outreach_id, salesforce_id) in mappings {
        let Some(o) = outreach_by_id.get(outreach_id) else {
            found.push(format!(
                "Outreach user {outreach_id}: mapped, but not in Outreach"
            ));
            continue;
        };
        let Some(s) = by_id.get(salesforce_id) else {
            found.push(format!(
                "Outreach user {outreach_id}: mapped to {salesforce_id}, unknown to Salesforce"
            ));
            continue;
        };
        if let Some(slot) = mirror {
            let shown = o.custom.get(slot).cloned().flatten();
            if shown.as_deref() != Some(salesforce_id.as_str()) {
                found.push(format!(
                    "Outreach user {outreach_id}: mapped to {salesforce_id}, mirrors {shown:?}"
                ));
            }
        }
        if s.active && o.locked {
            found.push(format!(
                "Outreach user {outreach_id} ({}): locked, though its Salesforce user \
                 {salesforce_id} is active",
                o.email
            ));
        }
        let same_email = s.group().as_deref() == Some(group(&o.email).as_str());
        if !same_email {
            // A link kept after an email change: it keeps the names it showed then.
            continue;
        }
        if s.active {
            if rules.inbound_update {
                let pairs = [
                    ("first name", &o.first_name, &s.first_name),
                    ("last name", &o.last_name, &s.last_name),
                    ("title", &o.title, &s.title),
                ];
                for (what, have, want) in pairs {
                    if have != want {
                        found.push(format!(
                            "Outreach user {outreach_id} ({}): {what} {have:?}, its Salesforce \
                             user {salesforce_id} has {want:?}",
                            o.email
                        ));
                    }
                }
            }
        } else if rules.lock_when_inactive && !active_groups.contains(&group(&o.email)) && !o.locked
        {
            found.push(format!(
                "Outreach user {outreach_id} ({}): unlocked, though its Salesforce user \
                 {salesforce_id} is inactive and nobody active has its email",
                o.email
            ));
        }
    }

    // Each email with active users.
    if !(rules.inbound_create
        && settings.email_field.dedupe.matches_inbound()
        && rules.auto_remap_on_inactive)
    {
        return;
    }
    let outreach_of: BTreeMap<&SalesforceId, i64> = mappings
        .iter()
        .map(|(outreach_id, salesforce_id)| (salesforce_id, *outreach_id))
        .collect();
    let mapped_of: BTreeMap<i64, &SalesforceId> = mappings.iter().map(|(o, s)| (*o, s)).collect();
    let mut actives: BTreeMap<String, Vec<&TrueUser>> = BTreeMap::new();
    for user in truth.iter().filter(|u| u.active) {
        if let Some(g) = user.group() {
            actives.entry(g).or_default().push(user);
        }
    }
    for (email, users) in &actives {
        let in_outreach = outreach_by_group.get(email).cloned().unwrap_or_default();
        // A user whose kept link is to another email's Outreach user is served by that one.
        let diverged = |u: &TrueUser| {
            outreach_of
                .get(&u.id)
                .and_then(|o| outreach_by_id.get(o))
                .is_some_and(|o| group(&o.email) != *email)
        };
        // The email's Outreach user is held by an active user that has moved to another
        // email: the rules keep that link, and the email's own users are in conflict with it.
        let held_by_diverged = |o: &OutreachUser| {
            mapped_of
                .get(&o.id)
                .and_then(|h| by_id.get(*h))
                .is_some_and(|h| h.active && h.group().as_deref() != Some(email.as_str()))
        };
        if let [only] = users.as_slice() {
            match outreach_of.get(&only.id) {
                None if in_outreach.iter().any(|o| held_by_diverged(o)) => {}
                None => found.push(format!(
                    "{email}: its one active Salesforce user {} has no Outreach user",
                    only.id
                )),
                Some(_) if diverged(only) => {}
                Some(o) => {
                    if in_outreach.len() == 1 && in_outreach[0].id != *o {
                        found.push(format!(
                            "{email}: its one active Salesforce user {} is mapped from Outreach \
                             user {o}, but {email}'s Outreach user is {}",
                            only.id, in_outreach[0].id
                        ));
                    }
                }
            }
        } else if let [o] = in_outreach.as_slice() {
            let holder = mapped_of.get(&o.id);
            let held_by_one = holder.is_some_and(|h| users.iter().any(|u| &u.id == *h));
            // Users that moved here keeping their link are served by their own Outreach user
            // and are no candidates for this one.
            let candidates = users.iter().filter(|u| !diverged(u)).count();
            if candidates > 0 && !held_by_one && !held_by_diverged(o) {
                let ids: Vec<&SalesforceId> = users.iter().map(|u| &u.id).collect();
                let holder = match holder.and_then(|h| by_id.get(*h)) {
                    Some(h) => format!("{} (active {}, email {:?})", h.id, h.active, h.email),
                    None => format!("{holder:?}"),
                };
                found.push(format!(
                    "{email}: Outreach user {} is mapped to {holder}, not to one of its \
                     active Salesforce users {ids:?}",
                    o.id
                ));
            }
        } else if !users.iter().any(|u| diverged(u)) {
            found.push(format!(
                "{email}: {} active Salesforce users and no Outreach user",
                users.len()
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sf(n: u32, email: &str, active: bool) -> TrueUser {
        TrueUser {
            id: SalesforceId::parse(&format!("005000000000{n:03}AAA")).unwrap(),
            email: Some(email.into()),
            username: Some(format!("u{n}")),
            first_name: Some(format!("F{n}")),
            last_name: Some("L".into()),
            title: None,
            active,
        }
    }

    fn shown(id: i64, email: &str, user: &TrueUser) -> OutreachUser {
        OutreachUser {
            id,
            email: email.into(),
            first_name: user.first_name.clone(),
            last_name: user.last_name.clone(),
            title: user.title.clone(),
            locked: false,
            custom: vec![Some(user.id.as_str().to_owned()), None, None, None, None],
        }
    }

    fn known(
        truth: &[TrueUser],
    ) -> BTreeMap<SalesforceId, Option<usersync::model::salesforce_user::SalesforceUser>> {
        truth
            .iter()
            .map(|u| {
                let user = usersync::model::salesforce_user::SalesforceUser {
                    id: u.id.clone(),
                    email: u.email.clone(),
                    username: u.username.clone(),
                    first_name: u.first_name.clone(),
                    last_name: u.last_name.clone(),
                    title: u.title.clone(),
                    is_active: u.active,
                    created_date: None,
                    last_modified_date: None,
                    applied: None,
                };
                (u.id.clone(), Some(user))
            })
            .collect()
    }

    fn judged(
        truth: &[TrueUser],
        outreach: &[OutreachUser],
        mappings: &[(i64, SalesforceId)],
    ) -> Vec<String> {
        let mut found = Vec::new();
        judge(
            truth,
            outreach,
            mappings,
            &known(truth),
            &SyncSettings::default(),
            &BTreeSet::new(),
            &mut found,
        );
        found
    }

    #[test]
    fn the_seed_story_remapped_holds_and_every_way_of_getting_it_wrong_is_named() {
        let x = sf(1, "olga@acme.example", false);
        let y = sf(2, "Olga@acme.example", true);
        let truth = [x.clone(), y.clone()];
        let o = shown(7, "olga@acme.example", &y);
        assert_eq!(
            judged(&truth, std::slice::from_ref(&o), &[(7, y.id.clone())]),
            Vec::<String>::new()
        );

        // Still mapped to the inactive X.
        let mut stale = shown(7, "olga@acme.example", &x);
        stale.locked = true;
        let found = judged(&truth, &[stale], &[(7, x.id.clone())]);
        assert!(
            found
                .iter()
                .any(|f| f.contains("is mapped from Outreach user")
                    || f.contains("has no Outreach user")),
            "{found:?}"
        );

        // A second Outreach user for the email, or the names not copied.
        let twin = shown(8, "OLGA@acme.example", &y);
        let found = judged(&truth, &[o.clone(), twin], &[(7, y.id.clone())]);
        assert!(
            found.iter().any(|f| f.contains("2 Outreach users")),
            "{found:?}"
        );
        let mut unnamed = o.clone();
        unnamed.first_name = Some("Olga".into());
        let found = judged(&truth, &[unnamed], &[(7, y.id.clone())]);
        assert!(found.iter().any(|f| f.contains("first name")), "{found:?}");

        // The store missing Y's last change.
        let mut store = known(&truth);
        store.get_mut(&y.id).unwrap().as_mut().unwrap().title = Some("old".into());
        let mut found = Vec::new();
        judge(
            &truth,
            std::slice::from_ref(&o),
            &[(7, y.id.clone())],
            &store,
            &SyncSettings::default(),
            &BTreeSet::new(),
            &mut found,
        );
        assert!(
            found.iter().any(|f| f.contains("the store has title")),
            "{found:?}"
        );
    }

    #[test]
    fn a_link_kept_after_an_email_change_is_left_where_it_is() {
        // A changed its email from a@ to b@ while linked: the Outreach user keeps a@.
        let a = sf(1, "b@acme.example", true);
        let o = shown(3, "a@acme.example", &a);
        assert_eq!(
            judged(std::slice::from_ref(&a), &[o], &[(3, a.id.clone())]),
            Vec::<String>::new()
        );
    }

    #[test]
    fn users_that_moved_to_an_email_keeping_their_links_do_not_take_its_outreach_user() {
        // X (inactive) holds p@'s Outreach user; A and B moved to p@ from a@ and b@, linked.
        let x = sf(1, "p@acme.example", false);
        let a = sf(2, "p@acme.example", true);
        let b = sf(3, "p@acme.example", true);
        let outreach = [
            shown(5, "p@acme.example", &x),
            shown(6, "a@acme.example", &a),
            shown(7, "b@acme.example", &b),
        ];
        let mappings = [(5, x.id.clone()), (6, a.id.clone()), (7, b.id.clone())];
        let truth = [x.clone(), a.clone(), b.clone()];
        assert_eq!(judged(&truth, &outreach, &mappings), Vec::<String>::new());

        // C, active with p@ and no link of its own, is a candidate the remap left out.
        let c = sf(4, "p@acme.example", true);
        let found = judged(&[x, a, b, c], &outreach, &mappings);
        assert!(
            found
                .iter()
                .any(|f| f.contains("is mapped to 005000000000001AAA")),
            "{found:?}"
        );
    }

    #[test]
    fn an_unmapped_user_a_superseded_create_made_may_mirror_a_user_mapped_elsewhere() {
        // Created for A by a decision another replica got ahead of; A is mapped to 4 since.
        let a = sf(1, "b@acme.example", true);
        let left = shown(3, "a@acme.example", &a);
        let mapped = shown(4, "b@acme.example", &a);
        let judge_with = |superseded: &[i64], mappings: &[(i64, SalesforceId)]| {
            let mut found = Vec::new();
            judge(
                std::slice::from_ref(&a),
                &[left.clone(), mapped.clone()],
                mappings,
                &known(std::slice::from_ref(&a)),
                &SyncSettings::default(),
                &superseded.iter().copied().collect(),
                &mut found,
            );
            found
        };
        assert_eq!(judge_with(&[3], &[(4, a.id.clone())]), Vec::<String>::new());
        // Not named, or mapped after all: two Outreach users mirror A.
        for found in [
            judge_with(&[], &[(4, a.id.clone())]),
            judge_with(
                &[3],
                &[(3, sf(2, "a@acme.example", false).id), (4, a.id.clone())],
            ),
        ] {
            assert!(found.iter().any(|f| f.contains("mirrored by")), "{found:?}");
        }
    }

    #[test]
    fn an_inactive_users_outreach_user_is_locked_when_nobody_replaces_it() {
        let mut settings = SyncSettings::default();
        settings.user_mapping.lock_when_inactive = true;
        let x = sf(1, "x@acme.example", false);
        let o = shown(4, "x@acme.example", &x);
        let mut found = Vec::new();
        judge(
            std::slice::from_ref(&x),
            &[o],
            &[(4, x.id.clone())],
            &known(std::slice::from_ref(&x)),
            &settings,
            &BTreeSet::new(),
            &mut found,
        );
        assert!(found.iter().any(|f| f.contains("unlocked")), "{found:?}");
    }
}

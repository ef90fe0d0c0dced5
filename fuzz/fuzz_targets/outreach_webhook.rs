//! An Outreach webhook delivery body: the signature check, `parse_delivery`, and for user
//! deliveries `into_change` with and without the user read to complete a partial payload.
//!
//! Besides never panicking: a body signed with the secret is accepted and one byte more is
//! not; an ignored delivery is about another resource or action; a delivery needs a read
//! exactly when it lacks one of the event's attributes, and the event it makes is valid,
//! carries the delivery's id and `updatedAt`, and survives the trip through JSON; a read of
//! another user is refused.

#![no_main]

use libfuzzer_sys::fuzz_target;
use usersync::model::event::{ChangeKind, UserChange};
use usersync::outreach::webhooks::{
    Delivery, SignatureError, UserAction, UserDelivery, parse_delivery, sign, verify_signature,
};
use usersync::outreach::{OutreachUser, OutreachUserId};
use usersync_fuzz::providers::{now, webhook_seeds};
use usersync_fuzz::write_seeds_if_asked;

const SECRET: &[u8] = b"whsec-fuzz";

fn read(id: OutreachUserId) -> OutreachUser {
    OutreachUser {
        id,
        email: "Read.User@Acme.test".to_owned(),
        username: Some("read".to_owned()),
        first_name: Some("Read".to_owned()),
        last_name: None,
        title: Some("AE".to_owned()),
        locked: false,
        custom: Default::default(),
        updated_at: None,
    }
}

fn check_change(delivery: &UserDelivery, change: &UserChange) {
    change.validate().expect("into_change returns valid events");
    assert_eq!(change.event_id, delivery.event_id());
    assert_eq!(change.user_id, delivery.id.0.to_string());
    assert_eq!(change.user.last_modified_date, Some(delivery.updated_at));
    match delivery.action {
        UserAction::Created => {
            assert_eq!(change.change, ChangeKind::Create);
            assert!(change.changed_fields.is_empty());
        }
        UserAction::Updated => assert_eq!(change.change, ChangeKind::Update),
    }
    let json = serde_json::to_vec(change).expect("serializes");
    assert_eq!(&UserChange::from_json(&json).expect("reads back"), change);
}

fn check_user(delivery: &UserDelivery) {
    assert!(delivery.id.0 > 0, "Outreach user ids are positive");
    let complete = delivery.missing().is_empty();
    match delivery.clone().into_change(None, now()) {
        Ok(change) => {
            assert!(complete, "an event from a partial payload");
            check_change(delivery, &change);
        }
        Err(problem) => assert!(!problem.field.is_empty() && !problem.problem.is_empty()),
    }
    if let Ok(change) = delivery
        .clone()
        .into_change(Some(&read(delivery.id)), now())
    {
        check_change(delivery, &change);
    }
    let other = OutreachUserId(delivery.id.0.wrapping_add(1));
    let refused = delivery.clone().into_change(Some(&read(other)), now());
    assert!(
        refused.is_err_and(|problem| problem.field == "data.id"),
        "the read of another user completed the event"
    );
}

fuzz_target!(
    init: {
        write_seeds_if_asked(webhook_seeds);
    },
    |data: &[u8]| {
        let signature = sign(SECRET, data);
        assert_eq!(verify_signature(SECRET, Some(signature.as_bytes()), data), Ok(()));
        let mut longer = data.to_vec();
        longer.push(b' ');
        assert_eq!(
            verify_signature(SECRET, Some(signature.as_bytes()), &longer),
            Err(SignatureError::Mismatch)
        );
        let _ = verify_signature(SECRET, Some(data), data);

        match parse_delivery(data) {
            Ok(Delivery::User(delivery)) => check_user(&delivery),
            Ok(Delivery::Ignored { event_name, reason }) => {
                assert!(event_name.contains('.'), "{event_name:?}");
                assert!(!reason.is_empty());
            }
            Err(problem) => assert!(!problem.field.is_empty() && !problem.problem.is_empty()),
        }
    }
);

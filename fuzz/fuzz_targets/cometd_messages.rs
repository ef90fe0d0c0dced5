//! A CometD response body from the network: `parse_messages`, the refusal table on every
//! message, and for data messages the conversion by the writer schema and `normalize`.
//!
//! None of it may panic. A message that is not successful always maps to a refusal, and a
//! successful one never does.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use usersync::salesforce::cometd::payload::{WriterSchema, to_cdc_event};
use usersync::salesforce::cometd::{Refusal, parse_messages};
use usersync::model::salesforce_id::SalesforceId;
use usersync::salesforce::normalize::{Delivery, Replay};
use usersync_fuzz::{
    TOPIC, cometd_seeds, normalize_and_check, observed_at, org_id, write_seeds_if_asked,
    writer_schema,
};

struct Fixed {
    schema: WriterSchema,
    org_id: SalesforceId,
}

static FIXED: LazyLock<Fixed> = LazyLock::new(|| {
    let version = writer_schema();
    Fixed {
        schema: WriterSchema::parse(&version.id, &version.json)
            .expect("the simulator's User schema parses"),
        org_id: org_id(),
    }
});

fuzz_target!(
    init: {
        write_seeds_if_asked(cometd_seeds);
        LazyLock::force(&FIXED);
    },
    |data: &[u8]| {
        let fixed = &*FIXED;
        let Ok(messages) = parse_messages(data) else {
            return;
        };
        for message in &messages {
            let refusal = message.refusal();
            assert_eq!(
                refusal.is_none(),
                message.successful == Some(true),
                "{message:?} gives {refusal:?}"
            );
            if let Some(Refusal::Failed { error }) = &refusal {
                assert!(!error.is_empty(), "a failure without a text");
            }
            let _ = message.failure_reason();
            if message.is_meta() {
                continue;
            }
            let Ok(cdc) = to_cdc_event(message, &fixed.schema) else {
                continue;
            };
            let delivery = Delivery {
                org_id: &fixed.org_id,
                topic: TOPIC,
                replay: Replay::CometD(cdc.replay_id),
                schema_id: &cdc.schema_id,
                observed_at: observed_at(),
            };
            normalize_and_check(&cdc.event, &delivery);
        }
    }
);

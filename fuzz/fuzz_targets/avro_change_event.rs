//! A Pub/Sub change event payload from the network: `ChangeEventSchema::decode` with the
//! Salesforce simulator's User writer schema, then `normalize` on whatever decodes.
//!
//! Neither may panic: one bad event is dead-lettered and the stream goes on (docs/salesforce.md,
//! "Failures seen in other clients": one unreadable event stopped the stream). Events that
//! normalize must be valid and survive the trip through JSON the processor makes.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use usersync::salesforce::avro::ChangeEventSchema;
use usersync::model::salesforce_id::SalesforceId;
use usersync_fuzz::{
    avro_seeds, normalize_and_check, org_id, pubsub_delivery, write_seeds_if_asked, writer_schema,
};

struct Fixed {
    schema: ChangeEventSchema,
    org_id: SalesforceId,
}

static FIXED: LazyLock<Fixed> = LazyLock::new(|| {
    let version = writer_schema();
    Fixed {
        schema: ChangeEventSchema::parse(&version.id, &version.json)
            .expect("the simulator's User schema parses"),
        org_id: org_id(),
    }
});

fuzz_target!(
    init: {
        write_seeds_if_asked(avro_seeds);
        LazyLock::force(&FIXED);
    },
    |data: &[u8]| {
        let fixed = &*FIXED;
        let Ok(event) = fixed.schema.decode(data) else {
            return;
        };
        let replay = &data[..data.len().min(8)];
        let delivery = pubsub_delivery(&fixed.org_id, replay, fixed.schema.schema_id());
        normalize_and_check(&event, &delivery);
    }
);

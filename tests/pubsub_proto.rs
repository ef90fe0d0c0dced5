//! Pins the wire shape of `proto/pubsub_api.proto` to the field table of Salesforce's published
//! proto (docs/salesforce.md, "Pub/Sub: endpoint and call metadata"): every field's number and wire
//! type, and every enum value. A wrong number or type would break the wire silently, so each field
//! is encoded alone and its key read back.

use prost::Message;
use usersync::proto::eventbus::*;

const VARINT: u8 = 0;
const LEN: u8 = 2;

/// The (field number, wire type) keys of an encoded message, in order.
fn keys(message: &impl Message) -> Vec<(u32, u8)> {
    let bytes = message.encode_to_vec();
    let mut buf = &bytes[..];
    let mut keys = Vec::new();
    while !buf.is_empty() {
        let key = prost::encoding::decode_varint(&mut buf).expect("a key");
        let wire = (key & 7) as u8;
        keys.push(((key >> 3) as u32, wire));
        match wire {
            VARINT => {
                prost::encoding::decode_varint(&mut buf).expect("a varint");
            }
            LEN => {
                let len = prost::encoding::decode_varint(&mut buf).expect("a length") as usize;
                buf = &buf[len..];
            }
            other => panic!("unexpected wire type {other}"),
        }
    }
    keys
}

fn s() -> String {
    "x".to_owned()
}

fn b() -> Vec<u8> {
    vec![1]
}

#[test]
fn topic_and_schema_messages() {
    assert_eq!(keys(&TopicRequest { topic_name: s() }), [(1, LEN)]);
    let info = TopicInfo {
        topic_name: s(),
        tenant_guid: s(),
        can_publish: true,
        can_subscribe: true,
        schema_id: s(),
        rpc_id: s(),
    };
    assert_eq!(
        keys(&info),
        [
            (1, LEN),
            (2, LEN),
            (3, VARINT),
            (4, VARINT),
            (5, LEN),
            (6, LEN)
        ]
    );
    assert_eq!(keys(&SchemaRequest { schema_id: s() }), [(1, LEN)]);
    let schema = SchemaInfo {
        schema_json: s(),
        schema_id: s(),
        rpc_id: s(),
    };
    assert_eq!(keys(&schema), [(1, LEN), (2, LEN), (3, LEN)]);
}

#[test]
fn event_messages() {
    let header = EventHeader {
        key: s(),
        value: b(),
    };
    assert_eq!(keys(&header), [(1, LEN), (2, LEN)]);
    let producer = ProducerEvent {
        id: s(),
        schema_id: s(),
        payload: b(),
        headers: vec![header],
    };
    assert_eq!(keys(&producer), [(1, LEN), (2, LEN), (3, LEN), (4, LEN)]);
    let consumer = ConsumerEvent {
        event: Some(producer),
        replay_id: b(),
    };
    assert_eq!(keys(&consumer), [(1, LEN), (2, LEN)]);
}

#[test]
fn fetch_messages() {
    let request = FetchRequest {
        topic_name: s(),
        replay_preset: ReplayPreset::Custom as i32,
        replay_id: b(),
        num_requested: 100,
        auth_refresh: s(),
    };
    assert_eq!(
        keys(&request),
        [(1, LEN), (2, VARINT), (3, LEN), (4, VARINT), (5, LEN)]
    );
    let response = FetchResponse {
        events: vec![ConsumerEvent::default()],
        latest_replay_id: b(),
        rpc_id: s(),
        pending_num_requested: 7,
    };
    assert_eq!(keys(&response), [(1, LEN), (2, LEN), (3, LEN), (4, VARINT)]);
    // int32 is a plain varint: 100 encodes as one byte.
    let credit = FetchRequest {
        num_requested: 100,
        ..FetchRequest::default()
    };
    assert_eq!(credit.encode_to_vec(), [0x20, 100]);
}

#[test]
fn publish_messages() {
    let request = PublishRequest {
        topic_name: s(),
        events: vec![ProducerEvent::default()],
        auth_refresh: s(),
    };
    assert_eq!(keys(&request), [(1, LEN), (2, LEN), (3, LEN)]);
    let result = PublishResult {
        replay_id: b(),
        error: Some(Error {
            code: ErrorCode::Commit as i32,
            msg: s(),
        }),
        correlation_key: s(),
    };
    assert_eq!(keys(&result), [(1, LEN), (2, LEN), (3, LEN)]);
    let error = Error {
        code: ErrorCode::Publish as i32,
        msg: s(),
    };
    assert_eq!(keys(&error), [(1, VARINT), (2, LEN)]);
    let response = PublishResponse {
        results: vec![PublishResult::default()],
        schema_id: s(),
        rpc_id: s(),
    };
    assert_eq!(keys(&response), [(1, LEN), (2, LEN), (3, LEN)]);
}

#[test]
fn enum_values() {
    assert_eq!(ReplayPreset::Latest as i32, 0);
    assert_eq!(ReplayPreset::Earliest as i32, 1);
    assert_eq!(ReplayPreset::Custom as i32, 2);
    assert_eq!(ErrorCode::Unknown as i32, 0);
    assert_eq!(ErrorCode::Publish as i32, 1);
    assert_eq!(ErrorCode::Commit as i32, 2);
    assert_eq!(
        ReplayPreset::default(),
        ReplayPreset::Latest,
        "LATEST is the default"
    );
}

#[test]
fn method_paths_follow_the_package_and_service() {
    // The generated client calls these paths, derived by the usual gRPC rule from package
    // eventbus.v1, service PubSub (docs/salesforce.md, "Pub/Sub: endpoint and call metadata").
    let generated = include_str!(concat!(env!("OUT_DIR"), "/eventbus.v1.rs"));
    for method in [
        "Subscribe",
        "GetSchema",
        "GetTopic",
        "Publish",
        "PublishStream",
    ] {
        assert!(
            generated.contains(&format!("\"/eventbus.v1.PubSub/{method}\"")),
            "{method}"
        );
    }
}

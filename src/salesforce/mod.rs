//! The Salesforce side: ids today; OAuth, Pub/Sub, CometD and normalization with the subscriber.

pub mod id;

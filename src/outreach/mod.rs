//! The Outreach side: the user model and (with its issue) the JSON:API client.

pub mod user;

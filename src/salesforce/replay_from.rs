//! Where an admin asks the stream to start again (`usersync replay --from …`,
//! `POST /api/v1/replay`), and the plan shown before it is confirmed. Pure.
//!
//! `from` is `earliest` (every change Salesforce still holds), `latest` (the newest position,
//! skipping what was not published yet) or a replay id in the form events carry in
//! `origin.replay_id`: lower-case hex of the opaque bytes on Pub/Sub, a decimal number on
//! CometD. The form depends on `salesforce.transport`, because the checkpoint of each
//! transport is kept apart and one transport's ids mean nothing to the other.
//!
//! The plan says, in words an admin can check before confirming, where the stream is now,
//! what will be read again, what will not be read, and when the checkpoint moves: moving it
//! back re-publishes changes (harmless: the processor skips what it applied), moving it
//! forward skips changes (not harmless: a resync recovers them).
//!
//! [`ReplayFrom`] itself is declared in `connection::replay`, beside the board that carries it
//! from the admin surface to the subscriber, and re-exported here: the connection model needs
//! the value, not Salesforce. Its forms per transport ([`ReplayFrom::parse`],
//! [`ReplayFrom::render`]) know Salesforce's replay ids, so they are written here.

use std::fmt;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::normalize::Replay;
use super::replay::ReplayPolicy;
use crate::config::Transport;
use crate::store::ReplayCheckpoint;

pub use crate::connection::ReplayFrom;

/// How long Salesforce keeps change events: what `earliest` reaches back to.
pub const RETENTION_HOURS: i64 = 72;

/// The longest Pub/Sub replay id taken, in bytes; real ones are a few bytes long.
const MAX_REPLAY_ID_BYTES: usize = 128;

/// Why a `from` was refused; the message names the value and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReplayFromError(String);

impl ReplayFrom {
    /// Reads `from` as the configured transport writes replay ids. `earliest` and `latest`
    /// are taken in any case.
    pub fn parse(from: &str, transport: Transport) -> Result<ReplayFrom, ReplayFromError> {
        let text = from.trim();
        if text.eq_ignore_ascii_case("earliest") {
            return Ok(ReplayFrom::Earliest);
        }
        if text.eq_ignore_ascii_case("latest") {
            return Ok(ReplayFrom::Latest);
        }
        if text.is_empty() {
            return Err(ReplayFromError(
                "from is empty: give earliest, latest or a replay id".into(),
            ));
        }
        match transport {
            Transport::Pubsub => parse_pubsub(text),
            Transport::Cometd => parse_cometd(text),
        }
    }

    /// The form an admin gives and events carry: `earliest`, `latest`, or the replay id.
    pub fn render(&self, transport: Transport) -> String {
        match self {
            ReplayFrom::Earliest => "earliest".into(),
            ReplayFrom::Latest => "latest".into(),
            ReplayFrom::After(bytes) => render_replay_id(transport, bytes),
        }
    }
}

fn parse_pubsub(text: &str) -> Result<ReplayFrom, ReplayFromError> {
    const FORM: &str = "with salesforce.transport = \"pubsub\" a replay id is the bytes of \
                        Salesforce's replay id as lower-case hex, as in an event's \
                        origin.replay_id";
    if let Some((at, bad)) = text.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
        return Err(ReplayFromError(format!(
            "from {text:?} is not earliest, latest or a replay id: {bad:?} at position {} is \
             not a hex digit; {FORM}",
            at + 1
        )));
    }
    if text.len() % 2 == 1 {
        return Err(ReplayFromError(format!(
            "from {text:?} has an odd number of hex digits ({}): {FORM}, two digits a byte",
            text.len()
        )));
    }
    if text.len() / 2 > MAX_REPLAY_ID_BYTES {
        return Err(ReplayFromError(format!(
            "from is {} bytes long: no replay id is longer than {MAX_REPLAY_ID_BYTES}",
            text.len() / 2
        )));
    }
    let bytes = hex::decode(text).map_err(|e| ReplayFromError(format!("from {text:?}: {e}")))?;
    Ok(ReplayFrom::After(bytes))
}

fn parse_cometd(text: &str) -> Result<ReplayFrom, ReplayFromError> {
    const FORM: &str = "with salesforce.transport = \"cometd\" a replay id is a decimal \
                        number, as in an event's origin.replay_id";
    let id: i64 = text.parse().map_err(|_| {
        ReplayFromError(format!(
            "from {text:?} is not earliest, latest or a replay id: {FORM}"
        ))
    })?;
    match id {
        -1 => Err(ReplayFromError(
            "from -1 is CometD's \"newest\": give latest".into(),
        )),
        -2 => Err(ReplayFromError(
            "from -2 is CometD's \"oldest retained\": give earliest".into(),
        )),
        id if id < 0 => Err(ReplayFromError(format!(
            "from {id} is negative: {FORM}, never below 0"
        ))),
        id => Ok(ReplayFrom::After(id.to_be_bytes().to_vec())),
    }
}

/// A stored replay id in the event's form (`origin.replay_id`): Pub/Sub bytes as lower-case
/// hex; a CometD id, stored as 8 big-endian bytes, in decimal.
pub fn render_replay_id(transport: Transport, replay_id: &[u8]) -> String {
    match (transport, <[u8; 8]>::try_from(replay_id)) {
        (Transport::Cometd, Ok(bytes)) => Replay::CometD(i64::from_be_bytes(bytes)).render(),
        _ => Replay::PubSub(replay_id).render(),
    }
}

/// The checkpoint as the plan shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointView {
    /// In the event's form; `None` for a pin (the stream opened at its newest position and
    /// has delivered no position since).
    pub replay_id: Option<String>,
    /// The commit time of the change at that position; for a pin, when the stream was opened.
    pub commit_timestamp: Option<DateTime<Utc>>,
}

impl CheckpointView {
    pub fn of(transport: Transport, checkpoint: &ReplayCheckpoint) -> CheckpointView {
        CheckpointView {
            replay_id: (!checkpoint.replay_id.is_empty())
                .then(|| render_replay_id(transport, &checkpoint.replay_id)),
            commit_timestamp: checkpoint.commit_timestamp,
        }
    }
}

/// What a replay request will do, in words, before it is confirmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayPlan {
    /// `earliest`, `latest` or the replay id, as given back.
    pub from: String,
    pub transport: Transport,
    /// The checkpoint now (`None`: the subscriber has none yet).
    pub checkpoint: Option<CheckpointView>,
    /// Where the stream resumes today.
    pub now: String,
    /// What is read again.
    pub rereads: String,
    /// What is not read, when the move skips changes, and how to recover them.
    pub skipped: Option<String>,
    /// When the checkpoint moves, and what a restart does before that.
    pub then: String,
    /// For a replay id: whether Salesforce, asked just now, still holds it (filled in by the
    /// caller, which can ask).
    pub checked: Option<String>,
}

impl ReplayPlan {
    /// The plan as lines for a terminal.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![
            format!(
                "Replay from {} ({}).",
                self.from,
                transport_name(self.transport)
            ),
            format!("Now: {}", self.now),
            format!("Read again: {}", self.rereads),
        ];
        if let Some(skipped) = &self.skipped {
            lines.push(format!("Not read: {skipped}"));
        }
        if let Some(checked) = &self.checked {
            lines.push(format!("Checked: {checked}"));
        }
        lines.push(format!("Then: {}", self.then));
        lines
    }
}

impl fmt::Display for ReplayPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lines().join("\n"))
    }
}

fn transport_name(transport: Transport) -> &'static str {
    match transport {
        Transport::Pubsub => "Pub/Sub API",
        Transport::Cometd => "Streaming API (CometD)",
    }
}

fn when(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

const RECOVER: &str = "a resync (usersync resync, or POST /api/v1/resync) reads every user \
                       again and recovers them";

/// The plan of moving the stream of `transport` to `from`, with the checkpoint stored now.
/// `transactional`: the checkpoint lives in Kafka (`kafka.transactional_id`).
pub fn plan(
    from: &ReplayFrom,
    transport: Transport,
    checkpoint: Option<&ReplayCheckpoint>,
    policy: ReplayPolicy,
    transactional: bool,
    now: DateTime<Utc>,
) -> ReplayPlan {
    let view = checkpoint.map(|c| CheckpointView::of(transport, c));
    let where_now = match &view {
        None => "no checkpoint yet: the subscriber has not finished its first read of every \
                 user."
            .to_owned(),
        Some(CheckpointView {
            replay_id: None,
            commit_timestamp,
        }) => format!(
            "the stream is pinned at its newest position since {}, with no replay id yet.",
            commit_timestamp.map_or_else(|| "an unknown time".to_owned(), when)
        ),
        Some(CheckpointView {
            replay_id: Some(id),
            commit_timestamp,
        }) => format!(
            "the stream resumes after replay id {id}{}.",
            commit_timestamp.map_or_else(
                || " (its time is not known)".to_owned(),
                |at| format!(", a change committed at {}", when(at))
            )
        ),
    };
    let since_checkpoint = match view.as_ref().and_then(|c| c.commit_timestamp) {
        Some(at) => format!("the checkpoint ({})", when(at)),
        None => "the checkpoint".to_owned(),
    };
    let (rereads, skipped) = match from {
        ReplayFrom::Earliest => (
            format!(
                "every change Salesforce still holds, from about {} (it keeps change events \
                 for {RETENTION_HOURS} hours), is published again; the processor skips what it \
                 already applied.",
                when(now - Duration::hours(RETENTION_HOURS))
            ),
            None,
        ),
        ReplayFrom::Latest => (
            "nothing: the stream skips to its newest position.".to_owned(),
            Some(format!(
                "changes made between {since_checkpoint} and now that were not yet published \
                 are never read; {RECOVER}."
            )),
        ),
        ReplayFrom::After(bytes) => {
            let id = render_replay_id(transport, bytes);
            let fallback = match policy {
                ReplayPolicy::Resync => {
                    "every user is read again through REST (replay_policy \"resync\")"
                }
                ReplayPolicy::Latest => {
                    "the stream skips to its newest position (replay_policy \"latest\")"
                }
                ReplayPolicy::Fail => "the subscriber stops (replay_policy \"fail\")",
            };
            let rereads = format!(
                "every change after replay id {id} that Salesforce still holds is published \
                 again; the processor skips what it already applied. Should Salesforce no \
                 longer hold {id} when the stream opens, {fallback}."
            );
            // CometD ids are numbers in stream order, so a move forward can be told; Pub/Sub
            // ids are opaque.
            match (transport, checkpoint.map(|c| c.replay_id.as_slice())) {
                (Transport::Cometd, Some(stored)) if stored.len() == 8 => {
                    let stored = i64::from_be_bytes(stored.try_into().expect("8 bytes"));
                    let asked = i64::from_be_bytes(bytes.as_slice().try_into().unwrap_or([0; 8]));
                    if asked == stored {
                        (
                            format!(
                                "nothing: replay id {id} is the checkpoint; the stream resumes \
                                 where it is."
                            ),
                            None,
                        )
                    } else if asked > stored {
                        (
                            format!("nothing: replay id {id} is after the checkpoint ({stored})."),
                            Some(format!(
                                "changes between replay ids {stored} and {id} that were not \
                                 yet published are never read; {RECOVER}."
                            )),
                        )
                    } else {
                        (rereads, None)
                    }
                }
                _ => (rereads, None),
            }
        }
    };
    let moves = if transactional {
        "the new position is committed to Kafka with the first batch read from there \
         (transactional mode)"
    } else {
        "the checkpoint moves once Kafka has confirmed the first position read from there"
    };
    let then = format!(
        "the subscriber ends its stream and opens it again from there; {moves}. Until then a \
         restart resumes from the current checkpoint, and the request must be made again."
    );
    ReplayPlan {
        from: from.render(transport),
        transport,
        checkpoint: view,
        now: capitalized(&where_now),
        rereads: capitalized(&rereads),
        skipped: skipped.map(|s| capitalized(&s)),
        then: capitalized(&then),
        checked: None,
    }
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn checkpoint(replay_id: Vec<u8>, commit: Option<&str>) -> ReplayCheckpoint {
        ReplayCheckpoint {
            topic: "/data/UserChangeEvent".into(),
            replay_id,
            commit_timestamp: commit.map(at),
            updated_at: at("2025-03-04T05:06:07Z"),
        }
    }

    #[test]
    fn earliest_and_latest_are_taken_on_either_transport_in_any_case() {
        for transport in [Transport::Pubsub, Transport::Cometd] {
            assert_eq!(
                ReplayFrom::parse("earliest", transport),
                Ok(ReplayFrom::Earliest)
            );
            assert_eq!(
                ReplayFrom::parse(" Latest ", transport),
                Ok(ReplayFrom::Latest)
            );
        }
    }

    #[test]
    fn a_pubsub_replay_id_is_hex_of_its_bytes_as_events_carry_it() {
        let from = ReplayFrom::parse("000000000000002a0000", Transport::Pubsub).unwrap();
        assert_eq!(
            from,
            ReplayFrom::After(vec![0, 0, 0, 0, 0, 0, 0, 0x2a, 0, 0])
        );
        assert_eq!(from.render(Transport::Pubsub), "000000000000002a0000");
        // The form of origin.replay_id, which the normalizer writes.
        let bytes = [0x0a, 0xff, 0x10];
        assert_eq!(
            ReplayFrom::parse(&Replay::PubSub(&bytes).render(), Transport::Pubsub),
            Ok(ReplayFrom::After(bytes.to_vec()))
        );
        assert_eq!(
            ReplayFrom::parse("0AFF10", Transport::Pubsub),
            Ok(ReplayFrom::After(bytes.to_vec())),
            "upper-case digits read the same"
        );
    }

    #[test]
    fn a_bad_pubsub_replay_id_is_refused_saying_what_is_wrong() {
        let refused = |from: &str| {
            ReplayFrom::parse(from, Transport::Pubsub)
                .unwrap_err()
                .to_string()
        };
        let message = refused("00zz");
        assert!(
            message.contains("'z' at position 3 is not a hex digit")
                && message.contains("salesforce.transport = \"pubsub\"")
                && message.contains("origin.replay_id"),
            "{message}"
        );
        assert!(
            refused("abc").contains("odd number of hex digits (3)"),
            "{}",
            refused("abc")
        );
        assert!(refused("").contains("from is empty"));
        assert!(refused("   ").contains("from is empty"));
        assert!(refused("-5").contains("'-' at position 1"));
        assert!(refused(&"00".repeat(129)).contains("129 bytes long"));
    }

    #[test]
    fn a_cometd_replay_id_is_a_decimal_number_stored_as_eight_bytes() {
        let from = ReplayFrom::parse("4711", Transport::Cometd).unwrap();
        assert_eq!(from, ReplayFrom::After(4711_i64.to_be_bytes().to_vec()));
        assert_eq!(from.render(Transport::Cometd), "4711");
        assert_eq!(
            ReplayFrom::parse("0", Transport::Cometd),
            Ok(ReplayFrom::After(vec![0; 8]))
        );
    }

    #[test]
    fn a_bad_cometd_replay_id_is_refused_saying_what_is_wrong() {
        let refused = |from: &str| {
            ReplayFrom::parse(from, Transport::Cometd)
                .unwrap_err()
                .to_string()
        };
        // A Pub/Sub id given to a CometD subscriber.
        let message = refused("000000000000002a0000a");
        assert!(
            message.contains("salesforce.transport = \"cometd\"")
                && message.contains("decimal number"),
            "{message}"
        );
        assert!(refused("12.5").contains("decimal number"));
        assert!(refused("-1").contains("give latest"));
        assert!(refused("-2").contains("give earliest"));
        assert!(refused("-7").contains("negative"));
        assert!(refused("99999999999999999999").contains("decimal number"));
    }

    #[test]
    fn stored_replay_ids_render_as_events_carry_them() {
        assert_eq!(
            render_replay_id(Transport::Cometd, &42_i64.to_be_bytes()),
            "42"
        );
        assert_eq!(render_replay_id(Transport::Pubsub, &[0, 0x2a]), "002a");
        // A CometD checkpoint that is not 8 bytes is shown as it is, in hex.
        assert_eq!(render_replay_id(Transport::Cometd, &[1, 2]), "0102");
    }

    #[test]
    fn the_earliest_plan_reaches_back_over_the_retention_and_says_nothing_is_applied_twice() {
        let now = at("2025-03-10T12:30:00Z");
        let stored = checkpoint(vec![0, 0x2a], Some("2025-03-10T12:00:00Z"));
        let plan = plan(
            &ReplayFrom::Earliest,
            Transport::Pubsub,
            Some(&stored),
            ReplayPolicy::Resync,
            false,
            now,
        );
        assert_eq!(plan.from, "earliest");
        assert_eq!(
            plan.checkpoint,
            Some(CheckpointView {
                replay_id: Some("002a".into()),
                commit_timestamp: Some(at("2025-03-10T12:00:00Z")),
            })
        );
        assert_eq!(
            plan.now,
            "The stream resumes after replay id 002a, a change committed at 2025-03-10 12:00 UTC."
        );
        assert!(
            plan.rereads.starts_with(
                "Every change Salesforce still holds, from about 2025-03-07 12:30 UTC"
            ),
            "{}",
            plan.rereads
        );
        assert!(
            plan.rereads
                .contains("the processor skips what it already applied")
        );
        assert_eq!(plan.skipped, None);
        assert!(
            plan.then
                .contains("once Kafka has confirmed the first position"),
            "{}",
            plan.then
        );
        let text = plan.to_string();
        assert!(
            text.starts_with("Replay from earliest (Pub/Sub API).\nNow: "),
            "{text}"
        );
    }

    #[test]
    fn the_latest_plan_says_plainly_what_is_not_read_and_how_to_recover_it() {
        let now = at("2025-03-10T12:30:00Z");
        let stored = checkpoint(vec![0, 0x2a], Some("2025-03-10T12:00:00Z"));
        let plan = plan(
            &ReplayFrom::Latest,
            Transport::Pubsub,
            Some(&stored),
            ReplayPolicy::Resync,
            true,
            now,
        );
        assert_eq!(
            plan.rereads,
            "Nothing: the stream skips to its newest position."
        );
        assert_eq!(
            plan.skipped.as_deref(),
            Some(
                "Changes made between the checkpoint (2025-03-10 12:00 UTC) and now that were \
                 not yet published are never read; a resync (usersync resync, or POST \
                 /api/v1/resync) reads every user again and recovers them."
            )
        );
        assert!(
            plan.then
                .contains("committed to Kafka with the first batch"),
            "{}",
            plan.then
        );
        assert!(
            plan.to_string()
                .contains("\nNot read: Changes made between")
        );
    }

    #[test]
    fn a_replay_id_plan_names_the_id_and_what_the_policy_does_if_it_is_gone() {
        let now = at("2025-03-10T12:30:00Z");
        let from = ReplayFrom::parse("0a0b", Transport::Pubsub).unwrap();
        let plan = plan(
            &from,
            Transport::Pubsub,
            None,
            ReplayPolicy::Fail,
            false,
            now,
        );
        assert_eq!(plan.from, "0a0b");
        assert_eq!(plan.checkpoint, None);
        assert!(plan.now.starts_with("No checkpoint yet"), "{}", plan.now);
        assert!(
            plan.rereads
                .starts_with("Every change after replay id 0a0b that Salesforce still holds"),
            "{}",
            plan.rereads
        );
        assert!(
            plan.rereads
                .contains("the subscriber stops (replay_policy \"fail\")")
        );
        assert_eq!(plan.skipped, None);
    }

    #[test]
    fn a_cometd_replay_id_after_the_checkpoint_is_a_skip_and_said_so() {
        let now = at("2025-03-10T12:30:00Z");
        let stored = checkpoint(40_i64.to_be_bytes().to_vec(), None);
        let plan_for = |id: &str| {
            plan(
                &ReplayFrom::parse(id, Transport::Cometd).unwrap(),
                Transport::Cometd,
                Some(&stored),
                ReplayPolicy::Resync,
                false,
                now,
            )
        };
        let back = plan_for("12");
        assert!(back.rereads.starts_with("Every change after replay id 12"));
        assert_eq!(back.skipped, None);
        assert_eq!(
            back.now,
            "The stream resumes after replay id 40 (its time is not known)."
        );
        let same = plan_for("40");
        assert!(
            same.rereads.contains("is the checkpoint"),
            "{}",
            same.rereads
        );
        assert_eq!(same.skipped, None);
        let ahead = plan_for("45");
        assert!(ahead.rereads.starts_with("Nothing"), "{}", ahead.rereads);
        assert!(
            ahead
                .skipped
                .as_deref()
                .is_some_and(|s| s.contains("between replay ids 40 and 45")
                    && s.contains("resync")),
            "{:?}",
            ahead.skipped
        );
    }

    #[test]
    fn a_pin_is_shown_with_the_time_the_stream_was_opened() {
        let now = at("2025-03-10T12:30:00Z");
        let pin = checkpoint(Vec::new(), Some("2025-03-10T11:00:00Z"));
        let plan = plan(
            &ReplayFrom::Latest,
            Transport::Cometd,
            Some(&pin),
            ReplayPolicy::Resync,
            false,
            now,
        );
        assert_eq!(
            plan.checkpoint,
            Some(CheckpointView {
                replay_id: None,
                commit_timestamp: Some(at("2025-03-10T11:00:00Z")),
            })
        );
        assert!(
            plan.now
                .contains("pinned at its newest position since 2025-03-10 11:00 UTC"),
            "{}",
            plan.now
        );
    }
}

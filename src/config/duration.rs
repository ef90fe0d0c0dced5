//! Durations in the configuration file. A key keeps its unit in its name
//! (`processor.retry_min_ms`, `outreach.timeout_seconds`) and holds a whole number there, while
//! the struct behind it holds a [`Duration`], so no component converts units itself:
//! `#[serde(rename = "retry_min_ms", with = "duration::millis")]`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// A whole number of seconds.
pub mod seconds {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(value.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_secs)
    }
}

/// A whole number of milliseconds.
pub mod millis {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        // Any duration a configuration holds is far below u64::MAX milliseconds.
        serializer.serialize_u64(u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Waits {
        #[serde(rename = "pause_seconds", with = "seconds")]
        pause: Duration,
        #[serde(rename = "retry_ms", with = "millis")]
        retry: Duration,
    }

    #[test]
    fn a_duration_reads_and_writes_as_a_number_of_its_unit() {
        let waits: Waits = toml::from_str("pause_seconds = 30\nretry_ms = 250\n").unwrap();
        assert_eq!(
            waits,
            Waits {
                pause: Duration::from_secs(30),
                retry: Duration::from_millis(250),
            }
        );
        assert_eq!(
            toml::to_string(&waits).unwrap(),
            "pause_seconds = 30\nretry_ms = 250\n"
        );
    }

    #[test]
    fn a_negative_or_fractional_number_is_refused() {
        for text in [
            "pause_seconds = -1\nretry_ms = 1\n",
            "pause_seconds = 1.5\nretry_ms = 1\n",
        ] {
            assert!(toml::from_str::<Waits>(text).is_err(), "{text}");
        }
    }
}

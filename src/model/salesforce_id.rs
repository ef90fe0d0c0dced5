//! Salesforce record ids.
//!
//! Salesforce shows two spellings of one id: the 15-character form, which is case-sensitive,
//! and the 18-character form, which appends a 3-character suffix encoding the case of the first
//! fifteen so that the id survives case-insensitive systems. usersync accepts both and always
//! emits the 18-character form, so that one user never appears under two keys. A wrong suffix
//! means the id was mangled somewhere (a spreadsheet, a lower-casing tool): it is refused, not
//! repaired.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The alphabet of the checksum suffix: value 0..=31 maps to one character.
const SUFFIX_ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";

/// An 18-character Salesforce id with a verified checksum.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SalesforceId(String);

/// Why a string is not a Salesforce id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SalesforceIdError {
    #[error("Salesforce id {0:?} has {1} characters; expected 15 or 18")]
    Length(String, usize),
    #[error("Salesforce id {0:?} contains {1:?}; only letters and digits are allowed")]
    Character(String, char),
    #[error(
        "Salesforce id {id:?} has checksum suffix {found:?}; its first 15 characters give {expected:?}"
    )]
    Checksum {
        id: String,
        found: String,
        expected: String,
    },
}

impl SalesforceId {
    /// Parses a 15- or 18-character id and returns its 18-character form.
    pub fn parse(raw: &str) -> Result<Self, SalesforceIdError> {
        let len = raw.chars().count();
        if len != 15 && len != 18 {
            return Err(SalesforceIdError::Length(raw.to_string(), len));
        }
        if let Some(bad) = raw.chars().find(|c| !c.is_ascii_alphanumeric()) {
            return Err(SalesforceIdError::Character(raw.to_string(), bad));
        }
        let expected = checksum_suffix(&raw[..15]);
        if len == 18 {
            let found = &raw[15..];
            if !found.eq_ignore_ascii_case(&expected) {
                return Err(SalesforceIdError::Checksum {
                    id: raw.to_string(),
                    found: found.to_string(),
                    expected,
                });
            }
        }
        Ok(Self(format!("{}{}", &raw[..15], expected)))
    }

    /// The 18-character form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 3-character key prefix naming the object type (`005` for User, `00D` for Organization).
    pub fn key_prefix(&self) -> &str {
        &self.0[..3]
    }

    /// True for User ids.
    pub fn is_user(&self) -> bool {
        self.key_prefix() == "005"
    }
}

/// Computes the 3-character suffix for the first 15 characters of an id: each 5-character
/// chunk becomes a 5-bit number with bit i set when character i is an upper-case letter.
fn checksum_suffix(first15: &str) -> String {
    first15
        .as_bytes()
        .chunks(5)
        .map(|chunk| {
            let bits = chunk
                .iter()
                .enumerate()
                .filter(|(_, b)| b.is_ascii_uppercase())
                .fold(0usize, |acc, (i, _)| acc | (1 << i));
            SUFFIX_ALPHABET[bits] as char
        })
        .collect()
}

impl FromStr for SalesforceId {
    type Err = SalesforceIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for SalesforceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SalesforceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SalesforceId({})", self.0)
    }
}

impl Serialize for SalesforceId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SalesforceId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifteen_characters_gain_the_documented_suffix() {
        // The sample user id of docs/salesforce.md ("A User change by both transports") and the
        // decisions.md example.
        assert_eq!(
            SalesforceId::parse("0055f00000GBZR4").unwrap().as_str(),
            "0055f00000GBZR4AAP"
        );
        assert_eq!(
            SalesforceId::parse("005000000000001").unwrap().as_str(),
            "005000000000001AAA"
        );
        // "00DAB": bits 2,3,4 = 28 is '2'; an all-capitals chunk is 31, '5'.
        assert_eq!(
            SalesforceId::parse("00DABCDEFGHIJKL").unwrap().as_str(),
            "00DABCDEFGHIJKL255"
        );
    }

    #[test]
    fn eighteen_characters_are_checked_and_kept() {
        let id = SalesforceId::parse("0055f00000GBZR4AAP").unwrap();
        assert_eq!(id.as_str(), "0055f00000GBZR4AAP");
        assert!(id.is_user());
        // A lower-case suffix is the same suffix.
        assert_eq!(
            SalesforceId::parse("0055f00000GBZR4aap").unwrap().as_str(),
            "0055f00000GBZR4AAP"
        );
    }

    #[test]
    fn wrong_checksum_is_refused_with_both_suffixes() {
        let err = SalesforceId::parse("0055f00000GBZR4AAA").unwrap_err();
        assert_eq!(
            err,
            SalesforceIdError::Checksum {
                id: "0055f00000GBZR4AAA".into(),
                found: "AAA".into(),
                expected: "AAP".into()
            }
        );
        assert!(err.to_string().contains("0055f00000GBZR4AAA"));
        // A lower-cased id loses the case the checksum encodes.
        assert!(matches!(
            SalesforceId::parse("0055f00000gbzr4AAP"),
            Err(SalesforceIdError::Checksum { .. })
        ));
    }

    #[test]
    fn malformed_ids_name_the_problem() {
        assert_eq!(
            SalesforceId::parse("005").unwrap_err(),
            SalesforceIdError::Length("005".into(), 3)
        );
        assert_eq!(
            SalesforceId::parse("005-00000000001").unwrap_err(),
            SalesforceIdError::Character("005-00000000001".into(), '-')
        );
        assert!(SalesforceId::parse("00500000000000é").is_err());
    }

    #[test]
    fn serde_round_trip_emits_eighteen() {
        let id: SalesforceId = serde_json::from_str("\"0055f00000GBZR4\"").unwrap();
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "\"0055f00000GBZR4AAP\""
        );
        let err = serde_json::from_str::<SalesforceId>("\"0055f00000GBZR4AAB\"").unwrap_err();
        assert!(err.to_string().contains("checksum"));
    }
}

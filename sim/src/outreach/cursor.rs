//! Opaque pagination cursors for `page[after]`.
//!
//! Outreach's cursors are opaque: clients must follow `links.next` rather than build them.
//! The simulator's cursor names the last id of the page (listings are ordered by id), so
//! users created between page requests never cause a skip or a repeat. It is wrapped in
//! base64url with a tag so that a client fabricating or truncating one gets a 400 rather
//! than silently wrong results.

use super::base64url;

const TAG: &str = "users-after:";

/// The cursor that resumes after the user with id `last_id`.
pub fn encode(last_id: i64) -> String {
    base64url::encode(format!("{TAG}{last_id}").as_bytes())
}

/// The id a cursor resumes after, or `None` if the text is not one of ours.
pub fn decode(cursor: &str) -> Option<i64> {
    let bytes = base64url::decode(cursor)?;
    let text = String::from_utf8(bytes).ok()?;
    text.strip_prefix(TAG)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for id in [0, 1, 49, 2_500, i64::MAX] {
            assert_eq!(decode(&encode(id)), Some(id));
        }
    }

    #[test]
    fn is_opaque_and_url_safe() {
        let cursor = encode(1000);
        assert!(!cursor.contains("1000"));
        assert!(
            cursor
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }

    #[test]
    fn rejects_text_that_is_not_a_cursor() {
        assert_eq!(decode("1000"), None);
        assert_eq!(decode(""), None);
        assert_eq!(decode(&base64url_of("users-after:x")), None);
        assert_eq!(decode(&base64url_of("other:5")), None);
    }

    fn base64url_of(text: &str) -> String {
        base64url::encode(text.as_bytes())
    }
}

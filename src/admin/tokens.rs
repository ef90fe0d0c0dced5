//! The admin tokens a server accepts, each with a name and a role, as the configuration gives
//! them: the entries of `[[admin.tokens]]`, and `admin.token`, which is the token named
//! `admin` with the role `admin` (the one shared token from before named tokens, still taken
//! as it was).
//!
//! An entry's token is given as `token` or read from the file `token_file` names (a mounted
//! container secret; one trailing line break dropped) — the one place here that does I/O.
//!
//! Checked when the configuration is loaded, every error naming the entry (never a token):
//! names are unique, 1 to [`MAX_NAME_CHARS`] letters, digits, `-`, `_` or `.`, and not
//! [`LOCAL_ACTOR`] (the actor of a server without tokens); roles are `viewer` or `admin`;
//! every entry has a token; no two tokens are equal, or the trail could not tell their
//! carriers apart. How long a token must be depends on where the server listens, so
//! [`refuse_beyond_loopback`] checks that when it binds. docs/security.md, "Roles and the
//! actor trail".

use std::net::SocketAddr;

use super::MIN_TOKEN_CHARS;
use super::actor::{LOCAL_ACTOR, Role};
use crate::config::{AdminConfig, AdminTokenConfig, Secret};

/// The longest token name: it is shown in every line of the trail.
pub const MAX_NAME_CHARS: usize = 64;

/// The name `admin.token` goes by.
pub const SHARED_TOKEN_NAME: &str = "admin";

/// One token the server accepts.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken {
    pub name: String,
    pub role: Role,
    pub token: Secret,
    /// Where it was configured, for an error message: `admin.token, USERSYNC_ADMIN__TOKEN` or
    /// `admin.tokens entry 2 ("ci")`.
    pub source: String,
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminToken")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("token", &self.token)
            .finish()
    }
}

impl AdminToken {
    /// A token named `name` with `role`, as a test or a tool makes one.
    pub fn new(name: &str, role: Role, token: &str) -> AdminToken {
        AdminToken {
            name: name.to_owned(),
            role,
            token: Secret::new(token),
            source: format!("the token {name:?}"),
        }
    }
}

/// How an entry of `[[admin.tokens]]` is named in errors: by its place (counted from 1), and
/// its name when it has one.
pub fn entry_label(index: usize, name: &str) -> String {
    if name.is_empty() {
        format!("admin.tokens entry {}", index + 1)
    } else {
        format!("admin.tokens entry {} ({name:?})", index + 1)
    }
}

/// The tokens `admin` configures, checked, each `token_file` read; empty when none is
/// (loopback only).
pub fn configured(admin: &AdminConfig) -> Result<Vec<AdminToken>, String> {
    let mut tokens = Vec::new();
    if !admin.token.expose().is_empty() {
        tokens.push(AdminToken {
            name: SHARED_TOKEN_NAME.to_owned(),
            role: Role::Admin,
            token: admin.token.clone(),
            source: "admin.token, USERSYNC_ADMIN__TOKEN".to_owned(),
        });
    }
    for (index, entry) in admin.tokens.iter().enumerate() {
        let which = entry_label(index, &entry.name);
        check_name(&entry.name).map_err(|problem| format!("{which}: {problem}"))?;
        let role = Role::parse(&entry.role).ok_or_else(|| {
            format!(
                "{which}: role {:?} is not one of viewer (reads) or admin (reads and changes)",
                entry.role
            )
        })?;
        let token = token_of(entry).map_err(|problem| format!("{which}{problem}"))?;
        if let Some(same) = tokens.iter().find(|t| t.name == entry.name) {
            let hint = if same.name == SHARED_TOKEN_NAME {
                " (admin.token goes by that name)"
            } else {
                ""
            };
            return Err(format!(
                "{which}: the name {:?} is taken by {}{hint}; each token needs its own name",
                entry.name, same.source
            ));
        }
        if let Some(same) = tokens.iter().find(|t| t.token == token) {
            return Err(format!(
                "{which} has the same token as {}: each token needs its own, or the trail \
                 cannot tell who acted",
                same.source
            ));
        }
        tokens.push(AdminToken {
            name: entry.name.clone(),
            role,
            token,
            source: which,
        });
    }
    Ok(tokens)
}

/// An entry's token: `token`, or the content of `token_file` without one trailing line break.
/// The error follows the entry's label (it starts with `:` or a space) and never holds the
/// token.
fn token_of(entry: &AdminTokenConfig) -> Result<Secret, String> {
    let token = if entry.token_file.is_empty() {
        entry.token.clone()
    } else {
        if !entry.token.expose().is_empty() {
            return Err(" sets both token and token_file; set one".into());
        }
        let text = std::fs::read_to_string(&entry.token_file)
            .map_err(|e| format!(": token_file {:?} cannot be read: {e}", entry.token_file))?;
        let token = text
            .strip_suffix("\r\n")
            .or_else(|| text.strip_suffix('\n'))
            .unwrap_or(&text);
        Secret::new(token)
    };
    if token.expose().is_empty() {
        let whence = if entry.token_file.is_empty() {
            String::new()
        } else {
            format!(" (token_file {:?} is empty)", entry.token_file)
        };
        return Err(format!(
            " has no token{whence}: set token, or token_file to a file holding it"
        ));
    }
    Ok(token)
}

/// A name is 1 to [`MAX_NAME_CHARS`] letters, digits, `-`, `_`, `.`, and not the local actor's.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("name is missing: name each token (letters, digits, - _ .)".into());
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(format!(
            "name {name:?} is longer than {MAX_NAME_CHARS} characters"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "name {name:?} holds {bad:?}: use letters, digits, - _ and . only"
        ));
    }
    if name == LOCAL_ACTOR {
        return Err(format!(
            "name {name:?} is the actor of a server without tokens; choose another"
        ));
    }
    Ok(())
}

/// Refuses to listen beyond loopback without a token, or with a token shorter than
/// [`MIN_TOKEN_CHARS`]; the error names the token and its length, never the token.
pub fn refuse_beyond_loopback(listen: SocketAddr, tokens: &[AdminToken]) -> Result<(), String> {
    if listen.ip().is_loopback() {
        return Ok(());
    }
    if tokens.is_empty() {
        return Err(format!(
            "admin.listen {listen} is not a loopback address; without an admin token \
             (admin.token, USERSYNC_ADMIN__TOKEN, or [[admin.tokens]]) the admin server \
             listens on loopback only"
        ));
    }
    for token in tokens {
        let length = token.token.expose().chars().count();
        if length < MIN_TOKEN_CHARS {
            return Err(format!(
                "the admin token {:?} ({}) has {length} characters; listening beyond loopback \
                 (admin.listen {listen}) it needs at least {MIN_TOKEN_CHARS}: make one with \
                 `openssl rand -hex 24`",
                token.name, token.source
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG_A: &str = "0123456789abcdef0123456789abcdef-a";
    const LONG_B: &str = "0123456789abcdef0123456789abcdef-b";

    fn entry(name: &str, role: &str, token: &str) -> AdminTokenConfig {
        AdminTokenConfig {
            name: name.into(),
            role: role.into(),
            token: Secret::new(token),
            token_file: String::new(),
        }
    }

    fn with(token: &str, entries: Vec<AdminTokenConfig>) -> AdminConfig {
        AdminConfig {
            token: Secret::new(token),
            tokens: entries,
            ..AdminConfig::default()
        }
    }

    #[test]
    fn the_shared_token_is_named_admin_with_the_admin_role_beside_named_ones() {
        let tokens =
            configured(&with(LONG_A, vec![entry("ops.viewer-1", "viewer", LONG_B)])).unwrap();
        let named: Vec<(&str, Role)> = tokens.iter().map(|t| (t.name.as_str(), t.role)).collect();
        assert_eq!(
            named,
            [("admin", Role::Admin), ("ops.viewer-1", Role::Viewer)]
        );
        assert_eq!(tokens[0].token.expose(), LONG_A);
        assert!(configured(&AdminConfig::default()).unwrap().is_empty());
    }

    #[test]
    fn every_refused_entry_is_named_and_no_token_is_shown() {
        let cases = [
            (
                vec![entry("", "admin", LONG_A)],
                "admin.tokens entry 1: name is missing",
            ),
            (
                vec![
                    entry("ops", "admin", LONG_A),
                    entry("c i", "viewer", LONG_B),
                ],
                "admin.tokens entry 2 (\"c i\"): name \"c i\" holds ' '",
            ),
            (
                vec![entry(&"x".repeat(65), "viewer", LONG_A)],
                "is longer than 64 characters",
            ),
            (
                vec![entry("local", "viewer", LONG_A)],
                "is the actor of a server without tokens",
            ),
            (
                vec![entry("ci", "owner", LONG_A)],
                "admin.tokens entry 1 (\"ci\"): role \"owner\" is not one of viewer (reads) or \
                 admin",
            ),
            (
                vec![entry("ci", "Admin", LONG_A)],
                "role \"Admin\" is not one of",
            ),
            (
                vec![entry("ci", "viewer", "")],
                "admin.tokens entry 1 (\"ci\") has no token: set token, or token_file",
            ),
            (
                vec![entry("ci", "viewer", LONG_A), entry("ci", "admin", LONG_B)],
                "admin.tokens entry 2 (\"ci\"): the name \"ci\" is taken by admin.tokens entry 1 \
                 (\"ci\")",
            ),
            (
                vec![entry("ci", "viewer", LONG_A), entry("ops", "admin", LONG_A)],
                "admin.tokens entry 2 (\"ops\") has the same token as admin.tokens entry 1 \
                 (\"ci\")",
            ),
        ];
        for (entries, expected) in cases {
            let error = configured(&with("", entries)).unwrap_err();
            assert!(error.contains(expected), "{error}\nexpected: {expected}");
            assert!(
                !error.contains(LONG_A) && !error.contains(LONG_B),
                "{error}"
            );
        }
        let error = configured(&with(LONG_A, vec![entry("admin", "viewer", LONG_B)])).unwrap_err();
        assert!(
            error.contains("taken by admin.token") && error.contains("admin.token goes by"),
            "{error}"
        );
        let error = configured(&with(LONG_A, vec![entry("ops", "viewer", LONG_A)])).unwrap_err();
        assert!(
            error.contains("the same token as admin.token, USERSYNC_ADMIN__TOKEN"),
            "{error}"
        );
    }

    #[test]
    fn a_token_file_is_read_without_its_line_break_and_an_empty_one_is_named() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), format!("{LONG_A}\r\n")).unwrap();
        let from_file = AdminTokenConfig {
            token_file: file.path().display().to_string(),
            ..entry("ops", "admin", "")
        };
        let tokens = configured(&with("", vec![from_file.clone()])).unwrap();
        assert_eq!(tokens[0].token.expose(), LONG_A);
        std::fs::write(file.path(), "\n").unwrap();
        let error = configured(&with("", vec![from_file])).unwrap_err();
        assert!(
            error.starts_with("admin.tokens entry 1 (\"ops\") has no token (token_file ")
                && error.contains("is empty)"),
            "{error}"
        );
    }

    #[test]
    fn beyond_loopback_every_token_must_be_long_and_is_named_when_it_is_not() {
        let public: SocketAddr = "0.0.0.0:8700".parse().unwrap();
        let loopback: SocketAddr = "127.0.0.1:8700".parse().unwrap();
        let short = AdminToken::new("ci", Role::Viewer, "short-token");
        let long = AdminToken::new("ops", Role::Admin, LONG_A);
        let error = refuse_beyond_loopback(public, &[long.clone(), short.clone()]).unwrap_err();
        assert!(
            error.contains("\"ci\"")
                && error.contains("has 11 characters")
                && error.contains("at least 32")
                && !error.contains("short-token"),
            "{error}"
        );
        assert!(refuse_beyond_loopback(loopback, std::slice::from_ref(&short)).is_ok());
        assert!(refuse_beyond_loopback(public, &[long]).is_ok());
        let error = refuse_beyond_loopback(public, &[]).unwrap_err();
        assert!(
            error.contains("loopback only") && error.contains("[[admin.tokens]]"),
            "{error}"
        );
    }
}

//! Who makes an admin API call, and what their role lets them do.
//!
//! Every call under `/api/v1` is made by an [`Actor`]: the name of the token it carried
//! (`crate::admin::tokens`), or [`LOCAL_ACTOR`] on a server without tokens, which listens on
//! loopback only. The token check (`super::auth`) puts the actor on the request; the handlers
//! that change something record its name with what they did (the decision log, the
//! admin-action log, the live feed, the log line), so the trail says who did what
//! (docs/security.md, "Roles and the actor trail").
//!
//! Two roles: a `viewer` reads — every `GET` under `/api/v1`, the live feed included — and an
//! `admin` also changes. Starting a browser authorization is a `GET` but not a read: it ends
//! in a new stored credential and a reconnect, so it needs `admin`.

use std::fmt;

use axum::http::Method;

/// The actor of every call on a server without tokens: whoever reaches its loopback port.
pub const LOCAL_ACTOR: &str = "local";

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads: every `GET` under `/api/v1` and the live feed.
    Viewer,
    /// Reads and changes everything.
    Admin,
}

impl Role {
    pub const ALL: [Role; 2] = [Role::Viewer, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Admin => "admin",
        }
    }

    /// The role whose name is `name`, exactly.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == name)
    }

    /// Whether this role may make a call that needs `needed`.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who makes a call: put on the request by the token check, read by the handlers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The token's name (`admin` for `admin.token`), or [`LOCAL_ACTOR`].
    pub name: String,
    pub role: Role,
}

impl Actor {
    /// The actor on a server without tokens: it may do everything.
    pub fn local() -> Actor {
        Actor {
            name: LOCAL_ACTOR.to_owned(),
            role: Role::Admin,
        }
    }
}

/// The role a call needs: `viewer` for a read (`GET`, `HEAD`), `admin` for anything else and
/// for starting a browser authorization.
pub fn role_needed(method: &Method, path: &str) -> Role {
    let read = method == Method::GET || method == Method::HEAD;
    if read && !starts_an_authorization(path) {
        Role::Viewer
    } else {
        Role::Admin
    }
}

/// `/api/v1/connections/{side}/authorize`.
fn starts_an_authorization(path: &str) -> bool {
    path.strip_prefix("/api/v1/connections/")
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(_, tail)| tail.trim_end_matches('/') == "authorize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_need_a_viewer_and_everything_else_an_admin() {
        for path in [
            "/api/v1/status",
            "/api/v1/decisions",
            "/api/v1/admin-actions",
            "/api/v1/settings",
            "/api/v1/mappings",
            "/api/v1/conflicts",
            "/api/v1/feed",
        ] {
            assert_eq!(role_needed(&Method::GET, path), Role::Viewer, "{path}");
        }
        for (method, path) in [
            (Method::PUT, "/api/v1/settings"),
            (Method::POST, "/api/v1/mappings"),
            (Method::DELETE, "/api/v1/mappings/7"),
            (Method::POST, "/api/v1/resync"),
            (Method::POST, "/api/v1/replay"),
            (Method::POST, "/api/v1/connections/salesforce/reconnect"),
            (Method::POST, "/api/v1/connections/outreach/disconnect"),
            (Method::POST, "/api/v1/connections/outreach/test"),
            (Method::GET, "/api/v1/connections/salesforce/authorize"),
            (Method::GET, "/api/v1/connections/outreach/authorize/"),
        ] {
            assert_eq!(role_needed(&method, path), Role::Admin, "{method} {path}");
        }
    }

    #[test]
    fn an_admin_may_do_what_a_viewer_may_and_not_the_other_way() {
        assert!(Role::Admin.allows(Role::Viewer));
        assert!(Role::Admin.allows(Role::Admin));
        assert!(Role::Viewer.allows(Role::Viewer));
        assert!(!Role::Viewer.allows(Role::Admin));
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("Admin"), None, "exactly as written");
        assert_eq!(Role::parse("owner"), None);
    }
}

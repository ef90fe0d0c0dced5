-- Which subscriber instance streams the org's changes, when several share this store: the one
-- holding the lease. `epoch` rises by one at every change of holder; it fences what a holder
-- that lost the lease may still try to write (its checkpoint). On SQLite every instance is on
-- one machine, whose clock writes the times (RFC 3339 in UTC, whose text order is time order).
CREATE TABLE subscriber_leases (
    name        TEXT    NOT NULL PRIMARY KEY,
    holder      TEXT    NOT NULL,
    epoch       INTEGER NOT NULL CHECK (epoch > 0),
    acquired_at TEXT    NOT NULL,
    renewed_at  TEXT    NOT NULL,
    expires_at  TEXT    NOT NULL
) STRICT;

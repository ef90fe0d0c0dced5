-- Which subscriber instance streams the org's changes, when several share this store: the one
-- holding the lease. `epoch` rises by one at every change of holder; it fences what a holder
-- that lost the lease may still try to write (its checkpoint). Times are the database's clock,
-- so instances on different machines agree on when a lease expires.
CREATE TABLE subscriber_leases (
    name        TEXT        NOT NULL PRIMARY KEY,
    holder      TEXT        NOT NULL,
    epoch       BIGINT      NOT NULL CHECK (epoch > 0),
    acquired_at TIMESTAMPTZ NOT NULL,
    renewed_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL
);

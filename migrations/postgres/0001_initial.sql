-- usersync store, PostgreSQL. Timestamps are timestamptz (microsecond precision).

-- Last-known state of each Salesforce user (the subscriber's), with the position of the newest
-- change applied to it: a change older than that is stale. No position: commit_timestamp NULL.
CREATE TABLE salesforce_users (
    id                 TEXT        NOT NULL PRIMARY KEY CHECK (length(id) = 18),
    email              TEXT,
    email_normalized   TEXT,
    username           TEXT,
    first_name         TEXT,
    last_name          TEXT,
    title              TEXT,
    is_active          BOOLEAN     NOT NULL,
    created_date       TIMESTAMPTZ,
    last_modified_date TIMESTAMPTZ,
    commit_number      BIGINT,
    commit_timestamp   TIMESTAMPTZ,
    sequence_number    BIGINT,
    CHECK (commit_timestamp IS NOT NULL OR (commit_number IS NULL AND sequence_number IS NULL))
);
CREATE INDEX salesforce_users_email ON salesforce_users (email_normalized);

-- The Outreach user index. The email is NOT unique: Outreach promises one user per email, but
-- when it breaks that promise the anomaly must be representable (and reported as a conflict).
CREATE TABLE outreach_users (
    id               BIGINT  NOT NULL PRIMARY KEY,
    email            TEXT    NOT NULL,
    email_normalized TEXT    NOT NULL,
    username         TEXT,
    first_name       TEXT,
    last_name        TEXT,
    title            TEXT,
    locked           BOOLEAN NOT NULL,
    custom1          TEXT,
    custom2          TEXT,
    custom3          TEXT,
    custom4          TEXT,
    custom5          TEXT,
    updated_at       TIMESTAMPTZ
);
CREATE INDEX outreach_users_email ON outreach_users (email_normalized);

-- Outreach user <-> Salesforce user, 1:1 by construction: one row per Outreach user (primary
-- key), one per Salesforce user (unique). Both users must be known to the store.
CREATE TABLE mappings (
    outreach_user_id   BIGINT  NOT NULL PRIMARY KEY REFERENCES outreach_users (id),
    salesforce_user_id TEXT    NOT NULL UNIQUE REFERENCES salesforce_users (id),
    locked_by_usersync BOOLEAN NOT NULL DEFAULT FALSE
);

-- Events whose result is recorded: a redelivered one is recognized and changes nothing.
CREATE TABLE applied_events (
    event_id   TEXT        NOT NULL PRIMARY KEY,
    applied_at TIMESTAMPTZ NOT NULL
);

-- The decision log, append-only; sequence orders it.
CREATE TABLE decisions (
    sequence                    BIGSERIAL   PRIMARY KEY,
    event_id                    TEXT        NOT NULL,
    at                          TIMESTAMPTZ NOT NULL,
    action                      TEXT        NOT NULL,
    reason                      TEXT        NOT NULL,
    email                       TEXT,
    outreach_user_id            BIGINT,
    salesforce_user_id          TEXT,
    previous_salesforce_user_id TEXT,
    message                     TEXT        NOT NULL,
    outreach_calls              BIGINT      NOT NULL CHECK (outreach_calls >= 0)
);
CREATE INDEX decisions_action ON decisions (action, sequence);
CREATE INDEX decisions_email ON decisions (email, sequence);
CREATE INDEX decisions_event ON decisions (event_id);

-- The sync settings: one row, one JSON document.
CREATE TABLE settings (
    id         SMALLINT    NOT NULL PRIMARY KEY CHECK (id = 1),
    document   JSONB       NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

-- Where each subscriber resumes its Salesforce topic.
CREATE TABLE replay_checkpoints (
    topic            TEXT        NOT NULL PRIMARY KEY,
    replay_id        BYTEA       NOT NULL,
    commit_timestamp TIMESTAMPTZ,
    updated_at       TIMESTAMPTZ NOT NULL
);

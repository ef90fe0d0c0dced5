-- usersync store, SQLite. Timestamps are RFC 3339 text in UTC; booleans are 0/1.
-- STRICT tables refuse a value of the wrong type instead of storing it anyway.

-- Last-known state of each Salesforce user (the subscriber's), with the position of the newest
-- change applied to it: a change older than that is stale. No position: commit_timestamp NULL.
CREATE TABLE salesforce_users (
    id                 TEXT    NOT NULL PRIMARY KEY CHECK (length(id) = 18),
    email              TEXT,
    email_normalized   TEXT,
    username           TEXT,
    first_name         TEXT,
    last_name          TEXT,
    title              TEXT,
    is_active          INTEGER NOT NULL CHECK (is_active IN (0, 1)),
    created_date       TEXT,
    last_modified_date TEXT,
    commit_number      INTEGER,
    commit_timestamp   TEXT,
    sequence_number    INTEGER,
    CHECK (commit_timestamp IS NOT NULL OR (commit_number IS NULL AND sequence_number IS NULL))
) STRICT;
CREATE INDEX salesforce_users_email ON salesforce_users (email_normalized);

-- The Outreach user index. The email is NOT unique: Outreach promises one user per email, but
-- when it breaks that promise the anomaly must be representable (and reported as a conflict).
CREATE TABLE outreach_users (
    id               INTEGER NOT NULL PRIMARY KEY,
    email            TEXT    NOT NULL,
    email_normalized TEXT    NOT NULL,
    username         TEXT,
    first_name       TEXT,
    last_name        TEXT,
    title            TEXT,
    locked           INTEGER NOT NULL CHECK (locked IN (0, 1)),
    custom1          TEXT,
    custom2          TEXT,
    custom3          TEXT,
    custom4          TEXT,
    custom5          TEXT,
    updated_at       TEXT
) STRICT;
CREATE INDEX outreach_users_email ON outreach_users (email_normalized);

-- Outreach user <-> Salesforce user, 1:1 by construction: one row per Outreach user (primary
-- key), one per Salesforce user (unique). Both users must be known to the store.
CREATE TABLE mappings (
    outreach_user_id   INTEGER NOT NULL PRIMARY KEY REFERENCES outreach_users (id),
    salesforce_user_id TEXT    NOT NULL UNIQUE REFERENCES salesforce_users (id),
    locked_by_usersync INTEGER NOT NULL DEFAULT 0 CHECK (locked_by_usersync IN (0, 1))
) STRICT;

-- Events whose result is recorded: a redelivered one is recognized and changes nothing.
CREATE TABLE applied_events (
    event_id   TEXT NOT NULL PRIMARY KEY,
    applied_at TEXT NOT NULL
) STRICT;

-- The decision log, append-only; sequence orders it (AUTOINCREMENT: never reused).
CREATE TABLE decisions (
    sequence                    INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id                    TEXT    NOT NULL,
    at                          TEXT    NOT NULL,
    action                      TEXT    NOT NULL,
    reason                      TEXT    NOT NULL,
    email                       TEXT,
    outreach_user_id            INTEGER,
    salesforce_user_id          TEXT,
    previous_salesforce_user_id TEXT,
    message                     TEXT    NOT NULL,
    outreach_calls              INTEGER NOT NULL CHECK (outreach_calls >= 0)
) STRICT;
CREATE INDEX decisions_action ON decisions (action, sequence);
CREATE INDEX decisions_email ON decisions (email, sequence);
CREATE INDEX decisions_event ON decisions (event_id);

-- The sync settings: one row, one JSON document.
CREATE TABLE settings (
    id         INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    document   TEXT    NOT NULL CHECK (json_valid(document)),
    updated_at TEXT    NOT NULL
) STRICT;

-- Where each subscriber resumes its Salesforce topic.
CREATE TABLE replay_checkpoints (
    topic            TEXT NOT NULL PRIMARY KEY,
    replay_id        BLOB NOT NULL,
    commit_timestamp TEXT,
    updated_at       TEXT NOT NULL
) STRICT;

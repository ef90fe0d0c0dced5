-- The subscriber's last-known state of each Salesforce user, per org: what it merges a partial
-- CDC UPDATE into, kept here so that it survives a restart. It is NOT salesforce_users: those
-- rows belong to the processor and carry the position it applied, which its staleness rule
-- reads; the subscriber sees changes earlier than the processor applies them, so sharing the
-- rows would move that position under it.
--
-- commit_number and commit_timestamp are the position of the change that produced this state
-- (no position: both NULL). A write never replaces a row with an older position; the store
-- compares them (commit numbers when both have one, else timestamps).
CREATE TABLE subscriber_users (
    org_id             TEXT        NOT NULL CHECK (length(org_id) = 18),
    user_id            TEXT        NOT NULL CHECK (length(user_id) = 18),
    email              TEXT,
    username           TEXT,
    first_name         TEXT,
    last_name          TEXT,
    title              TEXT,
    is_active          BOOLEAN     NOT NULL,
    created_date       TIMESTAMPTZ,
    last_modified_date TIMESTAMPTZ,
    commit_number      BIGINT,
    commit_timestamp   TIMESTAMPTZ,
    updated_at         TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (org_id, user_id),
    CHECK (commit_timestamp IS NOT NULL OR commit_number IS NULL)
);

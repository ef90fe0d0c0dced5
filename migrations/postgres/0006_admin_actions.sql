-- What admins asked of the running process (a replay from elsewhere, a resync), in the order
-- they asked. usersync only ever appends to it: it says when the stream was moved and from
-- where, so a row is never changed. detail is a JSON document (what was asked, and the replay
-- checkpoint before it).
CREATE TABLE admin_actions (
    sequence BIGSERIAL   PRIMARY KEY,
    at       TIMESTAMPTZ NOT NULL,
    action   TEXT        NOT NULL,
    detail   JSONB       NOT NULL
);

-- One counter per part of the state a decision reads: an email group (`email:<normalized
-- email>`) or a Salesforce user an event names (`salesforce:<18-character id>`). Every write
-- to the users or mappings of a part adds one to its counter in the same transaction; a
-- record carries the counters its state was loaded with and is refused when one has moved
-- (optimistic concurrency between processor replicas). A part never written has no row and
-- reads as version 0.
CREATE TABLE state_versions (
    part    TEXT   NOT NULL PRIMARY KEY,
    version BIGINT NOT NULL CHECK (version > 0)
);

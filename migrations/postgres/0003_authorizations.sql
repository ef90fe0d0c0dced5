-- The authorization each side signs in with, stored by a reconnect. `sealed` is encrypted
-- (XChaCha20-Poly1305, see src/connection/vault.rs) under a key that is never in this database;
-- `key_fingerprint` names that key, so an operator can tell which key a row needs.
CREATE TABLE authorizations (
    side            TEXT NOT NULL PRIMARY KEY CHECK (side IN ('salesforce', 'outreach')),
    sealed          BYTEA NOT NULL,
    key_fingerprint TEXT NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);

-- Each sealed authorization is bound to its row: the associated data of its seal names the side
-- and `generation`, which rises by one at every seal (src/connection/vault.rs,
-- docs/security.md). A blob copied back from an earlier seal of the same side then no longer
-- opens. Rows sealed before this column existed keep generation 0: their blob (format 1) names
-- the side alone, and it is opened once and sealed again at generation 1.
ALTER TABLE authorizations ADD COLUMN generation BIGINT NOT NULL DEFAULT 0 CHECK (generation >= 0);

-- Who did what, and how long the logs keep it.
--
-- actor: the name of the admin token that carried the call (`local` on an admin server without
-- tokens), on a decision made by hand (a map or unmap) and on every admin action. NULL for the
-- processor's decisions and for rows written before this migration.
ALTER TABLE decisions ADD COLUMN actor TEXT;
ALTER TABLE admin_actions ADD COLUMN actor TEXT;

-- The processor prunes the decision log and the applied-event log by age
-- (store.retention_days): these indexes let it find the oldest rows without a scan.
CREATE INDEX decisions_at ON decisions (at);
CREATE INDEX applied_events_applied_at ON applied_events (applied_at);

-- A snapshot (a user read through REST) is placed in its user's history by the stream
-- position it was read at and by when it was read: it sorts after every change of its commit,
-- and of two snapshots at one commit the later read is newer. snapshot_read_at holds that read
-- time for an applied position that came from a snapshot; NULL for a change from the stream.
ALTER TABLE salesforce_users ADD COLUMN snapshot_read_at TIMESTAMPTZ;

-- The subscriber places a resync's snapshots at the newest commit it has seen of its org.
CREATE INDEX subscriber_users_newest_commit ON subscriber_users (org_id, commit_number);

-- Replicas lease shards of the targets, not targets (a target's shard is FNV-1a of its
-- name modulo 1024, computed by the replicas). A shard lease is valid while it is not
-- released and its owner's `lease_expires_at`, renewed by that replica's heartbeat, is in
-- the future: a lease round writes one row per replica whatever the number of targets.
-- `epoch` increases on every change of owner; a poll commits only while its replica still
-- holds the shard at the epoch it started with (fencing).
ALTER TABLE replicas ADD COLUMN lease_expires_at BIGINT NOT NULL DEFAULT 0;

CREATE TABLE shard_leases (
    shard    INTEGER PRIMARY KEY,
    owner    TEXT NOT NULL,
    epoch    BIGINT NOT NULL,
    released BOOLEAN NOT NULL DEFAULT FALSE
);

-- The per-target `leases` of earlier versions stay: a replica of this version takes no
-- shard while one of them is still held by a live replica of an earlier version.

-- Which process wrote a replica's last heartbeat (random per process start). A replica
-- that finds another instance's value in its own row between two of its heartbeats shares
-- its `replica_id` with a live process: both would poll the same targets under the same
-- leases. It says so (log, `loopwatch_replica_id_conflicts_total`) instead of going on
-- without a sign.
ALTER TABLE replicas ADD COLUMN instance TEXT;

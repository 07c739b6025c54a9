-- What the readiness probe last saw of a null checkpoint (model::ProbeMemo, as JSON:
-- {"probed_at": ms, "files": {"count", "total_bytes", "newest", "since": ms} or null}),
-- so that the two-probe rule of a checkpoint whose size_bytes is 0 holds across
-- processes (`loopwatch once` from cron, a restart). NULL once it completes or is deleted.
ALTER TABLE checkpoints ADD COLUMN probe TEXT;

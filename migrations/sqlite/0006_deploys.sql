-- The deploy lifecycle (docs/events.md, "Deploys"): claims fenced by a token, the
-- statuses a deploy delivery can end in, and one row per deploy pipeline.
--
-- `claim_token`: set by each claim; an outcome is recorded only while the row still
-- carries the token of the claim that attempted it, so a stale attempt (its claim lapsed
-- and was taken again) cannot overwrite a newer one's outcome.
-- New terminal statuses: `awaiting_approval` (waits for `deliveries approve`, not
-- pending), `rejected`, `expired`, `unknown` (a deploy whose outcome cannot be told: never
-- sent again by itself). SQLite cannot change a CHECK constraint in place: the table is
-- rebuilt with the same rows and ids, and its AUTOINCREMENT counter carried over.
CREATE TABLE deliveries_new (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_seq       INTEGER NOT NULL REFERENCES events(seq),
    sink            TEXT NOT NULL,
    run_id          TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'dead', 'superseded',
                        'awaiting_approval', 'rejected', 'expired', 'unknown')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    claimed_until   INTEGER,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    claim_token     INTEGER,
    UNIQUE (event_seq, sink)
);
INSERT INTO deliveries_new (id, event_seq, sink, run_id, status, attempts, next_attempt_at,
    claimed_until, last_status, last_error, created_at, updated_at)
SELECT id, event_seq, sink, run_id, status, attempts, next_attempt_at,
    claimed_until, last_status, last_error, created_at, updated_at
FROM deliveries;
DELETE FROM sqlite_sequence WHERE name = 'deliveries_new';
INSERT INTO sqlite_sequence (name, seq)
SELECT 'deliveries_new', seq FROM sqlite_sequence WHERE name = 'deliveries';
DROP TABLE deliveries;
ALTER TABLE deliveries_new RENAME TO deliveries;
CREATE INDEX deliveries_due ON deliveries (sink, status, next_attempt_at);
CREATE INDEX deliveries_run ON deliveries (sink, run_id, status, event_seq);
CREATE INDEX deliveries_status ON deliveries (status, sink, created_at);
CREATE INDEX deliveries_first ON deliveries (sink, id)
    WHERE status = 'pending' AND attempts = 0 AND last_error IS NULL;

-- One row per deploy pipeline: a completed sampler checkpoint at one baseten_deploy sink
-- (its delivery). Times are Unix milliseconds. Never pruned: which deployments loopwatch
-- created, for which checkpoint, is what reconciliation and clean-up rely on.
CREATE TABLE deploys (
    delivery_id           INTEGER PRIMARY KEY NOT NULL,
    sink                  TEXT NOT NULL,
    target                TEXT NOT NULL,
    run_id                TEXT NOT NULL,
    checkpoint_id         TEXT NOT NULL,
    checkpoint_name       TEXT NOT NULL,
    event_id              TEXT NOT NULL,
    checkpoint_created_at TEXT,
    completed_at          INTEGER NOT NULL,
    stage                 TEXT NOT NULL,
    model_name            TEXT,
    model_id              TEXT,
    deployment_id         TEXT,
    deployment_status     TEXT,
    environment           TEXT,
    reconciled            INTEGER NOT NULL DEFAULT 0,
    -- JSON array of the model's deployment ids read before the last deploy call; NULL
    -- when no call is in doubt. Written before the call is sent.
    before_ids            TEXT,
    deploy_calls          INTEGER NOT NULL DEFAULT 0,
    follow_next_at        INTEGER,
    follow_deadline       INTEGER,
    follow_claimed_until  INTEGER,
    follow_token          INTEGER,
    active_at             INTEGER,
    decided_by            TEXT,
    decided_at            INTEGER,
    decision              TEXT,
    decision_reason       TEXT,
    error                 TEXT,
    created_at            INTEGER NOT NULL,
    updated_at            INTEGER NOT NULL
);
CREATE INDEX deploys_follow ON deploys (stage, follow_next_at);
CREATE INDEX deploys_model ON deploys (model_id, deployment_id);
CREATE INDEX deploys_sink ON deploys (sink, stage);

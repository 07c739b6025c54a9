-- loopwatch state, PostgreSQL. Times are Unix milliseconds (BIGINT), like the SQLite schema.

CREATE TABLE targets (
    name         TEXT PRIMARY KEY,
    filter       TEXT NOT NULL,
    baselined_at BIGINT NOT NULL
);

CREATE TABLE checkpoints (
    target            TEXT NOT NULL,
    id                TEXT NOT NULL,
    name              TEXT NOT NULL,
    run_id            TEXT NOT NULL,
    checkpoint_target TEXT NOT NULL,
    sync_status       TEXT,
    created_at        TEXT NOT NULL,
    first_seen_at     BIGINT NOT NULL,
    completed         BOOLEAN NOT NULL,
    stalled           BOOLEAN NOT NULL,
    missing           BIGINT NOT NULL,
    deleted           BOOLEAN NOT NULL,
    deleted_reported  BOOLEAN NOT NULL,
    seq               BIGINT NOT NULL,
    raw               TEXT NOT NULL,
    PRIMARY KEY (target, id)
);

CREATE TABLE events (
    seq               BIGSERIAL PRIMARY KEY,
    id                TEXT NOT NULL UNIQUE,
    type              TEXT NOT NULL,
    target            TEXT NOT NULL,
    checkpoint_id     TEXT NOT NULL,
    checkpoint_name   TEXT NOT NULL,
    run_id            TEXT NOT NULL,
    checkpoint_target TEXT NOT NULL,
    detected_at       BIGINT NOT NULL,
    body              TEXT NOT NULL
);

CREATE TABLE deliveries (
    id              BIGSERIAL PRIMARY KEY,
    event_seq       BIGINT NOT NULL REFERENCES events(seq),
    sink            TEXT NOT NULL,
    run_id          TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    claimed_until   BIGINT,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    UNIQUE (event_seq, sink)
);
CREATE INDEX deliveries_due ON deliveries (sink, status, next_attempt_at);
CREATE INDEX deliveries_run ON deliveries (sink, run_id, status, event_seq);
CREATE INDEX deliveries_status ON deliveries (status, sink, created_at);

-- Replicas sharing this database announce themselves here.
CREATE TABLE replicas (
    id           TEXT PRIMARY KEY,
    heartbeat_at BIGINT NOT NULL,
    started_at   BIGINT NOT NULL
);

-- Which replica polls which target. `epoch` increases on every takeover: a poll commits
-- only while its replica still holds the epoch it started with (fencing).
CREATE TABLE leases (
    target     TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    epoch      BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

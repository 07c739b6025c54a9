-- loopwatch state, SQLite. Times are Unix milliseconds.

-- One row per configured target that has been baselined.
CREATE TABLE targets (
    name         TEXT PRIMARY KEY NOT NULL,
    filter       TEXT NOT NULL,
    baselined_at INTEGER NOT NULL
);

-- What the daemon remembers about each checkpoint of each target.
CREATE TABLE checkpoints (
    target            TEXT NOT NULL,
    id                TEXT NOT NULL,
    name              TEXT NOT NULL,
    run_id            TEXT NOT NULL,
    checkpoint_target TEXT NOT NULL,
    sync_status       TEXT,
    created_at        TEXT NOT NULL,
    first_seen_at     INTEGER NOT NULL,
    completed         INTEGER NOT NULL,
    stalled           INTEGER NOT NULL,
    missing           INTEGER NOT NULL,
    deleted           INTEGER NOT NULL,
    deleted_reported  INTEGER NOT NULL,
    seq               INTEGER NOT NULL,
    raw               TEXT NOT NULL,
    PRIMARY KEY (target, id)
) WITHOUT ROWID;

-- Every event ever detected; `seq` is the detection order.
CREATE TABLE events (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    id                TEXT NOT NULL UNIQUE,
    type              TEXT NOT NULL,
    target            TEXT NOT NULL,
    checkpoint_id     TEXT NOT NULL,
    checkpoint_name   TEXT NOT NULL,
    run_id            TEXT NOT NULL,
    checkpoint_target TEXT NOT NULL,
    detected_at       INTEGER NOT NULL,
    body              TEXT NOT NULL
);

-- The outbox: one row per (event, sink), written in the same transaction as the event.
CREATE TABLE deliveries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_seq       INTEGER NOT NULL REFERENCES events(seq),
    sink            TEXT NOT NULL,
    run_id          TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    claimed_until   INTEGER,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    UNIQUE (event_seq, sink)
);
CREATE INDEX deliveries_due ON deliveries (sink, status, next_attempt_at);
CREATE INDEX deliveries_run ON deliveries (sink, run_id, status, event_seq);
CREATE INDEX deliveries_status ON deliveries (status, sink, created_at);

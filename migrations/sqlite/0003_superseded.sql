-- `superseded`: a deploy delivery made moot by a newer checkpoint of the same run
-- (`latest_only`); terminal, never attempted. SQLite cannot change a CHECK constraint in
-- place: the table is rebuilt with the same rows and ids, and its AUTOINCREMENT counter
-- (sqlite_sequence) carried over, so an id is never given twice.
CREATE TABLE deliveries_new (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_seq       INTEGER NOT NULL REFERENCES events(seq),
    sink            TEXT NOT NULL,
    run_id          TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'dead', 'superseded')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    claimed_until   INTEGER,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
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

-- Every attempt of a delivery (status page, /targets/NAME): when it ended, how long it
-- took, the HTTP status it got and its error. Written in the same transaction as the
-- attempt's outcome (store::attempts); bounded to the newest 20 per delivery, and gone
-- with its delivery when that is pruned.
CREATE TABLE attempts (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id INTEGER NOT NULL REFERENCES deliveries(id) ON DELETE CASCADE,
    sink        TEXT NOT NULL,
    -- The delivery's attempt number (it starts again at 1 after `deliveries redeliver`).
    attempt     INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    duration_ms INTEGER,
    status      INTEGER,
    outcome     TEXT NOT NULL,
    error       TEXT
);
CREATE INDEX attempts_delivery ON attempts (delivery_id, seq);
-- A sink's last error, without reading its successes.
CREATE INDEX attempts_failed ON attempts (sink, seq) WHERE error IS NOT NULL;

-- A target's events by checkpoint (the status page's /targets/NAME).
CREATE INDEX events_checkpoint ON events (target, checkpoint_id, seq);

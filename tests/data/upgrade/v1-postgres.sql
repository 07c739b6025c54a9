-- loopwatch state as the first released schema wrote it (tests/data/upgrade/make).
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
CREATE TABLE IF NOT EXISTS _sqlx_migrations (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),
    success BOOLEAN NOT NULL,
    checksum BYTEA NOT NULL,
    execution_time BIGINT NOT NULL
);
INSERT INTO _sqlx_migrations (version, description, installed_on, success, checksum, execution_time) VALUES (1, 'initial', '2026-01-10 11:58:00', TRUE, '\x82bf7f98764c0a4afd0c39684a7eb650a7776a68cd77e03aa28a136a1265936a37744f49c23c1f76f26246e66ebebbb7', 2481337);
-- The rows of tests/data/upgrade/make: what the first released schema held after a day.
INSERT INTO targets (name, filter, baselined_at) VALUES ('qwen', 'run_id=run-1', 1768042800000);
INSERT INTO checkpoints (target, id, name, run_id, checkpoint_target, sync_status, created_at, first_seen_at, completed, stalled, missing, deleted, deleted_reported, seq, raw) VALUES ('qwen', 'ckpt_v1a000001', 'step-100', 'run-1', 'sampler', 'COMPLETE', '2026-01-10T12:00:00.000Z', 1768046405000, TRUE, FALSE, 0, FALSE, FALSE, 2, '{"checkpoint_id":"step-100","created_at":"2026-01-10T12:00:00.000Z","checkpoint_type":"lora","base_model":"Qwen/Qwen3-8B","lora_adapter_config":{"r":16,"lora_alpha":32},"size_bytes":134217728,"sync_status":"COMPLETE","id":"ckpt_v1a000001","run_id":"run-1","target":"sampler"}');
INSERT INTO events (seq, id, type, target, checkpoint_id, checkpoint_name, run_id, checkpoint_target, detected_at, body) VALUES (1, 'evt_318d26c79ad000a0eced437805', 'checkpoint.completed', 'qwen', 'ckpt_v1a000001', 'step-100', 'run-1', 'sampler', 1768046645000, '{"type":"checkpoint.completed","timestamp":"2026-01-10T12:04:05.000Z","data":{"event_id":"evt_318d26c79ad000a0eced437805","target":"qwen","uri":"bt://loops:run-1/sampler_weights/step-100","previous_sync_status":"SYNCING","sync_status":"COMPLETE","first_seen_at":"2026-01-10T12:00:05.000Z","sync_seconds":240.0,"checkpoint":{"checkpoint_id":"step-100","created_at":"2026-01-10T12:00:00.000Z","checkpoint_type":"lora","base_model":"Qwen/Qwen3-8B","lora_adapter_config":{"r":16,"lora_alpha":32},"size_bytes":134217728,"sync_status":"COMPLETE","id":"ckpt_v1a000001","run_id":"run-1","target":"sampler"}}}');
INSERT INTO deliveries (id, event_seq, sink, run_id, status, attempts, next_attempt_at, claimed_until, last_status, last_error, created_at, updated_at) VALUES (1, 1, 'hook', 'run-1', 'delivered', 1, 1768046645000, NULL, NULL, NULL, 1768046645000, 1768046645120);
INSERT INTO checkpoints (target, id, name, run_id, checkpoint_target, sync_status, created_at, first_seen_at, completed, stalled, missing, deleted, deleted_reported, seq, raw) VALUES ('qwen', 'ckpt_v1a000002', 'step-200', 'run-1', 'sampler', 'COMPLETE', '2026-01-10T12:30:00.000Z', 1768048205000, TRUE, FALSE, 0, FALSE, FALSE, 2, '{"checkpoint_id":"step-200","created_at":"2026-01-10T12:30:00.000Z","checkpoint_type":"lora","base_model":"Qwen/Qwen3-8B","lora_adapter_config":{"r":16,"lora_alpha":32},"size_bytes":134217728,"sync_status":"COMPLETE","id":"ckpt_v1a000002","run_id":"run-1","target":"sampler"}');
INSERT INTO events (seq, id, type, target, checkpoint_id, checkpoint_name, run_id, checkpoint_target, detected_at, body) VALUES (2, 'evt_87d1c015c561ebac8058a0eeaa', 'checkpoint.completed', 'qwen', 'ckpt_v1a000002', 'step-200', 'run-1', 'sampler', 1768048445000, '{"type":"checkpoint.completed","timestamp":"2026-01-10T12:34:05.000Z","data":{"event_id":"evt_87d1c015c561ebac8058a0eeaa","target":"qwen","uri":"bt://loops:run-1/sampler_weights/step-200","previous_sync_status":"SYNCING","sync_status":"COMPLETE","first_seen_at":"2026-01-10T12:30:05.000Z","sync_seconds":240.0,"checkpoint":{"checkpoint_id":"step-200","created_at":"2026-01-10T12:30:00.000Z","checkpoint_type":"lora","base_model":"Qwen/Qwen3-8B","lora_adapter_config":{"r":16,"lora_alpha":32},"size_bytes":134217728,"sync_status":"COMPLETE","id":"ckpt_v1a000002","run_id":"run-1","target":"sampler"}}}');
INSERT INTO deliveries (id, event_seq, sink, run_id, status, attempts, next_attempt_at, claimed_until, last_status, last_error, created_at, updated_at) VALUES (2, 2, 'hook', 'run-1', 'pending', 3, 1768048515000, NULL, 503, 'HTTP 503 Service Unavailable', 1768048445000, 1768048455000);
SELECT pg_catalog.setval(pg_get_serial_sequence('events', 'seq'), (SELECT MAX(seq) FROM events));
SELECT pg_catalog.setval(pg_get_serial_sequence('deliveries', 'id'), (SELECT MAX(id) FROM deliveries));

-- The deploy lifecycle (docs/events.md, "Deploys"): claims fenced by a token, the
-- statuses a deploy delivery can end in, and one row per deploy pipeline.
--
-- `claim_token`: set by each claim; an outcome is recorded only while the row still
-- carries the token of the claim that attempted it. New terminal statuses:
-- `awaiting_approval` (not pending), `rejected`, `expired`, `unknown` (a deploy whose
-- outcome cannot be told: never sent again by itself).
ALTER TABLE deliveries ADD COLUMN claim_token BIGINT;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status_check
    CHECK (status IN ('pending', 'delivered', 'dead', 'superseded',
                      'awaiting_approval', 'rejected', 'expired', 'unknown'));

-- One row per deploy pipeline: a completed sampler checkpoint at one baseten_deploy sink
-- (its delivery). Times are Unix milliseconds. Never pruned.
CREATE TABLE deploys (
    delivery_id           BIGINT PRIMARY KEY,
    sink                  TEXT NOT NULL,
    target                TEXT NOT NULL,
    run_id                TEXT NOT NULL,
    checkpoint_id         TEXT NOT NULL,
    checkpoint_name       TEXT NOT NULL,
    event_id              TEXT NOT NULL,
    checkpoint_created_at TEXT,
    completed_at          BIGINT NOT NULL,
    stage                 TEXT NOT NULL,
    model_name            TEXT,
    model_id              TEXT,
    deployment_id         TEXT,
    deployment_status     TEXT,
    environment           TEXT,
    reconciled            BIGINT NOT NULL DEFAULT 0,
    before_ids            TEXT,
    deploy_calls          BIGINT NOT NULL DEFAULT 0,
    follow_next_at        BIGINT,
    follow_deadline       BIGINT,
    follow_claimed_until  BIGINT,
    follow_token          BIGINT,
    active_at             BIGINT,
    decided_by            TEXT,
    decided_at            BIGINT,
    decision              TEXT,
    decision_reason       TEXT,
    error                 TEXT,
    created_at            BIGINT NOT NULL,
    updated_at            BIGINT NOT NULL
);
CREATE INDEX deploys_follow ON deploys (stage, follow_next_at);
CREATE INDEX deploys_model ON deploys (model_id, deployment_id);
CREATE INDEX deploys_sink ON deploys (sink, stage);

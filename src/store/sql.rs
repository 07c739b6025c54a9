//! The SQL text both backends run, written once. Placeholders are `$N`, which PostgreSQL
//! takes natively and sqlx binds by number on SQLite too; `CAST($1 AS TEXT) IS NULL`
//! (an optional filter) reads the same in both dialects. What differs stays in each
//! dialect's `Dialect` (`sqlite_dialect.rs`, `postgres.rs`) and in each backend's claims
//! (`sqlite.rs`, `postgres.rs`): multi-row inserts, JSON paths, locking, the lease fence.

/// The `checkpoints` columns every [`super::rows::TrackedRecord`] reads, before the
/// dialect's `raw_digest` and `raw`.
pub(crate) const CHECKPOINT_FIELDS: &str = "id, name, run_id, checkpoint_target, sync_status,
    created_at, first_seen_at, completed, stalled, missing, deleted, deleted_reported, seq,
    probe";

/// The `events` columns of [`super::rows::EventRecord`], for a query that aliases
/// `events` as `e`.
pub(crate) const EVENT_COLUMNS: &str = "e.seq, e.id, e.type, e.target, e.checkpoint_id, e.checkpoint_name, e.run_id, e.checkpoint_target, e.detected_at, e.body";

/// A delivery's status as listed (`status` of [`DELIVERY_LIST_COLUMNS`]): its own, except
/// that a deploy that deployed and then waits for approval before its promotion, or was
/// rejected or expired there, is listed with that stage (docs/events.md, "Approval").
macro_rules! listed_status {
    () => {
        "CASE WHEN d.status = 'delivered'
        THEN COALESCE((SELECT p.stage FROM deploys p WHERE p.delivery_id = d.id
            AND p.stage IN ('awaiting_approval', 'rejected', 'expired')), 'delivered')
        ELSE d.status END"
    };
}
pub(crate) const LISTED_STATUS: &str = listed_status!();

/// The columns of [`super::rows::DeliveryRecord`]: `deliveries d` joined with `events e`.
/// A delivery listed with its pipeline's stage has that stage's reason as its last error
/// (`rejected by carol: eval regressed`): its own is the deploy's, which succeeded.
pub(crate) const DELIVERY_LIST_COLUMNS: &str = concat!(
    "d.id, d.sink, ",
    listed_status!(),
    " AS status, d.attempts, d.next_attempt_at, d.last_status,
    CASE WHEN d.status = 'delivered'
        THEN COALESCE((SELECT p.error FROM deploys p WHERE p.delivery_id = d.id
            AND p.stage IN ('rejected', 'expired')), d.last_error)
        ELSE d.last_error END AS last_error,
    d.created_at, d.updated_at, e.id AS event_id, e.type, e.target, e.run_id,
    e.checkpoint_target, e.checkpoint_name"
);

/// A target's row as its state needs it: (filter, listing digest).
pub(crate) const TARGET_ROW: &str = "SELECT filter, listing_digest FROM targets WHERE name = $1";

/// The stored upstream object of one checkpoint (`$1` target, `$2` id).
pub(crate) const CHECKPOINT_RAW: &str = "SELECT raw FROM checkpoints WHERE target = $1 AND id = $2";

// One poll's commit.

/// A target baselined again (its filter changed) starts from nothing.
pub(crate) const FORGET_CHECKPOINTS: &str = "DELETE FROM checkpoints WHERE target = $1";

/// Record a target's baseline: `$1` name, `$2` filter, `$3` now.
pub(crate) const BASELINE_TARGET: &str = "INSERT INTO targets (name, filter, baselined_at) VALUES ($1, $2, $3)
    ON CONFLICT (name) DO UPDATE SET filter = excluded.filter, baselined_at = excluded.baselined_at";

/// The columns of an inserted checkpoint, in bind order (the dialect may add `raw_digest`).
pub(crate) const CHECKPOINT_INSERT: &str = "INSERT INTO checkpoints (target, id, name, run_id,
    checkpoint_target, sync_status, created_at, first_seen_at, completed, stalled, missing,
    deleted, deleted_reported, seq, raw";

/// What an upsert of a checkpoint overwrites (the dialect may add `raw_digest`).
pub(crate) const CHECKPOINT_ON_CONFLICT: &str = " ON CONFLICT (target, id) DO UPDATE SET
    name = excluded.name, run_id = excluded.run_id,
    checkpoint_target = excluded.checkpoint_target, sync_status = excluded.sync_status,
    created_at = excluded.created_at, first_seen_at = excluded.first_seen_at,
    completed = excluded.completed, stalled = excluded.stalled, missing = excluded.missing,
    deleted = excluded.deleted, deleted_reported = excluded.deleted_reported,
    seq = excluded.seq, raw = excluded.raw";

/// A checkpoint absent from the listing: everything but its text, which stays as stored,
/// from the rows `u` (the columns of [`CHECKPOINT_INSERT`] from `id` up to `seq`).
pub(crate) const UPDATE_CHECKPOINT_FROM_U: &str = "name = u.name, run_id = u.run_id,
    checkpoint_target = u.checkpoint_target, sync_status = u.sync_status,
    created_at = u.created_at, first_seen_at = u.first_seen_at, completed = u.completed,
    stalled = u.stalled, missing = u.missing, deleted = u.deleted,
    deleted_reported = u.deleted_reported, seq = u.seq";

/// The settled listing's digest, or NULL (`$1` digest, `$2` target).
pub(crate) const SET_LISTING_DIGEST: &str =
    "UPDATE targets SET listing_digest = $1 WHERE name = $2";

/// The columns of an inserted event, in bind order.
pub(crate) const EVENT_INSERT: &str = "INSERT INTO events (id, type, target, checkpoint_id,
    checkpoint_name, run_id, checkpoint_target, detected_at, body) ";

/// The columns of an inserted delivery, in bind order.
pub(crate) const DELIVERY_INSERT: &str = "INSERT INTO deliveries (event_seq, sink, run_id,
    status, next_attempt_at, created_at, updated_at) ";

// Reads.

/// The earliest `next_attempt_at` of sink `$1`'s pending deliveries after `$2` (Unix
/// ms): a range of the `(sink, status, next_attempt_at)` index, read from its start.
/// Deliveries due already are not in it (a claim that found fewer than it asked for
/// took every one it could: the rest are claimed, locked by another replica's claim, or
/// wait behind their run's head), nor are claims' expiries: a claim lapses after its
/// lease, and the worker looks again within a second anyway. (It was the earliest of
/// `MAX(next_attempt_at, claimed_until)` over every pending delivery: a scan of the whole
/// backlog on each claim that came back short.)
pub(crate) const NEXT_DUE: &str = "SELECT next_attempt_at FROM deliveries
    WHERE sink = $1 AND status = 'pending' AND next_attempt_at > $2
    ORDER BY next_attempt_at LIMIT 1";

/// Pending and dead deliveries per sink: (sink, status, count, oldest created_at).
/// A deploy ended `unknown` (ambiguous) is dead for the gauge: its attempts are over and it
/// needs a person, though `redeliver --dead` leaves it alone (docs/events.md).
pub(crate) const BACKLOG: &str = "SELECT sink, status, COUNT(*), MIN(created_at) FROM deliveries
    WHERE status IN ('pending', 'dead', 'unknown') GROUP BY sink, status";

/// The baselined targets, or the one named by `$1`.
pub(crate) const DUMP_TARGETS: &str = "SELECT name, filter, baselined_at FROM targets
    WHERE (CAST($1 AS TEXT) IS NULL OR name = $1) ORDER BY name";

/// Deliveries, newest first, of status `$1` (any if NULL), at most `$2`.
pub(crate) fn list_deliveries() -> String {
    format!(
        "SELECT {DELIVERY_LIST_COLUMNS}
         FROM deliveries d JOIN events e ON e.seq = d.event_seq
         WHERE (CAST($1 AS TEXT) IS NULL OR {LISTED_STATUS} = $1)
           AND (CAST($3 AS TEXT) IS NULL OR d.sink = $3)
         ORDER BY d.id DESC LIMIT $2"
    )
}

/// How many events are stored of each type: (type, count), by type.
pub(crate) const EVENT_COUNTS: &str =
    "SELECT type, COUNT(*) FROM events GROUP BY type ORDER BY type";

// Writes of the outbox.

/// A delivery no worker is attempting right now (`$1` = now): re-queueing one in flight
/// would send it twice, and its outcome would then overwrite the re-queue.
pub(crate) const NOT_IN_FLIGHT: &str = "(claimed_until IS NULL OR claimed_until <= $1)";

/// Makes a delivery pending again, due now (`$1` = now), with the retry schedule afresh.
pub(crate) const REDELIVER: &str = "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = $1, claimed_until = NULL, claim_token = NULL, updated_at = $1";

/// A deploy delivery whose pipeline holds a deployment: `deliveries redeliver` leaves it
/// alone unless told to deploy again.
pub(crate) const DEPLOYED: &str = "EXISTS (SELECT 1 FROM deploys p
    WHERE p.delivery_id = deliveries.id AND p.deployment_id IS NOT NULL)";

/// Which deliveries `deliveries redeliver` takes: every dead one, of sink `$2` only unless
/// NULL; the one with delivery id `$2`; those of the event with id `$2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Requeue {
    Dead,
    Delivery,
    Event,
}

impl Requeue {
    fn condition(self) -> String {
        match self {
            Requeue::Dead => "status = 'dead' AND (CAST($2 AS TEXT) IS NULL OR sink = $2)".into(),
            Requeue::Delivery => format!("id = $2 AND {NOT_IN_FLIGHT}"),
            Requeue::Event => {
                format!("event_seq = (SELECT seq FROM events WHERE id = $2) AND {NOT_IN_FLIGHT}")
            }
        }
    }

    /// Re-queue these deliveries (deployed deploys too only with `deploy_again`); their ids.
    pub(crate) fn update(self, deploy_again: bool) -> String {
        let deployed = if deploy_again {
            String::new()
        } else {
            format!(" AND NOT {DEPLOYED}")
        };
        format!(
            "{REDELIVER} WHERE {}{deployed} RETURNING id",
            self.condition()
        )
    }

    /// The deployed deploys among these deliveries (`$1` = now, as for the update).
    pub(crate) fn deployed(self) -> String {
        format!(
            "SELECT id FROM deliveries WHERE {} AND {DEPLOYED} AND CAST($1 AS BIGINT) IS NOT NULL
             ORDER BY id",
            self.condition()
        )
    }
}

/// Make every pending delivery not due yet (of sink `$2` only unless NULL) due at `$1`,
/// keeping its attempts: the retry schedule goes on where it was.
pub(crate) fn retry_pending_now() -> String {
    format!(
        "UPDATE deliveries SET next_attempt_at = $1, updated_at = $1
        WHERE status = 'pending' AND next_attempt_at > $1 AND {NOT_IN_FLIGHT}
          AND (CAST($2 AS TEXT) IS NULL OR sink = $2)"
    )
}

/// Which due deliveries a claim takes. A sink's claim fills half its room from
/// [`Lane::First`] and the rest from [`Lane::Any`] ([`super::shared::LaneTurns`]), so
/// that after an outage the first attempts of new events are not queued behind the whole
/// backlog of retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lane {
    /// Never attempted (and never failed before a `redeliver`) nor claimed, oldest first
    /// (a claim that lapsed leaves its delivery to [`Lane::Any`]).
    First,
    /// Every due delivery, the longest due first.
    Any,
}

/// The ids of the due deliveries of sink `$2` at `$3` (Unix ms) in `lane`, at most `$4`,
/// whose claim (if any) lapsed by `clock` (the dialect's claim clock over `$5`);
/// with `ordered`, only the oldest pending delivery of each run. `hint` follows the table
/// (SQLite's `INDEXED BY`); the backend adds its row locking.
///
/// The first lane names its sink as a range and orders by (sink, id): only its partial
/// index (`deliveries_first`, on those columns) gives that order. With `d.sink = $2` and
/// `ORDER BY d.id`, PostgreSQL's planner, its statistics still saying most deliveries are
/// pending (a burst being delivered), walked the primary key instead and filtered out
/// every delivery done so far on each claim (10 ms a claim at 50,000 delivered).
pub(crate) fn due(lane: Lane, ordered: bool, hint: &str, clock: &str) -> String {
    let (sink, first, order) = match lane {
        Lane::First => (
            "d.sink >= $2 AND d.sink <= $2",
            " AND d.attempts = 0 AND d.last_error IS NULL AND d.claimed_until IS NULL",
            "d.sink, d.id",
        ),
        Lane::Any => ("d.sink = $2", "", "d.next_attempt_at, d.id"),
    };
    let head = if ordered {
        " AND NOT EXISTS (
            SELECT 1 FROM deliveries h
            WHERE h.sink = d.sink AND h.run_id = d.run_id AND h.status = 'pending'
              AND h.event_seq < d.event_seq)"
    } else {
        ""
    };
    format!(
        "SELECT d.id FROM deliveries d{hint}
        WHERE {sink} AND d.status = 'pending' AND d.next_attempt_at <= $3
          AND (d.claimed_until IS NULL OR d.claimed_until <= {clock}){first}{head}
        ORDER BY {order}
        LIMIT $4"
    )
}

/// What a claim writes, on the claim clock `clock` (`$1` the lease in ms, `$3` now, `$6`
/// the claim's token): its lease, its token, and its due time moved to the lease's end.
pub(crate) fn claim_set(clock: &str) -> String {
    format!("claimed_until = {clock} + $1, claim_token = $6, next_attempt_at = $3 + $1")
}

/// A claim moves its delivery's due time to the lease's end ([`claim_set`]: `next_attempt_at
/// = now + lease`): a claimed delivery is not due, so claims scanning the due index in order do
/// not read again, claim after claim, the deliveries other claims hold (the slot-fulls a
/// worker keeps claimed ahead, every replica's); and should the attempt never report, the
/// delivery is due again when its claim lapses. Renewals leave it (a claim renewed past
/// its first lease is read, and passed over, again). Given back, a delivery is due at
/// once: `$1` is now.
pub(crate) const DUE_AGAIN_AT_1: &str =
    "next_attempt_at = CASE WHEN next_attempt_at > $1 THEN $1 ELSE next_attempt_at END";

/// A follow-up event (`$1`-`$9`: id, type, target, checkpoint id and name, run id,
/// checkpoint target, detected at, body), unless one of its id exists: its `seq` or no row.
pub(crate) const INSERT_FOLLOW_UP_EVENT: &str = "INSERT INTO events (id, type, target,
    checkpoint_id, checkpoint_name, run_id, checkpoint_target, detected_at, body)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING RETURNING seq";

/// Every outcome is fenced: the rows `u` (`shared::outcome_rows`: id, token, status,
/// counted, next_at, keep_status, last_status, last_error) change a delivery only while
/// it holds the token of the claim that made the attempt. A claim taken again since (it
/// lapsed) carries another token, and a stale attempt's outcome then changes nothing.
/// `$1` is now. The outcomes differ only in their values:
///
/// | outcome | status | counted | next_at | last_status | last_error |
/// |---|---|---|---|---|---|
/// | delivered | delivered | 1 | kept | NULL | NULL |
/// | retry | kept | 1 | next | HTTP status | error |
/// | dead / unknown (a deploy's outcome cannot be told) | dead / unknown | 1 | kept | HTTP status | error |
/// | deferred (put off, not counted) | kept | 0 | next | kept | why |
/// | awaiting approval (`deliveries approve`: never claimed until decided) | awaiting_approval | 0 | kept | NULL | NULL |
/// | superseded (a newer deploy, `latest_only`) | superseded | 0 | kept | NULL | why |
pub(crate) const RECORD_OUTCOME_FROM_U: &str = "status = COALESCE(u.status, deliveries.status),
    attempts = deliveries.attempts + u.counted, claimed_until = NULL, claim_token = NULL,
    next_attempt_at = COALESCE(u.next_at, deliveries.next_attempt_at),
    last_status = CASE WHEN u.keep_status THEN deliveries.last_status ELSE u.last_status END,
    last_error = u.last_error, updated_at = $1";

/// Forget delivered (and superseded) deliveries last updated before `$1`.
pub(crate) const PRUNE_DELIVERIES: &str =
    "DELETE FROM deliveries WHERE status IN ('delivered', 'superseded') AND updated_at < $1";

/// Forget events detected before `$1` that have no delivery left.
pub(crate) const PRUNE_EVENTS: &str = "DELETE FROM events WHERE detected_at < $1
    AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = events.seq)";

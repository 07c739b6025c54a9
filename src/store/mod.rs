//! Persistence behind four role traits: target state ([`PollState`]), the delivery
//! outbox ([`Outbox`]), deploy pipelines ([`Pipelines`]) and read-only views
//! ([`Inspection`]); [`Store`] is all four at once, what `open` hands out.
//!
//! The one rule every backend keeps: a poll's state changes, its events and their
//! deliveries commit in one transaction ([`PollState::commit_poll`]), so a crash at any
//! instant neither loses an event nor records one twice.
//!
//! Layout: the roles are implemented once, in `backend.rs`, for any `Backend`: a backend
//! supplies only its pools, how it takes a write (SQLite: a write turn, a durable or a
//! lease-grade connection, closed after an error), its claim clock, and the three
//! operations it writes its own way (`claim_due`, `load_targets`, `release_claims`). The
//! operations themselves are written once (`shared.rs`, `deploys.rs`, `approvals.rs`,
//! `promotions.rs`, `inspect.rs`, generic over the sqlx database) on the SQL text of
//! `sql.rs` and the row records of `rows.rs`; each dialect's `Dialect` (in `sqlite.rs`
//! and `postgres.rs`) supplies the SQL that differs: JSON paths, locking, batch inserts,
//! the lease fence. Who polls which target is [`coordination`]'s [`Coordinator`]: nothing
//! outside `store/` asks which backend it has.

pub mod approvals;
pub mod attempts;
mod backend;
mod batch;
pub mod coordination;
pub mod deploys;
pub mod inspect;
mod pg_batch;
mod pg_leases;
pub mod postgres;
mod promotions;
mod rows;
mod shared;
mod sql;
pub mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

pub use approvals::{Decided, Decision, Undecided, Verdict};
pub use attempts::AttemptFacts;
pub use coordination::{Coordinator, Fence, LeaseRound, Role, SingleNode, Take};
pub use deploys::{DeployRow, DeployStage, DeployUpdate, FollowClaim, FollowOutcome, Intent};
pub use inspect::{DetailQuery, Overview, OverviewQuery, TargetDetail};

use crate::diff::Diff;
use crate::model::TargetState;
use crate::model::{CheckpointTarget, Event, EventType, ProbeMemo, Tracked};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("cannot migrate the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Open(String),
    /// No connection to the database at open: out of reach (worth waiting for, see
    /// [`StoreError::is_unavailable`]) or refused (a wrong password, no such database).
    #[error("cannot connect to {store}: {source}")]
    Connect { store: String, source: sqlx::Error },
    /// An existing store was asked for and there is none.
    #[error("{0}")]
    Missing(String),
    /// The replica no longer holds the target's lease at the epoch it polled with.
    #[error("lease on target {target} lost (epoch {epoch} is stale); nothing was committed")]
    Fenced { target: String, epoch: i64 },
}

impl StoreError {
    /// The database is out of reach for now (connection refused, reset or timed out, the
    /// server shutting down or starting up, too many connections): the same operation
    /// may succeed later without anyone changing anything. Not a query's own error.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Db(e)
            | StoreError::Connect { source: e, .. }
            | StoreError::Migrate(
                sqlx::migrate::MigrateError::Execute(e)
                | sqlx::migrate::MigrateError::ExecuteMigration(e, _),
            ) => db_unavailable(e),
            _ => false,
        }
    }
}

fn db_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // SQLSTATE class 08 (connection exception), 57P01-57P03 (admin or crash shutdown,
        // cannot connect now), 53300 (too many connections).
        sqlx::Error::Database(d) => d.code().is_some_and(|c| {
            c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The lifecycle of one (event, sink) delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Dead,
    /// Never attempted: a deploy made moot by a newer one of the same run (`latest_only`).
    Superseded,
    /// A deploy waiting for `deliveries approve` (not pending: nothing is due).
    AwaitingApproval,
    /// A deploy someone rejected: terminal, nothing done.
    Rejected,
    /// A deploy nobody decided before `approval_deadline`: terminal, nothing done.
    Expired,
    /// A deploy whose outcome cannot be told (several new deployments of its model after
    /// an unknown outcome): terminal, never sent again by itself.
    Unknown,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
            DeliveryStatus::Superseded => "superseded",
            DeliveryStatus::AwaitingApproval => "awaiting_approval",
            DeliveryStatus::Rejected => "rejected",
            DeliveryStatus::Expired => "expired",
            DeliveryStatus::Unknown => "unknown",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(DeliveryStatus::Pending),
            "delivered" => Some(DeliveryStatus::Delivered),
            "dead" => Some(DeliveryStatus::Dead),
            "superseded" => Some(DeliveryStatus::Superseded),
            "awaiting_approval" => Some(DeliveryStatus::AwaitingApproval),
            "rejected" => Some(DeliveryStatus::Rejected),
            "expired" => Some(DeliveryStatus::Expired),
            "unknown" => Some(DeliveryStatus::Unknown),
            _ => None,
        }
    }
}

/// An event as stored, enough to build any payload format.
#[derive(Clone, Debug, Serialize)]
pub struct StoredEvent {
    pub seq: i64,
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub target: String,
    pub checkpoint_id: String,
    pub checkpoint_name: String,
    pub run_id: String,
    pub checkpoint_target: String,
    pub detected_at: DateTime<Utc>,
    /// The `format = "standard"` body, fixed at detection.
    pub body: String,
}

impl StoredEvent {
    pub fn from_event(seq: i64, e: &Event) -> Self {
        StoredEvent::with_body(seq, e, e.standard_body())
    }

    /// With the `standard` body already built.
    pub fn with_body(seq: i64, e: &Event, body: String) -> Self {
        StoredEvent {
            seq,
            id: e.id.clone(),
            kind: e.kind.as_str().into(),
            target: e.target.clone(),
            checkpoint_id: e.checkpoint_id.clone(),
            checkpoint_name: e.checkpoint_name.clone(),
            run_id: e.run_id.clone(),
            checkpoint_target: e.checkpoint_target.as_str().into(),
            detected_at: e.detected_at,
            body,
        }
    }

    pub fn event_type(&self) -> Option<EventType> {
        EventType::parse(&self.kind)
    }

    /// None for a checkpoint target value without a URI.
    pub fn uri(&self) -> Option<String> {
        let t = CheckpointTarget::parse(&self.checkpoint_target);
        crate::model::checkpoint_uri(&self.run_id, &t, &self.checkpoint_name)
    }
}

/// A delivery handed to a sink worker.
#[derive(Clone, Debug)]
pub struct Claimed {
    pub delivery_id: i64,
    /// The fencing token of this claim: every write the attempt makes carries it, and is
    /// discarded once the delivery was claimed again (its claim lapsed).
    pub token: i64,
    /// Attempts made before this one.
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    pub event: StoredEvent,
}

/// One row of `deliveries list`.
#[derive(Clone, Debug, Serialize)]
pub struct DeliveryRow {
    pub id: i64,
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub target: String,
    /// None for a checkpoint target value without a URI.
    pub uri: Option<String>,
    pub sink: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Per-sink backlog figures for the delivery gauges.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SinkBacklog {
    pub sink: String,
    pub pending: i64,
    pub dead: i64,
    pub oldest_pending: Option<DateTime<Utc>>,
}

/// One target's persisted state, for `state`.
#[derive(Clone, Debug)]
pub struct TargetDump {
    pub name: String,
    pub filter: String,
    pub baselined_at: DateTime<Utc>,
    pub checkpoints: Vec<Tracked>,
}

/// What one successful poll commits.
pub struct PollCommit<'a> {
    pub target: &'a str,
    /// The target's filter, recorded with its baseline.
    pub filter: &'a str,
    pub diff: &'a Diff,
    /// For each event of `diff.events` (same order), the sinks it goes to.
    pub sinks: Vec<Vec<&'a str>>,
    pub now: DateTime<Utc>,
    /// With several replicas: commit only while this lease is still held.
    pub fence: Option<Fence>,
    /// The digest of the listing this poll diffed, when the state after this commit
    /// agrees with that listing for good ([`crate::model::Settled`]); kept with the state
    /// (and cleared by a commit without it), so that after a restart the same listing is
    /// not decoded again.
    pub settled: Option<u128>,
    /// What the readiness probes saw that changed, by checkpoint id: the memo to keep,
    /// or `None` to forget it (the checkpoint completed or was deleted). Stored with the
    /// checkpoint's row, so that a new process (`loopwatch once`, a restart) carries on.
    pub probes: Vec<(&'a str, Option<&'a ProbeMemo>)>,
}

/// What a sink worker records after an attempt.
#[derive(Clone, Debug)]
pub enum AttemptOutcome {
    Delivered,
    /// Try again at `next`.
    Retry {
        next: DateTime<Utc>,
        status: Option<u16>,
        error: String,
    },
    Dead {
        status: Option<u16>,
        error: String,
    },
    /// Delivered, and an event it brings about (a deploy's `checkpoint.deployed`),
    /// committed in the same transaction.
    DeliveredWith(Box<FollowUp>),
    /// Terminal without an attempt: a newer delivery makes this one moot (`latest_only`).
    Superseded {
        reason: String,
    },
    /// Terminal: a deploy whose outcome cannot be told (status `unknown`); never sent
    /// again by itself.
    Unknown {
        error: String,
    },
    /// Not attempted now, for `reason`: due again at `next`, the attempt not counted (a
    /// deploy waiting for another call to the same model to be reconciled).
    Deferred {
        next: DateTime<Utc>,
        reason: String,
    },
    /// Not attempted: the deploy waits for `deliveries approve` (status
    /// `awaiting_approval`, never claimed until decided), and its
    /// `checkpoint.awaiting_approval` event (when it could be built) is committed in the
    /// same transaction.
    AwaitingApproval(Option<Box<FollowUp>>),
}

/// One attempt's outcome to record: fenced by the token of the claim that made it, with
/// what it does to the delivery's deploy pipeline (a `baseten_deploy` sink's).
#[derive(Clone, Debug)]
pub struct Recorded {
    pub delivery_id: i64,
    pub token: i64,
    pub outcome: AttemptOutcome,
    pub deploy: Option<DeployUpdate>,
    /// What the attempts log keeps beyond the outcome ([`attempts`]).
    pub facts: AttemptFacts,
}

impl Recorded {
    pub fn new(c: &Claimed, outcome: AttemptOutcome) -> Self {
        Recorded {
            delivery_id: c.delivery_id,
            token: c.token,
            outcome,
            deploy: None,
            facts: AttemptFacts::default(),
        }
    }
}

/// An event a delivery's outcome brings about, with one pending delivery per sink of
/// `sinks`. Its id is derived from the delivery's event and sink, so a repeat finds it
/// already recorded and adds nothing.
#[derive(Clone, Debug)]
pub struct FollowUp {
    pub event: StoredEvent,
    pub sinks: Vec<String>,
}

/// Which deliveries `deliveries redeliver` re-queues. A deploy whose pipeline holds a
/// deployment (deployed, or adopted by a reconciliation) is re-queued only by
/// [`Redeliver::DeployAgain`]: the deploy route is not idempotent, and a second deploy
/// costs GPUs.
#[derive(Clone, Debug)]
pub enum Redeliver {
    /// Delivery ids, or event ids (`evt_...`: all of that event's deliveries).
    Ids(Vec<String>),
    /// As `Ids`, deployed deploys included: they deploy again.
    DeployAgain(Vec<String>),
    Dead {
        sink: Option<String>,
    },
    /// Every pending delivery (of `sink` only, when given) waiting for a later retry: due
    /// now, the retry schedule going on where it was (after an outage, not to wait for it).
    Pending {
        sink: Option<String>,
    },
}

/// What a write of attempts' outcomes did ([`Outbox::record_attempts`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// The deliveries whose outcome was discarded: their claim was no longer held.
    pub stale: Vec<i64>,
    /// Deliveries waiting for approval that a deploy starting to wait superseded in the
    /// same write (`latest_only`): of the same sink, counted as `superseded` by the caller.
    pub superseded: u64,
}

/// What `deliveries redeliver` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requeued {
    /// Deliveries re-queued (or, with [`Redeliver::Pending`], made due now).
    pub count: u64,
    /// Deploy deliveries named (or dead) whose pipeline holds a deployment: left alone,
    /// by id ([`Redeliver::DeployAgain`] deploys them again).
    pub deployed: Vec<i64>,
}

/// Every role of the store at once: what `open` hands out (`Arc<dyn Store>`). Implemented
/// for anything that plays the four roles; the backends play them through the one
/// generic implementation of `backend.rs`. Callers bring the role traits into scope
/// with `use crate::store::prelude::*`.
pub trait Store: PollState + Outbox + Pipelines + Inspection {}

impl<T: PollState + Outbox + Pipelines + Inspection + ?Sized> Store for T {}

/// The traits of the store's roles, in scope without their names (`store::Outbox` would
/// clash with `delivery::Outbox`): `use crate::store::prelude::*`.
pub mod prelude {
    pub use super::Inspection as _;
    pub use super::Outbox as _;
    pub use super::Pipelines as _;
    pub use super::PollState as _;
    pub use super::Store;
}

/// Poll state: what a poller loads at start and commits after every poll (target state,
/// events and their deliveries, under the rule of [`PollState::commit_poll`]).
#[async_trait]
pub trait PollState: Send + Sync + 'static {
    /// The persisted state of a target (empty and not baselined if never seen). Rows hold
    /// the digest of their upstream object, not its text.
    async fn load_target(&self, name: &str) -> Result<TargetState>;

    /// The states of several targets, in the order of `names` (what a daemon needs at
    /// start); a backend may read them all at once.
    async fn load_targets(&self, names: &[&str]) -> Result<Vec<TargetState>>;

    /// The upstream object of a tracked checkpoint as last stored (the text a `deleted`
    /// event carries; the in-memory state keeps only its digest).
    async fn checkpoint_raw(&self, target: &str, id: &str) -> Result<Option<String>>;

    /// Commit a poll's state changes, events and deliveries in one transaction. Returns
    /// the stored events (with their sequence numbers).
    async fn commit_poll(&self, commit: PollCommit<'_>) -> Result<Vec<StoredEvent>>;
}

/// The delivery outbox, as sink workers and `deliveries redeliver` use it: claims with
/// their fencing tokens, attempts' outcomes, re-queueing and pruning.
#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// Claim up to `limit` due deliveries of `sink` for `lease`, each with a fresh fencing
    /// token. With `ordered`, only the oldest pending delivery of each run is eligible.
    /// The claim's clock is the database's (PostgreSQL) or the process's monotonic one
    /// (SQLite): a step of the replica's wall clock never expires a claim early.
    async fn claim_due(
        &self,
        sink: &str,
        now: DateTime<Utc>,
        limit: usize,
        ordered: bool,
        lease: Duration,
    ) -> Result<Vec<Claimed>>;

    /// The earliest `next_attempt_at` after `now` of a pending delivery of `sink`: when
    /// a claim that found nothing more due should look again. One index probe, whatever
    /// the backlog (a sink down with 100,000 retries pending costs no scan of them).
    async fn next_due(&self, sink: &str, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>>;

    /// The outcomes of several attempts, written together (one transaction), each
    /// attempt logged with its facts in the same transaction ([`attempts`]). An outcome
    /// whose claim is no longer held (its token changed) is discarded, and not logged:
    /// [`Written::stale`] has the ids of those.
    async fn record_attempts(&self, outcomes: &[Recorded], now: DateTime<Utc>) -> Result<Written>;

    /// One outcome; false when it was discarded (a stale claim).
    async fn record_attempt(
        &self,
        c: &Claimed,
        outcome: &AttemptOutcome,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let written = self
            .record_attempts(&[Recorded::new(c, outcome.clone())], now)
            .await?;
        Ok(written.stale.is_empty())
    }

    /// Make held claims (delivery id, token) last `lease` from now; returns the ids still
    /// held (the others were taken again after they lapsed, or released).
    async fn renew_claims(&self, held: &[(i64, i64)], lease: Duration) -> Result<Vec<i64>>;

    /// Give back claims (delivery id, token) that were never attempted (a sink worker
    /// stopping): the deliveries are due again at once instead of when the claims expire.
    async fn release(&self, claims: &[(i64, i64)]) -> Result<()>;

    /// Release every claim (a single-instance store does this at start: nobody else holds them).
    async fn release_claims(&self) -> Result<u64>;

    /// With `latest_only`: the name of a checkpoint of `run_id` newer (by `created_at`)
    /// than `created_at` that `sink` has a `checkpoint.completed` sampler delivery for,
    /// pending (in flight included), delivered or waiting for approval, other than
    /// `delivery_id`; `None` if none.
    async fn newer_deploy(
        &self,
        sink: &str,
        run_id: &str,
        delivery_id: i64,
        created_at: DateTime<Utc>,
    ) -> Result<Option<String>>;

    /// Re-queue deliveries to be sent now; how many, and the deployed deploys left alone.
    async fn redeliver(&self, which: &Redeliver, now: DateTime<Utc>) -> Result<Requeued>;

    /// Forget delivered deliveries last updated before `cutoff`, then events detected
    /// before it that have no delivery left. Pending and dead deliveries are kept.
    /// Returns (deliveries, events) removed.
    async fn prune(&self, cutoff: DateTime<Utc>) -> Result<(u64, u64)>;
}

/// Deploy pipelines (a `baseten_deploy` sink's): their intents and stages, follow claims,
/// approvals, promotion and clean-up ([`deploys`], [`approvals`]).
#[async_trait]
pub trait Pipelines: Send + Sync + 'static {
    /// The deploy pipeline of the claimed deploy delivery `c` at `sink`, created at its
    /// first attempt (stage `deploying`); `None` when the claim is no longer held.
    /// `created_at` is the checkpoint's, as the upstream wrote it.
    async fn deploy_begin(
        &self,
        c: &Claimed,
        sink: &str,
        created_at: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Option<DeployRow>>;

    /// Before a deploy call is sent: the deployments `model_name` (`model_id`, when it
    /// exists) had before it. Nothing is written when the claim is no longer held, or
    /// another pipeline's call to the model is in doubt ([`Intent`]): the call must not be
    /// sent then.
    async fn deploy_intent(
        &self,
        c: &Claimed,
        model_name: &str,
        model_id: Option<&str>,
        before: &[String],
        now: DateTime<Utc>,
    ) -> Result<Intent>;

    /// Reconciliation found that the call in doubt deployed nothing. False when the
    /// claim is no longer held.
    async fn deploy_clear_intent(&self, c: &Claimed, now: DateTime<Utc>) -> Result<bool>;

    /// Every deployment id of `model_id` some pipeline recorded, with its delivery id.
    async fn recorded_deployments(&self, model_id: &str) -> Result<Vec<(i64, String)>>;

    /// Claim up to `limit` followed deployments of `sink` due at `now`, for `lease`.
    async fn claim_follows(
        &self,
        sink: &str,
        now: DateTime<Utc>,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<FollowClaim>>;

    /// A follow's outcome and the event it brings about; false when it was discarded
    /// (another follower holds the deployment now).
    async fn record_follow(&self, outcome: &FollowOutcome, now: DateTime<Utc>) -> Result<bool>;

    /// `deliveries approve` / `reject`: decide every pipeline `ids` (delivery ids or
    /// checkpoint ids) name that waits for approval, all in one transaction; when any id
    /// names nothing waiting, nothing changes and each such id comes back with why.
    /// Concurrent decisions of one pipeline: exactly one takes effect.
    async fn decide(
        &self,
        ids: &[String],
        decision: &Decision,
    ) -> Result<std::result::Result<Vec<Decided>, Vec<Undecided>>>;

    /// End the waits of `sink` whose `approval_deadline` passed by `now` (`expired`):
    /// their delivery ids.
    async fn expire_approvals(&self, sink: &str, now: DateTime<Utc>) -> Result<Vec<i64>>;

    /// The soonest approval deadline of each sink with a pipeline waiting.
    async fn approval_deadlines(&self) -> Result<Vec<(String, DateTime<Utc>)>>;

    /// Before a promote call: record that one may be in doubt, fenced by the follow claim
    /// (`claim`'s token). False when another follower holds the pipeline now.
    async fn promote_intent(&self, claim: &FollowClaim, now: DateTime<Utc>) -> Result<bool>;

    /// With `latest_only`: a newer checkpoint of `run_id` whose pipeline at `sink` is live
    /// (active or promoted), other than `delivery_id`: its name.
    async fn newer_live(
        &self,
        sink: &str,
        run_id: &str,
        delivery_id: i64,
        created_at: DateTime<Utc>,
    ) -> Result<Option<String>>;

    /// `sink`'s recorded, not yet deactivated deployments of `model_id` for checkpoints
    /// older than `created_at` (other than `delivery_id`'s pipeline), oldest first.
    async fn cleanup_candidates(
        &self,
        sink: &str,
        model_id: &str,
        delivery_id: i64,
        created_at: DateTime<Utc>,
    ) -> Result<Vec<DeployRow>>;

    /// Pipeline `delivery_id`'s deployment was deactivated (`why`); false when another
    /// clean-up marked it first.
    async fn mark_deactivated(
        &self,
        delivery_id: i64,
        why: &str,
        now: DateTime<Utc>,
    ) -> Result<bool>;
}

/// Read-only views for the commands (`state`, `deliveries list`, `deploys`), the gauges
/// and the status page ([`inspect`]): nothing here writes.
#[async_trait]
pub trait Inspection: Send + Sync + 'static {
    async fn list_deliveries(
        &self,
        status: Option<DeliveryStatus>,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>>;

    /// The newest `limit` deliveries (in `status`, of `sink`, when given), oldest first.
    async fn list_sink_deliveries(
        &self,
        status: Option<DeliveryStatus>,
        sink: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>>;

    async fn backlog(&self) -> Result<Vec<SinkBacklog>>;

    async fn dump(&self, target: Option<&str>) -> Result<Vec<TargetDump>>;

    /// How many events are stored of each type: (type, count), by type.
    async fn event_counts(&self) -> Result<Vec<(String, i64)>>;

    /// The deploy pipelines (of `sink`, when given), newest first, at most `limit`.
    async fn list_deploys(&self, sink: Option<&str>, limit: i64) -> Result<Vec<DeployRow>>;

    /// How many pipelines each sink has in each stage: (sink, stage, count).
    async fn deploy_stages(&self) -> Result<Vec<(String, String, i64)>>;

    /// The database-wide picture for the status page ([`inspect`]): read-only, bounded
    /// by the names and limits of `q`.
    async fn overview(&self, q: &OverviewQuery) -> Result<Overview>;

    /// One target's page of checkpoints with their events, deliveries and attempts
    /// ([`inspect`]): read-only, bounded by `q`.
    async fn target_detail(&self, q: &DetailQuery) -> Result<TargetDetail>;
}

/// How a command opens the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Create it if missing and migrate it: `run`, `once`, `demo`.
    ReadWrite,
    /// An existing store, to change (`deliveries redeliver`): a missing SQLite file is an
    /// error, not a fresh empty state that would match nothing.
    Existing,
    /// An existing store that is never written, not even migrated: `state`,
    /// `deliveries list`, `once --dry-run`.
    ReadOnly,
}

/// Open the store named by `store.url`, creating and migrating it.
pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    open_with(url, Access::ReadWrite).await
}

pub async fn open_with(url: &str, access: Access) -> Result<Arc<dyn Store>> {
    if is_sqlite(url) {
        Ok(Arc::new(sqlite::SqliteStore::open_with(url, access).await?))
    } else {
        Ok(Arc::new(postgres::PgStore::open_with(url, access).await?))
    }
}

/// The store named by `cfg.url` and the coordination of the processes that share it: a
/// SQLite file has one node ([`SingleNode`]), PostgreSQL has replicas that lease targets
/// ([`postgres::PgLeases`]).
pub async fn open_coordinated(
    cfg: &crate::config::StoreConfig,
    access: Access,
    role: Role,
) -> Result<(Arc<dyn Store>, Arc<dyn Coordinator>)> {
    if is_sqlite(&cfg.url) {
        let store = sqlite::SqliteStore::open_with(&cfg.url, access).await?;
        let single = SingleNode::new(cfg.replica_id.clone());
        Ok((Arc::new(store), Arc::new(single)))
    } else {
        let store = postgres::PgStore::open_with(&cfg.url, access).await?;
        let leases = postgres::PgLeases::for_role(&store, &cfg.replica_id, cfg.lease_ttl, role);
        Ok((Arc::new(store), Arc::new(leases)))
    }
}

/// How far `now`, a wall-clock reading a caller passed, is from this process's present:
/// about 0 in the daemon, which passes `Utc::now()`. Claims measure time on the store's
/// own clock (the database's, or the process's monotonic one), shifted by this offset,
/// so a test can pass a later `now` to see claims expire, while a step of the wall clock
/// between two claims moves nothing.
pub(crate) fn clock_skew(now: DateTime<Utc>) -> i64 {
    now.timestamp_millis() - Utc::now().timestamp_millis()
}

/// A fresh fencing token for a claim (random: unique enough among the claims of one row).
pub(crate) fn claim_token() -> i64 {
    use rand::RngExt;
    rand::rng().random_range(1..i64::MAX)
}

fn is_sqlite(url: &str) -> bool {
    url.starts_with("sqlite:")
}

/// A store opened read-only cannot migrate: its schema must already be this build's
/// (`applied`: the newest migration it records).
pub(crate) fn require_current(
    applied: Option<i64>,
    migrator: &sqlx::migrate::Migrator,
    shown: &str,
) -> Result<()> {
    if applied < migrator.iter().map(|m| m.version).max() {
        return Err(StoreError::Open(format!(
            "the state at {shown} was written by an older loopwatch; run `loopwatch once` or the daemon once to upgrade it"
        )));
    }
    Ok(())
}
/// The checkpoint deliveries [`Outbox::newer_deploy`] weighs: same sink and run, another
/// delivery, pending, delivered or waiting for approval, of a completed sampler
/// checkpoint. Selects its name, `created_at` as the upstream wrote it and its first sight
/// (the backend's JSON path expressions over `e.body`).
pub(crate) fn newer_deploy_query(created_at_expr: &str, first_seen_expr: &str) -> String {
    format!(
        "SELECT e.checkpoint_name, {created_at_expr}, {first_seen_expr} FROM deliveries d JOIN events e ON e.seq = d.event_seq
         WHERE d.sink = $1 AND d.run_id = $2 AND d.id <> $3
           AND d.status IN ('pending', 'delivered', 'awaiting_approval')
           AND e.type = 'checkpoint.completed' AND e.checkpoint_target = 'sampler'"
    )
}

/// The newest of `rows` (name, created_at, first seen) created after `than`, each ordered
/// by [`crate::model::ordering_time`] (a `created_at` a day or more past its first sight
/// counts as that first sight, so it cannot supersede the run's later checkpoints), by
/// [`crate::model::superseded_by`].
pub(crate) fn pick_newer(
    rows: Vec<(String, Option<String>, Option<String>)>,
    than: DateTime<Utc>,
) -> Option<String> {
    use crate::model::{ordering_time, parse_created_at, superseded_by};
    let candidates = rows.into_iter().filter_map(|(name, at, seen)| {
        let at = parse_created_at(&at?)?;
        let at = match seen.as_deref().and_then(parse_created_at) {
            Some(seen) => ordering_time(at, seen),
            None => at,
        };
        Some((at, name))
    });
    superseded_by(candidates, than)
}

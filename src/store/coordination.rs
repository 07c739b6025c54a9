//! Who polls which target, behind one trait: [`Coordinator`]. A commit carries the
//! [`Fence`] (owner, epoch) it polled under, and a backend that shares its targets
//! refuses the commit once that lease is lost ([`super::StoreError::Fenced`]).
//!
//! Two implementations: [`SingleNode`] (SQLite: one process owns every target for good,
//! at one fixed epoch, so there is nothing to renew) and
//! [`PgLeases`](super::postgres::PgLeases) (PostgreSQL: replicas lease targets with
//! fencing epochs). Nothing outside `store/` asks which one it has.

use std::time::Duration;

use async_trait::async_trait;

use super::Result;

/// A lease held by this process: (owner, epoch) must still match at commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub owner: String,
    pub epoch: i64,
}

/// How a process takes part in sharing the store's targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The daemon: joins as a replica (heartbeat) and holds a fair share of the targets.
    Replica,
    /// `once` beside running replicas: leases only targets nobody holds, under
    /// `<replica_id>/once-<pid>`, without joining (no heartbeat, so the replicas' fair
    /// shares do not move); its rounds only renew what it took.
    OneShot,
}

/// What one lease round left this process holding.
#[derive(Debug, Default, PartialEq)]
pub struct LeaseRound {
    /// Target -> epoch, for every lease this process holds after the round.
    pub owned: Vec<(String, i64)>,
    /// Leases taken from another replica whose lease had expired.
    pub takeovers: u64,
    /// Replicas with a recent heartbeat, among which the targets are shared.
    pub live_replicas: i64,
    /// The processes sharing the API budget: the live replicas and the `once` runs beside
    /// them (which poll only targets nobody holds, so they do not move the fair shares).
    pub api_sharers: i64,
    /// This replica is the one of the live replicas (the lowest id) that exports the
    /// database-wide figures (the delivery backlog); the others export 0.
    pub reports_backlog: bool,
}

/// What became of one target a one-shot run tried to take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Take {
    /// Leased to this run under this epoch.
    Taken(i64),
    /// Another process (named) holds it.
    HeldBy(String),
}

/// Per target, what [`Coordinator::take_free`] got.
pub type Taken = Vec<(String, Take)>;

/// Leases, fencing and ownership of targets.
#[async_trait]
pub trait Coordinator: Send + Sync + 'static {
    /// The name this process holds leases and fences commits under.
    fn owner(&self) -> &str;

    /// How long a lease lasts without renewal; `None` when ownership never lapses (a
    /// single node), so there is no lease to keep.
    fn lease_ttl(&self) -> Option<Duration>;

    /// The targets of `targets` this process owns before any lease round, with their
    /// epochs: all of them on a single node, none where replicas share leases.
    fn owned_from_start(&self, targets: &[String]) -> Vec<(String, i64)>;

    /// One round of the lease loop, run every `ttl / 3`: as a [`Role::Replica`],
    /// heartbeat, renew what is held, give up what is above a fair share and take free or
    /// expired targets up to it; as a [`Role::OneShot`], renew what is held.
    async fn round(&self, targets: &[String]) -> Result<LeaseRound>;

    /// Take the lease of each of `targets` that nobody holds (`once`'s start).
    async fn take_free(&self, targets: &[String]) -> Result<Taken>;

    /// Give up every lease (on exit), so that another replica takes over at once.
    async fn release_all(&self) -> Result<()>;
}

/// One process owns every target, for good: the SQLite store (its flock already keeps a
/// second poller out).
pub struct SingleNode {
    owner: String,
}

impl SingleNode {
    /// The one epoch every target is owned at.
    pub const EPOCH: i64 = 0;

    pub fn new(owner: String) -> Self {
        SingleNode { owner }
    }

    fn all(targets: &[String]) -> Vec<(String, i64)> {
        targets.iter().map(|t| (t.clone(), Self::EPOCH)).collect()
    }
}

#[async_trait]
impl Coordinator for SingleNode {
    fn owner(&self) -> &str {
        &self.owner
    }

    fn lease_ttl(&self) -> Option<Duration> {
        None
    }

    fn owned_from_start(&self, targets: &[String]) -> Vec<(String, i64)> {
        Self::all(targets)
    }

    async fn round(&self, targets: &[String]) -> Result<LeaseRound> {
        Ok(LeaseRound {
            owned: Self::all(targets),
            takeovers: 0,
            live_replicas: 1,
            api_sharers: 1,
            reports_backlog: true,
        })
    }

    async fn take_free(&self, targets: &[String]) -> Result<Taken> {
        Ok(targets
            .iter()
            .map(|t| (t.clone(), Take::Taken(Self::EPOCH)))
            .collect())
    }

    async fn release_all(&self) -> Result<()> {
        Ok(())
    }
}

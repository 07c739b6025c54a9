//! Who polls which target, behind one trait: [`Coordinator`]. A commit carries the
//! [`Fence`] (owner, epoch) it polled under, and a backend that shares its targets
//! refuses the commit once that lease is lost ([`super::StoreError::Fenced`]).
//!
//! Two implementations: [`SingleNode`] (SQLite: one process owns every target for good,
//! at one fixed epoch, so there is nothing to renew) and
//! [`PgLeases`](super::postgres::PgLeases) (PostgreSQL: replicas lease shards of the
//! targets, [`shard_of`], with fencing epochs). Nothing outside `store/` asks which one it
//! has.

use std::time::Duration;

use async_trait::async_trait;

use super::Result;

/// How many shards the targets hash into ([`shard_of`]). Replicas lease shards, not
/// targets: a round's writes do not grow with the fleet. Fixed: every replica sharing a
/// database must hash alike, so changing it is a schema change.
pub const SHARDS: u32 = 1024;

/// The shard of `target`: FNV-1a (64-bit) of its name, modulo [`SHARDS`]. Stable across
/// processes, versions and platforms (no per-process seed, unlike `std`'s hasher).
pub fn shard_of(target: &str) -> i32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in target.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(SHARDS)) as i32
}

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
    /// Another live process heartbeats under this replica's id: the two poll the same
    /// targets under the same leases, and each event of them may be sent twice.
    pub replica_id_shared: bool,
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
            replica_id_shared: false,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash is part of the schema: replicas of one database must agree on it. These
    /// values are FNV-1a's published ones (offset basis, then "a" and "foobar"), mod 1024.
    #[test]
    fn shard_of_is_fnv1a_modulo_the_shard_count() {
        assert_eq!(shard_of(""), (0xcbf2_9ce4_8422_2325_u64 % 1024) as i32);
        assert_eq!(shard_of("a"), (0xaf63_dc4c_8601_ec8c_u64 % 1024) as i32);
        assert_eq!(
            shard_of("foobar"),
            (0x8594_4171_f739_67e8_u64 % 1024) as i32
        );
    }

    /// 100,000 names spread evenly: no shard holds twice its share (~98).
    #[test]
    fn shards_spread_targets_evenly() {
        let mut counts = vec![0u32; SHARDS as usize];
        for i in 0..100_000 {
            counts[shard_of(&format!("run-{i}")) as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min >= 49 && *max <= 196, "min {min}, max {max}");
    }
}

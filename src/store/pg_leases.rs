//! Replica membership and shard leases on the shared database: the PostgreSQL
//! [`Coordinator`].
//!
//! Targets hash into [`SHARDS`](super::coordination::SHARDS) shards ([`shard_of`]) and replicas lease shards. A lease
//! (`shard_leases`: owner, epoch, released) is valid while its owner's row in `replicas`
//! has `lease_expires_at` in the future, and that row is all a replica's heartbeat
//! renews: one write per replica per round, whatever the fleet's size. Rows of
//! `shard_leases` are written only when a shard changes hands. Lease times use the
//! database clock, so replicas never compare their own clocks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::DateTime;
use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Row};
use tracing::warn;

use super::Result;
use super::coordination::{Coordinator, LeaseRound, Role, Take, Taken, shard_of};
use super::postgres::{DB_NOW, ONE_SHOT, ONE_SHOT_LIKE, PgStore};

/// Replica membership and shard leases: see the module's documentation.
pub struct PgLeases {
    pool: PgPool,
    replica: String,
    ttl: Duration,
    role: Role,
    /// A replica of an earlier version still held per-target leases (logged once).
    legacy_logged: AtomicBool,
    /// The lapsed per-target leases of earlier versions were deleted (once), so that the
    /// check each round reads an empty table.
    legacy_cleared: AtomicBool,
    /// This process's mark in its `replicas` row (random per start).
    instance: String,
    /// A heartbeat was written.
    beaten: AtomicBool,
    /// The last heartbeat found another process's mark in this replica's row.
    shared: AtomicBool,
}

/// One row of `shard_leases` as a round reads it.
struct ShardRow {
    owner: String,
    epoch: i64,
    released: bool,
    /// The owner's heartbeat keeps its leases valid.
    live: bool,
}

/// What one take got: the shards taken (shard, epoch, taken over from a replica whose
/// leases lapsed), and the owner of each shard it could not take.
struct Took {
    taken: Vec<(i32, i64, bool)>,
    held_by: HashMap<i32, String>,
}

/// The configured targets grouped by shard, each group sorted.
fn by_shard(targets: &[String]) -> BTreeMap<i32, Vec<String>> {
    let mut groups: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for t in targets {
        groups.entry(shard_of(t)).or_default().push(t.clone());
    }
    for g in groups.values_mut() {
        g.sort();
        g.dedup();
    }
    groups
}

impl PgLeases {
    /// The leases of replica `replica` (a daemon: [`Role::Replica`]).
    pub fn new(store: &PgStore, replica: String, ttl: Duration) -> Self {
        PgLeases {
            pool: store.pool().clone(),
            replica,
            ttl,
            role: Role::Replica,
            legacy_logged: AtomicBool::new(false),
            legacy_cleared: AtomicBool::new(false),
            instance: format!("{}-{:016x}", std::process::id(), rand::random::<u64>()),
            beaten: AtomicBool::new(false),
            shared: AtomicBool::new(false),
        }
    }

    /// The leases of a process in `role`; a one-shot run holds them under
    /// `<replica_id>/once-<pid>`.
    pub fn for_role(store: &PgStore, replica_id: &str, ttl: Duration, role: Role) -> Self {
        let replica = match role {
            Role::Replica => replica_id.to_string(),
            Role::OneShot => format!("{replica_id}{ONE_SHOT}{}", std::process::id()),
        };
        PgLeases {
            role,
            ..PgLeases::new(store, replica, ttl)
        }
    }

    fn ttl_ms(&self) -> i64 {
        self.ttl.as_millis() as i64
    }

    /// Record that this process is alive now, which also keeps every shard lease it holds
    /// valid for `ttl`; then who is: (live replicas, processes sharing the API budget, the
    /// lowest replica id). One-shot runs count only among the sharers. Notes in
    /// [`PgLeases::shared`] whether another process wrote this replica's row since this
    /// one's last heartbeat (the same `replica_id` on two live processes).
    async fn heartbeat(&self) -> Result<(i64, i64, Option<String>)> {
        let before: Option<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "WITH prev AS (SELECT instance FROM replicas WHERE id = $1)
             INSERT INTO replicas (id, heartbeat_at, started_at, lease_expires_at, instance)
                VALUES ($1, {DB_NOW}, {DB_NOW}, {DB_NOW} + $2, $3)
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,
                lease_expires_at = excluded.lease_expires_at, instance = excluded.instance,
                started_at = CASE WHEN replicas.instance IS DISTINCT FROM excluded.instance
                    THEN excluded.started_at ELSE replicas.started_at END
             RETURNING (SELECT instance FROM prev)"
        )))
        .bind(&self.replica)
        .bind(self.ttl_ms())
        .bind(&self.instance)
        .fetch_one(&self.pool)
        .await?;
        // Only from the second heartbeat on: before its first, the row may be the one a
        // crashed predecessor under the same id left (no one else alive).
        let beaten = self.beaten.swap(true, Ordering::Relaxed);
        let other = before.is_some_and(|b| b != self.instance);
        self.shared.store(beaten && other, Ordering::Relaxed);
        Ok(sqlx::query_as(AssertSqlSafe(format!(
            "SELECT COUNT(*) FILTER (WHERE id NOT LIKE $2), COUNT(*),
                MIN(id) FILTER (WHERE id NOT LIKE $2)
             FROM replicas WHERE heartbeat_at > {DB_NOW} - $1"
        )))
        .bind(self.ttl_ms())
        .bind(ONE_SHOT_LIKE)
        .fetch_one(&self.pool)
        .await?)
    }

    /// A live per-target lease of an earlier version's replica: while one is held, this
    /// replica takes no shard (the two schemes do not fence each other), and says so once.
    async fn legacy_holder(&self) -> Result<Option<String>> {
        let holder: Option<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT owner FROM leases WHERE expires_at > {DB_NOW} LIMIT 1"
        )))
        .fetch_optional(&self.pool)
        .await?;
        if holder.is_none() && !self.legacy_cleared.swap(true, Ordering::Relaxed) {
            // Nothing reads them again; a replica of an earlier version that starts later
            // inserts its own, which this check then sees.
            sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM leases WHERE expires_at <= {DB_NOW}"
            )))
            .execute(&self.pool)
            .await?;
        }
        if let Some(h) = &holder
            && !self.legacy_logged.swap(true, Ordering::Relaxed)
        {
            warn!(
                holder = %h,
                "a replica of an earlier loopwatch holds per-target leases: taking no target until every such replica has stopped"
            );
        }
        Ok(holder)
    }

    /// Every shard lease, with whether its owner is alive.
    async fn shards(&self) -> Result<HashMap<i32, ShardRow>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT l.shard, l.owner, l.epoch, l.released,
                COALESCE(r.lease_expires_at, 0) > {DB_NOW} AS live
             FROM shard_leases l LEFT JOIN replicas r ON r.id = l.owner"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("shard")?,
                    ShardRow {
                        owner: r.try_get("owner")?,
                        epoch: r.try_get("epoch")?,
                        released: r.try_get("released")?,
                        live: r.try_get("live")?,
                    },
                ))
            })
            .collect()
    }

    /// The shards this process holds: (shard, epoch).
    fn held(&self, rows: &HashMap<i32, ShardRow>) -> Vec<(i32, i64)> {
        rows.iter()
            .filter(|(_, r)| r.owner == self.replica && !r.released)
            .map(|(&s, r)| (s, r.epoch))
            .collect()
    }

    /// Take each of `shards` that is free (never leased, released, or its owner's leases
    /// lapsed): one transaction of five statements whatever their number. Rows are locked
    /// in shard order, so two replicas taking at once cannot deadlock; the owners' liveness
    /// is read after the lock, so a heartbeat that lands first is seen.
    async fn take(&self, shards: &[i32]) -> Result<Took> {
        let mut shards = shards.to_vec();
        shards.sort_unstable();
        shards.dedup();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO shard_leases (shard, owner, epoch, released)
             SELECT s, '', 0, TRUE FROM unnest($1::int4[]) AS s ORDER BY s
             ON CONFLICT (shard) DO NOTHING",
        )
        .bind(&shards)
        .execute(&mut *tx)
        .await?;
        let prev: Vec<(i32, String, i64, bool)> = sqlx::query_as(
            "SELECT shard, owner, epoch, released FROM shard_leases
             WHERE shard = ANY($1) ORDER BY shard FOR UPDATE",
        )
        .bind(&shards)
        .fetch_all(&mut *tx)
        .await?;
        let owners: Vec<&str> = prev.iter().map(|(_, o, _, _)| o.as_str()).collect();
        let live: HashSet<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT id FROM replicas WHERE id = ANY($1) AND lease_expires_at > {DB_NOW}"
        )))
        .bind(&owners)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        let mut took = Took {
            taken: Vec::new(),
            held_by: HashMap::new(),
        };
        let mut free = Vec::new();
        let mut takeover = HashSet::new();
        for (shard, owner, epoch, released) in prev {
            if owner == self.replica && !released {
                took.taken.push((shard, epoch, false));
            } else if released || !live.contains(&owner) {
                // Taken from a replica whose leases lapsed, not one that gave it up.
                if !released {
                    takeover.insert(shard);
                }
                free.push(shard);
            } else {
                took.held_by.insert(shard, owner);
            }
        }
        if !free.is_empty() {
            let rows: Vec<(i32, i64)> = sqlx::query_as(
                "UPDATE shard_leases SET owner = $2, epoch = epoch + 1, released = FALSE
                 WHERE shard = ANY($1) RETURNING shard, epoch",
            )
            .bind(&free)
            .bind(&self.replica)
            .fetch_all(&mut *tx)
            .await?;
            took.taken
                .extend(rows.into_iter().map(|(s, e)| (s, e, takeover.contains(&s))));
        }
        tx.commit().await?;
        Ok(took)
    }

    /// Give up `shards` (one statement): another replica may take them at once.
    async fn release(&self, shards: &[i32]) -> Result<()> {
        if shards.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE shard_leases SET released = TRUE
             WHERE owner = $1 AND shard = ANY($2) AND NOT released",
        )
        .bind(&self.replica)
        .bind(shards)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The order in which this replica prefers shards: its own, so that replicas starting
    /// together do not all race for the same rows.
    fn preference(&self, shard: i32) -> String {
        crate::model::event_id(&self.replica, &shard.to_string(), DateTime::UNIX_EPOCH, 0)
    }

    /// Heartbeat (which renews every lease held), give up shards above a fair share of the
    /// targets and those with no configured target, and take free shards up to it. The fair
    /// share counts targets, not shards: `ceil(targets / live replicas)`. A replica keeps
    /// shards while it stays at or above it and takes while below, so shares settle within
    /// one shard's targets of it and never oscillate.
    async fn replica_round(&self, targets: &[String]) -> Result<LeaseRound> {
        let (live, sharers, first) = self.heartbeat().await?;
        let live = live.max(1);
        let round = |owned, takeovers| LeaseRound {
            owned,
            takeovers,
            live_replicas: live,
            api_sharers: sharers.max(live),
            reports_backlog: first.as_deref() == Some(self.replica.as_str()),
            replica_id_shared: self.shared.load(Ordering::Relaxed),
        };
        if self.legacy_holder().await?.is_some() {
            return Ok(round(Vec::new(), 0));
        }
        let groups = by_shard(targets);
        let weight = |s: i32| groups.get(&s).map_or(0, Vec::len) as i64;
        let fair = (targets.len() as i64 + live - 1) / live;
        let rows = self.shards().await?;

        let mut held = self.held(&rows);
        held.sort_by_key(|(s, _)| self.preference(*s));
        let mut weight_held: i64 = held.iter().map(|(s, _)| weight(*s)).sum();
        let mut give_up = Vec::new();
        // The least preferred first: what a replica keeps is stable from round to round.
        for i in (0..held.len()).rev() {
            let w = weight(held[i].0);
            if w == 0 || (weight_held > fair && weight_held - w >= fair) {
                give_up.push(held.remove(i).0);
                weight_held -= w;
            }
        }
        self.release(&give_up).await?;

        let mut takeovers = 0;
        if weight_held < fair {
            let mut free: Vec<i32> = groups
                .keys()
                .copied()
                .filter(|s| rows.get(s).is_none_or(|r| r.released || !r.live))
                .filter(|s| !held.iter().any(|(h, _)| h == s))
                .collect();
            free.sort_by_key(|s| self.preference(*s));
            let mut want = Vec::new();
            for s in free {
                if weight_held >= fair {
                    break;
                }
                weight_held += weight(s);
                want.push(s);
            }
            if !want.is_empty() {
                for (s, epoch, takeover) in self.take(&want).await?.taken {
                    if takeover {
                        takeovers += weight(s) as u64;
                    }
                    held.push((s, epoch));
                }
            }
        }
        Ok(round(Self::targets_of(&groups, &held), takeovers))
    }

    /// The targets of `held` shards, each with its shard's epoch, sorted.
    fn targets_of(groups: &BTreeMap<i32, Vec<String>>, held: &[(i32, i64)]) -> Vec<(String, i64)> {
        let mut owned: Vec<(String, i64)> = held
            .iter()
            .flat_map(|(s, epoch)| {
                groups
                    .get(s)
                    .into_iter()
                    .flatten()
                    .map(move |t| (t.clone(), *epoch))
            })
            .collect();
        owned.sort();
        owned
    }

    /// A one-shot run's round: its heartbeat renews what it holds; with the live replicas
    /// plus this run as `api_sharers`.
    async fn renew(&self, targets: &[String]) -> Result<LeaseRound> {
        // A heartbeat of its own, so that the replicas make room for it in the API budget
        // (not in the fair shares: they leave out one-shot ids).
        let (live, sharers, _) = self.heartbeat().await?;
        let held: Vec<(i32, i64)> = sqlx::query_as(
            "SELECT shard, epoch FROM shard_leases WHERE owner = $1 AND NOT released",
        )
        .bind(&self.replica)
        .fetch_all(&self.pool)
        .await?;
        Ok(LeaseRound {
            owned: Self::targets_of(&by_shard(targets), &held),
            live_replicas: live,
            api_sharers: sharers.max(1),
            ..LeaseRound::default()
        })
    }
}

#[async_trait]
impl Coordinator for PgLeases {
    fn owner(&self) -> &str {
        &self.replica
    }

    fn lease_ttl(&self) -> Option<Duration> {
        Some(self.ttl)
    }

    /// Nothing until a round takes it.
    fn owned_from_start(&self, _targets: &[String]) -> Vec<(String, i64)> {
        Vec::new()
    }

    async fn round(&self, targets: &[String]) -> Result<LeaseRound> {
        match self.role {
            Role::Replica => self.replica_round(targets).await,
            Role::OneShot => self.renew(targets).await,
        }
    }

    /// Without joining the fair shares (a one-shot id), but with a heartbeat: that is what
    /// keeps the leases it takes valid.
    async fn take_free(&self, targets: &[String]) -> Result<Taken> {
        let groups = by_shard(targets);
        self.heartbeat().await?;
        let took = match self.legacy_holder().await? {
            Some(holder) => Took {
                taken: Vec::new(),
                held_by: groups.keys().map(|&s| (s, holder.clone())).collect(),
            },
            None => {
                let shards: Vec<i32> = groups.keys().copied().collect();
                self.take(&shards).await?
            }
        };
        let epochs: HashMap<i32, i64> = took.taken.iter().map(|(s, e, _)| (*s, *e)).collect();
        Ok(targets
            .iter()
            .map(|t| {
                let s = shard_of(t);
                let got = match epochs.get(&s) {
                    Some(&epoch) => Take::Taken(epoch),
                    None => Take::HeldBy(took.held_by.get(&s).cloned().unwrap_or_default()),
                };
                (t.clone(), got)
            })
            .collect())
    }

    async fn release_all(&self) -> Result<()> {
        sqlx::query("UPDATE shard_leases SET released = TRUE WHERE owner = $1 AND NOT released")
            .bind(&self.replica)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM replicas WHERE id = $1")
            .bind(&self.replica)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

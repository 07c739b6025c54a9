//! Which targets this process polls ([`Ownership`]), and the one loop that keeps its
//! leases ([`keep_leases`]), run by the daemon ([`run`]) and by `once` alike. Who may own
//! what is the store's [`Coordinator`]: with one node it owns every target from the start
//! and there is no lease to keep.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::health::Health;
use crate::metrics::Metrics;
use crate::store::{self, Coordinator, Fence, LeaseRound};
use crate::store_watch::StoreWatch;

/// How often a replica id shared with another live process is logged again while it lasts.
const SHARED_LOG_EVERY: Duration = Duration::from_secs(300);

/// The targets this process may poll, each with the lease epoch to commit under.
pub struct Ownership {
    pub replica: String,
    owned: RwLock<HashMap<String, i64>>,
    changed: Notify,
}

impl Ownership {
    /// Owning nothing yet.
    pub fn new(replica: String) -> Self {
        Ownership {
            replica,
            owned: RwLock::default(),
            changed: Notify::new(),
        }
    }

    /// What `coordinator` grants before any lease round: every target on a single node.
    pub fn from_start(coordinator: &dyn Coordinator, targets: &[String]) -> Self {
        let own = Ownership::new(coordinator.owner().to_string());
        own.set(coordinator.owned_from_start(targets).into_iter().collect());
        own
    }

    /// The fence for polling `target`, if this process holds its lease.
    pub fn fence(&self, target: &str) -> Option<Fence> {
        self.owned
            .read()
            .expect("not poisoned")
            .get(target)
            .map(|&epoch| Fence {
                owner: self.replica.clone(),
                epoch,
            })
    }

    pub fn count(&self) -> usize {
        self.owned.read().expect("not poisoned").len()
    }

    pub fn set(&self, owned: HashMap<String, i64>) {
        let mut cur = self.owned.write().expect("not poisoned");
        if *cur != owned {
            *cur = owned;
            self.changed.notify_waiters();
        }
    }

    /// A reload changed the targets to `targets`: a node that owns every target from the
    /// start owns the new set at once; where replicas share leases, the lease loop's next
    /// round takes or lets go of them (see [`run`]).
    pub fn retarget(&self, coordinator: &dyn Coordinator, targets: &[String]) {
        if coordinator.lease_ttl().is_none() {
            self.set(coordinator.owned_from_start(targets).into_iter().collect());
        }
    }

    /// Resolves when ownership changes.
    pub async fn changed(&self) {
        self.changed.notified().await
    }
}

/// The lease loop: a [`Coordinator::round`] every `ttl / 3` (the first at once), each
/// outcome handed to `on_round`, until `token` is cancelled; then every lease is given
/// back, and the outcome of that returned. Without leases to keep (a single node) it only
/// waits for `token`.
pub async fn keep_leases(
    coordinator: &dyn Coordinator,
    targets: &[String],
    token: &CancellationToken,
    on_round: impl FnMut(store::Result<LeaseRound>),
) -> store::Result<()> {
    let (_keep, rx) = watch::channel(targets.to_vec());
    keep_leases_of(coordinator, &rx, token, on_round).await
}

/// [`keep_leases`] for a set of targets that may change (a reload): each round shares
/// out the set current then.
pub async fn keep_leases_of(
    coordinator: &dyn Coordinator,
    targets: &watch::Receiver<Vec<String>>,
    token: &CancellationToken,
    mut on_round: impl FnMut(store::Result<LeaseRound>),
) -> store::Result<()> {
    let Some(ttl) = coordinator.lease_ttl() else {
        token.cancelled().await;
        return Ok(());
    };
    let mut tick = tokio::time::interval(ttl / 3);
    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            _ = tick.tick() => {}
        }
        let current = targets.borrow().clone();
        on_round(coordinator.round(&current).await);
    }
    coordinator.release_all().await
}

/// The daemon's lease loop: keeps `own`, the `targets_owned` gauge, readiness and which
/// replica reports the database-wide backlog up to date with each round until cancelled,
/// then releases every lease; `on_live` hears the number of processes sharing the API
/// budget after each round (the live replicas and the `once` runs beside them). `targets` is the configured set, which a
/// reload may change. Returns at once on a single node, which owns every target for good.
pub async fn run(
    coordinator: Arc<dyn Coordinator>,
    own: Arc<Ownership>,
    targets: watch::Receiver<Vec<String>>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    mut on_live: impl FnMut(i64) + Send,
    token: CancellationToken,
) {
    let Some(ttl) = coordinator.lease_ttl() else {
        return;
    };
    let beat = health.heartbeat("leases", ttl * 2 + Duration::from_secs(30));
    info!(replica = %own.replica, lease_ttl_s = ttl.as_secs_f64(), "sharing targets with other replicas");
    let watch = StoreWatch::new(metrics.clone(), health.clone());
    let mut last_ok = Instant::now();
    let mut last_round = Instant::now();
    let mut last_shared_log: Option<Instant> = None;
    let released = keep_leases_of(&*coordinator, &targets, &token, |round| {
        beat.beat();
        let started = std::mem::replace(&mut last_round, Instant::now());
        match round {
            Ok(round) => {
                watch.reached(started);
                last_ok = Instant::now();
                if round.takeovers > 0 {
                    info!(
                        takeovers = round.takeovers,
                        "took over targets of a replica whose lease expired"
                    );
                    metrics.lease_takeovers.inc_by(round.takeovers);
                }
                if round.replica_id_shared {
                    metrics.replica_id_conflicts.inc();
                    // Every round while it lasts would be a flood: once every 5 minutes.
                    if last_shared_log.is_none_or(|t: Instant| t.elapsed() >= SHARED_LOG_EVERY) {
                        last_shared_log = Some(Instant::now());
                        error!(
                            replica = %own.replica,
                            "another live process uses this store.replica_id: both poll the same targets and may send each event twice; give each replica its own store.replica_id (or leave it unset: <host>-<pid>-<salt>)"
                        );
                    }
                }
                metrics.targets_owned.set(round.owned.len() as i64);
                metrics.set_reports_backlog(round.reports_backlog);
                on_live(round.api_sharers);
                health.set_owned(
                    &own.replica,
                    round.owned.iter().map(|(t, _)| t.clone()),
                    round.live_replicas,
                );
                own.set(round.owned.into_iter().collect());
            }
            Err(e) => {
                watch.failed("leases", started, &e);
                if e.is_unavailable() {
                    // Logged once by the watch when the store went away.
                    debug!(error = %e, "cannot renew leases; will retry");
                } else {
                    warn!(error = %e, "cannot renew leases; will retry");
                }
                if last_ok.elapsed() >= ttl {
                    // Our leases have expired by now: stop polling until renewed.
                    own.set(HashMap::new());
                    metrics.targets_owned.set(0);
                    // Others see this replica as dead by now: one of them reports.
                    metrics.set_reports_backlog(false);
                }
            }
        }
    })
    .await;
    own.set(HashMap::new());
    if let Err(e) = released {
        warn!(error = %e, "cannot release leases; they expire on their own");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SingleNode, Take};

    /// One node owns every target before any round, at the one epoch, and has no lease to
    /// keep: the lease loop only waits to be cancelled.
    #[tokio::test]
    async fn a_single_node_owns_every_target_from_the_start_and_keeps_no_lease() {
        let node = SingleNode::new("solo".into());
        let targets = vec!["a".to_string(), "b".to_string()];
        let own = Ownership::from_start(&node, &targets);
        assert_eq!(own.count(), 2);
        assert_eq!(
            own.fence("b"),
            Some(Fence {
                owner: "solo".into(),
                epoch: SingleNode::EPOCH
            })
        );
        assert_eq!(own.fence("c"), None);
        let taken = node.take_free(&targets).await.unwrap();
        assert!(
            taken
                .iter()
                .all(|(_, got)| *got == Take::Taken(SingleNode::EPOCH))
        );

        let token = CancellationToken::new();
        token.cancel();
        let mut rounds = 0;
        keep_leases(&node, &targets, &token, |_| rounds += 1)
            .await
            .unwrap();
        assert_eq!(rounds, 0);
    }
}

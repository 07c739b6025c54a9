//! Sharing the work between replicas on PostgreSQL: which targets this replica owns,
//! and the loop that keeps its leases. With SQLite there is no [`Ownership`]: one daemon
//! owns every target.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::health::{Health, Heartbeat};
use crate::metrics::Metrics;
use crate::store::Fence;
use crate::store::postgres::Leases;

/// The targets this replica may poll, each with the lease epoch to commit under.
pub struct Ownership {
    pub replica: String,
    owned: RwLock<HashMap<String, i64>>,
    changed: Notify,
}

impl Ownership {
    pub fn new(replica: String) -> Self {
        Ownership {
            replica,
            owned: RwLock::default(),
            changed: Notify::new(),
        }
    }

    /// The fence for polling `target`, if this replica holds its lease.
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

    fn set(&self, owned: HashMap<String, i64>) {
        let mut cur = self.owned.write().expect("not poisoned");
        if *cur != owned {
            *cur = owned;
            self.changed.notify_waiters();
        }
    }

    /// Resolves when ownership changes.
    pub async fn changed(&self) {
        self.changed.notified().await
    }
}

/// Keep this replica's leases every `ttl / 3` until cancelled, then release them.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    leases: Leases,
    ttl: Duration,
    own: Arc<Ownership>,
    targets: Vec<String>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    token: CancellationToken,
    beat: Heartbeat,
) {
    let mut last_ok = Instant::now();
    let mut tick = tokio::time::interval(ttl / 3);
    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            _ = tick.tick() => {}
        }
        beat.beat();
        match leases.round(&targets).await {
            Ok(round) => {
                last_ok = Instant::now();
                if round.takeovers > 0 {
                    info!(
                        takeovers = round.takeovers,
                        "took over targets of a replica whose lease expired"
                    );
                    metrics.lease_takeovers.inc_by(round.takeovers);
                }
                metrics.targets_owned.set(round.owned.len() as i64);
                health.set_owned(
                    &own.replica,
                    round.owned.iter().map(|(t, _)| t.clone()),
                    round.live_replicas,
                );
                own.set(round.owned.into_iter().collect());
            }
            Err(e) => {
                warn!(error = %e, "cannot renew leases; will retry");
                if last_ok.elapsed() >= ttl {
                    // Our leases have expired by now: stop polling until renewed.
                    own.set(HashMap::new());
                    metrics.targets_owned.set(0);
                }
            }
        }
    }
    own.set(HashMap::new());
    if let Err(e) = leases.release_all().await {
        warn!(error = %e, "cannot release leases; they expire on their own");
    }
}

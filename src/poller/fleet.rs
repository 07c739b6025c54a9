//! The daemon's poll scheduling: `poll.concurrency` workers take the targets that are due
//! from one timer queue and run one turn of each ([`Poller::turn`]: a poll, and when the
//! next is due), instead of a task per target sleeping on a timer of its own and then
//! queueing for a poll slot. A target is in one place at a time (the queue, a worker, or
//! parked while another replica holds its lease), so its polls never overlap, and a turn
//! is never cut: a removed target leaves the queue at once, or when its turn ends.
//!
//! Liveness stays per target: a worker beats a target's heartbeat as its turn starts, and
//! [`Fleet::keep`] beats every target waiting in the queue or parked; a turn that hangs is
//! therefore the one thing that leaves a target silent. A turn that panics stops that
//! target (its heartbeat says so), as the panic of its own task did.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Next, Poller, TargetLoop};
use crate::config::TargetConfig;
use crate::health::{self, Heartbeat};
use crate::model::TargetState;

/// How often a parked target looks at its lease even if no change was announced.
const PARKED_LOOK: Duration = Duration::from_secs(1);

/// The targets polled by a few workers, and the queue they take them from.
pub struct Fleet {
    poller: Arc<Poller>,
    queue: Mutex<Queue>,
    /// A target became due sooner than the one the workers wait for.
    sooner: Notify,
    /// Stops the workers and [`Fleet::keep`] (shutdown); each target has a token of its
    /// own, which this one's cancellation cancels too.
    stop: CancellationToken,
}

#[derive(Default)]
struct Queue {
    due: BinaryHeap<Due>,
    /// Targets whose lease another replica holds (boxed as in `due`: they move between
    /// the two).
    #[allow(clippy::vec_box)]
    parked: Vec<Box<Entry>>,
    /// Ties on the due instant go first come, first served.
    seq: u64,
    /// Shut down: nothing is queued any more.
    closed: bool,
}

/// A target waiting for its turn at `at`.
struct Due {
    at: Instant,
    seq: u64,
    entry: Box<Entry>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    /// The soonest is the greatest (the top of the heap).
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// One target of the fleet.
struct Entry {
    lp: TargetLoop,
    token: CancellationToken,
    beat: Heartbeat,
    started: bool,
    /// Dropped with the entry: [`Gone`] resolves.
    _gone: oneshot::Sender<()>,
}

/// A target to add to the fleet ([`Fleet::add`]), made by [`Fleet::target`].
pub struct Joining {
    t: TargetConfig,
    state: Option<TargetState>,
    token: CancellationToken,
    beat: Heartbeat,
    gone: oneshot::Sender<()>,
}

/// Resolves once a target has left the fleet for good (its token was cancelled, or it
/// panicked): no turn of it is under way or to come.
pub struct Gone(oneshot::Receiver<()>);

impl Future for Gone {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

impl Fleet {
    pub fn new(poller: Arc<Poller>, stop: CancellationToken) -> Arc<Fleet> {
        Arc::new(Fleet {
            poller,
            queue: Mutex::default(),
            sooner: Notify::new(),
            stop,
        })
    }

    /// A target to poll until `token` is cancelled, from `state` if the caller loaded it,
    /// watched by `beat`; it starts with [`Fleet::add`].
    pub fn target(
        t: TargetConfig,
        state: Option<TargetState>,
        token: CancellationToken,
        beat: Heartbeat,
    ) -> (Joining, Gone) {
        let (gone, rx) = oneshot::channel();
        let j = Joining {
            t,
            state,
            token,
            beat,
            gone,
        };
        (j, Gone(rx))
    }

    /// Start polling a target: its first turn is due now.
    pub fn add(&self, j: Joining) {
        let entry = Box::new(Entry {
            lp: self.poller.target_loop(j.t, j.state),
            token: j.token,
            beat: j.beat,
            started: false,
            _gone: j.gone,
        });
        self.queue_at(entry, Instant::now());
    }

    /// Drop the queued and parked targets whose token was cancelled (their [`Gone`]
    /// resolves); one under way leaves when its turn ends.
    pub fn drop_cancelled(&self) {
        let mut q = self.queue.lock().expect("not poisoned");
        q.due.retain(|d| !d.entry.token.is_cancelled());
        q.parked.retain(|e| !e.token.is_cancelled());
    }

    /// Targets queued or parked (not in a turn).
    pub fn waiting(&self) -> usize {
        let q = self.queue.lock().expect("not poisoned");
        q.due.len() + q.parked.len()
    }

    fn queue_at(&self, entry: Box<Entry>, at: Instant) {
        let mut q = self.queue.lock().expect("not poisoned");
        if q.closed || entry.token.is_cancelled() {
            return;
        }
        let sooner = q.due.peek().is_none_or(|d| at < d.at);
        q.seq += 1;
        let seq = q.seq;
        q.due.push(Due { at, seq, entry });
        drop(q);
        if sooner {
            self.sooner.notify_one();
        }
    }

    fn park(&self, entry: Box<Entry>) {
        let mut q = self.queue.lock().expect("not poisoned");
        if !q.closed && !entry.token.is_cancelled() {
            q.parked.push(entry);
        }
    }

    /// The next target that is due, once it is; None when the fleet stops.
    async fn next_due(&self) -> Option<Box<Entry>> {
        loop {
            let wake = {
                let mut q = self.queue.lock().expect("not poisoned");
                if q.closed {
                    return None;
                }
                let now = Instant::now();
                match q.due.peek() {
                    Some(d) if d.at <= now => {
                        let entry = q.due.pop().map(|d| d.entry);
                        // Another is due too: a worker asleep takes it (a no-op if none is).
                        let more = q.due.peek().is_some_and(|d| d.at <= now);
                        drop(q);
                        if more {
                            self.sooner.notify_one();
                        }
                        return entry;
                    }
                    Some(d) => Some(d.at),
                    None => None,
                }
            };
            let until = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.stop.cancelled() => return None,
                _ = self.sooner.notified() => {}
                _ = until => {}
            }
        }
    }

    /// One worker: take the next target due, then a poll slot, run its turn, queue it
    /// again for its next; until the fleet stops. The daemon runs `poll.concurrency` of
    /// them (more after a reload raised it); the slots bound the turns under way, so
    /// after a reload lowered it, some workers wait for a slot.
    pub async fn work(self: Arc<Self>) {
        loop {
            let Some(mut entry) = self.next_due().await else {
                return;
            };
            // Cancelled while waiting for a slot: dropping it resolves its `Gone`.
            let Some(slot) = self.poller.slot(&entry.token).await else {
                continue;
            };
            let next = self.run_turn(&mut entry, &slot).await;
            self.poller.give_back(slot);
            match next {
                Next::Wait(wait) => self.queue_at(entry, Instant::now() + wait),
                Next::NotOwned => self.park(entry),
                // Its token was cancelled: dropping it resolves its `Gone`.
                Next::Stop => {}
            }
        }
    }

    /// A target's turn, a panic in it caught: the target stops, its heartbeat says why.
    async fn run_turn(&self, e: &mut Entry, slot: &tokio::sync::SemaphorePermit<'_>) -> Next {
        if e.token.is_cancelled() {
            return Next::Stop;
        }
        let first = !std::mem::replace(&mut e.started, true);
        let turn = async {
            if first {
                health::panic_if_asked(e.beat.name());
            }
            (self.poller)
                .turn(&mut e.lp, &e.token, &e.beat, Some(slot))
                .await
        };
        match AssertUnwindSafe(turn).catch_unwind().await {
            Ok(next) => next,
            Err(panic) => {
                health::panicked(&e.beat, panic.as_ref());
                Next::Stop
            }
        }
    }

    /// The fleet's upkeep until it stops: parked targets whose lease changed are queued
    /// (at once when [`crate::replicas::Ownership`] announces a change, else within
    /// [`PARKED_LOOK`]); every waiting target beats at least every
    /// [`health::IDLE_BEAT`], and `beat` (the fleet's own) every [`PARKED_LOOK`]. On
    /// stop the queue is emptied (every [`Gone`] resolves).
    pub async fn keep(self: Arc<Self>, beat: Heartbeat) {
        let mut beaten = Instant::now();
        loop {
            let changed = async {
                match &self.poller.ownership {
                    Some(own) => own.changed().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = changed => {}
                _ = tokio::time::sleep(PARKED_LOOK) => {}
            }
            beat.beat();
            let now = Instant::now();
            let sweep = now.duration_since(beaten) >= health::IDLE_BEAT / 2;
            let mut q = self.queue.lock().expect("not poisoned");
            let mut woken = false;
            for entry in std::mem::take(&mut q.parked) {
                if entry.token.is_cancelled() {
                    continue;
                }
                if self.poller.lease_changed(&entry.lp) {
                    q.seq += 1;
                    let seq = q.seq;
                    q.due.push(Due {
                        at: now,
                        seq,
                        entry,
                    });
                    woken = true;
                } else {
                    if sweep {
                        entry.beat.beat();
                    }
                    q.parked.push(entry);
                }
            }
            if sweep {
                for d in q.due.iter() {
                    d.entry.beat.beat();
                }
                beaten = now;
            }
            drop(q);
            if woken {
                self.sooner.notify_one();
            }
        }
        let mut q = self.queue.lock().expect("not poisoned");
        q.closed = true;
        let (due, parked) = (std::mem::take(&mut q.due), std::mem::take(&mut q.parked));
        drop(q);
        drop((due, parked));
    }
}

//! The worker of one sink: claim -> attempt -> record, with its claims kept alive.
//!
//! A claim lasts `timeout + 30 s` unless renewed. The worker renews every claim it holds
//! (claimed ahead, in flight, or waiting for its outcome to be written) every third of
//! that, so none lapses under a live attempt, whatever `timeout` and `concurrency` are;
//! and it starts an attempt only on a claim with at least `timeout` plus a margin left
//! by the worker's own monotonic clock (measured from before the claim or renewal was
//! asked), so an attempt on a claim whose renewals failed (the database out of reach)
//! waits instead of running past it. Should a claim lapse anyway and be taken again,
//! the outcome write carries the claim's token and is discarded (`store`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Finished, Outbox, Sink};
use crate::health::Heartbeat;
use crate::store::Claimed;

/// What an attempt started on a claim must still have left beyond its `timeout`: the
/// outcome write, and clock rates that differ a little.
const MARGIN: Duration = Duration::from_secs(5);

/// The longest a finished attempt's outcome waits for others still in flight before it
/// is written: a write that once took long (a store outage, retried) must not hold back
/// the next ones.
const MAX_WRITE_WAIT: Duration = Duration::from_millis(50);

/// How many slot-fulls a worker keeps claimed ahead, at most. A claim's cost is mostly
/// its index scan, not its rows (on PostgreSQL a scan passes the index entries of the
/// deliveries done since the last vacuum): claims of up to five slot-fulls make a
/// burst's scans a few times rarer than claims of one or two. Held claims are renewed,
/// so claimed ahead is never lapsed.
const SLOTS_AHEAD: usize = 4;

/// What a renewal reports: the claims lost, and when it was asked.
type Renewed = Option<(Vec<i64>, Instant)>;

/// A claim waiting for a slot, valid (at least) until `until` by this worker's clock.
struct Held {
    claimed: Claimed,
    until: Instant,
}

impl Outbox {
    /// Claim up to `room` due deliveries; with the wait before the next claim (none when
    /// there may be more due now).
    async fn claim(&self, sink: &Sink, room: usize) -> (Vec<Held>, Duration) {
        let now = Utc::now();
        let asked = Instant::now();
        let idle = Duration::from_secs(1);
        let lease = Self::lease(sink);
        let held = |batch: Vec<Claimed>| -> Vec<Held> {
            batch
                .into_iter()
                .map(|claimed| Held {
                    claimed,
                    until: asked + lease,
                })
                .collect()
        };
        match self
            .store
            .claim_due(sink.name(), now, room, sink.cfg.ordered, lease)
            .await
        {
            Ok(batch) if batch.len() == room => (held(batch), Duration::ZERO),
            Ok(batch) => {
                let wait = match self.store.next_due(sink.name(), now).await {
                    Ok(Some(due)) if due > now => (due - now).to_std().unwrap_or(idle).min(idle),
                    _ => idle,
                };
                (held(batch), wait)
            }
            Err(e) if e.is_unavailable() => {
                // Logged once for every loop by the store watch.
                debug!(sink = sink.name(), error = %e, "cannot claim deliveries; will retry");
                (Vec::new(), idle)
            }
            Err(e) => {
                warn!(sink = sink.name(), error = %e, "cannot claim deliveries; will retry");
                (Vec::new(), idle)
            }
        }
    }

    /// Renew `claims` (id, token); the ids that were lost (taken again, or released),
    /// and when the renewal was asked (the new leases run from no earlier than that).
    async fn renew(&self, sink: &Sink, claims: Vec<(i64, i64)>) -> Renewed {
        let asked = Instant::now();
        match self.store.renew_claims(&claims, Self::lease(sink)).await {
            Ok(kept) => {
                let lost = claims
                    .iter()
                    .map(|(id, _)| *id)
                    .filter(|id| !kept.contains(id))
                    .collect();
                Some((lost, asked))
            }
            Err(e) => {
                debug!(sink = sink.name(), error = %e, "cannot renew claims; will try again");
                None
            }
        }
    }

    /// The worker of one sink, until `token` is cancelled; then in-flight attempts get
    /// `grace` to finish and the rest stay pending. A `baseten_deploy` sink's worker also
    /// carries its pipelines on after their deploys ([`Outbox::run_follow`]).
    pub async fn run_sink(
        &self,
        sink: Arc<Sink>,
        token: CancellationToken,
        grace: Duration,
        beat: Heartbeat,
    ) {
        if sink.deploy.is_some() {
            tokio::join!(
                self.run_outbox(sink.clone(), token.clone(), grace, beat.clone()),
                self.run_follow(sink, token, beat),
            );
        } else {
            self.run_outbox(sink, token, grace, beat).await;
        }
    }

    /// The outbox side of [`Outbox::run_sink`].
    ///
    /// Four things overlap: attempts; one claim at a time, which keeps up to
    /// [`SLOTS_AHEAD`] more slot-fulls of deliveries claimed ahead (a slot that frees
    /// starts its next attempt at once); one renewal at a time of every claim held; and one write at a time of the
    /// outcomes of finished attempts (every attempt that finishes while a write is under
    /// way goes into the next: group commit). A slot is busy from the start of an attempt
    /// until its outcome is written, so at most `concurrency` attempts are ever
    /// unrecorded: what a crash can repeat (under the same id).
    ///
    /// A write waits for the attempts still in flight, for at most as long as the last
    /// write took: each write costs a durable commit (on PostgreSQL a WAL flush, ~3 ms
    /// on a loaded disk), and attempts that finish faster than that would otherwise
    /// split the slots into two halves taking turns, each write carrying half of them.
    async fn run_outbox(
        &self,
        sink: Arc<Sink>,
        token: CancellationToken,
        grace: Duration,
        beat: Heartbeat,
    ) {
        let limit = sink.cfg.concurrency.get();
        let ahead = SLOTS_AHEAD * limit;
        let timeout = sink.cfg.timeout;
        let renew_every = (Self::lease(&sink) / 3).max(Duration::from_secs(1));
        let mut ready: VecDeque<Held> = VecDeque::new();
        // Every claim this worker holds, by delivery id: its token.
        let mut held: HashMap<i64, i64> = HashMap::new();
        let mut inflight = FuturesUnordered::new();
        let mut finished: Vec<Finished> = Vec::new();
        let mut writing: Option<BoxFuture<'_, Vec<i64>>> = None;
        let mut writing_len = 0;
        // When the oldest finished attempt not yet being written finished; how long the
        // last write took, and when the one under way started.
        let mut first_done: Option<Instant> = None;
        let mut last_write = Duration::ZERO;
        let mut write_started = Instant::now();
        let mut claiming: Option<BoxFuture<'_, (Vec<Held>, Duration)>> = None;
        let mut renewing: Option<BoxFuture<'_, Renewed>> = None;
        let mut next_claim = Instant::now();
        let mut next_renew = Instant::now() + renew_every;
        // New deliveries were announced while a claim was under way (it may have missed
        // them): claim again at once when it returns.
        let mut poked = false;
        let mut waiter = self.wake.subscribe();
        loop {
            beat.beat();
            while inflight.len() + finished.len() + writing_len < limit
                && let Some(h) = ready.front()
            {
                if h.until.saturating_duration_since(Instant::now()) < timeout + MARGIN {
                    // Too little left of this claim for a whole attempt (renewals have
                    // been failing): renew first.
                    next_renew = Instant::now();
                    break;
                }
                let h = ready.pop_front().expect("front exists");
                inflight.push(self.attempt(&sink, h.claimed));
            }
            let write_due =
                first_done.map_or(Instant::now(), |t| t + last_write.min(MAX_WRITE_WAIT));
            if writing.is_none()
                && !finished.is_empty()
                && (inflight.is_empty() || Instant::now() >= write_due)
            {
                first_done = None;
                write_started = Instant::now();
                writing_len = finished.len();
                let batch = std::mem::take(&mut finished);
                let ids: Vec<i64> = batch.iter().map(|f| f.claimed.delivery_id).collect();
                let (sink, stop) = (&sink, &token);
                writing = Some(Box::pin(async move {
                    self.record(sink, batch, stop).await;
                    ids
                }));
            }
            if renewing.is_none() && !held.is_empty() && Instant::now() >= next_renew {
                let claims: Vec<(i64, i64)> = held.iter().map(|(id, t)| (*id, *t)).collect();
                renewing = Some(Box::pin(self.renew(&sink, claims)));
            }
            // Claims in batches: once at most half a slot-full is left claimed ahead.
            let busy = inflight.len() + finished.len() + writing_len;
            let room = if ready.len() <= limit / 2 {
                (limit + ahead).saturating_sub(busy + ready.len())
            } else {
                0
            };
            if claiming.is_none() && room > 0 && Instant::now() >= next_claim {
                claiming = Some(Box::pin(self.claim(&sink, room)));
            }
            tokio::select! {
                Some(done) = inflight.next() => {
                    first_done.get_or_insert_with(Instant::now);
                    finished.push(done);
                    while let Some(Some(more)) = inflight.next().now_or_never() {
                        finished.push(more);
                    }
                }
                ids = async { writing.as_mut().expect("guarded").await }, if writing.is_some() => {
                    writing = None;
                    writing_len = 0;
                    last_write = write_started.elapsed();
                    for id in ids {
                        held.remove(&id);
                    }
                    // What was just written may be due soon (a retry after a short wait)
                    // or now (with `ordered`, the next event of a run whose head was
                    // delivered): look again instead of sleeping out the idle wait.
                    next_claim = Instant::now();
                    poked |= claiming.is_some();
                }
                (batch, wait) = async { claiming.as_mut().expect("guarded").await }, if claiming.is_some() => {
                    claiming = None;
                    for h in &batch {
                        held.insert(h.claimed.delivery_id, h.claimed.token);
                    }
                    ready.extend(batch);
                    next_claim = Instant::now() + if poked { Duration::ZERO } else { wait };
                    poked = false;
                }
                renewed = async { renewing.as_mut().expect("guarded").await }, if renewing.is_some() => {
                    renewing = None;
                    match renewed {
                        Some((lost, asked)) => {
                            next_renew = Instant::now() + renew_every;
                            let until = asked + Self::lease(&sink);
                            // Claims taken again: never start them (an attempt already
                            // under way is fenced at its writes). A claim that came after
                            // this renewal was asked was not in it, and stays.
                            let before = ready.len();
                            ready.retain(|h| !lost.contains(&h.claimed.delivery_id));
                            if ready.len() < before {
                                warn!(sink = sink.name(), lost = before - ready.len(),
                                    "claims lapsed and were taken again before their attempts started; not attempting them");
                            }
                            for h in ready.iter_mut() {
                                h.until = h.until.max(until);
                            }
                            held.retain(|id, _| !lost.contains(id));
                        }
                        None => next_renew = Instant::now() + Duration::from_secs(1),
                    }
                }
                () = waiter.wait() => {
                    next_claim = Instant::now();
                    poked = claiming.is_some();
                }
                _ = tokio::time::sleep_until(next_claim), if claiming.is_none() && room > 0 => {}
                _ = tokio::time::sleep_until(write_due), if writing.is_none() && !finished.is_empty() => {}
                _ = tokio::time::sleep_until(next_renew), if renewing.is_none() && !held.is_empty() => {}
                _ = token.cancelled() => break,
            }
        }
        // Claimed but not attempted: give them back, so that another replica (or the next
        // start) need not wait for the claims to expire.
        if let Some(c) = claiming.take() {
            ready.extend(c.await.0);
        }
        if !ready.is_empty() {
            let claims: Vec<(i64, i64)> = ready
                .iter()
                .map(|h| (h.claimed.delivery_id, h.claimed.token))
                .collect();
            if let Err(e) = self.store.release(&claims).await {
                warn!(sink = sink.name(), error = %e, "cannot give back claims; they expire on their own");
            }
        }
        if inflight.is_empty() && finished.is_empty() && writing.is_none() {
            return;
        }
        info!(
            sink = sink.name(),
            in_flight = inflight.len(),
            grace_s = grace.as_secs_f64(),
            "waiting for in-flight deliveries"
        );
        // The drain records with a token of its own: the grace period bounds it.
        let stop = CancellationToken::new();
        let drain = async {
            if let Some(w) = writing.take() {
                w.await;
            }
            while let Some(done) = inflight.next().await {
                finished.push(done);
                while let Some(Some(more)) = inflight.next().now_or_never() {
                    finished.push(more);
                }
                self.record(&sink, std::mem::take(&mut finished), &stop)
                    .await;
            }
            if !finished.is_empty() {
                self.record(&sink, finished, &stop).await;
            }
        };
        if tokio::time::timeout(grace, drain).await.is_err() {
            warn!(
                sink = sink.name(),
                "grace period over; unfinished deliveries stay pending"
            );
        }
    }
}

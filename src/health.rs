//! Liveness and readiness, shared by the loops that report and the server that answers.
//!
//! Liveness: every long-running loop owns a [`Heartbeat`] with the longest silence that is
//! still healthy; `/healthz` fails when any loop has been silent longer (a wedged poll or
//! delivery loop). Readiness: the store is open and reachable, and every target has been
//! polled once. And the last poll of each target this process polls ([`PollSeen`]), for
//! the status page: when it last succeeded, and whether it fails now and why.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[derive(Clone)]
pub struct Heartbeat {
    name: Arc<str>,
    last: Arc<AtomicI64>,
    max_silence: Duration,
}

impl Heartbeat {
    pub fn beat(&self) {
        self.last.store(now_ms(), Ordering::Relaxed);
    }

    fn silent_for(&self) -> Duration {
        Duration::from_millis((now_ms() - self.last.load(Ordering::Relaxed)).max(0) as u64)
    }
}

#[derive(Default)]
pub struct Health {
    beats: Mutex<Vec<Heartbeat>>,
    /// Targets this process must have polled once to be ready (all, or the owned ones).
    expected: Mutex<BTreeSet<String>>,
    polled: Mutex<BTreeSet<String>>,
    role: Mutex<String>,
    store: Mutex<StoreReach>,
    polls: Mutex<HashMap<String, PollSeen>>,
}

/// How the polls of one target went, as this process saw them (times in Unix ms).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PollSeen {
    pub last_success_ms: Option<i64>,
    /// Failed polls since the last success (0: not failing).
    pub failures: u32,
    /// The last failure: when, and why (one line, as the log has it).
    pub last_error: Option<(i64, String)>,
}

/// Whether the store answers, as the last operations found.
#[derive(Default)]
struct StoreReach {
    /// While it is out of reach: why, and since when.
    down: Option<(String, Instant)>,
    /// When the last outage ended.
    up_since: Option<Instant>,
}

impl Health {
    pub fn new(targets: impl IntoIterator<Item = String>) -> Self {
        Health {
            beats: Mutex::default(),
            expected: Mutex::new(targets.into_iter().collect()),
            polled: Mutex::default(),
            role: Mutex::new("single instance, owns every target".into()),
            store: Mutex::default(),
            polls: Mutex::default(),
        }
    }

    /// Register a loop that must beat at least every `max_silence`.
    pub fn heartbeat(&self, name: &str, max_silence: Duration) -> Heartbeat {
        let hb = Heartbeat {
            name: name.into(),
            last: Arc::new(AtomicI64::new(now_ms())),
            max_silence,
        };
        self.beats.lock().expect("not poisoned").push(hb.clone());
        hb
    }

    /// A loop that stopped for good (a reload removed its sink or target): no longer
    /// watched for silence.
    pub fn retire(&self, hb: &Heartbeat) {
        (self.beats.lock().expect("not poisoned")).retain(|b| !Arc::ptr_eq(&b.last, &hb.last));
    }

    /// Let `hb` be silent up to `max_silence` from now on (a reload lengthened the waits of
    /// the loops that beat it).
    pub fn allow_silence(&self, hb: &Heartbeat, max_silence: Duration) {
        for b in self.beats.lock().expect("not poisoned").iter_mut() {
            if Arc::ptr_eq(&b.last, &hb.last) {
                b.max_silence = max_silence;
            }
        }
    }

    /// A reload changed the targets: `removed` no longer count for readiness; `added`
    /// (those this process owns from the start) must be polled once.
    pub fn retarget(&self, removed: &[String], added: impl IntoIterator<Item = String>) {
        let mut expected = self.expected.lock().expect("not poisoned");
        let mut polled = self.polled.lock().expect("not poisoned");
        let mut polls = self.polls.lock().expect("not poisoned");
        for t in removed {
            expected.remove(t);
            polled.remove(t);
            polls.remove(t);
        }
        expected.extend(added);
    }

    /// A poll of `target` succeeded.
    pub fn target_polled(&self, target: &str) {
        self.polled
            .lock()
            .expect("not poisoned")
            .insert(target.to_string());
        let mut polls = self.polls.lock().expect("not poisoned");
        let seen = polls.entry(target.to_string()).or_default();
        seen.last_success_ms = Some(now_ms());
        seen.failures = 0;
    }

    /// A poll of `target` failed with `error` (one line; the store, the API or the
    /// listing). Kept until the target is removed; a success clears `failures` only.
    pub fn poll_failed(&self, target: &str, error: &str) {
        let mut polls = self.polls.lock().expect("not poisoned");
        let seen = polls.entry(target.to_string()).or_default();
        seen.failures = seen.failures.saturating_add(1);
        seen.last_error = Some((now_ms(), error.to_string()));
    }

    /// How the polls of `target` went here; None if this process never polled it.
    pub fn poll_seen(&self, target: &str) -> Option<PollSeen> {
        self.polls
            .lock()
            .expect("not poisoned")
            .get(target)
            .cloned()
    }

    /// [`Health::poll_seen`] of every target polled here.
    pub fn polls(&self) -> HashMap<String, PollSeen> {
        self.polls.lock().expect("not poisoned").clone()
    }

    /// With several replicas: readiness covers the targets this replica owns.
    pub fn set_owned(
        &self,
        replica: &str,
        owned: impl IntoIterator<Item = String>,
        live_replicas: i64,
    ) {
        let owned: BTreeSet<String> = owned.into_iter().collect();
        *self.role.lock().expect("not poisoned") = format!(
            "replica {replica} of {live_replicas}, owns {} target(s): {}",
            owned.len(),
            owned
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
        *self.expected.lock().expect("not poisoned") = owned;
    }

    /// An operation that started at `started` found the store out of reach: mark it so,
    /// with why (`/readyz` answers 503 with it), unless an outage ended after `started`
    /// (a failure from before the store came back does not start a new one). Returns
    /// true when it was reachable until now.
    pub fn store_unavailable(&self, why: String, started: Instant) -> bool {
        let mut reach = self.store.lock().expect("not poisoned");
        let up_since = reach.up_since;
        match &mut reach.down {
            Some((reason, _)) => {
                *reason = why;
                false
            }
            None if up_since.is_some_and(|up| up > started) => false,
            None => {
                reach.down = Some((why, Instant::now()));
                true
            }
        }
    }

    /// An operation that started at `started` reached the store: mark it reachable,
    /// unless it was marked down after `started` (an answer from before an outage does
    /// not end it). Returns how long it was down, when this ends an outage.
    pub fn store_available(&self, started: Instant) -> Option<Duration> {
        let mut reach = self.store.lock().expect("not poisoned");
        match reach.down {
            Some((_, since)) if since <= started => {
                reach.down = None;
                reach.up_since = Some(Instant::now());
                Some(since.elapsed())
            }
            _ => None,
        }
    }

    /// `Err` naming the loops that are wedged.
    pub fn live(&self) -> Result<(), Wedged> {
        let stale: Vec<String> = self
            .beats
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|b| b.silent_for() > b.max_silence)
            .map(|b| format!("{} silent for {:.0}s", b.name, b.silent_for().as_secs_f64()))
            .collect();
        if stale.is_empty() {
            Ok(())
        } else {
            Err(Wedged(stale))
        }
    }

    /// `Ok(what this replica does)` once every expected target has been polled
    /// successfully; `Err` naming those that have not.
    pub fn ready(&self) -> Result<String, NotReady> {
        if let Some((reason, since)) = &self.store.lock().expect("not poisoned").down {
            return Err(NotReady::StoreUnavailable {
                reason: reason.clone(),
                for_s: since.elapsed().as_secs(),
            });
        }
        let expected = self.expected.lock().expect("not poisoned");
        let polled = self.polled.lock().expect("not poisoned");
        let role = self.role.lock().expect("not poisoned").clone();
        let pending: Vec<&str> = expected
            .iter()
            .filter(|t| !polled.contains(*t))
            .map(String::as_str)
            .collect();
        if pending.is_empty() {
            Ok(format!("ready: {role}"))
        } else {
            Err(NotReady::TargetsNotPolled {
                count: pending.len(),
                first: pending.iter().take(10).map(|s| s.to_string()).collect(),
                role,
            })
        }
    }
}

/// Why `/healthz` fails: the loops silent past their limit, each with how long.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct Wedged(pub Vec<String>);

/// Why `/readyz` fails.
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    #[error("{count} target(s) not polled successfully yet: {} ({role})", first.join(", "))]
    TargetsNotPolled {
        count: usize,
        /// The first few of them, by name.
        first: Vec<String>,
        /// What this replica does (`single instance`, `replica x of n` ...).
        role: String,
    },
    /// The store is out of reach (the daemon waits for it and retries).
    #[error("store unavailable for {for_s}s: {reason}")]
    StoreUnavailable { reason: String, for_s: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_after_every_target_polled() {
        let h = Health::new(["a".to_string(), "b".to_string()]);
        assert!(h.ready().unwrap_err().to_string().contains("a, b"));
        h.target_polled("a");
        h.target_polled("b");
        assert!(h.ready().is_ok());
    }

    #[test]
    fn not_ready_while_the_store_is_unavailable_and_an_older_answer_does_not_end_it() {
        let h = Health::new([]);
        assert!(h.ready().is_ok());
        let before = Instant::now();
        assert!(h.store_unavailable("connection refused".into(), before));
        assert!(!h.store_unavailable("connection reset".into(), before));
        let why = h.ready().unwrap_err().to_string();
        assert!(why.starts_with("store unavailable"), "{why}");
        assert!(why.contains("connection reset"), "{why}");
        assert_eq!(h.store_available(before), None);
        assert!(h.ready().is_err());
        assert!(h.store_available(Instant::now()).is_some());
        assert!(h.ready().is_ok());
        assert_eq!(h.store_available(Instant::now()), None);
        // A failure of an operation that started before the store came back is old news.
        assert!(!h.store_unavailable("timed out".into(), before));
        assert!(h.ready().is_ok());
        assert!(h.store_unavailable("refused".into(), Instant::now()));
    }

    #[test]
    fn a_failing_target_keeps_its_last_error_and_a_success_ends_the_failures() {
        let h = Health::new(["a".to_string()]);
        assert_eq!(h.poll_seen("a"), None);
        h.poll_failed("a", "HTTP 503");
        h.poll_failed("a", "timed out");
        let seen = h.poll_seen("a").unwrap();
        assert_eq!((seen.failures, seen.last_success_ms), (2, None));
        assert_eq!(seen.last_error.unwrap().1, "timed out");
        h.target_polled("a");
        let seen = h.poll_seen("a").unwrap();
        assert_eq!(seen.failures, 0);
        assert!(seen.last_success_ms.is_some() && seen.last_error.is_some());
        h.retarget(&["a".to_string()], []);
        assert_eq!(h.poll_seen("a"), None);
    }

    #[test]
    fn a_silent_loop_is_not_live() {
        let h = Health::new([]);
        let hb = h.heartbeat("poller", Duration::from_millis(0));
        hb.last.store(now_ms() - 5_000, Ordering::Relaxed);
        assert!(h.live().unwrap_err().to_string().contains("poller"));
        let ok = Health::new([]);
        ok.heartbeat("sink", Duration::from_secs(60)).beat();
        assert!(ok.live().is_ok());
    }
}

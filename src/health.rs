//! Liveness and readiness, shared by the loops that report and the server that answers.
//!
//! Liveness: every long-running loop (each target's poll loop, each sink's worker, the
//! lease loop) owns a [`Heartbeat`] with the longest silence that is still healthy;
//! `/healthz` fails naming each loop silent longer (wedged) or stopped (it panicked or
//! returned: [`supervise`] marks it at once). Silence is measured on the monotonic clock
//! ([`Clock`]), never the wall clock: a step of the system time (NTP, an operator) neither
//! fails `/healthz` nor hides a wedged loop. Readiness: the store is open and reachable,
//! and every target has been polled once.
//!
//! And the last poll of each target this process polls ([`PollSeen`]), for the status
//! page: when it last succeeded, and whether it fails now and why.
//!
//! A panic anywhere is logged with its location by [`install_panic_hook`].

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use futures_util::FutureExt;

/// Wall-clock Unix milliseconds, for what the status page shows (never for liveness).
fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Where heartbeats read the time: a monotonic clock. The daemon's is [`Instant::now`];
/// tests inject one they move by hand.
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

/// The monotonic clock of the OS (`CLOCK_MONOTONIC` on Linux): steps of the wall clock
/// do not move it.
struct Monotonic;

impl Clock for Monotonic {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// How often a loop that waits beats ([`Heartbeat::while_waiting`]).
pub const IDLE_BEAT: Duration = Duration::from_secs(10);

/// One loop's heartbeat. Clones share it.
#[derive(Clone)]
pub struct Heartbeat {
    shared: Arc<Beat>,
    clock: Arc<dyn Clock>,
    /// What the clock read when the heartbeat was made: beats are kept as milliseconds
    /// since then.
    base: Instant,
}

struct Beat {
    name: String,
    last_ms: AtomicU64,
    max_silence: Mutex<Duration>,
    /// Why the loop stopped for good (it panicked, or returned unasked), if it did.
    stopped: Mutex<Option<String>>,
}

impl Heartbeat {
    pub fn beat(&self) {
        let ms = self
            .clock
            .now()
            .saturating_duration_since(self.base)
            .as_millis();
        self.shared
            .last_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The loop's name as `/healthz` shows it (`target qwen-sft`, `sink deployer` ...).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    fn silent_for(&self) -> Duration {
        let now = self.clock.now().saturating_duration_since(self.base);
        now.saturating_sub(Duration::from_millis(
            self.shared.last_ms.load(Ordering::Relaxed),
        ))
    }

    /// Wait for `fut`, beating meanwhile at least every [`IDLE_BEAT`]: a loop waiting
    /// its turn (the next poll, a poll slot, a `Retry-After`) is alive, not wedged.
    pub async fn while_waiting<F: Future>(&self, fut: F) -> F::Output {
        tokio::pin!(fut);
        loop {
            self.beat();
            tokio::select! {
                out = &mut fut => return out,
                _ = tokio::time::sleep(IDLE_BEAT) => {}
            }
        }
    }

    /// The loop stopped for good: `/healthz` fails at once, saying `why`.
    pub fn stopped(&self, why: String) {
        *self.shared.stopped.lock().expect("not poisoned") = Some(why);
    }

    fn same(&self, other: &Heartbeat) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Why it is not alive, if it is not.
    fn trouble(&self) -> Option<String> {
        if let Some(why) = self.shared.stopped.lock().expect("not poisoned").as_ref() {
            return Some(format!("{} stopped: {why}", self.shared.name));
        }
        let silent = self.silent_for();
        (silent > *self.shared.max_silence.lock().expect("not poisoned")).then(|| {
            format!(
                "{} silent for {:.0}s",
                self.shared.name,
                silent.as_secs_f64()
            )
        })
    }
}

/// Run `task`, a loop `beat` watches that should run until `token` is cancelled: a panic
/// inside it is caught and logged (with its message; the panic hook logged where) and
/// marks the heartbeat stopped, as does a return before `token` was cancelled, so
/// `/healthz` names the loop at once instead of after its longest silence. Nothing a task
/// ends with is dropped unseen.
pub async fn supervise(
    beat: Heartbeat,
    token: tokio_util::sync::CancellationToken,
    task: impl Future<Output = ()>,
) {
    let task = async {
        panic_if_asked(beat.name());
        task.await
    };
    match AssertUnwindSafe(task).catch_unwind().await {
        Ok(()) if token.is_cancelled() => {}
        Ok(()) => {
            tracing::error!(
                task = beat.name(),
                "a loop returned before it was stopped; /healthz fails until a restart"
            );
            beat.stopped("returned before it was stopped".into());
        }
        Err(panic) => panicked(&beat, panic.as_ref()),
    }
}

/// A loop watched by `beat` panicked with `payload`: logged (with its message; the panic
/// hook logged where), and its heartbeat marked stopped.
pub fn panicked(beat: &Heartbeat, payload: &(dyn std::any::Any + Send)) {
    let message = panic_message(payload);
    tracing::error!(task = beat.name(), panic = %message, "a loop panicked; /healthz fails until a restart");
    beat.stopped(format!("panicked: {message}"));
}

/// The end-to-end test of a loop that panics asks for one by the loop's name
/// ([`PANIC_IN_ENV`]; debug builds only).
pub fn panic_if_asked(name: &str) {
    #[cfg(debug_assertions)]
    if std::env::var(PANIC_IN_ENV).is_ok_and(|v| v == name) {
        panic!("{PANIC_IN_ENV} asked for a panic in {name}");
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}

/// The end of a task joined by its handle (`what` names it): a panic is logged (the hook
/// logged where), never dropped; an abort is what the caller asked for.
pub fn joined(r: Result<(), tokio::task::JoinError>, what: &str) {
    if let Err(e) = r
        && e.is_panic()
    {
        let message = panic_message(e.into_panic().as_ref());
        tracing::error!(task = what, panic = %message, "a task panicked");
    }
}

/// In a debug build, the loop of this name (`target t1`, `sink s`) panics as it starts:
/// how tests/loops.rs checks that `/healthz` names a loop that died.
pub const PANIC_IN_ENV: &str = "LOOPWATCH_TEST_PANIC_IN";

/// The text a panic was raised with, if it was text.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(not a string)".into()
    }
}

/// Log every panic at ERROR with where it happened (file:line:column), its message and
/// the thread, through `tracing` (so a JSON log gets it as one event). Installed once per
/// process; without a tracing subscriber (a test) the default hook prints as before.
pub fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !tracing::dispatcher::has_been_set() {
                return previous(info);
            }
            let location = info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                .unwrap_or_else(|| "unknown".into());
            let thread = std::thread::current();
            tracing::error!(
                %location,
                thread = thread.name().unwrap_or("unnamed"),
                panic = %panic_message(info.payload()),
                "panic"
            );
        }));
    });
}

pub struct Health {
    beats: Mutex<Vec<Heartbeat>>,
    clock: Arc<dyn Clock>,
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
        Self::with_clock(targets, Arc::new(Monotonic))
    }

    /// [`Health::new`] reading heartbeats on `clock` (tests move it by hand).
    pub fn with_clock(targets: impl IntoIterator<Item = String>, clock: Arc<dyn Clock>) -> Self {
        Health {
            beats: Mutex::default(),
            clock,
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
            shared: Arc::new(Beat {
                name: name.into(),
                last_ms: AtomicU64::new(0),
                max_silence: Mutex::new(max_silence),
                stopped: Mutex::default(),
            }),
            clock: self.clock.clone(),
            base: self.clock.now(),
        };
        self.beats.lock().expect("not poisoned").push(hb.clone());
        hb
    }

    /// A loop that stopped for good (a reload removed its sink or target): no longer
    /// watched for silence.
    pub fn retire(&self, hb: &Heartbeat) {
        (self.beats.lock().expect("not poisoned")).retain(|b| !b.same(hb));
    }

    /// Let `hb` be silent up to `max_silence` from now on (a reload lengthened the waits of
    /// the loops that beat it).
    pub fn allow_silence(&self, hb: &Heartbeat, max_silence: Duration) {
        *hb.shared.max_silence.lock().expect("not poisoned") = max_silence;
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
        // What this replica saw of a target another one polls now is no fact any more
        // (it showed as failing here, with a frozen last success, while the other polled
        // it fine): the status page says who polls it instead.
        self.polls
            .lock()
            .expect("not poisoned")
            .retain(|t, _| owned.contains(t));
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

    /// `Err` naming the loops that stopped or are wedged.
    pub fn live(&self) -> Result<(), Wedged> {
        let stale: Vec<String> = (self.beats.lock().expect("not poisoned").iter())
            .filter_map(Heartbeat::trouble)
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

/// Why `/healthz` fails: the loops that stopped (and why) or are silent past their limit
/// (and for how long).
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

    /// A replica forgets how its polls of a target went once another replica owns it,
    /// and readiness (once polled, polled) is not undone by it.
    #[test]
    fn poll_facts_of_a_target_owned_elsewhere_are_forgotten() {
        let h = Health::new(["a".to_string(), "b".to_string()]);
        h.target_polled("a");
        h.poll_failed("b", "cannot connect");
        h.set_owned("r1", ["a".to_string()], 2);
        assert!(h.poll_seen("a").is_some());
        assert!(
            h.poll_seen("b").is_none(),
            "a failure seen before b moved away"
        );
        assert!(h.ready().is_ok());
    }

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

    /// A monotonic clock moved by hand.
    struct Hand(Instant, Mutex<Duration>);

    impl Clock for Hand {
        fn now(&self) -> Instant {
            self.0 + *self.1.lock().unwrap()
        }
    }

    impl Hand {
        fn advance(&self, by: Duration) {
            *self.1.lock().unwrap() += by;
        }
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
    fn a_silent_loop_is_not_live_and_is_named() {
        let clock = Arc::new(Hand(Instant::now(), Mutex::default()));
        let h = Health::with_clock([], clock.clone());
        let quiet = h.heartbeat("target quiet", Duration::from_secs(60));
        let busy = h.heartbeat("target busy", Duration::from_secs(60));
        clock.advance(Duration::from_secs(59));
        busy.beat();
        assert!(h.live().is_ok());
        clock.advance(Duration::from_secs(2));
        let why = h.live().unwrap_err().to_string();
        assert_eq!(why, "target quiet silent for 61s");
        quiet.beat();
        assert!(h.live().is_ok());
        // A longer allowance, after a reload, holds from then on.
        h.allow_silence(&quiet, Duration::from_secs(600));
        clock.advance(Duration::from_secs(100));
        assert_eq!(
            h.live().unwrap_err().to_string(),
            "target busy silent for 102s"
        );
        h.retire(&busy);
        assert!(h.live().is_ok());
    }

    /// Heartbeats read only the injected monotonic clock (nothing in their path reads the
    /// wall clock, which a step of the system time moves): the silence is what it moved.
    /// The daemon-level check, the system time stepped by libfaketime under the real
    /// binary, is tests/loops.rs `a_wall_clock_step_does_not_fail_healthz`.
    #[test]
    fn silence_is_measured_on_the_injected_monotonic_clock() {
        let clock = Arc::new(Hand(Instant::now(), Mutex::default()));
        let h = Health::with_clock([], clock.clone());
        let hb = h.heartbeat("sink s", Duration::from_secs(60));
        hb.beat();
        // No monotonic time passed: alive, whatever the wall clock did meanwhile.
        assert!(h.live().is_ok());
        clock.advance(Duration::from_secs(3600));
        assert!(
            h.live()
                .unwrap_err()
                .to_string()
                .contains("sink s silent for 3600s")
        );
    }

    /// A loop waiting its turn (for a long interval, a poll slot, a `Retry-After`) beats
    /// meanwhile: two minutes of waiting never read as two minutes of silence.
    #[tokio::test(start_paused = true)]
    async fn a_loop_that_waits_keeps_beating() {
        let clock = Arc::new(Hand(Instant::now(), Mutex::default()));
        let h = Health::with_clock([], clock.clone());
        let hb = h.heartbeat("target t", Duration::from_secs(30));
        // The monotonic clock moves with tokio's (paused) one.
        let c = clock.clone();
        let two_minutes = async {
            for _ in 0..120 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                c.advance(Duration::from_secs(1));
                assert!(h.live().is_ok(), "{:?}", h.live());
            }
        };
        hb.while_waiting(two_minutes).await;
        clock.advance(Duration::from_secs(31));
        assert!(
            h.live()
                .unwrap_err()
                .to_string()
                .contains("target t silent")
        );
    }

    #[tokio::test]
    async fn a_panicking_or_returning_loop_is_reported_stopped_at_once() {
        let h = Health::new([]);
        let token = tokio_util::sync::CancellationToken::new();
        let beat = h.heartbeat("target boom", Duration::from_secs(3600));
        supervise(beat, token.clone(), async { panic!("index out of range") }).await;
        assert_eq!(
            h.live().unwrap_err().to_string(),
            "target boom stopped: panicked: index out of range"
        );
        let h = Health::new([]);
        let beat = h.heartbeat("sink early", Duration::from_secs(3600));
        supervise(beat, token.clone(), async {}).await;
        assert!(
            h.live()
                .unwrap_err()
                .to_string()
                .contains("sink early stopped: returned")
        );
        // Returning once told to stop is the normal end.
        let h = Health::new([]);
        let beat = h.heartbeat("sink done", Duration::from_secs(3600));
        token.cancel();
        supervise(beat, token, async {}).await;
        assert!(h.live().is_ok());
    }
}

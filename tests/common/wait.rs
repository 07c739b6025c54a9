//! Waiting for conditions, never for time. What each helper means:
//!
//! - [`wait_for`] / [`until`]: "this becomes true". They poll the condition every 20 ms
//!   (or `every`) and return as soon as it holds; the timeout is only how long a broken
//!   build may hang before the test fails, never part of what is tested, so it is
//!   generous (a slow machine passes, only a wrong answer fails).
//! - [`never_within`]: "this does not happen while that does". It checks `bad` throughout
//!   and fails the moment it holds, until `progress` holds: evidence that something did
//!   not happen only counts once the daemon demonstrably did the work in which it would
//!   have happened (N more polls, claims, attempts), however long that took. A fixed
//!   `sleep` then "still one" proves nothing on a slow machine, where the daemon may not
//!   have run a single cycle during the sleep.
//!
//! The few sleeps left in tests/ are the behaviour under test (a measured window, a
//! client that stalls on purpose) and say so where they are.

use std::time::{Duration, Instant};

/// Poll `f` every 20 ms until it returns Some (returned) or `timeout` passes (the test
/// fails naming `what`).
pub async fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait until `f` is true, checking every `every`; false after `timeout`. For waits that
/// await (HTTP) or fail with their own message: `assert!(until(..).await, "..")`.
pub async fn until(timeout: Duration, every: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

/// Check every 20 ms that `bad` (described by `what`) does not hold, until `progress`
/// (described by `progress_what`) does; fails as soon as `bad` holds, or when `progress`
/// is not reached within `timeout`. `bad` is checked once more after `progress` holds.
pub async fn never_within(
    what: &str,
    mut bad: impl AsyncFnMut() -> bool,
    progress_what: &str,
    timeout: Duration,
    mut progress: impl AsyncFnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    loop {
        assert!(!bad().await, "{what} (before {progress_what})");
        if progress().await {
            assert!(!bad().await, "{what} (by the time of {progress_what})");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {progress_what} (checking that never {what})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`never_within`] with the daemon's own cadence as the progress: check that `bad`
/// (described by `what`) never holds while the daemon lists `env`'s simulated API `polls`
/// more times. Each listing is a poll (with what its commit wakes); the sinks' retries of
/// the test configs (100 ms) fall many times within five polls.
pub async fn never_in_polls(
    env: &super::Env,
    polls: u64,
    what: &str,
    bad: impl AsyncFnMut() -> bool,
) {
    use loopwatch::sim::Route;
    let h = env.sim.handle();
    let from = h.requests_to(Route::Checkpoints);
    let more = async || h.requests_to(Route::Checkpoints) >= from + polls;
    let progress = format!("{polls} more polls");
    never_within(what, bad, &progress, Duration::from_secs(60), more).await;
}

/// [`wait_for`] for a test without a runtime (a child process's exit): polls `f` every
/// `every` until it returns Some, or `timeout` passes (None).
pub fn wait_blocking<T>(
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Wait until the daemon of `env` has listed the simulated API `polls` more times (it
/// has seen whatever changed before this call).
pub async fn polls_later(env: &super::Env, polls: u64) {
    use loopwatch::sim::Route;
    let h = env.sim.handle();
    let from = h.requests_to(Route::Checkpoints);
    wait_for(
        &format!("{polls} more polls"),
        Duration::from_secs(60),
        || (h.requests_to(Route::Checkpoints) >= from + polls).then_some(()),
    )
    .await;
}

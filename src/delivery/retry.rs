//! The retry policy: why an attempt failed ([`Failure`]), what follows it ([`decide`]:
//! delivered, a retry after the schedule's next step with jitter and `Retry-After` as a
//! floor, or dead), and when a deploy call left in doubt is reconciled ([`reconcile_at`]).
//! Pure: no I/O, no clock.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::store::AttemptOutcome;

/// Why an attempt failed.
#[derive(Clone, Debug)]
pub enum Failure {
    Status {
        code: u16,
        retry_after: Option<Duration>,
        body: String,
    },
    Timeout,
    Connect(String),
    Exec(String),
    /// The payload could not be built: a template that fails to render (or runs out of
    /// fuel or size), a body the CloudEvents encoder cannot produce, an environment value
    /// the OS refuses (a NUL byte, too large). The same event fails the same way on every
    /// attempt, so it is dead at once with this reason; a fixed config and `deliveries
    /// redeliver` send it again. (It followed the retry schedule, for days.)
    Payload(String),
    /// Final: the Loops API refused the request at `step` (`validate`, `deploy`), or it
    /// cannot be made (`model_name`). Dead at once, the reason kept.
    Rejected {
        step: &'static str,
        code: Option<u16>,
        reason: String,
    },
    /// The store could not be asked (a deploy's `latest_only` check): follows the schedule.
    Store(String),
    /// A deploy whose outcome is not known (the call's answer was lost, or the model's
    /// deployments could not be read): the next attempt reconciles before anything else.
    Unknown(String),
    /// The claim was taken again (it lapsed): the attempt stopped before acting, and its
    /// outcome is not recorded; whoever holds the claim now carries on.
    Stale,
    /// Not attempted now (another deploy to the same model is in doubt): due again
    /// shortly, the attempt not counted.
    Deferred(String),
    /// A deploy whose attempts are used up, the last call reconciled and found to have
    /// deployed nothing: dead with this reason (`deliveries redeliver` starts again).
    Exhausted(String),
}

impl Failure {
    /// No retry can fix it: dead at once.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Failure::Payload(_) | Failure::Rejected { .. } | Failure::Exhausted(_)
        )
    }

    pub(super) fn status(&self) -> Option<u16> {
        match self {
            Failure::Status { code, .. } => Some(*code),
            Failure::Rejected { code, .. } => *code,
            _ => None,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Status { code, body, .. } if body.is_empty() => write!(f, "HTTP {code}"),
            Failure::Status { code, body, .. } => write!(f, "HTTP {code}: {body}"),
            Failure::Timeout => f.write_str("timed out"),
            Failure::Connect(e) => write!(f, "connection failed: {e}"),
            Failure::Exec(e) => f.write_str(e),
            Failure::Payload(e) => write!(f, "cannot build the payload: {e}"),
            Failure::Rejected {
                step,
                code: Some(code),
                reason,
            } => write!(f, "{step} refused (HTTP {code}): {reason}"),
            Failure::Rejected { step, reason, .. } => write!(f, "{step}: {reason}"),
            Failure::Store(e) => write!(f, "cannot read the store: {e}"),
            Failure::Unknown(e) => f.write_str(e),
            Failure::Stale => f.write_str("the claim was taken again; this attempt stopped"),
            Failure::Deferred(e) => f.write_str(e),
            Failure::Exhausted(e) => f.write_str(e),
        }
    }
}

/// Decide what happens after attempt number `attempts_before + 1`. `jitter` is in
/// [-1, 1] and scales the +-20% spread.
pub fn decide(
    result: &Result<u16, Failure>,
    attempts_before: u32,
    schedule: &[Duration],
    now: DateTime<Utc>,
    jitter: f64,
) -> AttemptOutcome {
    let failure = match result {
        Ok(_) => return AttemptOutcome::Delivered,
        Err(f) => f,
    };
    let status = failure.status();
    // What is kept and logged: a peer's text in it is redacted at its source; this also
    // covers every failure kind added later.
    let error = crate::redact::secrets(&failure.to_string()).into_owned();
    if status == Some(410) || failure.is_permanent() {
        return AttemptOutcome::Dead { status, error };
    }
    let Some(base) = schedule.get(attempts_before as usize) else {
        return AttemptOutcome::Dead { status, error };
    };
    let mut wait = base.mul_f64(1.0 + 0.2 * jitter.clamp(-1.0, 1.0));
    if let Failure::Status {
        code: 429 | 503,
        retry_after: Some(ra),
        ..
    } = failure
    {
        wait = wait.max(*ra);
    }
    let next = now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
    AttemptOutcome::Retry {
        next,
        status,
        error,
    }
}

/// How long a deploy whose call is in doubt waits before it is reconciled when its sink
/// has no `retry_schedule` to pace it.
pub const RECONCILE_WITHOUT_SCHEDULE: Duration = Duration::from_secs(30);

/// Once no attempt is left, how long at most a deploy in doubt waits before it is read
/// (again): the schedule's last step (24h by default) paces deploys, not reads.
pub const RECONCILE_AFTER_THE_LAST_AT_MOST: Duration = Duration::from_secs(300);

/// When a deploy call left in doubt by attempt number `attempts_before` (or a failed
/// read of its reconciliation after it) is reconciled: when the next attempt would be due,
/// and once none is left, after the schedule's last step but no later than
/// [`RECONCILE_AFTER_THE_LAST_AT_MOST`], so that the last attempt is reconciled like any
/// other and a read that keeps failing is tried again at that pace, never given up for
/// want of attempts (a read costs nothing; giving up would leave a deploy that may have
/// happened untold). `Retry-After` is a floor, as for any retry.
pub fn reconcile_at(
    failure: &Failure,
    attempts_before: u32,
    schedule: &[Duration],
    now: DateTime<Utc>,
    jitter: f64,
) -> AttemptOutcome {
    let failure = Err(failure.clone());
    match schedule.last() {
        None => decide(&failure, 0, &[RECONCILE_WITHOUT_SCHEDULE], now, jitter),
        Some(_) if (attempts_before as usize) < schedule.len() => {
            decide(&failure, attempts_before, schedule, now, jitter)
        }
        Some(last) => {
            let wait = (*last).min(RECONCILE_AFTER_THE_LAST_AT_MOST);
            decide(&failure, 0, &[wait], now, jitter)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> Vec<Duration> {
        vec![Duration::from_secs(5), Duration::from_secs(300)]
    }

    fn status(code: u16, retry_after: Option<u64>) -> Result<u16, Failure> {
        Err(Failure::Status {
            code,
            retry_after: retry_after.map(Duration::from_secs),
            body: String::new(),
        })
    }

    fn wait_of(o: &AttemptOutcome, now: DateTime<Utc>) -> f64 {
        match o {
            AttemptOutcome::Retry { next, .. } => (*next - now).num_milliseconds() as f64 / 1000.0,
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    #[test]
    fn success_is_delivered() {
        assert!(matches!(
            decide(&Ok(204), 0, &schedule(), Utc::now(), 0.0),
            AttemptOutcome::Delivered
        ));
    }

    #[test]
    fn a_refused_deploy_is_dead_at_once_with_its_reason() {
        let refused = Err(Failure::Rejected {
            step: "validate",
            code: Some(400),
            reason: "checkpoint uses another LoRA config".into(),
        });
        match decide(&refused, 0, &schedule(), Utc::now(), 0.0) {
            AttemptOutcome::Dead { status, error } => {
                assert_eq!(status, Some(400));
                assert_eq!(
                    error,
                    "validate refused (HTTP 400): checkpoint uses another LoRA config"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn gone_is_dead_at_once() {
        assert!(matches!(
            decide(&status(410, None), 0, &schedule(), Utc::now(), 0.0),
            AttemptOutcome::Dead { .. }
        ));
    }

    #[test]
    fn a_payload_that_cannot_be_built_is_dead_at_once_with_its_reason() {
        let r = Err(Failure::Payload(
            "template: undefined value (in body:1)".into(),
        ));
        match decide(&r, 0, &schedule(), Utc::now(), 0.0) {
            AttemptOutcome::Dead { status, error } => {
                assert_eq!(status, None);
                assert_eq!(
                    error,
                    "cannot build the payload: template: undefined value (in body:1)"
                );
            }
            other => panic!("{other:?}"),
        }
        // Transient ones still follow the schedule.
        for f in [
            Failure::Timeout,
            Failure::Connect("refused".into()),
            Failure::Exec("exit 1".into()),
        ] {
            assert!(!f.is_permanent());
            assert!(matches!(
                decide(&Err(f), 0, &schedule(), Utc::now(), 0.0),
                AttemptOutcome::Retry { .. }
            ));
        }
    }

    #[test]
    fn schedule_with_jitter_then_dead() {
        let now = Utc::now();
        assert_eq!(
            wait_of(&decide(&status(500, None), 0, &schedule(), now, 0.0), now),
            5.0
        );
        assert_eq!(
            wait_of(&decide(&status(500, None), 0, &schedule(), now, 1.0), now),
            6.0
        );
        assert_eq!(
            wait_of(&decide(&status(500, None), 0, &schedule(), now, -1.0), now),
            4.0
        );
        assert_eq!(
            wait_of(
                &decide(&Err(Failure::Timeout), 1, &schedule(), now, 0.0),
                now
            ),
            300.0
        );
        // 1 + len(schedule) attempts in all: the third failure is final
        assert!(matches!(
            decide(&status(302, None), 2, &schedule(), now, 0.0),
            AttemptOutcome::Dead { .. }
        ));
        assert!(matches!(
            decide(&status(500, None), 0, &[], now, 0.0),
            AttemptOutcome::Dead { .. }
        ));
    }

    #[test]
    fn a_call_in_doubt_is_reconciled_at_the_next_step_and_after_the_last_never_given_up() {
        let now = Utc::now();
        let at = |attempts_before: u32, schedule: &[Duration]| {
            wait_of(
                &reconcile_at(&Failure::Timeout, attempts_before, schedule, now, 0.0),
                now,
            )
        };
        assert_eq!(at(0, &schedule()), 5.0);
        assert_eq!(at(1, &schedule()), 300.0);
        // The last attempt's call, and reads that keep failing after it: the last step.
        assert_eq!(at(2, &schedule()), 300.0);
        assert_eq!(at(40, &schedule()), 300.0);
        assert_eq!(at(0, &[]), RECONCILE_WITHOUT_SCHEDULE.as_secs_f64());
        // The default schedule's last step is a day: reads after it come sooner.
        let default: Vec<Duration> = [5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400]
            .map(Duration::from_secs)
            .to_vec();
        assert_eq!(at(8, &default), 86400.0, "the last attempt's time");
        assert_eq!(at(9, &default), 300.0, "no attempt left: 5 minutes at most");
        assert_eq!(at(30, &default), 300.0);
        let busy = Failure::Status {
            code: 503,
            retry_after: Some(Duration::from_secs(900)),
            body: String::new(),
        };
        assert_eq!(
            wait_of(&reconcile_at(&busy, 2, &schedule(), now, 0.0), now),
            900.0,
            "Retry-After is still a floor"
        );
    }

    #[test]
    fn retry_after_is_a_floor_for_429_and_503() {
        let now = Utc::now();
        assert_eq!(
            wait_of(
                &decide(&status(429, Some(60)), 0, &schedule(), now, 0.0),
                now
            ),
            60.0
        );
        assert_eq!(
            wait_of(
                &decide(&status(503, Some(2)), 0, &schedule(), now, 0.0),
                now
            ),
            5.0
        );
        assert_eq!(
            wait_of(
                &decide(&status(500, Some(60)), 0, &schedule(), now, 0.0),
                now
            ),
            5.0
        );
    }
}

//! The attempts log: one row per attempt of a delivery (when it ended, how long it took,
//! the HTTP status it got, its outcome and error), for the status page's per-delivery
//! history (`/targets/NAME`, docs/status.md).
//!
//! Written by [`log`] inside the transaction that records the attempts' outcomes
//! ([`super::Outbox::record_attempts`]), so the log and the outbox never disagree, and
//! bounded: the newest [`KEPT_PER_DELIVERY`] attempts of a delivery are kept (a delivery
//! re-queued again and again cannot grow it without end; right after a `redeliver`, one
//! fewer until its next attempt), and a pruned delivery takes its attempts with it
//! (`ON DELETE CASCADE`). The deliveries' own columns (`attempts`,
//! `last_status`, `last_error`) stay what the outbox reads; this log is only read.

use std::time::Duration;

use serde::Serialize;

use super::{AttemptOutcome, Recorded, Result};

/// How many attempts of one delivery the log keeps (the default retry schedule makes
/// ten per round).
pub const KEPT_PER_DELIVERY: i64 = 20;

/// What an attempt was beyond its outcome, as the sink worker saw it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttemptFacts {
    /// The HTTP status it got, a success's too (a failure's is in its outcome as well).
    pub status: Option<u16>,
    /// How long the attempt took.
    pub took: Option<Duration>,
    /// The pass only reconciled a deploy call an earlier attempt left in doubt: it read the
    /// model's deployments and sent nothing, so it is no attempt of its own. The
    /// delivery's `attempts` stays, and the log keeps it under the number of the attempt
    /// it reconciled.
    pub reconciliation: bool,
}

/// One logged attempt as the JSON the insert reads (`$1`, an array of these).
#[derive(Serialize)]
struct Row<'a> {
    id: i64,
    sink: &'a str,
    attempt: i64,
    duration_ms: Option<i64>,
    status: Option<i64>,
    outcome: &'static str,
    error: Option<&'a str>,
    /// The log of its delivery may hold [`KEPT_PER_DELIVERY`] rows already: trim it.
    #[serde(skip)]
    trim: bool,
}

/// The rows to log for `outcomes`. A superseded or deferred delivery, or one that now waits
/// for approval, was not attempted: nothing to log.
fn rows<'a>(outcomes: &[(&'a Recorded, &'a str, i64)]) -> Vec<Row<'a>> {
    outcomes
        .iter()
        .filter_map(|&(r, sink, attempt)| {
            let (id, o, f) = (&r.delivery_id, &r.outcome, r.facts);
            let (outcome, status, error) = match o {
                AttemptOutcome::Delivered | AttemptOutcome::DeliveredWith(_) => {
                    ("delivered", None, None)
                }
                AttemptOutcome::Retry { status, error, .. } => {
                    ("retry", *status, Some(error.as_str()))
                }
                AttemptOutcome::Dead { status, error } => ("dead", *status, Some(error.as_str())),
                AttemptOutcome::Unknown { error } => ("unknown", None, Some(error.as_str())),
                AttemptOutcome::Superseded { .. }
                | AttemptOutcome::Deferred { .. }
                | AttemptOutcome::AwaitingApproval(_) => {
                    return None;
                }
            };
            Some(Row {
                id: *id,
                sink,
                attempt,
                duration_ms: f.took.map(|d| d.as_millis().min(i64::MAX as u128) as i64),
                status: f.status.or(status).map(i64::from),
                outcome,
                error,
                trim: attempt > 1 || f.reconciliation,
            })
        })
        .collect()
}

/// The SQL of the log that differs between the dialects: how the JSON array of rows is
/// read as a table.
pub(crate) trait LogDialect: sqlx::Database {
    /// `j(id, sink, attempt, duration_ms, status, outcome, error)` from the JSON text `$2`.
    const ROWS: &'static str;
}

impl LogDialect for sqlx::Sqlite {
    const ROWS: &'static str = "(SELECT json_extract(value, '$.id') AS id,
        json_extract(value, '$.sink') AS sink,
        json_extract(value, '$.attempt') AS attempt,
        json_extract(value, '$.duration_ms') AS duration_ms,
        json_extract(value, '$.status') AS status,
        json_extract(value, '$.outcome') AS outcome,
        json_extract(value, '$.error') AS error FROM json_each($2)) j";
}

impl LogDialect for sqlx::Postgres {
    const ROWS: &'static str = "jsonb_to_recordset(CAST($2 AS jsonb))
        AS j(id BIGINT, sink TEXT, attempt INTEGER, duration_ms BIGINT, status INTEGER, outcome TEXT, error TEXT)";
}

/// Log the attempts of `outcomes` on `tx`, after their outcomes were written, each with
/// its delivery's sink and count of attempts as that write returned them (the attempt
/// number), and trim the log of each delivery that may have gone past the bound.
///
/// A delivery's first attempt needs no trim: before it the log holds nothing, or what a
/// `redeliver` left of an earlier round, which [`trim`] cut to one fewer than the bound
/// when it started the count again. So a burst of first-attempt deliveries costs one
/// statement here, not two. A reconciliation pass keeps the number of the attempt it
/// reconciled, the first one's too, and may come any number of times: always trimmed.
pub(crate) async fn log<DB: LogDialect>(
    tx: &mut DB::Connection,
    outcomes: &[(&Recorded, &str, i64)],
    now: i64,
) -> Result<()>
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let rows = rows(outcomes);
    if rows.is_empty() {
        return Ok(());
    }
    let json = serde_json::to_string(&rows).expect("plain fields serialize");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO attempts (delivery_id, sink, attempt, at, duration_ms, status, outcome, error)
         SELECT j.id, j.sink, j.attempt, $1, j.duration_ms, j.status, j.outcome, j.error
         FROM {}",
        DB::ROWS
    )))
    .bind(now)
    .bind(json)
    .execute(&mut *tx)
    .await?;
    let again: Vec<i64> = rows.iter().filter(|r| r.trim).map(|r| r.id).collect();
    trim::<DB>(tx, &again, KEPT_PER_DELIVERY).await
}

/// Keep only the newest `keep` logged attempts of each delivery in `ids`: [`log`] with
/// the bound after a delivery's second attempt and later ones; a `redeliver` with one
/// fewer, since the count starts again and the next first attempt is not trimmed.
pub(crate) async fn trim<DB: LogDialect>(
    tx: &mut DB::Connection,
    ids: &[i64],
    keep: i64,
) -> Result<()>
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    if ids.is_empty() {
        return Ok(());
    }
    #[derive(Serialize)]
    struct Id {
        id: i64,
    }
    let json = serde_json::to_string(&ids.iter().map(|&id| Id { id }).collect::<Vec<_>>())
        .expect("integers serialize");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM attempts WHERE delivery_id IN (SELECT j.id FROM {})
           AND seq < (SELECT b.seq FROM attempts b WHERE b.delivery_id = attempts.delivery_id
                      ORDER BY b.seq DESC LIMIT 1 OFFSET $1)",
        DB::ROWS
    )))
    .bind(keep - 1)
    .bind(json)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(id: i64, outcome: AttemptOutcome, facts: AttemptFacts) -> Recorded {
        Recorded {
            delivery_id: id,
            token: 1,
            outcome,
            deploy: None,
            facts,
        }
    }

    #[test]
    fn a_superseded_delivery_logs_nothing_and_facts_fill_in_what_the_outcome_lacks() {
        let outcomes = [
            recorded(
                1,
                AttemptOutcome::Delivered,
                AttemptFacts {
                    status: Some(204),
                    took: Some(Duration::from_millis(12)),
                    ..Default::default()
                },
            ),
            recorded(
                2,
                AttemptOutcome::Superseded {
                    reason: "newer".into(),
                },
                AttemptFacts::default(),
            ),
            recorded(
                3,
                AttemptOutcome::Dead {
                    status: Some(410),
                    error: "HTTP 410".into(),
                },
                AttemptFacts::default(),
            ),
        ];
        let refs: Vec<(&Recorded, &str, i64)> = outcomes.iter().map(|r| (r, "s", 2)).collect();
        type Logged<'a> = (i64, i64, Option<i64>, Option<i64>, &'a str, Option<&'a str>);
        let got: Vec<Logged> = rows(&refs)
            .iter()
            .map(|r| (r.id, r.attempt, r.duration_ms, r.status, r.outcome, r.error))
            .collect();
        assert_eq!(
            got,
            [
                (1, 2, Some(12), Some(204), "delivered", None),
                (3, 2, None, Some(410), "dead", Some("HTTP 410")),
            ]
        );
    }

    #[test]
    fn a_reconciliation_pass_of_a_first_attempt_is_trimmed() {
        let retry = || AttemptOutcome::Retry {
            next: chrono::Utc::now(),
            status: None,
            error: "reconciling".into(),
        };
        let first = recorded(1, retry(), AttemptFacts::default());
        let reconciling = recorded(
            2,
            retry(),
            AttemptFacts {
                reconciliation: true,
                ..Default::default()
            },
        );
        let refs = [(&first, "s", 1), (&reconciling, "s", 1)];
        let trimmed: Vec<(i64, bool)> = rows(&refs).iter().map(|r| (r.id, r.trim)).collect();
        assert_eq!(trimmed, [(1, false), (2, true)]);
    }
}

//! PostgreSQL's batched statements: rows bound as one typed array per column and read
//! with `unnest` ([`super::batch`]), so that a poll's commit, an outcome write, a renewal
//! or a release is one statement per table whatever its row count (each statement is a
//! round trip, and a burst of 100 completions in one listing used to be 300 of them).

use sqlx::postgres::{PgArguments, PgConnection};
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, Postgres, Row};

use super::batch::{self, Col, Rows};
use super::{Result, StoreError, sql};
use crate::model::{Event, Tracked};

/// `unnest(CAST($first AS T[]), ...) AS u(names)`, with `ord` (each row's position, from
/// 1) too when `ordinality`.
fn unnest(rows: &Rows, first: usize, ordinality: bool) -> String {
    let arrays: Vec<String> = rows
        .cols
        .iter()
        .enumerate()
        .map(|(i, (_, c))| format!("CAST(${} AS {})", first + i, c.pg_array()))
        .collect();
    let (with, ord) = if ordinality {
        (" WITH ORDINALITY", ", ord")
    } else {
        ("", "")
    };
    format!(
        "unnest({}){with} AS u({}{ord})",
        arrays.join(", "),
        rows.names()
    )
}

pub(super) fn rows_table(rows: &Rows, first: usize) -> String {
    unnest(rows, first, false)
}

pub(super) fn bind_rows<'q>(
    mut q: Query<'q, Postgres, PgArguments>,
    rows: &Rows,
) -> Query<'q, Postgres, PgArguments> {
    for (_, c) in &rows.cols {
        q = match c {
            Col::Int(v) => q.bind(v.as_slice()),
            Col::OptInt(v) => q.bind(v.as_slice()),
            Col::Text(v) => q.bind(v.as_slice()),
            Col::OptText(v) => q.bind(v.as_slice()),
            Col::Bool(v) => q.bind(v.as_slice()),
        };
    }
    q
}

/// Insert or overwrite checkpoints with their text, in one statement (no id twice: a
/// multi-row `ON CONFLICT DO UPDATE` may not touch a row twice; the caller keeps the
/// last of each).
pub(super) async fn upsert_checkpoints(
    tx: &mut PgConnection,
    target: &str,
    rows: &[&Tracked],
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let u = batch::checkpoints(rows).col(
        "raw",
        Col::Text(
            rows.iter()
                .map(|t| t.raw.text().unwrap_or_default())
                .collect(),
        ),
    );
    let q = format!(
        "{}) SELECT $1, {} FROM {}{}",
        sql::CHECKPOINT_INSERT,
        u.names(),
        unnest(&u, 2, false),
        sql::CHECKPOINT_ON_CONFLICT
    );
    bind_rows(sqlx::query(AssertSqlSafe(q)).bind(target), &u)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Insert events with their bodies in one statement, in order (`seq`s ascending as the
/// events are); their `seq`s. An id already stored fails the statement, as it failed
/// the insert of that one event (the ids are unique).
pub(super) async fn insert_events(
    tx: &mut PgConnection,
    events: &[(&Event, &str)],
) -> Result<Vec<i64>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let u = Rows::default()
        .col(
            "id",
            Col::Text(events.iter().map(|(e, _)| e.id.as_str()).collect()),
        )
        .col(
            "type",
            Col::Text(events.iter().map(|(e, _)| e.kind.as_str()).collect()),
        )
        .col(
            "target",
            Col::Text(events.iter().map(|(e, _)| e.target.as_str()).collect()),
        )
        .col(
            "checkpoint_id",
            Col::Text(
                events
                    .iter()
                    .map(|(e, _)| e.checkpoint_id.as_str())
                    .collect(),
            ),
        )
        .col(
            "checkpoint_name",
            Col::Text(
                events
                    .iter()
                    .map(|(e, _)| e.checkpoint_name.as_str())
                    .collect(),
            ),
        )
        .col(
            "run_id",
            Col::Text(events.iter().map(|(e, _)| e.run_id.as_str()).collect()),
        )
        .col(
            "checkpoint_target",
            Col::Text(
                events
                    .iter()
                    .map(|(e, _)| e.checkpoint_target.as_str())
                    .collect(),
            ),
        )
        .col(
            "detected_at",
            Col::Int(
                events
                    .iter()
                    .map(|(e, _)| e.detected_at.timestamp_millis())
                    .collect(),
            ),
        )
        .col("body", Col::Text(events.iter().map(|(_, b)| *b).collect()));
    let q = format!(
        "{} SELECT {} FROM {} ORDER BY u.ord RETURNING seq, id",
        sql::EVENT_INSERT,
        u.names(),
        unnest(&u, 1, true)
    );
    let rows = bind_rows(sqlx::query(AssertSqlSafe(q)), &u)
        .fetch_all(&mut *tx)
        .await?;
    let mut by_id = std::collections::HashMap::with_capacity(rows.len());
    for r in &rows {
        by_id.insert(r.try_get::<String, _>("id")?, r.try_get::<i64, _>("seq")?);
    }
    events
        .iter()
        .map(|(e, _)| {
            by_id.get(e.id.as_str()).copied().ok_or_else(|| {
                StoreError::Corrupt(format!("event {} inserted without a seq", e.id))
            })
        })
        .collect()
}

/// Insert pending deliveries (event seq, sink, run id), due at `now`, in one statement,
/// in order.
pub(super) async fn insert_deliveries(
    tx: &mut PgConnection,
    rows: &[(i64, &str, &str)],
    now: i64,
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let u = Rows::default()
        .col("event_seq", Col::Int(rows.iter().map(|r| r.0).collect()))
        .col("sink", Col::Text(rows.iter().map(|r| r.1).collect()))
        .col("run_id", Col::Text(rows.iter().map(|r| r.2).collect()));
    let q = format!(
        "{} SELECT u.event_seq, u.sink, u.run_id, 'pending', $1, $1, $1 FROM {} ORDER BY u.ord",
        sql::DELIVERY_INSERT,
        unnest(&u, 2, true)
    );
    bind_rows(sqlx::query(AssertSqlSafe(q)).bind(now), &u)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

//! What SQLite does differently for the shared queries (`store::shared::Dialect`): the
//! claim clock, locking, and its multi-row inserts.

use super::*;
use crate::store::batch::Rows;
use sqlx::query::Query;
use sqlx::sqlite::SqliteArguments;

/// Unix ms at open, then monotonic time since: the claim clock of one process.
pub(super) struct ClaimClock {
    wall0: i64,
    t0: std::time::Instant,
}

impl ClaimClock {
    pub(super) fn new() -> Self {
        ClaimClock {
            wall0: Utc::now().timestamp_millis(),
            t0: std::time::Instant::now(),
        }
    }

    pub(super) fn now_ms(&self) -> i64 {
        self.wall0 + self.t0.elapsed().as_millis() as i64
    }
}

/// One checkpoints row as `load_targets` reads it: [`sql::CHECKPOINT_FIELDS`] (but
/// `probe`), `raw_digest` and `probe`, as a JSON array (SQLite's fast path for a whole state: see there).
#[derive(serde::Deserialize)]
pub(super) struct JsonRow<'a>(
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] Option<Cow<'a, str>>,
    #[serde(borrow)] Cow<'a, str>,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    Option<i64>,
    #[serde(borrow)] Option<Cow<'a, str>>,
);

impl JsonRow<'_> {
    /// The row, whether its digest had to be left out (a row from before the column),
    /// and what the readiness probe saw of it.
    pub(super) fn tracked(self) -> Result<(Tracked, bool, Option<ProbeMemo>)> {
        let JsonRow(
            id,
            name,
            run_id,
            target,
            sync_status,
            created_at,
            first_seen_at,
            completed,
            stalled,
            missing,
            deleted,
            deleted_reported,
            seq,
            digest,
            probe,
        ) = self;
        let tracked = Tracked {
            id: id.as_ref().into(),
            name: name.as_ref().into(),
            run_id: run_id.as_ref().into(),
            target: rows::checkpoint_target(&target)?,
            sync_status: sync_status.as_deref().map(Into::into),
            created_at: created_at.as_ref().into(),
            first_seen_at: ms_to_time(first_seen_at),
            completed: completed != 0,
            stalled: stalled != 0,
            missing: missing as u32,
            deleted: deleted != 0,
            deleted_reported: deleted_reported != 0,
            seq: seq as u32,
            raw: Raw::Digest(digest.unwrap_or_default() as u64),
        };
        let probe = probe.as_deref().and_then(rows::parse_probe);
        Ok((tracked, digest.is_none(), probe))
    }
}

/// SQLite writes a poll's rows with multi-row statements: sqlx hands every statement to
/// the connection's thread and back (two thread wake-ups, ~20 us), so a burst of 100
/// completions in one listing is a few statements, not 300.
impl Dialect for Sqlite {
    fn tracked_columns(with_raw: bool) -> String {
        let raw = if with_raw {
            "raw"
        } else {
            "CASE WHEN raw_digest IS NULL THEN raw END AS raw"
        };
        format!("{}, raw_digest, {raw}", sql::CHECKPOINT_FIELDS)
    }

    fn rows_affected(r: &SqliteQueryResult) -> u64 {
        r.rows_affected()
    }

    const BODY_CREATED_AT: &'static str = "json_extract(e.body, '$.data.checkpoint.created_at')";
    const LOCK_ROW: &'static str = "";
    const MODEL_LOCK: Option<&'static str> = None;
    const SKIP_LOCKED: &'static str = "";
    const UNSYNCED_COMMIT: Option<&'static str> = None;

    fn claim_clock(param: &str) -> String {
        param.to_string()
    }
    const BODY_FIRST_SEEN_AT: &'static str = "json_extract(e.body, '$.data.first_seen_at')";

    /// One node owns every target for good (its flock keeps a second poller out).
    async fn check_fence(
        _tx: &mut SqliteConnection,
        _target: &str,
        _fence: Option<&Fence>,
    ) -> Result<()> {
        Ok(())
    }

    /// With the text's digest, so that loading the state needs no text.
    async fn upsert_checkpoints(
        tx: &mut SqliteConnection,
        target: &str,
        rows: &[&Tracked],
    ) -> Result<()> {
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Sqlite>::new(sql::CHECKPOINT_INSERT);
            q.push(", raw_digest) ");
            q.push_values(chunk, |mut b, t| {
                let raw = t.raw.text().unwrap_or_default();
                b.push_bind(target)
                    .push_bind(t.id.as_str())
                    .push_bind(t.name.as_str())
                    .push_bind(t.run_id.as_str())
                    .push_bind(t.target.as_str())
                    .push_bind(t.sync_status.as_deref())
                    .push_bind(t.created_at.as_str())
                    .push_bind(t.first_seen_at.timestamp_millis())
                    .push_bind(t.completed)
                    .push_bind(t.stalled)
                    .push_bind(i64::from(t.missing))
                    .push_bind(t.deleted)
                    .push_bind(t.deleted_reported)
                    .push_bind(i64::from(t.seq))
                    .push_bind(raw)
                    .push_bind(Raw::digest_of(raw) as i64);
            });
            q.push(sql::CHECKPOINT_ON_CONFLICT);
            q.push(", raw_digest = excluded.raw_digest");
            q.build().execute(&mut *tx).await?;
        }
        Ok(())
    }

    /// One statement inserts its rows in order with consecutive `seq`s (AUTOINCREMENT, and
    /// nobody else writes inside this transaction): the last rowid tells them all.
    async fn insert_events(
        tx: &mut SqliteConnection,
        events: &[(&Event, &str)],
    ) -> Result<Vec<i64>> {
        let mut seqs: Vec<i64> = Vec::with_capacity(events.len());
        for chunk in events.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Sqlite>::new(sql::EVENT_INSERT);
            q.push_values(chunk, |mut b, (e, body)| {
                b.push_bind(e.id.as_str())
                    .push_bind(e.kind.as_str())
                    .push_bind(e.target.as_str())
                    .push_bind(e.checkpoint_id.as_str())
                    .push_bind(e.checkpoint_name.as_str())
                    .push_bind(e.run_id.as_str())
                    .push_bind(e.checkpoint_target.as_str())
                    .push_bind(e.detected_at.timestamp_millis())
                    .push_bind(*body);
            });
            let done = q.build().execute(&mut *tx).await?;
            if done.rows_affected() != chunk.len() as u64 {
                return Err(StoreError::Corrupt(format!(
                    "{} of {} events inserted",
                    done.rows_affected(),
                    chunk.len()
                )));
            }
            let first = done.last_insert_rowid() - chunk.len() as i64 + 1;
            seqs.extend((0..chunk.len() as i64).map(|k| first + k));
        }
        Ok(seqs)
    }

    /// One JSON array of rows, read by `json_each` (each row an array, in column order):
    /// one parameter however many rows, where a multi-row `VALUES` would need a statement
    /// for every 32,766 parameters.
    fn rows_table(rows: &Rows, first: usize) -> String {
        let cols: Vec<String> = rows
            .cols
            .iter()
            .enumerate()
            .map(|(i, (name, _))| format!("value ->> {i} AS {name}"))
            .collect();
        format!("(SELECT {} FROM json_each(${first})) AS u", cols.join(", "))
    }

    fn bind_rows<'q>(
        q: Query<'q, Sqlite, SqliteArguments>,
        rows: &Rows,
    ) -> Query<'q, Sqlite, SqliteArguments> {
        q.bind(rows.json())
    }

    async fn insert_deliveries(
        tx: &mut SqliteConnection,
        rows: &[(i64, &str, &str)],
        now: i64,
    ) -> Result<()> {
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Sqlite>::new(sql::DELIVERY_INSERT);
            q.push_values(chunk, |mut b, (seq, sink, run_id)| {
                b.push_bind(*seq)
                    .push_bind(*sink)
                    .push_bind(*run_id)
                    .push_bind("pending")
                    .push_bind(now)
                    .push_bind(now)
                    .push_bind(now);
            });
            q.build().execute(&mut *tx).await?;
        }
        Ok(())
    }
}

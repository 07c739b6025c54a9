//! The default store: one SQLite file in WAL mode, migrations embedded in the binary.

use std::borrow::Cow;
use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use chrono::Utc;
use futures_util::TryStreamExt;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteQueryResult, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Connection, QueryBuilder, Row, Sqlite};

use super::backend::{Backend, ClaimAsk, Grade, Turn};
use super::coordination::Fence;
use super::rows::{self, event_from_row, ms_to_time};
use super::shared::{Dialect, LaneTurns};
use super::{
    Access, Claimed, Outbox, Result, StoreError,
    sql::{self, Lane},
};
use crate::model::{Event, ProbeMemo, Raw, TargetState, Tracked};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

pub struct SqliteStore {
    pool: SqlitePool,
    /// Held by every write. SQLite admits one writer at a time; connections of one process
    /// that collide get SQLITE_BUSY, and its busy handler sleeps (1, 2, 5 ... 100 ms) with
    /// no order among waiters, so under a burst a writer could starve past `busy_timeout`.
    /// Queued here they take turns in order and nobody sleeps. (`busy_timeout` is left for
    /// other processes: a `loopwatch deliveries redeliver` next to the daemon.)
    writes: tokio::sync::Mutex<()>,
    /// Writes whose loss in a power cut costs nothing but a repeat, without waiting for
    /// the disk (`synchronous = NORMAL`, which in WAL mode still never corrupts): claims,
    /// which only lease a delivery to this process, and attempt outcomes, whose loss means
    /// a redelivery under the same id (at-least-once). The next commit of a poll syncs
    /// them with it. One disk sync costs ~0.2 ms here, and a busy sink claims and records
    /// thousands of times a second.
    leases: SqlitePool,
    /// Opened with [`Access::ReadOnly`]: loading computes missing digests, keeps none.
    read_only: bool,
    /// How each claim splits between first attempts and retries.
    lanes: LaneTurns,
    /// The clock of claims: one process per file, so its own monotonic clock (a step of
    /// the wall clock neither expires a claim early nor keeps one forever).
    clock: ClaimClock,
    /// With [`Access::ReadWrite`]: the exclusive lock on `<file>.lock`, held while open.
    _lock: Option<std::fs::File>,
}

/// One process at a time polls into a state file: the daemon, or `once`. Two pollers on
/// one file each diff against their own view of the state, so a new checkpoint could be
/// recorded twice under two event ids, and one's start would release the other's
/// delivery claims. The lock is `flock(2)` on `<file>.lock` (a separate file: another
/// descriptor on the database itself would, once closed, drop SQLite's own POSIX locks);
/// the kernel releases it when the process ends, however it ends.
fn lock_exclusive(db: &std::path::Path) -> Result<std::fs::File> {
    use rustix::fs::{FlockOperation, flock};
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    let path = std::path::PathBuf::from(name);
    create_private(&path);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| {
            let fix = match (e.kind(), db.parent()) {
                (std::io::ErrorKind::NotFound, Some(dir)) => format!(
                    "the directory {} does not exist: create it, or set store.url to a path in one that does",
                    dir.display()
                ),
                _ => "set store.url to a path this user can write".into(),
            };
            StoreError::Open(format!(
                "store.url {}: cannot create its lock file {} ({e}); {fix}",
                db.display(),
                path.display()
            ))
        })?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(StoreError::Open(format!(
            "another loopwatch process polls into {} (a daemon, or `once`): one state file takes one at a time; stop it, use `once --dry-run`, or give this one its own store.url",
            db.display()
        ))),
        Err(e) => Err(StoreError::Open(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}

/// Create `path` empty and owner-only (0600, whatever the umask) when it does not exist.
/// SQLite takes an empty file as a new database and gives its `-wal` and `-shm` files
/// the database file's mode, so the whole state stays private (it was 0644: checkpoint
/// names, payloads and error bodies readable by every user). Failures are left for the
/// open that follows to report.
fn create_private(path: &std::path::Path) {
    create_with_mode(path, 0o600);
}

fn create_with_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Ok(f) = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
    {
        let _ = f.set_permissions(std::fs::Permissions::from_mode(mode));
    }
}

/// `store.group_readable`: create the state file of `url` and its lock file 0640 (the
/// group may read them) when they do not exist. Called before [`SqliteStore::open`], which
/// creates only missing files (0600) and leaves existing ones as they are; SQLite gives the
/// `-wal` and `-shm` files the database file's mode. A store in memory has no files.
pub fn create_group_readable(url: &str) {
    let Ok(opts) = SqliteConnectOptions::from_str(url) else {
        return;
    };
    if url.contains(":memory:") || url.contains("mode=memory") {
        return;
    }
    let db = opts.get_filename();
    let mut lock = db.as_os_str().to_owned();
    lock.push(".lock");
    create_with_mode(std::path::Path::new(&lock), 0o640);
    create_with_mode(db, 0o640);
}

/// The settings every connection of the store opens with (the lease-grade connection
/// then lowers `synchronous`); the burst benchmark's database floor opens with them too.
pub fn tuned(opts: SqliteConnectOptions) -> SqliteConnectOptions {
    opts.journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(true)
        // 8 MiB of page cache per connection instead of 2: a burst's inserts land on
        // random pages of the event id index.
        .pragma("cache_size", "-8192")
        // Statement journals (a multi-row insert's undo log) in memory, not temp files.
        .pragma("temp_store", "memory")
        // Copy the log into the database every ~40 MB instead of every ~4 MB: a burst
        // rewrites the same index pages, and each checkpoint copies them again.
        .pragma("wal_autocheckpoint", "10000")
}

impl SqliteStore {
    /// Open (creating if missing) and migrate. Fails loudly on a file that is not a
    /// loopwatch database, is locked, or cannot be written: never a silent fresh start.
    pub async fn open(url: &str) -> Result<Self> {
        Self::open_with(url, Access::ReadWrite).await
    }

    /// With [`Access::ReadOnly`] the file is opened read-only (SQLite refuses every
    /// write), not migrated and not probed; with anything but `ReadWrite` a missing file
    /// is an error.
    pub async fn open_with(url: &str, access: Access) -> Result<Self> {
        let read_only = access == Access::ReadOnly;
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Open(format!("store.url {url:?}: {e}")))?;
        let path = opts.get_filename();
        let on_disk = !url.contains(":memory:");
        if access != Access::ReadWrite && on_disk && !path.exists() {
            return Err(StoreError::Missing(format!(
                "no loopwatch state at {}: nothing has run with this store.url yet (or the path is wrong)",
                path.display()
            )));
        }
        let lock = if access == Access::ReadWrite && on_disk {
            let lock = lock_exclusive(path)?;
            if !url.contains("mode=memory") {
                create_private(path);
            }
            Some(lock)
        } else {
            None
        };
        let opts = tuned(opts)
            .create_if_missing(access == Access::ReadWrite)
            .read_only(read_only);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.clone())
            .await
            .map_err(|e| StoreError::Open(format!("cannot open {url}: {e}")))?;
        if read_only {
            let applied: Option<i64> =
                sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                    .fetch_one(&pool)
                    .await
                    .map_err(|e| {
                        StoreError::Open(format!("{url} is not a loopwatch state file: {e}"))
                    })?;
            super::require_current(applied, &MIGRATOR, url)?;
        } else {
            MIGRATOR.run(&pool).await?;
            // A write probe: a read-only directory or file fails here, at start, not mid-poll.
            // Its own table: two commands opening at once (two shells approving) must not
            // drop each other's.
            let probe = format!("write_probe_{:x}", super::claim_token());
            sqlx::query(AssertSqlSafe(format!(
                "CREATE TABLE {probe} (x INTEGER); DROP TABLE {probe};"
            )))
            .execute(&pool)
            .await
            .map_err(|e| StoreError::Open(format!("cannot write to {url}: {e}")))?;
        }
        let leases = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts.synchronous(SqliteSynchronous::Normal))
            .await
            .map_err(|e| StoreError::Open(format!("cannot open {url}: {e}")))?;
        Ok(SqliteStore {
            pool,
            leases,
            writes: tokio::sync::Mutex::new(()),
            read_only,
            lanes: LaneTurns::default(),
            clock: ClaimClock::new(),
            _lock: lock,
        })
    }
}

/// Rows per multi-row statement: 16 parameters a row stays far below SQLite's 32,766.
const ROWS_PER_STATEMENT: usize = 500;

/// Claim in `lanes` (one transaction: the lanes' claims stand or fall together), what
/// `ask` asks for, on the claim clock's `clock_ms`: (id, attempts, created_at) of each
/// delivery claimed.
async fn claim_lanes(
    conn: &mut SqliteConnection,
    lanes: [(Lane, usize); 2],
    ask: &ClaimAsk<'_>,
    clock_ms: i64,
) -> Result<Vec<(i64, i64, i64)>> {
    let limit = lanes[1].1;
    let mut tx = conn.begin().await?;
    let mut ids: Vec<(i64, i64, i64)> = Vec::with_capacity(limit);
    for (lane, room) in lanes {
        let room = room.min(limit - ids.len());
        if room == 0 {
            continue;
        }
        // Without statistics (no ANALYZE) SQLite would walk `deliveries_due` over the
        // whole backlog to find the few rows never attempted.
        let hint = match lane {
            Lane::First => " INDEXED BY deliveries_first",
            Lane::Any => "",
        };
        // A row the first lane took is claimed now, so the second cannot take it again.
        let took: Vec<(i64, i64, i64)> = sqlx::query_as(AssertSqlSafe(format!(
            "UPDATE deliveries SET {} WHERE id IN ({}) RETURNING id, attempts, created_at",
            sql::claim_set("$5"),
            sql::due(lane, ask.ordered, hint, "$5")
        )))
        .bind(ask.lease_ms)
        .bind(ask.sink)
        .bind(ask.now_ms)
        .bind(room as i64)
        .bind(clock_ms)
        .bind(ask.token)
        .fetch_all(&mut *tx)
        .await?;
        ids.extend(took);
    }
    tx.commit().await?;
    Ok(ids)
}

/// SQLite's part of the store's roles: its write turn, its two pools and its own clock.
impl Backend for SqliteStore {
    type DB = Sqlite;

    fn reads(&self) -> &SqlitePool {
        &self.pool
    }

    /// In the write turn; a durable write on `pool`, a lease-grade one on `leases`. The
    /// connection is closed after a failed write (see [`Turn::finish`]).
    async fn write(&self, grade: Grade) -> Result<Turn<'_, Sqlite>> {
        let turn = self.writes.lock().await;
        let pool = match grade {
            Grade::Durable => &self.pool,
            Grade::Lease => &self.leases,
        };
        let conn = pool.acquire().await?;
        Ok(Turn::new(conn, Some(turn), true))
    }

    fn clock_base(&self) -> i64 {
        self.clock.now_ms()
    }

    async fn claim_deliveries(&self, ask: &ClaimAsk<'_>) -> Result<Vec<Claimed>> {
        let token = ask.token;
        let mut w = self.write(Grade::Lease).await?;
        let lanes = self.lanes.split(ask.sink, ask.limit);
        let clock = self.clock.now_ms() + super::clock_skew(ask.now);
        let r = claim_lanes(&mut w.conn, lanes, ask, clock).await;
        let ids = w.finish(r)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<i64> = ids.iter().map(|(id, _, _)| *id).collect();
        let read = sqlx::query(AssertSqlSafe(format!(
            "SELECT d.id AS delivery_id, {} FROM deliveries d JOIN events e ON e.seq = d.event_seq
             WHERE d.id IN (SELECT value FROM json_each(?)) ORDER BY e.seq",
            sql::EVENT_COLUMNS
        )))
        .bind(serde_json::to_string(&list).expect("integers serialize"))
        .fetch_all(&self.pool)
        .await;
        let rows = match read {
            Ok(rows) => rows,
            Err(e) => {
                // Not handed out: give the claims back rather than let them wait to lapse.
                let back: Vec<(i64, i64)> = list.iter().map(|id| (*id, token)).collect();
                let _ = Outbox::release(self, &back).await;
                return Err(e.into());
            }
        };
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let delivery_id: i64 = r.try_get("delivery_id")?;
            let (_, attempts, created) = ids
                .iter()
                .find(|(id, _, _)| *id == delivery_id)
                .copied()
                .unwrap_or_default();
            out.push(Claimed {
                delivery_id,
                token,
                attempts: attempts as u32,
                created_at: ms_to_time(created),
                event: event_from_row(r)?,
            });
        }
        Ok(out)
    }

    /// One read of the whole state, not one query per target.
    async fn load_states(&self, names: &[&str]) -> Result<Vec<TargetState>> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let mut target_rows: HashMap<String, (String, Option<String>)> =
            sqlx::query_as::<_, (String, String, Option<String>)>(
                "SELECT name, filter, listing_digest FROM targets",
            )
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|(name, filter, digest)| (name, (filter, digest)))
            .collect();
        // The first position of each name (a repeated name gets a copy at the end).
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(names.len());
        for (i, n) in names.iter().enumerate() {
            index.entry(n).or_insert(i);
        }
        // One row per target, its checkpoints as one JSON array: sqlx hands rows over one at
        // a time between threads with a copy of every value (~3.5 us a row), so 500,000
        // rows cost 1.8 s, and 10,000 rows of JSON a fraction of that.
        let mut rows: Vec<Vec<Tracked>> = names.iter().map(|_| Vec::new()).collect();
        let mut probes: Vec<rows::Probes> = names.iter().map(|_| Default::default()).collect();
        let mut undigested = false;
        let mut stream = sqlx::query(
            "SELECT target, json_group_array(json_array(id, name, run_id, checkpoint_target,
                sync_status, created_at, first_seen_at, completed, stalled, missing, deleted,
                deleted_reported, seq, raw_digest, probe))
             FROM checkpoints GROUP BY target",
        )
        .fetch(&mut *tx);
        while let Some(r) = stream.try_next().await? {
            let Some(&i) = index.get(r.try_get::<&str, _>(0)?) else {
                continue; // a target no longer configured
            };
            let json: &str = r.try_get(1)?;
            let parsed: Vec<JsonRow> = serde_json::from_str(json)
                .map_err(|e| StoreError::Corrupt(format!("checkpoints of {}: {e}", names[i])))?;
            rows[i].reserve_exact(parsed.len());
            for row in parsed {
                let (tracked, missing_digest, probe) = row.tracked()?;
                undigested |= missing_digest;
                if let Some(memo) = probe {
                    probes[i].insert(tracked.id.clone(), memo);
                }
                rows[i].push(tracked);
            }
        }
        drop(stream);
        if undigested {
            // Rows from before `raw_digest`: digest their text once, and keep the digest.
            let old: Vec<(String, String, String)> =
                sqlx::query_as("SELECT target, id, raw FROM checkpoints WHERE raw_digest IS NULL")
                    .fetch_all(&mut *tx)
                    .await?;
            let mut digests: HashMap<(&str, &str), u64> = HashMap::with_capacity(old.len());
            for (target, id, raw) in &old {
                let d = Raw::digest_of(raw);
                digests.insert((target, id), d);
                if self.read_only {
                    continue;
                }
                sqlx::query("UPDATE checkpoints SET raw_digest = ? WHERE target = ? AND id = ?")
                    .bind(d as i64)
                    .bind(target)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            for (name, rows) in names.iter().zip(rows.iter_mut()) {
                for t in rows.iter_mut() {
                    if let Some(d) = digests.get(&(*name, t.id.as_str())) {
                        t.raw = Raw::Digest(*d);
                    }
                }
            }
        }
        tx.commit().await?;
        let mut states: Vec<TargetState> = names
            .iter()
            .zip(rows)
            .zip(probes)
            .map(|((name, rows), probes)| {
                rows::target_state(
                    target_rows.remove(*name),
                    rows.into_iter().collect(),
                    probes,
                )
            })
            .collect();
        for (i, n) in names.iter().enumerate() {
            if index[n] != i {
                states[i] = states[index[n]].clone();
            }
        }
        Ok(states)
    }

    async fn release_every_claim(&self) -> Result<u64> {
        let _turn = self.writes.lock().await;
        let r = sqlx::query(AssertSqlSafe(format!(
            "UPDATE deliveries SET claimed_until = NULL, claim_token = NULL, {}
             WHERE claimed_until IS NOT NULL",
            sql::DUE_AGAIN_AT_1
        )))
        .bind(chrono::Utc::now().timestamp_millis())
        .execute(&self.pool)
        .await?;
        // The follows a crashed process held, too: nobody else follows on this file.
        sqlx::query(
            "UPDATE deploys SET follow_claimed_until = NULL WHERE follow_claimed_until IS NOT NULL",
        )
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }
}

/// What SQLite does differently for the shared queries ([`Dialect`]).
#[path = "sqlite_dialect.rs"]
mod dialect;
use dialect::{ClaimClock, JsonRow};

#[cfg(test)]
#[path = "sqlite_tests.rs"]
mod tests;

//! PostgreSQL for the tests that need it: a fresh database per test on the server that
//! `LOOPWATCH_TEST_PG_URL` names (`scripts/test` and `scripts/with-postgres` start one).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// The server's URL from `LOOPWATCH_TEST_PG_URL`.
///
/// # Panics
/// When it is not set, saying how to get one.
pub fn server_url() -> String {
    std::env::var("LOOPWATCH_TEST_PG_URL").expect(
        "set LOOPWATCH_TEST_PG_URL to a PostgreSQL server, or run scripts/test (it starts one)",
    )
}

/// A fresh, empty database on the server of [`server_url`]; returns its URL.
pub async fn fresh_database() -> String {
    database(&server_url()).await
}

/// A fresh, empty database on the PostgreSQL server at `base` (a URL); returns its URL.
pub async fn database(base: &str) -> String {
    use sqlx::Connection;
    static N: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "lw_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let mut conn = sqlx::PgConnection::connect(base)
        .await
        .expect("connect to LOOPWATCH_TEST_PG_URL");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name}"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let i = base.rfind('/').expect("a database URL");
    format!("{}/{name}", &base[..i])
}

/// The PostgreSQL URL a written config file points at.
pub fn url_in(config: &Path) -> String {
    let text = std::fs::read_to_string(config).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("url = \"postgres"))
        .unwrap();
    line["url = \"".len()..line.len() - 1].to_string()
}

/// Run `pg_ctl ACTION` on the server of [`server_url`] (`scripts/with-postgres` exports
/// where it is), as the user it must run as; waits until it is done (`-w`).
///
/// # Panics
/// When `scripts/with-postgres` did not start the server, or `pg_ctl` fails.
pub fn ctl(action: &str, extra: &[&str]) {
    let var = |n: &str| {
        std::env::var(n).unwrap_or_else(|_| {
            panic!("{n} unset: run under scripts/with-postgres, which exports it")
        })
    };
    let (pg_ctl, data, log) = (
        var("LOOPWATCH_TEST_PG_CTL"),
        var("LOOPWATCH_TEST_PGDATA"),
        var("LOOPWATCH_TEST_PG_LOG"),
    );
    let mut cmd = match std::env::var("LOOPWATCH_TEST_PG_USER") {
        Ok(user) => {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", &user, "--", &pg_ctl]);
            c
        }
        Err(_) => std::process::Command::new(&pg_ctl),
    };
    cmd.args(["-D", &data, "-l", &log, "-w"]);
    if action == "start" {
        // `restart` reuses the options of the running server; `start` needs them again.
        cmd.args(["-o", &var("LOOPWATCH_TEST_PG_OPTS")]);
    }
    cmd.args(extra)
        .arg(action)
        .stdout(std::process::Stdio::null());
    let status = cmd.status().expect("run pg_ctl");
    assert!(status.success(), "pg_ctl {action} {extra:?} failed");
}

/// The address of the server of [`server_url`] (for a proxy in front of it).
pub fn server_addr() -> std::net::SocketAddr {
    let url = server_url();
    let at = url.find('@').expect("a URL with a user") + 1;
    let end = at + url[at..].find('/').expect("a URL with a database");
    url[at..end].parse().expect("host:port of an IP address")
}

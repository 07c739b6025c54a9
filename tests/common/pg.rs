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

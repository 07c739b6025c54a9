//! Shared fixtures for the end-to-end tests: the simulated Loops API (in process), a
//! real webhook receiver over HTTP with scripted answers, a temporary config, and the
//! real `loopwatch` binary as a child process.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use loopwatch::sim::SimApi;

pub const API_KEY: &str = "test-api-key-5f1b";
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_loopwatch")
}

/// Poll `f` every 20 ms until it returns Some or `timeout` passes.
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

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub at: Instant,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, k: &str) -> String {
        self.headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
    pub fn id(&self) -> String {
        self.header("webhook-id")
    }
}

/// A scripted answer: status and optional Retry-After.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub delay: Duration,
}

impl Answer {
    pub fn status(status: u16) -> Self {
        Answer {
            status,
            retry_after: None,
            delay: Duration::ZERO,
        }
    }
}

#[derive(Default)]
struct ReceiverState {
    got: Vec<Received>,
    script: VecDeque<Answer>,
    default: Option<Answer>,
}

/// A webhook receiver on 127.0.0.1 that records every request.
#[derive(Clone)]
pub struct Receiver {
    state: Arc<Mutex<ReceiverState>>,
    pub url: String,
}

async fn handle(
    State(s): State<Arc<Mutex<ReceiverState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let answer = {
        let mut st = s.lock().unwrap();
        st.got.push(Received {
            at: Instant::now(),
            headers,
            body,
        });
        st.script
            .pop_front()
            .or(st.default.clone())
            .unwrap_or(Answer::status(204))
    };
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    let mut r = StatusCode::from_u16(answer.status).unwrap().into_response();
    if let Some(ra) = answer.retry_after {
        r.headers_mut().insert("retry-after", ra.parse().unwrap());
    }
    r
}

impl Receiver {
    pub async fn start() -> Receiver {
        let state = Arc::new(Mutex::new(ReceiverState::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let app = Router::new()
            .route("/hook", post(handle))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { state, url }
    }
    /// Answer the next requests with these, in order, then with the default.
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.state.lock().unwrap().script.extend(answers);
    }
    pub fn set_default(&self, a: Option<Answer>) {
        self.state.lock().unwrap().default = a;
    }
    pub fn got(&self) -> Vec<Received> {
        self.state.lock().unwrap().got.clone()
    }
    pub fn count(&self) -> usize {
        self.state.lock().unwrap().got.len()
    }
}

/// A temporary directory holding the config and the SQLite file.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub sim: SimApi,
}

impl Env {
    pub async fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
            sim: SimApi::start(Some(API_KEY.into())).await.unwrap(),
        }
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("state.db")
    }

    /// Write a config: fast polling against the simulator, state in the temp dir, plus
    /// `extra` TOML (targets and sinks).
    pub fn write_config(&self, extra: &str) -> PathBuf {
        let text = format!(
            r#"
[api]
base_url = "{api}"
timeout = "2s"
max_requests_per_second = 200
[poll]
interval = "200ms"
syncing_interval = "100ms"
jitter = 0.0
[store]
url = "sqlite://{db}"
[server]
listen = "127.0.0.1:0"
[log]
level = "debug"
[delivery]
shutdown_grace = "3s"
{extra}
"#,
            api = self.sim.base_url(),
            db = self.db().display(),
        );
        let path = self.dir.path().join("loopwatch.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn cmd(&self, config: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args)
            .arg("-c")
            .arg(config)
            .env("BASETEN_API_KEY", API_KEY)
            .env("HOOK_SECRET", SECRET)
            .env_remove("RUST_LOG")
            .env_remove("LOOPWATCH_CONFIG");
        c
    }

    /// Run a command to completion (off the async runtime).
    pub async fn run(&self, config: &Path, args: &[&str]) -> Output {
        let mut c = self.cmd(config, args);
        tokio::task::spawn_blocking(move || c.output().unwrap())
            .await
            .unwrap()
    }

    /// Start the daemon; stderr goes to a log file in the temp dir.
    pub fn spawn_daemon(&self, config: &Path) -> Daemon {
        self.spawn_daemon_env(config, &[])
    }

    /// Start the daemon with extra environment variables.
    pub fn spawn_daemon_env(&self, config: &Path, vars: &[(&str, &str)]) -> Daemon {
        let log = self
            .dir
            .path()
            .join(format!("daemon-{}.log", rand_suffix()));
        let f = std::fs::File::create(&log).unwrap();
        let child = self
            .cmd(config, &["run"])
            .envs(vars.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::from(f))
            .spawn()
            .unwrap();
        Daemon {
            child: Some(child),
            log,
        }
    }

    /// The stored events, read directly from the state file, read-only (a read-write
    /// handle would checkpoint the file's log when it closes, in the background, under
    /// a test comparing the file's bytes); none while there is no state file.
    pub async fn events(&self) -> Vec<loopwatch::store::StoredEvent> {
        use loopwatch::store::{Access, Store, StoreError};
        let url = format!("sqlite://{}", self.db().display());
        match loopwatch::store::sqlite::SqliteStore::open_with(&url, Access::ReadOnly).await {
            Ok(store) => store.events(None).await.unwrap(),
            Err(StoreError::Missing(_)) => Vec::new(),
            Err(e) => panic!("{e}"),
        }
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The daemon process; killed when dropped.
pub struct Daemon {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// The bound metrics address, from the daemon's log line.
    pub async fn addr(&self) -> String {
        wait_for(
            "the daemon to log its address",
            Duration::from_secs(20),
            || {
                let log = self.log_text();
                let line = log.lines().find(|l| l.contains("serving /metrics"))?;
                let i = line.find("addr=")? + 5;
                Some(line[i..].split_whitespace().next()?.to_string())
            },
        )
        .await
    }
    /// Wait for `/readyz` to answer 200; returns the address.
    pub async fn ready(&self) -> String {
        let addr = self.addr().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(&format!("http://{addr}/readyz")).await.0 != 200 {
            assert!(
                Instant::now() < deadline,
                "never ready: {}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        addr
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
    /// Wait for exit; returns the exit code.
    pub async fn wait(&mut self, timeout: Duration) -> i32 {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                child.kill().ok();
                panic!("daemon did not exit within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub async fn http_get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    let code = r.status().as_u16();
    (code, r.text().await.unwrap())
}

/// A fresh, empty database on the PostgreSQL server at `base` (a URL); returns its URL.
pub async fn pg_database(base: &str) -> String {
    use sqlx::Connection;
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = format!(
        "lw_{}_{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
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

/// The value of one series on a `/metrics` page (0 when absent).
pub async fn metric(addr: &str, series: &str) -> f64 {
    let (_, m) = http_get(&format!("http://{addr}/metrics")).await;
    m.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

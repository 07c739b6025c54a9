//! A test's world: a temporary directory with the config and the SQLite file, the
//! simulated API, and the real `loopwatch` binary run to completion or as a daemon.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use loopwatch::sim::SimApi;

use super::{API_KEY, SECRET, bin, http_get, wait_for};

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

    /// `loopwatch ARGS -c CONFIG` with the secrets of [`API_KEY`] and [`SECRET`] and no
    /// `RUST_LOG` or `LOOPWATCH_CONFIG` from the test's environment.
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

    /// `deliveries list -o json` (of `status` only, if given), run here and now (for the
    /// condition of a [`wait_for`]); None when its output is not JSON.
    pub fn deliveries(&self, config: &Path, status: Option<&str>) -> Option<serde_json::Value> {
        let mut args = vec!["deliveries", "list"];
        if let Some(status) = status {
            args.extend(["--status", status]);
        }
        args.extend(["-o", "json"]);
        let out = self.cmd(config, &args).output().unwrap();
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Start the daemon; stderr goes to a log file in the temp dir.
    pub fn spawn_daemon(&self, config: &Path) -> Daemon {
        self.spawn_daemon_env(config, &[])
    }

    /// Start the daemon under `ulimit -n nofile` (soft and hard), as a unit without
    /// `LimitNOFILE` would run it.
    pub fn spawn_daemon_nofile(&self, config: &Path, nofile: u64) -> Daemon {
        let log = self
            .dir
            .path()
            .join(format!("daemon-{}.log", rand_suffix()));
        let f = std::fs::File::create(&log).unwrap();
        let c = self.cmd(config, &["run"]);
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
            .arg(c.get_program())
            .args(c.get_args())
            .envs(c.get_envs().filter_map(|(k, v)| Some((k, v?))))
            .env_remove("RUST_LOG")
            .env_remove("LOOPWATCH_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::from(f));
        Daemon {
            child: Some(sh.spawn().unwrap()),
            log,
        }
    }

    /// Start the daemon in directory `cwd`, with `config` as given (a relative path is
    /// read from `cwd`), as an operator starts it from the service's directory.
    pub fn spawn_daemon_in(&self, cwd: &Path, config: &Path) -> Daemon {
        let mut c = self.cmd(config, &["run"]);
        c.current_dir(cwd);
        self.spawn_logged(c)
    }

    /// Start the daemon with extra environment variables.
    pub fn spawn_daemon_env(&self, config: &Path, vars: &[(&str, &str)]) -> Daemon {
        let mut c = self.cmd(config, &["run"]);
        c.envs(vars.iter().copied());
        self.spawn_logged(c)
    }

    /// Spawn `c`, its stderr to a log file of its own in the temp dir.
    fn spawn_logged(&self, mut c: Command) -> Daemon {
        let log = self
            .dir
            .path()
            .join(format!("daemon-{}.log", rand_suffix()));
        let f = std::fs::File::create(&log).unwrap();
        let child = c
            .stdout(Stdio::null())
            .stderr(Stdio::from(f))
            .spawn()
            .unwrap();
        Daemon {
            child: Some(child),
            log,
        }
    }

    /// The stored events, read directly from the state file, read-only
    /// ([`super::stored_events`]); none while there is no state file.
    pub async fn events(&self) -> Vec<loopwatch::store::StoredEvent> {
        super::stored_events(&format!("sqlite://{}", self.db().display()), None).await
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

    /// Still running (not exited, not killed)?
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
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

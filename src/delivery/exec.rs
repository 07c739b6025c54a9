//! The exec sink: the standard body on stdin, the event in `LOOPWATCH_*` variables,
//! exit 0 = delivered, killed after `timeout`.
//!
//! The command runs in a process group of its own. Its exit decides the outcome, not the
//! end of its output: a deploy script that leaves a process in the background (holding
//! stderr open) and exits 0 has delivered. On timeout the whole group is killed, so a
//! script's own children do not outlive the attempt.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process_group};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio_util::task::AbortOnDropHandle;

use super::Failure;
use crate::store::StoredEvent;

/// How much of a failed command's stderr the error keeps (its end).
const STDERR_TAIL: usize = 500;

/// How long to wait, after a failed command exited, for the rest of its stderr (a child
/// still holding the pipe must not hold the attempt).
const STDERR_LINGER: Duration = Duration::from_millis(200);

pub async fn run(
    command: &[String],
    event: &StoredEvent,
    timeout: Duration,
) -> Result<u16, Failure> {
    let vars = [
        ("LOOPWATCH_EVENT_ID", event.id.clone()),
        ("LOOPWATCH_EVENT_TYPE", event.kind.clone()),
        ("LOOPWATCH_CHECKPOINT_ID", event.checkpoint_id.clone()),
        ("LOOPWATCH_CHECKPOINT_NAME", event.checkpoint_name.clone()),
        ("LOOPWATCH_CHECKPOINT_URI", event.uri().unwrap_or_default()),
        ("LOOPWATCH_RUN_ID", event.run_id.clone()),
        ("LOOPWATCH_TARGET", event.target.clone()),
    ];
    // What the OS cannot carry fails the same way on every attempt: a permanent failure
    // (dead at once, with the reason), not a retry for days.
    if let Some((name, _)) = vars.iter().find(|(_, v)| v.contains('\0')) {
        return Err(Failure::Payload(format!(
            "{name} would contain a NUL byte, which no environment variable can carry"
        )));
    }
    let mut child = Command::new(&command[0])
        .args(&command[1..])
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::TOOBIG.raw_os_error()) {
                let longest = vars.iter().max_by_key(|(_, v)| v.len()).expect("not empty");
                Failure::Payload(format!(
                    "the OS refuses the command's environment as too large (E2BIG; {} is {} bytes)",
                    longest.0,
                    longest.1.len()
                ))
            } else {
                Failure::Exec(format!("cannot start {}: {e}", command[0]))
            }
        })?;
    // Its own group (the group id is the child's pid), killed whenever this attempt ends
    // without the command succeeding: on timeout, on failure, and when the attempt is
    // dropped (shutdown's grace over). A command that succeeded keeps what it started.
    let group = GroupKill(child.id().and_then(|id| Pid::from_raw(id as i32)));
    let tail = Arc::new(Mutex::new(Vec::new()));
    let mut reader = AbortOnDropHandle::new(tokio::spawn(keep_tail(
        child.stderr.take().expect("piped"),
        tail.clone(),
    )));
    // stdin is written beside the wait: a command that exits without reading a large
    // body, leaving a child that inherited the pipe, must not hold the attempt.
    let mut stdin = child.stdin.take().expect("piped");
    let body = event.body.clone();
    let _writer = AbortOnDropHandle::new(tokio::spawn(async move {
        // A command that ignores stdin must not fail the delivery: a broken pipe is fine.
        let _ = stdin.write_all(body.as_bytes()).await;
    }));
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => return Err(Failure::Exec(format!("waiting for {}: {e}", command[0]))),
        Err(_) => {
            drop(group);
            let _ = child.wait().await;
            return Err(Failure::Timeout);
        }
    };
    if status.success() {
        group.disarm();
        return Ok(0);
    }
    let _ = tokio::time::timeout(STDERR_LINGER, &mut reader).await;
    drop(group);
    let tail = tail.lock().expect("not poisoned");
    let tail = String::from_utf8_lossy(&tail[tail.len().saturating_sub(STDERR_TAIL)..])
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    Err(Failure::Exec(format!(
        "{} exited with {status}; stderr: {tail}",
        command[0]
    )))
}

/// SIGKILL to a process group when dropped, unless disarmed.
struct GroupKill(Option<Pid>);

impl GroupKill {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(g) = self.0 {
            // ESRCH (the group is gone) is the common case and fine.
            let _ = kill_process_group(g, Signal::KILL);
        }
    }
}

/// Read `stderr` to its end, keeping the last [`STDERR_TAIL`] bytes in `tail`.
async fn keep_tail(mut stderr: tokio::process::ChildStderr, tail: Arc<Mutex<Vec<u8>>>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = stderr.read(&mut buf).await
        && n > 0
    {
        let mut t = tail.lock().expect("not poisoned");
        t.extend_from_slice(&buf[..n]);
        if t.len() > 2 * STDERR_TAIL {
            let cut = t.len() - STDERR_TAIL;
            t.drain(..cut);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> StoredEvent {
        StoredEvent {
            seq: 1,
            id: "evt_test".into(),
            kind: "checkpoint.completed".into(),
            target: "qwen".into(),
            checkpoint_id: "ckpt-1".into(),
            checkpoint_name: "step-100".into(),
            run_id: "run-1".into(),
            checkpoint_target: "sampler".into(),
            detected_at: chrono::DateTime::UNIX_EPOCH,
            body: "{}".into(),
        }
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    #[tokio::test]
    async fn exit_zero_is_delivered_even_with_a_child_left_holding_stderr() {
        // This waited for stderr to close: "timed out", then dead.
        let r = run(
            &sh("cat >/dev/null; sleep 30 & exit 0"),
            &event(),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(r.ok(), Some(0));
    }

    #[tokio::test]
    async fn an_environment_the_os_refuses_is_a_permanent_failure() {
        let mut ev = event();
        ev.checkpoint_name = "step\0-1".into();
        let r = run(&sh("exit 0"), &ev, Duration::from_secs(5)).await;
        let Err(f @ Failure::Payload(msg)) = &r else {
            panic!("{r:?}")
        };
        assert!(f.is_permanent());
        assert!(
            msg.contains("LOOPWATCH_CHECKPOINT_NAME") && msg.contains("NUL"),
            "{msg}"
        );
        // A megabyte in one variable: over Linux's 128 KiB per string, E2BIG.
        ev.checkpoint_name = "x".repeat(1 << 20);
        let r = run(&sh("exit 0"), &ev, Duration::from_secs(5)).await;
        let Err(f @ Failure::Payload(msg)) = &r else {
            panic!("{r:?}")
        };
        assert!(f.is_permanent());
        assert!(msg.contains("E2BIG"), "{msg}");
        // A command that is not there is for the operator to fix: it is retried.
        let r = run(
            &["/nonexistent/deploy".to_string()],
            &event(),
            Duration::from_secs(5),
        )
        .await;
        assert!(matches!(&r, Err(Failure::Exec(_))), "{r:?}");
    }

    #[tokio::test]
    async fn a_failure_reports_the_end_of_stderr() {
        let r = run(
            &sh("echo 'deploy failed:' >&2; echo quota exceeded >&2; exit 3"),
            &event(),
            Duration::from_secs(5),
        )
        .await;
        let Err(Failure::Exec(msg)) = r else {
            panic!("{r:?}")
        };
        assert!(msg.contains("exit status: 3"), "{msg}");
        assert!(
            msg.ends_with("stderr: deploy failed: quota exceeded"),
            "{msg}"
        );
    }

    /// A command that starts a long child, writes its pid to `<dir>/pid` and waits.
    fn with_child(dir: &tempfile::TempDir) -> (Vec<String>, std::path::PathBuf) {
        let pidfile = dir.path().join("pid");
        let script = format!("sleep 60 & echo $! > {}; wait", pidfile.display());
        (sh(&script), pidfile)
    }

    #[tokio::test]
    async fn a_timeout_kills_the_commands_children_too() {
        let dir = tempfile::tempdir().unwrap();
        let (cmd, pidfile) = with_child(&dir);
        let r = run(&cmd, &event(), Duration::from_secs(3)).await;
        assert!(matches!(r, Err(Failure::Timeout)), "{r:?}");
        assert_killed(&std::fs::read_to_string(&pidfile).unwrap()).await;
    }

    #[tokio::test]
    async fn a_dropped_attempt_kills_the_commands_children_too() {
        // Shutdown's grace over: the attempt's future is dropped mid-run.
        let dir = tempfile::tempdir().unwrap();
        let (cmd, pidfile) = with_child(&dir);
        let ev = event();
        let attempt = run(&cmd, &ev, Duration::from_secs(60));
        let written = async {
            while std::fs::read_to_string(&pidfile).map_or(true, |p| p.trim().is_empty()) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::select! {
            r = attempt => panic!("finished: {r:?}"),
            () = written => {}
        }
        assert_killed(&std::fs::read_to_string(&pidfile).unwrap()).await;
    }

    #[tokio::test]
    async fn a_large_body_unread_does_not_hold_a_successful_exit() {
        // The body was written before waiting: a command that exits 0 without reading
        // it, leaving a child holding stdin, timed out.
        let mut ev = event();
        ev.body = "x".repeat(1 << 20);
        let r = run(&sh("sleep 30 & exit 0"), &ev, Duration::from_secs(5)).await;
        assert_eq!(r.ok(), Some(0));
    }

    /// The process is gone, or a zombie until whoever adopted it reaps it.
    async fn assert_killed(pid: &str) {
        let stat = format!("/proc/{}/stat", pid.trim());
        // Killed: gone, or a zombie until whoever adopted it reaps it.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let alive = std::fs::read_to_string(&stat)
                .map(|s| {
                    !s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(false);
            if !alive {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the script's child survived the timeout"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

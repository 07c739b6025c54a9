//! The exec sink: the standard body on stdin, the event in `LOOPWATCH_*` variables,
//! exit 0 = delivered, killed after `timeout`.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::Failure;
use crate::store::StoredEvent;

pub async fn run(
    command: &[String],
    event: &StoredEvent,
    timeout: Duration,
) -> Result<u16, Failure> {
    let mut child = Command::new(&command[0])
        .args(&command[1..])
        .env("LOOPWATCH_EVENT_ID", &event.id)
        .env("LOOPWATCH_EVENT_TYPE", &event.kind)
        .env("LOOPWATCH_CHECKPOINT_ID", &event.checkpoint_id)
        .env("LOOPWATCH_CHECKPOINT_NAME", &event.checkpoint_name)
        .env("LOOPWATCH_CHECKPOINT_URI", event.uri())
        .env("LOOPWATCH_RUN_ID", &event.run_id)
        .env("LOOPWATCH_TARGET", &event.target)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Failure::Exec(format!("cannot start {}: {e}", command[0])))?;
    let mut stdin = child.stdin.take().expect("piped");
    let body = event.body.clone();
    let run = async move {
        // A command that ignores stdin must not fail the delivery: a broken pipe is fine.
        let _ = stdin.write_all(body.as_bytes()).await;
        drop(stdin);
        child.wait_with_output().await
    };
    match tokio::time::timeout(timeout, run).await {
        // Dropping the future dropped the child, and kill_on_drop killed it.
        Err(_) => Err(Failure::Timeout),
        Ok(Err(e)) => Err(Failure::Exec(format!("waiting for {}: {e}", command[0]))),
        Ok(Ok(out)) if out.status.success() => Ok(0),
        Ok(Ok(out)) => {
            let tail = String::from_utf8_lossy(&out.stderr[out.stderr.len().saturating_sub(500)..])
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            Err(Failure::Exec(format!(
                "{} exited with {}; stderr: {tail}",
                command[0], out.status
            )))
        }
    }
}

//! `loopwatch deliveries approve` / `reject` (docs/cli.md): a person's decision on deploys
//! waiting for approval, as a library function the CLI calls, and the lines it prints,
//! which the demo prints too when it approves in-process. The decision is one
//! transaction in the store ([`crate::store::Pipelines::decide`]): every id given is
//! decided, or, when any names nothing waiting, none is and each such id is named with its
//! stage (exit 1).

use chrono::Utc;
use serde_json::json;

use crate::cli::{Output, exit};
use crate::config::Config;
use crate::model::{CheckpointTarget, checkpoint_uri};
use crate::store::{self, Access, Decided, Decision, DeployStage, Pipelines, Undecided, Verdict};

/// The longest `--by` and `--reason` kept (they are shown in events and tables).
const MAX_BY: usize = 200;
const MAX_REASON: usize = 1000;

/// What is wrong with `--by` or `--reason`, if anything: one line.
pub fn check_args(by: &str, reason: Option<&str>) -> Option<String> {
    let bad = |s: &str| s.chars().any(char::is_control);
    if by.trim().is_empty() {
        return Some("--by: say who decides (e.g. --by alice)".into());
    }
    if by.chars().count() > MAX_BY || bad(by) {
        return Some(format!(
            "--by: at most {MAX_BY} characters, on one line, without control characters"
        ));
    }
    if let Some(r) = reason
        && (r.chars().count() > MAX_REASON || bad(r))
    {
        return Some(format!(
            "--reason: at most {MAX_REASON} characters, on one line, without control characters"
        ));
    }
    None
}

/// One line saying what a decision did to pipeline `d`.
pub fn describe(d: &Decided) -> String {
    let row = &d.deploy;
    let what = checkpoint_uri(
        &row.run_id,
        &CheckpointTarget::Sampler,
        &row.checkpoint_name,
    )
    .unwrap_or_else(|| row.checkpoint_name.clone());
    let by = row.decided_by.as_deref().unwrap_or("?");
    let head = format!("delivery {} ({what}, sink {})", row.delivery_id, row.sink);
    match row.stage {
        DeployStage::Deploying => format!(
            "approved {head} by {by}: a running daemon (or the next `loopwatch once`) deploys it now"
        ),
        DeployStage::Active => format!(
            "approved {head} by {by}: a running daemon (or the next `loopwatch once`) promotes it now"
        ),
        _ => format!("rejected {head} by {by}: nothing more is done"),
    }
}

/// Why nothing was decided, as the one line an error is: each id that names nothing
/// waiting, with its stage or status, then that the others were left alone too.
pub fn refusal(undecided: &[Undecided], decision: &Decision) -> String {
    let why: Vec<&str> = undecided.iter().map(|u| u.why.as_str()).collect();
    format!(
        "{}; nothing was {} (`loopwatch deploys` shows each pipeline's stage)",
        why.join("; "),
        decision.verdict.as_str()
    )
}

/// `deliveries approve|reject IDS --by NAME [--reason TEXT]`.
pub async fn decide(
    cfg: &Config,
    verdict: Verdict,
    ids: Vec<String>,
    by: String,
    reason: Option<String>,
    output: Output,
) -> anyhow::Result<u8> {
    if let Some(problem) = check_args(&by, reason.as_deref()) {
        eprintln!("error: {problem}");
        return Ok(exit::USAGE);
    }
    let store = store::open_with(&cfg.store.url, Access::Existing).await?;
    let decision = Decision {
        verdict,
        by: by.trim().to_string(),
        reason: reason
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty()),
        at: Utc::now(),
    };
    decide_in(store.as_ref(), &ids, &decision, output).await
}

/// Decide in `store` and print what happened: the CLI's work, which the demo runs
/// in-process. Exit 1 (nothing changed) when any id names nothing waiting.
pub async fn decide_in(
    store: &dyn Pipelines,
    ids: &[String],
    decision: &Decision,
    output: Output,
) -> anyhow::Result<u8> {
    match store.decide(ids, decision).await? {
        Ok(decided) => {
            match output {
                Output::Json => println!("{:#}", json!({ "decided": decided })),
                Output::Table => {
                    for d in &decided {
                        println!("{}", crate::text::escape(&describe(d)));
                    }
                }
            }
            Ok(exit::OK)
        }
        Err(undecided) => {
            eprintln!(
                "error: {}",
                crate::text::escape(&refusal(&undecided, decision))
            );
            Ok(exit::FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_and_reason_are_one_bounded_line() {
        assert_eq!(check_args("alice", Some("looks good")), None);
        assert!(check_args("  ", None).unwrap().starts_with("--by"));
        assert!(check_args("al\nice", None).unwrap().starts_with("--by"));
        assert!(check_args(&"x".repeat(201), None).is_some());
        assert!(
            check_args("alice", Some("a\u{1b}[31m"))
                .unwrap()
                .starts_with("--reason")
        );
    }
}

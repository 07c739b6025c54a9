//! `loopwatch deploys`: each deploy pipeline of the `baseten_deploy` sinks (read-only).

use super::{Output, print_table, read_only_store};
use crate::config::Config;
use crate::model::rfc3339;
use crate::store;

/// `deploys`: each deploy pipeline, newest first (the newest 10,000).
pub async fn deploys(cfg: &Config, sink: Option<&str>, output: Output) -> anyhow::Result<u8> {
    let rows = match read_only_store(cfg).await? {
        Some(store) => store.list_deploys(sink, 10_000).await?,
        None => Vec::new(),
    };
    match output {
        Output::Json => {
            // While one waits: the line that approves it, naming the config file read here.
            let how = cfg.invocation();
            let views: Vec<_> = rows
                .iter()
                .map(|d| store::deploys::DeployView::of(d, &how))
                .collect();
            println!("{}", serde_json::to_string_pretty(&views)?)
        }
        Output::Table => {
            let rows = rows
                .into_iter()
                .map(|d| {
                    let uri = crate::model::checkpoint_uri(
                        &d.run_id,
                        &crate::model::CheckpointTarget::Sampler,
                        &d.checkpoint_name,
                    );
                    let approval = match (&d.decision, &d.decided_by, d.approval_deadline) {
                        (Some(v), Some(by), _) => format!("{v} by {by}"),
                        _ if d.stage == store::DeployStage::AwaitingApproval => {
                            format!(
                                "waiting until {}",
                                d.approval_deadline.map(rfc3339).unwrap_or_default()
                            )
                        }
                        _ => String::new(),
                    };
                    vec![
                        d.delivery_id.to_string(),
                        d.sink,
                        uri.unwrap_or(d.checkpoint_name),
                        d.stage.as_str().into(),
                        d.model_id.unwrap_or_else(|| "-".into()),
                        d.deployment_id.unwrap_or_else(|| "-".into()),
                        d.deployment_status.unwrap_or_else(|| "-".into()),
                        // A call whose outcome is not known yet: reconciled before anything else.
                        match (d.reconciled, &d.in_doubt_before) {
                            (true, _) => "yes",
                            (false, Some(_)) => "in doubt",
                            (false, None) => "",
                        }
                        .into(),
                        approval,
                        rfc3339(d.updated_at),
                        d.error.unwrap_or_default(),
                    ]
                })
                .collect();
            print_table(
                &[
                    "DELIVERY",
                    "SINK",
                    "CHECKPOINT",
                    "STAGE",
                    "MODEL",
                    "DEPLOYMENT",
                    "STATUS",
                    "RECONCILED",
                    "APPROVAL",
                    "UPDATED",
                    "ERROR",
                ],
                rows,
            );
        }
    }
    Ok(0)
}

//! `keyfedctl audit`: the node's audit trail of administrator actions (b06).
use crate::render::{emit, table};
use crate::{admin, Cli};
use keyfed_proto::v1 as pb;

pub async fn audit(cli: &Cli, after: u64, limit: u32) -> anyhow::Result<()> {
    let r = admin(cli)
        .await?
        .list_audit(pb::ListAuditRequest {
            after_seq: after,
            limit,
        })
        .await?
        .into_inner();
    emit(cli.json, &r, |r| {
        let rows: Vec<Vec<String>> = r
            .entries
            .iter()
            .map(|e| {
                vec![
                    e.seq.to_string(),
                    e.at.clone(),
                    e.actor.clone(),
                    e.action.clone(),
                    e.outcome.clone(),
                    e.detail.clone(),
                ]
            })
            .collect();
        table(
            &["SEQ", "AT", "ACTOR", "ACTION", "OUTCOME", "DETAIL"],
            &rows,
        )
    });
    Ok(())
}

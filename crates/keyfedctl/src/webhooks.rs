//! `keyfedctl webhooks`: each configured webhook and its delivery queue
//! (issue 12): how many notifications wait, what was delivered, the last
//! error and when the next attempt is due.
use crate::render::{emit, table};
use crate::{admin, Cli};
use keyfed_proto::v1 as pb;

pub async fn webhooks(cli: &Cli) -> anyhow::Result<()> {
    let r = admin(cli)
        .await?
        .list_webhooks(pb::Empty {})
        .await?
        .into_inner();
    emit(cli.json, &r, |r| {
        let rows: Vec<Vec<String>> = r.webhooks.iter().map(row).collect();
        table(
            &[
                "NAME",
                "URL",
                "EVENTS",
                "PENDING",
                "DELIVERED",
                "THROUGH SEQ",
                "FAILED",
                "LAST DELIVERY",
                "NEXT ATTEMPT",
                "LAST ERROR",
            ],
            &rows,
        )
    });
    Ok(())
}

fn row(w: &pb::WebhookInfo) -> Vec<String> {
    let or_dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    vec![
        w.name.clone(),
        w.url.clone(),
        if w.events.is_empty() {
            "all".to_owned()
        } else {
            w.events.join(",")
        },
        w.pending.to_string(),
        w.delivered.to_string(),
        w.delivered_seq.to_string(),
        w.failed_attempts.to_string(),
        or_dash(&w.last_delivery_at),
        or_dash(&w.next_attempt_at),
        or_dash(&w.last_error),
    ]
}

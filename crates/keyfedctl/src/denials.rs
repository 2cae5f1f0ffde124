//! `keyfedctl denials`: refused station connections and assignments, as
//! the node recorded them (issue 12), as a table, JSON or CSV.
use crate::render::{emit, table};
use crate::{admin, Cli};
use clap::Args;
use keyfed_proto::v1 as pb;

#[derive(Args)]
pub struct DenialsArgs {
    /// only this reason, e.g. no-free-seats, key-expired, tenant-quota
    #[arg(long, default_value = "")]
    pub reason: String,
    /// only denials after this sequence number
    #[arg(long, default_value_t = 0)]
    pub after: u64,
    /// at most this many (0: up to 1000)
    #[arg(long, default_value_t = 0)]
    pub limit: u32,
    /// CSV (RFC 4180) with the proto field names as header
    #[arg(long)]
    pub csv: bool,
}

pub async fn denials(cli: &Cli, a: &DenialsArgs) -> anyhow::Result<()> {
    let r = admin(cli)
        .await?
        .list_denials(pb::ListDenialsRequest {
            after_seq: a.after,
            limit: a.limit,
            reason: a.reason.clone(),
        })
        .await?
        .into_inner();
    if a.csv && cli.json {
        anyhow::bail!("--csv and --json both ask for the output format: give one");
    }
    if a.csv {
        print!("{}", keyfed_proto::csv::denials(&r.denials));
        return Ok(());
    }
    emit(cli.json, &r, |r| {
        let rows: Vec<Vec<String>> = r
            .denials
            .iter()
            .map(keyfed_proto::csv::denial_row)
            .collect();
        let mut out = table(
            &[
                "SEQ", "AT", "KIND", "OBJECT", "KEY", "NODE", "REASON", "MESSAGE",
            ],
            &rows,
        );
        let counts: Vec<String> = r
            .counts_by_reason
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        out.push_str(&format!(
            "dropped (oldest, beyond the cap): {}; by reason: {}\n",
            r.dropped,
            if counts.is_empty() {
                "none".to_owned()
            } else {
                counts.join(", ")
            }
        ));
        out
    });
    Ok(())
}

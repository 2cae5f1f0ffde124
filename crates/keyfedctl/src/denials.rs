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
    if a.csv {
        print!("{}", to_csv(&r.denials));
        return Ok(());
    }
    emit(cli.json, &r, |r| {
        let rows: Vec<Vec<String>> = r
            .denials
            .iter()
            .map(|d| {
                vec![
                    d.seq.to_string(),
                    d.at.clone(),
                    d.kind.clone(),
                    d.object.clone(),
                    d.key_id.clone(),
                    d.node_id.clone(),
                    d.reason.clone(),
                    d.message.clone(),
                ]
            })
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

/// RFC 4180: a field with a comma, quote or line break is quoted, quotes doubled.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// The same columns as `GET /api/v1/denials?format=csv`: `Denial`'s
/// fields in proto order.
fn to_csv(denials: &[pb::Denial]) -> String {
    let mut out = String::from("seq,at,kind,object,key_id,node_id,reason,message\r\n");
    for d in denials {
        let row = [
            d.seq.to_string(),
            d.at.clone(),
            d.kind.clone(),
            d.object.clone(),
            d.key_id.clone(),
            d.node_id.clone(),
            d.reason.clone(),
            d.message.clone(),
        ];
        let row: Vec<String> = row.iter().map(|f| csv_field(f)).collect();
        out.push_str(&row.join(","));
        out.push_str("\r\n");
    }
    out
}

//! `keyfedctl usage history`: the usage samples over time (issue 12), as a
//! table, JSON (`--json`, the protobuf JSON mapping) or CSV (`--csv`, the
//! API's columns).
use crate::render::{emit, table};
use crate::{admin, Cli};
use clap::{Args, Subcommand};
use keyfed_proto::v1 as pb;

/// Room for the largest answer a node gives (about 70 bytes a point).
const REPLY_LIMIT: usize = 16 * 1024 * 1024;

#[derive(Subcommand)]
pub enum UsageCmd {
    /// seats held, used and free over time: 5-minute points for 7 days,
    /// hourly for 90 days, daily for 18 months (the peak used of each span)
    History(HistoryArgs),
}

#[derive(Args)]
pub struct HistoryArgs {
    /// one key only [default: every key] (`--key` is the TLS client key)
    #[arg(long, value_name = "ID")]
    key_id: Option<String>,
    /// RFC 3339, inclusive [default: the oldest the resolution keeps]
    #[arg(long, value_name = "T")]
    from: Option<String>,
    /// RFC 3339, exclusive [default: now]
    #[arg(long, value_name = "T")]
    to: Option<String>,
    /// a child's or neighbor's subtree row [default: this node's own]
    #[arg(long, value_name = "N", conflicts_with = "tree")]
    node: Option<String>,
    /// this node's rows and every subtree row
    #[arg(long)]
    tree: bool,
    /// 5m, 1h or 1d [default: the finest that keeps --from]
    #[arg(long)]
    resolution: Option<String>,
    /// print CSV (header row, RFC 4180)
    #[arg(long)]
    csv: bool,
}

pub async fn usage(cli: &Cli, cmd: &UsageCmd) -> anyhow::Result<()> {
    let UsageCmd::History(a) = cmd;
    if a.csv && cli.json {
        anyhow::bail!("--csv and --json both ask for the output format: give one");
    }
    let node_id = match (&a.node, a.tree) {
        (Some(n), _) => n.clone(),
        (None, true) => "*".into(),
        (None, false) => String::new(),
    };
    let req = pb::UsageHistoryRequest {
        key_id: a.key_id.clone().unwrap_or_default(),
        from: a.from.clone().unwrap_or_default(),
        to: a.to.clone().unwrap_or_default(),
        node_id,
        resolution: a.resolution.clone().unwrap_or_default(),
    };
    // a full answer (100 000 points) is larger than tonic's 4 MiB default
    let r = admin(cli)
        .await?
        .max_decoding_message_size(REPLY_LIMIT)
        .usage_history(req)
        .await?
        .into_inner();
    if a.csv {
        print!("{}", keyfed_proto::csv::usage_points(&r.points));
        return Ok(());
    }
    emit(cli.json, &r, |r| {
        let rows: Vec<Vec<String>> = r
            .points
            .iter()
            .map(|p| {
                vec![
                    p.at.clone(),
                    p.node_id.clone(),
                    p.key_id.clone(),
                    p.held.to_string(),
                    p.used.to_string(),
                    p.free.to_string(),
                ]
            })
            .collect();
        format!(
            "{}resolution {}\n",
            table(&["AT", "NODE", "KEY", "HELD", "USED", "FREE"], &rows),
            r.resolution
        )
    });
    Ok(())
}

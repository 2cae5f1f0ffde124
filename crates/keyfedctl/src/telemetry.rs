//! `keyfedctl telemetry` (on a node, or `upload` on the upstream too) and
//! `keyfedctl compliance` (on the upstream): t01-t03.
use crate::render::{emit, table};
use crate::{admin, upstream, Cli};
use anyhow::Context;
use clap::Subcommand;
use keyfed_proto::v1 as pb;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum TelemetryCmd {
    /// last accepted report, next due date and days left
    Status,
    /// write the pending usage report as a signed file (air-gapped nodes)
    Export {
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
    },
    /// deliver a telemetry file: --addr the upstream, or any node that forwards it up
    Upload { file: PathBuf },
}

#[derive(Subcommand)]
pub enum ComplianceCmd {
    /// exempt CUSTOMER from telemetry (--off to undo)
    Exempt {
        customer: String,
        #[arg(long)]
        off: bool,
    },
}

pub async fn telemetry(cli: &Cli, cmd: &TelemetryCmd) -> anyhow::Result<()> {
    let json = cli.json;
    match cmd {
        TelemetryCmd::Status => {
            let s = admin(cli)
                .await?
                .telemetry_status(pb::Empty {})
                .await?
                .into_inner();
            emit(json, &s, |s| {
                let or_none = |v: &str| {
                    if v.is_empty() {
                        "-".to_owned()
                    } else {
                        v.to_owned()
                    }
                };
                let mut out = table(
                    &[
                        "NODE",
                        "MODE",
                        "LAST ACCEPTED",
                        "REPORT",
                        "NEXT DUE",
                        "DAYS LEFT",
                    ],
                    &[vec![
                        s.node_id.clone(),
                        s.mode.clone(),
                        or_none(&s.last_accepted),
                        or_none(&s.last_accepted_report_id),
                        s.next_due.clone(),
                        s.days_left.to_string(),
                    ]],
                );
                out.push_str(&format!(
                    "installed {} (version {}); pending period from {}\n",
                    s.installed_at, s.version, s.period_start
                ));
                if !s.last_error.is_empty() {
                    out.push_str(&format!(
                        "last attempt {} failed: {}\n",
                        s.last_attempt, s.last_error
                    ));
                }
                for id in &s.exported_report_ids {
                    out.push_str(&format!("exported, not yet known accepted: {id}\n"));
                }
                if s.days_left < 0 {
                    out.push_str("warning: the usage report is overdue\n");
                }
                out
            });
        }
        TelemetryCmd::Export { output } => {
            let f = admin(cli)
                .await?
                .export_telemetry(pb::Empty {})
                .await?
                .into_inner();
            let id = f
                .text
                .lines()
                .find_map(|l| l.strip_prefix("report: "))
                .unwrap_or_default()
                .to_owned();
            match (json, output) {
                (true, _) => emit(true, &f, |_| String::new()),
                (false, None) => print!("{}", f.text),
                (false, Some(_)) => {}
            }
            if let Some(path) = output {
                std::fs::write(path, &f.text)
                    .with_context(|| format!("writing {}", path.display()))?;
                if !json {
                    println!("{id}");
                }
            }
        }
        TelemetryCmd::Upload { file } => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading telemetry file {}", file.display()))?;
            let receipt = upload(cli, text).await?;
            emit(json, &receipt, |r| {
                let dup = if r.duplicate {
                    " (duplicate: already counted once)"
                } else {
                    ""
                };
                format!(
                    "report {} of node {} accepted via {}{dup}\n",
                    r.report_id, r.node_id, r.via
                )
            });
        }
    }
    Ok(())
}

/// A node takes Admin.UploadTelemetry; the upstream has no Admin service,
/// so an UNIMPLEMENTED answer means "this is the upstream".
async fn upload(cli: &Cli, text: String) -> anyhow::Result<pb::TelemetryReceipt> {
    let mut node = admin(cli).await?;
    match node
        .upload_telemetry(pb::TelemetryFile { text: text.clone() })
        .await
    {
        Ok(r) => Ok(r.into_inner()),
        Err(s) if s.code() == tonic::Code::Unimplemented => {
            let ack = upstream(cli)
                .await?
                .submit_telemetry(pb::TelemetrySubmission { text })
                .await?
                .into_inner();
            Ok(pb::TelemetryReceipt {
                report_id: ack.report_id,
                duplicate: ack.duplicate,
                node_id: ack.node_id,
                via: "upstream".into(),
            })
        }
        Err(s) => Err(s.into()),
    }
}

pub async fn compliance(
    cli: &Cli,
    customer: Option<&String>,
    cmd: Option<&ComplianceCmd>,
) -> anyhow::Result<()> {
    let json = cli.json;
    let mut client = upstream(cli).await?;
    if let Some(ComplianceCmd::Exempt { customer, off }) = cmd {
        client
            .set_exempt(pb::SetExemptRequest {
                customer: customer.clone(),
                exempt: !off,
            })
            .await?;
        let word = if *off { "no longer exempt" } else { "exempt" };
        emit(
            json,
            &serde_json::json!({ "customer": customer, "exempt": !off }),
            |_| format!("{customer} is {word}\n"),
        );
        return Ok(());
    }
    let r = client
        .compliance(pb::ComplianceRequest {
            customer: customer.cloned().unwrap_or_default(),
        })
        .await?
        .into_inner();
    emit(json, &r, |r| {
        let rows: Vec<Vec<String>> = r
            .customers
            .iter()
            .map(|c| {
                let days = if c.state == "non-compliant" {
                    format!(
                        "{} day(s) of provisional period left",
                        c.provisional_days_left
                    )
                } else {
                    "-".into()
                };
                let current = c.servers.iter().filter(|s| s.current).count();
                vec![
                    c.customer.clone(),
                    c.state.clone(),
                    format!("{current}/{}", c.servers.len()),
                    if c.missing_servers.is_empty() {
                        "-".into()
                    } else {
                        c.missing_servers.join(",")
                    },
                    days,
                ]
            })
            .collect();
        table(
            &["CUSTOMER", "STATE", "REPORTING", "MISSING", "PROVISIONAL"],
            &rows,
        )
    });
    Ok(())
}

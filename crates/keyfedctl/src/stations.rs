//! `keyfedctl stations | command | settings | report | subscription`: the
//! station side and the life of keys (o01–o05, b03, e04–e07).
use crate::render::{emit, table};
use crate::{admin, Cli};
use anyhow::Context;
use clap::Subcommand;
use keyfed_proto::v1 as pb;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum CommandCmd {
    /// queue COMMAND for a station (fingerprint) or a child node (o03)
    Queue { object: String, command: String },
    /// pending, sent, delivered and dropped commands
    List,
}

#[derive(Subcommand)]
pub enum SettingsCmd {
    /// the settings every station gets, with their version
    Show,
    /// replace the station settings (reach offline stations on reconnect, o05)
    Set {
        /// the settings text; or --file
        text: Option<String>,
        #[arg(long, conflicts_with = "text")]
        file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum ReportCmd {
    /// every subscription per tenant: start, end, state, seats, use (e07)
    Subscriptions,
}

#[derive(Subcommand)]
pub enum SubscriptionCmd {
    /// give TENANT SEATS seats of subscription KEY_ID (0 takes them back)
    Share {
        key_id: String,
        tenant: String,
        seats: u32,
    },
    /// make TENANT the owner of subscription KEY_ID
    Move { key_id: String, tenant: String },
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_owned()
    }
}

/// `keyfedctl stations`: one page, or with `--all` every page in turn.
#[derive(clap::Args)]
pub struct StationsArgs {
    /// stations per page (0: the node's default, 1000)
    #[arg(long, default_value_t = 0)]
    pub page_size: u32,
    /// the next_page_token of the previous page
    #[arg(long, default_value = "")]
    pub page_token: String,
    /// fingerprint, station id or tenant prefix
    #[arg(long, default_value = "")]
    pub search: String,
    /// licensed, withdrawn, unlicensed or retired
    #[arg(long, default_value = "")]
    pub state: String,
    /// only stations holding a seat of this key
    #[arg(long = "key-id", default_value = "")]
    pub key_id: String,
    /// follow next_page_token until the last page
    #[arg(long)]
    pub all: bool,
}

pub async fn stations(cli: &Cli, a: &StationsArgs) -> anyhow::Result<()> {
    let mut client = admin(cli).await?;
    let mut req = pb::ListStationsRequest {
        page_size: a.page_size,
        page_token: a.page_token.clone(),
        state: a.state.clone(),
        search: a.search.clone(),
        key_id: a.key_id.clone(),
    };
    let mut r = client.list_stations(req.clone()).await?.into_inner();
    while a.all && !r.next_page_token.is_empty() {
        req.page_token = std::mem::take(&mut r.next_page_token);
        let next = client.list_stations(req.clone()).await?.into_inner();
        r.stations.extend(next.stations);
        r.next_page_token = next.next_page_token;
    }
    emit(cli.json, &r, |r| {
        let rows: Vec<Vec<String>> = r
            .stations
            .iter()
            .map(|s| {
                vec![
                    s.fingerprint.clone(),
                    dash(&s.station_id),
                    dash(&s.tenant),
                    dash(&s.key_id),
                    s.state.clone(),
                    s.last_contact.clone(),
                    s.reports.to_string(),
                    s.settings_version.to_string(),
                ]
            })
            .collect();
        let mut out = table(
            &[
                "FINGERPRINT",
                "STATION",
                "TENANT",
                "KEY",
                "STATE",
                "LAST CONTACT",
                "REPORTS",
                "SETTINGS",
            ],
            &rows,
        );
        out.push_str(&format!("{} shown of {}", r.stations.len(), r.total));
        if r.next_page_token.is_empty() {
            out.push('\n');
        } else {
            out.push_str(&format!(
                "; next page: --page-token {}\n",
                r.next_page_token
            ));
        }
        out
    });
    Ok(())
}

fn commands_table(cs: &[pb::CommandInfo]) -> String {
    let rows: Vec<Vec<String>> = cs
        .iter()
        .map(|c| {
            vec![
                c.id.clone(),
                c.object.clone(),
                c.command.clone(),
                c.queued_at.clone(),
                c.state.clone(),
                dash(&c.changed_at),
                if c.state == "pending" {
                    c.expires_at.clone()
                } else {
                    "-".into()
                },
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "OBJECT",
            "COMMAND",
            "QUEUED",
            "STATE",
            "CHANGED",
            "DROPPED AT",
        ],
        &rows,
    )
}

pub async fn command(cli: &Cli, cmd: &CommandCmd) -> anyhow::Result<()> {
    let mut client = admin(cli).await?;
    match cmd {
        CommandCmd::Queue { object, command } => {
            let c = client
                .queue_command(pb::QueueCommandRequest {
                    object: object.clone(),
                    command: command.clone(),
                })
                .await?
                .into_inner();
            emit(cli.json, &c, |c| commands_table(std::slice::from_ref(c)));
        }
        CommandCmd::List => {
            let r = client.list_commands(pb::Empty {}).await?.into_inner();
            emit(cli.json, &r, |r| commands_table(&r.commands));
        }
    }
    Ok(())
}

pub async fn settings(cli: &Cli, cmd: &SettingsCmd) -> anyhow::Result<()> {
    let mut client = admin(cli).await?;
    let s = match cmd {
        SettingsCmd::Show => client.get_settings(pb::Empty {}).await?.into_inner(),
        SettingsCmd::Set { text, file } => {
            let settings = match (text, file) {
                (Some(t), _) => t.clone(),
                (None, Some(f)) => std::fs::read_to_string(f)
                    .with_context(|| format!("reading settings file {}", f.display()))?,
                (None, None) => anyhow::bail!("give the settings text or --file FILE"),
            };
            client
                .set_settings(pb::StationSettings {
                    settings,
                    version: 0,
                })
                .await?
                .into_inner()
        }
    };
    emit(cli.json, &s, |s| {
        format!("version {}\n{}\n", s.version, s.settings)
    });
    Ok(())
}

fn subscriptions_table(rows: &[pb::SubscriptionInfo]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|s| {
            vec![
                s.customer.clone(),
                s.key_id.clone(),
                s.role.clone(),
                s.start.clone(),
                s.end.clone(),
                s.state.clone(),
                format!("{}/{}", s.used, s.seats),
                s.total_seats.to_string(),
                format!("{} {}", s.month, s.month_peak),
            ]
        })
        .collect();
    table(
        &[
            "TENANT",
            "SUBSCRIPTION",
            "ROLE",
            "START",
            "END",
            "STATE",
            "USED/SEATS",
            "TOTAL",
            "MONTH PEAK",
        ],
        &rows,
    )
}

pub async fn report(cli: &Cli, cmd: &ReportCmd) -> anyhow::Result<()> {
    match cmd {
        ReportCmd::Subscriptions => {
            let r = admin(cli)
                .await?
                .subscription_report(pb::Empty {})
                .await?
                .into_inner();
            emit(cli.json, &r, |r| subscriptions_table(&r.subscriptions));
        }
    }
    Ok(())
}

pub async fn subscription(cli: &Cli, cmd: &SubscriptionCmd) -> anyhow::Result<()> {
    let req = match cmd {
        SubscriptionCmd::Share {
            key_id,
            tenant,
            seats,
        } => pb::ShareSubscriptionRequest {
            key_id: key_id.clone(),
            tenant: tenant.clone(),
            seats: *seats,
            r#move: false,
        },
        SubscriptionCmd::Move { key_id, tenant } => pb::ShareSubscriptionRequest {
            key_id: key_id.clone(),
            tenant: tenant.clone(),
            seats: 0,
            r#move: true,
        },
    };
    let row = admin(cli)
        .await?
        .share_subscription(req)
        .await?
        .into_inner();
    emit(cli.json, &row, |r| {
        subscriptions_table(std::slice::from_ref(r))
    });
    Ok(())
}

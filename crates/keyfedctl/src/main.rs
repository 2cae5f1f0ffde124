//! `keyfedctl`: the administrator's gRPC client for keyfed nodes and the upstream.
mod audit;
mod context;
mod denials;
mod failure;
mod render;
mod stations;
mod telemetry;
mod tls;
mod usage_history;
mod webhooks;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use keyfed_proto::v1 as pb;
use keyfed_proto::v1::admin_client::AdminClient;
use keyfed_proto::v1::upstream_client::UpstreamClient;
use render::{emit, table};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(
    name = "keyfedctl",
    version,
    about = "administer keyfed nodes and the vendor upstream",
    after_help = failure::EXIT_CODES
)]
struct Cli {
    /// node (or upstream) address [default: the context's, else http://127.0.0.1:7601]
    #[arg(long, env = "KEYFED_ADDR", global = true)]
    addr: Option<String>,
    /// a context from $XDG_CONFIG_HOME/keyfed/config.toml (`keyfedctl context list`)
    #[arg(long, env = "KEYFED_CONTEXT", global = true)]
    context: Option<String>,
    /// print replies as JSON (the protobuf JSON mapping with proto field
    /// names and every field, as grpcurl prints them), and errors as JSON on stderr
    #[arg(long, global = true)]
    json: bool,
    /// admin token, sent as `authorization: Bearer <token>`
    #[arg(long, env = "KEYFED_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// file holding the admin token (kept out of shell history and `ps`)
    #[arg(long, env = "KEYFED_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// CA certificate (PEM) to trust for https:// addresses
    #[arg(long, env = "KEYFED_CA", global = true)]
    ca: Option<PathBuf>,
    /// client certificate (PEM) for mutual TLS
    #[arg(long, env = "KEYFED_CERT", global = true)]
    cert: Option<PathBuf>,
    /// client private key (PEM) for mutual TLS
    #[arg(long, env = "KEYFED_KEY", global = true)]
    key: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
    /// flags, environment and context merged (`resolve`)
    #[arg(skip)]
    target: Resolved,
}

/// Where commands go and with what, after flags, environment and context.
#[derive(Default)]
struct Resolved {
    addrs: Vec<String>,
    token: Option<String>,
    /// the address that answered, for error messages
    chosen: std::sync::OnceLock<String>,
}

impl Cli {
    fn failure_target(&self) -> failure::Target {
        failure::Target {
            addr: self
                .target
                .chosen
                .get()
                .or(self.target.addrs.first())
                .cloned()
                .unwrap_or_else(|| context::DEFAULT_ADDR.into()),
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }
}

fn read_token(path: &std::path::Path, setting: &str) -> anyhow::Result<String> {
    let t = std::fs::read_to_string(path).with_context(|| {
        format!(
            "reading the admin token file {} ({setting})",
            path.display()
        )
    })?;
    Ok(t.trim().to_owned())
}

/// Fills in what flags and environment left open from the context.
fn resolve(cli: &mut Cli) -> anyhow::Result<()> {
    let ctx = match context::config_path(&|k| std::env::var(k).ok()) {
        Some(path) => context::ConfigFile::load(&path)?.pick(cli.context.as_deref(), &path)?,
        None if cli.context.is_some() => {
            anyhow::bail!(
                "--context needs a config file, but neither XDG_CONFIG_HOME nor HOME is set"
            )
        }
        None => None,
    };
    let (name, ctx) = ctx.unwrap_or_default();
    cli.target.addrs = match &cli.addr {
        Some(a) => vec![a.clone()],
        None if !ctx.addrs.is_empty() => ctx.addrs.clone(),
        None => vec![context::DEFAULT_ADDR.into()],
    };
    cli.target.token = match (&cli.token, &cli.token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(f)) => Some(read_token(f, "--token-file or KEYFED_TOKEN_FILE")?),
        (None, None) => match (&ctx.token, &ctx.token_file) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(f)) => Some(read_token(f, &format!("token_file of context {name}"))?),
            (None, None) => None,
        },
    };
    cli.ca = cli.ca.take().or(ctx.ca);
    cli.cert = cli.cert.take().or(ctx.cert);
    cli.key = cli.key.take().or(ctx.key);
    Ok(())
}

#[derive(Subcommand)]
enum Command {
    /// keys on a node
    #[command(subcommand)]
    Key(KeyCmd),
    /// objects (stations and servers) holding seats
    Objects,
    /// stored notifications; --follow watches live
    Notifications {
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long)]
        follow: bool,
    },
    /// node status
    Status,
    /// federation peers and their links
    Peers,
    /// seat usage per key; --tree adds the whole subtree; `usage history`: over time
    #[command(args_conflicts_with_subcommands = true)]
    Usage {
        key_id: Option<String>,
        #[arg(long)]
        tree: bool,
        #[command(subcommand)]
        over_time: Option<usage_history::UsageCmd>,
    },
    /// move a debug node's manual clock forward
    #[command(subcommand)]
    Clock(ClockCmd),
    /// the vendor upstream (point --addr at it)
    #[command(subcommand)]
    Upstream(UpstreamCmd),
    /// usage telemetry of a node (t01, t02)
    #[command(subcommand)]
    Telemetry(telemetry::TelemetryCmd),
    /// stations known to the node: lease, state, last contact (b03, o02), a page at a time
    Stations(stations::StationsArgs),
    /// refused station connections and assignments (issue 12)
    Denials(denials::DenialsArgs),
    /// commands for offline stations and children (o03)
    #[command(subcommand, name = "command")]
    Cmd(stations::CommandCmd),
    /// the settings stations get (o05)
    #[command(subcommand)]
    Settings(stations::SettingsCmd),
    /// reports: `report subscriptions` (e07)
    #[command(subcommand)]
    Report(stations::ReportCmd),
    /// share a subscription with another tenant or move it (e07)
    #[command(subcommand)]
    Subscription(stations::SubscriptionCmd),
    /// the audit trail of administrator actions (b06)
    Audit {
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
    /// the configured webhooks and their delivery queues (issue 12)
    Webhooks,
    /// telemetry compliance per customer, on the upstream (t03)
    Compliance {
        customer: Option<String>,
        #[command(subcommand)]
        cmd: Option<telemetry::ComplianceCmd>,
    },
    /// named contexts: servers and their credentials, from the config file
    #[command(subcommand)]
    Context(ContextCmd),
    /// print a completion script: `keyfedctl completions bash > /etc/bash_completion.d/keyfedctl`
    Completions { shell: clap_complete::Shell },
    /// print the man page (roff): `keyfedctl man > keyfedctl.1`
    Man,
}

#[derive(Subcommand)]
enum ContextCmd {
    /// every context in the config file; `*` marks the current one
    List,
    /// make NAME the current context
    Use { name: String },
    /// one context (default: the current one); a token is never printed
    Show { name: Option<String> },
}

#[derive(Subcommand)]
enum KeyCmd {
    /// add a vendor key file; --activate puts it on the held key of its license (e05)
    Add {
        file: PathBuf,
        /// add-seats: counts add up, end dates merge; extend: one more term
        #[arg(long, value_parser = ["add-seats", "extend"])]
        activate: Option<String>,
    },
    /// extend a trial key once by 30 days (e04)
    ExtendTrial {
        id: String,
    },
    List,
    Show {
        id: String,
    },
    /// write the key file to FILE or stdout
    Export {
        id: String,
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
    },
    Delete {
        id: String,
    },
    /// give OBJECT (a station, or a child/neighbor node id) SEATS seats
    Assign {
        id: String,
        object: String,
        seats: u32,
        #[arg(long, conflicts_with = "server")]
        station: bool,
        #[arg(long)]
        server: bool,
        /// lending period for a neighbor (b01)
        #[arg(long, default_value_t = 0)]
        donation_days: u32,
    },
    Unassign {
        id: String,
        object: String,
    },
    /// check for updates and replace keys (one key, or every upstream key)
    Renew {
        id: Option<String>,
    },
}

#[derive(Subcommand)]
enum ClockCmd {
    Advance { seconds: i64 },
}

#[derive(Subcommand)]
enum UpstreamCmd {
    /// issue a key; with -o, writes the key file and prints only the key id
    Issue {
        #[arg(long)]
        customer: String,
        #[arg(long)]
        product: String,
        #[arg(long, value_delimiter = ',', required = true)]
        components: Vec<String>,
        #[arg(long)]
        seats: u32,
        #[arg(long, value_parser = parse_date)]
        expires: String,
        #[arg(long, default_value = "term", value_parser = ["term", "subscription", "trial", "nfr"])]
        kind: String,
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
    },
    /// buy a renewal of KEY_ID, held upstream until KEY_ID expires
    Renewal {
        key_id: String,
        #[arg(long, value_delimiter = ',', required = true)]
        components: Vec<String>,
        #[arg(long)]
        seats: u32,
        #[arg(long, value_parser = parse_date)]
        expires: String,
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
    },
    /// the vendor public key nodes pin
    Pubkey,
}

fn parse_date(s: &str) -> Result<String, String> {
    let ok = s.len() == 10
        && s.char_indices().all(|(i, c)| {
            if i == 4 || i == 7 {
                c == '-'
            } else {
                c.is_ascii_digit()
            }
        });
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?} is not a YYYY-MM-DD date"))
    }
}

/// Adds the bearer token to every call.
#[derive(Clone)]
struct Auth(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type Intercepted = tonic::service::interceptor::InterceptedService<Channel, Auth>;

async fn channel(cli: &Cli) -> anyhow::Result<(Channel, Auth)> {
    let token = match &cli.target.token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse()
                .context("the token has characters not allowed in a header")?,
        ),
        None => None,
    };
    // a replicated node has several addresses: the first that answers serves
    let mut tries = Vec::new();
    for addr in &cli.target.addrs {
        let ep = tls::endpoint(
            addr,
            cli.ca.as_deref(),
            cli.cert.as_deref(),
            cli.key.as_deref(),
        )?
        .connect_timeout(std::time::Duration::from_secs(5));
        match ep.connect().await {
            Ok(channel) => {
                let _ = cli.target.chosen.set(addr.clone());
                return Ok((channel, Auth(token)));
            }
            Err(e) => {
                let mut t = cli.failure_target();
                t.addr.clone_from(addr);
                tries.push((t, failure::chain(&e)));
            }
        }
    }
    Err(failure::Unreachable { tries }.into())
}

async fn admin(cli: &Cli) -> anyhow::Result<AdminClient<Intercepted>> {
    let (c, a) = channel(cli).await?;
    Ok(AdminClient::with_interceptor(c, a))
}

async fn upstream(cli: &Cli) -> anyhow::Result<UpstreamClient<Intercepted>> {
    let (c, a) = channel(cli).await?;
    Ok(UpstreamClient::with_interceptor(c, a))
}

fn origin(o: Option<&pb::Origin>) -> String {
    match o.and_then(|o| o.from.as_ref()) {
        Some(pb::origin::From::Upstream(_)) => "upstream".into(),
        Some(pb::origin::From::Peer(p)) => p.clone(),
        None => "-".into(),
    }
}

fn keys_table(keys: &[pb::KeyInfo]) -> String {
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            let key = k.key.clone().unwrap_or_default();
            vec![
                key.id,
                key.customer,
                key.components.join(","),
                format!("{}/{}", k.seats_assigned, k.seats_assigned + k.seats_free),
                // after activations or a trial extension (e04, e05)
                if k.entitled_until.is_empty() {
                    key.expires
                } else {
                    k.entitled_until.clone()
                },
                k.state.clone(),
                origin(k.origin.as_ref()),
                if key.renews.is_empty() {
                    "-".into()
                } else {
                    key.renews
                },
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "CUSTOMER",
            "COMPONENTS",
            "USED/HELD",
            "EXPIRES",
            "STATE",
            "ORIGIN",
            "RENEWS",
        ],
        &rows,
    )
}

fn notification_line(n: &pb::Notification) -> String {
    format!("{:>5}  {}  {:<32} {}\n", n.seq, n.at, n.event, n.message)
}

fn write_key(output: Option<&PathBuf>, text: &str, id: &str) -> anyhow::Result<()> {
    match output {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
            println!("{id}");
        }
        None => print!("{text}"),
    }
    Ok(())
}

fn key_id_of(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("id: "))
        .unwrap_or_default()
        .to_owned()
}

async fn run(cli: &Cli) -> anyhow::Result<()> {
    let json = cli.json;
    match &cli.command {
        Command::Key(cmd) => key(cli, cmd).await?,
        Command::Objects => {
            let r = admin(cli)
                .await?
                .list_objects(pb::ListObjectsRequest::default())
                .await?
                .into_inner();
            emit(json, &r, |r| {
                let mut rows = Vec::new();
                for o in &r.objects {
                    let kind = if o.kind == pb::ObjectKind::Server as i32 {
                        "server"
                    } else {
                        "station"
                    };
                    if o.grants.is_empty() {
                        rows.push(vec![
                            o.name.clone(),
                            kind.into(),
                            "-".into(),
                            "-".into(),
                            o.state.clone(),
                        ]);
                    }
                    for g in &o.grants {
                        let state = if g.delivered {
                            o.state.clone()
                        } else {
                            "pending delivery".into()
                        };
                        rows.push(vec![
                            o.name.clone(),
                            kind.into(),
                            g.key_id.clone(),
                            g.seats.to_string(),
                            state,
                        ]);
                    }
                }
                table(&["OBJECT", "KIND", "KEY", "SEATS", "STATE"], &rows)
            });
        }
        Command::Notifications { after, follow } => {
            let mut client = admin(cli).await?;
            let req = pb::ListNotificationsRequest { after_seq: *after };
            if *follow {
                let mut stream = client.watch_notifications(req).await?.into_inner();
                while let Some(n) = stream.next().await {
                    let n = n?;
                    emit(json, &n, notification_line);
                }
            } else {
                let r = client.list_notifications(req).await?.into_inner();
                emit(json, &r, |r| {
                    r.notifications.iter().map(notification_line).collect()
                });
            }
        }
        Command::Status => {
            let s = admin(cli).await?.status(pb::Empty {}).await?.into_inner();
            emit(json, &s, |s| {
                let mut out = table(
                    &[
                        "NODE",
                        "VERSION",
                        "PROTOCOL",
                        "NOW",
                        "KEYS",
                        "OBJECTS",
                        "NOTIFICATIONS",
                    ],
                    &[vec![
                        s.node_id.clone(),
                        s.version.clone(),
                        s.protocol_version.to_string(),
                        s.now.clone(),
                        s.keys.to_string(),
                        s.objects.to_string(),
                        s.notifications.to_string(),
                    ]],
                );
                for w in &s.warnings {
                    out.push_str(&format!("warning: {w}\n"));
                }
                out
            });
        }
        Command::Peers => {
            let r = admin(cli)
                .await?
                .list_peers(pb::Empty {})
                .await?
                .into_inner();
            emit(json, &r, |r| {
                let rows: Vec<Vec<String>> = r
                    .peers
                    .iter()
                    .map(|p| {
                        let state = if p.online { "online" } else { "offline" };
                        vec![
                            p.node_id.clone(),
                            p.role.clone(),
                            p.address.clone(),
                            p.protocol_version.to_string(),
                            state.into(),
                            p.since.clone(),
                            p.outbox_depth.to_string(),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "PEER", "ROLE", "ADDRESS", "PROTOCOL", "LINK", "SINCE", "OUTBOX",
                    ],
                    &rows,
                )
            });
        }
        Command::Usage {
            over_time: Some(cmd),
            ..
        } => usage_history::usage(cli, cmd).await?,
        Command::Usage { key_id, tree, .. } => {
            let req = pb::UsageRequest {
                key_id: key_id.clone().unwrap_or_default(),
                tree: *tree,
            };
            let r = admin(cli).await?.usage(req).await?.into_inner();
            emit(json, &r, |r| {
                let rows: Vec<Vec<String>> = r
                    .rows
                    .iter()
                    .map(|u| {
                        vec![
                            u.node_id.clone(),
                            u.key_id.clone(),
                            u.seats.to_string(),
                            u.used.to_string(),
                            u.free.to_string(),
                            u.reported_at.clone(),
                        ]
                    })
                    .collect();
                table(&["NODE", "KEY", "SEATS", "USED", "FREE", "AS OF"], &rows)
            });
        }
        Command::Clock(ClockCmd::Advance { seconds }) => {
            let r = admin(cli)
                .await?
                .advance_clock(pb::AdvanceClockRequest { seconds: *seconds })
                .await?
                .into_inner();
            emit(json, &r, |r| format!("now {}\n", r.now));
        }
        Command::Upstream(cmd) => upstream_cmd(cli, cmd).await?,
        Command::Telemetry(cmd) => telemetry::telemetry(cli, cmd).await?,
        Command::Stations(a) => stations::stations(cli, a).await?,
        Command::Denials(a) => denials::denials(cli, a).await?,
        Command::Cmd(cmd) => stations::command(cli, cmd).await?,
        Command::Settings(cmd) => stations::settings(cli, cmd).await?,
        Command::Report(cmd) => stations::report(cli, cmd).await?,
        Command::Subscription(cmd) => stations::subscription(cli, cmd).await?,
        Command::Audit { after, limit } => audit::audit(cli, *after, *limit).await?,
        Command::Webhooks => webhooks::webhooks(cli).await?,
        Command::Compliance { customer, cmd } => {
            telemetry::compliance(cli, customer.as_ref(), cmd.as_ref()).await?;
        }
        Command::Context(_) | Command::Completions { .. } | Command::Man => {
            unreachable!("local commands are handled before resolving the target")
        }
    }
    Ok(())
}

async fn key(cli: &Cli, cmd: &KeyCmd) -> anyhow::Result<()> {
    let json = cli.json;
    // read a local file before dialing, so a typo is reported as such
    let text = match cmd {
        KeyCmd::Add { file, .. } => std::fs::read_to_string(file)
            .with_context(|| format!("reading key file {}", file.display()))?,
        _ => String::new(),
    };
    let mut client = admin(cli).await?;
    match cmd {
        KeyCmd::Add { activate, .. } => {
            let k = client
                .add_key(pb::AddKeyRequest {
                    key_file: text,
                    activation: activate.clone().unwrap_or_default(),
                })
                .await?
                .into_inner();
            emit(json, &k, |k| keys_table(std::slice::from_ref(k)));
        }
        KeyCmd::ExtendTrial { id } => {
            let k = client
                .extend_trial(pb::KeyId { id: id.clone() })
                .await?
                .into_inner();
            emit(json, &k, |k| keys_table(std::slice::from_ref(k)));
        }
        KeyCmd::List => {
            let r = client.list_keys(pb::Empty {}).await?.into_inner();
            emit(json, &r, |r| keys_table(&r.keys));
        }
        KeyCmd::Show { id } => {
            let k = client
                .get_key(pb::KeyId { id: id.clone() })
                .await?
                .into_inner();
            emit(json, &k, |k| keys_table(std::slice::from_ref(k)));
        }
        KeyCmd::Export { id, output } => {
            let f = client
                .export_key(pb::KeyId { id: id.clone() })
                .await?
                .into_inner();
            if json {
                emit(true, &f, |_| String::new());
            } else {
                write_key(output.as_ref(), &f.text, id)?;
            }
        }
        KeyCmd::Delete { id } => {
            client.delete_key(pb::KeyId { id: id.clone() }).await?;
            emit(json, &serde_json::json!({ "deleted": id }), |_| {
                format!("deleted {id}\n")
            });
        }
        KeyCmd::Assign {
            id,
            object,
            seats,
            station,
            server,
            donation_days,
        } => {
            let kind = if *station {
                pb::ObjectKind::Station
            } else if *server {
                pb::ObjectKind::Server
            } else {
                pb::ObjectKind::Unspecified
            };
            let req = pb::AssignSeatsRequest {
                key_id: id.clone(),
                object: object.clone(),
                seats: *seats,
                kind: kind.into(),
                donation_days: *donation_days,
            };
            let g = client.assign_seats(req).await?.into_inner();
            emit(json, &g, |g| {
                let until = if g.lent_until.is_empty() {
                    String::new()
                } else {
                    format!(" (lent until {})", g.lent_until)
                };
                format!(
                    "{} seat(s) of {} assigned to {}{until}\n",
                    g.seats, g.key_id, g.object
                )
            });
        }
        KeyCmd::Unassign { id, object } => {
            client
                .unassign_seats(pb::UnassignSeatsRequest {
                    key_id: id.clone(),
                    object: object.clone(),
                })
                .await?;
            emit(
                json,
                &serde_json::json!({ "unassigned": object, "key_id": id }),
                |_| format!("seats of {id} taken back from {object}\n"),
            );
        }
        KeyCmd::Renew { id } => {
            let r = client
                .check_for_updates(pb::CheckForUpdatesRequest {
                    key_id: id.clone().unwrap_or_default(),
                })
                .await?
                .into_inner();
            emit(json, &r, |r| {
                let rows: Vec<Vec<String>> = r
                    .outcomes
                    .iter()
                    .map(|o| {
                        vec![
                            o.key_id.clone(),
                            o.outcome.clone(),
                            if o.new_key_id.is_empty() {
                                "-".into()
                            } else {
                                o.new_key_id.clone()
                            },
                            o.reason.clone(),
                        ]
                    })
                    .collect();
                table(&["KEY", "OUTCOME", "NEW KEY", "REASON"], &rows)
            });
        }
    }
    Ok(())
}

async fn upstream_cmd(cli: &Cli, cmd: &UpstreamCmd) -> anyhow::Result<()> {
    let json = cli.json;
    let mut client = upstream(cli).await?;
    let (file, output) = match cmd {
        UpstreamCmd::Issue {
            customer,
            product,
            components,
            seats,
            expires,
            kind,
            output,
        } => {
            let kind = match kind.as_str() {
                "subscription" => pb::KeyKind::Subscription,
                "trial" => pb::KeyKind::Trial,
                "nfr" => pb::KeyKind::Nfr,
                _ => pb::KeyKind::Term,
            };
            let req = pb::IssueKeyRequest {
                customer: customer.clone(),
                product: product.clone(),
                components: components.clone(),
                seats: *seats,
                kind: kind.into(),
                expires: expires.clone(),
            };
            (client.issue_key(req).await?.into_inner(), output)
        }
        UpstreamCmd::Renewal {
            key_id,
            components,
            seats,
            expires,
            output,
        } => {
            let req = pb::PurchaseRenewalRequest {
                key_id: key_id.clone(),
                components: components.clone(),
                seats: *seats,
                expires: expires.clone(),
            };
            (client.purchase_renewal(req).await?.into_inner(), output)
        }
        UpstreamCmd::Pubkey => {
            let r = client.public_key(pb::Empty {}).await?.into_inner();
            emit(json, &r, |r| format!("{}\n", r.public_key_hex));
            return Ok(());
        }
    };
    if json {
        emit(true, &file, |_| String::new());
        if let Some(path) = output {
            std::fs::write(path, &file.text)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        return Ok(());
    }
    write_key(output.as_ref(), &file.text, &key_id_of(&file.text))
}

fn context_cmd(cli: &Cli, cmd: &ContextCmd) -> anyhow::Result<()> {
    let path = context::config_path(&|k| std::env::var(k).ok())
        .context("neither XDG_CONFIG_HOME nor HOME is set: no place for the keyfedctl config")?;
    let cfg = context::ConfigFile::load(&path)?;
    match cmd {
        ContextCmd::List => {
            let current = cfg.current_context.clone().unwrap_or_default();
            let rows: Vec<serde_json::Value> = cfg
                .contexts
                .iter()
                .map(|(n, c)| {
                    serde_json::json!({ "name": n, "current": *n == current, "addrs": c.addrs })
                })
                .collect();
            emit(cli.json, &rows, |rows| {
                let cells: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        vec![
                            if r["current"] == true { "*" } else { "" }.into(),
                            r["name"].as_str().unwrap_or_default().into(),
                            cfg.contexts[r["name"].as_str().unwrap_or_default()]
                                .addrs
                                .join(","),
                        ]
                    })
                    .collect();
                let mut t = table(&["CURRENT", "NAME", "ADDRESSES"], &cells);
                if cells.is_empty() {
                    t.push_str(&format!("no contexts in {}\n", path.display()));
                }
                t
            });
        }
        ContextCmd::Use { name } => {
            context::set_current(&path, name)?;
            emit(
                cli.json,
                &serde_json::json!({ "current_context": name }),
                |_| format!("current context: {name}\n"),
            );
        }
        ContextCmd::Show { name } => {
            let Some((name, c)) = cfg.pick(name.as_deref(), &path)? else {
                anyhow::bail!(
                    "no current context in {}: `keyfedctl context use NAME` or --context NAME",
                    path.display()
                );
            };
            let show = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
            // the token itself is never printed: only whether and where it is set
            let token = match (&c.token, &c.token_file) {
                (Some(_), _) => "set in the config file".to_owned(),
                (None, Some(f)) => format!("from {}", f.display()),
                (None, None) => "none".to_owned(),
            };
            let v = serde_json::json!({
                "name": name, "addrs": c.addrs, "token": token,
                "ca": show(&c.ca), "cert": show(&c.cert), "key": show(&c.key),
            });
            emit(cli.json, &v, |v| {
                let mut out = String::new();
                for k in ["name", "addrs", "token", "ca", "cert", "key"] {
                    let val = match &v[k] {
                        serde_json::Value::String(s) => s.clone(),
                        serde_json::Value::Array(a) => a
                            .iter()
                            .filter_map(|x| x.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        _ => "-".into(),
                    };
                    out.push_str(&format!("{k:<6} {val}\n"));
                }
                out
            });
        }
    }
    Ok(())
}

fn print_failure(json: bool, r: &failure::Report) {
    if json {
        eprintln!(
            "{}",
            serde_json::json!({ "code": r.code, "message": r.message })
        );
    } else if r.exit == 1 {
        eprintln!("error: {}: {}", r.code, r.message);
    } else {
        eprintln!("error: {}", r.message);
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let json = std::env::args().any(|a| a == "--json");
    let mut cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if json && e.use_stderr() => {
            let message = e.render().to_string();
            let first = message.lines().next().unwrap_or_default();
            let r = failure::Report {
                code: "USAGE".into(),
                message: first.trim_start_matches("error: ").to_owned(),
                exit: 2,
            };
            print_failure(true, &r);
            return ExitCode::from(r.exit);
        }
        Err(e) => e.exit(),
    };
    let local = match &cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "keyfedctl",
                &mut std::io::stdout(),
            );
            Some(Ok(()))
        }
        Command::Man => Some(
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .context("writing the man page"),
        ),
        Command::Context(cmd) => Some(context_cmd(&cli, cmd)),
        _ => None,
    };
    let result = match local {
        Some(r) => r,
        None => match resolve(&mut cli) {
            Ok(()) => run(&cli).await,
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let r = failure::report(&e, &cli.failure_target()).await;
            print_failure(cli.json, &r);
            ExitCode::from(r.exit)
        }
    }
}

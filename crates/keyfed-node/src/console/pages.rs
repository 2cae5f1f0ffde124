//! The console's routes: which Admin calls fill each page, and which call
//! each form makes.
use super::form::Form;
use super::{
    html, text, with_headers, Caller, Response, AUDIT_PAGE, NOTIFICATIONS_SHOWN, STATIONS_PAGE,
};
use crate::api::{decode, ApiError};
use bytes::Bytes;
use keyfed_console as ui;
use keyfed_proto::v1 as pb;
use tonic::codegen::http;
use tonic::Code;

/// Holders shown on a key's page (one page of ListObjects, not a full scan).
const GRANTS_SHOWN: u32 = 200;

/// The decoded path segments after the leading `/`.
fn segments(path: &str) -> Result<Vec<String>, ApiError> {
    path.trim_start_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| decode(s, false))
        .collect()
}

/// A query string's parameters (unknown ones are ignored: links may carry more).
fn query(q: Option<&str>) -> Form {
    Form::urlencoded(q.unwrap_or_default().as_bytes()).unwrap_or_default()
}

pub(super) async fn get(
    c: &Caller,
    path: &str,
    q: Option<&str>,
    peer_consoles: &std::collections::BTreeMap<String, String>,
) -> Response {
    let v = c.view();
    let ok = http::StatusCode::OK;
    let segs = match segments(path) {
        Ok(s) => s,
        Err(e) => return html(e.http, ui::error_page(&v, "Not found", &e.message)),
    };
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let q = query(q);
    match segs.as_slice() {
        [] => {
            // the node's health and counts (Status counts objects: the dashboard only)
            let status = c.fetch("Status", &pb::Empty {}).await;
            let keys = c.fetch("ListKeys", &pb::Empty {}).await;
            let telemetry = c.fetch("TelemetryStatus", &pb::Empty {}).await;
            let peers = c.fetch("ListPeers", &pb::Empty {}).await;
            let d = ui::Dashboard {
                status: &status,
                keys: &keys,
                telemetry: &telemetry,
                peers: &peers,
            };
            html(ok, ui::dashboard(&v, &d))
        }
        ["tree"] => {
            let peers = c.fetch("ListPeers", &pb::Empty {}).await;
            let usage = c
                .fetch(
                    "Usage",
                    &pb::UsageRequest {
                        key_id: String::new(),
                        tree: true,
                    },
                )
                .await;
            let t = ui::Tree {
                peers: &peers,
                usage: &usage,
                console_of: &|id| peer_consoles.get(id).cloned(),
            };
            html(ok, ui::tree(&v, &t))
        }
        ["keys", id] => {
            let key: pb::KeyInfo = match c.fetch("GetKey", &pb::KeyId { id: (*id).into() }).await {
                Ok(k) => k,
                Err(e) => {
                    return html(
                        http::StatusCode::NOT_FOUND,
                        ui::error_page(&v, "No such key", &e),
                    )
                }
            };
            let objects = c
                .fetch(
                    "ListObjects",
                    &pb::ListObjectsRequest {
                        key_id: (*id).into(),
                        page_size: GRANTS_SHOWN,
                        ..Default::default()
                    },
                )
                .await;
            let keys = c.fetch("ListKeys", &pb::Empty {}).await;
            let history = c
                .fetch(
                    "UsageHistory",
                    &pb::UsageHistoryRequest {
                        key_id: (*id).into(),
                        ..Default::default()
                    },
                )
                .await;
            let p = ui::KeyPage {
                key: &key,
                objects: &objects,
                keys: &keys,
                history: &history,
                report: None,
            };
            html(ok, ui::key_page(&v, &p))
        }
        ["keys", id, "usage.csv"] => {
            let r = pb::UsageHistoryRequest {
                key_id: (*id).into(),
                ..Default::default()
            };
            match c
                .write::<_, pb::UsageHistoryReply>("UsageHistory", &r)
                .await
            {
                Ok(h) => {
                    let mut r = with_headers(
                        ok,
                        "text/csv; charset=utf-8",
                        // the one CSV writer of the API, the console and keyfedctl
                        Bytes::from(keyfed_proto::csv::usage_points(&h.points)),
                    );
                    let name = format!(
                        "attachment; filename=\"usage-{}.csv\"",
                        id.replace(['"', '\\'], "_")
                    );
                    if let Ok(v) = http::HeaderValue::from_str(&name) {
                        r.headers_mut().insert(http::header::CONTENT_DISPOSITION, v);
                    }
                    r
                }
                Err(e) => text(e.http, &super::failure(&e)),
            }
        }
        ["stations"] => {
            let f = ui::StationFilter {
                state: q.get("state").into(),
                search: q.get("search").into(),
                key_id: q.get("key_id").into(),
                page_token: q.get("page_token").into(),
            };
            let r = pb::ListStationsRequest {
                page_size: STATIONS_PAGE,
                page_token: f.page_token.clone(),
                state: f.state.clone(),
                search: f.search.clone(),
                key_id: f.key_id.clone(),
            };
            let list = c.fetch("ListStations", &r).await;
            html(ok, ui::stations(&v, &f, &list))
        }
        ["notifications"] => {
            // seqs count up from 1: start near the newest, not at the first
            let status: ui::Fetched<pb::NodeStatus> = c.fetch("Status", &pb::Empty {}).await;
            let newest = status.as_ref().map_or(0, |s| u64::from(s.notifications));
            let after_seq = newest.saturating_sub(NOTIFICATIONS_SHOWN as u64);
            let mut list: ui::Fetched<pb::NotificationList> = c
                .fetch(
                    "ListNotifications",
                    &pb::ListNotificationsRequest { after_seq },
                )
                .await;
            if let Ok(l) = &mut list {
                let skip = l.notifications.len().saturating_sub(NOTIFICATIONS_SHOWN);
                l.notifications.drain(..skip);
            }
            let hooks = c.fetch("ListWebhooks", &pb::Empty {}).await;
            html(ok, ui::notifications(&v, &list, &hooks))
        }
        ["denials"] => {
            let list = c
                .fetch(
                    "ListDenials",
                    &pb::ListDenialsRequest {
                        limit: 500,
                        ..Default::default()
                    },
                )
                .await;
            html(ok, ui::denials(&v, &list))
        }
        ["audit"] => {
            let after_seq = q.get("after_seq").parse().unwrap_or(0);
            let list = c
                .fetch(
                    "ListAudit",
                    &pb::ListAuditRequest {
                        after_seq,
                        limit: AUDIT_PAGE,
                    },
                )
                .await;
            html(ok, ui::audit(&v, &list, AUDIT_PAGE))
        }
        ["commands"] => {
            let list = c.fetch("ListCommands", &pb::Empty {}).await;
            html(ok, ui::commands(&v, &list))
        }
        _ => html(
            http::StatusCode::NOT_FOUND,
            ui::error_page(
                &v,
                "Not found",
                &format!("the console has no page at {path}"),
            ),
        ),
    }
}

fn kind(f: &Form) -> Result<i32, ApiError> {
    Ok(match f.get("kind") {
        "" => pb::ObjectKind::Unspecified,
        "station" => pb::ObjectKind::Station,
        "server" => pb::ObjectKind::Server,
        other => {
            return Err(ApiError::invalid(format!(
                "kind {other:?} is not station or server"
            )))
        }
    } as i32)
}

fn outcomes(r: &pb::RenewalReport) -> String {
    if r.outcomes.is_empty() {
        return "checked for updates: no key to renew".into();
    }
    let each: Vec<String> = r
        .outcomes
        .iter()
        .map(|o| {
            let new = if o.new_key_id.is_empty() {
                String::new()
            } else {
                format!(" → {}", o.new_key_id)
            };
            let why = if o.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", o.reason)
            };
            format!("{}: {}{new}{why}", o.key_id, o.outcome)
        })
        .collect();
    format!("checked for updates: {}", each.join("; "))
}

/// A form's Admin call; where to go next and what to say.
pub(super) async fn write(c: &Caller, path: &str, f: &Form) -> Result<(String, String), ApiError> {
    let segs = segments(path)?;
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let key_page = |id: &str| format!("/keys/{}", ui::urlencode(id));
    match segs.as_slice() {
        ["keys"] => {
            let r = pb::AddKeyRequest {
                key_file: f.get("key_file").into(),
                activation: f.get("activation").into(),
            };
            let k: pb::KeyInfo = c.write("AddKey", &r).await?;
            let id = k.key.map(|k| k.id).unwrap_or_default();
            Ok((key_page(&id), format!("added key {id}")))
        }
        ["keys", id, "assign"] => {
            let r = pb::AssignSeatsRequest {
                key_id: (*id).into(),
                object: f.get("object").trim().into(),
                seats: f.number("seats")?,
                kind: kind(f)?,
                donation_days: f.number("donation_days")?,
            };
            let g: pb::GrantInfo = c.write("AssignSeats", &r).await?;
            Ok((
                key_page(id),
                format!("{} now holds {} seat(s) of {id}", g.object, g.seats),
            ))
        }
        ["keys", id, "unassign"] => {
            let r = pb::UnassignSeatsRequest {
                key_id: (*id).into(),
                object: f.get("object").into(),
            };
            c.write::<_, pb::Empty>("UnassignSeats", &r).await?;
            Ok((
                key_page(id),
                format!("took the seats of {id} from {}", r.object),
            ))
        }
        ["keys", id, "renew"] => {
            let r: pb::RenewalReport = c
                .write(
                    "CheckForUpdates",
                    &pb::CheckForUpdatesRequest {
                        key_id: (*id).into(),
                    },
                )
                .await?;
            Ok((key_page(id), outcomes(&r)))
        }
        ["renew"] => {
            let r: pb::RenewalReport = c
                .write("CheckForUpdates", &pb::CheckForUpdatesRequest::default())
                .await?;
            Ok(("/".into(), outcomes(&r)))
        }
        ["commands"] => {
            let r = pb::QueueCommandRequest {
                object: f.get("object").trim().into(),
                command: f.get("command").into(),
            };
            let cmd: pb::CommandInfo = c.write("QueueCommand", &r).await?;
            Ok((
                "/commands".into(),
                format!("queued command {} for {}", cmd.id, cmd.object),
            ))
        }
        _ => Err(ApiError::new(
            Code::NotFound,
            format!("the console takes no form at {path}"),
        )
        .with_http(http::StatusCode::NOT_FOUND)),
    }
}

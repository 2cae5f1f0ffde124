//! The dashboard, a key's page and the federation tree.
use crate::widgets::{self, key_warnings, seats_bar, telemetry_warning, warning_list, Seats};
use crate::{csrf_field, failed, kind_name, layout, Fetched, Nav, View};
use keyfed_wire::v1 as pb;
use maud::{html, Markup};

/// What the dashboard shows.
pub struct Dashboard<'a> {
    pub status: &'a Fetched<pb::NodeStatus>,
    pub keys: &'a Fetched<pb::KeyList>,
    pub telemetry: &'a Fetched<pb::TelemetryStatusReply>,
    pub peers: &'a Fetched<pb::PeerList>,
}

fn key_link(id: &str) -> Markup {
    html! { a.mono href={"/keys/" (urlencode(id))} { (id) } }
}

/// Percent-encodes a path segment or query value.
#[must_use]
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn state_class(state: &str) -> &'static str {
    match state {
        "active" | "licensed" | "delivered" => "state-ok",
        "expired-grace" | "pending" | "unlicensed" => "state-warn",
        _ => "state-bad",
    }
}

/// Every key with its seats bar, state, end date and warnings; the node's
/// health; and, for an administrator, the key upload and renewal forms.
#[must_use]
pub fn dashboard(v: &View<'_>, d: &Dashboard<'_>) -> String {
    let today = widgets::today(v.now);
    let body = html! {
        h2 { "Health" }
        @match d.status {
            Ok(s) => {
                @let offline: Vec<&pb::PeerInfo> = d.peers.as_ref().map(|p| p.peers.iter().filter(|p| !p.online).collect()).unwrap_or_default();
                @let tele = d.telemetry.as_ref().ok().and_then(telemetry_warning);
                @if s.warnings.is_empty() && offline.is_empty() && tele.is_none() {
                    p.state-ok #health { "healthy" }
                } @else {
                    ul.warnings #health {
                        @for w in &s.warnings { li.warn { (w) } }
                        @for p in &offline { li.bad { (p.role) " " (p.node_id) " is offline" } }
                        @if let Some(t) = &tele { li class=(t.severity()) { (t.text()) } }
                    }
                }
                p.muted {
                    "version " (s.version) " · protocol " (s.protocol_version) " · "
                    (s.keys) " keys · " (s.objects) " objects · " (s.notifications) " notifications"
                }
            },
            Err(e) => (failed("the node's status", e)),
        }
        h2 { "Keys" }
        @match d.keys {
            Err(e) => (failed("the keys", e)),
            Ok(list) if list.keys.is_empty() => p.muted { "No keys yet." },
            Ok(list) => table #keys {
                thead { tr { th { "Key" } th { "Product" } th { "Customer" } th { "Seats" } th { "State" } th { "Ends" } th { "Warnings" } } }
                tbody {
                    @for k in &list.keys {
                        @let key = k.key.clone().unwrap_or_default();
                        tr data-key=(key.id) {
                            td { (key_link(&key.id)) }
                            td { (key.product) }
                            td { (key.customer) }
                            td { (seats_bar(Seats::of(k))) }
                            td class=(state_class(&k.state)) { (k.state) }
                            td { (widgets::end_date(k)) }
                            td { (warning_list(&key_warnings(k, today))) }
                        }
                    }
                }
            },
        }
        @if v.can_write {
            h2 { "Actions" }
            form.action #add-key method="post" action="/keys" enctype="multipart/form-data" {
                (csrf_field(v))
                label { "Key file " input type="file" name="key_file" required; }
                label { "Activation "
                    select name="activation" {
                        option value="" { "none: add the key on its own" }
                        option value="add-seats" { "add-seats" }
                        option value="extend" { "extend" }
                    }
                }
                button type="submit" { "Add key" }
            }
            form.action #renew-all method="post" action="/renew" data-confirm="Ask the upstream for newer keys and replace the old ones?" {
                (csrf_field(v))
                button type="submit" { "Check for updates and replace keys" }
            }
        }
    };
    layout(v, Nav::Dashboard, "Dashboard", &body)
}

/// What a key's page shows.
pub struct KeyPage<'a> {
    pub key: &'a pb::KeyInfo,
    /// Objects holding grants of this key.
    pub objects: &'a Fetched<pb::ObjectList>,
    /// Every key, to find what renewed this one.
    pub keys: &'a Fetched<pb::KeyList>,
    /// This node's usage history of the key.
    pub history: &'a Fetched<pb::UsageHistoryReply>,
    /// Renewal outcomes, after "check for updates" on this page.
    pub report: Option<&'a pb::RenewalReport>,
}

/// Grants per object (lending with end dates), the renewal chain, the
/// usage chart; for an administrator the assign and unassign forms.
#[must_use]
pub fn key_page(v: &View<'_>, p: &KeyPage<'_>) -> String {
    let k = p.key;
    let key = k.key.clone().unwrap_or_default();
    let id = key.id.as_str();
    let renewed_by: Vec<&pb::KeyInfo> = p
        .keys
        .as_ref()
        .map(|l| {
            l.keys
                .iter()
                .filter(|o| o.key.as_ref().is_some_and(|x| x.renews == id))
                .collect()
        })
        .unwrap_or_default();
    let grants: Vec<(&pb::ObjectInfo, &pb::GrantInfo)> = p
        .objects
        .as_ref()
        .map(|l| {
            l.objects
                .iter()
                .flat_map(|o| {
                    o.grants
                        .iter()
                        .filter(|g| g.key_id == id)
                        .map(move |g| (o, g))
                })
                .collect()
        })
        .unwrap_or_default();
    let enc = urlencode(id);
    let body = html! {
        table.facts {
            tr { th { "Seats" } td { (seats_bar(Seats::of(k))) } }
            tr { th { "State" } td class=(state_class(&k.state)) { (k.state) } }
            tr { th { "Ends" } td { (widgets::end_date(k)) } }
            tr { th { "Product" } td { (key.product) " (" (key.components.join(", ")) ")" } }
            tr { th { "Customer" } td { (key.customer) @if !k.owner.is_empty() { " · owner " (k.owner) } } }
            tr { th { "License" } td.mono { (key.license) " #" (key.serial) } }
            tr { th { "Warnings" } td { (warning_list(&key_warnings(k, widgets::today(v.now)))) } }
        }
        h2 { "Usage history" }
        @match p.history {
            Err(e) => (failed("the usage history", e)),
            Ok(h) => {
                @let mine: Vec<pb::UsagePoint> = h.points.iter().filter(|x| x.key_id == id && (x.node_id.is_empty() || x.node_id == v.node_id)).cloned().collect();
                (widgets::usage_chart(&mine))
            },
        }
        p { a #usage-csv href={"/keys/" (enc) "/usage.csv"} download { "Download the usage history (CSV)" } }
        h2 { "Renewal chain" }
        ul #renewal-chain {
            @if key.renews.is_empty() { li.muted { "renews no earlier key" } }
            @else { li { "renews " (key_link(&key.renews)) } }
            @for r in &renewed_by {
                li { "renewed by " (key_link(r.key.as_ref().map_or("", |x| x.id.as_str()))) }
            }
            @if !k.merged_into.is_empty() { li { "activated on " (key_link(&k.merged_into)) } }
            @if renewed_by.is_empty() && k.merged_into.is_empty() { li.muted { "not renewed yet" } }
        }
        @if let Some(r) = p.report {
            h2 { "Check for updates" }
            table #renewal-report {
                thead { tr { th { "Key" } th { "Outcome" } th { "New key" } th { "Reason" } } }
                tbody { @for o in &r.outcomes { tr { td.mono { (o.key_id) } td { (o.outcome) } td.mono { (o.new_key_id) } td { (o.reason) } } } }
            }
        }
        h2 { "Grants" }
        @match p.objects {
            Err(e) => (failed("the grants", e)),
            Ok(_) if grants.is_empty() => p.muted #grants { "No seats of this key are granted." },
            Ok(_) => table #grants {
                thead { tr { th { "Object" } th { "Kind" } th.num { "Seats" } th { "Granted" } th { "Lent until" } th { "Delivered" } @if v.can_write { th {} } } }
                tbody {
                    @for (o, g) in &grants {
                        tr data-object=(o.name) {
                            td.mono { (o.name) }
                            td { (kind_name(g.kind)) }
                            td.num { (g.seats) }
                            td { (g.granted_at) }
                            td { @if g.lent_until.is_empty() { span.muted { "—" } } @else { (g.lent_until) } }
                            td { @if g.kind == pb::ObjectKind::Server as i32 { @if g.delivered { "yes" } @else { span.warn { "not yet" } } } }
                            @if v.can_write {
                                td {
                                    form.inline method="post" action={"/keys/" (enc) "/unassign"} data-confirm={"Take every seat of this key from " (o.name) "?"} {
                                        (csrf_field(v))
                                        input type="hidden" name="object" value=(o.name);
                                        button.danger type="submit" { "Unassign" }
                                    }
                                }
                            }
                        }
                    }
                }
            },
        }
        @if let Ok(l) = p.objects {
            @if !l.next_page_token.is_empty() {
                p.muted #more-grants {
                    "More objects hold this key than shown here: see "
                    a href={"/stations?key_id=" (enc)} { "every station holding it" } "."
                }
            }
        }
        @if v.can_write {
            form.action #assign method="post" action={"/keys/" (enc) "/assign"} {
                (csrf_field(v))
                label { "Object " input type="text" name="object" required placeholder="station id or node id"; }
                label { "Seats " input type="number" name="seats" min="1" value="1" required; }
                label { "Kind "
                    select name="kind" {
                        option value="" { "automatic" }
                        option value="station" { "station" }
                        option value="server" { "server" }
                    }
                }
                label { "Lend for days " input type="number" name="donation_days" min="0" value="0"; }
                button type="submit" { "Assign seats" }
            }
            form.action #renew-key method="post" action={"/keys/" (enc) "/renew"} {
                (csrf_field(v))
                button type="submit" { "Check for updates of this key" }
            }
        }
    };
    layout(v, Nav::None, &format!("Key {id}"), &body)
}

/// What the federation tree shows.
pub struct Tree<'a> {
    pub peers: &'a Fetched<pb::PeerList>,
    /// Usage with every subtree row (`tree: true`).
    pub usage: &'a Fetched<pb::UsageReport>,
    /// A peer's console, where the node's config names it.
    pub console_of: &'a dyn Fn(&str) -> Option<String>,
}

/// Only http(s) URLs become links (never `javascript:` and friends).
fn is_web_url(u: &str) -> bool {
    let l = u.to_ascii_lowercase();
    l.starts_with("http://") || l.starts_with("https://")
}

fn usage_of(usage: &Fetched<pb::UsageReport>, node: &str) -> Markup {
    let rows: Vec<&pb::KeyUsage> = usage
        .as_ref()
        .map(|u| u.rows.iter().filter(|r| r.node_id == node).collect())
        .unwrap_or_default();
    html! {
        @if rows.is_empty() { span.muted { "—" } }
        @for r in rows {
            div.usage data-key=(r.key_id) data-seats=(r.seats) data-used=(r.used) {
                span.mono { (r.key_id) } ": " (r.used) " used of " (r.seats)
            }
        }
    }
}

/// This node, its parent, children and neighbors: link state, protocol,
/// outbox depth and the usage each subtree reported.
#[must_use]
pub fn tree(v: &View<'_>, t: &Tree<'_>) -> String {
    let body = html! {
        @if let Err(e) = t.usage { (failed("the subtree usage", e)) }
        @match t.peers {
            Err(e) => (failed("the peers", e)),
            Ok(list) => table #tree {
                thead { tr { th { "Node" } th { "Role" } th { "Link" } th { "Since" } th.num { "Protocol" } th.num { "Outbox" } th { "Usage" } } }
                tbody {
                    tr data-node=(v.node_id) {
                        td { strong { (v.node_id) } } td { "this node" } td {} td {} td.num {} td.num {}
                        td { (usage_of(t.usage, v.node_id)) }
                    }
                    @for role in ["parent", "child", "neighbor"] {
                        @for p in list.peers.iter().filter(|p| p.role == role) {
                            tr data-node=(p.node_id) {
                                td {
                                    @match (t.console_of)(&p.node_id).filter(|u| is_web_url(u)) {
                                        Some(url) => a href=(url) { (p.node_id) },
                                        None => (p.node_id),
                                    }
                                    br; span.muted.mono { (p.address) }
                                }
                                td { (p.role) }
                                td class=(if p.online { "online" } else { "offline" }) { @if p.online { "online" } @else { "offline" } }
                                td { (p.since) }
                                td.num { (p.protocol_version) }
                                td class=(if p.outbox_depth > 0 { "num warn" } else { "num" }) { (p.outbox_depth) }
                                td { (usage_of(t.usage, &p.node_id)) }
                            }
                        }
                    }
                }
            },
        }
    };
    layout(v, Nav::Tree, "Federation", &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(can_write: bool) -> View<'static> {
        View {
            node_id: "main",
            now: "2026-12-01T00:00:00Z",
            actor: "ops",
            can_write,
            csrf: "tok",
            flash: None,
            logged_in: true,
        }
    }

    fn keys() -> pb::KeyList {
        pb::KeyList {
            keys: vec![pb::KeyInfo {
                key: Some(pb::Key {
                    id: "k/1".into(),
                    customer: "<Acme>".into(),
                    seats: 5,
                    expires: "2026-12-20".into(),
                    ..Default::default()
                }),
                seats_assigned: 2,
                seats_free: 3,
                state: "active".into(),
                ..Default::default()
            }],
        }
    }

    #[test]
    fn the_dashboard_lists_keys_and_shows_forms_only_to_an_admin() {
        let (s, k) = (Ok(pb::NodeStatus::default()), Ok(keys()));
        let t = Err("TelemetryStatus failed".into());
        let p = Ok(pb::PeerList::default());
        let d = Dashboard {
            status: &s,
            keys: &k,
            telemetry: &t,
            peers: &p,
        };
        let page = dashboard(&view(true), &d);
        assert!(page.contains(r#"href="/keys/k%2F1""#), "{page}");
        assert!(page.contains("&lt;Acme&gt;") && page.contains("2 used / 5 held / 3 free"));
        assert!(page.contains("expires in 19 days"));
        assert!(page.contains(r#"id="add-key""#) && page.contains(r#"name="csrf" value="tok""#));
        let page = dashboard(&view(false), &d);
        assert!(!page.contains("<form method=\"post\" action=\"/keys\""));
        assert!(!page.contains(r#"id="add-key""#) && !page.contains(r#"id="renew-all""#));
    }

    #[test]
    fn a_key_page_shows_the_renewal_chain_and_a_failed_history_politely() {
        let mut list = keys();
        let mut newer = list.keys[0].clone();
        newer.key.as_mut().unwrap().id = "k2".into();
        newer.key.as_mut().unwrap().renews = "k/1".into();
        list.keys.push(newer);
        let k = list.keys[0].clone();
        let objects = Ok(pb::ObjectList {
            objects: vec![pb::ObjectInfo {
                name: "child".into(),
                grants: vec![pb::GrantInfo {
                    key_id: "k/1".into(),
                    object: "child".into(),
                    kind: pb::ObjectKind::Server as i32,
                    seats: 2,
                    lent_until: "2027-01-01T00:00:00Z".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            next_page_token: String::new(),
        });
        let (keys, history) = (
            Ok(list),
            Err("UNIMPLEMENTED: usage history is not built yet".into()),
        );
        let page = key_page(
            &view(true),
            &KeyPage {
                key: &k,
                objects: &objects,
                keys: &keys,
                history: &history,
                report: None,
            },
        );
        assert!(
            page.contains(r#"renewed by <a class="mono" href="/keys/k2">k2</a>"#),
            "{page}"
        );
        assert!(page.contains("2027-01-01T00:00:00Z") && page.contains("not yet"));
        assert!(page.contains("Could not load the usage history: UNIMPLEMENTED"));
        assert!(page.contains(r#"action="/keys/k%2F1/unassign""#));
        let page = key_page(
            &view(false),
            &KeyPage {
                key: &k,
                objects: &objects,
                keys: &keys,
                history: &history,
                report: None,
            },
        );
        assert!(!page.contains("unassign") && !page.contains(r#"id="assign""#));
    }

    #[test]
    fn the_tree_links_a_peer_console_when_known_and_shows_subtree_usage() {
        let peers = Ok(pb::PeerList {
            peers: vec![pb::PeerInfo {
                node_id: "c".into(),
                role: "child".into(),
                online: true,
                outbox_depth: 3,
                ..Default::default()
            }],
        });
        let usage = Ok(pb::UsageReport {
            rows: vec![pb::KeyUsage {
                node_id: "c".into(),
                key_id: "k1".into(),
                seats: 4,
                used: 1,
                ..Default::default()
            }],
        });
        let known = |id: &str| (id == "c").then(|| "http://10.0.0.2:7603/".to_owned());
        let evil = |_: &str| Some("javascript:alert(1)".to_owned());
        let page = tree(
            &view(false),
            &Tree {
                peers: &peers,
                usage: &usage,
                console_of: &evil,
            },
        );
        assert!(!page.contains("javascript:"), "{page}");
        let page = tree(
            &view(false),
            &Tree {
                peers: &peers,
                usage: &usage,
                console_of: &known,
            },
        );
        assert!(
            page.contains(r#"<a href="http://10.0.0.2:7603/">c</a>"#),
            "{page}"
        );
        assert!(page.contains(r#"data-seats="4" data-used="1""#) && page.contains("1 used of 4"));
        assert!(page.contains(r#"class="num warn">3<"#));
    }
}

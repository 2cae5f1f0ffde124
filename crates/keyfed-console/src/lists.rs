//! The list pages: stations (paginated, searchable, by state),
//! notifications (live over SSE), denials, the audit trail and commands.
use crate::pages::urlencode;
use crate::{csrf_field, failed, layout, Fetched, Nav, View};
use keyfed_wire::v1 as pb;
use maud::{html, Markup};

/// The stations filter, as the page's query string carries it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StationFilter {
    pub state: String,
    pub search: String,
    pub key_id: String,
    pub page_token: String,
}

impl StationFilter {
    /// The query string of this filter at another page.
    #[must_use]
    pub fn at(&self, page_token: &str) -> String {
        let mut q = Vec::new();
        for (k, v) in [
            ("state", &self.state),
            ("search", &self.search),
            ("key_id", &self.key_id),
            ("page_token", &page_token.to_owned()),
        ] {
            if !v.is_empty() {
                q.push(format!("{k}={}", urlencode(v)));
            }
        }
        if q.is_empty() {
            "/stations".into()
        } else {
            format!("/stations?{}", q.join("&"))
        }
    }
}

const STATES: &[&str] = &["licensed", "unlicensed", "retired"];

/// One page of stations with the search form and a link to the next page.
#[must_use]
pub fn stations(v: &View<'_>, f: &StationFilter, list: &Fetched<pb::StationList>) -> String {
    let body = html! {
        form.action #station-search method="get" action="/stations" {
            label { "Search " input type="search" name="search" value=(f.search) placeholder="fingerprint, station id or tenant prefix"; }
            label { "State "
                select name="state" {
                    option value="" selected[f.state.is_empty()] { "any" }
                    @for s in STATES { option value=(s) selected[f.state == *s] { (s) } }
                }
            }
            label { "Key " input type="text" name="key_id" value=(f.key_id); }
            button type="submit" { "Filter" }
        }
        @match list {
            Err(e) => (failed("the stations", e)),
            Ok(l) => {
                p.muted #station-count {
                    (l.total) @if l.total_capped { " or more" } " station(s) match"
                }
                table #stations {
                    thead { tr { th { "Fingerprint" } th { "Station" } th { "Tenant" } th { "Key" } th { "State" } th { "Last contact" } th.num { "Reports" } } }
                    tbody {
                        @for s in &l.stations {
                            tr {
                                td.mono { (s.fingerprint) } td { (s.station_id) } td { (s.tenant) }
                                td.mono { @if !s.key_id.is_empty() { a href={"/keys/" (urlencode(&s.key_id))} { (s.key_id) } } }
                                td { (s.state) } td { (s.last_contact) } td.num { (s.reports) }
                            }
                        }
                    }
                }
                div.pager {
                    @if !f.page_token.is_empty() { a href=(f.at("")) { "« first page" } }
                    @if !l.next_page_token.is_empty() { a #next-page href=(f.at(&l.next_page_token)) { "next page »" } }
                }
            },
        }
    };
    layout(v, Nav::Stations, "Stations", &body)
}

/// The newest notifications first; the script adds live ones on top.
#[must_use]
pub fn notifications(
    v: &View<'_>,
    list: &Fetched<pb::NotificationList>,
    webhooks: &Fetched<pb::WebhookList>,
) -> String {
    let body = html! {
        @match list {
            Err(e) => (failed("the notifications", e)),
            Ok(l) => {
                @let last = l.notifications.iter().map(|n| n.seq).max().unwrap_or(0);
                p.muted { span #live { "not live (needs JavaScript)" } }
                table #notifications data-after-seq=(last) {
                    thead { tr { th.num { "Seq" } th { "At" } th { "Event" } th { "Key" } th { "Message" } } }
                    tbody {
                        @for n in l.notifications.iter().rev() {
                            tr data-seq=(n.seq) { td.num { (n.seq) } td { (n.at) } td { (n.event) } td.mono { (n.key_id) } td { (n.message) } }
                        }
                    }
                }
            },
        }
        h2 { "Webhooks" }
        @match webhooks {
            Err(e) => (failed("the webhooks", e)),
            Ok(w) if w.webhooks.is_empty() => p.muted { "No webhooks configured." },
            Ok(w) => table #webhooks {
                thead { tr { th { "URL" } th { "Events" } th.num { "Pending" } th.num { "Delivered" } th.num { "Failed attempts" } th { "Last delivery" } th { "Last error" } th { "Next attempt" } } }
                tbody {
                    @for h in &w.webhooks {
                        tr { td.mono { (h.url) } td { @if h.events.is_empty() { "every event" } @else { (h.events.join(", ")) } }
                             td.num { (h.pending) } td.num { (h.delivered) } td.num { (h.failed_attempts) }
                             td { (h.last_delivery_at) } td.bad { (h.last_error) } td { (h.next_attempt_at) } }
                    }
                }
            },
        }
    };
    layout(v, Nav::Notifications, "Notifications", &body)
}

/// Refused station connections and assignments, with counts by reason.
#[must_use]
pub fn denials(v: &View<'_>, list: &Fetched<pb::DenialList>) -> String {
    let body = html! {
        @match list {
            Err(e) => (failed("the denials", e)),
            Ok(l) => {
                @if !l.counts_by_reason.is_empty() {
                    @let counts: std::collections::BTreeMap<&String, &u64> = l.counts_by_reason.iter().collect();
                    p #denial-counts { @for (r, n) in &counts { span.mono { (r) } ": " (n) " · " } }
                }
                @if l.dropped > 0 { p.warn { (l.dropped) " older denial(s) were dropped" } }
                table #denials {
                    thead { tr { th.num { "Seq" } th { "At" } th { "Kind" } th { "Object" } th { "Key" } th { "Node" } th { "Reason" } th { "Message" } } }
                    tbody {
                        @for d in l.denials.iter().rev() {
                            tr { td.num { (d.seq) } td { (d.at) } td { (d.kind) } td.mono { (d.object) } td.mono { (d.key_id) }
                                 td { (d.node_id) } td.mono { (d.reason) } td { (d.message) } }
                        }
                    }
                }
            },
        }
    };
    layout(v, Nav::Denials, "Denials", &body)
}

/// One page of the audit trail from `after_seq`, oldest first.
#[must_use]
pub fn audit(v: &View<'_>, list: &Fetched<pb::AuditList>, page: u32) -> String {
    let body = html! {
        @match list {
            Err(e) => (failed("the audit trail", e)),
            Ok(l) => {
                table #audit {
                    thead { tr { th.num { "Seq" } th { "At" } th { "Actor" } th { "Action" } th { "Detail" } th { "Outcome" } } }
                    tbody {
                        @for e in &l.entries {
                            tr { td.num { (e.seq) } td { (e.at) } td { (e.actor) } td.mono { (e.action) } td { (e.detail) }
                                 td class=(if e.outcome == "ok" { "state-ok" } else { "state-bad" }) { (e.outcome) } }
                        }
                    }
                }
                @if let Some(last) = l.entries.last().filter(|_| l.entries.len() >= page as usize) {
                    div.pager { a href={"/audit?after_seq=" (last.seq)} { "next page »" } }
                }
            },
        }
    };
    layout(v, Nav::Audit, "Audit trail", &body)
}

fn queue_form(v: &View<'_>) -> Markup {
    html! {
        form.action #queue-command method="post" action="/commands" {
            (csrf_field(v))
            label { "Object " input type="text" name="object" required placeholder="station fingerprint or child node id"; }
            label { "Command " input type="text" name="command" required; }
            button type="submit" { "Queue command" }
        }
    }
}

/// Queued commands and their delivery; the queue form for an administrator.
#[must_use]
pub fn commands(v: &View<'_>, list: &Fetched<pb::CommandList>) -> String {
    let body = html! {
        @if v.can_write { (queue_form(v)) }
        @match list {
            Err(e) => (failed("the commands", e)),
            Ok(l) if l.commands.is_empty() => p.muted { "No commands queued." },
            Ok(l) => table #commands {
                thead { tr { th { "Id" } th { "Object" } th { "Command" } th { "Queued" } th { "State" } th { "Changed" } th { "Expires" } } }
                tbody {
                    @for c in &l.commands {
                        tr { td.mono { (c.id) } td.mono { (c.object) } td.mono { (c.command) } td { (c.queued_at) }
                             td { (c.state) } td { (c.changed_at) } td { (c.expires_at) } }
                    }
                }
            },
        }
    };
    layout(v, Nav::Commands, "Commands", &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(can_write: bool) -> View<'static> {
        View {
            node_id: "main",
            now: "",
            actor: "ops",
            can_write,
            csrf: "tok",
            flash: None,
            logged_in: true,
        }
    }

    #[test]
    fn the_station_pager_keeps_the_filter_and_encodes_it() {
        let f = StationFilter {
            state: "licensed".into(),
            search: "pc 1&x".into(),
            ..StationFilter::default()
        };
        assert_eq!(
            f.at("t9"),
            "/stations?state=licensed&search=pc%201%26x&page_token=t9"
        );
        assert_eq!(StationFilter::default().at(""), "/stations");
        let l = Ok(pb::StationList {
            stations: vec![pb::StationInfo {
                fingerprint: "fp1".into(),
                ..Default::default()
            }],
            next_page_token: "t9".into(),
            total: 1200,
            total_capped: false,
        });
        let page = stations(&view(false), &f, &l);
        assert!(page.contains("1200 station(s) match"));
        let capped = Ok(pb::StationList {
            total: 1000,
            total_capped: true,
            ..Default::default()
        });
        // a search counts matches only up to 1000
        assert!(stations(&view(false), &f, &capped).contains("1000 or more station(s) match"));
        assert!(
            page.contains(
                r#"href="/stations?state=licensed&amp;search=pc%201%26x&amp;page_token=t9""#
            ),
            "{page}"
        );
        assert!(
            page.contains(r#"<option value="licensed" selected>"#),
            "{page}"
        );
    }

    #[test]
    fn notifications_start_live_after_the_newest_shown() {
        let l = Ok(pb::NotificationList {
            notifications: vec![
                pb::Notification {
                    seq: 4,
                    event: "key-added".into(),
                    ..Default::default()
                },
                pb::Notification {
                    seq: 9,
                    event: "<i>x</i>".into(),
                    ..Default::default()
                },
            ],
        });
        let page = notifications(&view(true), &l, &Err("UNIMPLEMENTED: webhooks".into()));
        assert!(page.contains(r#"data-after-seq="9""#));
        // newest first
        assert!(page.find(r#"data-seq="9""#) < page.find(r#"data-seq="4""#));
        assert!(
            page.contains("&lt;i&gt;x&lt;/i&gt;") && page.contains("Could not load the webhooks")
        );
    }

    #[test]
    fn the_queue_form_is_for_administrators_only() {
        let l = Ok(pb::CommandList::default());
        assert!(commands(&view(true), &l).contains(r#"id="queue-command""#));
        assert!(!commands(&view(false), &l).contains(r#"id="queue-command""#));
    }
}

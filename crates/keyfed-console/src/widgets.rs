//! The console's pure pieces: the seats bar, a key's warnings and the usage
//! chart, each an SVG or a list computed from the messages alone.
use chrono::{DateTime, NaiveDate, Utc};
use keyfed_wire::v1 as pb;
use maud::{html, Markup};

/// A key expiring within this many days is flagged.
pub const EXPIRING_DAYS: i64 = 30;
/// A telemetry report due within this many days is flagged.
pub const TELEMETRY_DUE_DAYS: i64 = 7;

/// Seats of one key on this node: `used` of them given to holders, `held`
/// in all, `free` still to give. `held` may be below `used` when the key
/// lost seats (over-allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seats {
    pub used: u32,
    pub held: u32,
    pub free: u32,
}

impl Seats {
    #[must_use]
    pub fn of(k: &pb::KeyInfo) -> Self {
        let held = if k.seats_entitled > 0 {
            k.seats_entitled
        } else {
            k.key.as_ref().map_or(0, |k| k.seats)
        };
        Self {
            used: k.seats_assigned,
            held,
            free: k.seats_free,
        }
    }
}

const BAR_W: u32 = 200;
const BAR_H: u32 = 14;

/// The seats bar: used (blue) and free (green) as parts of the wider of
/// held and used, over-allocation (used beyond held) red; the counts as text.
#[must_use]
pub fn seats_bar(s: Seats) -> Markup {
    let whole = s.held.max(s.used).max(1);
    let px = |n: u32| u64::from(n) * u64::from(BAR_W) / u64::from(whole);
    let used_in = s.used.min(s.held);
    let over = s.used.saturating_sub(s.held);
    let free = s.free.min(s.held.saturating_sub(used_in));
    let (w_used, w_over, w_free) = (px(used_in), px(over), px(free));
    let label = format!("{} used / {} held / {} free", s.used, s.held, s.free);
    html! {
        span.bar data-used=(s.used) data-held=(s.held) data-free=(s.free) {
            svg width=(BAR_W) height=(BAR_H) viewBox={"0 0 " (BAR_W) " " (BAR_H)} role="img" aria-label=(label) {
                title { (label) }
                rect x="0" y="0" width=(BAR_W) height=(BAR_H) fill="#eceff1" {}
                rect x="0" y="0" width=(w_used) height=(BAR_H) fill="#1565c0" {}
                rect x=(w_used) y="0" width=(w_over) height=(BAR_H) fill="#c62828" {}
                rect x=(w_used + w_over) y="0" width=(w_free) height=(BAR_H) fill="#66bb6a" {}
            }
            " " span.seats { (label) }
        }
    }
}

/// Something about a key (or the node) an operator should look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// Expires within [`EXPIRING_DAYS`]: days left.
    Expiring(i64),
    /// Expired, still usable in its grace period.
    Grace,
    /// Holders beyond the available seats (e06).
    OverAllocation(Vec<String>),
    /// Suspended or superseded: not handing out seats.
    NotActive(String),
    /// The node's telemetry report is due in this many days (negative: overdue).
    TelemetryDue(i64),
}

impl Warning {
    #[must_use]
    pub fn text(&self) -> String {
        match self {
            Self::Expiring(0) => "expires today".into(),
            Self::Expiring(1) => "expires tomorrow".into(),
            Self::Expiring(d) => format!("expires in {d} days"),
            Self::Grace => "expired: in its grace period, renew it".into(),
            Self::OverAllocation(who) => format!(
                "over-allocated: {} holder(s) beyond the available seats ({})",
                who.len(),
                who.join(", ")
            ),
            Self::NotActive(state) => format!("{state}: hands out no seats"),
            Self::TelemetryDue(d) if *d < 0 => {
                format!("telemetry report overdue by {} day(s)", -d)
            }
            Self::TelemetryDue(d) => format!("telemetry report due in {d} day(s)"),
        }
    }

    /// `bad` or `warn`, the CSS class.
    #[must_use]
    pub fn severity(&self) -> &'static str {
        match self {
            Self::Grace | Self::OverAllocation(_) => "bad",
            Self::TelemetryDue(d) if *d < 0 => "bad",
            _ => "warn",
        }
    }
}

/// The day `now` (RFC 3339) falls on, in UTC.
#[must_use]
pub fn today(now: &str) -> Option<NaiveDate> {
    DateTime::parse_from_rfc3339(now)
        .ok()
        .map(|t| t.with_timezone(&Utc).date_naive())
}

/// The last valid day of a key: after activations or a trial extension
/// when the node says so, else the key's own `expires`.
#[must_use]
pub fn end_date(k: &pb::KeyInfo) -> String {
    if k.entitled_until.is_empty() {
        k.key
            .as_ref()
            .map(|k| k.expires.clone())
            .unwrap_or_default()
    } else {
        k.entitled_until.clone()
    }
}

/// What is wrong, or soon will be, with `k` on `today`.
#[must_use]
pub fn key_warnings(k: &pb::KeyInfo, today: Option<NaiveDate>) -> Vec<Warning> {
    let mut w = Vec::new();
    match k.state.as_str() {
        "expired-grace" => w.push(Warning::Grace),
        "suspended" | "superseded" => w.push(Warning::NotActive(k.state.clone())),
        _ => {}
    }
    if k.state == "active" {
        let end = NaiveDate::parse_from_str(&end_date(k), "%Y-%m-%d").ok();
        if let (Some(end), Some(today)) = (end, today) {
            let left = (end - today).num_days();
            if (0..=EXPIRING_DAYS).contains(&left) {
                w.push(Warning::Expiring(left));
            }
        }
    }
    if !k.over_limit.is_empty() {
        w.push(Warning::OverAllocation(k.over_limit.clone()));
    }
    w
}

/// The node-wide telemetry warning, if its report is due soon.
#[must_use]
pub fn telemetry_warning(t: &pb::TelemetryStatusReply) -> Option<Warning> {
    (!t.next_due.is_empty() && t.days_left <= TELEMETRY_DUE_DAYS)
        .then_some(Warning::TelemetryDue(t.days_left))
}

#[must_use]
pub fn warning_list(ws: &[Warning]) -> Markup {
    html! {
        @if ws.is_empty() {
            span.muted { "none" }
        } @else {
            ul.warnings {
                @for w in ws { li class=(w.severity()) { (w.text()) } }
            }
        }
    }
}

const CHART_W: f64 = 640.0;
const CHART_H: f64 = 180.0;
const PAD: f64 = 36.0;

/// The usage history of one key as an SVG line chart: seats held (grey) and
/// used (blue) over time. Points are taken in time order; points of other
/// nodes should be filtered out by the caller.
#[must_use]
pub fn usage_chart(points: &[pb::UsagePoint]) -> Markup {
    let mut pts: Vec<(i64, &pb::UsagePoint)> = points
        .iter()
        .filter_map(|p| {
            DateTime::parse_from_rfc3339(&p.at)
                .ok()
                .map(|t| (t.timestamp(), p))
        })
        .collect();
    pts.sort_by_key(|(t, _)| *t);
    if pts.is_empty() {
        return html! { p.muted { "No usage history recorded yet." } };
    }
    let (t0, t1) = (pts[0].0, pts[pts.len() - 1].0);
    let top = pts
        .iter()
        .map(|(_, p)| p.held.max(p.used))
        .max()
        .unwrap_or(0)
        .max(1);
    #[allow(clippy::cast_precision_loss)] // seconds and seat counts fit f64 exactly
    let xy = |t: i64, v: u32| {
        let x = if t1 == t0 {
            CHART_W / 2.0
        } else {
            PAD + (t - t0) as f64 / (t1 - t0) as f64 * (CHART_W - 2.0 * PAD)
        };
        let y = CHART_H - PAD + -(f64::from(v) / f64::from(top)) * (CHART_H - 2.0 * PAD);
        format!("{x:.1},{y:.1}")
    };
    let line = |f: fn(&pb::UsagePoint) -> u32| {
        pts.iter()
            .map(|(t, p)| xy(*t, f(p)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let held = line(|p| p.held);
    let used = line(|p| p.used);
    let base = CHART_H - PAD;
    html! {
        svg.chart width=(CHART_W) height=(CHART_H) viewBox={"0 0 " (CHART_W) " " (CHART_H)} role="img" aria-label="usage history" {
            title { "seats held and used, " (pts[0].1.at) " to " (pts[pts.len() - 1].1.at) }
            rect x="0" y="0" width=(CHART_W) height=(CHART_H) fill="#fff" {}
            line x1=(PAD) y1=(base) x2=(CHART_W - PAD) y2=(base) stroke="#999" {}
            line x1=(PAD) y1=(PAD) x2=(PAD) y2=(base) stroke="#999" {}
            text x=(PAD - 4.0) y=(PAD + 4.0) text-anchor="end" font-size="11" { (top) }
            text x=(PAD - 4.0) y=(base + 4.0) text-anchor="end" font-size="11" { "0" }
            text x=(PAD) y=(CHART_H - 12.0) font-size="11" { (pts[0].1.at) }
            text x=(CHART_W - PAD) y=(CHART_H - 12.0) text-anchor="end" font-size="11" { (pts[pts.len() - 1].1.at) }
            polyline.held points=(held) fill="none" stroke="#90a4ae" stroke-width="2" {}
            polyline.used points=(used) fill="none" stroke="#1565c0" stroke-width="2" {}
            text x=(CHART_W - PAD) y=(PAD - 14.0) text-anchor="end" font-size="11" {
                tspan fill="#90a4ae" { "— held " } tspan fill="#1565c0" { "— used" }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(state: &str, expires: &str, over: &[&str]) -> pb::KeyInfo {
        pb::KeyInfo {
            key: Some(pb::Key {
                id: "k1".into(),
                seats: 10,
                expires: expires.into(),
                ..Default::default()
            }),
            seats_assigned: 4,
            seats_free: 6,
            state: state.into(),
            over_limit: over.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_seats_bar_shows_used_held_and_free_in_proportion() {
        let s = Seats::of(&key("active", "2027-01-01", &[]));
        assert_eq!(
            s,
            Seats {
                used: 4,
                held: 10,
                free: 6
            }
        );
        let svg = seats_bar(s).into_string();
        assert!(svg.contains("4 used / 10 held / 6 free"), "{svg}");
        // 4 of 10 seats in a 200 px bar: 80 px used, then 120 px free
        assert!(
            svg.contains(r##"width="80" height="14" fill="#1565c0""##),
            "{svg}"
        );
        assert!(
            svg.contains(r##"x="80" y="0" width="120" height="14" fill="#66bb6a""##),
            "{svg}"
        );
        // over-allocated: 12 used of 10 held, the extra 2 in red, nothing free
        let svg = seats_bar(Seats {
            used: 12,
            held: 10,
            free: 0,
        })
        .into_string();
        assert!(
            svg.contains(r##"width="166" height="14" fill="#1565c0""##),
            "{svg}"
        );
        assert!(
            svg.contains(r##"x="166" y="0" width="33" height="14" fill="#c62828""##),
            "{svg}"
        );
        // an empty key draws an empty bar rather than dividing by zero
        assert!(seats_bar(Seats {
            used: 0,
            held: 0,
            free: 0
        })
        .into_string()
        .contains("0 used"));
    }

    #[test]
    fn warnings_name_expiry_grace_over_allocation_and_telemetry() {
        let today = NaiveDate::from_ymd_opt(2026, 12, 1);
        assert_eq!(
            key_warnings(&key("active", "2026-12-11", &[]), today),
            [Warning::Expiring(10)]
        );
        assert!(key_warnings(&key("active", "2027-06-01", &[]), today).is_empty());
        assert_eq!(
            key_warnings(&key("expired-grace", "2026-11-20", &[]), today),
            [Warning::Grace]
        );
        let w = key_warnings(&key("active", "2027-06-01", &["pc-9"]), today);
        assert_eq!(w, [Warning::OverAllocation(vec!["pc-9".into()])]);
        assert!(w[0].text().contains("pc-9") && w[0].severity() == "bad");
        // entitled_until (an activation) wins over the key's own date
        let mut k = key("active", "2026-12-05", &[]);
        k.entitled_until = "2027-12-05".into();
        assert!(key_warnings(&k, today).is_empty());
        let t = pb::TelemetryStatusReply {
            next_due: "2026-12-03T00:00:00Z".into(),
            days_left: -2,
            ..Default::default()
        };
        let w = telemetry_warning(&t).expect("overdue");
        assert_eq!(
            (w.text().as_str(), w.severity()),
            ("telemetry report overdue by 2 day(s)", "bad")
        );
        let t = pb::TelemetryStatusReply { days_left: 40, ..t };
        assert_eq!(telemetry_warning(&t), None);
        assert_eq!(
            today_of("2026-12-01T23:30:00-02:00"),
            NaiveDate::from_ymd_opt(2026, 12, 2)
        );
    }

    fn today_of(s: &str) -> Option<NaiveDate> {
        today(s)
    }

    #[test]
    fn the_usage_chart_plots_points_in_time_order_scaled_to_the_peak() {
        let p = |at: &str, held, used| pb::UsagePoint {
            at: at.into(),
            held,
            used,
            ..Default::default()
        };
        let svg = usage_chart(&[
            p("2026-01-01T02:00:00Z", 10, 10),
            p("2026-01-01T00:00:00Z", 10, 0),
            p("2026-01-01T01:00:00Z", 10, 5),
        ])
        .into_string();
        // x from 36 to 604, y from 144 (0 seats) to 36 (10 seats)
        assert!(
            svg.contains(r#"points="36.0,144.0 320.0,90.0 604.0,36.0""#),
            "{svg}"
        );
        assert!(
            svg.contains(r#"points="36.0,36.0 320.0,36.0 604.0,36.0""#),
            "{svg}"
        );
        assert!(svg.contains(">10</text>"));
        assert!(usage_chart(&[]).into_string().contains("No usage history"));
        // one point: drawn in the middle, no division by a zero time span
        assert!(usage_chart(&[p("2026-01-01T00:00:00Z", 0, 0)])
            .into_string()
            .contains("320.0,144.0"));
    }
}

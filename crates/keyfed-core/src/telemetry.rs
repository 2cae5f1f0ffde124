//! Usage telemetry (t01-t03), pure: the signed report a node sends to the
//! upstream (or writes to a file when air-gapped), its due dates, and the
//! compliance state the upstream computes per customer.
//!
//! The report file is text a person can read, fields first and the node's
//! Ed25519 signature last; the signature covers every byte above it, so a
//! parsed report always renders back to the same bytes and any edit breaks it.
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use thiserror::Error;

const HEADER: &str =
    "# keyfed telemetry report: do not edit, the signature covers every line above it";
const FORMAT: &str = "keyfed-telemetry/1";
/// Upper bound on a report file; a tree of a few thousand usage lines fits.
pub const MAX_REPORT_BYTES: usize = 512 * 1024;

/// Why a telemetry file was refused. Messages say what was wrong and where.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TelemetryError {
    #[error("telemetry file is empty")]
    Empty,
    #[error("telemetry file is {0} bytes, more than a report can be ({MAX_REPORT_BYTES})")]
    TooLarge(usize),
    #[error("telemetry file line {line}: expected `{expected}`, found {found:?}")]
    UnexpectedLine {
        line: usize,
        expected: &'static str,
        found: String,
    },
    #[error("telemetry file is truncated: it ends before the `{missing}` line")]
    Truncated { missing: &'static str },
    #[error("telemetry field `{field}` is invalid: {why}")]
    InvalidField { field: &'static str, why: String },
    #[error("telemetry file is not in canonical form (line {line}); export the report again instead of editing it")]
    NotCanonical { line: usize },
    #[error(
        "telemetry signature does not verify: the file was altered after node {node} signed it"
    )]
    BadSignature { node: String },
}

/// One usage line: a key's seats on one node of the reporting subtree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportLine {
    pub node: String,
    pub key: String,
    pub customer: String,
    pub held: u32,
    pub used: u32,
    /// Highest `used` seen since the last accepted report.
    pub peak: u32,
    /// When these numbers were true (subtree lines come from b05 rollups).
    pub as_of: DateTime<Utc>,
}

/// An unsigned usage report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub id: String,
    pub node: String,
    pub version: String,
    /// Install or last upgrade of the node (t02).
    pub installed_at: DateTime<Utc>,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub lines: Vec<ReportLine>,
}

/// A report with the node's public key and signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedReport {
    pub report: Report,
    /// hex of the node's Ed25519 public key
    pub public_key: String,
    signature: [u8; 64],
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A token may not be empty or hold whitespace or `=`: lines are `k=v` pairs.
fn token_ok(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c == '=')
}

impl Report {
    /// The bytes the node signs: every line up to and including `public-key`.
    #[must_use]
    pub fn canonical(&self, public_key: &str) -> String {
        let mut s = String::with_capacity(256 + 128 * self.lines.len());
        let mut field = |name: &str, value: &str| {
            s.push_str(name);
            s.push_str(": ");
            s.push_str(value);
            s.push('\n');
        };
        field("format", FORMAT);
        field("report", &self.id);
        field("node", &self.node);
        field("version", &self.version);
        field("installed", &ts(self.installed_at));
        field("period-start", &ts(self.period_start));
        field("period-end", &ts(self.period_end));
        field("lines", &self.lines.len().to_string());
        for l in &self.lines {
            field(
                "usage",
                &format!(
                    "node={} key={} customer={} held={} used={} peak={} as-of={}",
                    l.node,
                    l.key,
                    l.customer,
                    l.held,
                    l.used,
                    l.peak,
                    ts(l.as_of)
                ),
            );
        }
        field("public-key", public_key);
        format!("{HEADER}\n{s}")
    }

    /// Checks what parsing would refuse, so a node never signs a report it
    /// could not read back.
    pub fn validate(&self) -> Result<(), TelemetryError> {
        for (field, v) in [
            ("report", &self.id),
            ("node", &self.node),
            ("version", &self.version),
        ] {
            if !token_ok(v) {
                return Err(TelemetryError::InvalidField {
                    field,
                    why: format!("{v:?} must be non-empty without spaces or `=`"),
                });
            }
        }
        if self.period_end < self.period_start {
            return Err(TelemetryError::InvalidField {
                field: "period-end",
                why: format!(
                    "{} is before period-start {}",
                    ts(self.period_end),
                    ts(self.period_start)
                ),
            });
        }
        for l in &self.lines {
            for v in [&l.node, &l.key, &l.customer] {
                if !token_ok(v) {
                    return Err(TelemetryError::InvalidField {
                        field: "usage",
                        why: format!("{v:?} must be non-empty without spaces or `=`"),
                    });
                }
            }
        }
        Ok(())
    }
}

/// The node's own signing identity: made once, kept in its store (t01).
pub struct NodeIdentity {
    key: SigningKey,
}

impl NodeIdentity {
    #[must_use]
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(&seed),
        }
    }

    #[must_use]
    pub fn public_hex(&self) -> String {
        hex::encode(self.key.verifying_key().to_bytes())
    }

    /// Signs a report; it must be valid.
    pub fn sign(&self, report: Report) -> Result<SignedReport, TelemetryError> {
        report.validate()?;
        let public_key = self.public_hex();
        let signature = self
            .key
            .sign(report.canonical(&public_key).as_bytes())
            .to_bytes();
        Ok(SignedReport {
            report,
            public_key,
            signature,
        })
    }
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NodeIdentity({})",
            crate::keyfile::short(&self.public_hex())
        )
    }
}

impl SignedReport {
    /// The whole file text.
    #[must_use]
    pub fn render(&self) -> String {
        let mut s = self.report.canonical(&self.public_key);
        s.push_str("signature: ");
        s.push_str(&hex::encode(self.signature));
        s.push('\n');
        s
    }

    /// Parses a telemetry file and checks its signature against the public
    /// key it names. Whether that key belongs to the node is the upstream's
    /// question (it pins node id to key on first report).
    // a line-by-line parser of a fixed format; splitting it would scatter the format
    #[allow(clippy::too_many_lines)]
    pub fn parse(text: &str) -> Result<Self, TelemetryError> {
        if text.trim().is_empty() {
            return Err(TelemetryError::Empty);
        }
        if text.len() > MAX_REPORT_BYTES {
            return Err(TelemetryError::TooLarge(text.len()));
        }
        let mut lines = text.lines().enumerate().filter(|(_, l)| !l.is_empty());
        match lines.next() {
            Some((_, l)) if l == HEADER => {}
            Some((n, l)) => {
                return Err(TelemetryError::UnexpectedLine {
                    line: n + 1,
                    expected: "# keyfed telemetry report",
                    found: clip(l),
                })
            }
            None => return Err(TelemetryError::Empty),
        }
        let mut next = |name: &'static str| -> Result<&str, TelemetryError> {
            let Some((n, line)) = lines.next() else {
                return Err(TelemetryError::Truncated { missing: name });
            };
            line.strip_prefix(name)
                .and_then(|r| r.strip_prefix(": "))
                .ok_or_else(|| TelemetryError::UnexpectedLine {
                    line: n + 1,
                    expected: name,
                    found: clip(line),
                })
        };
        let format = next("format")?;
        if format != FORMAT {
            return Err(TelemetryError::InvalidField {
                field: "format",
                why: format!("{format:?} is not {FORMAT}"),
            });
        }
        let id = next("report")?.to_owned();
        let node = next("node")?.to_owned();
        let version = next("version")?.to_owned();
        let installed_at = parse_ts("installed", next("installed")?)?;
        let period_start = parse_ts("period-start", next("period-start")?)?;
        let period_end = parse_ts("period-end", next("period-end")?)?;
        let count: usize = next("lines")?
            .parse()
            .map_err(|e| TelemetryError::InvalidField {
                field: "lines",
                why: format!("{e}"),
            })?;
        let mut out = Vec::with_capacity(count.min(10_000));
        for _ in 0..count {
            out.push(parse_line(next("usage")?)?);
        }
        let public_key = next("public-key")?.to_owned();
        let signature = decode_hex::<64>("signature", next("signature")?)?;
        if let Some((n, _)) = lines.next() {
            return Err(TelemetryError::UnexpectedLine {
                line: n + 1,
                expected: "end of file after `signature`",
                found: clip(text.lines().nth(n).unwrap_or_default()),
            });
        }
        let report = Report {
            id,
            node,
            version,
            installed_at,
            period_start,
            period_end,
            lines: out,
        };
        report.validate()?;
        let vk = VerifyingKey::from_bytes(&decode_hex::<32>("public-key", &public_key)?).map_err(
            |_| TelemetryError::InvalidField {
                field: "public-key",
                why: "not an Ed25519 public key".into(),
            },
        )?;
        let file = Self {
            report,
            public_key,
            signature,
        };
        let canonical = file.render();
        let normalized: String = text
            .lines()
            .filter(|l| !l.is_empty())
            .flat_map(|l| [l, "\n"])
            .collect();
        if canonical != normalized {
            let line = canonical
                .lines()
                .zip(normalized.lines())
                .position(|(a, b)| a != b)
                .map_or(1, |i| i + 1);
            return Err(TelemetryError::NotCanonical { line });
        }
        vk.verify(
            file.report.canonical(&file.public_key).as_bytes(),
            &Signature::from_bytes(&file.signature),
        )
        .map_err(|_| TelemetryError::BadSignature {
            node: file.report.node.clone(),
        })?;
        Ok(file)
    }
}

fn parse_line(s: &str) -> Result<ReportLine, TelemetryError> {
    let mut fields = std::collections::BTreeMap::new();
    for pair in s.split(' ') {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| TelemetryError::InvalidField {
                field: "usage",
                why: format!("{pair:?} is not key=value"),
            })?;
        fields.insert(k, v);
    }
    let get = |k: &'static str| {
        fields
            .get(k)
            .copied()
            .ok_or_else(|| TelemetryError::InvalidField {
                field: "usage",
                why: format!("missing `{k}=` in {:?}", clip(s)),
            })
    };
    let num = |k: &'static str| -> Result<u32, TelemetryError> {
        get(k)?.parse().map_err(|e| TelemetryError::InvalidField {
            field: "usage",
            why: format!("`{k}`: {e}"),
        })
    };
    Ok(ReportLine {
        node: get("node")?.to_owned(),
        key: get("key")?.to_owned(),
        customer: get("customer")?.to_owned(),
        held: num("held")?,
        used: num("used")?,
        peak: num("peak")?,
        as_of: parse_ts("usage as-of", get("as-of")?)?,
    })
}

fn parse_ts(field: &'static str, s: &str) -> Result<DateTime<Utc>, TelemetryError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.to_utc())
        .map_err(|e| TelemetryError::InvalidField {
            field,
            why: format!("{s:?}: {e}"),
        })
}

fn decode_hex<const N: usize>(field: &'static str, s: &str) -> Result<[u8; N], TelemetryError> {
    let bytes = hex::decode(s).map_err(|e| TelemetryError::InvalidField {
        field,
        why: format!("not hex: {e}"),
    })?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| TelemetryError::InvalidField {
            field,
            why: format!("{} bytes, expected {N}", b.len()),
        })
}

fn clip(line: &str) -> String {
    line.chars().take(60).collect()
}

// ---- building a report -----------------------------------------------------

/// A key as the node sees it when it builds a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySeats {
    pub key: String,
    pub customer: String,
    pub held: u32,
    pub used: u32,
}

/// What the node sends (t01): its own keys with held/used/peak since the last
/// accepted report, then every line its subtree rolled up (b05), so the
/// upstream learns those nodes too. Peaks never read lower than `used`.
#[must_use]
#[allow(clippy::too_many_arguments)]
pub fn build_report(
    id: &str,
    node: &str,
    version: &str,
    installed_at: DateTime<Utc>,
    period_start: DateTime<Utc>,
    now: DateTime<Utc>,
    own: &[KeySeats],
    peaks: &std::collections::BTreeMap<String, u32>,
    subtree: &[ReportLine],
) -> Report {
    let mut lines: Vec<ReportLine> = own
        .iter()
        .map(|k| ReportLine {
            node: node.to_owned(),
            key: k.key.clone(),
            customer: k.customer.clone(),
            held: k.held,
            used: k.used,
            peak: peaks.get(&k.key).copied().unwrap_or(0).max(k.used),
            as_of: now,
        })
        .collect();
    lines.extend(
        subtree
            .iter()
            .filter(|l| l.node != node)
            .map(|l| ReportLine {
                peak: l.peak.max(l.used),
                as_of: l.as_of.min(now),
                ..l.clone()
            }),
    );
    lines.sort_by(|a, b| (&a.node, &a.key).cmp(&(&b.node, &b.key)));
    Report {
        id: id.to_owned(),
        node: node.to_owned(),
        version: version.to_owned(),
        installed_at,
        period_start: period_start.min(now),
        period_end: now,
        lines,
    }
}

/// Folds current usage into the peaks kept since the last accepted report;
/// true when something rose (and must be stored).
pub fn raise_peaks(peaks: &mut std::collections::BTreeMap<String, u32>, own: &[KeySeats]) -> bool {
    let mut changed = false;
    for k in own {
        let p = peaks.entry(k.key.clone()).or_insert(0);
        if k.used > *p {
            *p = k.used;
            changed = true;
        }
    }
    changed
}

// ---- due dates (t02) -------------------------------------------------------

/// t02: first report within 30 days of install or upgrade, then at least
/// every 90 days; warn 7 days before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DuePolicy {
    pub first_days: i64,
    pub every_days: i64,
    pub warn_days: i64,
}

impl Default for DuePolicy {
    fn default() -> Self {
        Self {
            first_days: 30,
            every_days: 90,
            warn_days: 7,
        }
    }
}

/// When this build was installed on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Install {
    pub at: DateTime<Utc>,
    pub version: String,
    /// Set when `at` is an upgrade: the version stored before.
    pub upgraded_from: Option<String>,
}

/// The install record after starting `running` at `now`: unchanged if the
/// stored version is the running one, else an upgrade starting now.
#[must_use]
pub fn observe_install(stored: Option<&Install>, running: &str, now: DateTime<Utc>) -> Install {
    match stored {
        Some(i) if i.version == running => i.clone(),
        Some(i) => Install {
            at: now,
            version: running.to_owned(),
            upgraded_from: Some(i.version.clone()),
        },
        None => Install {
            at: now,
            version: running.to_owned(),
            upgraded_from: None,
        },
    }
}

/// The next report due date: `every_days` after the last accepted report
/// (its period end) if that came after the install or upgrade; otherwise
/// `first_days` after the install or upgrade (never later than an earlier
/// report's 90-day window).
#[must_use]
pub fn next_due(
    installed_at: DateTime<Utc>,
    last_accepted: Option<DateTime<Utc>>,
    p: &DuePolicy,
) -> DateTime<Utc> {
    let first = installed_at + Duration::days(p.first_days);
    match last_accepted {
        Some(t) if t >= installed_at => t + Duration::days(p.every_days),
        Some(t) => first.min(t + Duration::days(p.every_days)),
        None => first,
    }
}

/// Whole days until `due`, rounded down; negative once overdue.
#[must_use]
pub fn days_left(due: DateTime<Utc>, now: DateTime<Utc>) -> i64 {
    (due - now).num_seconds().div_euclid(86_400)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DueWarning {
    /// Due within `warn_days` and not yet overdue.
    DueSoon,
    Overdue,
}

/// Which warning to give now for `due`, given the due date each warning was
/// last given for (each is given once per due date; a jump past both gives
/// only the overdue one).
#[must_use]
pub fn due_warning(
    due: DateTime<Utc>,
    now: DateTime<Utc>,
    warned_soon: Option<DateTime<Utc>>,
    warned_overdue: Option<DateTime<Utc>>,
    p: &DuePolicy,
) -> Option<DueWarning> {
    if now >= due {
        (warned_overdue != Some(due)).then_some(DueWarning::Overdue)
    } else if now >= due - Duration::days(p.warn_days) {
        (warned_soon != Some(due)).then_some(DueWarning::DueSoon)
    } else {
        None
    }
}

/// Whether the node should try to send now: on its first chance, every
/// `interval` after the last attempt, sooner (`retry`) after a failed one,
/// and on every chance once the report is due.
#[must_use]
pub fn attempt_now(
    last_attempt: Option<DateTime<Utc>>,
    last_failed: bool,
    due: DateTime<Utc>,
    now: DateTime<Utc>,
    interval: Duration,
    retry: Duration,
) -> bool {
    let Some(last) = last_attempt else {
        return true;
    };
    let wait = if last_failed {
        retry.min(interval)
    } else {
        interval
    };
    now >= last + wait || (now >= due && now >= last + retry.min(interval))
}

// ---- compliance (t03) ------------------------------------------------------

/// t03: a server counts while its last report is within `window_days`; a
/// non-compliant customer gets `provisional_days`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompliancePolicy {
    pub window_days: i64,
    pub provisional_days: i64,
}

impl Default for CompliancePolicy {
    fn default() -> Self {
        Self {
            window_days: 90,
            provisional_days: 30,
        }
    }
}

/// A server of a customer and when the upstream last heard of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerSeen {
    pub node: String,
    pub last_seen: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ComplianceState {
    Compliant,
    Partial,
    NonCompliant,
    Exempt,
}

impl ComplianceState {
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Compliant => "compliant",
            Self::Partial => "partial",
            Self::NonCompliant => "non-compliant",
            Self::Exempt => "exempt",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compliance {
    pub state: ComplianceState,
    /// Servers whose last report is outside the window, by name.
    pub missing: Vec<String>,
    /// Non-compliant only: since when, and the end of the provisional period.
    pub non_compliant_since: Option<DateTime<Utc>>,
    pub provisional_until: Option<DateTime<Utc>>,
    /// Whole days left of the provisional period, rounded up; 0 once over.
    pub provisional_days_left: i64,
}

/// The state of one customer (t03). `known_since` is when the upstream first
/// knew the customer (its first key): a customer none of whose servers ever
/// reported has been non-compliant since then. Otherwise a customer turns
/// non-compliant when the window of its most recent report closes, so the
/// provisional period is derived from durable facts, never from when someone
/// happened to look.
#[must_use]
pub fn compliance(
    servers: &[ServerSeen],
    known_since: DateTime<Utc>,
    exempt: bool,
    now: DateTime<Utc>,
    p: &CompliancePolicy,
) -> Compliance {
    let window = Duration::days(p.window_days);
    let mut missing: Vec<String> = servers
        .iter()
        .filter(|s| now >= s.last_seen + window)
        .map(|s| s.node.clone())
        .collect();
    missing.sort();
    missing.dedup();
    let mut c = Compliance {
        state: ComplianceState::Compliant,
        missing,
        non_compliant_since: None,
        provisional_until: None,
        provisional_days_left: 0,
    };
    if exempt {
        c.state = ComplianceState::Exempt;
        return c;
    }
    let current = servers.iter().any(|s| now < s.last_seen + window);
    c.state = if !current {
        ComplianceState::NonCompliant
    } else if c.missing.is_empty() {
        ComplianceState::Compliant
    } else {
        ComplianceState::Partial
    };
    if c.state == ComplianceState::NonCompliant {
        let since = servers
            .iter()
            .map(|s| s.last_seen + window)
            .max()
            .unwrap_or(known_since);
        let until = since + Duration::days(p.provisional_days);
        c.non_compliant_since = Some(since);
        c.provisional_until = Some(until);
        let secs = (until - now).num_seconds().max(0);
        c.provisional_days_left = (secs + 86_399) / 86_400;
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn sample() -> Report {
        let own = [KeySeats {
            key: "k-1".into(),
            customer: "acme".into(),
            held: 10,
            used: 3,
        }];
        let peaks = BTreeMap::from([("k-1".to_owned(), 7)]);
        let sub = [ReportLine {
            node: "child".into(),
            key: "k-1".into(),
            customer: "acme".into(),
            held: 4,
            used: 2,
            peak: 0,
            as_of: t("2026-11-30T00:00:00Z"),
        }];
        build_report(
            "tr-1",
            "main",
            "0.1.0",
            t("2026-11-01T00:00:00Z"),
            t("2026-11-01T00:00:00Z"),
            t("2026-12-01T00:00:00Z"),
            &own,
            &peaks,
            &sub,
        )
    }

    #[test]
    fn t01_report_carries_held_used_peak_and_the_subtree() {
        let r = sample();
        assert_eq!(r.lines.len(), 2);
        let child = &r.lines[0];
        assert_eq!(
            (child.node.as_str(), child.held, child.used, child.peak),
            ("child", 4, 2, 2)
        );
        let mine = &r.lines[1];
        assert_eq!(
            (mine.node.as_str(), mine.held, mine.used, mine.peak),
            ("main", 10, 3, 7)
        );
        assert_eq!(r.period_start, t("2026-11-01T00:00:00Z"));
        assert_eq!(r.period_end, t("2026-12-01T00:00:00Z"));
    }

    #[test]
    fn t01_signed_report_round_trips_and_any_edit_is_caught() {
        let id = NodeIdentity::from_seed([3; 32]);
        let text = id.sign(sample()).unwrap().render();
        let back = SignedReport::parse(&text).unwrap();
        assert_eq!(back.render(), text);
        assert_eq!(back.public_key, id.public_hex());
        assert!(text.contains("usage: node=main key=k-1 customer=acme held=10 used=3 peak=7"));

        let tampered = text.replace("used=3", "used=1");
        let err = SignedReport::parse(&tampered).unwrap_err();
        assert_eq!(
            err,
            TelemetryError::BadSignature {
                node: "main".into()
            }
        );
        assert!(err.to_string().contains("altered"), "{err}");

        let reordered = text.replace("held=10 used=3", "used=3 held=10");
        assert!(matches!(
            SignedReport::parse(&reordered).unwrap_err(),
            TelemetryError::NotCanonical { .. }
        ));
        let cut: String = text.lines().take(6).map(|l| format!("{l}\n")).collect();
        assert_eq!(
            SignedReport::parse(&cut).unwrap_err(),
            TelemetryError::Truncated {
                missing: "period-start"
            }
        );
        assert!(SignedReport::parse("hello")
            .unwrap_err()
            .to_string()
            .contains("line 1"));
    }

    #[test]
    fn t01_a_report_that_could_not_be_read_back_is_not_signed() {
        let mut r = sample();
        r.node = "two words".into();
        assert!(NodeIdentity::from_seed([1; 32]).sign(r).is_err());
    }

    #[test]
    fn t01_peaks_only_rise() {
        let mut peaks = BTreeMap::new();
        let mut k = KeySeats {
            key: "k".into(),
            customer: "c".into(),
            held: 5,
            used: 4,
        };
        assert!(raise_peaks(&mut peaks, std::slice::from_ref(&k)));
        k.used = 2;
        assert!(!raise_peaks(&mut peaks, std::slice::from_ref(&k)));
        assert_eq!(peaks["k"], 4);
    }

    #[test]
    fn t02_first_report_within_30_days_then_every_90() {
        let p = DuePolicy::default();
        let install = t("2026-11-23T00:00:00Z");
        assert_eq!(next_due(install, None, &p), t("2026-12-23T00:00:00Z"));
        let report = t("2026-12-01T00:00:00Z");
        assert_eq!(
            next_due(install, Some(report), &p),
            report + Duration::days(90)
        );
        // an upgrade after the last report: 30 days from the upgrade
        let upgrade = t("2027-01-10T00:00:00Z");
        assert_eq!(
            next_due(upgrade, Some(report), &p),
            upgrade + Duration::days(30)
        );
        assert_eq!(days_left(t("2026-12-23T00:00:00Z"), install), 30);
        assert_eq!(days_left(install, install + Duration::seconds(1)), -1);
    }

    #[test]
    fn t02_upgrade_is_a_stored_version_differing_from_the_running_one() {
        let now = t("2027-01-01T00:00:00Z");
        let first = observe_install(None, "0.1.0", t("2026-11-23T00:00:00Z"));
        assert_eq!(observe_install(Some(&first), "0.1.0", now), first);
        let up = observe_install(Some(&first), "0.2.0", now);
        assert_eq!((up.at, up.upgraded_from.as_deref()), (now, Some("0.1.0")));
    }

    #[test]
    fn t02_each_warning_is_given_once_per_due_date() {
        let p = DuePolicy::default();
        let due = t("2026-12-23T00:00:00Z");
        let early = due - Duration::days(8);
        let soon = due - Duration::days(6);
        assert_eq!(due_warning(due, early, None, None, &p), None);
        assert_eq!(
            due_warning(due, soon, None, None, &p),
            Some(DueWarning::DueSoon)
        );
        assert_eq!(due_warning(due, soon, Some(due), None, &p), None);
        assert_eq!(
            due_warning(due, due, Some(due), None, &p),
            Some(DueWarning::Overdue)
        );
        assert_eq!(due_warning(due, due, Some(due), Some(due), &p), None);
        // a later due date warns again
        let later = due + Duration::days(90);
        assert_eq!(
            due_warning(later, later, Some(due), Some(due), &p),
            Some(DueWarning::Overdue)
        );
    }

    #[test]
    fn t01_attempts_daily_and_retries_sooner_after_a_failure() {
        let (day, hour) = (Duration::days(1), Duration::hours(1));
        let now = t("2026-12-01T00:00:00Z");
        let due = now + Duration::days(60);
        assert!(attempt_now(None, false, due, now, day, hour));
        assert!(!attempt_now(Some(now - hour), false, due, now, day, hour));
        assert!(attempt_now(Some(now - day), false, due, now, day, hour));
        assert!(attempt_now(Some(now - hour), true, due, now, day, hour));
    }

    fn seen(node: &str, at: &str) -> ServerSeen {
        ServerSeen {
            node: node.into(),
            last_seen: t(at),
        }
    }

    #[test]
    fn t03_compliant_partial_non_compliant_with_provisional_days() {
        let p = CompliancePolicy::default();
        let servers = [
            seen("a", "2026-01-01T00:00:00Z"),
            seen("b", "2026-02-01T00:00:00Z"),
        ];
        let known = t("2025-12-01T00:00:00Z");
        let c = compliance(&servers, known, false, t("2026-03-01T00:00:00Z"), &p);
        assert_eq!((c.state, c.missing.len()), (ComplianceState::Compliant, 0));
        let c = compliance(&servers, known, false, t("2026-04-15T00:00:00Z"), &p);
        assert_eq!(
            (c.state, c.missing.clone()),
            (ComplianceState::Partial, vec!["a".to_owned()])
        );
        // b's window closes on 2026-05-02: non-compliant since then, 30 days
        let c = compliance(&servers, known, false, t("2026-05-12T00:00:00Z"), &p);
        assert_eq!(c.state, ComplianceState::NonCompliant);
        assert_eq!(c.non_compliant_since, Some(t("2026-05-02T00:00:00Z")));
        assert_eq!(c.provisional_days_left, 20);
        let c = compliance(&servers, known, false, t("2026-07-01T00:00:00Z"), &p);
        assert_eq!(c.provisional_days_left, 0);
        let c = compliance(&servers, known, true, t("2026-07-01T00:00:00Z"), &p);
        assert_eq!(c.state, ComplianceState::Exempt);
        // never reported: non-compliant since the customer was known
        let c = compliance(&[], known, false, known + Duration::days(1), &p);
        assert_eq!(
            (c.state, c.provisional_days_left),
            (ComplianceState::NonCompliant, 29)
        );
    }
}

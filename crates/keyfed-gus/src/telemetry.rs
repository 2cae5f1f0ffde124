//! The upstream's side of telemetry (t01, t03): accepting signed usage
//! reports (pinning each node id to the key it first signed with, counting a
//! report id once) and computing each customer's compliance.
//!
//! Store layout (every value `FORMAT_VERSION` + JSON):
//! - `telemetry_reports`: report id -> [`ReportRecord`] (the exact text)
//! - `telemetry_nodes`: node id -> [`NodeRecord`] (pinned public key)
//! - `telemetry_servers`: `customer\0node` -> [`ServerRecord`]
//! - `telemetry_exempt`: customer -> `true`
//!
//! A customer's servers are every node id that ever appeared on a usage line
//! of one of that customer's keys, in a report signed by the node itself or
//! by an ancestor that carried its subtree's lines (b05).
use crate::{decode, encode, GusError, IssuedKey, Upstream};
use chrono::{DateTime, Duration, Utc};
use keyfed_core::telemetry::{compliance, CompliancePolicy, ServerSeen, SignedReport};
use keyfed_core::KeyFile;
use keyfed_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use std::collections::{BTreeMap, BTreeSet};

const REPORTS: &str = "telemetry_reports";
const NODES: &str = "telemetry_nodes";
const SERVERS: &str = "telemetry_servers";
const EXEMPT: &str = "telemetry_exempt";
/// A report may not claim a period ending further ahead than this (clock skew).
const MAX_SKEW_HOURS: i64 = 24;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ReportRecord {
    node: String,
    period_end: DateTime<Utc>,
    accepted_at: DateTime<Utc>,
    text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct NodeRecord {
    public_key: String,
    first_seen: DateTime<Utc>,
    last_report_id: String,
    last_period_end: DateTime<Utc>,
    version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ServerRecord {
    last_seen: DateTime<Utc>,
    reported_by: String,
}

/// The outcome of a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub report_id: String,
    pub node: String,
    pub duplicate: bool,
    pub accepted_at: DateTime<Utc>,
}

fn server_key(customer: &str, node: &str) -> Vec<u8> {
    let mut k = customer.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(node.as_bytes());
    k
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Upstream {
    fn tree(&self, name: &str) -> Result<sled::Tree, GusError> {
        Ok(self.0.db.open_tree(name)?)
    }

    /// Every issued key id with its customer and issue time.
    fn key_customers(&self) -> Result<BTreeMap<String, (String, DateTime<Utc>)>, GusError> {
        let mut out = BTreeMap::new();
        for kv in self.0.keys.iter() {
            let (_, v) = kv?;
            let rec: IssuedKey = decode(&v)?;
            let file = KeyFile::parse(&rec.text)
                .map_err(|e| GusError::Corrupt(format!("issued key: {e}")))?;
            out.insert(file.key.id, (file.key.customer, file.key.issued_at));
        }
        Ok(out)
    }

    /// t01: accepts a signed usage report, sent by a node or uploaded as a
    /// file. The same report id counts once; a tampered file, a node id
    /// signed by a different key than it first used, or a reused report id
    /// with other content is refused and changes nothing.
    pub fn submit_telemetry(&self, text: &str) -> Result<Accepted, GusError> {
        let file = SignedReport::parse(text)
            .map_err(|e| GusError::InvalidArgument(format!("telemetry file refused: {e}")))?;
        let r = &file.report;
        let now = self.now();
        if r.period_end > now + Duration::hours(MAX_SKEW_HOURS) {
            return Err(GusError::InvalidArgument(format!(
                "telemetry file refused: its period ends {}, after the upstream's now {} (is the node's clock ahead?)",
                ts(r.period_end),
                ts(now)
            )));
        }
        let customers = self.key_customers()?;
        let (reports, nodes, servers) =
            (self.tree(REPORTS)?, self.tree(NODES)?, self.tree(SERVERS)?);
        let result = (&reports, &nodes, &servers).transaction(|(reports, nodes, servers)| {
            let fail = |e: GusError| ConflictableTransactionError::Abort(e);
            if let Some(v) = reports.get(r.id.as_bytes())? {
                let old: ReportRecord = decode(&v).map_err(fail)?;
                if old.text == file.render() {
                    return Ok(Accepted {
                        report_id: r.id.clone(),
                        node: r.node.clone(),
                        duplicate: true,
                        accepted_at: old.accepted_at,
                    });
                }
                return Err(fail(GusError::InvalidArgument(format!(
                    "telemetry file refused: report id {} was already accepted with different content",
                    r.id
                ))));
            }
            let prior: Option<NodeRecord> = nodes
                .get(r.node.as_bytes())?
                .map(|v| decode(&v))
                .transpose()
                .map_err(fail)?;
            if let Some(p) = &prior {
                if !p.public_key.eq_ignore_ascii_case(&file.public_key) {
                    return Err(fail(GusError::FailedPrecondition(format!(
                        "telemetry file refused: node {} reported before with public key {}, this report is signed by {}; a node keeps one identity (a reinstalled node needs the vendor to reset its registration)",
                        r.node,
                        keyfed_core::keyfile::short(&p.public_key),
                        keyfed_core::keyfile::short(&file.public_key)
                    ))));
                }
            }
            let newer = prior.as_ref().is_none_or(|p| p.last_period_end <= r.period_end);
            let node_rec = NodeRecord {
                public_key: file.public_key.clone(),
                first_seen: prior.as_ref().map_or(now, |p| p.first_seen),
                last_report_id: if newer { r.id.clone() } else { prior.as_ref().map(|p| p.last_report_id.clone()).unwrap_or_default() },
                last_period_end: if newer { r.period_end } else { prior.as_ref().map_or(r.period_end, |p| p.last_period_end) },
                version: r.version.clone(),
            };
            nodes.insert(r.node.as_bytes(), encode(&node_rec))?;
            for line in &r.lines {
                let Some((customer, _)) = customers.get(&line.key) else {
                    continue; // a key this upstream did not issue counts for no customer
                };
                let seen = if line.node == r.node { r.period_end } else { line.as_of.min(r.period_end) };
                let k = server_key(customer, &line.node);
                let old: Option<ServerRecord> =
                    servers.get(&k)?.map(|v| decode(&v)).transpose().map_err(fail)?;
                if old.as_ref().is_none_or(|o| o.last_seen < seen) {
                    servers.insert(k, encode(&ServerRecord { last_seen: seen, reported_by: r.node.clone() }))?;
                }
            }
            reports.insert(
                r.id.as_bytes(),
                encode(&ReportRecord {
                    node: r.node.clone(),
                    period_end: r.period_end,
                    accepted_at: now,
                    text: file.render(),
                }),
            )?;
            Ok(Accepted {
                report_id: r.id.clone(),
                node: r.node.clone(),
                duplicate: false,
                accepted_at: now,
            })
        });
        let accepted = result.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => GusError::Store(e),
        })?;
        self.0.db.flush()?;
        tracing::info!(report = %accepted.report_id, node = %accepted.node, duplicate = accepted.duplicate, "usage report accepted");
        Ok(accepted)
    }

    /// How many distinct reports this upstream holds from `node` (signed by it).
    pub fn reports_from(&self, node: &str) -> Result<usize, GusError> {
        let mut n = 0;
        for kv in self.tree(REPORTS)?.iter() {
            let rec: ReportRecord = decode(&kv?.1)?;
            n += usize::from(rec.node == node);
        }
        Ok(n)
    }

    /// The exact text of an accepted report.
    pub fn report_text(&self, report_id: &str) -> Result<Option<String>, GusError> {
        Ok(self
            .tree(REPORTS)?
            .get(report_id.as_bytes())?
            .map(|v| decode::<ReportRecord>(&v))
            .transpose()?
            .map(|r| r.text))
    }

    /// The public key `node` is pinned to, once it reported.
    pub fn node_public_key(&self, node: &str) -> Result<Option<String>, GusError> {
        Ok(self
            .tree(NODES)?
            .get(node.as_bytes())?
            .map(|v| decode::<NodeRecord>(&v))
            .transpose()?
            .map(|r| r.public_key))
    }

    /// t03: an administrator of the upstream exempts a customer (or not).
    pub fn set_exempt(&self, customer: &str, exempt: bool) -> Result<(), GusError> {
        if customer.trim().is_empty() {
            return Err(GusError::InvalidArgument("customer is required".into()));
        }
        let t = self.tree(EXEMPT)?;
        if exempt {
            t.insert(customer.as_bytes(), encode(&true))?;
        } else {
            t.remove(customer.as_bytes())?;
        }
        self.0.db.flush()?;
        tracing::info!(customer, exempt, "compliance exemption set");
        Ok(())
    }

    /// t03: the compliance of one customer, or of every customer the upstream
    /// knows (from issued keys, reports and exemptions).
    pub fn compliance(
        &self,
        customer: Option<&str>,
    ) -> Result<Vec<pb::CustomerCompliance>, GusError> {
        let now = self.now();
        let policy = CompliancePolicy::default();
        let mut known: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
        for (customer, issued) in self.key_customers()?.into_values() {
            let e = known.entry(customer).or_insert(issued);
            *e = (*e).min(issued);
        }
        let mut servers: BTreeMap<String, Vec<(String, ServerRecord)>> = BTreeMap::new();
        for kv in self.tree(SERVERS)?.iter() {
            let (k, v) = kv?;
            let key = String::from_utf8_lossy(&k).into_owned();
            let Some((c, node)) = key.split_once('\0') else {
                continue;
            };
            let rec: ServerRecord = decode(&v)?;
            known.entry(c.to_owned()).or_insert(rec.last_seen);
            servers
                .entry(c.to_owned())
                .or_default()
                .push((node.to_owned(), rec));
        }
        let exempt: BTreeSet<String> = self
            .tree(EXEMPT)?
            .iter()
            .keys()
            .map(|k| k.map(|k| String::from_utf8_lossy(&k).into_owned()))
            .collect::<Result<_, _>>()?;
        for c in &exempt {
            known.entry(c.clone()).or_insert(now);
        }
        if let Some(c) = customer {
            if !known.contains_key(c) {
                return Err(GusError::NotFound(format!(
                    "customer {c} has no keys, reports or exemption on this upstream"
                )));
            }
        }
        let window = Duration::days(policy.window_days);
        let mut out = Vec::new();
        for (c, since) in known {
            if customer.is_some_and(|x| x != c) {
                continue;
            }
            let list = servers.remove(&c).unwrap_or_default();
            let seen: Vec<ServerSeen> = list
                .iter()
                .map(|(n, r)| ServerSeen {
                    node: n.clone(),
                    last_seen: r.last_seen,
                })
                .collect();
            let state = compliance(&seen, since, exempt.contains(&c), now, &policy);
            out.push(pb::CustomerCompliance {
                customer: c,
                state: state.state.label().into(),
                missing_servers: state.missing,
                provisional_days_left: state.provisional_days_left,
                servers: list
                    .into_iter()
                    .map(|(n, r)| pb::ServerTelemetry {
                        node_id: n,
                        last_seen: ts(r.last_seen),
                        window_ends: ts(r.last_seen + window),
                        current: now < r.last_seen + window,
                        reported_by: r.reported_by,
                    })
                    .collect(),
                non_compliant_since: state.non_compliant_since.map(ts).unwrap_or_default(),
                provisional_until: state.provisional_until.map(ts).unwrap_or_default(),
            });
        }
        Ok(out)
    }
}

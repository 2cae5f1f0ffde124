//! The renewal engine (r01-r06, r10): ask the upstream whether a renewal of
//! each upstream key exists, download and verify it, decide, then store only
//! or distribute.
use crate::error::{NodeError, NodeResult};
use crate::node::Node;
use keyfed_core::renewal::{decide, RenewalDecision};
use keyfed_core::KeyFile;
use keyfed_proto::v1 as pb;
use keyfed_proto::v1::upstream_client::UpstreamClient;
use keyfed_store::{Origin, StoredKey};
use tonic::transport::Channel;

/// A client of the upstream at `url`, over TLS when the node has `[tls]`.
pub fn upstream_client(
    config: &crate::NodeConfig,
    url: &str,
) -> NodeResult<UpstreamClient<Channel>> {
    let ep = crate::tls::endpoint(config, url, None)
        .map_err(|e| NodeError::InvalidArgument(format!("upstream: {e}")))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(30));
    Ok(UpstreamClient::new(ep.connect_lazy()))
}

fn outcome(key_id: &str, outcome: &str, reason: String) -> pb::RenewalOutcome {
    pb::RenewalOutcome {
        key_id: key_id.into(),
        outcome: outcome.into(),
        reason,
        ..Default::default()
    }
}

impl Node {
    /// "Check for updates and replace keys" (r01): one key, or every key whose
    /// origin is the upstream (r02).
    pub async fn check_for_updates(
        &self,
        key_id: Option<&str>,
    ) -> NodeResult<Vec<pb::RenewalOutcome>> {
        let keys: Vec<StoredKey> = match key_id {
            Some(id) => vec![self.get_key(id)?],
            None => self
                .store
                .keys()?
                .into_iter()
                .filter(|k| k.origin == Origin::Upstream)
                .collect(),
        };
        let mut out = Vec::new();
        for k in keys {
            let outcome = self.renew_one(&k).await;
            self.metrics
                .renewal(outcome.as_ref().map_or("error", |o| o.outcome.as_str()));
            out.push(outcome?);
        }
        self.store
            .set_meta("last_renewal_check", &crate::convert::ts(self.now()))?;
        Ok(out)
    }

    async fn renew_one(&self, k: &StoredKey) -> NodeResult<pb::RenewalOutcome> {
        let id = &k.key.id;
        if let Origin::Peer(p) = &k.origin {
            let why = format!("key {id} came from {p}; its renewals arrive by propagation (r02)");
            return Ok(outcome(id, "skipped", why));
        }
        if let Some(new) = &k.superseded_by {
            return Ok(outcome(
                id,
                "skipped",
                format!("already renewed as {new}; waiting for objects to take it"),
            ));
        }
        let url = self.config.upstream.clone().ok_or_else(|| {
            NodeError::FailedPrecondition(
                "no upstream is configured on this node (set `upstream` in its config)".into(),
            )
        })?;
        let mut client = upstream_client(&self.config, &url)?;
        // (1) is there a renewal?
        let avail = client
            .check_renewal(pb::KeyId { id: id.clone() })
            .await
            .map_err(|s| {
                NodeError::Upstream(format!(
                    "asking {url} for a renewal of {id}: {}",
                    s.message()
                ))
            })?
            .into_inner();
        if !avail.available {
            return Ok(outcome(
                id,
                "nothing",
                "the upstream holds no renewal for this key (r04)".into(),
            ));
        }
        // (2) download and verify
        let text = client
            .download_key(pb::KeyId {
                id: avail.renewal_key_id.clone(),
            })
            .await
            .map_err(|s| {
                NodeError::Upstream(format!(
                    "downloading {} from {url}: {}",
                    avail.renewal_key_id,
                    s.message()
                ))
            })?
            .into_inner()
            .text;
        let file = KeyFile::parse_trusted(&text, &self.config.trusted_vendor_keys)?;
        if file.key.renews.as_deref() != Some(id.as_str()) {
            return Err(NodeError::Upstream(format!(
                "the upstream's renewal {} does not name {id} as the key it renews",
                file.key.id
            )));
        }
        let new = StoredKey::new(
            file.key.clone(),
            file.render(),
            Origin::Upstream,
            self.now(),
            file.key.seats,
        );
        let already = self.store.key(&new.key.id)?.is_some();
        self.apply_renewal(k, new, already).await
    }

    /// r05/r06/r10: stores `new`, the renewal of `k`, and distributes it if
    /// compatible. `already`: the administrator added it by hand first.
    pub async fn apply_renewal(
        &self,
        k: &StoredKey,
        new: StoredKey,
        already: bool,
    ) -> NodeResult<pb::RenewalOutcome> {
        let id = &k.key.id;
        let mut o = outcome(id, "", String::new());
        o.new_key_id = new.key.id.clone();
        o.old_seats = k.key.seats;
        o.new_seats = new.key.seats;
        let now = self.now();
        match decide(&k.key, &new.key) {
            RenewalDecision::StoreOnly(reasons) => {
                // r05: stored, listed, not distributed; the administrator is told why
                o.outcome = "store-only".into();
                o.reason = reasons.to_string();
                o.missing_components = reasons.missing_components.clone();
                if !already {
                    self.commit(|tx, fx| {
                        tx.put_key(&new)?;
                        fx.notify(
                            tx,
                            now,
                            "key-not-renewed-automatically",
                            id,
                            format!("key {id} could not be renewed automatically by {}: {reasons}; distribute it by hand", new.key.id),
                            &[
                                ("new_key_id", new.key.id.clone()),
                                ("missing_components", reasons.missing_components.join(",")),
                                ("old_seats", reasons.old_seats.to_string()),
                                ("new_seats", reasons.new_seats.to_string()),
                            ],
                        )
                    })
                    .await?;
                }
            }
            RenewalDecision::Distribute => {
                // (3) r06 (or r10 when it was added by hand first: only propagate)
                o.outcome = if already { "propagated" } else { "distributed" }.into();
                let grants = self.store.grants_of_key(id)?;
                o.reason = format!(
                    "{} object(s) of {id} are handed {}",
                    grants.len(),
                    new.key.id
                );
                self.commit(|tx, fx| {
                    fx.notify(
                        tx,
                        now,
                        "key-renewed-automatically",
                        &new.key.id,
                        format!(
                            "key {id} was renewed automatically as {} ({} seats)",
                            new.key.id, new.key.seats
                        ),
                        &[
                            ("old_key_id", id.clone()),
                            ("new_key_id", new.key.id.clone()),
                        ],
                    )?;
                    self.distribute_tx(tx, fx, id, &grants, &new, now)
                })
                .await?;
                self.fill_waiting().await?;
            }
        }
        Ok(o)
    }
}

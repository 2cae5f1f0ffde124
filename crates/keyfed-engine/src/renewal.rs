//! The renewal engine (r01-r06, r10): ask the upstream whether a renewal of
//! each upstream key exists, download and verify it, decide, then store only
//! or distribute.
use crate::engine::Engine;
use crate::error::{EngineError, EngineResult};
use keyfed_core::renewal::{decide, RenewalDecision};
use keyfed_core::KeyFile;
use keyfed_store::{Origin, StoredKey};
use keyfed_wire::v1 as pb;

fn outcome(key_id: &str, outcome: &str, reason: String) -> pb::RenewalOutcome {
    pb::RenewalOutcome {
        key_id: key_id.into(),
        outcome: outcome.into(),
        reason,
        ..Default::default()
    }
}

impl Engine {
    /// "Check for updates and replace keys" (r01): one key, or every key whose
    /// origin is the upstream (r02). r03: any step may end the procedure for
    /// one key; in a run over every key, that key's failure is its own
    /// outcome (and notification) and the run goes on with the next key. The run's time is recorded either
    /// way, so the schedule waits a full period before trying again.
    pub async fn check_for_updates(
        &self,
        key_id: Option<&str>,
    ) -> EngineResult<Vec<pb::RenewalOutcome>> {
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
            let o = match self.renew_one(&k).await {
                Ok(o) => o,
                // the administrator asked about this one key: the error is the answer
                Err(e) if key_id.is_some() => {
                    self.renewal_checked("error");
                    return Err(e);
                }
                Err(e) => self.renewal_failed(&k, &e).await?,
            };
            self.renewal_checked(&o.outcome);
            out.push(o);
        }
        self.store
            .set_meta("last_renewal_check", &crate::time::ts(self.now()))?;
        Ok(out)
    }

    /// r03: a renewal procedure that ended early: the administrator is told
    /// which key and why; the outcome says "error".
    async fn renewal_failed(
        &self,
        k: &StoredKey,
        e: &EngineError,
    ) -> EngineResult<pb::RenewalOutcome> {
        let id = k.key.id.clone();
        let why = e.to_string();
        let now = self.now();
        tracing::warn!(node = %self.id(), key_id = %id, error = %why, "renewal check failed");
        self.commit(|tx, fx| {
            fx.notify(
                tx,
                now,
                "renewal-failed",
                &id,
                format!("the renewal check of key {id} failed; tried again at the next run: {why}"),
                &[("error", why.clone())],
            )
        })
        .await?;
        Ok(outcome(&id, "error", why))
    }

    async fn renew_one(&self, k: &StoredKey) -> EngineResult<pb::RenewalOutcome> {
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
        // (1) is there a renewal?
        let Some(renewal_id) = self.upstream.check_renewal(id).await? else {
            return Ok(outcome(
                id,
                "nothing",
                "the upstream holds no renewal for this key (r04)".into(),
            ));
        };
        // (2) download and verify
        let text = self.upstream.download_key(&renewal_id).await?;
        let file = KeyFile::parse_trusted(&text, &self.config.trusted_vendor_keys)?;
        if file.key.renews.as_deref() != Some(id.as_str()) {
            return Err(EngineError::Upstream(format!(
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
    ) -> EngineResult<pb::RenewalOutcome> {
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

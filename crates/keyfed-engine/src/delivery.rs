//! Deliveries from peers, each applied exactly once (by sequence and message
//! id) in one durable transaction: keys granted, offered, renewed and
//! withdrawn, station claims, commands and usage rollups. What a peer may
//! send is `keyfed_core::peer_refusal`'s to say; a refusal changes nothing
//! but a `peer-message-refused` notification.
use crate::config::PeerRole;
use crate::engine::{retire_if_free, seat_grant, withdrawn, Effects, Engine};
use crate::error::{EngineError, EngineResult};
use crate::lending::{borrowed_lapsed_tx, Lapsed};
use chrono::{DateTime, NaiveDate, Utc};
use keyfed_core::donation::{give_back_frees, on_arrival, OnArrival};
use keyfed_core::entitlement::Entitlement;
use keyfed_core::event::EventKind;
use keyfed_core::peer_refusal::{
    self, CarriedKey, DeliveryKind, KeyHere, KeyOrigin, PeerStanding, Verdict,
};
use keyfed_core::KeyFile;
use keyfed_store::{Grant, ObjectKind, Origin, OutboxEntry, StoredKey, Tx};
use keyfed_wire::v1 as pb;
use pb::delivery::Body;
use prost::Message;
use std::collections::{BTreeSet, HashMap};

type Tr<T> = keyfed_store::TxResult<T, EngineError>;

/// What a delivery needs read before its transaction (scans the
/// transaction cannot do); the transaction re-reads each record it changes.
#[derive(Default)]
struct Prepared {
    /// Grants of the key a renewal replaces, a withdrawal takes back or a
    /// grant updates.
    grants: Vec<Grant>,
    parsed: Option<Result<KeyFile, EngineError>>,
    /// b02: this node's current key of the claimed license.
    claimed: Option<StoredKey>,
    /// For the rollback check of stores written before serials were kept.
    held_serial: Option<u64>,
    /// b05: the (node, key) lines the peer's last rollup carried.
    carried: Vec<(String, String)>,
    /// b05: old key id -> ids of the keys renewing it.
    renewals: HashMap<String, Vec<String>>,
}

/// The store's origin as the refusal rules name it.
fn key_origin(o: &Origin) -> KeyOrigin {
    match o {
        Origin::Upstream => KeyOrigin::Upstream,
        Origin::Peer(p) => KeyOrigin::Peer(p.clone()),
    }
}

fn kind_of(body: &Body) -> DeliveryKind {
    match body {
        Body::Grant(_) => DeliveryKind::SeatGrant,
        Body::Withdrawn(_) => DeliveryKind::GrantWithdrawn,
        Body::Renewed(_) => DeliveryKind::KeyRenewed,
        Body::Usage(_) => DeliveryKind::UsageRollup,
        Body::Offer(_) => DeliveryKind::KeyOffer,
        Body::Command(_) => DeliveryKind::Command,
        Body::Claim(_) => DeliveryKind::StationClaim,
    }
}

/// e04/e05: the entitlement a grant or renewal carries (defect 3); none
/// from a sender that does not carry it.
fn carried_entitlement(seats: u32, until: &str) -> Option<Entitlement> {
    let expires = NaiveDate::parse_from_str(until, "%Y-%m-%d").ok()?;
    Some(Entitlement { seats, expires })
}

fn lent(s: &str) -> Option<DateTime<Utc>> {
    crate::time::parse_ts("lent_until", s).ok().flatten()
}

/// A key as a peer hands it over.
struct Received<'a> {
    file: &'a KeyFile,
    seats: u32,
    lent_until: Option<DateTime<Utc>>,
    distributable: bool,
    entitlement: Option<Entitlement>,
}

impl Engine {
    /// Applies one delivery from `peer` exactly once (by sequence), durably.
    pub async fn apply_delivery(&self, peer: &str, d: pb::Delivery) -> EngineResult<()> {
        self.apply_delivery_at(peer, d, self.now()).await
    }

    pub(crate) async fn apply_delivery_at(
        &self,
        peer: &str,
        d: pb::Delivery,
        now: DateTime<Utc>,
    ) -> EngineResult<()> {
        let pre = self.prepare(peer, &d)?;
        self.commit(|tx, fx| {
            if !first_application(tx, peer, &d, now)? {
                return Ok(());
            }
            self.apply_body(tx, fx, peer, &d, &pre, now)
        })
        .await?;
        self.fill_waiting_at(now).await
    }

    fn prepare(&self, peer: &str, d: &pb::Delivery) -> EngineResult<Prepared> {
        let mut pre = Prepared::default();
        match &d.body {
            Some(Body::Renewed(r)) => pre.grants = self.store.grants_of_key(&r.old_key_id)?,
            Some(Body::Withdrawn(w)) => pre.grants = self.store.grants_of_key(&w.key_id)?,
            Some(Body::Claim(c)) => {
                pre.claimed = self.store.keys()?.into_iter().find(|k| {
                    k.key.license == c.license
                        && k.superseded_by.is_none()
                        && k.merged_into.is_none()
                });
            }
            Some(Body::Usage(_)) => self.prepare_usage(peer, &mut pre)?,
            _ => {}
        }
        pre.parsed = match &d.body {
            Some(
                Body::Grant(pb::SeatGrant { key: Some(k), .. })
                | Body::Offer(pb::KeyOffer { key: Some(k) })
                | Body::Renewed(pb::KeyRenewed {
                    new_key: Some(k), ..
                }),
            ) => Some(self.parse_key(&k.text)),
            _ => None,
        };
        if let Some(Ok(f)) = &pre.parsed {
            let keys = self.store.keys()?;
            pre.held_serial = keys
                .iter()
                .filter(|k| k.key.license == f.key.license)
                .map(|k| k.key.serial)
                .max();
            if matches!(d.body, Some(Body::Grant(_))) {
                pre.grants = self.store.grants_of_key(&f.key.id)?;
            }
        }
        Ok(pre)
    }

    /// b05: a peer's rollup replaces every line its last one carried, and
    /// may name a key by the id the peer still holds (one our key renewed).
    fn prepare_usage(&self, peer: &str, pre: &mut Prepared) -> EngineResult<()> {
        pre.carried = self
            .store
            .usage_lines()?
            .into_iter()
            .filter(|l| l.via == peer)
            .map(|l| (l.node_id, l.key_id))
            .collect();
        for k in self.store.keys()? {
            if let Some(old) = &k.key.renews {
                pre.renewals
                    .entry(old.clone())
                    .or_default()
                    .push(k.key.id.clone());
            }
        }
        Ok(())
    }

    fn apply_body(
        &self,
        tx: &Tx<'_>,
        fx: &mut Effects,
        peer: &str,
        d: &pb::Delivery,
        pre: &Prepared,
        now: DateTime<Utc>,
    ) -> Tr<()> {
        let refuse = |fx: &mut Effects, key_id: &str, why: String| {
            tracing::warn!(node = %self.id(), %peer, %key_id, reason = %why, "peer message refused");
            fx.notify(
                tx,
                now,
                EventKind::PeerMessageRefused,
                key_id,
                why,
                &[("peer", peer.to_owned())],
            )
        };
        let Some(body) = &d.body else {
            let why = format!(
                "an empty or malformed delivery {} from {peer} was ignored",
                d.seq
            );
            return refuse(fx, "", why);
        };
        let file = match &pre.parsed {
            Some(Ok(f)) => Some(f),
            Some(Err(e)) => return refuse(fx, "", format!("a key from {peer} was refused: {e}")),
            None => None,
        };
        if let Some(f) = file {
            if let Verdict::Refuse(why) = self.key_verdict(tx, peer, body, f, pre.held_serial)? {
                self.give_refused_seats_back(tx, fx, peer, body, &f.key.id, &why, now)?;
                return refuse(fx, &f.key.id, why);
            }
        }
        match (body, file) {
            (Body::Grant(g), Some(f)) => {
                if let Some(until) = lent(&g.lent_until) {
                    if let OnArrival::GiveBack { until } = on_arrival(until, now) {
                        return self.lapsed_on_arrival(tx, fx, peer, &f.key.id, until, pre, now);
                    }
                }
                let r = Received {
                    file: f,
                    seats: g.seats,
                    lent_until: lent(&g.lent_until),
                    distributable: true,
                    entitlement: carried_entitlement(g.entitled_seats, &g.entitled_until),
                };
                self.receive_key_tx(tx, fx, peer, &r, &pre.grants, now)
            }
            (Body::Offer(_), Some(f)) => {
                let r = Received {
                    file: f,
                    seats: 0,
                    lent_until: None,
                    distributable: false,
                    entitlement: None,
                };
                self.receive_key_tx(tx, fx, peer, &r, &[], now)
            }
            (Body::Renewed(r), Some(f)) => self.receive_renewal(tx, fx, peer, r, f, pre, now),
            (Body::Claim(c), _) => self.claim_tx(tx, fx, peer, c, pre.claimed.as_ref(), now),
            (Body::Command(c), _) => {
                if let Verdict::Refuse(why) =
                    peer_refusal::command(peer, self.role(peer), &c.command)
                {
                    return refuse(fx, "", why);
                }
                command_received(tx, fx, peer, c, now)
            }
            (Body::Withdrawn(w), _) => self.withdraw_tx(tx, fx, peer, w, &pre.grants, now),
            (Body::Usage(u), _) => self.receive_usage(tx, fx, peer, u, pre, now),
            _ => {
                let why = format!(
                    "an empty or malformed delivery {} from {peer} was ignored",
                    d.seq
                );
                refuse(fx, "", why)
            }
        }
    }

    /// b01/r13: seats lent to this node arrived after their period ended by
    /// this node's clock: it holds nothing of them (and drops what it held of
    /// the key) and gives them back, so the lender frees them at once.
    #[allow(clippy::too_many_arguments)]
    fn lapsed_on_arrival(
        &self,
        tx: &Tx<'_>,
        fx: &mut Effects,
        peer: &str,
        key_id: &str,
        until: DateTime<Utc>,
        pre: &Prepared,
        now: DateTime<Utc>,
    ) -> Tr<()> {
        let held = tx
            .key::<EngineError>(key_id)?
            .is_some_and(|k| k.origin.peer() == Some(peer));
        let lapsed = Lapsed {
            lender: peer,
            key_id,
            until,
            held,
            grants: &pre.grants,
            why: format!("it arrived at {}, after the period", crate::time::ts(now)),
        };
        borrowed_lapsed_tx(tx, fx, &lapsed, now)
    }

    /// r13: seats a parent or neighbor granted and this node refused go
    /// back, or the sender counts them forever.
    #[allow(clippy::too_many_arguments)]
    fn give_refused_seats_back(
        &self,
        tx: &Tx<'_>,
        fx: &mut Effects,
        peer: &str,
        body: &Body,
        key_id: &str,
        why: &str,
        now: DateTime<Utc>,
    ) -> Tr<()> {
        let seats = matches!(body, Body::Grant(_) | Body::Renewed(_));
        let lender = matches!(
            self.config.role_of(peer),
            Some(PeerRole::Parent | PeerRole::Neighbor)
        );
        if seats && lender {
            let back = format!("refused by {}: {why}", self.id());
            fx.send(tx, peer, now, key_id, withdrawn(key_id, back))?;
        }
        Ok(())
    }

    /// The peer's role, as the refusal rules name it.
    fn role(&self, peer: &str) -> Option<peer_refusal::PeerRole> {
        self.config.role_of(peer).map(|r| match r {
            PeerRole::Parent => peer_refusal::PeerRole::Parent,
            PeerRole::Child => peer_refusal::PeerRole::Child,
            PeerRole::Neighbor => peer_refusal::PeerRole::Neighbor,
        })
    }

    /// `keyfed_core::peer_refusal::key_delivery` on what this node has of
    /// the carried key and its license.
    fn key_verdict(
        &self,
        tx: &Tx<'_>,
        peer: &str,
        body: &Body,
        f: &KeyFile,
        held_serial: Option<u64>,
    ) -> Tr<Verdict> {
        let standing = PeerStanding {
            role: self.role(peer),
            allow_receive: self.config.neighbor(peer).is_some_and(|n| n.allow_receive),
        };
        let renewed_old = match body {
            Body::Renewed(r) => tx
                .key::<EngineError>(&r.old_key_id)?
                .map(|k| (k.key.id, k.key.license)),
            _ => None,
        };
        let here = KeyHere {
            stored_from: tx
                .key::<EngineError>(&f.key.id)?
                .map(|k| key_origin(&k.origin)),
            highest_serial: tx
                .license_serial::<EngineError>(&f.key.license)?
                .max(held_serial),
            renewed_old,
        };
        let key = CarriedKey {
            id: &f.key.id,
            license: &f.key.license,
            serial: f.key.serial,
        };
        Ok(peer_refusal::key_delivery(
            peer,
            standing,
            kind_of(body),
            key,
            &here,
        ))
    }

    /// A key granted or offered by `peer` (its origin from now on). A grant
    /// that changes the key's entitlement (a later activation or trial
    /// extension at the origin, e04/e05) is passed on to this node's servers.
    fn receive_key_tx(
        &self,
        tx: &Tx<'_>,
        fx: &mut Effects,
        peer: &str,
        r: &Received<'_>,
        grants: &[Grant],
        now: DateTime<Utc>,
    ) -> Tr<()> {
        let f = r.file;
        let id = &f.key.id;
        let existing = tx.key::<EngineError>(id)?;
        let mut k = existing.clone().unwrap_or_else(|| {
            StoredKey::new(
                f.key.clone(),
                f.render(),
                Origin::Peer(peer.to_owned()),
                now,
                r.seats,
            )
        });
        k.held = r.seats;
        k.lent_until = r.lent_until;
        k.distributable = r.distributable;
        if r.entitlement.is_some() {
            k.entitlement = r.entitlement;
        }
        // e06: fewer seats than granted is flagged by the lifecycle sweep
        tx.put_key(&k)?;
        let Some(before) = existing else {
            let event = if r.distributable {
                EventKind::KeyReceived
            } else {
                EventKind::KeyOffered
            };
            let seats = r.seats;
            return fx.notify(
                tx,
                now,
                event,
                id,
                format!("key {id} received from {peer} with {seats} seat(s)"),
                &[("from", peer.to_owned()), ("seats", seats.to_string())],
            );
        };
        if before.entitlement() != k.entitlement() {
            for g in grants {
                let Some(g) = tx.grant::<EngineError>(id, &g.object)? else {
                    continue;
                };
                if g.kind == ObjectKind::Server {
                    fx.send(
                        tx,
                        &g.object,
                        now,
                        id,
                        seat_grant(&k, g.seats, g.lent_until),
                    )?;
                }
            }
        }
        Ok(())
    }

    /// r06 on a receiving server: the renewal is stored and passed on to
    /// this node's objects of the old key; the administrator is told.
    #[allow(clippy::too_many_arguments)]
    fn receive_renewal(
        &self,
        tx: &Tx<'_>,
        fx: &mut Effects,
        peer: &str,
        r: &pb::KeyRenewed,
        f: &KeyFile,
        pre: &Prepared,
        now: DateTime<Utc>,
    ) -> Tr<()> {
        let received = Received {
            file: f,
            seats: r.seats,
            lent_until: lent(&r.lent_until),
            distributable: false,
            entitlement: carried_entitlement(r.entitled_seats, &r.entitled_until),
        };
        if self.config.protocol_version < keyfed_core::AUTO_RENEWAL_SINCE {
            return self.receive_key_tx(tx, fx, peer, &received, &[], now);
        }
        let new = StoredKey {
            lent_until: received.lent_until,
            entitlement: received.entitlement,
            ..StoredKey::new(
                f.key.clone(),
                f.render(),
                Origin::Peer(peer.to_owned()),
                now,
                r.seats,
            )
        };
        let old_here = tx
            .key::<EngineError>(&r.old_key_id)?
            .filter(|k| k.origin.peer() == Some(peer));
        fx.notify(
            tx,
            now,
            EventKind::KeyRenewedAutomatically,
            &f.key.id,
            format!(
                "key {} was renewed automatically as {} ({} seats) by {peer}",
                r.old_key_id, f.key.id, r.seats
            ),
            &[
                ("old_key_id", r.old_key_id.clone()),
                ("new_key_id", f.key.id.clone()),
                ("from", peer.to_owned()),
            ],
        )?;
        if old_here.is_some() {
            self.distribute_tx(tx, fx, &r.old_key_id, &pre.grants, &new, now)
        } else if tx.key::<EngineError>(&new.key.id)?.is_none() {
            tx.put_key(&new)
        } else {
            Ok(())
        }
    }

    /// A peer took back the seats of a key it gave us: everything below goes
    /// too. Only the key's origin may (anything else is ignored).
    fn withdraw_tx(
        &self,
        tx: &Tx<'_>,
        fx: &mut Effects,
        peer: &str,
        w: &pb::GrantWithdrawn,
        grants: &[Grant],
        now: DateTime<Utc>,
    ) -> Tr<()> {
        let (key_id, reason) = (w.key_id.as_str(), w.reason.as_str());
        let Some(k) = tx.key::<EngineError>(key_id)? else {
            return Ok(());
        };
        if peer_refusal::withdrawal(peer, Some(&key_origin(&k.origin))) != Verdict::Accept {
            return grant_returned_tx(tx, fx, peer, w, now);
        }
        for g in grants {
            if tx.remove_grant::<EngineError>(key_id, &g.object)?.is_some()
                && g.kind == ObjectKind::Server
            {
                let why = format!("withdrawn upstream: {reason}");
                fx.send(tx, &g.object, now, key_id, withdrawn(key_id, why))?;
            }
        }
        tx.remove_key::<EngineError>(key_id)?;
        fx.notify(
            tx,
            now,
            EventKind::KeyWithdrawn,
            key_id,
            format!("{peer} withdrew key {key_id}: {reason}"),
            &[("from", peer.to_owned())],
        )
    }

    /// b05: a peer's rollup. Each line keeps the time its own node measured
    /// it (defect 9); lines of keys this node did not grant the peer (or
    /// beyond the grant) are refused.
    #[allow(clippy::too_many_arguments)]
    fn receive_usage(
        &self,
        tx: &Tx<'_>,
        fx: &mut Effects,
        peer: &str,
        u: &pb::UsageRollup,
        pre: &Prepared,
        now: DateTime<Utc>,
    ) -> Tr<()> {
        for (node_id, key_id) in &pre.carried {
            if !u
                .lines
                .iter()
                .any(|l| &l.node_id == node_id && &l.key_id == key_id)
            {
                tx.remove_usage::<EngineError>(node_id, key_id)?;
            }
        }
        let mut refused = BTreeSet::new();
        for line in &u.lines {
            let granted = tx
                .grant::<EngineError>(&line.key_id, peer)?
                .map(|g| g.seats);
            let mut renewal_granted = false;
            for new in pre.renewals.get(&line.key_id).into_iter().flatten() {
                renewal_granted |= tx.grant::<EngineError>(new, peer)?.is_some();
            }
            if !peer_refusal::usage_line_accepted(line.seats, granted, renewal_granted) {
                refused.insert(line.key_id.clone());
                continue;
            }
            tx.put_usage(&keyfed_store::UsageLine {
                node_id: line.node_id.clone(),
                key_id: line.key_id.clone(),
                seats: line.seats,
                used: line.used,
                reported_at: crate::time::parse_ts("reported_at", &line.reported_at)
                    .ok()
                    .flatten()
                    .unwrap_or(now),
                via: peer.to_owned(),
            })?;
        }
        if refused.is_empty() {
            return Ok(());
        }
        let keys = refused.into_iter().collect::<Vec<_>>().join(", ");
        tracing::warn!(node = %self.id(), %peer, %keys, "usage lines refused");
        fx.notify(
            tx,
            now,
            EventKind::PeerMessageRefused,
            "",
            format!("{peer} reported usage of key(s) {keys}, whose seats this node did not grant it (or fewer than it claims); those lines were refused"),
            &[("peer", peer.to_owned()), ("keys", keys.clone())],
        )
    }

    /// The peer acked `entries`: grants are delivered, renewals taken (r07).
    pub async fn on_acked(&self, peer: &str, entries: Vec<OutboxEntry>) -> EngineResult<()> {
        self.acked_at(peer, &entries, self.now()).await
    }

    pub(crate) async fn acked_at(
        &self,
        peer: &str,
        entries: &[OutboxEntry],
        now: DateTime<Utc>,
    ) -> EngineResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        self.commit(|tx, fx| {
            for e in entries {
                let Ok(d) = pb::Delivery::decode(e.body.as_slice()) else {
                    continue;
                };
                match d.body {
                    Some(Body::Grant(g)) => {
                        if let Some(mut mine) = tx.grant::<EngineError>(&e.key_id, peer)? {
                            if mine.seats == g.seats {
                                mine.delivered = true;
                                tx.put_grant(&mine)?;
                            }
                        }
                    }
                    Some(Body::Command(c)) => {
                        if let Some(mut cmd) = tx.command::<EngineError>(peer, c.id)? {
                            cmd.state = keyfed_store::CommandState::Delivered { at: now };
                            tx.put_command(&cmd)?;
                        }
                    }
                    Some(Body::Renewed(r)) => renewal_taken(tx, fx, peer, &r, now)?,
                    _ => {}
                }
            }
            Ok(())
        })
        .await
    }
}

/// o03: a command from the parent's administrator.
fn command_received(
    tx: &Tx<'_>,
    fx: &mut Effects,
    peer: &str,
    c: &pb::RemoteCommand,
    now: DateTime<Utc>,
) -> Tr<()> {
    fx.notify(
        tx,
        now,
        EventKind::CommandReceived,
        "",
        format!("command from {peer}: {}", c.command),
        &[
            ("from", peer.to_owned()),
            ("command_id", c.id.to_string()),
            ("command", c.command.clone()),
        ],
    )
}

/// r13: a server this node granted seats to refused them (or gave them
/// back): its grant is removed, so the seats are free here again. A lapsed
/// lending's give-back frees only a grant ending no later than the period
/// it names (b01, `give_back_frees`): a renewal sent since stays.
fn grant_returned_tx(
    tx: &Tx<'_>,
    fx: &mut Effects,
    peer: &str,
    w: &pb::GrantWithdrawn,
    now: DateTime<Utc>,
) -> Tr<()> {
    let (key_id, reason) = (w.key_id.as_str(), w.reason.as_str());
    let Some(g) = tx.grant::<EngineError>(key_id, peer)? else {
        return Ok(());
    };
    if g.kind != ObjectKind::Server {
        return Ok(());
    }
    if let Some(returned) = lent(&w.lent_until) {
        if !give_back_frees(g.lent_until, returned) {
            tracing::debug!(%peer, %key_id, "give-back of an earlier lending period; the current one stays");
            return Ok(());
        }
    }
    tx.remove_grant::<EngineError>(key_id, peer)?;
    retire_if_free(tx, fx, key_id, now)?;
    fx.notify(
        tx,
        now,
        EventKind::GrantReturned,
        key_id,
        format!(
            "{peer} gave back its {} seat(s) of key {key_id}: {reason}",
            g.seats
        ),
        &[("peer", peer.to_owned()), ("seats", g.seats.to_string())],
    )
}

/// r07: the peer took the renewal: its new grant is delivered, its old one
/// goes, and the old key with it once no one holds it.
fn renewal_taken(
    tx: &Tx<'_>,
    fx: &mut Effects,
    peer: &str,
    r: &pb::KeyRenewed,
    now: DateTime<Utc>,
) -> Tr<()> {
    let new_id = r
        .new_key
        .as_ref()
        .and_then(|k| KeyFile::parse(&k.text).ok())
        .map(|f| f.key.id);
    if let Some(id) = new_id {
        if let Some(mut g) = tx.grant::<EngineError>(&id, peer)? {
            g.delivered = true;
            tx.put_grant(&g)?;
        }
    }
    tx.remove_grant::<EngineError>(&r.old_key_id, peer)?;
    retire_if_free(tx, fx, &r.old_key_id, now)
}

/// Exactly once: a replay (by sequence) or a message seen before (by id)
/// is not applied again.
fn first_application(tx: &Tx<'_>, peer: &str, d: &pb::Delivery, now: DateTime<Utc>) -> Tr<bool> {
    let mut cursor = tx.cursor::<EngineError>(peer)?;
    if d.seq <= cursor.applied {
        return Ok(false);
    }
    cursor.applied = d.seq;
    tx.put_cursor(peer, &cursor)?;
    // an outbox names its messages by recipient, sequence and time only:
    // two senders can give the same id, so it is kept per sender
    tx.first_sight::<EngineError>(&format!("{peer}:{}", d.message_id), now)
}

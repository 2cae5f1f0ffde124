//! Conversions between store/domain values and wire messages.
use keyfed_core::{Key, KeyKind};
use keyfed_proto::v1 as pb;
use keyfed_store::{Grant, Notification, ObjectKind, Origin};

pub use keyfed_engine::time::{opt_ts, parse_ts, ts};

pub fn kind(k: KeyKind) -> pb::KeyKind {
    match k {
        KeyKind::Term => pb::KeyKind::Term,
        KeyKind::Subscription => pb::KeyKind::Subscription,
        KeyKind::Trial => pb::KeyKind::Trial,
        KeyKind::Nfr => pb::KeyKind::Nfr,
    }
}

pub fn key(k: &Key, signer: &str) -> pb::Key {
    pb::Key {
        id: k.id.clone(),
        license: k.license.clone(),
        serial: k.serial,
        customer: k.customer.clone(),
        product: k.product.clone(),
        components: k.components.to_vec(),
        seats: k.seats,
        kind: kind(k.kind).into(),
        issued_at: ts(k.issued_at),
        expires: k.expires.format("%Y-%m-%d").to_string(),
        renews: k.renews.clone().unwrap_or_default(),
        signer: signer.to_owned(),
    }
}

pub fn origin(o: &Origin) -> pb::Origin {
    pb::Origin {
        from: Some(match o {
            Origin::Upstream => pb::origin::From::Upstream(true),
            Origin::Peer(p) => pb::origin::From::Peer(p.clone()),
        }),
    }
}

pub fn object_kind(k: ObjectKind) -> pb::ObjectKind {
    match k {
        ObjectKind::Station => pb::ObjectKind::Station,
        ObjectKind::Server => pb::ObjectKind::Server,
    }
}

pub fn grant(g: &Grant) -> pb::GrantInfo {
    pb::GrantInfo {
        key_id: g.key_id.clone(),
        object: g.object.clone(),
        kind: object_kind(g.kind).into(),
        seats: g.seats,
        granted_at: ts(g.granted_at),
        lent_until: opt_ts(g.lent_until),
        delivered: g.delivered,
    }
}

pub fn notification(n: &Notification) -> pb::Notification {
    pb::Notification {
        seq: n.seq,
        at: ts(n.at),
        event: n.event.clone(),
        key_id: n.key_id.clone(),
        message: n.message.clone(),
        details: n.details.clone().into_iter().collect(),
    }
}

// ---- names arriving on the wire ---------------------------------------------
// Every name a request carries is checked here, before anything is read or
// stored: a length limit and a character rule per kind (keyfed_core::names),
// so a 100,000-character object or one holding NUL, a newline or a bidi
// override never reaches the ledger, tables or logs.

use keyfed_core::names::{self, NameKind};

fn invalid(e: &names::NameError) -> tonic::Status {
    tonic::Status::invalid_argument(e.to_string())
}

/// One name of `kind`; INVALID_ARGUMENT naming the field otherwise.
pub fn name(kind: NameKind, value: &str) -> Result<(), tonic::Status> {
    names::validate(kind, value).map_err(|e| invalid(&e))
}

/// An optional name: empty is allowed (the request means "none" or "all").
pub fn optional_name(kind: NameKind, value: &str) -> Result<(), tonic::Status> {
    if value.is_empty() {
        Ok(())
    } else {
        name(kind, value)
    }
}

/// Admin.AssignSeats: the key, the object and at least one seat.
pub fn assign_request(r: &pb::AssignSeatsRequest) -> Result<(), tonic::Status> {
    name(NameKind::KeyId, &r.key_id)?;
    name(NameKind::Object, &r.object)?;
    names::grant_seats(&r.object, r.seats).map_err(|e| invalid(&e))?;
    Ok(())
}

/// What a station says on Attach and Renew: its fingerprint, station id,
/// components and tenant.
pub fn station_hello(
    fingerprint: &str,
    station_id: &str,
    components: &[String],
    tenant: &str,
) -> Result<(), tonic::Status> {
    name(NameKind::Fingerprint, fingerprint)?;
    optional_name(NameKind::Object, station_id)?;
    for c in components {
        name(NameKind::Component, c)?;
    }
    names::validate_tenant_or_owner(tenant).map_err(|e| invalid(&e))
}

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

//! The vendor, in memory: issues Ed25519-signed keys with `keyfed_core`'s
//! signer, sells renewals (each renews the license's newest renewable key,
//! one serial higher) and activation keys, and answers the engine's
//! [`UpstreamPort`] (r03 (1), (2)) from memory, synchronously.
use chrono::{DateTime, NaiveDate, SubsecRound, Utc};
use keyfed_core::{Components, Key, KeyFile, KeyKind, VendorSigner};
use keyfed_engine::{EngineError, PortFuture, UpstreamPort};
use keyfed_wire::v1 as pb;
use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Debug, Default)]
struct State {
    texts: BTreeMap<String, String>,
    /// key id -> the renewal the vendor holds for it.
    renewal_of: BTreeMap<String, String>,
    /// license -> (newest renewable key, highest serial issued).
    licenses: BTreeMap<String, (Key, u64)>,
    next: u64,
}

/// A planted upstream bug: renewals come with an older serial (rollback).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamBug {
    #[default]
    None,
    OlderSerial,
}

pub struct SimUpstream {
    signer: VendorSigner,
    state: Mutex<State>,
    bug: UpstreamBug,
}

/// What a sale asks for.
#[derive(Debug, Clone)]
pub struct Terms {
    pub seats: u32,
    pub components: Vec<&'static str>,
    pub expires: NaiveDate,
    pub kind: KeyKind,
}

impl SimUpstream {
    #[must_use]
    pub fn new(seed: [u8; 32], bug: UpstreamBug) -> Self {
        Self {
            signer: VendorSigner::from_seed(seed),
            state: Mutex::new(State::default()),
            bug,
        }
    }

    #[must_use]
    pub fn public_hex(&self) -> String {
        self.signer.public_hex()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("upstream lock")
    }

    fn sign(&self, st: &mut State, key: Key) -> KeyFile {
        let file = self.signer.sign(key).expect("the sim signs valid keys");
        st.texts.insert(file.key.id.clone(), file.render());
        file
    }

    fn key(st: &mut State, license: String, serial: u64, t: &Terms, now: DateTime<Utc>) -> Key {
        st.next += 1;
        Key {
            id: format!("k{}", st.next),
            license,
            serial,
            customer: "acme".into(),
            product: "endpoint".into(),
            components: Components::new(&t.components).expect("valid components"),
            seats: t.seats,
            kind: t.kind,
            issued_at: now.trunc_subsecs(0),
            expires: t.expires,
            renews: None,
        }
    }

    /// A new license, serial 1.
    pub fn issue(&self, t: &Terms, now: DateTime<Utc>) -> KeyFile {
        let mut st = self.lock();
        let license = format!("l{}", st.licenses.len() + 1);
        let key = Self::key(&mut st, license.clone(), 1, t, now);
        st.licenses.insert(license, (key.clone(), 1));
        self.sign(&mut st, key)
    }

    /// A renewal of the newest renewable key of `license`, held for it.
    pub fn purchase_renewal(
        &self,
        license: &str,
        t: &Terms,
        now: DateTime<Utc>,
    ) -> Option<KeyFile> {
        let mut st = self.lock();
        let (head, top) = st.licenses.get(license)?.clone();
        let serial = match self.bug {
            UpstreamBug::None => top + 1,
            // planted: the vendor hands out a serial below one it issued
            UpstreamBug::OlderSerial => top.saturating_sub(1).max(1),
        };
        let mut key = Self::key(&mut st, license.to_owned(), serial, t, now);
        key.renews = Some(head.id.clone());
        st.renewal_of.insert(head.id.clone(), key.id.clone());
        st.licenses
            .insert(license.to_owned(), (key.clone(), top.max(serial)));
        Some(self.sign(&mut st, key))
    }

    /// An activation key of `license` (e05): next serial, renews nothing.
    pub fn activation(&self, license: &str, t: &Terms, now: DateTime<Utc>) -> Option<KeyFile> {
        let mut st = self.lock();
        let (head, top) = st.licenses.get(license)?.clone();
        let key = Self::key(&mut st, license.to_owned(), top + 1, t, now);
        st.licenses.insert(license.to_owned(), (head, top + 1));
        Some(self.sign(&mut st, key))
    }

    /// Every key text this vendor signed, by id.
    #[must_use]
    pub fn issued(&self) -> BTreeMap<String, String> {
        self.lock().texts.clone()
    }

    /// The key a renewal of `license` would renew now.
    #[must_use]
    pub fn head(&self, license: &str) -> Option<Key> {
        self.lock().licenses.get(license).map(|(k, _)| k.clone())
    }

    #[must_use]
    pub fn licenses(&self) -> Vec<String> {
        self.lock().licenses.keys().cloned().collect()
    }
}

impl UpstreamPort for SimUpstream {
    fn check_renewal<'a>(&'a self, key_id: &'a str) -> PortFuture<'a, Option<String>> {
        let found = self.lock().renewal_of.get(key_id).cloned();
        Box::pin(async move { Ok(found) })
    }
    fn download_key<'a>(&'a self, key_id: &'a str) -> PortFuture<'a, String> {
        let text = self.lock().texts.get(key_id).cloned();
        Box::pin(async move {
            text.ok_or_else(|| EngineError::Upstream(format!("key {key_id} was not issued")))
        })
    }
    fn submit_telemetry<'a>(&'a self, _: &'a str) -> PortFuture<'a, pb::TelemetryAck> {
        Box::pin(async { Ok(pb::TelemetryAck::default()) })
    }
    fn relay_telemetry<'a>(&'a self, _: &'a str) -> PortFuture<'a, pb::TelemetryReceipt> {
        Box::pin(async { Ok(pb::TelemetryReceipt::default()) })
    }
}

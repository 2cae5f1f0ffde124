//! Admin.ListStations a page at a time (issue 12): walks the store's
//! station indexes by the plan of `keyfed_core::station_page`, so a page
//! reads about one page of entries, and takes `total` from counters.
use crate::engine::Engine;
use crate::error::{EngineError, EngineResult};
use crate::time::ts;
use keyfed_core::station_page::{
    PageToken, Source, StateFilter, StationQuery, SCAN_SLACK, SEARCH_TOTAL_CAP,
};
use keyfed_store::{past_key, StationRecord, StationScan, StoredKey};
use keyfed_wire::v1 as pb;
use std::collections::{BTreeMap, HashSet};

/// One page and where the next goes on.
pub struct StationPage {
    pub stations: Vec<pb::StationInfo>,
    pub next_page_token: String,
    pub total: u64,
    /// `total` stopped counting at `SEARCH_TOTAL_CAP`.
    pub total_capped: bool,
}

fn scan(source: &Source) -> StationScan<'_> {
    match source {
        Source::Fingerprint(p) => StationScan::Fingerprint(p),
        Source::StationId(p) => StationScan::StationId(p),
        Source::Tenant(p) => StationScan::Tenant(p),
        Source::Key(k) => StationScan::Key(k),
        Source::Holders => StationScan::Holders,
        Source::Retired => StationScan::Retired,
        Source::Unlicensed => StationScan::Unlicensed,
    }
}

impl Engine {
    /// Admin.ListStations with its filters and page token.
    pub fn station_page(&self, r: &pb::ListStationsRequest) -> EngineResult<StationPage> {
        let q = StationQuery::new(r.page_size, &r.state, &r.search, &r.key_id)
            .map_err(EngineError::InvalidArgument)?;
        let token = PageToken::decode(&r.page_token, &q).map_err(EngineError::InvalidArgument)?;
        let keys: BTreeMap<String, StoredKey> = self
            .store()
            .keys()?
            .into_iter()
            .map(|k| (k.key.id.clone(), k))
            .collect();
        let plan = q.plan();
        let (mut phase, mut after) = token.map_or((0, None), |t| (t.phase, t.after));
        let mut stations = Vec::new();
        let mut budget = q.page_size + SCAN_SLACK;
        let mut next = None;
        'walk: while phase < plan.len() {
            let want = (q.page_size - stations.len() + 1).min(budget);
            let hits = self
                .store()
                .station_page(scan(&plan[phase]), after.as_deref(), want)?;
            let exhausted = hits.len() < want;
            for hit in hits {
                if stations.len() == q.page_size || budget == 0 {
                    next = Some(PageToken { phase, after });
                    break 'walk;
                }
                budget -= 1;
                after = Some(hit.position.clone());
                // a Holders walk skips a key whose state the filter excludes
                if let (Source::Holders, Some(id)) = (&plan[phase], &hit.key_id) {
                    if !keys.get(id).is_some_and(|k| self.in_state(k, q.state)) {
                        after = Some(past_key(id));
                        continue;
                    }
                }
                if let Some(info) = self.listed(&q, phase, &keys, &hit.fingerprint)? {
                    stations.push(info);
                }
            }
            if exhausted {
                phase += 1;
                after = None;
            } else if budget == 0 || stations.len() == q.page_size {
                next = Some(PageToken { phase, after });
                break;
            }
        }
        let (total, total_capped) = self.station_total(&q, &keys)?;
        Ok(StationPage {
            stations,
            next_page_token: next.map(|t| t.encode(&q)).unwrap_or_default(),
            total,
            total_capped,
        })
    }

    /// Whether a station holding a seat of `k` is in `state`.
    fn in_state(&self, k: &StoredKey, state: Option<StateFilter>) -> bool {
        let works = self.key_state(k).seats_work();
        match state {
            None => true,
            Some(StateFilter::Licensed) => works,
            Some(StateFilter::Withdrawn) => !works,
            Some(_) => false,
        }
    }

    /// The station as listed, if it passes the query's filters and was not
    /// listed by an earlier source of a search.
    fn listed(
        &self,
        q: &StationQuery,
        phase: usize,
        keys: &BTreeMap<String, StoredKey>,
        fp: &str,
    ) -> EngineResult<Option<pb::StationInfo>> {
        let Some(s) = self.store().station(fp)? else {
            return Ok(None); // a grant of an object that never connected
        };
        if q.seen_earlier(phase, &s.fingerprint, &s.station_id) {
            return Ok(None);
        }
        let key = self.held_key(keys, &s)?;
        let info = station_info(self, s, key);
        let state_ok = q.state.is_none_or(|f| f.as_str() == info.state);
        let key_ok = q.key_id.is_empty() || info.key_id == q.key_id;
        Ok((state_ok && key_ok).then_some(info))
    }

    /// The key the station holds a seat of: its record names it unless a
    /// renewal moved the seat since, then every key is asked (keys are few).
    fn held_key<'k>(
        &self,
        keys: &'k BTreeMap<String, StoredKey>,
        s: &StationRecord,
    ) -> EngineResult<Option<&'k StoredKey>> {
        if let Some(k) = s.key_id.as_ref().and_then(|id| keys.get(id)) {
            if self.store().grant(&k.key.id, &s.fingerprint)?.is_some() {
                return Ok(Some(k));
            }
        }
        for k in keys.values() {
            if self.store().grant(&k.key.id, &s.fingerprint)?.is_some() {
                return Ok(Some(k));
            }
        }
        Ok(None)
    }

    /// Stations matching the filters: from counters, or for a search by
    /// walking its sources up to `SEARCH_TOTAL_CAP`.
    fn station_total(
        &self,
        q: &StationQuery,
        keys: &BTreeMap<String, StoredKey>,
    ) -> EngineResult<(u64, bool)> {
        let store = self.store();
        if !q.search.is_empty() {
            let mut seen = HashSet::new();
            let plan = q.plan();
            for (phase, source) in plan.iter().enumerate() {
                let cap = usize::try_from(SEARCH_TOTAL_CAP).unwrap_or(usize::MAX);
                for hit in store.station_page(scan(source), None, cap + 1)? {
                    if seen.contains(&hit.fingerprint) {
                        continue;
                    }
                    let filtered = q.state.is_some() || !q.key_id.is_empty();
                    if filtered && self.listed(q, phase, keys, &hit.fingerprint)?.is_none() {
                        continue;
                    }
                    seen.insert(hit.fingerprint);
                    if seen.len() as u64 >= SEARCH_TOTAL_CAP {
                        return Ok((SEARCH_TOTAL_CAP, true));
                    }
                }
            }
            return Ok((seen.len() as u64, false));
        }
        let holders = |pick: &dyn Fn(&StoredKey) -> bool| -> EngineResult<u64> {
            let mut n = 0;
            for k in keys.values().filter(|k| pick(k)) {
                n += store.station_holders(&k.key.id)?;
            }
            Ok(n)
        };
        let totals = store.station_totals()?;
        let total = match (q.key_id.is_empty(), q.state) {
            (false, state) => match keys.get(&q.key_id) {
                Some(k) if state.is_none() || self.in_state(k, state) => {
                    store.station_holders(&q.key_id)?
                }
                _ => 0,
            },
            (true, None) => totals.all,
            (true, Some(StateFilter::Retired)) => totals.retired,
            (true, Some(StateFilter::Unlicensed)) => totals.unlicensed,
            (true, Some(f)) => holders(&|k| self.in_state(k, Some(f)))?,
        };
        Ok((total, false))
    }
}

/// A station record as `ListStations` shows it.
pub(crate) fn station_info(
    engine: &Engine,
    s: StationRecord,
    key: Option<&StoredKey>,
) -> pb::StationInfo {
    let state = match (&s.retired_at, key) {
        (Some(_), _) => "retired",
        (None, Some(k)) if engine.key_state(k).seats_work() => "licensed",
        (None, Some(_)) => "withdrawn",
        (None, None) => "unlicensed",
    };
    pb::StationInfo {
        fingerprint: s.fingerprint,
        station_id: s.station_id,
        tenant: s.tenant,
        key_id: key.map(|k| k.key.id.clone()).unwrap_or_default(),
        last_contact: ts(s.last_contact),
        state: state.into(),
        retired_at: s.retired_at.map(ts).unwrap_or_default(),
        reports: s.reports,
        settings_version: s.settings_version,
    }
}

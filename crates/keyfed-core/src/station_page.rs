//! Pages of the station list (issue 12): the filters a `ListStations`
//! request may name, the opaque page token, and which index each part of
//! a query walks, so a page costs about one page of reads at any size.
//!
//! A token says which source of the query's plan it stopped in and the
//! index position after which to go on; it carries a check of the filters,
//! so a token used with other filters is refused instead of giving a page
//! of something else.
use std::fmt;

/// Most stations one page holds, and a page's size when none is asked.
pub const MAX_PAGE_SIZE: usize = 1000;
/// Index entries one page may look at beyond its size before it is
/// answered short (with a token to go on): filters that skip many entries
/// cost more requests, never one unbounded one.
pub const SCAN_SLACK: usize = 256;
/// A search's `total` is counted up to this many stations.
pub const SEARCH_TOTAL_CAP: u64 = 1000;

/// The state filter (as `StationInfo.state` names them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateFilter {
    Licensed,
    Withdrawn,
    Unlicensed,
    Retired,
}

impl StateFilter {
    pub const ALL: [StateFilter; 4] = [
        Self::Licensed,
        Self::Withdrawn,
        Self::Unlicensed,
        Self::Retired,
    ];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Licensed => "licensed",
            Self::Withdrawn => "withdrawn",
            Self::Unlicensed => "unlicensed",
            Self::Retired => "retired",
        }
    }

    /// `""` is no filter.
    pub fn parse(s: &str) -> Result<Option<Self>, String> {
        if s.is_empty() {
            return Ok(None);
        }
        Self::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .map(Some)
            .ok_or_else(|| {
                format!("state {s:?} is not one of licensed, withdrawn, unlicensed, retired")
            })
    }

    /// Stations in this state hold a seat of a key.
    #[must_use]
    pub fn holds_seat(self) -> bool {
        matches!(self, Self::Licensed | Self::Withdrawn)
    }
}

/// One index walk of a query, in the order the pages list them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Fingerprints with this prefix ("" : every station).
    Fingerprint(String),
    StationId(String),
    Tenant(String),
    /// Stations holding a seat of this key.
    Key(String),
    /// Stations holding a seat of any key.
    Holders,
    Retired,
    Unlicensed,
}

/// The filters of one request, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StationQuery {
    pub page_size: usize,
    pub state: Option<StateFilter>,
    pub search: String,
    pub key_id: String,
}

impl StationQuery {
    /// # Errors
    /// A page size above [`MAX_PAGE_SIZE`] or an unknown state, named.
    pub fn new(page_size: u32, state: &str, search: &str, key_id: &str) -> Result<Self, String> {
        let page_size = match usize::try_from(page_size).unwrap_or(usize::MAX) {
            0 => MAX_PAGE_SIZE,
            n if n > MAX_PAGE_SIZE => {
                return Err(format!(
                    "page_size {n} is more than the {MAX_PAGE_SIZE} a page may hold"
                ))
            }
            n => n,
        };
        Ok(Self {
            page_size,
            state: StateFilter::parse(state)?,
            search: search.to_owned(),
            key_id: key_id.to_owned(),
        })
    }

    /// Which indexes the query walks, in order. A search walks the three
    /// searchable fields (a station found by an earlier one is skipped by
    /// the later: [`StationQuery::seen_earlier`]); otherwise the narrowest
    /// index the filters allow.
    #[must_use]
    pub fn plan(&self) -> Vec<Source> {
        if !self.search.is_empty() {
            let s = self.search.clone();
            return vec![
                Source::Fingerprint(s.clone()),
                Source::StationId(s.clone()),
                Source::Tenant(s),
            ];
        }
        if !self.key_id.is_empty() {
            return vec![Source::Key(self.key_id.clone())];
        }
        vec![match self.state {
            None => Source::Fingerprint(String::new()),
            Some(StateFilter::Retired) => Source::Retired,
            Some(StateFilter::Unlicensed) => Source::Unlicensed,
            Some(_) => Source::Holders,
        }]
    }

    /// In a search, whether source `phase` found a station an earlier
    /// source of the plan listed already.
    #[must_use]
    pub fn seen_earlier(&self, phase: usize, fingerprint: &str, station_id: &str) -> bool {
        let s = self.search.as_str();
        match phase {
            1 => fingerprint.starts_with(s),
            2 => fingerprint.starts_with(s) || station_id.starts_with(s),
            _ => false,
        }
    }

    /// A check of the filters, carried in the token.
    fn check(&self) -> u32 {
        // FNV-1a: stable across builds, unlike the std hasher
        let mut h: u32 = 0x811c_9dc5;
        let state = self.state.map_or("", StateFilter::as_str);
        for part in [state, &self.search, &self.key_id] {
            for b in part.bytes().chain([0xff]) {
                h ^= u32::from(b);
                h = h.wrapping_mul(0x0100_0193);
            }
        }
        h
    }
}

/// Where the next page goes on: a source of the plan, and the index
/// position after which to continue (none: its start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageToken {
    pub phase: usize,
    pub after: Option<Vec<u8>>,
}

impl PageToken {
    #[must_use]
    pub fn encode(&self, q: &StationQuery) -> String {
        let after = self.after.as_deref().map(hex::encode).unwrap_or_default();
        format!("1.{}.{:08x}.{after}", self.phase, q.check())
    }

    /// # Errors
    /// A token this node did not make, or made for other filters.
    pub fn decode(token: &str, q: &StationQuery) -> Result<Option<Self>, String> {
        if token.is_empty() {
            return Ok(None);
        }
        let bad = || {
            format!("page_token {token:?} is not a token this node gave; start again without one")
        };
        let mut parts = token.splitn(4, '.');
        let (Some("1"), Some(phase), Some(check), Some(after)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let phase: usize = phase.parse().map_err(|_| bad())?;
        if phase >= q.plan().len() {
            return Err(bad());
        }
        if u32::from_str_radix(check, 16).map_err(|_| bad())? != q.check() {
            return Err(format!(
                "page_token {token:?} was given for other filters (state, search, key_id); use the same filters as the first page, or start again without a token"
            ));
        }
        let after = if after.is_empty() {
            None
        } else {
            Some(hex::decode(after).map_err(|_| bad())?)
        };
        Ok(Some(Self { phase, after }))
    }
}

impl fmt::Display for StateFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(state: &str, search: &str, key: &str) -> StationQuery {
        StationQuery::new(10, state, search, key).unwrap()
    }

    #[test]
    fn a_token_round_trips_for_the_same_filters() {
        let query = q("licensed", "ab", "");
        let t = PageToken {
            phase: 2,
            after: Some(b"t\0abc\0fp-1".to_vec()),
        };
        let s = t.encode(&query);
        assert_eq!(PageToken::decode(&s, &query), Ok(Some(t)));
        assert_eq!(PageToken::decode("", &query), Ok(None));
    }

    #[test]
    fn a_token_for_other_filters_or_garbage_is_refused() {
        let first = q("", "ab", "");
        let t = PageToken {
            phase: 0,
            after: Some(b"ab1".to_vec()),
        }
        .encode(&first);
        let err = PageToken::decode(&t, &q("", "ac", "")).unwrap_err();
        assert!(err.contains("other filters"), "{err}");
        for bad in [
            "x",
            "1.0.zz.00",
            "1.9.00000000.",
            "2.0.0.0",
            "1.0.00000000.zz",
        ] {
            assert!(PageToken::decode(bad, &first).is_err(), "{bad}");
        }
        // a phase beyond a one-source plan
        let plain = q("", "", "");
        let t = PageToken {
            phase: 1,
            after: None,
        }
        .encode(&plain);
        assert!(PageToken::decode(&t, &plain).is_err());
    }

    #[test]
    fn page_sizes_default_and_are_bounded() {
        assert_eq!(StationQuery::new(0, "", "", "").unwrap().page_size, 1000);
        assert!(StationQuery::new(1001, "", "", "").is_err());
        let err = StationQuery::new(5, "asleep", "", "").unwrap_err();
        assert!(err.contains("asleep"), "{err}");
    }

    #[test]
    fn the_plan_walks_the_narrowest_index() {
        assert_eq!(q("", "", "").plan(), [Source::Fingerprint(String::new())]);
        assert_eq!(q("retired", "", "").plan(), [Source::Retired]);
        assert_eq!(q("unlicensed", "", "").plan(), [Source::Unlicensed]);
        assert_eq!(q("withdrawn", "", "").plan(), [Source::Holders]);
        assert_eq!(q("licensed", "", "k-1").plan(), [Source::Key("k-1".into())]);
        assert_eq!(q("", "ab", "k-1").plan().len(), 3);
    }

    #[test]
    fn a_search_lists_a_station_once_across_its_sources() {
        let s = q("", "ab", "");
        // found by fingerprint: the station-id and tenant walks skip it
        assert!(s.seen_earlier(1, "ab-1", "ab-station"));
        assert!(s.seen_earlier(2, "zz", "ab-station"));
        assert!(!s.seen_earlier(2, "zz", "zz-station"));
        assert!(!s.seen_earlier(0, "ab-1", ""));
    }
}

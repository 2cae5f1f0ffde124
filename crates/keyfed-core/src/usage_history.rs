//! Usage history (issue 12): the tiers seat samples are kept in, when a
//! sample is due, how finer points fold into coarser ones, and what a tier drops.
//!
//! A sample is taken once per interval slot (default 5 minutes), stamped with
//! the slot's start. Each sample is written to every tier at once: the sample
//! tier as it is, the hour and the day containing it folded in (used = the
//! maximum over the span, held = the last sample's). So a coarser tier always
//! covers the whole of its keep window, and pruning a finer tier loses nothing
//! the coarser one does not summarize. Per series (key, node) a tier holds at
//! most [`Tiers::max_points`] points, whatever the sample times.
use chrono::{DateTime, Duration, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// The intervals a sample may be taken at: whole minutes that divide an
/// hour, so every sample slot lies inside one hour and one day.
pub const INTERVAL_MINUTES: [i64; 11] = [1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30];

/// One resolution of the history, finest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Tier {
    /// One point per sample interval, kept 7 days.
    Sample,
    /// One point per hour, kept 90 days.
    Hour,
    /// One point per day (UTC), kept 18 months (548 days).
    Day,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Sample, Tier::Hour, Tier::Day];

    /// The byte the store orders tiers by.
    #[must_use]
    pub fn index(self) -> u8 {
        match self {
            Self::Sample => 0,
            Self::Hour => 1,
            Self::Day => 2,
        }
    }

    /// How long points of this tier are kept.
    #[must_use]
    pub fn keep(self) -> Duration {
        match self {
            Self::Sample => Duration::days(7),
            Self::Hour => Duration::days(90),
            Self::Day => Duration::days(548),
        }
    }
}

/// Seats of one key on one node at one point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seats {
    pub held: u32,
    pub used: u32,
}

impl Seats {
    /// Free seats: held less used (never below zero, as a key over its
    /// limit after a renewal to fewer seats can be).
    #[must_use]
    pub fn free(self) -> u32 {
        self.held.saturating_sub(self.used)
    }
}

/// Folds a later, finer sample into the coarser point of its span: the
/// peak use is what capacity planning needs, held is the latest known.
#[must_use]
pub fn fold(coarse: Option<Seats>, fine: Seats) -> Seats {
    Seats {
        held: fine.held,
        used: coarse.map_or(fine.used, |c| c.used.max(fine.used)),
    }
}

/// Why a history setting or request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error("usage_history.interval {0:?} is not a sample interval: give whole minutes that divide an hour (1m, 2m, 3m, 4m, 5m, 6m, 10m, 12m, 15m, 20m, 30m)")]
    Interval(String),
    #[error("resolution {given:?} is not one of {sample}, 1h, 1d (or empty: the finest that keeps the range)")]
    Resolution { given: String, sample: String },
}

/// The tiers with the configured sample interval (`[usage_history] interval`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Tiers {
    interval_minutes: i64,
}

impl Default for Tiers {
    fn default() -> Self {
        Self {
            interval_minutes: 5,
        }
    }
}

impl TryFrom<String> for Tiers {
    type Error = HistoryError;
    fn try_from(s: String) -> Result<Self, HistoryError> {
        s.parse()
    }
}

impl From<Tiers> for String {
    fn from(t: Tiers) -> String {
        t.label(Tier::Sample)
    }
}

impl std::str::FromStr for Tiers {
    type Err = HistoryError;
    /// Minutes (`"5m"`) or seconds (`"300s"`) from [`INTERVAL_MINUTES`].
    fn from_str(s: &str) -> Result<Self, HistoryError> {
        let bad = || HistoryError::Interval(s.to_owned());
        let t = s.trim();
        let (n, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
        let n: i64 = n.parse().map_err(|_| bad())?;
        let minutes = match unit {
            "m" | "min" => n,
            "s" if n % 60 == 0 => n / 60,
            _ => return Err(bad()),
        };
        if !INTERVAL_MINUTES.contains(&minutes) {
            return Err(bad());
        }
        Ok(Self {
            interval_minutes: minutes,
        })
    }
}

impl Tiers {
    /// The time between samples.
    #[must_use]
    pub fn interval(self) -> Duration {
        Duration::minutes(self.interval_minutes)
    }

    /// The span one point of `tier` covers.
    #[must_use]
    pub fn span(self, tier: Tier) -> Duration {
        match tier {
            Tier::Sample => self.interval(),
            Tier::Hour => Duration::hours(1),
            Tier::Day => Duration::days(1),
        }
    }

    /// The name of `tier` on the wire: the interval (`5m`), `1h`, `1d`.
    #[must_use]
    pub fn label(self, tier: Tier) -> String {
        match tier {
            Tier::Sample => format!("{}m", self.interval_minutes),
            Tier::Hour => "1h".into(),
            Tier::Day => "1d".into(),
        }
    }

    /// The tier a request names; empty is none (the caller picks).
    ///
    /// # Errors
    /// [`HistoryError::Resolution`] for a name that is no tier of this node.
    pub fn tier_named(self, name: &str) -> Result<Option<Tier>, HistoryError> {
        if name.is_empty() {
            return Ok(None);
        }
        Tier::ALL
            .into_iter()
            .find(|t| self.label(*t) == name)
            .map(Some)
            .ok_or_else(|| HistoryError::Resolution {
                given: name.to_owned(),
                sample: self.label(Tier::Sample),
            })
    }

    /// The start of the span of `tier` that holds `t` (UTC-aligned).
    #[must_use]
    pub fn bucket(self, tier: Tier, t: DateTime<Utc>) -> DateTime<Utc> {
        let span = self.span(tier).num_seconds();
        let secs = t.timestamp();
        Utc.timestamp_opt(secs - secs.rem_euclid(span), 0)
            .single()
            .unwrap_or(t)
    }

    /// A sample is due once `now` is in a later slot than the last sample
    /// (the first one at once): at most one per slot, aligned to the clock.
    #[must_use]
    pub fn sample_due(self, last: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
        last.is_none_or(|l| self.bucket(Tier::Sample, now) > self.bucket(Tier::Sample, l))
    }

    /// Points of `tier` that start before this are dropped at `now`.
    #[must_use]
    pub fn cutoff(self, tier: Tier, now: DateTime<Utc>) -> DateTime<Utc> {
        now - tier.keep()
    }

    /// Whether `tier` drops its point at `at` by `now`.
    #[must_use]
    pub fn drops(self, tier: Tier, at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        at < self.cutoff(tier, now)
    }

    /// The most points one series holds in `tier`: aligned starts in
    /// `[now - keep, now]`.
    #[must_use]
    pub fn max_points(self, tier: Tier) -> usize {
        let n = tier.keep().num_seconds() / self.span(tier).num_seconds() + 1;
        usize::try_from(n).unwrap_or(usize::MAX)
    }

    /// The finest tier that still keeps `from` at `now`: what an empty
    /// resolution answers with.
    #[must_use]
    pub fn finest_keeping(self, from: DateTime<Utc>, now: DateTime<Utc>) -> Tier {
        Tier::ALL
            .into_iter()
            .find(|t| !self.drops(*t, self.bucket(*t, from), now))
            .unwrap_or(Tier::Day)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn the_interval_is_whole_minutes_that_divide_an_hour() {
        assert_eq!("5m".parse::<Tiers>().unwrap(), Tiers::default());
        assert_eq!("600s".parse::<Tiers>().unwrap().label(Tier::Sample), "10m");
        for bad in ["7m", "0m", "90s", "1h", "5", "m", "", "-5m", "60m"] {
            let e = bad.parse::<Tiers>().unwrap_err();
            assert!(e.to_string().contains("divide an hour"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_sample_is_due_once_per_slot_and_the_first_at_once() {
        let tiers = Tiers::default();
        let now = t("2026-03-01T10:07:00Z");
        assert!(tiers.sample_due(None, now));
        assert!(!tiers.sample_due(Some(t("2026-03-01T10:05:00Z")), now));
        assert!(!tiers.sample_due(Some(t("2026-03-01T10:09:59Z")), t("2026-03-01T10:05:00Z")));
        assert!(tiers.sample_due(Some(t("2026-03-01T10:09:59Z")), t("2026-03-01T10:10:00Z")));
        assert_eq!(tiers.bucket(Tier::Sample, now), t("2026-03-01T10:05:00Z"));
        assert_eq!(tiers.bucket(Tier::Hour, now), t("2026-03-01T10:00:00Z"));
        assert_eq!(tiers.bucket(Tier::Day, now), t("2026-03-01T00:00:00Z"));
    }

    #[test]
    fn folding_keeps_the_peak_used_and_the_last_held() {
        let a = fold(None, Seats { held: 10, used: 3 });
        let b = fold(Some(a), Seats { held: 8, used: 7 });
        let c = fold(Some(b), Seats { held: 12, used: 2 });
        assert_eq!(c, Seats { held: 12, used: 7 });
        assert_eq!(c.free(), 5);
        assert_eq!(Seats { held: 2, used: 5 }.free(), 0, "over the limit");
    }

    #[test]
    fn each_tier_drops_what_is_older_than_it_keeps() {
        let tiers = Tiers::default();
        let now = t("2026-03-10T00:00:00Z");
        let eight_days = now - Duration::days(8);
        assert!(tiers.drops(Tier::Sample, eight_days, now));
        assert!(!tiers.drops(Tier::Hour, eight_days, now));
        assert!(!tiers.drops(Tier::Sample, now - Duration::days(7), now));
        assert!(tiers.drops(Tier::Hour, now - Duration::days(91), now));
        assert!(tiers.drops(Tier::Day, now - Duration::days(549), now));
        assert_eq!(tiers.max_points(Tier::Sample), 7 * 288 + 1);
        assert_eq!(tiers.max_points(Tier::Hour), 90 * 24 + 1);
        assert_eq!(tiers.max_points(Tier::Day), 549);
    }

    #[test]
    fn an_empty_resolution_picks_the_finest_tier_that_keeps_the_range() {
        let tiers = Tiers::default();
        let now = t("2026-06-01T00:00:00Z");
        assert_eq!(
            tiers.finest_keeping(now - Duration::days(1), now),
            Tier::Sample
        );
        assert_eq!(
            tiers.finest_keeping(now - Duration::days(30), now),
            Tier::Hour
        );
        assert_eq!(
            tiers.finest_keeping(now - Duration::days(300), now),
            Tier::Day
        );
        assert_eq!(tiers.tier_named("").unwrap(), None);
        assert_eq!(tiers.tier_named("1h").unwrap(), Some(Tier::Hour));
        let e = tiers.tier_named("1m").unwrap_err().to_string();
        assert!(e.contains("5m, 1h, 1d"), "{e}");
    }

    /// One series through record-and-prune, as the engine does it.
    fn record(
        tiers: Tiers,
        points: &mut BTreeMap<(Tier, DateTime<Utc>), Seats>,
        now: DateTime<Utc>,
        s: Seats,
    ) {
        for tier in Tier::ALL {
            let at = tiers.bucket(tier, now);
            let v = match tier {
                Tier::Sample => s,
                _ => fold(points.get(&(tier, at)).copied(), s),
            };
            points.insert((tier, at), v);
        }
        points.retain(|(tier, at), _| !tiers.drops(*tier, *at, now));
    }

    proptest! {
        #[test]
        fn every_tier_stays_bounded_and_coarse_points_hold_the_peak(
            minutes in prop::sample::select(INTERVAL_MINUTES.to_vec()),
            steps in prop::collection::vec((1i64..200_000, 0u32..50), 1..300),
        ) {
            let tiers: Tiers = format!("{minutes}m").parse().unwrap();
            let mut now = t("2026-01-01T00:00:00Z");
            let mut last = None;
            let mut points = BTreeMap::new();
            let mut peak_by_hour: BTreeMap<DateTime<Utc>, u32> = BTreeMap::new();
            for (gap, used) in steps {
                now += Duration::seconds(gap);
                if !tiers.sample_due(last, now) {
                    continue;
                }
                last = Some(now);
                let s = Seats { held: 50, used };
                record(tiers, &mut points, now, s);
                let h = peak_by_hour.entry(tiers.bucket(Tier::Hour, now)).or_default();
                *h = (*h).max(used);
                for tier in Tier::ALL {
                    let n = points.keys().filter(|(t, _)| *t == tier).count();
                    prop_assert!(n <= tiers.max_points(tier), "{tier:?}: {n}");
                }
            }
            for ((tier, at), s) in &points {
                if *tier == Tier::Hour {
                    prop_assert_eq!(s.used, peak_by_hour[at]);
                }
            }
        }
    }
}

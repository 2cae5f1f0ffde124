//! Station rules (o02, o04, b03): how long a lease stays valid without
//! contact, when a silent station retires, and the agent's bounded report
//! queue.
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// o02 and b03 periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StationPolicy {
    /// A lease stays valid this long without contact (o02).
    pub offline_validity: Duration,
    /// A station silent this long gives its seat back (b03).
    pub retire_after: Duration,
}

impl Default for StationPolicy {
    fn default() -> Self {
        Self {
            offline_validity: Duration::days(30),
            retire_after: Duration::days(90),
        }
    }
}

impl StationPolicy {
    /// o02: the deadline a lease carries from its last contact.
    #[must_use]
    pub fn valid_until(&self, last_contact: DateTime<Utc>) -> DateTime<Utc> {
        last_contact + self.offline_validity
    }

    /// b03: has the station been silent long enough to retire?
    #[must_use]
    pub fn retired(&self, last_contact: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        now >= last_contact + self.retire_after
    }
}

/// o04: what a full report queue does with one more report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QueueFullPolicy {
    /// Keep what is queued; new reports are not collected.
    StopCollecting,
    /// Drop the oldest queued report to make room.
    DropOldest,
}

/// A bounded FIFO of reports waiting for the node (o01, o04).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportQueue<T> {
    items: VecDeque<T>,
    capacity: usize,
    policy: QueueFullPolicy,
    /// Reports dropped or not collected because the queue was full.
    pub lost: u64,
}

impl<T> ReportQueue<T> {
    #[must_use]
    pub fn new(capacity: usize, policy: QueueFullPolicy) -> Self {
        Self {
            items: VecDeque::new(),
            capacity: capacity.max(1),
            policy,
            lost: 0,
        }
    }

    /// Queues a report; returns false when it was not kept.
    pub fn push(&mut self, item: T) -> bool {
        if self.items.len() < self.capacity {
            self.items.push_back(item);
            return true;
        }
        self.lost += 1;
        match self.policy {
            QueueFullPolicy::StopCollecting => false,
            QueueFullPolicy::DropOldest => {
                self.items.pop_front();
                self.items.push_back(item);
                true
            }
        }
    }

    /// The oldest `n` reports, still queued until [`ReportQueue::confirm`].
    pub fn peek(&self, n: usize) -> impl Iterator<Item = &T> {
        self.items.iter().take(n)
    }

    /// Removes the first `n` reports once the node has acknowledged them.
    pub fn confirm(&mut self, n: usize) {
        for _ in 0..n.min(self.items.len()) {
            self.items.pop_front();
        }
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.items.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn o04_full_queue_stops_collecting_or_drops_the_oldest() {
        let mut stop = ReportQueue::new(3, QueueFullPolicy::StopCollecting);
        let mut drop = ReportQueue::new(3, QueueFullPolicy::DropOldest);
        for i in 0..5 {
            stop.push(i);
            drop.push(i);
        }
        assert_eq!(stop.peek(10).copied().collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(drop.peek(10).copied().collect::<Vec<_>>(), vec![2, 3, 4]);
        assert_eq!((stop.lost, drop.lost), (2, 2));
        drop.confirm(2);
        assert_eq!(drop.peek(10).copied().collect::<Vec<_>>(), vec![4]);
    }

    #[test]
    fn o02_lease_valid_thirty_days_and_b03_retire_after_ninety() {
        let p = StationPolicy::default();
        let t: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(p.valid_until(t), t + Duration::days(30));
        assert!(!p.retired(t, t + Duration::days(89)));
        assert!(p.retired(t, t + Duration::days(90)));
    }
}

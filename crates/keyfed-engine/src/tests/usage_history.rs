//! Issue 12: the tick samples usage into the history, this node's rows and
//! the subtree's roll-up lines, and down-samples and prunes in the same pass.
use super::*;
use crate::usage_history::HistoryQuery;
use keyfed_core::usage_history::{Tier, Tiers};

fn ask(
    node_id: &str,
    resolution: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> pb::UsageHistoryRequest {
    pb::UsageHistoryRequest {
        key_id: "k1".into(),
        from: crate::time::ts(from),
        to: crate::time::ts(to),
        node_id: node_id.into(),
        resolution: resolution.into(),
    }
}

/// (at minutes after t0, node, held, used, free) of each point.
fn rows(r: &pb::UsageHistoryReply) -> Vec<(i64, String, u32, u32, u32)> {
    r.points
        .iter()
        .map(|p| {
            let at: DateTime<Utc> = p.at.parse().unwrap();
            (
                (at - t0()).num_minutes(),
                p.node_id.clone(),
                p.held,
                p.used,
                p.free,
            )
        })
        .collect()
}

/// main and its kid sampled at t0, +5 and +10 minutes: the kid's seats 1,
/// 2, 1 of 4; main's 4 (the kid's grant) then 5 (a station) of 10.
async fn sampled_three_slots() -> Engine {
    let (main, kid) = main_and_kid();
    add(&main, &file(spec("k1", 10)), t0()).await;
    assign(&main, "k1", "kid", 4, t0()).await;
    pump(&main, &kid, t0()).await;
    assign(&kid, "k1", "pc-1", 1, t0()).await;
    tick(&kid, t0()).await;
    pump(&kid, &main, t0()).await;
    tick(&main, t0()).await;
    // a second seat on the kid within the hour, and a station on main
    let t5 = t0() + Duration::minutes(5);
    assign(&kid, "k1", "pc-2", 1, t5).await;
    contact(&main, "pc-3", t5).await;
    tick(&kid, t5).await;
    pump(&kid, &main, t5).await;
    tick(&main, t5).await;
    // a tick inside the same slot takes no second sample
    tick(&main, t5 + Duration::minutes(4)).await;
    // ... and the kid's pc-2 leaves before the next one
    let unassign = Command::Unassign {
        key_id: "k1".into(),
        object: "pc-2".into(),
        now: t5,
    };
    run(&kid, unassign).await;
    tick(&kid, t0() + Duration::minutes(10)).await;
    pump(&kid, &main, t0() + Duration::minutes(10)).await;
    tick(&main, t0() + Duration::minutes(10)).await;
    main
}

#[tokio::test]
async fn samples_hold_this_nodes_rows_and_the_subtree_and_old_ones_fold_into_hours() {
    let main = sampled_three_slots().await;
    let hour = t0() + Duration::hours(1);
    let own = main.usage_history(&ask("", "5m", t0(), hour)).unwrap();
    assert_eq!(own.resolution, "5m");
    assert_eq!(
        rows(&own),
        [
            (0, "main".into(), 10, 4, 6),
            (5, "main".into(), 10, 5, 5),
            (10, "main".into(), 10, 5, 5)
        ],
        "main's own seats: the kid's grant and pc-3"
    );
    let kids = main.usage_history(&ask("kid", "5m", t0(), hour)).unwrap();
    assert_eq!(
        rows(&kids),
        [
            (0, "kid".into(), 4, 1, 3),
            (5, "kid".into(), 4, 2, 2),
            (10, "kid".into(), 4, 1, 3)
        ],
        "the kid's subtree as it rolled up"
    );
    let all = main.usage_history(&ask("*", "1h", t0(), hour)).unwrap();
    assert_eq!(
        rows(&all),
        [(0, "kid".into(), 4, 2, 2), (0, "main".into(), 10, 5, 5)],
        "the hour holds the peak used"
    );

    // eight days on, the 5-minute points of day one are gone; the hour stays
    let later = t0() + Duration::days(8);
    tick(&main, later).await;
    let old = main.usage_history(&ask("*", "5m", t0(), hour)).unwrap();
    assert!(old.points.is_empty(), "{:?}", old.points);
    let hours = main.usage_history(&ask("kid", "1h", t0(), hour)).unwrap();
    assert_eq!(rows(&hours), [(0, "kid".into(), 4, 2, 2)]);
    let day = main
        .usage_history(&ask("kid", "1d", t0(), later + Duration::days(1)))
        .unwrap();
    assert_eq!(
        rows(&day).len(),
        2,
        "day one and day nine: {:?}",
        day.points
    );
    let tiers = Tiers::default();
    for tier in Tier::ALL {
        for (k, n) in main.store().history_series(tier).unwrap() {
            let all = main
                .store()
                .history_points(
                    tier,
                    &k,
                    &n,
                    t0() - Duration::days(1),
                    later + Duration::days(1),
                    usize::MAX,
                )
                .unwrap();
            assert!(all.len() <= tiers.max_points(tier));
            assert!(
                all.iter().all(|p| !tiers.drops(tier, p.at, later)),
                "{tier:?} pruned"
            );
        }
    }
}

#[test]
fn a_bad_history_request_names_what_was_wrong() {
    let now = t0();
    let tiers = Tiers::default();
    let parse = |r: pb::UsageHistoryRequest| {
        HistoryQuery::parse(&r, "main", tiers, now).map_err(|e| e.to_string())
    };
    let base = ask("", "", now - Duration::hours(1), now);
    let cases = [
        (
            pb::UsageHistoryRequest {
                key_id: "bad key".into(),
                ..base.clone()
            },
            "key_id",
        ),
        (
            pb::UsageHistoryRequest {
                node_id: "no/such".into(),
                ..base.clone()
            },
            "node_id",
        ),
        (
            pb::UsageHistoryRequest {
                from: "yesterday".into(),
                ..base.clone()
            },
            "from \"yesterday\"",
        ),
        (
            pb::UsageHistoryRequest {
                to: "2026-13-01".into(),
                ..base.clone()
            },
            "to \"2026-13-01\"",
        ),
        (
            pb::UsageHistoryRequest {
                resolution: "1w".into(),
                ..base.clone()
            },
            "resolution \"1w\"",
        ),
        (
            pb::UsageHistoryRequest {
                from: base.to.clone(),
                to: base.from.clone(),
                ..base.clone()
            },
            "not before",
        ),
    ];
    for (r, want) in cases {
        let e = parse(r).unwrap_err();
        assert!(e.contains(want), "{want}: {e}");
    }
}

#[test]
fn an_empty_resolution_picks_the_finest_tier_that_keeps_the_range() {
    let now = t0();
    let parse = |r: pb::UsageHistoryRequest| {
        HistoryQuery::parse(&r, "main", Tiers::default(), now).map_err(|e| e.to_string())
    };
    let base = ask("", "", now - Duration::hours(1), now);
    let month_ago = crate::time::ts(now - Duration::days(30));
    let q = parse(pb::UsageHistoryRequest {
        from: String::new(),
        to: month_ago.clone(),
        ..base.clone()
    })
    .unwrap();
    assert_eq!(
        q.tier,
        Tier::Hour,
        "no from: the tier that keeps the span before to"
    );
    let e = parse(pb::UsageHistoryRequest {
        from: String::new(),
        to: month_ago,
        resolution: "5m".into(),
        ..base.clone()
    })
    .unwrap_err();
    assert!(e.contains("keeps points since"), "{e}");
    let q = parse(pb::UsageHistoryRequest {
        node_id: "*".into(),
        ..base.clone()
    })
    .unwrap();
    assert_eq!((q.node_id, q.tier), (None, Tier::Sample));
    let q = parse(pb::UsageHistoryRequest {
        from: crate::time::ts(now - Duration::days(30)),
        ..base
    })
    .unwrap();
    assert_eq!(
        (q.node_id.as_deref(), q.tier),
        (Some("main"), Tier::Hour),
        "picked: the finest keeping the range"
    );
}

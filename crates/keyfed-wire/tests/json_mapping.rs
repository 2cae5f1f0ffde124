//! The messages print in the canonical protobuf JSON mapping with proto
//! field names and every field (protojson's UseProtoNames + EmitUnpopulated,
//! what grpcurl prints), and read back from it.
use keyfed_wire::v1 as pb;
use serde_json::json;

fn key_info() -> pb::KeyInfo {
    pb::KeyInfo {
        key: Some(pb::Key {
            id: "k-1".into(),
            serial: 7,
            kind: pb::KeyKind::Subscription.into(),
            seats: 5,
            ..Default::default()
        }),
        origin: Some(pb::Origin {
            from: Some(pb::origin::From::Peer("main".into())),
        }),
        seats_assigned: 2,
        ..Default::default()
    }
}

#[test]
fn enums_print_by_name_oneofs_without_a_wrapper_and_u64_as_strings() {
    let v = serde_json::to_value(key_info()).unwrap();
    assert_eq!(v["key"]["kind"], "KEY_KIND_SUBSCRIPTION");
    assert_eq!(v["key"]["serial"], "7", "64-bit integers are strings");
    assert_eq!(v["key"]["seats"], 5, "32-bit integers are numbers");
    assert_eq!(v["origin"], json!({ "peer": "main" }));
    assert_eq!(v["seats_assigned"], 2, "proto field names are kept");
    let upstream = pb::Origin {
        from: Some(pb::origin::From::Upstream(true)),
    };
    assert_eq!(
        serde_json::to_value(upstream).unwrap(),
        json!({ "upstream": true })
    );
}

#[test]
fn every_field_is_printed_with_its_default() {
    let v = serde_json::to_value(pb::KeyInfo::default()).unwrap();
    assert_eq!(v["state"], "");
    assert_eq!(v["seats_free"], 0);
    assert_eq!(v["trial_extended"], false);
    assert_eq!(v["over_limit"], json!([]));
    assert_eq!(
        v["key"],
        serde_json::Value::Null,
        "an unset message is null"
    );
    let g = serde_json::to_value(pb::GrantInfo::default()).unwrap();
    assert_eq!(g["kind"], "OBJECT_KIND_UNSPECIFIED");
    let n = serde_json::to_value(pb::Notification::default()).unwrap();
    assert_eq!(n["seq"], "0");
    assert_eq!(n["details"], json!({}));
    // an unset oneof has no field (protojson does not emit one either)
    assert_eq!(
        serde_json::to_value(pb::Origin::default()).unwrap(),
        json!({})
    );
}

#[test]
fn requests_read_back_from_the_mapping_and_unknown_fields_are_named() {
    let r: pb::AssignSeatsRequest = serde_json::from_value(json!({
        "key_id": "k-1", "object": "pc-1", "seats": 2, "kind": "OBJECT_KIND_STATION"
    }))
    .unwrap();
    assert_eq!(r.kind(), pb::ObjectKind::Station);
    assert_eq!(r.seats, 2);
    let s: pb::StationSettings =
        serde_json::from_value(json!({ "settings": "a = 1", "version": "3" })).unwrap();
    assert_eq!(s.version, 3);
    let back: pb::KeyInfo =
        serde_json::from_value(serde_json::to_value(key_info()).unwrap()).unwrap();
    assert_eq!(back, key_info());
    let e = serde_json::from_value::<pb::AssignSeatsRequest>(json!({ "seat": 2 })).unwrap_err();
    assert!(e.to_string().contains("seat"), "{e}");
}

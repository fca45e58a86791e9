//! Two versions of one built-in type published side by side on the broker, and consumed
//! the way a consumer should: read `version` (and the `schema_version` header), upcast to
//! the newest with the registry, handle one shape.

mod support;

use fitviz_events::{
    ErrorKind, Event, EventPublisher, OrganizationId, SchemaRegistry,
    events::{WorkoutCreated, WorkoutCreatedV2},
    schema::UnknownFields,
    testing::Example,
};
use lapin::types::AMQPValue;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_and_v2_side_by_side_are_consumed_as_v2() {
    require_broker!();
    let fx = support::Fixture::new("versions", "workout.*").await;
    let org = || Some(OrganizationId::parse("org-1").unwrap());
    let publisher = EventPublisher::connect(fx.config()).await.unwrap();

    // v1: the typed struct, and JSON without a version (the current one: 1).
    let v1 = WorkoutCreated::example();
    publisher
        .publish(Event::new(v1.clone()).with_organization("org-1"))
        .await
        .unwrap();
    publisher
        .publish_json(
            "workout.created",
            json!({"workout_id": "123", "title": "Morning Yoga", "workout_type": "yoga", "duration_minutes": 60}),
            org(),
        )
        .await
        .unwrap();
    // v2: the typed struct, and JSON naming version 2 (validated against v2's schema).
    publisher
        .publish(Event::new(WorkoutCreatedV2::example()).with_organization("org-1"))
        .await
        .unwrap();
    let v2_json = json!({"workout_id": "124", "activity": "run", "duration_seconds": 1800});
    publisher
        .publish(
            Event::from_json("workout.created", v2_json.clone())
                .with_version(2)
                .with_organization("org-1"),
        )
        .await
        .unwrap();
    // Named version 2 but shaped as version 1: refused by v2's rules.
    let err = publisher
        .publish(
            Event::from_json(
                "workout.created",
                json!({"workout_id": "125", "duration_seconds": 0}),
            )
            .with_version(2)
            .with_organization("org-1"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
    assert_eq!(
        err.validation_error().unwrap().violations()[0].field,
        "duration_seconds"
    );
    // A version that does not exist.
    let err = publisher
        .publish(
            Event::from_json("workout.created", json!({"workout_id": "126"}))
                .with_version(3)
                .with_organization("org-1"),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.validation_error().unwrap().violations()[0].field,
        "version"
    );
    publisher.close().await;

    // A publisher pinning version 2 for JSON events of the type.
    let pinned = EventPublisher::builder(fx.config())
        .pin_version("workout.created", 2)
        .connect()
        .await
        .unwrap();
    pinned
        .publish_json(
            "workout.created",
            json!({"workout_id": "127", "activity": "swim"}),
            org(),
        )
        .await
        .unwrap();
    pinned.close().await;
    // Pinning a version that does not exist is a configuration error.
    let err = EventPublisher::builder(fx.config())
        .pin_version("workout.created", 9)
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");

    // The consumer: one shape (v2) for every message.
    let registry = SchemaRegistry::builtin();
    let mut seen = Vec::new();
    for (body, props) in fx.drain().await {
        let body: Value = serde_json::from_slice(&body).unwrap();
        let version = body["version"].as_u64().unwrap() as u32;
        let headers = props.headers().as_ref().unwrap().inner();
        assert_eq!(
            headers.get("schema_version"),
            Some(&AMQPValue::LongLongInt(i64::from(version))),
            "the header and the field agree"
        );
        let (newest, data) = registry
            .upcast("workout.created", version, body["data"].clone())
            .unwrap();
        assert_eq!(newest, 2);
        let workout: WorkoutCreatedV2 = serde_json::from_value(data).unwrap();
        seen.push((version, workout));
    }
    let versions: Vec<u32> = seen.iter().map(|(v, _)| *v).collect();
    assert_eq!(versions, [1, 1, 2, 2, 2]);
    assert_eq!(seen[0].1, WorkoutCreatedV2::from(v1));
    assert_eq!(seen[1].1.activity.as_deref(), Some("yoga"));
    assert_eq!(seen[1].1.duration_seconds, Some(3600));
    assert_eq!(seen[1].1.title.as_deref(), Some("Morning Yoga"));
    assert_eq!(seen[2].1, WorkoutCreatedV2::example());
    assert_eq!(seen[3].1.duration_seconds, Some(1800));
    assert_eq!(seen[4].1.activity.as_deref(), Some("swim"));
    // Every delivered v2 payload is valid v2 even under the strict policy.
    for (_, workout) in &seen {
        let data = serde_json::to_value(workout).unwrap();
        assert_eq!(
            registry.validate_json_with("workout.created", Some(2), &data, UnknownFields::Reject),
            Some(Ok(()))
        );
    }
    fx.cleanup().await;
}

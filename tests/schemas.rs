//! The JSON Schemas checked in under `schemas/`: the same as the code exports (so a schema
//! change is always a reviewed diff), and real published messages of every type and
//! version valid against them under an independent validator (`jsonschema`, format checks
//! on).
//!
//! After changing a schema on purpose: `FITVIZ_UPDATE_SCHEMAS=1 cargo test --test schemas`
//! rewrites `schemas/`.

mod support;

use std::{collections::BTreeMap, path::Path};

use fitviz_events::{
    EventPublisher, SchemaRegistry, schema::UnknownFields, schema::export::envelope_schema,
    schema::export::export_schemas, schema::export::schema_file_name, testing::versioned_examples,
};
use serde_json::{Value, json};

const CHECKED_IN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas");

fn read_dir(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&path).unwrap())
        })
        .collect()
}

#[test]
fn checked_in_schemas_match_the_code() {
    if std::env::var_os("FITVIZ_UPDATE_SCHEMAS").is_some() {
        let _ = std::fs::remove_dir_all(CHECKED_IN);
        export_schemas(Path::new(CHECKED_IN)).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let paths = export_schemas(dir.path()).unwrap();
    assert_eq!(paths.len(), 13, "the envelope and 12 type versions");
    let exported = read_dir(dir.path());
    let checked_in = read_dir(Path::new(CHECKED_IN));
    assert_eq!(
        exported.keys().collect::<Vec<_>>(),
        checked_in.keys().collect::<Vec<_>>(),
        "schemas/ holds other files than the code exports: run \
         `FITVIZ_UPDATE_SCHEMAS=1 cargo test --test schemas` and review the diff"
    );
    for (name, text) in &exported {
        assert!(
            checked_in[name] == *text,
            "schemas/{name} differs from what the code exports: run \
             `FITVIZ_UPDATE_SCHEMAS=1 cargo test --test schemas` and review the diff"
        );
    }
}

#[test]
fn schemas_have_stable_ids_and_reflect_the_unknown_field_policy() {
    let registry = SchemaRegistry::builtin();
    let forward = registry
        .json_schema("workout.created", 1, UnknownFields::Forward)
        .unwrap();
    assert_eq!(
        forward["$id"],
        "urn:fitviz:events:schema:workout.created:v1"
    );
    assert_eq!(
        forward["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert_eq!(forward["additionalProperties"], true);
    assert_eq!(forward["required"], json!(["workout_id"]));
    let reject = registry
        .json_schema("workout.created", 1, UnknownFields::Reject)
        .unwrap();
    assert_eq!(reject["additionalProperties"], false);
    let v2 = registry
        .json_schema("workout.created", 2, UnknownFields::Forward)
        .unwrap();
    assert_eq!(v2["$id"], "urn:fitviz:events:schema:workout.created:v2");
    // Rules a JSON Schema cannot express are in the description.
    let membership = registry
        .json_schema("membership.created", 1, UnknownFields::Forward)
        .unwrap();
    let description = membership["description"].as_str().unwrap();
    assert!(
        description.contains("`expires_at` is after `starts_at`"),
        "{description}"
    );
    assert!(description.contains("ISO-4217"), "{description}");
    // A type registered without a schema derive still works; it is just not exported.
    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    struct Plain {
        id: String,
    }
    impl fitviz_events::DomainEvent for Plain {
        const EVENT_TYPE: &'static str = "plain.happened";
        fn validate(&self) -> Result<(), fitviz_events::schema::ValidationError> {
            Ok(())
        }
    }
    let registry = SchemaRegistry::builtin().register::<Plain>();
    assert_eq!(
        registry.validate_json("plain.happened", &json!({"id": "x"})),
        Some(Ok(()))
    );
    assert!(
        registry
            .json_schema("plain.happened", 1, UnknownFields::Forward)
            .is_none()
    );
    assert_eq!(
        registry.json_schemas(UnknownFields::Forward).len(),
        13,
        "not exported"
    );
}

fn validator(schema: &Value) -> jsonschema::Validator {
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(schema)
        .unwrap_or_else(|e| panic!("{}: {e}", schema["$id"]))
}

fn errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// Every built-in type and version, published on the broker and read back: the body is
/// a valid envelope and its `data` valid against the checked-in schema of its type and
/// version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_messages_validate_against_the_checked_in_schemas() {
    require_broker!();
    let fx = support::Fixture::new("schemas", "#").await;
    let publisher = EventPublisher::connect(fx.config()).await.unwrap();
    let events = versioned_examples();
    let count = events.len();
    for event in events {
        let event_type = event.event_type().to_owned();
        publisher
            .publish(
                event
                    .with_organization("org-1")
                    .with_correlation_id("req-1"),
            )
            .await
            .unwrap_or_else(|e| panic!("{event_type}: {e}"));
    }
    // The original library's call too: only an id and a title.
    publisher
        .publish_json(
            "workout.created",
            json!({"workout_id": "123", "title": "Morning Yoga"}),
            Some("org-1".parse().unwrap()),
        )
        .await
        .unwrap();
    publisher.close().await;

    let envelope = validator(&envelope_schema());
    let mut seen = Vec::new();
    for (body, _) in fx.drain().await {
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(errors(&envelope, &body), Vec::<String>::new(), "{body}");
        let (event_type, version) = (
            body["event_type"].as_str().unwrap(),
            body["version"].as_u64().unwrap() as u32,
        );
        let file = Path::new(CHECKED_IN).join(schema_file_name(event_type, version));
        let schema: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let data_validator = validator(&schema);
        assert_eq!(
            errors(&data_validator, &body["data"]),
            Vec::<String>::new(),
            "{event_type} v{version}: {body}"
        );
        // The validator is not vacuous: a broken payload fails it.
        let mut broken = body["data"].clone();
        let first_required = schema["required"][0].as_str().unwrap();
        broken.as_object_mut().unwrap().remove(first_required);
        assert!(!data_validator.is_valid(&broken), "{event_type} v{version}");
        seen.push((event_type.to_owned(), version));
    }
    assert_eq!(seen.len(), count + 1);
    let registry = SchemaRegistry::builtin();
    for event_type in registry.event_types() {
        for version in registry.versions(event_type) {
            assert!(
                seen.contains(&(event_type.to_owned(), version)),
                "{event_type} v{version} was not published"
            );
        }
    }
    // Format checks are on: a timestamp that is not a date-time fails.
    let mut bad = json!({"workout_id": "w-1", "started_at": "yesterday"});
    let v1: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(CHECKED_IN).join("workout.created.v1.json")).unwrap(),
    )
    .unwrap();
    assert!(!validator(&v1).is_valid(&bad));
    bad["started_at"] = json!("2026-03-02T07:30:00Z");
    assert!(validator(&v1).is_valid(&bad));
    fx.cleanup().await;
}

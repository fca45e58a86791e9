//! JSON Schemas (draft 2020-12) for consumers: one per registered event type and version
//! (its `data`), and one for the envelope; see [`export_schemas`].

use std::{
    io,
    path::{Path, PathBuf},
};

use serde_json::{Value, json};

use super::{DomainEvent, SchemaRegistry, UnknownFields};

/// The JSON Schema dialect of every exported schema.
pub const JSON_SCHEMA_DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";

/// The prefix of every exported schema's `$id`: then `envelope:v1`, or
/// `<event type>:v<version>` (`urn:fitviz:events:schema:workout.created:v1`). A schema's
/// `$id` never changes; a new version of a type gets a new one.
pub const SCHEMA_ID_PREFIX: &str = "urn:fitviz:events:schema:";

/// The `$id` of the schema of `version` of `event_type`'s `data`.
pub fn schema_id(event_type: &str, version: u32) -> String {
    format!("{SCHEMA_ID_PREFIX}{event_type}:v{version}")
}

/// The file name the schema of `version` of `event_type` is exported as:
/// `workout.created.v1.json`.
pub fn schema_file_name(event_type: &str, version: u32) -> String {
    format!("{event_type}.v{version}.json")
}

/// The file name of the envelope's schema.
pub const ENVELOPE_FILE_NAME: &str = "envelope.json";

/// The schema `T` derives, as draft 2020-12, with the rules it cannot express appended
/// to its description. `$id` and `additionalProperties` are set at export.
pub(crate) fn data_schema<T: DomainEvent + schemars::JsonSchema>() -> Value {
    let schema = schemars::generate::SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<T>();
    let mut value = serde_json::to_value(schema).expect("a schema serializes");
    if !T::RULES_NOT_IN_SCHEMA.is_empty() {
        let object = value.as_object_mut().expect("a schema object");
        let mut description = object
            .get("description")
            .and_then(Value::as_str)
            .map(|d| format!("{d}\n\n"))
            .unwrap_or_default();
        description
            .push_str("Rules this schema cannot express, enforced by the publisher's validation:");
        for rule in T::RULES_NOT_IN_SCHEMA {
            description.push_str("\n- ");
            description.push_str(rule);
        }
        object.insert("description".into(), description.into());
    }
    value
}

/// The schema of the JSON envelope every event travels in (see the
/// [wire contract](crate::guide::wire_contract)); its `data` is described by the event type's own schema.
pub fn envelope_schema() -> Value {
    json!({
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": format!("{SCHEMA_ID_PREFIX}envelope:v1"),
        "title": "FitViz event envelope",
        "description": "The JSON body of every FitViz event message. `data` is described by the schema of `event_type` at `version` (`<event type>.v<version>.json`, `$id` `urn:fitviz:events:schema:<event type>:v<version>`).\n\nRules this schema cannot express, enforced by the publisher:\n- `organization_id` and `correlation_id` are at most 255 bytes of UTF-8, with no control character, no invisible format character (Unicode category Cf: zero-width space, joiners, word joiner, byte order mark, soft hyphen, bidirectional formatting, …), no line or paragraph separator and no whitespace at either end.\n- `event_type` is at most 255 bytes.",
        "type": "object",
        "properties": {
            "event_id": {
                "description": "UUID v7, unique per event and kept across retries: de-duplicate on it.",
                "type": "string",
                "format": "uuid"
            },
            "event_type": {
                "description": "Lowercase dotted `noun.verb`; also the routing key.",
                "type": "string",
                "pattern": "^[a-z][a-z0-9_]*(\\.[a-z][a-z0-9_]*)+$",
                "maxLength": 255
            },
            "organization_id": {
                "description": "The tenant; null only for types declared organization-less.",
                "type": ["string", "null"],
                "minLength": 1,
                "maxLength": 255
            },
            "timestamp": {
                "description": "When the event happened, UTC, RFC 3339 with milliseconds.",
                "type": "string",
                "format": "date-time"
            },
            "version": {
                "description": "The schema version of `data`; also the `schema_version` header.",
                "type": "integer",
                "minimum": 1
            },
            "source": {
                "description": "The publishing application.",
                "type": "string",
                "minLength": 1,
                "maxLength": 255
            },
            "correlation_id": {
                "description": "The request id that caused the event, or null.",
                "type": ["string", "null"],
                "minLength": 1,
                "maxLength": 255
            },
            "data": {
                "description": "The payload, per the event type's schema at `version`."
            }
        },
        "required": [
            "event_id", "event_type", "organization_id", "timestamp", "version", "source",
            "correlation_id", "data"
        ],
        "additionalProperties": false
    })
}

impl SchemaRegistry {
    /// The JSON Schema (draft 2020-12) of `data` of `version` of `event_type`, with its
    /// `$id` ([`schema_id`]) and `additionalProperties` as `unknown_fields` says (`true`
    /// for [`UnknownFields::Forward`], `false` for [`UnknownFields::Reject`]). `None`
    /// when that version is not registered, or was registered without a JSON Schema.
    pub fn json_schema(
        &self,
        event_type: &str,
        version: u32,
        unknown_fields: UnknownFields,
    ) -> Option<Value> {
        let mut schema = self.json_schema_fn(event_type, version)?();
        let object = schema.as_object_mut()?;
        object.insert("$id".into(), schema_id(event_type, version).into());
        object.insert(
            "additionalProperties".into(),
            (unknown_fields == UnknownFields::Forward).into(),
        );
        Some(schema)
    }

    /// Every exported schema, as `(file name, schema)`: the envelope's, then one per
    /// registered type and version that has a JSON Schema, sorted by file name.
    pub fn json_schemas(&self, unknown_fields: UnknownFields) -> Vec<(String, Value)> {
        let mut schemas = vec![(ENVELOPE_FILE_NAME.to_owned(), envelope_schema())];
        for event_type in self.event_types() {
            for version in self.versions(event_type) {
                if let Some(schema) = self.json_schema(event_type, version, unknown_fields) {
                    schemas.push((schema_file_name(event_type, version), schema));
                }
            }
        }
        schemas[1..].sort_by(|a, b| a.0.cmp(&b.0));
        schemas
    }

    /// Writes [`json_schemas`](Self::json_schemas) into `dir` (created if missing), one
    /// pretty-printed file each, and returns their paths.
    ///
    /// # Errors
    /// The first I/O error creating the directory or writing a file.
    pub fn export_json_schemas(
        &self,
        dir: &Path,
        unknown_fields: UnknownFields,
    ) -> io::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)?;
        let mut paths = Vec::new();
        for (name, schema) in self.json_schemas(unknown_fields) {
            let path = dir.join(name);
            let mut text = serde_json::to_string_pretty(&schema).map_err(io::Error::other)?;
            text.push('\n');
            std::fs::write(&path, text)?;
            paths.push(path);
        }
        Ok(paths)
    }
}

/// Exports the JSON Schemas of the built-in events — every type and version — and of the
/// envelope into `dir`, as checked in under `schemas/`: draft 2020-12, stable `$id`s
/// (`urn:fitviz:events:schema:workout.created:v1`), `additionalProperties: true` since
/// unknown fields are forwarded by default ([`UnknownFields`]). Returns the paths
/// written. For a registry of your own or the `reject` policy, use
/// [`SchemaRegistry::export_json_schemas`].
///
/// # Errors
/// The first I/O error creating `dir` or writing a file.
///
/// # Example
/// ```
/// let dir = std::env::temp_dir().join(format!("fitviz-schemas-{}", std::process::id()));
/// let paths = fitviz_events::schema::export::export_schemas(&dir).unwrap();
/// assert!(paths.iter().any(|p| p.ends_with("workout.created.v2.json")));
/// assert!(paths.iter().any(|p| p.ends_with("envelope.json")));
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
pub fn export_schemas(dir: &Path) -> io::Result<Vec<PathBuf>> {
    SchemaRegistry::builtin().export_json_schemas(dir, UnknownFields::default())
}

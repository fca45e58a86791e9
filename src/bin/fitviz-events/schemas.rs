//! `fitviz-events schemas list` and `schemas export DIR`.

use std::path::PathBuf;

use fitviz_events::{PublisherConfig, SchemaRegistry};

use crate::{
    exit::{Failure, OTHER},
    print_result,
};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// The registered event types, the version each publishes, and every version known.
    List,
    /// Writes the JSON Schema (draft 2020-12) of every event type and version, and of
    /// the envelope, into DIR; `additionalProperties` follows
    /// `FITVIZ_EVENTS_UNKNOWN_FIELDS`.
    Export {
        /// The directory to write into (created if missing).
        dir: PathBuf,
    },
}

pub(crate) fn run(command: Command, json: bool) -> Result<(), Failure> {
    let registry = SchemaRegistry::builtin();
    match command {
        Command::List => {
            for event_type in registry.event_types() {
                let current = registry.version(event_type);
                let versions = registry.versions(event_type);
                let entry = serde_json::json!({
                    "event_type": event_type,
                    "version": current,
                    "versions": versions,
                });
                print_result(json, &entry, || {
                    let all: Vec<String> = versions.iter().map(|v| format!("v{v}")).collect();
                    format!(
                        "{event_type}\tpublishes v{}\t(known: {})",
                        current.unwrap_or(1),
                        all.join(", ")
                    )
                });
            }
            Ok(())
        }
        Command::Export { dir } => {
            let config = PublisherConfig::from_env()?;
            let written = registry
                .export_json_schemas(&dir, config.unknown_fields)
                .map_err(|e| Failure::new(OTHER, "io", format!("{}: {e}", dir.display())))?;
            for path in &written {
                let entry = serde_json::json!({ "written": path });
                print_result(json, &entry, || format!("wrote {}", path.display()));
            }
            Ok(())
        }
    }
}

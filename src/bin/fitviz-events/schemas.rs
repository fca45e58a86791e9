//! `fitviz-events schemas list`.

use fitviz_events::SchemaRegistry;

use crate::{exit::Failure, print_result};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// The registered event types and their schema versions.
    List,
}

pub(crate) fn run(command: Command, json: bool) -> Result<(), Failure> {
    match command {
        Command::List => {
            let registry = SchemaRegistry::builtin();
            let types: Vec<serde_json::Value> = (registry.event_types().into_iter())
                .map(|t| serde_json::json!({ "event_type": t, "version": registry.version(t) }))
                .collect();
            for entry in &types {
                print_result(json, entry, || {
                    format!(
                        "{}\tv{}",
                        entry["event_type"].as_str().unwrap_or(""),
                        entry["version"]
                    )
                });
            }
            Ok(())
        }
    }
}

//! `fitviz-events outbox migrate|relay|status|dead list|dead retry` (feature
//! `outbox-postgres`), with the outbox's settings (`FITVIZ_EVENTS_OUTBOX_*`) and, for the
//! relay, the publisher's (`FITVIZ_EVENTS_*`).

use fitviz_events::{
    EventPublisher, PublisherConfig,
    outbox::{Outbox, OutboxConfig, OutboxError},
};
use uuid::Uuid;

use crate::{
    exit::{Failure, USAGE},
    print_result,
};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Creates the outbox's tables or brings them to this version (idempotent).
    Migrate,
    /// Publishes the outbox's committed rows until interrupted (SIGINT, SIGTERM): takes
    /// its share of the partitions beside the other relays, then finishes its batches
    /// and releases them.
    Relay,
    /// Pending and dead rows, and the age of the oldest pending row (the lag).
    Status,
    /// Rows the broker refused `max_attempts` times.
    #[command(subcommand)]
    Dead(Dead),
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Dead {
    /// Lists dead rows, oldest first, with their last error.
    List {
        /// At most this many rows.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Makes dead rows pending again, their attempts reset: the relays publish them.
    Retry {
        /// The event ids of the rows.
        event_ids: Vec<Uuid>,
        /// Every dead row.
        #[arg(long, conflicts_with = "event_ids")]
        all: bool,
    },
}

impl From<OutboxError> for Failure {
    fn from(error: OutboxError) -> Self {
        match error {
            OutboxError::Config(error) => error.into(),
            OutboxError::Event(error) => error.into(),
            error if error.is_database() => {
                Failure::new(crate::exit::DATABASE, "database", one_line(&error))
            }
            OutboxError::Schema(message) => Failure::new(crate::exit::DATABASE, "schema", message),
            error => Failure::new(crate::exit::OTHER, "outbox", one_line(&error)),
        }
    }
}

/// The error and its sources, on one line.
fn one_line(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text.replace('\n', " ")
}

pub(crate) async fn run(command: Command, json: bool) -> Result<(), Failure> {
    let config = OutboxConfig::from_env()?;
    if let Command::Dead(Dead::Retry {
        event_ids,
        all: false,
    }) = &command
        && event_ids.is_empty()
    {
        return Err(Failure::new(
            USAGE,
            "usage",
            "give the event ids of the rows to retry, or --all",
        ));
    }
    if let Command::Relay = command {
        return relay(config, PublisherConfig::from_env()?, json).await;
    }
    // Commands that publish nothing: a publisher that never connects.
    let publisher = EventPublisher::builder(PublisherConfig::default())
        .build_with_transport(fitviz_events::testing::MemorySink::new());
    let outbox = Outbox::new(config, publisher)?;
    match command {
        Command::Migrate => {
            let report = outbox.migrate().await?;
            let value = serde_json::json!({
                "from": report.from, "to": report.to, "applied": report.applied,
            });
            print_result(json, &value, || match report.applied.is_empty() {
                true => format!("the outbox is at version {}: nothing to do", report.to),
                false => format!(
                    "migrated the outbox from version {} to {} (applied {:?})",
                    report.from, report.to, report.applied
                ),
            });
        }
        Command::Status => {
            let status = outbox.status().await?;
            let value = serde_json::to_value(&status).unwrap_or_default();
            print_result(json, &value, || {
                format!(
                    "pending {}  dead {}  oldest pending {:.1} s ago",
                    status.pending, status.dead, status.oldest_pending_age_secs
                )
            });
        }
        Command::Dead(Dead::List { limit }) => {
            for row in outbox.dead_rows(limit).await? {
                let value = serde_json::to_value(&row).unwrap_or_default();
                print_result(json, &value, || {
                    format!(
                        "{}  {}  key {:?}  {} attempts  {}",
                        row.event_id,
                        row.event_type,
                        row.ordering_key,
                        row.attempts,
                        row.last_error.as_deref().unwrap_or("")
                    )
                });
            }
        }
        Command::Dead(Dead::Retry { event_ids, all }) => {
            let ids = (!all).then_some(event_ids.as_slice());
            let retried = outbox.retry_dead(ids).await?;
            let value = serde_json::json!({ "retried": retried });
            print_result(json, &value, || {
                format!("{retried} dead rows are pending again")
            });
        }
        Command::Relay => unreachable!("handled above"),
    }
    Ok(())
}

/// Runs a relay until SIGINT or SIGTERM.
async fn relay(
    config: OutboxConfig,
    publisher: PublisherConfig,
    json: bool,
) -> Result<(), Failure> {
    crate::logging::init();
    let publisher = EventPublisher::connect(publisher).await?;
    let outbox = Outbox::new(config, publisher.clone())?;
    // Refuses to start on tables that are missing or of another version.
    outbox.status().await?;
    let relay = outbox.start_relay();
    let value = serde_json::json!({ "relay": "started", "schema": outbox.config().schema });
    print_result(json, &value, || {
        format!(
            "relaying the outbox in schema `{}`; Ctrl-C stops",
            outbox.config().schema
        )
    });
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Failure::new(crate::exit::OTHER, "signal", e.to_string()))?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    let relayed = relay.relayed();
    relay.stop().await;
    publisher.close().await;
    let value = serde_json::json!({ "relay": "stopped", "relayed": relayed });
    print_result(json, &value, || {
        format!("stopped after publishing {relayed} rows")
    });
    Ok(())
}

//! `fitviz-events publish TYPE DATA [--org ID] [--version V]`, DATA being the JSON
//! itself, `-` (read from stdin) or `@PATH` (read from a file): data over the operating
//! system's limit on one argument (128 KiB on Linux) is passed so.

use std::io::Read;

use fitviz_events::{
    Event, EventPublisher, OrganizationId, PublisherConfig, Routing, transport::AmqpPublish,
};

use crate::{
    exit::{Failure, INVALID, OTHER},
    print_result,
};

/// The bytes of the event's data: the argument itself, stdin for `-`, the file for
/// `@PATH`. An unreadable file or stdin is an I/O failure naming it (exit 1); what
/// was read is parsed as JSON afterwards, like an argument (invalid JSON: exit 4).
fn read_data(data: &str) -> Result<Vec<u8>, Failure> {
    if data == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| Failure::new(OTHER, "io", format!("reading the data from stdin: {e}")))?;
        return Ok(bytes);
    }
    match data.strip_prefix('@') {
        Some(path) => std::fs::read(path)
            .map_err(|e| Failure::new(OTHER, "io", format!("reading the data from `{path}`: {e}"))),
        None => Ok(data.as_bytes().to_vec()),
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The event type, e.g. `workout.created` (the routing key).
    event_type: String,
    /// The event's data: a JSON object (`'{"workout_id":"w-1", …}'`), `-` to read it
    /// from stdin, or `@PATH` to read it from a file — for data over the system's limit
    /// on one argument (128 KiB on Linux).
    data: String,
    /// The organization the event belongs to.
    #[arg(long = "org", value_name = "ID")]
    organization: Option<String>,
    /// The schema version to send (default: the one registered for the type).
    #[arg(long, value_name = "V")]
    version: Option<u32>,
}

pub(crate) async fn run(args: Args, json: bool) -> Result<(), Failure> {
    let data: serde_json::Value = serde_json::from_slice(&read_data(&args.data)?)
        .map_err(|e| Failure::new(INVALID, "validation", format!("data is not JSON: {e}")))?;
    let mut event = Event::from_json(args.event_type, data);
    if let Some(org) = &args.organization {
        let org = OrganizationId::parse(org)
            .map_err(|invalid| Failure::new(INVALID, "validation", invalid.to_string()))?;
        event = event.with_organization(org);
    }
    if let Some(version) = args.version {
        event = event.with_version(version);
    }
    let config = PublisherConfig::from_env()?;
    let exchange = config.exchange.clone();
    // Connects in the background: an invalid event is refused (exit 4) whether or not
    // the broker answers.
    let transport = AmqpPublish::new(&config)?;
    let publisher = EventPublisher::builder(config).build_with_transport(transport.clone());
    let result = publisher.publish(event).await;
    publisher.close().await;
    transport.close().await;
    let receipt = result?;
    let elapsed_ms = receipt.elapsed.as_secs_f64() * 1e3;
    let routing = match receipt.routing {
        Routing::Routed => "routed",
        Routing::Kept => "kept",
        Routing::Dropped => "dropped",
        Routing::Archived => "archived",
        _ => "unknown",
    };
    print_result(
        json,
        &serde_json::json!({
            "event_id": receipt.event_id,
            "exchange": exchange,
            "routing": routing,
            "elapsed_ms": elapsed_ms,
        }),
        || {
            let how = match receipt.routing {
                Routing::Routed => "routed to a queue".to_owned(),
                Routing::Kept => format!("no queue is bound for it: kept in {exchange}.unrouted"),
                Routing::Dropped => "no queue is bound for it: dropped".to_owned(),
                Routing::Archived => {
                    format!("stored in {exchange}.archive (and in any queue bound for it)")
                }
                _ => "routing unknown".to_owned(),
            };
            format!(
                "published {} to {exchange}, {how}: confirmed in {elapsed_ms:.1} ms",
                receipt.event_id
            )
        },
    );
    Ok(())
}

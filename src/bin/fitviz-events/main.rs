//! `fitviz-events`: publish an event, export the schemas, declare the topology, list
//! and replay dead letters, from the command line — with
//! the library's configuration (`FITVIZ_EVENTS_*` environment variables).
//!
//! Human output by default, one JSON object per result with `--json`. Errors are one
//! line on stderr (a JSON object on stdout with `--json`) and a non-zero exit code:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | another failure (I/O, an unexpected error) |
//! | 2 | usage: unknown command, missing or malformed argument (clap); `dlq list` of a queue that is not a dead-letter queue (listing counts as a delivery) without `--count-as-delivery` |
//! | 3 | configuration: an invalid `FITVIZ_EVENTS_*` variable |
//! | 4 | invalid event: validation, organization, too large — nothing was sent |
//! | 5 | refused by the broker: unroutable, nacked, a conflicting or missing queue, access refused |
//! | 6 | broker unavailable: connection, timeout, blocked, circuit open, queue full, shutdown |

mod dlq;
mod exit;
mod publish;
mod schemas;
mod topology;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Publish FitViz domain events to RabbitMQ and inspect their contract.
///
/// Configuration comes from the `FITVIZ_EVENTS_*` environment variables, as for the
/// library (`FITVIZ_EVENTS_URL`, `FITVIZ_EVENTS_EXCHANGE`, …).
///
/// Exit codes: 0 success, 1 other failure, 2 usage (also `dlq list` refusing a queue
/// that is not a dead-letter queue), 3 configuration, 4 invalid event
/// (nothing sent), 5 refused by the broker (unroutable, nacked, conflicting or missing
/// queue), 6 broker unavailable.
#[derive(Debug, Parser)]
#[command(name = "fitviz-events", version)]
struct Cli {
    /// Print results and errors as JSON objects on stdout.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate an event and publish it with a broker confirm; prints the receipt.
    Publish(publish::Args),
    /// The event types and their schemas.
    #[command(subcommand)]
    Schemas(schemas::Command),
    /// Exchanges, queues and dead-lettering on the broker.
    #[command(subcommand)]
    Topology(topology::Command),
    /// Dead-lettered messages: list them, move them back.
    #[command(subcommand)]
    Dlq(dlq::Command),
}

/// Prints `value` (a result) as JSON or as `human`.
fn print_result(json: bool, value: &serde_json::Value, human: impl FnOnce() -> String) {
    if json {
        println!("{value}");
    } else {
        println!("{}", human());
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Publish(args) => publish::run(args, cli.json).await,
        Command::Schemas(command) => schemas::run(command, cli.json),
        Command::Topology(command) => topology::run(command, cli.json).await,
        Command::Dlq(command) => dlq::run(command, cli.json).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(cli.json),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}

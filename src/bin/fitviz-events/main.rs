//! `fitviz-events`: publish an event, export the schemas, declare the topology, list
//! and replay dead letters, replay the archive, from the command line — with
//! the library's configuration (`FITVIZ_EVENTS_*` environment variables).
//!
//! Human output by default, one JSON object per result with `--json`. Errors are one
//! line on stderr (a JSON object on stdout with `--json`,
//! `{"error":"<kind>","message":"<one line>"}`) and a non-zero exit code. Usage errors
//! too: with `--json` anywhere on the command line — even after the argument clap
//! stopped at — they are `{"error":"usage","message":…}` on stdout instead of clap's
//! text, still with exit code 2:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | another failure (I/O, an unexpected error) |
//! | 2 | usage: unknown command or flag, missing or malformed argument (clap; `"error":"usage"` with `--json`); `dlq list` of a queue that is not a dead-letter queue (listing counts as a delivery) without `--count-as-delivery` |
//! | 3 | configuration: an invalid `FITVIZ_EVENTS_*` variable |
//! | 4 | invalid event: validation, organization, too large — nothing was sent |
//! | 5 | refused by the broker: unroutable, nacked, a conflicting or missing queue or exchange, access refused (403), precondition failed (406) |
//! | 6 | broker unavailable: connection, timeout, blocked, circuit open, queue full, shutdown |
//! | 7 | `outbox …` (feature `outbox-postgres`): the outbox's database failed or refused a statement, or its tables are missing or of another version (`outbox migrate`) |

mod archive;
mod dlq;
mod exit;
mod logging;
#[cfg(feature = "outbox-postgres")]
mod outbox;
mod publish;
mod schemas;
mod topology;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use exit::{Failure, USAGE};

/// Publish FitViz domain events to RabbitMQ and inspect their contract.
///
/// Configuration comes from the `FITVIZ_EVENTS_*` environment variables, as for the
/// library (`FITVIZ_EVENTS_URL`, `FITVIZ_EVENTS_EXCHANGE`, …).
///
/// Exit codes: 0 success, 1 other failure, 2 usage (also `dlq list` refusing a queue
/// that is not a dead-letter queue), 3 configuration, 4 invalid event
/// (nothing sent), 5 refused by the broker (unroutable, nacked, conflicting or missing
/// queue or exchange, access refused), 6 broker unavailable, 7 the outbox's database
/// (feature `outbox-postgres`).
#[derive(Debug, Parser)]
#[command(name = "fitviz-events", version)]
struct Cli {
    /// Print results and errors (usage errors too) as JSON objects on stdout, one a line.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate an event and publish it with a broker confirm; prints the receipt. The
    /// data is an argument, `-` (stdin) or `@PATH` (a file).
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
    /// The archive stream `<exchange>.archive`: declare it, see it, replay from it.
    #[command(subcommand)]
    Archive(archive::Command),
    /// The transactional outbox on PostgreSQL: migrate its tables, run a relay, see
    /// its lag and dead rows (`FITVIZ_EVENTS_OUTBOX_*`).
    #[cfg(feature = "outbox-postgres")]
    #[command(subcommand)]
    Outbox(outbox::Command),
}

/// Prints `value` (a result) as JSON or as `human`.
fn print_result(json: bool, value: &serde_json::Value, human: impl FnOnce() -> String) {
    if json {
        println!("{value}");
    } else {
        println!("{}", human());
    }
}

/// Whether `--json` is among the raw arguments (before a `--` that ends the options):
/// clap may fail before it reaches it.
fn json_requested(args: impl IntoIterator<Item = std::ffi::OsString>) -> bool {
    (args.into_iter().skip(1))
        .take_while(|arg| arg != "--")
        .any(|arg| arg == "--json")
}

/// Parses the command line. `--help` and `--version` print and exit as usual; a usage
/// error exits 2, printed by clap or, with `--json`, as one JSON line.
fn parse() -> Result<Cli, ExitCode> {
    let error = match Cli::try_parse() {
        Ok(cli) => return Ok(cli),
        Err(error) => error,
    };
    if !error.use_stderr() || !json_requested(std::env::args_os()) {
        error.exit();
    }
    let message = one_line(&error);
    Err(Failure::new(USAGE, "usage", message).report(true))
}

/// clap's text of a usage error in one line: the error itself (without `error: `, its
/// lines joined), then the usage of the command it is about; no tip, no pointer to
/// `--help`.
fn one_line(error: &clap::Error) -> String {
    let text = error.to_string();
    let usage = (text.lines())
        .find_map(|line| line.trim().strip_prefix("Usage: "))
        .map(str::trim);
    let what = if error.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        // clap printed the help of a command given without its subcommand.
        "a subcommand is required".to_owned()
    } else {
        let lines: Vec<&str> = (text.lines())
            .map(str::trim)
            .take_while(|line| {
                !line.starts_with("Usage:")
                    && !line.starts_with("tip:")
                    && !line.starts_with("For more information")
            })
            .filter(|line| !line.is_empty())
            .collect();
        let joined = lines.join(" ");
        joined.strip_prefix("error: ").unwrap_or(&joined).to_owned()
    };
    match usage {
        Some(usage) => format!("{what} (usage: {usage})"),
        None => what,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let result = match cli.command {
        Command::Publish(args) => publish::run(args, cli.json).await,
        Command::Schemas(command) => schemas::run(command, cli.json),
        Command::Topology(command) => topology::run(command, cli.json).await,
        Command::Dlq(command) => dlq::run(command, cli.json).await,
        Command::Archive(command) => archive::run(command, cli.json).await,
        #[cfg(feature = "outbox-postgres")]
        Command::Outbox(command) => outbox::run(command, cli.json).await,
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

    #[test]
    fn json_is_found_anywhere_before_the_end_of_options() {
        let found = |args: &[&str]| {
            super::json_requested(
                std::iter::once("fitviz-events")
                    .chain(args.iter().copied())
                    .map(Into::into),
            )
        };
        assert!(found(&["--json", "publsh"]));
        assert!(found(&["publsh", "--json"]));
        assert!(found(&["publish", "t", "{}", "--bogus", "--json"]));
        assert!(!found(&["publish", "t", "{}"]));
        assert!(!found(&["publish", "--", "--json"]));
        assert!(!found(&["--jsonx"]));
    }
}

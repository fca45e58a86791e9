//! `fitviz-events archive declare|status|replay`: the archive stream `<exchange>.archive`.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use fitviz_events::{
    EventPublisher, PublisherConfig,
    config::ArchivePatterns,
    replay::{Replay, ReplayFrom, ReplayTarget, ReplayUntil},
    topology::{self, ArchiveStream, Topology},
};
use serde::Serialize;

use crate::{
    exit::{CONFIG, Failure},
    print_result,
};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Declares, idempotently, the events exchange and the archive stream
    /// `<exchange>.archive`, bound with `--bind` patterns (default: those of
    /// `FITVIZ_EVENTS_ARCHIVE`, or every event when it is off). The retention is frozen
    /// at the first declaration: declaring again with another one fails (exit 5).
    Declare {
        /// A topic pattern the archive is bound with (repeatable).
        #[arg(long = "bind", value_name = "PATTERN")]
        bindings: Vec<String>,
        /// Events older than this many days are dropped.
        #[arg(long, value_name = "DAYS", default_value_t = 7)]
        max_age_days: u64,
        /// The archive's size above which its oldest events are dropped.
        #[arg(long, value_name = "BYTES", default_value_t = 10_000_000_000)]
        max_bytes: u64,
        /// The size of one segment, the unit retention drops.
        #[arg(long, value_name = "BYTES", default_value_t = 100_000_000)]
        segment_bytes: u64,
    },
    /// The archive's first event and its head (the newest).
    Status,
    /// Reads the archive and publishes the matching events again — to one queue
    /// (`--queue`) or to the exchange (`--to exchange`) — with a confirm each, through
    /// the publisher's delivery stack, marked with the `replayed_from` header (same body
    /// and `message_id`). A progress bar on stderr (a terminal only), then a summary.
    /// Copies an earlier replay sent to the exchange are skipped.
    Replay(ReplayArgs),
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["queue", "to"])))]
pub(crate) struct ReplayArgs {
    /// Where to start: `first`, `last`, an offset, or an RFC 3339 time (the envelope's
    /// `timestamp`, exact to the millisecond).
    #[arg(long, value_name = "FROM", default_value = "first", value_parser = parse_from)]
    from: Start,
    /// Only events before this RFC 3339 time (default: up to the head at the start).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    until: Option<DateTime<Utc>>,
    /// Only events whose type matches this topic pattern (repeatable).
    #[arg(long = "type", value_name = "PATTERN")]
    types: Vec<String>,
    /// Only events of this organization (repeatable).
    #[arg(long = "org", value_name = "ID")]
    organizations: Vec<String>,
    /// Publish to this queue, through the default exchange: only its consumer gets them.
    #[arg(long, value_name = "Q")]
    queue: Option<String>,
    /// `exchange`: publish to the exchange with the original routing key (every bound
    /// queue gets them again, and the archive, marked).
    #[arg(long, value_enum, value_name = "TARGET")]
    to: Option<To>,
    /// Count what would be published, publish nothing.
    #[arg(long)]
    dry_run: bool,
    /// At most this many events published per second.
    #[arg(long, value_name = "N")]
    rate: Option<u32>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum To {
    Exchange,
}

#[derive(Clone, Debug)]
struct Start(ReplayFrom);

fn parse_from(value: &str) -> Result<Start, String> {
    Ok(Start(match value {
        "first" => ReplayFrom::First,
        "last" => ReplayFrom::Last,
        _ => match value.parse::<u64>() {
            Ok(offset) => ReplayFrom::Offset(offset),
            Err(_) => ReplayFrom::Time(parse_time(value).map_err(|_| {
                format!("expected `first`, `last`, an offset or an RFC 3339 time, got `{value}`")
            })?),
        },
    }))
}

fn parse_time(value: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            format!("expected an RFC 3339 time (2026-12-08T10:00:00Z), got `{value}`: {e}")
        })
}

/// What `archive replay` did.
#[derive(Debug, Default, Serialize)]
struct Summary {
    stream: String,
    dry_run: bool,
    read: u64,
    matched: u64,
    published: u64,
    skipped_replayed: u64,
    undecodable: u64,
    head: Option<u64>,
    last_offset: Option<u64>,
    elapsed_ms: u64,
}

pub(crate) async fn run(command: Command, json: bool) -> Result<(), Failure> {
    let config = PublisherConfig::from_env()?;
    match command {
        Command::Declare {
            bindings,
            max_age_days,
            max_bytes,
            segment_bytes,
        } => {
            let patterns = match (bindings.is_empty(), config.archive.is_on()) {
                (false, _) => ArchivePatterns::new(bindings)
                    .map_err(|why| Failure::new(CONFIG, "config", format!("--bind: {why}")))?,
                (true, true) => config.archive.clone(),
                (true, false) => ArchivePatterns::all(),
            };
            let archive = ArchiveStream::default()
                .patterns(patterns)
                .max_age(Duration::from_secs(max_age_days.saturating_mul(24 * 3600)))
                .max_bytes(max_bytes)
                .segment_bytes(segment_bytes);
            let topology = Topology::new(config.exchange.clone())
                .without_unrouted()
                .archive(archive);
            topology.check()?;
            let connection = topology::connect(&config).await?;
            let report = topology.declare(&connection).await;
            let _ = connection.close(200, "fitviz-events archive".into()).await;
            let report = report?;
            let value = serde_json::to_value(&report).unwrap_or_default();
            print_result(json, &value, || {
                let lines: Vec<String> = (report.declared.iter())
                    .map(|d| format!("declared {} {}", d.kind, d.name))
                    .collect();
                lines.join("\n")
            });
        }
        Command::Status => {
            let mut stream = Replay::new(&config.exchange).open(&config).await?;
            let first = match stream.next().await {
                Some(event) => Some(event?),
                None => None,
            };
            let head = stream.progress().head;
            stream.close().await;
            let value = serde_json::json!({
                "stream": topology::archive_name(&config.exchange),
                "first_offset": first.as_ref().map(|e| e.offset),
                "first_timestamp": first.as_ref().map(|e| e.timestamp),
                "head": head,
            });
            print_result(json, &value, || match (&first, head) {
                (Some(first), head) => format!(
                    "{}: first offset {} ({}), head {}",
                    topology::archive_name(&config.exchange),
                    first.offset,
                    first.timestamp,
                    head.map_or_else(|| "unknown (idle)".to_owned(), |h| h.to_string())
                ),
                (None, _) => format!("{}: empty", topology::archive_name(&config.exchange)),
            });
        }
        Command::Replay(args) => replay(&config, args, json).await?,
    }
    Ok(())
}

async fn replay(config: &PublisherConfig, args: ReplayArgs, json: bool) -> Result<(), Failure> {
    let target = match (args.queue, args.to) {
        (Some(queue), _) => ReplayTarget::Queue(queue),
        (None, _) => ReplayTarget::Exchange,
    };
    let mut replay = Replay::new(&config.exchange).from(args.from.0);
    if let Some(until) = args.until {
        replay = replay.until(ReplayUntil::Time(until));
    }
    for pattern in args.types {
        replay = replay.event_type(pattern);
    }
    for organization in args.organizations {
        replay = replay.organization(organization);
    }
    replay.check()?;
    let started = Instant::now();
    let publisher = match args.dry_run {
        true => None,
        false => Some(EventPublisher::connect(config.clone()).await?),
    };
    let mut stream = replay.open(config).await?;
    let start_offset = match args.from.0 {
        ReplayFrom::Offset(offset) => offset,
        _ => 0,
    };
    let bar = match (json, stream.progress().head) {
        (true, _) => indicatif::ProgressBar::hidden(),
        (false, Some(head)) => indicatif::ProgressBar::new(head.saturating_sub(start_offset) + 1),
        (false, None) => indicatif::ProgressBar::new_spinner(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {bar:30} {pos}/{len} read · {msg} · ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut ticker = args.rate.filter(|r| *r > 0).map(|rate| {
        let mut ticker = tokio::time::interval(Duration::from_secs(1) / rate);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker
    });
    let mut published = 0u64;
    let mut failure = None;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                failure = Some(Failure::from(error));
                break;
            }
        };
        let progress = stream.progress();
        bar.set_position(
            progress
                .last_offset
                .unwrap_or(0)
                .saturating_sub(start_offset)
                + 1,
        );
        if let Some(publisher) = &publisher {
            if let Some(ticker) = ticker.as_mut() {
                ticker.tick().await;
            }
            if let Err(error) = event.republish(publisher, &target).await {
                failure = Some(Failure::from(error));
                break;
            }
            published += 1;
        }
        bar.set_message(format!(
            "{} matched · {published} published",
            progress.matched
        ));
    }
    bar.finish_and_clear();
    let progress = stream.progress();
    stream.close().await;
    if let Some(publisher) = publisher {
        publisher.close().await;
    }
    let summary = Summary {
        stream: topology::archive_name(&config.exchange),
        dry_run: args.dry_run,
        read: progress.read,
        matched: progress.matched,
        published,
        skipped_replayed: progress.skipped_replayed,
        undecodable: progress.undecodable,
        head: progress.head,
        last_offset: progress.last_offset,
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    let value = serde_json::to_value(&summary).unwrap_or_default();
    if let Some(failure) = failure {
        return Err(failure.with_report(value));
    }
    print_result(json, &value, || {
        format!(
            "{}: read {}, matched {}, {} {}; skipped {} earlier replay copies, {} undecodable; {:.1} s",
            summary.stream,
            summary.read,
            summary.matched,
            if summary.dry_run {
                "would publish"
            } else {
                "published"
            },
            if summary.dry_run {
                summary.matched
            } else {
                summary.published
            },
            summary.skipped_replayed,
            summary.undecodable,
            started.elapsed().as_secs_f64()
        )
    });
    Ok(())
}

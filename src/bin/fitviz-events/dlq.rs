//! `fitviz-events dlq list QUEUE` and `dlq replay QUEUE [--to queue|exchange] [--limit N]`.

use fitviz_events::{
    EventPublisher, PublisherConfig,
    topology::{
        self,
        dead_letters::{self, ReplayTo},
    },
};

use crate::{
    exit::{Failure, UNAVAILABLE},
    print_result,
};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Shows the dead letters of QUEUE (a `….dlq`) with their `x-death` reasons,
    /// without consuming them. With `--json`, one object a message, its body as `body`
    /// when it is UTF-8 text, as `body_base64` (standard base64) when it is not.
    ///
    /// Listing gets each message and puts it back, which counts as a delivery (AMQP has
    /// no peek): on a queue with an `x-delivery-limit`, as consumer queues have, a few
    /// listings would dead-letter (or drop) its messages. So only dead-letter queues
    /// (`<name>.dlq`) and unrouted queues (`<exchange>.unrouted`), declared without a
    /// limit, are listed; any other queue is refused with exit 2 and nothing is read,
    /// unless `--count-as-delivery` is given.
    List {
        /// The dead-letter queue.
        queue: String,
        /// At most this many messages.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// List a queue that is not a dead-letter queue anyway, each listing counting
        /// as one delivery of every message shown.
        #[arg(long)]
        count_as_delivery: bool,
    },
    /// Moves dead letters back: each is republished with a confirm, then removed from
    /// QUEUE (at least once, same `message_id`).
    ///
    /// The copies go through the publisher's delivery stack: each is bounded by
    /// `FITVIZ_EVENTS_PUBLISH_TIMEOUT` and retried like a publish; a copy no queue takes
    /// stops the replay (it is never kept in `<exchange>.unrouted`).
    ///
    /// A replay stopped by an error (a target gone, the connection lost) still prints
    /// what it had moved (`--json`: the error object's `report`) and exits non-zero;
    /// the moved messages are moved, the others are still in QUEUE.
    Replay {
        /// The dead-letter queue.
        queue: String,
        /// `queue`: the queue it was dead-lettered from (only that consumer gets it
        /// again); `exchange`: its original exchange and routing key (every bound queue
        /// gets it again).
        #[arg(long, value_enum, default_value_t = Target::Queue)]
        to: Target,
        /// At most this many messages (default: all).
        #[arg(long)]
        limit: Option<usize>,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum Target {
    Queue,
    Exchange,
}

pub(crate) async fn run(command: Command, json: bool) -> Result<(), Failure> {
    let config = PublisherConfig::from_env()?;
    // Refused before connecting: nothing is read.
    if let Command::List {
        queue,
        count_as_delivery: false,
        ..
    } = &command
    {
        dead_letters::check_listable(queue)?;
    }
    let connection = topology::connect(&config).await?;
    let result = async {
        let channel = (connection.create_channel().await).map_err(|e| {
            Failure::new(UNAVAILABLE, "connection", format!("opening a channel: {e}"))
        })?;
        match command {
            Command::List {
                queue,
                limit,
                count_as_delivery,
            } => {
                let letters = match count_as_delivery {
                    true => dead_letters::list_counting_deliveries(&channel, &queue, limit).await,
                    false => dead_letters::list(&channel, &queue, limit).await,
                }?;
                for letter in &letters {
                    let value = serde_json::to_value(letter).unwrap_or_default();
                    print_result(json, &value, || {
                        let why = (letter.deaths.first())
                            .map(|d| serde_json::to_string(d).unwrap_or_default())
                            .unwrap_or_else(|| "(no x-death)".to_owned());
                        format!(
                            "{}\t{}\t{why}",
                            letter.message_id.as_deref().unwrap_or("-"),
                            letter.event_type.as_deref().unwrap_or("-"),
                        )
                    });
                }
                if !json {
                    println!("{} dead letter(s) in {queue}", letters.len());
                }
            }
            Command::Replay { queue, to, limit } => {
                let to = match to {
                    Target::Queue => ReplayTo::Queue,
                    Target::Exchange => ReplayTo::Exchange,
                };
                let publisher = EventPublisher::connect(config.clone()).await?;
                let replayed = dead_letters::replay(&channel, &publisher, &queue, to, limit).await;
                publisher.close().await;
                let report = match replayed {
                    Ok(report) => report,
                    Err(error) => {
                        let report = error.replay_report().cloned();
                        let mut failure = Failure::from(error);
                        if let Some(report) = report {
                            if !json {
                                // What was moved, one id a line, before the error line.
                                for moved in &report.replayed {
                                    println!(
                                        "replayed {}\t{} {}",
                                        moved.message_id.as_deref().unwrap_or("-"),
                                        moved.exchange,
                                        moved.routing_key
                                    );
                                }
                            }
                            failure = failure
                                .with_report(serde_json::to_value(&report).unwrap_or_default());
                        }
                        return Err(failure);
                    }
                };
                let value = serde_json::to_value(&report).unwrap_or_default();
                print_result(json, &value, || {
                    let mut text = format!(
                        "replayed {} dead letter(s) from {queue}; {} without x-death left in place",
                        report.replayed.len(),
                        report.skipped.len()
                    );
                    if !report.into_itself.is_empty() {
                        text += &format!(
                            "; {} left in place: their x-death names {queue} itself (replay the queue they were dead-lettered into)",
                            report.into_itself.len()
                        );
                    }
                    if report.came_back {
                        text += "; stopped: a replayed message came back into the queue";
                    }
                    text
                });
            }
        }
        Ok(())
    }
    .await;
    let _ = connection.close(200, "fitviz-events dlq".into()).await;
    result
}

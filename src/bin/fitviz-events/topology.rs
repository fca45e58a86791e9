//! `fitviz-events topology declare [--consumer-queue Q --bind PATTERN…]`.

use fitviz_events::{
    PublisherConfig,
    topology::{self, ConsumerQueue, DeadLetterStrategy, DeadLettering, Topology},
};

use crate::{exit::Failure, print_result};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Declares, idempotently, the events exchange, `<exchange>.unrouted` (where events
    /// no queue is bound for are kept), the archive stream `<exchange>.archive` when
    /// `FITVIZ_EVENTS_ARCHIVE` is on (bound with its patterns; 7 days, 10 GB) and, when
    /// asked, a consumer's quorum queue with its dead-letter exchange and `<queue>.dlq`.
    /// Prints what was declared and the
    /// `rabbitmqctl set_policy` lines of the policies it relies on.
    Declare(DeclareArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct DeclareArgs {
    /// A consumer's queue to declare (a durable quorum queue).
    #[arg(long, value_name = "Q")]
    consumer_queue: Option<String>,
    /// A binding pattern for the consumer's queue (`workout.*`); repeat for more.
    #[arg(long = "bind", value_name = "PATTERN", requires = "consumer_queue")]
    bindings: Vec<String>,
    /// Redeliveries before a message is dead-lettered (`x-delivery-limit`).
    #[arg(long, value_name = "N", requires = "consumer_queue")]
    delivery_limit: Option<u32>,
    /// Dead-letter through a policy (printed, to apply with rabbitmqctl) instead of
    /// queue arguments, which are frozen once declared.
    #[arg(long, requires = "consumer_queue")]
    dead_letter_policy: bool,
    /// `at-least-once` (default): a dead letter whose DLQ is missing waits in the queue
    /// and is retried (the broker's timer: 180 s on RabbitMQ 3.10), with `x-overflow:
    /// reject-publish` (a queue given a length limit then refuses publishes when full);
    /// `at-least-once-by-policy`: the same through the printed policy, for a queue
    /// declared before without it (declaring it with the arguments fails with 406);
    /// `at-most-once`: the broker's default, which drops such a dead letter.
    #[arg(long, value_enum, value_name = "STRATEGY", default_value_t = Strategy::AtLeastOnce, requires = "consumer_queue")]
    dead_letter_strategy: Strategy,
}

/// The values of `--dead-letter-strategy`, named as RabbitMQ names them.
#[allow(clippy::enum_variant_names)]
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum Strategy {
    AtLeastOnce,
    AtLeastOnceByPolicy,
    AtMostOnce,
}

pub(crate) async fn run(command: Command, json: bool) -> Result<(), Failure> {
    let Command::Declare(args) = command;
    let config = PublisherConfig::from_env()?;
    let mut topology = Topology::from_config(&config);
    if let Some(name) = args.consumer_queue {
        let mut queue = ConsumerQueue::new(name);
        for pattern in args.bindings {
            queue = queue.bind(pattern);
        }
        if let Some(limit) = args.delivery_limit {
            queue = queue.delivery_limit(limit);
        }
        if args.dead_letter_policy {
            queue = queue.dead_lettering(DeadLettering::Policy);
        }
        queue = queue.dead_letter_strategy(match args.dead_letter_strategy {
            Strategy::AtLeastOnce => DeadLetterStrategy::AtLeastOnce,
            Strategy::AtLeastOnceByPolicy => DeadLetterStrategy::AtLeastOnceByPolicy,
            Strategy::AtMostOnce => DeadLetterStrategy::AtMostOnce,
        });
        topology = topology.consumer_queue(queue);
    }
    // Every name is checked before connecting.
    topology.check()?;
    let connection = topology::connect(&config).await?;
    let report = topology.declare(&connection).await;
    let _ = connection
        .close(200, "fitviz-events topology declare".into())
        .await;
    let report = report?;
    let value = serde_json::to_value(&report).unwrap_or_default();
    print_result(json, &value, || {
        let mut lines: Vec<String> = (report.declared.iter())
            .map(|d| serde_json::to_string(d).unwrap_or_default())
            .map(|d| format!("declared {d}"))
            .collect();
        lines.extend(report.policies.iter().map(|p| format!("policy: {p}")));
        lines.join("\n")
    });
    Ok(())
}

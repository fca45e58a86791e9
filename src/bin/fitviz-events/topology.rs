//! `fitviz-events topology declare [--consumer-queue Q --bind PATTERN…]`.

use fitviz_events::{
    PublisherConfig,
    topology::{self, ConsumerQueue, DeadLettering, Topology},
};

use crate::{exit::Failure, print_result};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Declares, idempotently, the events exchange, `<exchange>.unrouted` (where events
    /// no queue is bound for are kept) and, when asked, a consumer's quorum queue with
    /// its dead-letter exchange and `<queue>.dlq`. Prints what was declared and the
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

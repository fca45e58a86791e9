//! A consumer of FitViz events with lapin: declares its queue through `Topology` (a
//! durable quorum queue bound to `workout.*` and `booking.*`, with its dead-letter queue),
//! decodes the envelope, validates `data` against the built-in schemas, de-duplicates on
//! `event_id` (bounded memory), acks after handling and rejects poison messages (invalid
//! JSON, an invalid envelope or `data`) to the dead-letter queue.
//!
//! ```sh
//! cargo run --example consumer                    # consumes until Ctrl-C / SIGTERM
//! cargo run --example consumer -- --max 10        # ... or until 10 messages were handled
//! cargo run --example consumer -- --demo          # publishes a valid event twice and a poison message, handles them, stops
//! ```
//!
//! Options: `--queue NAME` (default `fitviz.events.consumer-example`; its dead letters go
//! to `NAME.dlq`), `--max N`, `--keep` (keep the queues on exit), `--demo` (publishes a valid
//! `workout.created` twice through the publisher — other queues bound for it get it
//! too — and a poison message straight to its own queue, then consumes until the poison
//! message was rejected), `--from-archive` (first catches up from the archive
//! `<exchange>.archive`, when there is one, from the offset it stored last: see
//! `catch_up`). The queues
//! expire after 10 minutes without a consumer (`x-expires`) and, unless `--keep`, are
//! deleted on exit: nothing unbounded stays bound to the shared exchange. Nothing shared
//! is deleted. `FITVIZ_EVENTS_URL` and `FITVIZ_EVENTS_EXCHANGE` as for the publisher.
//!
//! Versions: the envelope's `version` (and the `schema_version` header) says which
//! version of the type's schema `data` follows; this example validates `data` against
//! that version's schema, then upcasts it to the newest version
//! (`SchemaRegistry::upcast`), so the handler sees one shape per type.

mod common;

use std::{
    collections::{HashSet, VecDeque},
    time::Duration,
};

use fitviz_events::{
    Event, EventPublisher, PublisherConfig, SchemaRegistry,
    events::WorkoutCreated,
    replay::{MemoryOffsets, OffsetStore, Replay, ReplayFrom},
    schema::UnknownFields,
    testing::Example,
    topology::{self, ConsumerQueue, Topology, TopologyErrorKind},
};
use futures_util::StreamExt;
use lapin::{
    BasicProperties,
    message::Delivery,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        BasicRejectOptions, QueueDeleteOptions,
    },
    types::FieldTable,
};
use serde::Deserialize;
use uuid::Uuid;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The `message_id` of the demo's poison message.
const DEMO_POISON: &str = "poison-demo";

/// How many recent event ids are remembered for de-duplication.
const DEDUP_CAPACITY: usize = 10_000;

/// The envelope fields this consumer needs.
#[derive(Debug, Deserialize)]
struct Envelope {
    event_id: Uuid,
    event_type: String,
    organization_id: Option<String>,
    version: u32,
    data: serde_json::Value,
}

/// The last `capacity` event ids seen: a ring for the order, a set for the look-up.
struct Seen {
    order: VecDeque<Uuid>,
    ids: HashSet<Uuid>,
    capacity: usize,
}

impl Seen {
    fn new(capacity: usize) -> Self {
        Self {
            order: VecDeque::with_capacity(capacity),
            ids: HashSet::with_capacity(capacity),
            capacity,
        }
    }

    /// Records `id`; false when it was seen already.
    fn insert(&mut self, id: Uuid) -> bool {
        if !self.ids.insert(id) {
            return false;
        }
        if self.order.len() == self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
        self.order.push_back(id);
        true
    }
}

/// What became of a delivery.
enum Verdict {
    Handled,
    Duplicate,
    Poison(String),
}

struct Options {
    queue: String,
    max: Option<u64>,
    keep: bool,
    demo: bool,
    from_archive: bool,
}

fn options() -> Result<Options, Error> {
    let mut options = Options {
        queue: "fitviz.events.consumer-example".to_owned(),
        max: None,
        keep: false,
        demo: false,
        from_archive: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--queue" => options.queue = args.next().ok_or("--queue needs a name")?,
            "--max" => options.max = Some(args.next().ok_or("--max needs a number")?.parse()?),
            "--keep" => options.keep = true,
            "--demo" => options.demo = true,
            "--from-archive" => options.from_archive = true,
            other => {
                return Err(format!("unknown argument `{other}` (see the file's header)").into());
            }
        }
    }
    Ok(options)
}

fn handle(delivery: &Delivery, registry: &SchemaRegistry, seen: &mut Seen) -> Verdict {
    handle_body(&delivery.data, registry, seen)
}

/// Decodes, validates, de-duplicates and handles one event's body (from the queue or
/// from the archive).
fn handle_body(body: &[u8], registry: &SchemaRegistry, seen: &mut Seen) -> Verdict {
    let envelope: Envelope = match serde_json::from_slice(body) {
        Ok(envelope) => envelope,
        Err(e) => return Verdict::Poison(format!("not an event envelope: {e}")),
    };
    // Validated against the schema of the version it was published with…
    let (event_type, version) = (envelope.event_type.as_str(), envelope.version);
    match registry.validate_json_with(
        event_type,
        Some(version),
        &envelope.data,
        UnknownFields::Forward,
    ) {
        Some(Ok(())) => {}
        Some(Err(e)) => return Verdict::Poison(format!("invalid `{event_type}` v{version}: {e}")),
        None => return Verdict::Poison(format!("unknown event type `{event_type}`")),
    }
    if !seen.insert(envelope.event_id) {
        return Verdict::Duplicate;
    }
    // …then upcast to the newest version, so the handler knows one shape per type.
    let (newest, _data) = match registry.upcast(event_type, version, envelope.data.clone()) {
        Ok(upcast) => upcast,
        Err(e) => return Verdict::Poison(format!("cannot upcast `{event_type}` v{version}: {e}")),
    };
    // The application's work goes here (idempotent per event_id), on `_data`.
    println!(
        "handled {event_type} {} version {version} (as v{newest}) organization {}",
        envelope.event_id,
        envelope.organization_id.as_deref().unwrap_or("-"),
    );
    Verdict::Handled
}

/// The name this consumer stores its archive offset under.
const CONSUMER: &str = "consumer-example";

/// Catches up from the archive `<exchange>.archive` before consuming the queue: the
/// `workout.*` and `booking.*` events after the offset stored last, handled like
/// deliveries, the offset stored after each. The offsets here live in memory (a restart
/// reads the archive again, de-duplicated by `event_id`); a consumer with a database
/// keeps them there with `PostgresOffsets::save_in(&tx, CONSUMER, offset)`, in the
/// transaction of its own writes, so the offset moves if and only if the work commits.
async fn catch_up(
    config: &PublisherConfig,
    offsets: &MemoryOffsets,
    registry: &SchemaRegistry,
    seen: &mut Seen,
) -> Result<(), Error> {
    let from = ReplayFrom::after(offsets.load(CONSUMER).await?);
    let replay = Replay::new(&config.exchange)
        .from(from)
        .event_type("workout.*")
        .event_type("booking.*");
    let mut events = match replay.open(config).await {
        Ok(events) => events,
        Err(error) if error.kind() == TopologyErrorKind::NotFound => {
            eprintln!(
                "no archive to catch up from ({error}): `fitviz-events archive declare` makes one"
            );
            return Ok(());
        }
        Err(error) => return Err(error.into()),
    };
    while let Some(event) = events.next().await {
        let event = event?;
        if let Verdict::Poison(why) =
            handle_body(&serde_json::to_vec(&event.envelope)?, registry, seen)
        {
            eprintln!("archived event at offset {} skipped: {why}", event.offset);
        }
        offsets.save(CONSUMER, event.offset).await?;
    }
    eprintln!("caught up from the archive: {:?}", events.progress());
    Ok(())
}

/// Publishes a valid event twice (same id: the second is a duplicate) through the
/// publisher, and a poison message straight to `queue` (default exchange: no other
/// queue gets it).
async fn demo(
    config: &PublisherConfig,
    channel: &lapin::Channel,
    queue: &str,
) -> Result<(), Error> {
    let publisher = EventPublisher::connect(config.clone()).await?;
    let event = Event::new(WorkoutCreated::example()).with_organization("org-demo");
    publisher.publish(event.clone()).await?;
    publisher.publish(event).await?;
    publisher.close().await;
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            b"this is not json",
            BasicProperties::default().with_message_id(DEMO_POISON.into()),
        )
        .await?
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let options = options()?;
    let config = PublisherConfig::from_env()?;
    let queue = ConsumerQueue::new(&options.queue)
        .bind("workout.*")
        .bind("booking.*")
        .delivery_limit(5)
        .expires(Duration::from_secs(600));
    let connection = topology::connect(&config).await?;
    let report = Topology::from_config(&config)
        .without_unrouted()
        .without_archive()
        .consumer_queue(queue.clone())
        .declare(&connection)
        .await?;
    eprintln!("declared: {}", serde_json::to_string(&report.declared)?);

    let channel = connection.create_channel().await?;
    channel.basic_qos(32, BasicQosOptions::default()).await?;
    if options.demo {
        demo(&config, &channel, queue.name()).await?;
    }
    let mut consumer = channel
        .basic_consume(
            queue.name().into(),
            "fitviz-consumer-example".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let registry = SchemaRegistry::builtin();
    let mut seen = Seen::new(DEDUP_CAPACITY);
    if options.from_archive {
        catch_up(&config, &MemoryOffsets::default(), &registry, &mut seen).await?;
    }
    let (mut handled, mut duplicates, mut rejected) = (0u64, 0u64, 0u64);
    let shutdown = common::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        if options
            .max
            .is_some_and(|max| handled + duplicates + rejected >= max)
        {
            break;
        }
        let delivery = tokio::select! {
            _ = &mut shutdown => break,
            next = consumer.next() => match next {
                Some(delivery) => delivery?,
                None => break,
            },
        };
        let demo_poison = options.demo
            && delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str())
                == Some(DEMO_POISON);
        match handle(&delivery, &registry, &mut seen) {
            Verdict::Handled => {
                handled += 1;
                delivery.ack(BasicAckOptions::default()).await?;
            }
            Verdict::Duplicate => {
                duplicates += 1;
                eprintln!("duplicate event skipped");
                delivery.ack(BasicAckOptions::default()).await?;
            }
            Verdict::Poison(why) => {
                rejected += 1;
                eprintln!("poison message to {}: {why}", queue.dlq_name());
                delivery
                    .reject(BasicRejectOptions { requeue: false })
                    .await?;
            }
        }
        if demo_poison {
            break; // The demo's messages are all handled: the poison one came last.
        }
    }
    println!("handled={handled} duplicates={duplicates} rejected={rejected}");

    let _ = channel.close(200, "consumer done".into()).await;
    if !options.keep {
        let cleanup = connection.create_channel().await?;
        for name in [queue.name().to_owned(), queue.dlq_name()] {
            cleanup
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
    }
    let _ = connection.close(200, "consumer done".into()).await;
    Ok(())
}

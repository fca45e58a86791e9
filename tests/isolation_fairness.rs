//! Per-organization fairness on the real broker: one tenant publishing as fast as it can
//! slows itself, not the others.
//!
//! One publisher, one run: three steady tenants publish at a fixed pace, first alone
//! (the baseline), then while a fourth tenant floods with far more concurrent publishes
//! than its share. The steady tenants must keep 100 % success and a median latency within
//! a bound relative to the baseline (ratios, not absolute times: the machine is shared
//! and noisy); the flooding tenant's publishes in flight at the transport — counted by a
//! wrapper around it, independently of the fair-share layer — never exceed its share.

mod support;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use fitviz_events::{
    Event, EventPublisher, PublisherConfig, events::WorkoutCreated, testing::Example,
    transport::AmqpPublish,
};
use lapin::types::{AMQPValue, FieldTable};
use tower::{ServiceExt, service_fn};

const STEADY: [&str; 3] = ["steady-a", "steady-b", "steady-c"];
const FLOOD: &str = "flood";
/// Concurrent publishers of the flooding tenant: four times its share.
const FLOODERS: usize = 1024;
const PHASE: Duration = Duration::from_secs(3);
const PACE: Duration = Duration::from_millis(5);

/// Publishes in flight at the transport per organization, and the flood's maximum.
#[derive(Clone, Default)]
struct Observed {
    now: Arc<Mutex<HashMap<String, usize>>>,
    flood_max: Arc<AtomicUsize>,
}

impl Observed {
    fn enter(&self, org: &str) {
        let mut now = self.now.lock().unwrap();
        let n = now.entry(org.to_owned()).or_default();
        *n += 1;
        if org == FLOOD {
            self.flood_max.fetch_max(*n, Ordering::Relaxed);
        }
    }

    fn leave(&self, org: &str) {
        *self.now.lock().unwrap().get_mut(org).unwrap() -= 1;
    }
}

fn publisher(config: PublisherConfig, observed: &Observed) -> EventPublisher {
    let transport = AmqpPublish::new(&config).unwrap();
    let observed = observed.clone();
    let counting = service_fn(move |event: Event| {
        let (transport, observed) = (transport.clone(), observed.clone());
        async move {
            let org = event.organization_id().unwrap().as_str().to_owned();
            observed.enter(&org);
            // Leaves also when the attempt deadline drops this future.
            let _leave = Leave(&observed, &org);
            transport.oneshot(event).await
        }
    });
    EventPublisher::builder(config).build_with_transport(counting)
}

struct Leave<'a>(&'a Observed, &'a str);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.leave(self.1);
    }
}

fn event(org: &str) -> Event {
    Event::new(WorkoutCreated::example()).with_organization(org)
}

/// The steady tenants publish one event every `PACE` each for `PHASE`; returns every
/// latency and the failures.
async fn steady(publisher: &EventPublisher) -> (Vec<Duration>, usize) {
    let tasks: Vec<_> = STEADY
        .iter()
        .map(|org| {
            let publisher = publisher.clone();
            tokio::spawn(async move {
                let (mut latencies, mut failed) = (Vec::new(), 0);
                let end = Instant::now() + PHASE;
                let mut pace = tokio::time::interval(PACE);
                while Instant::now() < end {
                    pace.tick().await;
                    let start = Instant::now();
                    match publisher.publish(event(org)).await {
                        Ok(_) => latencies.push(start.elapsed()),
                        Err(_) => failed += 1,
                    }
                }
                (latencies, failed)
            })
        })
        .collect();
    let (mut all, mut failed) = (Vec::new(), 0);
    for task in tasks {
        let (latencies, f) = task.await.unwrap();
        all.extend(latencies);
        failed += f;
    }
    (all, failed)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_tenant_slows_itself_not_the_others() {
    // A bounded queue: the flood must not fill the broker (old messages are dropped,
    // every publish is still confirmed and routed).
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(2_000));
    let fx = support::Fixture::with_queue_args("fairness", "#", args).await;
    let mut config = fx.config();
    // 5 % of 4 channels × 256: 52 in flight. For comparisons by hand,
    // FV_FAIRNESS_PERCENT=25 is the default and 100 turns the share off.
    config.max_in_flight_per_organization_percent =
        std::env::var("FV_FAIRNESS_PERCENT").map_or(PERCENT, |p| p.parse().unwrap());
    let share = config.max_in_flight_per_organization();
    let observed = Observed::default();
    let publisher = publisher(config, &observed);
    // Warm up: connections and channels.
    for org in STEADY {
        publisher.publish(event(org)).await.unwrap();
    }

    let (baseline, failed) = steady(&publisher).await;
    assert_eq!(failed, 0, "baseline failures");

    let stop = Arc::new(AtomicBool::new(false));
    let flooded = Arc::new(AtomicUsize::new(0));
    let flood_failed = Arc::new(AtomicUsize::new(0));
    let flooders: Vec<_> = (0..FLOODERS)
        .map(|_| {
            let (publisher, stop) = (publisher.clone(), stop.clone());
            let (flooded, flood_failed) = (flooded.clone(), flood_failed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match publisher.publish(event(FLOOD)).await {
                        Ok(_) => flooded.fetch_add(1, Ordering::Relaxed),
                        Err(_) => flood_failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    // Let the flood reach its share first.
    let mut gate_max = 0;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        gate_max = gate_max.max(publisher.in_flight_of(Some(FLOOD)));
    }
    let flood_start = flooded.load(Ordering::Relaxed);
    let (during, failed) = steady(&publisher).await;
    let flood_rate = (flooded.load(Ordering::Relaxed) - flood_start) as f64 / PHASE.as_secs_f64();
    gate_max = gate_max.max(publisher.in_flight_of(Some(FLOOD)));
    stop.store(true, Ordering::Relaxed);
    for task in flooders {
        task.await.unwrap();
    }

    let (base_median, flood_median) = (median(baseline.clone()), median(during.clone()));
    let ratio = flood_median.as_secs_f64() / base_median.as_secs_f64();
    let transport_max = observed.flood_max.load(Ordering::Relaxed);
    eprintln!(
        "fairness: baseline median {base_median:?} ({} events), during the flood {flood_median:?} \
         ({} events), ratio {ratio:.1}; flood {flood_rate:.0} events/s, {} failed; flood in \
         flight max {transport_max} at the transport, {gate_max} at the gate (share {share})",
        baseline.len(),
        during.len(),
        flood_failed.load(Ordering::Relaxed),
    );
    assert_eq!(
        failed, 0,
        "the steady tenants' publishes all succeed during the flood"
    );
    assert!(
        transport_max <= share,
        "the flood had {transport_max} in flight at the transport, above its share {share}"
    );
    assert!(
        transport_max >= share / 2,
        "the flood did flood ({transport_max})"
    );
    assert!(gate_max <= share);
    assert!(
        ratio <= MAX_RATIO,
        "median latency ratio {ratio:.1} above {MAX_RATIO}"
    );

    publisher.close().await;
    fx.cleanup().await;
}

/// The flooding tenant's share of the publishes in flight, in percent.
const PERCENT: u8 = 5;

/// The bound on (steady tenants' median latency during the flood) / (baseline median).
///
/// Measured here (2 vCPU shared with the broker and other builds; debug build; medians of
/// ~1,800 baseline and 300–1,100 flood-time events): with a 5 % share the ratio was 2–8
/// (flood-time median 7.3–8.4 ms); with the default 25 % 8–32 (flood-time median 21–29 ms, the baseline
/// 0.8–2.8 ms); with no share (100 %) 112–133 (97–110 ms). The added latency tracks the
/// flood's events in flight ahead of the steady ones (share ÷ broker throughput), so
/// 40 is five times the ratio measured with this share and a third of the ratio
/// without one: noise does not fail the test, losing the share does.
const MAX_RATIO: f64 = 40.0;

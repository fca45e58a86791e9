//! One tenant's bad input never reaches the broker, so it cannot take the bus down for
//! the others: invalid organization and correlation ids, oversized events and headers
//! are refused before any I/O — with the real broker, and by property over arbitrary
//! input with the in-memory transport.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, body::Body, extract::Request, http::StatusCode, routing::post};
use fitviz_events::{
    ErrorKind, Event, EventPublisher, OrganizationId, PublishError, PublisherConfig,
    circuit_breaker::BreakerState,
    events::WorkoutCreated,
    http::{EventPublishLayer, Publisher},
    testing::{Example, MemorySink},
};
use http_body_util::BodyExt;
use proptest::prelude::*;
use serde_json::{Value, json};
use tower::ServiceExt;

async fn create_workout(publisher: Publisher) -> Result<&'static str, PublishError> {
    publisher.publish(WorkoutCreated::example()).await?;
    Ok("created")
}

/// The axum app of the issue: the organization comes from `x-organization-id`, checked
/// by the publish layer before the handler runs.
fn app(publisher: EventPublisher) -> Router {
    Router::new()
        .route("/workouts", post(create_workout))
        .layer(EventPublishLayer::new(publisher).organization_header("x-organization-id"))
}

fn post_as(org: &str) -> Request {
    Request::post("/workouts")
        .header("x-organization-id", org)
        .body(Body::empty())
        .unwrap()
}

async fn body_json(response: axum::response::Response) -> Value {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
}

/// The independent statement of the organization id rule the tests check against.
fn satisfies_the_rule(id: &str) -> bool {
    // Unicode 16.0's category Cf (invisible format characters: zero-width, joiners,
    // BOM, bidirectional formatting, tags, …), and the line and paragraph separators.
    let invisible = |c: char| {
        matches!(c,
            '\u{00AD}' | '\u{0600}'..='\u{0605}' | '\u{061C}' | '\u{06DD}' | '\u{070F}'
            | '\u{0890}'..='\u{0891}' | '\u{08E2}' | '\u{180E}' | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}' | '\u{110BD}' | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}' | '\u{1BCA0}'..='\u{1BCA3}' | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0001}' | '\u{E0020}'..='\u{E007F}' | '\u{2028}' | '\u{2029}')
    };
    !id.is_empty()
        && id.len() <= 255
        && id.trim() == id
        && !id.chars().any(|c| c.is_control() || invisible(c))
}

/// (a) Eight tenants post for ~3 s while one request carries a 140,000-byte
/// `X-Organization-Id`: that request gets 400, nobody else sees a single non-2xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_organization_header_is_400_and_other_tenants_are_unaffected() {
    require_broker!();
    let fx = support::Fixture::new("iso_header", "#").await;
    let publisher = EventPublisher::connect(fx.config()).await.unwrap();
    let app = app(publisher.clone());

    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(3);
    let tenants: Vec<_> = (0..8)
        .map(|t| {
            let (app, ok, failed) = (app.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                let org = format!("org-{t}");
                while Instant::now() < until {
                    let response = app.clone().oneshot(post_as(&org)).await.unwrap();
                    if response.status().is_success() {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        eprintln!("{org}: {} {}", response.status(), body_json(response).await);
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(500)).await;
    let huge = "a".repeat(140_000);
    let response = app.clone().oneshot(post_as(&huge)).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body = body_json(response).await;
    assert_eq!(body["header"], "x-organization-id", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("longer than 255 bytes"),
        "{body}"
    );
    // And a few more bad ones, small this time.
    for bad in [" ", "org-1 ", "\u{202e}gro-1", "org\t1"] {
        let response = app.clone().oneshot(post_as(bad)).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad:?}");
    }

    for tenant in tenants {
        tenant.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        failed, 0,
        "{failed} requests of other tenants failed ({ok} ok)"
    );
    assert!(ok > 8, "only {ok} requests in 3 s");
    assert_eq!(publisher.breaker_state(), Some(BreakerState::Closed));
    // Everything the broker received is a valid tenant's.
    let messages = fx.drain().await;
    assert_eq!(messages.len() as u64, ok);
    for (body, _) in &messages {
        let event: Value = serde_json::from_slice(body).unwrap();
        let org = event["organization_id"].as_str().unwrap();
        assert!(org.starts_with("org-") && org.len() == 5, "{org}");
    }
    publisher.close().await;
    fx.cleanup().await;
}

/// (b) Empty, whitespace-only and control-character ids are `Validation` errors naming
/// the field, and nothing reaches the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_ids_are_refused_and_never_reach_the_broker() {
    require_broker!();
    let fx = support::Fixture::new("iso_ids", "#").await;
    let publisher = EventPublisher::connect(fx.config()).await.unwrap();

    let bad_ids = [
        "",
        "   ",
        "\t",
        "\n",
        "\0",
        "org-1\r\nX-Injected: yes",
        "org\0nul",
        "\u{202e}gro-1",
        "org\t1",
        " org-1",
    ];
    for bad in bad_ids {
        assert!(OrganizationId::parse(bad).is_err(), "{bad:?}");
        let event = Event::new(WorkoutCreated::example()).with_organization(bad);
        assert!(event.organization_id().is_none());
        let err = publisher.publish(event).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Validation, "{bad:?}: {err}");
        let violation = &err.validation_error().unwrap().violations()[0];
        assert_eq!(violation.field, "organization_id", "{bad:?}");

        let event = Event::new(WorkoutCreated::example())
            .with_organization("org-1")
            .with_correlation_id(bad);
        let err = publisher.publish(event).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Validation, "{bad:?}: {err}");
        let violation = &err.validation_error().unwrap().violations()[0];
        assert_eq!(violation.field, "correlation_id", "{bad:?}");
    }
    // Spawned (detached) events are refused at once too.
    let err = publisher
        .spawn(Event::new(WorkoutCreated::example()).with_organization("\n"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
    // Identifier fields of the payload made of control characters or whitespace.
    for bad in ["\0", "\n", " ", "\t"] {
        let mut workout = WorkoutCreated::example();
        workout.member_id = Some(bad.to_owned());
        let err = publisher
            .publish(Event::new(workout).with_organization("org-1"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Validation, "{bad:?}");
        assert_eq!(
            err.validation_error().unwrap().violations()[0].field,
            "member_id"
        );
    }
    // A year-0000 or leap-second `started_at` sent as JSON.
    for started_at in ["0000-01-01T00:00:00Z", "2016-12-31T23:59:60Z"] {
        let mut json = serde_json::to_value(WorkoutCreated::example()).unwrap();
        json["started_at"] = json!(started_at);
        let err = publisher
            .publish_json(
                "workout.created",
                json,
                Some(OrganizationId::parse("org-1").unwrap()),
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Validation, "{started_at}");
    }

    publisher.close().await;
    assert_eq!(fx.queue_len().await, 0, "nothing reached the broker");
    fx.cleanup().await;
}

/// (c) An event over `max_body_bytes` is `TooLarge` before any I/O: nothing is sent,
/// the breaker stays closed, the channel others share stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_event_is_too_large_before_any_io() {
    require_broker!();
    let fx = support::Fixture::new("iso_body", "#").await;
    let config = PublisherConfig {
        allow_unregistered: true,
        pool_size: 1, // the next publish shares the channel the big one would have killed
        breaker_failure_threshold: 1,
        ..fx.config()
    };
    let publisher = EventPublisher::connect(config).await.unwrap();

    let big = Event::from_json("blob.uploaded", json!({ "blob": "x".repeat(2 << 20) }))
        .with_organization("org-1");
    let started = Instant::now();
    let err = publisher.publish(big).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooLarge, "{err}");
    assert!(!err.is_retryable() && !err.is_broker_failure());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "not retried: {:?}",
        started.elapsed()
    );
    assert!(err.to_string().contains("1048576"), "{err}");
    assert_eq!(publisher.breaker_state(), Some(BreakerState::Closed));

    // Smaller limit, the same answer; the publisher keeps working on the same channel.
    let small_limit = PublisherConfig {
        max_body_bytes: 4096,
        allow_unregistered: true,
        pool_size: 1,
        ..fx.config()
    };
    let limited = EventPublisher::connect(small_limit).await.unwrap();
    let err = limited
        .publish(
            Event::from_json("blob.uploaded", json!({ "blob": "x".repeat(5000) }))
                .with_organization("org-1"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooLarge);
    assert_eq!(fx.queue_len().await, 0, "nothing reached the broker");

    limited
        .publish(Event::new(WorkoutCreated::example()).with_organization("org-1"))
        .await
        .expect("the channel is still open");
    publisher
        .publish(Event::new(WorkoutCreated::example()).with_organization("org-2"))
        .await
        .expect("the channel is still open");
    assert_eq!(fx.drain().await.len(), 2);
    limited.close().await;
    publisher.close().await;
    fx.cleanup().await;
}

/// A 4xx for the oversized event through axum: 413.
#[tokio::test]
async fn too_large_maps_to_413() {
    use axum::response::IntoResponse;
    let sink = MemorySink::new().with_max_body_bytes(1024);
    let publisher = EventPublisher::builder(PublisherConfig {
        allow_unregistered: true,
        ..Default::default()
    })
    .build_with_transport(sink.clone());
    let err = publisher
        .publish(
            Event::from_json("blob.uploaded", json!({ "blob": "x".repeat(2000) }))
                .with_organization("org-1"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooLarge);
    assert_eq!(err.into_response().status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(sink.count(), 0);
}

fn arb_id() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9-]{1,20}",
        ".{0,40}",
        "\\PC{0,300}",
        any::<String>(),
        prop::sample::select(vec![
            "",
            " ",
            "\t",
            "\n",
            "\0",
            "\u{202e}x",
            "x\u{2066}",
            "org\u{200b}-1",
            "\u{feff}org-1",
            "org\u{2060}1",
            "a\r\nb: c",
            "\u{3000}",
        ])
        .prop_map(str::to_owned),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// (d) Any string as an organization or correlation id: it validates and reaches
    /// the transport unchanged, or it is refused with `Validation` naming its field —
    /// never does an invalid id reach the transport.
    #[test]
    fn arbitrary_ids_validate_or_are_refused(org in arb_id(), correlation in arb_id()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let sink = MemorySink::new();
            let publisher = EventPublisher::builder(PublisherConfig::default())
                .build_with_transport(sink.clone());
            prop_assert_eq!(OrganizationId::parse(&org).is_ok(), satisfies_the_rule(&org));
            let event = Event::new(WorkoutCreated::example())
                .with_organization(org.as_str())
                .with_correlation_id(correlation.as_str());
            match publisher.publish(event).await {
                Ok(_) => {
                    prop_assert!(satisfies_the_rule(&org) && satisfies_the_rule(&correlation));
                }
                Err(err) => {
                    prop_assert_eq!(err.kind(), ErrorKind::Validation);
                    let field = &err.validation_error().unwrap().violations()[0].field;
                    let expected = if satisfies_the_rule(&org) { "correlation_id" } else { "organization_id" };
                    prop_assert_eq!(field.as_str(), expected);
                    prop_assert!(!satisfies_the_rule(&org) || !satisfies_the_rule(&correlation));
                }
            }
            for event in sink.published() {
                let reached = event.organization_id().unwrap().as_str();
                prop_assert!(satisfies_the_rule(reached), "{:?}", reached);
                prop_assert_eq!(reached, org.as_str());
                prop_assert!(satisfies_the_rule(event.correlation_id().unwrap()));
            }
            Ok(())
        })?;
    }

    /// (d) Any bytes as the `x-organization-id` and `x-request-id` headers: 400 naming
    /// the header, or the handler runs and what reaches the transport satisfies the
    /// rule; an invalid request id is ignored.
    #[test]
    fn arbitrary_header_values_validate_or_are_refused(
        org in prop_oneof![arb_id().prop_map(String::into_bytes), prop::collection::vec(any::<u8>(), 0..300)],
        request_id in prop_oneof![arb_id().prop_map(String::into_bytes), prop::collection::vec(any::<u8>(), 0..300)],
    ) {
        let (Ok(org_value), Ok(request_id_value)) =
            (http::HeaderValue::from_bytes(&org), http::HeaderValue::from_bytes(&request_id))
        else {
            return Ok(()); // not representable as a header at all
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let sink = MemorySink::new();
            let publisher = EventPublisher::builder(PublisherConfig::default())
                .build_with_transport(sink.clone());
            let response = app(publisher)
                .oneshot(
                    Request::post("/workouts")
                        .header("x-organization-id", org_value)
                        .header("x-request-id", request_id_value)
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            let org_text = std::str::from_utf8(&org).ok();
            let valid = org_text.is_some_and(satisfies_the_rule);
            if valid {
                prop_assert_eq!(response.status(), StatusCode::OK);
                let published = sink.published();
                prop_assert_eq!(published.len(), 1);
                prop_assert_eq!(published[0].organization_id().unwrap().as_str(), org_text.unwrap());
                let request_id_text = std::str::from_utf8(&request_id).ok();
                match request_id_text.filter(|id| satisfies_the_rule(id)) {
                    Some(id) => prop_assert_eq!(published[0].correlation_id(), Some(id)),
                    None => prop_assert_eq!(published[0].correlation_id(), None),
                }
            } else {
                prop_assert_eq!(response.status(), StatusCode::BAD_REQUEST);
                let body = body_json(response).await;
                prop_assert_eq!(&body["header"], "x-organization-id");
                prop_assert_eq!(sink.count(), 0);
            }
            Ok(())
        })?;
    }
}

/// An organization header holding an invisible character (zero-width space, byte order
/// mark, word joiner: it displays as another tenant's id) is 400 naming the header and
/// the character; nothing is published (issue 19).
#[tokio::test]
async fn an_invisible_character_in_the_organization_header_is_400_naming_it() {
    let sink = MemorySink::new();
    let publisher =
        EventPublisher::builder(PublisherConfig::default()).build_with_transport(sink.clone());
    let app = app(publisher);
    for (bad, named) in [
        ("org\u{200b}-1", "U+200B ZERO WIDTH SPACE"),
        (
            "\u{feff}org-1",
            "U+FEFF ZERO WIDTH NO-BREAK SPACE (BYTE ORDER MARK)",
        ),
        ("org\u{2060}1", "U+2060 WORD JOINER"),
        ("org\u{200d}1", "U+200D ZERO WIDTH JOINER"),
    ] {
        let response = app.clone().oneshot(post_as(bad)).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad:?}");
        let body = body_json(response).await;
        assert_eq!(body["header"], "x-organization-id", "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(named), "{bad:?}: {message}");
        assert!(OrganizationId::parse(bad).is_err(), "{bad:?}");
    }
    assert_eq!(sink.count(), 0);
    let response = app.oneshot(post_as("org-1")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(sink.count(), 1);
}

/// A request with two `X-Organization-Id` headers — even two valid ones, even the same
/// one twice — is 400 naming the header: never silently the first (issue 19).
#[tokio::test]
async fn a_duplicated_organization_header_is_400_naming_it() {
    let sink = MemorySink::new();
    let publisher =
        EventPublisher::builder(PublisherConfig::default()).build_with_transport(sink.clone());
    let app = app(publisher);
    for (first, second) in [("org-1", "org-2"), ("org-1", "org-1"), ("org-1", " ")] {
        let request = Request::post("/workouts")
            .header("x-organization-id", first)
            .header("X-Organization-Id", second)
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::BAD_REQUEST,
            "{first:?} {second:?}"
        );
        let body = body_json(response).await;
        assert_eq!(body["error"], "invalid_header", "{body}");
        assert_eq!(body["header"], "x-organization-id", "{body}");
        assert_eq!(
            body["message"], "invalid x-organization-id header: is given more than once",
            "{body}"
        );
    }
    assert_eq!(sink.count(), 0);
    let response = app.oneshot(post_as("org-1")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(sink.count(), 1);
}

//! The original Python library's documented calls, each as its Rust equivalent written in
//! docs/migration.md ("Migrating from the Python library"), against the real broker; and the
//! unknown-field policy (`reject` names the field, `forward` keeps it in the body).

mod support;

use std::{collections::HashSet, time::Duration};

use fitviz_events::{
    ErrorKind, Event, EventPublisher, OrganizationId, PublishError, PublisherConfig,
    schema::UnknownFields,
};
use serde_json::{Value, json};

/// The messages in the fixture's queue, as JSON bodies.
async fn bodies(fx: &support::Fixture) -> Vec<Value> {
    fx.drain()
        .await
        .into_iter()
        .map(|(body, _)| serde_json::from_slice(&body).expect("a JSON body"))
        .collect()
}

/// `get_current_org_id()` of the Python example.
fn get_current_org_id() -> Option<String> {
    Some("org-from-getter".to_owned())
}

/// `EventPublisher(rabbitmq_url=..., organization_id_getter=lambda: get_current_org_id())`
/// then `success = publisher.publish("workout.created", {"workout_id": "123", "title":
/// "Morning Yoga"})`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_with_an_organization_getter_returns_true() {
    require_broker!();
    let fx = support::Fixture::new("py_getter", "#").await;

    let publisher = EventPublisher::builder(fx.config())
        .organization_source(|| get_current_org_id().and_then(|id| OrganizationId::parse(&id).ok()))
        .connect()
        .await
        .unwrap();
    let success = publisher
        .try_publish_json(
            "workout.created",
            json!({"workout_id": "123", "title": "Morning Yoga"}),
            None,
        )
        .await;
    assert!(success);
    // The same call, returning the receipt or the error.
    publisher
        .publish_json(
            "workout.created",
            json!({"workout_id": "124", "title": "Evening Yoga"}),
            None,
        )
        .await
        .unwrap();
    publisher.close().await;

    let bodies = bodies(&fx).await;
    assert_eq!(bodies.len(), 2);
    for body in &bodies {
        assert_eq!(body["organization_id"], "org-from-getter");
        assert_eq!(body["event_type"], "workout.created");
        assert_eq!(body["version"], 1);
    }
    assert_eq!(
        bodies[0]["data"],
        json!({"workout_id": "123", "title": "Morning Yoga"})
    );
    fx.cleanup().await;
}

tokio::task_local! {
    /// Flask's `g`: the organization of the request being handled.
    static REQUEST_ORG: Option<OrganizationId>;
}

/// In Flask: `app.extensions['event_publisher'].publish("workout.created", data)` with
/// `organization_id_getter=lambda: g.get('organization_id')`. The Rust equivalent of `g`
/// is a task-local set per request (or, in axum, the `Publisher` extractor).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_with_a_request_scoped_getter() {
    require_broker!();
    let fx = support::Fixture::new("py_flask", "#").await;
    let publisher = EventPublisher::builder(fx.config())
        .organization_source(|| REQUEST_ORG.try_with(Clone::clone).ok().flatten())
        .connect()
        .await
        .unwrap();

    // Two "requests" of two organizations.
    for org in ["org-a", "org-b"] {
        let publisher = publisher.clone();
        let ok = REQUEST_ORG
            .scope(OrganizationId::parse(org).ok(), async move {
                let data = json!({"workout_id": "w-1", "title": "Spin"});
                publisher
                    .try_publish_json("workout.created", data, None)
                    .await
            })
            .await;
        assert!(ok, "{org}");
    }
    // Outside a request, no organization: refused, and the bool says so.
    let outside = publisher
        .try_publish_json("workout.created", json!({"workout_id": "w-2"}), None)
        .await;
    assert!(!outside);
    publisher.close().await;

    let orgs: Vec<Value> = bodies(&fx)
        .await
        .into_iter()
        .map(|b| b["organization_id"].clone())
        .collect();
    assert_eq!(orgs, [json!("org-a"), json!("org-b")]);
    fx.cleanup().await;
}

/// `with EventPublisher(rabbitmq_url=...) as publisher: publisher.publish("event.type",
/// {"data": "value"})` — a type with no schema and no organization. Refused by default
/// (`allow_unregistered` is off, the type has no organization); succeeds once allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_type_without_a_schema() {
    require_broker!();
    let fx = support::Fixture::new("py_with", "#").await;

    // As configured by default: refused before any I/O.
    let strict = EventPublisher::connect(fx.config()).await.unwrap();
    let err = strict
        .publish_json("event.type", json!({"data": "value"}), None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation, "{err}");
    assert!(
        err.to_string().contains("not a registered event type"),
        "{err}"
    );
    assert!(
        !strict
            .try_publish_json("event.type", json!({"data": "value"}), None)
            .await
    );
    strict.close().await;

    // The migration's equivalent: allow unregistered types, and say this one has no
    // organization. `close()` is the end of the `with` block.
    let config = PublisherConfig {
        allow_unregistered: true,
        ..fx.config()
    };
    let publisher = EventPublisher::builder(config)
        .organization_less("event.type")
        .connect()
        .await
        .unwrap();
    assert!(
        publisher
            .try_publish_json("event.type", json!({"data": "value"}), None)
            .await
    );
    let report = publisher.close().await;
    assert!(report.unsent.is_empty());

    let bodies = bodies(&fx).await;
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0]["data"], json!({"data": "value"}));
    assert_eq!(bodies[0]["organization_id"], Value::Null);
    assert_eq!(bodies[0]["version"], 1);
    fx.cleanup().await;
}

/// `async_publish(event_type, data, organization_id)` then `close()`: queued at once,
/// published in the background, flushed by `close`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_publish_and_close() {
    require_broker!();
    let fx = support::Fixture::new("py_async", "#").await;
    let publisher = EventPublisher::connect(fx.config()).await.unwrap();
    let mut ids = HashSet::new();
    for i in 0..5 {
        let event = Event::from_json(
            "workout.created",
            json!({"workout_id": format!("w-{i}"), "title": "Morning Yoga"}),
        )
        .with_organization("org-42");
        ids.insert(event.id().to_string());
        publisher.spawn(event).await.unwrap();
    }
    let report = publisher.close().await;
    assert_eq!(report.published, 5);
    assert!(report.unsent.is_empty());
    assert!(publisher.is_closed());
    // After close: refused, `false` from the bool variant.
    assert!(
        !publisher
            .try_publish_json("workout.created", json!({"workout_id": "late"}), None)
            .await
    );
    let (seen, _) = support::consume_ids(&fx.channel, &fx.queue, &ids).await;
    assert_eq!(seen, ids);
    fx.cleanup().await;
}

/// The original settings — `rabbitmq_url`, `exchange_name`, `retry_attempts`,
/// `retry_delay`, `enable_validation`, connection timeout and heartbeat — as
/// `PublisherConfig` fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_settings() {
    require_broker!();
    let fx = support::Fixture::new("py_settings", "#").await;
    let config = PublisherConfig {
        url: support::broker_url().parse().unwrap(), // rabbitmq_url
        exchange: fx.exchange.clone(),               // exchange_name
        retry_attempts: 3,                           // retry_attempts
        retry_base_delay: Duration::from_secs(1),    // retry_delay
        validation: false,                           // enable_validation=False
        connection_timeout: Duration::from_secs(10), // connection timeout
        heartbeat: Duration::from_secs(600),         // heartbeat
        ..fx.config()
    };
    let publisher = EventPublisher::connect(config).await.unwrap();
    // Validation off: a payload the schema would refuse is published as given.
    assert!(
        publisher
            .try_publish_json(
                "workout.created",
                json!({"anything": true}),
                Some(OrganizationId::parse("org-1").unwrap())
            )
            .await
    );
    publisher.close().await;
    assert_eq!(bodies(&fx).await[0]["data"], json!({"anything": true}));
    fx.cleanup().await;
}

/// `EventValidationError`, `ConnectionError`, `EventPublishError`: one `PublishError`
/// whose `kind()` says which; "failures return False": `try_publish_json`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_exceptions_and_false() {
    require_broker!();
    let fx = support::Fixture::new("py_errors", "#").await;
    let publisher = EventPublisher::connect(fx.config()).await.unwrap();
    let org = Some(OrganizationId::parse("org-1").unwrap());

    // EventValidationError
    let err: PublishError = publisher
        .publish_json("workout.created", json!({"title": "no id"}), org.clone())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
    assert!(
        err.to_string().contains("missing field `workout_id`"),
        "{err}"
    );
    assert!(
        !publisher
            .try_publish_json("workout.created", json!({"title": "no id"}), org.clone())
            .await
    );
    publisher.close().await;

    // ConnectionError: nothing listens on the port.
    let config = PublisherConfig {
        url: "amqp://guest:guest@127.0.0.1:1/%2f".parse().unwrap(),
        connection_timeout: Duration::from_millis(500),
        ..fx.config()
    };
    let err = EventPublisher::connect(config).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(fx.drain().await.is_empty());
    fx.cleanup().await;
}

/// Unknown fields: `forward` (the default) publishes them unchanged; `reject` refuses the
/// event, naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_field_policy() {
    require_broker!();
    let fx = support::Fixture::new("py_unknown", "#").await;
    let org = || Some(OrganizationId::parse("org-1").unwrap());
    let data = json!({"workout_id": "123", "title": "Morning Yoga", "mood": "calm"});

    let forward = EventPublisher::connect(fx.config()).await.unwrap();
    forward
        .publish_json("workout.created", data.clone(), org())
        .await
        .unwrap();
    forward.close().await;
    let bodies = bodies(&fx).await;
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0]["data"], data, "forwarded unchanged");

    let config = PublisherConfig {
        unknown_fields: UnknownFields::Reject,
        ..fx.config()
    };
    let reject = EventPublisher::connect(config).await.unwrap();
    let err = reject
        .publish_json("workout.created", data.clone(), org())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
    let violation = &err.validation_error().unwrap().violations()[0];
    assert_eq!(violation.field, "data");
    assert!(
        violation.message.starts_with("unknown field `mood`"),
        "{violation:?}"
    );
    // Known fields only: accepted under `reject` too.
    reject
        .publish_json(
            "workout.created",
            json!({"workout_id": "123", "title": "Morning Yoga"}),
            org(),
        )
        .await
        .unwrap();
    reject.close().await;
    assert_eq!(fx.queue_len().await, 1);
    fx.cleanup().await;
}

/// The Flask view `app.extensions['event_publisher'].publish("workout.created",
/// request.json)` with the organization from the request, as an axum handler taking the
/// `Publisher` extractor (the organization put into the request by the auth middleware).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flask_view_as_an_axum_handler() {
    use axum::{
        Json, Router, body::Body, extract::Request, http::StatusCode, middleware::Next,
        response::Response, routing::post,
    };
    use fitviz_events::http::{EventPublishLayer, Publisher};
    use tower::ServiceExt;

    async fn auth(mut request: Request, next: Next) -> Response {
        let org = request
            .headers()
            .get("x-organization-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| OrganizationId::parse(v).ok());
        if let Some(org) = org {
            request.extensions_mut().insert(org);
        }
        next.run(request).await
    }

    async fn create_workout(publisher: Publisher, Json(data): Json<Value>) -> StatusCode {
        match publisher.try_publish_json("workout.created", data).await {
            true => StatusCode::CREATED,
            false => StatusCode::ACCEPTED, // the original view went on when publish was False
        }
    }

    require_broker!();
    let fx = support::Fixture::new("py_view", "#").await;
    let publisher = EventPublisher::connect(fx.config()).await.unwrap();
    let app = Router::new()
        .route("/workouts", post(create_workout))
        .layer(EventPublishLayer::new(publisher.clone()))
        .layer(axum::middleware::from_fn(auth));
    let request = |body: Value| {
        Request::post("/workouts")
            .header("content-type", "application/json")
            .header("x-organization-id", "org-view")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let ok = app
        .clone()
        .oneshot(request(
            json!({"workout_id": "123", "title": "Morning Yoga"}),
        ))
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::CREATED);
    let refused = app
        .oneshot(request(json!({"title": "no id"})))
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::ACCEPTED);
    publisher.close().await;
    let bodies = bodies(&fx).await;
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0]["organization_id"], "org-view");
    assert_eq!(bodies[0]["data"]["title"], "Morning Yoga");
    fx.cleanup().await;
}

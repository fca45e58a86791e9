//! Axum and plain-Tower HTTP integration: the layer, the extractor, organization and
//! correlation ids from the request, error mapping — in-process, with the real broker.

mod support;

use std::{collections::HashMap, time::Duration};

use axum::{
    Json, Router,
    body::Body,
    extract::Request,
    http::StatusCode,
    middleware::{self, Next},
    response::Response,
    routing::post,
};
use fitviz_events::testing::Example;
use fitviz_events::{
    Event, EventPublisher, OrganizationId, PublishError,
    events::WorkoutCreated,
    http::{EventPublishLayer, Publisher},
};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

/// A toy auth middleware: the organization comes from `x-organization-id`.
async fn auth(mut request: Request, next: Next) -> Response {
    if let Some(org) = request
        .headers()
        .get("x-organization-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| OrganizationId::parse(v).ok())
    {
        request.extensions_mut().insert(org);
    }
    next.run(request).await
}

async fn create_workout(
    publisher: Publisher,
    Json(body): Json<Value>,
) -> Result<Json<Value>, PublishError> {
    let mut workout = WorkoutCreated::example();
    if let Some(id) = body["workout_id"].as_str() {
        workout.workout_id = id.to_owned();
    }
    if let Some(minutes) = body["duration_minutes"].as_u64() {
        workout.duration_minutes = Some(minutes as u32);
    }
    let mut event = Event::new(workout);
    if let Some(org) = body["organization_id"].as_str() {
        event = event.with_organization(org);
    }
    let receipt = publisher.publish(event).await?;
    Ok(Json(json!({ "event_id": receipt.event_id })))
}

async fn try_create(publisher: Publisher) -> Json<Value> {
    let published = publisher.try_publish(WorkoutCreated::example()).await;
    Json(json!({ "published": published }))
}

fn app(publisher: EventPublisher) -> Router {
    Router::new()
        .route("/workouts", post(create_workout))
        .route("/workouts/try", post(try_create))
        .layer(EventPublishLayer::new(publisher))
        .layer(middleware::from_fn(auth))
}

fn post_json(path: &str, org: Option<&str>, request_id: Option<&str>, body: Value) -> Request {
    let mut builder = Request::post(path).header("content-type", "application/json");
    if let Some(org) = org {
        builder = builder.header("x-organization-id", org);
    }
    if let Some(id) = request_id {
        builder = builder.header("x-request-id", id);
    }
    builder.body(Body::from(body.to_string())).unwrap()
}

async fn body_json(response: Response) -> Value {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_publishes_with_the_requests_organization_and_correlation_id() {
    require_broker!();
    let fx = support::Fixture::new("axum_org", "#").await;
    let publisher = EventPublisher::connect(fx.config()).await.unwrap();
    let app = app(publisher.clone());

    let response = app
        .clone()
        .oneshot(post_json(
            "/workouts",
            Some("org-7"),
            Some("req-1"),
            json!({"workout_id": "w-1"}),
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let event_id = body_json(response).await["event_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let messages = fx.drain().await;
    assert_eq!(messages.len(), 1);
    let body: Value = serde_json::from_slice(&messages[0].0).unwrap();
    assert_eq!(body["event_id"], event_id);
    assert_eq!(body["organization_id"], "org-7");
    assert_eq!(body["correlation_id"], "req-1");
    assert_eq!(body["data"]["workout_id"], "w-1");

    // An explicit organization that differs from the request's is refused.
    let response = app
        .clone()
        .oneshot(post_json(
            "/workouts",
            Some("org-7"),
            None,
            json!({"organization_id": "org-8"}),
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = body_json(response).await;
    assert_eq!(body["error"], "organization_mismatch", "{body}");

    // No organization at all: a clear error, no event without a tenant.
    let response = app
        .clone()
        .oneshot(post_json("/workouts", None, None, json!({})))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body_json(response).await["error"], "missing_organization");

    // Validation: 422 naming the field.
    let response = app
        .clone()
        .oneshot(post_json(
            "/workouts",
            Some("org-7"),
            None,
            json!({"duration_minutes": 0}),
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body = body_json(response).await;
    assert_eq!(body["violations"][0]["field"], "duration_minutes", "{body}");

    assert_eq!(
        fx.queue_len().await,
        0,
        "rejected events reached the broker"
    );
    publisher.close().await;
    fx.cleanup().await;
}

#[tokio::test]
async fn missing_layer_is_a_500_that_names_the_layer() {
    let app = Router::new().route("/workouts", post(create_workout));
    let response = app
        .oneshot(post_json("/workouts", Some("org-1"), None, json!({})))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = body_json(response).await;
    assert_eq!(
        body,
        Value::String(fitviz_events::axum::MISSING_LAYER_MESSAGE.into())
    );
    assert!(body.as_str().unwrap().contains("EventPublishLayer"));
}

#[tokio::test]
async fn optional_publisher_is_none_without_the_layer() {
    async fn handler(publisher: Option<Publisher>) -> String {
        publisher.is_some().to_string()
    }
    let app = Router::new().route("/", post(handler));
    let response = app
        .oneshot(Request::post("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(body_json(response).await, Value::Bool(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_unreachable_gives_503_within_the_deadline_and_try_publish_still_answers() {
    // A closed port: nothing listens there.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let config = fitviz_events::PublisherConfig {
        url: format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
            .parse()
            .unwrap(),
        confirm_timeout: Duration::from_millis(300),
        publish_timeout: Duration::from_millis(800),
        retry_base_delay: Duration::from_millis(10),
        retry_max_delay: Duration::from_millis(50),
        ..Default::default()
    };
    // The exchange cannot be declared, so build the publisher without connecting.
    let transport = fitviz_events::transport::AmqpPublish::new(&config).unwrap();
    let publisher = EventPublisher::builder(config).build_with_transport(transport);
    let app = app(publisher);

    let started = std::time::Instant::now();
    let response = app
        .clone()
        .oneshot(post_json("/workouts", Some("org-1"), None, json!({})))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "5");
    let body = body_json(response).await;
    assert_eq!(body["error"], "event_bus_unavailable");
    assert!(
        !body["message"].as_str().unwrap().contains("guest:guest"),
        "{body}"
    );

    let started = std::time::Instant::now();
    let response = app
        .oneshot(post_json("/workouts/try", Some("org-1"), None, json!({})))
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_json(response).await["published"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tower_http_service_without_axum() {
    require_broker!();
    let fx = support::Fixture::new("plain_tower", "#").await;
    let publisher = EventPublisher::connect(fx.config()).await.unwrap();
    let svc = tower::ServiceBuilder::new()
        .layer(
            EventPublishLayer::new(publisher.clone()).organization_from(|parts| {
                parts
                    .headers
                    .get("x-tenant")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| OrganizationId::parse(v).ok())
            }),
        )
        .service(tower::service_fn(|req: http::Request<String>| async move {
            let publisher = req.extensions().get::<Publisher>().cloned().expect("layer");
            let receipt = publisher.publish(WorkoutCreated::example()).await?;
            Ok::<_, PublishError>(http::Response::new(receipt.event_id.to_string()))
        }));
    let request = http::Request::builder()
        .header("x-tenant", "org-plain")
        .header("x-request-id", "r-77")
        .body(String::new())
        .unwrap();
    let response = svc.oneshot(request).await.unwrap();
    let messages = fx.drain().await;
    let body: Value = serde_json::from_slice(&messages[0].0).unwrap();
    assert_eq!(body["event_id"], response.into_body());
    assert_eq!(body["organization_id"], "org-plain");
    assert_eq!(body["correlation_id"], "r-77");
    publisher.close().await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_concurrent_requests_keep_their_own_organization() {
    require_broker!();
    let fx = support::Fixture::new("axum_many", "#").await;
    let publisher = EventPublisher::connect(fx.config()).await.unwrap();
    let app = app(publisher.clone());
    let mut tasks = Vec::new();
    for i in 0..2000 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let (org, req) = (format!("org-{}", i % 97), format!("req-{i}"));
            let response = app
                .oneshot(post_json(
                    "/workouts",
                    Some(&org),
                    Some(&req),
                    json!({"workout_id": format!("w-{i}")}),
                ))
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let id = body_json(response).await["event_id"]
                .as_str()
                .unwrap()
                .to_owned();
            (id, (org, req, format!("w-{i}")))
        }));
    }
    let mut expected = HashMap::new();
    for task in tasks {
        let (id, meta) = task.await.unwrap();
        expected.insert(id, meta);
    }
    let messages = fx.drain().await;
    assert_eq!(messages.len(), 2000);
    for (body, _) in messages {
        let body: Value = serde_json::from_slice(&body).unwrap();
        let (org, req, workout) = &expected[body["event_id"].as_str().unwrap()];
        assert_eq!(body["organization_id"], org.as_str());
        assert_eq!(body["correlation_id"], req.as_str());
        assert_eq!(body["data"]["workout_id"], workout.as_str());
    }
    publisher.close().await;
    fx.cleanup().await;
}

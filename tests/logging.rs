//! Credentials never appear in logs or `Debug` output, even when connecting fails.

mod support;

use std::time::Duration;

use fitviz_events::testing::Example;
use fitviz_events::{Event, EventPublisher, PublisherConfig, events::WorkoutCreated};
use support::Captured;

const PASSWORD: &str = "s3cr3t-Pa55word";

#[test]
fn the_password_appears_in_no_log_line_and_no_debug_output() {
    let captured = Captured::default();
    let _guard = tracing::subscriber::set_default(captured.subscriber(tracing::Level::TRACE));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Nothing listens on this port: every connect fails and is logged.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("amqp://fitviz:{PASSWORD}@127.0.0.1:{port}/%2f");
        let config = PublisherConfig {
            url: url.parse().unwrap(),
            confirm_timeout: Duration::from_millis(200),
            publish_timeout: Duration::from_millis(600),
            retry_base_delay: Duration::from_millis(10),
            retry_max_delay: Duration::from_millis(20),
            ..Default::default()
        };
        let debug = format!("{config:?}");
        assert!(!debug.contains(PASSWORD), "{debug}");
        assert!(debug.contains("***"), "{debug}");

        let err = EventPublisher::connect(config.clone()).await.unwrap_err();
        assert!(!format!("{err} {err:?}").contains(PASSWORD));

        let transport = fitviz_events::transport::AmqpPublish::new(&config).unwrap();
        assert!(!format!("{transport:?}").contains(PASSWORD));
        let publisher = EventPublisher::builder(config).build_with_transport(transport);
        assert!(!format!("{publisher:?}").contains(PASSWORD));
        for _ in 0..3 {
            assert!(
                !publisher
                    .try_publish(Event::new(WorkoutCreated::example()).with_organization("o"))
                    .await
            );
        }
        let err = publisher
            .publish(Event::new(WorkoutCreated::example()).with_organization("o"))
            .await
            .unwrap_err();
        assert!(!format!("{err} {err:?}").contains(PASSWORD));
        publisher.close().await;
    });

    let logs = captured.text();
    assert!(
        logs.contains("event not published"),
        "the failures were logged:\n{logs}"
    );
    assert!(
        !logs.contains(PASSWORD),
        "the password leaked into the logs:\n{logs}"
    );
}

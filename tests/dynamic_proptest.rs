//! Arbitrary input into the dynamic publish path never panics: every call ends in a
//! receipt or a `PublishError`, and a rejected event is never handed to the transport.

use fitviz_events::{
    ErrorKind, Event, EventPublisher, PublisherConfig, events::BUILTIN_EVENT_TYPES,
    testing::MemorySink,
};
use proptest::prelude::*;
use serde_json::Value;

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,16}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_event_type() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(BUILTIN_EVENT_TYPES.to_vec()).prop_map(str::to_owned),
        "[a-z]{1,8}\\.[a-z]{1,8}",
        ".{0,300}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn dynamic_publish_never_panics(
        event_type in arb_event_type(),
        data in arb_json(),
        org in ".{0,300}",
        correlation in ".{0,300}",
        source in ".{0,300}",
        allow_unregistered in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let sink = MemorySink::new();
            let config = PublisherConfig { allow_unregistered, ..Default::default() };
            let publisher = EventPublisher::builder(config).build_with_transport(sink.clone());
            let event = Event::from_json(event_type.clone(), data)
                .with_organization(org)
                .with_correlation_id(correlation)
                .with_source(source);
            match publisher.publish(event).await {
                Ok(receipt) => {
                    let published = sink.published();
                    prop_assert_eq!(published.len(), 1);
                    prop_assert_eq!(published[0].id(), receipt.event_id);
                }
                Err(error) => {
                    prop_assert!(matches!(error.kind(), ErrorKind::Validation | ErrorKind::MissingOrganization), "{:?}", error);
                    prop_assert!(!error.to_string().is_empty());
                    prop_assert_eq!(sink.count(), 0, "a rejected event reached the transport");
                }
            }
            Ok(())
        })?;
    }
}

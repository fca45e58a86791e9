use std::time::Duration;

use proptest::prelude::*;

use super::{
    BrokerUrl, ConfigError, ENV_PREFIX, PublisherConfig, UnroutablePolicy, env,
    names::{self, keys, var},
    tls::tests::Files,
    url::{redact, redact_raw},
};

const PW: &str = "s3cretPassw0rd";

fn env_err(vars: &[(&str, &str)]) -> ConfigError {
    PublisherConfig::from_vars(vars.iter().copied()).unwrap_err()
}

/// Every variable, in the order of the fields.
fn all_vars() -> Vec<String> {
    keys().iter().map(|key| var(key)).collect()
}

fn url(raw: &str) -> BrokerUrl {
    raw.parse().unwrap()
}

/// Every rendering of a config or error that could reach a log.
fn assert_hidden(text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(!text.contains(secret), "`{secret}` leaked in {text}");
    }
}

#[test]
fn defaults() {
    let c = PublisherConfig::default();
    assert_eq!(
        c.url.expose_secret(),
        "amqp://guest:guest@127.0.0.1:5672/%2f"
    );
    assert_eq!(c.redacted_url(), "amqp://guest:***@127.0.0.1:5672/%2f");
    assert_eq!(c.exchange, "fitviz.events");
    assert!(c.declare_exchange);
    assert_eq!(c.source, "fitviz-service");
    assert_eq!(c.pool_size, 4);
    assert_eq!(c.max_in_flight, 256);
    assert_eq!(c.confirm_timeout, Duration::from_secs(5));
    assert_eq!(c.publish_timeout, Duration::from_secs(15));
    assert_eq!(c.retry_attempts, 5);
    assert_eq!(c.retry_base_delay, Duration::from_millis(100));
    assert_eq!(c.retry_max_delay, Duration::from_secs(2));
    assert!(c.validation);
    assert!(!c.allow_unregistered);
    assert_eq!(c.unknown_fields, crate::UnknownFields::Forward);
    assert_eq!(c.heartbeat, Duration::from_secs(10));
    assert_eq!(c.connection_timeout, Duration::from_secs(5));
    assert_eq!(c.pool_wait_timeout, Duration::from_secs(1));
    assert_eq!(c.connection_name, None);
    assert_eq!(c.breaker_failure_threshold, 5);
    assert_eq!(c.breaker_open_duration, Duration::from_secs(5));
    assert_eq!(c.detached_capacity, 10_000);
    assert_eq!(c.detached_concurrency, 64);
    assert_eq!(c.detached_overflow_wait, Duration::ZERO);
    assert_eq!(c.detached_redelivery_base_delay, Duration::from_millis(200));
    assert_eq!(c.detached_redelivery_max_delay, Duration::from_secs(5));
    assert_eq!(c.tls_ca_file, None);
    assert!(c.tls_builtin_roots);
    assert_eq!(c.tls_cert_file, None);
    assert_eq!(c.tls_key_file, None);
    assert_eq!(c.tls_server_name, None);
    assert_eq!(
        c.amqp_uris().remove(0),
        "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=10&connection_timeout=5000"
    );
    c.validate().unwrap();
    assert_eq!(BrokerUrl::default(), c.url);

    let no_vars: [(&str, &str); 0] = [];
    assert_eq!(PublisherConfig::from_vars(no_vars).unwrap(), c);
    let unrelated = [
        ("HOME", "/root"),
        ("FITVIZ_EVENTS_UNKNOWN", "x"),
        ("fitviz_events_pool_size", "abc"),
        ("FITVIZ_EVENTS_pool_size", "abc"),
        ("FITVIZ_EVENTS_", "x"),
    ];
    assert_eq!(PublisherConfig::from_vars(unrelated).unwrap(), c);
    assert_eq!(serde_json::from_str::<PublisherConfig>("{}").unwrap(), c);
}

#[test]
fn every_variable_is_read() {
    let files = Files::new();
    let [ca, cert, key] = [&files.ca, &files.cert, &files.key].map(|p| p.to_str().unwrap());
    let vars = [
        (
            "FITVIZ_EVENTS_URL",
            "amqps://svc:pw@rabbit.example:5671/fitviz",
        ),
        ("FITVIZ_EVENTS_EXCHANGE", "fitviz.billing"),
        ("FITVIZ_EVENTS_DECLARE_EXCHANGE", "no"),
        ("FITVIZ_EVENTS_UNROUTABLE", "Ignore"),
        ("FITVIZ_EVENTS_SOURCE", "billing-api"),
        ("FITVIZ_EVENTS_POOL_SIZE", "16"),
        ("FITVIZ_EVENTS_MAX_IN_FLIGHT", "1000"),
        ("FITVIZ_EVENTS_MAX_IN_FLIGHT_PER_ORGANIZATION_PERCENT", "10"),
        ("FITVIZ_EVENTS_CONFIRM_TIMEOUT_MS", "2500"),
        ("FITVIZ_EVENTS_PUBLISH_TIMEOUT_MS", "30000"),
        ("FITVIZ_EVENTS_RETRY_ATTEMPTS", "0"),
        ("FITVIZ_EVENTS_RETRY_BASE_DELAY_MS", "50"),
        ("FITVIZ_EVENTS_RETRY_MAX_DELAY_MS", "50"),
        ("FITVIZ_EVENTS_VALIDATION", "OFF"),
        ("FITVIZ_EVENTS_ALLOW_UNREGISTERED", "True"),
        ("FITVIZ_EVENTS_UNKNOWN_FIELDS", "Reject"),
        ("FITVIZ_EVENTS_HEARTBEAT_SECS", "30"),
        ("FITVIZ_EVENTS_CONNECTION_TIMEOUT_MS", "750"),
        ("FITVIZ_EVENTS_POOL_WAIT_TIMEOUT_MS", "0"),
        ("FITVIZ_EVENTS_CONNECTION_NAME", "billing-api@pod-7"),
        ("FITVIZ_EVENTS_BREAKER_FAILURE_THRESHOLD", "12"),
        ("FITVIZ_EVENTS_BREAKER_OPEN_MS", "1000"),
        ("FITVIZ_EVENTS_DETACHED_CAPACITY", "500"),
        ("FITVIZ_EVENTS_DETACHED_CONCURRENCY", "8"),
        (
            "FITVIZ_EVENTS_DETACHED_SHARE_PER_ORGANIZATION_PERCENT",
            "100",
        ),
        ("FITVIZ_EVENTS_DETACHED_OVERFLOW_WAIT_MS", "250"),
        ("FITVIZ_EVENTS_DETACHED_REDELIVERY_BASE_DELAY_MS", "10"),
        ("FITVIZ_EVENTS_DETACHED_REDELIVERY_MAX_DELAY_MS", "60000"),
        ("FITVIZ_EVENTS_MAX_BODY_BYTES", "65536"),
        ("FITVIZ_EVENTS_TLS_CA_FILE", ca),
        ("FITVIZ_EVENTS_TLS_BUILTIN_ROOTS", "no"),
        ("FITVIZ_EVENTS_TLS_CERT_FILE", cert),
        ("FITVIZ_EVENTS_TLS_KEY_FILE", key),
        ("FITVIZ_EVENTS_TLS_SERVER_NAME", "rabbit.internal"),
    ];
    // The table above covers every variable once.
    let mut names: Vec<&str> = vars.iter().map(|(k, _)| *k).collect();
    names.sort_unstable();
    let mut all = all_vars();
    all.sort_unstable();
    assert_eq!(names, all);

    let c = PublisherConfig::from_vars(vars).unwrap();
    let expected = PublisherConfig {
        url: url("amqps://svc:pw@rabbit.example:5671/fitviz"),
        exchange: "fitviz.billing".into(),
        declare_exchange: false,
        unroutable: UnroutablePolicy::Ignore,
        source: "billing-api".into(),
        pool_size: 16,
        max_in_flight: 1000,
        max_in_flight_per_organization_percent: 10,
        confirm_timeout: Duration::from_millis(2500),
        publish_timeout: Duration::from_secs(30),
        retry_attempts: 0,
        retry_base_delay: Duration::from_millis(50),
        retry_max_delay: Duration::from_millis(50),
        validation: false,
        allow_unregistered: true,
        unknown_fields: crate::UnknownFields::Reject,
        heartbeat: Duration::from_secs(30),
        connection_timeout: Duration::from_millis(750),
        pool_wait_timeout: Duration::ZERO,
        connection_name: Some("billing-api@pod-7".into()),
        breaker_failure_threshold: 12,
        breaker_open_duration: Duration::from_secs(1),
        detached_capacity: 500,
        detached_concurrency: 8,
        detached_share_per_organization_percent: 100,
        detached_overflow_wait: Duration::from_millis(250),
        detached_redelivery_base_delay: Duration::from_millis(10),
        detached_redelivery_max_delay: Duration::from_secs(60),
        max_body_bytes: 65_536,
        tls_ca_file: Some(files.ca.clone()),
        tls_builtin_roots: false,
        tls_cert_file: Some(files.cert.clone()),
        tls_key_file: Some(files.key.clone()),
        tls_server_name: Some("rabbit.internal".into()),
    };
    assert_eq!(c, expected);
    assert_eq!(
        c.amqp_uris().remove(0),
        "amqps://svc:pw@rabbit.example:5671/fitviz?heartbeat=30&connection_timeout=750"
    );
}

#[test]
fn booleans_accept_every_spelling() {
    for (value, expected) in [
        ("true", true),
        ("TRUE", true),
        ("1", true),
        ("yes", true),
        ("Yes", true),
        ("on", true),
        ("ON", true),
        ("false", false),
        ("False", false),
        ("0", false),
        ("no", false),
        ("NO", false),
        ("off", false),
        ("Off", false),
    ] {
        for var in [
            "FITVIZ_EVENTS_DECLARE_EXCHANGE",
            "FITVIZ_EVENTS_VALIDATION",
            "FITVIZ_EVENTS_ALLOW_UNREGISTERED",
        ] {
            let c = PublisherConfig::from_vars([(var, value)]).unwrap();
            let got = match var {
                "FITVIZ_EVENTS_DECLARE_EXCHANGE" => c.declare_exchange,
                "FITVIZ_EVENTS_VALIDATION" => c.validation,
                _ => c.allow_unregistered,
            };
            assert_eq!(got, expected, "{var} = {value}");
        }
    }
}

#[test]
fn empty_and_blank_variables_are_unset_and_values_are_trimmed() {
    let names = all_vars();
    let mut vars: Vec<(&str, &str)> = names.iter().map(|v| (v.as_str(), "")).collect();
    vars.push(("FITVIZ_EVENTS_SOURCE", "  \t"));
    assert_eq!(
        PublisherConfig::from_vars(vars).unwrap(),
        PublisherConfig::default()
    );

    let c = PublisherConfig::from_vars([
        ("FITVIZ_EVENTS_POOL_SIZE", " 8\r\n"),
        ("FITVIZ_EVENTS_EXCHANGE", " fitviz.x "),
        ("FITVIZ_EVENTS_VALIDATION", " no "),
        ("FITVIZ_EVENTS_URL", " amqp://rabbit/ "),
    ])
    .unwrap();
    assert_eq!(c.pool_size, 8);
    assert_eq!(c.exchange, "fitviz.x");
    assert!(!c.validation);
    assert_eq!(c.url.expose_secret(), "amqp://rabbit/");

    // The last of repeated names wins, also when it is empty.
    let c = PublisherConfig::from_vars([
        ("FITVIZ_EVENTS_POOL_SIZE", "8"),
        ("FITVIZ_EVENTS_POOL_SIZE", ""),
    ])
    .unwrap();
    assert_eq!(c.pool_size, 4);
    let c = PublisherConfig::from_vars([
        ("FITVIZ_EVENTS_POOL_SIZE", "abc"),
        ("FITVIZ_EVENTS_POOL_SIZE", "8"),
    ])
    .unwrap();
    assert_eq!(c.pool_size, 8);
}

#[test]
fn every_invalid_variable_is_named() {
    let cases: &[(&str, &[&str])] = &[
        (
            "FITVIZ_EVENTS_URL",
            &[
                "not a url",
                "http://h/",
                "amqp:opaque",
                "amqp://[::1]/",
                "amqp://h:99999/",
                "amqp://h/?frame_max=x",
                "amqp://h/?auth_mechanism=magic",
            ],
        ),
        (
            "FITVIZ_EVENTS_EXCHANGE",
            &["has space", "slash/ed", "é", &"x".repeat(256), "amq.topic"],
        ),
        ("FITVIZ_EVENTS_DECLARE_EXCHANGE", &["maybe", "2", "y"]),
        ("FITVIZ_EVENTS_SOURCE", &["a\u{7}b", &"s".repeat(256)]),
        (
            "FITVIZ_EVENTS_POOL_SIZE",
            &["abc", "0", "1025", "-1", "1.5", "99999999999999999999999"],
        ),
        ("FITVIZ_EVENTS_MAX_IN_FLIGHT", &["0", "65536", "x"]),
        (
            "FITVIZ_EVENTS_CONFIRM_TIMEOUT_MS",
            &["0", "3600001", "5s", "-5"],
        ),
        (
            "FITVIZ_EVENTS_PUBLISH_TIMEOUT_MS",
            &["0", "4999", "3600001", "soon"],
        ),
        ("FITVIZ_EVENTS_RETRY_ATTEMPTS", &["21", "-1", "many"]),
        ("FITVIZ_EVENTS_RETRY_BASE_DELAY_MS", &["0", "3600001", "x"]),
        (
            "FITVIZ_EVENTS_RETRY_MAX_DELAY_MS",
            &["0", "99", "3600001", "x"],
        ),
        ("FITVIZ_EVENTS_VALIDATION", &["enabled", "t"]),
        ("FITVIZ_EVENTS_ALLOW_UNREGISTERED", &["nope"]),
        (
            "FITVIZ_EVENTS_UNKNOWN_FIELDS",
            &["ignore", "rejected", "true"],
        ),
        (
            "FITVIZ_EVENTS_HEARTBEAT_SECS",
            &["0", "65536", "10s", "1.5"],
        ),
        (
            "FITVIZ_EVENTS_CONNECTION_TIMEOUT_MS",
            &["0", "3600001", "x"],
        ),
        (
            "FITVIZ_EVENTS_POOL_WAIT_TIMEOUT_MS",
            &["3600001", "-1", "x"],
        ),
        (
            "FITVIZ_EVENTS_CONNECTION_NAME",
            &["line\nbreak", &"n".repeat(256)],
        ),
        (
            "FITVIZ_EVENTS_BREAKER_FAILURE_THRESHOLD",
            &["0", "4294967296", "x"],
        ),
        (
            "FITVIZ_EVENTS_BREAKER_OPEN_MS",
            &["999", "0", "3600001", "x"],
        ),
        ("FITVIZ_EVENTS_DETACHED_CAPACITY", &["0", "1000001", "x"]),
        (
            "FITVIZ_EVENTS_UNROUTABLE",
            &["drop", "alternate_exchange", "1"],
        ),
        (
            "FITVIZ_EVENTS_DETACHED_SHARE_PER_ORGANIZATION_PERCENT",
            &["0", "101", "-1", "x"],
        ),
        (
            "FITVIZ_EVENTS_MAX_IN_FLIGHT_PER_ORGANIZATION_PERCENT",
            &["0", "101", "256", "x"],
        ),
        ("FITVIZ_EVENTS_DETACHED_CONCURRENCY", &["0", "4097", "-1"]),
        (
            "FITVIZ_EVENTS_DETACHED_OVERFLOW_WAIT_MS",
            &["3600001", "-1", "x"],
        ),
        (
            "FITVIZ_EVENTS_DETACHED_REDELIVERY_BASE_DELAY_MS",
            &["0", "3600001", "x"],
        ),
        (
            "FITVIZ_EVENTS_DETACHED_REDELIVERY_MAX_DELAY_MS",
            &["0", "199", "3600001", "x"],
        ),
        (
            "FITVIZ_EVENTS_MAX_BODY_BYTES",
            &["0", "1023", "134217729", "1MiB", "-1"],
        ),
        // The default URL is `amqp://`: any TLS setting is an error (see `tls.rs` for more).
        ("FITVIZ_EVENTS_TLS_CA_FILE", &["/nonexistent/ca.pem"]),
        ("FITVIZ_EVENTS_TLS_BUILTIN_ROOTS", &["maybe", "false"]),
        ("FITVIZ_EVENTS_TLS_CERT_FILE", &["/nonexistent/client.pem"]),
        ("FITVIZ_EVENTS_TLS_KEY_FILE", &["/nonexistent/client.key"]),
        ("FITVIZ_EVENTS_TLS_SERVER_NAME", &["rabbit.internal"]),
    ];
    assert_eq!(cases.len(), keys().len());
    for (var, values) in cases {
        for value in *values {
            let err = PublisherConfig::from_vars([(*var, *value)])
                .expect_err(&format!("{var}={value:?} should be rejected"));
            assert_eq!(err.field(), *var, "{err}");
            let text = err.to_string();
            assert!(
                text.starts_with(&format!("{var}: expected ")) || *var == "FITVIZ_EVENTS_URL",
                "{text}"
            );
            assert!(text.ends_with('`') && text.contains(", got `"), "{text}");
            assert!(!text.contains('\n'), "{text}");
        }
    }
}

#[test]
fn env_error_messages() {
    let cases = [
        (
            ("FITVIZ_EVENTS_POOL_SIZE", "abc"),
            "FITVIZ_EVENTS_POOL_SIZE: expected an integer, got `abc`",
        ),
        (
            ("FITVIZ_EVENTS_POOL_SIZE", "0"),
            "FITVIZ_EVENTS_POOL_SIZE: expected an integer from 1 to 1024, got `0`",
        ),
        (
            ("FITVIZ_EVENTS_CONFIRM_TIMEOUT_MS", "0"),
            "FITVIZ_EVENTS_CONFIRM_TIMEOUT_MS: expected a whole number of milliseconds from 1 to 3600000, got `0`",
        ),
        (
            ("FITVIZ_EVENTS_CONFIRM_TIMEOUT_MS", "5s"),
            "FITVIZ_EVENTS_CONFIRM_TIMEOUT_MS: expected a whole number of milliseconds, got `5s`",
        ),
        (
            ("FITVIZ_EVENTS_HEARTBEAT_SECS", "0"),
            "FITVIZ_EVENTS_HEARTBEAT_SECS: expected a whole number of seconds from 1 to 65535, got `0`",
        ),
        (
            ("FITVIZ_EVENTS_HEARTBEAT_SECS", "1.5"),
            "FITVIZ_EVENTS_HEARTBEAT_SECS: expected a whole number of seconds, got `1.5`",
        ),
        (
            ("FITVIZ_EVENTS_VALIDATION", "maybe"),
            "FITVIZ_EVENTS_VALIDATION: expected true/false, 1/0, yes/no or on/off, got `maybe`",
        ),
        (
            ("FITVIZ_EVENTS_PUBLISH_TIMEOUT_MS", "1000"),
            "FITVIZ_EVENTS_PUBLISH_TIMEOUT_MS: expected at least FITVIZ_EVENTS_CONFIRM_TIMEOUT_MS (5000), got `1000`",
        ),
        (
            ("FITVIZ_EVENTS_RETRY_MAX_DELAY_MS", "99"),
            "FITVIZ_EVENTS_RETRY_MAX_DELAY_MS: expected at least FITVIZ_EVENTS_RETRY_BASE_DELAY_MS (100), got `99`",
        ),
        (
            ("FITVIZ_EVENTS_DETACHED_REDELIVERY_MAX_DELAY_MS", "199"),
            "FITVIZ_EVENTS_DETACHED_REDELIVERY_MAX_DELAY_MS: expected at least FITVIZ_EVENTS_DETACHED_REDELIVERY_BASE_DELAY_MS (200), got `199`",
        ),
        (
            ("FITVIZ_EVENTS_EXCHANGE", "amq.topic"),
            "FITVIZ_EVENTS_EXCHANGE: expected a name without the broker-reserved prefix `amq.` while FITVIZ_EVENTS_DECLARE_EXCHANGE is true, got `amq.topic`",
        ),
        (
            ("FITVIZ_EVENTS_CONNECTION_NAME", "a\nb"),
            "FITVIZ_EVENTS_CONNECTION_NAME: expected 1 to 255 bytes of text without control characters, got `a\\nb`",
        ),
        (
            ("FITVIZ_EVENTS_URL", "amqp://h/?frame_max=x"),
            "FITVIZ_EVENTS_URL: query parameter `frame_max`: expected a whole number from 0 to 4294967295, got `amqp://h/?frame_max=x`",
        ),
        (
            ("FITVIZ_EVENTS_URL", "amqp://u:p@[::1]/"),
            "FITVIZ_EVENTS_URL: expected a host name or ipv4 address, the amqp client does not support ipv6 addresses, got `amqp://u:***@[::1]/`",
        ),
    ];
    for ((var, value), expected) in cases {
        assert_eq!(env_err(&[(var, value)]).to_string(), expected);
    }
    // The first invalid variable in field order is reported, whatever the input order, and
    // a value that does not parse before one out of range.
    let err = env_err(&[
        ("FITVIZ_EVENTS_BREAKER_OPEN_MS", "1"),
        ("FITVIZ_EVENTS_POOL_SIZE", "0"),
    ]);
    assert_eq!(err.field(), "FITVIZ_EVENTS_POOL_SIZE");
    let err = env_err(&[
        ("FITVIZ_EVENTS_BREAKER_OPEN_MS", "x"),
        ("FITVIZ_EVENTS_MAX_IN_FLIGHT", "y"),
        ("FITVIZ_EVENTS_POOL_SIZE", "0"),
    ]);
    assert_eq!(err.field(), "FITVIZ_EVENTS_MAX_IN_FLIGHT");
    // `amq.*` is fine when only checking that the exchange exists.
    let c = PublisherConfig::from_vars([
        ("FITVIZ_EVENTS_EXCHANGE", "amq.topic"),
        ("FITVIZ_EVENTS_DECLARE_EXCHANGE", "false"),
    ])
    .unwrap();
    assert_eq!(c.exchange, "amq.topic");
}

#[test]
fn long_values_are_shortened_in_errors() {
    let value = "x".repeat(1000);
    for var in ["FITVIZ_EVENTS_POOL_SIZE", "FITVIZ_EVENTS_EXCHANGE"] {
        let err = env_err(&[(var, &value)]);
        assert!(err.to_string().len() < 400, "{err}");
        assert!(err.to_string().contains("…"));
    }
}

#[test]
fn validate_errors_name_file_keys() {
    let d = PublisherConfig::default;
    let ms = Duration::from_millis;
    let cases: Vec<(PublisherConfig, &str)> = vec![
        (
            PublisherConfig {
                exchange: String::new(),
                ..d()
            },
            "exchange: expected 1 to 255 letters, digits, `-`, `_`, `.` or `:`, got ``",
        ),
        (
            PublisherConfig {
                source: String::new(),
                ..d()
            },
            "source: expected 1 to 255 bytes of text without control characters, got ``",
        ),
        (
            PublisherConfig {
                pool_size: 0,
                ..d()
            },
            "pool_size: expected an integer from 1 to 1024, got `0`",
        ),
        (
            PublisherConfig {
                max_in_flight: 70_000,
                ..d()
            },
            "max_in_flight: expected an integer from 1 to 65535, got `70000`",
        ),
        (
            PublisherConfig {
                confirm_timeout: Duration::ZERO,
                ..d()
            },
            "confirm_timeout_ms: expected a whole number of milliseconds from 1 to 3600000, got `0`",
        ),
        (
            PublisherConfig {
                publish_timeout: ms(2000),
                ..d()
            },
            "publish_timeout_ms: expected at least confirm_timeout_ms (5000), got `2000`",
        ),
        (
            PublisherConfig {
                retry_attempts: 21,
                ..d()
            },
            "retry_attempts: expected an integer from 0 to 20, got `21`",
        ),
        (
            PublisherConfig {
                retry_base_delay: Duration::from_micros(10),
                ..d()
            },
            "retry_base_delay_ms: expected a whole number of milliseconds from 1 to 3600000, got `10µs`",
        ),
        (
            PublisherConfig {
                retry_max_delay: ms(50),
                ..d()
            },
            "retry_max_delay_ms: expected at least retry_base_delay_ms (100), got `50`",
        ),
        (
            PublisherConfig {
                heartbeat: ms(1500),
                ..d()
            },
            "heartbeat_secs: expected a whole number of seconds from 1 to 65535, got `1.5s`",
        ),
        (
            PublisherConfig {
                heartbeat: Duration::ZERO,
                ..d()
            },
            "heartbeat_secs: expected a whole number of seconds from 1 to 65535, got `0`",
        ),
        (
            PublisherConfig {
                connection_timeout: Duration::from_secs(7200),
                ..d()
            },
            "connection_timeout_ms: expected a whole number of milliseconds from 1 to 3600000, got `7200000`",
        ),
        (
            PublisherConfig {
                pool_wait_timeout: Duration::from_secs(3601),
                ..d()
            },
            "pool_wait_timeout_ms: expected a whole number of milliseconds from 0 to 3600000, got `3601000`",
        ),
        (
            PublisherConfig {
                connection_name: Some(String::new()),
                ..d()
            },
            "connection_name: expected 1 to 255 bytes of text without control characters, got ``",
        ),
        (
            PublisherConfig {
                breaker_failure_threshold: 0,
                ..d()
            },
            "breaker_failure_threshold: expected an integer from 1 to 4294967295, got `0`",
        ),
        (
            PublisherConfig {
                breaker_open_duration: ms(999),
                ..d()
            },
            "breaker_open_ms: expected a whole number of milliseconds from 1000 to 3600000, got `999`",
        ),
        (
            PublisherConfig {
                exchange: "amq.direct".into(),
                ..d()
            },
            "exchange: expected a name without the broker-reserved prefix `amq.` while declare_exchange is true, got `amq.direct`",
        ),
        (
            PublisherConfig {
                detached_capacity: 0,
                ..d()
            },
            "detached_capacity: expected an integer from 1 to 1000000, got `0`",
        ),
        (
            PublisherConfig {
                detached_concurrency: 5000,
                ..d()
            },
            "detached_concurrency: expected an integer from 1 to 4096, got `5000`",
        ),
        (
            PublisherConfig {
                detached_overflow_wait: Duration::from_secs(3601),
                ..d()
            },
            "detached_overflow_wait_ms: expected a whole number of milliseconds from 0 to 3600000, got `3601000`",
        ),
        (
            PublisherConfig {
                detached_redelivery_base_delay: Duration::ZERO,
                ..d()
            },
            "detached_redelivery_base_delay_ms: expected a whole number of milliseconds from 1 to 3600000, got `0`",
        ),
        (
            PublisherConfig {
                detached_redelivery_max_delay: ms(100),
                ..d()
            },
            "detached_redelivery_max_delay_ms: expected at least detached_redelivery_base_delay_ms (200), got `100`",
        ),
    ];
    for (config, expected) in cases {
        let err = config.validate().unwrap_err();
        assert_eq!(err.to_string(), expected);
        assert_eq!(Some(err.field()), expected.split(':').next());
        assert!(keys().contains(&err.field()), "{} is no key", err.field());
    }
    let err = "ftp://h/".parse::<BrokerUrl>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "url: expected scheme `amqp` or `amqps`, got `ftp://h/`"
    );
    assert_eq!(err.field(), "url");

    // Bounds are inclusive.
    let c = PublisherConfig {
        pool_size: 1024,
        max_in_flight: 65_535,
        retry_attempts: 20,
        heartbeat: Duration::from_secs(65_535),
        confirm_timeout: Duration::from_secs(3600),
        publish_timeout: Duration::from_secs(3600),
        pool_wait_timeout: Duration::ZERO,
        breaker_open_duration: Duration::from_secs(1),
        breaker_failure_threshold: u32::MAX,
        exchange: "a-b_c.d:e".into(),
        detached_capacity: 1_000_000,
        detached_concurrency: 4096,
        detached_overflow_wait: Duration::from_secs(3600),
        detached_redelivery_base_delay: ms(1),
        detached_redelivery_max_delay: ms(1),
        ..d()
    };
    c.validate().unwrap();
    assert!(c.amqp_uris().remove(0).contains("heartbeat=65535"));
    // Sub-millisecond durations in range are fine in code.
    PublisherConfig {
        confirm_timeout: Duration::from_micros(1500),
        ..d()
    }
    .validate()
    .unwrap();
}

#[test]
fn every_field_is_named_by_its_key() {
    // The key of every Rust field, through the convention `names::key_of` follows.
    for (field, key) in [
        ("url", "url"),
        ("pool_size", "pool_size"),
        ("confirm_timeout", "confirm_timeout_ms"),
        ("heartbeat", "heartbeat_secs"),
        ("breaker_open_duration", "breaker_open_ms"),
        (
            "detached_redelivery_max_delay",
            "detached_redelivery_max_delay_ms",
        ),
    ] {
        assert_eq!(names::key_of(field), key);
    }
    for key in keys() {
        assert_eq!(names::key_of_var(&var(key)), Some(*key));
        assert_eq!(var(key), format!("{ENV_PREFIX}{}", key.to_uppercase()));
    }
    assert_eq!(keys().len(), 34);
    assert_eq!(keys()[0], "url");
}

#[test]
fn redaction() {
    let raw = format!("amqp://app:{PW}@rabbit.internal:5672/fitviz");
    let c = PublisherConfig {
        url: url(&raw),
        ..Default::default()
    };
    assert_eq!(c.url.expose_secret(), raw);
    assert_eq!(
        c.redacted_url(),
        "amqp://app:***@rabbit.internal:5672/fitviz"
    );
    assert_eq!(c.url.redacted(), c.redacted_url());
    assert_eq!(c.url.to_string(), c.redacted_url());
    assert!(c.amqp_uris().remove(0).contains(PW));
    assert_hidden(&format!("{c:?}"), &[PW]);
    assert_hidden(&format!("{c:#?}"), &[PW]);
    assert_hidden(&format!("{:?}", c.url), &[PW]);
    assert!(format!("{c:?}").contains("amqp://app:***@rabbit.internal:5672/fitviz"));

    // No password: unchanged.
    assert_eq!(url("amqp://app@rabbit/v").redacted(), "amqp://app@rabbit/v");
    assert_eq!(url("amqp://rabbit").redacted(), "amqp://rabbit");

    // Percent-encoded passwords, raw and decoded.
    let c = PublisherConfig {
        url: url("amqps://app:p%40ss%3Aw%2Frd%25@rabbit/%2f"),
        ..Default::default()
    };
    assert_eq!(c.redacted_url(), "amqps://app:***@rabbit/%2f");
    assert_hidden(&format!("{c:?}"), &["p%40ss", "p@ss", "w%2Frd", "w/rd"]);

    // From the environment and from a file.
    let c = PublisherConfig::from_vars([("FITVIZ_EVENTS_URL", raw.as_str())]).unwrap();
    assert_hidden(&format!("{c:?}"), &[PW]);
    let json = format!(r#"{{"url": "{raw}"}}"#);
    let c: PublisherConfig = serde_json::from_str(&json).unwrap();
    assert_hidden(&format!("{c:?}"), &[PW]);
    assert_eq!(c.url.expose_secret(), raw);
}

#[test]
fn url_errors_never_show_the_password() {
    let cases = [
        (
            format!("amqp://app:{PW}@rabbit:notaport/%2f"),
            "amqp://app:***@rabbit:notaport/%2f",
        ),
        (format!("http://app:{PW}@rabbit/"), "http://app:***@rabbit/"),
        (format!("amqp:app:{PW}@rabbit"), "amqp:***@rabbit"),
        (format!("app:{PW}@rabbit"), "app:***@rabbit"),
        (format!("//app:{PW}@rabbit/"), "//app:***@rabbit/"),
        (format!("amqp://app:{PW}@/"), "amqp://app:***@/"),
        (
            format!("amqp://app:{PW}@[::1]:5672/"),
            "amqp://app:***@[::1]:5672/",
        ),
        (
            format!("amqp://app:{PW}@ra bbit/"),
            "amqp://app:***@ra bbit/",
        ),
        (
            format!("amqp://app:{PW}/x@rabbit/"),
            "amqp://app:***@rabbit/",
        ),
        (
            format!("amqp://app:{PW}@rabbit/?heartbeat=1&frame_max=x"),
            "amqp://app:***@rabbit/?heartbeat=1&frame_max=x",
        ),
        (
            format!("amqp://app:{PW}%ff@rabbit/"),
            "amqp://app:***@rabbit/",
        ),
        // A raw `/`, `?` or `#` in the password ends the authority: the URL would be the
        // host `app` and a virtual host, query or fragment holding the password.
        (
            format!("amqp://app:/{PW}@rabbit/%2f"),
            "amqp://app:***@rabbit/%2f",
        ),
        (
            format!("amqp://app:?{PW}@rabbit/"),
            "amqp://app:***@rabbit/",
        ),
        (
            format!("amqp://app:#{PW}@rabbit/"),
            "amqp://app:***@rabbit/",
        ),
        (
            format!("amqp://app:5/{PW}@rabbit/"),
            "amqp://app:***@rabbit/",
        ),
    ];
    for (url, shown) in cases {
        let env = env_err(&[("FITVIZ_EVENTS_URL", &url)]);
        let parsed = url.parse::<BrokerUrl>().unwrap_err();
        for err in [&env, &parsed] {
            assert_hidden(&err.to_string(), &[PW]);
            assert_hidden(&format!("{err:?}"), &[PW]);
            assert!(
                err.to_string().ends_with(&format!("got `{shown}`")),
                "{err}"
            );
        }
        assert_eq!(env.field(), "FITVIZ_EVENTS_URL");
        assert_eq!(parsed.field(), "url");
        // In a config file.
        let json = serde_json::json!({ "url": url }).to_string();
        let file = serde_json::from_str::<PublisherConfig>(&json).unwrap_err();
        assert_hidden(&file.to_string(), &[PW]);
        assert_hidden(&format!("{file:?}"), &[PW]);
        assert!(file.to_string().starts_with("url: "), "{file}");
        assert!(
            file.to_string().contains(&format!("got `{shown}`")),
            "{file}"
        );
    }
    let err = "amqp://app:p%40ss%2Fword@[::1]/"
        .parse::<BrokerUrl>()
        .unwrap_err();
    assert_hidden(&err.to_string(), &["p%40ss", "p@ss", "word"]);
}

/// A malformed percent-encoding in any part, an unknown or repeated query parameter and a
/// value the AMQP client cannot read are config errors naming the part or parameter,
/// the password hidden (issue 19: `?heartbeat=abc` and `%ZZ` were accepted silently).
#[test]
fn malformed_url_parts_and_query_parameters_are_named() {
    let number = |name: &str, max: u64| {
        format!("query parameter `{name}`: expected a whole number from 0 to {max}")
    };
    let malformed = |part: &str| {
        format!(
            "the {part} has a malformed percent-encoding (`%` must be followed by two hexadecimal digits)"
        )
    };
    let cases = [
        ("rabbit/%2f?heartbeat=abc", number("heartbeat", 65_535)),
        ("rabbit/%2f?heartbeat=65536", number("heartbeat", 65_535)),
        ("rabbit/%2f?heartbeat=-1", number("heartbeat", 65_535)),
        ("rabbit/%2f?heartbeat", number("heartbeat", 65_535)),
        (
            "rabbit/%2f?connection_timeout=1.5",
            number("connection_timeout", u64::MAX),
        ),
        ("rabbit/%2f?channel_max=70000", number("channel_max", 65_535)),
        ("rabbit/%2f?frame_max=4294967296", number("frame_max", 4_294_967_295)),
        (
            "rabbit/%2f?auth_mechanism=magic",
            "query parameter `auth_mechanism`: expected one of plain, amqplain, external, anonymous, rabbit-cr-demo".to_owned(),
        ),
        (
            "rabbit/%2f?heartbeat=5&heartbeat=6",
            "query parameter `heartbeat` is given more than once".to_owned(),
        ),
        (
            "rabbit/%2f?heartbeat=5&heart%62eat=6",
            "query parameter `heartbeat` is given more than once".to_owned(),
        ),
        (
            "rabbit/%2f?heartbeet=5",
            "unknown query parameter `heartbeet`, expected heartbeat, connection_timeout, channel_max, frame_max, auth_mechanism".to_owned(),
        ),
        (
            "rabbit/%2f?a%0Ab=1",
            "unknown query parameter `a\\nb`, expected heartbeat, connection_timeout, channel_max, frame_max, auth_mechanism".to_owned(),
        ),
        ("rabbit/%ZZ", malformed("virtual host")),
        ("rabbit/v%4", malformed("virtual host")),
        ("rabbit/%2f?heartbeat=%ZZ", malformed("query")),
        ("rabbit/%2f?x%4", malformed("query")),
        ("rabbit/%ff", "the virtual host is not UTF-8 once percent-decoded".to_owned()),
    ];
    for (rest, reason) in &cases {
        let raw = format!("amqp://app:{PW}@{rest}");
        let shown = format!("amqp://app:***@{rest}");
        let err = raw.parse::<BrokerUrl>().unwrap_err();
        assert_eq!(err.to_string(), format!("url: {reason}, got `{shown}`"));
        assert_hidden(&format!("{err:?}"), &[PW]);
        let env = env_err(&[("FITVIZ_EVENTS_URL", &raw)]);
        assert_eq!(env.field(), "FITVIZ_EVENTS_URL");
        assert!(env.to_string().contains(reason.as_str()), "{env}");
        // In a list, the entry is named.
        let list = format!("amqp://app:{PW}@other/%2f,{raw}");
        let err = list.parse::<BrokerUrl>().unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("url: entry 2 of 2: {reason}, got `")),
            "{err}"
        );
        assert_hidden(&err.to_string(), &[PW]);
    }
    // The user and the password: named, never shown.
    for (raw, reason) in [
        (format!("amqp://a%ZZ:{PW}@rabbit/"), malformed("user")),
        (format!("amqp://app:{PW}%ZZ@rabbit/"), malformed("password")),
        (format!("amqp://app:{PW}%4@rabbit/"), malformed("password")),
        (format!("amqp://app:%{PW}@rabbit/"), malformed("password")),
        (
            format!("amqp://app:{PW}%ff@rabbit/"),
            "the password is not UTF-8 once percent-decoded".to_owned(),
        ),
        (
            format!("amqp://a%ff:{PW}@rabbit/"),
            "the user is not UTF-8 once percent-decoded".to_owned(),
        ),
    ] {
        for err in [
            raw.parse::<BrokerUrl>().unwrap_err(),
            env_err(&[("FITVIZ_EVENTS_URL", &raw)]),
        ] {
            assert!(err.to_string().contains(&reason), "{err}");
            assert!(err.to_string().ends_with("@rabbit/`"), "{err}");
            assert_hidden(&err.to_string(), &[PW]);
            assert_hidden(&format!("{err:?}"), &[PW]);
        }
    }
    // An `@` after the host is refused, naming the cause.
    let err = format!("amqp://app:/{PW}@rabbit/")
        .parse::<BrokerUrl>()
        .unwrap_err();
    assert!(err.to_string().contains("an `@` after the host"), "{err}");
    // An unknown parameter the redaction hid (a user holding `?`, a password holding
    // `,`: the list splits inside it) is not named.
    let err = format!("amqp://a?:{PW},@rabbit/%2f")
        .parse::<BrokerUrl>()
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("url: entry 1 of 2: an unknown query parameter, expected heartbeat"),
        "{err}"
    );
    assert_hidden(&err.to_string(), &[PW]);
    // What the client reads is accepted: every known parameter in range, escapes that
    // are well formed, any case of a mechanism.
    for good in [
        "amqp://app:p%40ss@rabbit/%2f?channel_max=10&frame_max=131072&auth_mechanism=EXTERNAL&heartbeat=0&connection_timeout=1",
        "amqp://app:pw@rabbit/v%C3%A9?heartbeat=65535&channel_max=65535&frame_max=4294967295",
        "amqp://rabbit?",
        "amqp://rabbit/?&",
    ] {
        assert!(good.parse::<BrokerUrl>().is_ok(), "{good}");
    }
}

#[test]
fn not_unicode_variables_are_errors() {
    let err = env::load(
        [(
            "FITVIZ_EVENTS_URL".to_owned(),
            Err(format!("amqp://u:{PW}@h\u{fffd}/")),
        )]
        .into_iter(),
    )
    .unwrap_err();
    assert_eq!(err.field(), "FITVIZ_EVENTS_URL");
    assert!(
        err.to_string()
            .starts_with("FITVIZ_EVENTS_URL: expected valid unicode, got `")
    );
    assert_hidden(&err.to_string(), &[PW]);
}

#[test]
fn from_env_reads_the_process_environment() {
    // `set_var` is unsafe (and this crate forbids unsafe code), so compare with what the
    // environment holds, which is usually nothing of ours.
    let vars: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    assert_eq!(
        PublisherConfig::from_env(),
        PublisherConfig::from_vars(vars)
    );
}

#[test]
fn amqp_uri_sets_heartbeat_and_connection_timeout() {
    let c = PublisherConfig {
        url: url(
            "amqp://u:p@rabbit/vh?channel_max=10&heart%62eat=0&connection_timeout=1&auth_mechanism=plain",
        ),
        heartbeat: Duration::from_secs(20),
        connection_timeout: Duration::from_millis(1500),
        ..Default::default()
    };
    let uri = c.amqp_uris().remove(0);
    assert_eq!(
        uri,
        "amqp://u:p@rabbit/vh?channel_max=10&auth_mechanism=plain&heartbeat=20&connection_timeout=1500"
    );
    let parsed: lapin::uri::AMQPUri = uri.parse().unwrap();
    assert_eq!(parsed.query.heartbeat, Some(20));
    assert_eq!(parsed.query.connection_timeout, Some(1500));
    assert_eq!(parsed.query.channel_max, Some(10));
    assert_eq!(parsed.authority.host, "rabbit");
    assert_eq!(parsed.vhost, "vh");

    let c = PublisherConfig {
        url: url("amqps://rabbit.example#frag"),
        ..Default::default()
    };
    assert_eq!(
        c.amqp_uris().remove(0),
        "amqps://rabbit.example?heartbeat=10&connection_timeout=5000#frag"
    );
    let parsed: lapin::uri::AMQPUri = c.amqp_uris().remove(0).parse().unwrap();
    assert_eq!(parsed.authority.port, 5671);
}

#[test]
fn deserializes_config_files() {
    let files = Files::new();
    let json = r#"{
        "url": "amqps://svc:pw@rabbit/fitviz",
        "exchange": "fitviz.billing",
        "declare_exchange": false,
        "source": "billing-api",
        "pool_size": 8,
        "unroutable": "error",
        "max_in_flight": 64,
        "max_in_flight_per_organization_percent": 50,
        "confirm_timeout_ms": 2000,
        "publish_timeout_ms": 8000,
        "retry_attempts": 5,
        "retry_base_delay_ms": 20,
        "retry_max_delay_ms": 500,
        "validation": false,
        "allow_unregistered": true,
        "unknown_fields": "reject",
        "heartbeat_secs": 15,
        "connection_timeout_ms": 3000,
        "pool_wait_timeout_ms": 250,
        "connection_name": "billing",
        "breaker_failure_threshold": 3,
        "breaker_open_ms": 10000,
        "detached_capacity": 100,
        "detached_concurrency": 4,
        "detached_share_per_organization_percent": 20,
        "detached_overflow_wait_ms": 30000,
        "detached_redelivery_base_delay_ms": 50,
        "detached_redelivery_max_delay_ms": 1000,
        "max_body_bytes": 2048,
        "tls_builtin_roots": "off",
        "tls_server_name": "rabbit.internal"
    }"#;
    let mut value: serde_json::Value = serde_json::from_str(json).unwrap();
    for (key, path) in [
        ("tls_ca_file", &files.ca),
        ("tls_cert_file", &files.cert),
        ("tls_key_file", &files.key),
    ] {
        value[key] = path.to_str().unwrap().into();
    }
    let json = &value.to_string();
    let c: PublisherConfig = serde_json::from_str(json).unwrap();
    let expected = PublisherConfig {
        url: url("amqps://svc:pw@rabbit/fitviz"),
        exchange: "fitviz.billing".into(),
        declare_exchange: false,
        unroutable: UnroutablePolicy::Error,
        source: "billing-api".into(),
        pool_size: 8,
        max_in_flight: 64,
        max_in_flight_per_organization_percent: 50,
        confirm_timeout: Duration::from_secs(2),
        publish_timeout: Duration::from_secs(8),
        retry_attempts: 5,
        retry_base_delay: Duration::from_millis(20),
        retry_max_delay: Duration::from_millis(500),
        validation: false,
        allow_unregistered: true,
        unknown_fields: crate::UnknownFields::Reject,
        heartbeat: Duration::from_secs(15),
        connection_timeout: Duration::from_secs(3),
        pool_wait_timeout: Duration::from_millis(250),
        connection_name: Some("billing".into()),
        breaker_failure_threshold: 3,
        breaker_open_duration: Duration::from_secs(10),
        detached_capacity: 100,
        detached_concurrency: 4,
        detached_share_per_organization_percent: 20,
        detached_overflow_wait: Duration::from_secs(30),
        detached_redelivery_base_delay: Duration::from_millis(50),
        detached_redelivery_max_delay: Duration::from_secs(1),
        max_body_bytes: 2048,
        tls_ca_file: Some(files.ca.clone()),
        tls_builtin_roots: false,
        tls_cert_file: Some(files.cert.clone()),
        tls_key_file: Some(files.key.clone()),
        tls_server_name: Some("rabbit.internal".into()),
    };
    assert_eq!(c, expected);
    c.validate().unwrap();

    // Every key of the file format is a variable name without the prefix, in lower case.
    let value: serde_json::Value = serde_json::from_str(json).unwrap();
    let mut file_keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
    file_keys.sort_unstable();
    let mut vars: Vec<String> = all_vars()
        .iter()
        .map(|v| v.strip_prefix(ENV_PREFIX).unwrap().to_lowercase())
        .collect();
    vars.sort_unstable();
    assert_eq!(file_keys, vars);

    // Booleans may be spelled as in the environment.
    let c: PublisherConfig =
        serde_json::from_str(r#"{"validation": "off", "declare_exchange": "YES"}"#).unwrap();
    assert!(!c.validation && c.declare_exchange);

    // A null optional setting is unset.
    let c: PublisherConfig = serde_json::from_str(r#"{"connection_name": null}"#).unwrap();
    assert_eq!(c, PublisherConfig::default());
}

#[test]
fn config_file_errors() {
    let err =
        serde_json::from_str::<PublisherConfig>(r#"{"pool_size": 4, "pool_sise": 4}"#).unwrap_err();
    assert!(
        err.to_string().contains("unknown field `pool_sise`"),
        "{err}"
    );
    let err = serde_json::from_str::<PublisherConfig>(r#"{"confirm_timeout": 4}"#).unwrap_err();
    assert!(
        err.to_string().contains("unknown field `confirm_timeout`"),
        "{err}"
    );

    // Out of range: the file deserializes, validation names the key.
    for (json, message) in [
        (
            r#"{"pool_size": 0}"#,
            "pool_size: expected an integer from 1 to 1024, got `0`",
        ),
        (
            r#"{"heartbeat_secs": 0}"#,
            "heartbeat_secs: expected a whole number of seconds from 1 to 65535, got `0`",
        ),
        (
            r#"{"confirm_timeout_ms": 0}"#,
            "confirm_timeout_ms: expected a whole number of milliseconds from 1 to 3600000, got `0`",
        ),
        (
            r#"{"publish_timeout_ms": 10}"#,
            "publish_timeout_ms: expected at least confirm_timeout_ms (5000), got `10`",
        ),
        (
            r#"{"exchange": ""}"#,
            "exchange: expected 1 to 255 letters, digits, `-`, `_`, `.` or `:`, got ``",
        ),
        (
            r#"{"detached_redelivery_base_delay_ms": 6000}"#,
            "detached_redelivery_max_delay_ms: expected at least detached_redelivery_base_delay_ms (6000), got `5000`",
        ),
    ] {
        let config = serde_json::from_str::<PublisherConfig>(json).unwrap();
        assert_eq!(config.validate().unwrap_err().to_string(), message);
    }

    // Not of the type: the format's error.
    for (json, part) in [
        (r#"{"retry_attempts": 4294967296}"#, "4294967296"),
        (r#"{"breaker_failure_threshold": 4294967296}"#, "4294967296"),
        (r#"{"pool_size": -1}"#, "-1"),
        (r#"{"pool_size": null}"#, "null"),
        (r#"{"validation": "maybe"}"#, "got `maybe`"),
        (r#"{"validation": 1}"#, "expected a boolean"),
        (r#"{"confirm_timeout_ms": 1.5}"#, "1.5"),
        (r#"{"url": 5}"#, "5"),
        (
            r#"{"url": "amqp://u:hunter22@:5672/"}"#,
            "url: invalid url (empty host), got `amqp://u:***@:5672/`",
        ),
    ] {
        let err = serde_json::from_str::<PublisherConfig>(json).unwrap_err();
        assert!(err.to_string().contains(part), "{err} lacks {part}");
        assert_hidden(&err.to_string(), &["hunter22"]);
    }
}

/// The settings table (`docs/reference/settings.md`, shown on `PublisherConfig`): every
/// setting has a row, every row a setting, and the defaults and ranges it states are the
/// code's.
#[test]
fn settings_table_matches_the_code() {
    let section = include_str!("../../docs/reference/settings.md");
    let rows: Vec<Vec<&str>> = section
        .lines()
        .filter(|line| line.starts_with("| `FITVIZ_EVENTS_"))
        .map(|line| line.trim_matches('|').split(" | ").map(str::trim).collect())
        .collect();

    let mut in_table: Vec<&str> = rows.iter().map(|row| row[0].trim_matches('`')).collect();
    in_table.sort_unstable();
    let mut in_code = all_vars();
    in_code.sort_unstable();
    assert_eq!(in_table, in_code, "table rows vs settings");

    let default = PublisherConfig::default();
    let mut ranges = 0;
    for row in &rows {
        let [var, stated, accepted, ..] = row[..] else {
            panic!("{row:?} has too few columns")
        };
        let var = var.trim_matches('`');
        let key = names::key_of_var(var).unwrap();
        if stated == "unset" {
            // Only an optional setting may be unset: null is its default.
            let json = serde_json::json!({ key: null }).to_string();
            let config = serde_json::from_str::<PublisherConfig>(&json);
            assert_eq!(config.ok(), Some(default.clone()), "{var} has a default");
        } else {
            let stated = stated
                .strip_prefix('`')
                .and_then(|s| s.strip_suffix('`'))
                .unwrap_or_else(|| panic!("{var}: default {stated} is not `quoted`"));
            assert_eq!(
                PublisherConfig::from_vars([(var, stated)]).as_ref(),
                Ok(&default),
                "{var}: the table's default `{stated}` is not the code's"
            );
        }
        // "A to B": A and B pass this setting's rule (another's may fail), A - 1 and B + 1
        // do not.
        let Some((min, max)) = accepted.split_once(" to ") else {
            continue;
        };
        let (Ok(min), Ok(max)) = (min.parse::<u64>(), max.parse::<u64>()) else {
            continue;
        };
        ranges += 1;
        let named = |value: u64| {
            PublisherConfig::from_vars([(var, value.to_string())])
                .err()
                .is_some_and(|err| err.field() == var)
        };
        assert!(!named(min) && !named(max), "{var}: {min} or {max} rejected");
        assert!(named(max + 1), "{var}: {} accepted", max + 1);
        if min > 0 {
            assert!(named(min - 1), "{var}: {} accepted", min - 1);
        }
    }
    assert!(ranges >= 14, "only {ranges} ranges checked");
}

#[test]
fn raw_redaction() {
    for (raw, redacted) in [
        ("no at sign", "no at sign"),
        ("amqp://user@host", "amqp://user@host"),
        ("amqp://u:p@host", "amqp://u:***@host"),
        ("x:y@://u:p@host", "x:***@host"),
        ("amqp://u:p:q@r@host", "amqp://u:***@host"),
        ("", ""),
        // No `@`: a password with the host forgotten (or a port: it is hidden too).
        ("amqp://u:S3cr3t", "amqp://u:***"),
        (
            "amqp://u:S3cr3t/vhost?heartbeat=5",
            "amqp://u:***/vhost?heartbeat=5",
        ),
        ("amqps://host/vhost", "amqps://host/vhost"),
        (
            "amqp://a:b@h,amqp://u:S3cr3t",
            "amqp://a:***@h,amqp://u:***",
        ),
        ("amqp://u:pa,ss@host", "amqp://u:***@host"),
    ] {
        assert_eq!(redact_raw(raw), redacted);
    }
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9]{0,8}",
        "[1-9][0-9]{0,3}",
        "-?[0-9]{1,25}",
        "(true|false|yes|no|on|off|1|0|TRUE|Off|maybe)",
        "[ a-z.:_-]{0,12}",
        Just(String::new()),
    ]
}

/// Half well-formed `amqp://user:{pw}@host/%2f`, half mangled in scheme, host, port or path.
fn url_with(pw: String) -> impl Strategy<Value = String> {
    let well_formed = "[a-z][a-z0-9.-]{0,10}".prop_map({
        let pw = pw.clone();
        move |host| format!("amqp://user:{pw}@{host}/%2f")
    });
    let mangled = (
        prop_oneof![
            Just("amqp"),
            Just("amqps"),
            Just("AMQP"),
            Just("http"),
            Just("file"),
            Just(""),
            Just("am qp")
        ],
        prop_oneof![Just("://"), Just(":"), Just(":/"), Just("//")],
        "[a-zA-Z0-9.\\-\\[\\]:%]{0,12}",
        prop_oneof![Just(String::new()), "(:[0-9a-z]{0,6})"],
        prop_oneof![Just(String::new()), "(/.{0,10})", "(\\?.{0,20})"],
    )
        .prop_map(move |(scheme, sep, host, port, rest)| {
            format!("{scheme}{sep}user:{pw}@{host}{port}{rest}")
        });
    prop_oneof![well_formed, mangled]
}

proptest! {
    #[test]
    fn from_vars_never_panics_nor_leaks(
        (pw, url) in "[a-zA-Z0-9]{8,16}".prop_flat_map(|pw| (Just(pw.clone()), url_with(pw))),
        values in proptest::collection::vec(proptest::option::weighted(0.1, value()), 23),
    ) {
        let mut vars = vec![("FITVIZ_EVENTS_URL".to_owned(), url)];
        for (name, value) in all_vars().into_iter().skip(1).zip(values) {
            if let Some(value) = value {
                vars.push((name, value));
            }
        }
        match PublisherConfig::from_vars(vars) {
            Ok(config) => {
                let debug = format!("{config:?}");
                prop_assert!(!debug.contains(&pw));
                prop_assert!(!config.redacted_url().contains(&pw));
                prop_assert!(config.amqp_uris().remove(0).parse::<lapin::uri::AMQPUri>().is_ok());
                prop_assert!(config.validate().is_ok());
            }
            Err(err) => {
                prop_assert!(!err.to_string().contains(&pw), "{}", err);
                let debug = format!("{err:?}");
                prop_assert!(!debug.contains(&pw));
                prop_assert!(err.field().starts_with(ENV_PREFIX));
            }
        }
    }

    #[test]
    fn arbitrary_values_never_panic(field in 0..24usize, value in value()) {
        let var = &all_vars()[field];
        if let Err(err) = PublisherConfig::from_vars([(var, value.as_str())]) {
            // A rule between two settings names the other field, and mentions this one.
            prop_assert!(err.field() == var || err.to_string().contains(var.as_str()), "{}", err);
            prop_assert!(!err.to_string().contains('\n'), "{}", err);
        }
    }

    #[test]
    fn file_values_never_panic(field in 0..24usize, value in value(), number in any::<i64>()) {
        let key = keys()[field];
        for json in [
            serde_json::json!({ key: value }),
            serde_json::json!({ key: number }),
        ] {
            if let Ok(config) = serde_json::from_value::<PublisherConfig>(json)
                && let Err(err) = config.validate()
            {
                prop_assert!(keys().contains(&err.field()), "{}", err);
            }
        }
    }

    #[test]
    fn redaction_hides_any_userinfo_password(
        pw in "[a-zA-Z0-9]{8,16}",
        prefix in "[^/\\\\?#@]{0,8}",
        rest in ".{0,24}",
    ) {
        let url = format!("{prefix}://user:{pw}@{rest}");
        prop_assume!(!prefix.contains(&pw) && !rest.contains(&pw));
        prop_assert!(!redact(&url).contains(&pw), "{}", redact(&url));
        match url.parse::<BrokerUrl>() {
            Ok(parsed) => {
                prop_assert!(!parsed.redacted().contains(&pw));
                let shown = format!("{parsed:?} {parsed}");
                prop_assert!(!shown.contains(&pw));
            }
            Err(err) => prop_assert!(!err.to_string().contains(&pw)),
        }
    }

    #[test]
    fn validating_durations_never_panics(
        ms in any::<u64>(),
        nanos in 0u32..1_000_000_000,
        secs in any::<u64>(),
    ) {
        let d = Duration::new(secs, nanos);
        let _ = PublisherConfig {
            confirm_timeout: Duration::from_millis(ms),
            publish_timeout: d,
            heartbeat: d,
            retry_max_delay: d,
            breaker_open_duration: d,
            detached_overflow_wait: d,
            detached_redelivery_max_delay: d,
            ..Default::default()
        }
        .validate();
    }
}

#[test]
fn per_organization_shares_round_up_and_are_at_least_one() {
    let c = PublisherConfig::default();
    assert_eq!(c.max_in_flight_per_organization(), 256); // 25 % of 4 × 256
    assert_eq!(c.detached_share_per_organization(), 5_000); // 50 % of 10,000
    let c = PublisherConfig {
        pool_size: 1,
        max_in_flight: 3,
        max_in_flight_per_organization_percent: 1,
        detached_capacity: 3,
        detached_share_per_organization_percent: 50,
        ..Default::default()
    };
    assert_eq!(c.max_in_flight_per_organization(), 1);
    assert_eq!(c.detached_share_per_organization(), 2);
}

#[test]
fn a_comma_separated_url_lists_the_nodes_of_a_cluster() {
    let raw = format!(
        "amqp://app:{PW}@rabbit-1:5681/fitviz, amqp://app:{PW}@rabbit-2/fitviz,amqp://app:{PW}@10.0.0.3:5999/fitviz"
    );
    let c = PublisherConfig::from_vars([("FITVIZ_EVENTS_URL", raw.as_str())]).unwrap();
    assert_eq!(
        c.url.addresses(),
        ["rabbit-1:5681", "rabbit-2:5672", "10.0.0.3:5999"]
    );
    assert_eq!(c.url.expose_secret(), raw);
    assert_eq!(
        c.redacted_url(),
        "amqp://app:***@rabbit-1:5681/fitviz,amqp://app:***@rabbit-2/fitviz,amqp://app:***@10.0.0.3:5999/fitviz"
    );
    assert_hidden(&format!("{c:?}"), &[PW]);
    let uris = c.amqp_uris();
    assert_eq!(uris.len(), 3);
    for (uri, host) in uris.iter().zip(["rabbit-1", "rabbit-2", "10.0.0.3"]) {
        assert!(uri.contains(PW) && uri.contains(host), "{uri}");
        assert!(
            uri.ends_with("?heartbeat=10&connection_timeout=5000"),
            "{uri}"
        );
        uri.parse::<lapin::uri::AMQPUri>().unwrap();
    }
    // amqps defaults to 5671.
    assert_eq!(
        url("amqps://a:b@n1/v,amqps://a:b@n2:5000/v").addresses(),
        ["n1:5671", "n2:5000"]
    );
}

#[test]
fn a_bad_url_list_is_refused_naming_the_entry_without_the_password() {
    let cases = [
        (
            format!("amqp://app:{PW}@a/v,amqps://app:{PW}@b/v"),
            "url: the list mixes `amqp` and `amqps` entries, refused: it would let a connection fall back to plain text, got `amqp://app:***@a/v,amqps://app:***@b/v`",
        ),
        (
            format!("amqp://app:{PW}@a/v,amqp://app:{PW}@b/other"),
            "url: the entries name different virtual hosts, got `amqp://app:***@a/v,amqp://app:***@b/other`",
        ),
        (
            format!("amqp://app:{PW}@a/v,amqp://ops:{PW}@b/v"),
            "url: the entries name different users, got `amqp://app:***@a/v,amqp://ops:***@b/v`",
        ),
        (
            format!("amqp://app:{PW}@a/v,"),
            "url: entry 2 of 2: expected a url, the entry is empty, got `amqp://app:***@a/v,`",
        ),
        (
            format!("amqp://app:{PW}@a/v,amqp://app:{PW}@[::1]/v"),
            "url: entry 2 of 2: expected a host name or ipv4 address, the amqp client does not support ipv6 addresses, got `amqp://app:***@a/v,amqp://app:***@[::1]/v`",
        ),
        (
            format!("amqp://app:{PW}@a/v,http://app:{PW}@b/v,amqp://app:{PW}@c/v"),
            "url: entry 2 of 3: expected scheme `amqp` or `amqps`, got `amqp://app:***@a/v,http://app:***@b/v,amqp://app:***@c/v`",
        ),
    ];
    for (raw, expected) in cases {
        let err = raw.parse::<BrokerUrl>().unwrap_err();
        assert_eq!(err.to_string(), expected);
        let env = env_err(&[("FITVIZ_EVENTS_URL", &raw)]);
        assert_eq!(env.field(), "FITVIZ_EVENTS_URL");
        assert_hidden(&env.to_string(), &[PW]);
        assert_hidden(&format!("{env:?}"), &[PW]);
    }
    // A raw comma in a password splits the entry; the whole list is then hidden.
    let raw = "amqp://app:pa,ss@a/v,amqp://app:pa,ss@b/v";
    let err = raw.parse::<BrokerUrl>().unwrap_err();
    assert_hidden(&err.to_string(), &["pa,ss", ",ss@"]);
    assert!(err.to_string().contains("entry 1 of 4"), "{err}");
}

#[test]
fn unknown_fields_policy_is_read_in_any_case_and_named_when_invalid() {
    for (value, expected) in [
        ("reject", crate::UnknownFields::Reject),
        ("FORWARD", crate::UnknownFields::Forward),
        ("Forward", crate::UnknownFields::Forward),
    ] {
        let c = PublisherConfig::from_vars([("FITVIZ_EVENTS_UNKNOWN_FIELDS", value)]).unwrap();
        assert_eq!(c.unknown_fields, expected, "{value}");
    }
    let err = env_err(&[("FITVIZ_EVENTS_UNKNOWN_FIELDS", "ignore")]);
    assert_eq!(
        err.to_string(),
        "FITVIZ_EVENTS_UNKNOWN_FIELDS: expected `reject` or `forward`, got `ignore`"
    );
    let err = serde_json::from_str::<PublisherConfig>(r#"{"unknown_fields": "drop"}"#)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("expected `reject` or `forward`, got `drop`"),
        "{err}"
    );
}

#[test]
fn the_unroutable_policy_is_named_in_errors() {
    assert_eq!(
        PublisherConfig::default().unroutable,
        UnroutablePolicy::AlternateExchange
    );
    let c =
        PublisherConfig::from_vars([("FITVIZ_EVENTS_UNROUTABLE", "alternate-exchange")]).unwrap();
    assert_eq!(c.unroutable, UnroutablePolicy::AlternateExchange);
    let err = PublisherConfig::from_vars([("FITVIZ_EVENTS_UNROUTABLE", "drop")]).unwrap_err();
    assert_eq!(err.field(), "FITVIZ_EVENTS_UNROUTABLE");
    assert_eq!(
        err.to_string(),
        "FITVIZ_EVENTS_UNROUTABLE: expected `alternate-exchange`, `error` or `ignore`, got `drop`"
    );
    let err = serde_json::from_str::<PublisherConfig>(r#"{"unroutable": "drop"}"#).unwrap_err();
    assert!(
        err.to_string()
            .contains("expected `alternate-exchange`, `error` or `ignore`, got `drop`"),
        "{err}"
    );
}

/// `<exchange>.unrouted` must fit in an AMQP short string while the unroutable policy
/// keeps events there: a longer exchange is refused at validation, naming the setting,
/// instead of panicking on the first unroutable event (issue 19).
#[test]
fn the_exchange_leaves_room_for_its_unrouted_queue() {
    let named = |len: usize, unroutable: UnroutablePolicy| PublisherConfig {
        exchange: "x".repeat(len),
        unroutable,
        ..PublisherConfig::default()
    };
    assert_eq!(
        named(246, UnroutablePolicy::AlternateExchange).validate(),
        Ok(())
    );
    let err = named(247, UnroutablePolicy::AlternateExchange)
        .validate()
        .unwrap_err();
    assert_eq!(err.field(), "exchange");
    assert!(
        err.to_string().starts_with(
            "exchange: expected at most 246 bytes while unroutable is `alternate-exchange` \
             (`<exchange>.unrouted` must fit in 255)"
        ),
        "{err}"
    );
    for policy in [UnroutablePolicy::Error, UnroutablePolicy::Ignore] {
        assert_eq!(named(255, policy).validate(), Ok(()));
    }
    // From the environment, the setting is named by its variable.
    let err =
        PublisherConfig::from_vars([("FITVIZ_EVENTS_EXCHANGE", "e".repeat(250))]).unwrap_err();
    assert_eq!(err.field(), "FITVIZ_EVENTS_EXCHANGE");
    assert!(
        err.to_string()
            .contains("while FITVIZ_EVENTS_UNROUTABLE is `alternate-exchange`"),
        "{err}"
    );
}

/// A URL whose `@host` was forgotten (`amqp://user:secret`) is refused without showing
/// the secret (issue 19).
#[test]
fn a_url_without_an_at_sign_is_refused_without_its_password() {
    for raw in [
        "amqp://u:S3cr3tMark",
        "amqp://u:S3cr3tMark/vhost",
        "amqp://a:b@h,amqp://u:S3cr3tMark",
    ] {
        let err = raw.parse::<BrokerUrl>().unwrap_err();
        assert!(!err.to_string().contains("S3cr3tMark"), "{err}");
        let err = PublisherConfig::from_vars([("FITVIZ_EVENTS_URL", raw)]).unwrap_err();
        assert!(!err.to_string().contains("S3cr3tMark"), "{err}");
    }
}

//! Tests of `env.rs`: reading the `FITVIZ_EVENTS_*` variables.

use std::time::Duration;

use super::super::{
    PublisherConfig, UnroutablePolicy, env,
    names::keys,
    tests::{PW, all_vars, assert_hidden, env_err, url},
    tls::tests::Files,
};

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
        ("FITVIZ_EVENTS_ARCHIVE", "workout.*,payment.#"),
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
        archive: crate::config::ArchivePatterns::new(["workout.*", "payment.#"]).unwrap(),
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
        unknown_fields: crate::schema::UnknownFields::Reject,
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
            "FITVIZ_EVENTS_ARCHIVE",
            &["workout..created", "a b", ".x", "workout.*,"],
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
fn unknown_fields_policy_is_read_in_any_case_and_named_when_invalid() {
    for (value, expected) in [
        ("reject", crate::schema::UnknownFields::Reject),
        ("FORWARD", crate::schema::UnknownFields::Forward),
        ("Forward", crate::schema::UnknownFields::Forward),
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

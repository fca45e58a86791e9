//! Tests of the configuration as a whole: defaults, validation, config files, the
//! settings table; and the helpers the tests of `url.rs` and `env.rs` share.

use std::time::Duration;

use proptest::prelude::*;

use super::{
    BrokerUrl, ConfigError, ENV_PREFIX, PublisherConfig, UnroutablePolicy,
    names::{self, keys, var},
    tls::tests::Files,
    url::redact,
};

pub(in crate::config) const PW: &str = "s3cretPassw0rd";

pub(in crate::config) fn env_err(vars: &[(&str, &str)]) -> ConfigError {
    PublisherConfig::from_vars(vars.iter().copied()).unwrap_err()
}

/// Every variable, in the order of the fields.
pub(in crate::config) fn all_vars() -> Vec<String> {
    keys().iter().map(|key| var(key)).collect()
}

pub(in crate::config) fn url(raw: &str) -> BrokerUrl {
    raw.parse().unwrap()
}

/// Every rendering of a config or error that could reach a log.
pub(in crate::config) fn assert_hidden(text: &str, secrets: &[&str]) {
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
    assert_eq!(c.unknown_fields, crate::schema::UnknownFields::Forward);
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
    assert_eq!(keys().len(), 35);
    assert_eq!(keys()[0], "url");
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
        "archive": ["payment.#"],
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
        archive: crate::config::ArchivePatterns::new(["payment.#"]).unwrap(),
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
        unknown_fields: crate::schema::UnknownFields::Reject,
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

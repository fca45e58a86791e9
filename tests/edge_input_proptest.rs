//! Arbitrary broker URLs (their password marked) and organization ids (a marker inside)
//! never panic, and no error — `Display` or `Debug`, from a string, the environment or a
//! config file — ever shows the marked password or the rejected id (issue 19).
//!
//! URLs are assembled from edge-case parts: malformed percent-escapes (`%ZZ`, `%4`),
//! characters that end the userinfo early (`@`, `/`, `:`, `?`, `#`, `,`), unknown and
//! repeated query parameters with non-numeric values, IPv6 hosts, lists of nodes.

use fitviz_events::{
    ErrorKind, Event, OrganizationId, PublisherConfig, config::BrokerUrl,
    organization::OrganizationLayer,
};
use proptest::prelude::*;

/// The marked password: uppercase and digits after `Zq`, which no other part generates.
fn marker() -> impl Strategy<Value = String> {
    "[A-Z0-9]{10,14}".prop_map(|tail| format!("Zq{tail}"))
}

/// Text around the password, or in another part: plain, or one of the edge cases.
fn edge() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9._~-]{0,6}",
        1 => prop::sample::select(vec![
            "%", "%ZZ", "%4", "%4g", "%2C", "%40", "%ff", "%C3%A9", "%00", "@", ":", "/", "?",
            "#", ",", " ", "é", "\u{200b}", "[", "]", "%%", "%2",
        ])
        .prop_map(str::to_owned),
        1 => "[a-z%@:/?#,0-9A-F]{0,6}".prop_map(|s| s.to_lowercase()),
    ]
}

fn query() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        prop::sample::select(vec![
            "heartbeat",
            "connection_timeout",
            "channel_max",
            "frame_max",
            "auth_mechanism",
            "heartbeet",
            "heart%62eat",
            "x",
            "",
        ])
        .prop_map(str::to_owned),
        edge(),
    ];
    let value = prop_oneof![
        prop::sample::select(vec![
            "abc",
            "5",
            "0",
            "-1",
            "65535",
            "65536",
            "4294967296",
            "1.5",
            "",
            "plain",
            "EXTERNAL",
            "magic",
            "%ZZ",
            "+5",
        ])
        .prop_map(str::to_owned),
        edge(),
    ];
    prop::collection::vec((key, value), 0..4).prop_map(|pairs| {
        let pairs: Vec<String> = pairs.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        match pairs.is_empty() {
            true => String::new(),
            false => format!("?{}", pairs.join("&")),
        }
    })
}

/// One URL whose password holds `pw`.
fn url_with(pw: String) -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["amqp", "amqps", "http", "AMQP"]),
        prop_oneof![Just(String::from("app")), edge()],
        edge(),
        edge(),
        prop_oneof![
            Just(String::from("rabbit")),
            Just(String::from("127.0.0.1")),
            Just(String::from("[::1]")),
            "[a-z0-9.-]{0,10}",
            edge(),
        ],
        prop_oneof![
            Just(String::new()),
            Just(String::from(":5672")),
            ":[0-9a-z]{0,6}"
        ],
        prop_oneof![
            Just(String::from("/%2f")),
            Just(String::new()),
            "/".prop_flat_map(|_| edge()).prop_map(|v| format!("/{v}"))
        ],
        query(),
    )
        .prop_map(
            move |(scheme, user, before, after, host, port, vhost, query)| {
                format!("{scheme}://{user}:{before}{pw}{after}@{host}{port}{vhost}{query}")
            },
        )
}

/// One URL or a list of up to three, each with the password `pw`.
fn urls_with(pw: String) -> impl Strategy<Value = String> {
    prop::collection::vec(url_with(pw), 1..=3).prop_map(|urls| urls.join(","))
}

/// An organization id holding `marker` among edge-case characters: control, format
/// (zero-width, BOM, bidi), separators, whitespace at the ends, or too long.
fn org_with(marker: String) -> impl Strategy<Value = String> {
    let part = prop_oneof![
        3 => "[a-z0-9-]{0,8}",
        2 => prop::sample::select(vec![
            "\u{200b}", "\u{200c}", "\u{200d}", "\u{2060}", "\u{feff}", "\u{ad}", "\u{202e}",
            "\u{2066}", "\u{2028}", "\u{e0041}", "\u{600}", "\0", "\t", "\r\n", "\u{7f}",
            "\u{85}", " ", "\u{3000}", "é", "組織",
        ])
        .prop_map(str::to_owned),
        1 => "\\PC{0,4}",
        1 => ".{0,4}",
        1 => Just("x".repeat(250)),
    ];
    (part.clone(), part).prop_map(move |(before, after)| format!("{before}{marker}{after}"))
}

fn assert_hidden(text: &str, secret: &str) -> Result<(), TestCaseError> {
    prop_assert!(!text.contains(secret), "`{}` shown in: {}", secret, text);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A URL is accepted only when the AMQP client reads it; every rendering of the
    /// accepted config and of every error hides the password.
    #[test]
    fn urls_never_panic_nor_show_the_password(
        (pw, raw) in marker().prop_flat_map(|pw| (Just(pw.clone()), urls_with(pw))),
    ) {
        let parsed = raw.parse::<BrokerUrl>();
        let env = PublisherConfig::from_vars([("FITVIZ_EVENTS_URL", raw.as_str())]);
        let json = serde_json::json!({ "url": raw }).to_string();
        let file = serde_json::from_str::<PublisherConfig>(&json);
        prop_assert_eq!(parsed.is_ok(), env.is_ok(), "{}", raw);
        prop_assert_eq!(parsed.is_ok(), file.is_ok(), "{}", raw);
        match (parsed, env, file) {
            (Ok(url), Ok(config), Ok(_)) => {
                assert_hidden(&url.to_string(), &pw)?;
                assert_hidden(&format!("{url:?}"), &pw)?;
                assert_hidden(&format!("{config:?}"), &pw)?;
                assert_hidden(&config.redacted_url(), &pw)?;
                for uri in config.amqp_uris() {
                    prop_assert!(uri.parse::<lapin::uri::AMQPUri>().is_ok(), "{}", url);
                }
            }
            (Err(parsed), Err(env), Err(file)) => {
                for text in [
                    parsed.to_string(),
                    format!("{parsed:?}"),
                    env.to_string(),
                    format!("{env:?}"),
                    file.to_string(),
                    format!("{file:?}"),
                ] {
                    assert_hidden(&text, &pw)?;
                }
                prop_assert_eq!(parsed.field(), "url");
                prop_assert_eq!(env.field(), "FITVIZ_EVENTS_URL");
                prop_assert!(!parsed.to_string().contains('\n'), "{}", parsed);
            }
            _ => unreachable!(),
        }
    }

    /// An organization id is accepted as given or refused with a one-line reason that
    /// never quotes it — from `parse`, and from the publish path's validation error.
    #[test]
    fn organization_ids_never_panic_nor_show_the_rejected_id(
        (marker, id) in marker().prop_flat_map(|m| (Just(m.clone()), org_with(m))),
    ) {
        match OrganizationId::parse(&id) {
            Ok(org) => prop_assert_eq!(org.as_str(), id.as_str()),
            Err(invalid) => {
                prop_assert_eq!(invalid.field(), "organization_id");
                assert_hidden(&invalid.to_string(), &marker)?;
                assert_hidden(&format!("{invalid:?}"), &marker)?;
                prop_assert!(!invalid.to_string().contains('\n'), "{}", invalid);
                let mut event = Event::from_json("a.b", serde_json::json!({}))
                    .with_organization(id.as_str());
                let err = OrganizationLayer::default().stamp(&mut event).unwrap_err();
                prop_assert_eq!(err.kind(), ErrorKind::Validation);
                assert_hidden(&err.to_string(), &marker)?;
                assert_hidden(&format!("{err:?}"), &marker)?;
            }
        }
        if let Err(invalid) = fitviz_events::event::check_correlation_id(&id) {
            assert_hidden(&invalid.to_string(), &marker)?;
            assert_hidden(&format!("{invalid:?}"), &marker)?;
        }
    }
}

//! Tests of `url.rs`: parsing, checks and redaction of broker URLs.

use std::time::Duration;

use super::super::{
    BrokerUrl, PublisherConfig,
    tests::{PW, assert_hidden, env_err, url},
    url::redact_raw,
};

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

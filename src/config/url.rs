//! [`BrokerUrl`]: the broker URL, kept secret.

use std::{fmt, str::FromStr, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};
use url::{Host, Url};

use super::error::ConfigError;

const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// What replaces the password in redacted URLs.
const REDACTED: &str = "***";
/// The key errors name the URL by (the environment renames it).
const KEY: &str = "url";

/// The broker URL: `amqp://` or `amqps://`, with a host name or IPv4 address.
///
/// Made with [`parse`](str::parse) (or deserialized from a string), which checks it as the
/// AMQP client will read it. The URL is held as a [`SecretString`]: [`Debug`] and
/// [`Display`](fmt::Display) show it [redacted](Self::redacted), and only
/// [`expose_secret`](Self::expose_secret) gives the password. [`Default`] is
/// `amqp://guest:guest@127.0.0.1:5672/%2f`.
///
/// ```
/// use fitviz_events::BrokerUrl;
///
/// let url: BrokerUrl = "amqp://app:s3cret@rabbit:5672/fitviz".parse()?;
/// assert_eq!(url.to_string(), "amqp://app:***@rabbit:5672/fitviz");
/// assert_eq!(url.expose_secret(), "amqp://app:s3cret@rabbit:5672/fitviz");
///
/// let err = "amqp://app:s3cret@[::1]/".parse::<BrokerUrl>().unwrap_err();
/// assert!(!err.to_string().contains("s3cret"));
/// # Ok::<(), fitviz_events::ConfigError>(())
/// ```
// One URL. A list of brokers (`FITVIZ_EVENTS_URL=amqp://a,amqp://b`) can be a type holding
// `Vec<BrokerUrl>` whose `FromStr` splits on commas and parses each with this one; envy
// already splits a sequence on commas, and `with_timeouts` works per URL.
#[derive(Clone)]
pub struct BrokerUrl {
    secret: SecretString,
    /// The URL with its password replaced, computed once.
    redacted: String,
}

impl BrokerUrl {
    /// The URL as given, password included: pass it to the connection and nowhere else
    /// (prefer [`PublisherConfig::amqp_uri`](super::PublisherConfig::amqp_uri), which adds
    /// the timeouts).
    pub fn expose_secret(&self) -> &str {
        self.secret.expose_secret()
    }

    /// The URL with the password replaced by `***`, safe to log, e.g.
    /// `amqp://guest:***@127.0.0.1:5672/%2f`. A URL without a password is returned unchanged.
    pub fn redacted(&self) -> String {
        self.redacted.clone()
    }

    /// Whether the URL is `amqps://`.
    pub(super) fn is_tls(&self) -> bool {
        Url::parse(self.expose_secret()).is_ok_and(|url| url.scheme() == "amqps")
    }

    /// The URL with the `heartbeat` (seconds) and `connection_timeout` (milliseconds) query
    /// parameters set, replacing any it had; other parameters are kept.
    pub(super) fn with_timeouts(
        &self,
        heartbeat: Duration,
        connection_timeout: Duration,
    ) -> String {
        let raw = self.expose_secret();
        let Ok(mut url) = Url::parse(raw) else {
            return raw.to_owned(); // Unreachable: a `BrokerUrl` is parsed before it exists.
        };
        let kept: Vec<(String, String)> = (url.query_pairs())
            .filter(|(key, _)| key != "heartbeat" && key != "connection_timeout")
            .map(|(key, value)| (key.into_owned(), value.into_owned()))
            .collect();
        url.query_pairs_mut()
            .clear()
            .extend_pairs(kept)
            .append_pair("heartbeat", &heartbeat.as_secs().to_string())
            .append_pair(
                "connection_timeout",
                &connection_timeout.as_millis().to_string(),
            );
        url.into()
    }
}

impl FromStr for BrokerUrl {
    type Err = ConfigError;

    /// Parses and checks one URL; an error names it `url` and shows it redacted.
    fn from_str(raw: &str) -> Result<Self, ConfigError> {
        let fail = |reason: &str| ConfigError::invalid(KEY, reason, &redact(raw));
        let url = Url::parse(raw).map_err(|e| fail(&format!("invalid url ({e})")))?;
        match url.host() {
            _ if !matches!(url.scheme(), "amqp" | "amqps") => {
                return Err(fail("expected scheme `amqp` or `amqps`"));
            }
            None | Some(Host::Domain("")) => return Err(fail("expected a host")),
            // lapin reads `Url::domain()`, which is `None` for IPv6 literals, and would
            // silently connect to `localhost` instead.
            Some(Host::Ipv6(_)) => {
                return Err(fail(
                    "expected a host name or ipv4 address, the amqp client does not support ipv6 addresses",
                ));
            }
            Some(_) => {}
        }
        let broker_url = Self {
            secret: raw.into(),
            redacted: redact(raw),
        };
        // Parse it as lapin will, so a bad query parameter (`frame_max=x`, an unknown
        // `auth_mechanism`, …) is a config error and not a connect error.
        let uri = broker_url.with_timeouts(Duration::from_secs(10), Duration::from_secs(5));
        let Err(message) = uri.parse::<lapin::uri::AMQPUri>() else {
            return Ok(broker_url);
        };
        // lapin's messages quote no URL parts once the URL has a host; keep it that way.
        let password = url.password().unwrap_or_default();
        let decoded = percent_encoding::percent_decode_str(password).decode_utf8_lossy();
        let leaks = message.contains("://")
            || (!password.is_empty()
                && (message.contains(password) || message.contains(&*decoded)));
        let reason = match leaks {
            true => "rejected by the amqp client".to_owned(),
            false => format!("rejected by the amqp client ({})", message.to_lowercase()),
        };
        Err(ConfigError::invalid(KEY, reason, &broker_url.redacted))
    }
}

impl Default for BrokerUrl {
    fn default() -> Self {
        DEFAULT_URL.parse().expect("the default URL is valid")
    }
}

impl<'de> Deserialize<'de> for BrokerUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = SecretString::deserialize(deserializer)?;
        raw.expose_secret()
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl PartialEq for BrokerUrl {
    fn eq(&self, other: &Self) -> bool {
        self.expose_secret() == other.expose_secret()
    }
}

impl Eq for BrokerUrl {}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BrokerUrl").field(&self.redacted).finish()
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

/// Replaces the password of a URL, which may be invalid, by `***`.
pub(super) fn redact(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(url) if url.has_host() && url.password().is_none() => raw.to_owned(),
        Ok(mut url) if url.has_host() => match url.set_password(Some(REDACTED)) {
            Ok(()) => url.into(),
            Err(()) => redact_raw(raw),
        },
        _ => redact_raw(raw),
    }
}

/// Redacts without parsing: everything between the first `:` of what could be the userinfo
/// and the last `@`. Errs on the side of hiding too much.
pub(super) fn redact_raw(raw: &str) -> String {
    let Some(at) = raw.rfind('@') else {
        return raw.to_owned();
    };
    let scheme = |s: &str| (s.bytes()).all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    let start = match raw.find("://") {
        Some(i) if i < at && scheme(&raw[..i]) => i + 3,
        _ => 0,
    };
    match raw[start..at].find(':') {
        Some(colon) => format!("{}{REDACTED}{}", &raw[..start + colon + 1], &raw[at..]),
        None => raw.to_owned(),
    }
}

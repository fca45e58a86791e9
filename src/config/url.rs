//! [`BrokerUrl`]: the broker URL, kept secret.

use std::{fmt, str::FromStr, time::Duration};

use lapin::uri::AMQPUri;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};
use url::{Host, Url};

use super::error::ConfigError;

const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// What replaces the password in redacted URLs.
const REDACTED: &str = "***";
/// The key errors name the URL by (the environment renames it).
const KEY: &str = "url";

/// The broker URL, or a comma-separated list of them (the nodes of a cluster):
/// `amqp://` or `amqps://`, each with a host name or IPv4 address.
///
/// Made with [`parse`](str::parse) (or deserialized from a string), which checks every
/// entry as the AMQP client will read it, and the list as a whole: all entries use one
/// scheme (a list mixing `amqp` and `amqps` is refused: it would let a connection fall
/// back to plain text), one user and one virtual host. A password holding a comma must
/// percent-encode it (`%2C`), and one holding `/`, `?` or `#` too: a URL with an `@`
/// after its host (`amqp://app:/s3cret@rabbit` is the host `app` and the virtual host
/// `s3cret@rabbit`) is refused, and redacted up to that `@`. A malformed percent-escape (`%ZZ`, a trailing `%4`) in the
/// user, password, host, virtual host or query is refused, naming the part; so is a query
/// parameter the client does not read (`heartbeet=5`), one given twice, or a value it
/// cannot read (`heartbeat=abc`, `channel_max=70000`, `auth_mechanism=magic`), naming
/// the parameter. The known ones are `heartbeat`, `connection_timeout`, `channel_max`,
/// `frame_max` and `auth_mechanism`; `heartbeat` and `connection_timeout` are replaced
/// by the settings of the same name when connecting.
///
/// The URLs are held as a [`SecretString`]: [`Debug`] and [`Display`](fmt::Display)
/// show them [redacted](Self::redacted), and only [`expose_secret`](Self::expose_secret)
/// gives the passwords. [`Default`] is `amqp://guest:guest@127.0.0.1:5672/%2f`.
///
/// Each new connection tries the entries in an order shuffled for that connection, and
/// takes the first that answers: publishers spread over the nodes, a node that is down
/// is skipped, and one that comes back is used again by the next connections.
///
/// ```
/// use fitviz_events::config::BrokerUrl;
///
/// let url: BrokerUrl = "amqp://app:s3cret@rabbit:5672/fitviz".parse()?;
/// assert_eq!(url.to_string(), "amqp://app:***@rabbit:5672/fitviz");
/// assert_eq!(url.expose_secret(), "amqp://app:s3cret@rabbit:5672/fitviz");
///
/// let cluster: BrokerUrl = "amqp://app:s3cret@rabbit-1/fitviz,amqp://app:s3cret@rabbit-2/fitviz".parse()?;
/// assert_eq!(cluster.addresses(), ["rabbit-1:5672", "rabbit-2:5672"]);
/// assert_eq!(cluster.to_string(), "amqp://app:***@rabbit-1/fitviz,amqp://app:***@rabbit-2/fitviz");
///
/// let err = "amqp://app:s3cret@[::1]/".parse::<BrokerUrl>().unwrap_err();
/// assert!(!err.to_string().contains("s3cret"));
/// let err = "amqps://app:s3cret@a/,amqp://app:s3cret@b/".parse::<BrokerUrl>().unwrap_err();
/// assert!(err.to_string().contains("mixes `amqp` and `amqps`"));
/// let err = "amqp://app:s3cret@rabbit/?heartbeat=abc".parse::<BrokerUrl>().unwrap_err();
/// assert!(err.to_string().contains("query parameter `heartbeat`"));
/// let err = "amqp://app:s3cret%ZZ@rabbit/".parse::<BrokerUrl>().unwrap_err();
/// assert!(err.to_string().contains("the password has a malformed percent-encoding"));
/// assert!(!err.to_string().contains("s3cret"));
/// # Ok::<(), fitviz_events::config::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct BrokerUrl {
    secret: SecretString,
    /// The URLs with their passwords replaced, computed once.
    redacted: String,
    nodes: Vec<Node>,
}

/// One entry of a [`BrokerUrl`] list.
#[derive(Clone)]
pub(crate) struct Node {
    secret: SecretString,
    redacted: String,
    address: String,
}

impl Node {
    /// `host:port`, as the client connects to it (the default port filled in).
    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    /// The URL, password replaced.
    pub(crate) fn redacted(&self) -> &str {
        &self.redacted
    }
}

impl BrokerUrl {
    /// The URLs as given, passwords included: pass them to the connection and nowhere
    /// else (prefer [`PublisherConfig::amqp_uris`](super::PublisherConfig::amqp_uris),
    /// which adds the timeouts).
    pub fn expose_secret(&self) -> &str {
        self.secret.expose_secret()
    }

    /// The URLs with the passwords replaced by `***`, safe to log, e.g.
    /// `amqp://guest:***@127.0.0.1:5672/%2f`. A URL without a password is returned unchanged.
    pub fn redacted(&self) -> String {
        self.redacted.clone()
    }

    /// Whether the URLs are `amqps://` (all entries share one scheme).
    pub(super) fn is_tls(&self) -> bool {
        Url::parse(self.nodes[0].secret.expose_secret()).is_ok_and(|url| url.scheme() == "amqps")
    }

    /// The `host:port` of every entry, in the order given (the default port filled in).
    pub fn addresses(&self) -> Vec<&str> {
        self.nodes.iter().map(Node::address).collect()
    }

    pub(crate) fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Every entry with the `heartbeat` (seconds) and `connection_timeout` (milliseconds)
    /// query parameters set, replacing any it had; other parameters are kept.
    pub(super) fn with_timeouts(
        &self,
        heartbeat: Duration,
        connection_timeout: Duration,
    ) -> Vec<String> {
        (self.nodes.iter())
            .map(|node| with_timeouts(node.secret.expose_secret(), heartbeat, connection_timeout))
            .collect()
    }
}

/// `raw` with the `heartbeat` and `connection_timeout` query parameters set.
fn with_timeouts(raw: &str, heartbeat: Duration, connection_timeout: Duration) -> String {
    let Ok(mut url) = Url::parse(raw) else {
        return raw.to_owned(); // Unreachable: a `Node` is parsed before it exists.
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

impl FromStr for BrokerUrl {
    type Err = ConfigError;

    /// Parses and checks one URL or a comma-separated list; an error names the setting
    /// `url`, says which entry is at fault, and shows the value redacted.
    fn from_str(raw: &str) -> Result<Self, ConfigError> {
        let entries: Vec<&str> = raw.split(',').map(str::trim).collect();
        let redacted = redact_list(raw);
        let count = entries.len();
        let fail = |reason: String| ConfigError::invalid(KEY, reason, &redacted);
        let mut nodes = Vec::with_capacity(count);
        let mut parsed = Vec::with_capacity(count);
        for (i, entry) in entries.iter().enumerate() {
            let which = |reason: String| match count {
                1 => reason,
                _ => format!("entry {} of {count}: {reason}", i + 1),
            };
            if entry.is_empty() {
                return Err(fail(which("expected a url, the entry is empty".into())));
            }
            let (node, uri) = parse_node(entry, &redacted).map_err(|reason| fail(which(reason)))?;
            nodes.push(node);
            parsed.push(uri);
        }
        let first = &parsed[0];
        if parsed.iter().any(|uri| uri.scheme != first.scheme) {
            return Err(fail(
                "the list mixes `amqp` and `amqps` entries, refused: it would let a connection fall back to plain text".into(),
            ));
        }
        if parsed.iter().any(|uri| uri.vhost != first.vhost) {
            return Err(fail("the entries name different virtual hosts".into()));
        }
        let user = |uri: &AMQPUri| uri.authority.userinfo.username.clone();
        if parsed.iter().any(|uri| user(uri) != user(first)) {
            return Err(fail("the entries name different users".into()));
        }
        Ok(Self {
            secret: raw.into(),
            redacted,
            nodes,
        })
    }
}

/// Checks one entry as the AMQP client will read it. An error is a reason that quotes
/// no part of the URL that `visible`, the redacted list the error will show, hides.
fn parse_node(raw: &str, visible: &str) -> Result<(Node, AMQPUri), String> {
    let url = Url::parse(raw).map_err(|e| format!("invalid url ({e})"))?;
    match url.host() {
        _ if !matches!(url.scheme(), "amqp" | "amqps") => {
            return Err("expected scheme `amqp` or `amqps`".into());
        }
        None | Some(Host::Domain("")) => return Err("expected a host".into()),
        // lapin reads `Url::domain()`, which is `None` for IPv6 literals, and would
        // silently connect to `localhost` instead.
        Some(Host::Ipv6(_)) => {
            return Err(
                "expected a host name or ipv4 address, the amqp client does not support ipv6 addresses"
                    .into(),
            );
        }
        Some(_) => {}
    }
    if has_at_after_host(&url) {
        return Err(
            "an `@` after the host: a user or password holding `/`, `?` or `#` must percent-encode it (`%2F`, `%3F`, `%23`), and an `@` in the virtual host or query too (`%40`)"
                .into(),
        );
    }
    check_percent_encoding(&url)?;
    check_query(&url, visible)?;
    // Parse it as lapin will, so whatever else it refuses is a config error and not a
    // connect error.
    let uri = with_timeouts(raw, Duration::from_secs(10), Duration::from_secs(5));
    let message = match uri.parse::<AMQPUri>() {
        Ok(uri) => {
            let node = Node {
                secret: raw.into(),
                redacted: redact(raw),
                address: format!("{}:{}", uri.authority.host, uri.authority.port),
            };
            return Ok((node, uri));
        }
        Err(message) => message,
    };
    // lapin's messages quote no URL parts once the URL has a host; keep it that way.
    let password = url.password().unwrap_or_default();
    let decoded = percent_encoding::percent_decode_str(password).decode_utf8_lossy();
    let leaks = message.contains("://")
        || (!password.is_empty() && (message.contains(password) || message.contains(&*decoded)));
    Err(match leaks {
        true => "rejected by the amqp client".to_owned(),
        false => format!("rejected by the amqp client ({})", message.to_lowercase()),
    })
}

/// The query parameters the AMQP client reads (amq-protocol-uri), with the largest value
/// of the numeric ones (the integer type it parses them into). `heartbeat` and
/// `connection_timeout` are replaced by the settings of the same name when connecting,
/// but a malformed one is refused all the same: it is a mistake either way.
const QUERY_PARAMETERS: &[(&str, Option<u64>)] = &[
    ("heartbeat", Some(u16::MAX as u64)),
    ("connection_timeout", Some(u64::MAX)),
    ("channel_max", Some(u16::MAX as u64)),
    ("frame_max", Some(u32::MAX as u64)),
    ("auth_mechanism", None),
];

/// The SASL mechanisms `auth_mechanism` may name (case-insensitive), as the AMQP client
/// reads them.
const AUTH_MECHANISMS: &[&str] = &[
    "plain",
    "amqplain",
    "external",
    "anonymous",
    "rabbit-cr-demo",
];

/// Refuses a `%` not followed by two hexadecimal digits (`%ZZ`, a trailing `%4`) in the
/// user, password, host, virtual host or query, and a user, password or virtual host
/// that is not UTF-8 once decoded. The AMQP client would pass a malformed escape
/// through as it is (`%ZZ` stays three characters), so a password or virtual host would
/// silently not be the one meant. Names the part; quotes none of it.
fn check_percent_encoding(url: &Url) -> Result<(), String> {
    let vhost = url.path().get(1..).unwrap_or_default();
    let parts = [
        ("user", url.username(), true),
        ("password", url.password().unwrap_or_default(), true),
        ("host", url.host_str().unwrap_or_default(), false),
        ("virtual host", vhost, true),
        ("query", url.query().unwrap_or_default(), false),
    ];
    for (part, raw, text) in parts {
        let bytes = raw.as_bytes();
        let malformed = (bytes.iter().enumerate()).any(|(i, &b)| {
            b == b'%'
                && !(bytes.get(i + 1..i + 3))
                    .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
        });
        if malformed {
            return Err(format!(
                "the {part} has a malformed percent-encoding (`%` must be followed by two hexadecimal digits)"
            ));
        }
        if text
            && percent_encoding::percent_decode_str(raw)
                .decode_utf8()
                .is_err()
        {
            return Err(format!("the {part} is not UTF-8 once percent-decoded"));
        }
    }
    Ok(())
}

/// Refuses an unknown query parameter (a misspelt one would be ignored silently by the
/// AMQP client), one given twice, and a value the client cannot read: a numeric one out
/// of its range or not a whole number, an unknown `auth_mechanism`. The error names the
/// parameter, never its value; an unknown one only when `visible` (the redacted URL the
/// error shows) holds it as written — a mangled URL can put part of a password there.
fn check_query(url: &Url, visible: &str) -> Result<(), String> {
    let mut seen: Vec<&str> = Vec::new();
    let segments = url.query().unwrap_or_default().split('&');
    for segment in segments.filter(|segment| !segment.is_empty()) {
        let Some((key, value)) = url::form_urlencoded::parse(segment.as_bytes()).next() else {
            continue;
        };
        let Some(&(name, max)) = QUERY_PARAMETERS.iter().find(|(name, _)| *name == key) else {
            let known: Vec<&str> = QUERY_PARAMETERS.iter().map(|(name, _)| *name).collect();
            let written = segment.split('=').next().unwrap_or_default();
            let which = match visible.contains(written) {
                true => {
                    let shown: String = key.chars().take(40).flat_map(char::escape_debug).collect();
                    format!("unknown query parameter `{shown}`")
                }
                false => "an unknown query parameter".to_owned(),
            };
            return Err(format!("{which}, expected {}", known.join(", ")));
        };
        if seen.contains(&name) {
            return Err(format!("query parameter `{name}` is given more than once"));
        }
        seen.push(name);
        let fits = match max {
            Some(max) => value.parse::<u64>().is_ok_and(|n| n <= max),
            None => AUTH_MECHANISMS.contains(&value.to_lowercase().as_str()),
        };
        if !fits {
            return Err(match max {
                Some(max) => {
                    format!("query parameter `{name}`: expected a whole number from 0 to {max}")
                }
                None => format!(
                    "query parameter `{name}`: expected one of {}",
                    AUTH_MECHANISMS.join(", ")
                ),
            });
        }
    }
    Ok(())
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

/// Replaces the passwords of a comma-separated list of URLs by `***`. When an entry is
/// no URL with a host (a password holding a raw comma would split into such entries),
/// the whole list is redacted as one: hiding too much rather than too little.
pub(super) fn redact_list(raw: &str) -> String {
    if !raw.contains(',') {
        return redact(raw);
    }
    let entries: Vec<&str> = raw.split(',').collect();
    let all_urls = (entries.iter()).all(|e| Url::parse(e.trim()).is_ok_and(|u| u.has_host()));
    match all_urls {
        true => entries
            .iter()
            .map(|e| redact(e))
            .collect::<Vec<_>>()
            .join(","),
        false => redact_raw(raw),
    }
}

/// Whether an `@` follows the host (in the path, query or fragment): what a password
/// holding a raw `/`, `?` or `#` becomes (`amqp://app:/s3cret@rabbit` is the host `app`
/// and the virtual host `s3cret@rabbit`), so such a URL is refused and redacted as text.
fn has_at_after_host(url: &Url) -> bool {
    url.path().contains('@')
        || url.query().is_some_and(|q| q.contains('@'))
        || url.fragment().is_some_and(|f| f.contains('@'))
}

/// Replaces the password of a URL, which may be invalid, by `***`.
pub(crate) fn redact(raw: &str) -> String {
    match Url::parse(raw) {
        // Maybe a password that ended the authority early: hide up to the last `@`.
        Ok(url) if has_at_after_host(&url) => redact_raw(raw),
        Ok(url) if url.has_host() && url.password().is_none() => raw.to_owned(),
        Ok(mut url) if url.has_host() => match url.set_password(Some(REDACTED)) {
            Ok(()) => url.into(),
            Err(()) => redact_raw(raw),
        },
        _ => redact_raw(raw),
    }
}

/// Redacts without parsing: everything between the first `:` of what could be the userinfo
/// and the last `@`. Without an `@`, whatever follows a `:` in the authority of a
/// `scheme://…` string (`amqp://user:secret` is a user and a password with the `@host`
/// forgotten, or a host and a port: it cannot be told which). Errs on the side of hiding
/// too much.
pub(super) fn redact_raw(raw: &str) -> String {
    let scheme = |s: &str| (s.bytes()).all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    // In a list, the entries after the last `@` are redacted on their own (one of them
    // may have forgotten its `@host`).
    if let Some(split) = raw
        .rfind('@')
        .and_then(|at| raw[at..].find(',').map(|c| at + c))
    {
        return format!(
            "{},{}",
            redact_raw(&raw[..split]),
            redact_raw(&raw[split + 1..])
        );
    }
    let Some(at) = raw.rfind('@') else {
        let Some(start) = raw
            .find("://")
            .filter(|&i| scheme(&raw[..i]))
            .map(|i| i + 3)
        else {
            return raw.to_owned();
        };
        let end = raw[start..]
            .find(['/', '?', '#'])
            .map_or(raw.len(), |i| start + i);
        return match raw[start..end].find(':') {
            Some(colon) => format!("{}{REDACTED}{}", &raw[..start + colon + 1], &raw[end..]),
            None => raw.to_owned(),
        };
    };
    let start = match raw.find("://") {
        Some(i) if i < at && scheme(&raw[..i]) => i + 3,
        _ => 0,
    };
    match raw[start..at].find(':') {
        Some(colon) => format!("{}{REDACTED}{}", &raw[..start + colon + 1], &raw[at..]),
        None => raw.to_owned(),
    }
}

#[cfg(test)]
mod tests;

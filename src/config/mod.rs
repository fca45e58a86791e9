//! Publisher configuration: one plain struct, set in code, read from the environment or
//! deserialized from a config file; see [`PublisherConfig`].

mod archive;
mod env;
mod error;
mod names;
mod rules;
mod tls;
mod unroutable;
pub(crate) mod url;

#[cfg(test)]
mod tests;

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;
use serde_with::{As, DurationMilliSeconds, DurationSeconds};

pub use self::{
    archive::ArchivePatterns, error::ConfigError, unroutable::UnroutablePolicy, url::BrokerUrl,
};
pub(crate) use self::{
    archive::{ARCHIVE_SUFFIX, topic_matches},
    tls::TlsClient,
    unroutable::UNROUTED_SUFFIX,
};
use self::{
    env::{flag, unknown_fields},
    names::Naming,
};
use crate::schema::UnknownFields;

/// The prefix of every environment variable [`PublisherConfig::from_env`] reads.
pub const ENV_PREFIX: &str = "FITVIZ_EVENTS_";

/// Upper bound of every duration in milliseconds (one hour), so deadlines never overflow.
const MAX_MS: u64 = 3_600_000;

/// The default of [`PublisherConfig::max_body_bytes`]: 1 MiB.
pub(crate) const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// A duration read as whole milliseconds.
type Millis = DurationMilliSeconds<u64>;
/// A duration read as whole seconds.
type Secs = DurationSeconds<u64>;

/// The configuration of a publisher: one public field per setting.
///
///  `PublisherConfig` has a public field per setting and [`Default`] gives every default;
///  the [table below](#the-settings) lists each setting's variable, default and accepted
///  values (a test keeps it in step with this module); the
///  [configuration guide](crate::guide::configuration) says how they are read.
///
///  - **In code**: `PublisherConfig { pool_size: 8, ..Default::default() }`.
///  - **Environment**: [`from_env`](Self::from_env) reads the `FITVIZ_EVENTS_*`
///    variables ([`from_vars`](Self::from_vars) reads given pairs instead). Values
///    are trimmed; an unset, empty or blank variable takes the default; unknown variables,
///    also ones with the [`ENV_PREFIX`], are ignored. Booleans are `true`/`false`, `1`/`0`,
///    `yes`/`no` or `on`/`off`, in any case.
///  - **Config files**: [`PublisherConfig`] implements [`Deserialize`]. A key is the variable
///    name without the prefix, in lower case (`pool_size`, `confirm_timeout_ms`,
///    `heartbeat_secs`, `breaker_open_ms`); a missing key takes the default, an unknown key is
///    an error. Durations are whole milliseconds (`*_ms`) or seconds (`*_secs`); booleans may
///    also be spelled as in the environment.
///
///  # Validation
///
///  [`validate`](Self::validate) checks every range and the rules between settings
///  (`publish_timeout` at least `confirm_timeout`, no `amq.*` exchange to declare, …).
///  `from_env` and `from_vars` validate before they return; a config built in code or
///  deserialized from a file is validated by
///  [`EventPublisher::connect`](crate::EventPublisher::connect) (or call `validate` yourself).
///  The URL is checked whenever a [`BrokerUrl`] is made.
///
///  A [`ConfigError`] names the setting the way its source does — the environment variable
///  (`FITVIZ_EVENTS_POOL_SIZE`) for `from_env`/`from_vars`, the config file key (`pool_size`,
///  `confirm_timeout_ms`) otherwise — and never contains the broker password.
///
///  # Example
///
///  ```
///  use std::time::Duration;
///  use fitviz_events::PublisherConfig;
///
///  let config = PublisherConfig {
///      url: "amqps://billing:s3cret@rabbit.internal/fitviz".parse()?,
///      pool_size: 8,
///      confirm_timeout: Duration::from_secs(2),
///      connection_name: Some("billing-api".into()),
///      ..Default::default()
///  };
///  config.validate()?;
///  assert_eq!(config.redacted_url(), "amqps://billing:***@rabbit.internal/fitviz");
///  assert!(!format!("{config:?}").contains("s3cret"));
///  assert_eq!(
///      config.amqp_uris(),
///      ["amqps://billing:s3cret@rabbit.internal/fitviz?heartbeat=10&connection_timeout=5000"]
///  );
///
///  let err = PublisherConfig { retry_attempts: 50, ..Default::default() }.validate().unwrap_err();
///  assert_eq!(err.field(), "retry_attempts");
///  assert_eq!(err.to_string(), "retry_attempts: expected an integer from 0 to 20, got `50`");
///  # Ok::<(), fitviz_events::config::ConfigError>(())
///  ```
///
///  Reading variables (use [`from_env`](Self::from_env) for the real environment):
///
///  ```
///  use fitviz_events::PublisherConfig;
///
///  let config = PublisherConfig::from_vars([
///      ("FITVIZ_EVENTS_EXCHANGE", "fitviz.billing"),
///      ("FITVIZ_EVENTS_VALIDATION", "off"),
///      ("PATH", "/usr/bin"),
///  ])?;
///  assert_eq!(config.exchange, "fitviz.billing");
///  assert!(!config.validation);
///
///  let err = PublisherConfig::from_vars([("FITVIZ_EVENTS_POOL_SIZE", "0")]).unwrap_err();
///  assert_eq!(err.field(), "FITVIZ_EVENTS_POOL_SIZE");
///  assert_eq!(
///      err.to_string(),
///      "FITVIZ_EVENTS_POOL_SIZE: expected an integer from 1 to 1024, got `0`"
///  );
///
///  let err = PublisherConfig::from_vars([("FITVIZ_EVENTS_URL", "http://app:s3cret@rabbit/")])
///      .unwrap_err();
///  assert_eq!(
///      err.to_string(),
///      "FITVIZ_EVENTS_URL: expected scheme `amqp` or `amqps`, got `http://app:***@rabbit/`"
///  );
///  # Ok::<(), fitviz_events::config::ConfigError>(())
///  ```
///
///  A config file section (here JSON; any serde format works):
///
///  ```
///  use std::time::Duration;
///  use fitviz_events::PublisherConfig;
///
///  let config: PublisherConfig =
///      serde_json::from_str(r#"{ "pool_size": 8, "confirm_timeout_ms": 2000 }"#).unwrap();
///  assert_eq!(config.confirm_timeout, Duration::from_secs(2));
///  config.validate()?;
///
///  let config: PublisherConfig = serde_json::from_str(r#"{ "publish_timeout_ms": 10 }"#).unwrap();
///  assert_eq!(
///      config.validate().unwrap_err().to_string(),
///      "publish_timeout_ms: expected at least confirm_timeout_ms (5000), got `10`"
///  );
///  # Ok::<(), fitviz_events::config::ConfigError>(())
///  ```
///
/// `Debug` shows the URL with its password replaced by `***`.
///
/// # The settings
///
/// Each variable, its default and what it accepts (the config-file key is the variable
/// without its `FITVIZ_EVENTS_` prefix, in lower case):
///
#[doc = include_str!("../../docs/reference/settings.md")]
// A new setting is a field with a doc line and its rule (`rules.rs`), a line in `Default`
// and a row in the table of `docs/reference/settings.md` (a test checks it). A duration is read as a number in the
// unit its key ends with: the key is the field name plus `_ms` or `_secs` (replacing a final
// `_duration`), set with `#[serde(rename)]`; errors find the key by that convention.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, garde::Validate)]
#[serde(default, deny_unknown_fields)]
#[garde(context(Naming))]
pub struct PublisherConfig {
    /// The broker URL, `amqp://` or `amqps://`, or a comma-separated list of them (the
    /// nodes of a cluster, tried in a shuffled order); passwords are never shown.
    #[garde(skip)]
    pub url: BrokerUrl,
    /// The topic exchange events are published to.
    #[garde(
        custom(rules::exchange_name),
        custom(rules::not_reserved(self.declare_exchange)),
        custom(rules::leaves_room_for_unrouted(self.unroutable)),
        custom(rules::leaves_room_for_archive(self.archive.is_on()))
    )]
    pub exchange: String,
    /// Whether to declare the exchange (durable topic) on connect; `false` only checks it exists.
    #[serde(deserialize_with = "flag")]
    #[garde(skip)]
    pub declare_exchange: bool,
    /// What happens to an event no queue is bound for: kept in `<exchange>.unrouted`
    /// (`alternate-exchange`, the default), an error, or ignored; see [`UnroutablePolicy`].
    #[garde(skip)]
    pub unroutable: UnroutablePolicy,
    /// The event types the archive stream `<exchange>.archive` keeps: `off` (the
    /// default), `on` (every event) or topic patterns; their receipts say
    /// [`Routing::Archived`](crate::Routing::Archived). See [`ArchivePatterns`].
    #[garde(skip)]
    pub archive: ArchivePatterns,
    /// The name of the publishing application, stamped on every event (`source`, `app_id`).
    #[garde(custom(rules::text))]
    pub source: String,
    /// How many confirm-mode channels publishes are spread over.
    #[garde(custom(rules::int(1, 1024)))]
    pub pool_size: usize,
    /// How many publishes may await their broker confirm on one channel.
    #[garde(custom(rules::int(1, 65_535)))]
    pub max_in_flight: usize,
    /// The share, in percent, of all publishes in flight (`pool_size × max_in_flight`) one
    /// organization may hold; its further publishes wait, within their deadline (see
    /// [`fairness`](crate::fairness)). 100 turns the per-organization limit off.
    #[garde(custom(rules::int(1, 100)))]
    pub max_in_flight_per_organization_percent: u8,
    /// How long a confirm may be late before the publisher asks the connection whether
    /// the broker is still there. Over the AMQP transport (the default): after this long
    /// without a confirm, one round trip goes over the connection; if the broker answers
    /// within `min(confirm_timeout, 2 s)`, the publish keeps waiting for the confirm it has
    /// in flight (a quorum queue electing a new leader holds confirms for up to ~10 s), up
    /// to `publish_timeout`; if not, the attempt fails with `Timeout` and is retried. Over
    /// any other transport, the deadline of one attempt.
    #[serde(rename = "confirm_timeout_ms", with = "As::<Millis>")]
    #[garde(custom(rules::millis(1, MAX_MS)))]
    pub confirm_timeout: Duration,
    /// The deadline of a publish across all attempts and backoff delays.
    #[serde(rename = "publish_timeout_ms", with = "As::<Millis>")]
    #[garde(
        custom(rules::millis(1, MAX_MS)),
        custom(rules::at_least("confirm_timeout", self.confirm_timeout))
    )]
    pub publish_timeout: Duration,
    /// How many times a retryable failure is retried after the first attempt. 5 by
    /// default: after a quorum queue's leader is lost, RabbitMQ nacks the publishes of every
    /// channel that used it until a new leader is elected, and every lane's channel did;
    /// 5 retries with the default backoff span 1.55–3.1 s, 3 spanned only 0.35–0.7 s and
    /// ran out during elections (`tests/cluster.rs`).
    #[garde(custom(rules::int(0, 20)))]
    pub retry_attempts: u32,
    /// The first backoff delay between attempts.
    #[serde(rename = "retry_base_delay_ms", with = "As::<Millis>")]
    #[garde(custom(rules::millis(1, MAX_MS)))]
    pub retry_base_delay: Duration,
    /// The cap on backoff delays.
    #[serde(rename = "retry_max_delay_ms", with = "As::<Millis>")]
    #[garde(
        custom(rules::millis(1, MAX_MS)),
        custom(rules::at_least("retry_base_delay", self.retry_base_delay))
    )]
    pub retry_max_delay: Duration,
    /// Whether events are validated before they are published.
    #[serde(deserialize_with = "flag")]
    #[garde(skip)]
    pub validation: bool,
    /// Whether JSON events of types the schema registry does not know may be published.
    #[serde(deserialize_with = "flag")]
    #[garde(skip)]
    pub allow_unregistered: bool,
    /// What validation does with the fields of a JSON payload its type's schema does not
    /// name: forward them unchanged (the default) or reject the event; see
    /// [`UnknownFields`] for why forwarding is the default.
    #[serde(deserialize_with = "unknown_fields")]
    #[garde(skip)]
    pub unknown_fields: UnknownFields,
    /// The AMQP heartbeat interval, whole seconds (detects silent partitions).
    #[serde(rename = "heartbeat_secs", with = "As::<Secs>")]
    #[garde(custom(rules::secs(1, 65_535)))]
    pub heartbeat: Duration,
    /// The deadline of the TCP connect and the AMQP handshake.
    #[serde(rename = "connection_timeout_ms", with = "As::<Millis>")]
    #[garde(custom(rules::millis(1, MAX_MS)))]
    pub connection_timeout: Duration,
    /// How long a publish waits for a free pooled channel; zero fails at once.
    #[serde(rename = "pool_wait_timeout_ms", with = "As::<Millis>")]
    #[garde(custom(rules::millis(0, MAX_MS)))]
    pub pool_wait_timeout: Duration,
    /// The connection name shown in the broker's management UI; unset, the `source`.
    #[garde(inner(custom(rules::text)))]
    pub connection_name: Option<String>,
    /// How many consecutive broker failures open the circuit breaker.
    #[garde(custom(rules::int(1, u64::from(u32::MAX))))]
    pub breaker_failure_threshold: u32,
    /// How long the circuit breaker stays open before it lets a probe through.
    #[serde(rename = "breaker_open_ms", with = "As::<Millis>")]
    #[garde(custom(rules::millis(1_000, MAX_MS)))]
    pub breaker_open_duration: Duration,
    /// Events the detached queue ([`EventPublisher::spawn`](crate::EventPublisher::spawn)) holds.
    #[garde(custom(rules::int(1, 1_000_000)))]
    pub detached_capacity: usize,
    /// Detached events published at once.
    #[garde(custom(rules::int(1, 4096)))]
    pub detached_concurrency: usize,
    /// The share, in percent, of `detached_capacity` one organization's queued detached
    /// events may take; beyond it its `spawn` fails with `QueueFull`. 100 turns it off.
    #[garde(custom(rules::int(1, 100)))]
    pub detached_share_per_organization_percent: u8,
    /// How long a detached publish waits for room in a full queue; zero rejects at once.
    #[serde(rename = "detached_overflow_wait_ms", with = "As::<Millis>")]
    #[garde(custom(rules::millis(0, MAX_MS)))]
    pub detached_overflow_wait: Duration,
    /// The first delay before a detached event the stack gave up on is tried again.
    #[serde(rename = "detached_redelivery_base_delay_ms", with = "As::<Millis>")]
    #[garde(custom(rules::millis(1, MAX_MS)))]
    pub detached_redelivery_base_delay: Duration,
    /// The cap on the (doubling) redelivery delay of detached events.
    #[serde(rename = "detached_redelivery_max_delay_ms", with = "As::<Millis>")]
    #[garde(
        custom(rules::millis(1, MAX_MS)),
        custom(rules::at_least("detached_redelivery_base_delay", self.detached_redelivery_base_delay))
    )]
    pub detached_redelivery_max_delay: Duration,
    /// The largest encoded event body (the JSON envelope), in bytes; 1 KiB to 128 MiB,
    /// 1 MiB by default. A larger event is refused with
    /// [`ErrorKind::TooLarge`](crate::ErrorKind::TooLarge) while it is encoded, before any
    /// I/O, and never retried. Why 1 MiB and not RabbitMQ's own limit (128 MiB since 3.10,
    /// where a larger message is refused by closing the *channel*, failing every publish
    /// sharing it): a large message occupies the channel and the connection's socket while
    /// it is written, delaying every other tenant's events behind it, and FitViz events
    /// are small (a few hundred bytes) — consumers expect them small, and a megabyte is
    /// already a bug. Also the properties and headers must fit the connection's negotiated
    /// AMQP frame size (RabbitMQ's default `frame_max` is 131072 bytes), or the broker
    /// closes the whole connection; that is checked before publishing too.
    #[garde(custom(rules::int(1024, 134_217_728)))]
    pub max_body_bytes: usize,
    /// A PEM file of one or more CA certificates trusted for an `amqps://` broker, on top
    /// of the built-in roots (see [`tls_builtin_roots`](Self::tls_builtin_roots)).
    // The TLS settings are checked together, files read, by `tls.rs`.
    #[garde(skip)]
    pub tls_ca_file: Option<PathBuf>,
    /// Whether the built-in (webpki, Mozilla's) roots are trusted; `false` trusts only
    /// [`tls_ca_file`](Self::tls_ca_file), which is then required.
    #[serde(deserialize_with = "flag")]
    #[garde(skip)]
    pub tls_builtin_roots: bool,
    /// A PEM file of the client certificate chain for mutual TLS, leaf first; needs
    /// [`tls_key_file`](Self::tls_key_file).
    #[garde(skip)]
    pub tls_cert_file: Option<PathBuf>,
    /// A PEM file of the private key of [`tls_cert_file`](Self::tls_cert_file) (PKCS#8,
    /// PKCS#1 or SEC1). Its contents are never shown.
    #[garde(skip)]
    pub tls_key_file: Option<PathBuf>,
    /// The name the broker's certificate must carry when it is not the URL's host.
    #[garde(skip)]
    pub tls_server_name: Option<String>,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        Self {
            url: BrokerUrl::default(),
            exchange: "fitviz.events".to_owned(),
            declare_exchange: true,
            unroutable: UnroutablePolicy::AlternateExchange,
            archive: ArchivePatterns::off(),
            source: "fitviz-service".to_owned(),
            pool_size: 4,
            max_in_flight: 256,
            max_in_flight_per_organization_percent: 25,
            confirm_timeout: Duration::from_secs(5),
            publish_timeout: Duration::from_secs(15),
            retry_attempts: 5,
            retry_base_delay: Duration::from_millis(100),
            retry_max_delay: Duration::from_secs(2),
            validation: true,
            allow_unregistered: false,
            unknown_fields: UnknownFields::Forward,
            heartbeat: Duration::from_secs(10),
            connection_timeout: Duration::from_secs(5),
            pool_wait_timeout: Duration::from_secs(1),
            connection_name: None,
            breaker_failure_threshold: 5,
            breaker_open_duration: Duration::from_secs(5),
            detached_capacity: 10_000,
            detached_concurrency: 64,
            detached_share_per_organization_percent: 50,
            detached_overflow_wait: Duration::ZERO,
            detached_redelivery_base_delay: Duration::from_millis(200),
            detached_redelivery_max_delay: Duration::from_secs(5),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            tls_ca_file: None,
            tls_builtin_roots: true,
            tls_cert_file: None,
            tls_key_file: None,
            tls_server_name: None,
        }
    }
}

impl PublisherConfig {
    /// Reads the `FITVIZ_EVENTS_*` variables of the process environment over the defaults,
    /// then [validates](Self::validate).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first invalid variable (in the order of the fields), also
    /// when a variable is not valid Unicode.
    pub fn from_env() -> Result<Self, ConfigError> {
        env::load(std::env::vars_os().filter_map(|(name, value)| {
            let value = value
                .into_string()
                .map_err(|v| v.to_string_lossy().into_owned());
            Some((name.into_string().ok()?, value))
        }))
    }

    /// Like [`from_env`](Self::from_env), reading the given `(name, value)` pairs instead of
    /// the process environment. Names that are not `FITVIZ_EVENTS_*` settings are ignored;
    /// of repeated names the last wins.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first invalid variable, in the order of the fields.
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        env::load(
            vars.into_iter()
                .map(|(name, value)| (name.as_ref().to_owned(), Ok(value.as_ref().to_owned()))),
        )
    }

    /// Checks every setting's range and the rules between settings.
    ///
    /// # Errors
    /// A [`ConfigError`] naming, by its config file key, the first invalid field in the order
    /// of the fields; for two fields that contradict each other (`publish_timeout` shorter
    /// than `confirm_timeout`, `retry_max_delay` shorter than `retry_base_delay`,
    /// `detached_redelivery_max_delay` shorter than `detached_redelivery_base_delay`, an
    /// `amq.*` `exchange` that would be declared) the later one, or the exchange.
    ///
    /// The TLS settings are checked last, their files read: a TLS setting with an `amqp://`
    /// URL, a file that cannot be read or holds no valid certificate or key, a certificate
    /// without its key (or the reverse), a key that does not match its certificate,
    /// `tls_builtin_roots = false` without a `tls_ca_file`. The error names the setting and
    /// the file, never the file's contents.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check(Naming::Key).map(drop)
    }

    /// [`validate`](Self::validate), then the TLS client of an `amqps://` URL (`None` for
    /// `amqp://`), so that the TLS files are read once.
    pub(crate) fn validated_tls(&self) -> Result<Option<TlsClient>, ConfigError> {
        self.check(Naming::Key)
    }

    /// [`validate`](Self::validate), naming settings as `naming` does; the TLS client.
    fn check(&self, naming: Naming) -> Result<Option<TlsClient>, ConfigError> {
        self.check_ranges(naming)?;
        tls::client(self, naming)
    }

    /// The garde rules of the fields.
    fn check_ranges(&self, naming: Naming) -> Result<(), ConfigError> {
        garde::Validate::validate_with(self, &naming).map_err(|report| {
            // The first field in declaration order; of its errors, the first rule's.
            let keys = names::keys();
            let (key, error) = report
                .iter()
                .map(|(path, error)| (names::key_of(&path.to_string()), error))
                .min_by_key(|(key, _)| keys.iter().position(|k| k == key))
                .expect("a failed validation reports an error");
            ConfigError::new(naming.name_key(key), error.message())
        })
    }

    /// The broker URLs with the passwords replaced by `***`, safe to log, e.g.
    /// `amqp://guest:***@127.0.0.1:5672/%2f`. A URL without a password is returned unchanged.
    pub fn redacted_url(&self) -> String {
        self.url.redacted()
    }

    /// The most publishes one organization may have in flight:
    /// `max_in_flight_per_organization_percent` of `pool_size × max_in_flight`, rounded
    /// up, at least 1.
    pub fn max_in_flight_per_organization(&self) -> usize {
        share(
            self.pool_size.saturating_mul(self.max_in_flight),
            self.max_in_flight_per_organization_percent,
        )
    }

    /// The most detached events one organization may have queued or in progress:
    /// `detached_share_per_organization_percent` of `detached_capacity`, rounded up, at
    /// least 1.
    pub fn detached_share_per_organization(&self) -> usize {
        share(
            self.detached_capacity,
            self.detached_share_per_organization_percent,
        )
    }

    /// The URLs to connect with, one per entry of [`url`](Self::url): each with the
    /// `heartbeat` (seconds) and `connection_timeout` (milliseconds) query parameters set
    /// from this config, replacing any the URL already had; other parameters are kept.
    /// This is the form lapin reads. They contain the password.
    pub fn amqp_uris(&self) -> Vec<String> {
        self.url
            .with_timeouts(self.heartbeat, self.connection_timeout)
    }
}

/// `percent` % of `total`, rounded up, at least 1.
fn share(total: usize, percent: u8) -> usize {
    (total.saturating_mul(usize::from(percent)).div_ceil(100)).max(1)
}

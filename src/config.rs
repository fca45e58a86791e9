//! Publisher configuration: validated settings built in code, read from the environment or
//! deserialized from a config file.
//!
//! Every way of making a [`PublisherConfig`] ([`builder`](PublisherConfig::builder),
//! [`from_env`](PublisherConfig::from_env), [`from_vars`](PublisherConfig::from_vars),
//! [`Deserialize`]) runs the same validation, so a config that exists is one the publisher
//! can use. A [`ConfigError`] names the setting the way its source does — the builder method
//! (`pool_size`), the environment variable (`FITVIZ_EVENTS_POOL_SIZE`) or the config file key
//! (`pool_size`, `confirm_timeout_ms`) — and never contains the broker password: the URL is
//! shown as [`redacted_url`](PublisherConfig::redacted_url) would show it.
//!
//! # Environment variables
//!
//! Values are trimmed; an unset, empty or blank variable takes the default. Variables not in
//! this table, including unknown ones with the [`ENV_PREFIX`], are ignored.
//!
//! | Variable | Default | Accepted values |
//! |---|---|---|
//! | `FITVIZ_EVENTS_URL` | `amqp://guest:guest@127.0.0.1:5672/%2f` | an `amqp://` or `amqps://` URL with a host name or IPv4 address |
//! | `FITVIZ_EVENTS_EXCHANGE` | `fitviz.events` | 1 to 255 letters, digits, `-`, `_`, `.`, `:`; not `amq.*` while declaring |
//! | `FITVIZ_EVENTS_DECLARE_EXCHANGE` | `true` | boolean; `false` only checks that the exchange exists (passive declare) |
//! | `FITVIZ_EVENTS_SOURCE` | `fitviz-service` | application name, 1 to 255 bytes, no control characters |
//! | `FITVIZ_EVENTS_POOL_SIZE` | `4` | channels in the pool, 1 to 1024 |
//! | `FITVIZ_EVENTS_MAX_IN_FLIGHT` | `256` | unconfirmed publishes per channel, 1 to 65535 |
//! | `FITVIZ_EVENTS_CONFIRM_TIMEOUT_MS` | `5000` | per attempt, including the broker confirm; 1 to 3600000 |
//! | `FITVIZ_EVENTS_PUBLISH_TIMEOUT_MS` | `15000` | overall deadline across all attempts; at least the confirm timeout, at most 3600000 |
//! | `FITVIZ_EVENTS_RETRY_ATTEMPTS` | `3` | retries after the first attempt, 0 to 20 |
//! | `FITVIZ_EVENTS_RETRY_BASE_DELAY_MS` | `100` | first backoff delay, 1 to 3600000 |
//! | `FITVIZ_EVENTS_RETRY_MAX_DELAY_MS` | `2000` | backoff cap; at least the base delay, at most 3600000 |
//! | `FITVIZ_EVENTS_VALIDATION` | `true` | boolean; validate events before publishing |
//! | `FITVIZ_EVENTS_ALLOW_UNREGISTERED` | `false` | boolean; publish event types the schema registry does not know |
//! | `FITVIZ_EVENTS_HEARTBEAT_SECS` | `10` | AMQP heartbeat, 1 to 65535 (0, no heartbeat, is not allowed) |
//! | `FITVIZ_EVENTS_CONNECTION_TIMEOUT_MS` | `5000` | TCP connect and AMQP handshake, 1 to 3600000 |
//! | `FITVIZ_EVENTS_POOL_WAIT_TIMEOUT_MS` | `1000` | wait for a free pooled channel, 0 (fail at once) to 3600000 |
//! | `FITVIZ_EVENTS_CONNECTION_NAME` | unset | connection name shown in the broker, 1 to 255 bytes, no control characters |
//! | `FITVIZ_EVENTS_BREAKER_FAILURE_THRESHOLD` | `5` | consecutive broker failures that open the circuit breaker, 1 to 4294967295 |
//! | `FITVIZ_EVENTS_BREAKER_OPEN_MS` | `5000` | how long the breaker stays open before a probe, 1000 to 3600000 |
//!
//! Booleans are `true`/`false`, `1`/`0`, `yes`/`no` or `on`/`off`, in any case.
//!
//! # Config files
//!
//! [`PublisherConfig`] implements [`Deserialize`]: the keys are the variable names without
//! the prefix, in lower case (`url`, `pool_size`, `confirm_timeout_ms`, `heartbeat_secs`,
//! `breaker_open_ms`, …), all optional; numbers and booleans are JSON numbers and booleans.
//! Unknown keys are rejected.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use fitviz_events::PublisherConfig;
//!
//! let config = PublisherConfig::builder()
//!     .url("amqps://billing:s3cret@rabbit.internal/fitviz")
//!     .pool_size(8)
//!     .confirm_timeout(Duration::from_secs(2))
//!     .connection_name("billing-api")
//!     .build()?;
//! assert_eq!(config.pool_size(), 8);
//! assert_eq!(config.redacted_url(), "amqps://billing:***@rabbit.internal/fitviz");
//! assert!(!format!("{config:?}").contains("s3cret"));
//! assert_eq!(
//!     config.amqp_uri(),
//!     "amqps://billing:s3cret@rabbit.internal/fitviz?heartbeat=10&connection_timeout=5000"
//! );
//!
//! let err = PublisherConfig::builder().retry_attempts(50).build().unwrap_err();
//! assert_eq!(err.to_string(), "retry_attempts: expected an integer from 0 to 20, got `50`");
//! # Ok::<(), fitviz_events::ConfigError>(())
//! ```
//!
//! Reading variables (use [`from_env`](PublisherConfig::from_env) for the real environment):
//!
//! ```
//! use fitviz_events::PublisherConfig;
//!
//! let config = PublisherConfig::from_vars([
//!     ("FITVIZ_EVENTS_EXCHANGE", "fitviz.billing"),
//!     ("FITVIZ_EVENTS_VALIDATION", "off"),
//!     ("PATH", "/usr/bin"),
//! ])?;
//! assert_eq!(config.exchange(), "fitviz.billing");
//! assert!(!config.validation());
//!
//! let err = PublisherConfig::from_vars([("FITVIZ_EVENTS_POOL_SIZE", "abc")]).unwrap_err();
//! assert_eq!(err.field(), "FITVIZ_EVENTS_POOL_SIZE");
//! assert_eq!(
//!     err.to_string(),
//!     "FITVIZ_EVENTS_POOL_SIZE: expected an integer from 1 to 1024, got `abc`"
//! );
//!
//! let err = PublisherConfig::from_vars([("FITVIZ_EVENTS_URL", "http://app:s3cret@rabbit/")])
//!     .unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "FITVIZ_EVENTS_URL: expected scheme `amqp` or `amqps`, got `http://app:***@rabbit/`"
//! );
//! # Ok::<(), fitviz_events::ConfigError>(())
//! ```

use std::{fmt, time::Duration};

use serde::{Deserialize, Deserializer};
use url::{Host, Url};

/// The prefix of every environment variable [`PublisherConfig::from_env`] reads.
pub const ENV_PREFIX: &str = "FITVIZ_EVENTS_";

const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const DEFAULT_EXCHANGE: &str = "fitviz.events";
const DEFAULT_SOURCE: &str = "fitviz-service";
/// Upper bound of every duration in milliseconds (one hour), so deadlines never overflow.
const MAX_MS: u64 = 3_600_000;
/// AMQP short strings (exchange names, property values) hold at most 255 bytes.
const MAX_NAME_LEN: usize = 255;
/// Longest value, in characters, quoted in an error message.
const MAX_SHOWN_CHARS: usize = 200;
/// What replaces the password in redacted URLs.
const REDACTED: &str = "***";

// ---------------------------------------------------------------------------------------------
// The configuration
// ---------------------------------------------------------------------------------------------

/// The validated configuration of a publisher.
///
/// Make one with [`builder`](Self::builder), [`from_env`](Self::from_env),
/// [`from_vars`](Self::from_vars) or by deserializing a config file; see the
/// [module docs](self) for every setting and its default. [`Default`] gives the defaults.
///
/// `Debug` shows the [`redacted_url`](Self::redacted_url), never the password.
#[derive(Clone, PartialEq, Eq)]
pub struct PublisherConfig {
    url: String,
    parsed_url: Url,
    exchange: String,
    declare_exchange: bool,
    source: String,
    pool_size: usize,
    max_in_flight: usize,
    confirm_timeout: Duration,
    publish_timeout: Duration,
    retry_attempts: u32,
    retry_base_delay: Duration,
    retry_max_delay: Duration,
    validation: bool,
    allow_unregistered: bool,
    heartbeat: Duration,
    connection_timeout: Duration,
    pool_wait_timeout: Duration,
    connection_name: Option<String>,
    breaker_failure_threshold: u32,
    breaker_open_duration: Duration,
}

impl PublisherConfig {
    /// A builder holding every default; [`build`](PublisherConfigBuilder::build) validates.
    pub fn builder() -> PublisherConfigBuilder {
        PublisherConfigBuilder::default()
    }

    /// Reads the `FITVIZ_EVENTS_*` variables of the process environment (see the
    /// [module docs](self)); unset, empty or blank variables take the default.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first invalid variable (in the order of the table), also
    /// when a variable is not valid Unicode.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut values = RawValues::default();
        for (key, value) in std::env::vars_os() {
            let Some(field) = key.to_str().and_then(Field::from_var) else {
                continue;
            };
            let value = match value.into_string() {
                Ok(value) => RawValue::text(&value),
                Err(value) => Some(RawValue::NotUnicode(value.to_string_lossy().into_owned())),
            };
            values.set(field, value);
        }
        values.into_config()
    }

    /// Like [`from_env`](Self::from_env), reading the given `(name, value)` pairs instead of
    /// the process environment. Names that are not `FITVIZ_EVENTS_*` settings are ignored;
    /// of repeated names the last wins.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first invalid variable, in the order of the table.
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut values = RawValues::default();
        for (key, value) in vars {
            if let Some(field) = Field::from_var(key.as_ref()) {
                values.set(field, RawValue::text(value.as_ref()));
            }
        }
        values.into_config()
    }

    /// The broker URL as configured, password included: pass it to the connection and
    /// nowhere else (prefer [`amqp_uri`](Self::amqp_uri), which adds the timeouts). Log
    /// [`redacted_url`](Self::redacted_url) instead.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The broker URL with the password replaced by `***`, safe to log, e.g.
    /// `amqp://guest:***@127.0.0.1:5672/%2f`. A URL without a password is returned unchanged.
    pub fn redacted_url(&self) -> String {
        if self.parsed_url.password().is_none() {
            return self.url.clone();
        }
        let mut url = self.parsed_url.clone();
        match url.set_password(Some(REDACTED)) {
            Ok(()) => url.into(),
            // Unreachable for a validated URL (it has a host), but never fall back to the secret.
            Err(()) => redact_raw(&self.url),
        }
    }

    /// The exchange events are published to. Default `fitviz.events`.
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// Whether the publisher declares the exchange (durable topic) on connect; `false` only
    /// checks that it exists (a passive declare). Default `true`.
    pub fn declare_exchange(&self) -> bool {
        self.declare_exchange
    }

    /// The name of the publishing application, stamped on every event. Default `fitviz-service`.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// How many channels the pool holds, 1 to 1024. Default 4.
    pub fn pool_size(&self) -> usize {
        self.pool_size
    }

    /// How many publishes may await their broker confirm on one channel, 1 to 65535.
    /// Default 256.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// The deadline of one attempt, including the broker confirm. Default 5 s.
    pub fn confirm_timeout(&self) -> Duration {
        self.confirm_timeout
    }

    /// The overall deadline of a publish across all attempts and backoff delays, at least
    /// [`confirm_timeout`](Self::confirm_timeout). Default 15 s.
    pub fn publish_timeout(&self) -> Duration {
        self.publish_timeout
    }

    /// How many times a retryable failure is retried after the first attempt, 0 to 20.
    /// Default 3.
    pub fn retry_attempts(&self) -> u32 {
        self.retry_attempts
    }

    /// The first backoff delay between attempts. Default 100 ms.
    pub fn retry_base_delay(&self) -> Duration {
        self.retry_base_delay
    }

    /// The cap on backoff delays, at least [`retry_base_delay`](Self::retry_base_delay).
    /// Default 2 s.
    pub fn retry_max_delay(&self) -> Duration {
        self.retry_max_delay
    }

    /// Whether events are validated before they are published. Default `true`.
    pub fn validation(&self) -> bool {
        self.validation
    }

    /// Whether event types the schema registry does not know may be published. Default `false`.
    pub fn allow_unregistered(&self) -> bool {
        self.allow_unregistered
    }

    /// The AMQP heartbeat interval, whole seconds from 1 to 65535. Default 10 s.
    pub fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// The deadline of the TCP connect and the AMQP handshake. Default 5 s.
    pub fn connection_timeout(&self) -> Duration {
        self.connection_timeout
    }

    /// How long a publish waits for a free pooled channel; zero fails at once when all are
    /// busy. Default 1 s.
    pub fn pool_wait_timeout(&self) -> Duration {
        self.pool_wait_timeout
    }

    /// The connection name shown in the broker's management UI. Default none.
    pub fn connection_name(&self) -> Option<&str> {
        self.connection_name.as_deref()
    }

    /// How many consecutive broker failures open the circuit breaker, at least 1. Default 5.
    pub fn breaker_failure_threshold(&self) -> u32 {
        self.breaker_failure_threshold
    }

    /// How long the circuit breaker stays open before it lets a probe through, at least 1 s.
    /// Default 5 s.
    pub fn breaker_open_duration(&self) -> Duration {
        self.breaker_open_duration
    }

    /// The URL to connect with: [`url`](Self::url) with the `heartbeat` (seconds) and
    /// `connection_timeout` (milliseconds) query parameters set from this config, replacing
    /// any the URL already had; other parameters are kept. This is the form lapin reads.
    /// It contains the password.
    pub fn amqp_uri(&self) -> String {
        let kept: Vec<&str> = self
            .parsed_url
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|pair| {
                let key = url::form_urlencoded::parse(pair.as_bytes()).next();
                !matches!(key, Some((key, _)) if key == "heartbeat" || key == "connection_timeout")
                    && !pair.is_empty()
            })
            .collect();
        let mut query = kept.join("&");
        if !query.is_empty() {
            query.push('&');
        }
        query.push_str(&format!(
            "heartbeat={}&connection_timeout={}",
            self.heartbeat.as_secs(),
            self.connection_timeout.as_millis()
        ));
        let mut url = self.parsed_url.clone();
        url.set_query(Some(&query));
        url.into()
    }
}

impl Default for PublisherConfig {
    fn default() -> Self {
        Self::builder()
            .build()
            .expect("the default configuration is valid")
    }
}

impl fmt::Debug for PublisherConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublisherConfig")
            .field("url", &self.redacted_url())
            .field("exchange", &self.exchange)
            .field("declare_exchange", &self.declare_exchange)
            .field("source", &self.source)
            .field("pool_size", &self.pool_size)
            .field("max_in_flight", &self.max_in_flight)
            .field("confirm_timeout", &self.confirm_timeout)
            .field("publish_timeout", &self.publish_timeout)
            .field("retry_attempts", &self.retry_attempts)
            .field("retry_base_delay", &self.retry_base_delay)
            .field("retry_max_delay", &self.retry_max_delay)
            .field("validation", &self.validation)
            .field("allow_unregistered", &self.allow_unregistered)
            .field("heartbeat", &self.heartbeat)
            .field("connection_timeout", &self.connection_timeout)
            .field("pool_wait_timeout", &self.pool_wait_timeout)
            .field("connection_name", &self.connection_name)
            .field("breaker_failure_threshold", &self.breaker_failure_threshold)
            .field("breaker_open_duration", &self.breaker_open_duration)
            .finish()
    }
}

impl<'de> Deserialize<'de> for PublisherConfig {
    /// Reads a config file section: every key optional, unknown keys rejected, durations as
    /// `*_ms` integers (`heartbeat_secs` in seconds), then the builder's validation.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        RawConfig::deserialize(deserializer)?
            .into_config()
            .map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// The builder
// ---------------------------------------------------------------------------------------------

/// Builds a [`PublisherConfig`], starting from the defaults.
///
/// Each setter is named like the [`PublisherConfig`] getter it sets; nothing is checked
/// until [`build`](Self::build). `Debug` redacts the URL's password.
#[must_use]
#[derive(Clone)]
pub struct PublisherConfigBuilder {
    url: String,
    exchange: String,
    declare_exchange: bool,
    source: String,
    pool_size: usize,
    max_in_flight: usize,
    confirm_timeout: Duration,
    publish_timeout: Duration,
    retry_attempts: u32,
    retry_base_delay: Duration,
    retry_max_delay: Duration,
    validation: bool,
    allow_unregistered: bool,
    heartbeat: Duration,
    connection_timeout: Duration,
    pool_wait_timeout: Duration,
    connection_name: Option<String>,
    breaker_failure_threshold: u32,
    breaker_open_duration: Duration,
}

impl Default for PublisherConfigBuilder {
    fn default() -> Self {
        Self {
            url: DEFAULT_URL.to_owned(),
            exchange: DEFAULT_EXCHANGE.to_owned(),
            declare_exchange: true,
            source: DEFAULT_SOURCE.to_owned(),
            pool_size: 4,
            max_in_flight: 256,
            confirm_timeout: Duration::from_secs(5),
            publish_timeout: Duration::from_secs(15),
            retry_attempts: 3,
            retry_base_delay: Duration::from_millis(100),
            retry_max_delay: Duration::from_secs(2),
            validation: true,
            allow_unregistered: false,
            heartbeat: Duration::from_secs(10),
            connection_timeout: Duration::from_secs(5),
            pool_wait_timeout: Duration::from_secs(1),
            connection_name: None,
            breaker_failure_threshold: 5,
            breaker_open_duration: Duration::from_secs(5),
        }
    }
}

impl fmt::Debug for PublisherConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublisherConfigBuilder")
            .field("url", &redact(&self.url))
            .field("exchange", &self.exchange)
            .field("declare_exchange", &self.declare_exchange)
            .field("source", &self.source)
            .field("pool_size", &self.pool_size)
            .field("max_in_flight", &self.max_in_flight)
            .field("confirm_timeout", &self.confirm_timeout)
            .field("publish_timeout", &self.publish_timeout)
            .field("retry_attempts", &self.retry_attempts)
            .field("retry_base_delay", &self.retry_base_delay)
            .field("retry_max_delay", &self.retry_max_delay)
            .field("validation", &self.validation)
            .field("allow_unregistered", &self.allow_unregistered)
            .field("heartbeat", &self.heartbeat)
            .field("connection_timeout", &self.connection_timeout)
            .field("pool_wait_timeout", &self.pool_wait_timeout)
            .field("connection_name", &self.connection_name)
            .field("breaker_failure_threshold", &self.breaker_failure_threshold)
            .field("breaker_open_duration", &self.breaker_open_duration)
            .finish()
    }
}

impl PublisherConfigBuilder {
    /// Sets [`PublisherConfig::url`]: `amqp://` or `amqps://`, with a host.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self
    }

    /// Sets [`PublisherConfig::exchange`].
    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = exchange.into();
        self
    }

    /// Sets [`PublisherConfig::declare_exchange`].
    pub fn declare_exchange(mut self, declare: bool) -> Self {
        self.declare_exchange = declare;
        self
    }

    /// Sets [`PublisherConfig::source`].
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// Sets [`PublisherConfig::pool_size`], 1 to 1024.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// Sets [`PublisherConfig::max_in_flight`], 1 to 65535.
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.max_in_flight = max;
        self
    }

    /// Sets [`PublisherConfig::confirm_timeout`], 1 ms to 1 hour.
    pub fn confirm_timeout(mut self, timeout: Duration) -> Self {
        self.confirm_timeout = timeout;
        self
    }

    /// Sets [`PublisherConfig::publish_timeout`], from the confirm timeout to 1 hour.
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// Sets [`PublisherConfig::retry_attempts`], 0 to 20.
    pub fn retry_attempts(mut self, attempts: u32) -> Self {
        self.retry_attempts = attempts;
        self
    }

    /// Sets [`PublisherConfig::retry_base_delay`], 1 ms to 1 hour.
    pub fn retry_base_delay(mut self, delay: Duration) -> Self {
        self.retry_base_delay = delay;
        self
    }

    /// Sets [`PublisherConfig::retry_max_delay`], from the base delay to 1 hour.
    pub fn retry_max_delay(mut self, delay: Duration) -> Self {
        self.retry_max_delay = delay;
        self
    }

    /// Sets [`PublisherConfig::validation`].
    pub fn validation(mut self, validate: bool) -> Self {
        self.validation = validate;
        self
    }

    /// Sets [`PublisherConfig::allow_unregistered`].
    pub fn allow_unregistered(mut self, allow: bool) -> Self {
        self.allow_unregistered = allow;
        self
    }

    /// Sets [`PublisherConfig::heartbeat`], whole seconds from 1 to 65535.
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = interval;
        self
    }

    /// Sets [`PublisherConfig::connection_timeout`], 1 ms to 1 hour.
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// Sets [`PublisherConfig::pool_wait_timeout`], 0 to 1 hour.
    pub fn pool_wait_timeout(mut self, timeout: Duration) -> Self {
        self.pool_wait_timeout = timeout;
        self
    }

    /// Sets [`PublisherConfig::connection_name`], 1 to 255 bytes without control characters.
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = Some(name.into());
        self
    }

    /// Sets [`PublisherConfig::breaker_failure_threshold`], at least 1.
    pub fn breaker_failure_threshold(mut self, failures: u32) -> Self {
        self.breaker_failure_threshold = failures;
        self
    }

    /// Sets [`PublisherConfig::breaker_open_duration`], 1 s to 1 hour.
    pub fn breaker_open_duration(mut self, duration: Duration) -> Self {
        self.breaker_open_duration = duration;
        self
    }

    /// Validates every value and returns the configuration.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first invalid field (in the order of the setters), or the
    /// later of two fields that contradict each other (`publish_timeout` shorter than
    /// `confirm_timeout`, `retry_max_delay` shorter than `retry_base_delay`, an `amq.*`
    /// `exchange` that would be declared).
    pub fn build(self) -> Result<PublisherConfig, ConfigError> {
        self.validate(Style::Builder)
    }

    fn validate(self, style: Style) -> Result<PublisherConfig, ConfigError> {
        let parsed_url = parse_url(&self.url, style)?;
        if !is_exchange_name(&self.exchange) {
            return Err(Field::Exchange.invalid(style, &self.exchange));
        }
        if !is_text(&self.source) {
            return Err(Field::Source.invalid(style, &self.source));
        }
        Field::PoolSize.check_int(style, self.pool_size as u64)?;
        Field::MaxInFlight.check_int(style, self.max_in_flight as u64)?;
        Field::ConfirmTimeout.check_duration(style, self.confirm_timeout)?;
        Field::PublishTimeout.check_duration(style, self.publish_timeout)?;
        Field::RetryAttempts.check_int(style, u64::from(self.retry_attempts))?;
        Field::RetryBaseDelay.check_duration(style, self.retry_base_delay)?;
        Field::RetryMaxDelay.check_duration(style, self.retry_max_delay)?;
        Field::Heartbeat.check_duration(style, self.heartbeat)?;
        Field::ConnectionTimeout.check_duration(style, self.connection_timeout)?;
        Field::PoolWaitTimeout.check_duration(style, self.pool_wait_timeout)?;
        if let Some(name) = &self.connection_name {
            if !is_text(name) {
                return Err(Field::ConnectionName.invalid(style, name));
            }
        }
        Field::BreakerFailureThreshold
            .check_int(style, u64::from(self.breaker_failure_threshold))?;
        Field::BreakerOpen.check_duration(style, self.breaker_open_duration)?;

        if self.declare_exchange && self.exchange.starts_with("amq.") {
            return Err(ConfigError::new(
                Field::Exchange.label(style),
                format!(
                    "expected a name without the broker-reserved prefix `amq.` while {} is true",
                    Field::DeclareExchange.label(style)
                ),
                &self.exchange,
            ));
        }
        Field::PublishTimeout.check_at_least(
            style,
            self.publish_timeout,
            Field::ConfirmTimeout,
            self.confirm_timeout,
        )?;
        Field::RetryMaxDelay.check_at_least(
            style,
            self.retry_max_delay,
            Field::RetryBaseDelay,
            self.retry_base_delay,
        )?;

        let config = PublisherConfig {
            url: self.url,
            parsed_url,
            exchange: self.exchange,
            declare_exchange: self.declare_exchange,
            source: self.source,
            pool_size: self.pool_size,
            max_in_flight: self.max_in_flight,
            confirm_timeout: self.confirm_timeout,
            publish_timeout: self.publish_timeout,
            retry_attempts: self.retry_attempts,
            retry_base_delay: self.retry_base_delay,
            retry_max_delay: self.retry_max_delay,
            validation: self.validation,
            allow_unregistered: self.allow_unregistered,
            heartbeat: self.heartbeat,
            connection_timeout: self.connection_timeout,
            pool_wait_timeout: self.pool_wait_timeout,
            connection_name: self.connection_name,
            breaker_failure_threshold: self.breaker_failure_threshold,
            breaker_open_duration: self.breaker_open_duration,
        };
        check_client_accepts(&config, style)?;
        Ok(config)
    }
}

// ---------------------------------------------------------------------------------------------
// The error
// ---------------------------------------------------------------------------------------------

/// An invalid configuration value: which setting, why, and what it was.
///
/// Displays as ``<setting>: <reason>, got `<value>` ``, the setting named as its source
/// names it: `pool_size` for the builder and config files, `FITVIZ_EVENTS_POOL_SIZE` for the
/// environment. A URL is shown with its password redacted; control characters are escaped and
/// long values shortened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}, got `{value}`")]
pub struct ConfigError {
    field: &'static str,
    reason: String,
    value: String,
}

impl ConfigError {
    fn new(field: &'static str, reason: impl Into<String>, value: &str) -> Self {
        Self {
            field,
            reason: reason.into(),
            value: shown(value),
        }
    }

    /// The setting at fault: a builder field, config file key or environment variable name.
    pub fn field(&self) -> &str {
        self.field
    }
}

/// Escapes control characters (keeping messages on one line) and shortens long values.
fn shown(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(MAX_SHOWN_CHARS + 4));
    for (i, c) in value.chars().enumerate() {
        if i == MAX_SHOWN_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Fields, naming and per-field rules
// ---------------------------------------------------------------------------------------------

/// Where a value came from, which decides how errors name it and show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    /// Builder method names, durations as `Debug` (`1.5s`).
    Builder,
    /// Environment variable names, durations as the integer given.
    Env,
    /// Config file keys, durations as the integer given.
    File,
}

/// What a field accepts.
#[derive(Debug, Clone, Copy)]
enum Spec {
    Url,
    Exchange,
    Text,
    Flag,
    Int(u64, u64),
    Millis(u64, u64),
    Secs(u64, u64),
}

/// Every setting, in the order of the documentation table (and of validation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Url,
    Exchange,
    DeclareExchange,
    Source,
    PoolSize,
    MaxInFlight,
    ConfirmTimeout,
    PublishTimeout,
    RetryAttempts,
    RetryBaseDelay,
    RetryMaxDelay,
    Validation,
    AllowUnregistered,
    Heartbeat,
    ConnectionTimeout,
    PoolWaitTimeout,
    ConnectionName,
    BreakerFailureThreshold,
    BreakerOpen,
}

const FIELD_COUNT: usize = 19;

impl Field {
    const ALL: [Self; FIELD_COUNT] = [
        Self::Url,
        Self::Exchange,
        Self::DeclareExchange,
        Self::Source,
        Self::PoolSize,
        Self::MaxInFlight,
        Self::ConfirmTimeout,
        Self::PublishTimeout,
        Self::RetryAttempts,
        Self::RetryBaseDelay,
        Self::RetryMaxDelay,
        Self::Validation,
        Self::AllowUnregistered,
        Self::Heartbeat,
        Self::ConnectionTimeout,
        Self::PoolWaitTimeout,
        Self::ConnectionName,
        Self::BreakerFailureThreshold,
        Self::BreakerOpen,
    ];

    /// Builder name, environment variable, config file key, and what it accepts.
    fn info(self) -> (&'static str, &'static str, &'static str, Spec) {
        const DURATION: Spec = Spec::Millis(1, MAX_MS);
        match self {
            Self::Url => ("url", "FITVIZ_EVENTS_URL", "url", Spec::Url),
            Self::Exchange => (
                "exchange",
                "FITVIZ_EVENTS_EXCHANGE",
                "exchange",
                Spec::Exchange,
            ),
            Self::DeclareExchange => (
                "declare_exchange",
                "FITVIZ_EVENTS_DECLARE_EXCHANGE",
                "declare_exchange",
                Spec::Flag,
            ),
            Self::Source => ("source", "FITVIZ_EVENTS_SOURCE", "source", Spec::Text),
            Self::PoolSize => (
                "pool_size",
                "FITVIZ_EVENTS_POOL_SIZE",
                "pool_size",
                Spec::Int(1, 1024),
            ),
            Self::MaxInFlight => (
                "max_in_flight",
                "FITVIZ_EVENTS_MAX_IN_FLIGHT",
                "max_in_flight",
                Spec::Int(1, 65_535),
            ),
            Self::ConfirmTimeout => (
                "confirm_timeout",
                "FITVIZ_EVENTS_CONFIRM_TIMEOUT_MS",
                "confirm_timeout_ms",
                DURATION,
            ),
            Self::PublishTimeout => (
                "publish_timeout",
                "FITVIZ_EVENTS_PUBLISH_TIMEOUT_MS",
                "publish_timeout_ms",
                DURATION,
            ),
            Self::RetryAttempts => (
                "retry_attempts",
                "FITVIZ_EVENTS_RETRY_ATTEMPTS",
                "retry_attempts",
                Spec::Int(0, 20),
            ),
            Self::RetryBaseDelay => (
                "retry_base_delay",
                "FITVIZ_EVENTS_RETRY_BASE_DELAY_MS",
                "retry_base_delay_ms",
                DURATION,
            ),
            Self::RetryMaxDelay => (
                "retry_max_delay",
                "FITVIZ_EVENTS_RETRY_MAX_DELAY_MS",
                "retry_max_delay_ms",
                DURATION,
            ),
            Self::Validation => (
                "validation",
                "FITVIZ_EVENTS_VALIDATION",
                "validation",
                Spec::Flag,
            ),
            Self::AllowUnregistered => (
                "allow_unregistered",
                "FITVIZ_EVENTS_ALLOW_UNREGISTERED",
                "allow_unregistered",
                Spec::Flag,
            ),
            Self::Heartbeat => (
                "heartbeat",
                "FITVIZ_EVENTS_HEARTBEAT_SECS",
                "heartbeat_secs",
                Spec::Secs(1, 65_535),
            ),
            Self::ConnectionTimeout => (
                "connection_timeout",
                "FITVIZ_EVENTS_CONNECTION_TIMEOUT_MS",
                "connection_timeout_ms",
                DURATION,
            ),
            Self::PoolWaitTimeout => (
                "pool_wait_timeout",
                "FITVIZ_EVENTS_POOL_WAIT_TIMEOUT_MS",
                "pool_wait_timeout_ms",
                Spec::Millis(0, MAX_MS),
            ),
            Self::ConnectionName => (
                "connection_name",
                "FITVIZ_EVENTS_CONNECTION_NAME",
                "connection_name",
                Spec::Text,
            ),
            Self::BreakerFailureThreshold => (
                "breaker_failure_threshold",
                "FITVIZ_EVENTS_BREAKER_FAILURE_THRESHOLD",
                "breaker_failure_threshold",
                Spec::Int(1, u32::MAX as u64),
            ),
            Self::BreakerOpen => (
                "breaker_open_duration",
                "FITVIZ_EVENTS_BREAKER_OPEN_MS",
                "breaker_open_ms",
                Spec::Millis(1_000, MAX_MS),
            ),
        }
    }

    fn var(self) -> &'static str {
        self.info().1
    }

    fn spec(self) -> Spec {
        self.info().3
    }

    fn label(self, style: Style) -> &'static str {
        let (name, var, key, _) = self.info();
        match style {
            Style::Builder => name,
            Style::Env => var,
            Style::File => key,
        }
    }

    fn from_var(var: &str) -> Option<Self> {
        if !var.starts_with(ENV_PREFIX) {
            return None;
        }
        Self::ALL.into_iter().find(|field| field.var() == var)
    }

    /// The reason given when a value of this field is malformed or out of range.
    fn expected(self, style: Style) -> String {
        match self.spec() {
            Spec::Url => "expected an `amqp://` or `amqps://` url".to_owned(),
            Spec::Exchange => {
                format!("expected 1 to {MAX_NAME_LEN} letters, digits, `-`, `_`, `.` or `:`")
            }
            Spec::Text => {
                format!("expected 1 to {MAX_NAME_LEN} bytes of text without control characters")
            }
            Spec::Flag => "expected true/false, 1/0, yes/no or on/off".to_owned(),
            Spec::Int(min, max) => format!("expected an integer from {min} to {max}"),
            Spec::Millis(min, max) => match style {
                Style::Builder => format!(
                    "expected a duration from {:?} to {:?}",
                    Duration::from_millis(min),
                    Duration::from_millis(max)
                ),
                Style::Env | Style::File => {
                    format!("expected a whole number of milliseconds from {min} to {max}")
                }
            },
            Spec::Secs(min, max) => {
                format!("expected a whole number of seconds from {min} to {max}")
            }
        }
    }

    /// The error for a malformed or out-of-range value, shown as given.
    fn invalid(self, style: Style, value: &str) -> ConfigError {
        let value = match self.spec() {
            Spec::Url => redact(value),
            _ => value.to_owned(),
        };
        ConfigError::new(self.label(style), self.expected(style), &value)
    }

    fn check_int(self, style: Style, value: u64) -> Result<(), ConfigError> {
        match self.spec() {
            Spec::Int(min, max) if !(min..=max).contains(&value) => {
                Err(self.invalid(style, &value.to_string()))
            }
            _ => Ok(()),
        }
    }

    fn check_duration(self, style: Style, value: Duration) -> Result<(), ConfigError> {
        let ok = match self.spec() {
            Spec::Millis(min, max) => {
                (Duration::from_millis(min)..=Duration::from_millis(max)).contains(&value)
            }
            Spec::Secs(min, max) => {
                value.subsec_nanos() == 0 && (min..=max).contains(&value.as_secs())
            }
            _ => true,
        };
        if ok {
            Ok(())
        } else {
            Err(self.invalid(style, &self.show_duration(style, value)))
        }
    }

    /// `value` (of this field) must be at least `other_value` (of `other`).
    fn check_at_least(
        self,
        style: Style,
        value: Duration,
        other: Self,
        other_value: Duration,
    ) -> Result<(), ConfigError> {
        if value >= other_value {
            return Ok(());
        }
        Err(ConfigError::new(
            self.label(style),
            format!(
                "expected at least {} ({})",
                other.label(style),
                other.show_duration(style, other_value)
            ),
            &self.show_duration(style, value),
        ))
    }

    /// A duration in the unit the source uses: `Debug` for the builder, the integer otherwise.
    fn show_duration(self, style: Style, value: Duration) -> String {
        match (style, self.spec()) {
            (Style::Builder, _) => format!("{value:?}"),
            (_, Spec::Secs(..)) => value.as_secs().to_string(),
            _ => value.as_millis().to_string(),
        }
    }
}

fn is_exchange_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

fn is_text(text: &str) -> bool {
    !text.is_empty() && text.len() <= MAX_NAME_LEN && !text.chars().any(char::is_control)
}

// ---------------------------------------------------------------------------------------------
// URLs and redaction
// ---------------------------------------------------------------------------------------------

fn parse_url(raw: &str, style: Style) -> Result<Url, ConfigError> {
    let fail = |reason: &str| ConfigError::new(Field::Url.label(style), reason, &redact(raw));
    let url = Url::parse(raw).map_err(|e| fail(&format!("invalid url ({e})")))?;
    if !matches!(url.scheme(), "amqp" | "amqps") {
        return Err(fail("expected scheme `amqp` or `amqps`"));
    }
    match url.host() {
        None | Some(Host::Domain("")) => Err(fail("expected a host")),
        // lapin reads `Url::domain()`, which is `None` for IPv6 literals, and would
        // silently connect to `localhost` instead.
        Some(Host::Ipv6(_)) => Err(fail(
            "expected a host name or ipv4 address, the amqp client does not support ipv6 addresses",
        )),
        Some(_) => Ok(url),
    }
}

/// Parses [`PublisherConfig::amqp_uri`] the way lapin will, so a bad query parameter
/// (`frame_max=x`, an unknown `auth_mechanism`, …) is a config error and not a connect error.
fn check_client_accepts(config: &PublisherConfig, style: Style) -> Result<(), ConfigError> {
    let Err(message) = config.amqp_uri().parse::<lapin::uri::AMQPUri>() else {
        return Ok(());
    };
    // lapin's messages quote no URL parts once the URL has a host; keep it that way.
    let password = config.parsed_url.password().unwrap_or_default();
    let leaks = message.contains("://")
        || (!password.is_empty()
            && (message.contains(password) || message.contains(&percent_decode(password))));
    let reason = if leaks {
        "rejected by the amqp client".to_owned()
    } else {
        let mut chars = message.chars();
        let message: String = chars
            .next()
            .map(|first| first.to_lowercase().chain(chars).collect())
            .unwrap_or_default();
        format!("rejected by the amqp client ({message})")
    };
    Err(ConfigError::new(
        Field::Url.label(style),
        reason,
        &config.redacted_url(),
    ))
}

/// Decodes `%XX` escapes, leaving malformed ones and invalid UTF-8 as they are (lossy).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Redacts the password of a URL that may not be valid.
fn redact(raw: &str) -> String {
    if let Ok(mut url) = Url::parse(raw) {
        if url.has_host() {
            if url.password().is_none() {
                return raw.to_owned();
            }
            if url.set_password(Some(REDACTED)).is_ok() {
                return url.into();
            }
        }
    }
    redact_raw(raw)
}

/// Redacts without parsing: everything between the first `:` of what could be the userinfo
/// and the last `@`. Errs on the side of hiding too much.
fn redact_raw(raw: &str) -> String {
    let Some(at) = raw.rfind('@') else {
        return raw.to_owned();
    };
    let start = match raw.find("://") {
        Some(i)
            if i < at
                && raw[..i]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')) =>
        {
            i + 3
        }
        _ => 0,
    };
    match raw[start..at].find(':') {
        Some(colon) => format!("{}{REDACTED}{}", &raw[..start + colon + 1], &raw[at..]),
        None => raw.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Environment variables
// ---------------------------------------------------------------------------------------------

/// A variable's value as read.
enum RawValue {
    Text(String),
    /// Not valid Unicode; the lossy conversion, for the error message.
    NotUnicode(String),
}

impl RawValue {
    /// Trims; empty means unset.
    fn text(value: &str) -> Option<Self> {
        let value = value.trim();
        (!value.is_empty()).then(|| Self::Text(value.to_owned()))
    }
}

#[derive(Default)]
struct RawValues([Option<RawValue>; FIELD_COUNT]);

impl RawValues {
    fn set(&mut self, field: Field, value: Option<RawValue>) {
        self.0[field as usize] = value;
    }

    fn into_config(self) -> Result<PublisherConfig, ConfigError> {
        let style = Style::Env;
        let mut builder = PublisherConfig::builder();
        for (field, value) in Field::ALL.into_iter().zip(self.0) {
            let value = match value {
                None => continue,
                Some(RawValue::Text(value)) => value,
                Some(RawValue::NotUnicode(lossy)) => {
                    let shown = match field.spec() {
                        Spec::Url => redact(&lossy),
                        _ => lossy,
                    };
                    return Err(ConfigError::new(
                        field.var(),
                        "expected valid unicode",
                        &shown,
                    ));
                }
            };
            let ms = |value: &str| parse_or(field, value).map(millis);
            let flag = |value: &str| parse_flag(value).ok_or_else(|| field.invalid(style, value));
            builder = match field {
                Field::Url => builder.url(value),
                Field::Exchange => builder.exchange(value),
                Field::DeclareExchange => builder.declare_exchange(flag(&value)?),
                Field::Source => builder.source(value),
                Field::PoolSize => builder.pool_size(parse_or(field, &value)?),
                Field::MaxInFlight => builder.max_in_flight(parse_or(field, &value)?),
                Field::ConfirmTimeout => builder.confirm_timeout(ms(&value)?),
                Field::PublishTimeout => builder.publish_timeout(ms(&value)?),
                Field::RetryAttempts => builder.retry_attempts(parse_or(field, &value)?),
                Field::RetryBaseDelay => builder.retry_base_delay(ms(&value)?),
                Field::RetryMaxDelay => builder.retry_max_delay(ms(&value)?),
                Field::Validation => builder.validation(flag(&value)?),
                Field::AllowUnregistered => builder.allow_unregistered(flag(&value)?),
                Field::Heartbeat => {
                    builder.heartbeat(Duration::from_secs(parse_or(field, &value)?))
                }
                Field::ConnectionTimeout => builder.connection_timeout(ms(&value)?),
                Field::PoolWaitTimeout => builder.pool_wait_timeout(ms(&value)?),
                Field::ConnectionName => builder.connection_name(value),
                Field::BreakerFailureThreshold => {
                    builder.breaker_failure_threshold(parse_or(field, &value)?)
                }
                Field::BreakerOpen => builder.breaker_open_duration(ms(&value)?),
            };
        }
        builder.validate(style)
    }
}

fn parse_or<T: std::str::FromStr>(field: Field, value: &str) -> Result<T, ConfigError> {
    value.parse().map_err(|_| field.invalid(Style::Env, value))
}

fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn parse_flag(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Config files
// ---------------------------------------------------------------------------------------------

/// A config file section, before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    url: Option<String>,
    exchange: Option<String>,
    declare_exchange: Option<bool>,
    source: Option<String>,
    pool_size: Option<u64>,
    max_in_flight: Option<u64>,
    confirm_timeout_ms: Option<u64>,
    publish_timeout_ms: Option<u64>,
    retry_attempts: Option<u64>,
    retry_base_delay_ms: Option<u64>,
    retry_max_delay_ms: Option<u64>,
    validation: Option<bool>,
    allow_unregistered: Option<bool>,
    heartbeat_secs: Option<u64>,
    connection_timeout_ms: Option<u64>,
    pool_wait_timeout_ms: Option<u64>,
    connection_name: Option<String>,
    breaker_failure_threshold: Option<u64>,
    breaker_open_ms: Option<u64>,
}

impl RawConfig {
    fn into_config(self) -> Result<PublisherConfig, ConfigError> {
        let style = Style::File;
        // Range-check integers before narrowing them to the builder's types.
        let int = |field: Field, value: u64| field.check_int(style, value).map(|()| value);
        let narrow = |field: Field, value: u64| {
            int(field, value)?;
            u32::try_from(value).map_err(|_| field.invalid(style, &value.to_string()))
        };
        let size = |field: Field, value: u64| {
            int(field, value)?;
            usize::try_from(value).map_err(|_| field.invalid(style, &value.to_string()))
        };

        let mut b = PublisherConfig::builder();
        if let Some(v) = self.url {
            b = b.url(v);
        }
        if let Some(v) = self.exchange {
            b = b.exchange(v);
        }
        if let Some(v) = self.declare_exchange {
            b = b.declare_exchange(v);
        }
        if let Some(v) = self.source {
            b = b.source(v);
        }
        if let Some(v) = self.pool_size {
            b = b.pool_size(size(Field::PoolSize, v)?);
        }
        if let Some(v) = self.max_in_flight {
            b = b.max_in_flight(size(Field::MaxInFlight, v)?);
        }
        if let Some(v) = self.confirm_timeout_ms {
            b = b.confirm_timeout(millis(v));
        }
        if let Some(v) = self.publish_timeout_ms {
            b = b.publish_timeout(millis(v));
        }
        if let Some(v) = self.retry_attempts {
            b = b.retry_attempts(narrow(Field::RetryAttempts, v)?);
        }
        if let Some(v) = self.retry_base_delay_ms {
            b = b.retry_base_delay(millis(v));
        }
        if let Some(v) = self.retry_max_delay_ms {
            b = b.retry_max_delay(millis(v));
        }
        if let Some(v) = self.validation {
            b = b.validation(v);
        }
        if let Some(v) = self.allow_unregistered {
            b = b.allow_unregistered(v);
        }
        if let Some(v) = self.heartbeat_secs {
            b = b.heartbeat(Duration::from_secs(v));
        }
        if let Some(v) = self.connection_timeout_ms {
            b = b.connection_timeout(millis(v));
        }
        if let Some(v) = self.pool_wait_timeout_ms {
            b = b.pool_wait_timeout(millis(v));
        }
        if let Some(v) = self.connection_name {
            b = b.connection_name(v);
        }
        if let Some(v) = self.breaker_failure_threshold {
            b = b.breaker_failure_threshold(narrow(Field::BreakerFailureThreshold, v)?);
        }
        if let Some(v) = self.breaker_open_ms {
            b = b.breaker_open_duration(millis(v));
        }
        b.validate(style)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PW: &str = "s3cretPassw0rd";

    fn env_err(vars: &[(&str, &str)]) -> ConfigError {
        PublisherConfig::from_vars(vars.iter().copied()).unwrap_err()
    }

    /// Every rendering of a config or error that could reach a log.
    fn assert_hidden(text: &str, secrets: &[&str]) {
        for secret in secrets {
            assert!(!text.contains(secret), "`{secret}` leaked in {text}");
        }
    }

    #[test]
    fn defaults() {
        let c = PublisherConfig::builder().build().unwrap();
        assert_eq!(c.url(), "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(c.redacted_url(), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(c.exchange(), "fitviz.events");
        assert!(c.declare_exchange());
        assert_eq!(c.source(), "fitviz-service");
        assert_eq!(c.pool_size(), 4);
        assert_eq!(c.max_in_flight(), 256);
        assert_eq!(c.confirm_timeout(), Duration::from_secs(5));
        assert_eq!(c.publish_timeout(), Duration::from_secs(15));
        assert_eq!(c.retry_attempts(), 3);
        assert_eq!(c.retry_base_delay(), Duration::from_millis(100));
        assert_eq!(c.retry_max_delay(), Duration::from_secs(2));
        assert!(c.validation());
        assert!(!c.allow_unregistered());
        assert_eq!(c.heartbeat(), Duration::from_secs(10));
        assert_eq!(c.connection_timeout(), Duration::from_secs(5));
        assert_eq!(c.pool_wait_timeout(), Duration::from_secs(1));
        assert_eq!(c.connection_name(), None);
        assert_eq!(c.breaker_failure_threshold(), 5);
        assert_eq!(c.breaker_open_duration(), Duration::from_secs(5));
        assert_eq!(
            c.amqp_uri(),
            "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=10&connection_timeout=5000"
        );

        assert_eq!(PublisherConfig::default(), c);
        let no_vars: [(&str, &str); 0] = [];
        assert_eq!(PublisherConfig::from_vars(no_vars).unwrap(), c);
        let unrelated = [
            ("HOME", "/root"),
            ("FITVIZ_EVENTS_UNKNOWN", "x"),
            ("fitviz_events_pool_size", "abc"),
        ];
        assert_eq!(PublisherConfig::from_vars(unrelated).unwrap(), c);
        assert_eq!(serde_json::from_str::<PublisherConfig>("{}").unwrap(), c);
    }

    #[test]
    fn every_variable_is_read() {
        let vars = [
            (
                "FITVIZ_EVENTS_URL",
                "amqps://svc:pw@rabbit.example:5671/fitviz",
            ),
            ("FITVIZ_EVENTS_EXCHANGE", "fitviz.billing"),
            ("FITVIZ_EVENTS_DECLARE_EXCHANGE", "no"),
            ("FITVIZ_EVENTS_SOURCE", "billing-api"),
            ("FITVIZ_EVENTS_POOL_SIZE", "16"),
            ("FITVIZ_EVENTS_MAX_IN_FLIGHT", "1000"),
            ("FITVIZ_EVENTS_CONFIRM_TIMEOUT_MS", "2500"),
            ("FITVIZ_EVENTS_PUBLISH_TIMEOUT_MS", "30000"),
            ("FITVIZ_EVENTS_RETRY_ATTEMPTS", "0"),
            ("FITVIZ_EVENTS_RETRY_BASE_DELAY_MS", "50"),
            ("FITVIZ_EVENTS_RETRY_MAX_DELAY_MS", "50"),
            ("FITVIZ_EVENTS_VALIDATION", "OFF"),
            ("FITVIZ_EVENTS_ALLOW_UNREGISTERED", "True"),
            ("FITVIZ_EVENTS_HEARTBEAT_SECS", "30"),
            ("FITVIZ_EVENTS_CONNECTION_TIMEOUT_MS", "750"),
            ("FITVIZ_EVENTS_POOL_WAIT_TIMEOUT_MS", "0"),
            ("FITVIZ_EVENTS_CONNECTION_NAME", "billing-api@pod-7"),
            ("FITVIZ_EVENTS_BREAKER_FAILURE_THRESHOLD", "12"),
            ("FITVIZ_EVENTS_BREAKER_OPEN_MS", "1000"),
        ];
        // The table above covers every variable once.
        let mut names: Vec<&str> = vars.iter().map(|(k, _)| *k).collect();
        names.sort_unstable();
        let mut all: Vec<&str> = Field::ALL.iter().map(|f| f.var()).collect();
        all.sort_unstable();
        assert_eq!(names, all);

        let c = PublisherConfig::from_vars(vars).unwrap();
        assert_eq!(c.url(), "amqps://svc:pw@rabbit.example:5671/fitviz");
        assert_eq!(c.exchange(), "fitviz.billing");
        assert!(!c.declare_exchange());
        assert_eq!(c.source(), "billing-api");
        assert_eq!(c.pool_size(), 16);
        assert_eq!(c.max_in_flight(), 1000);
        assert_eq!(c.confirm_timeout(), Duration::from_millis(2500));
        assert_eq!(c.publish_timeout(), Duration::from_secs(30));
        assert_eq!(c.retry_attempts(), 0);
        assert_eq!(c.retry_base_delay(), Duration::from_millis(50));
        assert_eq!(c.retry_max_delay(), Duration::from_millis(50));
        assert!(!c.validation());
        assert!(c.allow_unregistered());
        assert_eq!(c.heartbeat(), Duration::from_secs(30));
        assert_eq!(c.connection_timeout(), Duration::from_millis(750));
        assert_eq!(c.pool_wait_timeout(), Duration::ZERO);
        assert_eq!(c.connection_name(), Some("billing-api@pod-7"));
        assert_eq!(c.breaker_failure_threshold(), 12);
        assert_eq!(c.breaker_open_duration(), Duration::from_secs(1));
        assert_eq!(
            c.amqp_uri(),
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
            for field in [
                Field::DeclareExchange,
                Field::Validation,
                Field::AllowUnregistered,
            ] {
                let c = PublisherConfig::from_vars([(field.var(), value)]).unwrap();
                let got = match field {
                    Field::DeclareExchange => c.declare_exchange(),
                    Field::Validation => c.validation(),
                    _ => c.allow_unregistered(),
                };
                assert_eq!(got, expected, "{} = {value}", field.var());
            }
        }
    }

    #[test]
    fn empty_and_blank_variables_are_unset_and_values_are_trimmed() {
        let mut vars: Vec<(&str, &str)> = Field::ALL.iter().map(|f| (f.var(), "")).collect();
        vars.push(("FITVIZ_EVENTS_SOURCE", "  \t"));
        assert_eq!(
            PublisherConfig::from_vars(vars).unwrap(),
            PublisherConfig::default()
        );

        let c = PublisherConfig::from_vars([
            ("FITVIZ_EVENTS_POOL_SIZE", " 8\r\n"),
            ("FITVIZ_EVENTS_EXCHANGE", " fitviz.x "),
            ("FITVIZ_EVENTS_VALIDATION", " no "),
        ])
        .unwrap();
        assert_eq!(c.pool_size(), 8);
        assert_eq!(c.exchange(), "fitviz.x");
        assert!(!c.validation());

        // The last of repeated names wins, also when it is empty.
        let c = PublisherConfig::from_vars([
            ("FITVIZ_EVENTS_POOL_SIZE", "8"),
            ("FITVIZ_EVENTS_POOL_SIZE", ""),
        ])
        .unwrap();
        assert_eq!(c.pool_size(), 4);
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
        ];
        assert_eq!(cases.len(), FIELD_COUNT);
        for (var, values) in cases {
            for value in *values {
                let err = PublisherConfig::from_vars([(*var, *value)])
                    .expect_err(&format!("{var}={value:?} should be rejected"));
                assert_eq!(err.field(), *var, "{err}");
                let text = err.to_string();
                assert!(text.starts_with(&format!("{var}: ")), "{text}");
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
                "FITVIZ_EVENTS_POOL_SIZE: expected an integer from 1 to 1024, got `abc`",
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
                ("FITVIZ_EVENTS_HEARTBEAT_SECS", "0"),
                "FITVIZ_EVENTS_HEARTBEAT_SECS: expected a whole number of seconds from 1 to 65535, got `0`",
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
                ("FITVIZ_EVENTS_EXCHANGE", "amq.topic"),
                "FITVIZ_EVENTS_EXCHANGE: expected a name without the broker-reserved prefix `amq.` while FITVIZ_EVENTS_DECLARE_EXCHANGE is true, got `amq.topic`",
            ),
            (
                ("FITVIZ_EVENTS_CONNECTION_NAME", "a\nb"),
                "FITVIZ_EVENTS_CONNECTION_NAME: expected 1 to 255 bytes of text without control characters, got `a\\nb`",
            ),
            (
                ("FITVIZ_EVENTS_URL", "amqp://h/?frame_max=x"),
                "FITVIZ_EVENTS_URL: rejected by the amqp client (invalid digit found in string), got `amqp://h/?frame_max=x`",
            ),
            (
                ("FITVIZ_EVENTS_URL", "amqp://u:p@[::1]/"),
                "FITVIZ_EVENTS_URL: expected a host name or ipv4 address, the amqp client does not support ipv6 addresses, got `amqp://u:***@[::1]/`",
            ),
        ];
        for ((var, value), expected) in cases {
            assert_eq!(env_err(&[(var, value)]).to_string(), expected);
        }
        // The first invalid variable in table order is reported, whatever the input order.
        let err = env_err(&[
            ("FITVIZ_EVENTS_BREAKER_OPEN_MS", "1"),
            ("FITVIZ_EVENTS_POOL_SIZE", "0"),
        ]);
        assert_eq!(err.field(), "FITVIZ_EVENTS_POOL_SIZE");
        // `amq.*` is fine when only checking that the exchange exists.
        let c = PublisherConfig::from_vars([
            ("FITVIZ_EVENTS_EXCHANGE", "amq.topic"),
            ("FITVIZ_EVENTS_DECLARE_EXCHANGE", "false"),
        ])
        .unwrap();
        assert_eq!(c.exchange(), "amq.topic");
    }

    #[test]
    fn long_values_are_shortened_in_errors() {
        let value = "x".repeat(1000);
        let err = env_err(&[("FITVIZ_EVENTS_POOL_SIZE", &value)]);
        assert!(err.to_string().len() < 400, "{err}");
        assert!(err.to_string().contains("…"));
    }

    #[test]
    fn builder_errors_use_field_names() {
        let b = PublisherConfig::builder;
        let cases: Vec<(PublisherConfigBuilder, &str)> = vec![
            (
                b().url("ftp://h/"),
                "url: expected scheme `amqp` or `amqps`, got `ftp://h/`",
            ),
            (
                b().exchange(""),
                "exchange: expected 1 to 255 letters, digits, `-`, `_`, `.` or `:`, got ``",
            ),
            (
                b().source(""),
                "source: expected 1 to 255 bytes of text without control characters, got ``",
            ),
            (
                b().pool_size(0),
                "pool_size: expected an integer from 1 to 1024, got `0`",
            ),
            (
                b().max_in_flight(70_000),
                "max_in_flight: expected an integer from 1 to 65535, got `70000`",
            ),
            (
                b().confirm_timeout(Duration::ZERO),
                "confirm_timeout: expected a duration from 1ms to 3600s, got `0ns`",
            ),
            (
                b().publish_timeout(Duration::from_secs(2)),
                "publish_timeout: expected at least confirm_timeout (5s), got `2s`",
            ),
            (
                b().retry_attempts(21),
                "retry_attempts: expected an integer from 0 to 20, got `21`",
            ),
            (
                b().retry_base_delay(Duration::from_micros(10)),
                "retry_base_delay: expected a duration from 1ms to 3600s, got `10µs`",
            ),
            (
                b().retry_max_delay(Duration::from_millis(50)),
                "retry_max_delay: expected at least retry_base_delay (100ms), got `50ms`",
            ),
            (
                b().heartbeat(Duration::from_millis(1500)),
                "heartbeat: expected a whole number of seconds from 1 to 65535, got `1.5s`",
            ),
            (
                b().heartbeat(Duration::ZERO),
                "heartbeat: expected a whole number of seconds from 1 to 65535, got `0ns`",
            ),
            (
                b().connection_timeout(Duration::from_secs(7200)),
                "connection_timeout: expected a duration from 1ms to 3600s, got `7200s`",
            ),
            (
                b().pool_wait_timeout(Duration::from_secs(3601)),
                "pool_wait_timeout: expected a duration from 0ns to 3600s, got `3601s`",
            ),
            (
                b().connection_name(""),
                "connection_name: expected 1 to 255 bytes of text without control characters, got ``",
            ),
            (
                b().breaker_failure_threshold(0),
                "breaker_failure_threshold: expected an integer from 1 to 4294967295, got `0`",
            ),
            (
                b().breaker_open_duration(Duration::from_millis(999)),
                "breaker_open_duration: expected a duration from 1s to 3600s, got `999ms`",
            ),
            (
                b().exchange("amq.direct"),
                "exchange: expected a name without the broker-reserved prefix `amq.` while declare_exchange is true, got `amq.direct`",
            ),
        ];
        for (builder, expected) in cases {
            let err = builder.build().unwrap_err();
            assert_eq!(err.to_string(), expected);
            assert_eq!(Some(err.field()), expected.split(':').next());
        }
        // Bounds are inclusive.
        let c = b()
            .pool_size(1024)
            .max_in_flight(65_535)
            .retry_attempts(20)
            .heartbeat(Duration::from_secs(65_535))
            .confirm_timeout(Duration::from_secs(3600))
            .publish_timeout(Duration::from_secs(3600))
            .pool_wait_timeout(Duration::ZERO)
            .breaker_open_duration(Duration::from_secs(1))
            .breaker_failure_threshold(u32::MAX)
            .exchange("a-b_c.d:e")
            .build()
            .unwrap();
        assert!(c.amqp_uri().contains("heartbeat=65535"));
    }

    #[test]
    fn redaction() {
        let url = format!("amqp://app:{PW}@rabbit.internal:5672/fitviz");
        let c = PublisherConfig::builder().url(&url).build().unwrap();
        assert_eq!(c.url(), url);
        assert_eq!(
            c.redacted_url(),
            "amqp://app:***@rabbit.internal:5672/fitviz"
        );
        assert!(c.amqp_uri().contains(PW));
        assert_hidden(&format!("{c:?}"), &[PW]);
        assert_hidden(&format!("{c:#?}"), &[PW]);
        assert!(format!("{c:?}").contains("amqp://app:***@rabbit.internal:5672/fitviz"));
        assert_hidden(
            &format!("{:?}", PublisherConfig::builder().url(&url)),
            &[PW],
        );

        // No password: unchanged.
        let c = PublisherConfig::builder()
            .url("amqp://app@rabbit/v")
            .build()
            .unwrap();
        assert_eq!(c.redacted_url(), "amqp://app@rabbit/v");
        let c = PublisherConfig::builder()
            .url("amqp://rabbit")
            .build()
            .unwrap();
        assert_eq!(c.redacted_url(), "amqp://rabbit");

        // Percent-encoded passwords, raw and decoded.
        let c = PublisherConfig::builder()
            .url("amqps://app:p%40ss%3Aw%2Frd%25@rabbit/%2f")
            .build()
            .unwrap();
        assert_eq!(c.redacted_url(), "amqps://app:***@rabbit/%2f");
        assert_hidden(&format!("{c:?}"), &["p%40ss", "p@ss", "w%2Frd", "w/rd"]);
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
        ];
        for (url, shown) in cases {
            let env = env_err(&[("FITVIZ_EVENTS_URL", &url)]);
            let builder = PublisherConfig::builder().url(&url).build().unwrap_err();
            for err in [&env, &builder] {
                assert_hidden(&err.to_string(), &[PW]);
                assert_hidden(&format!("{err:?}"), &[PW]);
                assert!(
                    err.to_string().ends_with(&format!("got `{shown}`")),
                    "{err}"
                );
            }
            assert_eq!(env.field(), "FITVIZ_EVENTS_URL");
            assert_eq!(builder.field(), "url");
        }
        let err = PublisherConfig::builder()
            .url("amqp://app:p%40ss%2Fword@[::1]/")
            .build()
            .unwrap_err();
        assert_hidden(&err.to_string(), &["p%40ss", "p@ss", "word"]);
    }

    #[test]
    fn not_unicode_variables_are_errors() {
        let mut values = RawValues::default();
        values.set(
            Field::Url,
            Some(RawValue::NotUnicode(format!("amqp://u:{PW}@h\u{fffd}/"))),
        );
        let err = values.into_config().unwrap_err();
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
        let c = PublisherConfig::builder()
            .url("amqp://u:p@rabbit/vh?channel_max=10&heartbeat=0&connection_timeout=1&auth_mechanism=plain&heart%62eat=3")
            .heartbeat(Duration::from_secs(20))
            .connection_timeout(Duration::from_millis(1500))
            .build()
            .unwrap();
        let uri = c.amqp_uri();
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

        let c = PublisherConfig::builder()
            .url("amqps://rabbit.example#frag")
            .build()
            .unwrap();
        assert_eq!(
            c.amqp_uri(),
            "amqps://rabbit.example?heartbeat=10&connection_timeout=5000#frag"
        );
        let parsed: lapin::uri::AMQPUri = c.amqp_uri().parse().unwrap();
        assert_eq!(parsed.authority.port, 5671);
    }

    #[test]
    fn deserializes_config_files() {
        let json = r#"{
            "url": "amqp://svc:pw@rabbit/fitviz",
            "exchange": "fitviz.billing",
            "declare_exchange": false,
            "source": "billing-api",
            "pool_size": 8,
            "max_in_flight": 64,
            "confirm_timeout_ms": 2000,
            "publish_timeout_ms": 8000,
            "retry_attempts": 5,
            "retry_base_delay_ms": 20,
            "retry_max_delay_ms": 500,
            "validation": false,
            "allow_unregistered": true,
            "heartbeat_secs": 15,
            "connection_timeout_ms": 3000,
            "pool_wait_timeout_ms": 250,
            "connection_name": "billing",
            "breaker_failure_threshold": 3,
            "breaker_open_ms": 10000
        }"#;
        let c: PublisherConfig = serde_json::from_str(json).unwrap();
        let expected = PublisherConfig::builder()
            .url("amqp://svc:pw@rabbit/fitviz")
            .exchange("fitviz.billing")
            .declare_exchange(false)
            .source("billing-api")
            .pool_size(8)
            .max_in_flight(64)
            .confirm_timeout(Duration::from_secs(2))
            .publish_timeout(Duration::from_secs(8))
            .retry_attempts(5)
            .retry_base_delay(Duration::from_millis(20))
            .retry_max_delay(Duration::from_millis(500))
            .validation(false)
            .allow_unregistered(true)
            .heartbeat(Duration::from_secs(15))
            .connection_timeout(Duration::from_secs(3))
            .pool_wait_timeout(Duration::from_millis(250))
            .connection_name("billing")
            .breaker_failure_threshold(3)
            .breaker_open_duration(Duration::from_secs(10))
            .build()
            .unwrap();
        assert_eq!(c, expected);

        // Every key of the file format is a variable name without the prefix, in lower case.
        let value: serde_json::Value = serde_json::from_str(json).unwrap();
        let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
        keys.sort_unstable();
        let mut vars: Vec<String> = Field::ALL
            .iter()
            .map(|f| f.var().strip_prefix(ENV_PREFIX).unwrap().to_lowercase())
            .collect();
        vars.sort_unstable();
        assert_eq!(keys, vars);

        // Nulls are unset.
        let c: PublisherConfig =
            serde_json::from_str(r#"{"pool_size": null, "connection_name": null}"#).unwrap();
        assert_eq!(c, PublisherConfig::default());
    }

    #[test]
    fn config_file_errors() {
        let err = serde_json::from_str::<PublisherConfig>(r#"{"pool_size": 4, "pool_sise": 4}"#)
            .unwrap_err();
        assert!(
            err.to_string().contains("unknown field `pool_sise`"),
            "{err}"
        );
        let err = serde_json::from_str::<PublisherConfig>(r#"{"confirm_timeout": 4}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `confirm_timeout`"),
            "{err}"
        );

        for (json, message) in [
            (
                r#"{"pool_size": 0}"#,
                "pool_size: expected an integer from 1 to 1024, got `0`",
            ),
            (
                r#"{"retry_attempts": 4294967296}"#,
                "retry_attempts: expected an integer from 0 to 20, got `4294967296`",
            ),
            (
                r#"{"breaker_failure_threshold": 4294967296}"#,
                "breaker_failure_threshold: expected an integer from 1 to 4294967295, got `4294967296`",
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
                r#"{"url": "amqp://u:hunter22@:5672/"}"#,
                "url: invalid url (empty host), got `amqp://u:***@:5672/`",
            ),
        ] {
            let err = serde_json::from_str::<PublisherConfig>(json).unwrap_err();
            assert!(err.to_string().starts_with(message), "{err} != {message}");
            assert_hidden(&err.to_string(), &["hunter22"]);
        }
        assert!(serde_json::from_str::<PublisherConfig>(r#"{"pool_size": -1}"#).is_err());
        assert!(serde_json::from_str::<PublisherConfig>(r#"{"validation": "yes"}"#).is_err());
    }

    #[test]
    fn field_table_is_consistent_and_documented() {
        let docs = include_str!("config.rs");
        for (i, field) in Field::ALL.into_iter().enumerate() {
            assert_eq!(field as usize, i);
            let (name, var, key, _) = field.info();
            assert_eq!(var, format!("{ENV_PREFIX}{}", key.to_uppercase()));
            assert_eq!(Field::from_var(var), Some(field));
            assert!(
                docs.contains(&format!("//! | `{var}` | ")),
                "{var} is not in the docs table"
            );
            assert!(!name.is_empty());
        }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("p%40ss%2Fw%3ard"), "p@ss/w:rd");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%+1x"), "%+1x");
        assert_eq!(percent_decode("%ff"), "\u{fffd}");
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
            values in proptest::collection::vec(proptest::option::weighted(0.1, value()), FIELD_COUNT - 1),
        ) {
            let mut vars = vec![("FITVIZ_EVENTS_URL".to_owned(), url)];
            for (field, value) in Field::ALL[1..].iter().zip(values) {
                if let Some(value) = value {
                    vars.push((field.var().to_owned(), value));
                }
            }
            match PublisherConfig::from_vars(vars) {
                Ok(config) => {
                    let debug = format!("{config:?}");
                    prop_assert!(!debug.contains(&pw));
                    prop_assert!(!config.redacted_url().contains(&pw));
                    prop_assert!(config.amqp_uri().parse::<lapin::uri::AMQPUri>().is_ok());
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
        fn arbitrary_values_never_panic(field in 0..FIELD_COUNT, value in value()) {
            let var = Field::ALL[field].var();
            if let Err(err) = PublisherConfig::from_vars([(var, value.as_str())]) {
                // A cross-field error names the other field, and mentions this one.
                prop_assert!(err.field() == var || err.to_string().contains(var), "{}", err);
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
            let err = PublisherConfig::builder().url(url).build();
            if let Err(err) = err {
                prop_assert!(!err.to_string().contains(&pw));
            }
        }

        #[test]
        fn builder_durations_never_panic(ms in any::<u64>(), nanos in 0u32..1_000_000_000, secs in any::<u64>()) {
            let d = Duration::new(secs, nanos);
            let _ = PublisherConfig::builder()
                .confirm_timeout(Duration::from_millis(ms))
                .publish_timeout(d)
                .heartbeat(d)
                .retry_max_delay(d)
                .breaker_open_duration(d)
                .build();
        }
    }
}

//! [`OutboxConfig`]: the outbox's own settings, `FITVIZ_EVENTS_OUTBOX_*`.

use std::{fmt, str::FromStr, time::Duration};

use crate::config::{ConfigError, url::redact};

/// The outbox's settings: its database, where its table lives, and how the relay
/// works. Read with [`from_env`](Self::from_env) from the `FITVIZ_EVENTS_OUTBOX_*`
/// variables, or built in code over [`new`](Self::new)'s defaults, then
/// [validated](Self::validate).
///
/// | variable | field | default | range |
/// |---|---|---|---|
/// | `FITVIZ_EVENTS_OUTBOX_URL` | [`url`](Self::url) | — (required) | a `postgres://` or `postgresql://` URL; its password is shown as `***` in every message |
/// | `FITVIZ_EVENTS_OUTBOX_SCHEMA` | `schema` | `fitviz_events` | 1–63 bytes of `[a-z0-9_]`, not starting with a digit |
/// | `FITVIZ_EVENTS_OUTBOX_PARTITIONS` | `partitions` | 16 | 1–1024; fixed when the table is created (the first `migrate`) |
/// | `FITVIZ_EVENTS_OUTBOX_BATCH_SIZE` | `batch_size` | 500 | 1–10,000 rows a relay publishes per partition and round |
/// | `FITVIZ_EVENTS_OUTBOX_POLL_INTERVAL_MS` | `poll_interval` | 500 | 10–60,000: how often an idle partition looks for rows nobody [notified](crate::outbox::Outbox::notify) |
/// | `FITVIZ_EVENTS_OUTBOX_MAX_ATTEMPTS` | `max_attempts` | 10 | 1–1,000: refusals (nack, unroutable, 403/404/406, too large) before a row goes dead |
/// | `FITVIZ_EVENTS_OUTBOX_RETRY_BASE_DELAY_MS` | `retry_base_delay` | 1,000 | 10–3,600,000: the wait after a row's first refusal, doubled after each |
/// | `FITVIZ_EVENTS_OUTBOX_RETRY_MAX_DELAY_MS` | `retry_max_delay` | 300,000 | ≥ the base delay, ≤ 86,400,000 |
/// | `FITVIZ_EVENTS_OUTBOX_DEAD_RETENTION_SECS` | `dead_retention` | 604,800 (7 days) | 60–31,536,000: dead rows older than this are deleted |
/// | `FITVIZ_EVENTS_OUTBOX_POOL_SIZE` | `pool_size` | 4 | 1–64 pooled database connections |
/// | `FITVIZ_EVENTS_OUTBOX_RELAY` | `relay` | `on` | `on`/`off`: whether an application runs a relay in-process (the demo reads it) |
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxConfig {
    /// The database: a `postgres://` URL (`postgres://user:password@host:5432/db`).
    pub url: String,
    /// The schema the outbox's tables live in.
    pub schema: String,
    /// Partitions of the outbox: the unit of order and of ownership between relays.
    pub partitions: u32,
    /// Rows a relay publishes per partition and round.
    pub batch_size: usize,
    /// How often an idle partition looks for new rows.
    pub poll_interval: Duration,
    /// Refusals before a row goes dead.
    pub max_attempts: u32,
    /// The wait after a row's first refusal, doubled after each, up to `retry_max_delay`.
    pub retry_base_delay: Duration,
    /// The longest wait between two attempts of a refused row.
    pub retry_max_delay: Duration,
    /// Dead rows older than this are deleted.
    pub dead_retention: Duration,
    /// Pooled database connections (the relay's queries; the CLI's).
    pub pool_size: usize,
    /// Whether an application runs a relay in-process.
    pub relay: bool,
}

impl fmt::Debug for OutboxConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxConfig")
            .field("url", &self.redacted_url())
            .field("schema", &self.schema)
            .field("partitions", &self.partitions)
            .field("batch_size", &self.batch_size)
            .field("poll_interval", &self.poll_interval)
            .field("max_attempts", &self.max_attempts)
            .field("retry_base_delay", &self.retry_base_delay)
            .field("retry_max_delay", &self.retry_max_delay)
            .field("dead_retention", &self.dead_retention)
            .field("pool_size", &self.pool_size)
            .field("relay", &self.relay)
            .finish()
    }
}

/// The prefix of the outbox's variables.
pub const OUTBOX_ENV_PREFIX: &str = "FITVIZ_EVENTS_OUTBOX_";

impl OutboxConfig {
    /// The defaults, for the database at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: "fitviz_events".to_owned(),
            partitions: 16,
            batch_size: 500,
            poll_interval: Duration::from_millis(500),
            max_attempts: 10,
            retry_base_delay: Duration::from_secs(1),
            retry_max_delay: Duration::from_secs(300),
            dead_retention: Duration::from_secs(7 * 24 * 3600),
            pool_size: 4,
            relay: true,
        }
    }

    /// The URL with its password shown as `***`: for logs and messages.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }

    /// Reads the `FITVIZ_EVENTS_OUTBOX_*` variables (see the table above) and validates
    /// them. Empty variables count as unset.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first invalid variable (a URL shown redacted), or
    /// `FITVIZ_EVENTS_OUTBOX_URL` when it is missing.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars_os().filter_map(|(name, value)| {
            let name = name.into_string().ok()?;
            name.starts_with(OUTBOX_ENV_PREFIX).then(|| {
                (
                    name,
                    value
                        .into_string()
                        .map_err(|lossy| lossy.to_string_lossy().into_owned()),
                )
            })
        }))
    }

    /// [`from_env`](Self::from_env) over the given variables; a value is `Err(lossy)`
    /// when it was not valid Unicode.
    ///
    /// # Errors
    /// As [`from_env`](Self::from_env).
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, Result<String, String>)>,
    ) -> Result<Self, ConfigError> {
        let mut url = None;
        let mut config = Self::new(String::new());
        for (name, value) in vars {
            let Some(key) = name.strip_prefix(OUTBOX_ENV_PREFIX) else {
                continue;
            };
            let value = match value {
                Ok(value) => value.trim().to_owned(),
                Err(lossy) => {
                    let shown = if key == "URL" { redact(&lossy) } else { lossy };
                    return Err(ConfigError::invalid(name, "expected valid unicode", &shown));
                }
            };
            if value.is_empty() {
                continue;
            }
            let var = name.clone();
            match key {
                "URL" => url = Some(value),
                "SCHEMA" => config.schema = value,
                "PARTITIONS" => config.partitions = number(var, &value, "an integer")?,
                "BATCH_SIZE" => config.batch_size = number(var, &value, "an integer")?,
                "POLL_INTERVAL_MS" => config.poll_interval = millis(var, &value)?,
                "MAX_ATTEMPTS" => config.max_attempts = number(var, &value, "an integer")?,
                "RETRY_BASE_DELAY_MS" => config.retry_base_delay = millis(var, &value)?,
                "RETRY_MAX_DELAY_MS" => config.retry_max_delay = millis(var, &value)?,
                "DEAD_RETENTION_SECS" => {
                    config.dead_retention =
                        Duration::from_secs(number(var, &value, "a whole number of seconds")?)
                }
                "POOL_SIZE" => config.pool_size = number(var, &value, "an integer")?,
                "RELAY" => {
                    config.relay = match value.to_ascii_lowercase().as_str() {
                        "on" | "true" | "1" | "yes" => true,
                        "off" | "false" | "0" | "no" => false,
                        _ => {
                            return Err(ConfigError::invalid(
                                var,
                                "expected on/off, true/false, 1/0 or yes/no",
                                &value,
                            ));
                        }
                    }
                }
                _ => {
                    return Err(ConfigError::new(
                        var,
                        "is not a setting of the outbox (see the OutboxConfig table)",
                    ));
                }
            }
        }
        config.url = url.ok_or_else(|| {
            ConfigError::new(
                "FITVIZ_EVENTS_OUTBOX_URL",
                "is required: the outbox's database, e.g. postgres://user:password@127.0.0.1:5432/app",
            )
        })?;
        config.check(true)?;
        Ok(config)
    }

    /// Checks every setting against the table above.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first invalid field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check(false)
    }

    fn check(&self, env: bool) -> Result<(), ConfigError> {
        let name = |key: &'static str, var: &'static str| if env { var } else { key };
        let url_field = name("url", "FITVIZ_EVENTS_OUTBOX_URL");
        let redacted = self.redacted_url();
        if !(self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")) {
            return Err(ConfigError::invalid(
                url_field,
                "expected a postgres:// or postgresql:// URL",
                &redacted,
            ));
        }
        if let Err(error) = tokio_postgres::Config::from_str(&self.url) {
            // tokio-postgres's message never quotes the password.
            return Err(ConfigError::invalid(
                url_field,
                format!("is not a valid PostgreSQL URL ({error})"),
                &redacted,
            ));
        }
        check_schema_name(&self.schema).map_err(|why| {
            ConfigError::invalid(
                name("schema", "FITVIZ_EVENTS_OUTBOX_SCHEMA"),
                why,
                &self.schema,
            )
        })?;
        let range = |field: &'static str, var: &'static str, value: u64, low: u64, high: u64| {
            if value < low || value > high {
                Err(ConfigError::invalid(
                    name(field, var),
                    format!("expected {low} to {high}"),
                    &value.to_string(),
                ))
            } else {
                Ok(())
            }
        };
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        range(
            "partitions",
            "FITVIZ_EVENTS_OUTBOX_PARTITIONS",
            self.partitions.into(),
            1,
            1024,
        )?;
        range(
            "batch_size",
            "FITVIZ_EVENTS_OUTBOX_BATCH_SIZE",
            self.batch_size as u64,
            1,
            10_000,
        )?;
        range(
            "poll_interval",
            "FITVIZ_EVENTS_OUTBOX_POLL_INTERVAL_MS",
            ms(self.poll_interval),
            10,
            60_000,
        )?;
        range(
            "max_attempts",
            "FITVIZ_EVENTS_OUTBOX_MAX_ATTEMPTS",
            self.max_attempts.into(),
            1,
            1000,
        )?;
        range(
            "retry_base_delay",
            "FITVIZ_EVENTS_OUTBOX_RETRY_BASE_DELAY_MS",
            ms(self.retry_base_delay),
            10,
            3_600_000,
        )?;
        range(
            "retry_max_delay",
            "FITVIZ_EVENTS_OUTBOX_RETRY_MAX_DELAY_MS",
            ms(self.retry_max_delay),
            ms(self.retry_base_delay),
            86_400_000,
        )?;
        range(
            "dead_retention",
            "FITVIZ_EVENTS_OUTBOX_DEAD_RETENTION_SECS",
            self.dead_retention.as_secs(),
            60,
            31_536_000,
        )?;
        range(
            "pool_size",
            "FITVIZ_EVENTS_OUTBOX_POOL_SIZE",
            self.pool_size as u64,
            1,
            64,
        )?;
        Ok(())
    }
}

/// A schema name the outbox can put in its SQL unquoted and unambiguous.
fn check_schema_name(schema: &str) -> Result<(), &'static str> {
    let valid = !schema.is_empty()
        && schema.len() <= 63
        && !schema.starts_with(|c: char| c.is_ascii_digit())
        && (schema.bytes()).all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    match valid {
        true => Ok(()),
        false => Err("expected 1 to 63 bytes of [a-z0-9_], not starting with a digit"),
    }
}

fn number<T: FromStr>(var: String, value: &str, what: &str) -> Result<T, ConfigError> {
    value
        .parse()
        .map_err(|_| ConfigError::invalid(var, format!("expected {what}"), value))
}

fn millis(var: String, value: &str) -> Result<Duration, ConfigError> {
    number(var, value, "a whole number of milliseconds").map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Result<OutboxConfig, ConfigError> {
        OutboxConfig::from_vars(
            pairs
                .iter()
                .map(|(k, v)| (format!("{OUTBOX_ENV_PREFIX}{k}"), Ok((*v).to_owned()))),
        )
    }

    #[test]
    fn settings_are_read_and_checked_naming_the_variable() {
        let config = vars(&[
            ("URL", "postgres://app:s3cret@db:5432/app"),
            ("SCHEMA", "events_outbox"),
            ("PARTITIONS", "8"),
            ("POLL_INTERVAL_MS", "50"),
            ("RELAY", "off"),
        ])
        .unwrap();
        assert_eq!(config.partitions, 8);
        assert_eq!(config.poll_interval, Duration::from_millis(50));
        assert!(!config.relay);
        assert_eq!(config.redacted_url(), "postgres://app:***@db:5432/app");
        assert!(!format!("{config:?}").contains("s3cret"));

        let missing = vars(&[]).unwrap_err();
        assert_eq!(missing.field(), "FITVIZ_EVENTS_OUTBOX_URL");
        /// The variables, the variable named, what the message says.
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: &[Case<'_>] = &[
            (
                &[("URL", "amqp://u:s3cret@h/")],
                "FITVIZ_EVENTS_OUTBOX_URL",
                "postgres://",
            ),
            (
                &[("URL", "postgres://u:s3cret@h:notaport/db")],
                "FITVIZ_EVENTS_OUTBOX_URL",
                "valid PostgreSQL URL",
            ),
            (
                &[("URL", "postgres://h/db"), ("SCHEMA", "Bad-Name")],
                "FITVIZ_EVENTS_OUTBOX_SCHEMA",
                "[a-z0-9_]",
            ),
            (
                &[("URL", "postgres://h/db"), ("SCHEMA", "x; drop table t")],
                "FITVIZ_EVENTS_OUTBOX_SCHEMA",
                "[a-z0-9_]",
            ),
            (
                &[("URL", "postgres://h/db"), ("PARTITIONS", "0")],
                "FITVIZ_EVENTS_OUTBOX_PARTITIONS",
                "expected 1 to 1024",
            ),
            (
                &[("URL", "postgres://h/db"), ("BATCH_SIZE", "many")],
                "FITVIZ_EVENTS_OUTBOX_BATCH_SIZE",
                "expected an integer",
            ),
            (
                &[
                    ("URL", "postgres://h/db"),
                    ("RETRY_BASE_DELAY_MS", "5000"),
                    ("RETRY_MAX_DELAY_MS", "1000"),
                ],
                "FITVIZ_EVENTS_OUTBOX_RETRY_MAX_DELAY_MS",
                "expected 5000 to",
            ),
            (
                &[("URL", "postgres://h/db"), ("RELAY", "maybe")],
                "FITVIZ_EVENTS_OUTBOX_RELAY",
                "on/off",
            ),
            (
                &[("URL", "postgres://h/db"), ("BOGUS", "1")],
                "FITVIZ_EVENTS_OUTBOX_BOGUS",
                "not a setting",
            ),
        ];
        for (pairs, field, says) in cases {
            let error = vars(pairs).unwrap_err();
            assert_eq!(error.field(), *field, "{error}");
            assert!(error.to_string().contains(says), "{error}");
            assert!(!error.to_string().contains("s3cret"), "{error}");
        }
    }
}

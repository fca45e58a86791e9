//! Which events the archive stream `<exchange>.archive` keeps (`FITVIZ_EVENTS_ARCHIVE`).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, de};

use super::error::got;

/// What `<exchange>.archive` adds to the exchange's name (the configuration leaves room
/// for it when the archive is on: AMQP names hold at most 255 bytes).
pub(crate) const ARCHIVE_SUFFIX: &str = ".archive";

/// What the setting accepts.
const EXPECTED: &str = "expected `off`, `on` (every event) or comma-separated topic patterns \
     of dot-separated words (`*` one word, `#` any number), e.g. `workout.*,payment.#`";

/// The event types kept in the archive stream `<exchange>.archive`, as the topic
/// patterns it is bound with (`FITVIZ_EVENTS_ARCHIVE`: `off`, the default; `on`, every
/// event, the pattern `#`; or comma-separated patterns).
///
/// The publisher reads it to make its receipts say the truth: the archive takes every
/// event whose type matches, so the broker never returns such an event, and cannot say
/// whether a consumer's queue took it too. Their receipts say
/// [`Routing::Archived`](crate::Routing::Archived) instead of `Routed` (and never
/// `Kept`: the [unroutable policy](super::UnroutablePolicy) only applies to the types
/// the archive does not take) — as long as `<exchange>.archive` exists, which the
/// publisher checks on each connection. Declare the archive with these patterns:
/// [`Topology::from_config`](crate::topology::Topology::from_config) does, and
/// `fitviz-events archive declare`.
///
/// ```
/// use fitviz_events::config::ArchivePatterns;
///
/// let patterns = ArchivePatterns::new(["workout.*", "payment.#"])?;
/// assert!(patterns.matches("workout.created"));
/// assert!(patterns.matches("payment.refund.failed"));
/// assert!(!patterns.matches("booking.confirmed"));
/// assert!(ArchivePatterns::all().matches("booking.confirmed"));
/// assert!(!ArchivePatterns::off().is_on());
///
/// let err = ArchivePatterns::new(["workout..created"]).unwrap_err();
/// assert!(err.starts_with("expected `off`, `on`"), "{err}");
/// # Ok::<(), String>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ArchivePatterns {
    patterns: Vec<String>,
}

impl ArchivePatterns {
    /// No archive (the default).
    pub fn off() -> Self {
        Self::default()
    }

    /// Every event: the pattern `#`.
    pub fn all() -> Self {
        Self {
            patterns: vec!["#".to_owned()],
        }
    }

    /// These topic patterns (an empty list is [`off`](Self::off)).
    ///
    /// # Errors
    /// A pattern that is not dot-separated non-empty words of at most 255 bytes in all,
    /// without white space or control characters; the message names it.
    pub fn new<I, S>(patterns: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let patterns: Vec<String> = patterns.into_iter().map(Into::into).collect();
        for pattern in &patterns {
            if !is_pattern(pattern) {
                return Err(got(EXPECTED, pattern));
            }
        }
        Ok(Self { patterns })
    }

    /// Whether any event is archived.
    pub fn is_on(&self) -> bool {
        !self.patterns.is_empty()
    }

    /// The patterns, in order.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether an event of type `event_type` (its routing key) is archived: it matches
    /// one of the patterns, by the topic exchange's rules.
    pub fn matches(&self, event_type: &str) -> bool {
        self.patterns
            .iter()
            .any(|pattern| topic_matches(pattern, event_type))
    }
}

impl fmt::Display for ArchivePatterns {
    /// `off`, or the patterns joined by commas (what the setting reads back).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.is_on() {
            false => f.write_str("off"),
            true => f.write_str(&self.patterns.join(",")),
        }
    }
}

impl std::str::FromStr for ArchivePatterns {
    type Err = String;

    /// `off` (or nothing), `on`, or comma-separated patterns.
    fn from_str(value: &str) -> Result<Self, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "off" | "false" | "no" | "0" => Ok(Self::off()),
            "on" | "true" | "yes" | "1" => Ok(Self::all()),
            _ => Self::new(value.split(',').map(str::trim)),
        }
    }
}

impl<'de> Deserialize<'de> for ArchivePatterns {
    /// From the setting's text, or from a list of patterns (a config file's array).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl<'de> de::Visitor<'de> for Visitor {
            type Value = ArchivePatterns;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`off`, `on`, or topic patterns")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<ArchivePatterns, E> {
                value.parse().map_err(E::custom)
            }

            fn visit_seq<A: de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<ArchivePatterns, A::Error> {
                let mut patterns = Vec::new();
                while let Some(pattern) = seq.next_element::<String>()? {
                    patterns.push(pattern);
                }
                ArchivePatterns::new(patterns).map_err(de::Error::custom)
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}

/// A topic pattern: 1 to 255 bytes of non-empty dot-separated words, no white space or
/// control character.
fn is_pattern(pattern: &str) -> bool {
    (1..=255).contains(&pattern.len())
        && !pattern.chars().any(|c| c.is_whitespace() || c.is_control())
        && pattern.split('.').all(|word| !word.is_empty())
}

/// Whether `key` matches the topic `pattern`: words separated by dots, `*` exactly one
/// word, `#` zero or more words.
pub(crate) fn topic_matches(pattern: &str, key: &str) -> bool {
    fn go(pattern: &[&str], key: &[&str]) -> bool {
        match pattern.split_first() {
            None => key.is_empty(),
            Some((&"#", rest)) => (0..=key.len()).any(|skip| go(rest, &key[skip..])),
            Some((word, rest)) => match key.split_first() {
                Some((first, key_rest)) => (*word == "*" || word == first) && go(rest, key_rest),
                None => false,
            },
        }
    }
    if pattern == "#" {
        return true;
    }
    let pattern: Vec<&str> = pattern.split('.').collect();
    let key: Vec<&str> = key.split('.').collect();
    go(&pattern, &key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_patterns_match_as_the_broker_does() {
        let cases = [
            ("#", "workout.created", true),
            ("workout.*", "workout.created", true),
            ("workout.*", "workout.created.late", false),
            ("workout.#", "workout", true),
            ("workout.#", "workout.created.late", true),
            ("*.created", "workout.created", true),
            ("*.created", "created", false),
            ("#.failed", "payment.failed", true),
            ("#.failed", "payment.refund.failed", true),
            ("#.failed", "payment.refund", false),
            ("payment.#.failed", "payment.failed", true),
            ("workout.created", "workout.created", true),
            ("workout.created", "workout.updated", false),
        ];
        for (pattern, key, expected) in cases {
            assert_eq!(topic_matches(pattern, key), expected, "{pattern} ~ {key}");
        }
    }

    #[test]
    fn the_setting_reads_off_on_and_patterns() {
        assert_eq!("off".parse::<ArchivePatterns>(), Ok(ArchivePatterns::off()));
        assert_eq!("".parse::<ArchivePatterns>(), Ok(ArchivePatterns::off()));
        assert_eq!("ON".parse::<ArchivePatterns>(), Ok(ArchivePatterns::all()));
        let parsed: ArchivePatterns = "workout.*, payment.#".parse().unwrap();
        assert_eq!(parsed.patterns(), ["workout.*", "payment.#"]);
        assert_eq!(parsed.to_string(), "workout.*,payment.#");
        for bad in ["workout.", "a b", "workout,,payment.*", ".x"] {
            let err = bad.parse::<ArchivePatterns>().unwrap_err();
            assert!(err.contains("topic patterns"), "{bad}: {err}");
        }
        let listed: ArchivePatterns = serde_json::from_str(r#"["workout.*"]"#).unwrap();
        assert_eq!(listed.patterns(), ["workout.*"]);
    }
}

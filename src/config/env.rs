//! Reading the `FITVIZ_EVENTS_*` environment variables, through `envy`.

use std::fmt;

use serde::{Deserializer, de};

use crate::schema::{UNKNOWN_FIELDS_VALUES, UnknownFields};

use super::{
    ConfigError, PublisherConfig,
    error::got,
    names::{self, Naming},
    url::redact_list,
};

/// What booleans accept, in any case.
const FLAGS: &str = "expected true/false, 1/0, yes/no or on/off";

/// Reads the settings among `vars` over the defaults and validates them. A value is
/// `Err(lossy)` when it was not valid Unicode.
pub(super) fn load(
    vars: impl Iterator<Item = (String, Result<String, String>)>,
) -> Result<PublisherConfig, ConfigError> {
    let keys = names::keys();
    // The last of repeated names wins, also when it is empty.
    let mut values = vec![None; keys.len()];
    for (name, value) in vars {
        if let Some(i) =
            names::key_of_var(&name).and_then(|key| keys.iter().position(|k| *k == key))
        {
            values[i] = Some(value);
        }
    }
    let mut set = Vec::new();
    for (key, value) in keys.iter().zip(values) {
        match value {
            None => {}
            Some(Err(lossy)) => {
                return Err(ConfigError::invalid(
                    names::var(key),
                    "expected valid unicode",
                    &redact_list(&lossy),
                ));
            }
            Some(Ok(value)) if value.trim().is_empty() => {}
            Some(Ok(value)) => set.push((key.to_string(), value.trim().to_owned())),
        }
    }
    let config: PublisherConfig = envy::from_iter(set.clone()).map_err(|err| {
        // Find the variable at fault: each one read alone over the defaults.
        set.iter()
            .find_map(|(key, value)| {
                let alone = envy::from_iter::<_, PublisherConfig>([(key.clone(), value.clone())]);
                alone.err().map(|err| invalid(key, value, &err))
            })
            .unwrap_or_else(|| ConfigError::new(super::ENV_PREFIX, err.to_string()))
    })?;
    config.check(Naming::Env)?;
    Ok(config)
}

/// The error for the variable of `key`, whose `value` did not deserialize.
fn invalid(key: &str, value: &str, err: &envy::Error) -> ConfigError {
    let var = names::var(key);
    let message = err.to_string();
    // envy words a number that does not parse as "<why> while parsing value '<value>'
    // provided by <KEY>": say what was expected instead, in the unit of the key.
    if message.contains(" while parsing value ") {
        let expected = if key.ends_with("_ms") {
            "expected a whole number of milliseconds"
        } else if key.ends_with("_secs") {
            "expected a whole number of seconds"
        } else {
            "expected an integer"
        };
        return ConfigError::invalid(var, expected, value);
    }
    // The others are ours (booleans, the URL) and already read "<reason>, got `<value>`",
    // the URL's after its key.
    let message = message
        .strip_prefix(&format!("{key}: "))
        .unwrap_or(&message);
    ConfigError::new(var, message)
}

/// Deserializes a boolean from a boolean or, as the environment gives it, from text:
/// `true`/`false`, `1`/`0`, `yes`/`no` or `on`/`off`, in any case.
pub(super) fn flag<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    struct Flag;

    impl de::Visitor<'_> for Flag {
        type Value = bool;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a boolean")
        }

        fn visit_bool<E: de::Error>(self, value: bool) -> Result<bool, E> {
            Ok(value)
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<bool, E> {
            match value.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(E::custom(got(FLAGS, value))),
            }
        }
    }

    deserializer.deserialize_any(Flag)
}

/// Deserializes an [`UnknownFields`] policy from `reject` or `forward`, in any case.
pub(super) fn unknown_fields<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<UnknownFields, D::Error> {
    struct Policy;

    impl de::Visitor<'_> for Policy {
        type Value = UnknownFields;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("`reject` or `forward`")
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<UnknownFields, E> {
            value
                .parse()
                .map_err(|_| E::custom(got(UNKNOWN_FIELDS_VALUES, value)))
        }
    }

    deserializer.deserialize_any(Policy)
}

#[cfg(test)]
mod tests;

//! The rules of the settings, as garde validators whose messages read
//! ``<reason>, got `<value>` ``.

use std::time::Duration;

use garde::{Error, Result};

use super::{error::got, names::Naming};

/// AMQP short strings (exchange names, property values) hold at most 255 bytes.
const MAX_NAME_LEN: usize = 255;

/// An integer from `min` to `max`.
pub(super) fn int<T>(min: u64, max: u64) -> impl FnOnce(&T, &Naming) -> Result
where
    T: Copy + TryInto<u64> + ToString,
{
    move |value, _| {
        let n = (*value).try_into().unwrap_or(u64::MAX);
        if (min..=max).contains(&n) {
            return Ok(());
        }
        Err(Error::new(got(
            format_args!("expected an integer from {min} to {max}"),
            &value.to_string(),
        )))
    }
}

/// A duration from `min` to `max` milliseconds.
pub(super) fn millis(min: u64, max: u64) -> impl FnOnce(&Duration, &Naming) -> Result {
    move |value, _| {
        if (Duration::from_millis(min)..=Duration::from_millis(max)).contains(value) {
            return Ok(());
        }
        Err(Error::new(got(
            format_args!("expected a whole number of milliseconds from {min} to {max}"),
            &in_millis(*value),
        )))
    }
}

/// A duration of whole seconds, from `min` to `max`.
pub(super) fn secs(min: u64, max: u64) -> impl FnOnce(&Duration, &Naming) -> Result {
    move |value, _| {
        if value.subsec_nanos() == 0 && (min..=max).contains(&value.as_secs()) {
            return Ok(());
        }
        let shown = match value.subsec_nanos() {
            0 => value.as_secs().to_string(),
            _ => format!("{value:?}"),
        };
        Err(Error::new(got(
            format_args!("expected a whole number of seconds from {min} to {max}"),
            &shown,
        )))
    }
}

/// A duration at least that of the field `other` (its Rust name), `other_value`.
pub(super) fn at_least(
    other: &'static str,
    other_value: Duration,
) -> impl FnOnce(&Duration, &Naming) -> Result {
    move |value, naming| {
        if *value >= other_value {
            return Ok(());
        }
        Err(Error::new(got(
            format_args!(
                "expected at least {} ({})",
                naming.name(other),
                in_millis(other_value)
            ),
            &in_millis(*value),
        )))
    }
}

/// A duration as the integer milliseconds a config holds, or as `Debug` when it has a
/// fraction of a millisecond.
fn in_millis(value: Duration) -> String {
    match value.subsec_nanos() % 1_000_000 {
        0 => value.as_millis().to_string(),
        _ => format!("{value:?}"),
    }
}

/// An exchange name: 1 to 255 letters, digits, `-`, `_`, `.`, `:`.
pub(super) fn exchange_name(name: &str, _: &Naming) -> Result {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if valid {
        return Ok(());
    }
    Err(Error::new(got(
        format_args!("expected 1 to {MAX_NAME_LEN} letters, digits, `-`, `_`, `.` or `:`"),
        name,
    )))
}

/// No broker-reserved `amq.*` exchange name while the exchange is to be declared.
pub(super) fn not_reserved(declare: bool) -> impl FnOnce(&String, &Naming) -> Result {
    move |name, naming| {
        if !declare || !name.starts_with("amq.") {
            return Ok(());
        }
        Err(Error::new(got(
            format_args!(
                "expected a name without the broker-reserved prefix `amq.` while {} is true",
                naming.name("declare_exchange")
            ),
            name,
        )))
    }
}

/// 1 to 255 bytes of text without control characters.
pub(super) fn text(text: &str, _: &Naming) -> Result {
    if !text.is_empty() && text.len() <= MAX_NAME_LEN && !text.chars().any(char::is_control) {
        return Ok(());
    }
    Err(Error::new(got(
        format_args!("expected 1 to {MAX_NAME_LEN} bytes of text without control characters"),
        text,
    )))
}

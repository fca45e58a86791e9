//! The rules of the settings, as garde validators whose messages read
//! ``<reason>, got `<value>` ``.

use std::{fmt::Display, time::Duration};

use garde::{Error, Result};

use super::{
    UnroutablePolicy, archive::ARCHIVE_SUFFIX, error::got, names::Naming,
    unroutable::UNROUTED_SUFFIX,
};

/// AMQP short strings (exchange names, property values) hold at most 255 bytes.
const MAX_NAME_LEN: usize = 255;

fn check(ok: bool, reason: impl Display, value: impl Display) -> Result {
    match ok {
        true => Ok(()),
        false => Err(Error::new(got(reason, &value.to_string()))),
    }
}

/// An integer from `min` to `max`.
pub(super) fn int<T>(min: u64, max: u64) -> impl FnOnce(&T, &Naming) -> Result
where
    T: Copy + TryInto<u64> + Display,
{
    move |value, _| {
        let ok = (*value).try_into().is_ok_and(|n| (min..=max).contains(&n));
        check(
            ok,
            format_args!("expected an integer from {min} to {max}"),
            value,
        )
    }
}

/// A duration from `min` to `max` milliseconds.
pub(super) fn millis(min: u64, max: u64) -> impl FnOnce(&Duration, &Naming) -> Result {
    move |value, _| {
        let ok = (Duration::from_millis(min)..=Duration::from_millis(max)).contains(value);
        let reason = format_args!("expected a whole number of milliseconds from {min} to {max}");
        check(ok, reason, in_millis(*value))
    }
}

/// A duration of whole seconds, from `min` to `max`.
pub(super) fn secs(min: u64, max: u64) -> impl FnOnce(&Duration, &Naming) -> Result {
    move |value, _| {
        let whole = value.subsec_nanos() == 0;
        let ok = whole && (min..=max).contains(&value.as_secs());
        let shown = match whole {
            true => value.as_secs().to_string(),
            false => format!("{value:?}"),
        };
        let reason = format_args!("expected a whole number of seconds from {min} to {max}");
        check(ok, reason, shown)
    }
}

/// A duration at least `other_value`, that of the field `other` (its Rust name).
pub(super) fn at_least(
    other: &'static str,
    other_value: Duration,
) -> impl FnOnce(&Duration, &Naming) -> Result {
    move |value, naming| {
        let (other, least) = (naming.name(other), in_millis(other_value));
        let reason = format_args!("expected at least {other} ({least})");
        check(*value >= other_value, reason, in_millis(*value))
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
    let ok = (1..=MAX_NAME_LEN).contains(&name.len())
        && (name.bytes()).all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    let reason = format_args!("expected 1 to {MAX_NAME_LEN} letters, digits, `-`, `_`, `.` or `:`");
    check(ok, reason, name)
}

/// An exchange name short enough that `<exchange>.unrouted` fits an AMQP short string,
/// when the unroutable policy keeps events there.
pub(super) fn leaves_room_for_unrouted(
    policy: UnroutablePolicy,
) -> impl FnOnce(&String, &Naming) -> Result {
    move |name, naming| {
        let max = MAX_NAME_LEN - UNROUTED_SUFFIX.len();
        let unroutable = naming.name("unroutable");
        let reason = format_args!(
            "expected at most {max} bytes while {unroutable} is `{policy}` (`<exchange>.unrouted` must fit in {MAX_NAME_LEN})"
        );
        let ok = policy != UnroutablePolicy::AlternateExchange || name.len() <= max;
        check(ok, reason, name)
    }
}

/// An exchange name short enough that `<exchange>.archive` fits an AMQP short string,
/// when the archive is on.
pub(super) fn leaves_room_for_archive(on: bool) -> impl FnOnce(&String, &Naming) -> Result {
    move |name, naming| {
        let max = MAX_NAME_LEN - ARCHIVE_SUFFIX.len();
        let archive = naming.name("archive");
        let reason = format_args!(
            "expected at most {max} bytes while {archive} is on (`<exchange>.archive` must fit in {MAX_NAME_LEN})"
        );
        check(!on || name.len() <= max, reason, name)
    }
}

/// No broker-reserved `amq.*` exchange name while the exchange is to be declared.
pub(super) fn not_reserved(declare: bool) -> impl FnOnce(&String, &Naming) -> Result {
    move |name, naming| {
        let declare_exchange = naming.name("declare_exchange");
        let reason = format_args!(
            "expected a name without the broker-reserved prefix `amq.` while {declare_exchange} is true"
        );
        check(!declare || !name.starts_with("amq."), reason, name)
    }
}

/// 1 to 255 bytes of text without control characters.
pub(super) fn text(text: &str, _: &Naming) -> Result {
    let ok = (1..=MAX_NAME_LEN).contains(&text.len()) && !text.chars().any(char::is_control);
    let reason =
        format_args!("expected 1 to {MAX_NAME_LEN} bytes of text without control characters");
    check(ok, reason, text)
}

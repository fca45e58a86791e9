//! How a setting is named: its field, its config file key, its environment variable.

use std::borrow::Cow;

use super::{ENV_PREFIX, PublisherConfig};

/// How errors name settings. The validation context of [`PublisherConfig`], so that a rule
/// between two settings names the other one the same way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Naming {
    /// By config file key: `pool_size`, `confirm_timeout_ms`.
    #[default]
    Key,
    /// By environment variable: `FITVIZ_EVENTS_POOL_SIZE`.
    Env,
}

impl Naming {
    /// The name of the field called `field` in Rust.
    pub(super) fn name(self, field: &str) -> Cow<'static, str> {
        self.name_key(key_of(field))
    }

    /// The name of the setting whose config file key is `key`.
    pub(super) fn name_key(self, key: Cow<'static, str>) -> Cow<'static, str> {
        match self {
            Self::Key => key,
            Self::Env => var(&key).into(),
        }
    }
}

/// The config file keys, in the order of the fields: what serde's derived `Deserialize`
/// hands to `deserialize_struct`.
pub(super) fn keys() -> &'static [&'static str] {
    crate::serde_fields::struct_fields::<PublisherConfig>()
}

/// The key of the field `field`: its name, or for a duration its name with the unit
/// (`_ms`, `_secs`), which replaces a final `_duration`.
pub(super) fn key_of(field: &str) -> Cow<'static, str> {
    let keys = keys();
    let stem = field.strip_suffix("_duration").unwrap_or(field);
    let key = keys.iter().find(|key| **key == field).or_else(|| {
        keys.iter().find(|key| {
            key.strip_prefix(stem)
                .is_some_and(|unit| matches!(unit, "_ms" | "_secs"))
        })
    });
    match key {
        Some(key) => Cow::Borrowed(key),
        None => Cow::Owned(field.to_owned()),
    }
}

/// The environment variable of `key`.
pub(super) fn var(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.to_ascii_uppercase())
}

/// The key whose variable is `name`, exactly (`fitviz_events_pool_size` is no variable).
pub(super) fn key_of_var(name: &str) -> Option<&'static str> {
    let rest = name.strip_prefix(ENV_PREFIX)?;
    keys().iter().copied().find(|key| {
        key.len() == rest.len()
            && key
                .bytes()
                .zip(rest.bytes())
                .all(|(k, r)| k.to_ascii_uppercase() == r)
    })
}

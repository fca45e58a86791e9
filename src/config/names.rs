//! How a setting is named: its field, its config file key, its environment variable.

use std::borrow::Cow;

use serde::{
    Deserialize,
    de::{self, Visitor},
};

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
    /// A deserializer that records the fields it is asked for and gives nothing.
    struct Probe<'a>(&'a mut &'static [&'static str]);

    impl<'de> de::Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("only a struct's keys are read"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("only a struct's keys are read"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let mut keys: &'static [&'static str] = &[];
    let _ = PublisherConfig::deserialize(Probe(&mut keys));
    keys
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

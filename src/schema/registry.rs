//! [`SchemaRegistry`]: the event types a publisher knows, their versions, schemas and
//! upcasts.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    fmt,
    sync::Arc,
};

use super::{DomainEvent, UnknownFields, ValidationError, export};

type ValidateJson = fn(&str, &serde_json::Value, UnknownFields) -> Result<(), ValidationError>;

/// Builds the JSON Schema of one version's `data`.
pub(crate) type JsonSchemaFn = fn() -> serde_json::Value;

#[derive(Clone, Copy)]
struct Schema {
    validate_json: ValidateJson,
    /// `None` for a type registered without a JSON Schema (export is optional per type).
    json_schema: Option<JsonSchemaFn>,
}

/// Converts a valid payload of one version into the next registered one.
type UpcastFn = fn(&str, serde_json::Value) -> Result<serde_json::Value, ValidationError>;

/// The versions of one event type.
#[derive(Clone)]
struct Versions {
    /// What JSON events of the type are sent as unless they name a version.
    current: u32,
    schemas: BTreeMap<u32, Schema>,
    /// From a version to (the next version, the conversion).
    upcasts: BTreeMap<u32, (u32, UpcastFn)>,
}

fn upcast_as<Old: DomainEvent, New: DomainEvent + From<Old>>(
    event_type: &str,
    data: serde_json::Value,
) -> Result<serde_json::Value, ValidationError> {
    let old = Old::deserialize(data)
        .map_err(|e| ValidationError::single(event_type, "data", e.to_string()))?;
    serde_json::to_value(New::from(old))
        .map_err(|e| ValidationError::single(event_type, "data", e.to_string()))
}

fn validate_json_as<T: DomainEvent>(
    event_type: &str,
    data: &serde_json::Value,
    unknown_fields: UnknownFields,
) -> Result<(), ValidationError> {
    if unknown_fields == UnknownFields::Reject {
        reject_unknown_fields::<T>(event_type, data)?;
    }
    let typed = T::deserialize(data)
        .map_err(|e| ValidationError::single(event_type, "data", e.to_string()))?;
    typed.validate()
}

/// Refuses a field of the object `data` that `T` does not name, with serde's own words
/// (``unknown field `x`, expected one of `a`, `b` ``).
fn reject_unknown_fields<T: DomainEvent>(
    event_type: &str,
    data: &serde_json::Value,
) -> Result<(), ValidationError> {
    let (Some(object), fields) = (data.as_object(), crate::serde_fields::struct_fields::<T>())
    else {
        return Ok(());
    };
    if fields.is_empty() {
        return Ok(()); // serde did not tell: nothing to compare with
    }
    match object.keys().find(|key| !fields.contains(&key.as_str())) {
        None => Ok(()),
        Some(unknown) => {
            let error = <serde_json::Error as serde::de::Error>::unknown_field(unknown, fields);
            Err(ValidationError::single(
                event_type,
                "data",
                error.to_string(),
            ))
        }
    }
}

/// The event types a publisher knows, with the schema each JSON payload is checked against.
///
/// [`SchemaRegistry::builtin`] holds the eleven FitViz events; add your own with
/// [`register`](Self::register). Cloning is cheap.
///
/// # Versions
///
/// A type may have several versions registered, each its own struct with the same
/// [`DomainEvent::EVENT_TYPE`] and another [`DomainEvent::VERSION`]. What a publisher
/// sends is pinned: a typed event by its struct's `VERSION`; a JSON event by the version
/// the registry marks *current* for its type — the first registered, until
/// [`SchemaRegistry::with_current`] (or
/// [`EventPublisherBuilder::pin_version`](crate::EventPublisherBuilder::pin_version))
/// says otherwise — or by [`Event::with_version`](crate::Event::with_version) for one
/// event. Registering a newer version never changes what is sent. Consumers bring an
/// older version's payload to the newest with [`SchemaRegistry::upcast`], through the
/// conversions registered with [`SchemaRegistry::register_upcast`].
///
/// # Example
/// ```
/// use fitviz_events::SchemaRegistry;
/// use serde_json::json;
///
/// let registry = SchemaRegistry::builtin();
/// assert!(registry.contains("payment.failed"));
/// let err = registry
///     .validate_json("workout.created", &json!({"title": "Morning Yoga"}))
///     .expect("registered")
///     .unwrap_err();
/// assert_eq!(err.violations()[0].field, "data");
/// assert!(err.violations()[0].message.contains("missing field `workout_id`"));
/// ```
#[derive(Clone, Default)]
pub struct SchemaRegistry {
    schemas: Arc<HashMap<Cow<'static, str>, Versions>>,
}

impl fmt::Debug for SchemaRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.schemas.keys().collect();
        names.sort();
        let versions: Vec<_> = names
            .into_iter()
            .map(|name| (name, self.versions(name)))
            .collect();
        f.debug_struct("SchemaRegistry")
            .field("event_types", &versions)
            .finish()
    }
}

impl SchemaRegistry {
    /// An empty registry.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the schema of `T`: version [`T::VERSION`](DomainEvent::VERSION)
    /// of [`T::EVENT_TYPE`](DomainEvent::EVENT_TYPE). The first version registered for a
    /// type becomes its current one (what JSON events are sent as); registering another
    /// version does not change that — see [`with_current`](Self::with_current).
    #[must_use]
    pub fn register<T: DomainEvent>(self) -> Self {
        self.insert::<T>(None)
    }

    /// [`register`](Self::register)s `T` with its JSON Schema (derived with
    /// `#[derive(schemars::JsonSchema)]`), which [`json_schema`](Self::json_schema) and
    /// [`export_json_schemas`](Self::export_json_schemas) give consumers. Types registered
    /// with `register` alone work the same, without an exported schema.
    #[must_use]
    pub fn register_with_json_schema<T: DomainEvent + schemars::JsonSchema>(self) -> Self {
        self.insert::<T>(Some(export::data_schema::<T>))
    }

    fn insert<T: DomainEvent>(mut self, json_schema: Option<JsonSchemaFn>) -> Self {
        let schema = Schema {
            validate_json: validate_json_as::<T>,
            json_schema,
        };
        Arc::make_mut(&mut self.schemas)
            .entry(Cow::Borrowed(T::EVENT_TYPE))
            .or_insert_with(|| Versions {
                current: T::VERSION,
                schemas: BTreeMap::new(),
                upcasts: BTreeMap::new(),
            })
            .schemas
            .insert(T::VERSION, schema);
        self
    }

    /// Makes `version` the current version of `event_type`: the one JSON events of that
    /// type are validated against and sent as when they do not name one.
    ///
    /// # Panics
    /// When that version of that type is not registered.
    #[must_use]
    pub fn with_current(mut self, event_type: &str, version: u32) -> Self {
        let versions = Arc::make_mut(&mut self.schemas)
            .get_mut(event_type)
            .filter(|v| v.schemas.contains_key(&version))
            .unwrap_or_else(|| panic!("version {version} of `{event_type}` is not registered"));
        versions.current = version;
        self
    }

    /// Registers the conversion of a payload of `Old` into `New` (two versions of one
    /// event type, `New` the newer), used by [`upcast`](Self::upcast). Both versions are
    /// registered too (without a JSON Schema), if they were not.
    ///
    /// # Panics
    /// When the two have different event types, or `New::VERSION` is not greater than
    /// `Old::VERSION`.
    #[must_use]
    pub fn register_upcast<Old, New>(self) -> Self
    where
        Old: DomainEvent,
        New: DomainEvent + From<Old>,
    {
        assert_eq!(
            Old::EVENT_TYPE,
            New::EVENT_TYPE,
            "an upcast converts versions of one event type"
        );
        assert!(
            New::VERSION > Old::VERSION,
            "an upcast goes to a newer version"
        );
        let mut this = self;
        if !this.versions(Old::EVENT_TYPE).contains(&Old::VERSION) {
            this = this.register::<Old>();
        }
        if !this.versions(New::EVENT_TYPE).contains(&New::VERSION) {
            this = this.register::<New>();
        }
        let versions = Arc::make_mut(&mut this.schemas)
            .get_mut(Old::EVENT_TYPE)
            .expect("just registered");
        versions
            .upcasts
            .insert(Old::VERSION, (New::VERSION, upcast_as::<Old, New>));
        this
    }

    /// The JSON Schema builder of one registered version, if it was registered with one.
    pub(crate) fn json_schema_fn(&self, event_type: &str, version: u32) -> Option<JsonSchemaFn> {
        self.schemas
            .get(event_type)?
            .schemas
            .get(&version)?
            .json_schema
    }

    /// Whether `event_type` is registered.
    pub fn contains(&self, event_type: &str) -> bool {
        self.schemas.contains_key(event_type)
    }

    /// The current version of `event_type`: what JSON events of the type are sent as
    /// unless they name another (see [Versions](Self#versions)).
    pub fn version(&self, event_type: &str) -> Option<u32> {
        self.schemas.get(event_type).map(|v| v.current)
    }

    /// The newest registered version of `event_type` (what [`upcast`](Self::upcast)
    /// brings payloads to).
    pub fn newest_version(&self, event_type: &str) -> Option<u32> {
        let versions = self.schemas.get(event_type)?;
        versions.schemas.keys().next_back().copied()
    }

    /// The registered versions of `event_type`, oldest first (empty when unregistered).
    pub fn versions(&self, event_type: &str) -> Vec<u32> {
        self.schemas
            .get(event_type)
            .map(|v| v.schemas.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Brings a valid payload of `version` of `event_type` to the newest registered
    /// version, through the conversions registered with
    /// [`register_upcast`](Self::register_upcast), and returns that version and payload.
    /// A payload already at the newest version is only validated. For consumers: decode
    /// the envelope, then `upcast(event_type, version, data)`, and handle the newest shape
    /// only. Fields the conversions do not know are dropped.
    ///
    /// # Errors
    /// A [`ValidationError`] when the type or version is not registered, the payload is
    /// not valid for its version (unknown fields are allowed), no conversion leads from
    /// `version` to the newest, or the result is not valid for the newest version.
    ///
    /// # Example
    /// ```
    /// use fitviz_events::SchemaRegistry;
    /// use serde_json::json;
    ///
    /// let registry = SchemaRegistry::builtin();
    /// let v1 = json!({"workout_id": "w-1", "workout_type": "yoga", "duration_minutes": 30});
    /// let (version, v2) = registry.upcast("workout.created", 1, v1).unwrap();
    /// assert_eq!(version, 2);
    /// assert_eq!(v2["activity"], "yoga");
    /// assert_eq!(v2["duration_seconds"], 1800);
    /// ```
    pub fn upcast(
        &self,
        event_type: &str,
        version: u32,
        data: serde_json::Value,
    ) -> Result<(u32, serde_json::Value), ValidationError> {
        let not_registered =
            || ValidationError::single(event_type, "event_type", "is not a registered event type");
        let versions = self.schemas.get(event_type).ok_or_else(not_registered)?;
        let newest = self.newest_version(event_type).ok_or_else(not_registered)?;
        let (mut version, mut data) = (version, data);
        loop {
            self.check_version(versions, event_type, version, &data, UnknownFields::Forward)?;
            if version == newest {
                return Ok((version, data));
            }
            let (next, convert) = versions.upcasts.get(&version).ok_or_else(|| {
                ValidationError::single(
                    event_type,
                    "version",
                    format!("no upcast from version {version} is registered"),
                )
            })?;
            data = convert(event_type, data)?;
            version = *next;
        }
    }

    /// The registered event types whose names are `'static` (all of them: types are
    /// registered by their `DomainEvent::EVENT_TYPE`), sorted: the metric labels.
    pub(crate) fn static_event_types(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = (self.schemas.keys())
            .filter_map(|name| match name {
                Cow::Borrowed(name) => Some(*name),
                Cow::Owned(_) => None,
            })
            .collect();
        names.sort_unstable();
        names
    }

    /// The registered event types, sorted.
    pub fn event_types(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.schemas.keys().map(|k| &**k).collect();
        names.sort_unstable();
        names
    }

    /// Validates a JSON payload against the schema of `event_type`, forwarding unknown
    /// fields (the default [`UnknownFields`] policy).
    ///
    /// Returns `None` when the type is not registered.
    pub fn validate_json(
        &self,
        event_type: &str,
        data: &serde_json::Value,
    ) -> Option<Result<(), ValidationError>> {
        self.validate_json_with(event_type, None, data, UnknownFields::default())
    }

    /// Validates a JSON payload against the schema of `event_type`, treating the fields
    /// its schema does not name as `unknown_fields` says.
    ///
    /// `version` selects the version's schema; `None` is the current version.
    ///
    /// Returns `None` when the type is not registered; an unregistered version of a
    /// registered type is a violation on `version`.
    pub fn validate_json_with(
        &self,
        event_type: &str,
        version: Option<u32>,
        data: &serde_json::Value,
        unknown_fields: UnknownFields,
    ) -> Option<Result<(), ValidationError>> {
        let versions = self.schemas.get(event_type)?;
        let version = version.unwrap_or(versions.current);
        Some(self.check_version(versions, event_type, version, data, unknown_fields))
    }

    fn check_version(
        &self,
        versions: &Versions,
        event_type: &str,
        version: u32,
        data: &serde_json::Value,
        unknown_fields: UnknownFields,
    ) -> Result<(), ValidationError> {
        match versions.schemas.get(&version) {
            Some(schema) => (schema.validate_json)(event_type, data, unknown_fields),
            None => {
                let registered: Vec<String> = versions.schemas.keys().map(u32::to_string).collect();
                let message = format!(
                    "version {version} of `{event_type}` is not registered (registered: {})",
                    registered.join(", ")
                );
                Err(ValidationError::single(event_type, "version", message))
            }
        }
    }
}

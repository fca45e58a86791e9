//! Event schemas: the [`DomainEvent`] trait, validation errors, and the
//! [`SchemaRegistry`] that validates JSON payloads against the typed structs.
//!
//! A JSON payload published under a registered type is deserialized into that
//! type's struct and validated by the same rules, so the typed and the dynamic
//! paths cannot drift.

mod domain_event;
pub mod export;
mod registry;
mod unknown_fields;
mod validation_error;

pub(crate) use self::{domain_event::DynDomainEvent, unknown_fields::UNKNOWN_FIELDS_VALUES};
pub use self::{
    domain_event::{DomainEvent, validate_with_garde},
    registry::SchemaRegistry,
    unknown_fields::UnknownFields,
    validation_error::{ValidationError, Violation},
};

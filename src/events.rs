//! The eleven built-in FitViz events.
use crate::SchemaRegistry;

pub(crate) fn register_builtin(registry: SchemaRegistry) -> SchemaRegistry {
    registry
}

//! Publisher configuration.

/// Publisher configuration (placeholder).
#[derive(Debug, Clone)]
pub struct PublisherConfig {}

/// A configuration error.
#[derive(Debug)]
pub struct ConfigError {}

//! [`ValidationError`] and [`Violation`]: every rule an event breaks, by field.

use std::fmt;

/// One rule an event breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Violation {
    /// The field, as a dotted path (`data.amount_minor`), or `event_type` / `data` for the whole.
    pub field: String,
    /// Why, in lowercase words.
    pub message: String,
}

impl Violation {
    /// A violation of `field` because of `message`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// An event that breaks its schema's rules; names every field at fault and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    event_type: String,
    violations: Vec<Violation>,
}

impl ValidationError {
    /// An error for `event_type` with the given violations.
    pub fn new(event_type: impl Into<String>, violations: Vec<Violation>) -> Self {
        Self {
            event_type: event_type.into(),
            violations,
        }
    }

    /// An error with a single violation.
    pub fn single(
        event_type: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::new(event_type, vec![Violation::new(field, message)])
    }

    /// Converts the result of a [`garde`] validation.
    ///
    /// # Errors
    /// When the report is an error: one [`Violation`] per garde error, with its path.
    pub fn from_garde(
        event_type: &str,
        result: Result<(), garde::Report>,
    ) -> Result<(), ValidationError> {
        result.map_err(|report| {
            let violations = report
                .iter()
                .map(|(path, error)| {
                    let path = path.to_string();
                    Violation::new(
                        if path.is_empty() {
                            "data".to_owned()
                        } else {
                            path
                        },
                        error.message().to_string(),
                    )
                })
                .collect();
            ValidationError::new(event_type, violations)
        })
    }

    /// The event type that failed.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// Every rule broken.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`", self.event_type)?;
        for (i, v) in self.violations.iter().enumerate() {
            f.write_str(if i == 0 { ": " } else { "; " })?;
            write!(f, "{}: {}", v.field, v.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationError {}

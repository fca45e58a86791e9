//! [`OutboxError`]: what can go wrong with the outbox, by kind.

use std::borrow::Cow;

use crate::{config::ConfigError, error::PublishError};

/// What went wrong with the outbox.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// The event was refused before anything was written: the same error
    /// [`publish`](crate::EventPublisher::publish) gives it (validation, organization,
    /// too large).
    #[error(transparent)]
    Event(#[from] PublishError),
    /// An invalid setting.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The database failed or refused a statement (what the outbox was doing, then the
    /// database's message; never the URL's password).
    #[error("{context}: {source}")]
    Database {
        /// What the outbox was doing.
        context: Cow<'static, str>,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A sqlx statement failed ([`Outbox::enqueue_sqlx`](super::Outbox::enqueue_sqlx),
    /// feature `sqlx`).
    #[cfg(feature = "sqlx")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sqlx")))]
    #[error("{context}: {source}")]
    Sqlx {
        /// What the outbox was doing.
        context: Cow<'static, str>,
        /// sqlx's error.
        #[source]
        source: sqlx::Error,
    },
    /// No database connection could be had (the pool timed out or is closed).
    #[error("{0}")]
    Unavailable(String),
    /// The database's outbox schema is not the one this version expects (not migrated,
    /// or migrated by a newer version).
    #[error("{0}")]
    Schema(String),
}

impl OutboxError {
    pub(crate) fn database(
        context: impl Into<Cow<'static, str>>,
    ) -> impl FnOnce(tokio_postgres::Error) -> Self {
        let context = context.into();
        move |source| Self::Database { context, source }
    }

    /// [`database`](Self::database), but a missing table or schema is
    /// [`Schema`](Self::Schema): the outbox was not migrated.
    pub(crate) fn database_in(
        context: &'static str,
        schema: &str,
    ) -> impl FnOnce(tokio_postgres::Error) -> Self {
        let schema = schema.to_owned();
        move |source| {
            use tokio_postgres::error::SqlState;
            match source.code() {
                Some(code)
                    if *code == SqlState::UNDEFINED_TABLE
                        || *code == SqlState::INVALID_SCHEMA_NAME =>
                {
                    Self::not_migrated(&schema)
                }
                _ => Self::Database {
                    context: context.into(),
                    source,
                },
            }
        }
    }

    /// The outbox's tables are missing or not at this version.
    pub(crate) fn not_migrated(schema: &str) -> Self {
        Self::Schema(format!(
            "the outbox tables in schema `{schema}` are missing or not at version {}: run \
             `fitviz-events outbox migrate` (or Outbox::migrate)",
            super::SCHEMA_VERSION
        ))
    }

    #[cfg(feature = "sqlx")]
    pub(crate) fn sqlx(context: &'static str) -> impl FnOnce(sqlx::Error) -> Self {
        move |source| Self::Sqlx {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn pool(context: &'static str, error: deadpool_postgres::PoolError) -> Self {
        match error {
            deadpool_postgres::PoolError::Backend(source) => Self::Database {
                context: context.into(),
                source,
            },
            other => Self::Unavailable(format!("{context}: {other}")),
        }
    }

    /// Whether the database failed (the connection or a statement): the CLI's exit
    /// code 7.
    pub fn is_database(&self) -> bool {
        #[cfg(feature = "sqlx")]
        if let Self::Sqlx { .. } = self {
            return true;
        }
        matches!(self, Self::Database { .. } | Self::Unavailable(_))
    }
}

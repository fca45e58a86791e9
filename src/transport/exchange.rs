//! The events exchange: the one place that knows its name and its declare arguments.
//!
//! A re-declare with other arguments fails with `406 PRECONDITION_FAILED`, so the
//! exchange is declared from this one description, at start-up and on every new
//! connection (a broker restarted with a fresh data directory gets it back).

use std::{sync::Arc, time::Duration};

use lapin::{
    ExchangeKind,
    options::ExchangeDeclareOptions,
    types::{FieldTable, ShortString},
};

use crate::error::PublishError;

/// How long closing the declaring channel may take (a silent broker never answers close-ok).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The durable topic exchange events are published to.
#[derive(Debug, Clone)]
pub(crate) struct Exchange {
    name: ShortString,
    /// Only check that it exists (passive declare) instead of declaring it.
    passive: bool,
    arguments: FieldTable,
}

impl Exchange {
    /// The exchange `name`; declared when `declare`, only checked otherwise.
    ///
    /// # Errors
    /// A configuration error when the name is longer than AMQP allows (255 bytes).
    pub(crate) fn new(name: &str, declare: bool) -> Result<Arc<Self>, PublishError> {
        let name = ShortString::try_new(name)
            .map_err(|_| PublishError::config("the exchange name is longer than 255 bytes"))?;
        Ok(Arc::new(Self {
            name,
            passive: !declare,
            arguments: FieldTable::default(),
        }))
    }

    /// The name, as published to.
    pub(crate) fn name(&self) -> &ShortString {
        &self.name
    }

    /// Declares (or checks) the exchange on `channel`, with this module's arguments: the
    /// one declaration the publisher and [`Topology`](crate::topology::Topology) share,
    /// so they never disagree (which the broker would answer with 406).
    pub(crate) async fn declare_on(&self, channel: &lapin::Channel) -> lapin::Result<()> {
        let options = ExchangeDeclareOptions {
            durable: true,
            passive: self.passive,
            ..Default::default()
        };
        channel
            .exchange_declare(
                self.name.clone(),
                ExchangeKind::Topic,
                options,
                self.arguments.clone(),
            )
            .await
    }

    /// Declares (or checks) the exchange on a short-lived channel of `connection`.
    pub(crate) async fn declare(&self, connection: &lapin::Connection) -> Result<(), PublishError> {
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| PublishError::connection("could not open a channel", e))?;
        let result = self.declare_on(&channel).await;
        if channel.status().connected() {
            let _ = tokio::time::timeout(
                CLOSE_TIMEOUT,
                channel.close(200, "exchange declared".into()),
            )
            .await;
        }
        result.map_err(|e| {
            let refused = super::refusal::refused(
                || {
                    if self.passive {
                        format!("the check that the exchange `{}` exists", self.name)
                    } else {
                        format!("the declaration of the exchange `{}`", self.name)
                    }
                },
                &e,
            );
            if let Some(refused) = refused {
                return refused;
            }
            let what = if self.passive {
                format!("the exchange `{}` does not exist", self.name)
            } else {
                format!("could not declare the exchange `{}`", self.name)
            };
            PublishError::connection(what, e)
        })
    }
}

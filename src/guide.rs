//! Topic pages: how to use the crate and what it guarantees, one page a topic. The
//! reference tables live on the items they describe ([`PublisherConfig`](crate::PublisherConfig)'s
//! settings, [`ErrorKind`](crate::ErrorKind)'s kinds); the order of the publish stack
//! on [`stack`](crate::stack).
//!
//! The pages are the files of the repository's `docs/` folder.

pub mod wire_contract {
    #![doc = include_str!("../docs/wire-contract.md")]
}

pub mod configuration {
    #![doc = include_str!("../docs/configuration.md")]
}

pub mod errors {
    #![doc = include_str!("../docs/errors.md")]
}

pub mod web_services {
    #![doc = include_str!("../docs/web-services.md")]
}

pub mod clusters_and_tls {
    #![doc = include_str!("../docs/clusters-and-tls.md")]
}

pub mod consuming {
    #![doc = include_str!("../docs/consuming.md")]
}

pub mod observability {
    #![doc = include_str!("../docs/observability.md")]
}

pub mod cli {
    #![doc = include_str!("../docs/cli.md")]
}

pub mod migration {
    #![doc = include_str!("../docs/migration.md")]
}

pub mod replay {
    #![doc = include_str!("../docs/replay.md")]
}

pub mod performance {
    #![doc = include_str!("../docs/performance.md")]
}

#[cfg(feature = "outbox-postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "outbox-postgres")))]
pub mod outbox {
    #![doc = include_str!("../docs/outbox.md")]
}

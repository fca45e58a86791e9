//! Logs of the long-running commands (`outbox relay`): warnings and errors on stderr,
//! `RUST_LOG` to see more; lapin's frame dumps (which carry credentials) always off.

use fitviz_events::telemetry::LAPIN_FRAME_LOGS_OFF;
use tracing_subscriber::EnvFilter;

/// Installs the subscriber, once.
#[cfg_attr(not(feature = "outbox-postgres"), allow(dead_code))]
pub(crate) fn init() {
    let asked = std::env::var("RUST_LOG").unwrap_or_default();
    let mut filter = EnvFilter::try_new(&asked).unwrap_or_else(|_| EnvFilter::new("warn"));
    if asked.trim().is_empty() {
        filter = EnvFilter::new("warn");
    }
    // lapin dumps frames (credentials among them) at TRACE: capped at DEBUG whenever
    // RUST_LOG asks for TRACE anywhere.
    if asked.to_ascii_lowercase().contains("trace") {
        for directive in LAPIN_FRAME_LOGS_OFF {
            if let Ok(directive) = directive.parse() {
                filter = filter.add_directive(directive);
            }
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

//! Logs only, for code that wants no traces (tools, tests, embedding).
//! Binaries use [`crate::telemetry::init`], which installs the same log
//! layer plus tracing; [`LogFormat`] lives there and is re-exported here.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub use crate::telemetry::LogFormat;

/// Installs a global subscriber that only logs: `RUST_LOG`-style filter
/// (default `info`), lines on stderr. A second init (tests, embedding) is
/// harmless: the first subscriber stays.
pub fn init(format: LogFormat) {
    let _ = tracing_subscriber::registry()
        .with(crate::telemetry::log_layer(format))
        .try_init();
}

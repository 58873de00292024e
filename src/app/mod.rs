//! What every shop service needs to be a good mesh citizen, written once:
//! the standard flags, health and reflection, the `x-served-by` header, the
//! channel to the local sidecar, a server that shuts down gracefully, and
//! the process around it ([`run`]: telemetry, signals, serve, flush).
//! Both the server and the outbound channel carry trace context
//! ([`crate::telemetry::rpc`]).

mod args;
pub mod caller;
mod outbound;
mod run;
mod served_by;
mod server;
pub mod validate;

pub use args::{instance_id, AppArgs};
pub use outbound::{outbound_channel, OutboundChannel, OutboundError};
pub use run::{run, App, Finish, RunError};
pub use served_by::{ServedBy, ServedByLayer, SERVED_BY};
pub use server::{serve, ServeError};

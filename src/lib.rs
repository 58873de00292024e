//! The `mesh` library: what every binary of the mesh shares.
//!
//! # Layout
//!
//! - [`proto`]: code generated from `proto/` (messages, tonic clients and
//!   servers) and the descriptor set served by reflection.
//! - [`model`]: the pure routing model (routes, endpoints, the bootstrap
//!   file) and its validation. No I/O: the sidecar compiles it into a table,
//!   the control plane stores it.
//! - [`app`]: what every shop service needs to be a good mesh citizen:
//!   standard flags, health, reflection, the `x-served-by` header, the
//!   outbound channel to its sidecar and graceful shutdown.
//! - [`backoff`]: the one exponential backoff with jitter (reconnects,
//!   retries, ejection times).
//! - [`identity`]: SPIFFE identities, certificates and mutual TLS between
//!   mesh processes (trust bundles and credentials that rotate live).
//! - [`telemetry`]: logs and OpenTelemetry traces for every binary (one
//!   `init`, `OTEL_*` configuration, OTLP export with a bounded queue and a
//!   drop counter), and the gRPC layers that carry trace context.
//! - [`listen`]: every accept loop: connection caps, preface, idle and
//!   age timeouts, HTTP/2 parameters, graceful drain.
//! - [`logging`]: logs without traces, for tools and tests.
//! - [`shutdown`]: the process-wide shutdown signal (SIGTERM and SIGINT).

pub mod app;
pub mod backoff;
pub mod identity;
pub mod listen;
pub mod logging;
pub mod model;
pub mod proto;
pub mod shutdown;
pub mod telemetry;

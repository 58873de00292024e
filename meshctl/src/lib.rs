//! `meshctl`, the mesh's command-line tool, as a library: its commands, the
//! demo mesh that `meshctl up` runs, and the plan the end-to-end tests and
//! benchmarks run too. It talks to the control plane over gRPC only: it
//! does not link the etcd store or the server.
//!
//! # Layout
//!
//! - [`cli`]: the commands that talk to the admin API (apply, get, delete,
//!   status, describe, auth, identity), one module each.
//! - [`demo`]: the demo shop as a plan of processes (planner, ports, etcd,
//!   admin clients), shared with the tests.
//! - [`up`]: `meshctl up`, the whole demo mesh on loopback in one command:
//!   it runs the plan of [`demo`] and supervises its processes.

pub mod cli;
pub mod demo;
pub mod up;

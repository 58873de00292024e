//! The mesh's control plane and `meshctl`.
//!
//! # Layout
//!
//! - [`up`]: `meshctl up`, the whole demo mesh on loopback in one command.
//!   It runs the plan of [`mesh::demo`] and supervises its processes.

pub mod up;

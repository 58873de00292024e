//! The per-call path of a routed call, in parts that can be tested alone:
//! the [`plan`] made when the call arrives (deadline, per-try budget,
//! fault), the [`judge`] that decides after each attempt (return, fail or
//! retry), the [`hold`] that reads a response ahead so a status in its
//! trailers can still be retried, and the proxy's typed [`error`]s. The
//! mechanics (connections, streams, bodies) stay in `proxy`.

pub mod drain;
pub mod error;
pub mod hold;
pub mod judge;
pub mod plan;

#[cfg(test)]
mod tests;

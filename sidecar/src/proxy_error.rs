//! Where the proxy's own errors used to live: they are
//! [`crate::call::error`] now (a typed enum). This path stays so the modules
//! that name it (the table, the listeners) keep compiling unchanged.

pub use crate::call::error::{ProxyBody, ProxyError, ERROR_REASON_HEADER};

//! The routing model: what an operator writes (routes), what the mesh
//! discovers (endpoints), and their validation. Pure data, no I/O, so every
//! component agrees on what is valid. [`wire`] converts the documents to
//! and from the typed protobuf resources the control plane pushes.

mod authn;
mod authz;
mod bootstrap;
mod endpoint;
mod policy;
mod rate_limit;
pub(crate) mod route;
mod validation;
pub mod wire;

pub use authn::{
    JwksSource, RequestAuthentication, RequestAuthenticationSpec, DEFAULT_CLOCK_SKEW,
    DEFAULT_JWKS_REFRESH, REQUEST_AUTHENTICATION_KIND,
};
pub use authz::{
    authorize, glob, AuthorizationAction, AuthorizationMode, AuthorizationPolicy,
    AuthorizationRule, AuthorizationSpec, Caller, CallerMatch, Decision, DefaultAuthorization,
    GatewayCaller, AUTHORIZATION_POLICY_KIND,
};
pub use bootstrap::{Bootstrap, BootstrapError};
pub use endpoint::{Endpoint, MAX_ENDPOINT_WEIGHT};
pub use policy::{
    grpc_code, parse_byte_size, Backoff, ConcurrencyLimits, FaultAbort, FaultDelay, FaultInjection,
    OutlierDetection, RetryBudget, RetryPolicy, GRPC_CODES, MAX_BUFFER_RESPONSE,
};
pub use rate_limit::{Rate, RateLimit, RateOverride};
pub use route::{
    compile_header_regex, parse_duration, Exposure, HeaderMatch, LoadBalancer, Route, RouteMatch,
    RouteMetadata, RouteRule, RouteSpec, WeightedSubset,
};
pub use validation::{is_dns_label, is_subscription_name, ValidationError};

#[cfg(test)]
mod tests;

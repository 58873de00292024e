//! The model's documents as the typed protobuf resources the control plane
//! pushes to proxies (`proto/mesh/v1/resources.proto`), and back.
//!
//! Model to wire ([`From`]) runs in the control plane, on documents that
//! already passed their `validate`, so it cannot fail: durations are parsed
//! by the model's own [`parse_duration`] into `google.protobuf.Duration`,
//! gRPC code, balancer and exposure names become enums, byte sizes numbers.
//! A value only an unvalidated document holds (a duration or a name the
//! model refuses) goes out as one every receiver refuses (a zero duration,
//! an UNSPECIFIED enum), never as a default that would quietly apply.
//!
//! Wire to model ([`TryFrom`]) runs in the proxy, on data from the network:
//! it never panics, writes every parsed quantity in one canonical form the
//! model's parsers accept, and ends with the model's own `validate`, so a
//! resource is accepted exactly when the document it stands for would be.
//! Canonical forms:
//! - durations: whole seconds as `30s`, else whole milliseconds as `250ms`
//!   (`1.5s` comes back as `1500ms`), else fractional milliseconds
//!   (`0.5ms`): integers wherever they can be, so the text and the value
//!   agree to the nanosecond;
//! - gRPC codes: the model's lowercase, dash-separated names
//!   (`resource-exhausted`);
//! - byte sizes: the largest binary unit that is exact (`1MiB`, `64KiB`),
//!   else plain bytes.
//!
//! A document already in canonical form comes back from the wire equal to
//! itself, and a resource made from the model goes out again unchanged.

use std::collections::{BTreeMap, HashSet};

use prost_types::Duration;

use super::route::ROUTE_KIND;
use super::{
    grpc_code, parse_byte_size, parse_duration, AuthorizationAction, AuthorizationMode,
    AuthorizationPolicy, AuthorizationRule, AuthorizationSpec, Backoff, CallerMatch,
    ConcurrencyLimits, Endpoint, Exposure, FaultAbort, FaultDelay, FaultInjection, GatewayCaller,
    HeaderMatch, JwksSource, LoadBalancer, OutlierDetection, Rate, RateLimit, RateOverride,
    RequestAuthentication, RequestAuthenticationSpec, RetryBudget, RetryPolicy, Route, RouteMatch,
    RouteMetadata, RouteRule, RouteSpec, ValidationError, WeightedSubset,
    AUTHORIZATION_POLICY_KIND, GRPC_CODES, REQUEST_AUTHENTICATION_KIND,
};
use crate::proto::mesh::v1 as pb;

#[cfg(test)]
mod tests;

/// Why a resource from the wire was refused: the field, by its path in the
/// document the resource stands for (`spec.retries.perTryTimeout`), and
/// the reason. A proxy reports it in its NACK and keeps the resource's last
/// good version; resending the same resource fails the same way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A message (or a oneof) the model cannot do without is absent.
    #[error("{field}: missing")]
    Missing {
        /// Path of the absent field.
        field: String,
    },
    /// An enum left at its UNSPECIFIED zero where the model needs a value:
    /// a default the sender did not ask for is not made up.
    #[error("{field}: {enum_name} is unspecified")]
    Unspecified {
        /// Path of the field.
        field: String,
        /// The protobuf enum, e.g. `mesh.v1.GrpcCode`.
        enum_name: &'static str,
    },
    /// An enum number this build does not know (a newer schema's, or
    /// garbage).
    #[error("{field}: {value} is not a known {enum_name} value")]
    UnknownEnum {
        /// Path of the field.
        field: String,
        /// The protobuf enum, e.g. `mesh.v1.LoadBalancer`.
        enum_name: &'static str,
        /// The number received.
        value: i32,
    },
    /// A duration below zero.
    #[error("{field}: duration {seconds}s {nanos}ns is negative")]
    NegativeDuration {
        /// Path of the field.
        field: String,
        /// Its `seconds`.
        seconds: i64,
        /// Its `nanos`.
        nanos: i32,
    },
    /// A duration outside `google.protobuf.Duration`'s own range (nanos
    /// above 999,999,999, seconds above 10,000 years).
    #[error("{field}: duration {seconds}s {nanos}ns is out of range")]
    DurationOutOfRange {
        /// Path of the field.
        field: String,
        /// Its `seconds`.
        seconds: i64,
        /// Its `nanos`.
        nanos: i32,
    },
    /// Well formed, but the document it stands for fails the model's own
    /// validation (which names the field).
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}

impl WireError {
    /// Path of the offending field within its document.
    pub fn field(&self) -> &str {
        match self {
            Self::Missing { field }
            | Self::Unspecified { field, .. }
            | Self::UnknownEnum { field, .. }
            | Self::NegativeDuration { field, .. }
            | Self::DurationOutOfRange { field, .. } => field,
            Self::Invalid(e) => &e.field,
        }
    }
}

// ---------------------------------------------------------------- routes

impl From<&Route> for pb::RouteResource {
    fn from(route: &Route) -> Self {
        let spec = &route.spec;
        Self {
            name: route.metadata.name.clone(),
            r#match: Some(pb::RouteMatch {
                service: spec.matches.service.clone(),
                method: spec.matches.method.clone(),
            }),
            destination: spec.destination.clone(),
            rules: spec.rules.iter().map(rule_to_wire).collect(),
            split: split_to_wire(&spec.split),
            timeout: spec.timeout.as_deref().map(duration_to_wire),
            retries: spec.retries.as_ref().map(retries_to_wire),
            outlier_detection: spec.outlier_detection.as_ref().map(outlier_to_wire),
            concurrency: spec.concurrency.as_ref().map(|c| pb::ConcurrencyLimits {
                max_requests: c.max_requests,
                max_pending_connects: c.max_pending_connects,
            }),
            fault: spec.fault.as_ref().map(fault_to_wire),
            load_balancer: spec.load_balancer.as_deref().map(load_balancer_to_wire),
            exposure: spec.exposure.as_deref().map(exposure_to_wire),
            external_headers: spec.external_headers.clone(),
            rate_limit: spec.rate_limit.as_ref().map(rate_limit_to_wire),
        }
    }
}

impl TryFrom<pb::RouteResource> for Route {
    type Error = WireError;

    fn try_from(wire: pb::RouteResource) -> Result<Self, WireError> {
        let matches = required(wire.r#match, "spec.match")?;
        let rules = wire
            .rules
            .into_iter()
            .map(|rule| RouteRule {
                headers: rule.headers.into_iter().map(header_from_wire).collect(),
                split: split_from_wire(rule.split),
            })
            .collect();
        let route = Route {
            kind: ROUTE_KIND.to_owned(),
            metadata: RouteMetadata { name: wire.name },
            spec: RouteSpec {
                matches: RouteMatch {
                    service: matches.service,
                    method: matches.method,
                },
                destination: wire.destination,
                rules,
                split: split_from_wire(wire.split),
                timeout: wire
                    .timeout
                    .map(|d| duration_from_wire(d, "spec.timeout"))
                    .transpose()?,
                retries: wire
                    .retries
                    .map(|r| retries_from_wire(r, "spec.retries"))
                    .transpose()?,
                outlier_detection: wire
                    .outlier_detection
                    .map(|o| outlier_from_wire(o, "spec.outlierDetection"))
                    .transpose()?,
                concurrency: wire.concurrency.map(|c| ConcurrencyLimits {
                    max_requests: c.max_requests,
                    max_pending_connects: c.max_pending_connects,
                }),
                fault: wire
                    .fault
                    .map(|f| fault_from_wire(f, "spec.fault"))
                    .transpose()?,
                load_balancer: wire
                    .load_balancer
                    .map(|v| load_balancer_from_wire(v, "spec.loadBalancer"))
                    .transpose()?,
                exposure: wire
                    .exposure
                    .map(|v| exposure_from_wire(v, "spec.exposure"))
                    .transpose()?,
                external_headers: wire.external_headers,
                rate_limit: wire.rate_limit.map(rate_limit_from_wire),
            },
        };
        route.validate()?;
        Ok(route)
    }
}

fn rule_to_wire(rule: &RouteRule) -> pb::RouteRule {
    pb::RouteRule {
        headers: rule.headers.iter().map(header_to_wire).collect(),
        split: split_to_wire(&rule.split),
    }
}

fn header_to_wire(header: &HeaderMatch) -> pb::HeaderMatch {
    use pb::header_match::Value;
    // Neither or both: only an unvalidated document; sent as neither, which
    // the receiver's validation refuses.
    let value = match (&header.exact, &header.regex) {
        (Some(exact), None) => Some(Value::Exact(exact.clone())),
        (None, Some(regex)) => Some(Value::Regex(regex.clone())),
        _ => None,
    };
    pb::HeaderMatch {
        name: header.name.clone(),
        value,
    }
}

fn header_from_wire(header: pb::HeaderMatch) -> HeaderMatch {
    use pb::header_match::Value;
    let (exact, regex) = match header.value {
        Some(Value::Exact(exact)) => (Some(exact), None),
        Some(Value::Regex(regex)) => (None, Some(regex)),
        None => (None, None),
    };
    HeaderMatch {
        name: header.name,
        exact,
        regex,
    }
}

fn split_to_wire(split: &[WeightedSubset]) -> Vec<pb::WeightedSubset> {
    split
        .iter()
        .map(|s| pb::WeightedSubset {
            subset: s.subset.clone(),
            weight: s.weight,
        })
        .collect()
}

fn split_from_wire(split: Vec<pb::WeightedSubset>) -> Vec<WeightedSubset> {
    split
        .into_iter()
        .map(|s| WeightedSubset {
            subset: s.subset,
            weight: s.weight,
        })
        .collect()
}

fn retries_to_wire(retries: &RetryPolicy) -> pb::RetryPolicy {
    pb::RetryPolicy {
        attempts: retries.attempts,
        per_try_timeout: retries.per_try_timeout.as_deref().map(duration_to_wire),
        retry_on: retries.retry_on.iter().map(|c| code_to_wire(c)).collect(),
        backoff: Some(pb::Backoff {
            base: Some(duration_to_wire(&retries.backoff.base)),
            max: Some(duration_to_wire(&retries.backoff.max)),
        }),
        budget: Some(pb::RetryBudget {
            ratio: retries.budget.ratio,
            min_per_second: retries.budget.min_per_second,
        }),
        buffer_bytes: retries.buffer_bytes,
        // Unparsable: only an unvalidated document; 0 is refused.
        buffer_response_bytes: retries
            .buffer_response
            .as_deref()
            .map(|s| parse_byte_size(s).unwrap_or(0)),
    }
}

fn retries_from_wire(wire: pb::RetryPolicy, at: &str) -> Result<RetryPolicy, WireError> {
    let backoff = required(wire.backoff, &format!("{at}.backoff"))?;
    let budget = required(wire.budget, &format!("{at}.budget"))?;
    Ok(RetryPolicy {
        attempts: wire.attempts,
        per_try_timeout: wire
            .per_try_timeout
            .map(|d| duration_from_wire(d, &format!("{at}.perTryTimeout")))
            .transpose()?,
        retry_on: codes_from_wire(wire.retry_on, &format!("{at}.retryOn"))?,
        backoff: Backoff {
            base: required_duration(backoff.base, &format!("{at}.backoff.base"))?,
            max: required_duration(backoff.max, &format!("{at}.backoff.max"))?,
        },
        budget: RetryBudget {
            ratio: budget.ratio,
            min_per_second: budget.min_per_second,
        },
        buffer_bytes: wire.buffer_bytes,
        buffer_response: wire.buffer_response_bytes.map(byte_size_text),
    })
}

fn outlier_to_wire(outlier: &OutlierDetection) -> pb::OutlierDetection {
    pb::OutlierDetection {
        consecutive_failures: outlier.consecutive_failures,
        failure_codes: outlier
            .failure_codes
            .iter()
            .map(|c| code_to_wire(c))
            .collect(),
        base_ejection: Some(duration_to_wire(&outlier.base_ejection)),
        max_ejection: Some(duration_to_wire(&outlier.max_ejection)),
        max_ejection_percent: outlier.max_ejection_percent,
    }
}

fn outlier_from_wire(wire: pb::OutlierDetection, at: &str) -> Result<OutlierDetection, WireError> {
    Ok(OutlierDetection {
        consecutive_failures: wire.consecutive_failures,
        failure_codes: codes_from_wire(wire.failure_codes, &format!("{at}.failureCodes"))?,
        base_ejection: required_duration(wire.base_ejection, &format!("{at}.baseEjection"))?,
        max_ejection: required_duration(wire.max_ejection, &format!("{at}.maxEjection"))?,
        max_ejection_percent: wire.max_ejection_percent,
    })
}

fn fault_to_wire(fault: &FaultInjection) -> pb::FaultInjection {
    pb::FaultInjection {
        abort: fault.abort.as_ref().map(|a| pb::FaultAbort {
            percent: a.percent,
            code: code_to_wire(&a.code),
        }),
        delay: fault.delay.as_ref().map(|d| pb::FaultDelay {
            percent: d.percent,
            duration: Some(duration_to_wire(&d.duration)),
        }),
    }
}

fn fault_from_wire(wire: pb::FaultInjection, at: &str) -> Result<FaultInjection, WireError> {
    let abort = wire
        .abort
        .map(|a| {
            Ok::<_, WireError>(FaultAbort {
                percent: a.percent,
                code: code_from_wire(a.code, &format!("{at}.abort.code"))?,
            })
        })
        .transpose()?;
    let delay = wire
        .delay
        .map(|d| {
            Ok::<_, WireError>(FaultDelay {
                percent: d.percent,
                duration: required_duration(d.duration, &format!("{at}.delay.duration"))?,
            })
        })
        .transpose()?;
    Ok(FaultInjection { abort, delay })
}

fn rate_limit_to_wire(limit: &RateLimit) -> pb::RateLimit {
    use pb::rate_override::Caller;
    let rate = |r: &Rate| pb::Rate {
        requests_per_second: r.requests_per_second,
        burst: r.burst,
    };
    pb::RateLimit {
        total: limit.total.as_ref().map(rate),
        per_caller: limit.per_caller.as_ref().map(rate),
        overrides: limit
            .overrides
            .iter()
            .map(|o| pb::RateOverride {
                // Neither or both: only an unvalidated document; sent as
                // neither, which the receiver refuses.
                caller: match (&o.service, &o.subject) {
                    (Some(service), None) => Some(Caller::Service(service.clone())),
                    (None, Some(subject)) => Some(Caller::Subject(subject.clone())),
                    _ => None,
                },
                requests_per_second: o.requests_per_second,
                burst: o.burst,
            })
            .collect(),
    }
}

fn rate_limit_from_wire(wire: pb::RateLimit) -> RateLimit {
    use pb::rate_override::Caller;
    let rate = |r: pb::Rate| Rate {
        requests_per_second: r.requests_per_second,
        burst: r.burst,
    };
    RateLimit {
        total: wire.total.map(rate),
        per_caller: wire.per_caller.map(rate),
        overrides: wire
            .overrides
            .into_iter()
            .map(|o| {
                let (service, subject) = match o.caller {
                    Some(Caller::Service(service)) => (Some(service), None),
                    Some(Caller::Subject(subject)) => (None, Some(subject)),
                    None => (None, None),
                };
                RateOverride {
                    service,
                    subject,
                    requests_per_second: o.requests_per_second,
                    burst: o.burst,
                }
            })
            .collect(),
    }
}

fn load_balancer_to_wire(name: &str) -> i32 {
    let wire = match LoadBalancer::from_name(name) {
        Some(LoadBalancer::WeightedRoundRobin) => pb::LoadBalancer::WeightedRoundRobin,
        Some(LoadBalancer::LeastRequest) => pb::LoadBalancer::LeastRequest,
        Some(LoadBalancer::PeakEwma) => pb::LoadBalancer::PeakEwma,
        // Only an unvalidated document; refused by the receiver.
        None => pb::LoadBalancer::Unspecified,
    };
    wire as i32
}

fn load_balancer_from_wire(value: i32, field: &str) -> Result<String, WireError> {
    let model = match known::<pb::LoadBalancer>(value, field, "mesh.v1.LoadBalancer")? {
        pb::LoadBalancer::WeightedRoundRobin => LoadBalancer::WeightedRoundRobin,
        pb::LoadBalancer::LeastRequest => LoadBalancer::LeastRequest,
        pb::LoadBalancer::PeakEwma => LoadBalancer::PeakEwma,
        pb::LoadBalancer::Unspecified => return Err(unspecified(field, "mesh.v1.LoadBalancer")),
    };
    Ok(model.name().to_owned())
}

fn exposure_to_wire(name: &str) -> i32 {
    let wire = match Exposure::from_name(name) {
        Some(Exposure::Internal) => pb::Exposure::Internal,
        Some(Exposure::Public) => pb::Exposure::Public,
        // Only an unvalidated document; refused by the receiver.
        None => pb::Exposure::Unspecified,
    };
    wire as i32
}

fn exposure_from_wire(value: i32, field: &str) -> Result<String, WireError> {
    let model = match known::<pb::Exposure>(value, field, "mesh.v1.Exposure")? {
        pb::Exposure::Internal => Exposure::Internal,
        pb::Exposure::Public => Exposure::Public,
        pb::Exposure::Unspecified => return Err(unspecified(field, "mesh.v1.Exposure")),
    };
    Exposure::NAMES
        .iter()
        .find(|(_, e)| *e == model)
        .map(|(name, _)| (*name).to_owned())
        // Every variant is in NAMES; a miss would be a model bug, refused
        // rather than guessed.
        .ok_or(WireError::UnknownEnum {
            field: field.to_owned(),
            enum_name: "mesh.v1.Exposure",
            value,
        })
}

// ------------------------------------------------------------- endpoints

impl From<&Endpoint> for pb::EndpointResource {
    fn from(endpoint: &Endpoint) -> Self {
        Self {
            service: endpoint.service.clone(),
            instance: endpoint.instance.clone(),
            address: endpoint.address.clone(),
            version: endpoint.version.clone(),
            weight: endpoint.weight,
        }
    }
}

impl TryFrom<pb::EndpointResource> for Endpoint {
    type Error = WireError;

    /// Field paths are the endpoint's own (`weight`), as in its `validate`.
    fn try_from(wire: pb::EndpointResource) -> Result<Self, WireError> {
        let endpoint = Endpoint {
            service: wire.service,
            instance: wire.instance,
            address: wire.address,
            version: wire.version,
            weight: wire.weight,
        };
        endpoint.validate()?;
        Ok(endpoint)
    }
}

/// The endpoints of `service` among `endpoints`, as the one resource a
/// proxy replaces that service's endpoint set with: the control plane
/// holds every endpoint of the mesh and sends each service's apart.
pub fn service_endpoints<'a>(
    service: &str,
    endpoints: impl IntoIterator<Item = &'a Endpoint>,
) -> pb::ServiceEndpoints {
    pb::ServiceEndpoints {
        service: service.to_owned(),
        endpoints: endpoints
            .into_iter()
            .filter(|e| e.service == service)
            .map(pb::EndpointResource::from)
            .collect(),
    }
}

impl TryFrom<pb::ServiceEndpoints> for Vec<Endpoint> {
    type Error = WireError;

    /// Every endpoint valid, of the group's service, and each instance
    /// once (as a bootstrap file's endpoints must be); paths like
    /// `endpoints[2].weight`.
    fn try_from(wire: pb::ServiceEndpoints) -> Result<Self, WireError> {
        if !super::is_dns_label(&wire.service) {
            return Err(ValidationError::new(
                "service",
                format!("{:?} is not a mesh service name (DNS label)", wire.service),
            )
            .into());
        }
        let mut instances = HashSet::with_capacity(wire.endpoints.len());
        let mut endpoints = Vec::with_capacity(wire.endpoints.len());
        for (i, resource) in wire.endpoints.into_iter().enumerate() {
            let within = |e: ValidationError| e.within(&format!("endpoints[{i}]"));
            let endpoint = match Endpoint::try_from(resource) {
                Ok(endpoint) => endpoint,
                Err(WireError::Invalid(e)) => return Err(within(e).into()),
                Err(other) => return Err(other),
            };
            if endpoint.service != wire.service {
                return Err(within(ValidationError::new(
                    "service",
                    format!(
                        "{:?} in the endpoints of {:?}",
                        endpoint.service, wire.service
                    ),
                ))
                .into());
            }
            if !instances.insert(endpoint.instance.clone()) {
                return Err(within(ValidationError::new(
                    "instance",
                    format!("{:?} is listed twice", endpoint.instance),
                ))
                .into());
            }
            endpoints.push(endpoint);
        }
        Ok(endpoints)
    }
}

// ------------------------------------------------- authorization policies

impl From<&AuthorizationPolicy> for pb::AuthorizationPolicyResource {
    fn from(policy: &AuthorizationPolicy) -> Self {
        let spec = &policy.spec;
        let action = match spec.action {
            AuthorizationAction::Allow => pb::AuthorizationAction::Allow,
            AuthorizationAction::Deny => pb::AuthorizationAction::Deny,
        };
        let mode = match spec.mode {
            AuthorizationMode::Enforce => pb::AuthorizationMode::Enforce,
            AuthorizationMode::Audit => pb::AuthorizationMode::Audit,
        };
        Self {
            name: policy.metadata.name.clone(),
            service: spec.service.clone(),
            action: action as i32,
            mode: mode as i32,
            rules: spec
                .rules
                .iter()
                .map(|rule| pb::AuthorizationRule {
                    from: rule.from.iter().map(caller_to_wire).collect(),
                    to: rule.to.clone(),
                })
                .collect(),
        }
    }
}

impl TryFrom<pb::AuthorizationPolicyResource> for AuthorizationPolicy {
    type Error = WireError;

    fn try_from(wire: pb::AuthorizationPolicyResource) -> Result<Self, WireError> {
        const ACTION: &str = "mesh.v1.AuthorizationAction";
        const MODE: &str = "mesh.v1.AuthorizationMode";
        let action = match known(wire.action, "spec.action", ACTION)? {
            pb::AuthorizationAction::Allow => AuthorizationAction::Allow,
            pb::AuthorizationAction::Deny => AuthorizationAction::Deny,
            pb::AuthorizationAction::Unspecified => return Err(unspecified("spec.action", ACTION)),
        };
        let mode = match known(wire.mode, "spec.mode", MODE)? {
            pb::AuthorizationMode::Enforce => AuthorizationMode::Enforce,
            pb::AuthorizationMode::Audit => AuthorizationMode::Audit,
            pb::AuthorizationMode::Unspecified => return Err(unspecified("spec.mode", MODE)),
        };
        let policy = AuthorizationPolicy {
            kind: AUTHORIZATION_POLICY_KIND.to_owned(),
            metadata: RouteMetadata { name: wire.name },
            spec: AuthorizationSpec {
                service: wire.service,
                action,
                mode,
                rules: wire
                    .rules
                    .into_iter()
                    .map(|rule| AuthorizationRule {
                        from: rule.from.into_iter().map(caller_from_wire).collect(),
                        to: rule.to,
                    })
                    .collect(),
            },
        };
        policy.validate()?;
        Ok(policy)
    }
}

fn caller_to_wire(caller: &CallerMatch) -> pb::CallerMatch {
    use pb::caller_match::Caller;
    // Not exactly one: only an unvalidated document; sent as none, which
    // the receiver's validation refuses.
    let caller = match (&caller.service, &caller.identity, &caller.gateway) {
        (Some(service), None, None) => Some(Caller::Service(service.clone())),
        (None, Some(identity), None) => Some(Caller::Identity(identity.clone())),
        (None, None, Some(gateway)) => Some(Caller::Gateway(pb::GatewayCaller {
            claims: claims_to_wire(&gateway.claims),
        })),
        _ => None,
    };
    pb::CallerMatch { caller }
}

fn caller_from_wire(wire: pb::CallerMatch) -> CallerMatch {
    use pb::caller_match::Caller;
    match wire.caller {
        Some(Caller::Service(service)) => CallerMatch {
            service: Some(service),
            ..CallerMatch::default()
        },
        Some(Caller::Identity(identity)) => CallerMatch {
            identity: Some(identity),
            ..CallerMatch::default()
        },
        Some(Caller::Gateway(gateway)) => CallerMatch {
            gateway: Some(GatewayCaller {
                claims: gateway.claims.into_iter().collect(),
            }),
            ..CallerMatch::default()
        },
        None => CallerMatch::default(),
    }
}

fn claims_to_wire(claims: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    claims.clone()
}

// ----------------------------------------------- request authentications

impl From<&RequestAuthentication> for pb::RequestAuthenticationResource {
    fn from(authn: &RequestAuthentication) -> Self {
        use pb::jwks_source::Source;
        let spec = &authn.spec;
        // Neither or both: only an unvalidated document; sent as neither,
        // which the receiver's validation refuses.
        let source = match (&spec.jwks.method, &spec.jwks.file) {
            (Some(method), None) => Some(Source::Method(method.clone())),
            (None, Some(file)) => Some(Source::File(file.clone())),
            _ => None,
        };
        Self {
            name: authn.metadata.name.clone(),
            issuer: spec.issuer.clone(),
            audiences: spec.audiences.clone(),
            jwks: Some(pb::JwksSource {
                source,
                refresh: spec.jwks.refresh.as_deref().map(duration_to_wire),
            }),
            forward_claims: spec.forward_claims.clone(),
            clock_skew: spec.clock_skew.as_deref().map(duration_to_wire),
            forward_original_token: spec.forward_original_token,
            debug_claims: claims_to_wire(&spec.debug_claims),
        }
    }
}

impl TryFrom<pb::RequestAuthenticationResource> for RequestAuthentication {
    type Error = WireError;

    fn try_from(wire: pb::RequestAuthenticationResource) -> Result<Self, WireError> {
        use pb::jwks_source::Source;
        let jwks = required(wire.jwks, "spec.jwks")?;
        let (method, file) = match jwks.source {
            Some(Source::Method(method)) => (Some(method), None),
            Some(Source::File(file)) => (None, Some(file)),
            None => (None, None),
        };
        let authn = RequestAuthentication {
            kind: REQUEST_AUTHENTICATION_KIND.to_owned(),
            metadata: RouteMetadata { name: wire.name },
            spec: RequestAuthenticationSpec {
                issuer: wire.issuer,
                audiences: wire.audiences,
                jwks: JwksSource {
                    method,
                    file,
                    refresh: jwks
                        .refresh
                        .map(|d| duration_from_wire(d, "spec.jwks.refresh"))
                        .transpose()?,
                },
                forward_claims: wire.forward_claims,
                clock_skew: wire
                    .clock_skew
                    .map(|d| duration_from_wire(d, "spec.clockSkew"))
                    .transpose()?,
                forward_original_token: wire.forward_original_token,
                debug_claims: wire.debug_claims.into_iter().collect(),
            },
        };
        authn.validate()?;
        Ok(authn)
    }
}

// ------------------------------------------------- durations, codes, sizes

/// The wire form of a duration the model accepts. Text the model refuses
/// (only in an unvalidated document) becomes zero, which no duration field
/// of the model accepts: the receiver refuses it with the field's path.
fn duration_to_wire(text: &str) -> Duration {
    parse_duration(text)
        .ok()
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or_default()
}

/// The canonical text of a wire duration (see the module docs). Negative
/// or unnormalized durations are refused here; zero and durations the
/// model finds too long are left to the model's validation, which says
/// why in its own words.
fn duration_from_wire(wire: Duration, field: &str) -> Result<String, WireError> {
    /// `google.protobuf.Duration`'s own bound: 10,000 years.
    const MAX_SECONDS: i64 = 315_576_000_000;
    let (Ok(seconds), Ok(nanos)) = (u64::try_from(wire.seconds), u32::try_from(wire.nanos)) else {
        return Err(WireError::NegativeDuration {
            field: field.to_owned(),
            seconds: wire.seconds,
            nanos: wire.nanos,
        });
    };
    if wire.seconds > MAX_SECONDS || nanos > 999_999_999 {
        return Err(WireError::DurationOutOfRange {
            field: field.to_owned(),
            seconds: wire.seconds,
            nanos: wire.nanos,
        });
    }
    Ok(duration_text(seconds, nanos))
}

/// `30s`, `250ms` or `0.5ms`: integers wherever they can be, so the
/// model's parser (which goes through `f64`) gets back the same
/// nanoseconds.
fn duration_text(seconds: u64, nanos: u32) -> String {
    if nanos == 0 {
        return format!("{seconds}s");
    }
    // seconds <= 315,576,000,000: the product fits a u64 with room to spare.
    let millis = seconds * 1_000 + u64::from(nanos / 1_000_000);
    match nanos % 1_000_000 {
        0 => format!("{millis}ms"),
        sub => {
            let fraction = format!("{sub:06}");
            format!("{millis}.{}ms", fraction.trim_end_matches('0'))
        }
    }
}

fn required_duration(wire: Option<Duration>, field: &str) -> Result<String, WireError> {
    duration_from_wire(required(wire, field)?, field)
}

/// The wire number of a gRPC code name: `mesh.v1.GrpcCode` numbers are the
/// codes' own. A name the model does not know (only in an unvalidated
/// document) becomes UNSPECIFIED, which the receiver refuses.
fn code_to_wire(name: &str) -> i32 {
    grpc_code(name).unwrap_or(pb::GrpcCode::Unspecified as i32)
}

/// The model's canonical name of a code from the wire.
fn code_from_wire(value: i32, field: &str) -> Result<String, WireError> {
    const CODE: &str = "mesh.v1.GrpcCode";
    if known::<pb::GrpcCode>(value, field, CODE)? == pb::GrpcCode::Unspecified {
        return Err(unspecified(field, CODE));
    }
    GRPC_CODES
        .iter()
        .find(|(_, code)| *code == value)
        .map(|(name, _)| (*name).to_owned())
        // The enum and GRPC_CODES list the same codes (a test checks);
        // a miss is refused rather than guessed.
        .ok_or(WireError::UnknownEnum {
            field: field.to_owned(),
            enum_name: CODE,
            value,
        })
}

fn codes_from_wire(values: Vec<i32>, field: &str) -> Result<Vec<String>, WireError> {
    values
        .into_iter()
        .enumerate()
        .map(|(i, value)| code_from_wire(value, &format!("{field}[{i}]")))
        .collect()
}

/// `1MiB`, `64KiB` or plain bytes: the largest binary unit that is exact.
/// Zero stays `0`, which the model's validation refuses.
fn byte_size_text(bytes: u64) -> String {
    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    match bytes {
        0 => "0".to_owned(),
        b if b % MIB == 0 => format!("{}MiB", b / MIB),
        b if b % KIB == 0 => format!("{}KiB", b / KIB),
        b => b.to_string(),
    }
}

// ---------------------------------------------------------------- basics

fn required<T>(value: Option<T>, field: &str) -> Result<T, WireError> {
    value.ok_or_else(|| WireError::Missing {
        field: field.to_owned(),
    })
}

/// The enum variant of a wire number; UNSPECIFIED comes back as itself,
/// for the caller to refuse with its own field.
fn known<E: TryFrom<i32>>(
    value: i32,
    field: &str,
    enum_name: &'static str,
) -> Result<E, WireError> {
    E::try_from(value).map_err(|_| WireError::UnknownEnum {
        field: field.to_owned(),
        enum_name,
        value,
    })
}

fn unspecified(field: &str, enum_name: &'static str) -> WireError {
    WireError::Unspecified {
        field: field.to_owned(),
        enum_name,
    }
}

use std::fmt::Debug;
use std::path::{Path, PathBuf};

use prost::Message;
use serde::Deserialize;

use super::*;

/// A route with every optional part set, in canonical forms.
const FULL_ROUTE: &str = r#"
kind: Route
metadata: { name: payments }
spec:
  match: { service: shop.payments.v1.PaymentsService, method: Charge }
  destination: payments
  rules:
    - headers:
        - { name: x-canary, exact: "true" }
        - { name: x-user, regex: "alice|bob" }
      split: [{ subset: v2, weight: 1 }]
    - headers: [{ name: x-beta, exact: "1" }]
  split:
    - { subset: v1, weight: 90 }
    - { subset: v2, weight: 10 }
  timeout: 2500ms
  retries:
    attempts: 4
    perTryTimeout: 500ms
    retryOn: [unavailable, resource-exhausted, deadline-exceeded]
    backoff: { base: 25ms, max: 1s }
    budget: { ratio: 0.25, minPerSecond: 5 }
    bufferBytes: 131072
    bufferResponse: 64KiB
  outlierDetection:
    consecutiveFailures: 3
    failureCodes: [unavailable, internal]
    baseEjection: 5s
    maxEjection: 60s
    maxEjectionPercent: 40
  concurrency: { maxRequests: 1000, maxPendingConnects: 50 }
  fault:
    abort: { percent: 12.5, code: resource-exhausted }
    delay: { percent: 10, duration: 100ms }
  loadBalancer: peak-ewma
  exposure: public
  externalHeaders: [x-canary]
  rateLimit:
    total: { requestsPerSecond: 500, burst: 100 }
    perCaller: { requestsPerSecond: 20 }
    overrides:
      - { service: orders, requestsPerSecond: 200, burst: 300 }
      - { subject: load-test, requestsPerSecond: 1000 }
"#;

const MINIMAL_ROUTE: &str = r#"
kind: Route
metadata: { name: inventory }
spec:
  match: { service: shop.inventory.v1.InventoryService }
  destination: inventory
"#;

/// Every kind of caller, DENY and audit (the non-defaults).
const FULL_POLICY: &str = r#"
kind: AuthorizationPolicy
metadata: { name: payments-callers }
spec:
  service: payments
  action: DENY
  mode: audit
  rules:
    - from:
        - service: orders
        - service: "*"
        - identity: spiffe://mesh.local/svc/reports
        - identity: "spiffe://mesh.local/svc/*"
        - gateway: { claims: { role: admin, tier: gold } }
        - gateway: {}
      to: [shop.payments.v1.PaymentsService/Charge, "shop.payments.v1.PaymentsService/Re*"]
    - {}
"#;

const METHOD_AUTHN: &str = r#"
kind: RequestAuthentication
metadata: { name: shop-users }
spec:
  issuer: https://users.shop.mesh.local
  audiences: [shop, admin]
  jwks: { method: shop.users.v1.UsersService/GetJwks, refresh: 30s }
  forwardClaims: [role, tier]
  clockSkew: 45s
  forwardOriginalToken: true
  debugClaims: { role: admin, team: sre }
"#;

const FILE_AUTHN: &str = r#"
kind: RequestAuthentication
metadata: { name: partners }
spec:
  issuer: https://partners.example
  audiences: [shop]
  jwks: { file: /etc/mesh/jwks/partners.json }
"#;

fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> T {
    serde_yaml_ng::from_str(text).expect("fixture parses")
}

/// Each model type's resource, so that `round_trip` needs no annotations.
trait Resource: Sized {
    /// Its wire form.
    type Wire: for<'a> From<&'a Self> + Message + Default + PartialEq + Debug;
}

impl Resource for Route {
    type Wire = pb::RouteResource;
}
impl Resource for Endpoint {
    type Wire = pb::EndpointResource;
}
impl Resource for AuthorizationPolicy {
    type Wire = pb::AuthorizationPolicyResource;
}
impl Resource for RequestAuthentication {
    type Wire = pb::RequestAuthenticationResource;
}

/// Model -> wire -> bytes -> wire -> model gives the original back, and
/// the model that came back goes out as the same resource.
fn round_trip<M>(model: &M) -> M::Wire
where
    M: Resource + TryFrom<M::Wire, Error = WireError> + PartialEq + Debug,
{
    type W<M> = <M as Resource>::Wire;
    let wire = W::<M>::from(model);
    let decoded = W::<M>::decode(wire.encode_to_vec().as_slice()).expect("decodes");
    assert!(decoded == wire, "bytes changed the resource: {decoded:?}");
    let back = M::try_from(decoded).expect("the receiver accepts it");
    assert_eq!(&back, model);
    assert!(
        W::<M>::from(&back) == wire,
        "wire -> model -> wire changed it"
    );
    wire
}

fn route_wire(text: &str) -> pb::RouteResource {
    let route: Route = yaml(text);
    pb::RouteResource::from(&route)
}

fn route_error(wire: pb::RouteResource) -> WireError {
    Route::try_from(wire).expect_err("refused")
}

#[test]
fn a_route_with_every_field_round_trips() {
    let route: Route = yaml(FULL_ROUTE);
    assert_eq!(route.validate(), Ok(()));
    let wire = round_trip(&route);
    // Typed on the wire: the parsed quantities, not their text.
    assert_eq!(
        wire.timeout,
        Some(Duration {
            seconds: 2,
            nanos: 500_000_000
        })
    );
    let retries = wire.retries.expect("retries");
    assert_eq!(
        retries.retry_on,
        [
            pb::GrpcCode::Unavailable as i32,
            pb::GrpcCode::ResourceExhausted as i32,
            pb::GrpcCode::DeadlineExceeded as i32
        ]
    );
    assert_eq!(retries.buffer_response_bytes, Some(64 * 1024));
    assert_eq!(wire.load_balancer, Some(pb::LoadBalancer::PeakEwma as i32));
    assert_eq!(wire.exposure, Some(pb::Exposure::Public as i32));
}

#[test]
fn a_minimal_route_round_trips_with_its_absences() {
    let route: Route = yaml(MINIMAL_ROUTE);
    assert_eq!(route.validate(), Ok(()));
    let wire = round_trip(&route);
    assert_eq!(wire.load_balancer, None);
    assert_eq!(wire.exposure, None);
    assert_eq!(wire.timeout, None);
    assert!(wire.retries.is_none() && wire.rate_limit.is_none() && wire.fault.is_none());
}

#[test]
fn model_defaults_and_explicit_defaults_stay_apart() {
    // A retry policy of defaults only, an empty fault, an explicit
    // default balancer and exposure: each comes back as written.
    let text = MINIMAL_ROUTE.to_owned()
        + "  retries: {}\n  outlierDetection: {}\n  fault: {}\n  loadBalancer: weighted-round-robin\n  exposure: internal\n";
    let route: Route = yaml(&text);
    assert_eq!(route.validate(), Ok(()));
    let wire = round_trip(&route);
    assert_eq!(
        wire.load_balancer,
        Some(pb::LoadBalancer::WeightedRoundRobin as i32)
    );
    assert_eq!(wire.fault, Some(pb::FaultInjection::default()));
}

#[test]
fn an_authorization_policy_with_every_caller_kind_round_trips() {
    let policy: AuthorizationPolicy = yaml(FULL_POLICY);
    assert_eq!(policy.validate(), Ok(()));
    let wire = round_trip(&policy);
    assert_eq!(wire.action, pb::AuthorizationAction::Deny as i32);
    assert_eq!(wire.mode, pb::AuthorizationMode::Audit as i32);
    assert_eq!(wire.rules[0].from.len(), 6);

    // The defaults (ALLOW, enforce) go out explicitly.
    let default: AuthorizationPolicy = yaml(
        "kind: AuthorizationPolicy\nmetadata: { name: a }\nspec: { service: a, rules: [{ from: [{ gateway: {} }] }] }\n",
    );
    let wire = round_trip(&default);
    assert_eq!(wire.action, pb::AuthorizationAction::Allow as i32);
    assert_eq!(wire.mode, pb::AuthorizationMode::Enforce as i32);
}

#[test]
fn request_authentications_round_trip_with_method_and_with_file() {
    for text in [METHOD_AUTHN, FILE_AUTHN] {
        let authn: RequestAuthentication = yaml(text);
        assert_eq!(authn.validate(), Ok(()), "{text}");
        round_trip(&authn);
    }
    let method = round_trip(&yaml::<RequestAuthentication>(METHOD_AUTHN));
    let jwks = method.jwks.expect("jwks");
    assert_eq!(
        jwks.refresh,
        Some(Duration {
            seconds: 30,
            nanos: 0
        })
    );
    let file = round_trip(&yaml::<RequestAuthentication>(FILE_AUTHN));
    assert_eq!(
        file.jwks.and_then(|j| j.source),
        Some(pb::jwks_source::Source::File(
            "/etc/mesh/jwks/partners.json".into()
        ))
    );
    assert_eq!(file.clock_skew, None);
}

fn endpoint(service: &str, instance: &str, version: &str, weight: u32) -> Endpoint {
    Endpoint {
        service: service.into(),
        instance: instance.into(),
        address: format!("10.0.0.1:{}", 7000 + weight),
        version: version.into(),
        weight,
    }
}

#[test]
fn endpoints_round_trip_alone_and_per_service() {
    let all = [
        endpoint("inventory", "inv-1", "v1", 3),
        endpoint("payments", "pay-1", "v1", 1),
        endpoint("inventory", "inv-2", "v2", 1),
    ];
    for e in &all {
        round_trip(e);
    }
    let group = service_endpoints("inventory", &all);
    assert_eq!(group.service, "inventory");
    assert_eq!(group.endpoints.len(), 2);
    let decoded = pb::ServiceEndpoints::decode(group.encode_to_vec().as_slice()).expect("decodes");
    let back = Vec::<Endpoint>::try_from(decoded).expect("accepted");
    assert_eq!(back, [all[0].clone(), all[2].clone()]);
    assert_eq!(service_endpoints("inventory", &back), group);

    // A service with no endpoints left is a valid, empty group.
    let empty = service_endpoints("orders", &all);
    assert_eq!(Vec::<Endpoint>::try_from(empty), Ok(vec![]));
}

#[test]
fn bad_endpoint_groups_name_the_endpoint() {
    let group = |endpoints: Vec<Endpoint>| pb::ServiceEndpoints {
        service: "inventory".into(),
        endpoints: endpoints.iter().map(pb::EndpointResource::from).collect(),
    };
    let cases = [
        (
            vec![
                endpoint("inventory", "a", "v1", 1),
                endpoint("payments", "b", "v1", 1),
            ],
            "endpoints[1].service",
        ),
        (
            vec![
                endpoint("inventory", "a", "v1", 1),
                endpoint("inventory", "a", "v2", 1),
            ],
            "endpoints[1].instance",
        ),
        (
            vec![endpoint("inventory", "a", "v1", 0)],
            "endpoints[0].weight",
        ),
    ];
    for (endpoints, field) in cases {
        let error = Vec::<Endpoint>::try_from(group(endpoints)).expect_err(field);
        assert_eq!(error.field(), field, "{error}");
    }
    let bad_service = pb::ServiceEndpoints {
        service: "Inventory".into(),
        endpoints: vec![],
    };
    let error = Vec::<Endpoint>::try_from(bad_service).expect_err("bad service");
    assert_eq!(error.field(), "service");
    let alone = pb::EndpointResource::from(&endpoint("inventory", "a", "v1", 20_000));
    let error = Endpoint::try_from(alone).expect_err("weight");
    assert_eq!(error.field(), "weight");
}

#[test]
fn wire_durations_come_back_as_the_same_nanoseconds() {
    let cases = [
        ((0, 1), "0.000001ms"),
        ((0, 1_500_000), "1.5ms"),
        ((0, 250_000_000), "250ms"),
        ((1, 500_000_000), "1500ms"),
        ((2, 0), "2s"),
        ((60, 0), "60s"),
        ((90, 0), "90s"),
        ((3_599, 999_999_999), "3599999.999999ms"),
        ((3_600, 0), "3600s"),
    ];
    for ((seconds, nanos), text) in cases {
        let wire = Duration { seconds, nanos };
        let canonical = duration_from_wire(wire, "spec.timeout").expect("in range");
        assert_eq!(canonical, text);
        // The model's own parser reads it back to the nanosecond...
        let parsed = parse_duration(&canonical).expect("the model accepts it");
        assert_eq!(Duration::try_from(parsed), Ok(wire), "{text}");
        // ... and as a route's timeout it survives wire -> model -> wire.
        let mut route = route_wire(MINIMAL_ROUTE);
        route.timeout = Some(wire);
        let back = Route::try_from(route.clone()).expect("accepted");
        assert_eq!(back.spec.timeout.as_deref(), Some(text));
        assert_eq!(pb::RouteResource::from(&back), route);
    }
}

#[test]
fn non_canonical_documents_come_back_canonical_and_equal_in_meaning() {
    let text = MINIMAL_ROUTE.to_owned()
        + "  timeout: 1.5s\n  retries:\n    perTryTimeout: \" 1m \"\n    retryOn: [UNAVAILABLE, resource_exhausted]\n    backoff: { base: 0.025s, max: 0.5s }\n    bufferResponse: \"1024KiB\"\n  fault:\n    abort: { percent: 1, code: Internal }\n";
    let route: Route = yaml(&text);
    assert_eq!(route.validate(), Ok(()));
    let back = Route::try_from(pb::RouteResource::from(&route)).expect("accepted");
    let spec = &back.spec;
    assert_eq!(spec.timeout.as_deref(), Some("1500ms"));
    let retries = spec.retries.as_ref().expect("retries");
    assert_eq!(retries.per_try_timeout.as_deref(), Some("60s"));
    assert_eq!(retries.retry_on, ["unavailable", "resource-exhausted"]);
    assert_eq!(retries.backoff.base, "25ms");
    assert_eq!(retries.backoff.max, "500ms");
    assert_eq!(retries.buffer_response.as_deref(), Some("1MiB"));
    let abort = spec.fault.as_ref().and_then(|f| f.abort.as_ref());
    assert_eq!(abort.map(|a| a.code.as_str()), Some("internal"));
    // Same meaning: the proxy compiles the same policy from either.
    let original = route.spec.retries.as_ref().expect("retries");
    for (a, b) in [
        (route.spec.timeout.as_deref(), spec.timeout.as_deref()),
        (
            original.per_try_timeout.as_deref(),
            retries.per_try_timeout.as_deref(),
        ),
    ] {
        let parse = |t: Option<&str>| parse_duration(t.expect("set"));
        assert_eq!(parse(a), parse(b));
    }
    assert_eq!(
        original.buffer_response.as_deref().map(parse_byte_size),
        retries.buffer_response.as_deref().map(parse_byte_size)
    );
}

#[test]
fn byte_sizes_take_the_largest_exact_unit() {
    for (bytes, text) in [
        (1, "1"),
        (1_000, "1000"),
        (1_024, "1KiB"),
        (65_536, "64KiB"),
        (1_536 * 1_024, "1536KiB"),
        (16 << 20, "16MiB"),
        (0, "0"),
        (u64::MAX, "18446744073709551615"),
    ] {
        assert_eq!(byte_size_text(bytes), text);
        assert_eq!(parse_byte_size(text), Ok(bytes), "{text}");
    }
}

#[test]
fn the_code_enum_is_the_models_code_list() {
    assert_eq!(
        pb::GrpcCode::try_from(0),
        Ok(pb::GrpcCode::Unspecified),
        "0 (OK) is never a failure code"
    );
    assert!(pb::GrpcCode::try_from(17).is_err());
    for (name, code) in GRPC_CODES {
        let wire = pb::GrpcCode::try_from(code).expect("every model code is on the wire");
        let expected = format!("GRPC_CODE_{}", name.to_ascii_uppercase().replace('-', "_"));
        assert_eq!(wire.as_str_name(), expected);
        assert_eq!(code_to_wire(name), code);
        assert_eq!(code_from_wire(code, "f").as_deref(), Ok(name));
    }
    for (name, _) in LoadBalancer::NAMES {
        let wire = load_balancer_to_wire(name);
        assert_eq!(load_balancer_from_wire(wire, "f").as_deref(), Ok(name));
    }
    for (name, _) in Exposure::NAMES {
        let wire = exposure_to_wire(name);
        assert_eq!(exposure_from_wire(wire, "f").as_deref(), Ok(name));
    }
}

#[test]
fn unknown_and_unspecified_enums_are_refused_by_field() {
    let full = route_wire(FULL_ROUTE);

    let mut wire = full.clone();
    wire.load_balancer = Some(99);
    let error = route_error(wire);
    assert_eq!(error.field(), "spec.loadBalancer");
    assert!(
        matches!(error, WireError::UnknownEnum { value: 99, .. }),
        "{error}"
    );

    let mut wire = full.clone();
    wire.exposure = Some(pb::Exposure::Unspecified as i32);
    let error = route_error(wire);
    assert!(matches!(error, WireError::Unspecified { .. }), "{error}");
    assert_eq!(error.field(), "spec.exposure");

    let mut wire = full.clone();
    if let Some(retries) = wire.retries.as_mut() {
        retries.retry_on.push(42);
    }
    let error = route_error(wire);
    assert_eq!(error.field(), "spec.retries.retryOn[3]");
    assert_eq!(
        error.to_string(),
        "spec.retries.retryOn[3]: 42 is not a known mesh.v1.GrpcCode value"
    );

    let mut wire = full.clone();
    if let Some(outlier) = wire.outlier_detection.as_mut() {
        outlier.failure_codes[0] = i32::MIN;
    }
    assert_eq!(
        route_error(wire).field(),
        "spec.outlierDetection.failureCodes[0]"
    );

    let mut wire = full;
    if let Some(abort) = wire.fault.as_mut().and_then(|f| f.abort.as_mut()) {
        abort.code = 0;
    }
    let error = route_error(wire);
    assert_eq!(error.field(), "spec.fault.abort.code");
    assert!(matches!(error, WireError::Unspecified { .. }), "{error}");

    let policy = pb::AuthorizationPolicyResource::from(&yaml::<AuthorizationPolicy>(FULL_POLICY));
    for (action, mode, field) in [
        (7, pb::AuthorizationMode::Enforce as i32, "spec.action"),
        (0, pb::AuthorizationMode::Enforce as i32, "spec.action"),
        (pb::AuthorizationAction::Deny as i32, 0, "spec.mode"),
        (pb::AuthorizationAction::Deny as i32, -1, "spec.mode"),
    ] {
        let wire = pb::AuthorizationPolicyResource {
            action,
            mode,
            ..policy.clone()
        };
        let error = AuthorizationPolicy::try_from(wire).expect_err(field);
        assert_eq!(error.field(), field, "{error}");
    }
}

#[test]
fn bad_durations_are_refused_by_field() {
    let full = route_wire(FULL_ROUTE);
    let with_timeout = |seconds, nanos| pb::RouteResource {
        timeout: Some(Duration { seconds, nanos }),
        ..full.clone()
    };

    let error = route_error(with_timeout(-1, 0));
    assert!(
        matches!(error, WireError::NegativeDuration { .. }),
        "{error}"
    );
    assert_eq!(error.field(), "spec.timeout");
    assert_eq!(
        error.to_string(),
        "spec.timeout: duration -1s 0ns is negative"
    );
    for (seconds, nanos) in [(0, -1), (i64::MIN, i32::MIN)] {
        let error = route_error(with_timeout(seconds, nanos));
        assert!(
            matches!(error, WireError::NegativeDuration { .. }),
            "{error}"
        );
    }
    for (seconds, nanos) in [(0, 1_000_000_000), (i64::MAX, 0), (0, i32::MAX)] {
        let error = route_error(with_timeout(seconds, nanos));
        assert!(
            matches!(error, WireError::DurationOutOfRange { .. }),
            "{error}"
        );
        assert_eq!(error.field(), "spec.timeout");
    }
    // In protobuf's range but not the model's: the model says why.
    for (seconds, nanos, reason) in [(0, 0, "more than zero"), (7_200, 0, "more than an hour")] {
        match route_error(with_timeout(seconds, nanos)) {
            WireError::Invalid(e) => {
                assert_eq!(e.field, "spec.timeout");
                assert!(e.reason.contains(reason), "{e}");
            }
            other => panic!("expected a validation error, got {other}"),
        }
    }

    let mut wire = full.clone();
    if let Some(retries) = wire.retries.as_mut() {
        retries.per_try_timeout = Some(Duration {
            seconds: -5,
            nanos: 0,
        });
    }
    assert_eq!(route_error(wire).field(), "spec.retries.perTryTimeout");

    let mut wire = full;
    if let Some(delay) = wire.fault.as_mut().and_then(|f| f.delay.as_mut()) {
        delay.duration = Some(Duration {
            seconds: 0,
            nanos: -100,
        });
    }
    assert_eq!(route_error(wire).field(), "spec.fault.delay.duration");

    let authn =
        pb::RequestAuthenticationResource::from(&yaml::<RequestAuthentication>(METHOD_AUTHN));
    let wire = pb::RequestAuthenticationResource {
        clock_skew: Some(Duration {
            seconds: -30,
            nanos: 0,
        }),
        ..authn.clone()
    };
    let error = RequestAuthentication::try_from(wire).expect_err("negative skew");
    assert_eq!(error.field(), "spec.clockSkew");
    let mut wire = authn;
    if let Some(jwks) = wire.jwks.as_mut() {
        jwks.refresh = Some(Duration {
            seconds: 0,
            nanos: 10_000_000,
        });
    }
    let error = RequestAuthentication::try_from(wire).expect_err("10ms refresh");
    assert_eq!(error.field(), "spec.jwks.refresh");
    assert!(error.to_string().contains("at least 1s"), "{error}");
}

#[test]
fn missing_required_messages_are_refused_by_field() {
    let full = route_wire(FULL_ROUTE);
    /// Takes one required part out of a full resource.
    type Cut = fn(&mut pb::RouteResource);
    let cases: [(Cut, &str); 6] = [
        (|w| w.r#match = None, "spec.match"),
        (
            |w| {
                if let Some(r) = w.retries.as_mut() {
                    r.backoff = None;
                }
            },
            "spec.retries.backoff",
        ),
        (
            |w| {
                if let Some(b) = w.retries.as_mut().and_then(|r| r.backoff.as_mut()) {
                    b.max = None;
                }
            },
            "spec.retries.backoff.max",
        ),
        (
            |w| {
                if let Some(r) = w.retries.as_mut() {
                    r.budget = None;
                }
            },
            "spec.retries.budget",
        ),
        (
            |w| {
                if let Some(o) = w.outlier_detection.as_mut() {
                    o.base_ejection = None;
                }
            },
            "spec.outlierDetection.baseEjection",
        ),
        (
            |w| {
                if let Some(d) = w.fault.as_mut().and_then(|f| f.delay.as_mut()) {
                    d.duration = None;
                }
            },
            "spec.fault.delay.duration",
        ),
    ];
    for (cut, field) in cases {
        let mut wire = full.clone();
        cut(&mut wire);
        let error = route_error(wire);
        assert!(matches!(error, WireError::Missing { .. }), "{error}");
        assert_eq!(error.field(), field);
    }

    let authn = pb::RequestAuthenticationResource {
        jwks: None,
        ..pb::RequestAuthenticationResource::from(&yaml::<RequestAuthentication>(FILE_AUTHN))
    };
    let error = RequestAuthentication::try_from(authn).expect_err("no jwks");
    assert_eq!(
        error,
        WireError::Missing {
            field: "spec.jwks".into()
        }
    );
}

#[test]
fn resources_the_model_refuses_are_refused_with_its_field_and_reason() {
    let full = route_wire(FULL_ROUTE);
    let error = route_error(pb::RouteResource {
        destination: String::new(),
        ..full.clone()
    });
    assert!(matches!(error, WireError::Invalid(_)), "{error}");
    assert_eq!(error.field(), "spec.destination");
    assert!(
        error.to_string().starts_with("spec.destination: "),
        "{error}"
    );

    // Empty oneofs arrive as "none set", which the model refuses.
    let mut wire = full.clone();
    wire.rules[0].headers[1].value = None;
    assert_eq!(route_error(wire).field(), "spec.rules[0].headers[1].exact");
    let mut wire = full.clone();
    if let Some(limit) = wire.rate_limit.as_mut() {
        limit.overrides[1].caller = None;
    }
    assert_eq!(
        route_error(wire).field(),
        "spec.rateLimit.overrides[1].service"
    );
    // Out-of-range numbers and NaN are the model's to refuse.
    let mut wire = full.clone();
    if let Some(retries) = wire.retries.as_mut() {
        retries.budget = Some(pb::RetryBudget {
            ratio: f64::NAN,
            min_per_second: 1,
        });
    }
    assert_eq!(route_error(wire).field(), "spec.retries.budget.ratio");
    let mut wire = full.clone();
    if let Some(retries) = wire.retries.as_mut() {
        retries.buffer_response_bytes = Some(u64::MAX);
    }
    assert_eq!(route_error(wire).field(), "spec.retries.bufferResponse");
    let mut wire = full.clone();
    if let Some(abort) = wire.fault.as_mut().and_then(|f| f.abort.as_mut()) {
        abort.percent = f64::INFINITY;
    }
    assert_eq!(route_error(wire).field(), "spec.fault.abort.percent");
    assert_eq!(
        route_error(pb::RouteResource {
            name: "Payments".into(),
            ..full
        })
        .field(),
        "metadata.name"
    );

    let policy = pb::AuthorizationPolicyResource::from(&yaml::<AuthorizationPolicy>(FULL_POLICY));
    let mut wire = policy.clone();
    wire.rules[0].from[2].caller = Some(pb::caller_match::Caller::Identity("mesh.local/x".into()));
    let error = AuthorizationPolicy::try_from(wire).expect_err("bad identity");
    assert_eq!(error.field(), "spec.rules[0].from[2].identity");
    let mut wire = policy.clone();
    wire.rules[0].from[0].caller = None;
    let error = AuthorizationPolicy::try_from(wire).expect_err("no caller");
    assert!(
        error.field().starts_with("spec.rules[0].from[0]"),
        "{error}"
    );
    let wire = pb::AuthorizationPolicyResource {
        rules: vec![],
        ..policy
    };
    let error = AuthorizationPolicy::try_from(wire).expect_err("no rules");
    assert_eq!(error.field(), "spec.rules");

    let mut wire =
        pb::RequestAuthenticationResource::from(&yaml::<RequestAuthentication>(FILE_AUTHN));
    if let Some(jwks) = wire.jwks.as_mut() {
        jwks.source = None;
    }
    let error = RequestAuthentication::try_from(wire).expect_err("no source");
    assert_eq!(error.field(), "spec.jwks.method");
}

#[test]
fn an_unvalidated_document_goes_out_as_something_the_receiver_refuses() {
    // Never in the control plane (it sends validated documents only), but
    // if it did, nothing would quietly become a default.
    let cases = [
        ("  timeout: soon\n", "spec.timeout"),
        ("  loadBalancer: random\n", "spec.loadBalancer"),
        ("  exposure: everyone\n", "spec.exposure"),
        (
            "  retries: { retryOn: [unavailable, nope] }\n",
            "spec.retries.retryOn[1]",
        ),
        (
            "  retries: { bufferResponse: lots }\n",
            "spec.retries.bufferResponse",
        ),
        (
            "  retries: { backoff: { base: 1h1s, max: 2s } }\n",
            "spec.retries.backoff.base",
        ),
        (
            "  fault: { abort: { percent: 1, code: ok } }\n",
            "spec.fault.abort.code",
        ),
        (
            "  rules: [{ headers: [{ name: x-a, exact: a, regex: b }] }]\n",
            "spec.rules[0].headers[0].exact",
        ),
    ];
    for (extra, field) in cases {
        let route: Route = yaml(&(MINIMAL_ROUTE.to_owned() + extra));
        let model_says = route.validate().expect_err(extra);
        let error = route_error(pb::RouteResource::from(&route));
        assert_eq!(error.field(), field, "{extra}: {error}");
        assert_eq!(model_says.field, field, "{extra}");
    }
}

/// Every `.yaml` under `dir`, sorted.
fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    out.sort();
}

#[test]
fn the_shipped_kubernetes_documents_round_trip() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s");
    let mut files = Vec::new();
    yaml_files(&root, &mut files);
    let (mut routes, mut policies, mut authns) = (0, 0, 0);
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable");
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = serde_yaml_ng::Value::deserialize(document).expect("YAML");
            let kind = value
                .get("kind")
                .and_then(|k| k.as_str())
                .map(str::to_owned);
            let at = file.display();
            match kind.as_deref() {
                Some("Route") => {
                    let route: Route = serde_yaml_ng::from_value(value).expect("a route");
                    assert_eq!(route.validate(), Ok(()), "{at}");
                    round_trip(&route);
                    routes += 1;
                }
                Some("AuthorizationPolicy") => {
                    let policy: AuthorizationPolicy =
                        serde_yaml_ng::from_value(value).expect("a policy");
                    assert_eq!(policy.validate(), Ok(()), "{at}");
                    round_trip(&policy);
                    policies += 1;
                }
                Some("RequestAuthentication") => {
                    let authn: RequestAuthentication =
                        serde_yaml_ng::from_value(value).expect("a request authentication");
                    assert_eq!(authn.validate(), Ok(()), "{at}");
                    round_trip(&authn);
                    authns += 1;
                }
                _ => {}
            }
        }
    }
    // As many as k8s/ holds today (grep 'kind: Route' k8s): a reorganized
    // tree that this walk no longer finds fails here, not silently.
    assert!(routes >= 6, "found {routes} routes in {}", root.display());
    assert!(policies >= 5, "found {policies} authorization policies");
    assert!(authns >= 1, "found {authns} request authentications");
}

#[test]
fn the_route_policies_of_the_end_to_end_tests_round_trip() {
    // The resilience and security tests' policies (tests/resilience.rs,
    // tests/security.rs), spliced into their payments route as there.
    let head = "kind: Route\nmetadata:\n  name: payments\nspec:\n  match:\n    service: shop.payments.v1.PaymentsService\n  destination: payments\n  exposure: public\n";
    let policies = [
        "  retries:\n    attempts: 3\n    retryOn: [unavailable]\n    budget: { ratio: 0.5, minPerSecond: 20 }\n  outlierDetection:\n    consecutiveFailures: 2\n    baseEjection: 30s\n",
        "  retries:\n    attempts: 5\n    retryOn: [unavailable]\n    backoff: { base: 1ms, max: 2ms }\n    budget: { ratio: 0.2, minPerSecond: 1 }\n",
        "  timeout: 200ms\n",
        "  timeout: 5s\n",
        "  timeout: 3s\n",
        "  concurrency: { maxRequests: 2 }\n",
        "  fault:\n    abort: { percent: 50, code: resource-exhausted }\n",
        "  fault:\n    abort: { percent: 0, code: resource-exhausted }\n",
    ];
    for policy in policies {
        let route: Route = yaml(&(head.to_owned() + policy));
        assert_eq!(route.validate(), Ok(()), "{policy}");
        round_trip(&route);
    }
}

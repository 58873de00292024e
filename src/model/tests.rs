use std::path::Path;

use super::*;

const GOOD: &str = r#"
endpoints:
  - { service: inventory, instance: inv-1, address: "127.0.0.1:7101", version: v1, weight: 3 }
  - { service: inventory, instance: inv-2, address: "127.0.0.1:7102", version: v2 }
routes:
  - kind: Route
    metadata: { name: inventory }
    spec:
      match: { service: shop.inventory.v1.InventoryService }
      destination: inventory
      rules:
        - headers: [{ name: x-canary, regex: "true|yes" }]
          split: [{ subset: v2, weight: 1 }]
      split:
        - { subset: v1, weight: 90 }
        - { subset: v2, weight: 10 }
"#;

fn parse(text: &str) -> Result<Bootstrap, BootstrapError> {
    Bootstrap::parse(text, Path::new("test.yaml"))
}

fn invalid_field(text: &str) -> String {
    match parse(text) {
        Err(BootstrapError::Invalid { field, .. }) => field,
        other => panic!("expected a validation error, got {other:?}"),
    }
}

#[test]
fn good_bootstrap_parses_with_defaults() {
    let b = parse(GOOD).unwrap();
    assert_eq!(b.endpoints[1].weight, 1);
    assert_eq!(b.routes[0].path(), "/shop.inventory.v1.InventoryService/");
}

#[test]
fn unknown_field_is_a_syntax_error_naming_it() {
    let err = parse(&GOOD.replace("destination:", "destinaton:")).unwrap_err();
    assert!(matches!(err, BootstrapError::Syntax { .. }));
    assert!(err.to_string().contains("destinaton"), "{err}");
}

#[test]
fn weights_summing_to_zero_are_refused() {
    let text = GOOD
        .replace("{ subset: v1, weight: 90 }", "{ subset: v1, weight: 0 }")
        .replace("{ subset: v2, weight: 10 }", "{ subset: v2, weight: 0 }");
    assert_eq!(invalid_field(&text), "routes[0].spec.split[*].weight");
}

#[test]
fn bad_header_regex_is_refused() {
    let text = GOOD.replace("true|yes", "(unclosed");
    assert_eq!(
        invalid_field(&text),
        "routes[0].spec.rules[0].headers[0].regex"
    );
}

#[test]
fn header_match_needs_exactly_one_of_exact_or_regex() {
    let text = GOOD.replace("regex: \"true|yes\"", "regex: a, exact: b");
    assert_eq!(
        invalid_field(&text),
        "routes[0].spec.rules[0].headers[0].exact"
    );
}

#[test]
fn bad_names_and_weights_are_refused() {
    assert_eq!(
        invalid_field(&GOOD.replace("name: inventory }", "name: Inventory }")),
        "routes[0].metadata.name"
    );
    assert_eq!(
        invalid_field(&GOOD.replace("shop.inventory.v1.InventoryService", "shop..Inv")),
        "routes[0].spec.match.service"
    );
    assert_eq!(
        invalid_field(&GOOD.replace("weight: 3 }", "weight: 0 }")),
        "endpoints[0].weight"
    );
    assert_eq!(
        invalid_field(&GOOD.replace("127.0.0.1:7101", "localhost")),
        "endpoints[0].address"
    );
    assert_eq!(
        invalid_field(&GOOD.replace("subset: v2, weight: 10", "subset: v1, weight: 10")),
        "routes[0].spec.split[1].subset"
    );
}

#[test]
fn duplicate_instances_and_paths_are_refused() {
    assert_eq!(
        invalid_field(&GOOD.replace("inv-2", "inv-1")),
        "endpoints[1].instance"
    );
    let twice = format!(
        "{GOOD}  - kind: Route\n    metadata: {{ name: other }}\n    spec:\n      match: {{ service: shop.inventory.v1.InventoryService }}\n      destination: inventory\n"
    );
    assert_eq!(invalid_field(&twice), "routes[1].spec.match");
}

#[test]
fn buffer_response_parses_sizes_and_bad_ones_name_their_field() {
    assert_eq!(parse_byte_size("64KiB"), Ok(64 << 10));
    assert_eq!(parse_byte_size("1MiB"), Ok(1 << 20));
    assert_eq!(parse_byte_size("4096"), Ok(4096));
    for bad in ["", "64kb", "-1KiB", "1.5MiB", "KiB"] {
        assert!(parse_byte_size(bad).is_err(), "{bad}");
    }
    let with = |size: &str| {
        GOOD.replace(
            "destination: inventory",
            &format!("destination: inventory\n      retries: {{ bufferResponse: \"{size}\" }}"),
        )
    };
    let route = &parse(&with("64KiB")).unwrap().routes[0];
    let retries = route.spec.retries.as_ref().unwrap();
    assert_eq!(retries.buffer_response.as_deref(), Some("64KiB"));
    for bad in ["lots", "0", "17MiB"] {
        assert_eq!(
            invalid_field(&with(bad)),
            "routes[0].spec.retries.bufferResponse",
            "{bad}"
        );
    }
}

#[test]
fn header_regex_is_anchored() {
    let re = route::compile_header_regex("v2").unwrap();
    assert!(re.is_match("v2"));
    assert!(!re.is_match("v20"));
}

#[test]
fn timeouts_parse_and_bad_ones_are_refused() {
    assert_eq!(
        parse_duration("250ms").unwrap(),
        std::time::Duration::from_millis(250)
    );
    assert_eq!(
        parse_duration("1.5s").unwrap(),
        std::time::Duration::from_millis(1500)
    );
    for bad in ["-1s", "0s", "10", "abc", "2h", "90m"] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
    let text = GOOD.replace(
        "destination: inventory",
        "destination: inventory\n      timeout: -200ms",
    );
    assert_eq!(invalid_field(&text), "routes[0].spec.timeout");
}

#[test]
fn load_balancer_defaults_to_round_robin_and_a_typo_names_its_field() {
    use super::LoadBalancer;
    let b = parse(GOOD).unwrap();
    assert_eq!(
        b.routes[0].spec.load_balancer(),
        LoadBalancer::WeightedRoundRobin
    );
    for (name, want) in LoadBalancer::NAMES {
        let text = GOOD.replace(
            "destination: inventory",
            &format!("destination: inventory\n      loadBalancer: {name}"),
        );
        assert_eq!(parse(&text).unwrap().routes[0].spec.load_balancer(), want);
        assert_eq!(want.name(), name);
    }
    let text = GOOD.replace(
        "destination: inventory",
        "destination: inventory\n      loadBalancer: fastest",
    );
    assert_eq!(invalid_field(&text), "routes[0].spec.loadBalancer");
}

#[test]
fn exposure_defaults_to_internal_and_external_headers_need_public() {
    let base =
        "kind: Route\nmetadata: { name: r }\nspec:\n  match: { service: a.B }\n  destination: b\n";
    let route: Route = serde_yaml_ng::from_str(base).expect("route");
    assert_eq!(route.spec.exposure(), Exposure::Internal);
    let public: Route = serde_yaml_ng::from_str(&format!(
        "{base}  exposure: public\n  externalHeaders: [x-canary]\n"
    ))
    .expect("route");
    assert_eq!(public.validate(), Ok(()));
    assert_eq!(public.spec.exposure(), Exposure::Public);
    let cases = [
        ("  exposure: open\n", "spec.exposure"),
        ("  externalHeaders: [x-canary]\n", "spec.externalHeaders"),
        (
            "  exposure: public\n  externalHeaders: [X-Canary]\n",
            "spec.externalHeaders[0]",
        ),
        (
            "  exposure: public\n  externalHeaders: [x-mesh-auth-sub]\n",
            "spec.externalHeaders[0]",
        ),
        (
            "  rateLimit: { total: { requestsPerSecond: 0 } }\n",
            "spec.rateLimit.total.requestsPerSecond",
        ),
    ];
    for (extra, field) in cases {
        let route: Route = serde_yaml_ng::from_str(&format!("{base}{extra}")).expect(extra);
        let error = route.validate().expect_err(extra);
        assert_eq!(error.field, field, "{extra}: {error}");
    }
}

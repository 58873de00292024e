use super::*;

fn policy(yaml: &str) -> AuthorizationPolicy {
    let policy: AuthorizationPolicy = serde_yaml_ng::from_str(yaml).expect("policy yaml");
    policy.validate().expect("a valid policy");
    policy
}

fn svc(name: &str) -> SpiffeId {
    SpiffeId::service("mesh.local", name).unwrap()
}

fn gateway() -> SpiffeId {
    SpiffeId::new("mesh.local", Workload::Gateway("gateway".into())).unwrap()
}

const CHARGE: &str = "shop.payments.v1.PaymentsService/Charge";
const REFUND: &str = "shop.payments.v1.PaymentsService/Refund";
const LIST: &str = "shop.payments.v1.PaymentsService/ListPayments";

fn payments_policies() -> Vec<AuthorizationPolicy> {
    vec![
        policy(
            "kind: AuthorizationPolicy
metadata: {name: payments-from-orders}
spec:
  service: payments
  rules:
    - from: [{service: orders}]
      to: [shop.payments.v1.PaymentsService/Charge, shop.payments.v1.PaymentsService/Refund]
    - from: [{gateway: {claims: {role: admin}}}]
      to: ['shop.payments.v1.PaymentsService/*']",
        ),
        policy(
            "kind: AuthorizationPolicy
metadata: {name: no-refunds-from-batch}
spec:
  service: payments
  action: DENY
  rules:
    - from: [{identity: 'spiffe://mesh.local/svc/batch*'}]
      to: ['*/Refund']",
        ),
    ]
}

#[test]
fn a_table_of_calls_gets_the_answers_the_policies_say() {
    let policies = payments_policies();
    let admin: BTreeMap<String, String> = [("role".to_owned(), "admin".to_owned())].into();
    let customer: BTreeMap<String, String> = [("role".to_owned(), "customer".to_owned())].into();
    let (orders, catalog, batch, gw) = (svc("orders"), svc("catalog"), svc("batch-7"), gateway());
    let cases: Vec<(&str, Caller<'_>, &str, bool, Option<&str>)> = vec![
        (
            "orders charges",
            Caller {
                identity: Some(&orders),
                claims: None,
                permissive: false,
            },
            CHARGE,
            true,
            Some("payments-from-orders"),
        ),
        (
            "orders refunds",
            Caller {
                identity: Some(&orders),
                claims: None,
                permissive: false,
            },
            REFUND,
            true,
            Some("payments-from-orders"),
        ),
        (
            "orders may not list",
            Caller {
                identity: Some(&orders),
                claims: None,
                permissive: false,
            },
            LIST,
            false,
            Some("payments-from-orders"),
        ),
        (
            "catalog may not charge",
            Caller {
                identity: Some(&catalog),
                claims: None,
                permissive: false,
            },
            CHARGE,
            false,
            Some("payments-from-orders"),
        ),
        (
            "plaintext may not charge",
            Caller {
                identity: None,
                claims: None,
                permissive: false,
            },
            CHARGE,
            false,
            Some("payments-from-orders"),
        ),
        (
            "an admin through the gateway lists",
            Caller {
                identity: Some(&gw),
                claims: Some(&admin),
                permissive: false,
            },
            LIST,
            true,
            Some("payments-from-orders"),
        ),
        (
            "a customer through the gateway may not",
            Caller {
                identity: Some(&gw),
                claims: Some(&customer),
                permissive: false,
            },
            LIST,
            false,
            Some("payments-from-orders"),
        ),
        (
            "claims from a non-gateway do not count",
            Caller {
                identity: Some(&catalog),
                claims: Some(&admin),
                permissive: false,
            },
            LIST,
            false,
            Some("payments-from-orders"),
        ),
        (
            "DENY wins over ALLOW",
            Caller {
                identity: Some(&batch),
                claims: None,
                permissive: false,
            },
            REFUND,
            false,
            Some("no-refunds-from-batch"),
        ),
    ];
    for (name, caller, method, allowed, by) in cases {
        let decision = authorize(
            &policies,
            DefaultAuthorization::AllAuthenticated,
            "payments",
            method,
            &caller,
        );
        assert_eq!(decision.allowed, allowed, "{name}: {decision:?}");
        assert_eq!(decision.policy.as_deref(), by, "{name}: {decision:?}");
    }
}

#[test]
fn without_allow_policies_the_mesh_default_decides() {
    let policies = payments_policies();
    let orders = svc("orders");
    let anyone = Caller {
        identity: Some(&orders),
        claims: None,
        permissive: false,
    };
    let nobody = Caller {
        identity: None,
        claims: None,
        permissive: false,
    };
    let method = "shop.catalog.v1.CatalogService/ListProducts";
    let all = DefaultAuthorization::AllAuthenticated;
    assert!(authorize(&policies, all, "catalog", method, &anyone).allowed);
    assert!(!authorize(&policies, all, "catalog", method, &nobody).allowed);
    let deny = authorize(
        &policies,
        DefaultAuthorization::Deny,
        "catalog",
        method,
        &anyone,
    );
    assert!(!deny.allowed);
    assert_eq!(deny.policy, None);
}

#[test]
fn audit_mode_allows_and_says_what_it_would_have_refused() {
    let mut policies = payments_policies();
    for p in &mut policies {
        p.spec.mode = AuthorizationMode::Audit;
    }
    let catalog = svc("catalog");
    let caller = Caller {
        identity: Some(&catalog),
        claims: None,
        permissive: false,
    };
    let decision = authorize(
        &policies,
        DefaultAuthorization::AllAuthenticated,
        "payments",
        CHARGE,
        &caller,
    );
    assert!(decision.allowed);
    assert_eq!(
        decision.audit_denied_by.as_deref(),
        Some("payments-from-orders")
    );
    assert_eq!(decision.label(), "audit-deny");
    let batch = svc("batch-1");
    let caller = Caller {
        identity: Some(&batch),
        claims: None,
        permissive: false,
    };
    let decision = authorize(
        &policies,
        DefaultAuthorization::AllAuthenticated,
        "payments",
        REFUND,
        &caller,
    );
    assert!(decision.allowed);
    assert_eq!(
        decision.audit_denied_by.as_deref(),
        Some("no-refunds-from-batch")
    );
}

#[test]
fn invalid_policies_are_refused_with_the_field() {
    let cases = [
        ("kind: AuthorizationPolicy\nmetadata: {name: A}\nspec: {service: p, rules: [{}]}", "metadata.name"),
        ("kind: AuthorizationPolicy\nmetadata: {name: a}\nspec: {service: p, rules: []}", "spec.rules"),
        ("kind: AuthorizationPolicy\nmetadata: {name: a}\nspec: {service: p, rules: [{from: [{service: a, identity: 'spiffe://x/svc/a'}]}]}", "spec.rules[0].from[0]"),
        ("kind: AuthorizationPolicy\nmetadata: {name: a}\nspec: {service: p, rules: [{from: [{identity: 'http://x'}]}]}", "spec.rules[0].from[0].identity"),
        ("kind: AuthorizationPolicy\nmetadata: {name: a}\nspec: {service: p, rules: [{to: ['Charge']}]}", "spec.rules[0].to[0]"),
        ("kind: Route\nmetadata: {name: a}\nspec: {service: p, rules: [{}]}", "kind"),
    ];
    for (yaml, field) in cases {
        let policy: AuthorizationPolicy = serde_yaml_ng::from_str(yaml).expect(yaml);
        let error = policy.validate().expect_err(yaml);
        assert!(error.field.starts_with(field), "{yaml}: {error}");
    }
    let unknown: Result<AuthorizationPolicy, _> = serde_yaml_ng::from_str(
        "kind: AuthorizationPolicy\nmetadata: {name: a}\nspec: {service: p, action: ALOW, rules: [{}]}",
    );
    assert!(unknown.is_err());
}

#[test]
fn globs_match_runs_of_characters() {
    assert!(glob("*", "a.B/C"));
    assert!(glob("a.B/*", "a.B/C"));
    assert!(glob("*/Refund", "shop.payments.v1.PaymentsService/Refund"));
    assert!(glob("a*c*e", "abcde"));
    assert!(!glob("a.B/*", "a.C/D"));
    assert!(!glob("a.B/C", "a.B/CD"));
}

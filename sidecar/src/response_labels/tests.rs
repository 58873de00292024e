use std::time::Duration;

use http::Uri;
use prost_types::{FileDescriptorProto, MethodDescriptorProto, ServiceDescriptorProto};

use super::*;
use crate::metrics::{GrpcPath, Metrics, StateSnapshot};

/// A table: `bench.v1.EchoService` as a whole to `echo`, its `Echo` method
/// alone to `echo-unary`, and `shop.v1.Unregistered` (no descriptors) to
/// `unregistered`.
fn source() -> Bootstrap {
    let route = |name: &str, service: &str, method: Option<&str>| {
        serde_json::json!({
            "kind": "Route",
            "metadata": { "name": name },
            "spec": {
                "match": { "service": service, "method": method },
                "destination": "echo",
            }
        })
    };
    serde_json::from_value(serde_json::json!({
        "routes": [
            route("echo", "bench.v1.EchoService", None),
            route("echo-unary", "bench.v1.EchoService", Some("Echo")),
            route("unregistered", "shop.v1.Unregistered", None),
        ],
    }))
    .expect("a table")
}

/// The echo service's descriptors, as a registry pushes them.
fn descriptors() -> Vec<u8> {
    let method = |name: &str| MethodDescriptorProto {
        name: Some(name.into()),
        ..Default::default()
    };
    FileDescriptorSet {
        file: vec![FileDescriptorProto {
            name: Some("bench/v1/echo.proto".into()),
            package: Some("bench.v1".into()),
            service: vec![ServiceDescriptorProto {
                name: Some("EchoService".into()),
                method: vec![method("Echo"), method("EchoStream")],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

fn path(text: &str) -> GrpcPath {
    GrpcPath::of(&text.parse::<Uri>().unwrap_or_default())
}

#[test]
fn methods_come_from_descriptors() {
    let methods = methods_of([descriptors().as_slice(), b"not a descriptor set".as_slice()]);
    let mut methods: Vec<_> = methods.into_iter().collect();
    methods.sort();
    assert_eq!(
        methods,
        [
            "bench.v1.EchoService/Echo",
            "bench.v1.EchoService/EchoStream"
        ]
    );
}

#[test]
fn routes_and_methods_label_as_the_table_routes() {
    let index = LabelIndex::routed(
        &source(),
        &methods_of([descriptors().as_slice()]),
        &LabelIndex::default(),
    );
    let label = |p: &str| {
        let l = index.label(p);
        (l.route.to_string(), l.method.to_string())
    };
    let pair = |r: &str, m: &str| (r.to_owned(), m.to_owned());
    assert_eq!(
        label("/bench.v1.EchoService/Echo"),
        pair("echo-unary", "bench.v1.EchoService/Echo")
    );
    assert_eq!(
        label("/bench.v1.EchoService/EchoStream"),
        pair("echo", "bench.v1.EchoService/EchoStream")
    );
    assert_eq!(label("/bench.v1.EchoService/Nope"), pair("echo", "other"));
    assert_eq!(label("/no.Such/Thing"), pair("none", "other"));
    assert_eq!(label("/malformed"), pair("none", "other"));
    // No descriptors: the first methods seen keep their names, then `other`.
    for i in 0..MAX_UNREGISTERED_METHODS {
        let p = format!("/shop.v1.Unregistered/M{i}");
        assert_eq!(label(&p), pair("unregistered", &p[1..]));
    }
    assert_eq!(
        label("/shop.v1.Unregistered/OneTooMany"),
        pair("unregistered", "other")
    );
    assert_eq!(
        label("/shop.v1.Unregistered/M0"),
        pair("unregistered", "shop.v1.Unregistered/M0")
    );
    // The next table's index keeps what was seen: a push does not admit
    // another batch of names.
    let next = LabelIndex::routed(&source(), &HashSet::new(), &index);
    assert_eq!(
        &*next.label("/shop.v1.Unregistered/Another").method,
        "other"
    );
    assert_eq!(
        &*next.label("/shop.v1.Unregistered/M1").method,
        "shop.v1.Unregistered/M1"
    );
}

#[test]
fn the_app_labels_its_registered_methods_and_bounds_the_rest() {
    let index = LabelIndex::app("inbound", &methods_of([descriptors().as_slice()]), None);
    assert_eq!(
        &*index.label("/bench.v1.EchoService/Echo").method,
        "bench.v1.EchoService/Echo"
    );
    let other = index.label("/evil.Svc/Random");
    assert_eq!((&*other.route, &*other.method), ("inbound", "other"));
}

#[test]
fn series_stay_bounded_whatever_clients_send() {
    let metrics = Metrics::default();
    let known = methods_of([descriptors().as_slice()]);
    let index = LabelIndex::routed(&source(), &known, &LabelIndex::default());
    metrics.set_labels(Direction::Ingress, index);
    metrics.learn_app_methods(&descriptors());
    let service: Arc<str> = Arc::from("echo");
    let lines = |m: &Metrics| m.render(&StateSnapshot::default()).lines().count();
    let before = lines(&metrics);
    for i in 0..100_000u32 {
        let random = rand::random::<u64>();
        let p = match i % 4 {
            0 => format!("/bench.v1.EchoService/M{random}"),
            1 => format!("/shop.v1.Unregistered/M{random}"),
            2 => format!("/x{random}.Svc/M{random}"),
            _ => format!("/{random}"),
        };
        let direction = if (i / 4) % 2 == 0 {
            Direction::Ingress
        } else {
            Direction::Inbound
        };
        let code = if i % 3 == 0 {
            rand::random::<i32>()
        } else {
            rand::random_range(-3..25)
        };
        metrics.record_response(
            direction,
            &service,
            &path(&p),
            code,
            Duration::from_millis(1),
        );
    }
    metrics.record_response(
        Direction::Ingress,
        &service,
        &path("/bench.v1.EchoService/Echo"),
        0,
        Duration::from_millis(1),
    );
    let text = metrics.render(&StateSnapshot::default());
    // Label sets: per direction, route and method (the registered ones,
    // the first unregistered, `other`), times 18 codes; each is a counter
    // line plus a histogram (17 buckets, +Inf, sum, count).
    let methods = known.len() + MAX_UNREGISTERED_METHODS + 3;
    let bound = 2 * methods * 18 * 21;
    let added = text.lines().count() - before;
    assert!(
        added < bound,
        "{added} lines for 100,000 random calls (bound {bound})"
    );
    assert!(
        text.contains(r#"route="echo-unary",method="bench.v1.EchoService/Echo",code="0""#),
        "a known method keeps its label"
    );
    assert!(text.contains(r#"method="other",code="other""#));
}

//! Logins end to end: the shop with its security documents (`meshctl up`'s
//! own), real processes, mTLS on every hop. Customers register and log in
//! at the users service through the gateway, which then verifies their
//! bearer tokens with the keys the control plane fetched from users and
//! pushed; orders takes the customer from the verified subject. Tokens the
//! test signs itself (a second issuer whose keys are a file the control
//! plane reads) cover the ones users would never issue: expired, for
//! another audience, wrongly signed.

mod support;

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use mesh::proto::shop::catalog::v1::catalog_service_client::CatalogServiceClient;
use mesh::proto::shop::catalog::v1::Product;
use mesh::proto::shop::orders::v1::orders_service_client::OrdersServiceClient;
use mesh::proto::shop::orders::v1::{
    GetOrderRequest, OrderLine, PlaceOrderRequest, WatchOrderRequest,
};
use mesh::proto::shop::users::v1::users_service_client::UsersServiceClient;
use mesh::proto::shop::users::v1::{GetProfileRequest, LoginRequest, RegisterRequest};
use meshctl::demo::{ControlPlaneSpec, InstanceSpec, Topology};
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use support::TestMesh;
use tonic::transport::Channel;
use tonic::Code;

const PASSWORD: &str = "correct horse battery staple";
const ADMIN: &str = "admin@shop.test";

/// The shop with logins: one control plane on etcd, users told that
/// `ADMIN` is an admin, and `users_args` for its key rotation.
fn shop_with_logins(users_args: &[&str]) -> TestMesh {
    let one = |name: &str| {
        (
            name.to_owned(),
            vec![InstanceSpec::new(format!("{name}-1"))],
        )
    };
    let mut users = InstanceSpec::new("users-1").app_args(["--admin-email", ADMIN]);
    users = users.app_args(users_args.iter().copied());
    let topology = Topology {
        services: vec![
            one("catalog"),
            one("inventory"),
            one("payments"),
            one("orders"),
            ("users".into(), vec![users]),
        ],
        gateway: Some("127.0.0.1:0".parse().expect("address")),
        control_plane: Some(ControlPlaneSpec {
            replicas: 1,
            ..ControlPlaneSpec::default()
        }),
        shop_security: true,
        ..Topology::default()
    };
    TestMesh::start(&topology)
}

/// Waits until the gateway holds a key set for `authentication` with the
/// key `kid` (pushed by the control plane after it fetched it).
fn wait_for_key(mesh: &TestMesh, authentication: &str, kid: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let config = mesh.config("gateway");
        if config["jwks"][authentication]
            .as_str()
            .is_some_and(|set| set.contains(kid))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never got key {kid} of {authentication}: {}",
            config["jwks"]
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn kid(token: &str) -> String {
    jsonwebtoken::decode_header(token)
        .expect("a JWT")
        .kid
        .expect("a kid")
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    request
}

/// Registers `email` and logs in: (user id, token).
async fn sign_up(gateway: &Channel, email: &str) -> (String, String) {
    let mut users = UsersServiceClient::new(gateway.clone());
    let user_id = users
        .register(RegisterRequest {
            email: email.into(),
            password: PASSWORD.into(),
            display_name: String::new(),
        })
        .await
        .expect("Register")
        .into_inner()
        .user_id;
    (user_id, log_in(gateway, email).await)
}

async fn log_in(gateway: &Channel, email: &str) -> String {
    UsersServiceClient::new(gateway.clone())
        .login(LoginRequest {
            email: email.into(),
            password: PASSWORD.into(),
        })
        .await
        .expect("Login")
        .into_inner()
        .access_token
}

fn order(request_id: &str, customer_id: &str, sku: &str) -> PlaceOrderRequest {
    PlaceOrderRequest {
        request_id: request_id.into(),
        customer_id: customer_id.into(),
        lines: vec![OrderLine {
            sku: sku.into(),
            quantity: 1,
        }],
    }
}

fn reason(status: &tonic::Status) -> &str {
    status
        .metadata()
        .get("x-mesh-error")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_log_in_and_order_as_themselves_only() {
    let mesh = shop_with_logins(&[]);
    let gateway = support::channel(mesh.gateway_uri()).await;
    let sku = support::first_product(&gateway).await.sku;
    let (alice, alice_token) = sign_up(&gateway, "alice@shop.test").await;
    let (_bob, bob_token) = sign_up(&gateway, "bob@shop.test").await;
    wait_for_key(&mesh, "shop-users", &kid(&alice_token));
    let mut orders = OrdersServiceClient::new(gateway.clone());

    // With a token: the order is the token subject's, whatever the body
    // leaves out.
    let placed = orders
        .place_order(with_token(order("o-1", "", &sku), &alice_token))
        .await
        .expect("PlaceOrder with a token")
        .into_inner();
    assert_eq!(placed.customer_id, alice);

    // For someone else, or without a token: refused.
    let status = orders
        .place_order(with_token(
            order("o-2", "usr_someone_else", &sku),
            &alice_token,
        ))
        .await
        .expect_err("ordering for another customer");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = orders
        .place_order(tonic::Request::new(order("o-3", &alice, &sku)))
        .await
        .expect_err("ordering without a token");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // A forged subject from outside is removed at the gateway.
    let mut forged = tonic::Request::new(order("o-4", &alice, &sku));
    forged
        .metadata_mut()
        .insert("x-mesh-auth-sub", alice.parse().expect("header"));
    let status = orders
        .place_order(forged)
        .await
        .expect_err("a forged subject");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // Reading and watching: the owner yes, another customer no.
    let get = |token: &str| {
        with_token(
            GetOrderRequest {
                order_id: placed.order_id.clone(),
            },
            token,
        )
    };
    orders
        .get_order(get(&alice_token))
        .await
        .expect("own order");
    let status = orders
        .get_order(get(&bob_token))
        .await
        .expect_err("bob reads alice's");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let watch = with_token(
        WatchOrderRequest {
            order_id: placed.order_id.clone(),
        },
        &bob_token,
    );
    let status = orders
        .watch_order(watch)
        .await
        .expect_err("bob watches alice's");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // The profile is the caller's own.
    let profile = UsersServiceClient::new(gateway.clone())
        .get_profile(with_token(GetProfileRequest {}, &alice_token))
        .await
        .expect("GetProfile")
        .into_inner();
    assert_eq!(profile.user_id, alice);

    // A token that does not verify never reaches a service.
    let mut tampered = alice_token.clone();
    let last = tampered.pop().expect("a character");
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    for bad in [tampered.as_str(), "not-a-jwt"] {
        let status = orders
            .place_order(with_token(order("o-5", "", &sku), bad))
            .await
            .expect_err("a bad token");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert_eq!(reason(&status), "unauthenticated", "{status:?}");
    }

    // Claims decide too: only an admin's token may change the catalog.
    let (_, admin_token) = sign_up(&gateway, ADMIN).await;
    let upsert = |token: &str| {
        with_token(
            tokio_stream::iter(vec![Product {
                sku: "sku-login-test".into(),
                name: "Login test".into(),
                price_minor: 100,
                currency: "EUR".into(),
                ..Product::default()
            }]),
            token,
        )
    };
    let mut catalog = CatalogServiceClient::new(gateway.clone());
    let status = catalog
        .upsert_products(upsert(&alice_token))
        .await
        .expect_err("a customer changes the catalog");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(reason(&status), "unauthorized");
    catalog
        .upsert_products(upsert(&admin_token))
        .await
        .expect("an admin changes the catalog");

    // The debug header: every proxy's decisions for an admin who asks,
    // nothing for a customer who asks.
    let debug = |token: &str| {
        let mut request = with_token(
            GetOrderRequest {
                order_id: placed.order_id.clone(),
            },
            token,
        );
        request
            .metadata_mut()
            .insert("x-mesh-debug", "1".parse().expect("header"));
        request
    };
    let answered = orders
        .get_order(debug(&admin_token))
        .await
        .expect("admin reads");
    let hops: Vec<String> = answered
        .metadata()
        .get_all("x-mesh-debug")
        .iter()
        .map(|v| v.to_str().expect("ascii").to_owned())
        .collect();
    assert_eq!(hops.len(), 2, "{hops:?}");
    assert!(hops[0].starts_with("orders inbound: "), "{hops:?}");
    assert!(
        hops[0].contains("authz=allow policy=orders-callers"),
        "{hops:?}"
    );
    assert!(hops[1].starts_with("gateway: authn=verified"), "{hops:?}");
    assert!(hops[1].contains("route=orders"), "{hops:?}");
    assert!(hops[1].contains("attempt=1 endpoint="), "{hops:?}");
    let answered = orders
        .get_order(debug(&alice_token))
        .await
        .expect("alice reads");
    assert!(
        answered.metadata().get("x-mesh-debug").is_none(),
        "a customer saw the mesh's decisions"
    );

    // An operator's certificate may ask a sidecar directly (here: why it
    // refuses the operator, who is no gateway); a service's may not.
    let inbound = mesh.serving("orders-1-sidecar");
    let ask = |tls| {
        let order_id = placed.order_id.clone();
        async move {
            let channel = support::mtls_channel(inbound, tls, "orders").await;
            let mut request = tonic::Request::new(GetOrderRequest { order_id });
            request
                .metadata_mut()
                .insert("x-mesh-debug", "1".parse().expect("header"));
            OrdersServiceClient::new(channel).get_order(request).await
        }
    };
    let operator = mesh
        .plan
        .identity
        .as_ref()
        .expect("identities")
        .operator_tls()
        .expect("the operator's credential");
    let refused = ask(operator)
        .await
        .expect_err("the operator is not a gateway");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let hops: Vec<&str> = refused
        .metadata()
        .get_all("x-mesh-debug")
        .iter()
        .map(|v| v.to_str().expect("ascii"))
        .collect();
    assert_eq!(hops.len(), 1, "{hops:?}");
    assert!(hops[0].starts_with("orders inbound: "), "{hops:?}");
    assert!(hops[0].contains("authz=deny"), "{hops:?}");
    let refused = ask(mesh.workload_tls("catalog"))
        .await
        .expect_err("catalog may not call orders");
    assert!(
        refused.metadata().get("x-mesh-debug").is_none(),
        "a service saw the mesh's decisions"
    );
}

/// A signing key of the test's own: its JWKS and tokens.
struct TestIssuer {
    pkcs8: Vec<u8>,
    jwks: String,
}

impl TestIssuer {
    fn new() -> Self {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("key")
            .as_ref()
            .to_vec();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
            .expect("key pair");
        let point = pair.public_key().as_ref();
        let jwks = serde_json::json!({ "keys": [{
            "kty": "EC", "crv": "P-256", "kid": "test-key", "alg": "ES256", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..]),
        }]});
        Self {
            pkcs8,
            jwks: jwks.to_string(),
        }
    }

    fn token(&self, claims: serde_json::Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("test-key".into());
        jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_ec_der(&self.pkcs8),
        )
        .expect("token")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_foreign_and_forged_tokens_are_refused_at_the_gateway() {
    let mesh = shop_with_logins(&[]);
    let issuer = TestIssuer::new();
    let jwks_file = mesh.dir().join("test-issuer.jwks.json");
    std::fs::write(&jwks_file, &issuer.jwks).expect("write the JWKS");
    let authentication = format!(
        "kind: RequestAuthentication\nmetadata: {{ name: test-issuer }}\nspec:\n  issuer: https://test.issuer\n  audiences: [shop]\n  jwks: {{ file: {} }}\n  clockSkew: 5s\n",
        jwks_file.display()
    );
    mesh.meshctl_apply(&authentication);
    wait_for_key(&mesh, "test-issuer", "test-key");

    let gateway = support::channel(mesh.gateway_uri()).await;
    let sku = support::first_product(&gateway).await.sku;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = |exp: u64, aud: &str, iss: &str| serde_json::json!({ "sub": "usr_test", "iss": iss, "aud": aud, "exp": exp });
    let orders = OrdersServiceClient::new(gateway);
    let place = |token: String| {
        let request = with_token(order("t-1", "", &sku), &token);
        let mut orders = orders.clone();
        async move { orders.place_order(request).await }
    };

    // Good: the test issuer's token is accepted, its subject ordering.
    let placed = place(issuer.token(claims(now + 300, "shop", "https://test.issuer")))
        .await
        .expect("a valid token")
        .into_inner();
    assert_eq!(placed.customer_id, "usr_test");

    let forger = TestIssuer::new(); // same kid, another key
    let cases = [
        (
            "expired",
            issuer.token(claims(now - 60, "shop", "https://test.issuer")),
        ),
        (
            "another audience",
            issuer.token(claims(now + 300, "billing", "https://test.issuer")),
        ),
        (
            "another issuer",
            issuer.token(claims(now + 300, "shop", "https://users.shop.mesh.local")),
        ),
        (
            "forged signature",
            forger.token(claims(now + 300, "shop", "https://test.issuer")),
        ),
    ];
    for (what, token) in cases {
        let status = place(token).await.expect_err(what);
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        assert_eq!(reason(&status), "unauthenticated", "{what}");
    }
    // Refusals are counted where operators look.
    assert!(
        mesh.counter(
            "gateway",
            "mesh_proxy_errors_total",
            &[("reason", "unauthenticated")]
        ) >= 4.0
    );
    drop(orders);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_at_the_users_service_fails_no_call() {
    // A key signs for 6 s (tokens live 2 s, verifiers allow 2 s of skew);
    // the next key is published 6 s before it signs, and fetched every 1 s.
    let mesh = shop_with_logins(&[
        "--access-token-ttl",
        "2s",
        "--clock-skew",
        "2s",
        "--key-rotation-interval",
        "6s",
    ]);
    let fast_refresh = "kind: RequestAuthentication\nmetadata: { name: shop-users }\nspec:\n  issuer: https://users.shop.mesh.local\n  audiences: [shop]\n  jwks: { method: shop.users.v1.UsersService/GetJwks, refresh: 1s }\n  forwardClaims: [role]\n  clockSkew: 2s\n";
    mesh.meshctl_apply(fast_refresh);
    let gateway = support::channel(mesh.gateway_uri()).await;
    let (user, token) = sign_up(&gateway, "carol@shop.test").await;
    wait_for_key(&mesh, "shop-users", &kid(&token));

    // Log in and call as the user until three keys have signed.
    let mut kids = std::collections::BTreeSet::new();
    let mut calls = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while kids.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "only {} keys signed in 60 s",
            kids.len()
        );
        let token = log_in(&gateway, "carol@shop.test").await;
        kids.insert(kid(&token));
        let profile = UsersServiceClient::new(gateway.clone())
            .get_profile(with_token(GetProfileRequest {}, &token))
            .await
            .unwrap_or_else(|status| {
                panic!(
                    "call {calls} with a token of key {} failed: {status:?}",
                    kid(&token)
                )
            })
            .into_inner();
        assert_eq!(profile.user_id, user);
        calls += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("{calls} calls over {} keys, none failed", kids.len());
}

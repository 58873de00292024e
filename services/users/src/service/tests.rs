//! The service called directly (no network): what each method answers.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tonic::Code;

use super::*;
use crate::key_ring::KeyRing;
use crate::token::Claims;

fn users(capacity: usize) -> Users {
    let keys: SharedKeys = Arc::new(ArcSwap::from_pointee(
        KeyRing::generate(&SystemRandom::new()).expect("ring"),
    ));
    Users::new(
        UserStore::new(capacity),
        Passwords::new(2).expect("passwords"),
        keys,
        TokenPolicy {
            issuer: "https://users.test".into(),
            audience: "shop".into(),
            lifetime: Duration::from_secs(900),
        },
        &["Boss@Shop.example".to_owned()],
    )
}

async fn register(users: &Users, email: &str, password: &str) -> Result<String, Status> {
    users
        .register(Request::new(RegisterRequest {
            email: email.into(),
            password: password.into(),
            display_name: "Ann".into(),
        }))
        .await
        .map(|r| r.into_inner().user_id)
}

async fn login(users: &Users, email: &str, password: &str) -> Result<LoginResponse, Status> {
    users
        .login(Request::new(LoginRequest {
            email: email.into(),
            password: password.into(),
        }))
        .await
        .map(Response::into_inner)
}

fn verify(token: &str, jwks_json: &str) -> Claims {
    let jwks: JwkSet = serde_json::from_str(jwks_json).expect("JWKS JSON");
    let kid = jsonwebtoken::decode_header(token)
        .expect("header")
        .kid
        .expect("kid");
    let key = DecodingKey::from_jwk(jwks.find(&kid).expect("kid published")).expect("key");
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_issuer(&["https://users.test"]);
    validation.set_audience(&["shop"]);
    jsonwebtoken::decode::<Claims>(token, &key, &validation)
        .expect("valid token")
        .claims
}

#[tokio::test]
async fn register_login_and_verify_against_the_jwks() {
    let users = users(10);
    let id = register(&users, " Ann@Example.com", "correct horse battery")
        .await
        .expect("registered");
    assert!(id.starts_with("usr_") && id.len() == 36, "{id}");

    // The email is matched case-insensitively.
    let login = login(&users, "ann@example.COM", "correct horse battery")
        .await
        .expect("logged in");
    assert_eq!(login.token_type, "Bearer");
    assert_eq!(login.expires_in, 900);
    let jwks = users
        .get_jwks(Request::new(GetJwksRequest {}))
        .await
        .expect("jwks")
        .into_inner();
    let claims = verify(&login.access_token, &jwks.jwks_json);
    assert_eq!(claims.sub, id);
    assert_eq!(claims.role, Role::Customer);
    assert_eq!(
        login.expires_at.map(|t| t.seconds),
        Some(i64::try_from(claims.exp).expect("small"))
    );
    // The structured keys are the JSON ones, current first.
    assert_eq!(jwks.keys.len(), 2);
    let kid = jsonwebtoken::decode_header(&login.access_token)
        .expect("header")
        .kid;
    assert_eq!(Some(jwks.keys[0].kid.clone()), kid);
    assert!(jwks
        .keys
        .iter()
        .all(|k| k.kty == "EC" && k.crv == "P-256" && k.alg == "ES256" && k.r#use == "sig"));
}

#[tokio::test]
async fn wrong_password_and_unknown_email_get_the_same_answer() {
    let users = users(10);
    register(&users, "ann@example.com", "correct horse battery")
        .await
        .expect("registered");
    let wrong = login(&users, "ann@example.com", "wrong horse battery")
        .await
        .expect_err("refused");
    let unknown = login(&users, "bob@example.com", "correct horse battery")
        .await
        .expect_err("refused");
    assert_eq!(wrong.code(), Code::Unauthenticated);
    assert_eq!(
        (wrong.code(), wrong.message()),
        (unknown.code(), unknown.message())
    );
}

#[tokio::test]
async fn bad_registrations_say_which_field_and_why() {
    let users = users(10);
    let bad = register(&users, "not-an-email", "correct horse battery")
        .await
        .expect_err("refused");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("email:"), "{}", bad.message());
    let short = register(&users, "ann@example.com", "short")
        .await
        .expect_err("refused");
    assert_eq!(short.code(), Code::InvalidArgument);
    assert_eq!(short.message(), "password: must be 8 to 128 bytes long");

    register(&users, "ann@example.com", "correct horse battery")
        .await
        .expect("registered");
    let again = register(&users, "ANN@example.com", "another password")
        .await
        .expect_err("taken");
    assert_eq!(again.code(), Code::AlreadyExists);
}

#[tokio::test]
async fn registration_beyond_capacity_is_resource_exhausted() {
    let users = users(1);
    register(&users, "ann@example.com", "correct horse battery")
        .await
        .expect("registered");
    let full = register(&users, "bob@example.com", "correct horse battery")
        .await
        .expect_err("full");
    assert_eq!(full.code(), Code::ResourceExhausted);
    assert!(
        full.message().contains("at most 1 accounts"),
        "{}",
        full.message()
    );
}

#[tokio::test]
async fn admin_emails_get_the_admin_role() {
    let users = users(10);
    register(&users, "boss@shop.example", "correct horse battery")
        .await
        .expect("registered");
    let login = login(&users, "boss@shop.example", "correct horse battery")
        .await
        .expect("logged in");
    let jwks = users
        .get_jwks(Request::new(GetJwksRequest {}))
        .await
        .expect("jwks")
        .into_inner();
    assert_eq!(
        verify(&login.access_token, &jwks.jwks_json).role,
        Role::Admin
    );
}

#[tokio::test]
async fn the_profile_is_the_verified_callers_own() {
    let users = users(10);
    let id = register(&users, "ann@example.com", "correct horse battery")
        .await
        .expect("registered");

    let anonymous = users
        .get_profile(Request::new(GetProfileRequest {}))
        .await
        .expect_err("no subject");
    assert_eq!(anonymous.code(), Code::Unauthenticated);

    let mut request = Request::new(GetProfileRequest {});
    request
        .metadata_mut()
        .insert(mesh::app::caller::AUTH_SUBJECT, id.parse().expect("ascii"));
    let profile = users
        .get_profile(request)
        .await
        .expect("profile")
        .into_inner();
    assert_eq!(profile.user_id, id);
    assert_eq!(profile.email, "ann@example.com");
    assert_eq!(profile.display_name, "Ann");
    assert_eq!(profile.role, "customer");
    assert!(profile.created_at.is_some());

    let mut request = Request::new(GetProfileRequest {});
    request.metadata_mut().insert(
        mesh::app::caller::AUTH_SUBJECT,
        "usr_nobody".parse().expect("ascii"),
    );
    let missing = users.get_profile(request).await.expect_err("unknown");
    assert_eq!(missing.code(), Code::NotFound);
}

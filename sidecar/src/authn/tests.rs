//! Tokens made here with a key of the test's own, checked against a table
//! that carries its public half, as a gateway would be pushed it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{EncodingKey, Header};
use mesh::model::{Bootstrap, RequestAuthentication};
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

use super::*;

struct TestKey {
    kid: String,
    encoding: EncodingKey,
    jwk: serde_json::Value,
}

fn key(kid: &str) -> TestKey {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .expect("key pair");
    let point = pair.public_key().as_ref();
    TestKey {
        kid: kid.to_owned(),
        encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk: serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..]),
        }),
    }
}

fn table(keys: &[&TestKey]) -> Bootstrap {
    let authn: RequestAuthentication = serde_json::from_value(serde_json::json!({
        "kind": "RequestAuthentication",
        "metadata": { "name": "users" },
        "spec": {
            "issuer": "https://users",
            "audiences": ["shop"],
            "jwks": { "file": "/jwks.json" },
            "forwardClaims": ["role"],
            "clockSkew": "5s",
        },
    }))
    .expect("document");
    let jwks =
        serde_json::json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() });
    Bootstrap {
        request_authentications: vec![authn],
        jwks: [("users".to_owned(), jwks.to_string())].into(),
        ..Bootstrap::default()
    }
}

fn token(key: &TestKey, claims: serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, &claims, &key.encoding).expect("token")
}

fn claims(exp_from_now: i64) -> serde_json::Value {
    serde_json::json!({
        "iss": "https://users", "aud": "shop", "sub": "user-1", "role": "admin",
        "exp": unix_now() as i64 + exp_from_now,
    })
}

fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
    );
    headers
}

fn authenticator(keys: &[&TestKey]) -> Authenticator {
    let (authenticator, problems) = Authenticator::build(&table(keys));
    assert!(problems.is_empty(), "{problems:?}");
    authenticator.expect("an authenticator")
}

#[test]
fn a_valid_token_forwards_its_subject_and_chosen_claims_and_not_itself() {
    let k1 = key("k1");
    let authenticator = authenticator(&[&k1]);
    let good = token(&k1, claims(300));
    for _ in 0..2 {
        // The second time from the cache: the same answer.
        let mut headers = bearer(&good);
        authenticator.authenticate(&mut headers).expect("verified");
        assert_eq!(headers[SUBJECT_HEADER], "user-1");
        let forwarded: serde_json::Value =
            serde_json::from_str(headers[crate::authz::CLAIMS_HEADER].to_str().unwrap())
                .expect("claims JSON");
        assert_eq!(
            forwarded,
            serde_json::json!({ "sub": "user-1", "iss": "https://users", "role": "admin" })
        );
        assert!(headers.get(http::header::AUTHORIZATION).is_none());
    }
}

#[test]
fn bad_tokens_are_refused_and_no_token_is_anonymous() {
    let k1 = key("k1");
    let forger = key("k1"); // the same kid, another key
    let authenticator = authenticator(&[&k1]);
    let with = |claims: serde_json::Value| {
        let mut c = self::claims(300);
        for (k, v) in claims.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let cases = [
        (
            "expired",
            token(&k1, with(serde_json::json!({ "exp": unix_now() - 60 }))),
        ),
        (
            "wrong audience",
            token(&k1, with(serde_json::json!({ "aud": "other" }))),
        ),
        (
            "wrong issuer",
            token(&k1, with(serde_json::json!({ "iss": "https://evil" }))),
        ),
        ("forged signature", token(&forger, claims(300))),
        ("unknown key", token(&key("k9"), claims(300))),
        (
            "no subject",
            token(&k1, with(serde_json::json!({ "sub": "" }))),
        ),
        ("not a JWT", "abc.def".to_owned()),
    ];
    for (what, token) in cases {
        let mut headers = bearer(&token);
        let error = authenticator.authenticate(&mut headers).expect_err(what);
        assert_eq!(error.reason(), "unauthenticated", "{what}: {error}");
        assert!(headers.get(SUBJECT_HEADER).is_none(), "{what}");
    }
    let mut basic = HeaderMap::new();
    basic.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_static("Basic YTpi"),
    );
    assert!(authenticator.authenticate(&mut basic).is_err());
    let mut anonymous = HeaderMap::new();
    authenticator
        .authenticate(&mut anonymous)
        .expect("anonymous");
    assert!(anonymous.get(SUBJECT_HEADER).is_none());
}

#[test]
fn a_rotated_in_key_verifies_and_a_missing_key_set_is_reported_not_fatal() {
    let (old, new) = (key("old"), key("new"));
    let authenticator = authenticator(&[&old, &new]);
    for k in [&old, &new] {
        authenticator
            .authenticate(&mut bearer(&token(k, claims(300))))
            .expect("either key");
    }
    let mut source = table(&[&old]);
    source.jwks.clear();
    let (authenticator, problems) = Authenticator::build(&source);
    assert_eq!(problems.len(), 1, "{problems:?}");
    let authenticator = authenticator.expect("still an authenticator");
    assert!(authenticator
        .authenticate(&mut bearer(&token(&old, claims(300))))
        .is_err());
}

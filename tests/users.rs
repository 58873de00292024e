//! End-to-end: the users service as a real process behind its own sidecar
//! in a mesh with identities (its join token, mTLS on every hop). A client
//! registers, logs in and fetches the JWKS through the gateway, then checks
//! the token against that JWKS the way a gateway will: by kid, signature,
//! issuer, audience and expiry, with jsonwebtoken.

mod support;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use mesh::proto::shop::users::v1::users_service_client::UsersServiceClient;
use mesh::proto::shop::users::v1::{
    GetJwksRequest, GetJwksResponse, GetProfileRequest, LoginRequest, RegisterRequest,
};
use meshctl::demo::{InstanceSpec, Topology};
use support::{block_on, channel, TestMesh};
use tonic::transport::Channel;
use tonic::Code;

/// The service's defaults: what a gateway is told to expect.
const ISSUER: &str = "https://users.shop.mesh.local";
const AUDIENCE: &str = "shop";
const TOKEN_SECONDS: i64 = 15 * 60;

const EMAIL: &str = "Ann.Example@shop.test";
const PASSWORD: &str = "correct horse battery staple";

/// users with a sidecar and a gateway, with identities: the control plane
/// certifies the users sidecar by its own join token.
fn secure_users_mesh() -> TestMesh {
    TestMesh::start(&support::secure_services(&["users"]))
}

/// users with a sidecar (and a gateway if asked) from a static table: no
/// control plane, so lighter, for what identities do not change.
fn static_users_mesh(gateway: bool) -> TestMesh {
    TestMesh::start(&Topology {
        services: vec![("users".into(), vec![InstanceSpec::new("users-1")])],
        gateway: gateway.then(|| "127.0.0.1:0".parse().expect("address")),
        ..Topology::default()
    })
}

/// The verifier a gateway builds from the JWKS: the key named by the
/// token's kid, ES256 only, our issuer and audience, expiry enforced.
fn verify(token: &str, jwks: &JwkSet) -> Result<serde_json::Value, jsonwebtoken::errors::Error> {
    let kid = jsonwebtoken::decode_header(token)?
        .kid
        .ok_or(jsonwebtoken::errors::ErrorKind::InvalidToken)?;
    let jwk = jwks
        .find(&kid)
        .ok_or(jsonwebtoken::errors::ErrorKind::InvalidKeyFormat)?;
    let key = DecodingKey::from_jwk(jwk)?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[AUDIENCE]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    Ok(jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)?.claims)
}

async fn register(client: &mut UsersServiceClient<Channel>, email: &str) -> String {
    client
        .register(RegisterRequest {
            email: email.into(),
            password: PASSWORD.into(),
            display_name: "Ann".into(),
        })
        .await
        .expect("Register")
        .into_inner()
        .user_id
}

async fn jwks(client: &mut UsersServiceClient<Channel>) -> GetJwksResponse {
    client
        .get_jwks(GetJwksRequest {})
        .await
        .expect("GetJwks")
        .into_inner()
}

#[test]
fn a_token_from_login_verifies_against_the_published_jwks() {
    let mesh = secure_users_mesh();
    let gateway = mesh.gateway_uri();
    let user_id = block_on(async move {
        let mut client = UsersServiceClient::new(channel(gateway).await);
        let user_id = register(&mut client, EMAIL).await;

        let login = client
            .login(LoginRequest {
                email: EMAIL.to_lowercase(),
                password: PASSWORD.into(),
            })
            .await
            .expect("Login")
            .into_inner();
        assert_eq!(login.token_type, "Bearer");
        assert_eq!(login.expires_in, TOKEN_SECONDS);

        let published = jwks(&mut client).await;
        let set: JwkSet = serde_json::from_str(&published.jwks_json).expect("JWKS is JSON");
        let claims = verify(&login.access_token, &set).expect("the token verifies");
        assert_eq!(claims["sub"], user_id.as_str());
        assert_eq!(claims["role"], "customer");
        assert_eq!(claims["iss"], ISSUER);
        assert_eq!(claims["aud"], AUDIENCE);
        let exp = claims["exp"].as_i64().expect("exp");
        let iat = claims["iat"].as_i64().expect("iat");
        assert_eq!(exp - iat, TOKEN_SECONDS);
        assert_eq!(login.expires_at.map(|t| t.seconds), Some(exp));

        // The structured keys are the JSON ones: the token's key rebuilt
        // from its x and y verifies it too.
        let kid = jsonwebtoken::decode_header(&login.access_token)
            .expect("header")
            .kid
            .expect("kid");
        assert_eq!(published.keys.len(), set.keys.len());
        let key = published
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .expect("the token's kid is published");
        assert_eq!(
            (key.kty.as_str(), key.crv.as_str(), key.alg.as_str()),
            ("EC", "P-256", "ES256")
        );
        let decoding = DecodingKey::from_ec_components(&key.x, &key.y).expect("EC key");
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&[AUDIENCE]);
        assert!(jsonwebtoken::decode::<serde_json::Value>(
            &login.access_token,
            &decoding,
            &validation
        )
        .is_ok());

        // A token whose payload was swapped does not verify.
        let admin_payload = {
            use base64::Engine as _;
            let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let mut claims = claims.clone();
            claims["role"] = "admin".into();
            engine.encode(serde_json::to_vec(&claims).expect("json"))
        };
        let parts: Vec<&str> = login.access_token.split('.').collect();
        let forged = format!("{}.{admin_payload}.{}", parts[0], parts[2]);
        assert!(verify(&forged, &set).is_err());
        user_id
    });

    // Nothing secret reached the log: not the password, not the email.
    let log = mesh.log("users-1");
    assert!(log.contains(&user_id), "registration logged by id:\n{log}");
    assert!(!log.contains(PASSWORD));
    assert!(!log.to_lowercase().contains(&EMAIL.to_lowercase()));
}

#[test]
fn a_subject_forged_from_outside_is_stripped_at_the_gateway() {
    let mesh = secure_users_mesh();
    let gateway = mesh.gateway_uri();
    block_on(async move {
        let mut client = UsersServiceClient::new(channel(gateway).await);
        let user_id = register(&mut client, "forger@example.com").await;
        // An external client names itself (and claims to be an admin).
        let mut request = tonic::Request::new(GetProfileRequest {});
        let metadata = request.metadata_mut();
        metadata.insert("x-mesh-auth-sub", user_id.parse().expect("ascii id"));
        metadata.insert(
            "x-mesh-auth-claims",
            r#"{"role":"admin"}"#.parse().expect("ascii"),
        );
        let refused = client
            .get_profile(request)
            .await
            .expect_err("the forged subject never reaches the app");
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    });
}

#[test]
fn failed_logins_and_bad_registrations_answer_the_caller_precisely() {
    let mesh = static_users_mesh(true);
    let gateway = mesh.gateway_uri();
    block_on(async move {
        let mut client = UsersServiceClient::new(channel(gateway).await);
        register(&mut client, EMAIL).await;

        let login = |email: &str, password: &str| LoginRequest {
            email: email.into(),
            password: password.into(),
        };
        let wrong = client
            .login(login(EMAIL, "not the password"))
            .await
            .expect_err("wrong password");
        let unknown = client
            .login(login("nobody@shop.test", PASSWORD))
            .await
            .expect_err("unknown email");
        assert_eq!(wrong.code(), Code::Unauthenticated);
        assert_eq!(
            (wrong.code(), wrong.message()),
            (unknown.code(), unknown.message()),
            "a wrong password and an unknown email look the same"
        );

        let again = client
            .register(RegisterRequest {
                email: EMAIL.to_uppercase(),
                password: PASSWORD.into(),
                display_name: String::new(),
            })
            .await
            .expect_err("taken");
        assert_eq!(again.code(), Code::AlreadyExists);
        let short = client
            .register(RegisterRequest {
                email: "bob@shop.test".into(),
                password: "short".into(),
                display_name: String::new(),
            })
            .await
            .expect_err("too short");
        assert_eq!(short.code(), Code::InvalidArgument);
        assert_eq!(short.message(), "password: must be 8 to 128 bytes long");
    });
}

/// GetProfile trusts the subject the gateway forwards (`x-mesh-auth-sub`):
/// asked directly on the app's loopback port, as its sidecar would.
#[test]
fn the_profile_is_the_forwarded_subjects_and_nobody_elses() {
    let mesh = static_users_mesh(false);
    let app = format!("http://{}", mesh.serving("users-1"));
    block_on(async move {
        let mut client = UsersServiceClient::new(channel(app).await);
        let user_id = register(&mut client, EMAIL).await;

        let anonymous = client
            .get_profile(GetProfileRequest {})
            .await
            .expect_err("no subject");
        assert_eq!(anonymous.code(), Code::Unauthenticated);

        let mut request = tonic::Request::new(GetProfileRequest {});
        request
            .metadata_mut()
            .insert("x-mesh-auth-sub", user_id.parse().expect("ascii id"));
        let profile = client
            .get_profile(request)
            .await
            .expect("GetProfile")
            .into_inner();
        assert_eq!(profile.user_id, user_id);
        assert_eq!(profile.email, EMAIL.to_lowercase());
        assert_eq!(profile.role, "customer");
    });
}

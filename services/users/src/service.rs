//! The gRPC edge of the users service: validates requests, hashes and
//! checks passwords, signs tokens, and maps every failure to a
//! `tonic::Status` that says what the caller may know and nothing more.

use std::collections::HashSet;
use std::time::SystemTime;

use mesh::proto::shop::users::v1::{
    users_service_server::UsersService, GetJwksRequest, GetJwksResponse, GetProfileRequest, Jwk,
    LoginRequest, LoginResponse, Profile, RegisterRequest, RegisterResponse,
};
use ring::rand::{SecureRandom, SystemRandom};
use tonic::{Request, Response, Status};

use crate::account::{self, InvalidField};
use crate::password::Passwords;
use crate::rotation::SharedKeys;
use crate::store::{InsertError, User, UserStore};
use crate::token::{unix_now, Role, TokenPolicy};

/// The one answer to a failed login, whether the email is unknown or the
/// password wrong: telling them apart would let anyone probe for accounts.
const LOGIN_REFUSED: &str = "invalid email or password";

/// `shop.users.v1.UsersService`.
#[derive(Debug)]
pub struct Users {
    store: UserStore,
    passwords: Passwords,
    keys: SharedKeys,
    tokens: TokenPolicy,
    /// Normalized emails that register as admins.
    admins: HashSet<String>,
    rng: SystemRandom,
}

impl Users {
    /// Serves `store`, signing with `keys` under `tokens`; an account
    /// registered with one of `admin_emails` gets the admin role.
    pub fn new(
        store: UserStore,
        passwords: Passwords,
        keys: SharedKeys,
        tokens: TokenPolicy,
        admin_emails: &[String],
    ) -> Self {
        Self {
            store,
            passwords,
            keys,
            tokens,
            admins: admin_emails
                .iter()
                .map(|e| account::normalize_email(e))
                .collect(),
            rng: SystemRandom::new(),
        }
    }

    /// A new opaque user id: `usr_` and 128 random bits in hex.
    fn new_user_id(&self) -> Result<String, Status> {
        let mut bytes = [0u8; 16];
        self.rng
            .fill(&mut bytes)
            .map_err(|_| internal("user id", "system RNG failed"))?;
        Ok(format!(
            "usr_{}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ))
    }
}

fn invalid_argument(e: InvalidField) -> Status {
    Status::invalid_argument(e.to_string())
}

/// Logs what went wrong and tells the caller only that something did.
fn internal(what: &str, error: impl std::fmt::Display) -> Status {
    tracing::error!(%error, "{what} failed");
    Status::internal("internal error")
}

fn insert_status(e: InsertError, capacity: usize) -> Status {
    match e {
        InsertError::EmailTaken => Status::already_exists("email: already registered"),
        InsertError::Full => Status::resource_exhausted(format!(
            "this users service holds at most {capacity} accounts; no more can register"
        )),
    }
}

fn timestamp(unix_seconds: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: i64::try_from(unix_seconds).unwrap_or(i64::MAX),
        nanos: 0,
    }
}

/// The proto form of a published key.
fn to_proto(jwk: &jsonwebtoken::jwk::Jwk) -> Option<Jwk> {
    let jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(ec) = &jwk.algorithm else {
        return None;
    };
    Some(Jwk {
        kid: jwk.common.key_id.clone().unwrap_or_default(),
        kty: "EC".into(),
        crv: "P-256".into(),
        x: ec.x.clone(),
        y: ec.y.clone(),
        alg: "ES256".into(),
        r#use: "sig".into(),
    })
}

/// The verified caller of a request (see [`mesh::app::caller`]).
fn caller<T>(request: &Request<T>) -> Result<String, Status> {
    mesh::app::caller::required_subject(request)
}

#[tonic::async_trait]
impl UsersService for Users {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let request = request.into_inner();
        let email = account::normalize_email(&request.email);
        account::validate_email(&email).map_err(invalid_argument)?;
        account::validate_password(&request.password).map_err(invalid_argument)?;
        account::validate_display_name(&request.display_name).map_err(invalid_argument)?;
        let capacity = self.store.capacity();
        // Refuse a doomed registration before paying for a hash.
        self.store
            .precheck(&email)
            .map_err(|e| insert_status(e, capacity))?;
        let password_hash = self
            .passwords
            .hash(request.password)
            .await
            .map_err(|e| internal("password hashing", e))?;
        let role = if self.admins.contains(&email) {
            Role::Admin
        } else {
            Role::Customer
        };
        let user = self
            .store
            .insert(User {
                id: self.new_user_id()?,
                email,
                display_name: request.display_name,
                role,
                password_hash: password_hash.into(),
                created_at: SystemTime::now(),
            })
            .map_err(|e| insert_status(e, capacity))?;
        // The id, never the email or anything about the password.
        tracing::info!(
            user_id = %user.id,
            role = role.as_str(),
            users = self.store.len(),
            "user registered"
        );
        Ok(Response::new(RegisterResponse {
            user_id: user.id.clone(),
        }))
    }

    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> Result<Response<LoginResponse>, Status> {
        let request = request.into_inner();
        let email = account::normalize_email(&request.email);
        // Only the bounds are checked here, so an absurd input costs no
        // hash; the shape of a stored email was checked at registration.
        if email.is_empty() || email.len() > account::MAX_EMAIL_LEN {
            return Err(Status::invalid_argument(format!(
                "email: must be 1 to {} bytes",
                account::MAX_EMAIL_LEN
            )));
        }
        if request.password.len() > account::MAX_PASSWORD_LEN {
            return Err(Status::invalid_argument(format!(
                "password: longer than {} bytes",
                account::MAX_PASSWORD_LEN
            )));
        }
        let user = self.store.by_email(&email);
        let stored = user.as_ref().map(|u| u.password_hash.clone());
        // Unknown emails are checked against a dummy hash: same work, same
        // time, same answer as a wrong password.
        let matched = self
            .passwords
            .verify(request.password, stored)
            .await
            .map_err(|e| internal("password check", e))?;
        let Some(user) = user.filter(|_| matched) else {
            tracing::info!("login refused");
            return Err(Status::unauthenticated(LOGIN_REFUSED));
        };
        let keys = self.keys.load();
        let issued = self
            .tokens
            .issue(keys.current(), &user.id, user.role, unix_now())
            .map_err(|e| internal("token signing", e))?;
        tracing::info!(user_id = %user.id, kid = keys.current().kid(), "token issued");
        Ok(Response::new(LoginResponse {
            access_token: issued.token,
            token_type: "Bearer".into(),
            expires_at: Some(timestamp(issued.expires_at)),
            expires_in: i64::try_from(self.tokens.lifetime.as_secs()).unwrap_or(i64::MAX),
        }))
    }

    async fn get_jwks(
        &self,
        _request: Request<GetJwksRequest>,
    ) -> Result<Response<GetJwksResponse>, Status> {
        let set = self.keys.load().jwks(unix_now());
        let jwks_json = serde_json::to_string(&set).map_err(|e| internal("JWKS encoding", e))?;
        Ok(Response::new(GetJwksResponse {
            jwks_json,
            keys: set.keys.iter().filter_map(to_proto).collect(),
        }))
    }

    async fn get_profile(
        &self,
        request: Request<GetProfileRequest>,
    ) -> Result<Response<Profile>, Status> {
        let subject = caller(&request)?;
        let user = self
            .store
            .by_id(&subject)
            .ok_or_else(|| Status::not_found(format!("user {subject} not found")))?;
        Ok(Response::new(Profile {
            user_id: user.id.clone(),
            email: user.email.clone(),
            display_name: user.display_name.clone(),
            role: user.role.as_str().into(),
            created_at: Some(user.created_at.into()),
        }))
    }
}

#[cfg(test)]
mod tests;

//! The shop's users service: registers customers, logs them in with
//! argon2-hashed passwords, and issues short-lived ES256 access tokens
//! signed with keys it rotates and publishes as a JWKS for the gateway.
//!
//! # Layout
//!
//! - [`account`]: what makes an email, password and display name valid.
//! - [`password`]: argon2id hashing and constant-time checks, off the async
//!   workers and a bounded number at a time.
//! - [`store`]: the bounded in-memory user table.
//! - [`signing_key`]: one P-256 key pair, its JWK and its kid.
//! - [`key_ring`]: current, next and previous keys; what the JWKS shows.
//! - [`rotation`]: the timer that rotates the ring.
//! - [`token`]: the claims and signing of access tokens.
//! - [`service`]: the gRPC edge (`shop.users.v1.UsersService`).

mod account;
mod key_ring;
mod password;
mod rotation;
mod service;
mod signing_key;
mod store;
mod token;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use clap::Parser;
use mesh::proto::shop::users::v1::users_service_server::UsersServiceServer;
use ring::rand::SystemRandom;

/// Command line of the users service.
#[derive(Debug, Parser)]
#[command(version, about = "The shop's users service")]
struct Args {
    #[command(flatten)]
    app: mesh::app::AppArgs,
    /// The `iss` claim of issued tokens: what verifiers are told to expect.
    #[arg(
        long,
        env = "USERS_ISSUER",
        default_value = "https://users.shop.mesh.local"
    )]
    issuer: String,
    /// The `aud` claim of issued tokens.
    #[arg(long, env = "USERS_AUDIENCE", default_value = "shop")]
    audience: String,
    /// Lifetime of an access token (e.g. 15m). Short: a token cannot be
    /// revoked before it expires.
    #[arg(long, env = "USERS_ACCESS_TOKEN_TTL", default_value = "15m",
          value_parser = mesh::identity::parse_lifetime)]
    access_token_ttl: Duration,
    /// How often the signing key rotates (e.g. 1h). At least the token
    /// lifetime plus `--clock-skew`, so a retired key outlives its tokens.
    #[arg(long, env = "USERS_KEY_ROTATION_INTERVAL", default_value = "1h",
          value_parser = mesh::identity::parse_lifetime)]
    key_rotation_interval: Duration,
    /// How far the verifiers' clocks may be behind (the gateway's
    /// `clockSkew`): a retired key stays published this long after its
    /// last token expired.
    #[arg(long, env = "USERS_CLOCK_SKEW", default_value = "60s",
          value_parser = mesh::identity::parse_lifetime)]
    clock_skew: Duration,
    /// Emails whose accounts get the `admin` role when they register
    /// (comma-separated). The first to register an address gets it: in the
    /// demo, register these yourself first.
    #[arg(
        long = "admin-email",
        env = "USERS_ADMIN_EMAILS",
        value_delimiter = ','
    )]
    admin_emails: Vec<String>,
    /// Most accounts this instance holds; registrations beyond are refused
    /// with RESOURCE_EXHAUSTED.
    #[arg(long, env = "USERS_MAX_USERS", default_value_t = 100_000,
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    max_users: u32,
    /// Most password hashes computed at once (each takes 19 MiB and tens of
    /// milliseconds of a core); further logins wait their turn.
    #[arg(long, env = "USERS_MAX_CONCURRENT_HASHES", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    max_concurrent_hashes: u32,
}

/// Refuses a rotation interval under which a key could be dropped from
/// the JWKS while tokens it signed are still valid.
fn check_rotation(args: &Args) -> anyhow::Result<()> {
    let minimum = key_ring::minimum_rotation_interval(args.access_token_ttl, args.clock_skew);
    anyhow::ensure!(
        args.key_rotation_interval >= minimum,
        "--key-rotation-interval {:?} is shorter than a token's lifetime plus the clock-skew \
         allowance ({minimum:?}): tokens would outlive the key that verifies them",
        args.key_rotation_interval
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    check_rotation(&args)?;
    mesh::app::run("users", &args.app, |shutdown| async move {
        let keys: rotation::SharedKeys = Arc::new(ArcSwap::from_pointee(
            key_ring::KeyRing::generate(&SystemRandom::new()).context("signing keys")?,
        ));
        tracing::info!(
            kid = keys.load().current().kid(),
            issuer = %args.issuer,
            audience = %args.audience,
            token_ttl = ?args.access_token_ttl,
            rotation = ?args.key_rotation_interval,
            "signing keys ready"
        );
        // Ends with the shutdown signal.
        let rotation = tokio::spawn(rotation::rotate_keys(
            keys.clone(),
            args.key_rotation_interval,
            args.access_token_ttl + args.clock_skew,
            shutdown,
        ));
        let users = service::Users::new(
            store::UserStore::new(args.max_users as usize),
            password::Passwords::new(args.max_concurrent_hashes as usize)
                .context("password hashing")?,
            keys,
            token::TokenPolicy {
                issuer: args.issuer.clone(),
                audience: args.audience.clone(),
                lifetime: args.access_token_ttl,
            },
            &args.admin_emails,
        );
        Ok::<_, anyhow::Error>(
            mesh::app::App::new(
                &[<UsersServiceServer<service::Users> as tonic::server::NamedService>::NAME],
                tonic::service::Routes::new(UsersServiceServer::new(users)),
            )
            .finishing(async move {
                let _ = rotation.await;
            }),
        )
    })
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_parse_with_their_defaults() {
        Args::command().debug_assert();
        let args = Args::try_parse_from(["users"]).expect("defaults parse");
        assert_eq!(args.issuer, "https://users.shop.mesh.local");
        assert_eq!(args.audience, "shop");
        assert_eq!(args.access_token_ttl, Duration::from_secs(15 * 60));
        assert_eq!(args.key_rotation_interval, Duration::from_secs(3_600));
        assert_eq!(args.max_users, 100_000);
        assert!(args.admin_emails.is_empty());
        assert!(check_rotation(&args).is_ok());

        let args =
            Args::try_parse_from(["users", "--admin-email", "a@x.test,b@x.test"]).expect("a list");
        assert_eq!(args.admin_emails, ["a@x.test", "b@x.test"]);
        assert!(Args::try_parse_from(["users", "--max-users", "0"]).is_err());
    }

    #[test]
    fn a_rotation_shorter_than_a_token_is_refused() {
        let args = Args::try_parse_from([
            "users",
            "--access-token-ttl",
            "15m",
            "--key-rotation-interval",
            "15m",
        ])
        .expect("parses");
        let error = check_rotation(&args).expect_err("too short").to_string();
        assert!(error.contains("--key-rotation-interval"), "{error}");
        let args = Args::try_parse_from([
            "users",
            "--access-token-ttl",
            "15m",
            "--key-rotation-interval",
            "16m",
        ])
        .expect("parses");
        assert!(check_rotation(&args).is_ok());
    }
}

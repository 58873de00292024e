//! The security benchmark (`bench security`): what authorization policies
//! and JWT verification cost the proxies in CPU per call. The requirement:
//! authorization (10 policies, 50 rules) and a JWT check at the gateway
//! cost less than 5 % of the proxies' CPU per call.
//!
//! One mesh with identities (authorization is only enforced on callers
//! that proved one): the gateway in front of echo-1 and echo-2 (3:1), the
//! route with retries and outlier detection. Two variants, interleaved
//! over the rounds on the same processes:
//!
//! - `baseline`: no request authentication, no authorization policy (the
//!   mesh default, all-authenticated, lets the gateway call);
//! - `guarded`: one `RequestAuthentication` (ES256 keys from a JWKS file)
//!   and 10 ALLOW policies on the echo service with 50 rules, of which
//!   only the very last matches the gateway's calls, so every call walks
//!   them all.
//!
//! Both send the same calls, bearer token included: without
//! authentication configured the gateway passes the header on untouched,
//! so only the checks differ (the guarded gateway forwards the token too,
//! `forwardOriginalToken`, as the baseline's does). The gateway caches verified tokens, so the
//! end-to-end figures are the cached path; the in-process figures beside
//! them are the worst case per token (one uncached ES256 verification)
//! and one evaluation of the same 50 rules.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use mesh::model::{AuthorizationPolicy, Bootstrap, RequestAuthentication};
use mesh::proto::mesh::v1::DeletePolicyRequest;
use meshctl::demo::PortAllocator;

use crate::client::Call;
use crate::load::{self, ClosedLoop, Throughput};
use crate::proc_stats;
use crate::process::Programs;
use crate::tail::loadavg;
use crate::topology::{self, SecureMesh};

/// The issuer of the benchmark's tokens.
const ISSUER: &str = "https://bench.issuer";

/// Their audience.
const AUDIENCE: &str = "bench";

/// Their subject: what the one matching rule allows.
const SUBJECT: &str = "bench-user";

/// The key id in the JWKS and the tokens' headers.
const KID: &str = "bench";

/// The request authentication's name.
const AUTHENTICATION: &str = "bench-users";

/// Authorization policies applied, and rules among them.
const POLICIES: usize = 10;
const RULES: usize = 50;

/// The method the benchmark calls, as policies name it.
const METHOD: &str = "bench.v1.EchoService/Echo";

/// The requirement: the checks cost less than this share of the proxies'
/// CPU per call, in percent.
const BUDGET_PERCENT: f64 = 5.0;

/// Flags of `bench security`.
#[derive(Debug, Clone, clap::Args)]
pub struct SecurityArgs {
    /// Rounds; each measures baseline then guarded.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds measured per variant and round.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Seconds of load before each measured window (not counted).
    #[arg(long, default_value_t = 1.0)]
    pub warmup_seconds: f64,
    /// HTTP/2 connections from the client to the gateway.
    #[arg(long, default_value_t = 2)]
    pub connections: usize,
    /// Concurrent streams per connection.
    #[arg(long, default_value_t = 16)]
    pub streams: usize,
    /// Request payload in bytes (unary `Echo`).
    #[arg(long, default_value_t = 16)]
    pub payload: usize,
    /// Distinct tokens verified in-process (uncached ES256).
    #[arg(long, default_value_t = 2_000)]
    pub verifications: usize,
    /// Policy evaluations in-process.
    #[arg(long, default_value_t = 100_000)]
    pub evaluations: usize,
    /// Directory with the mesh's binaries (default: beside this
    /// executable, built first when run by `cargo run`).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Do not build the mesh's binaries first.
    #[arg(long)]
    pub no_build: bool,
}

impl SecurityArgs {
    fn validate(&self) -> anyhow::Result<()> {
        ensure!((1..=20).contains(&self.rounds), "--rounds: 1 to 20");
        ensure!(
            (0.5..=600.0).contains(&self.seconds),
            "--seconds: 0.5 to 600"
        );
        ensure!(
            (0.0..=60.0).contains(&self.warmup_seconds),
            "--warmup-seconds: 0 to 60"
        );
        ensure!(
            (1..=64).contains(&self.connections),
            "--connections: 1 to 64"
        );
        ensure!((1..=256).contains(&self.streams), "--streams: 1 to 256");
        ensure!(self.payload <= 1 << 20, "--payload: at most 1 MiB");
        ensure!(
            (1..=100_000).contains(&self.verifications),
            "--verifications: 1 to 100000"
        );
        ensure!(
            (1..=10_000_000).contains(&self.evaluations),
            "--evaluations: 1 to 10000000"
        );
        Ok(())
    }
}

/// Which checks the proxies run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// Neither authentication nor authorization policies.
    Baseline,
    /// The request authentication and the 10 policies.
    Guarded,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::Guarded => "guarded",
        }
    }
}

/// One measured window.
struct Sample {
    variant: Variant,
    round: usize,
    throughput: Throughput,
    /// Each proxy's CPU over the window, in the order of
    /// [`topology::Running::proxies`].
    per_proxy: Vec<Duration>,
}

impl Sample {
    /// CPU microseconds per successful call, of all proxies.
    fn us_per_call(&self) -> f64 {
        self.throughput.cpu_ms_per_1000()
    }

    /// CPU microseconds per successful call of proxy `i`.
    fn proxy_us_per_call(&self, i: usize) -> f64 {
        self.per_proxy.get(i).map_or(0.0, |cpu| {
            cpu.as_secs_f64() * 1e6 / self.throughput.completed.max(1) as f64
        })
    }
}

/// The signing key of the benchmark's issuer (ES256, P-256).
struct SigningKey {
    encoding: jsonwebtoken::EncodingKey,
    /// The public point's coordinates, base64url without padding.
    x: String,
    y: String,
}

impl SigningKey {
    fn generate() -> anyhow::Result<Self> {
        use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| anyhow::anyhow!("generating an ES256 key"))?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| anyhow::anyhow!("reading the generated ES256 key"))?;
        // Uncompressed point: 0x04, then x and y, 32 bytes each.
        let point = pair.public_key().as_ref();
        ensure!(point.len() == 65, "unexpected P-256 public key length");
        Ok(Self {
            encoding: jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()),
            x: URL_SAFE_NO_PAD.encode(&point[1..33]),
            y: URL_SAFE_NO_PAD.encode(&point[33..]),
        })
    }

    /// The key set the control plane reads (public key only).
    fn jwks(&self) -> String {
        serde_json::json!({
            "keys": [{
                "kty": "EC",
                "crv": "P-256",
                "x": self.x,
                "y": self.y,
                "kid": KID,
                "alg": "ES256",
                "use": "sig",
            }]
        })
        .to_string()
    }

    /// A token valid for an hour; `jti` makes tokens distinct.
    fn mint(&self, jti: usize) -> anyhow::Result<String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .context("the clock is before 1970")?
            .as_secs();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(KID.to_owned());
        let claims = serde_json::json!({
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": SUBJECT,
            "iat": now,
            "exp": now + 3600,
            "jti": jti.to_string(),
        });
        jsonwebtoken::encode(&header, &claims, &self.encoding).context("signing a token")
    }

    /// Verification as the gateway does it: header, key by kid, ES256
    /// with issuer, audience and the required claims.
    fn decoding(&self) -> anyhow::Result<(jsonwebtoken::DecodingKey, jsonwebtoken::Validation)> {
        let key = jsonwebtoken::DecodingKey::from_ec_components(&self.x, &self.y)
            .context("the public key")?;
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = mesh::model::DEFAULT_CLOCK_SKEW.as_secs();
        Ok((key, validation))
    }
}

/// The guarded variant's documents: the request authentication reading
/// `jwks_file`, and 10 ALLOW policies on the echo service with 50 rules,
/// 49 of which do not match the gateway's calls (other services, other
/// identities, claims the token lacks, other methods); the one that does
/// is the last rule of the last policy.
fn documents(jwks_file: &Path) -> anyhow::Result<Bootstrap> {
    let authentication: RequestAuthentication = serde_json::from_value(serde_json::json!({
        "kind": "RequestAuthentication",
        "metadata": { "name": AUTHENTICATION },
        "spec": {
            "issuer": ISSUER,
            "audiences": [AUDIENCE],
            "jwks": { "file": jwks_file.display().to_string() },
            // The token goes on to the echo sidecars and apps as it does
            // in the baseline, where nothing strips it: `authorization`
            // is never HPACK-indexed, so stripping it saves two hops of
            // encoding a ~400-byte value and would be credited to the
            // checks.
            "forwardOriginalToken": true,
        },
    }))
    .context("the request authentication")?;
    authentication
        .validate()
        .context("the request authentication")?;
    let per_policy = RULES / POLICIES;
    let mut policies = Vec::new();
    for p in 0..POLICIES {
        let mut rules = Vec::new();
        for r in 0..per_policy {
            let i = p * per_policy + r;
            let rule = if i == RULES - 1 {
                serde_json::json!({
                    "from": [{ "gateway": { "claims": { "sub": SUBJECT } } }],
                    "to": [format!("{}/*", crate::echo::GRPC_SERVICE)],
                })
            } else {
                non_matching_rule(i)
            };
            rules.push(rule);
        }
        let policy: AuthorizationPolicy = serde_json::from_value(serde_json::json!({
            "kind": "AuthorizationPolicy",
            "metadata": { "name": policy_name(p) },
            "spec": {
                "service": crate::echo::SERVICE,
                "action": "ALLOW",
                "rules": rules,
            },
        }))
        .with_context(|| format!("policy {}", policy_name(p)))?;
        policy
            .validate()
            .with_context(|| format!("policy {}", policy_name(p)))?;
        policies.push(policy);
    }
    Ok(Bootstrap {
        request_authentications: vec![authentication],
        authorization_policies: policies,
        ..Bootstrap::default()
    })
}

fn policy_name(p: usize) -> String {
    format!("bench-authz-{}", p + 1)
}

/// Rule `i` of those the gateway's calls do not match, of five kinds in
/// turn, each with a caller and a method pattern, as users write them.
fn non_matching_rule(i: usize) -> serde_json::Value {
    let echo = crate::echo::GRPC_SERVICE;
    match i % 5 {
        0 => serde_json::json!({
            "from": [{ "service": format!("orders-{i}") }, { "service": format!("reports-{i}") }],
            "to": [format!("{echo}/*")],
        }),
        1 => serde_json::json!({
            "from": [{ "identity": format!("spiffe://{}/svc/batch-{i}", mesh::identity::DEFAULT_TRUST_DOMAIN) }],
            "to": [format!("{echo}/Echo"), format!("{echo}/EchoStream")],
        }),
        2 => serde_json::json!({
            "from": [{ "gateway": { "claims": { "sub": format!("user-{i}") } } }],
            "to": [format!("{echo}/*")],
        }),
        3 => serde_json::json!({
            "from": [{ "gateway": { "claims": { "role": "admin", "team": format!("team-{i}") } } }],
            "to": ["*"],
        }),
        _ => serde_json::json!({
            "from": [{ "gateway": {} }],
            "to": [format!("bench.v1.AdminService{i}/*"), format!("{echo}/Reset*")],
        }),
    }
}

/// Runs the security benchmark and prints its section.
pub async fn run(args: SecurityArgs) -> anyhow::Result<()> {
    args.validate()?;
    if !args.no_build && args.bin_dir.is_none() {
        crate::datapath::build_mesh_binaries().await?;
    }
    let programs = Programs::find(args.bin_dir.clone(), None, None)?;
    let key = SigningKey::generate()?;
    let keys_dir = tempfile::Builder::new()
        .prefix("bench-security-")
        .tempdir()
        .context("a directory for the key set")?;
    let jwks_file = keys_dir.path().join("jwks.json");
    std::fs::write(&jwks_file, key.jwks())
        .with_context(|| format!("write {}", jwks_file.display()))?;
    let documents = documents(&jwks_file)?;

    // In-process first, before the mesh takes the cores.
    eprintln!(
        "in-process: {} uncached ES256 verifications, {} evaluations of {POLICIES} policies ({RULES} rules)",
        args.verifications, args.evaluations
    );
    let verify_us = time_verifications(&key, args.verifications)?;
    let authorize_ns = time_authorizations(&documents.authorization_policies, args.evaluations)?;

    let loadavg_before = loadavg();
    let mut ports = PortAllocator::new(std::process::id().wrapping_mul(17));
    eprintln!("starting the control plane, etcd, the gateway and two echo instances (mTLS)");
    let mut mesh = topology::start_security(&programs, &mut ports)
        .await
        .context("the security topology")?;
    let token = key.mint(0)?;
    let call = Call::unary(mesh.running.target, args.payload)?
        .with_header("authorization", &format!("Bearer {token}"))?;
    let shape = ClosedLoop {
        connections: args.connections,
        streams: args.streams,
        warmup: Duration::from_secs_f64(args.warmup_seconds),
        duration: Duration::from_secs_f64(args.seconds),
    };
    let ticks = proc_stats::ticks_per_second();
    let mut samples = Vec::new();
    let mut current = Variant::Baseline;
    for round in 1..=args.rounds {
        for variant in [Variant::Baseline, Variant::Guarded] {
            if variant != current {
                switch(&mut mesh, &documents, variant).await?;
                current = variant;
            }
            let sample = measure(&mesh, &call, shape, ticks, variant, round).await?;
            mesh.running.check_alive()?;
            let t = &sample.throughput;
            eprintln!(
                "  round {round} {:<8}: {:.0} calls/s, {:.1} µs CPU per call, {} errors",
                variant.name(),
                t.per_second(),
                sample.us_per_call(),
                t.errors
            );
            if variant == Variant::Guarded && t.errors > 0 {
                bail!(
                    "{} guarded calls failed (the policies refuse the benchmark's own calls?): {}",
                    t.errors,
                    t.first_error.as_deref().unwrap_or("no error recorded")
                );
            }
            ensure!(
                t.completed > 0,
                "no call succeeded in the {} window",
                variant.name()
            );
            samples.push(sample);
        }
    }

    let mut out = String::from("## mesh security benchmark\n\n");
    let _ = writeln!(
        out,
        "- mesh with identities (mTLS, one control-plane replica on etcd): gateway ──3:1──► \
         echo-1 / echo-2 sidecars, route with retries and outlier detection; unary Echo of \
         {} B, closed loop over {} connections × {} streams, {} s measured after {} s of \
         warm-up, {} rounds interleaving baseline and guarded on the same processes; CPU of \
         the three proxies (gateway + both echo sidecars) from /proc over each window",
        args.payload,
        args.connections,
        args.streams,
        args.seconds,
        args.warmup_seconds,
        args.rounds
    );
    let _ = writeln!(
        out,
        "- baseline: no RequestAuthentication, no AuthorizationPolicy (mesh default \
         all-authenticated); guarded: one RequestAuthentication (ES256, JWKS from a file) \
         and {POLICIES} ALLOW policies on `{}` with {RULES} rules, the only matching one \
         last (gateway callers with `sub: {SUBJECT}`); every call carries the same \
         `authorization: Bearer` token in both (one token: the gateway's verified-token \
         cache answers after the first call), forwarded downstream in both \
         (`forwardOriginalToken: true`: the baseline's gateway passes it on untouched)",
        crate::echo::SERVICE
    );
    let _ = writeln!(
        out,
        "- bench built {}; mesh binaries from {}",
        if cfg!(debug_assertions) {
            "without optimizations (dev profile): absolute figures are not release figures"
        } else {
            "with optimizations (release profile)"
        },
        programs.bin_dir.display()
    );
    let _ = writeln!(
        out,
        "- loadavg before / after: {loadavg_before} / {}\n",
        loadavg()
    );
    out.push_str(&render(&samples, &mesh.running.proxies));
    let _ = writeln!(
        out,
        "\nin-process (no mesh), one core:\n\n\
         | check | count | cost each |\n|---|---:|---:|\n\
         | uncached ES256 JWT verification (`decode_header` + `decode`, distinct tokens) | {} | {verify_us:.1} µs |\n\
         | `mesh::model::authorize`, {POLICIES} policies / {RULES} rules, last rule matches | {} | {authorize_ns:.0} ns |",
        args.verifications, args.evaluations
    );
    println!("{out}");
    Ok(())
}

/// Applies (guarded) or deletes (baseline) the documents, then waits until
/// every proxy runs the resulting table: the gateway with the key set (or
/// without it), the echo sidecars at least at the gateway's version.
async fn switch(mesh: &mut SecureMesh, documents: &Bootstrap, to: Variant) -> anyhow::Result<()> {
    let gateway = mesh
        .admins
        .iter()
        .find(|(name, _)| name == "gateway")
        .map(|(_, admin)| *admin)
        .context("the topology has no gateway")?;
    let has_keys = |config: &serde_json::Value| config["jwks"].get(AUTHENTICATION).is_some();
    let revision = match to {
        Variant::Guarded => {
            let revision = meshctl::demo::apply_documents(
                &mesh.control_plane,
                documents,
                Some(&mesh.identity),
            )
            .await
            .context("applying the security documents")?;
            let config = topology::wait_for_config(
                &mut mesh.running,
                "gateway",
                gateway,
                "the key set",
                |c| has_keys(c) && topology::config_version(c).is_some_and(|v| v >= revision),
            )
            .await?;
            topology::config_version(&config).unwrap_or(revision)
        }
        Variant::Baseline => {
            let mut admin = meshctl::demo::admin_client(&mesh.control_plane, Some(&mesh.identity))
                .await
                .context("the control plane's admin API")?;
            for policy in &documents.authorization_policies {
                admin
                    .delete_authorization_policy(DeletePolicyRequest {
                        name: policy.metadata.name.clone(),
                        expected_revision: None,
                    })
                    .await
                    .with_context(|| format!("deleting {}", policy.metadata.name))?;
            }
            // Last: a gateway without the key set runs a table with every
            // delete before it.
            admin
                .delete_request_authentication(DeletePolicyRequest {
                    name: AUTHENTICATION.to_owned(),
                    expected_revision: None,
                })
                .await
                .context("deleting the request authentication")?;
            let config = topology::wait_for_config(
                &mut mesh.running,
                "gateway",
                gateway,
                "a table without the key set",
                |c| !has_keys(c) && topology::config_version(c).is_some(),
            )
            .await?;
            topology::config_version(&config).context("the gateway's table version")?
        }
    };
    let others: Vec<(String, SocketAddr)> = mesh
        .admins
        .iter()
        .filter(|(name, _)| name != "gateway")
        .cloned()
        .collect();
    for (name, admin) in others {
        topology::wait_for_config(
            &mut mesh.running,
            &name,
            admin,
            &format!("table version {revision}"),
            |c| topology::config_version(c).is_some_and(|v| v >= revision),
        )
        .await?;
    }
    Ok(())
}

/// One closed-loop window, with each proxy's CPU sampled at its edges.
async fn measure(
    mesh: &SecureMesh,
    call: &Call,
    shape: ClosedLoop,
    ticks: u64,
    variant: Variant,
    round: usize,
) -> anyhow::Result<Sample> {
    let pids: Vec<u32> = mesh.running.proxies.iter().map(|(_, pid)| *pid).collect();
    // Each sample of the total also records each proxy's share.
    let edges: Mutex<Vec<Vec<Duration>>> = Mutex::new(Vec::new());
    let cpu = || {
        let each: Vec<Duration> = pids
            .iter()
            .map(|&pid| proc_stats::cpu_time(&[pid], ticks))
            .collect();
        let total = each.iter().sum();
        edges.lock().unwrap_or_else(|e| e.into_inner()).push(each);
        total
    };
    let throughput = load::closed_loop(mesh.running.target, call, shape, &cpu).await?;
    let edges = edges.into_inner().unwrap_or_else(|e| e.into_inner());
    let per_proxy = match &edges[..] {
        [before, after] => after
            .iter()
            .zip(before)
            .map(|(a, b)| a.saturating_sub(*b))
            .collect(),
        _ => bail!(
            "the load generator sampled CPU {} times, not twice",
            edges.len()
        ),
    };
    Ok(Sample {
        variant,
        round,
        throughput,
        per_proxy,
    })
}

/// Microseconds per uncached verification of `count` distinct tokens.
fn time_verifications(key: &SigningKey, count: usize) -> anyhow::Result<f64> {
    let tokens = (0..count)
        .map(|i| key.mint(i + 1))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (decoding, validation) = key.decoding()?;
    let started = Instant::now();
    for token in &tokens {
        let header = jsonwebtoken::decode_header(token).context("a minted token's header")?;
        ensure!(header.kid.as_deref() == Some(KID), "a minted token's kid");
        let data = jsonwebtoken::decode::<BTreeMap<String, serde_json::Value>>(
            token,
            &decoding,
            &validation,
        )
        .context("verifying a minted token")?;
        std::hint::black_box(data);
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / count as f64)
}

/// Nanoseconds per evaluation of `policies` for the gateway's call, which
/// must be allowed by the last rule of the last policy.
fn time_authorizations(policies: &[AuthorizationPolicy], count: usize) -> anyhow::Result<f64> {
    use mesh::identity::{SpiffeId, Workload, DEFAULT_TRUST_DOMAIN};
    use mesh::model::{authorize, Caller, DefaultAuthorization};
    let gateway = SpiffeId::new(DEFAULT_TRUST_DOMAIN, Workload::Gateway("gateway".into()))
        .context("the gateway's SPIFFE ID")?;
    let claims: BTreeMap<String, String> = [("sub", SUBJECT), ("iss", ISSUER)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let caller = Caller {
        identity: Some(&gateway),
        claims: Some(&claims),
        permissive: false,
    };
    let decide = || {
        authorize(
            std::hint::black_box(policies),
            DefaultAuthorization::AllAuthenticated,
            crate::echo::SERVICE,
            std::hint::black_box(METHOD),
            &caller,
        )
    };
    let decision = decide();
    let last = policy_name(POLICIES - 1);
    ensure!(
        decision.allowed
            && decision.policy.as_deref() == Some(last.as_str())
            && decision.rule == Some(RULES / POLICIES - 1),
        "the gateway's call must be allowed by the last rule of {last}, not: {}",
        decision.reason
    );
    let started = Instant::now();
    for _ in 0..count {
        std::hint::black_box(decide());
    }
    Ok(started.elapsed().as_secs_f64() * 1e9 / count as f64)
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn render(samples: &[Sample], proxies: &[(String, u32)]) -> String {
    let mut out = String::from("| round | variant | calls/s | CPU µs/call (all proxies) |");
    for (name, _) in proxies {
        let _ = write!(out, " {name} µs/call |");
    }
    out.push_str(" errors |\n|---:|---|---:|---:|");
    for _ in proxies {
        out.push_str("---:|");
    }
    out.push_str("---:|\n");
    for s in samples {
        let _ = write!(
            out,
            "| {} | {} | {:.0} | {:.1} |",
            s.round,
            s.variant.name(),
            s.throughput.per_second(),
            s.us_per_call()
        );
        for i in 0..proxies.len() {
            let _ = write!(out, " {:.1} |", s.proxy_us_per_call(i));
        }
        let _ = writeln!(out, " {} |", s.throughput.errors);
    }
    let of = |variant: Variant, f: &dyn Fn(&Sample) -> f64| {
        median(
            samples
                .iter()
                .filter(|s| s.variant == variant)
                .map(f)
                .collect(),
        )
    };
    let _ = write!(
        out,
        "\nmedians over the rounds:\n\n| variant | calls/s | CPU µs/call (all proxies) |"
    );
    for (name, _) in proxies {
        let _ = write!(out, " {name} µs/call |");
    }
    out.push_str("\n|---|---:|---:|");
    for _ in proxies {
        out.push_str("---:|");
    }
    out.push('\n');
    for variant in [Variant::Baseline, Variant::Guarded] {
        let _ = write!(
            out,
            "| {} | {:.0} | {:.1} |",
            variant.name(),
            of(variant, &|s| s.throughput.per_second()),
            of(variant, &Sample::us_per_call)
        );
        for i in 0..proxies.len() {
            let _ = write!(out, " {:.1} |", of(variant, &|s| s.proxy_us_per_call(i)));
        }
        out.push('\n');
    }
    let base = of(Variant::Baseline, &Sample::us_per_call);
    let guarded = of(Variant::Guarded, &Sample::us_per_call);
    let overhead = 100.0 * (guarded - base) / base.max(1e-9);
    let base_rate = of(Variant::Baseline, &|s| s.throughput.per_second());
    let guarded_rate = of(Variant::Guarded, &|s| s.throughput.per_second());
    let _ = writeln!(
        out,
        "\noverhead of guarded vs baseline: {overhead:+.1} % CPU per call (all proxies), \
         {:+.1} % calls/s; requirement < {BUDGET_PERCENT} % CPU per call: {}",
        100.0 * (guarded_rate - base_rate) / base_rate.max(1e-9),
        if overhead < BUDGET_PERCENT {
            "met"
        } else {
            "NOT met"
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifty_rules_in_ten_policies_and_only_the_last_allows_the_gateway() {
        let documents = documents(Path::new("/tmp/jwks.json")).expect("documents");
        let policies = &documents.authorization_policies;
        assert_eq!(policies.len(), POLICIES);
        assert_eq!(
            policies.iter().map(|p| p.spec.rules.len()).sum::<usize>(),
            RULES
        );
        assert!(time_authorizations(policies, 10).is_ok());
        // Without the last rule, nothing allows the gateway's call.
        let mut trimmed = policies.clone();
        if let Some(last) = trimmed.last_mut() {
            last.spec.rules.pop();
        }
        assert!(time_authorizations(&trimmed, 1).is_err());
    }

    #[test]
    fn minted_tokens_verify_with_the_published_key() {
        let key = SigningKey::generate().expect("key");
        assert!(time_verifications(&key, 3).is_ok());
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&key.jwks()).expect("a JWKS");
        assert_eq!(jwks.keys.len(), 1);
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0]), 2.5);
        assert_eq!(median(Vec::new()), 0.0);
    }
}

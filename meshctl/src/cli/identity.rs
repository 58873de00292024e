//! `meshctl identity ...`: the CA's files and operator certificates, made
//! locally from the CA's files (the issuer key never goes over the wire);
//! and `meshctl token ...`: join tokens, through the control plane.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use mesh::identity::{SpiffeId, Workload};
use mesh::proto::mesh::v1::{CreateTokenRequest, ListTokensRequest, RevokeTokenRequest};
use serde::Serialize;

use super::output::{self, OutputFormat, Table};
use super::{ControlPlaneArgs, GrpcError};
use mesh::identity::OperatorRole;
use mesh_ca::{self as ca, files};

/// `meshctl identity` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum IdentityCommand {
    /// Make a trust anchor and an issuer for a trust domain.
    Init(InitArgs),
    /// Make an operator certificate (and its key) for meshctl.
    IssueOperator(IssueOperatorArgs),
    /// Make etcd's TLS files: a server certificate for etcd and a client
    /// certificate for the control plane, both signed by the mesh issuer.
    IssueEtcd(IssueEtcdArgs),
}

/// Options of `meshctl identity init`.
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// Directory to write `anchor.*`, `issuer.*` and `bundle.crt` to.
    #[arg(long)]
    pub out: PathBuf,
    /// The trust domain.
    #[arg(long, default_value = mesh::identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Lifetime of the anchor.
    #[arg(long, default_value = "3650d", value_parser = mesh::identity::parse_lifetime)]
    pub anchor_lifetime: Duration,
    /// Lifetime of the issuer.
    #[arg(long, default_value = "365d", value_parser = mesh::identity::parse_lifetime)]
    pub issuer_lifetime: Duration,
}

/// Options of `meshctl identity issue-operator`.
#[derive(Debug, Clone, clap::Args)]
pub struct IssueOperatorArgs {
    /// The operator's name (a DNS label): audit lines show it.
    pub name: String,
    /// What the operator may do.
    #[arg(long, value_enum)]
    pub role: OperatorRole,
    /// The CA's directory (`meshctl identity init --out`).
    #[arg(long)]
    pub ca_dir: PathBuf,
    /// The trust domain.
    #[arg(long, default_value = mesh::identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Lifetime of the certificate.
    #[arg(long, default_value = "720h", value_parser = mesh::identity::parse_lifetime)]
    pub lifetime: Duration,
    /// Directory for `<name>.crt`, `<name>.key` and a meshctl config
    /// (`<name>.meshconfig`) pointing at them.
    #[arg(long)]
    pub out: PathBuf,
    /// Control-plane replicas the config names (`host:port`, comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.1:15010,127.0.0.1:15011"
    )]
    pub control_planes: Vec<String>,
}

/// Runs `meshctl identity ...`.
pub fn run(command: IdentityCommand) -> anyhow::Result<()> {
    match command {
        IdentityCommand::Init(args) => {
            let report = ca::init(
                &args.out,
                &args.trust_domain,
                args.anchor_lifetime,
                args.issuer_lifetime,
            )?;
            for file in &report.files {
                println!("wrote {}", file.display());
            }
            println!(
                "Give the control plane --identity-dir {} (it needs issuer.* and bundle.crt); \
                 keep anchor.key offline: only a rotation needs it.",
                args.out.display()
            );
            Ok(())
        }
        IdentityCommand::IssueOperator(args) => {
            let config = issue_operator(&args)?;
            println!("wrote {}", config.display());
            println!("export MESHCONFIG={}", config.display());
            Ok(())
        }
        IdentityCommand::IssueEtcd(args) => {
            let files = issue_etcd(&args)?;
            for file in [
                &files.ca,
                &files.server_cert,
                &files.server_key,
                &files.client_cert,
                &files.client_key,
            ] {
                println!("wrote {}", file.display());
            }
            let dir = args.out.display();
            println!(
                "etcd: --client-cert-auth --trusted-ca-file {dir}/{ca} --cert-file {dir}/{sc} \
                 --key-file {dir}/{sk} and https:// client URLs; control plane: --etcd-ca \
                 {dir}/{ca} --etcd-cert {dir}/{cc} --etcd-key {dir}/{ck}",
                ca = EtcdFiles::CA,
                sc = EtcdFiles::SERVER_CERT,
                sk = EtcdFiles::SERVER_KEY,
                cc = EtcdFiles::CLIENT_CERT,
                ck = EtcdFiles::CLIENT_KEY,
            );
            Ok(())
        }
    }
}

/// Makes the operator's certificate, key and meshctl config; returns the
/// config's path.
pub fn issue_operator(args: &IssueOperatorArgs) -> anyhow::Result<PathBuf> {
    let id = SpiffeId::new(&args.trust_domain, Workload::Operator(args.name.clone()))?;
    let (cert_path, key_path) = issue_files(
        &args.ca_dir,
        &id,
        &[args.role.organization()],
        args.lifetime,
        &args.out,
        &args.name,
    )?;
    let config = super::connect::MeshConfig {
        control_planes: args.control_planes.clone(),
        trust_domain: args.trust_domain.clone(),
        trust_bundle: absolute(&args.ca_dir.join(files::BUNDLE))?,
        certificate: absolute(&cert_path)?,
        key: absolute(&key_path)?,
    };
    let config_path = args.out.join(format!("{}.meshconfig", args.name));
    std::fs::write(&config_path, serde_yaml_ng::to_string(&config)?)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    Ok(config_path)
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    Ok(std::env::current_dir()?.join(path))
}

/// Options of `meshctl identity issue-etcd`.
#[derive(Debug, Clone, clap::Args)]
pub struct IssueEtcdArgs {
    /// The CA's directory (`meshctl identity init --out`).
    #[arg(long)]
    pub ca_dir: PathBuf,
    /// Directory for `ca.crt`, `server.crt`/`.key` (etcd's) and
    /// `client.crt`/`.key` (the control plane's).
    #[arg(long)]
    pub out: PathBuf,
    /// The trust domain (the client certificate names the control plane's
    /// SPIFFE ID in it).
    #[arg(long, default_value = mesh::identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Lifetime of both certificates.
    #[arg(long, default_value = "365d", value_parser = mesh::identity::parse_lifetime)]
    pub lifetime: Duration,
    /// More names for the server certificate, besides `localhost`,
    /// `127.0.0.1` and `::1` (which the control plane checks): e.g.
    /// `*.etcd.mesh.svc` for etcdctl in Kubernetes. IP addresses work too.
    #[arg(long = "san", value_delimiter = ',')]
    pub extra_names: Vec<String>,
}

/// What `meshctl identity issue-etcd` writes, by file name.
#[derive(Debug, Clone)]
pub struct EtcdFiles {
    /// The trust anchors (a copy of the CA's bundle): etcd's
    /// `--trusted-ca-file` and the control plane's `--etcd-ca`.
    pub ca: PathBuf,
    /// etcd's certificate chain (leaf, issuer).
    pub server_cert: PathBuf,
    /// etcd's key (0600).
    pub server_key: PathBuf,
    /// The control plane's client certificate chain.
    pub client_cert: PathBuf,
    /// The control plane's client key (0600).
    pub client_key: PathBuf,
}

impl EtcdFiles {
    /// File names in the output directory (and keys of the Kubernetes
    /// Secrets made from them).
    pub const CA: &'static str = "ca.crt";
    /// etcd's certificate.
    pub const SERVER_CERT: &'static str = "server.crt";
    /// etcd's key.
    pub const SERVER_KEY: &'static str = "server.key";
    /// The control plane's certificate.
    pub const CLIENT_CERT: &'static str = "client.crt";
    /// The control plane's key.
    pub const CLIENT_KEY: &'static str = "client.key";

    fn in_dir(dir: &Path) -> Self {
        Self {
            ca: dir.join(Self::CA),
            server_cert: dir.join(Self::SERVER_CERT),
            server_key: dir.join(Self::SERVER_KEY),
            client_cert: dir.join(Self::CLIENT_CERT),
            client_key: dir.join(Self::CLIENT_KEY),
        }
    }
}

/// Makes etcd's TLS files, signed by the mesh issuer so one trust bundle
/// covers every hop. The server certificate names `localhost` (the name
/// the control plane checks, whatever address it dials) and loopback IPs;
/// etcd with `--client-cert-auth` checks only that a client's chain ends
/// at a trusted anchor, so the control plane's client certificate is its
/// own SPIFFE identity (`spiffe://<td>/control-plane`, client auth).
pub fn issue_etcd(args: &IssueEtcdArgs) -> anyhow::Result<EtcdFiles> {
    use rcgen::{
        CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SerialNumber, PKCS_ECDSA_P256_SHA256,
    };
    let issuer_cert = args.ca_dir.join(files::ISSUER_CERT);
    let issuer_key = args.ca_dir.join(files::ISSUER_KEY);
    let read = |path: &Path| {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    };
    // The client certificate, through the authority (which also checks
    // that the issuer's certificate and key belong together).
    let authority =
        ca::Authority::load(&issuer_cert, &issuer_key, &args.trust_domain, args.lifetime)?;
    let id = SpiffeId::new(&args.trust_domain, Workload::ControlPlane)?;
    let (client_chain, client_key) = authority.issue_with_new_key(&id, &[], args.lifetime)?;

    // The server certificate: DNS and IP names, which the authority does
    // not issue (mesh certificates carry SPIFFE IDs only).
    let issuer_pem = read(&issuer_cert)?;
    let issuer_der = mesh::identity::certificate::certificates_from_pem(&issuer_pem)?
        .into_iter()
        .next()
        .with_context(|| format!("{} holds no certificate", issuer_cert.display()))?;
    let issuer = Issuer::from_ca_cert_der(
        &issuer_der,
        KeyPair::from_pem(&read(&issuer_key)?).context("issuer key")?,
    )
    .context("issuer certificate")?;
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".into(), "::1".into()];
    names.extend(args.extra_names.iter().filter(|n| !n.is_empty()).cloned());
    let mut params = CertificateParams::new(names).context("server certificate names")?;
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, "etcd");
    params.distinguished_name = subject;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    // Client auth too: etcd members present it to each other as peers.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - Duration::from_secs(60);
    params.not_after = now + args.lifetime;
    let server_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let server = params
        .signed_by(&server_key, &issuer)
        .context("signing etcd's certificate")?;

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let out = EtcdFiles::in_dir(&args.out);
    let bundle = read(&args.ca_dir.join(files::BUNDLE))?;
    std::fs::write(&out.ca, bundle)
        .with_context(|| format!("cannot write {}", out.ca.display()))?;
    ca::write_credential(
        &[server.der().clone(), issuer_der],
        &server_key.serialize_pem(),
        &out.server_cert,
        &out.server_key,
    )?;
    ca::write_credential(
        &client_chain,
        &client_key,
        &out.client_cert,
        &out.client_key,
    )?;
    Ok(out)
}

/// `meshctl token` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum TokenCommand {
    /// Make a join token for one service (or gateway); prints it once.
    Create(CreateTokenArgs),
    /// List tokens (never their secrets).
    List(ListTokenArgs),
    /// Revoke a token by id: no certificate is issued for it again.
    Revoke {
        /// The token's id (its part before the dot).
        id: String,
    },
}

/// Options of `meshctl token create`.
#[derive(Debug, Clone, clap::Args)]
pub struct CreateTokenArgs {
    /// The mesh service the token proves.
    #[arg(long, conflicts_with = "gateway", required_unless_present = "gateway")]
    pub service: Option<String>,
    /// The gateway name the token proves.
    #[arg(long)]
    pub gateway: Option<String>,
    /// Lifetime.
    #[arg(long, default_value = "720h", value_parser = mesh::identity::parse_lifetime)]
    pub ttl: Duration,
    /// Write the token to this file (mode 0600) instead of printing it.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Options of `meshctl token list`.
#[derive(Debug, Clone, clap::Args)]
pub struct ListTokenArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

#[derive(Debug, Serialize)]
struct TokenDocument {
    id: String,
    identity: String,
    created_unix: i64,
    expires_unix: i64,
    revoked: bool,
    created_by: String,
}

/// Runs `meshctl token ...`.
pub async fn run_token(cp: &ControlPlaneArgs, command: TokenCommand) -> anyhow::Result<()> {
    let mut client = cp.connect().await?;
    match command {
        TokenCommand::Create(args) => {
            let response = client
                .create_token(CreateTokenRequest {
                    service: args.service.unwrap_or_default(),
                    gateway: args.gateway.unwrap_or_default(),
                    ttl_seconds: i64::try_from(args.ttl.as_secs()).unwrap_or(i64::MAX),
                })
                .await
                .map_err(GrpcError)
                .context("cannot create the token")?
                .into_inner();
            match args.out {
                Some(path) => {
                    write_private(&path, &response.token)?;
                    let info = response.info.unwrap_or_default();
                    println!(
                        "token {} for {} written to {}",
                        info.id,
                        info.identity,
                        path.display()
                    );
                }
                None => println!("{}", response.token),
            }
            Ok(())
        }
        TokenCommand::List(args) => {
            let tokens = client
                .list_tokens(ListTokensRequest {})
                .await
                .map_err(GrpcError)
                .context("cannot list tokens")?
                .into_inner()
                .tokens;
            let docs: Vec<TokenDocument> = tokens
                .into_iter()
                .map(|t| TokenDocument {
                    id: t.id,
                    identity: t.identity,
                    created_unix: t.created_unix,
                    expires_unix: t.expires_unix,
                    revoked: t.revoked,
                    created_by: t.created_by,
                })
                .collect();
            let text = match args.output {
                OutputFormat::Json => output::json(&docs)?,
                OutputFormat::Yaml => output::yaml_stream(&docs)?,
                OutputFormat::Table => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs() as i64)
                        .unwrap_or(0);
                    let mut table = Table::new(["ID", "IDENTITY", "EXPIRES IN", "STATE", "BY"]);
                    for t in &docs {
                        let state = if t.revoked {
                            "REVOKED"
                        } else if t.expires_unix <= now {
                            "EXPIRED"
                        } else {
                            "valid"
                        };
                        table.row([
                            t.id.clone(),
                            t.identity.clone(),
                            human_seconds(t.expires_unix - now),
                            state.to_owned(),
                            t.created_by.clone(),
                        ]);
                    }
                    table.render()
                }
            };
            output::print(&text)
        }
        TokenCommand::Revoke { id } => {
            client
                .revoke_token(RevokeTokenRequest { id: id.clone() })
                .await
                .map_err(GrpcError)
                .with_context(|| format!("cannot revoke token {id}"))?;
            println!("token {id} revoked");
            Ok(())
        }
    }
}

/// Writes a secret to a new file readable by its owner only.
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// `90061` -> `1d1h`; negative -> `-` (past).
pub fn human_seconds(seconds: i64) -> String {
    if seconds <= 0 {
        return "-".to_owned();
    }
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds % 86_400 / 3600,
        seconds % 3600 / 60,
        seconds % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::human_seconds;

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(human_seconds(-5), "-");
        assert_eq!(human_seconds(42), "42s");
        assert_eq!(human_seconds(125), "2m5s");
        assert_eq!(human_seconds(3 * 3600 + 60), "3h1m");
        assert_eq!(human_seconds(90_061), "1d1h");
    }
}

/// Options of `meshctl identity issue`: a workload certificate and key
/// made locally from the CA's files, for a proxy that does not certify
/// itself with a join token (e.g. Envoy in the benchmark, given the same
/// identities as the mesh's sidecars).
#[derive(Debug, Clone, clap::Args)]
pub struct IssueArgs {
    /// The service the certificate names (`spiffe://<td>/svc/<service>`).
    #[arg(long)]
    pub service: String,
    /// The CA's directory (`meshctl identity init --out`).
    #[arg(long)]
    pub ca_dir: PathBuf,
    /// The trust domain.
    #[arg(long, default_value = mesh::identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Lifetime of the certificate.
    #[arg(long, default_value = "24h", value_parser = mesh::identity::parse_lifetime)]
    pub lifetime: Duration,
    /// Directory for `<service>.crt` (the chain: leaf, issuer) and
    /// `<service>.key` (0600).
    #[arg(long)]
    pub out: PathBuf,
}

/// Makes a service's certificate chain and key, signed by the issuer;
/// returns their paths (certificate, key).
pub fn issue_service(args: &IssueArgs) -> anyhow::Result<(PathBuf, PathBuf)> {
    let id = SpiffeId::new(&args.trust_domain, Workload::Service(args.service.clone()))?;
    issue_files(
        &args.ca_dir,
        &id,
        &[],
        args.lifetime,
        &args.out,
        &args.service,
    )
}

/// Signs a fresh key for `id` with the issuer in `ca_dir` and writes
/// `<out>/<name>.crt` (the chain) and `<out>/<name>.key` (0600); their paths.
fn issue_files(
    ca_dir: &Path,
    id: &SpiffeId,
    organizations: &[&str],
    lifetime: Duration,
    out: &Path,
    name: &str,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let authority = ca::Authority::load(
        &ca_dir.join(files::ISSUER_CERT),
        &ca_dir.join(files::ISSUER_KEY),
        id.trust_domain(),
        lifetime,
    )?;
    let (chain, key) = authority.issue_with_new_key(id, organizations, lifetime)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let cert_path = out.join(format!("{name}.crt"));
    let key_path = out.join(format!("{name}.key"));
    ca::write_credential(&chain, &key, &cert_path, &key_path)?;
    Ok((cert_path, key_path))
}

/// Runs `meshctl identity issue`.
pub fn run_issue(args: &IssueArgs) -> anyhow::Result<()> {
    let (cert, key) = issue_service(args)?;
    println!("wrote {}", cert.display());
    println!("wrote {}", key.display());
    Ok(())
}

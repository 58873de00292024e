//! `meshctl identity rotate`: replaces the mesh's trust anchor while it
//! serves, without restarting anything and without a failed call, in the
//! three phases of the design ("Security"):
//!
//! 1. **add-anchor**: the stored bundle becomes old + new anchors; wait
//!    until every connected proxy reports running that bundle version. From
//!    then on everyone trusts certificates from either issuer.
//! 2. **switch-issuer**: the new issuer's files go where the control plane
//!    reads them (`--ca-dir`; in Kubernetes, update the issuer Secret and
//!    omit `--ca-dir`); wait until the control plane signs with it, ask
//!    every proxy to renew under it (pushed with the table, so nobody waits
//!    for 70 % of a 24 h lifetime), and wait until every proxy reports a
//!    certificate from it. meshctl's own operator certificate is re-issued
//!    under it too, or phase 3 would lock the operator out.
//! 3. **remove-anchor**: once every proxy's certificate and every replica's
//!    serving certificate chain to the new anchor, the bundle becomes the
//!    new anchor alone; wait until every proxy runs it.
//!
//! Each phase reads the state first and only writes what is missing, so a
//! phase run twice, or a rotation interrupted and started again, resumes
//! where it stopped. The decisions are pure functions (tested without a
//! mesh); the waits poll `Status` once a second and print a line whenever
//! the set of proxies still waited for changes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use mesh::identity::certificate::{certificates_from_pem, certificates_to_pem};
use mesh::identity::{CertificateInfo, ClientAuth, Credential, MeshTls, SpiffeId, TrustBundle};
use mesh::proto::mesh::v1::{
    ConnectedSidecar, GetTrustBundleRequest, RenewCertificatesRequest, SetTrustBundleRequest,
    StatusRequest, StatusResponse,
};
use rustls::pki_types::CertificateDer;

use super::connect::MeshConfig;
use super::{AdminClient, ControlPlaneArgs, GrpcError};
use mesh_ca::{self as ca, files};

/// How often the waits ask the control plane for its status.
const POLL: Duration = Duration::from_secs(1);

/// Options of `meshctl identity rotate`.
#[derive(Debug, Clone, clap::Args)]
pub struct RotateArgs {
    /// The new anchor and issuer: a directory made by `meshctl identity
    /// init --out DIR` (same trust domain).
    #[arg(long)]
    pub new_ca_dir: PathBuf,
    /// The control plane's identity directory (`--identity-dir`): the new
    /// issuer files and the bundle file are written there. Omit it when
    /// the issuer is a Kubernetes Secret: update the Secret (and the
    /// bundle ConfigMap) yourself; rotate waits for the control plane to
    /// load the new issuer.
    #[arg(long)]
    pub ca_dir: Option<PathBuf>,
    /// Run this phase only (default: all three, in order). Every phase is
    /// idempotent: run it again to resume.
    #[arg(long, value_enum)]
    pub phase: Option<Phase>,
    /// How long each wait may take before rotate gives up (nothing is
    /// undone: run it again to resume).
    #[arg(long, default_value = "5m", value_parser = mesh::identity::parse_lifetime)]
    pub timeout: Duration,
}

/// The phases of a rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Phase {
    /// Trust the new anchor beside the old one, everywhere.
    AddAnchor,
    /// Sign with the new issuer; every proxy renews under it.
    SwitchIssuer,
    /// Trust the new anchor alone.
    RemoveAnchor,
}

impl Phase {
    fn title(self) -> &'static str {
        match self {
            Self::AddAnchor => "phase 1/3 (add-anchor)",
            Self::SwitchIssuer => "phase 2/3 (switch-issuer)",
            Self::RemoveAnchor => "phase 3/3 (remove-anchor)",
        }
    }
}

/// The new CA, as read from `--new-ca-dir`.
#[derive(Debug)]
struct NewCa {
    dir: PathBuf,
    anchor: CertificateDer<'static>,
    issuer_fingerprint: String,
}

impl NewCa {
    fn load(dir: &Path) -> anyhow::Result<Self> {
        let anchor = first_certificate(&dir.join(files::ANCHOR_CERT))?;
        let issuer = first_certificate(&dir.join(files::ISSUER_CERT))?;
        anyhow::ensure!(
            dir.join(files::ISSUER_KEY).is_file(),
            "{} is missing: the new issuer's key is needed",
            dir.join(files::ISSUER_KEY).display()
        );
        // The new issuer must chain to the new anchor, or phase 3 would
        // leave every proxy with a certificate nobody trusts: a throwaway
        // certificate from it is verified as a proxy would verify it.
        anyhow::ensure!(
            chains_to(dir, &anchor)?,
            "{} is not an issuer under {}",
            dir.join(files::ISSUER_CERT).display(),
            dir.join(files::ANCHOR_CERT).display()
        );
        Ok(Self {
            dir: dir.to_owned(),
            issuer_fingerprint: ca::fingerprint(issuer.as_ref()),
            anchor,
        })
    }
}

/// True when a certificate from the issuer in `dir` verifies under
/// `anchor` (webpki, as every proxy checks it).
fn chains_to(dir: &Path, anchor: &CertificateDer<'static>) -> anyhow::Result<bool> {
    let issuer = first_certificate(&dir.join(files::ISSUER_CERT))?;
    let trust_domain = CertificateInfo::parse(&issuer)
        .map(|i| i.id.trust_domain().to_owned())
        .unwrap_or_else(|_| mesh::identity::DEFAULT_TRUST_DOMAIN.to_owned());
    let authority = match ca::Authority::load(
        &dir.join(files::ISSUER_CERT),
        &dir.join(files::ISSUER_KEY),
        &trust_domain,
        Duration::from_secs(60),
    ) {
        Ok(authority) => authority,
        Err(_) => return Ok(false),
    };
    let id = SpiffeId::new(&trust_domain, mesh::identity::Workload::ControlPlane)?;
    let (chain, _) = authority.issue_with_new_key(&id, &[], Duration::from_secs(60))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(anchor.clone())?;
    let leaf = rustls::server::ParsedCertificate::try_from(&chain[0])?;
    let provider = mesh::identity::tls::provider();
    Ok(rustls::client::verify_server_cert_signed_by_trust_anchor(
        &leaf,
        &roots,
        &chain[1..],
        rustls::pki_types::UnixTime::now(),
        provider.signature_verification_algorithms.all,
    )
    .is_ok())
}

fn first_certificate(path: &Path) -> anyhow::Result<CertificateDer<'static>> {
    let pem =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    certificates_from_pem(&pem)?
        .into_iter()
        .next()
        .with_context(|| format!("{} holds no certificate", path.display()))
}

/// The bundle with `anchor` added, or `None` if it holds it already.
pub fn with_anchor(
    stored: &[CertificateDer<'static>],
    anchor: &CertificateDer<'static>,
) -> Option<Vec<CertificateDer<'static>>> {
    if stored.contains(anchor) {
        return None;
    }
    let mut bundle = stored.to_vec();
    bundle.push(anchor.clone());
    Some(bundle)
}

/// The bundle of `anchor` alone, or `None` if that is what is stored.
pub fn only_anchor(
    stored: &[CertificateDer<'static>],
    anchor: &CertificateDer<'static>,
) -> Option<Vec<CertificateDer<'static>>> {
    if stored == std::slice::from_ref(anchor) {
        return None;
    }
    Some(vec![anchor.clone()])
}

/// `service/instance`, or `gateway/instance`.
fn proxy_name(sidecar: &ConnectedSidecar) -> String {
    if sidecar.gateway {
        format!("gateway/{}", sidecar.instance)
    } else {
        format!("{}/{}", sidecar.service, sidecar.instance)
    }
}

/// Proxies that do not report running bundle `version` (or a later one).
pub fn behind_bundle(status: &StatusResponse, version: u64) -> Vec<String> {
    let mut names: Vec<String> = status
        .sidecars
        .iter()
        .filter(|s| s.trust_bundle_version < version)
        .map(proxy_name)
        .collect();
    names.sort();
    names
}

/// Proxies whose certificate does not come from the issuer `fingerprint`.
pub fn not_under_issuer(status: &StatusResponse, fingerprint: &str) -> Vec<String> {
    let mut names: Vec<String> = status
        .sidecars
        .iter()
        .filter(|s| s.certificate_issuer_fingerprint != fingerprint)
        .map(proxy_name)
        .collect();
    names.sort();
    names
}

/// Runs `meshctl identity rotate`.
pub async fn run(cp: &ControlPlaneArgs, args: RotateArgs) -> anyhow::Result<()> {
    let new = NewCa::load(&args.new_ca_dir)?;
    let phases = match args.phase {
        Some(phase) => vec![phase],
        None => vec![Phase::AddAnchor, Phase::SwitchIssuer, Phase::RemoveAnchor],
    };
    let rotation = Rotation {
        cp,
        new,
        ca_dir: args.ca_dir.clone(),
        timeout: args.timeout,
    };
    for phase in phases {
        println!("{}", phase.title());
        match phase {
            Phase::AddAnchor => rotation.add_anchor().await?,
            Phase::SwitchIssuer => rotation.switch_issuer().await?,
            Phase::RemoveAnchor => rotation.remove_anchor().await?,
        }
    }
    if args.phase.is_none() || args.phase == Some(Phase::RemoveAnchor) {
        println!(
            "rotation complete: every proxy trusts only the new anchor and holds a certificate \
             from the new issuer. Keep {} offline; the old anchor's files can be retired, and \
             other operators need certificates from the new issuer (meshctl identity issue-operator).",
            args.new_ca_dir.join(files::ANCHOR_KEY).display()
        );
    }
    Ok(())
}

struct Rotation<'a> {
    cp: &'a ControlPlaneArgs,
    new: NewCa,
    ca_dir: Option<PathBuf>,
    timeout: Duration,
}

impl Rotation<'_> {
    /// A fresh connection: each phase may have changed the files meshctl
    /// trusts and presents.
    async fn client(&self) -> anyhow::Result<AdminClient> {
        self.cp.connect().await
    }

    async fn stored_bundle(
        &self,
        client: &mut AdminClient,
    ) -> anyhow::Result<(Vec<CertificateDer<'static>>, i64)> {
        let stored = client
            .get_trust_bundle(GetTrustBundleRequest {})
            .await
            .map_err(GrpcError)
            .context("cannot read the stored trust bundle")?
            .into_inner();
        anyhow::ensure!(
            stored.revision > 0,
            "the control plane has no trust bundle stored: is it running with mTLS?"
        );
        Ok((certificates_from_pem(&stored.pem)?, stored.revision))
    }

    /// Stores `anchors` unless they are stored already (compare-and-swap
    /// on what was read); returns the version proxies must reach.
    async fn store_bundle(
        &self,
        client: &mut AdminClient,
        anchors: Option<Vec<CertificateDer<'static>>>,
        revision: i64,
        what: &str,
    ) -> anyhow::Result<u64> {
        let version = match anchors {
            None => {
                println!("  the stored bundle already {what} (version {revision})");
                revision
            }
            Some(anchors) => {
                let stored = client
                    .set_trust_bundle(SetTrustBundleRequest {
                        pem: certificates_to_pem(&anchors),
                        expected_revision: Some(revision),
                    })
                    .await
                    .map_err(GrpcError)
                    .context("cannot store the trust bundle")?
                    .into_inner();
                println!(
                    "  stored the bundle that {what}: {} anchor(s), version {}",
                    anchors.len(),
                    stored.revision
                );
                stored.revision
            }
        };
        Ok(u64::try_from(version).unwrap_or(0))
    }

    /// Writes the stored bundle to `--ca-dir`'s bundle file, which meshctl
    /// and newly started proxies read.
    fn write_bundle_file(&self, anchors: &[CertificateDer<'static>]) -> anyhow::Result<()> {
        let Some(dir) = &self.ca_dir else {
            println!("  (no --ca-dir: update the trust bundle ConfigMap to match)");
            return Ok(());
        };
        let path = dir.join(files::BUNDLE);
        let pem = certificates_to_pem(anchors);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(pem.as_str()) {
            replace_file(&path, &pem, false)?;
            println!("  wrote {}", path.display());
        }
        Ok(())
    }

    async fn add_anchor(&self) -> anyhow::Result<()> {
        let mut client = self.client().await?;
        let (stored, revision) = self.stored_bundle(&mut client).await?;
        let wanted = with_anchor(&stored, &self.new.anchor);
        let anchors = wanted.clone().unwrap_or(stored);
        let version = self
            .store_bundle(&mut client, wanted, revision, "holds the new anchor")
            .await?;
        self.write_bundle_file(&anchors)?;
        self.wait_for_bundle(version).await
    }

    async fn wait_for_bundle(&self, version: u64) -> anyhow::Result<()> {
        self.wait(
            &format!("to run trust bundle version {version}"),
            |status| behind_bundle(status, version),
        )
        .await
    }

    async fn switch_issuer(&self) -> anyhow::Result<()> {
        // Phase 1 first: a certificate from the new issuer must be trusted
        // by every proxy before anyone presents one.
        let mut client = self.client().await?;
        let (stored, revision) = self.stored_bundle(&mut client).await?;
        anyhow::ensure!(
            stored.contains(&self.new.anchor),
            "the stored bundle does not hold the new anchor yet: run --phase add-anchor first"
        );
        self.wait_for_bundle(u64::try_from(revision).unwrap_or(0))
            .await?;
        if let Some(dir) = &self.ca_dir {
            // The key first: the control plane takes the pair only once
            // the certificate matches it.
            for (name, private) in [(files::ISSUER_KEY, true), (files::ISSUER_CERT, false)] {
                let new = std::fs::read_to_string(self.new.dir.join(name)).with_context(|| {
                    format!("cannot read {}", self.new.dir.join(name).display())
                })?;
                let path = dir.join(name);
                if std::fs::read_to_string(&path).ok().as_deref() != Some(new.as_str()) {
                    replace_file(&path, &new, private)?;
                    println!("  wrote {}", path.display());
                }
            }
        } else {
            println!(
                "  (no --ca-dir: update the control plane's issuer Secret to the files in {})",
                self.new.dir.display()
            );
        }
        let fingerprint = self.new.issuer_fingerprint.clone();
        self.wait_until(
            "for the control plane to sign with the new issuer",
            |status| {
                if status.issuer_fingerprint == fingerprint {
                    Vec::new()
                } else {
                    vec![format!("issuer {}", short(&status.issuer_fingerprint))]
                }
            },
        )
        .await?;
        self.reissue_operator()?;
        let mut client = self.client().await?;
        client
            .renew_certificates(RenewCertificatesRequest {
                issuer_fingerprint: fingerprint.clone(),
            })
            .await
            .map_err(GrpcError)
            .context("cannot ask the proxies to renew")?;
        println!(
            "  asked every proxy to renew under issuer {}",
            short(&fingerprint)
        );
        self.wait(
            &format!("to hold a certificate from issuer {}", short(&fingerprint)),
            |status| not_under_issuer(status, &fingerprint),
        )
        .await
    }

    /// meshctl's own certificate, re-issued under the new issuer with the
    /// same identity and role: after phase 3 nothing else would be let in.
    fn reissue_operator(&self) -> anyhow::Result<()> {
        let Some(path) = meshconfig_path(self.cp) else {
            return Ok(());
        };
        let config = MeshConfig::load(&path)?;
        let chain_pem = std::fs::read_to_string(&config.certificate)
            .with_context(|| format!("cannot read {}", config.certificate.display()))?;
        let chain = certificates_from_pem(&chain_pem)?;
        let under_new = chain
            .get(1)
            .is_some_and(|issuer| ca::fingerprint(issuer.as_ref()) == self.new.issuer_fingerprint);
        if under_new {
            return Ok(());
        }
        let leaf = chain
            .first()
            .with_context(|| format!("{} holds no certificate", config.certificate.display()))?;
        let info = CertificateInfo::parse(leaf)?;
        let lifetime = info.lifetime().max(Duration::from_secs(3600));
        let authority = ca::Authority::load(
            &self.new.dir.join(files::ISSUER_CERT),
            &self.new.dir.join(files::ISSUER_KEY),
            info.id.trust_domain(),
            lifetime,
        )?;
        let organizations: Vec<&str> = info.organizations.iter().map(String::as_str).collect();
        let (chain, key) = authority.issue_with_new_key(&info.id, &organizations, lifetime)?;
        // The key first, then the certificate: each replaced whole.
        replace_file(&config.key, &key, true)?;
        replace_file(&config.certificate, &certificates_to_pem(&chain), false)?;
        println!(
            "  re-issued your operator certificate ({}) under the new issuer: {}",
            info.id,
            config.certificate.display()
        );
        Ok(())
    }

    async fn remove_anchor(&self) -> anyhow::Result<()> {
        let fingerprint = self.new.issuer_fingerprint.clone();
        self.wait_until(
            "for the control plane and every proxy to be under the new issuer (--phase switch-issuer)",
            |status| {
                let mut waiting = not_under_issuer(status, &fingerprint);
                if status.issuer_fingerprint != fingerprint {
                    waiting.insert(0, "the control plane's issuer".into());
                }
                waiting
            },
        )
        .await?;
        self.check_operator_under_new_issuer()?;
        self.wait_for_replicas_under_new_anchor().await?;
        let mut client = self.client().await?;
        let (stored, revision) = self.stored_bundle(&mut client).await?;
        let wanted = only_anchor(&stored, &self.new.anchor);
        let version = self
            .store_bundle(&mut client, wanted, revision, "holds the new anchor alone")
            .await?;
        self.write_bundle_file(std::slice::from_ref(&self.new.anchor))?;
        self.wait_for_bundle(version).await
    }

    fn check_operator_under_new_issuer(&self) -> anyhow::Result<()> {
        let Some(path) = meshconfig_path(self.cp) else {
            return Ok(());
        };
        let config = MeshConfig::load(&path)?;
        let pem = std::fs::read_to_string(&config.certificate)
            .with_context(|| format!("cannot read {}", config.certificate.display()))?;
        let chain = certificates_from_pem(&pem)?;
        let ok = chain
            .get(1)
            .is_some_and(|issuer| ca::fingerprint(issuer.as_ref()) == self.new.issuer_fingerprint);
        anyhow::ensure!(
            ok,
            "your operator certificate ({}) is not from the new issuer: once the old anchor is \
             gone the control plane would refuse it. Run --phase switch-issuer (it re-issues it), \
             or meshctl identity issue-operator --ca-dir {}",
            config.certificate.display(),
            self.new.dir.display()
        );
        Ok(())
    }

    /// Every replica's serving certificate must chain to the new anchor
    /// before proxies stop trusting the old one: each is reached with TLS
    /// that trusts the new anchor only.
    async fn wait_for_replicas_under_new_anchor(&self) -> anyhow::Result<()> {
        let Some(path) = meshconfig_path(self.cp) else {
            return Ok(());
        };
        let config = MeshConfig::load(&path)?;
        let tls = std::sync::Arc::new(MeshTls::new(
            &config.trust_domain,
            TrustBundle::new(vec![self.new.anchor.clone()], 0)?,
            ClientAuth::Required,
        )?);
        let read = |p: &Path| {
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
        };
        tls.set_credential(Credential::from_pem(
            &read(&config.certificate)?,
            &read(&config.key)?,
        )?);
        let control_plane =
            SpiffeId::new(&config.trust_domain, mesh::identity::Workload::ControlPlane)?;
        let started = Instant::now();
        let mut last: Option<Vec<String>> = None;
        loop {
            let mut client = self.client().await?;
            let status = status(&mut client).await?;
            let mut waiting = Vec::new();
            for replica in &status.replicas {
                let reached = mesh::identity::transport::connect(
                    &tls,
                    &replica.address,
                    control_plane.clone(),
                )
                .await;
                if let Err(error) = reached {
                    waiting.push(format!("{} ({error})", replica.id));
                }
            }
            if waiting.is_empty() {
                println!(
                    "  every replica ({}) serves a certificate under the new anchor",
                    status.replicas.len()
                );
                return Ok(());
            }
            self.progress(
                "for every replica to serve a certificate under the new anchor",
                &waiting,
                &mut last,
                started,
            )?;
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until `waiting` finds no proxy left, printing who is waited
    /// for whenever that changes.
    async fn wait(
        &self,
        goal: &str,
        waiting: impl Fn(&StatusResponse) -> Vec<String>,
    ) -> anyhow::Result<()> {
        let goal = format!("for every proxy {goal}");
        self.wait_until(&goal, waiting).await?;
        Ok(())
    }

    async fn wait_until(
        &self,
        goal: &str,
        waiting: impl Fn(&StatusResponse) -> Vec<String>,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut last: Option<Vec<String>> = None;
        let mut client: Option<AdminClient> = None;
        loop {
            let connected = match client.take() {
                Some(c) => c,
                None => self.client().await?,
            };
            let mut connected = connected;
            match status(&mut connected).await {
                Ok(status) => {
                    let left = waiting(&status);
                    if left.is_empty() {
                        println!(
                            "  done waiting {goal} ({:.0?}; {} proxies connected)",
                            started.elapsed(),
                            status.sidecars.len()
                        );
                        return Ok(());
                    }
                    self.progress(goal, &left, &mut last, started)?;
                    client = Some(connected);
                }
                // The replica may be going away; the next poll reconnects.
                Err(error) => {
                    tracing::debug!(%error, "status failed; reconnecting");
                    if started.elapsed() > self.timeout {
                        return Err(error);
                    }
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn progress(
        &self,
        goal: &str,
        left: &[String],
        last: &mut Option<Vec<String>>,
        started: Instant,
    ) -> anyhow::Result<()> {
        if started.elapsed() > self.timeout {
            anyhow::bail!(
                "gave up waiting {goal} after {:?}; still waiting for: {}. Nothing was undone: \
                 run the same command again to resume",
                self.timeout,
                left.join(", ")
            );
        }
        if last.as_deref() != Some(left) {
            println!(
                "  waiting {goal}: {} left: {}",
                left.len(),
                abbreviate(left)
            );
            *last = Some(left.to_vec());
        }
        Ok(())
    }
}

async fn status(client: &mut AdminClient) -> anyhow::Result<StatusResponse> {
    Ok(client
        .status(StatusRequest {})
        .await
        .map_err(GrpcError)
        .context("cannot get the status")?
        .into_inner())
}

/// The first names, and how many more.
fn abbreviate(names: &[String]) -> String {
    const SHOWN: usize = 6;
    let mut text = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    text
}

/// A fingerprint's first 16 digits: enough to tell issuers apart in a
/// progress line.
fn short(fingerprint: &str) -> &str {
    fingerprint.get(..16).unwrap_or(fingerprint)
}

/// The meshctl config in use, if any (as `ControlPlaneArgs` finds it).
fn meshconfig_path(cp: &ControlPlaneArgs) -> Option<PathBuf> {
    if cp.insecure {
        return None;
    }
    cp.meshconfig.clone().or_else(|| {
        std::env::var_os("HOME")
            .map(|home| Path::new(&home).join(".mesh/config"))
            .filter(|p| p.is_file())
    })
}

/// Replaces `path` whole (a new file renamed over it), so a reader (the
/// control plane polling its issuer files) never sees half of it.
fn replace_file(path: &Path, contents: &str, private: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let temp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    let mut file = options
        .open(&temp)
        .with_context(|| format!("cannot write {}", temp.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", temp.display()))?;
    std::fs::rename(&temp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(byte: u8) -> CertificateDer<'static> {
        CertificateDer::from(vec![byte; 4])
    }

    fn proxy(instance: &str, bundle: u64, issuer: &str) -> ConnectedSidecar {
        ConnectedSidecar {
            service: "catalog".into(),
            instance: instance.into(),
            trust_bundle_version: bundle,
            certificate_issuer_fingerprint: issuer.into(),
            ..ConnectedSidecar::default()
        }
    }

    #[test]
    fn adding_an_anchor_twice_writes_once() {
        let (old, new) = (der(1), der(2));
        assert_eq!(
            with_anchor(std::slice::from_ref(&old), &new),
            Some(vec![old.clone(), new.clone()])
        );
        assert_eq!(with_anchor(&[old.clone(), new.clone()], &new), None);
    }

    #[test]
    fn removing_the_old_anchors_keeps_the_new_one_only() {
        let (old, older, new) = (der(1), der(0), der(2));
        assert_eq!(
            only_anchor(&[older, old.clone(), new.clone()], &new),
            Some(vec![new.clone()])
        );
        assert_eq!(only_anchor(std::slice::from_ref(&new), &new), None);
        // Even a bundle without it ends with it alone.
        assert_eq!(only_anchor(&[old], &new), Some(vec![new]));
    }

    #[test]
    fn waits_name_the_proxies_behind() {
        let status = StatusResponse {
            sidecars: vec![
                proxy("catalog-2", 7, "new"),
                proxy("catalog-1", 6, "old"),
                ConnectedSidecar {
                    gateway: true,
                    instance: "gw".into(),
                    trust_bundle_version: 0,
                    ..ConnectedSidecar::default()
                },
            ],
            ..StatusResponse::default()
        };
        assert_eq!(
            behind_bundle(&status, 7),
            ["catalog/catalog-1", "gateway/gw"]
        );
        assert!(behind_bundle(&status, 0).is_empty());
        assert_eq!(
            not_under_issuer(&status, "new"),
            ["catalog/catalog-1", "gateway/gw"]
        );
        assert!(not_under_issuer(&StatusResponse::default(), "new").is_empty());
    }

    #[test]
    fn progress_lines_stay_short() {
        let names: Vec<String> = (0..9).map(|i| format!("p{i}")).collect();
        assert_eq!(abbreviate(&names), "p0, p1, p2, p3, p4, p5 and 3 more");
        assert_eq!(short("0123456789abcdef0123"), "0123456789abcdef");
    }

    #[test]
    fn a_new_ca_must_be_an_issuer_under_its_anchor() {
        let dir = tempfile::tempdir().unwrap();
        let day = Duration::from_secs(86_400);
        ca::init(dir.path(), "mesh.test", day, day).unwrap();
        let new = NewCa::load(dir.path()).unwrap();
        assert_eq!(new.issuer_fingerprint.len(), 64);
        // An issuer from another CA beside this anchor is refused.
        let other = tempfile::tempdir().unwrap();
        ca::init(other.path(), "mesh.test", day, day).unwrap();
        std::fs::copy(
            other.path().join(files::ISSUER_CERT),
            dir.path().join(files::ISSUER_CERT),
        )
        .unwrap();
        let error = NewCa::load(dir.path()).unwrap_err().to_string();
        assert!(error.contains("is not an issuer under"), "{error}");
    }
}

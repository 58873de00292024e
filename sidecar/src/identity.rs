//! This proxy's workload identity: the TLS state every mesh hop uses (trust
//! bundle and own certificate), and the task that keeps the certificate
//! fresh.
//!
//! With a control plane, the proxy makes its own key, sends a CSR with its
//! join token to `mesh.v1.Identity/Certify` (replicas in turn, jittered
//! backoff), and renews at 70 % of the certificate's lifetime (plus up to
//! 5 % jitter, so sidecars started together do not renew together); a
//! failed renewal keeps the current certificate and retries. In static
//! mode the certificate comes from files. Listeners, upstreams and the
//! discovery stream read the live state from [`MeshTls`]: a new certificate
//! or bundle applies to the next handshake, never to connections open.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesh::identity::certificate::CertificateInfo;
use mesh::identity::csr::CsrError;
use mesh::identity::{ClientAuth, Credential, MeshTls, SpiffeId, TlsError, TrustBundle, Workload};
use mesh::proto::mesh::v1::identity_client::IdentityClient;
use mesh::proto::mesh::v1::{CertifyRequest, CredentialReport};
use serde::Serialize;
use tokio::sync::watch;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;

use crate::metrics::IdentityMetrics;
use crate::settings::Settings;
use mesh::backoff::Backoff;

/// Renewal starts at this share of the certificate's lifetime (Linkerd's
/// rule: time for several retries before expiry).
const RENEW_AT: f64 = 0.70;
/// Up to this share of the lifetime is added at random.
const RENEW_JITTER: f64 = 0.05;
/// How long one Certify call (connect, handshake, answer) may take.
const CERTIFY_TIMEOUT: Duration = Duration::from_secs(10);
/// First retry wait after a failed certificate request (full jitter).
const RETRY_BASE: Duration = Duration::from_millis(200);
/// Longest wait between certificate requests while they fail.
const RETRY_CAP: Duration = Duration::from_secs(10);
/// When the control plane asks for certificates from a new issuer, the
/// proxies renew within this much (at random), not all in the same second.
const PROMPT_SPREAD: Duration = Duration::from_secs(3);
/// Longest wait between prompt renewals that still got the old issuer (a
/// replica that has not loaded the new one yet).
const PROMPT_CAP: Duration = Duration::from_secs(30);

/// Why this proxy has no (new) certificate.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    File {
        /// Which file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The join token file holds nothing.
    #[error("{0}: the join token file is empty")]
    EmptyToken(PathBuf),
    /// The bundle, certificate or key is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// No key or certificate request could be made.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// The settings name no valid identity.
    #[error(transparent)]
    Id(#[from] mesh::identity::SpiffeIdError),
    /// The certificate names someone else.
    #[error("the certificate names {found}, but this proxy is {expected}")]
    WrongIdentity {
        /// Who this proxy is.
        expected: Box<SpiffeId>,
        /// Whom the certificate names.
        found: Box<SpiffeId>,
    },
    /// The control plane could not be reached or refused.
    #[error("control plane {replica}: {message}")]
    ControlPlane {
        /// Which replica.
        replica: String,
        /// What went wrong (never the token).
        message: String,
    },
}

/// This proxy's identity and TLS state.
pub struct Identity {
    id: SpiffeId,
    control_plane: SpiffeId,
    tls: Arc<MeshTls>,
    /// Bumped on every new certificate or bundle: discovery reports them.
    changes: watch::Sender<u64>,
    /// The issuer (SHA-256, hex) the control plane asks certificates to
    /// come from; empty when it asks nothing.
    renew_issuer: watch::Sender<String>,
    metrics: IdentityMetrics,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("id", &self.id.to_string())
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// What `/identity` shows (never key material).
#[derive(Debug, Clone, Serialize)]
pub struct IdentityView {
    /// `strict` or `off`.
    pub mtls: &'static str,
    /// The SPIFFE ID this proxy proves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The certificate presented now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateView>,
    /// Version of the trust bundle in use (0: the file's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust_bundle_version: Option<u64>,
    /// How many anchors it holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust_anchors: Option<usize>,
}

/// The validity of the certificate presented now.
#[derive(Debug, Clone, Serialize)]
pub struct CertificateView {
    /// Start of validity (Unix seconds).
    pub not_before_unix: i64,
    /// End of validity (Unix seconds).
    pub not_after_unix: i64,
    /// Seconds left (0 once expired).
    pub expires_in_seconds: u64,
}

impl Identity {
    /// Identity `id` trusting `bundle`, no certificate yet.
    pub fn new(
        id: SpiffeId,
        bundle: TrustBundle,
        metrics: IdentityMetrics,
    ) -> Result<Self, IdentityError> {
        let tls = MeshTls::new(id.trust_domain(), bundle, ClientAuth::Required)?;
        let control_plane = SpiffeId::new(id.trust_domain(), Workload::ControlPlane)
            .expect("the trust domain was checked with the proxy's own id");
        Ok(Self {
            id,
            control_plane,
            tls: Arc::new(tls),
            changes: watch::Sender::new(0),
            renew_issuer: watch::Sender::new(String::new()),
            metrics,
        })
    }

    /// The identity `settings` name, trusting the `--trust-bundle` file;
    /// in static mode with the certificate and key files installed.
    pub fn load(settings: &Settings, metrics: IdentityMetrics) -> Result<Self, IdentityError> {
        let id = settings.identity()?;
        let bundle_path = settings
            .trust_bundle
            .as_deref()
            .ok_or_else(|| IdentityError::Tls(TlsError::Bundle("no --trust-bundle file".into())))?;
        let bundle = TrustBundle::from_pem(&read(bundle_path)?, 0)?;
        let identity = Self::new(id, bundle, metrics)?;
        if let (Some(cert), Some(key)) = (&settings.identity_cert_file, &settings.identity_key_file)
        {
            let credential = Credential::from_pem(&read(cert)?, &read(key)?)?;
            identity.install(credential)?;
        }
        Ok(identity)
    }

    /// Who this proxy is.
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// The identity every control-plane replica proves.
    pub fn control_plane_id(&self) -> &SpiffeId {
        &self.control_plane
    }

    /// The live TLS state.
    pub fn tls(&self) -> &Arc<MeshTls> {
        &self.tls
    }

    /// The metrics of identity and handshakes.
    pub fn metrics(&self) -> &IdentityMetrics {
        &self.metrics
    }

    /// Presents `credential` from the next handshake on, if it names this
    /// proxy's identity.
    pub fn install(&self, credential: Credential) -> Result<(), IdentityError> {
        let found = &credential.info().id;
        if *found != self.id {
            return Err(IdentityError::WrongIdentity {
                expected: Box::new(self.id.clone()),
                found: Box::new(found.clone()),
            });
        }
        let not_after = unix(credential.info().not_after);
        self.tls.set_credential(credential);
        self.changes.send_modify(|generation| *generation += 1);
        tracing::info!(identity = %self.id, not_after_unix = not_after, "certificate installed");
        Ok(())
    }

    /// Trusts `bundle` from the next handshake on; false when it is the
    /// bundle in use already (same anchors and version).
    pub fn set_bundle(&self, bundle: TrustBundle) -> Result<bool, TlsError> {
        let current = self.tls.bundle();
        if current.same_anchors(&bundle) && current.version() == bundle.version() {
            return Ok(false);
        }
        let (version, anchors) = (bundle.version(), bundle.anchors().len());
        self.tls.set_bundle(bundle)?;
        self.changes.send_modify(|generation| *generation += 1);
        tracing::info!(version, anchors, "trust bundle applied");
        Ok(true)
    }

    /// Fires on each new certificate or bundle.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Waits until a certificate is installed; false if `stop` fired first.
    pub async fn wait_for_credential(&self, stop: &CancellationToken) -> bool {
        let mut changes = self.subscribe();
        loop {
            if self.tls.credential().is_some() {
                return true;
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return false },
                () = stop.cancelled() => return false,
            }
        }
    }

    /// What discovery reports to the control plane; `None` before the
    /// first certificate.
    pub fn report(&self) -> Option<CredentialReport> {
        let credential = self.tls.credential()?;
        Some(CredentialReport {
            certificate_not_after_unix: unix(credential.info().not_after),
            trust_bundle_version: self.tls.bundle().version(),
            certificate_not_before_unix: unix(credential.info().not_before),
            certificate_issuer_fingerprint: issuer_fingerprint(&credential),
        })
    }

    /// The control plane asks for a certificate from the issuer with this
    /// fingerprint (pushed with the table during an anchor rotation): if
    /// the current one is from another, it is renewed within a few
    /// seconds rather than at 70 % of its lifetime. Empty: no request.
    pub fn renew_unless_issued_by(&self, fingerprint: &str) {
        self.renew_issuer.send_if_modified(|current| {
            if current == fingerprint {
                return false;
            }
            fingerprint.clone_into(current);
            true
        });
    }

    /// True when the control plane asked for another issuer than the one
    /// the current certificate names.
    fn renewal_requested(&self) -> bool {
        let wanted = self.renew_issuer.borrow();
        !wanted.is_empty()
            && self
                .tls
                .credential()
                .is_some_and(|c| issuer_fingerprint(&c) != *wanted)
    }

    /// Sets the expiry and bundle gauges (at scrape time).
    pub fn update_gauges(&self) {
        let expiry = self.tls.credential().map(|c| {
            i64::try_from(c.info().remaining(SystemTime::now()).as_secs()).unwrap_or(i64::MAX)
        });
        self.metrics.set_state(expiry, self.tls.bundle().version());
    }

    /// For `/identity`.
    pub fn view(&self) -> IdentityView {
        let bundle = self.tls.bundle();
        IdentityView {
            mtls: "strict",
            identity: Some(self.id.to_string()),
            certificate: self.tls.credential().map(|c| {
                let info = c.info();
                CertificateView {
                    not_before_unix: unix(info.not_before),
                    not_after_unix: unix(info.not_after),
                    expires_in_seconds: info.remaining(SystemTime::now()).as_secs(),
                }
            }),
            trust_bundle_version: Some(bundle.version()),
            trust_anchors: Some(bundle.anchors().len()),
        }
    }

    /// Keeps a certificate from `ca` installed until `stop`: asks at once
    /// if there is none, renews on schedule ([`renewal_delay`]), and after
    /// a failure retries with jittered backoff while the current
    /// certificate (if any) keeps serving.
    pub async fn run<C: Certifier>(self: Arc<Self>, ca: C, stop: CancellationToken) {
        let mut backoff = Backoff::new(RETRY_BASE, RETRY_CAP);
        let mut retry: Option<Duration> = None;
        let mut requested = self.renew_issuer.subscribe();
        // Prompt renewals in a row that still got another issuer.
        let mut prompt_attempts = 0u32;
        loop {
            let wait = match (retry, self.tls.credential()) {
                (Some(wait), _) => wait,
                (None, Some(_)) if self.renewal_requested() => {
                    let wait = prompt_delay(prompt_attempts, rand::random::<f64>());
                    prompt_attempts = prompt_attempts.saturating_add(1);
                    tracing::info!(identity = %self.id, renew_in = ?wait, "the control plane asks for a certificate from a new issuer");
                    wait
                }
                (None, Some(current)) => {
                    prompt_attempts = 0;
                    renewal_delay(current.info(), SystemTime::now(), rand::random::<f64>())
                }
                (None, None) => Duration::ZERO,
            };
            requested.borrow_and_update();
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                // A new request: work out the wait again.
                Ok(()) = requested.changed(), if retry.is_none() => continue,
                () = stop.cancelled() => return,
            }
            let certified = tokio::select! {
                certified = ca.certify(&self.tls) => certified,
                () = stop.cancelled() => return,
            };
            let outcome = certified.and_then(|c| {
                if let Some(bundle) = c.bundle {
                    self.set_bundle(bundle)?;
                }
                self.install(c.credential)
            });
            match outcome {
                Ok(()) => {
                    self.metrics.record_renewal(true);
                    backoff.reset();
                    retry = None;
                }
                Err(error) => {
                    self.metrics.record_renewal(false);
                    let wait = backoff.next_wait();
                    let remaining = self
                        .tls
                        .credential()
                        .map(|c| c.info().remaining(SystemTime::now()));
                    tracing::warn!(
                        identity = %self.id,
                        %error,
                        retry_in = ?wait,
                        certificate_remaining = ?remaining,
                        "certificate request failed; keeping the current certificate"
                    );
                    retry = Some(wait);
                }
            }
        }
    }
}

/// A certificate (and the mesh's trust bundle, if the CA sent one).
pub struct Certified {
    /// The new credential.
    pub credential: Credential,
    /// The anchors the CA says the mesh trusts now.
    pub bundle: Option<TrustBundle>,
}

/// Where certificates come from: the control plane's CA, or a fake in
/// tests.
pub trait Certifier: Send + Sync + 'static {
    /// One attempt at a new certificate. `tls` is this proxy's state (its
    /// bundle checks the CA; its current certificate, if any, is shown).
    fn certify(
        &self,
        tls: &Arc<MeshTls>,
    ) -> impl std::future::Future<Output = Result<Certified, IdentityError>> + Send;
}

/// The control plane's CA, reached over TLS at any replica.
#[derive(Debug)]
pub struct ControlPlaneCa {
    replicas: Vec<String>,
    token_file: PathBuf,
    control_plane: SpiffeId,
    next: AtomicUsize,
}

impl ControlPlaneCa {
    /// Asks `replicas` in turn (starting at a random one), proving the
    /// identity with the token in `token_file`.
    pub fn new(replicas: Vec<String>, token_file: PathBuf, control_plane: SpiffeId) -> Self {
        let start = if replicas.is_empty() {
            0
        } else {
            rand::random_range(0..replicas.len())
        };
        Self {
            replicas,
            token_file,
            control_plane,
            next: AtomicUsize::new(start),
        }
    }
}

impl Certifier for ControlPlaneCa {
    async fn certify(&self, tls: &Arc<MeshTls>) -> Result<Certified, IdentityError> {
        // Read on every attempt: a Secret can be replaced in place.
        let token = read(&self.token_file)?.trim().to_owned();
        if token.is_empty() {
            return Err(IdentityError::EmptyToken(self.token_file.clone()));
        }
        let replica = match self.replicas.len() {
            0 => String::new(),
            n => self.replicas[self.next.fetch_add(1, Ordering::Relaxed) % n].clone(),
        };
        let failed = |message: String| IdentityError::ControlPlane {
            replica: replica.clone(),
            message,
        };
        let key_and_csr = mesh::identity::csr::generate()?;
        let call = async {
            let channel = mesh::identity::transport::channel(
                &replica,
                tls.clone(),
                self.control_plane.clone(),
                CERTIFY_TIMEOUT,
            )
            .await
            .map_err(|e| failed(format!("connect: {}", error_chain(&e))))?;
            IdentityClient::new(channel)
                .certify(CertifyRequest {
                    token,
                    csr_der: key_and_csr.csr_der,
                })
                .await
                .map_err(|status| {
                    failed(format!(
                        "Certify: {:?}: {}",
                        status.code(),
                        status.message()
                    ))
                })
        };
        let response = tokio::time::timeout(CERTIFY_TIMEOUT, call)
            .await
            .map_err(|_| failed(format!("no answer within {CERTIFY_TIMEOUT:?}")))??
            .into_inner();
        let chain = response
            .chain_der
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        let credential = Credential::new(chain, key_and_csr.key)?;
        let bundle = if response.trust_anchors_der.is_empty() {
            None
        } else {
            let anchors = response
                .trust_anchors_der
                .into_iter()
                .map(CertificateDer::from)
                .collect();
            Some(TrustBundle::new(anchors, response.trust_bundle_version)?)
        };
        Ok(Certified { credential, bundle })
    }
}

/// How long until a renewal the control plane asked for: spread over
/// [`PROMPT_SPREAD`] by `jitter` (drawn from `[0, 1)`), and doubling after
/// each one that still got the old issuer (`attempts`), up to
/// [`PROMPT_CAP`], so a replica slow to load the new issuer is not
/// hammered.
pub fn prompt_delay(attempts: u32, jitter: f64) -> Duration {
    let scale = 1u32 << attempts.min(5);
    PROMPT_SPREAD
        .saturating_mul(scale)
        .min(PROMPT_CAP)
        .mul_f64(jitter.clamp(0.0, 1.0))
}

/// SHA-256 (lowercase hex) of the issuer certificate in `credential`'s
/// chain (the one after the leaf); empty for a chain of the leaf alone.
pub fn issuer_fingerprint(credential: &Credential) -> String {
    use tokio_rustls::rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
    use tokio_rustls::rustls::SupportedCipherSuite;
    let Some(issuer) = credential.chain().get(1) else {
        return String::new();
    };
    // The SHA-256 rustls already carries (the proxy has no hash crate of
    // its own). Irrefutable unless rustls is built with TLS 1.2 too.
    #[allow(irrefutable_let_patterns)]
    let SupportedCipherSuite::Tls13(suite) = TLS13_AES_128_GCM_SHA256
    else {
        return String::new();
    };
    suite
        .common
        .hash_provider
        .hash(issuer.as_ref())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How long from `now` until a certificate is renewed: at 70 % of its
/// lifetime plus `jitter` (drawn from `[0, 1)`) times 5 % of it; zero if
/// that time has passed.
pub fn renewal_delay(certificate: &CertificateInfo, now: SystemTime, jitter: f64) -> Duration {
    let lifetime = certificate.lifetime();
    let share = RENEW_AT + RENEW_JITTER * jitter.clamp(0.0, 1.0);
    let renew_at = certificate.not_before + lifetime.mul_f64(share);
    renew_at.duration_since(now).unwrap_or(Duration::ZERO)
}

fn read(path: &Path) -> Result<String, IdentityError> {
    std::fs::read_to_string(path).map_err(|source| IdentityError::File {
        path: path.to_owned(),
        source,
    })
}

fn unix(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// An error and its sources, one line (tonic's transport errors say little
/// at the top).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests;

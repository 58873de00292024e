//! The `mesh.v1.Identity` service: a proxy trades its join token and a CSR
//! for a short-lived certificate. The token decides the identity; the CSR
//! contributes only its public key (and proves the caller holds the key).

use std::sync::Arc;

use mesh::identity::{TrustBundle, Workload};
use mesh::proto::mesh::v1::identity_server::Identity;
use mesh::proto::mesh::v1::{CertifyRequest, CertifyResponse};
use tonic::{Request, Response, Status};

use tokio::sync::watch;

use crate::index::Published;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::tokens::{self, TokenError};
use mesh_ca::{Authority, CaError};

/// The largest CSR accepted: a P-256 request is about 250 bytes.
const MAX_CSR: usize = 8 * 1024;

/// The certificate authority's gRPC face.
pub struct IdentityService<S> {
    store: S,
    authority: Arc<Authority>,
    published: watch::Receiver<Arc<Published>>,
    bundle: Arc<TrustBundle>,
    metrics: Arc<Metrics>,
}

impl<S: Store> IdentityService<S> {
    /// Signs with `authority` for tokens found in `store`; answers carry
    /// the stored trust bundle (`bundle`, from the file, until there is one).
    pub fn new(
        store: S,
        authority: Arc<Authority>,
        published: watch::Receiver<Arc<Published>>,
        bundle: Arc<TrustBundle>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            authority,
            published,
            bundle,
            metrics,
        }
    }
}

#[tonic::async_trait]
impl<S: Store> Identity for IdentityService<S> {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let request = request.into_inner();
        if request.csr_der.len() > MAX_CSR {
            self.metrics.certificate("bad-request");
            return Err(Status::invalid_argument(format!(
                "csr_der: larger than {MAX_CSR} bytes"
            )));
        }
        let id = match tokens::verify(&self.store, &request.token).await {
            Ok(id) => id,
            Err(TokenError::Store(e)) => {
                self.metrics.store_error("token");
                return Err(Status::unavailable(format!("store: {e}")));
            }
            Err(e) => {
                self.metrics.certificate("bad-token");
                tracing::warn!(target: "audit", error = %e, "certificate refused");
                return Err(Status::unauthenticated(e.to_string()));
            }
        };
        if !matches!(id.workload(), Workload::Service(_) | Workload::Gateway(_))
            || id.trust_domain() != self.authority.trust_domain()
        {
            self.metrics.certificate("bad-token");
            return Err(Status::permission_denied(format!(
                "a token for {id} cannot be certified here"
            )));
        }
        let chain = self
            .authority
            .certify(&id, &request.csr_der, &[])
            .map_err(|e| {
                self.metrics.certificate("bad-request");
                match e {
                    CaError::Csr(why) => Status::invalid_argument(format!("csr_der: {why}")),
                    other => Status::internal(other.to_string()),
                }
            })?;
        let not_after = mesh::identity::CertificateInfo::parse(&chain[0])
            .map(|info| info.not_after)
            .map_err(|e| Status::internal(e.to_string()))?;
        let not_after_unix = not_after
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        self.metrics.certificate("issued");
        let bundle = self
            .published
            .borrow()
            .trust_bundle
            .clone()
            .unwrap_or_else(|| self.bundle.clone());
        tracing::info!(identity = %id, not_after_unix, "certificate issued");
        Ok(Response::new(CertifyResponse {
            chain_der: chain.iter().map(|c| c.to_vec()).collect(),
            identity: id.to_string(),
            not_after_unix,
            trust_anchors_der: bundle.anchors().iter().map(|a| a.to_vec()).collect(),
            trust_bundle_version: bundle.version(),
        }))
    }
}

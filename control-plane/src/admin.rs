//! The MeshAdmin gRPC service behind `meshctl`. Reads go to the store (not
//! the replica's index) so a write is visible to the next read at once;
//! writes are validated first and compare-and-swap on the stored revision.
//!
//! Every call needs an operator certificate ([`crate::access`]): viewers
//! read, admins also write. Every write leaves one audit line (target
//! `audit`: who, what, the old and new revision) and a count in
//! `mesh_cp_audit_events_total`.

use std::sync::Arc;

use mesh::model::{AuthorizationPolicy, RequestAuthentication, Route};

use crate::documents::Document;
use mesh::identity::OperatorRole;
use mesh::proto::mesh::v1::mesh_admin_server::MeshAdmin;
use mesh::proto::mesh::v1::{
    ApplyPolicyRequest, ApplyPolicyResponse, DefaultAuthorizationResponse, DeletePolicyRequest,
    DeletePolicyResponse, GetDefaultAuthorizationRequest, GetPolicyRequest, ListPoliciesRequest,
    ListPoliciesResponse, SetDefaultAuthorizationRequest, StoredPolicy,
};
use mesh::proto::mesh::v1::{
    ApplyRouteRequest, ApplyRouteResponse, ConnectedSidecar, DeleteRouteRequest,
    DeleteRouteResponse, GetRouteRequest, ListEndpointsRequest, ListEndpointsResponse,
    ListRoutesRequest, ListRoutesResponse, RegisteredEndpoint, Replica, StatusRequest,
    StatusResponse, StoredRoute,
};
use mesh::proto::mesh::v1::{
    CreateTokenRequest, CreateTokenResponse, ListTokensRequest, ListTokensResponse,
    RevokeTokenRequest, RevokeTokenResponse, TokenInfo,
};
use mesh::proto::mesh::v1::{GetMtlsModeRequest, MtlsModeResponse, SetMtlsModeRequest};
use mesh::proto::mesh::v1::{
    GetTrustBundleRequest, RenewCertificatesRequest, RenewCertificatesResponse,
    SetTrustBundleRequest, TrustBundleResponse,
};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::access::{self, Access};
use crate::documents::{self, precondition, store_status};
use crate::index::Published;
use crate::keys::{self, Key};
use crate::metrics::Metrics;
use crate::registration::{Registration, ReplicaStatus, SidecarStatus};
use crate::store::{Precondition, Store, StoreError};
use crate::tokens::{self, TokenRecord};
use mesh_ca::Authority;

/// The MeshAdmin service of one replica.
pub struct AdminService<S> {
    store: S,
    published: watch::Receiver<Arc<Published>>,
    access: Access,
    trust_domain: String,
    metrics: Arc<Metrics>,
    authority: Option<Arc<Authority>>,
}

impl<S: Store> AdminService<S> {
    /// An admin API over `store`; `published` is used to refuse a route whose
    /// gRPC path another route already takes. Tokens it makes prove
    /// identities in `trust_domain`.
    pub fn new(
        store: S,
        published: watch::Receiver<Arc<Published>>,
        access: Access,
        trust_domain: String,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            published,
            access,
            trust_domain,
            metrics,
            authority: None,
        }
    }

    /// Reports `authority`'s issuer in `Status`, so `meshctl check` sees
    /// its expiry and a rotation sees when the replica switched issuers.
    pub fn with_authority(mut self, authority: Arc<Authority>) -> Self {
        self.authority = Some(authority);
        self
    }

    /// The stored bundle (PEM, revision) and the renew request, if any.
    async fn trust_state(&self) -> Result<TrustBundleResponse, Status> {
        let bundle = self
            .store
            .get(keys::TRUST_BUNDLE)
            .await
            .map_err(store_status)?;
        let renew = self
            .store
            .get(keys::RENEW_ISSUER)
            .await
            .map_err(store_status)?;
        Ok(TrustBundleResponse {
            pem: bundle
                .as_ref()
                .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
                .unwrap_or_default(),
            revision: bundle.map_or(0, |kv| kv.mod_revision),
            renew_issuer_fingerprint: renew
                .map(|kv| String::from_utf8_lossy(&kv.value).trim().to_owned())
                .unwrap_or_default(),
        })
    }

    /// The stored mTLS mode and its revision (strict at 0 when never set;
    /// strict too, at its revision, when the stored value is not a mode,
    /// as the index publishes it).
    async fn stored_default_authorization(&self) -> Result<DefaultAuthorizationResponse, Status> {
        let stored = self
            .store
            .get(keys::DEFAULT_AUTHORIZATION)
            .await
            .map_err(documents::store_status)?;
        Ok(match stored {
            None => DefaultAuthorizationResponse {
                default: keys::DEFAULT_AUTHORIZATIONS[0].to_owned(),
                revision: 0,
            },
            Some(kv) => DefaultAuthorizationResponse {
                default: String::from_utf8_lossy(&kv.value).trim().to_owned(),
                revision: kv.mod_revision,
            },
        })
    }

    async fn stored_mtls_mode(&self) -> Result<MtlsModeResponse, Status> {
        let stored = self
            .store
            .get(keys::MTLS_MODE)
            .await
            .map_err(store_status)?;
        Ok(match stored {
            None => MtlsModeResponse {
                mode: "strict".to_owned(),
                revision: 0,
            },
            Some(kv) => MtlsModeResponse {
                mode: keys::mtls_mode(&String::from_utf8_lossy(&kv.value))
                    .unwrap_or("strict")
                    .to_owned(),
                revision: kv.mod_revision,
            },
        })
    }

    fn operator<T>(&self, request: &Request<T>, need: OperatorRole) -> Result<String, Status> {
        access::operator(self.access, request.extensions(), need).inspect_err(|status| {
            tracing::warn!(target: "audit", code = ?status.code(), reason = status.message(), "admin call refused");
            self.metrics.audit("refused");
        })
    }

    /// One audit line per write.
    fn audit(&self, operator: &str, action: &'static str, object: &str, old: i64, new: i64) {
        tracing::info!(
            target: "audit",
            operator,
            action,
            object,
            old_revision = old,
            new_revision = new,
            "mesh changed"
        );
        self.metrics.audit(action);
    }

    /// Applies a policy-like document (authorization policy, request
    /// authentication): admins only, audited when it changed anything.
    async fn apply_policy<D: Document>(
        &self,
        request: Request<ApplyPolicyRequest>,
        action: &'static str,
    ) -> Result<Response<ApplyPolicyResponse>, Status> {
        let operator = self.operator(&request, OperatorRole::Admin)?;
        let request = request.into_inner();
        let document: D = documents::parse(&request.policy_json)?;
        let applied = documents::apply(&self.store, &document, request.expected_revision).await?;
        if applied.changed {
            let name = document.name();
            tracing::info!(
                kind = D::NOUN,
                name,
                revision = applied.stored.revision,
                "applied"
            );
            self.audit(
                &operator,
                action,
                name,
                applied.previous,
                applied.stored.revision,
            );
        }
        Ok(Response::new(ApplyPolicyResponse {
            policy: Some(StoredPolicy {
                policy_json: applied.stored.json,
                revision: applied.stored.revision,
            }),
            created: applied.created,
            changed: applied.changed,
        }))
    }

    async fn get_policy<D: Document>(
        &self,
        request: Request<GetPolicyRequest>,
    ) -> Result<Response<StoredPolicy>, Status> {
        self.operator(&request, OperatorRole::Viewer)?;
        let found = documents::get::<_, D>(&self.store, &request.get_ref().name).await?;
        Ok(Response::new(StoredPolicy {
            policy_json: found.json,
            revision: found.revision,
        }))
    }

    async fn list_policies<D: Document>(
        &self,
        request: Request<ListPoliciesRequest>,
    ) -> Result<Response<ListPoliciesResponse>, Status> {
        self.operator(&request, OperatorRole::Viewer)?;
        let (valid, invalid) = documents::list::<_, D>(&self.store).await?;
        Ok(Response::new(ListPoliciesResponse {
            policies: valid
                .into_iter()
                .map(|d| StoredPolicy {
                    policy_json: d.json,
                    revision: d.revision,
                })
                .collect(),
            invalid,
        }))
    }

    async fn delete_policy<D: Document>(
        &self,
        request: Request<DeletePolicyRequest>,
        action: &'static str,
    ) -> Result<Response<DeletePolicyResponse>, Status> {
        let operator = self.operator(&request, OperatorRole::Admin)?;
        let request = request.into_inner();
        let (old, revision) =
            documents::delete::<_, D>(&self.store, &request.name, request.expected_revision)
                .await?;
        tracing::info!(kind = D::NOUN, name = %request.name, "deleted");
        self.audit(&operator, action, &request.name, old, revision);
        Ok(Response::new(DeletePolicyResponse {}))
    }
}

fn token_info(record: TokenRecord) -> TokenInfo {
    TokenInfo {
        id: record.id,
        identity: record.identity,
        created_unix: record.created_unix,
        expires_unix: record.expires_unix,
        revoked: record.revoked_unix.is_some(),
        created_by: record.created_by,
    }
}

#[tonic::async_trait]
impl<S: Store> MeshAdmin for AdminService<S> {
    async fn apply_route(
        &self,
        request: Request<ApplyRouteRequest>,
    ) -> Result<Response<ApplyRouteResponse>, Status> {
        let operator = self.operator(&request, OperatorRole::Admin)?;
        let request = request.into_inner();
        let route: Route = documents::parse(&request.route_json)?;
        let name = route.metadata.name.clone();
        let path = route.path();
        if let Some(other) = self
            .published
            .borrow()
            .table
            .routes
            .iter()
            .find(|r| r.path() == path && r.metadata.name != name)
        {
            return Err(Status::failed_precondition(format!(
                "spec.match: {path} is already routed by route {:?}",
                other.metadata.name
            )));
        }
        let applied = documents::apply(&self.store, &route, request.expected_revision).await?;
        if applied.changed {
            tracing::info!(route = %name, revision = applied.stored.revision, "route applied");
            self.audit(
                &operator,
                "apply-route",
                &name,
                applied.previous,
                applied.stored.revision,
            );
        }
        Ok(Response::new(ApplyRouteResponse {
            route: Some(StoredRoute {
                route_json: applied.stored.json,
                revision: applied.stored.revision,
            }),
            created: applied.created,
            changed: applied.changed,
        }))
    }

    async fn get_route(
        &self,
        request: Request<GetRouteRequest>,
    ) -> Result<Response<StoredRoute>, Status> {
        self.operator(&request, OperatorRole::Viewer)?;
        let found = documents::get::<_, Route>(&self.store, &request.get_ref().name).await?;
        Ok(Response::new(StoredRoute {
            route_json: found.json,
            revision: found.revision,
        }))
    }

    async fn list_routes(
        &self,
        request: Request<ListRoutesRequest>,
    ) -> Result<Response<ListRoutesResponse>, Status> {
        self.operator(&request, OperatorRole::Viewer)?;
        let (valid, invalid) = documents::list::<_, Route>(&self.store).await?;
        Ok(Response::new(ListRoutesResponse {
            routes: valid
                .into_iter()
                .map(|d| StoredRoute {
                    route_json: d.json,
                    revision: d.revision,
                })
                .collect(),
            invalid,
        }))
    }

    async fn delete_route(
        &self,
        request: Request<DeleteRouteRequest>,
    ) -> Result<Response<DeleteRouteResponse>, Status> {
        let operator = self.operator(&request, OperatorRole::Admin)?;
        let request = request.into_inner();
        let (old, revision) =
            documents::delete::<_, Route>(&self.store, &request.name, request.expected_revision)
                .await?;
        tracing::info!(route = %request.name, "route deleted");
        self.audit(&operator, "delete-route", &request.name, old, revision);
        Ok(Response::new(DeleteRouteResponse {}))
    }

    async fn apply_authorization_policy(
        &self,
        request: Request<ApplyPolicyRequest>,
    ) -> Result<Response<ApplyPolicyResponse>, Status> {
        self.apply_policy::<AuthorizationPolicy>(request, "apply-authorization-policy")
            .await
    }

    async fn get_authorization_policy(
        &self,
        request: Request<GetPolicyRequest>,
    ) -> Result<Response<StoredPolicy>, Status> {
        self.get_policy::<AuthorizationPolicy>(request).await
    }

    async fn list_authorization_policies(
        &self,
        request: Request<ListPoliciesRequest>,
    ) -> Result<Response<ListPoliciesResponse>, Status> {
        self.list_policies::<AuthorizationPolicy>(request).await
    }

    async fn delete_authorization_policy(
        &self,
        request: Request<DeletePolicyRequest>,
    ) -> Result<Response<DeletePolicyResponse>, Status> {
        self.delete_policy::<AuthorizationPolicy>(request, "delete-authorization-policy")
            .await
    }

    async fn apply_request_authentication(
        &self,
        request: Request<ApplyPolicyRequest>,
    ) -> Result<Response<ApplyPolicyResponse>, Status> {
        self.apply_policy::<RequestAuthentication>(request, "apply-request-authentication")
            .await
    }

    async fn get_request_authentication(
        &self,
        request: Request<GetPolicyRequest>,
    ) -> Result<Response<StoredPolicy>, Status> {
        self.get_policy::<RequestAuthentication>(request).await
    }

    async fn list_request_authentications(
        &self,
        request: Request<ListPoliciesRequest>,
    ) -> Result<Response<ListPoliciesResponse>, Status> {
        self.list_policies::<RequestAuthentication>(request).await
    }

    async fn delete_request_authentication(
        &self,
        request: Request<DeletePolicyRequest>,
    ) -> Result<Response<DeletePolicyResponse>, Status> {
        let name = request.get_ref().name.clone();
        let deleted = self
            .delete_policy::<RequestAuthentication>(request, "delete-request-authentication")
            .await?;
        // Its fetched key set goes with it (public keys, but stale ones).
        match self
            .store
            .delete(&crate::keys::jwks(&name), crate::store::Precondition::Any)
            .await
        {
            Ok(_) | Err(crate::store::StoreError::NotFound { .. }) => {}
            Err(error) => tracing::warn!(%error, "cannot delete the key set of {name:?}"),
        }
        Ok(deleted)
    }

    async fn get_default_authorization(
        &self,
        request: Request<GetDefaultAuthorizationRequest>,
    ) -> Result<Response<DefaultAuthorizationResponse>, Status> {
        self.operator(&request, OperatorRole::Viewer)?;
        Ok(Response::new(self.stored_default_authorization().await?))
    }

    async fn set_default_authorization(
        &self,
        request: Request<SetDefaultAuthorizationRequest>,
    ) -> Result<Response<DefaultAuthorizationResponse>, Status> {
        let operator = self.operator(&request, OperatorRole::Admin)?;
        let request = request.into_inner();
        let wanted =
            keys::default_authorization(&request.default).map_err(Status::invalid_argument)?;
        let precondition = documents::precondition(request.expected_revision)?;
        let current = self.stored_default_authorization().await?;
        let holds = match precondition {
            Precondition::Any => true,
            Precondition::Absent => current.revision == 0,
            Precondition::Revision(r) => r == current.revision,
        };
        if current.revision != 0 && current.default == wanted && holds {
            return Ok(Response::new(current));
        }
        let revision = self
            .store
            .put(
                keys::DEFAULT_AUTHORIZATION,
                wanted.as_bytes().to_vec(),
                precondition,
                None,
            )
            .await
            .map_err(documents::store_status)?;
        tracing::info!(
            default = wanted,
            revision,
            "mesh-wide default authorization stored"
        );
        self.audit(
            &operator,
            "set-default-authorization",
            &format!(
                "{} {} -> {wanted}",
                keys::DEFAULT_AUTHORIZATION,
                current.default
            ),
            current.revision,
            revision,
        );
        Ok(Response::new(DefaultAuthorizationResponse {
            default: wanted.to_owned(),
            revision,
        }))
    }

    async fn list_endpoints(
        &self,
        request: Request<ListEndpointsRequest>,
    ) -> Result<Response<ListEndpointsResponse>, Status> {
        self.operator(&request, OperatorRole::Viewer)?;
        let service = &request.get_ref().service;
        let prefix = if service.is_empty() {
            keys::ENDPOINTS.to_owned()
        } else {
            format!("{}{service}/", keys::ENDPOINTS)
        };
        let snapshot = self.store.get_prefix(&prefix).await.map_err(store_status)?;
        let endpoints = snapshot
            .items
            .iter()
            .filter(|kv| matches!(keys::parse(&kv.key), Key::Endpoint(..)))
            .filter_map(|kv| serde_json::from_slice::<Registration>(&kv.value).ok())
            .map(|r| RegisteredEndpoint {
                service: r.endpoint.service,
                instance: r.endpoint.instance,
                address: r.endpoint.address,
                version: r.endpoint.version,
                weight: r.endpoint.weight,
                grpc_services: r.grpc_services,
            })
            .collect();
        Ok(Response::new(ListEndpointsResponse { endpoints }))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        self.operator(&request, OperatorRole::Viewer)?;
        let replicas = self
            .store
            .get_prefix(keys::STATUS_REPLICAS)
            .await
            .map_err(store_status)?;
        let sidecars = self
            .store
            .get_prefix(keys::STATUS_SIDECARS)
            .await
            .map_err(store_status)?;
        let mut response = StatusResponse::default();
        if let Some(authority) = &self.authority {
            response.issuer_not_after_unix = unix(authority.issuer_not_after());
            response.issuer_fingerprint = authority.issuer_fingerprint();
        }
        response.trust_bundle_version = self
            .published
            .borrow()
            .trust_bundle
            .as_ref()
            .map_or(0, |b| b.version());
        // Without an authority this replica runs without mTLS: so does the
        // mesh, whatever mode is stored.
        response.mtls_mode = if self.authority.is_some() {
            self.published.borrow().mtls_mode.to_owned()
        } else {
            "off".to_owned()
        };
        for kv in replicas.items {
            let Ok(replica) = serde_json::from_slice::<ReplicaStatus>(&kv.value) else {
                continue;
            };
            response.replicas.push(Replica {
                id: replica.id,
                address: replica.address,
                revision: replica.revision,
                connected_sidecars: i32::try_from(replica.connected_sidecars).unwrap_or(i32::MAX),
            });
        }
        for kv in sidecars.items {
            let (Some(replica), Ok(s)) = (
                keys::sidecar_status_replica(&kv.key),
                serde_json::from_slice::<SidecarStatus>(&kv.value),
            ) else {
                continue;
            };
            response.sidecars.push(ConnectedSidecar {
                service: s.service,
                instance: s.instance,
                gateway: s.gateway,
                pushed_version: s.pushed_version,
                acked_version: s.acked_version,
                nack_reason: s.nack_reason,
                replica: replica.to_owned(),
                admin_address: s.admin_address,
                identity: s.identity,
                certificate_not_after_unix: s.certificate_not_after_unix,
                trust_bundle_version: s.trust_bundle_version,
                certificate_not_before_unix: s.certificate_not_before_unix,
                certificate_issuer_fingerprint: s.certificate_issuer_fingerprint,
            });
        }
        Ok(Response::new(response))
    }

    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let operator = self.operator(&request, OperatorRole::Admin)?;
        let request = request.into_inner();
        let workload = match (request.service.is_empty(), request.gateway.is_empty()) {
            (false, true) => mesh::identity::Workload::Service(request.service),
            (true, false) => mesh::identity::Workload::Gateway(request.gateway),
            _ => {
                return Err(Status::invalid_argument(
                    "service, gateway: give exactly one",
                ))
            }
        };
        let identity = mesh::identity::SpiffeId::new(&self.trust_domain, workload)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let ttl = match request.ttl_seconds {
            0 => tokens::DEFAULT_TTL,
            s if s > 0 => std::time::Duration::from_secs(s as u64),
            s => {
                return Err(Status::invalid_argument(format!(
                    "ttl_seconds: must not be negative, got {s}"
                )))
            }
        };
        let (token, record) = tokens::create(&self.store, &identity, ttl, &operator)
            .await
            .map_err(store_status)?;
        self.audit(
            &operator,
            "create-token",
            &format!("{} ({identity})", record.id),
            0,
            0,
        );
        Ok(Response::new(CreateTokenResponse {
            token,
            info: Some(token_info(record)),
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        self.operator(&request, OperatorRole::Viewer)?;
        let tokens = tokens::list(&self.store)
            .await
            .map_err(store_status)?
            .into_iter()
            .map(token_info)
            .collect();
        Ok(Response::new(ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        request: Request<RevokeTokenRequest>,
    ) -> Result<Response<RevokeTokenResponse>, Status> {
        let operator = self.operator(&request, OperatorRole::Admin)?;
        let id = &request.get_ref().id;
        if id.is_empty() || id.contains('/') {
            return Err(Status::invalid_argument("id: a token id is required"));
        }
        let record = tokens::revoke(&self.store, id).await.map_err(|e| match e {
            StoreError::NotFound { .. } => Status::not_found(format!("token {id:?} not found")),
            other => store_status(other),
        })?;
        self.audit(
            &operator,
            "revoke-token",
            &format!("{id} ({})", record.identity),
            0,
            0,
        );
        Ok(Response::new(RevokeTokenResponse {}))
    }

    async fn get_trust_bundle(
        &self,
        request: Request<GetTrustBundleRequest>,
    ) -> Result<Response<TrustBundleResponse>, Status> {
        self.operator(&request, OperatorRole::Admin)?;
        Ok(Response::new(self.trust_state().await?))
    }

    async fn set_trust_bundle(
        &self,
        request: Request<SetTrustBundleRequest>,
    ) -> Result<Response<TrustBundleResponse>, Status> {
        let operator = self.operator(&request, OperatorRole::Admin)?;
        let request = request.into_inner();
        mesh_ca::validate_bundle(&request.pem)
            .map_err(|e| Status::invalid_argument(format!("pem: {e}")))?;
        let precondition = precondition(request.expected_revision)?;
        let current = self.trust_state().await?;
        let precondition_holds = match precondition {
            Precondition::Any => true,
            Precondition::Absent => current.revision == 0,
            Precondition::Revision(r) => r == current.revision,
        };
        if current.pem == request.pem && precondition_holds {
            // Unchanged: no new version, so nothing is pushed again.
            return Ok(Response::new(current));
        }
        let revision = self
            .store
            .put(
                keys::TRUST_BUNDLE,
                request.pem.clone().into_bytes(),
                precondition,
                None,
            )
            .await
            .map_err(store_status)?;
        tracing::info!(revision, "trust bundle stored");
        self.audit(
            &operator,
            "set-trust-bundle",
            keys::TRUST_BUNDLE,
            current.revision,
            revision,
        );
        Ok(Response::new(TrustBundleResponse {
            pem: request.pem,
            revision,
            renew_issuer_fingerprint: current.renew_issuer_fingerprint,
        }))
    }

    async fn renew_certificates(
        &self,
        request: Request<RenewCertificatesRequest>,
    ) -> Result<Response<RenewCertificatesResponse>, Status> {
        let operator = self.operator(&request, OperatorRole::Admin)?;
        let fingerprint = request.into_inner().issuer_fingerprint.to_ascii_lowercase();
        if fingerprint.len() != 64 || !fingerprint.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Status::invalid_argument(
                "issuer_fingerprint: the SHA-256 of the issuer certificate, 64 hex digits",
            ));
        }
        let existing = self
            .store
            .get(keys::RENEW_ISSUER)
            .await
            .map_err(store_status)?;
        if let Some(kv) = existing
            .as_ref()
            .filter(|kv| kv.value == fingerprint.as_bytes())
        {
            return Ok(Response::new(RenewCertificatesResponse {
                revision: kv.mod_revision,
            }));
        }
        let revision = self
            .store
            .put(
                keys::RENEW_ISSUER,
                fingerprint.clone().into_bytes(),
                Precondition::Any,
                None,
            )
            .await
            .map_err(store_status)?;
        tracing::info!(issuer = %fingerprint, "proxies asked to renew under this issuer");
        self.audit(
            &operator,
            "renew-certificates",
            &fingerprint,
            existing.map_or(0, |kv| kv.mod_revision),
            revision,
        );
        Ok(Response::new(RenewCertificatesResponse { revision }))
    }

    async fn get_mtls_mode(
        &self,
        request: Request<GetMtlsModeRequest>,
    ) -> Result<Response<MtlsModeResponse>, Status> {
        self.operator(&request, OperatorRole::Viewer)?;
        Ok(Response::new(self.stored_mtls_mode().await?))
    }

    async fn set_mtls_mode(
        &self,
        request: Request<SetMtlsModeRequest>,
    ) -> Result<Response<MtlsModeResponse>, Status> {
        let operator = self.operator(&request, OperatorRole::Admin)?;
        let request = request.into_inner();
        let mode = keys::mtls_mode(&request.mode).map_err(Status::invalid_argument)?;
        let precondition = precondition(request.expected_revision)?;
        let current = self.stored_mtls_mode().await?;
        let precondition_holds = match precondition {
            Precondition::Any => true,
            Precondition::Absent => current.revision == 0,
            Precondition::Revision(r) => r == current.revision,
        };
        if current.revision != 0 && current.mode == mode && precondition_holds {
            // Unchanged: no new version, so nothing is pushed again.
            return Ok(Response::new(current));
        }
        let revision = self
            .store
            .put(
                keys::MTLS_MODE,
                mode.as_bytes().to_vec(),
                precondition,
                None,
            )
            .await
            .map_err(store_status)?;
        tracing::info!(mode, revision, "mesh-wide mTLS mode stored");
        self.audit(
            &operator,
            "set-mtls-mode",
            &format!("{} {} -> {mode}", keys::MTLS_MODE, current.mode),
            current.revision,
            revision,
        );
        Ok(Response::new(MtlsModeResponse {
            mode: mode.to_owned(),
            revision,
        }))
    }
}

fn unix(time: std::time::SystemTime) -> i64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

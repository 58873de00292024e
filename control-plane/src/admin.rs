//! The MeshAdmin gRPC service behind `meshctl`. Reads go to the store (not
//! the replica's index) so a write is visible to the next read at once;
//! writes are validated first and compare-and-swap on the stored revision.

use std::sync::Arc;

use mesh::model::Route;
use mesh::proto::mesh::v1::mesh_admin_server::MeshAdmin;
use mesh::proto::mesh::v1::{
    ApplyRouteRequest, ApplyRouteResponse, ConnectedSidecar, DeleteRouteRequest,
    DeleteRouteResponse, GetRouteRequest, ListEndpointsRequest, ListEndpointsResponse,
    ListRoutesRequest, ListRoutesResponse, RegisteredEndpoint, Replica, StatusRequest,
    StatusResponse, StoredRoute,
};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::index::Published;
use crate::keys::{self, Key};
use crate::registration::{Registration, ReplicaStatus};
use crate::store::{Precondition, Store, StoreError};

/// The MeshAdmin service of one replica.
pub struct AdminService<S> {
    store: S,
    published: watch::Receiver<Arc<Published>>,
}

impl<S: Store> AdminService<S> {
    /// An admin API over `store`; `published` is used to refuse a route whose
    /// gRPC path another route already takes.
    pub fn new(store: S, published: watch::Receiver<Arc<Published>>) -> Self {
        Self { store, published }
    }
}

fn store_status(error: StoreError) -> Status {
    match error {
        StoreError::Conflict {
            key,
            expected,
            actual,
        } => Status::aborted(format!(
            "conflict on {key}: expected {}, found {}; read it again and re-apply",
            describe_precondition(expected),
            actual.map_or("no value".to_owned(), |r| format!("revision {r}"))
        )),
        StoreError::NotFound { key } => Status::not_found(format!("{key} not found")),
        other => Status::unavailable(format!("store: {other}")),
    }
}

fn describe_precondition(p: Precondition) -> String {
    match p {
        Precondition::Any => "anything".into(),
        Precondition::Absent => "no value".into(),
        Precondition::Revision(r) => format!("revision {r}"),
    }
}

fn precondition(expected: Option<i64>) -> Result<Precondition, Status> {
    match expected {
        None => Ok(Precondition::Any),
        Some(0) => Ok(Precondition::Absent),
        Some(r) if r > 0 => Ok(Precondition::Revision(r)),
        Some(r) => Err(Status::invalid_argument(format!(
            "expected_revision: must not be negative, got {r}"
        ))),
    }
}

fn route_name(name: &str) -> Result<&str, Status> {
    if name.is_empty() || name.contains('/') {
        return Err(Status::invalid_argument("name: a route name is required"));
    }
    Ok(name)
}

#[tonic::async_trait]
impl<S: Store> MeshAdmin for AdminService<S> {
    async fn apply_route(
        &self,
        request: Request<ApplyRouteRequest>,
    ) -> Result<Response<ApplyRouteResponse>, Status> {
        let request = request.into_inner();
        let route: Route = serde_json::from_str(&request.route_json)
            .map_err(|e| Status::invalid_argument(format!("route: {e}")))?;
        route
            .validate()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
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
        let precondition = precondition(request.expected_revision)?;
        let key = keys::route(&name);
        let value = serde_json::to_vec(&route).map_err(|e| Status::internal(e.to_string()))?;
        let existing = self.store.get(&key).await.map_err(store_status)?;
        if let Some(existing) = &existing {
            let unchanged =
                serde_json::from_slice::<Route>(&existing.value).is_ok_and(|r| r == route);
            let precondition_holds = match precondition {
                Precondition::Any => true,
                Precondition::Absent => false,
                Precondition::Revision(r) => r == existing.mod_revision,
            };
            if unchanged && precondition_holds {
                return Ok(Response::new(ApplyRouteResponse {
                    route: Some(StoredRoute {
                        route_json: String::from_utf8_lossy(&existing.value).into_owned(),
                        revision: existing.mod_revision,
                    }),
                    created: false,
                    changed: false,
                }));
            }
        }
        let revision = self
            .store
            .put(&key, value.clone(), precondition, None)
            .await
            .map_err(store_status)?;
        tracing::info!(route = %name, revision, "route applied");
        Ok(Response::new(ApplyRouteResponse {
            route: Some(StoredRoute {
                route_json: String::from_utf8_lossy(&value).into_owned(),
                revision,
            }),
            created: existing.is_none(),
            changed: true,
        }))
    }

    async fn get_route(
        &self,
        request: Request<GetRouteRequest>,
    ) -> Result<Response<StoredRoute>, Status> {
        let name = route_name(&request.get_ref().name)?;
        let found = self
            .store
            .get(&keys::route(name))
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("route {name:?} not found")))?;
        Ok(Response::new(StoredRoute {
            route_json: String::from_utf8_lossy(&found.value).into_owned(),
            revision: found.mod_revision,
        }))
    }

    async fn list_routes(
        &self,
        _request: Request<ListRoutesRequest>,
    ) -> Result<Response<ListRoutesResponse>, Status> {
        let snapshot = self
            .store
            .get_prefix(keys::ROUTES)
            .await
            .map_err(store_status)?;
        let mut response = ListRoutesResponse::default();
        for kv in snapshot.items {
            let valid = serde_json::from_slice::<Route>(&kv.value)
                .map_err(|e| e.to_string())
                .and_then(|r| r.validate().map_err(|e| e.to_string()));
            match valid {
                Ok(()) => response.routes.push(StoredRoute {
                    route_json: String::from_utf8_lossy(&kv.value).into_owned(),
                    revision: kv.mod_revision,
                }),
                Err(why) => response.invalid.push(format!("{}: {why}", kv.key)),
            }
        }
        Ok(Response::new(response))
    }

    async fn delete_route(
        &self,
        request: Request<DeleteRouteRequest>,
    ) -> Result<Response<DeleteRouteResponse>, Status> {
        let request = request.into_inner();
        let name = route_name(&request.name)?;
        let precondition = precondition(request.expected_revision)?;
        self.store
            .delete(&keys::route(name), precondition)
            .await
            .map_err(|e| match e {
                StoreError::NotFound { .. } => {
                    Status::not_found(format!("route {name:?} not found"))
                }
                other => store_status(other),
            })?;
        tracing::info!(route = %name, "route deleted");
        Ok(Response::new(DeleteRouteResponse {}))
    }

    async fn list_endpoints(
        &self,
        request: Request<ListEndpointsRequest>,
    ) -> Result<Response<ListEndpointsResponse>, Status> {
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
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let snapshot = self
            .store
            .get_prefix(keys::REPLICAS)
            .await
            .map_err(store_status)?;
        let mut response = StatusResponse::default();
        for kv in snapshot.items {
            let Ok(replica) = serde_json::from_slice::<ReplicaStatus>(&kv.value) else {
                continue;
            };
            response.replicas.push(Replica {
                id: replica.id.clone(),
                address: replica.address.clone(),
                revision: replica.revision,
                connected_sidecars: i32::try_from(replica.sidecars.len()).unwrap_or(i32::MAX),
            });
            response
                .sidecars
                .extend(replica.sidecars.into_iter().map(|s| ConnectedSidecar {
                    service: s.service,
                    instance: s.instance,
                    gateway: s.gateway,
                    pushed_version: s.pushed_version,
                    acked_version: s.acked_version,
                    nack_reason: s.nack_reason,
                    replica: replica.id.clone(),
                    admin_address: s.admin_address,
                }));
        }
        Ok(Response::new(response))
    }
}

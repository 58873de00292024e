//! Who may call what on a replica. Every gRPC call arrives over mutual TLS
//! (unless the mesh runs with mTLS off, on request): the caller's
//! certificate says who it is. Operators (meshctl) need an operator
//! certificate whose subject organization names their role; proxies are
//! bound to the service or gateway their certificate names.

use mesh::identity::transport::TlsConnectInfo;
use mesh::identity::{OperatorRole, SpiffeId, Workload};
use tonic::Status;

/// Whether calls are authenticated at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// mTLS and identity checks (the default).
    Enforced,
    /// mTLS off, explicitly: anyone who reaches the port may do anything.
    Open,
}

/// The connection facts tonic put on the request.
pub fn connection(extensions: &http::Extensions) -> Option<&TlsConnectInfo> {
    extensions.get::<TlsConnectInfo>()
}

/// The operator behind a call, if it may act with `need`; its name is
/// what audit lines show. With [`Access::Open`] the caller is "anonymous".
pub fn operator(
    access: Access,
    extensions: &http::Extensions,
    need: OperatorRole,
) -> Result<String, Status> {
    if access == Access::Open {
        return Ok("anonymous".to_owned());
    }
    let info = connection(extensions)
        .ok_or_else(|| Status::unauthenticated("no TLS connection information"))?;
    let Some(id) = &info.peer.0 else {
        return Err(Status::unauthenticated(
            "an operator certificate is required (meshctl identity issue-operator)",
        ));
    };
    let Workload::Operator(name) = id.workload() else {
        return Err(Status::permission_denied(format!(
            "{id} is not an operator"
        )));
    };
    let role = OperatorRole::from_organizations(&info.organizations);
    match role {
        Some(role) if role >= need => Ok(name.clone()),
        Some(role) => Err(Status::permission_denied(format!(
            "operator {name} is a {role:?}; this needs {need:?}"
        ))),
        None => Err(Status::permission_denied(format!(
            "operator {name} has no role"
        ))),
    }
}

/// The workload identity behind a call (a proxy), if it presented one.
pub fn workload(access: Access, extensions: &http::Extensions) -> Result<Option<SpiffeId>, Status> {
    if access == Access::Open {
        return Ok(None);
    }
    let info = connection(extensions)
        .ok_or_else(|| Status::unauthenticated("no TLS connection information"))?;
    match &info.peer.0 {
        Some(id) => Ok(Some(id.clone())),
        None => Err(Status::unauthenticated(
            "a proxy certificate is required (from mesh.v1.Identity/Certify)",
        )),
    }
}

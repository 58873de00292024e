//! Operator roles, carried in an operator certificate's subject organization
//! (as Kubernetes reads groups from client certificates): meshctl asks for
//! one when it issues the certificate, the control plane reads it back on
//! every admin call. One definition, so the two cannot drift apart.

/// The subject organization of an operator certificate that may change the
/// mesh.
pub const ADMIN_ORGANIZATION: &str = "mesh:admin";
/// The subject organization of an operator certificate that may only read.
pub const VIEWER_ORGANIZATION: &str = "mesh:viewer";

/// What an operator may do; `Admin` includes everything `Viewer` may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum OperatorRole {
    /// get, describe, status, token list.
    Viewer,
    /// Also apply, delete, token create and revoke.
    Admin,
}

impl OperatorRole {
    /// The subject organization that grants this role.
    pub fn organization(self) -> &'static str {
        match self {
            Self::Viewer => VIEWER_ORGANIZATION,
            Self::Admin => ADMIN_ORGANIZATION,
        }
    }

    /// The highest role a certificate's organizations grant, if any.
    pub fn from_organizations<S: AsRef<str>>(organizations: &[S]) -> Option<Self> {
        let has = |wanted: &str| organizations.iter().any(|o| o.as_ref() == wanted);
        if has(ADMIN_ORGANIZATION) {
            Some(Self::Admin)
        } else if has(VIEWER_ORGANIZATION) {
            Some(Self::Viewer)
        } else {
            None
        }
    }
}

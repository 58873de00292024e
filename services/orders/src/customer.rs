//! Whose order it is. Behind a gateway that verifies bearer tokens, the
//! customer is the token's subject (forwarded as verified metadata), never
//! what the request body says: placing an order for someone else, or
//! reading or watching theirs, is PERMISSION_DENIED. A token with the
//! `admin` role may read anyone's orders.
//!
//! A shop without a users service has no tokens: `--customer-from request`
//! takes the body's `customer_id` as it did before logins existed.

use tonic::{Request, Status};

/// Where the customer of a call comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CustomerFrom {
    /// The verified token subject (the default).
    Subject,
    /// The request's `customer_id`, trusted as sent.
    Request,
}

impl CustomerFrom {
    /// The customer an order is placed for: the subject (the body's
    /// `customer_id` may be empty or the same), or the body's.
    pub fn customer<T>(self, request: &Request<T>, in_body: &str) -> Result<String, Status> {
        match self {
            Self::Request => Ok(in_body.to_owned()),
            Self::Subject => {
                let subject = mesh::app::caller::required_subject(request)?;
                if !in_body.is_empty() && in_body != subject {
                    return Err(Status::permission_denied(
                        "customer_id: orders are placed for the logged-in customer only",
                    ));
                }
                Ok(subject)
            }
        }
    }

    /// Whether the caller may read (or watch) an order of `owner`.
    pub fn may_read<T>(self, request: &Request<T>, owner: &str) -> Result<(), Status> {
        if self == Self::Request {
            return Ok(());
        }
        let subject = mesh::app::caller::required_subject(request)?;
        let admin = mesh::app::caller::claims(request)
            .get("role")
            .is_some_and(|role| role == "admin");
        if subject == owner || admin {
            Ok(())
        } else {
            Err(Status::permission_denied(
                "this order belongs to another customer",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(subject: Option<&str>, role: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(subject) = subject {
            request
                .metadata_mut()
                .insert(mesh::app::caller::AUTH_SUBJECT, subject.parse().unwrap());
        }
        if let Some(role) = role {
            let claims = format!(r#"{{"role":"{role}"}}"#);
            request
                .metadata_mut()
                .insert(mesh::app::caller::AUTH_CLAIMS, claims.parse().unwrap());
        }
        request
    }

    #[test]
    fn the_customer_is_the_subject_and_no_one_else() {
        let from = CustomerFrom::Subject;
        let alice = request(Some("usr_alice"), None);
        assert_eq!(from.customer(&alice, "").unwrap(), "usr_alice");
        assert_eq!(from.customer(&alice, "usr_alice").unwrap(), "usr_alice");
        let other = from.customer(&alice, "usr_bob").unwrap_err();
        assert_eq!(other.code(), tonic::Code::PermissionDenied);
        let anonymous = from.customer(&request(None, None), "usr_bob").unwrap_err();
        assert_eq!(anonymous.code(), tonic::Code::Unauthenticated);
        assert_eq!(
            CustomerFrom::Request
                .customer(&request(None, None), "usr_bob")
                .unwrap(),
            "usr_bob"
        );
    }

    #[test]
    fn only_the_owner_or_an_admin_reads_an_order() {
        let from = CustomerFrom::Subject;
        assert!(from
            .may_read(&request(Some("usr_alice"), None), "usr_alice")
            .is_ok());
        let code = |r: Result<(), Status>| r.unwrap_err().code();
        assert_eq!(
            code(from.may_read(&request(Some("usr_bob"), None), "usr_alice")),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            code(from.may_read(&request(None, None), "usr_alice")),
            tonic::Code::Unauthenticated
        );
        assert!(from
            .may_read(&request(Some("usr_eve"), Some("admin")), "usr_alice")
            .is_ok());
    }
}

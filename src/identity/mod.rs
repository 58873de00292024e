//! Workload identity and mutual TLS, shared by every mesh process.
//!
//! # Layout
//!
//! - [`spiffe`]: SPIFFE IDs, the only names identities go by.
//! - [`certificate`]: what is read from a certificate (its SPIFFE ID,
//!   validity, organizations) and PEM in and out.
//! - [`tls`]: a process's live TLS state (trust bundle and credential,
//!   swapped on rotation and renewal) and the rustls configurations built
//!   from it, with a verifier that checks the peer's SPIFFE ID.
//! - [`csr`]: a fresh key and a certificate request for it.
//! - [`operator`]: operator roles and the certificate organizations that
//!   grant them.
//! - [`transport`]: TLS over TCP for mesh servers and clients: the
//!   handshake with its timeout, the peer's identity on each request, and a
//!   tonic channel that checks whom it reached.

pub mod certificate;
pub mod csr;
pub mod operator;
pub mod spiffe;
pub mod tls;
pub mod transport;

pub use certificate::{CertificateError, CertificateInfo};
pub use operator::OperatorRole;
pub use spiffe::{SpiffeId, SpiffeIdError, Workload};
pub use tls::{ClientAuth, Credential, MeshTls, TlsError, TrustBundle};
pub use transport::PeerIdentity;

/// The trust domain when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "mesh.local";

/// Parses a certificate or token lifetime: a whole number with a unit, `s`,
/// `m`, `h` or `d` (`30s`, `24h`, `720h`, `365d`); at least a second, at
/// most ten years.
pub fn parse_lifetime(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} needs a unit: s, m, h or d (e.g. 24h)"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a lifetime like 24h"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    let seconds = number.saturating_mul(scale);
    if seconds == 0 || seconds > 10 * 365 * 86_400 {
        return Err(format!("{text:?} must be between 1s and 3650d"));
    }
    Ok(std::time::Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::parse_lifetime;
    use std::time::Duration;

    #[test]
    fn lifetimes_have_units_and_bounds() {
        assert_eq!(parse_lifetime("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_lifetime("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_lifetime("2d"), Ok(Duration::from_secs(172_800)));
        for bad in ["", "24", "h", "0s", "1.5h", "-1h", "99999d", "24 h", "1y"] {
            assert!(parse_lifetime(bad).is_err(), "{bad}");
        }
    }
}

//! `meshctl check`: is the mesh's identity healthy, in a form a cron job or
//! a CI step can act on. It exits non-zero, with one line per problem, when
//! a live proxy certificate expires within the threshold (its renewal is
//! failing: renewal normally happens at 70 % of the lifetime), when a proxy
//! runs an older trust bundle than the stored one (a rotation would strand
//! it), or when the issuer itself expires within 30 days (nothing renews
//! it: an operator must rotate). Otherwise it prints what it checked.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use mesh::proto::mesh::v1::{ConnectedSidecar, StatusRequest, StatusResponse};

use super::identity::human_seconds;
use super::{ControlPlaneArgs, GrpcError};

/// The issuer must have at least this long left: time to run a rotation
/// calmly.
pub const ISSUER_THRESHOLD: Duration = Duration::from_secs(30 * 86_400);

/// Options of `meshctl check`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// A proxy certificate that expires sooner than this is a problem.
    #[arg(long, default_value = "1h", value_parser = mesh::identity::parse_lifetime)]
    pub expiry_threshold: Duration,
}

/// What a check found: lines that passed, and problems.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Findings {
    /// What was checked and holds.
    pub ok: Vec<String>,
    /// One line per problem.
    pub problems: Vec<String>,
}

/// `service/instance`, or `gateway/instance`.
fn proxy_name(sidecar: &ConnectedSidecar) -> String {
    if sidecar.gateway {
        format!("gateway/{}", sidecar.instance)
    } else {
        format!("{}/{}", sidecar.service, sidecar.instance)
    }
}

/// The checks on `status` at `now` (Unix seconds).
pub fn check(status: &StatusResponse, now: i64, expiry_threshold: Duration) -> Findings {
    let mut findings = Findings::default();
    if status.issuer_not_after_unix == 0 {
        findings
            .ok
            .push("ok   the control plane runs without mTLS: no certificates to check".into());
        return findings;
    }
    let issuer_left = status.issuer_not_after_unix - now;
    let issuer_threshold = seconds(ISSUER_THRESHOLD);
    if issuer_left < issuer_threshold {
        findings.problems.push(format!(
            "FAIL the issuer {} (less than {} left): rotate it (meshctl identity rotate)",
            expires(issuer_left),
            human_seconds(issuer_threshold)
        ));
    } else {
        findings.ok.push(format!(
            "ok   the issuer expires in {}",
            human_seconds(issuer_left)
        ));
    }
    if status.sidecars.is_empty() {
        findings.ok.push("ok   no proxies connected".into());
        return findings;
    }
    let threshold = seconds(expiry_threshold);
    let mut sidecars: Vec<&ConnectedSidecar> = status.sidecars.iter().collect();
    sidecars.sort_by_key(|s| (s.gateway, s.service.clone(), s.instance.clone()));
    let mut soonest: Option<(i64, String)> = None;
    let (mut expiring, mut behind) = (0, 0);
    for sidecar in sidecars {
        let name = proxy_name(sidecar);
        if sidecar.certificate_not_after_unix == 0 {
            expiring += 1;
            findings
                .problems
                .push(format!("FAIL {name} reports no certificate"));
        } else {
            let left = sidecar.certificate_not_after_unix - now;
            if left < threshold {
                expiring += 1;
                findings.problems.push(format!(
                    "FAIL {name}: its certificate {} (threshold {})",
                    expires(left),
                    human_seconds(threshold)
                ));
            }
            if soonest.as_ref().is_none_or(|(s, _)| left < *s) {
                soonest = Some((left, name.clone()));
            }
        }
        if sidecar.trust_bundle_version < status.trust_bundle_version {
            behind += 1;
            findings.problems.push(format!(
                "FAIL {name} runs trust bundle version {}; the stored one is {}",
                sidecar.trust_bundle_version, status.trust_bundle_version
            ));
        }
    }
    let count = status.sidecars.len();
    if expiring == 0 {
        let soonest = soonest
            .map(|(left, name)| format!(" (soonest: {name} in {})", human_seconds(left)))
            .unwrap_or_default();
        findings.ok.push(format!(
            "ok   {count} proxies: every certificate valid for more than {}{soonest}",
            human_seconds(threshold)
        ));
    }
    if behind == 0 {
        findings.ok.push(format!(
            "ok   {count} proxies run the stored trust bundle (version {})",
            status.trust_bundle_version
        ));
    }
    findings
}

/// "expires in 3h", or "has expired".
fn expires(left: i64) -> String {
    if left <= 0 {
        "has expired".into()
    } else {
        format!("expires in {}", human_seconds(left))
    }
}

fn seconds(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

/// Runs `meshctl check`: prints every line; an error (exit 1) if any
/// problem was found.
pub async fn run(cp: &ControlPlaneArgs, args: CheckArgs) -> anyhow::Result<()> {
    let mut client = cp.connect().await?;
    let status = client
        .status(StatusRequest {})
        .await
        .map_err(GrpcError)
        .context("cannot get the status")?
        .into_inner();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, seconds);
    let findings = check(&status, now, args.expiry_threshold);
    for line in findings.ok.iter().chain(&findings.problems) {
        println!("{line}");
    }
    match findings.problems.len() {
        0 => Ok(()),
        n => anyhow::bail!("meshctl check found {n} problem(s)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000_000;
    const HOUR: i64 = 3600;

    fn proxy(instance: &str, expires_in: i64, bundle: u64) -> ConnectedSidecar {
        ConnectedSidecar {
            service: "catalog".into(),
            instance: instance.into(),
            certificate_not_after_unix: NOW + expires_in,
            trust_bundle_version: bundle,
            ..ConnectedSidecar::default()
        }
    }

    fn status(sidecars: Vec<ConnectedSidecar>) -> StatusResponse {
        StatusResponse {
            sidecars,
            issuer_not_after_unix: NOW + 365 * 24 * HOUR,
            trust_bundle_version: 7,
            ..StatusResponse::default()
        }
    }

    #[test]
    fn a_healthy_mesh_passes_with_ok_lines() {
        let found = check(
            &status(vec![proxy("c-1", 24 * HOUR, 7), proxy("c-2", 20 * HOUR, 7)]),
            NOW,
            Duration::from_secs(3600),
        );
        assert!(found.problems.is_empty(), "{found:?}");
        assert_eq!(found.ok.len(), 3, "{found:?}");
        assert!(found.ok[1].contains("catalog/c-2"), "{found:?}");
    }

    #[test]
    fn each_problem_gets_its_line() {
        let mut mesh = status(vec![
            proxy("c-1", 20, 7),
            proxy("c-2", 24 * HOUR, 6),
            ConnectedSidecar {
                gateway: true,
                instance: "gw".into(),
                trust_bundle_version: 7,
                ..ConnectedSidecar::default()
            },
        ]);
        mesh.issuer_not_after_unix = NOW + 10 * 24 * HOUR;
        let found = check(&mesh, NOW, Duration::from_secs(3600));
        assert_eq!(found.problems.len(), 4, "{found:?}");
        assert!(found.problems[0].contains("issuer expires"), "{found:?}");
        assert!(found.problems[1].contains("catalog/c-1: its certificate expires"));
        assert!(found.problems[2].contains("catalog/c-2 runs trust bundle version 6"));
        assert!(found.problems[3].contains("gateway/gw reports no certificate"));
        assert!(found.ok.is_empty(), "{found:?}");
    }

    #[test]
    fn without_mtls_there_is_nothing_to_check() {
        let found = check(&StatusResponse::default(), NOW, Duration::from_secs(60));
        assert!(found.problems.is_empty());
        assert_eq!(found.ok.len(), 1);
    }
}

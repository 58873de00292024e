use std::sync::atomic::AtomicUsize;
use std::sync::Mutex;

use super::*;
use crate::test_pki::TestCa;

fn info(not_before: SystemTime, lifetime: Duration) -> CertificateInfo {
    CertificateInfo {
        id: SpiffeId::service("mesh.local", "orders").unwrap(),
        not_before,
        not_after: not_before + lifetime,
        organizations: Vec::new(),
    }
}

#[test]
fn renews_at_seventy_percent_plus_bounded_jitter() {
    let start = UNIX_EPOCH + Duration::from_secs(1_000_000);
    let cert = info(start, Duration::from_secs(100));
    assert_eq!(renewal_delay(&cert, start, 0.0), Duration::from_secs(70));
    assert_eq!(renewal_delay(&cert, start, 1.0), Duration::from_secs(75));
    let mid = renewal_delay(&cert, start, 0.5);
    assert!(mid > Duration::from_secs(70) && mid < Duration::from_secs(75));
    // Out-of-range jitter is clamped, never past 75 %.
    assert_eq!(renewal_delay(&cert, start, 7.0), Duration::from_secs(75));
    // Later on, what is left of the wait.
    let later = start + Duration::from_secs(60);
    assert_eq!(renewal_delay(&cert, later, 0.0), Duration::from_secs(10));
    // Past the renewal point, or expired: at once.
    assert_eq!(
        renewal_delay(&cert, start + Duration::from_secs(80), 0.0),
        Duration::ZERO
    );
    assert_eq!(
        renewal_delay(&cert, start + Duration::from_secs(500), 1.0),
        Duration::ZERO
    );
    // A 24 h certificate renews between 16.8 h and 18 h.
    let day = info(start, Duration::from_secs(86_400));
    assert_eq!(renewal_delay(&day, start, 0.0), Duration::from_secs(60_480));
    assert_eq!(renewal_delay(&day, start, 1.0), Duration::from_secs(64_800));
}

/// A CA that fails its first `failures` requests, then issues certificates
/// of `lifetime` for `issue_to`, noting when each request came.
struct FakeCa {
    ca: TestCa,
    issue_to: SpiffeId,
    lifetime: Duration,
    failures: usize,
    calls: AtomicUsize,
    at: Mutex<Vec<tokio::time::Instant>>,
}

impl Certifier for Arc<FakeCa> {
    async fn certify(&self, _tls: &Arc<MeshTls>) -> Result<Certified, IdentityError> {
        self.at.lock().unwrap().push(tokio::time::Instant::now());
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.failures {
            return Err(IdentityError::ControlPlane {
                replica: "fake".into(),
                message: "unavailable".into(),
            });
        }
        Ok(Certified {
            credential: self.ca.credential(&self.issue_to, self.lifetime),
            bundle: Some(self.ca.bundle(7)),
        })
    }
}

fn setup(issue_to: &SpiffeId, failures: usize) -> (Arc<Identity>, Arc<FakeCa>) {
    let ca = TestCa::new();
    let identity = Identity::new(
        SpiffeId::service("mesh.local", "orders").unwrap(),
        ca.bundle(0),
        IdentityMetrics::default(),
    )
    .unwrap();
    let fake = Arc::new(FakeCa {
        ca,
        issue_to: issue_to.clone(),
        lifetime: Duration::from_secs(100),
        failures,
        calls: AtomicUsize::new(0),
        at: Mutex::new(Vec::new()),
    });
    (Arc::new(identity), fake)
}

#[tokio::test(start_paused = true)]
async fn certifies_at_once_retries_with_backoff_then_renews_on_schedule() {
    let orders = SpiffeId::service("mesh.local", "orders").unwrap();
    let (identity, ca) = setup(&orders, 2);
    let stop = CancellationToken::new();
    let mut changes = identity.subscribe();
    let start = tokio::time::Instant::now();
    tokio::spawn(identity.clone().run(ca.clone(), stop.clone()));

    assert!(identity.wait_for_credential(&stop).await);
    let first = tokio::time::Instant::now();
    // Two failures, each followed by a jittered wait of at most 200 ms, 400 ms.
    assert!(
        first - start <= Duration::from_millis(600),
        "{:?}",
        first - start
    );
    assert_eq!(ca.calls.load(Ordering::SeqCst), 3);
    assert!(changes.has_changed().unwrap());
    changes.borrow_and_update();
    let report = identity.report().unwrap();
    assert_eq!(report.trust_bundle_version, 7, "the CA's bundle is applied");

    // The renewal comes between 70 % and 75 % of the 100 s lifetime (the
    // certificate's start is truncated to whole seconds).
    changes.changed().await.unwrap();
    let renewed = tokio::time::Instant::now() - first;
    assert!(
        renewed > Duration::from_secs(69) && renewed <= Duration::from_secs(75),
        "{renewed:?}"
    );
    assert_eq!(ca.calls.load(Ordering::SeqCst), 4);

    // And again, one renewal per schedule, not more.
    tokio::time::sleep(Duration::from_secs(150)).await;
    let calls = ca.calls.load(Ordering::SeqCst);
    assert!((6..=7).contains(&calls), "{calls} calls");
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_certificate_for_someone_else_is_a_failure_and_keeps_nothing() {
    let payments = SpiffeId::service("mesh.local", "payments").unwrap();
    let (identity, ca) = setup(&payments, 0);
    let stop = CancellationToken::new();
    tokio::spawn(identity.clone().run(ca.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(identity.tls().credential().is_none());
    // Retried with backoff (capped at 10 s), not in a tight loop.
    let calls = ca.calls.load(Ordering::SeqCst);
    assert!((3..=40).contains(&calls), "{calls} calls");
    stop.cancel();
}

#[test]
fn install_refuses_another_identity_and_reports_after_one() {
    let ca = TestCa::new();
    let orders = SpiffeId::service("mesh.local", "orders").unwrap();
    let identity = Identity::new(orders.clone(), ca.bundle(0), IdentityMetrics::default()).unwrap();
    assert!(identity.report().is_none());
    let gateway = SpiffeId::new("mesh.local", Workload::Gateway("edge".into())).unwrap();
    let wrong = ca.credential(&gateway, Duration::from_secs(60));
    assert!(matches!(
        identity.install(wrong),
        Err(IdentityError::WrongIdentity { .. })
    ));
    identity
        .install(ca.credential(&orders, Duration::from_secs(60)))
        .unwrap();
    let report = identity.report().unwrap();
    assert_eq!(report.trust_bundle_version, 0);
    let view = identity.view();
    assert_eq!(
        view.identity.as_deref(),
        Some("spiffe://mesh.local/svc/orders")
    );
    assert!(view.certificate.unwrap().expires_in_seconds <= 60);
    // The same bundle again changes nothing; a new version does.
    assert!(!identity.set_bundle(ca.bundle(0)).unwrap());
    assert!(identity.set_bundle(ca.bundle(1)).unwrap());
}

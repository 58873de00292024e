//! [`EtcdStore`]: the [`Store`] API over etcd v3 (`etcd-client`).
//!
//! Compare-and-swap is one etcd transaction: compare the key's mod revision
//! (or its version, for "absent"), put or delete if it holds, else read the
//! key so the conflict can say what it found, all at one revision.
//!
//! Over `https://` endpoints the client speaks TLS with a client
//! certificate ([`EtcdTls`]): etcd runs with `--client-cert-auth` and
//! refuses anyone without a certificate its trusted CA signed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::proto::{PbEvent, PbKeyValue, PbTxnOpResponse};
use etcd_client::{
    Certificate, Client, CompactionOptions, Compare, CompareOp, ConnectOptions, EventType,
    GetOptions, Identity, PutOptions, ResponseHeader, TlsOptions, Txn, TxnOp, TxnResponse,
    WatchOptions, WatchResponse,
};
use tonic::Code;

use super::{
    ttl_seconds, KeyValue, LeaseId, Precondition, Revision, Snapshot, Store, StoreError,
    WatchBatch, WatchEvent, WatchStream,
};

/// Longest wait for the answer to one request (for a stream: its opening),
/// past which etcd counts as unavailable. Above etcd's own 5 s proposal
/// timeout plus a margin, so its "request timed out" arrives first.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(7);

/// HTTP/2 pings while streams (watches) are open, so a silently dead etcd
/// ends the watch within interval + timeout instead of never. etcd refuses
/// pings more often than every 5 s, and pings with no stream open at all.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// What etcd answers (gRPC NOT_FOUND) for a lease that has ended.
const LEASE_NOT_FOUND: &str = "requested lease not found";

/// etcd as the control plane's [`Store`]. One client (one balanced HTTP/2
/// channel that reconnects by itself) shared by every clone.
#[derive(Clone)]
pub struct EtcdStore {
    /// Behind an `Arc`: the client is 3.5 KiB inline, and every sidecar
    /// session holds a clone of the store.
    client: Arc<Client>,
    endpoints: Arc<[String]>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

impl EtcdStore {
    /// Connects to etcd at `endpoints` (e.g. `http://127.0.0.1:2379`) and
    /// checks that one answers within `connect_timeout`: the channel itself
    /// connects lazily, and a control plane should fail at start-up, not at
    /// its first write.
    pub async fn connect(
        endpoints: &[String],
        connect_timeout: Duration,
    ) -> Result<Self, StoreError> {
        Self::connect_with(endpoints, connect_timeout, None).await
    }

    /// [`EtcdStore::connect`], over TLS with a client certificate when
    /// `tls` is given. The endpoints' schemes must agree with it
    /// ([`EtcdTls::check_endpoints`]).
    pub async fn connect_with(
        endpoints: &[String],
        connect_timeout: Duration,
        tls: Option<&EtcdTls>,
    ) -> Result<Self, StoreError> {
        EtcdTls::check_endpoints(endpoints, tls).map_err(StoreError::Rejected)?;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(connect_timeout)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT);
        if let Some(tls) = tls {
            options = options.with_tls(tls.options());
        }
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(store_error)?;
        let store = Self {
            client: Arc::new(client),
            endpoints: endpoints.into(),
        };
        let mut kv = store.client.kv_client();
        let probe = kv.get("/", Some(GetOptions::new().with_count_only()));
        match tokio::time::timeout(connect_timeout, probe).await {
            Ok(Ok(_)) => Ok(store),
            Ok(Err(error)) => Err(store_error(error)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer from etcd at {} within {connect_timeout:?}",
                endpoints.join(",")
            ))),
        }
    }

    /// Discards history before `revision`, as etcd operators (and tests) do
    /// to bound its size: watches from older revisions get `Compacted`.
    pub async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.client
            .kv_client()
            .compact(revision, Some(CompactionOptions::new().with_physical()))
            .await
            .map_err(store_error)?;
        Ok(())
    }
}

/// The TLS etcd is reached with: the CA its server certificate chains to
/// and the client certificate `--client-cert-auth` asks for (`meshctl
/// identity issue-etcd` makes both). Read once at start: a new client
/// certificate takes a restart.
#[derive(Clone)]
pub struct EtcdTls {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
    server_name: String,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("EtcdTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl EtcdTls {
    /// The name every etcd server certificate carries (`meshctl identity
    /// issue-etcd` always puts it in): the members are reached by IP or by
    /// per-pod DNS names, and one name to check keeps one certificate
    /// valid for all of them.
    pub const SERVER_NAME: &'static str = "localhost";

    /// From PEM texts: the trusted CA certificates, the client certificate
    /// chain (leaf first) and its key. Checks that each holds what it
    /// should, so a swapped flag fails at start-up and says which.
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, String> {
        use rustls::pki_types::pem::PemObject;
        let certificates =
            |what: &str, pem: &str| match mesh::identity::certificate::certificates_from_pem(pem) {
                Ok(certs) if !certs.is_empty() => Ok(()),
                Ok(_) => Err(format!("{what}: no PEM CERTIFICATE in it")),
                Err(e) => Err(format!("{what}: {e}")),
            };
        certificates("CA", ca_pem)?;
        certificates("client certificate", cert_pem)?;
        if ca_pem.contains("PRIVATE KEY") || cert_pem.contains("PRIVATE KEY") {
            return Err("a certificate file holds a private key: are the flags swapped?".into());
        }
        rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| format!("client key: no PEM private key in it ({e})"))?;
        Ok(Self {
            ca_pem: ca_pem.to_owned(),
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            server_name: Self::SERVER_NAME.to_owned(),
        })
    }

    /// Reads the three PEM files.
    pub fn from_files(
        ca: &std::path::Path,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Result<Self, String> {
        let read = |path: &std::path::Path| {
            std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
        };
        Self::from_pem(&read(ca)?, &read(cert)?, &read(key)?)
    }

    fn options(&self) -> TlsOptions {
        TlsOptions::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(self.server_name.clone())
    }

    /// Endpoints and TLS must agree: `https://` takes TLS (etcd with
    /// `--client-cert-auth` refuses a client without a certificate, and a
    /// plaintext client would never get in), `http://` takes none (TLS
    /// settings for a plaintext etcd are a mistake worth stopping for).
    /// One scheme for all: a mix means some members are misconfigured.
    pub fn check_endpoints(endpoints: &[String], tls: Option<&EtcdTls>) -> Result<(), String> {
        if endpoints.is_empty() {
            return Err("no etcd endpoint".into());
        }
        let secure = endpoints
            .iter()
            .filter(|e| e.starts_with("https://"))
            .count();
        let plain = endpoints
            .iter()
            .filter(|e| e.starts_with("http://"))
            .count();
        if secure + plain != endpoints.len() {
            return Err(format!(
                "etcd endpoints must start with https:// or http://: {}",
                endpoints.join(",")
            ));
        }
        match (secure, plain, tls) {
            (_, 0, Some(_)) => Ok(()),
            (0, _, None) => Ok(()),
            (0, _, Some(_)) => Err(format!(
                "etcd TLS files given but the endpoints are plaintext ({}): use https:// URLs",
                endpoints.join(",")
            )),
            (_, 0, None) => Err(format!(
                "etcd at {} takes TLS with a client certificate: give --etcd-ca, --etcd-cert \
                 and --etcd-key (made by `meshctl identity issue-etcd`)",
                endpoints.join(",")
            )),
            _ => Err(format!(
                "etcd endpoints mix https:// and http://: {}",
                endpoints.join(",")
            )),
        }
    }
}

impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let response = self
            .client
            .kv_client()
            .get(key, None)
            .await
            .map_err(store_error)?;
        Ok(response.0.kvs.into_iter().find_map(key_value))
    }

    async fn get_prefix(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        let response = self
            .client
            .kv_client()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(store_error)?;
        let revision = header_revision(response.header())?;
        // etcd returns a range in key order, the order `Snapshot` promises.
        let items = response.0.kvs.into_iter().filter_map(key_value).collect();
        Ok(Snapshot { revision, items })
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        precondition: Precondition,
        lease: Option<LeaseId>,
    ) -> Result<Revision, StoreError> {
        let options = lease.map(|lease| PutOptions::new().with_lease(lease.0));
        let txn = Txn::new()
            .when(compares(key, precondition))
            .and_then([TxnOp::put(key, value, options)])
            .or_else([TxnOp::get(key, None)]);
        let response = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(|error| match lease {
                Some(lease) if is_lease_not_found(&error) => StoreError::LeaseExpired { lease },
                _ => store_error(error),
            })?;
        if response.succeeded() {
            return header_revision(response.header());
        }
        Err(StoreError::Conflict {
            key: key.to_owned(),
            expected: precondition,
            actual: found_revision(&response)?,
        })
    }

    async fn delete(&self, key: &str, precondition: Precondition) -> Result<Revision, StoreError> {
        let mut conditions = vec![Compare::version(key, CompareOp::Greater, 0)];
        conditions.extend(compares(key, precondition));
        let txn = Txn::new()
            .when(conditions)
            .and_then([TxnOp::delete(key, None)])
            .or_else([TxnOp::get(key, None)]);
        let response = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(store_error)?;
        if response.succeeded() {
            return header_revision(response.header());
        }
        match found_revision(&response)? {
            None => Err(StoreError::NotFound {
                key: key.to_owned(),
            }),
            actual => Err(StoreError::Conflict {
                key: key.to_owned(),
                expected: precondition,
                actual,
            }),
        }
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let response = self
            .client
            .lease_client()
            .grant(ttl_seconds(ttl), None)
            .await
            .map_err(store_error)?;
        if !response.error().is_empty() {
            return Err(StoreError::Rejected(response.error().to_owned()));
        }
        Ok(LeaseId(response.id()))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        // Opening the keep-alive stream sends one request and reads one
        // answer; a TTL of 0 in it (the lease is gone) comes back as
        // `LeaseKeepAliveError`. Dropping the stream ends the exchange.
        match self.client.lease_client().keep_alive(lease.0).await {
            Ok(_) => Ok(()),
            Err(etcd_client::Error::LeaseKeepAliveError(reason)) if reason == "lease not found" => {
                Err(StoreError::LeaseExpired { lease })
            }
            Err(error) if is_lease_not_found(&error) => Err(StoreError::LeaseExpired { lease }),
            Err(error) => Err(store_error(error)),
        }
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        match self.client.lease_client().revoke(lease.0).await {
            Ok(_) => Ok(()),
            // Already ended: revoking is idempotent.
            Err(error) if is_lease_not_found(&error) => Ok(()),
            Err(error) => Err(store_error(error)),
        }
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        let from = if from > 0 {
            from
        } else {
            // "From now" as a revision, so the watch has a defined start
            // and `Compacted` a defined `requested`.
            let response = self
                .client
                .kv_client()
                .get(
                    prefix,
                    Some(GetOptions::new().with_prefix().with_count_only()),
                )
                .await
                .map_err(store_error)?;
            header_revision(response.header())? + 1
        };
        let options = WatchOptions::new().with_prefix().with_start_revision(from);
        let mut stream = self
            .client
            .watch_client()
            .watch(prefix, Some(options))
            .await
            .map_err(store_error)?;
        let mut watch = EtcdWatch {
            next: from,
            early: VecDeque::new(),
            done: false,
            stream: None,
        };
        // Wait for etcd to register the watch, so refusals surface here.
        // Anything that arrives before the confirmation is kept, not lost.
        loop {
            let response = tokio::time::timeout(REQUEST_TIMEOUT, stream.message())
                .await
                .map_err(|_| {
                    StoreError::Unavailable("etcd did not confirm the watch in time".into())
                })?
                .map_err(store_error)?
                .ok_or_else(|| {
                    StoreError::Unavailable("etcd closed the watch before confirming it".into())
                })?;
            if response.created() && !response.canceled() {
                break;
            }
            if response.canceled() && response.compact_revision() == 0 {
                return Err(StoreError::Unavailable(format!(
                    "etcd refused the watch: {}",
                    response.cancel_reason()
                )));
            }
            let finished = response.canceled() || response.compact_revision() > 0;
            watch.early.push_back(response);
            if finished {
                break;
            }
        }
        watch.stream = Some(stream);
        Ok(Box::pin(futures_util::stream::unfold(
            watch,
            |mut watch| async move { watch.next_batch().await.map(|item| (item, watch)) },
        )))
    }
}

/// One etcd watch, turned into [`WatchBatch`]es.
struct EtcdWatch {
    /// Owns the request half too: dropping it cancels the watch on the server.
    stream: Option<etcd_client::WatchStream>,
    /// The next revision owed to the caller.
    next: Revision,
    /// Responses read while waiting for the watch to be confirmed.
    early: VecDeque<WatchResponse>,
    done: bool,
}

impl EtcdWatch {
    async fn next_batch(&mut self) -> Option<Result<WatchBatch, StoreError>> {
        while !self.done {
            let response = match self.early.pop_front() {
                Some(response) => response,
                None => match self.stream.as_mut()?.message().await {
                    Ok(Some(response)) => response,
                    Ok(None) => return None,
                    Err(error) => {
                        self.done = true;
                        return Some(Err(store_error(error)));
                    }
                },
            };
            if let Some(item) = self.translate(response) {
                return Some(item);
            }
        }
        None
    }

    /// A batch, a final error, or nothing (confirmations, progress notices).
    fn translate(&mut self, response: WatchResponse) -> Option<Result<WatchBatch, StoreError>> {
        // etcd cancels a watcher whose start (or backlog) was compacted and
        // says from where it still has history.
        if response.compact_revision() > 0 {
            self.done = true;
            return Some(Err(StoreError::Compacted {
                requested: self.next,
                compact_revision: response.compact_revision(),
            }));
        }
        if response.canceled() {
            self.done = true;
            return Some(Err(StoreError::Unavailable(format!(
                "etcd canceled the watch: {}",
                response.cancel_reason()
            ))));
        }
        let events: Vec<WatchEvent> = response.0.events.into_iter().filter_map(event).collect();
        // The header revision may run ahead of the events while etcd
        // catches a watcher up in chunks; the last event is the safe mark.
        let revision = events.last()?.mod_revision();
        self.next = revision + 1;
        Some(Ok(WatchBatch { revision, events }))
    }
}

/// The compares that make `precondition` hold for `key`. A missing key has
/// version 0 and mod revision 0 in etcd, hence the version check that keeps
/// `Revision(0)` from matching an absent key.
fn compares(key: &str, precondition: Precondition) -> Vec<Compare> {
    match precondition {
        Precondition::Any => Vec::new(),
        Precondition::Absent => vec![Compare::version(key, CompareOp::Equal, 0)],
        Precondition::Revision(revision) => vec![
            Compare::mod_revision(key, CompareOp::Equal, revision),
            Compare::version(key, CompareOp::Greater, 0),
        ],
    }
}

/// The key's mod revision as read by the failure branch of a CAS txn.
fn found_revision(response: &TxnResponse) -> Result<Option<Revision>, StoreError> {
    match response
        .0
        .responses
        .first()
        .and_then(|op| op.response.as_ref())
    {
        Some(PbTxnOpResponse::ResponseRange(range)) => {
            Ok(range.kvs.first().map(|kv| kv.mod_revision))
        }
        _ => Err(StoreError::Unavailable(
            "etcd answered a failed transaction without the key's read".into(),
        )),
    }
}

fn header_revision(header: Option<&ResponseHeader>) -> Result<Revision, StoreError> {
    header
        .map(ResponseHeader::revision)
        .ok_or_else(|| StoreError::Unavailable("etcd answered without a response header".into()))
}

/// Our view of an etcd key. Keys we did not write (not UTF-8) are reported
/// and skipped: they cannot be ours.
fn key_value(kv: PbKeyValue) -> Option<KeyValue> {
    let key = utf8_key(kv.key)?;
    Some(KeyValue {
        key,
        value: kv.value,
        mod_revision: kv.mod_revision,
    })
}

fn utf8_key(key: Vec<u8>) -> Option<String> {
    match String::from_utf8(key) {
        Ok(key) => Some(key),
        Err(error) => {
            tracing::warn!(key = ?error.as_bytes(), "skipping etcd key that is not UTF-8");
            None
        }
    }
}

fn event(event: PbEvent) -> Option<WatchEvent> {
    let kind = EventType::try_from(event.r#type);
    let Some(kv) = event.kv else {
        tracing::warn!("skipping etcd watch event without a key");
        return None;
    };
    match kind {
        Ok(EventType::Put) => key_value(kv).map(WatchEvent::Put),
        Ok(EventType::Delete) => Some(WatchEvent::Delete {
            key: utf8_key(kv.key)?,
            mod_revision: kv.mod_revision,
        }),
        Err(_) => {
            tracing::warn!(
                kind = event.r#type,
                "skipping etcd watch event of unknown type"
            );
            None
        }
    }
}

fn is_lease_not_found(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(status)
        if status.code() == Code::NotFound && status.message().contains(LEASE_NOT_FOUND))
}

/// Transport trouble, timeouts and leaderless clusters are `Unavailable`
/// (retry later); what etcd refuses on the merits is `Rejected`.
fn store_error(error: etcd_client::Error) -> StoreError {
    use etcd_client::Error;
    match error {
        Error::GRpcStatus(status) => match status.code() {
            Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::Unimplemented => StoreError::Rejected(status.message().to_owned()),
            code => StoreError::Unavailable(format!("{code:?}: {}", status.message())),
        },
        Error::InvalidArgs(_)
        | Error::InvalidUri(_)
        | Error::InvalidMetadataValue(_)
        | Error::EndpointError(_)
        | Error::Utf8Error(_) => StoreError::Rejected(error.to_string()),
        other => StoreError::Unavailable(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::StreamExt;

    use super::{EtcdStore, EtcdTls};
    use crate::store::conformance::{self, Compactable};
    use crate::store::etcd_server::EtcdServer;
    use crate::store::{Precondition, Revision, Store, StoreError};

    impl Compactable for EtcdStore {
        async fn compact_history(&self, revision: Revision) {
            self.compact(revision).await.expect("etcd compaction");
        }
    }

    async fn connect(server: &EtcdServer) -> EtcdStore {
        EtcdStore::connect(&[server.endpoint()], Duration::from_secs(5))
            .await
            .expect("connect to the test etcd")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance() {
        let Some(server) = EtcdServer::start().await else {
            return;
        };
        conformance::run_all(connect(&server).await).await;
    }

    #[tokio::test]
    async fn connect_without_etcd_is_unavailable() {
        // A port nobody listens on: bound, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("free port")
            .port();
        let started = tokio::time::Instant::now();
        let error = EtcdStore::connect(
            &[format!("http://127.0.0.1:{port}")],
            Duration::from_millis(500),
        )
        .await
        .expect_err("nothing listens there");
        assert!(error.is_retryable(), "{error}");
        assert!(started.elapsed() < Duration::from_secs(3), "took too long");
    }

    #[test]
    fn endpoints_and_tls_must_agree() {
        let tls = EtcdTls {
            ca_pem: String::new(),
            cert_pem: String::new(),
            key_pem: String::new(),
            server_name: EtcdTls::SERVER_NAME.into(),
        };
        let urls = |u: &[&str]| u.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let check = EtcdTls::check_endpoints;
        assert_eq!(check(&urls(&["http://127.0.0.1:2379"]), None), Ok(()));
        let both = urls(&["https://etcd-0.etcd:2379", "https://etcd-1.etcd:2379"]);
        assert_eq!(check(&both, Some(&tls)), Ok(()));
        let refused = check(&both, None).expect_err("https without a client certificate");
        assert!(refused.contains("--etcd-cert"), "{refused}");
        let plain = check(&urls(&["http://127.0.0.1:2379"]), Some(&tls)).expect_err("plaintext");
        assert!(plain.contains("https://"), "{plain}");
        let mixed = urls(&["https://a:2379", "http://b:2379"]);
        assert!(check(&mixed, Some(&tls))
            .expect_err("mixed")
            .contains("mix"));
        assert!(check(&urls(&["127.0.0.1:2379"]), None).is_err());
        assert!(check(&[], None).is_err());
    }

    #[test]
    fn tls_files_are_checked_for_what_they_hold() {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .expect("params")
            .self_signed(&key)
            .expect("certificate")
            .pem();
        let key = key.serialize_pem();
        assert!(EtcdTls::from_pem(&cert, &cert, &key).is_ok());
        let swapped = EtcdTls::from_pem(&cert, &key, &cert).expect_err("swapped");
        assert!(swapped.contains("client certificate"), "{swapped}");
        let no_key = EtcdTls::from_pem(&cert, &cert, &cert).expect_err("no key");
        assert!(no_key.contains("client key"), "{no_key}");
        assert!(format!("{:?}", EtcdTls::from_pem(&cert, &cert, &key)).contains("localhost"));
        assert!(!format!("{:?}", EtcdTls::from_pem(&cert, &cert, &key)).contains("PRIVATE"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watch_ends_when_etcd_dies() {
        let Some(server) = EtcdServer::start().await else {
            return;
        };
        let store = connect(&server).await;
        let revision = store
            .put("/dies/a", b"1".to_vec(), Precondition::Any, None)
            .await
            .expect("put");
        let mut watch = store.watch("/dies/", revision).await.expect("watch");
        let first = watch.next().await.expect("a batch").expect("not an error");
        assert_eq!(first.revision, revision);
        drop(server);
        let end = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("the watch notices etcd is gone");
        assert!(
            matches!(end, None | Some(Err(StoreError::Unavailable(_)))),
            "{end:?}"
        );
        let error = store.get("/dies/a").await.expect_err("etcd is gone");
        assert!(error.is_retryable(), "{error}");
    }
}

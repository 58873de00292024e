//! Which revision each proxy is in step with, from the control-plane
//! replicas' `/syncz`: with scoped delta pushes a proxy is sent nothing for
//! a change outside its scope, so its own table version does not say
//! whether it has seen a change; the replica that serves it does.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::admin_call;

/// Proxy admin address -> the latest revision it is in step with, over
/// every replica that answers (a replica that does not is skipped).
pub async fn synced_revisions(replica_admins: &[SocketAddr]) -> BTreeMap<String, i64> {
    let mut synced = BTreeMap::new();
    for admin in replica_admins {
        let Ok((200, body)) = admin_call(*admin, http::Method::GET, "/syncz").await else {
            continue;
        };
        let Ok(syncz) = serde_json::from_str::<serde_json::Value>(&body) else {
            continue;
        };
        for proxy in syncz["proxies"].as_array().into_iter().flatten() {
            let (Some(address), Some(revision)) = (
                proxy["adminAddress"].as_str(),
                proxy["syncedRevision"].as_i64(),
            ) else {
                continue;
            };
            let entry = synced.entry(address.to_owned()).or_insert(revision);
            *entry = (*entry).max(revision);
        }
    }
    synced
}

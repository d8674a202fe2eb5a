//! Principals, access keys and queues' data keys: typed reads and compare-and-swap writes in etcd through the
//! same `StoreDirectory` standalone uses, and `WatchIdentity`, which tells the frontends what
//! changed so their caches forget it (a revoked key stops working within the stream's delay).
//! Every record a caller sends is checked before it is stored; a sealed secret is stored as
//! sent: this tier never holds the master key that opens it.

use etcd_client::{Event, EventType, KeyValue};
use sluice_api::identity::{self, IdentityDirectory};
use sluice_api::DataKeyDirectory;
use sluice_api::{cluster, wire, Error, Result};
use sluice_proto::v1 as pb;
use tokio::sync::broadcast;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::service::MetadataServiceImpl;

/// Most records one list returns.
const MAX_LIST: usize = 1000;
/// Changes a slow watcher may fall behind by before its stream ends (and it starts over).
pub const CHANGES_BUFFERED: usize = 1024;

/// What changed under `identity/`, as the watch streams tell it.
#[derive(Debug, Clone)]
pub enum Changed {
    Reset,
    Principal(String),
    Key(String),
}

fn change_to_pb(change: Changed) -> pb::MetaIdentityChange {
    use pb::meta_identity_change::Change;
    pb::MetaIdentityChange {
        change: Some(match change {
            Changed::Reset => Change::Reset(true),
            Changed::Principal(name) => Change::Principal(name),
            Changed::Key(id) => Change::Key(id),
        }),
    }
}

/// Follows `identity/` in etcd and tells every `WatchIdentity` stream.
pub struct IdentityFollower {
    pub principals: String,
    pub keys: String,
    pub changes: broadcast::Sender<Changed>,
}

impl sluice_metastore::watch::Follower for IdentityFollower {
    fn snapshot(&mut self, _: &[KeyValue]) {
        // A new snapshot means the watch broke and changes may have been missed.
        let _ = self.changes.send(Changed::Reset);
    }

    fn event(&mut self, event: &Event) {
        let Some(key) = event.kv().and_then(|kv| kv.key_str().ok()) else {
            return;
        };
        let change = if let Some(name) = key.strip_prefix(&self.principals) {
            Changed::Principal(name.to_owned())
        } else if let Some(id) = key.strip_prefix(&self.keys) {
            Changed::Key(id.to_owned())
        } else {
            return;
        };
        // Both kinds of event matter: a put changes a policy or a key, a delete revokes.
        if matches!(event.event_type(), EventType::Put | EventType::Delete) {
            let _ = self.changes.send(change);
        }
    }
}

impl IdentityFollower {
    pub fn new(root: &str, changes: broadcast::Sender<Changed>) -> Self {
        IdentityFollower {
            principals: cluster::principal_key(root, ""),
            keys: cluster::access_key_key(root, ""),
            changes,
        }
    }
}

fn queue_id(id: u64) -> Result<()> {
    if id == 0 {
        return Err(Error::invalid("queue_id", "must be set"));
    }
    Ok(())
}

fn limit(requested: u32) -> usize {
    (requested as usize).clamp(1, MAX_LIST)
}

/// A compare-and-swap's revision: 0 asks for a create.
fn expected(revision: u64) -> Option<u64> {
    (revision != 0).then_some(revision)
}

fn write_response(written: Option<u64>) -> pb::MetaWriteResponse {
    pb::MetaWriteResponse {
        written: written.is_some(),
        revision: written.unwrap_or(0),
    }
}

impl MetadataServiceImpl {
    pub(crate) async fn get_principal(
        &self,
        req: pb::MetaGetPrincipalRequest,
    ) -> Result<pb::MetaGetPrincipalResponse> {
        identity::principal_name("name", &req.name)?;
        Ok(match self.records.principal(&req.name).await? {
            Some((principal, revision)) => pb::MetaGetPrincipalResponse {
                principal: Some(wire::principal_to_pb(&principal)),
                revision,
            },
            None => pb::MetaGetPrincipalResponse::default(),
        })
    }

    pub(crate) async fn list_principals(
        &self,
        req: pb::MetaListPrincipalsRequest,
    ) -> Result<pb::MetaListPrincipalsResponse> {
        if !req.start_after.is_empty() {
            identity::principal_name("start_after", &req.start_after)?;
        }
        let principals = self
            .records
            .principals(&req.start_after, limit(req.limit))
            .await?;
        Ok(pb::MetaListPrincipalsResponse {
            principals: principals.iter().map(wire::principal_to_pb).collect(),
        })
    }

    pub(crate) async fn put_principal(
        &self,
        req: pb::MetaPutPrincipalRequest,
    ) -> Result<pb::MetaWriteResponse> {
        let principal = wire::principal_from_pb(req.principal)?;
        let written = self
            .records
            .put_principal(&principal, expected(req.revision))
            .await?;
        Ok(write_response(written))
    }

    pub(crate) async fn delete_principal(
        &self,
        req: pb::MetaDeletePrincipalRequest,
    ) -> Result<pb::MetaDeleteResponse> {
        identity::principal_name("name", &req.name)?;
        let deleted = self
            .records
            .delete_principal(&req.name, req.revision)
            .await?;
        Ok(pb::MetaDeleteResponse { deleted })
    }

    pub(crate) async fn get_access_key(
        &self,
        req: pb::MetaGetAccessKeyRequest,
    ) -> Result<pb::MetaGetAccessKeyResponse> {
        identity::key_id("id", &req.id)?;
        Ok(match self.records.access_key(&req.id).await? {
            Some((key, revision)) => pb::MetaGetAccessKeyResponse {
                key: Some(wire::access_key_to_pb(&key)),
                revision,
            },
            None => pb::MetaGetAccessKeyResponse::default(),
        })
    }

    pub(crate) async fn list_access_keys(
        &self,
        req: pb::MetaListAccessKeysRequest,
    ) -> Result<pb::MetaListAccessKeysResponse> {
        let principal = (!req.principal.is_empty()).then_some(req.principal.as_str());
        if let Some(principal) = principal {
            identity::principal_name("principal", principal)?;
        }
        if !req.start_after.is_empty() {
            identity::key_id("start_after", &req.start_after)?;
        }
        let keys = self
            .records
            .access_keys(principal, &req.start_after, limit(req.limit))
            .await?;
        Ok(pb::MetaListAccessKeysResponse {
            keys: keys.iter().map(wire::access_key_to_pb).collect(),
        })
    }

    pub(crate) async fn put_access_key(
        &self,
        req: pb::MetaPutAccessKeyRequest,
    ) -> Result<pb::MetaWriteResponse> {
        let key = wire::access_key_from_pb(req.key)?;
        let written = self
            .records
            .put_access_key(&key, expected(req.revision))
            .await?;
        Ok(write_response(written))
    }

    pub(crate) async fn delete_access_key(
        &self,
        req: pb::MetaDeleteAccessKeyRequest,
    ) -> Result<pb::MetaDeleteResponse> {
        identity::key_id("id", &req.id)?;
        let deleted = self
            .records
            .delete_access_key(&req.id, req.revision)
            .await?;
        Ok(pb::MetaDeleteResponse { deleted })
    }

    pub(crate) async fn get_data_key(
        &self,
        req: pb::MetaGetDataKeyRequest,
    ) -> Result<pb::MetaGetDataKeyResponse> {
        queue_id(req.queue_id)?;
        Ok(match self.records.data_key(req.queue_id).await? {
            Some((key, revision)) => pb::MetaGetDataKeyResponse {
                key: Some(wire::sealed_to_pb(&key)),
                revision,
            },
            None => pb::MetaGetDataKeyResponse::default(),
        })
    }

    pub(crate) async fn put_data_key(
        &self,
        req: pb::MetaPutDataKeyRequest,
    ) -> Result<pb::MetaWriteResponse> {
        queue_id(req.queue_id)?;
        let key = wire::sealed_from_pb("key", req.key)?;
        let written = self
            .records
            .put_data_key(req.queue_id, &key, expected(req.revision))
            .await?;
        Ok(write_response(written))
    }

    pub(crate) async fn list_data_keys(
        &self,
        req: pb::MetaListDataKeysRequest,
    ) -> Result<pb::MetaListDataKeysResponse> {
        let keys = self.records.data_keys(req.after, limit(req.limit)).await?;
        Ok(pb::MetaListDataKeysResponse {
            keys: keys
                .iter()
                .map(|(queue_id, key, revision)| pb::MetaDataKey {
                    queue_id: *queue_id,
                    key: Some(wire::sealed_to_pb(key)),
                    revision: *revision,
                })
                .collect(),
        })
    }

    /// A stream of the changes from now on, a reset first. It ends when the node shuts down
    /// (`closing`), or with UNAVAILABLE if the caller fell too far behind to be told everything.
    pub(crate) fn watch_identity(
        &self,
        closing: CancellationToken,
    ) -> ReceiverStream<Result<pb::MetaIdentityChange, Status>> {
        let mut changes = self.identity_changes.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut next = Ok(Changed::Reset);
            loop {
                let sent = match next {
                    Ok(change) => tx.send(Ok(change_to_pb(change))).await,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        let status = Status::from(Error::Unavailable(format!(
                            "fell {missed} identity changes behind; watch again"
                        )));
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if sent.is_err() {
                    return;
                }
                next = tokio::select! {
                    change = changes.recv() => change,
                    _ = closing.cancelled() => return,
                    _ = tx.closed() => return,
                };
            }
        });
        ReceiverStream::new(rx)
    }
}

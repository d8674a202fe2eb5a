//! Raft between the nodes of a cluster over gRPC (`ClusterService`): openraft's messages are
//! serialized with bincode into a bytes field, and its answers (or errors) come back the same
//! way.

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sluice_proto::v1 as pb;
use sluice_proto::v1::cluster_service_client::ClusterServiceClient;
use tonic::transport::Channel;

use super::{Member, NodeId, TypeConfig};

/// Room for a full append: 16 entries (`max_payload_entries`) of up to 8 MiB each plus the
/// request that crossed the engine's cap (a batch of ten 1 MiB messages).
pub const MAX_RAFT_MESSAGE_BYTES: usize = 512 * 1024 * 1024;

pub(crate) fn client(url: &str) -> anyhow::Result<ClusterServiceClient<Channel>> {
    let channel = sluice_common::tls::channel(url, None, |endpoint| {
        endpoint
            .connect_timeout(std::time::Duration::from_secs(1))
            .tcp_nodelay(true)
    })?;
    Ok(ClusterServiceClient::new(channel)
        .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES))
}

pub(crate) struct Factory;

impl RaftNetworkFactory<TypeConfig> for Factory {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Peer {
        Peer {
            target,
            client: client(&node.url).ok(),
            url: node.url.clone(),
        }
    }
}

pub(crate) struct Peer {
    target: NodeId,
    url: String,
    /// `None` if the member's URL does not parse; every call then fails as unreachable.
    client: Option<ClusterServiceClient<Channel>>,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, Member, RaftError<NodeId, E>>>;

impl Peer {
    // The error type is openraft's; the fail point's closure returns it as `call` does.
    #[allow(clippy::result_large_err)]
    async fn call<Req, Resp, E, F, Fut>(
        &mut self,
        request: &Req,
        option: &RPCOption,
        rpc: F,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
        F: FnOnce(ClusterServiceClient<Channel>, tonic::Request<pb::RaftMessage>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<pb::RaftMessage>, tonic::Status>>,
    {
        // A test's partition (`sluice-backend-failpoints`, SIGUSR1): nothing leaves.
        fail::fail_point!("backend::raft_cut", |_| {
            let err = std::io::Error::other("cut off by fail point backend::raft_cut");
            Err(RPCError::Unreachable(Unreachable::new(&err)))
        });
        let Some(client) = self.client.clone() else {
            let err = std::io::Error::other(format!("bad member URL {:?}", self.url));
            return Err(RPCError::Unreachable(Unreachable::new(&err)));
        };
        let payload =
            bincode::serialize(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut call = tonic::Request::new(pb::RaftMessage {
            payload: payload.into(),
            target: self.target,
        });
        call.set_timeout(option.hard_ttl());
        let answer = rpc(client, call)
            .await
            .map_err(|status| match status.code() {
                // The call outlived its deadline (openraft gives AppendEntries one heartbeat
                // interval): the peer is slow, e.g. behind an fsync that a memtable flush holds
                // up, not gone. Unreachable would make openraft pause replication to it for half
                // a second; a network error is retried at once.
                tonic::Code::Cancelled | tonic::Code::DeadlineExceeded => {
                    RPCError::Network(NetworkError::new(&status))
                }
                _ => RPCError::Unreachable(Unreachable::new(&status)),
            })?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            bincode::deserialize(&answer.into_inner().payload)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|err| RPCError::RemoteError(RemoteError::new(self.target, err)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        self.call(&rpc, &option, |mut c, r| async move {
            c.append_entries(r).await
        })
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(&rpc, &option, |mut c, r| async move {
            c.install_snapshot(r).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        self.call(&rpc, &option, |mut c, r| async move { c.vote(r).await })
            .await
    }
}

/// Decodes a Raft message of the peer, if it was meant for node `me`.
pub(crate) fn decode<T: DeserializeOwned>(
    message: pb::RaftMessage,
    me: NodeId,
) -> sluice_api::Result<T> {
    if message.target != 0 && message.target != me {
        // The sender's member of this URL is an earlier node of this name, which lost its
        // volume; this one must not answer for it (see `identity`).
        return Err(sluice_api::Error::FailedPrecondition(format!(
            "this node is Raft member {me}, not {}: it replaces that member",
            message.target
        )));
    }
    bincode::deserialize(&message.payload)
        .map_err(|err| sluice_api::Error::invalid("payload", format!("not a raft message: {err}")))
}

/// Encodes openraft's answer, error included, for the peer.
pub(crate) fn encode<T: Serialize>(answer: &T) -> sluice_api::Result<pb::RaftMessage> {
    bincode::serialize(answer)
        .map(|payload| pb::RaftMessage {
            payload: payload.into(),
            target: 0,
        })
        .map_err(|err| sluice_api::Error::Internal(format!("cannot encode a raft answer: {err}")))
}

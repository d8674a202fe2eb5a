//! Serves `QueueService` over gRPC with server reflection and the standard health service.

use std::net::SocketAddr;

use sluice_proto::v1::queue_service_server::QueueServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::service::QueueServiceImpl;

/// Room for a batch of ten 1 MiB messages plus their framing.
const MAX_GRPC_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

pub struct ServerHandle {
    pub local_addr: SocketAddr,
    /// Ends when the server has stopped after `shutdown`.
    pub task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

/// Binds `addr` and serves until `shutdown` is cancelled; then stops accepting, lets in-flight
/// requests finish and returns.
pub async fn serve(
    addr: SocketAddr,
    service: QueueServiceImpl,
    shutdown: CancellationToken,
) -> std::io::Result<ServerHandle> {
    let listener = TcpListener::bind(addr).await.map_err(|err| {
        std::io::Error::new(
            err.kind(),
            format!("cannot bind gRPC address {addr}: {err}"),
        )
    })?;
    let local_addr = listener.local_addr()?;

    let (mut health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<QueueServiceServer<QueueServiceImpl>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(sluice_proto::FILE_DESCRIPTOR_SET)
        // The descriptor set holds the internal APIs too; the public port shows only its own.
        .with_service_name("sluice.v1.QueueService")
        .build_v1()
        .map_err(|err| std::io::Error::other(format!("reflection: {err}")))?;
    let queue_service = QueueServiceServer::new(service)
        .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES);

    // Without TCP_NODELAY small responses wait for the peer's delayed ACK (~40 ms each).
    let incoming = tonic::transport::server::TcpIncoming::from_listener(listener, true, None)
        .map_err(|err| std::io::Error::other(format!("gRPC listener: {err}")))?;
    let task = tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection)
            .add_service(queue_service)
            .serve_with_incoming_shutdown(incoming, async move {
                shutdown.cancelled().await;
                health
                    .set_not_serving::<QueueServiceServer<QueueServiceImpl>>()
                    .await;
            })
            .await;
        if let Err(err) = &result {
            tracing::error!(error = %err, "gRPC server failed");
        }
        result
    });
    Ok(ServerHandle { local_addr, task })
}

//! Serves `QueueService` and `IdentityService` over gRPC with server reflection and the standard
//! health service.

use std::net::SocketAddr;

use sluice_common::grpc::{self, ConnectionOpts, GrpcServer, MAX_MESSAGE_BYTES};
use sluice_common::tls::PortTls;
use sluice_proto::v1::identity_service_server::IdentityServiceServer;
use sluice_proto::v1::queue_service_server::QueueServiceServer;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use crate::identity::IdentityServiceImpl;
use crate::service::QueueServiceImpl;

/// Binds `addr` and serves `QueueService` and `IdentityService`, with server reflection and the health service, until
/// `stop` is cancelled; then stops accepting, ends the Consume streams and lets in-flight
/// requests finish. Clients' connections are held to `connections`, and served over `tls`.
pub async fn serve(
    addr: SocketAddr,
    service: QueueServiceImpl,
    stop: CancellationToken,
    connections: &ConnectionOpts,
    tls: &PortTls,
) -> anyhow::Result<GrpcServer> {
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(sluice_proto::FILE_DESCRIPTOR_SET)
        // The descriptor set holds the internal APIs too; the public port shows only its own.
        .with_service_name("sluice.v1.QueueService")
        .with_service_name("sluice.v1.IdentityService")
        .build_v1()
        .map_err(|err| anyhow::anyhow!("reflection: {err}"))?;
    let identity_service = IdentityServiceServer::new(IdentityServiceImpl::new(
        service.auth.clone(),
        service.encryption.clone(),
    ));
    let queue_service = QueueServiceServer::new(service.ending_streams_on(stop.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let routes = Routes::new(queue_service)
        .add_service(identity_service)
        .add_service(reflection);
    grpc::serve_limited(
        grpc::bind(addr).await?,
        "sluice.v1.QueueService",
        routes,
        stop,
        connections,
        tls,
    )
    .await
}

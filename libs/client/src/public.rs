//! Clients of the public API that present an access key on every call.

use sluice_common::credentials::Credentials;
use sluice_proto::v1::identity_service_client::IdentityServiceClient;
use sluice_proto::v1::queue_service_client::QueueServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub type QueueClient = QueueServiceClient<InterceptedService<Channel, Credentials>>;
pub type IdentityClient = IdentityServiceClient<InterceptedService<Channel, Credentials>>;

pub fn queue_client(channel: Channel, credentials: Credentials) -> QueueClient {
    QueueServiceClient::with_interceptor(channel, credentials)
}

pub fn identity_client(channel: Channel, credentials: Credentials) -> IdentityClient {
    IdentityServiceClient::with_interceptor(channel, credentials)
}

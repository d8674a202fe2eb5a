//! Generated types and gRPC stubs for every Sluice API, from the `.proto` files in `proto/`.

pub mod codec;

pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("sluice.v1");
}

/// Encoded `FileDescriptorSet` of every Sluice proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("sluice_descriptor");

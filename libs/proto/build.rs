// Compiles the protos in ../../proto into OUT_DIR, so generated code is never checked in and
// always matches the .proto files; the descriptor set feeds gRPC server reflection.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "../../proto/sluice/v1/queue.proto",
        "../../proto/sluice/v1/identity.proto",
        "../../proto/sluice/v1/backend.proto",
        "../../proto/sluice/v1/manager.proto",
        "../../proto/sluice/v1/metadata.proto",
    ];
    tonic_build::configure()
        // Bodies arrive as slices of the HTTP/2 receive buffer instead of fresh copies.
        .bytes(["."])
        // A request that does not decode is the caller's error (src/codec.rs).
        .codec_path("crate::codec::SluiceCodec")
        .file_descriptor_set_path(out_dir.join("sluice_descriptor.bin"))
        .compile_protos(&protos, &["../../proto"])?;
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}

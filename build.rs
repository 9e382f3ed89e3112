//! Generates the gRPC code for proto/marklens/v1 with a vendored protoc (no system
//! protoc needed; `$PROTOC` overrides it), plus the descriptor set that server
//! reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = match std::env::var_os("PROTOC") {
        Some(path) => PathBuf::from(path),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("marklens_descriptor.bin"))
        .compile_with_config(config, &["proto/marklens/v1/marklens.proto"], &["proto"])?;
    Ok(())
}

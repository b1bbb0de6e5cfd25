//! Compiles `proto/*.proto` (workspace root) into Rust with protox (pure Rust, no system `protoc`)
//! and tonic-prost-build (messages, clients and servers).

use std::path::PathBuf;

const PROTOS: &[&str] = &["common.proto", "scheduler.proto", "dfdaemon.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_dir = manifest_dir.join("../../proto");

    println!("cargo:rerun-if-changed={}", proto_dir.display());
    let files: Vec<PathBuf> = PROTOS.iter().map(|f| proto_dir.join(f)).collect();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    // google/protobuf/{duration,timestamp,empty}.proto are built into protox.
    let fds = protox::compile(&files, [&proto_dir])?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}

//! Compiles the peer service (`proto/raftpb.proto`) into tonic server and client code.
//! `protoc` comes from the `protoc-bin-vendored` crate unless `PROTOC` is set.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-env-changed=PROTOC");
    let mut config = tonic_prost_build::Config::new();
    if std::env::var_os("PROTOC").is_none() {
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_with_config(config, &["proto/raftpb.proto"], &["proto"])?;
    Ok(())
}

//! Compiles the registry's protobuf protocol with protox (pure Rust: no system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["fincore/registry/v1/registry.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .bytes(".fincore.registry.v1")
        .compile_fds(descriptors)?;
    Ok(())
}

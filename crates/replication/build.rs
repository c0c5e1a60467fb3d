//! Compiles the replica transport protocol with protox (no system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["fincore/raft/v1/raft.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .bytes(".fincore.raft.v1")
        .compile_fds(descriptors)?;
    Ok(())
}

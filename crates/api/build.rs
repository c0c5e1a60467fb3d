//! Compiles the protobuf API with protox (pure Rust: no system `protoc` needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(
        [
            "fincore/v1/ledger.proto",
            "fincore/v1/events.proto",
            "fincore/v1/meta.proto",
        ],
        ["proto"],
    )?;
    tonic_prost_build::configure()
        .bytes(".fincore.v1")
        .compile_fds(descriptors)?;
    Ok(())
}

//! Compiles `proto/` with protox (pure Rust, so no system `protoc` is needed),
//! generates the tonic/prost code and writes the encoded descriptor set that
//! server reflection serves.

use std::{env, fs, path::PathBuf};

const PROTOS: &[&str] = &[
    "roster/v1/user_service.proto",
    "roster/v1/leaderboard_service.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("roster_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}

//! Generates the agent contract's Rust code from `agent.proto` into
//! `OUT_DIR`: messages with protobuf-codegen 2.28, the service with
//! grpcio-compiler, and a small wrapper module (`proto.rs`) that `src/lib.rs`
//! includes, because the generated files begin with inner attributes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

use protobuf::Message;

/// Relative to this crate's directory, where cargo runs build scripts.
const PROTO: &str = "agent.proto";

fn main() {
    println!("cargo:rerun-if-changed={PROTO}");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    if let Err(e) = generate(&out_dir) {
        panic!("generating the agent code from {PROTO} failed: {e} (is protoc installed? run scripts/setup)");
    }
}

fn generate(out_dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let descriptor_path = out_dir.join("agent.desc");
    let protoc = env::var("PROTOC").unwrap_or_else(|_| "protoc".to_string());
    let status = Command::new(protoc)
        .arg("--include_imports")
        .arg("-I.")
        .arg(format!("--descriptor_set_out={}", descriptor_path.display()))
        .arg(PROTO)
        .status()?;
    if !status.success() {
        return Err(format!("protoc exited with {status}").into());
    }
    let set = protobuf::descriptor::FileDescriptorSet::parse_from_bytes(&fs::read(&descriptor_path)?)?;
    let files = set.get_file();
    let to_generate = vec!["agent.proto".to_string()];

    protobuf_codegen::gen_and_write(files, &to_generate, out_dir, &protobuf_codegen::Customize::default())?;
    for result in grpcio_compiler::codegen::gen(files, &to_generate) {
        fs::write(out_dir.join(&result.name), result.content)?;
    }

    let wrapper = format!(
        "#[path = \"{dir}/agent.rs\"]\npub mod agent;\n#[path = \"{dir}/agent_grpc.rs\"]\npub mod agent_grpc;\n",
        dir = out_dir.display()
    );
    fs::write(out_dir.join("proto.rs"), wrapper)?;
    Ok(())
}

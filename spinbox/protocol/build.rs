//! Generates the protobuf messages and the async ttrpc client/server of `proto/agent.proto`
//! into `OUT_DIR`, in pure Rust (ttrpc-codegen embeds a protobuf parser: no `protoc`).

use std::fs;
use std::path::{Path, PathBuf};

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed=proto/agent.proto");
    ttrpc_codegen::Codegen::new()
        .out_dir(&out)
        .inputs(["proto/agent.proto"])
        .include("proto")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize {
            async_all: true,
            ..Default::default()
        })
        .run()
        .expect("generating code from proto/agent.proto failed");
    for file in ["agent.rs", "agent_ttrpc.rs"] {
        strip_inner_attributes(&out.join(file));
    }
}

/// `include!` cannot take a file with inner attributes or inner doc comments, which the
/// generators emit at the top; the crate sets the equivalent lints on the module instead.
fn strip_inner_attributes(path: &Path) {
    let text = fs::read_to_string(path).expect("generated file readable");
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            !(t.starts_with("#![") || t.starts_with("//!"))
        })
        .collect();
    fs::write(path, kept.join("\n")).expect("generated file writable");
}

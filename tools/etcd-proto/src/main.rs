//! Regenerates the etcd gRPC client code used by `meridian-meta-etcd`.
//!
//! `cargo run --manifest-path tools/etcd-proto/Cargo.toml` (from the repository root) compiles
//! `tools/etcd-proto/proto/**` with protox (a protobuf compiler written in Rust, so no `protoc`
//! is needed), drops the services Meridian does not call, and writes the Rust code with
//! tonic-prost-build into `crates/meta-etcd/src/proto/`. The output is committed, so building
//! Meridian needs neither this tool nor `protoc`.

use std::path::PathBuf;

/// The etcd services the client code is generated for; the others (Auth) are dropped.
const KEEP_SERVICES: &[&str] = &["KV", "Watch", "Lease", "Cluster", "Maintenance"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let proto = root.join("proto");
    let out = root.join("../../crates/meta-etcd/src/proto");

    let mut fds = protox::compile(["etcd/api/etcdserverpb/rpc.proto"], [&proto])?;
    // The HTTP-gateway and OpenAPI annotations are only options on the services: no code needed.
    fds.file
        .retain(|f| !f.package().starts_with("google.") && !f.package().starts_with("grpc."));
    for file in &mut fds.file {
        if file.package() == "etcdserverpb" {
            file.service.retain(|s| KEEP_SERVICES.contains(&s.name()));
        }
    }

    std::fs::create_dir_all(&out)?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_transport(false)
        .emit_rerun_if_changed(false)
        .bytes(".")
        .out_dir(&out)
        .compile_fds(fds)?;
    println!("wrote {}", out.canonicalize()?.display());
    Ok(())
}

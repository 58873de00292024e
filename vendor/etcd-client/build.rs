//! The etcd v3 API, compiled with protox (pure Rust) instead of a system
//! `protoc`: vendored into the mesh so a plain `cargo build` needs no
//! protobuf compiler installed (upstream's build script calls `protoc`).

#[cfg(feature = "build-server")]
fn should_build_server() -> bool {
    true
}

#[cfg(not(feature = "build-server"))]
fn should_build_server() -> bool {
    false
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = "proto";
    println!("cargo:rerun-if-changed={proto_root}");
    let files = [
        "etcd/api/authpb/auth.proto",
        "etcd/api/etcdserverpb/rpc.proto",
        "etcd/api/mvccpb/kv.proto",
        "etcd/server/etcdserver/api/v3election/v3electionpb/v3election.proto",
        "etcd/server/etcdserver/api/v3lock/v3lockpb/v3lock.proto",
    ];
    let mut compiler = protox::Compiler::new([proto_root])?;
    compiler.include_imports(true);
    compiler.open_files(files)?;
    tonic_prost_build::configure()
        .build_server(should_build_server())
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}

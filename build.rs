//! Compiles every `proto/**/*.proto` with protox (pure Rust: no system
//! `protoc`), generates tonic clients and servers, and writes the encoded file
//! descriptor set that server reflection serves.

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new("proto");
    let mut files = Vec::new();
    collect_protos(root, &mut files)?;
    files.sort();
    println!("cargo:rerun-if-changed=proto");
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let mut compiler = protox::Compiler::new([root])?;
    // Imports and source info make `grpcurl describe` show dependencies and comments.
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(files.iter().map(|f| f.strip_prefix(root).unwrap_or(f)))?;

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // compile_fds() does not write file_descriptor_set_path: write it ourselves.
    std::fs::write(
        out_dir.join("mesh_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        // Ordered maps encode the same way every time: resources are
        // versioned by a hash of their encoding.
        .btree_map(".")
        .build_client(true)
        .build_server(true)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

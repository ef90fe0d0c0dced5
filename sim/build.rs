//! Generates the Pub/Sub API server (the Salesforce simulator's gRPC service) from the same
//! `proto/pubsub_api.proto` the product's client is generated from: the file is the wire
//! format itself, not product code, so sharing it keeps the simulator independent.
//!
//! protoc comes from `protoc-bin-vendored`, so no system protoc is needed; a `PROTOC` set in
//! the environment still wins.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded; nothing else reads the environment here.
        unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    println!("cargo:rerun-if-changed=../proto/pubsub_api.proto");
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .compile_protos(&["../proto/pubsub_api.proto"], &["../proto"])?;
    Ok(())
}

//! Generates the Pub/Sub API client and server from `proto/pubsub_api.proto`.
//!
//! protoc comes from `protoc-bin-vendored`, so no system protoc is needed; a `PROTOC` set in
//! the environment still wins.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded; nothing else reads the environment here.
        unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    println!("cargo:rerun-if-changed=proto/pubsub_api.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/pubsub_api.proto"], &["proto"])?;
    Ok(())
}

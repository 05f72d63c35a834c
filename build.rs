//! Compiles the Hubble API definitions in `proto/` with protox (pure Rust, so a fresh machine
//! needs no system `protoc`) into prost messages with tonic clients and servers, and generates
//! a second `observer.Observer` client and server whose `GetFlows` stream carries raw bytes
//! (see `src/proto.rs`).

use std::path::PathBuf;

use tonic_prost_build::manual::{Builder, Method, Service};

fn raw_observer(flows_codec: &str) -> Service {
    Service::builder()
        .name("Observer")
        .package("observer")
        .method(
            Method::builder()
                .name("get_flows")
                .route_name("GetFlows")
                .input_type("crate::proto::observer::GetFlowsRequest")
                .output_type("bytes::Bytes")
                .codec_path(flows_codec)
                .server_streaming()
                .build(),
        )
        .method(
            Method::builder()
                .name("server_status")
                .route_name("ServerStatus")
                .input_type("crate::proto::observer::ServerStatusRequest")
                .output_type("crate::proto::observer::ServerStatusResponse")
                .codec_path("tonic_prost::ProstCodec")
                .build(),
        )
        .build()
}

/// Sets `EXFILWATCH_REVISION` to the checkout's git revision, for `--version`, `/healthz` and
/// `exfilwatch_build_info`; "unknown" where there is no checkout (a container build) or no git.
fn revision() {
    let revision = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=EXFILWATCH_REVISION={revision}");
    // A new commit moves HEAD or the branch it names.
    for path in [".git/HEAD", ".git/refs/heads"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/flow/flow.proto",
        "proto/relay/relay.proto",
        "proto/observer/observer.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    revision();
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .emit_rerun_if_changed(false)
        .compile_fds(descriptors)?;

    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    for (dir, client, codec) in [
        ("raw_client", true, "crate::proto::RawResponses"),
        ("raw_server", false, "crate::proto::PreEncoded"),
    ] {
        let dir = out.join(dir);
        std::fs::create_dir_all(&dir)?;
        Builder::new()
            .build_client(client)
            .build_server(!client)
            .out_dir(&dir)
            .compile(&[raw_observer(codec)]);
    }
    Ok(())
}

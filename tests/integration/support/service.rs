//! `exfilwatch` as an operator runs it: a configuration written to a temporary directory, the
//! binary started with it, its API on a free loopback port. Every integration test that runs
//! the service goes through here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use super::{GUARD, free_port};

/// The binary, logging warnings and errors only (`EXFILWATCH_TEST_LOG` sets another
/// `RUST_LOG`, to debug a test).
pub fn exfilwatch() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_exfilwatch"));
    let log = std::env::var("EXFILWATCH_TEST_LOG").unwrap_or_else(|_| "warn".into());
    cmd.env("RUST_LOG", log).env_remove("NO_COLOR");
    cmd
}

/// Everything a finished command printed, stdout then stderr.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `cmd` to completion off the async runtime.
pub async fn output(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap()
}

/// `exfilwatch run` with `config` (its state under `dir`) to completion: how it refuses to
/// start, or what it prints when its stream ends.
pub async fn run_once(config: &RunConfig, dir: &Path) -> Output {
    let mut cmd = exfilwatch();
    cmd.args(["run", "--config"])
        .arg(config.write(dir, free_port()));
    output(cmd).await
}

/// A configuration file, section by section: YAML lines inside each top-level key. `{dir}`
/// in a value stands for the service's directory, `{port}` for its API port.
#[derive(Debug, Clone)]
pub struct RunConfig {
    sections: Vec<(String, Vec<String>)>,
}

impl RunConfig {
    /// Hubble Relay at `relay` watching `ai-training`, the shipped rules, state under the
    /// service's directory, the API on loopback.
    pub fn new(relay: SocketAddr) -> RunConfig {
        RunConfig::empty()
            .with(
                "hubble",
                &format!("address: http://{relay}\nnamespaces: [ai-training]"),
            )
            .with(
                "rules",
                &format!("dir: {}/rules", env!("CARGO_MANIFEST_DIR")),
            )
            .with("storage", "dir: {dir}/state")
            .with("api", "listen: 127.0.0.1:{port}")
    }

    /// No section at all.
    pub fn empty() -> RunConfig {
        RunConfig {
            sections: Vec::new(),
        }
    }

    /// Adds `lines` (YAML, relative to the section) to `section`. A line whose key the
    /// section already has replaces it.
    pub fn with(mut self, section: &str, lines: &str) -> RunConfig {
        let index = match self.sections.iter().position(|(s, _)| s == section) {
            Some(i) => i,
            None => {
                self.sections.push((section.to_owned(), Vec::new()));
                self.sections.len() - 1
            }
        };
        let body = &mut self.sections[index].1;
        for line in lines.lines() {
            let key = line.split(':').next().unwrap_or("");
            let top_level = !line.starts_with(' ');
            if top_level
                && let Some(old) = body.iter().position(|l| l.split(':').next() == Some(key))
            {
                // Drop the old key with its nested lines.
                let end = body[old + 1..]
                    .iter()
                    .position(|l| !l.starts_with(' '))
                    .map_or(body.len(), |n| old + 1 + n);
                body.drain(old..end);
            }
            body.push(line.to_owned());
        }
        self
    }

    /// The YAML text for a service in `dir` listening on `port`.
    pub fn render(&self, dir: &Path, port: u16) -> String {
        let mut text = String::new();
        for (section, lines) in &self.sections {
            text.push_str(section);
            text.push_str(":\n");
            for line in lines {
                text.push_str("  ");
                text.push_str(line);
                text.push('\n');
            }
        }
        text.replace("{dir}", &dir.display().to_string())
            .replace("{port}", &port.to_string())
    }

    /// Writes the file into `dir` for a service on `port`; its path.
    pub fn write(&self, dir: &Path, port: u16) -> PathBuf {
        let path = dir.join("exfilwatch.yaml");
        std::fs::write(&path, self.render(dir, port)).unwrap();
        path
    }
}

/// A running `exfilwatch run`; killed on drop. Its stdout goes to `stdout.txt` and its log
/// to `exfilwatch.log` in its directory.
pub struct Service {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub base: String,
    pub token: Option<String>,
    pub client: reqwest::Client,
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Service {
    /// Starts `exfilwatch run` with `config` in `dir` without waiting for anything.
    pub fn spawn(config: &RunConfig, dir: tempfile::TempDir) -> Service {
        exfilwatch::common::http::install_crypto();
        let port = free_port();
        let path = config.write(dir.path(), port);
        let child = exfilwatch()
            .args(["run", "--config"])
            .arg(&path)
            .stdout(std::fs::File::create(dir.path().join("stdout.txt")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("exfilwatch.log")).unwrap())
            .spawn()
            .unwrap();
        Service {
            child: Some(child),
            dir,
            base: format!("http://127.0.0.1:{port}"),
            token: None,
            client: reqwest::Client::new(),
        }
    }

    /// Sends this bearer token with every request.
    pub fn with_token(mut self, token: &str) -> Service {
        self.token = Some(token.to_owned());
        self
    }

    /// Waits until `/readyz` answers 200: the API is up and the Hubble stream flows.
    pub async fn ready(&self) {
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            if let Ok(r) = self.client.get(self.url("/readyz")).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never ready; log:\n{}\nstdout:\n{}",
                self.log(),
                std::fs::read_to_string(self.dir.path().join("stdout.txt")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the API answers at all (ready or not).
    pub async fn listening(&self) {
        let deadline = tokio::time::Instant::now() + GUARD;
        while self.client.get(self.url("/healthz")).send().await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the API never listened; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("exfilwatch.log")).unwrap_or_default()
    }

    /// SIGTERM, then its exit code and everything it printed (stdout, then the log).
    pub async fn terminate(self) -> (Option<i32>, String) {
        let (code, dir) = self.stop().await;
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
        (code, read("stdout.txt") + &read("exfilwatch.log"))
    }

    /// SIGTERM, then its exit code, keeping its directory for a restart.
    pub async fn stop(mut self) -> (Option<i32>, tempfile::TempDir) {
        let mut child = self.child.take().unwrap();
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        (status.code(), dir)
    }

    /// SIGKILLs the process, keeping its directory for a restart.
    pub fn kill(mut self) -> tempfile::TempDir {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GET `path` with the token, if any.
    pub async fn get_raw(&self, path: &str) -> reqwest::Response {
        let mut request = self.client.get(self.url(path));
        if let Some(t) = &self.token {
            request = request.bearer_auth(t);
        }
        request.send().await.unwrap()
    }

    /// GET `path` as JSON.
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self.get_raw(path).await;
        let status = r.status();
        let text = r.text().await.unwrap();
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("GET {path}: {status}: not JSON ({e}): {text}"));
        (status, value)
    }

    /// GET `path` as JSON, which must answer 200.
    pub async fn ok(&self, path: &str) -> Value {
        let (status, value) = self.get(path).await;
        assert_eq!(status, 200, "GET {path}: {value}");
        value
    }

    /// GET `path` as text, whatever the status.
    pub async fn text(&self, path: &str) -> String {
        self.get_raw(path).await.text().await.unwrap()
    }

    /// The value of an unlabelled metric.
    pub async fn metric(&self, name: &str) -> u64 {
        let text = self.text("/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    }
}

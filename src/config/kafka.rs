//! `source:` and `kafka:`: which source the service follows, and how it reads flows from a
//! Kafka topic when that is `kafka`.
//!
//! ```yaml
//! source: kafka                    # hubble (the default): Hubble Relay
//! kafka:
//!   brokers: ["kafka-0.kafka:9093"]
//!   topic: hubble-flows
//!   group: exfilwatch              # replicas in one group share the topic's partitions
//!   instance_id: $HOSTNAME         # static membership: a name, or $VAR from the environment
//!   start: earliest                # a group without committed offsets: earliest | latest
//!   format: auto                   # jsonpb | protobuf | auto (`{` first: jsonpb)
//!   partitioner: murmur2           # the producer's: murmur2 | crc32 (librdkafka consistent)
//!   commit_interval: 10s           # flows made durable and offsets committed this often
//!   tls: { ca_file, cert_file, key_file }
//!   sasl: { mechanism: SCRAM-SHA-512, username: exfilwatch, password_file: kafka-password }
//!   options: { fetch.wait.max.ms: "50" }   # further librdkafka consumer properties
//! ```

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Validator;

/// The flow source `run` follows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SourceKind {
    /// Hubble Relay's `GetFlows` stream (`hubble:`).
    #[default]
    Hubble,
    /// A Kafka topic of Hubble flows (`kafka:`).
    Kafka,
}

impl SourceKind {
    pub(super) fn parse(value: Option<&str>, v: &mut Validator<'_>) -> SourceKind {
        match value {
            None | Some("hubble") => SourceKind::Hubble,
            Some("kafka") => SourceKind::Kafka,
            Some(other) => {
                v.push(
                    "source",
                    format!("{other:?} is not a source: hubble or kafka"),
                );
                SourceKind::Hubble
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawKafka {
    brokers: Option<Vec<String>>,
    topic: Option<String>,
    group: Option<String>,
    start: Option<String>,
    format: Option<String>,
    partitioner: Option<String>,
    commit_interval: Option<String>,
    session_timeout: Option<String>,
    client_id: Option<String>,
    instance_id: Option<String>,
    tls: Option<RawKafkaTls>,
    sasl: Option<RawSasl>,
    options: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawKafkaTls {
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSasl {
    mechanism: Option<String>,
    username: Option<String>,
    password_file: Option<PathBuf>,
}

/// Where a consumer group without committed offsets starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOffset {
    Earliest,
    Latest,
}

/// How records encode flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordFormat {
    /// One or more `GetFlowsResponse` jsonpb lines: Hubble's flow exporter file, `hubble
    /// observe -o jsonpb`.
    Jsonpb,
    /// One `GetFlowsResponse` in protobuf.
    Protobuf,
    /// Jsonpb when the record's first non-blank byte is `{`, protobuf otherwise.
    Auto,
}

/// How the producer maps a record key to a partition: exfilwatch computes the same to know
/// which namespaces its partitions carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Partitioner {
    /// Kafka's Java client default, and librdkafka's `murmur2` / `murmur2_random`.
    #[default]
    Murmur2,
    /// librdkafka's default `consistent_random` (and `consistent`): CRC-32 of the key.
    Crc32,
}

/// TLS to the brokers: files librdkafka reads when the consumer starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaTls {
    pub ca_file: PathBuf,
    /// Client certificate and key for mTLS.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// SASL credentials; the password is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Sasl {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: String,
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Sasl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sasl")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How to read flows from Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// `host:port` of one or more brokers.
    pub brokers: Vec<String>,
    pub topic: String,
    pub group: String,
    pub client_id: String,
    /// The replica's static member name in the group (`group.instance.id`, the StatefulSet
    /// pod's name): restarted within the session timeout, it takes its partitions back
    /// without a rebalance. None: a dynamic member.
    pub instance_id: Option<String>,
    pub start: StartOffset,
    pub format: RecordFormat,
    pub partitioner: Partitioner,
    /// How often the flows read so far are made durable and their offsets committed.
    pub commit_interval: Duration,
    /// How long the group waits for a silent replica before giving its partitions away.
    pub session_timeout: Duration,
    pub tls: Option<KafkaTls>,
    pub sasl: Option<Sasl>,
    /// Further librdkafka consumer properties (`fetch.wait.max.ms: "50"`), for tuning.
    pub options: std::collections::BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: Vec::new(),
            topic: "hubble-flows".into(),
            group: "exfilwatch".into(),
            client_id: "exfilwatch".into(),
            instance_id: None,
            start: StartOffset::Earliest,
            format: RecordFormat::Auto,
            partitioner: Partitioner::Murmur2,
            commit_interval: Duration::from_secs(10),
            session_timeout: Duration::from_secs(15),
            tls: None,
            sasl: None,
            options: std::collections::BTreeMap::new(),
        }
    }
}

/// librdkafka properties exfilwatch sets itself: an option may not change them, since the
/// offsets' guarantee and the settings above depend on them.
const OWN_PROPERTIES: [&str; 12] = [
    "bootstrap.servers",
    "group.id",
    "group.instance.id",
    "partition.assignment.strategy",
    "client.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "security.protocol",
    "sasl.password",
    "session.timeout.ms",
    "ssl.key.password",
];

/// SASL mechanisms librdkafka is built with here (GSSAPI needs Cyrus SASL, which is not).
const MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

impl RawKafka {
    /// Validates the section; `used` says whether `source: kafka` needs it complete.
    pub(super) fn validate(self, used: bool, v: &mut Validator<'_>) -> KafkaConfig {
        let d = KafkaConfig::default();
        let k = self;
        let brokers = k.brokers.unwrap_or_default();
        if used && brokers.is_empty() {
            v.push(
                "kafka.brokers",
                "is required with source: kafka (host:port of one or more brokers)",
            );
        }
        for broker in &brokers {
            let port = broker.rsplit_once(':').map(|(_, p)| p.parse::<u16>());
            if !matches!(port, Some(Ok(p)) if p > 0) || broker.contains('/') {
                v.push("kafka.brokers", format!("{broker:?} is not host:port"));
            }
        }
        let name = |v: &mut Validator<'_>, key: &str, value: Option<String>, default: String| {
            let value = value.unwrap_or(default);
            let valid = !value.is_empty()
                && value.len() <= 249
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !valid {
                v.push(key, format!("{value:?} must be 1 to 249 of [a-zA-Z0-9._-]"));
            }
            value
        };
        let topic = name(v, "kafka.topic", k.topic, d.topic);
        let group = name(v, "kafka.group", k.group, d.group);
        let client_id = name(v, "kafka.client_id", k.client_id, d.client_id);
        // `$VAR` reads the name from the environment: one configuration for every pod.
        let instance_id = k.instance_id.map(|value| match value.strip_prefix('$') {
            Some(var) => {
                let named = std::env::var(var).unwrap_or_default();
                if named.is_empty() {
                    v.push(
                        "kafka.instance_id",
                        format!("{value:?}: ${var} is not set in the environment"),
                    );
                    return named;
                }
                name(v, "kafka.instance_id", Some(named), String::new())
            }
            None => name(v, "kafka.instance_id", Some(value), String::new()),
        });
        let start = match k.start.as_deref() {
            None | Some("earliest") => StartOffset::Earliest,
            Some("latest") => StartOffset::Latest,
            Some(other) => {
                v.push("kafka.start", format!("{other:?}: earliest or latest"));
                d.start
            }
        };
        let format = match k.format.as_deref() {
            None | Some("auto") => RecordFormat::Auto,
            Some("jsonpb") => RecordFormat::Jsonpb,
            Some("protobuf") => RecordFormat::Protobuf,
            Some(other) => {
                v.push(
                    "kafka.format",
                    format!("{other:?}: auto, jsonpb or protobuf"),
                );
                d.format
            }
        };
        let partitioner = match k.partitioner.as_deref() {
            None | Some("murmur2") => Partitioner::Murmur2,
            Some("crc32") => Partitioner::Crc32,
            Some(other) => {
                v.push("kafka.partitioner", format!("{other:?}: murmur2 or crc32"));
                d.partitioner
            }
        };
        let commit_interval = v.duration(
            "kafka.commit_interval",
            k.commit_interval.as_deref(),
            d.commit_interval,
        );
        if commit_interval < Duration::from_millis(100) {
            v.push(
                "kafka.commit_interval",
                format!("{commit_interval:?} is below 100ms"),
            );
        }
        let session_timeout = v.duration(
            "kafka.session_timeout",
            k.session_timeout.as_deref(),
            d.session_timeout,
        );
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&session_timeout) {
            v.push(
                "kafka.session_timeout",
                format!("{session_timeout:?} is outside 1s..1h"),
            );
        }
        let tls = k.tls.map(|t| {
            let ca_file = match t.ca_file {
                Some(p) => {
                    v.read_file("kafka.tls.ca_file", &p);
                    v.base.join(p)
                }
                None => {
                    v.push(
                        "kafka.tls.ca_file",
                        "is required: the CA that signed the brokers' certificates",
                    );
                    PathBuf::new()
                }
            };
            let identity = match (t.cert_file, t.key_file) {
                (Some(c), Some(k)) => {
                    v.read_file("kafka.tls.cert_file", &c);
                    v.read_file("kafka.tls.key_file", &k);
                    Some((v.base.join(c), v.base.join(k)))
                }
                (None, None) => None,
                _ => {
                    v.push(
                        "kafka.tls",
                        "cert_file and key_file go together (a client certificate for mTLS)",
                    );
                    None
                }
            };
            KafkaTls { ca_file, identity }
        });
        let sasl = k.sasl.map(|s| {
            let mechanism = s.mechanism.unwrap_or_else(|| "SCRAM-SHA-512".into());
            if !MECHANISMS.contains(&mechanism.as_str()) {
                v.push(
                    "kafka.sasl.mechanism",
                    format!("{mechanism:?}: one of {}", MECHANISMS.join(", ")),
                );
            }
            let username = s.username.unwrap_or_default();
            if username.is_empty() {
                v.push("kafka.sasl.username", "is required");
            }
            let password = match s.password_file {
                Some(p) => {
                    let bytes = v.read_file("kafka.sasl.password_file", &p);
                    String::from_utf8(bytes)
                        .map(|p| p.trim_end_matches(['\r', '\n']).to_owned())
                        .unwrap_or_else(|_| {
                            v.push("kafka.sasl.password_file", "is not UTF-8");
                            String::new()
                        })
                }
                None => {
                    v.push(
                        "kafka.sasl.password_file",
                        "is required (the password is read from a file, never from the configuration)",
                    );
                    String::new()
                }
            };
            Sasl {
                mechanism,
                username,
                password,
            }
        });
        let options = k.options.unwrap_or_default();
        for key in options.keys() {
            if OWN_PROPERTIES.contains(&key.as_str()) {
                v.push(
                    format!("kafka.options.{key}"),
                    "is set by exfilwatch itself (use the kafka settings above)",
                );
            } else if key.is_empty()
                || !key
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b"._".contains(&b))
            {
                v.push(
                    format!("kafka.options.{key}"),
                    "is not a librdkafka property name",
                );
            }
        }
        KafkaConfig {
            brokers,
            topic,
            group,
            client_id,
            instance_id,
            start,
            format,
            partitioner,
            commit_interval,
            session_timeout,
            tls,
            sasl,
            options,
        }
    }
}

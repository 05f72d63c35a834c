//! The YAML configuration: raw serde structs that reject unknown keys, validated into typed
//! values with every problem reported at once (file, key, value and, for a misspelt key, the
//! key that was probably meant).
//!
//! ```yaml
//! hubble:       { address: "http://hubble-relay:80", tls: { ca_file, cert_file, key_file, server_name }, namespaces: [ai-training] }
//! prometheus:   { url: "http://prometheus:9090", interval: 60s }
//! alertmanager: { urls: ["http://alertmanager:9093"] }
//! api:          { listen: "127.0.0.1:8080", tokens_file: null }
//! storage:      { dir: "/var/lib/exfilwatch", flows: { memory_flows: 2000000, memory_bytes: 256MiB, retention: 7d, disk_bytes: 10GiB } }
//! rules:        { dir: "rules" }
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    hubble: RawHubble,
    prometheus: RawPrometheus,
    alertmanager: RawAlertmanager,
    api: RawApi,
    storage: RawStorage,
    rules: RawRules,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHubble {
    address: Option<String>,
    tls: Option<RawTls>,
    namespaces: Option<Vec<String>>,
    connect_timeout: Option<String>,
    backoff_initial: Option<String>,
    backoff_max: Option<String>,
    resume_overlap: Option<String>,
    dedup_capacity: Option<usize>,
    max_message_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTls {
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    server_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPrometheus {
    url: Option<String>,
    interval: Option<String>,
    selector: Option<String>,
    timeout: Option<String>,
    blind_after: Option<String>,
    bearer_token_file: Option<PathBuf>,
    basic_auth: Option<RawBasicAuth>,
    tls: Option<RawHttpTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAlertmanager {
    urls: Vec<String>,
    webhooks: Vec<String>,
    resend_interval: Option<String>,
    update_interval: Option<String>,
    timeout: Option<String>,
    retry_max: Option<String>,
    bearer_token_file: Option<PathBuf>,
    basic_auth: Option<RawBasicAuth>,
    tls: Option<RawHttpTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBasicAuth {
    username: String,
    password_file: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHttpTls {
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawApi {
    listen: Option<String>,
    tokens_file: Option<PathBuf>,
    external_url: Option<String>,
    allow_unauthenticated: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawStorage {
    dir: Option<PathBuf>,
    flows: RawFlows,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawFlows {
    memory_flows: Option<usize>,
    memory_bytes: Option<String>,
    chunk_flows: Option<usize>,
    disk: Option<bool>,
    retention: Option<String>,
    disk_bytes: Option<String>,
    flush_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRules {
    dir: Option<PathBuf>,
}

/// TLS settings for the connection to Hubble Relay.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM bundle of the CA that signed Relay's certificate.
    pub ca_pem: Vec<u8>,
    /// Client certificate and key (PEM) for mTLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// Name to verify Relay's certificate against, e.g. `ui.hubble-relay.cilium.io`.
    pub server_name: Option<String>,
}

impl fmt::Debug for TlsConfig {
    // The client key is a secret: never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("client_identity", &self.identity.is_some())
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// Where and how to read flows from Hubble Relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubbleConfig {
    /// `http://host:port` or `https://host:port` (a `tls://` address is stored as https).
    pub address: String,
    pub tls: Option<TlsConfig>,
    /// Namespaces to watch; empty means every namespace.
    pub namespaces: Vec<String>,
    pub connect_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// How far before the last flow seen a resumed stream starts (`since`).
    pub resume_overlap: Duration,
    /// How many recent flow keys are remembered to drop re-delivered flows.
    pub dedup_capacity: usize,
    pub max_message_bytes: usize,
}

impl Default for HubbleConfig {
    fn default() -> Self {
        HubbleConfig {
            address: "http://hubble-relay:80".into(),
            tls: None,
            namespaces: vec!["ai-training".into()],
            connect_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            resume_overlap: Duration::from_secs(5),
            dedup_capacity: 262_144,
            max_message_bytes: 16 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrometheusConfig {
    /// Where the egress counters are; without it there are no baselines or spike alerts.
    pub url: Option<String>,
    /// How often rates are sampled and spike rules evaluated.
    pub interval: Duration,
    /// Label matchers for the counter's series, e.g. `{interface!="lo"}`.
    pub selector: String,
    pub timeout: Duration,
    /// How long Prometheus may be unreachable or unusable before the blind alert fires.
    pub blind_after: Duration,
    pub auth: Option<HttpAuth>,
    pub tls: Option<HttpTls>,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        PrometheusConfig {
            url: None,
            interval: Duration::from_secs(60),
            selector: String::new(),
            timeout: Duration::from_secs(10),
            blind_after: Duration::from_secs(300),
            auth: None,
            tls: None,
        }
    }
}

/// Credentials for HTTP targets; secrets never appear in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub enum HttpAuth {
    Basic { username: String, password: String },
    Bearer(String),
}

impl fmt::Debug for HttpAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpAuth::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            HttpAuth::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

/// TLS for HTTP targets: an extra CA, and a client certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpTls {
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate followed by its key, PEM.
    pub identity_pem: Option<Vec<u8>>,
}

impl fmt::Debug for HttpTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpTls")
            .field("ca", &self.ca_pem.is_some())
            .field("client_identity", &self.identity_pem.is_some())
            .finish()
    }
}

/// Where alerts go and how often they are refreshed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertmanagerConfig {
    /// Alertmanager base URLs; every one gets every alert (HA pairs).
    pub urls: Vec<String>,
    /// Plain webhook URLs that get Alertmanager's webhook payload (version 4).
    pub webhooks: Vec<String>,
    pub resend_interval: Duration,
    pub update_interval: Duration,
    pub timeout: Duration,
    /// Longest wait between delivery attempts while a target is unreachable.
    pub retry_max: Duration,
    pub auth: Option<HttpAuth>,
    pub tls: Option<HttpTls>,
}

impl Default for AlertmanagerConfig {
    fn default() -> Self {
        AlertmanagerConfig {
            urls: Vec::new(),
            webhooks: Vec::new(),
            resend_interval: Duration::from_secs(60),
            update_interval: Duration::from_secs(10),
            timeout: Duration::from_secs(10),
            retry_max: Duration::from_secs(30),
            auth: None,
            tls: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    pub tokens_file: Option<PathBuf>,
    /// How users reach the API; alert links (`generatorURL`) start with it.
    pub external_url: String,
    /// Serve a non-loopback address without tokens (not recommended).
    pub allow_unauthenticated: bool,
}

/// The whole configuration, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub hubble: HubbleConfig,
    pub prometheus: PrometheusConfig,
    pub alertmanager: AlertmanagerConfig,
    pub api: ApiConfig,
    pub storage_dir: PathBuf,
    /// The flow store; its segments go under `storage_dir/flows` unless `storage.flows.disk`
    /// is false.
    pub flows: crate::flows::FlowStoreConfig,
    pub rules_dir: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hubble: HubbleConfig::default(),
            prometheus: PrometheusConfig::default(),
            alertmanager: AlertmanagerConfig::default(),
            api: ApiConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
                tokens_file: None,
                external_url: "http://127.0.0.1:8080".into(),
                allow_unauthenticated: false,
            },
            storage_dir: PathBuf::from("/var/lib/exfilwatch"),
            flows: crate::flows::FlowStoreConfig {
                dir: Some(PathBuf::from("/var/lib/exfilwatch/flows")),
                ..Default::default()
            },
            rules_dir: PathBuf::from("rules"),
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
            parse_yaml(text).map_err(|message| ConfigError::Syntax {
                file: file.into(),
                message,
            })?
        };
        let mut problems = Vec::new();
        let config = validate(raw, base, &mut problems);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                file: file.into(),
                problems,
            })
        }
    }
}

/// The one place YAML is parsed; returns "LINE:COLUMN: message" on failure, with a suggestion
/// for a misspelt key.
pub fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_yaml_ng::from_str(text).map_err(|e| {
        let location = e
            .location()
            .map_or(String::new(), |l| format!("{}:{}: ", l.line(), l.column()));
        let mut message = e.to_string();
        // serde_yaml_ng appends " at line L column C"; the location prefix already says it.
        if let Some(cut) = message.find(" at line ") {
            message.truncate(cut);
        }
        if let Some(hint) = suggest(&message) {
            message.push_str(&hint);
        }
        format!("{location}{message}")
    })
}

/// For "unknown field `x`, expected one of `a`, `b`": "; did you mean `a`?" when one is close.
pub fn suggest(message: &str) -> Option<String> {
    let rest = message.split("unknown field `").nth(1)?;
    let (unknown, expected) = rest.split_once('`')?;
    let best = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|k| (edit_distance(unknown, k), k))
        .min()?;
    (best.0 <= unknown.len().max(2) / 2 + 1).then(|| format!("; did you mean `{}`?", best.1))
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Parses "250ms", "10s", "5m", "1h", "7d".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().map_err(|_| {
        format!("invalid duration {text:?}: expected a number and a unit, e.g. 30s")
    })?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "invalid duration {text:?}: unit must be ms, s, m, h or d"
            ));
        }
    };
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

fn duration(
    key: &str,
    value: Option<&str>,
    default: Duration,
    problems: &mut Vec<Problem>,
) -> Duration {
    match value.map(parse_duration) {
        None => default,
        Some(Ok(d)) => d,
        Some(Err(message)) => {
            problems.push(Problem {
                key: key.into(),
                message,
            });
            default
        }
    }
}

fn read_file(key: &str, path: &Path, base: &Path, problems: &mut Vec<Problem>) -> Vec<u8> {
    let path = base.join(path);
    match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) => {
            problems.push(Problem {
                key: key.into(),
                message: format!("cannot read {}: {e}", path.display()),
            });
            Vec::new()
        }
    }
}

/// A Kubernetes namespace name: an RFC 1123 label.
fn valid_namespace(ns: &str) -> bool {
    !ns.is_empty()
        && ns.len() <= 63
        && ns
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !ns.starts_with('-')
        && !ns.ends_with('-')
}

/// Splits an address into (scheme, rest) and normalises it for tonic: `tls://` becomes
/// `https://`, a bare `host:port` means plaintext.
fn normalise_address(address: &str) -> Result<(bool, String), String> {
    let (tls, rest) = if let Some(rest) = address.strip_prefix("tls://") {
        (true, rest)
    } else if let Some(rest) = address.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = address.strip_prefix("http://") {
        (false, rest)
    } else if address.contains("://") {
        return Err(format!(
            "unsupported scheme in {address:?}: use http://, https:// or tls://"
        ));
    } else {
        (false, address)
    };
    let rest = rest.trim_end_matches('/');
    let has_port = rest
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !has_port {
        return Err(format!(
            "{address:?} needs a host and a port, e.g. hubble-relay:80"
        ));
    }
    Ok((
        tls,
        format!("{}://{rest}", if tls { "https" } else { "http" }),
    ))
}

/// Credentials for an HTTP client, read from their files.
fn http_auth(
    section: &str,
    basic: Option<RawBasicAuth>,
    bearer_file: Option<PathBuf>,
    base: &Path,
    problems: &mut Vec<Problem>,
) -> Option<HttpAuth> {
    let mut secret = |key: String, path: &Path| {
        String::from_utf8_lossy(&read_file(&key, path, base, problems))
            .trim()
            .to_owned()
    };
    match (basic, bearer_file) {
        (Some(_), Some(_)) => {
            problems.push(Problem {
                key: format!("{section}.basic_auth"),
                message: format!("and {section}.bearer_token_file exclude each other"),
            });
            None
        }
        (Some(b), None) => {
            let password = secret(
                format!("{section}.basic_auth.password_file"),
                &b.password_file,
            );
            Some(HttpAuth::Basic {
                username: b.username,
                password,
            })
        }
        (None, Some(path)) => Some(HttpAuth::Bearer(secret(
            format!("{section}.bearer_token_file"),
            &path,
        ))),
        (None, None) => None,
    }
}

/// An extra CA and a client certificate for an HTTP client, read from their files.
fn http_tls(section: &str, t: RawHttpTls, base: &Path, problems: &mut Vec<Problem>) -> HttpTls {
    let identity_pem = match (&t.cert_file, &t.key_file) {
        (Some(c), Some(k)) => {
            let mut pem = read_file(&format!("{section}.tls.cert_file"), c, base, problems);
            pem.push(b'\n');
            pem.extend(read_file(
                &format!("{section}.tls.key_file"),
                k,
                base,
                problems,
            ));
            Some(pem)
        }
        (None, None) => None,
        _ => {
            problems.push(Problem {
                key: format!("{section}.tls"),
                message: "cert_file and key_file go together".into(),
            });
            None
        }
    };
    HttpTls {
        ca_pem: t
            .ca_file
            .map(|p| read_file(&format!("{section}.tls.ca_file"), &p, base, problems)),
        identity_pem,
    }
}

fn validate(raw: RawConfig, base: &Path, problems: &mut Vec<Problem>) -> Config {
    let defaults = Config::default();
    let mut hubble = defaults.hubble.clone();
    let h = raw.hubble;
    let mut tls_wanted = false;
    if let Some(address) = h.address {
        match normalise_address(&address) {
            Ok((tls, normalised)) => {
                tls_wanted = tls;
                hubble.address = normalised;
            }
            Err(message) => problems.push(Problem {
                key: "hubble.address".into(),
                message,
            }),
        }
    }
    match (h.tls, tls_wanted) {
        (Some(_), false) => problems.push(Problem {
            key: "hubble.tls".into(),
            message: format!("is set but hubble.address {:?} is plaintext; use tls://host:port", hubble.address),
        }),
        (None, true) => problems.push(Problem {
            key: "hubble.tls.ca_file".into(),
            message: "is required for a TLS address: Relay's certificate is signed by the cluster's Hubble CA".into(),
        }),
        (Some(t), true) => {
            let ca_pem = match &t.ca_file {
                Some(p) => read_file("hubble.tls.ca_file", p, base, problems),
                None => {
                    problems.push(Problem {
                        key: "hubble.tls.ca_file".into(),
                        message: "is required: Relay's certificate is signed by the cluster's Hubble CA".into(),
                    });
                    Vec::new()
                }
            };
            let identity = match (&t.cert_file, &t.key_file) {
                (Some(c), Some(k)) => Some((
                    read_file("hubble.tls.cert_file", c, base, problems),
                    read_file("hubble.tls.key_file", k, base, problems),
                )),
                (None, None) => None,
                (Some(_), None) => {
                    problems.push(Problem { key: "hubble.tls.key_file".into(), message: "is required with cert_file for mTLS".into() });
                    None
                }
                (None, Some(_)) => {
                    problems.push(Problem { key: "hubble.tls.cert_file".into(), message: "is required with key_file for mTLS".into() });
                    None
                }
            };
            hubble.tls = Some(TlsConfig { ca_pem, identity, server_name: t.server_name });
        }
        (None, false) => {}
    }
    // An explicit empty list watches every namespace; leaving the key out keeps the default.
    if let Some(namespaces) = h.namespaces {
        for ns in &namespaces {
            if !valid_namespace(ns) {
                problems.push(Problem {
                    key: "hubble.namespaces".into(),
                    message: format!(
                        "{ns:?} is not a valid namespace name (lowercase letters, digits and '-', at most 63)"
                    ),
                });
            }
        }
        hubble.namespaces = namespaces;
    }
    hubble.connect_timeout = duration(
        "hubble.connect_timeout",
        h.connect_timeout.as_deref(),
        hubble.connect_timeout,
        problems,
    );
    hubble.backoff_initial = duration(
        "hubble.backoff_initial",
        h.backoff_initial.as_deref(),
        hubble.backoff_initial,
        problems,
    );
    hubble.backoff_max = duration(
        "hubble.backoff_max",
        h.backoff_max.as_deref(),
        hubble.backoff_max,
        problems,
    );
    hubble.resume_overlap = duration(
        "hubble.resume_overlap",
        h.resume_overlap.as_deref(),
        hubble.resume_overlap,
        problems,
    );
    if hubble.backoff_initial.is_zero() || hubble.backoff_initial > hubble.backoff_max {
        problems.push(Problem {
            key: "hubble.backoff_initial".into(),
            message: format!(
                "{:?} must be above zero and at most backoff_max {:?}",
                hubble.backoff_initial, hubble.backoff_max
            ),
        });
    }
    if let Some(n) = h.dedup_capacity {
        if n == 0 {
            problems.push(Problem {
                key: "hubble.dedup_capacity".into(),
                message: "must be at least 1".into(),
            });
        }
        hubble.dedup_capacity = n.max(1);
    }
    if let Some(n) = h.max_message_bytes {
        if n < 4096 {
            problems.push(Problem {
                key: "hubble.max_message_bytes".into(),
                message: format!("{n} is below the 4096-byte minimum"),
            });
        }
        hubble.max_message_bytes = n.max(4096);
    }

    let rp = raw.prometheus;
    let selector = rp.selector.unwrap_or_default();
    let braced = selector.starts_with('{') && selector.ends_with('}');
    if !selector.is_empty() && !braced {
        problems.push(Problem {
            key: "prometheus.selector".into(),
            message: format!(
                "{selector:?} must be label matchers in braces, e.g. {{interface!=\"lo\"}}"
            ),
        });
    }
    let pd = PrometheusConfig::default();
    let prometheus = PrometheusConfig {
        url: rp.url,
        interval: duration(
            "prometheus.interval",
            rp.interval.as_deref(),
            pd.interval,
            problems,
        ),
        selector,
        timeout: duration(
            "prometheus.timeout",
            rp.timeout.as_deref(),
            pd.timeout,
            problems,
        ),
        blind_after: duration(
            "prometheus.blind_after",
            rp.blind_after.as_deref(),
            pd.blind_after,
            problems,
        ),
        auth: http_auth(
            "prometheus",
            rp.basic_auth,
            rp.bearer_token_file,
            base,
            problems,
        ),
        tls: rp.tls.map(|t| http_tls("prometheus", t, base, problems)),
    };
    if prometheus.interval.is_zero() {
        problems.push(Problem {
            key: "prometheus.interval".into(),
            message: "must be above zero".into(),
        });
    }
    let am = raw.alertmanager;
    for (key, url) in prometheus
        .url
        .iter()
        .map(|u| ("prometheus.url", u))
        .chain(am.urls.iter().map(|u| ("alertmanager.urls", u)))
        .chain(am.webhooks.iter().map(|u| ("alertmanager.webhooks", u)))
        .chain(raw.api.external_url.iter().map(|u| ("api.external_url", u)))
    {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            problems.push(Problem {
                key: key.into(),
                message: format!("{url:?} must start with http:// or https://"),
            });
        }
    }
    let am_defaults = AlertmanagerConfig::default();
    let auth = http_auth(
        "alertmanager",
        am.basic_auth,
        am.bearer_token_file,
        base,
        problems,
    );
    let tls = am.tls.map(|t| http_tls("alertmanager", t, base, problems));
    let alertmanager = AlertmanagerConfig {
        urls: am.urls,
        webhooks: am.webhooks,
        resend_interval: duration(
            "alertmanager.resend_interval",
            am.resend_interval.as_deref(),
            am_defaults.resend_interval,
            problems,
        ),
        update_interval: duration(
            "alertmanager.update_interval",
            am.update_interval.as_deref(),
            am_defaults.update_interval,
            problems,
        ),
        timeout: duration(
            "alertmanager.timeout",
            am.timeout.as_deref(),
            am_defaults.timeout,
            problems,
        ),
        retry_max: duration(
            "alertmanager.retry_max",
            am.retry_max.as_deref(),
            am_defaults.retry_max,
            problems,
        ),
        auth,
        tls,
    };
    if alertmanager.resend_interval.is_zero()
        || alertmanager.update_interval.is_zero()
        || alertmanager.retry_max.is_zero()
    {
        problems.push(Problem {
            key: "alertmanager".into(),
            message: "resend_interval, update_interval and retry_max must be above zero".into(),
        });
    }
    let listen = match raw.api.listen.as_deref().map(str::parse::<SocketAddr>) {
        None => defaults.api.listen,
        Some(Ok(addr)) => addr,
        Some(Err(_)) => {
            problems.push(Problem {
                key: "api.listen".into(),
                message: format!(
                    "{:?} is not an address:port such as 127.0.0.1:8080",
                    raw.api.listen.unwrap_or_default()
                ),
            });
            defaults.api.listen
        }
    };
    let storage_dir = raw
        .storage
        .dir
        .clone()
        .map_or(defaults.storage_dir, |p| base.join(p));
    Config {
        hubble,
        prometheus,
        alertmanager,
        api: ApiConfig {
            listen,
            tokens_file: raw.api.tokens_file.map(|p| base.join(p)),
            external_url: raw
                .api
                .external_url
                .unwrap_or_else(|| format!("http://{listen}")),
            allow_unauthenticated: raw.api.allow_unauthenticated.unwrap_or(false),
        },
        flows: flows(&raw.storage.flows, &storage_dir, problems),
        storage_dir,
        rules_dir: base.join(raw.rules.dir.unwrap_or(defaults.rules_dir)),
    }
}

fn flows(
    raw: &RawFlows,
    storage_dir: &Path,
    problems: &mut Vec<Problem>,
) -> crate::flows::FlowStoreConfig {
    let d = crate::flows::FlowStoreConfig::default();
    let mut size =
        |key: &str, value: &Option<String>, default: u64| match value.as_deref().map(parse_size) {
            None => default,
            Some(Ok(n)) => n,
            Some(Err(message)) => {
                problems.push(Problem {
                    key: format!("storage.flows.{key}"),
                    message,
                });
                default
            }
        };
    let memory_bytes = size("memory_bytes", &raw.memory_bytes, d.memory_bytes as u64);
    let disk_bytes = size("disk_bytes", &raw.disk_bytes, d.disk_bytes);
    let config = crate::flows::FlowStoreConfig {
        memory_flows: raw.memory_flows.unwrap_or(d.memory_flows),
        memory_bytes: usize::try_from(memory_bytes).unwrap_or(usize::MAX),
        chunk_flows: raw.chunk_flows.unwrap_or(d.chunk_flows),
        dir: raw.disk.unwrap_or(true).then(|| storage_dir.join("flows")),
        retention: duration(
            "storage.flows.retention",
            raw.retention.as_deref(),
            d.retention,
            problems,
        ),
        disk_bytes,
        flush_interval: duration(
            "storage.flows.flush_interval",
            raw.flush_interval.as_deref(),
            d.flush_interval,
            problems,
        ),
    };
    if !(1_000..=crate::flows::MAX_CHUNK_FLOWS).contains(&config.chunk_flows) {
        problems.push(Problem {
            key: "storage.flows.chunk_flows".into(),
            message: format!(
                "{} is outside 1000-{}",
                config.chunk_flows,
                crate::flows::MAX_CHUNK_FLOWS
            ),
        });
    }
    if config.memory_flows < config.chunk_flows || config.memory_bytes < 1 << 20 {
        problems.push(Problem {
            key: "storage.flows.memory_flows".into(),
            message: format!(
                "memory_flows {} must be at least chunk_flows {} and memory_bytes {} at least 1MiB",
                config.memory_flows, config.chunk_flows, config.memory_bytes
            ),
        });
    }
    if config.flush_interval.is_zero() || config.retention.is_zero() {
        problems.push(Problem {
            key: "storage.flows".into(),
            message: "retention and flush_interval must be above zero".into(),
        });
    }
    config
}

/// Parses a byte size: "1048576", "512MiB", "10GiB", "100MB".
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid size {text:?}: expected a number and a unit, e.g. 512MiB"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "invalid size {text:?}: unit must be B, KiB, MiB, GiB, TiB, KB, MB, GB or TB"
            ));
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("invalid size {text:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.yaml", Path::new("/etc/exfilwatch"))
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
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert!(parse_size("99999999999TB").is_err());
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

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("m").is_err());
    }
}

//! `hubble:`: where and how flows are read from Hubble Relay.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Validator;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawHubble {
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

impl RawHubble {
    pub(super) fn validate(self, v: &mut Validator<'_>) -> HubbleConfig {
        let mut hubble = HubbleConfig::default();
        let h = self;
        let mut tls_wanted = false;
        if let Some(address) = h.address {
            match normalise_address(&address) {
                Ok((tls, normalised)) => {
                    tls_wanted = tls;
                    hubble.address = normalised;
                }
                Err(message) => v.push("hubble.address", message),
            }
        }
        match (h.tls, tls_wanted) {
            (Some(_), false) => v.push(
                "hubble.tls",
                format!("is set but hubble.address {:?} is plaintext; use tls://host:port", hubble.address),
            ),
            (None, true) => v.push("hubble.tls.ca_file", "is required for a TLS address: Relay's certificate is signed by the cluster's Hubble CA"),
            (Some(t), true) => {
                let ca_pem = match &t.ca_file {
                    Some(p) => v.read_file("hubble.tls.ca_file", p),
                    None => {
                        v.push("hubble.tls.ca_file", "is required: Relay's certificate is signed by the cluster's Hubble CA");
                        Vec::new()
                    }
                };
                let identity = match (&t.cert_file, &t.key_file) {
                    (Some(c), Some(k)) => Some((
                        v.read_file("hubble.tls.cert_file", c),
                        v.read_file("hubble.tls.key_file", k),
                    )),
                    (None, None) => None,
                    (Some(_), None) => {
                        v.push("hubble.tls.key_file", "is required with cert_file for mTLS");
                        None
                    }
                    (None, Some(_)) => {
                        v.push("hubble.tls.cert_file", "is required with key_file for mTLS");
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
                    v.push("hubble.namespaces", format!(
                            "{ns:?} is not a valid namespace name (lowercase letters, digits and '-', at most 63)"
                        ));
                }
            }
            hubble.namespaces = namespaces;
        }
        hubble.connect_timeout = v.duration(
            "hubble.connect_timeout",
            h.connect_timeout.as_deref(),
            hubble.connect_timeout,
        );
        hubble.backoff_initial = v.duration(
            "hubble.backoff_initial",
            h.backoff_initial.as_deref(),
            hubble.backoff_initial,
        );
        hubble.backoff_max = v.duration(
            "hubble.backoff_max",
            h.backoff_max.as_deref(),
            hubble.backoff_max,
        );
        hubble.resume_overlap = v.duration(
            "hubble.resume_overlap",
            h.resume_overlap.as_deref(),
            hubble.resume_overlap,
        );
        if hubble.backoff_initial.is_zero() || hubble.backoff_initial > hubble.backoff_max {
            v.push(
                "hubble.backoff_initial",
                format!(
                    "{:?} must be above zero and at most backoff_max {:?}",
                    hubble.backoff_initial, hubble.backoff_max
                ),
            );
        }
        if let Some(n) = h.dedup_capacity {
            if n == 0 {
                v.push("hubble.dedup_capacity", "must be at least 1");
            }
            hubble.dedup_capacity = n.max(1);
        }
        if let Some(n) = h.max_message_bytes {
            if n < 4096 {
                v.push(
                    "hubble.max_message_bytes",
                    format!("{n} is below the 4096-byte minimum"),
                );
            }
            hubble.max_message_bytes = n.max(4096);
        }
        hubble
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

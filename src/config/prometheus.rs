//! `prometheus:`: where the egress counters are read and how often.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Validator;
use super::http::{self, RawBasicAuth, RawHttpTls};
use crate::common::http::{HttpAuth, HttpTls};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawPrometheus {
    url: Option<String>,
    interval: Option<String>,
    selector: Option<String>,
    timeout: Option<String>,
    blind_after: Option<String>,
    bearer_token_file: Option<PathBuf>,
    basic_auth: Option<RawBasicAuth>,
    tls: Option<RawHttpTls>,
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

impl RawPrometheus {
    pub(super) fn validate(self, v: &mut Validator<'_>) -> PrometheusConfig {
        let selector = self.selector.unwrap_or_default();
        let braced = selector.starts_with('{') && selector.ends_with('}');
        if !selector.is_empty() && !braced {
            v.push(
                "prometheus.selector",
                format!(
                    "{selector:?} must be label matchers in braces, e.g. {{interface!=\"lo\"}}"
                ),
            );
        }
        let d = PrometheusConfig::default();
        let prometheus = PrometheusConfig {
            url: self.url,
            interval: v.duration("prometheus.interval", self.interval.as_deref(), d.interval),
            selector,
            timeout: v.duration("prometheus.timeout", self.timeout.as_deref(), d.timeout),
            blind_after: v.duration(
                "prometheus.blind_after",
                self.blind_after.as_deref(),
                d.blind_after,
            ),
            auth: http::auth("prometheus", self.basic_auth, self.bearer_token_file, v),
            tls: self.tls.map(|t| http::tls("prometheus", t, v)),
        };
        if prometheus.interval.is_zero() {
            v.push("prometheus.interval", "must be above zero");
        }
        if let Some(url) = &prometheus.url {
            v.url("prometheus.url", url);
        }
        prometheus
    }
}

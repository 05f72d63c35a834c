//! `alertmanager:`: where alerts go and how often they are refreshed.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Validator;
use super::http::{self, RawBasicAuth, RawHttpTls};
use crate::common::http::{HttpAuth, HttpTls};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAlertmanager {
    urls: Vec<String>,
    webhooks: Vec<String>,
    resend_interval: Option<String>,
    update_interval: Option<String>,
    timeout: Option<String>,
    retry_max: Option<String>,
    max_firing: Option<usize>,
    retention: Option<String>,
    bearer_token_file: Option<PathBuf>,
    basic_auth: Option<RawBasicAuth>,
    tls: Option<RawHttpTls>,
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
    /// Alerts of one rule firing at once in one namespace; past it, further destinations
    /// fold into one roll-up alert.
    pub max_firing: usize,
    /// Resolved alerts older than this are pruned from the state store.
    pub retention: Duration,
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
            max_firing: 100,
            retention: Duration::from_secs(90 * 24 * 3600),
            auth: None,
            tls: None,
        }
    }
}

impl RawAlertmanager {
    pub(super) fn validate(self, v: &mut Validator<'_>) -> AlertmanagerConfig {
        for url in &self.urls {
            v.url("alertmanager.urls", url);
        }
        for url in &self.webhooks {
            v.url("alertmanager.webhooks", url);
        }
        let d = AlertmanagerConfig::default();
        let auth = http::auth("alertmanager", self.basic_auth, self.bearer_token_file, v);
        let tls = self.tls.map(|t| http::tls("alertmanager", t, v));
        let alertmanager = AlertmanagerConfig {
            urls: self.urls,
            webhooks: self.webhooks,
            resend_interval: v.duration(
                "alertmanager.resend_interval",
                self.resend_interval.as_deref(),
                d.resend_interval,
            ),
            update_interval: v.duration(
                "alertmanager.update_interval",
                self.update_interval.as_deref(),
                d.update_interval,
            ),
            timeout: v.duration("alertmanager.timeout", self.timeout.as_deref(), d.timeout),
            retry_max: v.duration(
                "alertmanager.retry_max",
                self.retry_max.as_deref(),
                d.retry_max,
            ),
            max_firing: self.max_firing.unwrap_or(d.max_firing),
            retention: v.duration(
                "alertmanager.retention",
                self.retention.as_deref(),
                d.retention,
            ),
            auth,
            tls,
        };
        if alertmanager.max_firing == 0 {
            v.push(
                "alertmanager.max_firing",
                "must be at least 1: alerts past it fold into one roll-up alert",
            );
        }
        if alertmanager.resend_interval.is_zero()
            || alertmanager.update_interval.is_zero()
            || alertmanager.retry_max.is_zero()
        {
            v.push(
                "alertmanager",
                "resend_interval, update_interval and retry_max must be above zero",
            );
        }
        alertmanager
    }
}

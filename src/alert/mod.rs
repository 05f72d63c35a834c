//! Alerts: what a detector raises, with the flows behind it, and how they reach people.
//!
//! - this module: the [`Alert`] and its [`FlowContext`], fingerprints, the Alertmanager API v2
//!   and webhook (version 4) payloads;
//! - [`manager`]: the lifecycle (firing, updated, re-sent, resolved after a quiet period),
//!   writing every state change to the durable outbox in [`crate::state`] before it is sent;
//! - [`sink`]: delivery from the outbox to every Alertmanager and webhook, with retries.
//!
//! Labels identify an alert and stay low-cardinality (`alertname`, `severity`, `namespace`,
//! `destination`, `rule`, plus a rule's own); annotations explain it.

pub mod annotations;
pub mod manager;
pub mod rollup;
pub mod sink;

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::common::clock::format_time;
use crate::flow::destination::Destination;
use crate::flow::{FlowEvent, format_uuid, parse_uuid};
use crate::state::{StateError, Store};

/// What a flow detector found in a flow: an alert for `namespace` and `destination`, whose
/// context the flow joins.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub namespace: String,
    pub destination: Destination,
    /// Figures the detector computed itself (query counts, destinations touched, a summary
    /// and description); empty when the flow context says it all.
    pub extra: BTreeMap<String, String>,
    /// For a detector that decides over a window: the window's flows that led up to this one.
    pub earlier: Option<Earlier>,
}

/// The flows of a detector's window before the one that raised its alert: they are
/// counted in the new alert's context, and its evidence link starts at the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Earlier {
    pub flows: u64,
    pub since_ns: i64,
}

/// Values kept per context field; more are counted in `omitted`.
pub const MAX_VALUES: usize = 20;

/// The distinct values of one context field, in order, at most [`MAX_VALUES`]: a sorted
/// vector that grows by one value at a time. Every firing alert holds eight or more of them,
/// most with a single value, and a tree's first node alone is room for eleven.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Values(Vec<Box<str>>);

impl Values {
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> {
        self.0.iter().map(|v| &**v)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn find(&self, value: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|v| (**v).cmp(value))
    }

    /// Keeps `value` unless it is empty or already kept; a new value beyond [`MAX_VALUES`] is
    /// counted in `omitted` instead.
    fn add(&mut self, value: &str, omitted: &mut u64) {
        if value.is_empty() {
            return;
        }
        let Err(at) = self.find(value) else {
            return;
        };
        if self.0.len() < MAX_VALUES {
            self.0.reserve_exact(1);
            self.0.insert(at, value.into());
        } else {
            *omitted += 1;
        }
    }

    /// The values, comma-separated.
    fn join(&self) -> String {
        self.iter().collect::<Vec<_>>().join(", ")
    }
}

impl Serialize for Values {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Values {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Values, D::Error> {
        // Saved lists are sorted, distinct and within the cap already; added one by one,
        // any that are not come out so.
        let mut values = Values::default();
        let mut omitted = 0;
        for v in Vec::<String>::deserialize(deserializer)? {
            values.add(&v, &mut omitted);
        }
        Ok(values)
    }
}

/// The UUIDs of an alert's most recent flows, oldest first: kept as 16-byte numbers, not
/// 36-byte strings, and written in their canonical form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Samples(VecDeque<u128>);

impl Samples {
    /// The UUIDs as text.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = String> + '_ {
        self.0.iter().map(|&u| format_uuid(u))
    }

    /// Keeps `uuid` as the newest of at most `keep`.
    fn push(&mut self, uuid: u128, keep: usize) {
        if self.0.len() >= keep.max(1) {
            self.0.pop_front();
        }
        self.0.push_back(uuid);
    }
}

impl Serialize for Samples {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

/// A saved sample that is not a UUID is left out (and logged): the alert it belongs to
/// still resumes.
impl<'de> Deserialize<'de> for Samples {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Samples, D::Error> {
        let texts = Vec::<String>::deserialize(deserializer)?;
        let uuids = texts.iter().filter_map(|text| {
            let uuid = parse_uuid(text.as_bytes());
            if uuid.is_none() {
                tracing::warn!(value = ?text, "alert context: a sample flow that is not a UUID, left out");
            }
            uuid
        });
        Ok(Samples(uuids.collect()))
    }
}

/// The flows behind an alert, summarised for a human.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FlowContext {
    pub count: u64,
    pub first_seen_ns: i64,
    pub last_seen_ns: i64,
    #[schema(value_type = Vec<String>)]
    pub source_pods: Values,
    #[schema(value_type = Vec<String>)]
    pub source_workloads: Values,
    #[schema(value_type = Vec<String>)]
    pub destination_ips: Values,
    #[schema(value_type = Vec<String>)]
    pub destination_fqdns: Values,
    pub destination_namespace: String,
    #[schema(value_type = Vec<String>)]
    pub destination_pods: Values,
    /// "443/TCP".
    #[schema(value_type = Vec<String>)]
    pub ports: Values,
    #[schema(value_type = Vec<String>)]
    pub drop_reasons: Values,
    /// "namespace/name" of the denying policies.
    #[schema(value_type = Vec<String>)]
    pub policies: Values,
    #[schema(value_type = Vec<String>)]
    pub nodes: Values,
    /// UUIDs of the most recent flows.
    #[schema(value_type = Vec<String>)]
    pub samples: Samples,
    /// Distinct values not kept because a field already held [`MAX_VALUES`].
    pub omitted: u64,
    /// Annotations a detector computed itself (volume figures, summary, description); when
    /// present they replace the flow-derived ones.
    #[serde(default)]
    pub extra: BTreeMap<String, String>,
}

impl FlowContext {
    /// Folds one flow in, keeping at most `samples` sample UUIDs.
    pub fn add(&mut self, flow: &FlowEvent, samples: usize) {
        self.count += 1;
        if self.first_seen_ns == 0 || flow.time_ns < self.first_seen_ns {
            self.first_seen_ns = flow.time_ns;
        }
        self.last_seen_ns = self.last_seen_ns.max(flow.time_ns);
        let o = &mut self.omitted;
        let src = &flow.source;
        if !src.pod.is_empty() {
            self.source_pods
                .add(&format!("{}/{}", src.namespace, src.pod), o);
        }
        if !src.workload.is_empty() {
            self.source_workloads.add(
                &format!("{}/{} ({})", src.namespace, src.workload, src.workload_kind),
                o,
            );
        }
        if let Some(ip) = flow.destination.ip {
            self.destination_ips.add(&ip.to_string(), o);
        }
        for name in flow.destination_names.iter() {
            self.destination_fqdns.add(name, o);
        }
        let dst = &flow.destination;
        if !dst.namespace.is_empty() {
            self.destination_namespace = dst.namespace.to_string();
            if !dst.pod.is_empty() {
                self.destination_pods
                    .add(&format!("{}/{}", dst.namespace, dst.pod), o);
            }
        }
        let port = if flow.destination.port == 0 {
            flow.protocol.as_str().to_owned()
        } else {
            format!("{}/{}", flow.destination.port, flow.protocol.as_str())
        };
        self.ports.add(&port, o);
        if flow.drop_reason != 0 {
            self.drop_reasons.add(flow.drop_reason_name(), o);
        }
        for p in flow
            .egress_denied_by
            .iter()
            .chain(flow.ingress_denied_by.iter())
        {
            // Clusterwide policies have no namespace.
            let name = if p.namespace.is_empty() {
                p.name.to_string()
            } else {
                format!("{}/{}", p.namespace, p.name)
            };
            self.policies.add(&name, o);
        }
        self.nodes.add(&flow.node, o);
        if let Some(uuid) = flow.uuid {
            self.samples.push(uuid, samples);
        }
    }

    /// A field by its template name (see [`crate::rules::template::FIELDS`]).
    pub fn field(&self, name: &str) -> String {
        match name {
            "count" => self.count.to_string(),
            "source_pods" => self.source_pods.join(),
            "source_workloads" => self.source_workloads.join(),
            "destination_ips" => self.destination_ips.join(),
            "destination_fqdns" => self.destination_fqdns.join(),
            "destination_namespace" => self.destination_namespace.clone(),
            "destination_pods" => self.destination_pods.join(),
            "ports" => self.ports.join(),
            "drop_reasons" => self.drop_reasons.join(),
            "policies" => self.policies.join(),
            "nodes" => self.nodes.join(),
            "first_seen" => format_time(self.first_seen_ns),
            "last_seen" => format_time(self.last_seen_ns),
            "sample_flows" => self.samples.iter().collect::<Vec<_>>().join(", "),
            _ => String::new(),
        }
    }
}

/// Firing or resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Firing,
    Resolved,
}

impl Status {
    /// "firing" or "resolved", as Alertmanager, the webhook payload and the API write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Firing => "firing",
            Status::Resolved => "resolved",
        }
    }

    /// The status named `text`.
    pub fn parse(text: &str) -> Option<Status> {
        [Status::Firing, Status::Resolved]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// One alert as exfilwatch keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub fingerprint: String,
    pub rule: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub context: FlowContext,
    pub status: Status,
    /// Wall-clock nanoseconds when it started firing.
    pub starts_at_ns: i64,
    /// For a firing alert, when Alertmanager should expire it unless re-sent; for a resolved
    /// one, when it resolved.
    pub ends_at_ns: i64,
    /// The alert's page in the console; it shows the flows behind the alert.
    pub generator_url: String,
    /// The flow query (`/api/v1/flows?...` parameters) that returns the flows behind it.
    #[serde(default)]
    pub query: String,
}

pub use crate::common::hash::fingerprint;

/// An alert in Alertmanager's API v2 `postableAlert` form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostableAlert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    #[serde(rename = "startsAt")]
    pub starts_at: String,
    #[serde(rename = "endsAt")]
    pub ends_at: String,
    #[serde(rename = "generatorURL")]
    pub generator_url: String,
}

/// Saves `alert`'s new state in the state store and queues it for every target, in one
/// transaction.
pub fn save(store: &Store, alert: &Alert, targets: &[String]) -> Result<(), StateError> {
    let body = serde_json::to_string(alert).unwrap_or_default();
    let row = crate::state::AlertRow {
        fingerprint: &alert.fingerprint,
        alertname: alert.labels.get("alertname").map_or(&alert.rule, |n| n),
        namespace: alert.labels.get("namespace").map_or("", String::as_str),
        starts_at_ns: alert.starts_at_ns,
        firing: alert.status == Status::Firing,
    };
    store.record(&row, &body, targets)
}

/// The alerts that were firing when the state store was last written.
pub fn saved_firing(store: &Store) -> Result<Vec<Alert>, StateError> {
    Ok(decode_saved(store, store.alert_bodies(true)?))
}

/// Every alert the state store recorded, firing or resolved, by fingerprint.
pub fn saved(store: &Store) -> Result<Vec<Alert>, StateError> {
    Ok(decode_saved(store, store.alert_bodies(false)?))
}

/// The newest `limit` alerts `filter` selects, newest first (an indexed read).
pub fn page(
    store: &Store,
    filter: crate::state::AlertFilter<'_>,
    limit: usize,
) -> Result<Vec<Alert>, StateError> {
    Ok(decode_saved(store, store.alert_page(filter, limit)?))
}

/// The alert with `fingerprint` (or the one an earlier fingerprint was renamed to).
pub fn by_fingerprint(store: &Store, fingerprint: &str) -> Result<Option<Alert>, StateError> {
    Ok(store
        .alert_body(fingerprint)?
        .and_then(|body| decode_saved(store, vec![body]).pop()))
}

/// A body that no longer decodes is logged and skipped rather than failing the whole read.
fn decode_saved(store: &Store, bodies: Vec<String>) -> Vec<Alert> {
    bodies
        .iter()
        .filter_map(|b| match serde_json::from_str(b) {
            Ok(alert) => Some(alert),
            Err(e) => {
                tracing::error!(path = %store.path(), "state store: a saved alert cannot be read, skipped: {e}");
                None
            }
        })
        .collect()
}

impl Alert {
    pub fn postable(&self) -> PostableAlert {
        PostableAlert {
            labels: self.labels.clone(),
            annotations: self.annotations.clone(),
            starts_at: format_time(self.starts_at_ns),
            ends_at: format_time(self.ends_at_ns),
            generator_url: self.generator_url.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_depend_on_the_whole_label_set_only() {
        let a = BTreeMap::from([
            ("alertname".to_owned(), "X".to_owned()),
            ("namespace".to_owned(), "ns".to_owned()),
        ]);
        let mut b = a.clone();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        b.insert("destination".into(), "d".into());
        assert_ne!(fingerprint(&a), fingerprint(&b));
        // Pairs are delimited: moving a character between key and value changes the hash.
        let c = BTreeMap::from([("ab".to_owned(), "c".to_owned())]);
        let d = BTreeMap::from([("a".to_owned(), "bc".to_owned())]);
        assert_ne!(fingerprint(&c), fingerprint(&d));
        assert_eq!(fingerprint(&a).len(), 32);
        // SHA-256 of "alertname\xffX\xffnamespace\xffns\xff", its first 16 bytes.
        assert_eq!(fingerprint(&a), "b797287df0286a2af703bf84d3489a46");
    }

    #[test]
    fn context_values_are_distinct_sorted_and_capped() {
        let mut values = Values::default();
        let mut omitted = 0;
        for v in ["b", "a", "", "b", "c"] {
            values.add(v, &mut omitted);
        }
        assert_eq!(values.iter().collect::<Vec<_>>(), ["a", "b", "c"]);
        for i in 0..MAX_VALUES {
            values.add(&format!("z{i:02}"), &mut omitted);
        }
        assert_eq!(values.len(), MAX_VALUES);
        assert_eq!(omitted, 3, "the three that did not fit");
        // Written as the list of strings it always was; read back the same.
        let json = serde_json::to_string(&values).unwrap();
        assert!(json.starts_with(r#"["a","b","c","z00""#), "{json}");
        assert_eq!(serde_json::from_str::<Values>(&json).unwrap(), values);
        let unsorted: Values = serde_json::from_str(r#"["y","x","y"]"#).unwrap();
        assert_eq!(unsorted.iter().collect::<Vec<_>>(), ["x", "y"]);
    }

    #[test]
    fn samples_keep_the_newest_and_read_back_as_text() {
        let mut samples = Samples::default();
        for uuid in 1..=5u128 {
            samples.push(uuid << 64 | 0xab, 3);
        }
        let json = serde_json::to_string(&samples).unwrap();
        assert_eq!(
            json,
            r#"["00000000-0000-0003-0000-0000000000ab","00000000-0000-0004-0000-0000000000ab","00000000-0000-0005-0000-0000000000ab"]"#
        );
        assert_eq!(serde_json::from_str::<Samples>(&json).unwrap(), samples);
        // A saved sample that is not a UUID is left out; the rest, and the alert, stay.
        let read: Samples =
            serde_json::from_str(r#"["not-a-uuid","00000000-0000-0005-0000-0000000000ab"]"#)
                .unwrap();
        assert_eq!(
            read.iter().collect::<Vec<_>>(),
            ["00000000-0000-0005-0000-0000000000ab"]
        );
    }
}

//! The kinds of rule, a closed set, one file each: what a rule of the kind means outside its
//! detector. Each file holds the kind's parameters as the rule file writes them (checked, every
//! problem reported with its field), the flows that are an alert's evidence, how far before
//! the alert they reach, and the alert's words when the detector leaves them to the alert.
//! How each kind is detected lives in `detect/` under the same name: alerts and the rule loader
//! sit below the detectors, and read only this.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Deserialize;
use serde_yaml_ng::Value;

use super::fqdn_matches;
use super::load::Report;
use crate::flow::DropReason;

mod coverage;
mod dns_exfiltration;
mod new_destination;
mod policy_denied;
mod scan;
mod segmentation;
mod volume_spike;

pub use coverage::CoverageParams;
pub use dns_exfiltration::DnsParams;
pub use new_destination::NewDestinationParams;
pub use policy_denied::{Direction, PolicyDeniedParams};
pub use scan::ScanParams;
pub use segmentation::{Allowed, SegmentationParams};
pub use volume_spike::{BaselineModel, VolumeSpikeParams};

/// The flows behind an alert of a kind, as `/api/v1/flows` parameters: with the alert's
/// namespace, its first source pod and its destination filled in, and `since` its first flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evidence {
    /// The parameter the namespace is given as: `source_namespace`, `destination_namespace`,
    /// or `namespace` (either side).
    pub side: &'static str,
    /// The verdicts the kind looks at; `None`: all.
    pub verdict: Option<&'static str>,
    /// Whether the alert's destination narrows the flows.
    pub destination: bool,
    /// The parameter the alert's first source pod is given as, for kinds that follow a pod.
    pub pod: Option<&'static str>,
}

impl Evidence {
    /// Flows leaving the namespace with `verdict`, to the alert's destination.
    const fn egress(verdict: Option<&'static str>) -> Evidence {
        Evidence {
            side: "source_namespace",
            verdict,
            destination: true,
            pod: None,
        }
    }
}

/// An alert's summary and description, rendered from its fields.
#[derive(Debug)]
pub struct Words {
    pub summary: String,
    pub description: String,
}

/// What a kind of rule means outside its detector (see the module's text).
pub trait Spec {
    /// The flows behind an alert.
    fn evidence(&self) -> Evidence;

    /// How far before an alert's first flow its evidence reaches: the window of a kind whose
    /// alert no single flow raised.
    fn lookback(&self) -> Duration {
        Duration::ZERO
    }

    /// Summary and description from the alert's fields (`value("count")`, `value("ports")`,
    /// ...), for a kind whose detector leaves them to the alert because they grow while it
    /// fires; `None` for a kind whose detector writes its own.
    fn words(&self, _value: &dyn Fn(&str) -> String) -> Option<Words> {
        None
    }
}

/// The detectors, a closed set.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    PolicyDenied(PolicyDeniedParams),
    VolumeSpike(VolumeSpikeParams),
    Scan(ScanParams),
    DnsExfiltration(DnsParams),
    Segmentation(SegmentationParams),
    Coverage(CoverageParams),
    NewDestination(NewDestinationParams),
}

impl Kind {
    /// Every kind's name in rule files.
    pub const NAMES: [&'static str; 7] = [
        "policy_denied",
        "volume_spike",
        "scan",
        "dns_exfiltration",
        "segmentation",
        "coverage",
        "new_destination",
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Kind::PolicyDenied(_) => "policy_denied",
            Kind::VolumeSpike(_) => "volume_spike",
            Kind::Scan(_) => "scan",
            Kind::DnsExfiltration(_) => "dns_exfiltration",
            Kind::Segmentation(_) => "segmentation",
            Kind::Coverage(_) => "coverage",
            Kind::NewDestination(_) => "new_destination",
        }
    }

    /// The kind named `name` with its parameters from `raw`; `None` for no kind of that name.
    pub(super) fn parse(name: &str, raw: Option<Value>, report: &mut Report<'_>) -> Option<Kind> {
        Some(match name {
            "policy_denied" => Kind::PolicyDenied(policy_denied::parse(raw, report)),
            "volume_spike" => Kind::VolumeSpike(volume_spike::parse(raw, report)),
            "scan" => Kind::Scan(scan::parse(raw, report)),
            "dns_exfiltration" => Kind::DnsExfiltration(dns_exfiltration::parse(raw, report)),
            "segmentation" => Kind::Segmentation(segmentation::parse(raw, report)),
            "coverage" => Kind::Coverage(coverage::parse(raw, report)),
            "new_destination" => Kind::NewDestination(new_destination::parse(raw, report)),
            _ => return None,
        })
    }

    /// The kind's meaning outside its detector.
    pub fn spec(&self) -> &dyn Spec {
        match self {
            Kind::PolicyDenied(p) => p,
            Kind::VolumeSpike(p) => p,
            Kind::Scan(p) => p,
            Kind::DnsExfiltration(p) => p,
            Kind::Segmentation(p) => p,
            Kind::Coverage(p) => p,
            Kind::NewDestination(p) => p,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_names_its_evidence_and_how_far_back_it_reaches() {
        let pack = crate::rules::default_pack().unwrap();
        let mut seen = Vec::new();
        for rule in &pack {
            let spec = rule.kind.spec();
            let e = spec.evidence();
            let expected = match rule.kind.name() {
                "policy_denied" => ("source_namespace", Some("DROPPED"), true, None),
                "volume_spike" | "segmentation" | "new_destination" => {
                    ("source_namespace", Some("FORWARDED"), true, None)
                }
                "scan" => ("source_namespace", None, false, Some("source_pod")),
                "dns_exfiltration" => ("namespace", None, true, Some("pod")),
                "coverage" => ("namespace", None, false, None),
                other => panic!("{other} has no expected evidence"),
            };
            assert_eq!(
                (e.side, e.verdict, e.destination, e.pod),
                expected,
                "{}",
                rule.name
            );
            let lookback = match &rule.kind {
                Kind::VolumeSpike(p) => p.window,
                Kind::Coverage(p) => p.window,
                _ => Duration::ZERO,
            };
            assert_eq!(spec.lookback(), lookback, "{}", rule.name);
            assert_eq!(
                spec.words(&|_| String::new()).is_some(),
                rule.kind.name() == "policy_denied",
                "{}",
                rule.name
            );
            assert!(Kind::NAMES.contains(&rule.kind.name()));
            seen.push(rule.kind.name());
        }
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), Kind::NAMES.len(), "the pack has every kind");
    }
}

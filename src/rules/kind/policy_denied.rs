//! `policy_denied`: a watched namespace's flow that Cilium dropped for a reason the rule names
//! (policy denials by default), raised per destination with the flows' context.

use super::*;

/// Which traffic direction a rule looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Egress,
    Ingress,
    Any,
}

/// Parameters of the `policy_denied` detector.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyDeniedParams {
    /// `DropReason` codes that count as a policy denial.
    pub drop_reasons: BTreeSet<u32>,
    pub direction: Direction,
    /// Also count AUDIT verdicts (policy audit mode reports would-be denials that way).
    pub include_audit: bool,
    /// Prefix lengths that group world destinations without a name.
    pub world_prefix_v4: u8,
    pub world_prefix_v6: u8,
    /// Two reports of one packet (policy verdict and drop) closer than this count once.
    pub duplicate_window: Duration,
    /// Sample flow UUIDs kept per alert.
    pub samples: usize,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawPolicyDenied {
    drop_reasons: Option<Vec<String>>,
    direction: Option<Direction>,
    include_audit: Option<bool>,
    world_prefix_v4: Option<u8>,
    world_prefix_v6: Option<u8>,
    duplicate_window: Option<String>,
    samples: Option<usize>,
}

fn drop_reason_code(name: &str) -> Option<u32> {
    DropReason::from_str_name(name).map(|r| r as u32)
}

pub(super) fn parse(raw: Option<Value>, report: &mut Report<'_>) -> PolicyDeniedParams {
    let p: RawPolicyDenied = report.params(raw);
    let mut drop_reasons = BTreeSet::new();
    for name in p
        .drop_reasons
        .unwrap_or_else(|| vec!["POLICY_DENIED".into(), "POLICY_DENY".into()])
    {
        match drop_reason_code(&name) {
            Some(code) if code != 0 => {
                drop_reasons.insert(code);
            }
            _ => report.problem(
                "params.drop_reasons",
                format!("{name:?} is not a Hubble drop reason (e.g. POLICY_DENIED, POLICY_DENY, AUTH_REQUIRED)"),
            ),
        }
    }
    if drop_reasons.is_empty() {
        report.problem("params.drop_reasons", "must name at least one drop reason");
    }
    let world_prefix_v4 = p.world_prefix_v4.unwrap_or(24);
    if !(8..=32).contains(&world_prefix_v4) {
        report.problem(
            "params.world_prefix_v4",
            format!("{world_prefix_v4} is not between 8 and 32"),
        );
    }
    let world_prefix_v6 = p.world_prefix_v6.unwrap_or(64);
    if !(16..=128).contains(&world_prefix_v6) {
        report.problem(
            "params.world_prefix_v6",
            format!("{world_prefix_v6} is not between 16 and 128"),
        );
    }
    let samples = p.samples.unwrap_or(10);
    if !(1..=100).contains(&samples) {
        report.problem(
            "params.samples",
            format!("{samples} is not between 1 and 100"),
        );
    }
    PolicyDeniedParams {
        drop_reasons,
        direction: p.direction.unwrap_or(Direction::Egress),
        include_audit: p.include_audit.unwrap_or(false),
        world_prefix_v4,
        world_prefix_v6,
        duplicate_window: report.duration(
            "params.duplicate_window",
            p.duplicate_window.as_deref(),
            Duration::from_secs(1),
        ),
        samples,
    }
}

impl Spec for PolicyDeniedParams {
    fn evidence(&self) -> Evidence {
        let verdict = if self.include_audit {
            "DROPPED,AUDIT"
        } else {
            "DROPPED"
        };
        Evidence {
            side: match self.direction {
                Direction::Ingress => "destination_namespace",
                Direction::Egress | Direction::Any => "source_namespace",
            },
            ..Evidence::egress(Some(verdict))
        }
    }

    /// The counts grow while the alert fires: the words are the alert's.
    fn words(&self, value: &dyn Fn(&str) -> String) -> Option<Words> {
        let (ns, dest, count) = (value("namespace"), value("destination"), value("count"));
        let attempts = if count == "1" { "attempt" } else { "attempts" };
        let summary = format!("{ns}: {count} egress {attempts} to {dest} denied by network policy");
        let pods = value("source_pods");
        let mut description = format!(
            "Pods {} in namespace {ns} tried to reach {dest}",
            if pods.is_empty() { "(unknown)" } else { &pods }
        );
        let seen_as: Vec<String> = ["destination_ips", "destination_pods"]
            .into_iter()
            .map(value)
            .filter(|v| !v.is_empty() && *v != dest)
            .collect();
        if !seen_as.is_empty() {
            description.push_str(&format!(" ({})", seen_as.join("; ")));
        }
        description.push_str(&format!(
            " on {}. Cilium dropped {count} flow(s): {}",
            value("ports"),
            value("drop_reasons")
        ));
        let policies = value("policies");
        if !policies.is_empty() {
            description.push_str(&format!(", denied by {policies}"));
        }
        description.push_str(&format!(
            ". First seen {}, last seen {}, on node(s) {}.",
            value("first_seen"),
            value("last_seen"),
            value("nodes")
        ));
        let omitted = value("omitted_values");
        if !omitted.is_empty() {
            description.push_str(&format!(" {omitted} further distinct value(s) not listed."));
        }
        Some(Words {
            summary,
            description,
        })
    }
}

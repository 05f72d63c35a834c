//! The `coverage` detector: gaps in what exfilwatch can see become alerts, because an attacker
//! who floods Hubble's rings (or takes the stream down) must not also blind the detector.
//!
//! Three signals: events Hubble reported lost (kernel perf ring, observer queue, this
//! reader's ring) adding up to `lost_events` within `window`; Relay reporting nodes
//! unavailable, gone or in error; the Hubble stream down for `stream_down_after`. (Prometheus
//! blindness has its own built-in alert.) Alerts name `hubble` as their destination.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::flow::{LostEvent, NodeState, NodeStatus};
use crate::rules::{CoverageParams, Kind, Rule};

/// What the coverage detector wants done.
#[derive(Debug, Clone, PartialEq)]
pub enum Gap {
    /// Raise (or keep raising) the alert for `destination` with these annotations.
    Raise {
        destination: &'static str,
        extra: BTreeMap<String, String>,
    },
    /// The stream is back: resolve its alert.
    StreamBack,
}

/// One `coverage` rule's detector.
#[derive(Debug)]
pub struct Coverage {
    pub rule: Arc<Rule>,
    params: CoverageParams,
    lost: VecDeque<(Instant, u64, &'static str, String)>,
    down_since: Option<Instant>,
}

impl Coverage {
    pub fn new(rule: Arc<Rule>) -> Option<Coverage> {
        let Kind::Coverage(params) = &rule.kind else {
            return None;
        };
        let params = params.clone();
        Some(Coverage {
            rule,
            params,
            lost: VecDeque::new(),
            down_since: None,
        })
    }

    /// Counts a lost-events notice.
    pub fn lost(&mut self, event: &LostEvent, now: Instant) -> Option<Gap> {
        self.lost.push_back((
            now,
            event.count,
            event.source.as_str_name(),
            event.node.to_string(),
        ));
        while self
            .lost
            .front()
            .is_some_and(|(t, ..)| now.duration_since(*t) > self.params.window)
            || self.lost.len() > 10_000
        {
            self.lost.pop_front();
        }
        let total: u64 = self.lost.iter().map(|(_, n, ..)| n).sum();
        if total < self.params.lost_events {
            return None;
        }
        let mut by_source: BTreeMap<&str, u64> = BTreeMap::new();
        let mut nodes = BTreeSet::new();
        for (_, n, source, node) in &self.lost {
            *by_source.entry(source).or_default() += n;
            if !node.is_empty() && nodes.len() < 20 {
                nodes.insert(node.as_str());
            }
        }
        let sources = by_source
            .iter()
            .map(|(s, n)| format!("{s}: {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let nodes = nodes.into_iter().collect::<Vec<_>>().join(", ");
        let window = format!("{:?}", self.params.window);
        let mut extra = BTreeMap::new();
        extra.insert("lost_events".into(), total.to_string());
        extra.insert("lost_by_source".into(), sources.clone());
        extra.insert("nodes".into(), nodes.clone());
        extra.insert(
            "summary".into(),
            format!("Hubble lost {total} events in {window}: flows went unobserved"),
        );
        extra.insert(
            "description".into(),
            format!("Hubble reported {total} events lost in the last {window} ({sources}) on nodes {nodes}. Flows in that gap were not seen by any detector; a flood that overflows the rings can hide exfiltration. Raise Hubble's ring and queue sizes, or find the flood."),
        );
        Some(Gap::Raise {
            destination: "hubble",
            extra,
        })
    }

    /// Relay's node notices: nodes unavailable, gone or failing are a gap.
    pub fn node_status(&mut self, status: &NodeStatus) -> Option<Gap> {
        if !matches!(
            status.state,
            NodeState::NodeUnavailable | NodeState::NodeGone | NodeState::NodeError
        ) {
            return None;
        }
        let nodes = status
            .nodes
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let mut extra = BTreeMap::new();
        extra.insert("nodes".into(), nodes.clone());
        extra.insert("node_state".into(), status.state.as_str_name().into());
        extra.insert(
            "summary".into(),
            format!("Hubble Relay lost nodes {nodes}: their flows go unobserved"),
        );
        extra.insert(
            "description".into(),
            format!("Relay reports {} for {nodes} ({}). Flows of pods on those nodes reach no detector until they come back.", status.state.as_str_name(), status.message),
        );
        Some(Gap::Raise {
            destination: "hubble-nodes",
            extra,
        })
    }

    /// The Hubble stream's health at `now`: `up` or not, with the last error.
    pub fn stream(&mut self, up: bool, error: &str, now: Instant) -> Option<Gap> {
        if up {
            return self.down_since.take().map(|_| Gap::StreamBack);
        }
        let since = *self.down_since.get_or_insert(now);
        let down_for = now.duration_since(since);
        if down_for < self.params.stream_down_after {
            return None;
        }
        let mut extra = BTreeMap::new();
        extra.insert(
            "down_for".into(),
            format!("{:?}", Duration::from_secs(down_for.as_secs())),
        );
        extra.insert("error".into(), error.to_owned());
        extra.insert(
            "summary".into(),
            "the Hubble flow stream is down: no flow is observed".into(),
        );
        extra.insert(
            "description".into(),
            format!("exfilwatch has had no Hubble stream for {:?}; it keeps reconnecting. Last error: {error}", Duration::from_secs(down_for.as_secs())),
        );
        Some(Gap::Raise {
            destination: "hubble-stream",
            extra,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testing::default_rule;
    use crate::flow::LostEventSource;

    fn detector() -> Coverage {
        Coverage::new(default_rule("ExfilwatchCoverageGap")).unwrap()
    }

    fn lost(n: u64) -> LostEvent {
        LostEvent {
            source: LostEventSource::PerfEventRingBuffer,
            count: n,
            cpu: None,
            first_ns: None,
            last_ns: None,
            node: "gpu-node-a".into(),
        }
    }

    #[test]
    fn lost_events_add_up_within_the_window() {
        let mut d = detector();
        let t = Instant::now();
        assert_eq!(d.lost(&lost(600), t), None);
        assert_eq!(
            d.lost(&lost(300), t + Duration::from_secs(400)),
            None,
            "the first notice left the window"
        );
        let Some(Gap::Raise { destination, extra }) =
            d.lost(&lost(800), t + Duration::from_secs(500))
        else {
            panic!()
        };
        assert_eq!(destination, "hubble");
        assert_eq!(extra["lost_events"], "1100");
        assert_eq!(extra["lost_by_source"], "PERF_EVENT_RING_BUFFER: 1100");
    }

    #[test]
    fn a_stream_down_long_enough_is_a_gap_and_its_return_resolves() {
        let mut d = detector();
        let t = Instant::now();
        assert_eq!(d.stream(false, "connection refused", t), None);
        assert!(matches!(
            d.stream(false, "connection refused", t + Duration::from_secs(121)),
            Some(Gap::Raise {
                destination: "hubble-stream",
                ..
            })
        ));
        assert_eq!(
            d.stream(true, "", t + Duration::from_secs(130)),
            Some(Gap::StreamBack)
        );
        assert_eq!(d.stream(true, "", t + Duration::from_secs(131)), None);
    }

    #[test]
    fn unavailable_nodes_are_a_gap_connected_ones_are_not() {
        let mut d = detector();
        let status = |state| NodeStatus {
            state,
            nodes: vec!["gpu-node-b".into()],
            message: "connection refused".into(),
        };
        assert!(matches!(
            d.node_status(&status(NodeState::NodeUnavailable)),
            Some(Gap::Raise {
                destination: "hubble-nodes",
                ..
            })
        ));
        assert_eq!(d.node_status(&status(NodeState::NodeConnected)), None);
    }
}

//! Detection: the [`engine`] runs every enabled rule's detector over the flow stream and the
//! egress reports and hands what they find to the alert manager. One file per detector:
//!
//! - [`policy_denied`]: flows a network policy refused, leaving a watched namespace;
//! - [`segmentation`]: forwarded flows to destinations the namespace's segmentation forbids;
//! - [`scan`]: one pod touching many destinations or ports;
//! - [`dns_exfil`]: data encoded in DNS query names;
//! - [`new_destination`]: destinations unseen in the learned history;
//! - [`volume_spike`]: egress volume above its baseline (from Prometheus);
//! - [`coverage`]: gaps in what Hubble sees (lost events, unavailable nodes, a down stream).

use std::sync::Arc;

pub use crate::alert::{Earlier, Hit};
use crate::flow::FlowEvent;
use crate::rules::Rule;
use crate::state::StateError;

/// A detector over the flow stream, one per enabled rule of its kind. The engine hands every
/// flow to every such detector and what they find to the alert manager.
pub trait FlowDetector: std::fmt::Debug + Send {
    /// The rule it evaluates.
    fn rule(&self) -> &Arc<Rule>;

    /// What `flow` shows, if anything; an error when what the detector learned could not be
    /// saved (the flow is still counted).
    fn check(&mut self, flow: &FlowEvent) -> Result<Option<Hit>, StateError>;

    /// How many sample flows (their UUIDs, newest) its alerts keep.
    fn samples(&self) -> usize {
        10
    }

    /// Gives it what other replicas learned (replicas sharing a bucket); most detectors
    /// learn nothing that outlives a flow and ignore it.
    fn share_learned(&mut self, _learned: &SharedLearned) {}
}

/// What the other replicas' detectors learned, as they last uploaded it: known destinations
/// (rule, namespace, destination, last seen), refreshed when partitions move.
pub type SharedLearned = tokio::sync::watch::Receiver<Arc<Vec<crate::state::Learned>>>;

/// Implements [`FlowDetector`] for a detector whose inherent `check` cannot fail; the
/// detector modules below see it by textual scope.
macro_rules! flow_detector {
    ($detector:ty) => {
        impl $crate::detect::FlowDetector for $detector {
            fn rule(&self) -> &std::sync::Arc<$crate::rules::Rule> {
                &self.rule
            }

            fn check(
                &mut self,
                flow: &$crate::flow::FlowEvent,
            ) -> Result<Option<$crate::detect::Hit>, $crate::state::StateError> {
                Ok(<$detector>::check(self, flow))
            }
        }
    };
}

pub mod coverage;
pub mod dns_exfil;
pub mod engine;
pub mod new_destination;
pub mod policy_denied;
pub mod scan;
pub mod segmentation;
pub mod volume_spike;

/// Helpers the detectors' unit tests share: rules from a pack, flows through the real decoder.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use crate::flow::FlowEvent;
    use crate::flow::wire::Decoder;

    use crate::rules::{DEFAULT_PACK, Rule, load_text};

    /// The rule `name` of `pack` (rule-file text); panics if the pack lacks it.
    pub fn rule_in(pack: &str, name: &str) -> Arc<Rule> {
        let rule = load_text(pack, "pack")
            .unwrap()
            .into_iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no rule {name} in the pack"));
        Arc::new(rule)
    }

    /// The rule `name` of the default pack.
    pub fn default_rule(name: &str) -> Arc<Rule> {
        rule_in(DEFAULT_PACK, name)
    }

    /// An engine of the default pack whose alerts `store` keeps and `stats` counts.
    pub fn engine(
        store: &crate::state::Store,
        stats: Arc<crate::alert::sink::DeliveryStats>,
    ) -> super::engine::Engine {
        use crate::alert::manager::{LifecycleConfig, Manager};
        let rules: Vec<Arc<Rule>> = crate::rules::default_pack()
            .unwrap()
            .into_iter()
            .map(Arc::new)
            .collect();
        let lifecycle = LifecycleConfig {
            resend_interval: std::time::Duration::from_secs(60),
            update_interval: std::time::Duration::from_secs(10),
            external_url: "http://127.0.0.1:8080".into(),
            targets: Vec::new(),
            ..LifecycleConfig::default()
        };
        let wake = Arc::new(tokio::sync::Notify::new());
        let manager = Manager::new(lifecycle, store.clone(), wake, &rules).unwrap();
        let blind_after = std::time::Duration::from_secs(300);
        super::engine::Engine::new(&rules, manager, stats, blind_after, store)
    }

    /// `flow` as the service sees it: encoded in a response and decoded by the wire decoder.
    pub fn flow_event(decoder: &mut Decoder, flow: crate::proto::flow::Flow) -> FlowEvent {
        crate::sim::received(decoder, flow).expect("the simulator's flows decode")
    }
}

//! The detection engine: every enabled rule's detector over every flow, hits handed to the
//! alert manager, and the manager's clock.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::policy_denied::PolicyDenied;
use super::rules::Rule;
use crate::alert::Alert;
use crate::alert::manager::Manager;
use crate::alert::sink::DeliveryStats;
use crate::flow::Event;

/// Runs the detectors and owns the alert manager.
#[derive(Debug)]
pub struct Engine {
    detectors: Vec<PolicyDenied>,
    manager: Manager,
    /// Counts store failures; each is logged, and the change is retried on the next tick.
    stats: Arc<DeliveryStats>,
}

impl Engine {
    /// An engine for the enabled `rules`.
    pub fn new(rules: &[Arc<Rule>], manager: Manager, stats: Arc<DeliveryStats>) -> Engine {
        let detectors = rules
            .iter()
            .filter(|r| r.enabled)
            .filter_map(|r| PolicyDenied::new(r.clone()))
            .collect();
        Engine {
            detectors,
            manager,
            stats,
        }
    }

    /// How often [`Engine::tick`] should run: often enough for the shortest quiet period.
    pub fn tick_interval(rules: &[Arc<Rule>]) -> Duration {
        let shortest = rules
            .iter()
            .map(|r| r.resolve_after)
            .min()
            .unwrap_or(Duration::from_secs(4));
        (shortest / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }

    fn failed(&self, e: &crate::store::StoreError) {
        self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!("alerts: {e}");
    }

    /// Runs every detector on one event.
    pub fn observe(&mut self, event: &Event, now: Instant) {
        let Event::Flow(flow) = event else { return };
        for detector in &mut self.detectors {
            if let Some(hit) = detector.check(flow) {
                let rule = detector.rule.clone();
                let samples = detector.samples();
                if let Err(e) =
                    self.manager
                        .hit(&rule, &hit.namespace, &hit.destination, flow, samples, now)
                {
                    self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!("alerts: {e}");
                }
            }
        }
    }

    /// Resolves and re-sends alerts as their timers say.
    pub fn tick(&mut self, now: Instant) {
        if let Err(e) = self.manager.tick(now) {
            self.failed(&e);
        }
    }

    /// Alerts firing now, sorted by rule, namespace and destination.
    pub fn firing(&self) -> Vec<Alert> {
        let mut alerts: Vec<Alert> = self.manager.firing().cloned().collect();
        alerts.sort_by(|a, b| (&a.rule, &a.labels).cmp(&(&b.rule, &b.labels)));
        alerts
    }
}

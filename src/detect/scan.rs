//! The `scan` detector: one source pod touching many distinct destinations, or many distinct
//! destination ports, within a sliding window, allowed or denied: scanning and lateral
//! movement from a compromised pod.
//!
//! Destinations are told apart by the most specific name known: the FQDN, the destination's
//! namespace/workload, or else the exact IP (so a sweep across one subnet counts every host).
//! Gradient traffic between the trainers of one job is one destination, and S3 by name is
//! one, however many IPs serve it. The window is exact at any flow rate: a pod keeps when it
//! last reached each destination and port, not its flows. State is bounded: at most
//! `MAX_SOURCES` pods, and `MAX_KEYS` destinations and ports per pod, are remembered.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use hashbrown::HashTable;

use super::{Earlier, Hit};
use crate::common::clock::span_ns;
use crate::common::hash::KeyMap;
use crate::flow::destination::{Destination, DestinationRef, Granularity};
use crate::flow::intern::Sym;
use crate::flow::{Endpoint, FlowEvent, L4Protocol, TrafficDirection};
use crate::rules::{Kind, Rule, ScanParams, SelectorMemo};

/// Pods followed at once; beyond it the quietest is forgotten.
const MAX_SOURCES: usize = 10_000;
/// Destinations, and destination ports, remembered per pod within the window.
const MAX_KEYS: usize = 20_000;
/// Slices of the window by which a pod's flows are counted for an alert's evidence.
const SLICES: i64 = 32;
/// Destinations listed in the alert.
const SAMPLE: usize = 10;

/// The key of a destination port: the destination's key `d` (random per process) combined
/// with the port and protocol, distinct for every port and protocol of one destination.
fn port_key(d: u64, port: u16, protocol: L4Protocol) -> u64 {
    let what = u64::from(port) << 8 | protocol as u64;
    d ^ what.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// One pod's window: when it last reached each destination and each destination port, and
/// how many flows it sent, by slice of the window. A flow costs two look-ups (its destination
/// and its port) and no list of flows: what is older than the window is dropped only when
/// the pod might be over a threshold, so the decision is exact however many flows the pod
/// sends.
#[derive(Debug, Default)]
struct Window {
    /// By destination key: last seen (nanoseconds) and the destination's name.
    destinations: KeyMap<(i64, String)>,
    /// By destination-and-port key: last seen (nanoseconds).
    ports: KeyMap<i64>,
    /// Flows per slice of the window, oldest first: (slice, first flow's time, flows).
    slices: VecDeque<(i64, i64, u64)>,
    last_ns: i64,
}

impl Window {
    /// Counts a flow at `t_ns` to destination `d` by port key `p`; `name` names a new
    /// destination. Slices older than `cutoff_ns` are dropped.
    fn count(
        &mut self,
        (t_ns, d, p): (i64, u64, u64),
        name: impl FnOnce() -> String,
        slice_ns: i64,
        cutoff_ns: i64,
    ) {
        let slice = t_ns.div_euclid(slice_ns);
        match self.slices.back_mut() {
            // A flow reported late is counted with the newest slice.
            Some(last) if last.0 >= slice => {
                last.1 = last.1.min(t_ns);
                last.2 += 1;
            }
            _ => self.slices.push_back((slice, t_ns, 1)),
        }
        while self
            .slices
            .front()
            .is_some_and(|s| (s.0 + 1).saturating_mul(slice_ns) <= cutoff_ns)
        {
            self.slices.pop_front();
        }
        let full = self.destinations.len() >= MAX_KEYS;
        match self.destinations.entry(d) {
            Entry::Occupied(mut e) => e.get_mut().0 = e.get().0.max(t_ns),
            Entry::Vacant(e) if !full => {
                e.insert((t_ns, name()));
            }
            Entry::Vacant(_) => {}
        }
        let full = self.ports.len() >= MAX_KEYS;
        match self.ports.entry(p) {
            Entry::Occupied(mut e) => *e.get_mut() = (*e.get()).max(t_ns),
            Entry::Vacant(e) if !full => {
                e.insert(t_ns);
            }
            Entry::Vacant(_) => {}
        }
    }

    /// Drops the destinations and ports last seen before `cutoff_ns`.
    fn forget_before(&mut self, cutoff_ns: i64) {
        self.destinations.retain(|_, (seen, _)| *seen >= cutoff_ns);
        self.ports.retain(|_, seen| *seen >= cutoff_ns);
    }

    /// Distinct destinations and ports within `window_ns` of the pod's last flow.
    fn live(&self, window_ns: i64) -> (usize, usize) {
        let cutoff = self.last_ns.saturating_sub(window_ns);
        (
            self.destinations
                .values()
                .filter(|(seen, _)| *seen >= cutoff)
                .count(),
            self.ports.values().filter(|seen| **seen >= cutoff).count(),
        )
    }

    /// The flows of the window's slices and the first one's time.
    fn flows(&self) -> (u64, Option<i64>) {
        let flows = self.slices.iter().map(|s| s.2).sum();
        (flows, self.slices.iter().map(|s| s.1).min())
    }
}

/// The pods followed, each with its window in a slot found by the source endpoint's
/// [`Endpoint::pod_key`] (worked out once per endpoint, not per flow) and its names, compared
/// by pointer first: the decoder shares one copy of each name. The last pod asked is
/// remembered by its slot, so a run of flows from one pod does not look it up at all; names
/// are cloned only for a new slot. At `MAX_SOURCES` pods a new one takes the quietest pod's
/// slot.
#[derive(Debug, Default)]
struct Sources {
    /// Slots of `windows`, by their pod key.
    slots: HashTable<usize>,
    /// (namespace, pod, pod key) and the window.
    windows: Vec<((Sym, Sym, u64), Window)>,
    last: Option<usize>,
}

/// True when `a` and `b` are the same text: the same allocation, or equal strings.
fn same(a: &Sym, b: &Sym) -> bool {
    Arc::ptr_eq(a, b) || **a == **b
}

impl Sources {
    fn window(&mut self, pod: &Endpoint) -> &mut Window {
        if let Some(slot) = self.last {
            let (ns, p, _) = &self.windows[slot].0;
            if Arc::ptr_eq(ns, &pod.namespace) && Arc::ptr_eq(p, &pod.pod) {
                return &mut self.windows[slot].1;
            }
        }
        let Sources {
            slots,
            windows,
            last,
        } = self;
        let hash = pod.pod_key();
        let found = slots.find(hash, |&slot| {
            let (ns, p, _) = &windows[slot].0;
            same(ns, &pod.namespace) && same(p, &pod.pod)
        });
        let slot = match found {
            Some(&slot) => slot,
            None => {
                let key = (pod.namespace.clone(), pod.pod.clone(), hash);
                let slot = if windows.len() < MAX_SOURCES {
                    windows.push((key, Window::default()));
                    windows.len() - 1
                } else {
                    let slot = windows
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, (_, w))| w.last_ns)
                        .map_or(0, |(slot, _)| slot);
                    let old = windows[slot].0.2;
                    if let Ok(old) = slots.find_entry(old, |&s| s == slot) {
                        old.remove();
                    }
                    windows[slot] = (key, Window::default());
                    slot
                };
                slots.insert_unique(hash, slot, |&s| windows[s].0.2);
                slot
            }
        };
        *last = Some(slot);
        &mut windows[slot].1
    }

    /// True when a window is kept for (namespace, pod).
    #[cfg(test)]
    fn has(&self, namespace: &str, pod: &str) -> bool {
        let hash = crate::flow::pod_key(namespace, pod);
        self.slots
            .find(hash, |&slot| {
                let (ns, p, _) = &self.windows[slot].0;
                **ns == *namespace && **p == *pod
            })
            .is_some()
    }
}

/// One `scan` rule's detector.
#[derive(Debug)]
pub struct Scan {
    pub rule: Arc<Rule>,
    params: ScanParams,
    /// The window and the slice flows are counted by, in nanoseconds.
    window_ns: i64,
    slice_ns: i64,
    sources: Sources,
    watched: SelectorMemo,
}

impl Scan {
    pub fn new(rule: Arc<Rule>) -> Option<Scan> {
        let Kind::Scan(params) = &rule.kind else {
            return None;
        };
        let params = params.clone();
        let window_ns = span_ns(params.window);
        Some(Scan {
            window_ns,
            slice_ns: (window_ns / SLICES).max(1),
            rule,
            params,
            sources: Sources::default(),
            watched: SelectorMemo::default(),
        })
    }

    fn over(params: &ScanParams, w: &Window) -> bool {
        w.destinations.len() >= params.destinations || w.ports.len() >= params.ports
    }

    /// Counts `flow`; a hit when its pod is over a threshold.
    pub fn check(&mut self, flow: &FlowEvent) -> Option<Hit> {
        let src = &flow.source;
        if src.pod.is_empty()
            || flow.direction == TrafficDirection::Ingress
            || flow.is_reply == Some(true)
            || !self.rule.namespaces.matches_endpoint(
                &mut self.watched,
                &src.namespace,
                &src.labels,
            )
        {
            return None;
        }
        let window_ns = self.window_ns;
        let w = self.sources.window(src);
        let d = flow.destination_key(Granularity::Exact);
        let p = port_key(d, flow.destination.port, flow.protocol);
        w.last_ns = w.last_ns.max(flow.time_ns);
        let cutoff = w.last_ns.saturating_sub(window_ns);
        let name = || DestinationRef::of(flow, Granularity::Exact).to_string();
        w.count((flow.time_ns, d, p), name, self.slice_ns, cutoff);
        if !Self::over(&self.params, w) {
            return None;
        }
        // Perhaps over: only what the window holds counts.
        w.forget_before(cutoff);
        if !Self::over(&self.params, w) {
            return None;
        }
        let (flows, first) = w.flows();
        let earlier = Earlier {
            flows: flows.saturating_sub(1),
            since_ns: first.unwrap_or(flow.time_ns),
        };
        let mut hit = self.describe(&src.namespace);
        hit.earlier = Some(earlier);
        Some(hit)
    }

    /// The annotations for every pod of `namespace` over the thresholds.
    fn describe(&self, namespace: &str) -> Hit {
        let p = &self.params;
        let mut pods: Vec<(&str, &Window, (usize, usize))> = self
            .sources
            .windows
            .iter()
            .filter(|((ns, _, _), _)| &**ns == namespace)
            .map(|((_, pod, _), w)| (&**pod, w, w.live(self.window_ns)))
            .filter(|(_, _, (d, ports))| *d >= p.destinations || *ports >= p.ports)
            .collect();
        pods.sort_by(|a, b| b.2.0.cmp(&a.2.0).then(a.0.cmp(b.0)));
        let window = format!("{:?}", self.params.window);
        let lines: Vec<String> = pods
            .iter()
            .map(|(pod, _, (destinations, ports))| {
                format!("{namespace}/{pod}: {destinations} destinations, {ports} destination ports")
            })
            .collect();
        let mut sample: Vec<&str> = pods
            .first()
            .map(|(_, w, _)| {
                let cutoff = w.last_ns.saturating_sub(self.window_ns);
                w.destinations
                    .values()
                    .filter(|(seen, _)| *seen >= cutoff)
                    .map(|(_, label)| label.as_str())
                    .collect()
            })
            .unwrap_or_default();
        sample.sort_unstable();
        sample.truncate(SAMPLE);
        let mut extra = BTreeMap::new();
        extra.insert("scanners".into(), lines.join("; "));
        extra.insert("sample_destinations".into(), sample.join(", "));
        extra.insert("window".into(), window.clone());
        extra.insert(
            "summary".into(),
            format!(
                "{namespace}: {} pod(s) reaching unusually many destinations or ports in {window}",
                pods.len()
            ),
        );
        extra.insert(
            "description".into(),
            format!(
                "{}. Expected: fewer than {} distinct destinations and {} distinct destination ports per pod per {window}, allowed or denied. Scanning or lateral movement from a compromised pod looks like this. Destinations include: {}.",
                lines.join("; "),
                self.params.destinations,
                self.params.ports,
                sample.join(", ")
            ),
        );
        Hit {
            namespace: namespace.to_owned(),
            destination: Destination::All,
            extra,
            earlier: None,
        }
    }
}

flow_detector!(Scan);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testing::{default_rule, flow_event as event};
    use crate::flow::wire::Decoder;
    use crate::sim::traffic::TrainingCluster;

    fn detector() -> Scan {
        Scan::new(default_rule("TrainingPodScanning")).unwrap()
    }

    #[test]
    fn a_training_job_at_work_is_not_a_scan() {
        let mut d = detector();
        let mut decoder = Decoder::default();
        let mut cluster = TrainingCluster::new(3, 1_764_115_200_000_000_000, 1_000_000);
        for _ in 0..20_000 {
            let f = event(&mut decoder, cluster.next_flow());
            assert_eq!(d.check(&f), None, "{f:?}");
        }
    }

    #[test]
    fn a_host_sweep_and_a_port_sweep_are_scans() {
        let mut decoder = Decoder::default();
        let mut cluster = TrainingCluster::new(4, 1_764_115_200_000_000_000, 1_000_000);
        let template = cluster.exfiltration_attempt()[1].clone();
        // Sweep 30 hosts of one subnet on 22.
        let mut d = detector();
        let mut hit = None;
        for host in 1..=30 {
            let mut f = template.clone();
            f.destination = None;
            f.ip.as_mut().unwrap().destination = format!("10.0.9.{host}");
            if let Some(h) = d.check(&event(&mut decoder, f)) {
                hit = Some((host, h));
                break;
            }
        }
        let (after, hit) = hit.expect("a host sweep is a scan");
        assert_eq!(after, 20);
        assert_eq!(hit.namespace, "ai-training");
        // The 19 flows before it are the alert's evidence too, from the first one's time.
        let earlier = hit.earlier.unwrap();
        assert_eq!(earlier.flows, 19);
        assert!(
            hit.extra["scanners"].starts_with("ai-training/llm-pretrain-worker-2:"),
            "{:?}",
            hit.extra
        );
        assert!(
            hit.extra["scanners"].contains("20 destinations"),
            "{:?}",
            hit.extra
        );
        // Sweep 60 ports of one database.
        let mut d = detector();
        let mut fired = false;
        for port in 1..=60u32 {
            let mut f = template.clone();
            if let Some(crate::proto::flow::layer4::Protocol::Tcp(tcp)) =
                f.l4.as_mut().and_then(|l| l.protocol.as_mut())
            {
                tcp.destination_port = port;
            }
            fired |= d.check(&event(&mut decoder, f)).is_some();
        }
        assert!(fired, "a port sweep is a scan");
    }

    #[test]
    fn beyond_max_sources_the_quietest_pod_is_forgotten() {
        let mut s = Sources::default();
        let ns: Sym = Arc::from("ai-training");
        let endpoint = |ns: &Sym, pod: &str| crate::flow::Endpoint {
            namespace: ns.clone(),
            pod: Arc::from(pod),
            ..Default::default()
        };
        let pods: Vec<_> = (0..=MAX_SOURCES)
            .map(|i| endpoint(&ns, &format!("worker-{i}")))
            .collect();
        let last_ns = |i: usize| if i == 7 { 5 } else { 100 + i as i64 };
        for (i, pod) in pods[..MAX_SOURCES].iter().enumerate() {
            s.window(pod).last_ns = last_ns(i);
        }
        s.window(&pods[MAX_SOURCES]).last_ns = last_ns(MAX_SOURCES);
        assert_eq!(s.windows.len(), MAX_SOURCES);
        assert_eq!(s.slots.len(), MAX_SOURCES);
        assert!(!s.has(&ns, &pods[7].pod));
        // Every other pod keeps its window, found by equal names in other allocations too.
        for (i, pod) in pods.iter().enumerate().filter(|(i, _)| *i != 7) {
            let copy = endpoint(&Arc::from(&*ns), &pod.pod);
            assert_eq!(s.window(&copy).last_ns, last_ns(i), "{}", pod.pod);
            assert_eq!(s.window(pod).last_ns, last_ns(i), "{}", pod.pod);
        }
        // The forgotten pod starts afresh, in the slot of the now quietest.
        assert_eq!(s.window(&pods[7]).last_ns, 0);
        assert!(!s.has(&ns, &pods[0].pod));
    }

    #[test]
    fn a_chatty_pod_keeps_its_whole_window_and_old_flows_are_not_evidence() {
        let mut d = detector();
        let mut decoder = Decoder::default();
        let mut cluster = TrainingCluster::new(6, 0, 1);
        let template = cluster.exfiltration_attempt()[1].clone();
        let at = |mut f: crate::proto::flow::Flow, ms: i64| {
            f.time = Some(prost_types::Timestamp {
                seconds: ms / 1000,
                nanos: (ms % 1000) as i32 * 1_000_000,
            });
            f
        };
        // Flows from two minutes before are outside the window.
        for i in 0..10 {
            let f = at(template.clone(), i);
            assert_eq!(d.check(&event(&mut decoder, f)), None);
        }
        // 19 hosts over 38 seconds (the 20th destination is the one the chatter goes to),
        // 3,000 flows before each: 57,000 flows in the window, which the pod's state does not
        // keep one by one, so none of the sweep is forgotten.
        let mut hit = None;
        for host in 1..=19i64 {
            for i in 0..3_000 {
                let f = at(template.clone(), 120_000 + host * 2_000 + i / 3);
                assert_eq!(d.check(&event(&mut decoder, f)), None, "host {host}");
            }
            let mut f = at(template.clone(), 120_000 + host * 2_000 + 1_500);
            f.destination = None;
            f.ip.as_mut().unwrap().destination = format!("10.0.9.{host}");
            hit = d.check(&event(&mut decoder, f));
            assert_eq!(hit.is_some(), host == 19, "host {host}");
        }
        let earlier = hit.unwrap().earlier.unwrap();
        assert_eq!(earlier.flows, 19 * 3_000 + 18);
        assert_eq!(earlier.since_ns, 122_000_000_000);
    }

    #[test]
    fn the_window_forgets_old_destinations() {
        let mut d = detector();
        let mut decoder = Decoder::default();
        let template = TrainingCluster::new(5, 0, 1).exfiltration_attempt()[1].clone();
        // 15 hosts a minute apart never make 20 within one minute.
        for host in 1..=40 {
            let mut f = template.clone();
            f.destination = None;
            f.ip.as_mut().unwrap().destination = format!("10.0.9.{host}");
            f.time = Some(prost_types::Timestamp {
                seconds: host * 10,
                nanos: 0,
            });
            assert_eq!(d.check(&event(&mut decoder, f)), None, "host {host}");
        }
    }
}

//! Alert floods: past `max_firing` alerts firing for one rule in one namespace, every further
//! destination folds into one roll-up alert, `ExfilwatchAlertFlood`, instead of an alert of
//! its own.
//!
//! A watched pod chooses its destinations: fifteen thousand denied connections to names of
//! its own would otherwise be fifteen thousand alerts, posted one by one, burying the one
//! attempt that matters and delaying every alert behind them. The roll-up is evidence in its
//! own right (a decoy flood is an attack signal): it counts the destinations folded into it,
//! names the top destinations and pods by flows, and its link selects every flow of the rule
//! in the namespace since the flood began, the real attempt among them.
//!
//! What a roll-up holds is bounded: the distinct destinations it has counted are remembered
//! by a 64-bit digest up to [`MAX_DISTINCT`] (past it, new ones are counted as they come),
//! and the top lists keep [`TOP`] entries (the Space-Saving sketch: an entry that arrives when
//! the list is full takes the place of the smallest, inheriting its count as an upper bound).

use std::collections::{BTreeMap, HashSet};
use std::hash::BuildHasher as _;
use std::sync::Mutex;

use crate::common::clock::format_time;
use crate::common::hash::process_seed;
use crate::rules::{Kind, Rule};

/// The roll-up alert's name.
pub const ALERTNAME: &str = "ExfilwatchAlertFlood";
/// Distinct destinations a roll-up tells apart.
const MAX_DISTINCT: usize = 100_000;
/// Entries of each top list.
const TOP: usize = 16;
/// Entries named in the annotations.
const NAMED: usize = 5;

/// Alerts folded into roll-ups since the start, by (rule, namespace), for `/metrics`.
#[derive(Debug, Default)]
pub struct Folded(Mutex<BTreeMap<(String, String), u64>>);

impl Folded {
    fn add(&self, rule: &str, namespace: &str) {
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // A few (rule, namespace) pairs at most: found without building a key.
        match counts
            .iter_mut()
            .find(|((r, n), _)| r == rule && n == namespace)
        {
            Some((_, count)) => *count += 1,
            None => {
                counts.insert((rule.to_owned(), namespace.to_owned()), 1);
            }
        }
    }

    /// (rule, namespace, alerts folded).
    pub fn counts(&self) -> Vec<(String, String, u64)> {
        let counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        counts
            .iter()
            .map(|((r, n), c)| (r.clone(), n.clone(), *c))
            .collect()
    }
}

/// The heaviest names of a stream, approximately (Space-Saving): (name, count, error), the
/// count an upper bound and `count - error` a lower one.
#[derive(Debug, Default, Clone)]
struct Top(Vec<(Box<str>, u64, u64)>);

impl Top {
    fn add(&mut self, name: &str) {
        if let Some(entry) = self.0.iter_mut().find(|(n, ..)| &**n == name) {
            entry.1 += 1;
        } else if self.0.len() < TOP {
            self.0.push((name.into(), 1, 0));
        } else if let Some(smallest) = self.0.iter_mut().min_by_key(|(_, c, _)| *c) {
            *smallest = (name.into(), smallest.1 + 1, smallest.1);
        }
    }

    /// The first `NAMED` as "name (n flows), ..." ("up to n" where the count is a bound).
    fn named(&self) -> String {
        let mut sorted: Vec<&(Box<str>, u64, u64)> = self.0.iter().collect();
        sorted.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        sorted
            .iter()
            .take(NAMED)
            .map(|(n, c, e)| {
                if *e == 0 {
                    format!("{n} ({c} flows)")
                } else {
                    format!("{n} (up to {c} flows)")
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What a roll-up alert counts beside its flow context.
#[derive(Debug, Default)]
pub struct Rollup {
    /// Distinct destinations folded in.
    pub folded: u64,
    seen: HashSet<u64>,
    destinations: Top,
    pods: Top,
    /// Alerts of the rule firing in the namespace when the flood was rolled up.
    pub bound: usize,
    /// When the first alert of the flood started: the evidence query starts there.
    pub since_ns: i64,
}

impl Rollup {
    pub fn new(bound: usize, since_ns: i64) -> Rollup {
        Rollup {
            bound,
            since_ns,
            ..Rollup::default()
        }
    }

    /// A roll-up resumed from its saved figures (the top lists start again).
    pub fn resumed(extra: &BTreeMap<String, String>, since_ns: i64) -> Rollup {
        let number = |k: &str| extra.get(k).and_then(|v| v.parse::<u64>().ok());
        Rollup {
            folded: number("folded").unwrap_or(0),
            bound: number("bound").unwrap_or(0) as usize,
            since_ns,
            ..Rollup::default()
        }
    }

    /// One more flow to `destination` from `pod`; whether `destination` is new to it (then
    /// `folded` counts it, and `counter` too).
    pub fn add(&mut self, destination: &str, pod: &str, rule: &str, ns: &str, counter: &Folded) {
        self.destinations.add(destination);
        if !pod.is_empty() {
            self.pods.add(pod);
        }
        let digest = process_seed().hash_one(destination);
        let new = if self.seen.len() < MAX_DISTINCT {
            self.seen.insert(digest)
        } else {
            !self.seen.contains(&digest)
        };
        if new {
            self.folded += 1;
            counter.add(rule, ns);
        }
    }

    /// The roll-up's annotations: summary, description, its figures and its runbook.
    pub fn extra(
        &self,
        rule: &Rule,
        namespace: &str,
        span: (i64, i64),
        runbook: Option<String>,
    ) -> BTreeMap<String, String> {
        let noun = match &rule.kind {
            Kind::PolicyDenied(_) => "denied destinations",
            Kind::Segmentation(_) => "forbidden destinations",
            Kind::NewDestination(_) => "new destinations",
            _ => "destinations",
        };
        let total = self.folded + self.bound as u64;
        let minutes = ((span.1 - span.0).max(0) / 60_000_000_000).max(1);
        let mut extra = BTreeMap::from([
            (
                "summary".to_owned(),
                format!(
                    "{namespace}: {total} {noun} in {minutes} min ({rule} flood)",
                    rule = rule.name
                ),
            ),
            (
                "description".to_owned(),
                format!(
                    "{bound} alerts of {rule} were firing in {namespace} when more destinations came: the {folded} after them are counted in this alert instead of alerted one by one. A flood of distinct destinations is how an attacker hides the attempt that matters among decoys: treat it as an attack. Every flow of the rule in {namespace} since {since} is behind this alert's link, the real attempt among them. Top destinations: {dest}. Top pods: {pods}.",
                    bound = self.bound,
                    rule = rule.name,
                    folded = self.folded,
                    since = format_time(self.since_ns),
                    dest = self.destinations.named(),
                    pods = self.pods.named(),
                ),
            ),
            ("folded".to_owned(), self.folded.to_string()),
            ("bound".to_owned(), self.bound.to_string()),
            ("top_destinations".to_owned(), self.destinations.named()),
            ("top_pods".to_owned(), self.pods.named()),
        ]);
        if let Some(link) = runbook {
            extra.insert("runbook_url".into(), link);
        }
        extra
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_top_list_keeps_the_heavy_names_within_its_room() {
        let mut top = Top::default();
        for i in 0..1_000 {
            top.add(&format!("decoy-{i}"));
            if i % 10 == 0 {
                top.add("real.example");
                top.add("real.example");
            }
        }
        assert_eq!(top.0.len(), TOP);
        assert!(top.named().starts_with("real.example ("), "{}", top.named());
        let real = top.0.iter().find(|(n, ..)| &**n == "real.example").unwrap();
        assert!(real.1 - real.2 <= 200 && 200 <= real.1, "{real:?}");
    }

    #[test]
    fn destinations_are_counted_once_and_every_fold_is_counted_by_rule() {
        let counter = Folded::default();
        let mut rollup = Rollup::new(100, 1);
        for d in ["a", "b", "a", "c"] {
            rollup.add(d, "ns/pod", "R", "ns", &counter);
        }
        assert_eq!(rollup.folded, 3);
        assert_eq!(counter.counts(), [("R".into(), "ns".into(), 3)]);
        let resumed = Rollup::resumed(
            &BTreeMap::from([
                ("folded".to_owned(), "3".to_owned()),
                ("bound".to_owned(), "100".to_owned()),
            ]),
            1,
        );
        assert_eq!((resumed.folded, resumed.bound), (3, 100));
    }
}

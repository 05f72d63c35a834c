//! The alert lifecycle.
//!
//! A detector hit for (rule, namespace, destination) either starts an alert or updates the
//! one already firing: repeats raise its count and widen its context, never start another.
//! The manager re-renders and re-queues an updated alert at most every `update_interval`,
//! re-sends every firing alert at least every `resend_interval` with `endsAt` ahead (so
//! Alertmanager keeps it), and resolves it once no flow matched for the rule's
//! `resolve_after`. Every state change is committed to the store's outbox before the sinks are
//! woken to send it. Firing alerts saved by an earlier run are resumed at start-up.
//!
//! Alerts are bounded: past `max_firing` alerts of one rule in one namespace, further
//! destinations fold into one roll-up alert ([`super::rollup`]). Resolved alerts are pruned
//! from the store once they are older than `retention`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::rollup::{self, Folded, Rollup};
use super::{Alert, FlowContext, Hit, Status, fingerprint};
use crate::common::clock::{format_time, now_ns, span_ns};
use crate::flow::FlowEvent;
use crate::flow::destination::Destination;
use crate::rules::Rule;
use crate::state::{StateError, Store};

/// How the manager paces updates and builds links.
#[derive(Debug, Clone)]
pub struct LifecycleConfig {
    /// A firing alert is re-sent at least this often.
    pub resend_interval: Duration,
    /// A firing alert whose context changed is re-sent at most this often.
    pub update_interval: Duration,
    /// Base URL of exfilwatch's REST API, for `generatorURL`.
    pub external_url: String,
    /// Delivery targets: every state change is queued for each.
    pub targets: Vec<String>,
    /// Alerts of one rule firing at once in one namespace; further destinations fold into a
    /// roll-up alert.
    pub max_firing: usize,
    /// Resolved alerts older than this are pruned from the store.
    pub retention: Duration,
    /// Counts the alerts folded into roll-ups.
    pub folded: Arc<Folded>,
}

/// How often resolved alerts past their retention are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// An alert's place in the table: (rule, namespace, destination, whether it is the rule's
/// roll-up in the namespace). The flag keeps a roll-up apart from any destination a watched
/// pod could name.
type Key = (String, String, String, bool);

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            resend_interval: Duration::from_secs(60),
            update_interval: Duration::from_secs(10),
            external_url: "http://127.0.0.1:8080".into(),
            targets: Vec::new(),
            max_firing: 100,
            retention: Duration::from_secs(90 * 24 * 3600),
            folded: Arc::default(),
        }
    }
}

struct Active {
    alert: Alert,
    rule: Arc<Rule>,
    last_hit: Instant,
    last_sent: Instant,
    dirty: bool,
    /// The last state change could not be committed: retry at the next tick.
    unsaved: bool,
    /// For a roll-up alert: what it counts.
    rollup: Option<Box<Rollup>>,
}

impl Active {
    /// An alert just seen and just sent (its annotations are in the store); `dirty` asks for
    /// a re-send at the next update.
    fn new(mut alert: Alert, rule: Arc<Rule>, now: Instant, dirty: bool) -> Box<Active> {
        alert.annotations.clear();
        Box::new(Active {
            alert,
            rule,
            last_hit: now,
            last_sent: now,
            dirty,
            unsaved: false,
            rollup: None,
        })
    }
}

/// Alerts firing now, keyed by (rule, namespace, destination).
pub struct Manager {
    config: LifecycleConfig,
    store: Store,
    wake: Arc<Notify>,
    /// Boxed: the table then moves 80 bytes an alert when it grows, not the whole alert.
    active: HashMap<Key, Box<Active>>,
    /// Alerts firing by (rule, namespace), roll-ups not counted.
    groups: HashMap<(String, String), usize>,
    rules: HashMap<String, Arc<Rule>>,
    last_prune: Option<Instant>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("active", &self.active.len())
            .finish()
    }
}

impl Manager {
    /// A manager over `rules`, resuming the firing alerts in `store`.
    pub fn new(
        config: LifecycleConfig,
        store: Store,
        wake: Arc<Notify>,
        rules: &[Arc<Rule>],
    ) -> Result<Manager, StateError> {
        let rules: HashMap<String, Arc<Rule>> =
            rules.iter().map(|r| (r.name.clone(), r.clone())).collect();
        let now = Instant::now();
        let mut manager = Manager {
            config,
            store,
            wake,
            active: HashMap::new(),
            groups: HashMap::new(),
            rules,
            last_prune: None,
        };
        for alert in super::saved_firing(&manager.store)? {
            let Some(rule) = manager.rules.get(&alert.rule).cloned() else {
                continue;
            };
            let is_rollup =
                alert.labels.get("alertname").map(String::as_str) == Some(rollup::ALERTNAME);
            let key = (
                alert.rule.clone(),
                alert.labels.get("namespace").cloned().unwrap_or_default(),
                if is_rollup {
                    String::new()
                } else {
                    alert.labels.get("destination").cloned().unwrap_or_default()
                },
                is_rollup,
            );
            let counted = is_rollup.then(|| {
                Box::new(Rollup::resumed(
                    &alert.context.extra,
                    alert.context.first_seen_ns,
                ))
            });
            // A resumed alert counts as just seen: its quiet period starts again.
            let mut active = Active::new(alert, rule, now, true);
            active.rollup = counted;
            manager.insert(key, active);
        }
        if !manager.active.is_empty() {
            tracing::info!(
                alerts = manager.active.len(),
                "alerts: resumed firing alerts from the state store"
            );
        }
        Ok(manager)
    }

    /// Puts `active` in the table under `key`, counting it in its group.
    fn insert(&mut self, key: Key, active: Box<Active>) {
        if !key.3 {
            *self
                .groups
                .entry((key.0.clone(), key.1.clone()))
                .or_default() += 1;
        }
        self.active.insert(key, active);
    }

    /// Takes the alert under `key` out of the table and its group.
    fn remove(&mut self, key: &Key) -> Option<Box<Active>> {
        let active = self.active.remove(key)?;
        if !key.3
            && let Some(n) = self.groups.get_mut(&(key.0.clone(), key.1.clone()))
        {
            *n -= 1;
            if *n == 0 {
                self.groups.remove(&(key.0.clone(), key.1.clone()));
            }
        }
        Some(active)
    }

    /// Alerts firing now, with their annotations as last sent (rendered from their context:
    /// the store holds the sent copy, memory only the context).
    pub fn firing(&self) -> impl Iterator<Item = Alert> + '_ {
        self.active.values().map(|a| {
            let mut alert = a.alert.clone();
            if let Some(extra) = rollup_extra(a, &self.config) {
                alert.context.extra = extra;
            }
            alert.annotations = render(&alert, &a.rule, &self.config);
            alert
        })
    }

    /// The rule called `name`.
    pub fn rule(&self, name: &str) -> Option<&Arc<Rule>> {
        self.rules.get(name)
    }

    /// Puts `rules` in force, as a reload does. Alerts of unchanged rules keep firing as they
    /// are; those of changed rules keep their count and context and are re-rendered (and
    /// re-sent at the next update) under the new rule; those of rules removed or disabled
    /// resolve now. Alerts of built-in rules are left alone.
    pub fn set_rules(&mut self, rules: &[Arc<Rule>]) -> Result<(), StateError> {
        let old = std::mem::replace(
            &mut self.rules,
            rules.iter().map(|r| (r.name.clone(), r.clone())).collect(),
        );
        let mut gone = Vec::new();
        for (key, active) in &mut self.active {
            if !old.contains_key(&key.0) {
                continue;
            }
            match self.rules.get(&key.0) {
                Some(rule) if rule.enabled => {
                    if !rule.same_as(&active.rule) {
                        active.rule = rule.clone();
                        active.dirty = true;
                    }
                }
                _ => gone.push(key.clone()),
            }
        }
        let mut pass = Pass::default();
        for key in gone {
            if let Some(active) = self.remove(&key) {
                pass.note(self.resolve(key, active));
            }
        }
        pass.end(&self.wake)
    }

    /// `flow` matched `rule` as `hit` says: it joins the alert for (namespace, destination),
    /// starting it if none fires. The detector's own figures replace the alert's previous ones.
    pub fn hit(
        &mut self,
        rule: &Arc<Rule>,
        hit: Hit,
        flow: &FlowEvent,
        samples: usize,
        now: Instant,
    ) -> Result<(), StateError> {
        let Hit {
            namespace,
            destination,
            extra,
            earlier,
        } = hit;
        let key = (rule.name.clone(), namespace, destination.to_string(), false);
        if let Some(active) = self.active.get_mut(&key) {
            let context = &mut active.alert.context;
            context.add(flow, samples);
            if !extra.is_empty() {
                context.extra = extra;
            }
            active.last_hit = now;
            active.dirty = true;
            return Ok(());
        }
        let group = (key.0.clone(), key.1.clone());
        if self.groups.get(&group).copied().unwrap_or(0) >= self.config.max_firing {
            return self.fold(rule, key, flow, samples, now);
        }
        let (namespace, destination) = (key.1.as_str(), &destination);
        let mut context = FlowContext {
            extra,
            ..FlowContext::default()
        };
        context.add(flow, samples);
        if let Some(earlier) = earlier {
            context.count += earlier.flows;
            context.first_seen_ns = context.first_seen_ns.min(earlier.since_ns);
        }
        let alert = self.start(rule, namespace, destination, context, false);
        tracing::warn!(
            alert = %alert.labels["alertname"],
            namespace,
            destination = %destination,
            fingerprint = %alert.fingerprint,
            "alert firing: {}",
            alert.annotations.get("summary").map_or("", String::as_str)
        );
        self.open(key, alert, rule, now, None)
    }

    /// `flow`, to a destination past the rule's bound in its namespace, joins the roll-up
    /// alert, starting it if none fires.
    fn fold(
        &mut self,
        rule: &Arc<Rule>,
        key: Key,
        flow: &FlowEvent,
        samples: usize,
        now: Instant,
    ) -> Result<(), StateError> {
        let pod = if flow.source.pod.is_empty() {
            String::new()
        } else {
            format!("{}/{}", flow.source.namespace, flow.source.pod)
        };
        let (rule_name, namespace, destination, _) = key;
        let key = (rule_name, namespace, String::new(), true);
        if let Some(active) = self.active.get_mut(&key) {
            active.alert.context.add(flow, samples);
            if let Some(r) = &mut active.rollup {
                r.add(&destination, &pod, &key.0, &key.1, &self.config.folded);
            }
            active.last_hit = now;
            active.dirty = true;
            return Ok(());
        }
        // The evidence reaches back to the first alert of the flood.
        let since_ns = self
            .active
            .iter()
            .filter(|(k, _)| !k.3 && k.0 == key.0 && k.1 == key.1)
            .map(|(_, a)| a.alert.context.first_seen_ns)
            .filter(|t| *t > 0)
            .min()
            .unwrap_or(flow.time_ns);
        let mut counted = Box::new(Rollup::new(self.config.max_firing, since_ns));
        counted.add(&destination, &pod, &key.0, &key.1, &self.config.folded);
        let mut context = FlowContext::default();
        context.add(flow, samples);
        context.first_seen_ns = since_ns.min(context.first_seen_ns);
        context.extra = counted.extra(
            rule,
            &key.1,
            (context.first_seen_ns, context.last_seen_ns),
            crate::rules::runbooks::link(&self.config.external_url, rollup::ALERTNAME),
        );
        let alert = self.start(rule, &key.1, &Destination::All, context, true);
        tracing::warn!(
            alert = rollup::ALERTNAME,
            rule = %rule.name,
            namespace = %key.1,
            fingerprint = %alert.fingerprint,
            "alert firing: {}",
            alert.annotations.get("summary").map_or("", String::as_str)
        );
        self.open(key, alert, rule, now, Some(counted))
    }

    /// Commits a new alert and puts it in the table (kept when the commit fails, to be
    /// committed at the next tick), waking the sinks once it is committed.
    fn open(
        &mut self,
        key: Key,
        alert: Alert,
        rule: &Arc<Rule>,
        now: Instant,
        rollup: Option<Box<Rollup>>,
    ) -> Result<(), StateError> {
        let saved = super::save(&self.store, &alert, &self.config.targets);
        let mut active = Active::new(alert, rule.clone(), now, false);
        active.unsaved = saved.is_err();
        active.rollup = rollup;
        self.insert(key, active);
        if saved.is_ok() {
            self.wake.notify_waiters();
        }
        saved
    }

    /// A new alert of `rule` for (namespace, destination), or the rule's roll-up in the
    /// namespace when `rollup`.
    fn start(
        &self,
        rule: &Rule,
        namespace: &str,
        destination: &Destination,
        context: FlowContext,
        rollup: bool,
    ) -> Alert {
        let query = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(evidence_query(rule, namespace, destination, &context))
            .finish();
        let destination = destination.to_string();
        let fixed = |f: &str| match f {
            "rule" => rule.name.clone(),
            "severity" => rule.severity.as_str().to_owned(),
            "namespace" => namespace.to_owned(),
            "destination" => destination.clone(),
            other => context.field(other),
        };
        let mut labels: BTreeMap<String, String> = rule
            .labels
            .iter()
            .map(|(k, t)| (k.clone(), t.render(fixed)))
            .collect();
        labels.insert("alertname".into(), rule.name.clone());
        labels.insert("severity".into(), rule.severity.as_str().into());
        if rollup {
            // A flood of decoys is an attack whatever the rule's own severity.
            labels.insert("alertname".into(), rollup::ALERTNAME.into());
            labels.insert("severity".into(), "critical".into());
        }
        labels.insert("namespace".into(), namespace.into());
        labels.insert("destination".into(), destination.clone());
        labels.insert("rule".into(), rule.name.clone());
        let now = now_ns();
        let fingerprint = fingerprint(&labels);
        let generator_url = format!(
            "{}/ui/alerts/{fingerprint}",
            self.config.external_url.trim_end_matches('/')
        );
        let mut alert = Alert {
            fingerprint,
            rule: rule.name.clone(),
            labels,
            annotations: BTreeMap::new(),
            context,
            status: Status::Firing,
            starts_at_ns: now,
            ends_at_ns: now,
            generator_url,
            query,
        };
        refresh(&mut alert, rule, &self.config);
        alert
    }

    /// Raises (or keeps raising) an alert whose annotations a detector computed itself:
    /// `extra` holds at least `summary` and `description`. Called on every evaluation while
    /// the condition holds; a changed `extra` is re-sent like a changed count.
    pub fn raise(
        &mut self,
        rule: &Arc<Rule>,
        namespace: &str,
        destination: &Destination,
        extra: BTreeMap<String, String>,
        now: Instant,
    ) -> Result<(), StateError> {
        let key = (
            rule.name.clone(),
            namespace.to_owned(),
            destination.to_string(),
            false,
        );
        if let Some(active) = self.active.get_mut(&key) {
            active.last_hit = now;
            active.alert.context.last_seen_ns = now_ns();
            if active.alert.context.extra != extra {
                active.alert.context.extra = extra;
                active.dirty = true;
            }
            return Ok(());
        }
        // No flow is behind it: the condition's own time span is.
        let seen = now_ns();
        let context = FlowContext {
            extra,
            first_seen_ns: seen.saturating_sub(span_ns(rule.kind.spec().lookback())),
            last_seen_ns: seen,
            ..FlowContext::default()
        };
        let alert = self.start(rule, namespace, destination, context, false);
        tracing::warn!(alert = %rule.name, namespace, destination = %destination, "alert firing: {}", alert.annotations.get("summary").map_or("", String::as_str));
        self.open(key, alert, rule, now, None)
    }

    /// Resolves the alert for (rule, namespace, destination) now, if it is firing.
    pub fn clear(
        &mut self,
        rule: &str,
        namespace: &str,
        destination: &Destination,
    ) -> Result<(), StateError> {
        let key = (
            rule.to_owned(),
            namespace.to_owned(),
            destination.to_string(),
            false,
        );
        let Some(active) = self.remove(&key) else {
            return Ok(());
        };
        let result = self.resolve(key, active);
        self.wake.notify_waiters();
        result
    }

    /// Commits the resolution of an alert taken out of `active`; on failure puts it back, to
    /// be resolved again at the next tick.
    fn resolve(&mut self, key: Key, mut active: Box<Active>) -> Result<(), StateError> {
        sync_rollup(&mut active, &self.config);
        let mut alert = active.alert.clone();
        alert.status = Status::Resolved;
        alert.ends_at_ns = now_ns();
        alert.annotations = render(&alert, &active.rule, &self.config);
        match super::save(&self.store, &alert, &self.config.targets) {
            Ok(()) => {
                tracing::info!(alert = %key.0, namespace = %key.1, destination = %key.2, count = alert.context.count, "alert resolved");
                Ok(())
            }
            Err(e) => {
                active.unsaved = true;
                // Due for resolution again at the next tick.
                active.last_hit = active
                    .last_hit
                    .checked_sub(active.rule.resolve_after)
                    .unwrap_or(active.last_hit);
                self.insert(key, active);
                Err(e)
            }
        }
    }

    /// Commits every firing alert whose context changed since it was last sent, without
    /// waiting for `update_interval`: at the end of a replay or a run, so what is stored and
    /// delivered is the grown context.
    pub fn flush(&mut self, now: Instant) -> Result<(), StateError> {
        let mut pass = Pass::default();
        for active in self.active.values_mut().filter(|a| a.dirty || a.unsaved) {
            pass.note(resend(active, &self.store, &self.config, now));
        }
        pass.end(&self.wake)
    }

    /// Resolves quiet alerts and re-sends due ones. A change the store cannot commit stays
    /// pending and is tried again at the next tick; the first such error is returned.
    pub fn tick(&mut self, now: Instant) -> Result<(), StateError> {
        let mut pass = Pass::default();
        let mut quiet = Vec::new();
        for (key, active) in &mut self.active {
            if now.duration_since(active.last_hit) >= active.rule.resolve_after {
                quiet.push(key.clone());
                continue;
            }
            let since = now.duration_since(active.last_sent);
            let due = active.unsaved
                || (active.dirty && since >= self.config.update_interval)
                || since >= self.config.resend_interval;
            if due {
                pass.note(resend(active, &self.store, &self.config, now));
            }
        }
        for key in quiet {
            if let Some(active) = self.remove(&key) {
                pass.note(self.resolve(key, active));
            }
        }
        if self
            .last_prune
            .is_none_or(|t| now.duration_since(t) >= PRUNE_EVERY)
        {
            self.last_prune = Some(now);
            let before = now_ns().saturating_sub(span_ns(self.config.retention));
            match self.store.prune_resolved(before) {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    alerts = n,
                    "alerts: pruned alerts resolved longer ago than the retention"
                ),
                Err(e) => pass.fail(e),
            }
        }
        pass.end(&self.wake)
    }
}

/// What a pass over several alerts did: whether it committed a change, and the first error
/// (the other alerts are tried all the same).
#[derive(Default)]
struct Pass {
    changed: bool,
    first_error: Option<StateError>,
}

impl Pass {
    fn note(&mut self, committed: Result<(), StateError>) {
        match committed {
            Ok(()) => self.changed = true,
            Err(e) => self.fail(e),
        }
    }

    fn fail(&mut self, e: StateError) {
        self.first_error.get_or_insert(e);
    }

    /// Wakes the sinks when a change was committed; the first error.
    fn end(self, wake: &Notify) -> Result<(), StateError> {
        if self.changed {
            wake.notify_waiters();
        }
        self.first_error.map_or(Ok(()), Err)
    }
}

/// The flow query that returns the flows behind an alert of `rule` for (namespace,
/// destination): the kind's [`Evidence`] with the namespace, the first source pod and the
/// destination filled in, and `since` the first flow of the alert.
pub fn evidence_query(
    rule: &Rule,
    namespace: &str,
    destination: &Destination,
    context: &FlowContext,
) -> Vec<(&'static str, String)> {
    let evidence = rule.kind.spec().evidence();
    let mut query: Vec<(&'static str, String)> = Vec::new();
    if namespace != "*" && !namespace.is_empty() {
        query.push((evidence.side, namespace.to_owned()));
    }
    let pod = context
        .source_pods
        .iter()
        .next()
        .and_then(|p| p.split_once('/'));
    if let (Some(param), Some((_, pod))) = (evidence.pod, pod) {
        query.push((param, pod.to_owned()));
    }
    if let Some(v) = evidence.verdict {
        query.push(("verdict", v.to_owned()));
    }
    if evidence.destination {
        query.extend(
            destination
                .query()
                .into_iter()
                .map(|(k, v)| (k, v.to_owned())),
        );
    }
    let since = if context.first_seen_ns > 0 {
        context.first_seen_ns
    } else {
        now_ns()
    };
    query.push(("since", format_time(since)));
    query
}

/// Commits `active`'s current state (annotations re-rendered) for every target; on success it
/// counts as just sent.
fn resend(
    active: &mut Active,
    store: &Store,
    config: &LifecycleConfig,
    now: Instant,
) -> Result<(), StateError> {
    sync_rollup(active, config);
    // Renewed in place: a copy every minute of every firing alert would move long-lived
    // memory about for nothing.
    let alert = &mut active.alert;
    let ends_at_ns = alert.ends_at_ns;
    refresh(alert, &active.rule, config);
    let saved = super::save(store, alert, &config.targets);
    // The annotations repeat the context as text (about 4 KB an alert): the store keeps them.
    alert.annotations.clear();
    if saved.is_err() {
        // Not sent: it still ends when Alertmanager was last told.
        alert.ends_at_ns = ends_at_ns;
    }
    saved?;
    active.last_sent = now;
    active.dirty = false;
    active.unsaved = false;
    Ok(())
}

/// A roll-up's figures as annotations, as of now; `None` for any other alert.
fn rollup_extra(active: &Active, config: &LifecycleConfig) -> Option<BTreeMap<String, String>> {
    let counted = active.rollup.as_ref()?;
    let c = &active.alert.context;
    let namespace = active
        .alert
        .labels
        .get("namespace")
        .map_or("", String::as_str);
    Some(counted.extra(
        &active.rule,
        namespace,
        (c.first_seen_ns, c.last_seen_ns),
        crate::rules::runbooks::link(&config.external_url, rollup::ALERTNAME),
    ))
}

/// Brings a roll-up's figures in its context up to date.
fn sync_rollup(active: &mut Active, config: &LifecycleConfig) {
    if let Some(extra) = rollup_extra(active, config) {
        active.alert.context.extra = extra;
    }
}

/// Re-renders the annotations and pushes `endsAt` ahead of the next re-send.
fn refresh(alert: &mut Alert, rule: &Rule, config: &LifecycleConfig) {
    let ahead = (config.resend_interval * 4).max(Duration::from_secs(300));
    alert.ends_at_ns = now_ns().saturating_add(span_ns(ahead));
    alert.annotations = render(alert, rule, config);
}

/// The annotations, with the link to the alert's runbook served by exfilwatch when the rule
/// names none of its own.
fn render(alert: &Alert, rule: &Rule, config: &LifecycleConfig) -> BTreeMap<String, String> {
    let mut out = super::annotations::annotations(alert, rule);
    if !out.contains_key("runbook_url")
        && let Some(link) = crate::rules::runbooks::link(&config.external_url, &rule.name)
    {
        out.insert("runbook_url".into(), link);
    }
    out
}

#[cfg(test)]
mod tests;

//! The `dns_exfiltration` detector: data smuggled out in DNS names, from Hubble's L7 DNS
//! records.
//!
//! It decides on evidence, not on one name. Per (namespace, client pod, registered domain),
//! the registered domain found with the Public Suffix List (so `a.b.example.co.uk` is under
//! `example.co.uk` and `bucket.s3.amazonaws.com` is its own), it adds up over `window`:
//!
//! - the data the distinct names carry: each label left of the registered domain that looks
//!   encoded (bytes outside the hostname alphabet, DNS escapes such as `\200`, mixed case, or
//!   16+ characters of letters and digits with high entropy) counts for the bytes its
//!   alphabet can hold (hex 4 bits a character, base32 5, base64 6, escapes and raw bytes 8);
//! - the query-type mix: a share of TXT/NULL queries of at least `txt_share` doubles the
//!   evidence (the channel back);
//! - the NXDOMAIN share of the answers: at least `nxdomain_share` doubles it.
//!
//! A channel is `min_names` distinct names carrying `min_encoded_bytes`. Ordinary lookups repeat
//! a few names, and even CDN or telemetry names with 32-hex-character labels carry a few dozen
//! bytes per pod and domain; a tunnel carries kilobytes within a minute. The cluster's own
//! names (`allow`, `cluster.local` by default) are skipped. State is bounded in keys and in
//! records per key.

use std::collections::{BTreeMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;

use super::{Earlier, Hit};
use crate::common::clock::span_ns;
use crate::common::hash::KeyMap;
use crate::flow::FlowEvent;
use crate::flow::destination::Destination;
use crate::flow::intern::Sym;
use crate::rules::{DnsParams, Kind, Rule, SelectorMemo};

/// (namespace, pod, registered domain) keys followed at once.
const MAX_KEYS: usize = 10_000;
/// Records remembered per key within the window.
const MAX_EVENTS: usize = 20_000;
/// NXDOMAIN's response code.
const NXDOMAIN: u32 = 3;
/// Sample names kept per key.
const SAMPLES: usize = 5;

/// Shannon entropy of `text`, bits per character.
pub fn entropy(text: &str) -> f64 {
    let mut counts = [0u32; 256];
    let mut n = 0u32;
    for b in text.bytes() {
        counts[usize::from(b)] += 1;
        n += 1;
    }
    if n == 0 {
        return 0.0;
    }
    let n = f64::from(n);
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| f64::from(*c) / n)
        .map(|p| -p * p.log2())
        .sum()
}

/// The registered domain of `name` by the Public Suffix List; a name that is itself a public
/// suffix (or has no known one) is its own.
pub fn registered_domain(name: &str) -> &str {
    let name = name.trim_end_matches('.');
    psl::domain_str(name).unwrap_or(name)
}

/// Bytes of data a label of the query carries, estimated from its alphabet; 0 for a label
/// that reads like a host name. `min_entropy` is the entropy from which a 16+ character
/// label of letters and digits counts as encoded.
pub fn encoded_bytes(label: &str, min_entropy: f64) -> f64 {
    let n = label.len();
    if n == 0 {
        return 0.0;
    }
    // DNS presentation escapes (\DDD) and bytes outside ASCII are raw data: 8 bits each.
    let escapes = label.matches('\\').count();
    let raw = label.bytes().filter(|b| !b.is_ascii()).count();
    if escapes > 0 || raw > 0 {
        let rest = n.saturating_sub(escapes * 4 + raw);
        return (escapes + raw) as f64 + rest as f64 * 0.75;
    }
    let upper = label.bytes().any(|b| b.is_ascii_uppercase());
    let lower = label.bytes().any(|b| b.is_ascii_lowercase());
    let symbols = label.bytes().any(|b| b"+/=_".contains(&b));
    if (upper && lower && n >= 8) || symbols {
        // Case-sensitive base64 and its relatives: 6 bits a character.
        return n as f64 * 0.75;
    }
    let digits = label.bytes().any(|b| b.is_ascii_digit());
    let letters = label.bytes().any(|b| b.is_ascii_alphabetic());
    if n < 16 || !digits || !letters || entropy(label) < min_entropy {
        return 0.0;
    }
    if label.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        n as f64 * 0.5
    } else {
        n as f64 * 0.625
    }
}

/// One DNS record remembered in a key's window.
#[derive(Debug, Clone, Copy)]
struct Record {
    time_ns: i64,
    name: u64,
    /// Estimated bytes the name carries (counted once per distinct name).
    bytes: f64,
    txt: bool,
    answer: bool,
    nxdomain: bool,
    /// Index of the query type in `Window::types`.
    qtype: u8,
}

#[derive(Debug, Default)]
struct Window {
    records: VecDeque<Record>,
    /// Distinct names: how many records in the window carry each, and its bytes.
    names: KeyMap<(u32, f64)>,
    bytes: f64,
    queries: usize,
    txt: usize,
    answers: usize,
    nxdomain: usize,
    /// Query types seen (bounded) and queries per type in the window.
    types: Vec<(Sym, usize)>,
    samples: VecDeque<String>,
    last_ns: i64,
}

impl Window {
    fn add(&mut self, r: Record) {
        let entry = self.names.entry(r.name).or_insert((0, r.bytes));
        if entry.0 == 0 {
            self.bytes += r.bytes;
        }
        entry.0 += 1;
        if r.answer {
            self.answers += 1;
            self.nxdomain += usize::from(r.nxdomain);
        } else {
            self.queries += 1;
            self.txt += usize::from(r.txt);
            if let Some(t) = self.types.get_mut(usize::from(r.qtype)) {
                t.1 += 1;
            }
        }
        self.last_ns = self.last_ns.max(r.time_ns);
        self.records.push_back(r);
    }

    fn expire(&mut self, before_ns: i64) {
        while let Some(&r) = self.records.front() {
            if r.time_ns >= before_ns && self.records.len() <= MAX_EVENTS {
                break;
            }
            self.records.pop_front();
            if let Some(entry) = self.names.get_mut(&r.name) {
                entry.0 -= 1;
                if entry.0 == 0 {
                    self.bytes -= entry.1;
                    self.names.remove(&r.name);
                }
            }
            if r.answer {
                self.answers -= 1;
                self.nxdomain -= usize::from(r.nxdomain);
            } else {
                self.queries -= 1;
                self.txt -= usize::from(r.txt);
                if let Some(t) = self.types.get_mut(usize::from(r.qtype)) {
                    t.1 -= 1;
                }
            }
        }
        if self.records.is_empty() {
            self.bytes = 0.0;
        }
    }

    /// The query type's index, remembering at most 16 types.
    fn qtype(&mut self, name: Option<&Sym>) -> u8 {
        let Some(name) = name else {
            return u8::MAX;
        };
        if let Some(i) = self.types.iter().position(|(t, _)| t == name) {
            return i as u8;
        }
        if self.types.len() >= 16 {
            return u8::MAX;
        }
        self.types.push((name.clone(), 0));
        (self.types.len() - 1) as u8
    }
}

/// What a window shows: its weighted evidence in bytes, and the reasons.
struct Evidence {
    score: f64,
    reasons: Vec<String>,
}

/// The window of one (namespace, client pod, registered domain).
#[derive(Debug)]
struct Keyed {
    namespace: Sym,
    pod: Sym,
    domain: Box<str>,
    window: Window,
}

/// One `dns_exfiltration` rule's detector.
#[derive(Debug)]
pub struct DnsExfil {
    pub rule: Arc<Rule>,
    params: DnsParams,
    /// The window, in nanoseconds.
    window_ns: i64,
    /// Found by the hash of (namespace, pod, domain); a key's strings are copied only when
    /// its window is made.
    windows: HashTable<Keyed>,
    /// Tells names and keys apart; seeded at random per process, so a workload cannot choose
    /// names that collide and count as one.
    hasher: foldhash::fast::RandomState,
    /// The query name in lower case, reused from flow to flow.
    lower: String,
    watched: SelectorMemo,
}

impl DnsExfil {
    pub fn new(rule: Arc<Rule>) -> Option<DnsExfil> {
        let Kind::DnsExfiltration(params) = &rule.kind else {
            return None;
        };
        let params = params.clone();
        Some(DnsExfil {
            window_ns: span_ns(params.window),
            rule,
            params,
            windows: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
            lower: String::new(),
            watched: SelectorMemo::default(),
        })
    }

    /// Whether `name` is an allowed domain or under one; compared as bytes, since the name is
    /// the workload's text and need not split on a character boundary where a suffix starts.
    fn allowed(&self, name: &str) -> bool {
        let name = name.as_bytes();
        self.params.allow.iter().any(|a| {
            let a = a.as_bytes();
            name.len() >= a.len()
                && name[name.len() - a.len()..].eq_ignore_ascii_case(a)
                && (name.len() == a.len() || name[name.len() - a.len() - 1] == b'.')
        })
    }
}

/// What `w` shows under `p`.
fn evidence(p: &DnsParams, w: &Window, domain: &str) -> Evidence {
    let mut reasons = Vec::new();
    let mut score = w.bytes;
    if w.queries >= p.min_queries && w.txt as f64 >= p.txt_share * w.queries as f64 {
        score *= 2.0;
        reasons.push(format!(
            "{} of {} queries for TXT/NULL records",
            w.txt, w.queries
        ));
    }
    if w.answers >= p.min_queries && w.nxdomain as f64 >= p.nxdomain_share * w.answers as f64 {
        score *= 2.0;
        reasons.push(format!("{} of {} answers NXDOMAIN", w.nxdomain, w.answers));
    }
    reasons.insert(
        0,
        format!(
            "{} distinct names under {domain} carrying about {:.0} bytes of encoded data",
            w.names.len(),
            w.bytes
        ),
    );
    Evidence { score, reasons }
}

impl DnsExfil {
    /// Counts one flow's DNS record; a hit while its pod's names under a domain carry a
    /// channel's worth of data.
    pub fn check(&mut self, flow: &FlowEvent) -> Option<Hit> {
        let dns = flow.dns.as_deref()?;
        // The pod that asked: the source of a request, the destination of an answer.
        let client = if dns.response {
            &flow.destination
        } else {
            &flow.source
        };
        if client.pod.is_empty()
            || !self.rule.namespaces.matches_endpoint(
                &mut self.watched,
                &client.namespace,
                &client.labels,
            )
        {
            return None;
        }
        let name = dns.query.trim_end_matches('.');
        if name.is_empty() || self.allowed(name) {
            return None;
        }
        self.lower.clear();
        self.lower.push_str(name);
        self.lower.make_ascii_lowercase();
        let lower = &*self.lower;
        let domain = registered_domain(lower);
        // The labels left of the registered domain, in the query's own case.
        let head = &name[..name.len() - domain.len()].trim_end_matches('.');
        let bytes: f64 = if dns.response {
            0.0
        } else {
            head.split('.')
                .map(|l| encoded_bytes(l, self.params.label_entropy))
                .sum()
        };
        let hasher = &self.hasher;
        let key_hash = |k: &Keyed| hasher.hash_one((&*k.namespace, &*k.pod, &*k.domain));
        let hash = hasher.hash_one((&*client.namespace, &*client.pod, domain));
        let is_key = |k: &Keyed| {
            *k.namespace == *client.namespace && *k.pod == *client.pod && *k.domain == *domain
        };
        if self.windows.len() >= MAX_KEYS && self.windows.find(hash, is_key).is_none() {
            let quietest = self
                .windows
                .iter()
                .min_by_key(|k| k.window.last_ns)
                .map(|k| (key_hash(k), std::ptr::from_ref(k)));
            if let Some((h, quietest)) = quietest
                && let Ok(entry) = self.windows.find_entry(h, |k| std::ptr::eq(k, quietest))
            {
                entry.remove();
            }
        }
        let window_ns = self.window_ns;
        let name_key = hasher.hash_one(lower);
        let txt = dns.qtypes.iter().any(|q| &**q == "TXT" || &**q == "NULL");
        let w = &mut self
            .windows
            .entry(hash, is_key, key_hash)
            .or_insert_with(|| Keyed {
                namespace: client.namespace.clone(),
                pod: client.pod.clone(),
                domain: domain.into(),
                window: Window::default(),
            })
            .into_mut()
            .window;
        let qtype = w.qtype(dns.qtypes.first());
        w.add(Record {
            time_ns: flow.time_ns,
            name: name_key,
            bytes,
            txt,
            answer: dns.response,
            nxdomain: dns.response && dns.rcode == NXDOMAIN,
            qtype,
        });
        if bytes > 0.0 && !w.samples.iter().any(|s| s.eq_ignore_ascii_case(name)) {
            if w.samples.len() == SAMPLES {
                w.samples.pop_front();
            }
            w.samples.push_back(name.to_owned());
        }
        let cutoff = w.last_ns.saturating_sub(window_ns);
        w.expire(cutoff);
        let p = &self.params;
        if w.names.len() < p.min_names {
            return None;
        }
        let evidence = evidence(p, w, domain);
        if evidence.score < p.min_encoded_bytes as f64 {
            return None;
        }
        Some(hit(
            p,
            w,
            client.namespace.to_string(),
            domain,
            evidence,
            flow,
        ))
    }
}

/// The hit for a window that shows a channel.
fn hit(
    p: &DnsParams,
    w: &Window,
    namespace: String,
    domain: &str,
    evidence: Evidence,
    flow: &FlowEvent,
) -> Hit {
    let samples: Vec<&str> = w.samples.iter().map(String::as_str).collect();
    let types: Vec<String> = w
        .types
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(t, n)| format!("{t}: {n}"))
        .collect();
    let reasons = evidence.reasons.join("; ");
    let mut extra = BTreeMap::new();
    extra.insert("reasons".into(), reasons.clone());
    extra.insert("sample_queries".into(), samples.join(", "));
    extra.insert("distinct_names".into(), w.names.len().to_string());
    extra.insert("queries".into(), w.queries.to_string());
    extra.insert("query_types".into(), types.join(", "));
    extra.insert("encoded_bytes".into(), format!("{:.0}", w.bytes));
    extra.insert(
        "nxdomain".into(),
        format!("{} of {} answers", w.nxdomain, w.answers),
    );
    extra.insert(
        "summary".into(),
        format!("{namespace}: DNS names under {domain} carry data out"),
    );
    extra.insert(
            "description".into(),
            format!(
                "Within {:?}, a pod's DNS queries under {domain} carried data the way a tunnel does: {reasons}. Query types: {}. Sample names: {}. Ordinary lookups repeat a few names carrying little; a tunnel sends a new name per chunk of data.",
                p.window,
                types.join(", "),
                samples.join(", ")
            ),
        );
    Hit {
        namespace,
        destination: Destination::Fqdn(domain.to_owned()),
        extra,
        earlier: Some(Earlier {
            flows: w.records.len().saturating_sub(1) as u64,
            since_ns: w.records.front().map_or(flow.time_ns, |r| r.time_ns),
        }),
    }
}

flow_detector!(DnsExfil);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testing::default_rule;
    use crate::flow::Event;
    use crate::flow::json::JsonDecoder;

    fn detector() -> DnsExfil {
        DnsExfil::new(default_rule("TrainingPodDnsExfiltration")).unwrap()
    }

    /// A DNS request from `pod` at `ms` milliseconds.
    fn query(decoder: &mut JsonDecoder, pod: &str, name: &str, qtype: &str, ms: u64) -> FlowEvent {
        let line = format!(
            r#"{{"flow":{{"time":"2026-01-01T00:{:02}:{:02}.{:03}Z","verdict":"FORWARDED","Type":"L7","l7":{{"type":"REQUEST","dns":{{"query":"{name}.","qtypes":["{qtype}"]}}}},"source":{{"namespace":"ai-training","pod_name":"{pod}"}},"destination":{{"namespace":"kube-system","pod_name":"coredns-0"}},"traffic_direction":"EGRESS"}}}}"#,
            ms / 60_000,
            ms / 1000 % 60,
            ms % 1000
        );
        match decoder.decode_line(&line).unwrap() {
            Event::Flow(f) => f,
            other => panic!("{other:?}"),
        }
    }

    /// 60 hex characters of chunk `i`, as two labels.
    fn chunk(i: u64) -> String {
        let hex: String = (0..30)
            .map(|j| format!("{:02x}", (i * 131 + j * 17 + 7) % 251))
            .collect();
        format!("{}.{}", &hex[..30], &hex[30..])
    }

    /// True when `d` keeps a window for `pod` and `domain`.
    fn keeps(d: &DnsExfil, pod: &str, domain: &str) -> bool {
        d.windows
            .iter()
            .any(|k| &*k.namespace == "ai-training" && &*k.pod == pod && &*k.domain == domain)
    }

    #[test]
    fn beyond_max_keys_the_quietest_key_is_forgotten() {
        let mut d = detector();
        let mut decoder = JsonDecoder::default();
        for i in 0..MAX_KEYS as u64 {
            let q = query(&mut decoder, &format!("w-{i}"), "a.example.org", "A", i);
            assert_eq!(d.check(&q), None);
        }
        // w-0 asks again: its window is the newest, w-1's the quietest.
        d.check(&query(&mut decoder, "w-0", "b.example.org", "A", 20_000));
        assert_eq!(d.windows.len(), MAX_KEYS);
        d.check(&query(&mut decoder, "w-new", "a.example.org", "A", 20_001));
        assert_eq!(d.windows.len(), MAX_KEYS);
        assert!(!keeps(&d, "w-1", "example.org"));
        assert!(keeps(&d, "w-0", "example.org"));
        assert!(keeps(&d, "w-2", "example.org"));
        assert!(keeps(&d, "w-new", "example.org"));
        // Every pod kept is found again by its key: asking again makes no new window.
        for i in (0..MAX_KEYS as u64).filter(|i| *i != 1) {
            d.check(&query(
                &mut decoder,
                &format!("w-{i}"),
                "c.example.org",
                "A",
                30_000,
            ));
        }
        assert_eq!(d.windows.len(), MAX_KEYS);
        assert!(keeps(&d, "w-new", "example.org"));
    }

    #[test]
    fn ordinary_lookups_of_a_training_job_are_quiet() {
        let mut d = detector();
        let mut decoder = JsonDecoder::default();
        for i in 0..500 {
            for name in [
                "training-data.s3.us-east-1.amazonaws.com",
                "minio.storage.svc.cluster.local",
                "pypi.org",
                "47e224be59415ec068b94bca857581bd7dde7fb6.cws.conviva.com",
            ] {
                let q = query(&mut decoder, "w-1", name, "A", i * 100);
                assert_eq!(d.check(&q), None, "{name}");
            }
        }
    }

    #[test]
    fn one_encoded_name_is_not_a_channel_and_a_stream_of_them_is() {
        let mut decoder = JsonDecoder::default();
        let mut d = detector();
        let one = query(
            &mut decoder,
            "w-2",
            "00cd97a48b18a09252dd4eb8d4609d8e.example.org",
            "A",
            0,
        );
        assert_eq!(d.check(&one), None);
        // dnscat2-like: 60 hex characters (30 bytes) per query, A records, 2 a second.
        let mut fired = None;
        for i in 0..120 {
            let name = format!("{}.t.exfil.example.net", chunk(i));
            if let Some(h) = d.check(&query(&mut decoder, "w-2", &name, "A", 1_000 + i * 500)) {
                fired.get_or_insert((i, h));
            }
        }
        let (at, hit) = fired.expect("a channel");
        // 2048 bytes at 30 a name: the 69th name.
        assert_eq!(at, 68);
        assert_eq!(hit.destination.to_string(), "example.net");
        assert_eq!(hit.earlier.unwrap().flows, 68);
        assert!(
            hit.extra["reasons"].contains("69 distinct names under example.net"),
            "{:?}",
            hit.extra
        );
        assert_eq!(hit.extra["query_types"], "A: 69");
        // TXT queries are the channel back: the same data trips it at half the bytes.
        let mut d = detector();
        let mut fired = None;
        for i in 0..120 {
            let name = format!("{}.t.exfil.example.net", chunk(i));
            if d.check(&query(&mut decoder, "w-3", &name, "TXT", i * 500))
                .is_some()
            {
                fired.get_or_insert(i);
            }
        }
        assert_eq!(fired, Some(34));
    }

    #[test]
    fn names_of_any_text_are_weighed_without_panic() {
        let mut decoder = JsonDecoder::default();
        let mut d = detector();
        for (i, name) in [
            "é",
            "aé",
            "ééluster.local",
            "ü.cluster.local",
            "xn--bcher-kva.example",
            "日本語.例え.jp",
            ".",
            "a..b",
        ]
        .iter()
        .enumerate()
        {
            d.check(&query(&mut decoder, "w-1", name, "A", i as u64 * 100));
        }
        assert!(d.allowed("ü.cluster.local") && !d.allowed("aé"));
    }

    #[test]
    fn pods_and_registered_domains_are_weighed_apart() {
        let mut decoder = JsonDecoder::default();
        let mut d = detector();
        // 100 chunks spread over 4 pods and 2 domains stay under the evidence of one.
        for i in 0..100 {
            let pod = format!("w-{}", i % 4);
            let domain = if i % 8 < 4 { "a.example" } else { "b.example" };
            let name = format!("{}.{domain}", chunk(i));
            assert_eq!(
                d.check(&query(&mut decoder, &pod, &name, "A", i * 500)),
                None
            );
        }
    }

    #[test]
    fn registered_domains_follow_the_public_suffix_list() {
        for (name, domain) in [
            ("a.b.example.co.uk", "example.co.uk"),
            ("bucket.s3.amazonaws.com", "bucket.s3.amazonaws.com"),
            ("x.y.t.tunnel.example", "tunnel.example"),
            ("www.example.com.", "example.com"),
            ("com", "com"),
        ] {
            assert_eq!(registered_domain(name), domain, "{name}");
        }
    }

    #[test]
    fn labels_are_weighed_by_the_data_their_alphabet_holds() {
        let e = 3.0;
        // Host names carry nothing.
        for label in ["www", "api", "cdn-eu-west-1", "telemetry", "d3anogn3pbtk4v"] {
            assert_eq!(encoded_bytes(label, e), 0.0, "{label}");
        }
        // 32 hex characters: 16 bytes; base32: 5 bits a character; base64 with case: 6.
        assert_eq!(encoded_bytes("47e224be59415ec068b94bca857581bd", e), 16.0);
        assert_eq!(encoded_bytes("mfrggzdfmztwq2lknnwg23tpobyxe43u", e), 20.0);
        assert_eq!(encoded_bytes("aGVsbG8gd29ybGQhIQ", e), 13.5);
        // Escaped raw bytes: one each.
        assert_eq!(encoded_bytes("\\200\\201\\255", e), 3.0);
    }
}

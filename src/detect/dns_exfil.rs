//! The `dns_exfiltration` detector: data smuggled out in DNS names, from Hubble's L7 DNS
//! records.
//!
//! Per (namespace, registered domain) and sliding window it watches for: a label longer than
//! `max_label_length`, or one that looks like encoded data (20+ characters, no hyphen, letters
//! and digits mixed, Shannon entropy at least `max_label_entropy`: base32, base64 and hex
//! chunks do, hyphenated host names do not); many distinct names under one domain (one name per
//! chunk); a high share of TXT/NULL queries (the channel back); a high NXDOMAIN rate (names
//! no resolver knows). The cluster's own names (`allow`, `cluster.local` by default) are
//! skipped. State is bounded per domain and in domains.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use super::{Earlier, Hit};
use crate::flow::FlowEvent;
use crate::flow::destination::Destination;
use crate::rules::{DnsParams, Kind, Rule};

/// (namespace, registered domain) pairs followed at once.
const MAX_DOMAINS: usize = 10_000;
/// Records remembered per domain within the window.
const MAX_EVENTS: usize = 20_000;
/// NXDOMAIN's response code.
const NXDOMAIN: u32 = 3;

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

/// The registered domain of `name`: its last two labels, or three under a two-level public
/// suffix such as `co.uk`.
pub fn registered_domain(name: &str) -> String {
    let labels: Vec<&str> = name.trim_end_matches('.').rsplit('.').collect();
    let two_level = labels.len() >= 3
        && labels[0].len() == 2
        && ["co", "com", "net", "org", "gov", "ac", "edu"].contains(&labels[1]);
    let take = if two_level { 3 } else { 2 }.min(labels.len());
    let mut kept: Vec<&str> = labels[..take].to_vec();
    kept.reverse();
    kept.join(".")
}

#[derive(Debug, Default)]
struct DomainWindow {
    /// (time, name key, is TXT/NULL query, is an answer, is NXDOMAIN), oldest first.
    events: VecDeque<(i64, u64, bool, bool, bool)>,
    names: HashMap<u64, (u32, String)>,
    queries: usize,
    txt: usize,
    answers: usize,
    nxdomain: usize,
    last_ns: i64,
    pods: BTreeSet<String>,
    odd_labels: BTreeSet<String>,
}

impl DomainWindow {
    fn expire(&mut self, before_ns: i64) {
        while let Some(&(t, key, txt, answer, nx)) = self.events.front() {
            if t >= before_ns && self.events.len() <= MAX_EVENTS {
                break;
            }
            self.events.pop_front();
            if let Some((n, _)) = self.names.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.names.remove(&key);
                }
            }
            if answer {
                self.answers -= 1;
                self.nxdomain -= usize::from(nx);
            } else {
                self.queries -= 1;
                self.txt -= usize::from(txt);
            }
        }
    }
}

/// One `dns_exfiltration` rule's detector.
#[derive(Debug)]
pub struct DnsExfil {
    pub rule: Arc<Rule>,
    params: DnsParams,
    domains: HashMap<(String, String), DomainWindow>,
}

impl DnsExfil {
    pub fn new(rule: Arc<Rule>) -> Option<DnsExfil> {
        let Kind::DnsExfiltration(params) = &rule.kind else {
            return None;
        };
        let params = params.clone();
        Some(DnsExfil {
            rule,
            params,
            domains: HashMap::new(),
        })
    }

    fn allowed(&self, name: &str) -> bool {
        self.params
            .allow
            .iter()
            .any(|a| name == a || name.ends_with(&format!(".{a}")))
    }

    /// A label that looks like encoded data, if any.
    fn odd_label<'n>(&self, name: &'n str) -> Option<&'n str> {
        name.split('.').find(|l| {
            let encoded = l.len() >= 20
                && !l.contains('-')
                && l.bytes().any(|b| b.is_ascii_digit())
                && l.bytes().any(|b| b.is_ascii_alphabetic())
                && entropy(l) >= self.params.max_label_entropy;
            l.len() >= self.params.max_label_length || encoded
        })
    }

    /// Counts one flow's DNS record; a hit when its domain looks like a channel.
    pub fn check(&mut self, flow: &FlowEvent) -> Option<Hit> {
        let dns = flow.dns.as_deref()?;
        // The pod that asked: the source of a request, the destination of an answer.
        let client = if dns.response {
            &flow.destination
        } else {
            &flow.source
        };
        if client.pod.is_empty()
            || !self
                .rule
                .namespaces
                .matches(&client.namespace, &client.labels)
        {
            return None;
        }
        let name = dns.query.trim_end_matches('.').to_ascii_lowercase();
        if name.is_empty() || self.allowed(&name) {
            return None;
        }
        let domain = registered_domain(&name);
        let odd = if dns.response {
            None
        } else {
            self.odd_label(&name).map(str::to_owned)
        };
        let id = (client.namespace.to_string(), domain.clone());
        if !self.domains.contains_key(&id) && self.domains.len() >= MAX_DOMAINS {
            let quietest = self
                .domains
                .iter()
                .min_by_key(|(_, w)| w.last_ns)
                .map(|(k, _)| k.clone());
            if let Some(k) = quietest {
                self.domains.remove(&k);
            }
        }
        let window_ns = i64::try_from(self.params.window.as_nanos()).unwrap_or(i64::MAX);
        let w = self.domains.entry(id).or_default();
        let mut h = std::hash::DefaultHasher::new();
        name.hash(&mut h);
        let key = h.finish();
        let txt = dns.qtypes.iter().any(|q| &**q == "TXT" || &**q == "NULL");
        let nx = dns.response && dns.rcode == NXDOMAIN;
        w.events
            .push_back((flow.time_ns, key, txt, dns.response, nx));
        w.names.entry(key).or_insert((0, name.clone())).0 += 1;
        if dns.response {
            w.answers += 1;
            w.nxdomain += usize::from(nx);
        } else {
            w.queries += 1;
            w.txt += usize::from(txt);
        }
        if w.pods.len() < 20 {
            w.pods
                .insert(format!("{}/{}", client.namespace, client.pod));
        }
        if let Some(label) = odd
            && w.odd_labels.len() < 5
        {
            w.odd_labels.insert(label);
        }
        w.last_ns = w.last_ns.max(flow.time_ns);
        let cutoff = w.last_ns.saturating_sub(window_ns);
        w.expire(cutoff);

        let p = &self.params;
        let mut reasons = Vec::new();
        if !w.odd_labels.is_empty() {
            reasons.push(format!(
                "labels that look like encoded data ({} or more characters, or high entropy)",
                p.max_label_length
            ));
        }
        if w.names.len() >= p.unique_subdomains {
            reasons.push(format!("{} distinct names under {domain}", w.names.len()));
        }
        if w.queries >= p.min_queries && w.txt as f64 / w.queries as f64 >= p.txt_share {
            reasons.push(format!(
                "{} of {} queries for TXT/NULL records",
                w.txt, w.queries
            ));
        }
        if w.answers >= p.min_queries && w.nxdomain as f64 / w.answers as f64 >= p.nxdomain_share {
            reasons.push(format!("{} of {} answers NXDOMAIN", w.nxdomain, w.answers));
        }
        if reasons.is_empty() {
            return None;
        }
        let mut samples: Vec<&str> = w.names.values().map(|(_, n)| n.as_str()).collect();
        samples.sort_unstable();
        samples.truncate(5);
        let namespace = client.namespace.to_string();
        let pods = w.pods.iter().cloned().collect::<Vec<_>>().join(", ");
        let earlier = Earlier {
            flows: w.events.len().saturating_sub(1) as u64,
            since_ns: w.events.front().map_or(flow.time_ns, |e| e.0),
        };
        let mut extra = BTreeMap::new();
        extra.insert("reasons".into(), reasons.join("; "));
        extra.insert("sample_queries".into(), samples.join(", "));
        extra.insert("distinct_names".into(), w.names.len().to_string());
        extra.insert("queries".into(), w.queries.to_string());
        extra.insert(
            "summary".into(),
            format!("{namespace}: DNS to {domain} looks like a data channel"),
        );
        extra.insert(
            "description".into(),
            format!(
                "Pods {} queried names under {domain} in a way ordinary lookups do not: {}. Sample names: {}. Expected: short, repeated names, few TXT queries, few NXDOMAIN answers.",
                pods, reasons.join("; "), samples.join(", ")
            ),
        );
        Some(Hit {
            namespace,
            destination: Destination::Fqdn(domain),
            extra,
            earlier: Some(earlier),
        })
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

    fn query(decoder: &mut JsonDecoder, name: &str, qtype: &str, second: u32) -> FlowEvent {
        let line = format!(
            r#"{{"flow":{{"time":"2026-01-01T00:00:{:02}.{:06}Z","verdict":"FORWARDED","Type":"L7","l7":{{"type":"REQUEST","dns":{{"query":"{name}.","qtypes":["{qtype}"]}}}},"source":{{"namespace":"ai-training","pod_name":"w-2"}},"destination":{{"namespace":"kube-system","pod_name":"coredns-0"}},"traffic_direction":"EGRESS"}}}}"#,
            second / 1000,
            second % 1000
        );
        match decoder.decode_line(&line).unwrap() {
            Event::Flow(f) => f,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn entropy_and_registered_domains() {
        assert!(entropy("aGVsbG8gd29ybGQgZXhmaWw") > 4.0);
        assert!(entropy("training-data") < 3.5);
        assert_eq!(registered_domain("a.b.exfil.example.com."), "example.com");
        assert_eq!(registered_domain("x.bucket.example.co.uk"), "example.co.uk");
        assert_eq!(registered_domain("localhost"), "localhost");
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
            ] {
                assert_eq!(d.check(&query(&mut decoder, name, "A", i)), None, "{name}");
            }
        }
    }

    #[test]
    fn encoded_labels_many_subdomains_and_txt_queries_are_caught() {
        let mut decoder = JsonDecoder::default();
        let mut d = detector();
        let hit = d
            .check(&query(
                &mut decoder,
                "dGhlIHdlaWdodHMgb2YgbGxhbWEtNzBi.q.exfil.example.com",
                "A",
                1,
            ))
            .unwrap();
        assert_eq!(
            (hit.namespace.as_str(), hit.destination.to_string().as_str()),
            ("ai-training", "example.com")
        );
        assert!(
            hit.extra["reasons"].contains("encoded data"),
            "{:?}",
            hit.extra
        );
        // Hex chunks too; long hyphenated host names are not data.
        let mut d = detector();
        assert!(
            d.check(&query(
                &mut decoder,
                "00cd97a48b18a09252dd4eb8d4609d8e.example.org",
                "A",
                2
            ))
            .is_some()
        );
        let mut d = detector();
        assert_eq!(
            d.check(&query(
                &mut decoder,
                "gke-ilya-otel-demo-1-ilya-otel-demo-1-6114bb84-zr1l.c.example.internal",
                "A",
                3
            )),
            None
        );

        let mut d = detector();
        let mut fired = None;
        for i in 0..60 {
            if let Some(h) = d.check(&query(
                &mut decoder,
                &format!("c{i}.t.exfil.example.net"),
                "TXT",
                i,
            )) {
                fired.get_or_insert((i, h));
            }
        }
        let (at, hit) = fired.expect("a TXT channel");
        assert_eq!(at, 19, "TXT share trips at min_queries");
        assert!(
            hit.extra["reasons"].contains("queries for TXT/NULL records"),
            "{:?}",
            hit.extra
        );
    }
}

//! DNS tunnels as they look in Hubble's DNS records: the query shapes of real tunnelling tools,
//! for the `dns_exfiltration` detector's tests and benchmark.
//!
//! - iodine: NULL queries whose labels carry raw 8-bit data (the DNS proxy shows each byte
//!   outside the printable range as a `\DDD` escape), two labels of 60 bytes;
//! - dns2tcp: TXT queries with base64 labels (upper and lower case), two labels of 48;
//! - dnscat2: hex-encoded labels (two of 60 characters), TXT, CNAME and MX queries in turn.
//!
//! Each query carries a new chunk, so every name is distinct, as in the tools.

use super::traffic::TrainingCluster;
use crate::proto::flow::Flow;

/// A tunnelling tool's query shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tunnel {
    Iodine,
    Dns2tcp,
    Dnscat2,
}

impl Tunnel {
    pub const ALL: [Tunnel; 3] = [Tunnel::Iodine, Tunnel::Dns2tcp, Tunnel::Dnscat2];

    pub fn name(self) -> &'static str {
        match self {
            Tunnel::Iodine => "iodine (NULL, raw 8-bit labels)",
            Tunnel::Dns2tcp => "dns2tcp (TXT, base64 labels)",
            Tunnel::Dnscat2 => "dnscat2 (TXT/CNAME/MX, hex labels)",
        }
    }

    /// The `i`th query under `domain`: its name and query type.
    pub fn query(self, i: u64, domain: &str) -> (String, &'static str) {
        let mut state = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5851_f42d_4c95_7f2d;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        match self {
            Tunnel::Iodine => {
                let label = |next: &mut dyn FnMut() -> u64| -> String {
                    (0..60)
                        .map(|_| format!("\\{:03}", 128 + next() % 128))
                        .collect()
                };
                let (a, b) = (label(&mut next), label(&mut next));
                (format!("p{a}.{b}.{domain}"), "NULL")
            }
            Tunnel::Dns2tcp => {
                const B64: &[u8] =
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
                let label = |next: &mut dyn FnMut() -> u64| -> String {
                    (0..48)
                        .map(|_| char::from(B64[(next() % 64) as usize]))
                        .collect()
                };
                let (a, b) = (label(&mut next), label(&mut next));
                (format!("{a}.{b}.{domain}"), "TXT")
            }
            Tunnel::Dnscat2 => {
                let label = |next: &mut dyn FnMut() -> u64| -> String {
                    (0..30).map(|_| format!("{:02x}", next() % 256)).collect()
                };
                let (a, b) = (label(&mut next), label(&mut next));
                let qtype = ["TXT", "CNAME", "MX"][(i % 3) as usize];
                (format!("{a}.{b}.{domain}"), qtype)
            }
        }
    }
}

/// `names` looked up `passes` times over, each lookup by the next of trainers `0..pods` in
/// turn (a different one each pass), `per_second` lookups in all, from `start_ns`.
pub fn background(
    cluster: &mut TrainingCluster,
    names: &[&str],
    pods: usize,
    passes: usize,
    per_second: f64,
    start_ns: i64,
) -> Vec<Flow> {
    let step = (1e9 / per_second) as i64;
    let mut out = Vec::with_capacity(names.len() * passes);
    for pass in 0..passes {
        for (i, name) in names.iter().enumerate() {
            let n = (pass * names.len() + i) as i64;
            cluster.set_now_ns(start_ns + n * step);
            out.push(cluster.lookup((i + pass) % pods.max(1), name, "A"));
        }
    }
    out
}

/// `count` queries of `tunnel` under `domain` from trainer `pod`, one every `every_ns`, from
/// `start_ns`.
pub fn tunnel(
    cluster: &mut TrainingCluster,
    tunnel: Tunnel,
    domain: &str,
    pod: usize,
    count: u64,
    every_ns: i64,
    start_ns: i64,
) -> Vec<Flow> {
    (0..count)
        .map(|i| {
            cluster.set_now_ns(start_ns + i as i64 * every_ns);
            let (name, qtype) = tunnel.query(i, domain);
            cluster.lookup(pod, &name, qtype)
        })
        .collect()
}

/// The names of a corpus file: one per line, `#` comment lines and blank lines skipped.
pub fn corpus(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect()
}

/// The flows of several streams in time order.
pub fn merged(streams: Vec<Vec<Flow>>) -> Vec<Flow> {
    let mut all: Vec<Flow> = streams.into_iter().flatten().collect();
    all.sort_by_key(|f| f.time.map(|t| (t.seconds, t.nanos)));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_query_is_a_new_name_within_dns_limits() {
        for tunnel in Tunnel::ALL {
            let mut seen = std::collections::HashSet::new();
            for i in 0..200 {
                let (name, _) = tunnel.query(i, "t.example");
                assert!(seen.insert(name.clone()), "{tunnel:?} repeats");
                for label in name.split('.') {
                    // In wire bytes: an escape is one byte.
                    let wire = label.len() - 3 * label.matches('\\').count();
                    assert!(wire <= 63, "{tunnel:?}: {label}");
                }
            }
        }
    }
}

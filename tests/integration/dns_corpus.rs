//! The `dns_exfiltration` rule of the default pack on real names and real tunnel shapes:
//! 6,540 real host names (tests/fixtures/dns, AdAway's list, CC BY 3.0) looked up three times
//! over from four pods at 6 queries a second (about 55 minutes), and the query shapes of iodine,
//! dns2tcp and dnscat2 amid that traffic. The targets: no alert on the benign names; each
//! tunnel caught within 60 s at 2 queries a second, and a low-and-slow one (a query every 6 s)
//! within 15 minutes. `cargo bench --bench dns_exfil` prints the same measurements as a table.

use std::sync::Arc;

use exfilwatch::detect::dns_exfil::DnsExfil;
use exfilwatch::flow::wire::Decoder;
use exfilwatch::proto::flow::Flow;
use exfilwatch::rules::{self, Rule};
use exfilwatch::sim::dns::{self, Tunnel};
use exfilwatch::sim::traffic::TrainingCluster;

const START: i64 = 1_767_225_600_000_000_000;
const SECOND: i64 = 1_000_000_000;

fn names() -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/dns/benign-names.txt"
    );
    let text = std::fs::read_to_string(path).unwrap();
    dns::corpus(&text).into_iter().map(str::to_owned).collect()
}

fn rule() -> Arc<Rule> {
    Arc::new(
        rules::default_pack()
            .unwrap()
            .into_iter()
            .find(|r| r.name == "TrainingPodDnsExfiltration")
            .unwrap(),
    )
}

/// 55 minutes of ordinary lookups: every name three times over, from four pods, 6 a second.
fn background(cluster: &mut TrainingCluster) -> Vec<Flow> {
    let names = names();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    dns::background(cluster, &names, 4, 3, 6.0, START)
}

/// The flow times (ns) at which the detector reported a channel, with the domain.
fn hits(flows: Vec<Flow>) -> Vec<(i64, String)> {
    let mut detector = DnsExfil::new(rule()).unwrap();
    let mut decoder = Decoder::default();
    let mut out = Vec::new();
    for flow in flows {
        let event = exfilwatch::sim::received(&mut decoder, flow).unwrap();
        if let Some(hit) = detector.check(&event) {
            out.push((event.time_ns, hit.destination.to_string()));
        }
    }
    out
}

#[test]
fn most_of_an_hour_of_real_benign_names_from_four_pods_raises_nothing() {
    let names = names();
    assert!(names.len() >= 5_000, "{} names", names.len());
    let mut cluster = TrainingCluster::new(1, START, 1);
    let flows = background(&mut cluster);
    let span = flows.last().unwrap().time.unwrap().seconds - flows[0].time.unwrap().seconds;
    assert!(span >= 3_200, "about 55 minutes: {span} s");
    let hits = hits(flows);
    assert!(
        hits.is_empty(),
        "false alerts: {:?}",
        &hits[..hits.len().min(5)]
    );
}

#[test]
fn tunnels_amid_ordinary_lookups_are_caught_within_the_targets() {
    let begin = START + 600 * SECOND;
    let cases = [
        (Tunnel::Iodine, SECOND / 2, 60),
        (Tunnel::Dns2tcp, SECOND / 2, 60),
        (Tunnel::Dnscat2, SECOND / 2, 60),
        // Low and slow: a query every 6 s, within 15 minutes.
        (Tunnel::Dnscat2, 6 * SECOND, 900),
    ];
    for (tunnel, every, target_s) in cases {
        let mut cluster = TrainingCluster::new(2, START, 1);
        let background = background(&mut cluster);
        let queries = (target_s * SECOND / every) as u64;
        let attack = dns::tunnel(
            &mut cluster,
            tunnel,
            "t.tunnel.example",
            2,
            queries,
            every,
            begin,
        );
        let hits = hits(dns::merged(vec![background, attack]));
        let (at, domain) = hits
            .first()
            .unwrap_or_else(|| panic!("{} every {every} ns: not caught", tunnel.name()));
        assert_eq!(
            domain,
            "tunnel.example",
            "{}: only the tunnel",
            tunnel.name()
        );
        let delay = (at - begin) / SECOND;
        assert!(
            delay <= target_s,
            "{} every {} ms: caught after {delay} s",
            tunnel.name(),
            every / 1_000_000
        );
    }
}

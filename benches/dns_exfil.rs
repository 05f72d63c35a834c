//! The `dns_exfiltration` rule on real names and real tunnel shapes, measured: detection delay
//! of iodine, dns2tcp and dnscat2 at 2 queries a second and of a low-and-slow dnscat2 (a query
//! every 6 s), each amid 55 minutes of ordinary lookups (6,540 real host names from
//! tests/fixtures/dns, three times over from four pods at 6 a second); false alerts per hour
//! on the ordinary lookups alone at the rule's threshold and at a half and a quarter of it
//! (the margin); and the detector's cost per DNS record. Run: `cargo bench --bench dns_exfil`.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::hint::black_box;
use std::sync::Arc;

use divan::Bencher;
use divan::counter::ItemsCount;
use exfilwatch::detect::dns_exfil::DnsExfil;
use exfilwatch::flow::FlowEvent;
use exfilwatch::flow::wire::Decoder;
use exfilwatch::proto::flow::Flow;
use exfilwatch::rules::{self, Kind, Rule};
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

/// The default pack's rule, its byte threshold divided by `divisor`.
fn rule(divisor: u64) -> Arc<Rule> {
    let mut rule = rules::default_pack()
        .unwrap()
        .into_iter()
        .find(|r| r.name == "TrainingPodDnsExfiltration")
        .unwrap();
    if let Kind::DnsExfiltration(p) = &mut rule.kind {
        p.min_encoded_bytes /= divisor;
    }
    Arc::new(rule)
}

fn background(cluster: &mut TrainingCluster) -> Vec<Flow> {
    let names = names();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    dns::background(cluster, &names, 4, 3, 6.0, START)
}

fn events(flows: Vec<Flow>) -> Vec<FlowEvent> {
    let mut decoder = Decoder::default();
    flows
        .into_iter()
        .map(|f| exfilwatch::sim::received(&mut decoder, f).unwrap())
        .collect()
}

/// (time, key) of each new alert the detector would raise: a hit for a pod and domain not
/// hit within the rule's quiet period.
fn alerts(rule: &Arc<Rule>, events: &[FlowEvent]) -> Vec<(i64, String)> {
    let mut detector = DnsExfil::new(rule.clone()).unwrap();
    let quiet = rule.resolve_after.as_nanos() as i64;
    let mut last: std::collections::HashMap<String, i64> = Default::default();
    let mut out = Vec::new();
    for e in events {
        if let Some(hit) = detector.check(e) {
            let key = hit.destination.to_string();
            if last.get(&key).is_none_or(|t| e.time_ns - t > quiet) {
                out.push((e.time_ns, key.clone()));
            }
            last.insert(key, e.time_ns);
        }
    }
    out
}

fn main() {
    let mut cluster = TrainingCluster::new(1, START, 1);
    let ordinary = events(background(&mut cluster));
    let hours = (ordinary.last().unwrap().time_ns - ordinary[0].time_ns) as f64 / 3.6e12;
    println!(
        "\nOrdinary lookups: {} queries of {} real names from 4 pods over {hours:.2} h",
        ordinary.len(),
        names().len()
    );
    println!("\n| threshold (min_encoded_bytes) | false alerts | per hour |");
    println!("|---|---|---|");
    for divisor in [1, 2, 4] {
        let rule = rule(divisor);
        let Kind::DnsExfiltration(p) = &rule.kind else {
            unreachable!()
        };
        let n = alerts(&rule, &ordinary).len();
        println!(
            "| {} | {n} | {:.2} |",
            p.min_encoded_bytes,
            n as f64 / hours
        );
    }
    println!(
        "\n| tunnel | queries | detection delay | queries until caught | false alerts/h meanwhile |"
    );
    println!("|---|---|---|---|---|");
    let begin = START + 600 * SECOND;
    for (tunnel, every) in [
        (Tunnel::Iodine, SECOND / 2),
        (Tunnel::Dns2tcp, SECOND / 2),
        (Tunnel::Dnscat2, SECOND / 2),
        (Tunnel::Dnscat2, 6 * SECOND),
    ] {
        let mut cluster = TrainingCluster::new(2, START, 1);
        let background = background(&mut cluster);
        let attack = dns::tunnel(
            &mut cluster,
            tunnel,
            "t.tunnel.example",
            2,
            300,
            every,
            begin,
        );
        let all = events(dns::merged(vec![background, attack]));
        let found = alerts(&rule(1), &all);
        let caught = found.iter().find(|(_, k)| k == "tunnel.example");
        let others = found.iter().filter(|(_, k)| k != "tunnel.example").count();
        let rate = format!("{:.1}/s", SECOND as f64 / every as f64);
        match caught {
            Some((t, _)) => println!(
                "| {} | {rate} | {:.1} s | {} | {:.2} |",
                tunnel.name(),
                (t - begin) as f64 / 1e9,
                (t - begin) / every + 1,
                others as f64 / hours
            ),
            None => println!("| {} | {rate} | not caught | - | {others} |", tunnel.name()),
        }
    }
    println!();
    divan::main();
}

/// The detector's cost per DNS record, on the hour of ordinary lookups with a tunnel in it.
#[divan::bench(sample_count = 10)]
fn detector_per_record(bencher: Bencher) {
    let mut cluster = TrainingCluster::new(3, START, 1);
    let background = background(&mut cluster);
    let attack = dns::tunnel(
        &mut cluster,
        Tunnel::Dnscat2,
        "t.tunnel.example",
        2,
        600,
        SECOND / 2,
        START + 600 * SECOND,
    );
    let all = events(dns::merged(vec![background, attack]));
    let rule = rule(1);
    bencher.counter(ItemsCount::new(all.len())).bench_local(|| {
        let mut detector = DnsExfil::new(rule.clone()).unwrap();
        for e in &all {
            black_box(detector.check(e));
        }
    });
}

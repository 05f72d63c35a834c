//! Flow filters: parsed once from the REST API's parameters, resolved against each chunk's
//! dictionaries into a polars expression on codes, so matching never compares strings per row.

use std::net::IpAddr;
use std::time::Duration;

use polars::prelude::*;

use super::chunk::{Chunk, Col, NumberSets};
use ipnet::IpNet;

use crate::common::clock::span_ns;
use crate::flow::intern::Sym;
use crate::flow::{DropReason, L4Protocol, TrafficDirection, Verdict};

/// Flows per page when `limit` is not given, and the most a page may hold.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 10_000;
/// The longest `since`..`until` range a query may cover.
pub const MAX_RANGE: Duration = Duration::from_secs(31 * 86_400);
/// UUIDs one `uuid` parameter may list.
pub const MAX_UUIDS: usize = 100;
/// The longest "ago" a time parameter takes: no flow is kept longer.
pub const MAX_AGO: Duration = Duration::from_secs(3_650 * 86_400);

/// A parameter the API could not use: which one, the value and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parameter {parameter}={value:?}: {reason}")]
pub struct BadParameter {
    pub parameter: String,
    pub value: String,
    pub reason: String,
}

impl BadParameter {
    /// `parameter` and `value` as the request gave them (cut to 100 characters: they are the
    /// client's text, echoed in the answer), and why they cannot be used.
    pub fn new(parameter: &str, value: &str, reason: impl Into<String>) -> BadParameter {
        BadParameter {
            parameter: parameter.chars().take(100).collect(),
            value: value.chars().take(100).collect(),
            reason: reason.into(),
        }
    }
}

fn bad(parameter: &str, value: &str, reason: impl Into<String>) -> BadParameter {
    BadParameter::new(parameter, value, reason)
}

/// What a condition tests a column's value against.
#[derive(Debug, Clone, PartialEq)]
enum Test {
    /// Dictionary strings equal to it.
    Equal(String),
    /// Dictionary strings starting with it.
    Prefix(String),
    /// Names equal to it or ending in ".it", without case.
    DomainSuffix(String),
    Ip(IpAddr),
    Network(IpNet),
    /// Plain numbers, any of them.
    Numbers(Vec<u32>),
    /// Flow UUIDs, any of them (the columns are ignored).
    Uuids(Vec<u128>),
}

/// One filter: its test must hold on any of `columns` (two for an either-side filter).
#[derive(Debug, Clone, PartialEq)]
struct Condition {
    columns: Vec<Col>,
    test: Test,
}

/// A flow filter: all conditions hold, within the time range.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    conditions: Vec<Condition>,
    /// Nanoseconds since the epoch, inclusive.
    pub since_ns: Option<i64>,
    /// Nanoseconds since the epoch, exclusive.
    pub until_ns: Option<i64>,
}

/// Parameters shared by `/flows` and `/flows/top`, with the columns each side reads.
const SIDED: [(&str, Col, Col); 6] = [
    ("namespace", Col::SrcNamespace, Col::DstNamespace),
    ("pod", Col::SrcPod, Col::DstPod),
    ("workload", Col::SrcWorkload, Col::DstWorkload),
    ("ip", Col::SrcIp, Col::DstIp),
    ("cidr", Col::SrcIp, Col::DstIp),
    ("port", Col::SrcPort, Col::DstPort),
];

/// Every filter parameter's name, for the error on an unknown one.
pub const FILTER_PARAMETERS: &[&str] = &[
    "namespace",
    "pod",
    "workload",
    "ip",
    "cidr",
    "port",
    "source_namespace",
    "source_pod",
    "source_workload",
    "source_ip",
    "source_cidr",
    "source_port",
    "destination_namespace",
    "destination_pod",
    "destination_workload",
    "destination_ip",
    "destination_cidr",
    "destination_port",
    "verdict",
    "drop_reason",
    "direction",
    "protocol",
    "fqdn",
    "node",
    "policy",
    "uuid",
    "since",
    "until",
];

impl Filter {
    /// Takes the filter parameters out of `params`; `now_ns` anchors relative times.
    /// Returns `Ok(false)` for a parameter that is not a filter.
    pub fn set(&mut self, key: &str, value: &str, now_ns: i64) -> Result<bool, BadParameter> {
        let (side, base) = if let Some(b) = key.strip_prefix("source_") {
            (Some(0), b)
        } else if let Some(b) = key.strip_prefix("destination_") {
            (Some(1), b)
        } else {
            (None, key)
        };
        if let Some((_, src, dst)) = SIDED.iter().find(|(name, _, _)| *name == base) {
            let columns = match side {
                Some(0) => vec![*src],
                Some(_) => vec![*dst],
                None => vec![*src, *dst],
            };
            let test = match base {
                "namespace" | "workload" => Test::Equal(nonempty(key, value)?.to_owned()),
                "pod" => Test::Prefix(nonempty(key, value)?.to_owned()),
                "ip" => Test::Ip(
                    value
                        .parse()
                        .map_err(|_| bad(key, value, "not an IP address"))?,
                ),
                "cidr" => parse_cidr(key, value)?,
                _ => Test::Numbers(vec![u32::from(
                    value
                        .parse::<u16>()
                        .map_err(|_| bad(key, value, "not a port number (0-65535)"))?,
                )]),
            };
            self.conditions.push(Condition { columns, test });
            return Ok(true);
        }
        if side.is_some() {
            return Ok(false);
        }
        let (column, test) = match key {
            "verdict" => (
                Col::Verdict,
                names(key, value, |v| {
                    Verdict::from_str_name(&v.to_ascii_uppercase()).map(|x| x as u32)
                })?,
            ),
            "drop_reason" => (
                Col::DropReason,
                names(key, value, |v| {
                    DropReason::from_str_name(&v.to_ascii_uppercase()).map(|x| x as u32)
                })?,
            ),
            "direction" => (
                Col::Direction,
                names(key, value, |v| {
                    TrafficDirection::from_str_name(&v.to_ascii_uppercase()).map(|x| x as u32)
                })?,
            ),
            "protocol" => (
                Col::Protocol,
                names(key, value, |v| protocol(v).map(|p| p as u32))?,
            ),
            "fqdn" => {
                let name = nonempty(key, value)?
                    .trim_start_matches("*.")
                    .trim_end_matches('.');
                // The destination's name, or the name a DNS record asks about.
                self.conditions.push(Condition {
                    columns: vec![Col::Fqdn, Col::DnsQuery],
                    test: Test::DomainSuffix(name.to_ascii_lowercase()),
                });
                return Ok(true);
            }
            "uuid" => {
                let mut uuids = Vec::new();
                for part in value.split(',').map(str::trim) {
                    let uuid = crate::flow::parse_uuid(part.as_bytes())
                        .ok_or_else(|| bad(key, value, format!("{part:?} is not a flow UUID")))?;
                    uuids.push(uuid);
                }
                if uuids.len() > MAX_UUIDS {
                    return Err(bad(key, value, format!("more than {MAX_UUIDS} UUIDs")));
                }
                self.conditions.push(Condition {
                    columns: Vec::new(),
                    test: Test::Uuids(uuids),
                });
                return Ok(true);
            }
            "node" => (Col::Node, Test::Equal(nonempty(key, value)?.to_owned())),
            "policy" => (Col::Policy, Test::Equal(nonempty(key, value)?.to_owned())),
            "since" => {
                self.since_ns = Some(parse_time(key, value, now_ns)?);
                return Ok(true);
            }
            "until" => {
                self.until_ns = Some(parse_time(key, value, now_ns)?);
                return Ok(true);
            }
            _ => return Ok(false),
        };
        self.conditions.push(Condition {
            columns: vec![column],
            test,
        });
        Ok(true)
    }

    /// Checks the time range once every parameter is in.
    pub fn check_range(&self) -> Result<(), BadParameter> {
        if let (Some(since), Some(until)) = (self.since_ns, self.until_ns) {
            if until <= since {
                return Err(bad(
                    "until",
                    &crate::common::clock::format_time(until),
                    "must be later than since",
                ));
            }
            let max = span_ns(MAX_RANGE);
            if until - since > max {
                return Err(bad(
                    "since",
                    &crate::common::clock::format_time(since),
                    "range longer than 31 days",
                ));
            }
        }
        Ok(())
    }

    /// Whether every flow of a chunk spanning `min_time..=max_time` is inside the time range,
    /// so the chunk's answer does not depend on it.
    pub fn covers(&self, min_time: i64, max_time: i64) -> bool {
        self.since_ns.is_none_or(|s| min_time >= s) && self.until_ns.is_none_or(|u| max_time < u)
    }

    /// The conditions besides time, as text that is equal exactly when they are.
    pub fn conditions_key(&self) -> String {
        format!("{:?}", self.conditions)
    }

    /// Whether a chunk's time span can hold matching flows.
    pub fn overlaps(&self, min_time: i64, max_time: i64) -> bool {
        self.since_ns.is_none_or(|s| max_time >= s) && self.until_ns.is_none_or(|u| min_time < u)
    }

    /// The columns the conditions read (besides `time`, and the UUID columns, which
    /// [`Filter::reads_uuids`] tells).
    pub fn columns(&self) -> Vec<Col> {
        let mut out: Vec<Col> = Vec::new();
        for c in self.conditions.iter().flat_map(|c| &c.columns) {
            if !out.contains(c) {
                out.push(*c);
            }
        }
        out
    }

    /// Whether a condition looks flows up by UUID.
    pub fn reads_uuids(&self) -> bool {
        self.conditions
            .iter()
            .any(|c| matches!(c.test, Test::Uuids(_)))
    }

    /// Whether a condition asks for values of `col` other than `value`: no flow whose `col`
    /// is `value` matches.
    pub fn rules_out(&self, col: Col, value: u32) -> bool {
        self.conditions.iter().any(|c| {
            c.columns == [col] && matches!(&c.test, Test::Numbers(v) if !v.contains(&value))
        })
    }

    /// Whether a chunk with these dictionaries and number sets may hold matching flows: false
    /// when a condition matches none of its strings, addresses or numbers.
    pub fn can_match(&self, texts: &[Sym], ips: &[Option<IpAddr>], numbers: &NumberSets) -> bool {
        self.conditions.iter().all(|c| match &c.test {
            Test::Uuids(_) => true,
            Test::Numbers(values) => c.columns.iter().any(|col| numbers.may_hold(*col, values)),
            test => !codes(test, texts, ips).is_empty(),
        })
    }

    /// Whether a file whose strings in some columns lie within known ranges (least, greatest;
    /// from its statistics) may hold matching flows: false when a condition asks for a string
    /// equal to a value outside the range of every column it reads. Columns without a range,
    /// and tests other than equality, rule nothing out.
    pub fn may_match_ranges(&self, ranges: &[(Col, &str, &str)]) -> bool {
        self.conditions.iter().all(|c| {
            let Test::Equal(value) = &c.test else {
                return true;
            };
            c.columns.iter().any(|col| {
                ranges
                    .iter()
                    .find(|(ranged, _, _)| ranged == col)
                    .is_none_or(|(_, lo, hi)| *lo <= value.as_str() && value.as_str() <= *hi)
            })
        })
    }

    /// The filter as a polars predicate on `chunk`'s codes; `None` when nothing in the chunk
    /// can match (a wanted string is not in its dictionary).
    pub fn predicate(&self, chunk: &Chunk) -> Option<Expr> {
        self.build(&chunk.texts, &chunk.ips, false)
    }

    /// The filter as a polars predicate on a parquet segment's own columns, whose strings
    /// and addresses are written out: each condition on them becomes the set of values of
    /// `texts` and `ips` (the segment's dictionaries) it accepts. `None` when nothing can
    /// match.
    pub fn predicate_on_strings(&self, texts: &[Sym], ips: &[Option<IpAddr>]) -> Option<Expr> {
        self.build(texts, ips, true)
    }

    /// The same conditions without the time range.
    pub fn conditions_only(&self) -> Filter {
        Filter {
            conditions: self.conditions.clone(),
            since_ns: None,
            until_ns: None,
        }
    }

    /// The time range alone as a predicate (always true without one).
    pub fn time_predicate(&self) -> Expr {
        self.time_bounds()
            .into_iter()
            .reduce(Expr::and)
            .unwrap_or(lit(true))
    }

    fn time_bounds(&self) -> Vec<Expr> {
        let mut all: Vec<Expr> = Vec::new();
        if let Some(s) = self.since_ns {
            all.push(col("time").gt_eq(lit(s)));
        }
        if let Some(u) = self.until_ns {
            all.push(col("time").lt(lit(u)));
        }
        all
    }

    fn build(&self, texts: &[Sym], ips: &[Option<IpAddr>], on_strings: bool) -> Option<Expr> {
        let mut all = self.time_bounds();
        for condition in &self.conditions {
            if let Test::Uuids(uuids) = &condition.test {
                let [hi, lo] = super::chunk::UUID_COLUMNS;
                let any = uuids
                    .iter()
                    .map(|u| equals_u64(hi, (u >> 64) as u64).and(equals_u64(lo, *u as u64)))
                    .reduce(Expr::or)?;
                all.push(any);
                continue;
            }
            let codes = codes(&condition.test, texts, ips);
            if codes.is_empty() {
                return None;
            }
            let values: Option<Vec<String>> = match condition.test {
                _ if !on_strings => None,
                Test::Equal(_) | Test::Prefix(_) | Test::DomainSuffix(_) => Some(
                    codes
                        .iter()
                        .filter_map(|&c| texts.get(c as usize).map(|s| s.to_string()))
                        .collect(),
                ),
                Test::Ip(_) | Test::Network(_) => Some(
                    codes
                        .iter()
                        .filter_map(|&c| ips.get(c as usize).copied().flatten())
                        .map(|ip| ip.to_string())
                        .collect(),
                ),
                Test::Numbers(_) | Test::Uuids(_) => None,
            };
            let any = condition
                .columns
                .iter()
                .map(|c| match &values {
                    Some(v) => one_of_strings(c.name(), v),
                    None => one_of(c.name(), &codes),
                })
                .reduce(Expr::or)?;
            all.push(any);
        }
        Some(all.into_iter().reduce(Expr::and).unwrap_or(lit(true)))
    }
}

fn nonempty<'a>(key: &str, value: &'a str) -> Result<&'a str, BadParameter> {
    if value.is_empty() {
        Err(bad(key, value, "must not be empty"))
    } else {
        Ok(value)
    }
}

/// A comma-separated list of enum names or numbers.
fn names(
    key: &str,
    value: &str,
    lookup: impl Fn(&str) -> Option<u32>,
) -> Result<Test, BadParameter> {
    let mut out = Vec::new();
    for part in value.split(',').map(str::trim) {
        let n = part
            .parse::<u32>()
            .ok()
            .or_else(|| lookup(part))
            .ok_or_else(|| bad(key, value, format!("unknown value {part:?}")))?;
        out.push(n);
    }
    Ok(Test::Numbers(out))
}

pub fn protocol(name: &str) -> Option<L4Protocol> {
    Some(match name.to_ascii_uppercase().as_str() {
        "TCP" => L4Protocol::Tcp,
        "UDP" => L4Protocol::Udp,
        "ICMPV4" => L4Protocol::Icmpv4,
        "ICMPV6" => L4Protocol::Icmpv6,
        "SCTP" => L4Protocol::Sctp,
        _ => return None,
    })
}

fn parse_cidr(key: &str, value: &str) -> Result<Test, BadParameter> {
    let net: IpNet = value.parse().map_err(|_| {
        bad(
            key,
            value,
            "expected an address block such as 10.0.0.0/8 (prefix length 0-32, or 0-128 for IPv6)",
        )
    })?;
    Ok(Test::Network(net.trunc()))
}

/// RFC 3339, or a duration before `now_ns` such as "15m" or "2h".
pub fn parse_time(key: &str, value: &str, now_ns: i64) -> Result<i64, BadParameter> {
    if value.starts_with(|c: char| c.is_ascii_digit())
        && value.ends_with(|c: char| c.is_ascii_alphabetic())
        && !value.contains('-')
    {
        let d = crate::common::units::parse_duration(value).map_err(|e| bad(key, value, e))?;
        if d > MAX_AGO {
            return Err(bad(key, value, "more than 10 years (3650d) ago"));
        }
        let ns = span_ns(d);
        return Ok(now_ns.saturating_sub(ns));
    }
    let ts: prost_types::Timestamp = value.parse().map_err(|_| {
        bad(
            key,
            value,
            "expected RFC 3339 (2026-01-31T12:00:00Z) or a duration ago (30m, 2h, 7d)",
        )
    })?;
    Ok(crate::flow::timestamp_ns(ts.seconds, ts.nanos))
}

/// Codes in `chunk` that satisfy `test` (for numbers, the numbers themselves).
fn codes(test: &Test, texts: &[Sym], ips: &[Option<IpAddr>]) -> Vec<u32> {
    let strings = texts;
    let addresses = ips;
    let texts = |keep: &dyn Fn(&str) -> bool| -> Vec<u32> {
        (0u32..)
            .zip(strings.iter())
            .filter(|(_, s)| keep(s))
            .map(|(c, _)| c)
            .collect()
    };
    let ips = |keep: &dyn Fn(IpAddr) -> bool| -> Vec<u32> {
        (0u32..)
            .zip(addresses.iter())
            .filter(|(_, ip)| ip.is_some_and(keep))
            .map(|(c, _)| c)
            .collect()
    };
    match test {
        Test::Equal(want) => texts(&|s| s == want),
        Test::Prefix(want) => texts(&|s| s.starts_with(want.as_str())),
        Test::DomainSuffix(want) => texts(&|s| domain_matches(s, want)),
        Test::Ip(want) => ips(&|ip| ip == *want),
        Test::Network(net) => ips(&|ip| net.contains(&ip)),
        Test::Numbers(n) => n.clone(),
        Test::Uuids(_) => Vec::new(),
    }
}

/// `name` is `suffix` or a subdomain of it, ignoring case and a final dot.
pub fn domain_matches(name: &str, suffix: &str) -> bool {
    let name = name.trim_end_matches('.');
    if name.len() < suffix.len() {
        return false;
    }
    let (head, tail) = name.split_at(name.len() - suffix.len());
    tail.eq_ignore_ascii_case(suffix) && (head.is_empty() || head.ends_with('.'))
}

/// `column` equals `value`; through a one-value set, as a `u64` literal above `i64::MAX`
/// would not build without polars' i128 support.
fn equals_u64(column: &str, value: u64) -> Expr {
    let set = Series::new("set".into(), [value]);
    col(column).is_in(lit(set).implode(false), false)
}

fn one_of_strings(column: &str, values: &[String]) -> Expr {
    if let [one] = values {
        col(column).eq(lit(one.as_str()))
    } else {
        let set = Series::new("set".into(), values);
        col(column).is_in(lit(set).implode(false), false)
    }
}

fn one_of(column: &str, codes: &[u32]) -> Expr {
    if let [one] = codes {
        col(column).eq(lit(*one))
    } else {
        let set = Series::new("set".into(), codes);
        col(column).is_in(lit(set).implode(false), false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flowstore::testing::filter;

    #[test]
    fn ranges_of_a_files_namespaces_rule_it_out_only_when_no_side_can_match() {
        let ranges = [
            (Col::SrcNamespace, "ai-training", "ai-training"),
            (Col::DstNamespace, "kube-system", "production"),
        ];
        let holds = |params: &[(&str, &str)]| filter(params).may_match_ranges(&ranges);
        assert!(holds(&[("source_namespace", "ai-training")]));
        assert!(!holds(&[("source_namespace", "team-a")]));
        assert!(
            holds(&[("destination_namespace", "minio")]),
            "within the range"
        );
        assert!(!holds(&[("destination_namespace", "zzz")]));
        // Either side: the destination's range holds it.
        assert!(holds(&[("namespace", "monitoring")]));
        assert!(!holds(&[("namespace", "a")]));
        // Conditions on columns without a range, or not of equality, rule nothing out.
        assert!(holds(&[("pod", "x"), ("source_namespace", "ai-training")]));
        assert!(holds(&[("verdict", "DROPPED")]));
        assert!(!holds(&[("pod", "x"), ("source_namespace", "b")]));
    }
}

//! Reading policy YAML: the documents' shapes as serde sees them, and their conversion into
//! the evaluated form, every part the advisor cannot answer for refused with its line.

use super::*;

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<Requirement>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    pub key: String,
    pub operator: String,
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FqdnDoc {
    match_name: Option<String>,
    match_pattern: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CidrDoc {
    cidr: String,
    #[serde(default)]
    except: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum IntOrString {
    Int(i64),
    Text(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PortDoc {
    port: Option<IntOrString>,
    end_port: Option<i64>,
    protocol: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct L7Doc {
    dns: Option<Vec<FqdnDoc>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PortRuleDoc {
    #[serde(default)]
    ports: Vec<PortDoc>,
    rules: Option<L7Doc>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PeerDoc {
    pod_selector: Option<LabelSelector>,
    namespace_selector: Option<LabelSelector>,
    ip_block: Option<CidrDoc>,
}

/// A rule of either kind; which fields belong to which kind is checked after reading.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDoc {
    #[serde(rename = "toEndpoints", alias = "fromEndpoints")]
    endpoints: Option<Vec<LabelSelector>>,
    #[serde(rename = "toEntities", alias = "fromEntities")]
    entities: Option<Vec<String>>,
    #[serde(rename = "toCIDR", alias = "fromCIDR")]
    cidr: Option<Vec<String>>,
    #[serde(rename = "toCIDRSet", alias = "fromCIDRSet")]
    cidr_set: Option<Vec<CidrDoc>>,
    #[serde(rename = "toFQDNs")]
    fqdns: Option<Vec<FqdnDoc>>,
    #[serde(rename = "toPorts")]
    to_ports: Option<Vec<PortRuleDoc>>,
    // Kubernetes NetworkPolicy
    #[serde(alias = "from")]
    to: Option<Vec<PeerDoc>>,
    ports: Option<Vec<PortDoc>>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultDenyDoc {
    ingress: Option<bool>,
    egress: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SpecDoc {
    endpoint_selector: Option<LabelSelector>,
    pod_selector: Option<LabelSelector>,
    policy_types: Option<Vec<String>>,
    ingress: Option<Vec<RuleDoc>>,
    egress: Option<Vec<RuleDoc>>,
    ingress_deny: Option<Vec<RuleDoc>>,
    egress_deny: Option<Vec<RuleDoc>>,
    enable_default_deny: Option<DefaultDenyDoc>,
    /// Accepted and not evaluated.
    #[allow(
        dead_code,
        reason = "read so that its presence is not an unknown field"
    )]
    description: Option<IgnoredAny>,
    #[allow(
        dead_code,
        reason = "read so that its presence is not an unknown field"
    )]
    labels: Option<IgnoredAny>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct MetaDoc {
    #[serde(default)]
    name: String,
    namespace: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PolicyDoc {
    #[serde(default)]
    metadata: MetaDoc,
    spec: Option<SpecDoc>,
    specs: Option<Vec<SpecDoc>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Head {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
}

/// Values a policy text may stand for however short it is (a few aliases are fine).
const MIN_NODES: usize = 4096;

/// Reads every policy of `text` (one or more YAML documents); `file` names it in messages and
/// `namespace` stands in for a missing `metadata.namespace` (as `kubectl apply -n` would).
/// Documents of other kinds (a Namespace, a Job) are skipped.
pub fn parse(text: &str, file: &str, namespace: &str) -> Result<Vec<Policy>, PolicyError> {
    // Policies come from users of the API: aliases must not expand a small body into millions
    // of values before anything looks at them.
    crate::common::yaml::within_nodes(text, text.len().max(MIN_NODES)).map_err(|e| {
        PolicyError {
            origin: format!("{file}:{}", e.position.map_or(1, |p| p.0)),
            message: e.message,
        }
    })?;
    let starts = document_lines(text);
    let mut heads = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let line = starts.get(i).copied().unwrap_or(1);
        let head = Option::<Head>::deserialize(doc).map_err(|e| error(file, line, e))?;
        heads.push(head);
    }
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let line = starts.get(i).copied().unwrap_or(1);
        let origin = format!("{file}:{line}");
        let flavor = match heads.get(i).and_then(Option::as_ref) {
            Some(h) if h.api_version == "cilium.io/v2" && h.kind == "CiliumNetworkPolicy" => {
                Flavor::Cilium
            }
            Some(h) if h.api_version == "networking.k8s.io/v1" && h.kind == "NetworkPolicy" => {
                Flavor::Kubernetes
            }
            Some(h) if h.kind == "CiliumClusterwideNetworkPolicy" => {
                return Err(PolicyError {
                    origin,
                    message: "CiliumClusterwideNetworkPolicy is not evaluated: the advisor checks one namespace's policies".into(),
                });
            }
            _ => {
                IgnoredAny::deserialize(doc).map_err(|e| error(file, line, e))?;
                continue;
            }
        };
        let doc = PolicyDoc::deserialize(doc).map_err(|e| error(file, line, e))?;
        let ns = doc
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| namespace.to_owned());
        let specs: Vec<SpecDoc> = doc
            .spec
            .into_iter()
            .chain(doc.specs.unwrap_or_default())
            .collect();
        if specs.is_empty() {
            return Err(PolicyError {
                origin,
                message: "no spec".into(),
            });
        }
        for (n, spec) in specs.into_iter().enumerate() {
            let name = if n == 0 {
                doc.metadata.name.clone()
            } else {
                format!("{}[{n}]", doc.metadata.name)
            };
            let policy =
                convert(flavor, name, ns.clone(), origin.clone(), spec).map_err(|message| {
                    PolicyError {
                        origin: origin.clone(),
                        message,
                    }
                })?;
            out.push(policy);
        }
    }
    Ok(out)
}

fn error(file: &str, first_line: usize, e: serde_yaml_ng::Error) -> PolicyError {
    let e = crate::common::yaml::YamlError::from(e);
    let line = e.position.map_or(first_line, |(l, _)| l);
    PolicyError {
        origin: format!("{file}:{line}"),
        message: e.message,
    }
}

/// The 1-based line each YAML document starts on.
fn document_lines(text: &str) -> Vec<usize> {
    let mut starts = vec![1];
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("---") && i > 0 {
            starts.push(i + 2);
        }
    }
    if text.starts_with("---") {
        starts.remove(0);
        starts.insert(0, 2);
    }
    starts
}

fn selector(doc: &LabelSelector, what: &str) -> Result<Selector, String> {
    let mut expressions = Vec::new();
    for r in &doc.match_expressions {
        let op = match r.operator.as_str() {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => {
                return Err(format!(
                    "{what}.matchExpressions: operator {other:?} is not In, NotIn, Exists or DoesNotExist"
                ));
            }
        };
        expressions.push((r.key.clone(), op, r.values.clone()));
    }
    Ok(Selector {
        labels: doc
            .match_labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        expressions,
    })
}

impl Selector {
    /// Whether the selector names the namespace label itself.
    fn names_namespace(&self) -> bool {
        let is_ns = |k: &str| k.rsplit_once(':').map_or(k, |(_, k)| k) == NAMESPACE_KEY;
        self.labels.iter().any(|(k, _)| is_ns(k)) || self.expressions.iter().any(|(k, ..)| is_ns(k))
    }
}

fn net(text: &str, what: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{what}: {text:?} is not an address block"))
}

fn names(docs: &[FqdnDoc], what: &str) -> Result<Vec<NameMatch>, String> {
    docs.iter()
        .map(|d| match (&d.match_name, &d.match_pattern) {
            (Some(n), None) => Ok(NameMatch::Name(
                n.trim_end_matches('.').to_ascii_lowercase(),
            )),
            (None, Some(p)) => Ok(NameMatch::Pattern(
                p.trim_end_matches('.').to_ascii_lowercase(),
            )),
            _ => Err(format!(
                "{what}: each entry needs exactly one of matchName and matchPattern"
            )),
        })
        .collect()
}

fn protocol(
    name: Option<&str>,
    default: Option<L4Protocol>,
    what: &str,
) -> Result<Option<L4Protocol>, String> {
    match name {
        None => Ok(default),
        Some("TCP") => Ok(Some(L4Protocol::Tcp)),
        Some("UDP") => Ok(Some(L4Protocol::Udp)),
        Some("SCTP") => Ok(Some(L4Protocol::Sctp)),
        Some("ANY") => Ok(None),
        Some(other) => Err(format!(
            "{what}: protocol {other:?} is not TCP, UDP, SCTP or ANY"
        )),
    }
}

fn port(
    doc: &PortDoc,
    default_protocol: Option<L4Protocol>,
    what: &str,
) -> Result<PortMatch, String> {
    let number = match &doc.port {
        None => 0,
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::Text(t)) => t.parse::<i64>().map_err(|_| {
            format!(
                "{what}: named port {t:?} cannot be evaluated (flows carry numbers); use the number"
            )
        })?,
    };
    let from = u16::try_from(number).map_err(|_| format!("{what}: port {number} out of range"))?;
    let to = match doc.end_port {
        None if from == 0 => u16::MAX,
        None => from,
        Some(e) => u16::try_from(e)
            .ok()
            .filter(|e| *e >= from)
            .ok_or_else(|| format!("{what}: endPort {e} below port {from} or out of range"))?,
    };
    Ok(PortMatch {
        from,
        to,
        protocol: protocol(doc.protocol.as_deref(), default_protocol, what)?,
        dns: None,
    })
}

fn convert(
    flavor: Flavor,
    name: String,
    namespace: String,
    origin: String,
    spec: SpecDoc,
) -> Result<Policy, String> {
    match flavor {
        Flavor::Cilium => cilium(name, namespace, origin, spec),
        Flavor::Kubernetes => kubernetes(name, namespace, origin, spec),
    }
}

fn cilium(
    name: String,
    namespace: String,
    origin: String,
    spec: SpecDoc,
) -> Result<Policy, String> {
    if spec.pod_selector.is_some() || spec.policy_types.is_some() {
        return Err("podSelector and policyTypes belong to a Kubernetes NetworkPolicy".into());
    }
    let subject = spec
        .endpoint_selector
        .as_ref()
        .ok_or("spec.endpointSelector is required (nodeSelector policies are not evaluated)")?;
    let subject = selector(subject, "spec.endpointSelector")?;
    let rules =
        |docs: &Option<Vec<RuleDoc>>, what: &str, deny: bool| -> Result<Vec<Rule>, String> {
            docs.iter()
                .flatten()
                .enumerate()
                .map(|(i, r)| cilium_rule(r, &format!("spec.{what}[{i}]"), &namespace, deny))
                .collect()
        };
    let dd = spec.enable_default_deny.unwrap_or_default();
    let has = |v: &Option<Vec<RuleDoc>>| v.as_ref().is_some_and(|v| !v.is_empty());
    let ingress = Rules {
        default_deny: (has(&spec.ingress) || has(&spec.ingress_deny)) && dd.ingress != Some(false),
        allow: rules(&spec.ingress, "ingress", false)?,
        deny: rules(&spec.ingress_deny, "ingressDeny", true)?,
    };
    let egress = Rules {
        default_deny: (has(&spec.egress) || has(&spec.egress_deny)) && dd.egress != Some(false),
        allow: rules(&spec.egress, "egress", false)?,
        deny: rules(&spec.egress_deny, "egressDeny", true)?,
    };
    Ok(Policy {
        flavor: Flavor::Cilium,
        name,
        namespace,
        origin,
        subject,
        ingress,
        egress,
    })
}

fn cilium_rule(doc: &RuleDoc, what: &str, namespace: &str, deny: bool) -> Result<Rule, String> {
    if doc.to.is_some() || doc.ports.is_some() {
        return Err(format!(
            "{what}: to/from and ports belong to a Kubernetes NetworkPolicy (Cilium: toEndpoints, toPorts)"
        ));
    }
    let mut peers = Vec::new();
    let mut any_peer_field = false;
    if let Some(eps) = &doc.endpoints {
        any_peer_field = true;
        for (i, e) in eps.iter().enumerate() {
            let pods = selector(e, &format!("{what}.endpoints[{i}]"))?;
            let namespace = (!pods.names_namespace()).then(|| namespace.to_owned());
            peers.push(PeerMatch::Endpoints {
                pods,
                namespace,
                namespaces: None,
            });
        }
    }
    if let Some(entities) = &doc.entities {
        any_peer_field = true;
        for e in entities {
            let entity = Entity::parse(e).ok_or_else(|| format!("{what}: unknown entity {e:?}"))?;
            peers.push(PeerMatch::Entity(entity));
        }
    }
    for c in doc.cidr.iter().flatten() {
        any_peer_field = true;
        peers.push(PeerMatch::Cidr {
            net: net(c, what)?,
            except: Vec::new(),
        });
    }
    for c in doc.cidr_set.iter().flatten() {
        any_peer_field = true;
        peers.push(PeerMatch::Cidr {
            net: net(&c.cidr, what)?,
            except: c
                .except
                .iter()
                .map(|e| net(e, what))
                .collect::<Result<_, _>>()?,
        });
    }
    if let Some(f) = &doc.fqdns {
        if deny {
            return Err(format!("{what}: toFQDNs is not allowed in deny rules"));
        }
        any_peer_field = true;
        peers.extend(
            names(f, &format!("{what}.toFQDNs"))?
                .into_iter()
                .map(PeerMatch::Fqdn),
        );
    }
    let ports = match &doc.to_ports {
        None => None,
        Some(rules) => {
            let mut out = Vec::new();
            for (i, r) in rules.iter().enumerate() {
                let w = format!("{what}.toPorts[{i}]");
                let dns = match &r.rules {
                    Some(L7Doc { dns: Some(d) }) => Some(names(d, &format!("{w}.rules.dns"))?),
                    _ => None,
                };
                if r.ports.is_empty() {
                    out.push(PortMatch {
                        from: 0,
                        to: u16::MAX,
                        protocol: None,
                        dns: dns.clone(),
                    });
                }
                for p in &r.ports {
                    let mut m = port(p, None, &w)?;
                    m.dns = dns.clone();
                    out.push(m);
                }
            }
            Some(out)
        }
    };
    // A rule with ports and no peer field allows the ports to any peer; a rule with nothing
    // (`{}`) allows nothing and only turns default deny on.
    let peers = if !any_peer_field && ports.is_some() {
        None
    } else {
        Some(peers)
    };
    Ok(Rule { peers, ports })
}

fn kubernetes(
    name: String,
    namespace: String,
    origin: String,
    spec: SpecDoc,
) -> Result<Policy, String> {
    if spec.endpoint_selector.is_some()
        || spec.ingress_deny.is_some()
        || spec.egress_deny.is_some()
        || spec.enable_default_deny.is_some()
    {
        return Err("endpointSelector, ingressDeny, egressDeny and enableDefaultDeny belong to a CiliumNetworkPolicy".into());
    }
    let subject = selector(
        spec.pod_selector
            .as_ref()
            .ok_or("spec.podSelector is required")?,
        "spec.podSelector",
    )?;
    let types: Vec<String> = match &spec.policy_types {
        Some(t) => t.clone(),
        None => {
            let mut t = vec!["Ingress".to_owned()];
            if spec.egress.is_some() {
                t.push("Egress".into());
            }
            t
        }
    };
    for t in &types {
        if t != "Ingress" && t != "Egress" {
            return Err(format!("spec.policyTypes: {t:?} is not Ingress or Egress"));
        }
    }
    let rules = |docs: &Option<Vec<RuleDoc>>, what: &str| -> Result<Vec<Rule>, String> {
        docs.iter()
            .flatten()
            .enumerate()
            .map(|(i, r)| kubernetes_rule(r, &format!("spec.{what}[{i}]"), &namespace))
            .collect()
    };
    Ok(Policy {
        flavor: Flavor::Kubernetes,
        subject,
        ingress: Rules {
            default_deny: types.iter().any(|t| t == "Ingress"),
            allow: rules(&spec.ingress, "ingress")?,
            deny: Vec::new(),
        },
        egress: Rules {
            default_deny: types.iter().any(|t| t == "Egress"),
            allow: rules(&spec.egress, "egress")?,
            deny: Vec::new(),
        },
        name,
        namespace,
        origin,
    })
}

fn kubernetes_rule(doc: &RuleDoc, what: &str, namespace: &str) -> Result<Rule, String> {
    if doc.endpoints.is_some()
        || doc.entities.is_some()
        || doc.cidr.is_some()
        || doc.cidr_set.is_some()
        || doc.fqdns.is_some()
        || doc.to_ports.is_some()
    {
        return Err(format!(
            "{what}: toEndpoints, toEntities, toCIDR, toCIDRSet, toFQDNs and toPorts belong to a CiliumNetworkPolicy (Kubernetes: to/from, ports)"
        ));
    }
    let peers = match &doc.to {
        None => None,
        Some(p) if p.is_empty() => None,
        Some(list) => {
            let mut out = Vec::new();
            for (i, p) in list.iter().enumerate() {
                let w = format!("{what}.to[{i}]");
                match (&p.pod_selector, &p.namespace_selector, &p.ip_block) {
                    (None, None, Some(b)) => out.push(PeerMatch::Cidr {
                        net: net(&b.cidr, &w)?,
                        except: b
                            .except
                            .iter()
                            .map(|e| net(e, &w))
                            .collect::<Result<_, _>>()?,
                    }),
                    (pods, namespaces, None) if pods.is_some() || namespaces.is_some() => {
                        out.push(PeerMatch::Endpoints {
                            pods: match pods {
                                Some(s) => selector(s, &format!("{w}.podSelector"))?,
                                None => Selector::default(),
                            },
                            namespace: namespaces.is_none().then(|| namespace.to_owned()),
                            namespaces: namespaces
                                .as_ref()
                                .map(|s| selector(s, &format!("{w}.namespaceSelector")))
                                .transpose()?,
                        })
                    }
                    _ => {
                        return Err(format!(
                            "{w}: ipBlock stands alone; podSelector/namespaceSelector need no ipBlock"
                        ));
                    }
                }
            }
            Some(out)
        }
    };
    let ports = match &doc.ports {
        None => None,
        Some(p) if p.is_empty() => None,
        Some(list) => Some(
            list.iter()
                .enumerate()
                .map(|(i, p)| port(p, Some(L4Protocol::Tcp), &format!("{what}.ports[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
    };
    Ok(Rule { peers, ports })
}

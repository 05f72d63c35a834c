//! Detection: the rule pack ([`rules`]), its templates ([`template`]), the detectors
//! ([`policy_denied`]) and the engine that runs them over the flow stream ([`engine`]).

pub mod coverage;
pub mod dns_exfil;
pub mod engine;
pub mod new_destination;
pub mod policy_denied;
pub mod rules;
pub mod scan;
pub mod segmentation;
pub mod template;
pub mod volume_spike;

/// Helpers the detectors' unit tests share: rules from a pack, flows through the real decoder.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use prost::Message;

    use crate::detect::rules::{Rule, load_text};
    use crate::flow::wire::Decoder;
    use crate::flow::{Event, FlowEvent};
    use crate::proto::observer::GetFlowsResponse;
    use crate::proto::observer::get_flows_response::ResponseTypes;

    /// The rule `name` of `pack` (rule-file text); panics if the pack lacks it.
    pub fn rule_in(pack: &str, name: &str) -> Arc<Rule> {
        let rule = load_text(pack, "pack")
            .unwrap()
            .into_iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no rule {name} in the pack"));
        Arc::new(rule)
    }

    /// The rule `name` of the default pack.
    pub fn default_rule(name: &str) -> Arc<Rule> {
        rule_in(crate::commands::DEFAULT_RULES, name)
    }

    /// `flow` as the service sees it: encoded in a response and decoded by the wire decoder.
    pub fn flow_event(decoder: &mut Decoder, flow: crate::proto::flow::Flow) -> FlowEvent {
        let bytes = GetFlowsResponse {
            node_name: flow.node_name.clone(),
            time: flow.time,
            response_types: Some(ResponseTypes::Flow(flow)),
        }
        .encode_to_vec();
        match decoder.decode_response(&bytes).unwrap().unwrap() {
            Event::Flow(f) => f,
            other => panic!("{other:?}"),
        }
    }
}

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

//! `new_destination`: a namespace's first connection to a destination it has not used in its
//! history, once it has been learned from.

use super::*;

/// Parameters of the `new_destination` detector.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDestinationParams {
    /// How long a namespace is only learned from before anything new alerts.
    pub learning: Duration,
    /// How long a destination stays known after it was last seen.
    pub history: Duration,
    /// Destinations never reported; `*` matches any run of characters.
    pub allow: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawNewDestination {
    learning: Option<String>,
    history: Option<String>,
    allow: Vec<String>,
}

pub(super) fn parse(raw: Option<Value>, report: &mut Report<'_>) -> NewDestinationParams {
    let p: RawNewDestination = report.params(raw);
    let history = report.duration(
        "params.history",
        p.history.as_deref(),
        Duration::from_secs(7 * 86_400),
    );
    if history < Duration::from_secs(3600) {
        report.problem(
            "params.history",
            format!("{history:?} is shorter than an hour"),
        );
    }
    NewDestinationParams {
        learning: report.duration(
            "params.learning",
            p.learning.as_deref(),
            Duration::from_secs(86_400),
        ),
        history,
        allow: p.allow,
    }
}

impl Spec for NewDestinationParams {
    fn evidence(&self) -> Evidence {
        Evidence::egress(Some("FORWARDED"))
    }
}

//! `exfilwatch check`: validates a configuration and its rule pack, naming every problem.

use std::path::Path;

use super::{EXIT_CONFIG, Outcome};
use crate::api;
use crate::config::Config;
use crate::rules;

/// `exfilwatch check`: validates the configuration and the rule pack.
pub(super) fn check(config_path: &Path) -> Outcome {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => return Outcome::fail(EXIT_CONFIG, e),
    };
    if let Err(e) = api::tokens(&config.api) {
        return Outcome::fail(EXIT_CONFIG, format!("{}: {e}", config_path.display()));
    }
    match rules::load_dir(&config.rules_dir) {
        Err(e) => Outcome::fail(EXIT_CONFIG, e),
        Ok(rules) => {
            let enabled = rules.iter().filter(|r| r.enabled).count();
            Outcome {
                exit_code: 0,
                output: format!(
                    "{}: ok (hubble {} watching {:?}; {} rule(s), {enabled} enabled, from {})\n",
                    config_path.display(),
                    config.hubble.address,
                    config.hubble.namespaces,
                    rules.len(),
                    config.rules_dir.display()
                ),
            }
        }
    }
}

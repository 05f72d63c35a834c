//! `exfilwatch policy suggest` and `exfilwatch policy check`: the policy advisor over the
//! flow store the configuration names, opened read-only (a running service's directory can be
//! read beside it).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{EXIT_CONFIG, EXIT_NO_INPUT, EXIT_STORE, Outcome, OutputFormat};
use crate::common::clock::now_ns;
use crate::config::Config;
use crate::flowstore::FlowStore;
use crate::policy::{self, Flavor};
use crate::rules;

/// Exit code of `policy check` when the policies would drop traffic that flowed.
pub const EXIT_WOULD_DROP: u8 = 1;

/// What both subcommands read.
pub struct Window<'a> {
    pub config: &'a Path,
    pub namespace: &'a str,
    pub since: Duration,
}

/// The configuration, the namespace's connections and the window they cover.
type History = (Config, Vec<crate::flowstore::Connection>, (i64, i64));

fn connections(w: &Window<'_>) -> Result<History, Outcome> {
    let config = Config::load(w.config).map_err(|e| Outcome::fail(EXIT_CONFIG, e))?;
    let store = FlowStore::open_read_only(config.flows.clone())
        .map_err(|e| Outcome::fail(EXIT_STORE, format!("flow store: {e}")))?;
    let until = now_ns();
    let since = until.saturating_sub(i64::try_from(w.since.as_nanos()).unwrap_or(i64::MAX));
    let found = store
        .connections(w.namespace, since, until.saturating_add(1))
        .map_err(|e| Outcome::fail(EXIT_STORE, format!("flow store: {e}")))?;
    Ok((config, found, (since, until)))
}

/// `policy suggest`.
pub fn suggest(w: &Window<'_>, flavor: Flavor, format: OutputFormat) -> Outcome {
    let (config, found, window) = match connections(w) {
        Ok(x) => x,
        Err(o) => return o,
    };
    let rules = match rules::load_dir(&config.rules_dir) {
        Ok(r) => r,
        Err(e) => return Outcome::fail(EXIT_CONFIG, e),
    };
    let s = policy::suggest(
        &found,
        w.namespace,
        flavor,
        &policy::segmentation(&rules, w.namespace),
        window,
    );
    let output = match format {
        OutputFormat::Json => serde_json::to_string_pretty(&s).unwrap_or_default() + "\n",
        OutputFormat::Table => {
            let mut out = s.yaml.clone();
            for l in &s.left_out {
                out.push_str(&format!(
                    "# left out: {} -> {} {}: {} flows: {}\n",
                    crate::common::text::printable(&l.source),
                    crate::common::text::printable(&l.destination),
                    l.port,
                    l.flows,
                    l.reason
                ));
            }
            out
        }
    };
    Outcome {
        exit_code: 0,
        output,
    }
}

/// `policy check`.
pub fn check(w: &Window<'_>, files: &[PathBuf], format: OutputFormat) -> Outcome {
    let mut policies = Vec::new();
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => return Outcome::fail(EXIT_NO_INPUT, format!("{}: {e}", file.display())),
        };
        match policy::parse(&text, &file.display().to_string(), w.namespace) {
            Ok(p) => policies.extend(p),
            Err(e) => return Outcome::fail(EXIT_CONFIG, e),
        }
    }
    let (_, found, (since, until)) = match connections(w) {
        Ok(x) => x,
        Err(o) => return o,
    };
    let report = policy::check(&policies, &found, w.namespace, since, until);
    let output = match format {
        OutputFormat::Json => serde_json::to_string_pretty(&report).unwrap_or_default() + "\n",
        OutputFormat::Table => policy::report_text(&report),
    };
    Outcome {
        exit_code: if report.drops_traffic() {
            EXIT_WOULD_DROP
        } else {
            0
        },
        output,
    }
}

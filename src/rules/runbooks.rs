//! The runbooks of the default pack's alerts (docs/runbooks/), built into the binary so the
//! service serves them itself and every alert's `runbook_url` works in any deployment.

/// (alert name, Markdown) for every alert with a runbook.
pub const RUNBOOKS: [(&str, &str); 9] = [
    (
        "TrainingPodUnexpectedEgress",
        include_str!("../../docs/runbooks/TrainingPodUnexpectedEgress.md"),
    ),
    (
        "TrainingDataEgressVolumeSpike",
        include_str!("../../docs/runbooks/TrainingDataEgressVolumeSpike.md"),
    ),
    (
        "TrainingPodScanning",
        include_str!("../../docs/runbooks/TrainingPodScanning.md"),
    ),
    (
        "TrainingPodDnsExfiltration",
        include_str!("../../docs/runbooks/TrainingPodDnsExfiltration.md"),
    ),
    (
        "TrainingNamespaceSegmentation",
        include_str!("../../docs/runbooks/TrainingNamespaceSegmentation.md"),
    ),
    (
        "TrainingPodNewDestination",
        include_str!("../../docs/runbooks/TrainingPodNewDestination.md"),
    ),
    (
        "ExfilwatchCoverageGap",
        include_str!("../../docs/runbooks/ExfilwatchCoverageGap.md"),
    ),
    (
        "ExfilwatchBlind",
        include_str!("../../docs/runbooks/ExfilwatchBlind.md"),
    ),
    (
        "ExfilwatchAlertFlood",
        include_str!("../../docs/runbooks/ExfilwatchAlertFlood.md"),
    ),
];

/// The index: every runbook, and how to quarantine a pod.
pub const INDEX: &str = include_str!("../../docs/runbooks/README.md");
/// The quarantine policy the runbooks apply.
pub const QUARANTINE: &str = include_str!("../../docs/runbooks/quarantine.yaml");

/// A file of the runbooks by the name it is served under: `ALERTNAME` (or `ALERTNAME.md`),
/// `quarantine.yaml`, or the empty name / `README.md` for the index.
pub fn file(name: &str) -> Option<&'static str> {
    match name {
        "" | "README.md" => Some(INDEX),
        "quarantine.yaml" => Some(QUARANTINE),
        _ => {
            let alert = name.strip_suffix(".md").unwrap_or(name);
            RUNBOOKS.iter().find(|(n, _)| *n == alert).map(|(_, t)| *t)
        }
    }
}

/// The link to `alert`'s runbook under `external_url`, when it has one.
pub fn link(external_url: &str, alert: &str) -> Option<String> {
    file(alert)?;
    (!alert.is_empty() && alert != "README.md")
        .then(|| format!("{}/runbooks/{alert}", external_url.trim_end_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_alert_has_a_runbook_that_names_its_technique() {
        let mut names: Vec<String> = crate::rules::default_pack()
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        names.push("ExfilwatchBlind".into());
        names.push(crate::alert::rollup::ALERTNAME.into());
        for name in names {
            let text = file(&name).unwrap_or_else(|| panic!("no runbook for {name}"));
            assert!(text.starts_with(&format!("# {name}\n")), "{name}");
            for section in [
                "## What it means",
                "## Contain it",
                "## When it is a false alarm",
            ] {
                assert!(text.contains(section), "{name}: {section}");
            }
            assert!(text.contains("MITRE ATT&CK"), "{name}");
            assert!(INDEX.contains(&format!("[{name}.md]({name}.md)")), "{name}");
        }
        assert_eq!(
            link("https://exfilwatch.example/", "TrainingPodScanning").as_deref(),
            Some("https://exfilwatch.example/runbooks/TrainingPodScanning")
        );
        assert_eq!(link("http://x", "NoSuchAlert"), None);
        assert_eq!(link("http://x", ""), None);
    }
}

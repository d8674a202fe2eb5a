//! `docs/metrics.md`: every metric the services serve, read off their `/metrics` pages, so the
//! document is what the services serve and a test can tell when it is not.

use std::collections::{BTreeMap, BTreeSet};

/// One metric family as a `/metrics` page describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Family {
    pub kind: String,
    pub help: String,
    /// Label names on its samples, `le` and `quantile` aside.
    pub labels: BTreeSet<String>,
    /// The services that serve it.
    pub services: BTreeSet<String>,
}

/// What one line of a `/metrics` page says about a family.
enum Line<'a> {
    Help(&'a str),
    Type(&'a str),
    Labels(BTreeSet<String>),
}

/// The families of `sluice_*` metrics on one `/metrics` page, by name, served by `service`.
pub fn parse(service: &str, text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        let (name, said) = if let Some((name, help)) =
            line.strip_prefix("# HELP ").and_then(|r| r.split_once(' '))
        {
            (name.to_owned(), Line::Help(help))
        } else if let Some((name, kind)) =
            line.strip_prefix("# TYPE ").and_then(|r| r.split_once(' '))
        {
            (name.to_owned(), Line::Type(kind))
        } else if line.starts_with('#') || line.is_empty() {
            continue;
        } else {
            let Some(sample) = crate::scrape::parse_line(line) else {
                continue;
            };
            // A histogram's samples carry its name with a suffix; its TYPE line came first.
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .filter_map(|suffix| sample.name.strip_suffix(suffix))
                .find(|base| families.get(*base).is_some_and(|f| f.kind == "histogram"))
                .map(str::to_owned);
            let labels = sample
                .labels
                .into_keys()
                .filter(|l| l != "le" && l != "quantile")
                .collect();
            let name = base.unwrap_or(sample.name);
            (name, Line::Labels(labels))
        };
        if !name.starts_with("sluice_") {
            continue;
        }
        let family = families.entry(name).or_default();
        family.services.insert(service.to_owned());
        match said {
            Line::Help(help) => family.help = help.replace("\\\\", "\\"),
            Line::Type(kind) => family.kind = kind.to_owned(),
            Line::Labels(labels) => family.labels.extend(labels),
        }
    }
    families
}

/// Merges the pages of several services.
pub fn merge(
    pages: impl IntoIterator<Item = BTreeMap<String, Family>>,
) -> BTreeMap<String, Family> {
    let mut all: BTreeMap<String, Family> = BTreeMap::new();
    for page in pages {
        for (name, family) in page {
            let entry = all.entry(name).or_insert_with(|| Family {
                kind: family.kind.clone(),
                help: family.help.clone(),
                ..Default::default()
            });
            entry.labels.extend(family.labels);
            entry.services.extend(family.services);
        }
    }
    all
}

/// The generated part of `docs/metrics.md`: one table row per metric.
pub fn render(families: &BTreeMap<String, Family>) -> String {
    let mut out = String::from(
        "| Metric | Type | Labels | Served by | What it counts |\n|---|---|---|---|---|\n",
    );
    for (name, family) in families {
        let labels: Vec<String> = family.labels.iter().map(|l| format!("`{l}`")).collect();
        let services: Vec<&str> = family.services.iter().map(String::as_str).collect();
        out.push_str(&format!(
            "| `{name}` | {} | {} | {} | {} |\n",
            family.kind,
            labels.join(", "),
            services.join(", "),
            family.help.replace('|', "\\|"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_read_with_their_labels_and_histograms_folded() {
        let page = "# HELP sluice_a_seconds Latency\n# TYPE sluice_a_seconds histogram\n\
                    sluice_a_seconds_bucket{method=\"Send\",le=\"0.1\"} 1\n\
                    sluice_a_seconds_sum{method=\"Send\"} 0.1\nsluice_a_seconds_count{method=\"Send\"} 1\n\
                    # HELP sluice_b_total Things, \\\\ counted\n# TYPE sluice_b_total counter\n\
                    sluice_b_total{queue=\"a,\\\"b\",code=\"OK\"} 3\n\
                    # HELP process_cpu CPU\n# TYPE process_cpu gauge\nprocess_cpu 1\n";
        let families = parse("frontend", page);
        assert_eq!(families.len(), 2, "{families:?}");
        let a = &families["sluice_a_seconds"];
        assert_eq!(a.kind, "histogram");
        assert_eq!(a.labels.iter().collect::<Vec<_>>(), ["method"]);
        let b = &families["sluice_b_total"];
        assert_eq!(b.help, "Things, \\ counted");
        assert_eq!(b.labels.iter().collect::<Vec<_>>(), ["code", "queue"]);
    }
}

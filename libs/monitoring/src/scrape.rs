//! Samples read off a Prometheus text page, for tools that read the services' `/metrics`
//! directly (`sluice top`) rather than through Prometheus.

use std::collections::BTreeMap;

/// One sample: a series and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).map(String::as_str)
    }
}

/// Every sample on `page`; lines it cannot read are skipped.
pub fn parse(page: &str) -> Vec<Sample> {
    page.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

/// One sample line (not a comment).
pub(crate) fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let (labels, rest) = match line[name_end..].strip_prefix('{') {
        Some(rest) => {
            let (labels, rest) = split_labels(rest)?;
            (labels, rest)
        }
        None => (BTreeMap::new(), &line[name_end..]),
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The labels up to the closing brace, and what follows it.
fn split_labels(text: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (name, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i + 1,
                c => value.push(c),
            }
        };
        labels.insert(name.trim().to_owned(), value);
        rest = &after[end..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_read_with_escaped_labels_and_infinities() {
        let page = "# HELP x y\nsluice_a_total{queue=\"a,\\\"b\\\"\",code=\"OK\"} 3\n\
                    sluice_b_bucket{le=\"+Inf\"} 7\nsluice_c 1.5\n";
        let samples = parse(page);
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0].label("queue"), Some("a,\"b\""));
        assert_eq!(samples[0].label("code"), Some("OK"));
        assert_eq!(samples[0].value, 3.0);
        assert_eq!(samples[1].label("le"), Some("+Inf"));
        assert_eq!(samples[2].name, "sluice_c");
        assert!(samples[2].labels.is_empty());
    }
}

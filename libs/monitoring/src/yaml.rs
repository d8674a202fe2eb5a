//! The little YAML the rule files need: maps, lists and strings. Every string is written
//! double-quoted with JSON's escapes, which YAML reads the same way, so no value can be taken
//! for a number, a boolean or a comment.

/// A YAML value.
pub(crate) enum Yaml {
    Str(String),
    List(Vec<Yaml>),
    Map(Vec<(String, Yaml)>),
}

pub(crate) fn s(value: impl Into<String>) -> Yaml {
    Yaml::Str(value.into())
}

pub(crate) fn map(entries: impl IntoIterator<Item = (&'static str, Yaml)>) -> Yaml {
    Yaml::Map(
        entries
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value))
            .collect(),
    )
}

impl Yaml {
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, 0);
        out
    }

    fn write(&self, out: &mut String, indent: usize) {
        match self {
            Yaml::Str(text) => {
                out.push_str(&quote(text));
                out.push('\n');
            }
            Yaml::List(items) if items.is_empty() => out.push_str("[]\n"),
            Yaml::Map(entries) if entries.is_empty() => out.push_str("{}\n"),
            Yaml::List(items) => {
                for item in items {
                    out.push_str(&" ".repeat(indent));
                    out.push_str("- ");
                    match item {
                        Yaml::Map(entries) if !entries.is_empty() => {
                            // The first entry goes on the dash's line, the rest under it.
                            write_entries(out, entries, indent + 2, true);
                        }
                        Yaml::Str(_) => item.write(out, indent + 2),
                        _ => {
                            out.push('\n');
                            item.write(out, indent + 2);
                        }
                    }
                }
            }
            Yaml::Map(entries) => write_entries(out, entries, indent, false),
        }
    }
}

fn write_entries(out: &mut String, entries: &[(String, Yaml)], indent: usize, inline_first: bool) {
    for (i, (key, value)) in entries.iter().enumerate() {
        if i > 0 || !inline_first {
            out.push_str(&" ".repeat(indent));
        }
        out.push_str(key);
        out.push(':');
        match value {
            Yaml::Str(_) => {
                out.push(' ');
                value.write(out, indent);
            }
            Yaml::List(items) if items.is_empty() => out.push_str(" []\n"),
            Yaml::Map(inner) if inner.is_empty() => out.push_str(" {}\n"),
            Yaml::List(_) => {
                out.push('\n');
                value.write(out, indent);
            }
            Yaml::Map(_) => {
                out.push('\n');
                value.write(out, indent + 2);
            }
        }
    }
}

fn quote(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_maps_and_lists_are_indented_and_strings_quoted() {
        let doc = map([
            (
                "groups",
                Yaml::List(vec![map([
                    ("name", s("a")),
                    (
                        "rules",
                        Yaml::List(vec![map([
                            ("expr", s("up == 0\n")),
                            ("labels", map([("severity", s("critical"))])),
                        ])]),
                    ),
                ])]),
            ),
            ("empty", Yaml::List(vec![])),
        ]);
        assert_eq!(
            doc.render(),
            "groups:\n- name: \"a\"\n  rules:\n  - expr: \"up == 0\\n\"\n    labels:\n      severity: \"critical\"\nempty: []\n"
        );
    }
}

//! A client of Prometheus's HTTP API, enough for tests: instant queries, label values and the
//! alerts with their state.

use std::net::SocketAddr;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::http_get;

pub struct Prometheus {
    pub addr: SocketAddr,
}

/// One alert as Prometheus reports it.
#[derive(Debug, Clone)]
pub struct ActiveAlert {
    pub name: String,
    /// `pending` or `firing`.
    pub state: String,
    pub labels: serde_json::Map<String, Value>,
}

/// `text` percent-encoded for a URL's query string.
pub fn encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

impl Prometheus {
    fn get(&self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = http_get(self.addr, path)?;
        let value: Value = serde_json::from_str(&body)
            .with_context(|| format!("Prometheus answered {path} with {status}: {body}"))?;
        if value["status"] != "success" {
            bail!("Prometheus refused {path}: {body}");
        }
        Ok(value["data"].clone())
    }

    /// The series an instant query returns now (an error if Prometheus cannot parse it).
    pub fn query(&self, expr: &str) -> anyhow::Result<Vec<Value>> {
        let data = self.get(&format!("/api/v1/query?query={}", encode(expr)))?;
        Ok(match &data["result"] {
            Value::Array(series) => series.clone(),
            // A scalar or a string: one value.
            Value::Null => Vec::new(),
            other => vec![other.clone()],
        })
    }

    /// The values of `label` on the series `matcher` selects (Grafana's `label_values`).
    pub fn label_values(&self, label: &str, matcher: &str) -> anyhow::Result<Vec<String>> {
        let data = self.get(&format!(
            "/api/v1/label/{label}/values?match[]={}",
            encode(matcher)
        ))?;
        Ok(data
            .as_array()
            .map(|values| {
                values
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The alerts pending or firing now.
    pub fn alerts(&self) -> anyhow::Result<Vec<ActiveAlert>> {
        let data = self.get("/api/v1/alerts")?;
        Ok(data["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|alert| {
                let labels = alert["labels"].as_object().cloned().unwrap_or_default();
                ActiveAlert {
                    name: labels
                        .get("alertname")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    state: alert["state"].as_str().unwrap_or_default().to_owned(),
                    labels,
                }
            })
            .collect())
    }
}

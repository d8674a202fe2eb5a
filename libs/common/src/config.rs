//! How every Sluice binary reads its settings (DESIGN section 10): built-in defaults, then a TOML
//! file, then `SLUICE_*` environment variables, then command-line flags, each overriding the one
//! before.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::grpc::Drain;

/// Loads settings of type `T`. Every top-level field of `defaults` can come from the file
/// (same name), from `SLUICE_<NAME>` in upper case, or from `flags`: a serializable struct whose
/// `None` fields and empty lists mean "not given".
pub fn load<T: Serialize + DeserializeOwned>(
    defaults: &T,
    file: Option<&Path>,
    flags: &impl Serialize,
) -> anyhow::Result<T> {
    let mut figment = Figment::from(Serialized::defaults(defaults));
    if let Some(path) = file {
        anyhow::ensure!(
            path.exists(),
            "config file {} does not exist",
            path.display()
        );
        figment = figment.merge(Toml::file(path));
    }
    let keys: Vec<String> = match serde_json::to_value(defaults)? {
        serde_json::Value::Object(fields) => fields.keys().cloned().collect(),
        _ => anyhow::bail!("settings must be a struct"),
    };
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    figment = figment.merge(Env::prefixed("SLUICE_").only(&keys));
    if let serde_json::Value::Object(given) = serde_json::to_value(flags)? {
        for (key, value) in given {
            let unset = value.is_null() || value.as_array().is_some_and(Vec::is_empty);
            if !unset {
                figment = figment.merge((key, value));
            }
        }
    }
    figment
        .extract()
        .map_err(|err| anyhow::anyhow!("bad configuration: {err}"))
}

/// The settings every service has, flattened into each service's own (`FrontendOpts`,
/// `MetadataOpts`, `NodeOpts`, `ManagerOpts`, `StandaloneOpts`), so they are named, documented
/// and defaulted in one place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceOpts {
    /// Where the service's gRPC API listens.
    pub grpc_addr: SocketAddr,
    /// Where `/metrics`, `/healthz` and `/readyz` answer.
    pub admin_addr: SocketAddr,
    /// The URL other tiers reach this process at; default: `http://` + the bound gRPC address.
    #[serde(default)]
    pub advertise_url: Option<String>,
    /// Where traces go over OTLP/gRPC; none exports nothing.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// Seconds the service goes on serving after SIGTERM while it reports itself not ready, so
    /// a load balancer stops sending it requests first; 0 stops accepting at once.
    #[serde(default)]
    pub drain_seconds: u64,
    /// PEM certificate chain this process serves on its gRPC port and presents when it calls
    /// other services; reloaded when the file changes.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// PEM certificates of the deployment's CA: the other services' certificates chain to it.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// Serve and call in plain text, without TLS. Never in production: anyone who can reach a
    /// port can read and change what passes through it.
    #[serde(default)]
    pub insecure: bool,
    /// How many queues get a `queue` label of their own on this process's metrics; the rest
    /// share `queue="_other"`, so the number of series stays bounded however many queues exist.
    #[serde(default = "default_queue_labels")]
    pub metrics_queue_labels: usize,
}

fn default_queue_labels() -> usize {
    sluice_api::metrics::DEFAULT_QUEUE_LABELS
}

impl ServiceOpts {
    /// Listening on `grpc_addr` and `admin_addr`, with no trace export and no drain period.
    pub fn on(grpc_addr: impl Into<SocketAddr>, admin_addr: impl Into<SocketAddr>) -> Self {
        ServiceOpts {
            grpc_addr: grpc_addr.into(),
            admin_addr: admin_addr.into(),
            advertise_url: None,
            otlp_endpoint: None,
            drain_seconds: 0,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            insecure: false,
            metrics_queue_labels: default_queue_labels(),
        }
    }

    /// The URL to advertise for a gRPC port bound at `bound`: `https://` when it serves TLS.
    pub fn advertised(&self, bound: SocketAddr) -> String {
        self.advertise_url.clone().unwrap_or_else(|| {
            let scheme = if self.tls_cert.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{bound}")
        })
    }

    /// How the service stops: the drain period, then `timeout` for in-flight requests.
    pub fn drain(&self, timeout: Duration) -> Drain {
        Drain {
            period: Duration::from_secs(self.drain_seconds),
            timeout,
        }
    }
}

/// Where a service finds etcd, flattened into the settings of the services that use it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EtcdOpts {
    /// etcd client URLs.
    #[serde(default)]
    pub etcd_endpoints: Vec<String>,
    /// The root prefix of Sluice's keys in etcd.
    #[serde(default = "default_etcd_root")]
    pub etcd_root: String,
    /// PEM CA certificates etcd's certificate chains to; default: `tls_ca`.
    #[serde(default)]
    pub etcd_ca: Option<PathBuf>,
    /// PEM certificate (and its key) presented to etcd; default: `tls_cert` and `tls_key`.
    #[serde(default)]
    pub etcd_cert: Option<PathBuf>,
    #[serde(default)]
    pub etcd_key: Option<PathBuf>,
}

fn default_etcd_root() -> String {
    sluice_api::cluster::DEFAULT_ETCD_ROOT.into()
}

impl Default for EtcdOpts {
    fn default() -> Self {
        EtcdOpts {
            etcd_endpoints: Vec::new(),
            etcd_root: default_etcd_root(),
            etcd_ca: None,
            etcd_cert: None,
            etcd_key: None,
        }
    }
}

/// The flags every distributed service takes. Each is optional; unset ones keep the file's,
/// the environment's or the service's default.
#[derive(clap::Args, Serialize, Debug, Default)]
pub struct ServiceFlags {
    /// Address of the service's gRPC API
    #[arg(long)]
    pub grpc_addr: Option<std::net::SocketAddr>,
    /// Address of /metrics, /healthz and /readyz
    #[arg(long)]
    pub admin_addr: Option<std::net::SocketAddr>,
    /// etcd client URL; repeatable
    #[arg(long = "etcd")]
    pub etcd_endpoints: Vec<String>,
    /// Root prefix of Sluice's keys in etcd [default: /sluice/]
    #[arg(long)]
    pub etcd_root: Option<String>,
    /// PEM CA certificates etcd's certificate chains to [default: --tls-ca]
    #[arg(long)]
    pub etcd_ca: Option<PathBuf>,
    /// PEM certificate presented to etcd [default: --tls-cert]
    #[arg(long, requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// PEM private key of --etcd-cert [default: --tls-key]
    #[arg(long, requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// URL the other tiers reach this process at [default: http:// + the bound gRPC address]
    #[arg(long)]
    pub advertise_url: Option<String>,
    /// OTLP/gRPC trace collector, e.g. http://127.0.0.1:4317 [default: none]
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
    /// Seconds to go on serving after SIGTERM while reporting not ready, so a load balancer
    /// stops sending requests first [default: 5 for a frontend, 0 otherwise]
    #[arg(long)]
    pub drain_seconds: Option<u64>,
    /// Queues that get a `queue` label of their own on /metrics; the rest share
    /// `queue="_other"` [default: 100]
    #[arg(long)]
    pub metrics_queue_labels: Option<usize>,
    #[command(flatten)]
    #[serde(flatten)]
    pub tls: TlsFlags,
}

/// The TLS flags of every server binary.
#[derive(clap::Args, Serialize, Debug, Default)]
pub struct TlsFlags {
    /// PEM certificate chain served on the gRPC port and presented to other services;
    /// reloaded when the file changes [env: SLUICE_TLS_CERT]
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert [env: SLUICE_TLS_KEY]
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// PEM certificates of the deployment's CA, which the other services' (and clients')
    /// certificates chain to [env: SLUICE_TLS_CA]
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Serve (and call other services) in plain text: anyone who can reach the port can read
    /// and change what passes through it. For trying things out only [env: SLUICE_INSECURE]
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
}

/// The command line of a distributed service: a config file, JSON logs, the shared flags and
/// the service's own flags `F`.
#[derive(clap::Args, Debug)]
pub struct ServiceArgs<F: clap::Args> {
    /// TOML file with any of the settings (snake_case names).
    #[arg(long, env = "SLUICE_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "SLUICE_LOG_JSON")]
    pub log_json: bool,
    #[command(flatten)]
    pub common: ServiceFlags,
    #[command(flatten)]
    pub own: F,
}

impl<F: clap::Args + Serialize> ServiceArgs<F> {
    /// The settings: `defaults`, then the file, the environment and the flags over them.
    pub fn load<T: Serialize + DeserializeOwned>(&self, defaults: &T) -> anyhow::Result<T> {
        #[derive(Serialize)]
        struct Both<'a, F> {
            #[serde(flatten)]
            common: &'a ServiceFlags,
            #[serde(flatten)]
            own: &'a F,
        }
        let flags = Both {
            common: &self.common,
            own: &self.own,
        };
        load(defaults, self.config.as_deref(), &flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    struct Settings {
        name: String,
        port: u16,
        peers: Vec<String>,
        extra: Option<String>,
    }

    #[derive(Serialize)]
    struct Flags {
        port: Option<u16>,
        peers: Vec<String>,
        extra: Option<String>,
    }

    #[test]
    // figment's Jail fixes the closure's error type; its size is not ours to choose.
    #[allow(clippy::result_large_err)]
    fn flags_override_env_override_file_override_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "s.toml",
                "name = \"file\"\nport = 1\npeers = [\"from-file\"]\n",
            )?;
            jail.set_env("SLUICE_PORT", "2");
            let defaults = Settings {
                name: "default".into(),
                port: 0,
                peers: Vec::new(),
                extra: Some("default".into()),
            };
            let none = Flags {
                port: None,
                peers: Vec::new(),
                extra: None,
            };
            let loaded = load(&defaults, Some(Path::new("s.toml")), &none).unwrap();
            assert_eq!(loaded.name, "file");
            assert_eq!(loaded.port, 2, "env over file");
            assert_eq!(
                loaded.peers,
                ["from-file"],
                "an empty flag list is not given"
            );
            assert_eq!(loaded.extra.as_deref(), Some("default"));

            let given = Flags {
                port: Some(3),
                peers: vec!["flag".into()],
                extra: Some("flag".into()),
            };
            let loaded = load(&defaults, Some(Path::new("s.toml")), &given).unwrap();
            assert_eq!(
                (loaded.port, loaded.peers, loaded.extra.as_deref()),
                (3, vec!["flag".to_owned()], Some("flag"))
            );
            assert!(load(&defaults, Some(Path::new("missing.toml")), &none).is_err());
            Ok(())
        });
    }
}

//! How every service reaches etcd: over TLS when its endpoints are `https://` (etcd's own CA
//! and client certificate, each defaulting to the service's), in plain text only with
//! `insecure`. The options are set once at start and used by every etcd client the process
//! opens. tonic's TLS, which etcd-client uses, reads the files once: a renewed etcd client
//! certificate is picked up at the next restart.

use std::path::Path;

use anyhow::Context;
use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use parking_lot::RwLock;

use crate::config::{EtcdOpts, ServiceOpts};

static TLS: RwLock<Option<TlsOptions>> = RwLock::new(None);

/// The TLS options for etcd at `https://` endpoints: trusting `ca`, presenting `identity`.
pub fn tls_options(ca: &Path, identity: Option<(&Path, &Path)>) -> anyhow::Result<TlsOptions> {
    let read = |path: &Path| {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca)?));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(tls)
}

/// Checks `etcd`'s endpoints against the service's TLS settings and installs the options
/// every etcd client of the process uses.
pub fn configure(etcd: &EtcdOpts, service: &ServiceOpts) -> anyhow::Result<()> {
    let https = etcd
        .etcd_endpoints
        .iter()
        .filter(|url| url.starts_with("https://"))
        .count();
    let tls = match https {
        0 if service.insecure => None,
        0 => anyhow::bail!(
            "etcd at {:?} would be reached in plain text: give https:// endpoints (and \
             --etcd-ca unless --tls-ca is etcd's CA too), or run with --insecure",
            etcd.etcd_endpoints
        ),
        n if n < etcd.etcd_endpoints.len() => {
            anyhow::bail!("etcd endpoints mix https:// and plain URLs; give one kind")
        }
        _ => {
            let ca = etcd
                .etcd_ca
                .as_ref()
                .or(service.tls_ca.as_ref())
                .ok_or_else(|| {
                    anyhow::anyhow!("etcd is reached over TLS: give --etcd-ca (or --tls-ca)")
                })?;
            let identity = match (&etcd.etcd_cert, &etcd.etcd_key) {
                (Some(cert), Some(key)) => Some((cert, key)),
                _ => service.tls_cert.as_ref().zip(service.tls_key.as_ref()),
            };
            let identity = identity.map(|(cert, key)| (cert.as_path(), key.as_path()));
            Some(tls_options(ca, identity)?)
        }
    };
    install(tls);
    Ok(())
}

/// Makes every etcd client this process opens from now on use `tls`.
pub fn install(tls: Option<TlsOptions>) {
    *TLS.write() = tls;
}

/// The installed TLS options, if etcd is reached over TLS.
pub fn installed_tls() -> Option<TlsOptions> {
    TLS.read().clone()
}

/// Connect options with the installed TLS, if any.
pub fn options() -> ConnectOptions {
    let options = ConnectOptions::new();
    match TLS.read().clone() {
        Some(tls) => options.with_tls(tls),
        None => options,
    }
}

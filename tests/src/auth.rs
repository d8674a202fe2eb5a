//! Who the tests' processes and calls are: the tests' CA, each kind's certificate, the
//! frontends' master key and root access key, and channels and CLIs that present them.

use std::path::{Path, PathBuf};
use std::process::Command;

use sluice_client::QueueClient;
use sluice_common::credentials::Credentials;
use sluice_common::tls::{ClientTls, Kind};
use tonic::transport::Channel;

use crate::sluice_bin;

/// The CA and the certificate of each kind of Sluice process that every distributed process
/// the tests start runs with, so each real-process test exercises mutual TLS between the tiers.
/// Made once by `sluice dev certs` under the target directory (into a temporary directory
/// renamed into place, so test binaries running at once agree on one set), and kept.
pub fn certs() -> &'static Path {
    static CERTS: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    CERTS.get_or_init(|| {
        let target = sluice_bin()
            .parent()
            .expect("the binary is in a directory")
            .to_owned();
        let dir = target.join("sluice-test-certs");
        let complete = |dir: &Path| {
            let mut files: Vec<String> = vec![
                "ca.pem".into(),
                "etcd.key".into(),
                "master.key".into(),
                "root.credentials".into(),
            ];
            files.extend(Kind::ALL.iter().map(|kind| format!("{kind}.key")));
            files.iter().all(|file| dir.join(file).exists())
        };
        if dir.exists() && !complete(&dir) {
            // Made by an older `sluice dev certs`: the same CA, the certificates it lacks.
            make_certs(&dir).expect("sluice dev certs");
        }
        if !dir.exists() {
            let made = tempfile::tempdir_in(&target).expect("a directory for certificates");
            make_certs(made.path()).expect("sluice dev certs");
            let made = made.keep();
            // Another test binary may have won the race; its set is as good.
            if std::fs::rename(&made, &dir).is_err() {
                let _ = std::fs::remove_dir_all(&made);
            }
        }
        dir
    })
}

/// Runs `sluice dev certs --dir DIR`: a CA in DIR (kept if there is one) and a new certificate
/// of each kind, and (once) the frontends' master key and root access key.
pub fn make_certs(dir: &Path) -> anyhow::Result<()> {
    let out = Command::new(sluice_bin())
        .args(["dev", "certs", "--dir"])
        .arg(dir)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "sluice dev certs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The environment that gives a process of `kind` its certificate, its key and the CA.
pub fn tls_env(kind: Kind) -> [(String, PathBuf); 3] {
    let dir = certs();
    [
        ("SLUICE_TLS_CERT".into(), dir.join(format!("{kind}.pem"))),
        ("SLUICE_TLS_KEY".into(), dir.join(format!("{kind}.key"))),
        ("SLUICE_TLS_CA".into(), dir.join("ca.pem")),
    ]
}

/// The environment that gives a frontend the tests' master key and root access key, so that it
/// authenticates callers as a deployment does.
pub fn auth_env() -> [(String, PathBuf); 2] {
    let dir = certs();
    [
        ("SLUICE_MASTER_KEY_FILE".into(), dir.join("master.key")),
        (
            "SLUICE_ROOT_CREDENTIALS_FILE".into(),
            dir.join("root.credentials"),
        ),
    ]
}

/// The root access key of the tests' frontends (the principal `root`, with the admin role):
/// its id and secret.
pub fn root_key() -> (String, String) {
    let text = std::fs::read_to_string(certs().join("root.credentials"))
        .expect("the tests' root credentials");
    let (id, secret) = text.trim().split_once(':').expect("KEY_ID:SECRET");
    (id.to_owned(), secret.to_owned())
}

/// [`root_key`] as a client presents it.
pub fn root_credentials() -> Credentials {
    let (id, secret) = root_key();
    Credentials::new(&id, &secret).expect("valid root credentials")
}

/// A client of the public API at the other end of `channel`, presenting `credentials`.
pub fn queue_client(channel: Channel, credentials: Credentials) -> QueueClient {
    sluice_client::queue_client(channel, credentials)
}

/// The TLS of a test's calls as a process of `kind`: trusting the tests' CA, presenting that
/// kind's certificate.
pub fn client_tls(kind: Kind) -> std::sync::Arc<ClientTls> {
    let dir = certs();
    let (cert, key) = (
        dir.join(format!("{kind}.pem")),
        dir.join(format!("{kind}.key")),
    );
    std::sync::Arc::new(
        ClientTls::new(Some(&dir.join("ca.pem")), Some((&cert, &key)))
            .expect("test certificates load"),
    )
}

/// The `sluice` CLI as an operator of the tests' deployment runs it: over TLS, trusting the
/// tests' CA and presenting the `admin` certificate.
pub fn admin_cli() -> Command {
    let dir = certs();
    let mut command = Command::new(sluice_bin());
    command
        .env("SLUICE_CA_CERT", dir.join("ca.pem"))
        .env("SLUICE_CLIENT_CERT", dir.join("admin.pem"))
        .env("SLUICE_CLIENT_KEY", dir.join("admin.key"));
    command
}

/// Makes the `sluice_client` channels (and etcd clients) this test process opens from now on
/// call as a process of `kind`, over TLS, as the services do.
pub fn install_client_tls(kind: Kind) {
    sluice_common::tls::install_client(Some(client_tls(kind)));
    sluice_common::etcd::install(Some(etcd_tls_as(kind)));
}

/// The TLS of a test's own calls to the tests' etcd, as an operator.
pub fn etcd_tls() -> etcd_client::TlsOptions {
    etcd_tls_as(Kind::Admin)
}

fn etcd_tls_as(kind: Kind) -> etcd_client::TlsOptions {
    let dir = certs();
    let (cert, key) = (
        dir.join(format!("{kind}.pem")),
        dir.join(format!("{kind}.key")),
    );
    sluice_common::etcd::tls_options(&dir.join("ca.pem"), Some((&cert, &key)))
        .expect("test certificates load")
}

/// Connect options for a test's own etcd client.
pub fn etcd_options() -> etcd_client::ConnectOptions {
    etcd_client::ConnectOptions::new().with_tls(etcd_tls())
}

/// A lazily connected channel to `url`: over TLS as an operator (`admin` certificate) for an
/// `https://` URL, plain otherwise.
pub fn channel(url: &str) -> Channel {
    channel_as(url, Kind::Admin)
}

/// [`channel`] presenting the certificate of `kind`.
pub fn channel_as(url: &str, kind: Kind) -> Channel {
    let tls = url.starts_with("https://").then(|| client_tls(kind));
    sluice_common::tls::channel(url, tls, |endpoint| endpoint).expect("a valid URL")
}

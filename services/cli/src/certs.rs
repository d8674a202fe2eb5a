//! `sluice dev certs`: a CA and one certificate per kind of Sluice process, for the dev cluster,
//! the tests and trying TLS out. Production certificates come from the deployment's own CA
//! (cert-manager); these follow the same rules: each names its kind as the URI
//! `spiffe://sluice/<kind>` and serves as both server and client certificate.
//!
//! Run again on the same directory, it keeps the CA and issues new certificates from it, which
//! is how a rotation is tried: the running services pick the new files up.
//!
//! It also makes the frontends' secrets, once: a master key and a root access key.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use sluice_common::credentials::Credentials;
use sluice_common::keys::MasterKeys;
use sluice_common::tls::Kind;

/// The CA's name; a CA certificate rebuilt from its key with the same name signs certificates
/// that chain to the one on disk.
const CA_NAME: &str = "Sluice dev CA";

/// This year, and the validity window around it: a year back (clocks differ) to two ahead.
fn validity(params: &mut CertificateParams) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let year = 1970 + (secs / 31_556_952) as i32;
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 2, 1, 1);
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params);
    params
}

/// Writes `contents` to `path` through a temporary file and a rename, so a service reloading
/// the file never reads half of it; keys are readable by their owner only.
fn write(path: &Path, contents: &str, secret: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if secret {
        options.mode(0o600);
    }
    let mut file = options
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::io::Write::write_all(&mut file, contents.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Makes (or keeps) `dir/ca.pem` and `dir/ca.key`, and issues `dir/<kind>.pem` and
/// `dir/<kind>.key` for every kind, and `dir/etcd.pem` and `dir/etcd.key` for etcd, valid for `localhost`, 127.0.0.1, ::1 and `hosts`.
pub fn make(dir: &Path, hosts: &[String]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (ca_pem, ca_key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    let ca_key = if ca_key_path.exists() {
        let pem = std::fs::read_to_string(&ca_key_path)
            .with_context(|| format!("cannot read {}", ca_key_path.display()))?;
        KeyPair::from_pem(&pem)
            .with_context(|| format!("{} is not a private key", ca_key_path.display()))?
    } else {
        let key = KeyPair::generate()?;
        write(&ca_key_path, &key.serialize_pem(), true)?;
        key
    };
    let ca = ca_params().self_signed(&ca_key)?;
    if !ca_pem.exists() {
        write(&ca_pem, &ca.pem(), false)?;
    }
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".into(), "::1".into()];
    names.extend(hosts.iter().cloned());
    // etcd's own certificate names no Sluice kind: it is not a Sluice process.
    let holders = Kind::ALL
        .into_iter()
        .map(|kind| (kind.name(), Some(kind.uri())))
        .chain([("etcd", None)]);
    for (name, uri) in holders {
        let mut params = CertificateParams::new(names.clone())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("sluice {name}"));
        if let Some(uri) = uri {
            params.subject_alt_names.push(SanType::URI(uri.try_into()?));
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        write(&dir.join(format!("{name}.key")), &key.serialize_pem(), true)?;
        write(&dir.join(format!("{name}.pem")), &cert.pem(), false)?;
    }
    Ok(())
}

/// Makes (or keeps) the secrets of a dev deployment's frontends in `dir`: `master.key`, the
/// master key that seals access keys' secrets, and `root.credentials`, the root access key
/// (`KEY_ID:SECRET`), both readable by their owner only.
pub fn make_secrets(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let master = dir.join("master.key");
    if !master.exists() {
        write(&master, &MasterKeys::generate(), true)?;
    }
    let root = dir.join("root.credentials");
    if !root.exists() {
        let (id, secret) = sluice_frontend::auth::new_key();
        write(&root, &format!("{id}:{}\n", *secret), true)?;
    }
    Ok(())
}

/// The root access key in `dir/root.credentials`, for a client of a dev cluster.
pub fn root_credentials(dir: &Path) -> anyhow::Result<Credentials> {
    let path = dir.join("root.credentials");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let (id, secret) = text
        .trim()
        .split_once(':')
        .ok_or_else(|| anyhow::anyhow!("{} is not KEY_ID:SECRET", path.display()))?;
    Credentials::new(id, secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_name_their_kind_and_load_and_the_ca_is_kept_across_runs() {
        let dir = tempfile::tempdir().unwrap();
        make(dir.path(), &["sluice.example".into()]).unwrap();
        let ca_before = std::fs::read(dir.path().join("ca.pem")).unwrap();
        let first = std::fs::read(dir.path().join("backend.pem")).unwrap();
        make(dir.path(), &[]).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("ca.pem")).unwrap(),
            ca_before,
            "a second run keeps the CA"
        );
        assert_ne!(
            std::fs::read(dir.path().join("backend.pem")).unwrap(),
            first,
            "a second run issues new certificates"
        );
        // Each certificate and key load as a server's, and the certificate names its kind.
        for kind in Kind::ALL {
            let pem = dir.path().join(format!("{kind}.pem"));
            let key = dir.path().join(format!("{kind}.key"));
            sluice_common::tls::ServerTls::new(
                &pem,
                &key,
                Some(&dir.path().join("ca.pem")),
                sluice_common::tls::ClientAuth::Required,
            )
            .unwrap();
            let chain = sluice_common::tls::read_certs(&pem).unwrap();
            assert_eq!(Kind::of_certificate(&chain[0]), Some(kind));
        }
    }

    #[test]
    fn secrets_are_made_once_and_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        make_secrets(dir.path()).unwrap();
        let root = std::fs::read(dir.path().join("root.credentials")).unwrap();
        let master = std::fs::read(dir.path().join("master.key")).unwrap();
        make_secrets(dir.path()).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("root.credentials")).unwrap(),
            root
        );
        assert_eq!(
            std::fs::read(dir.path().join("master.key")).unwrap(),
            master
        );
        for name in ["root.credentials", "master.key"] {
            let mode = std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        MasterKeys::load(&dir.path().join("master.key")).unwrap();
        assert!(root_credentials(dir.path()).unwrap().is_some());
    }
}

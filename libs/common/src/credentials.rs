//! How a client presents an access key to the public API: the `authorization` request metadata
//! entry, `Sluice <key id>:<secret>`, over TLS. The entry is marked sensitive, so HTTP/2 header
//! compression never indexes it. The CLI and the bench take the key from flags or
//! `SLUICE_ACCESS_KEY_ID` / `SLUICE_SECRET_ACCESS_KEY` and install it for every client they make.

use std::fmt;
use std::sync::OnceLock;

use anyhow::Context;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;

pub const AUTHORIZATION: &str = "authorization";
pub const SCHEME: &str = "Sluice";

/// An access key to present, or none.
#[derive(Clone, Default)]
pub struct Credentials(Option<AsciiMetadataValue>);

/// Never prints the secret.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(_) => f.write_str("Credentials(<access key>)"),
            None => f.write_str("Credentials(none)"),
        }
    }
}

impl Credentials {
    pub fn new(key_id: &str, secret: &str) -> anyhow::Result<Self> {
        sluice_api::identity::key_id("access key id", key_id)?;
        anyhow::ensure!(
            !secret.is_empty() && secret.chars().all(|c| c.is_ascii_graphic()),
            "the secret access key must be printable ASCII without spaces"
        );
        let mut value: AsciiMetadataValue = format!("{SCHEME} {key_id}:{secret}")
            .parse()
            .context("the access key is not valid request metadata")?;
        value.set_sensitive(true);
        Ok(Credentials(Some(value)))
    }

    pub fn none() -> Self {
        Credentials(None)
    }

    pub fn is_some(&self) -> bool {
        self.0.is_some()
    }
}

impl Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert(AUTHORIZATION, value.clone());
        }
        Ok(request)
    }
}

/// The key id and secret in an `authorization` entry, if it is in the Sluice scheme.
pub fn parse(value: &str) -> Option<(&str, &str)> {
    let rest = value.strip_prefix(SCHEME)?.strip_prefix(' ')?;
    rest.split_once(':')
}

static INSTALLED: OnceLock<Credentials> = OnceLock::new();

/// The credentials the command line installed; none if it installed none.
pub fn installed() -> Credentials {
    INSTALLED.get().cloned().unwrap_or_default()
}

/// The access key the CLI and the bench present.
#[derive(clap::Args, Debug, Default)]
pub struct CredentialFlags {
    /// Access key id to authenticate with.
    #[arg(long, global = true, env = "SLUICE_ACCESS_KEY_ID")]
    pub access_key_id: Option<String>,
    /// Its secret. Prefer the environment variable: a flag shows in the process list.
    #[arg(
        long,
        global = true,
        env = "SLUICE_SECRET_ACCESS_KEY",
        hide_env_values = true
    )]
    pub secret_access_key: Option<String>,
}

impl CredentialFlags {
    /// Makes every client this process builds through `installed` present the key.
    pub fn install(&self) -> anyhow::Result<()> {
        let credentials = match (&self.access_key_id, &self.secret_access_key) {
            (Some(id), Some(secret)) => Credentials::new(id, secret)?,
            (None, None) => Credentials::none(),
            (Some(_), None) => {
                anyhow::bail!(
                    "--access-key-id needs --secret-access-key (or SLUICE_SECRET_ACCESS_KEY)"
                )
            }
            (None, Some(_)) => {
                anyhow::bail!("--secret-access-key needs --access-key-id (or SLUICE_ACCESS_KEY_ID)")
            }
        };
        let _ = INSTALLED.set(credentials);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_round_trip_and_never_print_the_secret() {
        let creds = Credentials::new("SLKABCDEFGHIJKLMNOPQ", "s3cret/+x").unwrap();
        let mut request = tonic::Request::new(());
        request = creds.clone().call(request).unwrap();
        let value = request.metadata().get(AUTHORIZATION).unwrap();
        assert!(value.is_sensitive());
        assert_eq!(
            parse(value.to_str().unwrap()),
            Some(("SLKABCDEFGHIJKLMNOPQ", "s3cret/+x"))
        );
        assert!(!format!("{creds:?}").contains("s3cret"));
        assert_eq!(parse("Bearer abc"), None);
        assert_eq!(parse("Sluice nocolon"), None);
        assert!(Credentials::new("short", "x").is_err());
        assert!(Credentials::new("SLKABCDEFGHIJKLMNOPQ", "has space").is_err());
    }
}

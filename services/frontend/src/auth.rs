//! Who is calling. A request presents an access key (`sluice_common::credentials`); the key is
//! looked up (cached, `moka`) with its principal, its secret opened with the master keys and
//! compared in constant time (`subtle`). The root key from the configuration stands for the
//! principal `root`, with the admin role: it is how the first principals are made.
//!
//! Failed attempts are limited per source address (`governor`): past the budget, a source is
//! refused before its credentials are even looked at, until the budget refills. A frontend
//! forgets a key or principal when the identity store says it changed (the metadata tier's
//! watch, or this frontend's own write), and in any case within `CACHE_TTL`.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use sluice_api::identity::{self, IdentityChange, IdentityDirectory, Principal};
use sluice_api::{now_ms, Error, Result};
use sluice_common::credentials;
use sluice_common::keys::MasterKeys;
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;
use zeroize::Zeroizing;

use crate::metrics;

/// How long a looked-up key is trusted without word from the store: the bound on how late a
/// revocation takes effect if the watch that reports it is broken.
const CACHE_TTL: Duration = Duration::from_secs(10);
const CACHE_CAPACITY: u64 = 100_000;
/// Failed attempts a source may make at once, and how fast it earns another.
const FAILURE_BURST: u32 = 20;
const FAILURE_REFILL: Duration = Duration::from_secs(3);
/// The principal of callers without credentials where that is allowed (`--insecure`, or
/// standalone on loopback): every right, as before authentication existed.
pub const ANONYMOUS: &str = "anonymous";

/// Where the frontend reads its secrets. Unset fields serialize as null, so the loader sees them
/// and reads `SLUICE_ROOT_CREDENTIALS_FILE` and `SLUICE_MASTER_KEY_FILE`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AuthOpts {
    /// A file holding the root access key, `<key id>:<secret>` on one line: the principal
    /// `root`, with the admin role.
    #[serde(default)]
    pub root_credentials_file: Option<PathBuf>,
    /// The master key file (one base64 key per line, the current one first), which seals the
    /// access keys' secrets; `SLUICE_MASTER_KEY` may hold its text instead.
    #[serde(default)]
    pub master_key_file: Option<PathBuf>,
}

/// The flags of [`AuthOpts`], for the binaries' command lines.
#[derive(clap::Args, serde::Serialize, Debug, Default)]
pub struct AuthFlags {
    /// File with the root access key, KEY_ID:SECRET [env: SLUICE_ROOT_CREDENTIALS_FILE]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_credentials_file: Option<PathBuf>,
    /// Master key file: base64 of 32 random bytes per line, the current key first
    /// [env: SLUICE_MASTER_KEY_FILE, or the key itself in SLUICE_MASTER_KEY]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master_key_file: Option<PathBuf>,
}

struct Root {
    id: String,
    secret: Zeroizing<String>,
    principal: Arc<Principal>,
}

fn read_root(path: &Path) -> anyhow::Result<Root> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read root credentials file {}", path.display()))?,
    );
    let (id, secret) = text.trim().split_once(':').ok_or_else(|| {
        anyhow::anyhow!(
            "root credentials file {}: expected KEY_ID:SECRET on one line",
            path.display()
        )
    })?;
    identity::key_id("root key id", id)
        .with_context(|| format!("root credentials file {}", path.display()))?;
    anyhow::ensure!(
        secret.len() >= 20 && secret.chars().all(|c| c.is_ascii_graphic()),
        "root credentials file {}: the secret must be at least 20 printable characters",
        path.display()
    );
    Ok(Root {
        id: id.to_owned(),
        secret: Zeroizing::new(secret.to_owned()),
        principal: Arc::new(Principal::new(identity::ROOT, true, 0)),
    })
}

/// A key as looked up: its principal and its opened secret.
struct Verified {
    principal: Arc<Principal>,
    secret: Zeroizing<Vec<u8>>,
    expires_at_ms: Option<u64>,
}

/// Who a request comes from.
#[derive(Debug, Clone)]
pub struct Identity {
    pub principal: Arc<Principal>,
    /// No credentials, where that is allowed.
    pub anonymous: bool,
}

impl Identity {
    pub fn anonymous() -> Self {
        Identity {
            principal: Arc::new(Principal::new(ANONYMOUS, true, 0)),
            anonymous: true,
        }
    }

    pub fn name(&self) -> &str {
        &self.principal.name
    }
}

/// A caller another port of this frontend authenticated (the SQS endpoint, by its request's
/// signature), carried in a request's extensions to the `QueueService`. Only this process can
/// put it there: extensions never come off the wire.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Identity);

/// Why credentials were refused; each is counted in `sluice_auth_failures_total` when made.
#[derive(Debug)]
pub enum Refusal {
    /// No such key (or its principal is gone), or a malformed key id.
    UnknownKey,
    /// The key exists; the secret or signature does not match it.
    WrongSecret,
    Expired,
    /// The source made too many failed attempts; it may try again after this long.
    Blocked(Duration),
    /// The key could not be looked up.
    Failed(Error),
}

impl Refusal {
    /// The error of the gRPC API, whose message never says which check failed.
    pub fn into_error(self) -> Error {
        match self {
            Refusal::UnknownKey | Refusal::WrongSecret | Refusal::Expired => {
                Error::Unauthenticated(
                    "invalid credentials: the access key is unknown, revoked or expired, or the \
                 secret does not match"
                        .to_owned(),
                )
            }
            Refusal::Blocked(retry_after) => Error::Throttled {
                message: "too many failed authentication attempts from this address".into(),
                retry_after,
            },
            Refusal::Failed(err) => err,
        }
    }
}

pub struct Authenticator {
    directory: Arc<dyn IdentityDirectory>,
    keys: Option<Arc<MasterKeys>>,
    root: Option<Root>,
    /// Callers without credentials are let in as [`ANONYMOUS`].
    open: bool,
    /// Key id to what it was found to be; `None`: no such key (or no principal for it).
    cache: moka::sync::Cache<String, Option<Arc<Verified>>>,
    failures: DefaultKeyedRateLimiter<IpAddr>,
    /// Sources over their failure budget, until when.
    blocked: moka::sync::Cache<IpAddr, Instant>,
}

fn unauthenticated(reason: &str) -> Error {
    metrics::AUTH_FAILURES.with_label_values(&[reason]).inc();
    Error::Unauthenticated(match reason {
        "missing" => format!(
            "no credentials: present an access key in the `{}` request metadata entry as \
             `{} <key id>:<secret>`",
            credentials::AUTHORIZATION,
            credentials::SCHEME
        ),
        "malformed" => format!(
            "malformed credentials: the `{}` entry must be `{} <key id>:<secret>`",
            credentials::AUTHORIZATION,
            credentials::SCHEME
        ),
        _ => "invalid credentials: the access key is unknown, revoked or expired, or the \
              secret does not match"
            .to_owned(),
    })
}

impl Authenticator {
    /// `open`: callers without credentials are let in with every right.
    pub fn new(
        directory: Arc<dyn IdentityDirectory>,
        keys: Option<Arc<MasterKeys>>,
        opts: &AuthOpts,
        open: bool,
    ) -> anyhow::Result<Self> {
        let root = opts
            .root_credentials_file
            .as_deref()
            .map(read_root)
            .transpose()?;
        let quota = Quota::with_period(FAILURE_REFILL)
            .expect("a non-zero period")
            .allow_burst(NonZeroU32::new(FAILURE_BURST).expect("non-zero"));
        Ok(Authenticator {
            directory,
            keys,
            root,
            open,
            cache: moka::sync::Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_live(CACHE_TTL)
                .build(),
            failures: DefaultKeyedRateLimiter::keyed(quota),
            blocked: moka::sync::Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_live(FAILURE_REFILL * FAILURE_BURST)
                .build(),
        })
    }

    /// Whether callers without credentials are let in.
    pub fn is_open(&self) -> bool {
        self.open
    }

    pub fn master_keys(&self) -> Option<&Arc<MasterKeys>> {
        self.keys.as_ref()
    }

    pub fn directory(&self) -> &Arc<dyn IdentityDirectory> {
        &self.directory
    }

    /// Forgets what `change` made stale.
    pub fn forget(&self, change: &IdentityChange) {
        match change {
            IdentityChange::Key(id) => self.cache.invalidate(id),
            // Keys are cached with their principal's policy: a principal's change reaches all.
            IdentityChange::Principal(_) | IdentityChange::All => self.cache.invalidate_all(),
        }
    }

    /// The identity of a request from `peer` carrying `metadata`.
    pub async fn authenticate(
        &self,
        metadata: &MetadataMap,
        peer: Option<SocketAddr>,
    ) -> Result<Identity> {
        let source = peer.map(|p| p.ip());
        if let Some(wait) = self.blocked_for(source) {
            return Err(Refusal::Blocked(wait).into_error());
        }
        let Some(value) = metadata.get(credentials::AUTHORIZATION) else {
            if self.open {
                return Ok(Identity::anonymous());
            }
            return Err(unauthenticated("missing"));
        };
        let verified = match value.to_str().ok().and_then(credentials::parse) {
            None => Err(unauthenticated("malformed")),
            Some((id, secret)) => self.verify(id, secret).await,
        };
        match verified {
            Err(Error::Unauthenticated(reason)) => {
                if let Some(ip) = source {
                    self.failed(ip);
                }
                Err(Error::Unauthenticated(reason))
            }
            other => other,
        }
    }

    /// How long `source` is still refused for its failed attempts, if it is (counted).
    fn blocked_for(&self, source: Option<IpAddr>) -> Option<Duration> {
        let until = self.blocked.get(&source?)?;
        let now = Instant::now();
        (until > now).then(|| {
            metrics::AUTH_FAILURES.with_label_values(&["blocked"]).inc();
            until - now
        })
    }

    /// Counts a failure against `ip`; past the budget, blocks it until it refills.
    fn failed(&self, ip: IpAddr) {
        if self.failures.len() > CACHE_CAPACITY as usize {
            // Sources whose budgets are full again need no state.
            self.failures.retain_recent();
        }
        if let Err(not_until) = self.failures.check_key(&ip) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            self.blocked.insert(ip, Instant::now() + wait);
            tracing::warn!(source = %ip, retry_after_ms = wait.as_millis() as u64, "too many failed authentication attempts; refusing the source for a while");
        }
    }

    async fn verify(&self, id: &str, secret: &str) -> Result<Identity> {
        let root = self.root.as_ref().is_some_and(|root| root.id == id);
        if !root && identity::key_id("key id", id).is_err() {
            return Err(unauthenticated("malformed"));
        }
        self.check_key(id, |stored| bool::from(secret.as_bytes().ct_eq(stored)))
            .await
            .map_err(Refusal::into_error)
    }

    /// The identity of a request signed with key `id` from `peer`, where `signed` says whether
    /// the signature verifies under a secret (it must compare in constant time). Failures count
    /// against the source as [`authenticate`](Self::authenticate)'s do. Where callers without
    /// credentials are let in, a key this frontend does not know is let in as [`ANONYMOUS`]: the
    /// SDKs always sign, with whatever keys their users configured.
    pub async fn authenticate_signed(
        &self,
        id: &str,
        peer: Option<SocketAddr>,
        signed: impl FnOnce(&[u8]) -> bool,
    ) -> std::result::Result<Identity, Refusal> {
        let source = peer.map(|p| p.ip());
        if let Some(wait) = self.blocked_for(source) {
            return Err(Refusal::Blocked(wait));
        }
        match self.check_key(id, signed).await {
            Err(Refusal::UnknownKey) if self.open => Ok(Identity::anonymous()),
            Err(refusal @ (Refusal::UnknownKey | Refusal::WrongSecret | Refusal::Expired)) => {
                if let Some(ip) = source {
                    self.failed(ip);
                }
                Err(refusal)
            }
            other => other,
        }
    }

    /// Looks key `id` up and asks `matches` whether the request proves its secret.
    async fn check_key(
        &self,
        id: &str,
        matches: impl FnOnce(&[u8]) -> bool,
    ) -> std::result::Result<Identity, Refusal> {
        if let Some(root) = &self.root {
            if id == root.id {
                return if matches(root.secret.as_bytes()) {
                    Ok(Identity {
                        principal: root.principal.clone(),
                        anonymous: false,
                    })
                } else {
                    unauthenticated("wrong_secret");
                    Err(Refusal::WrongSecret)
                };
            }
        }
        if identity::key_id("key id", id).is_err() {
            unauthenticated("malformed");
            return Err(Refusal::UnknownKey);
        }
        let found = match self.cache.get(id) {
            Some(found) => found,
            None => {
                let found = self.look_up(id).await.map_err(Refusal::Failed)?;
                self.cache.insert(id.to_owned(), found.clone());
                found
            }
        };
        let Some(key) = found else {
            unauthenticated("unknown_key");
            return Err(Refusal::UnknownKey);
        };
        if !matches(&key.secret) {
            unauthenticated("wrong_secret");
            return Err(Refusal::WrongSecret);
        }
        if key.expires_at_ms.is_some_and(|at| now_ms() >= at) {
            unauthenticated("expired");
            return Err(Refusal::Expired);
        }
        Ok(Identity {
            principal: key.principal.clone(),
            anonymous: false,
        })
    }

    /// The key `id` and its principal from the store, its secret opened.
    async fn look_up(&self, id: &str) -> Result<Option<Arc<Verified>>> {
        let Some((key, _)) = self.directory.access_key(id).await? else {
            return Ok(None);
        };
        let Some((principal, _)) = self.directory.principal(&key.principal).await? else {
            return Ok(None);
        };
        let keys = self.keys.as_ref().ok_or_else(|| {
            Error::Internal(
                "access keys are stored but this frontend has no master key to open them".into(),
            )
        })?;
        let secret = keys.open(&key.secret, key.id.as_bytes())?;
        Ok(Some(Arc::new(Verified {
            principal: Arc::new(principal),
            secret,
            expires_at_ms: key.expires_at_ms,
        })))
    }
}

/// A new access key id and secret, shaped like AWS's: `SLK` and 17 characters of base32, and
/// 40 characters of A-Z, a-z and 0-9 (238 bits).
pub fn new_key() -> (String, Zeroizing<String>) {
    use rand::Rng;
    const ID_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    const SECRET_ALPHABET: &[u8] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rngs::OsRng;
    let mut id = identity::KEY_ID_PREFIX.to_owned();
    while id.len() < identity::KEY_ID_LEN {
        id.push(ID_ALPHABET[rng.gen_range(0..ID_ALPHABET.len())] as char);
    }
    let secret: String = (0..identity::SECRET_LEN)
        .map(|_| SECRET_ALPHABET[rng.gen_range(0..SECRET_ALPHABET.len())] as char)
        .collect();
    (id, Zeroizing::new(secret))
}

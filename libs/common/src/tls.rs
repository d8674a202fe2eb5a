//! TLS on every gRPC port and on every call one Sluice service makes to another.
//!
//! rustls through tokio-rustls, the TLS layer of tonic's own TLS support, plugged into tonic's
//! transport at both ends (the server's incoming connections, the channel's connector) rather
//! than through `ServerTlsConfig`/`ClientTlsConfig`: those read the certificate files once, and
//! a certificate that cert-manager rotates must be served, and presented, without a restart.
//! Here the files' modification times are looked at on each new connection (three `stat`s) and
//! the configuration rebuilt when one changed; a half-written pair (new certificate, old key)
//! fails to load, is logged once, and the previous configuration stays in use until the pair
//! matches again.
//!
//! Between the tiers TLS is mutual: an internal port accepts only a peer whose certificate chains
//! to the deployment's CA, and the certificate's URI name `spiffe://sluice/<kind>` says which
//! kind of Sluice process it is, so a port can refuse calls from a kind that has no business
//! making them (a frontend calling Raft's `ClusterService`).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::SystemTime;

use anyhow::Context as _;
use parking_lot::{Mutex, RwLock};
use prometheus::{register_int_counter_vec, IntCounterVec};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The URI name a Sluice certificate carries, followed by the process's kind.
pub const IDENTITY_PREFIX: &str = "spiffe://sluice/";

/// How long a new connection has to finish its TLS handshake before it is closed, so a client
/// that opens connections and says nothing cannot hold places under the connection cap.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

static HANDSHAKES_FAILED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "sluice_tls_handshakes_failed_total",
        "TLS handshakes this process refused or that failed, by side (server or client)",
        &["side"]
    )
    .expect("metric registers once")
});

static RELOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "sluice_tls_reloads_total",
        "TLS configurations rebuilt because a certificate, key or CA file changed, by outcome",
        &["outcome"]
    )
    .expect("metric registers once")
});

/// What kind of Sluice process a certificate belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Kind {
    Frontend,
    Metadata,
    Backend,
    Manager,
    /// An operator's tools: the CLI's admin commands.
    Admin,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Frontend,
        Kind::Metadata,
        Kind::Backend,
        Kind::Manager,
        Kind::Admin,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Frontend => "frontend",
            Kind::Metadata => "metadata",
            Kind::Backend => "backend",
            Kind::Manager => "manager",
            Kind::Admin => "admin",
        }
    }

    /// The URI name a certificate of this kind carries.
    pub fn uri(self) -> String {
        format!("{IDENTITY_PREFIX}{}", self.name())
    }

    fn from_uri(uri: &str) -> Option<Kind> {
        let name = uri.strip_prefix(IDENTITY_PREFIX)?;
        Kind::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// The kind a verified end-entity certificate names, if it names one.
    pub fn of_certificate(cert: &CertificateDer<'_>) -> Option<Kind> {
        let cert = webpki::EndEntityCert::try_from(cert).ok()?;
        let kind = cert.valid_uri_names().find_map(Kind::from_uri);
        kind
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS 1.3 and 1.2; rustls has nothing older.
const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// gRPC is HTTP/2, and a TLS client that does not offer it is not a gRPC client.
fn alpn() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec()]
}

/// What a server port offers: HTTP/2 first (gRPC), and HTTP/1.1 for the SQS endpoint's
/// clients, which share the port's certificate. A gRPC client offers only h2 and gets it.
fn server_alpn() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
}

/// The PEM certificates in `path`; an error names the file.
pub fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| {
            anyhow::anyhow!("cannot read certificates from {}: {err}", path.display())
        })?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{} holds no PEM certificate",
        path.display()
    );
    Ok(certs)
}

fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    // The error names the file only: rustls's own message could quote what it read.
    PrivateKeyDer::from_pem_file(path)
        .map_err(|_| anyhow::anyhow!("{} holds no PEM private key", path.display()))
}

fn read_roots(path: &Path) -> anyhow::Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .with_context(|| format!("{} holds a CA certificate rustls rejects", path.display()))?;
    }
    Ok(Arc::new(roots))
}

/// What a set of files looked like when they were read: a change to any of them (a new file
/// swapped in by a Kubernetes Secret update changes the modification time it resolves to)
/// calls for a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Vec<Option<(SystemTime, u64)>>);

impl Stamp {
    fn of(paths: &[&Path]) -> Stamp {
        Stamp(
            paths
                .iter()
                .map(|path| {
                    let meta = std::fs::metadata(path).ok()?;
                    Some((meta.modified().ok()?, meta.len()))
                })
                .collect(),
        )
    }
}

/// A configuration built from files, rebuilt when they change.
struct Reloading<T> {
    what: &'static str,
    paths: Vec<PathBuf>,
    build: Box<dyn Fn() -> anyhow::Result<T> + Send + Sync>,
    current: RwLock<(Stamp, Arc<T>)>,
    /// The stamp whose load failed, so it is logged once and not retried on every connection.
    failed: Mutex<Option<Stamp>>,
}

impl<T> Reloading<T> {
    fn new(
        what: &'static str,
        paths: Vec<PathBuf>,
        build: impl Fn() -> anyhow::Result<T> + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        let stamp = Stamp::of(&paths.iter().map(PathBuf::as_path).collect::<Vec<_>>());
        let config = build()?;
        Ok(Reloading {
            what,
            paths,
            build: Box::new(build),
            current: RwLock::new((stamp, Arc::new(config))),
            failed: Mutex::new(None),
        })
    }

    fn get(&self) -> Arc<T> {
        let paths: Vec<&Path> = self.paths.iter().map(PathBuf::as_path).collect();
        let stamp = Stamp::of(&paths);
        {
            let current = self.current.read();
            if current.0 == stamp {
                return current.1.clone();
            }
        }
        let mut failed = self.failed.lock();
        if failed.as_ref() == Some(&stamp) {
            return self.current.read().1.clone();
        }
        match (self.build)() {
            Ok(config) => {
                RELOADS.with_label_values(&["loaded"]).inc();
                tracing::info!(
                    what = self.what,
                    "TLS files changed; new connections use them"
                );
                let config = Arc::new(config);
                *self.current.write() = (stamp, config.clone());
                *failed = None;
                config
            }
            Err(err) => {
                RELOADS.with_label_values(&["failed"]).inc();
                tracing::warn!(
                    what = self.what,
                    error = %format!("{err:#}"),
                    "TLS files changed but do not load; keeping the previous ones"
                );
                *failed = Some(stamp);
                self.current.read().1.clone()
            }
        }
    }
}

/// Whether a port asks its clients for certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// The public API: clients prove who they are with credentials, not certificates; one that
    /// offers a certificate must chain to the CA (if one is configured).
    Optional,
    /// An internal port: only a peer with a certificate that chains to the CA gets in.
    Required,
}

/// The TLS side of a gRPC port.
pub struct ServerTls {
    config: Reloading<ServerConfig>,
}

impl ServerTls {
    /// Serves `cert` (a PEM chain) with `key`, verifying clients' certificates against `ca`.
    /// Reads the files now, so a bad one stops the service at start with its name.
    pub fn new(
        cert: &Path,
        key: &Path,
        ca: Option<&Path>,
        client_auth: ClientAuth,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            ca.is_some() || client_auth == ClientAuth::Optional,
            "an internal port needs the CA its peers' certificates chain to (tls_ca)"
        );
        let (cert, key, ca) = (cert.to_owned(), key.to_owned(), ca.map(Path::to_owned));
        let mut paths = vec![cert.clone(), key.clone()];
        paths.extend(ca.clone());
        let build = move || {
            let builder = ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(VERSIONS)
                .context("TLS versions")?;
            let builder = match &ca {
                None => builder.with_no_client_auth(),
                Some(ca) => {
                    let verifier =
                        WebPkiClientVerifier::builder_with_provider(read_roots(ca)?, provider());
                    let verifier = match client_auth {
                        ClientAuth::Optional => verifier.allow_unauthenticated(),
                        ClientAuth::Required => verifier,
                    };
                    builder.with_client_cert_verifier(
                        verifier.build().context("client certificate verifier")?,
                    )
                }
            };
            let mut config = builder
                .with_single_cert(read_certs(&cert)?, read_key(&key)?)
                .with_context(|| {
                    format!(
                        "{} and {} are not a certificate and its key",
                        cert.display(),
                        key.display()
                    )
                })?;
            config.alpn_protocols = server_alpn();
            Ok(config)
        };
        Ok(ServerTls {
            config: Reloading::new("server", paths, build)?,
        })
    }

    /// Runs the server side of the handshake on `io`; returns the stream and the kind the
    /// client's verified certificate names (none without a certificate, or with one that names
    /// no kind).
    pub async fn accept<IO>(
        &self,
        io: IO,
    ) -> std::io::Result<(tokio_rustls::server::TlsStream<IO>, Option<Kind>)>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.get());
        let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await;
        let stream = match accepted {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => {
                HANDSHAKES_FAILED.with_label_values(&["server"]).inc();
                return Err(err);
            }
            Err(_) => {
                HANDSHAKES_FAILED.with_label_values(&["server"]).inc();
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "TLS handshake took too long",
                ));
            }
        };
        let kind = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(Kind::of_certificate);
        Ok((stream, kind))
    }
}

/// The TLS side of calls this process makes.
pub struct ClientTls {
    config: Reloading<ClientConfig>,
}

impl ClientTls {
    /// Trusts the CAs in `ca` (the system's roots without one) and presents `identity` (a
    /// certificate chain and its key), if given, to servers that ask.
    pub fn new(ca: Option<&Path>, identity: Option<(&Path, &Path)>) -> anyhow::Result<Self> {
        let ca = ca.map(Path::to_owned);
        let identity = identity.map(|(cert, key)| (cert.to_owned(), key.to_owned()));
        let mut paths: Vec<PathBuf> = ca.iter().cloned().collect();
        if let Some((cert, key)) = &identity {
            paths.extend([cert.clone(), key.clone()]);
        }
        let build = move || {
            let roots = match &ca {
                Some(ca) => read_roots(ca)?,
                None => Arc::new(native_roots()?),
            };
            let builder = ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(VERSIONS)
                .context("TLS versions")?
                .with_root_certificates(roots);
            let mut config = match &identity {
                Some((cert, key)) => builder
                    .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
                    .with_context(|| {
                        format!(
                            "{} and {} are not a certificate and its key",
                            cert.display(),
                            key.display()
                        )
                    })?,
                None => builder.with_no_client_auth(),
            };
            config.alpn_protocols = alpn();
            Ok(config)
        };
        Ok(ClientTls {
            config: Reloading::new("client", paths, build)?,
        })
    }

    /// A connector for tonic's `Endpoint::connect_with_connector*`: TCP (without Nagle), then
    /// the handshake, checking the server's certificate against the host of the URI.
    pub fn connector(self: &Arc<Self>) -> Connector {
        Connector { tls: self.clone() }
    }

    async fn connect(
        &self,
        uri: http::Uri,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_owned());
        let host = uri.host().ok_or_else(|| bad("the URL has no host"))?;
        let port = uri.port_u16().ok_or_else(|| bad("the URL has no port"))?;
        // An IPv6 literal comes in brackets.
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| bad("the URL's host is not a DNS name or an IP address"))?;
        let tcp = tokio::net::TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        let connector = tokio_rustls::TlsConnector::from(self.config.get());
        connector.connect(name, tcp).await.inspect_err(|_| {
            HANDSHAKES_FAILED.with_label_values(&["client"]).inc();
        })
    }
}

fn native_roots() -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    anyhow::ensure!(
        added > 0,
        "no CA certificates found on this system; give the CA to trust (--ca-cert)"
    );
    Ok(roots)
}

/// Opens TLS connections for a tonic channel.
#[derive(Clone)]
pub struct Connector {
    tls: Arc<ClientTls>,
}

type Connected = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

impl tower_service::Service<http::Uri> for Connector {
    type Response = Connected;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Connected>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move { Ok(hyper_util::rt::TokioIo::new(tls.connect(uri).await?)) })
    }
}

/// The TLS this process's calls to other Sluice services use: set once at start by a service
/// configured with TLS, read by every channel it opens.
static CLIENT: RwLock<Option<Arc<ClientTls>>> = RwLock::new(None);

/// Makes every channel opened from now on by [`channel`] use `tls`.
pub fn install_client(tls: Option<Arc<ClientTls>>) {
    *CLIENT.write() = tls;
}

/// The TLS installed for this process's calls, if any.
pub fn installed_client() -> Option<Arc<ClientTls>> {
    CLIENT.read().clone()
}

/// A lazily connected channel to `url` through `tls` (the installed client TLS when `None`),
/// with `configure` setting the endpoint's timeouts and keepalive. With TLS every call is made
/// over it whatever the URL's scheme, so a peer's advertised `http://` URL cannot downgrade a
/// deployment; without it an `https://` URL is refused rather than called in plain text.
pub fn channel(
    url: &str,
    tls: Option<Arc<ClientTls>>,
    configure: impl FnOnce(tonic::transport::Endpoint) -> tonic::transport::Endpoint,
) -> anyhow::Result<tonic::transport::Channel> {
    let tls = tls.or_else(installed_client);
    let plain_url = match (url.strip_prefix("https://"), &tls) {
        (Some(rest), Some(_)) => format!("http://{rest}"),
        (Some(_), None) => anyhow::bail!(
            "{url} is an https URL but no TLS is configured to call it with (give the CA)"
        ),
        (None, _) => url.to_owned(),
    };
    // The connector does TLS itself; the endpoint must not try to, whatever tonic's features.
    let endpoint = configure(
        tonic::transport::Endpoint::from_shared(plain_url)
            .with_context(|| format!("{url:?} is not a URL like https://10.0.0.5:7070"))?,
    );
    Ok(match tls {
        Some(tls) => endpoint.connect_with_connector_lazy(tls.connector()),
        None => endpoint.connect_lazy(),
    })
}

/// How a client outside the deployment (the CLI, the bench) reaches Sluice, from its flags:
/// over TLS when a CA or a client certificate is given or any of `urls` is `https://` (then
/// trusting the system's roots unless a CA is given), in plain text otherwise.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientFlags {
    /// PEM CA certificates to trust for the server's certificate [default: the system's roots
    /// for an https:// endpoint]
    #[arg(long, global = true, env = "SLUICE_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// PEM certificate to present to servers that ask for one (an operator's `admin`
    /// certificate, for the internal ports)
    #[arg(
        long,
        global = true,
        env = "SLUICE_CLIENT_CERT",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert
    #[arg(
        long,
        global = true,
        env = "SLUICE_CLIENT_KEY",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
}

impl ClientFlags {
    /// Installs the TLS these flags call for (see [`ClientFlags`]) for every channel the
    /// process opens from now on.
    pub fn install(&self, urls: &[&str]) -> anyhow::Result<()> {
        let identity = self.client_cert.as_deref().zip(self.client_key.as_deref());
        let tls = self.ca_cert.is_some()
            || identity.is_some()
            || urls.iter().any(|url| url.starts_with("https://"));
        let client = if tls {
            Some(Arc::new(ClientTls::new(self.ca_cert.as_deref(), identity)?))
        } else {
            None
        };
        install_client(client);
        Ok(())
    }
}

/// The rules of an internal port: which kinds of peer may call which gRPC methods.
#[derive(Debug, Clone)]
pub struct Access {
    /// Path prefixes (`/sluice.v1.ClusterService/Vote`, `/sluice.v1.BackendService/`) and the
    /// kinds allowed; the first prefix a request's path starts with decides, and a path no
    /// rule names is allowed to any verified peer (the health service).
    rules: Vec<(&'static str, &'static [Kind])>,
}

impl Access {
    pub fn new(rules: Vec<(&'static str, &'static [Kind])>) -> Self {
        Access { rules }
    }

    /// Whether a peer of `kind` may call `path`; a refusal says which kind and which method.
    pub fn check(&self, path: &str, kind: Option<Kind>) -> Result<(), String> {
        let Some((_, allowed)) = self
            .rules
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix))
        else {
            return Ok(());
        };
        match kind {
            Some(kind) if allowed.contains(&kind) => Ok(()),
            Some(kind) => Err(format!("a {kind} certificate may not call {path}")),
            None => Err(format!(
                "{path} takes calls only from a Sluice service certificate (URI name \
                 {IDENTITY_PREFIX}<kind>); the one presented names none"
            )),
        }
    }
}

/// How a gRPC port is served.
#[derive(Clone)]
pub enum PortTls {
    /// Plain text: only with `insecure`, or standalone on loopback.
    Plain,
    /// TLS; with `access`, an internal port whose peers are checked against it.
    Tls {
        server: Arc<ServerTls>,
        access: Option<Arc<Access>>,
    },
}

/// Says `banner` on stderr, before anything else the process prints, and in the log: running
/// without TLS must not pass unnoticed.
/// Says `banner` on stderr and in the log, for a mode that drops a protection.
pub fn announce_insecure(banner: &str) {
    eprintln!("{banner}");
    tracing::warn!("{banner}");
}

/// Reads the TLS settings of a service: the port's own TLS (with `access` for an internal
/// port, whose clients must present certificates) and the TLS of the calls it makes, which is
/// installed for the whole process. Without files and with `insecure`, both are plain and the
/// service says so loudly.
pub fn configure(
    opts: &crate::config::ServiceOpts,
    service: &str,
    access: Option<Access>,
) -> anyhow::Result<PortTls> {
    // Every series exists from the start, so the first failure shows as an increase.
    for side in ["server", "client"] {
        HANDSHAKES_FAILED.with_label_values(&[side]);
    }
    for outcome in ["loaded", "failed"] {
        RELOADS.with_label_values(&[outcome]);
    }
    let files = (&opts.tls_cert, &opts.tls_key, &opts.tls_ca);
    match files {
        (None, None, None) if opts.insecure => {
            let banner = format!(
                "INSECURE: {service} runs without TLS (--insecure): anyone who can reach {} \
                 can read and change what passes through it, and it calls other services in \
                 plain text",
                opts.grpc_addr
            );
            announce_insecure(&banner);
            install_client(None);
            Ok(PortTls::Plain)
        }
        (Some(_), Some(_), _) if opts.insecure => {
            anyhow::bail!("give either TLS files or --insecure, not both")
        }
        (Some(cert), Some(key), ca) => {
            let client_auth = if access.is_some() {
                ClientAuth::Required
            } else {
                ClientAuth::Optional
            };
            let server = ServerTls::new(cert, key, ca.as_deref(), client_auth)?;
            let ca = ca.as_deref().ok_or_else(|| {
                anyhow::anyhow!(
                    "tls_ca is needed too: the CA that the other Sluice services' \
                     certificates chain to"
                )
            })?;
            install_client(Some(Arc::new(ClientTls::new(Some(ca), Some((cert, key)))?)));
            Ok(PortTls::Tls {
                server: Arc::new(server),
                access: access.map(Arc::new),
            })
        }
        (None, None, _) => anyhow::bail!(
            "{service} needs TLS: give --tls-cert, --tls-key and --tls-ca (SLUICE_TLS_CERT, \
             SLUICE_TLS_KEY, SLUICE_TLS_CA; `sluice dev certs` makes a set to try), or run with \
             --insecure to serve and call in plain text"
        ),
        _ => anyhow::bail!("--tls-cert and --tls-key go together: give both or neither"),
    }
}

/// The TLS of `sluice standalone`'s one port. It calls no other service, so it installs no
/// client side. Without certificate files it serves plain text on loopback (saying so at
/// start), and refuses any other address unless `insecure` is given.
pub fn standalone(opts: &crate::config::ServiceOpts) -> anyhow::Result<PortTls> {
    match (&opts.tls_cert, &opts.tls_key) {
        (Some(cert), Some(key)) => {
            anyhow::ensure!(
                !opts.insecure,
                "give either TLS files or --insecure, not both"
            );
            let server = ServerTls::new(cert, key, opts.tls_ca.as_deref(), ClientAuth::Optional)?;
            Ok(PortTls::Tls {
                server: Arc::new(server),
                access: None,
            })
        }
        (None, None) if opts.grpc_addr.ip().is_loopback() => {
            let notice = format!(
                "sluice standalone serves {} in plain text: only this machine can reach it",
                opts.grpc_addr
            );
            eprintln!("{notice}");
            tracing::info!("{notice}");
            Ok(PortTls::Plain)
        }
        (None, None) if opts.insecure => {
            let banner = format!(
                "INSECURE: sluice standalone serves {} without TLS (--insecure): anyone who can \
                 reach it can read and change its queues",
                opts.grpc_addr
            );
            announce_insecure(&banner);
            Ok(PortTls::Plain)
        }
        (None, None) => anyhow::bail!(
            "sluice standalone listens on {}, which other machines can reach: give --tls-cert and \
             --tls-key (`sluice dev certs` makes a pair to try), listen on 127.0.0.1, or run with \
             --insecure",
            opts.grpc_addr
        ),
        _ => anyhow::bail!("--tls-cert and --tls-key go together: give both or neither"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_uri() {
        for kind in Kind::ALL {
            assert_eq!(Kind::from_uri(&kind.uri()), Some(kind));
        }
        assert_eq!(Kind::from_uri("spiffe://sluice/root"), None);
        assert_eq!(Kind::from_uri("spiffe://other/backend"), None);
    }

    #[test]
    fn access_allows_only_the_kinds_a_rule_names() {
        const RAFT: &[Kind] = &[Kind::Backend];
        const ANY_SERVICE: &[Kind] = &[Kind::Backend, Kind::Frontend];
        let access = Access::new(vec![
            ("/sluice.v1.ClusterService/Vote", RAFT),
            ("/sluice.v1.ClusterService/", ANY_SERVICE),
        ]);
        let vote = "/sluice.v1.ClusterService/Vote";
        assert!(access.check(vote, Some(Kind::Backend)).is_ok());
        let refused = access.check(vote, Some(Kind::Frontend)).unwrap_err();
        assert!(refused.contains("frontend"), "{refused}");
        assert!(access
            .check("/sluice.v1.ClusterService/Status", Some(Kind::Frontend))
            .is_ok());
        assert!(access.check(vote, None).is_err());
        assert!(access.check("/grpc.health.v1.Health/Check", None).is_ok());
    }
}

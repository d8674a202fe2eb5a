//! Clients of the SQS endpoint as SQS users have them: the AWS SDK for Rust, and raw requests of
//! either protocol signed with AWS Signature Version 4 by AWS's own signer (`aws-sigv4`).

use std::time::SystemTime;

use std::collections::HashMap;

use anyhow::Context;
use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName};
use aws_sdk_sqs::Client;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use md5::{Digest, Md5};

use crate::ServerProcess;

/// The region the endpoint expects by default.
pub const REGION: &str = "us-east-1";
/// The account id in queue URLs by default.
pub const ACCOUNT: &str = "000000000000";

/// An SDK client of the SQS endpoint at `endpoint`, signing with `key` and `secret`. Retries are
/// off, so a test sees each error the endpoint answers.
pub fn client(endpoint: &str, key: &str, secret: &str) -> aws_sdk_sqs::Client {
    let http = aws_smithy_http_client::Builder::new().build_http();
    client_over(http, endpoint, key, secret)
}

/// [`client`] over HTTPS, trusting only the CA in the PEM file `ca`.
pub fn client_trusting(
    ca: &std::path::Path,
    endpoint: &str,
    key: &str,
    secret: &str,
) -> anyhow::Result<aws_sdk_sqs::Client> {
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
    let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
    let context = TlsContext::builder()
        .with_trust_store(TrustStore::empty().with_pem_certificate(pem))
        .build()
        .context("TLS context")?;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .tls_context(context)
        .build_https();
    Ok(client_over(http, endpoint, key, secret))
}

fn client_over(
    http: aws_smithy_runtime_api::client::http::SharedHttpClient,
    endpoint: &str,
    key: &str,
    secret: &str,
) -> aws_sdk_sqs::Client {
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new(REGION))
        .credentials_provider(Credentials::new(key, secret, None, None, "sluice-tests"))
        .http_client(http)
        .retry_config(aws_sdk_sqs::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

/// The SDK's error code (the legacy code, which the SDK reads from `x-amzn-query-error`).
pub fn code<E, R>(err: &aws_sdk_sqs::error::SdkError<E, R>) -> String
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata,
{
    use aws_sdk_sqs::error::ProvideErrorMetadata;
    err.code().unwrap_or("<no code>").to_owned()
}

/// Lower-case hex MD5.
pub fn md5_hex(bytes: &[u8]) -> String {
    format!("{:x}", Md5::digest(bytes))
}

/// An answer to a raw request.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

/// A raw request to the endpoint: `body` posted to `path` with `headers`, signed with `key` and
/// `secret` as of `time` when a key is given.
pub async fn raw(
    endpoint: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    key: Option<(&str, &str)>,
    time: SystemTime,
) -> anyhow::Result<Answer> {
    let url = format!("{endpoint}{path}");
    let host = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, host)| host)
        .to_owned();
    let mut all: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    all.push(("host".into(), host));
    if let Some((key, secret)) = key {
        let identity = Credentials::new(key, secret, None, None, "sluice-tests").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(REGION)
            .name("sqs")
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .context("signing parameters")?
            .into();
        let signable = SignableRequest::new(
            "POST",
            url.as_str(),
            all.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            SignableBody::Bytes(body.as_bytes()),
        )?;
        let (instructions, _) = sign(signable, &params)?.into_parts();
        let signed: Vec<(String, String)> = instructions
            .headers()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        all.extend(signed);
    }
    let client = reqwest::Client::new();
    let mut request = client.post(&url).body(body.to_owned());
    for (k, v) in all.iter().filter(|(k, _)| k != "host") {
        request = request.header(k.as_str(), v.as_str());
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.text().await?;
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// A query protocol request of `params`, form-encoded, posted to `path`.
pub async fn query(
    endpoint: &str,
    path: &str,
    params: &[(&str, &str)],
    key: Option<(&str, &str)>,
) -> anyhow::Result<Answer> {
    let body = params
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    raw(
        endpoint,
        path,
        &[("content-type", "application/x-www-form-urlencoded")],
        &body,
        key,
        SystemTime::now(),
    )
    .await
}

/// Form encoding: every byte but the unreserved ones as `%XX`.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A message attribute as a test sends it: name, data type, and a string or binary value.
pub struct TestAttribute<'a> {
    pub name: &'a str,
    pub data_type: &'a str,
    pub string: Option<&'a str>,
    pub binary: Option<&'a [u8]>,
}

/// MD5OfMessageAttributes by SQS's published algorithm, written out here apart from the
/// endpoint's own code: names sorted; each name, data type and value length-prefixed (4 bytes,
/// big-endian), with transport byte 1 before a string value and 2 before a binary one.
pub fn attributes_md5(attributes: &[TestAttribute<'_>]) -> String {
    fn prefixed(bytes: &mut Vec<u8>, value: &[u8]) {
        bytes.extend_from_slice(&(value.len() as u32).to_be_bytes());
        bytes.extend_from_slice(value);
    }
    let mut sorted: Vec<&TestAttribute<'_>> = attributes.iter().collect();
    sorted.sort_by_key(|a| a.name);
    let mut bytes = Vec::new();
    for a in sorted {
        prefixed(&mut bytes, a.name.as_bytes());
        prefixed(&mut bytes, a.data_type.as_bytes());
        match (a.string, a.binary) {
            (Some(s), _) => {
                bytes.push(1);
                prefixed(&mut bytes, s.as_bytes());
            }
            (None, Some(b)) => {
                bytes.push(2);
                prefixed(&mut bytes, b);
            }
            (None, None) => {}
        }
    }
    md5_hex(&bytes)
}

/// The AWS CLI: `SLUICE_AWS_CLI`, else the one `scripts/test.sh` installs in its virtualenv.
pub fn aws_cli() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("SLUICE_AWS_CLI") {
        return path.into();
    }
    let venv = std::env::var_os("SLUICE_VENV").map_or_else(
        || {
            let home = std::env::var_os("HOME").expect("HOME is set");
            std::path::Path::new(&home).join(".cache/sluice-venv")
        },
        std::path::PathBuf::from,
    );
    let aws = venv.join("bin/aws");
    assert!(
        aws.exists(),
        "{} is missing: run scripts/test.sh, which installs the AWS CLI from PyPI \
         (tests/requirements.txt), or set SLUICE_AWS_CLI",
        aws.display()
    );
    aws
}

/// The Python of the virtualenv holding boto3 of SQS's query protocol: `SLUICE_QUERY_PYTHON`,
/// else the one `scripts/test.sh` makes.
pub fn query_python() -> std::path::PathBuf {
    let python = std::env::var_os("SLUICE_QUERY_PYTHON").map_or_else(
        || {
            let home = std::env::var_os("HOME").expect("HOME is set");
            std::path::Path::new(&home).join(".cache/sluice-venv-sqs-query/bin/python")
        },
        std::path::PathBuf::from,
    );
    assert!(
        python.exists(),
        "{} is missing: run scripts/test.sh, which installs boto3 1.26 from PyPI \
         (tests/requirements-legacy.txt), or set SLUICE_QUERY_PYTHON",
        python.display()
    );
    python
}

/// The AWS CLI against `endpoint` with the key `key`/`secret`, reading no configuration of
/// the machine's (its home is `home`); returns its exit code, stdout and stderr.
pub fn run_aws(
    home: &std::path::Path,
    endpoint: &str,
    key: (&str, &str),
    args: &[&str],
) -> (i32, String, String) {
    run_aws_trusting(None, home, endpoint, key, args)
}

/// [`run_aws`] over HTTPS, trusting the CA in the PEM file `ca`.
pub fn run_aws_trusting(
    ca: Option<&std::path::Path>,
    home: &std::path::Path,
    endpoint: &str,
    (key, secret): (&str, &str),
    args: &[&str],
) -> (i32, String, String) {
    let mut command = std::process::Command::new(aws_cli());
    if let Some(ca) = ca {
        command.arg("--ca-bundle").arg(ca);
    }
    let output = command
        .arg("--endpoint-url")
        .arg(endpoint)
        .args(args)
        .env_clear()
        .env("HOME", home)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("AWS_ACCESS_KEY_ID", key)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_DEFAULT_REGION", REGION)
        .env("AWS_MAX_ATTEMPTS", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("the AWS CLI runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Standalone on loopback, which lets in callers whose keys it does not know (the SDKs always
/// sign), and an SDK client of its SQS endpoint.
pub fn open_standalone(dir: &std::path::Path) -> (ServerProcess, Client, String) {
    let server = ServerProcess::start(dir).unwrap();
    let endpoint = server.sqs_endpoint().unwrap();
    let client = client(&endpoint, "AKIDANYTHING", "any-secret-will-do");
    (server, client, endpoint)
}

pub fn arn(name: &str) -> String {
    format!("arn:aws:sqs:us-east-1:{ACCOUNT}:{name}")
}

pub async fn create(
    client: &Client,
    name: &str,
    attributes: &[(QueueAttributeName, &str)],
) -> String {
    let mut request = client.create_queue().queue_name(name);
    for (k, v) in attributes {
        request = request.attributes(k.clone(), *v);
    }
    request.send().await.unwrap().queue_url.unwrap()
}

pub async fn attributes(client: &Client, url: &str) -> HashMap<QueueAttributeName, String> {
    client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap_or_default()
}

pub fn string_attribute(value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .unwrap()
}

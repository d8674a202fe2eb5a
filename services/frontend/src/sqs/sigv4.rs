//! Checks AWS Signature Version 4 on a request, as the AWS SDKs and CLI sign SQS requests: the
//! `Authorization: AWS4-HMAC-SHA256 Credential=<key>/<date>/<region>/sqs/aws4_request,
//! SignedHeaders=..., Signature=...` header over the canonical request (method, path, query,
//! the signed headers and the body's SHA-256). The secret never leaves the authenticator: it is
//! handed only to [`Signed::matches`], which derives the signing key and compares in constant
//! time.

use chrono::{DateTime, NaiveDateTime, Utc};
use hmac::{Hmac, Mac};
use http::HeaderMap;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::{Code, SqsError};

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const SERVICE: &str = "sqs";
/// How far a request's date may be from the server's clock, as AWS allows.
const MAX_SKEW_SECONDS: i64 = 15 * 60;

/// Characters SigV4 leaves as they are: RFC 3986's unreserved ones.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
const UNRESERVED_AND_SLASH: &AsciiSet = &UNRESERVED.remove(b'/');

/// A request's signature and what it claims, parsed; [`Signed::matches`] checks it.
#[derive(Debug)]
pub struct Signed {
    pub key_id: String,
    scope: String,
    signature: Vec<u8>,
    string_to_sign: String,
}

/// What a request is signed over.
pub struct Request<'a> {
    pub method: &'a str,
    /// The path as it came, percent-encoded.
    pub path: &'a str,
    /// The query string as it came, without `?`.
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    /// The URI's authority, which HTTP/2 carries instead of a `host` header.
    pub authority: Option<&'a str>,
    pub body: &'a [u8],
}

fn incomplete(message: impl Into<String>) -> SqsError {
    SqsError::new(Code::IncompleteSignature, message)
}

/// The signature of `request`, or `None` if it carries no `Authorization` header. `region` is
/// the endpoint's; `now` the server's clock.
pub fn parse(
    request: &Request<'_>,
    region: &str,
    now: DateTime<Utc>,
) -> Result<Option<Signed>, SqsError> {
    let Some(authorization) = request.headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let authorization = authorization
        .to_str()
        .map_err(|_| incomplete("the Authorization header is not ASCII"))?;
    let rest = authorization
        .strip_prefix(ALGORITHM)
        .and_then(|rest| rest.strip_prefix(' '))
        .ok_or_else(|| {
            incomplete(format!(
                "the Authorization header must use {ALGORITHM} (AWS Signature Version 4)"
            ))
        })?;
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (name, value) = part.trim().split_once('=').ok_or_else(|| {
            incomplete(format!(
                "Authorization header part {:?} is not name=value",
                part.trim()
            ))
        })?;
        match name {
            "Credential" => credential = Some(value),
            "SignedHeaders" => signed_headers = Some(value),
            "Signature" => signature = Some(value),
            _ => {}
        }
    }
    let (Some(credential), Some(signed_headers), Some(signature)) =
        (credential, signed_headers, signature)
    else {
        return Err(incomplete(
            "the Authorization header requires Credential, SignedHeaders and Signature",
        ));
    };
    let parts: Vec<&str> = credential.split('/').collect();
    let [key_id, date, cred_region, service, "aws4_request"] = parts[..] else {
        return Err(incomplete(format!(
            "Credential must be <access key id>/<date>/<region>/{SERVICE}/aws4_request"
        )));
    };
    if service != SERVICE {
        return Err(SqsError::new(
            Code::SignatureDoesNotMatch,
            format!("Credential should be scoped to the service '{SERVICE}', not '{service}'"),
        ));
    }
    if cred_region != region {
        return Err(SqsError::new(
            Code::SignatureDoesNotMatch,
            format!(
                "Credential should be scoped to the region '{region}' of this endpoint, not \
                 '{cred_region}'"
            ),
        ));
    }
    let amz_date = request
        .headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| incomplete("a signed request needs the X-Amz-Date header"))?;
    let when = NaiveDateTime::parse_from_str(amz_date, "%Y%m%dT%H%M%SZ")
        .map_err(|_| incomplete("X-Amz-Date must be of the form 20261207T181000Z"))?
        .and_utc();
    if !amz_date.starts_with(date) || date.len() != 8 {
        return Err(SqsError::new(
            Code::SignatureDoesNotMatch,
            format!("Credential should be scoped to the date of X-Amz-Date, {amz_date}"),
        ));
    }
    let skew = (now - when).num_seconds();
    if skew.abs() > MAX_SKEW_SECONDS {
        return Err(SqsError::new(
            Code::SignatureDoesNotMatch,
            format!(
                "Signature expired: {amz_date} is more than 15 minutes from the server's time \
                 {}",
                now.format("%Y%m%dT%H%M%SZ")
            ),
        ));
    }
    let signed_headers: Vec<String> = signed_headers.split(';').map(str::to_owned).collect();
    if !signed_headers.iter().any(|h| h == "host") {
        return Err(incomplete("SignedHeaders must include host"));
    }
    let signature = hex_decode(signature)
        .ok_or_else(|| incomplete("Signature must be 64 hexadecimal digits"))?;
    let scope = format!("{date}/{region}/{SERVICE}/aws4_request");
    let canonical = canonical_request(request, &signed_headers)?;
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{:x}",
        Sha256::digest(canonical.as_bytes())
    );
    Ok(Some(Signed {
        key_id: key_id.to_owned(),
        scope,
        signature,
        string_to_sign,
    }))
}

impl Signed {
    /// Whether the signature is the one `secret` makes; compares in constant time.
    pub fn matches(&self, secret: &[u8]) -> bool {
        let mut key = b"AWS4".to_vec();
        key.extend_from_slice(secret);
        let mut parts = self.scope.split('/');
        for part in parts.by_ref().take(4) {
            key = hmac(&key, part.as_bytes());
        }
        let expected = hmac(&key, self.string_to_sign.as_bytes());
        bool::from(expected.ct_eq(&self.signature))
    }
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn hex_decode(hex: &str) -> Option<Vec<u8>> {
    if hex.len() != 64 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The canonical request of SigV4.
fn canonical_request(request: &Request<'_>, signed_headers: &[String]) -> Result<String, SqsError> {
    // Services other than S3 encode the (already encoded) path once more.
    let path = if request.path.is_empty() {
        "/"
    } else {
        request.path
    };
    let uri = utf8_percent_encode(path, UNRESERVED_AND_SLASH).to_string();
    let mut query: Vec<(String, String)> = form_urlencoded::parse(request.query.as_bytes())
        .map(|(k, v)| {
            (
                utf8_percent_encode(&k, UNRESERVED).to_string(),
                utf8_percent_encode(&v, UNRESERVED).to_string(),
            )
        })
        .collect();
    query.sort();
    let query: Vec<String> = query.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut headers = String::new();
    for name in signed_headers {
        let values: Vec<String> = request
            .headers
            .get_all(name.as_str())
            .iter()
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        let value = if values.is_empty() && name == "host" {
            request
                .authority
                .ok_or_else(|| incomplete("the signed header host is missing"))?
                .to_owned()
        } else if values.is_empty() {
            return Err(incomplete(format!(
                "the signed header {name} is missing from the request"
            )));
        } else {
            values.join(",")
        };
        headers.push_str(&format!("{name}:{value}\n"));
    }
    let body_hash = format!("{:x}", Sha256::digest(request.body));
    if let Some(claimed) = request.headers.get("x-amz-content-sha256") {
        if claimed.as_bytes() != body_hash.as_bytes() {
            return Err(SqsError::new(
                Code::SignatureDoesNotMatch,
                "X-Amz-Content-Sha256 is not the SHA-256 of the body",
            ));
        }
    }
    Ok(format!(
        "{}\n{uri}\n{}\n{headers}\n{}\n{body_hash}",
        request.method,
        query.join("&"),
        signed_headers.join(";"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn the_canonical_request_sorts_the_query_and_encodes_the_path_again() {
        let headers = headers(&[
            ("host", "example.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
        ]);
        let request = Request {
            method: "GET",
            path: "/a%20b/",
            query: "Param2=value2&Param1=value%201",
            headers: &headers,
            authority: None,
            body: b"",
        };
        let canonical = canonical_request(&request, &["host".into(), "x-amz-date".into()]).unwrap();
        assert_eq!(
            canonical,
            "GET\n/a%2520b/\nParam1=value%201&Param2=value2\nhost:example.amazonaws.com\n\
             x-amz-date:20150830T123600Z\n\nhost;x-amz-date\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn signatures_verify_only_with_the_secret_in_the_window_and_scope() {
        // AWS's documented example: the key of the get-vanilla case and its signature.
        let secret = b"wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        let at = NaiveDateTime::parse_from_str("20150830T123600Z", "%Y%m%dT%H%M%SZ")
            .unwrap()
            .and_utc();
        let headers = headers(&[
            ("host", "example.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
            (
                "authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
                 SignedHeaders=host;x-amz-date, \
                 Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            ),
        ]);
        let request = Request {
            method: "GET",
            path: "/",
            query: "",
            headers: &headers,
            authority: None,
            body: b"",
        };
        // The suite signs for the service "service"; this endpoint only accepts "sqs".
        let err = parse(&request, "us-east-1", at).unwrap_err();
        assert_eq!(err.code, Code::SignatureDoesNotMatch);

        // The suite's own scope, set by hand: the signature matches() derives must be the
        // suite's, and only under its secret.
        let signed = Signed {
            key_id: "AKIDEXAMPLE".into(),
            scope: "20150830/us-east-1/service/aws4_request".into(),
            signature: hex_decode(
                "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            )
            .unwrap(),
            string_to_sign: format!(
                "{ALGORITHM}\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n{:x}",
                Sha256::digest(
                    canonical_request(&request, &["host".into(), "x-amz-date".into()])
                        .unwrap()
                        .as_bytes()
                )
            ),
        };
        assert!(signed.matches(secret));
        assert!(!signed.matches(b"wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEz"));
    }

    #[test]
    fn stale_dates_other_regions_and_partial_headers_are_refused() {
        let at = NaiveDateTime::parse_from_str("20261207T120000Z", "%Y%m%dT%H%M%SZ")
            .unwrap()
            .and_utc();
        let auth = |date: &str, region: &str| {
            format!(
                "AWS4-HMAC-SHA256 Credential=SLKABCDEFGHIJKLMNOPQ/{}/{region}/sqs/aws4_request, \
                 SignedHeaders=host;x-amz-date, Signature={}",
                &date[..8],
                "0".repeat(64)
            )
        };
        let check = |date: &str, region: &str| {
            let headers = headers(&[
                ("host", "localhost"),
                ("x-amz-date", date),
                ("authorization", &auth(date, region)),
            ]);
            let request = Request {
                method: "POST",
                path: "/",
                query: "",
                headers: &headers,
                authority: None,
                body: b"{}",
            };
            parse(&request, "us-east-1", at).map(|signed| signed.is_some())
        };
        assert_eq!(check("20261207T121400Z", "us-east-1"), Ok(true));
        let stale = check("20261207T114400Z", "us-east-1").unwrap_err();
        assert_eq!(stale.code, Code::SignatureDoesNotMatch);
        assert!(stale.message.contains("Signature expired"), "{stale}");
        let region = check("20261207T120000Z", "eu-west-1").unwrap_err();
        assert!(region.message.contains("eu-west-1"), "{region}");

        let headers = headers(&[
            ("x-amz-date", "20261207T120000Z"),
            (
                "authorization",
                "AWS4-HMAC-SHA256 Credential=x/20261207/us-east-1/sqs/aws4_request",
            ),
        ]);
        let request = Request {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            authority: None,
            body: b"",
        };
        let err = parse(&request, "us-east-1", at).unwrap_err();
        assert_eq!(err.code, Code::IncompleteSignature);
    }
}

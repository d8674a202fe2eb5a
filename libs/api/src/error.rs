//! One error type for the public API boundary. Each variant is a decision a client can act on
//! (fix the request, retry, give up), and it maps to exactly one gRPC code.

use tonic::{Code, Status};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request is malformed or outside a limit; `field` names what to fix.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{what} already exists")]
    AlreadyExists { what: String },
    /// The request is well formed but the state does not allow it, e.g. a stale receipt handle.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Lost a race with a change elsewhere, such as a queue's partition moving to another
    /// backend cluster: look the state up again and retry.
    #[error("{0}")]
    Aborted(String),
    /// Out of a resource that frees up by itself (a cluster full of queues); retry later.
    #[error("{0}")]
    ResourceExhausted(String),
    /// Refused to keep a limit (a rate, a concurrency cap); nothing was done. Retry after
    /// `retry_after`, which the status carries as the `retry-after-ms` metadata entry.
    #[error("{message}")]
    Throttled {
        message: String,
        retry_after: std::time::Duration,
    },
    /// Transient; retry with backoff.
    #[error("{0}")]
    Unavailable(String),
    /// The caller's credentials are missing, unknown, revoked or wrong. The message never
    /// repeats a secret.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is known but its policy does not allow the action on the queue.
    #[error("{0}")]
    PermissionDenied(String),
    /// The feature exists in the API but this deployment cannot serve it.
    #[error("{0}")]
    Unimplemented(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Error::NotFound { what: what.into() }
    }

    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::NotFound { .. } => Code::NotFound,
            Error::AlreadyExists { .. } => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Aborted(_) => Code::Aborted,
            Error::ResourceExhausted(_) | Error::Throttled { .. } => Code::ResourceExhausted,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::Internal(_) => Code::Internal,
        }
    }

    /// The code's name as the batch APIs report it per entry, e.g. `INVALID_ARGUMENT`.
    pub fn code_name(&self) -> &'static str {
        code_name(self.code())
    }
}

pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The metadata entry of a throttled request's status: milliseconds to wait before retrying.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let mut status = Status::new(err.code(), err.to_string());
        if let Error::Throttled { retry_after, .. } = err {
            let millis = u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX);
            status.metadata_mut().insert(RETRY_AFTER_MS, millis.into());
        }
        status
    }
}

/// How long a RESOURCE_EXHAUSTED status asks the caller to wait, if it says.
pub fn retry_after(status: &Status) -> Option<std::time::Duration> {
    let millis = status.metadata().get(RETRY_AFTER_MS)?.to_str().ok()?;
    millis.parse().ok().map(std::time::Duration::from_millis)
}

/// Whether a status was made on this side by a failed connection rather than sent by the peer:
/// tonic reports those as UNKNOWN (a connection that broke), UNAVAILABLE (one a lazy channel
/// could not open) or CANCELLED (one the server closed before answering, as after refusing a
/// TLS handshake) with the transport error as the status's source, which a status decoded from
/// a peer's answer never has. Callers treat them as UNAVAILABLE.
pub fn is_transport_failure(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unknown | Code::Unavailable | Code::Cancelled
    ) && std::error::Error::source(status).is_some()
}

/// Turns a status from another Sluice tier back into the error it was made from, so a frontend
/// passes a backend's answer on with the same code and message.
impl From<Status> for Error {
    fn from(status: Status) -> Self {
        let message = status.message();
        let strip = |suffix: &str| message.strip_suffix(suffix).unwrap_or(message).to_owned();
        match status.code() {
            Code::InvalidArgument => match message
                .strip_prefix("invalid ")
                .and_then(|rest| rest.split_once(": "))
            {
                Some((field, reason)) => Error::invalid(field, reason),
                None => Error::invalid("request", message),
            },
            Code::NotFound => Error::NotFound {
                what: strip(" not found"),
            },
            Code::AlreadyExists => Error::AlreadyExists {
                what: strip(" already exists"),
            },
            Code::FailedPrecondition => Error::FailedPrecondition(message.to_owned()),
            Code::Aborted => Error::Aborted(message.to_owned()),
            Code::ResourceExhausted => match retry_after(&status) {
                Some(retry_after) => Error::Throttled {
                    message: message.to_owned(),
                    retry_after,
                },
                None => Error::ResourceExhausted(message.to_owned()),
            },
            Code::Unavailable => Error::Unavailable(message.to_owned()),
            Code::Unauthenticated => Error::Unauthenticated(message.to_owned()),
            Code::PermissionDenied => Error::PermissionDenied(message.to_owned()),
            Code::DeadlineExceeded | Code::Cancelled => {
                Error::Unavailable(format!("{}: {message}", code_name(status.code())))
            }
            Code::Unimplemented => Error::Unimplemented(message.to_owned()),
            Code::Internal => Error::Internal(
                message
                    .strip_prefix("internal error: ")
                    .unwrap_or(message)
                    .to_owned(),
            ),
            code => Error::Internal(format!("{}: {message}", code_name(code))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_comes_back_as_the_error_it_was_made_from() {
        for err in [
            Error::invalid("receipt_handle", "garbled: bad base64"),
            Error::not_found("queue \"orders\""),
            Error::AlreadyExists {
                what: "queue \"orders\"".into(),
            },
            Error::FailedPrecondition("stale receipt".into()),
            Error::Aborted("queue 7 is sealed here".into()),
            Error::ResourceExhausted("slow down".into()),
            Error::Throttled {
                message: "queue \"q\" is over its limit".into(),
                retry_after: std::time::Duration::from_millis(250),
            },
            Error::Unavailable("closed".into()),
            Error::Unauthenticated("invalid credentials".into()),
            Error::PermissionDenied("may not purge queue \"q\"".into()),
            Error::Unimplemented("no".into()),
            Error::Internal("disk on fire".into()),
        ] {
            let status = Status::from(err.clone());
            let back = Error::from(status.clone());
            assert_eq!(back, err);
            assert_eq!(Status::from(back).message(), status.message());
        }
        let throttled = Status::from(Error::Throttled {
            message: "over".into(),
            retry_after: std::time::Duration::from_millis(1500),
        });
        assert_eq!(throttled.code(), Code::ResourceExhausted);
        assert_eq!(
            throttled.metadata().get(RETRY_AFTER_MS).unwrap(),
            "1500",
            "the status says how long to wait"
        );
        let timeout = Error::from(Status::deadline_exceeded("backend took too long"));
        assert_eq!(timeout.code(), Code::Unavailable);
    }

    #[test]
    fn invalid_argument_names_the_field() {
        let status = Status::from(Error::invalid("body", "must be at most 1024 bytes"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "invalid body: must be at most 1024 bytes");
    }
}

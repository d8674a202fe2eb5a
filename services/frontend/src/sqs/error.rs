//! SQS's errors: each has the shape name the JSON protocol puts in `__type`, the legacy code the
//! query protocol and the `x-amzn-query-error` header carry (the AWS SDKs match on the legacy
//! code), the HTTP status, and whether the caller is at fault.

use std::fmt;

use http::StatusCode;
use sluice_api::Error;

macro_rules! codes {
    ($($code:ident => $legacy:literal, $status:literal, $sender:literal;)*) => {
        /// Every error the SQS endpoint answers with.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Code {
            $($code,)*
        }

        impl Code {
            /// The shape name, as in `com.amazonaws.sqs#<shape>`.
            pub fn shape(self) -> &'static str {
                match self {
                    $(Code::$code => stringify!($code),)*
                }
            }

            /// The code of the query protocol and of `x-amzn-query-error`.
            pub fn legacy(self) -> &'static str {
                match self {
                    $(Code::$code => $legacy,)*
                }
            }

            pub fn status(self) -> StatusCode {
                match self {
                    $(Code::$code => StatusCode::from_u16($status).expect("a valid status"),)*
                }
            }

            /// Whether the caller caused it (`Sender`) rather than the service (`Receiver`).
            pub fn sender_fault(self) -> bool {
                match self {
                    $(Code::$code => $sender,)*
                }
            }
        }
    };
}

codes! {
    QueueDoesNotExist => "AWS.SimpleQueueService.NonExistentQueue", 400, true;
    QueueNameExists => "QueueAlreadyExists", 400, true;
    PurgeQueueInProgress => "AWS.SimpleQueueService.PurgeQueueInProgress", 403, true;
    BatchEntryIdsNotDistinct => "AWS.SimpleQueueService.BatchEntryIdsNotDistinct", 400, true;
    BatchRequestTooLong => "AWS.SimpleQueueService.BatchRequestTooLong", 400, true;
    EmptyBatchRequest => "AWS.SimpleQueueService.EmptyBatchRequest", 400, true;
    InvalidBatchEntryId => "AWS.SimpleQueueService.InvalidBatchEntryId", 400, true;
    TooManyEntriesInBatchRequest => "AWS.SimpleQueueService.TooManyEntriesInBatchRequest", 400, true;
    UnsupportedOperation => "AWS.SimpleQueueService.UnsupportedOperation", 400, true;
    MessageNotInflight => "AWS.SimpleQueueService.MessageNotInflight", 400, true;
    ReceiptHandleIsInvalid => "ReceiptHandleIsInvalid", 404, true;
    InvalidAttributeName => "InvalidAttributeName", 400, true;
    InvalidAttributeValue => "InvalidAttributeValue", 400, true;
    InvalidMessageContents => "InvalidMessageContents", 400, true;
    InvalidAddress => "InvalidAddress", 404, true;
    OverLimit => "OverLimit", 403, true;
    RequestThrottled => "RequestThrottled", 403, true;
    ResourceNotFoundException => "ResourceNotFoundException", 404, true;
    InvalidParameterValue => "InvalidParameterValue", 400, true;
    MissingParameter => "MissingParameter", 400, true;
    InvalidAction => "InvalidAction", 400, true;
    AccessDenied => "AccessDenied", 403, true;
    InvalidClientTokenId => "InvalidClientTokenId", 403, true;
    SignatureDoesNotMatch => "SignatureDoesNotMatch", 403, true;
    MissingAuthenticationToken => "MissingAuthenticationToken", 403, true;
    IncompleteSignature => "IncompleteSignature", 400, true;
    ThrottlingException => "ThrottlingException", 400, true;
    InternalFailure => "InternalFailure", 500, false;
    ServiceUnavailable => "ServiceUnavailable", 503, false;
}

/// An SQS error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqsError {
    pub code: Code,
    pub message: String,
}

impl SqsError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        SqsError {
            code,
            message: message.into(),
        }
    }

    /// A parameter out of its range or of the wrong form, named.
    pub fn invalid(parameter: &str, reason: impl fmt::Display) -> Self {
        SqsError::new(
            Code::InvalidParameterValue,
            format!("Value for parameter {parameter} is invalid. Reason: {reason}"),
        )
    }

    pub fn missing(parameter: &str) -> Self {
        SqsError::new(
            Code::MissingParameter,
            format!("The request must contain the parameter {parameter}."),
        )
    }

    pub fn no_queue() -> Self {
        SqsError::new(
            Code::QueueDoesNotExist,
            "The specified queue does not exist.",
        )
    }
}

impl fmt::Display for SqsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.legacy(), self.message)
    }
}

/// The SQS error for an error of Sluice's own API: the codes SQS has for the same decision.
impl From<Error> for SqsError {
    fn from(err: Error) -> Self {
        let mut message = err.to_string();
        let code = match &err {
            Error::InvalidArgument { field, reason } => {
                if field.contains("receipt_handle") {
                    Code::ReceiptHandleIsInvalid
                } else if field.contains("body") && reason.contains("character") {
                    Code::InvalidMessageContents
                } else {
                    Code::InvalidParameterValue
                }
            }
            Error::NotFound { what } if what.starts_with("queue") => {
                message = format!("The specified queue does not exist: {message}.");
                Code::QueueDoesNotExist
            }
            // A receipt handle of a message deleted since, or expired.
            Error::NotFound { what } if what.starts_with("message") => Code::ReceiptHandleIsInvalid,
            Error::NotFound { what } if what.starts_with("move task") => {
                Code::ResourceNotFoundException
            }
            Error::NotFound { .. } => Code::ResourceNotFoundException,
            Error::AlreadyExists { .. } => Code::QueueNameExists,
            Error::FailedPrecondition(reason) if reason.contains("not in flight") => {
                Code::MessageNotInflight
            }
            Error::FailedPrecondition(reason) if reason.contains("was purged") => {
                Code::PurgeQueueInProgress
            }
            Error::FailedPrecondition(reason) if reason.contains("receipt handle") => {
                Code::ReceiptHandleIsInvalid
            }
            Error::FailedPrecondition(_) => Code::UnsupportedOperation,
            Error::Throttled { .. } => Code::RequestThrottled,
            Error::ResourceExhausted(_) => Code::OverLimit,
            Error::Unauthenticated(_) => Code::InvalidClientTokenId,
            Error::PermissionDenied(_) => Code::AccessDenied,
            Error::Unimplemented(_) => Code::UnsupportedOperation,
            Error::Aborted(_) | Error::Unavailable(_) => Code::ServiceUnavailable,
            Error::Internal(_) => Code::InternalFailure,
            _ => Code::InternalFailure,
        };
        SqsError::new(code, message)
    }
}

impl From<tonic::Status> for SqsError {
    fn from(status: tonic::Status) -> Self {
        SqsError::from(Error::from(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_codes_are_the_ones_the_aws_sdks_match() {
        assert_eq!(
            Code::QueueDoesNotExist.legacy(),
            "AWS.SimpleQueueService.NonExistentQueue"
        );
        assert_eq!(Code::QueueNameExists.legacy(), "QueueAlreadyExists");
        assert_eq!(Code::QueueDoesNotExist.shape(), "QueueDoesNotExist");
        assert_eq!(Code::ReceiptHandleIsInvalid.status(), StatusCode::NOT_FOUND);
        assert!(!Code::InternalFailure.sender_fault());
    }

    #[test]
    fn sluice_errors_map_to_the_sqs_code_of_the_same_decision() {
        let cases = [
            (Error::not_found("queue \"a\""), Code::QueueDoesNotExist),
            (
                Error::invalid("receipt_handle", "is garbled"),
                Code::ReceiptHandleIsInvalid,
            ),
            (
                Error::FailedPrecondition("the message is not in flight".into()),
                Code::MessageNotInflight,
            ),
            (
                Error::Throttled {
                    message: "slow down".into(),
                    retry_after: std::time::Duration::from_secs(1),
                },
                Code::RequestThrottled,
            ),
            (Error::PermissionDenied("no".into()), Code::AccessDenied),
            (Error::Internal("boom".into()), Code::InternalFailure),
        ];
        for (err, code) in cases {
            assert_eq!(SqsError::from(err.clone()).code, code, "{err}");
        }
    }
}

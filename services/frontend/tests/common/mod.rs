//! What the frontend's integration tests share.

use tonic::Code;

/// The request was refused with `code`, and its message names `names` (a field, a queue).
pub fn assert_code(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, names: &str) {
    let status = result.expect_err("request must be refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(names),
        "message {:?} should name {names}",
        status.message()
    );
}

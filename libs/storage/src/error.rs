use crate::QueueId;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("queue {0} not found in the engine")]
    QueueNotFound(QueueId),
    /// The handle was not issued by this engine, was altered, or is garbled.
    #[error("receipt handle is not valid: {0}")]
    InvalidReceipt(&'static str),
    #[error("receipt handle belongs to another queue")]
    ReceiptForOtherQueue,
    /// The message was delivered again after this handle was issued.
    #[error("receipt handle is stale: the message was received again since")]
    StaleReceipt,
    /// The queue's partition here is sealed: sends go to its partition on another cluster.
    #[error("queue {0} is sealed here: it moved to another backend cluster")]
    Sealed(QueueId),
    /// The queue cannot be sealed; says why.
    #[error("{0}")]
    CannotSeal(String),
    /// A send carried an idempotency key another send with other messages stored.
    #[error("the key was stored with a send of other messages")]
    IdempotencyKeyReused,
    #[error("the message is no longer in the queue")]
    MessageGone,
    #[error("the message is not in flight")]
    NotInFlight,
    #[error("storage error: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    #[error("the engine is shutting down")]
    Closed,
    /// Less than the configured reserve is free on the engine's disk: sends wait for space.
    #[error("the node's disk is nearly full: {free} bytes free, below the {reserve} bytes it keeps for deletes and compactions; sends are refused until space is freed (delete messages, purge a queue or add disk)")]
    DiskFull { free: u64, reserve: u64 },
    /// A replicated engine on a node that does not lead its cluster (any more).
    #[error("not the leader of the backend cluster: {0}")]
    NotLeader(String),
    /// A move that cannot happen as asked; says why.
    #[error("{0}")]
    MoveFailed(String),
    #[error("move task {0:?} not found")]
    TaskNotFound(String),
    /// Starting a second move task on a queue, or cancelling one that has ended.
    #[error("{0}")]
    TaskConflict(String),
}

impl From<Error> for sluice_api::Error {
    fn from(err: Error) -> Self {
        use sluice_api::Error as E;
        match err {
            Error::QueueNotFound(_) => E::not_found("queue"),
            Error::InvalidReceipt(_) | Error::ReceiptForOtherQueue => {
                E::invalid("receipt_handle", err.to_string())
            }
            Error::StaleReceipt | Error::NotInFlight => E::FailedPrecondition(err.to_string()),
            Error::Sealed(_) => E::Aborted(err.to_string()),
            Error::CannotSeal(_) => E::FailedPrecondition(err.to_string()),
            Error::IdempotencyKeyReused => E::invalid("idempotency_key", err.to_string()),
            Error::MessageGone => E::not_found("message (deleted or expired)"),
            Error::TaskNotFound(id) => E::not_found(format!("move task {id:?}")),
            Error::TaskConflict(_) | Error::MoveFailed(_) => E::FailedPrecondition(err.to_string()),
            Error::Closed | Error::NotLeader(_) => E::Unavailable(err.to_string()),
            Error::DiskFull { .. } => E::ResourceExhausted(err.to_string()),
            Error::Db(_) | Error::Corrupt(_) => E::Internal(err.to_string()),
        }
    }
}

//! The audit log: who created, changed, purged or deleted a queue, started a redrive, or changed
//! a principal, a key or a policy, and whether it was done. One structured line per attempt
//! under the tracing target `sluice::audit` (so a log pipeline can route them apart), with the
//! principal, the action, the queue or identity acted on, and the outcome as a gRPC code name.
//! Never a secret: a key appears by its id only.

use sluice_api::identity::Action;
use sluice_api::Result;

use crate::auth::Identity;

pub const TARGET: &str = "sluice::audit";

/// An attempt at `action` on queue `queue`.
pub fn record<T>(identity: &Identity, action: Action, queue: &str, outcome: &Result<T>) {
    line(identity, action.as_str(), queue, "", outcome);
}

/// An attempt at `operation` (e.g. `create_access_key`) on the principal or key `subject`.
pub fn identity<T>(identity: &Identity, operation: &str, subject: &str, outcome: &Result<T>) {
    line(identity, operation, "", subject, outcome);
}

fn line<T>(identity: &Identity, action: &str, queue: &str, subject: &str, outcome: &Result<T>) {
    match outcome {
        Ok(_) => tracing::info!(
            target: TARGET,
            principal = identity.name(),
            action,
            queue,
            subject,
            outcome = "OK",
            "audit"
        ),
        Err(err) => tracing::info!(
            target: TARGET,
            principal = identity.name(),
            action,
            queue,
            subject,
            outcome = err.code_name(),
            error = %err,
            "audit"
        ),
    }
}

//! What the frontend's integration tests share.

use std::sync::Arc;

use sluice_frontend::auth::{AuthOpts, Authenticator};
use sluice_frontend::{Catalog, QueueServiceImpl};
use sluice_metastore::{EmbeddedStore, StoreDirectory};
use sluice_storage::{Engine, EngineOptions};
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

/// A `QueueService` over a real engine and embedded metadata store in a new temporary
/// directory, which lives as long as what this returns.
pub fn service() -> (QueueServiceImpl, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(EngineOptions::new(dir.path().join("queues"))).unwrap();
    let meta = EmbeddedStore::open(&dir.path().join("meta")).unwrap();
    let directory = Arc::new(StoreDirectory::new(Arc::new(meta)));
    // Callers without credentials are let in, as by standalone on loopback.
    let auth = Authenticator::new(directory.clone(), None, &AuthOpts::default(), true).unwrap();
    let service = QueueServiceImpl::new(Catalog::new(directory), Arc::new(engine), Arc::new(auth));
    (service, dir)
}

//! The `QueueService` implementation: each RPC runs in its span (continuing the caller's trace)
//! and is counted and timed, then handled by `queues` (managing queues and move tasks),
//! `messages` (sending and receiving) or `consume` (the Consume stream).

use std::future::Future;
use std::sync::Arc;

use sluice_api::identity::{Action, Principal};
use sluice_api::{
    EffectiveAttributes, Error, NewMessage, QueueBackend, QueueRecord, Result, SentMessage,
};
use sluice_common::rpc;
use sluice_proto::v1 as pb;
use sluice_proto::v1::queue_service_server::QueueService;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::audit;
use crate::auth::{Authenticated, Authenticator};
use crate::bulkhead::{BulkheadOpts, Bulkheads};
use crate::catalog::Catalog;
use crate::consume::Consumer;
use crate::metrics;
use crate::sse::Encryption;
use crate::throttle::{Caller, RateLimitOpts, RateLimiter};
use crate::validate;

#[derive(Clone)]
pub struct QueueServiceImpl {
    pub(crate) catalog: Catalog,
    pub(crate) backend: Arc<dyn QueueBackend>,
    pub(crate) rates: Arc<RateLimiter>,
    pub(crate) bulkheads: Arc<Bulkheads>,
    pub(crate) auth: Arc<Authenticator>,
    /// Seals and opens messages; `None` without a master key.
    pub(crate) encryption: Option<Arc<Encryption>>,
    /// Cancelled when the server shuts down, which ends the Consume streams.
    closing: CancellationToken,
}

/// The queue a request names, for the RPC span.
pub(crate) trait QueueName {
    fn queue_name(&self) -> &str;
}

macro_rules! queue_name {
    ($($request:ident => $field:ident),* $(,)?) => {
        $(impl QueueName for pb::$request {
            fn queue_name(&self) -> &str {
                &self.$field
            }
        })*
    };
}

queue_name! {
    CreateQueueRequest => name,
    GetQueueRequest => name,
    DeleteQueueRequest => name,
    SetQueueAttributesRequest => name,
    PurgeQueueRequest => name,
    SendMessageRequest => queue,
    SendMessageBatchRequest => queue,
    ReceiveMessageRequest => queue,
    DeleteMessageRequest => queue,
    DeleteMessageBatchRequest => queue,
    ChangeMessageVisibilityRequest => queue,
    ChangeMessageVisibilityBatchRequest => queue,
    StartMessageMoveTaskRequest => source,
    ListMessageMoveTasksRequest => source,
}

/// A task handle starts with its source queue's name.
impl QueueName for pb::CancelMessageMoveTaskRequest {
    fn queue_name(&self) -> &str {
        self.task_handle
            .split_once('/')
            .map_or("", |(queue, _)| queue)
    }
}

/// Listing names no queue.
impl QueueName for pb::ListQueuesRequest {
    fn queue_name(&self) -> &str {
        ""
    }
}

const SERVICE: &str = "sluice.v1.QueueService";

/// What a request needs its caller's policy to allow.
pub(crate) enum Needs<'a> {
    /// `action` on the queue named.
    Action(Action, &'a str),
    /// Any action on the queue named: enough to read its attributes.
    Any(&'a str),
}

/// The permissions a request needs, checked before anything is read or written.
pub(crate) trait Guarded {
    fn needs(&self) -> Vec<Needs<'_>>;
}

macro_rules! guarded {
    ($($request:ident => $action:ident),* $(,)?) => {
        $(impl Guarded for pb::$request {
            fn needs(&self) -> Vec<Needs<'_>> {
                vec![Needs::Action(Action::$action, self.queue_name())]
            }
        })*
    };
}

guarded! {
    DeleteQueueRequest => DeleteQueue,
    PurgeQueueRequest => Purge,
    SendMessageRequest => Send,
    SendMessageBatchRequest => Send,
    ReceiveMessageRequest => Receive,
    DeleteMessageRequest => Delete,
    DeleteMessageBatchRequest => Delete,
    ChangeMessageVisibilityRequest => ChangeVisibility,
    ChangeMessageVisibilityBatchRequest => ChangeVisibility,
    ListMessageMoveTasksRequest => StartMoveTask,
    CancelMessageMoveTaskRequest => StartMoveTask,
}

/// Naming a dead-letter queue sends messages to it: the caller must be allowed to.
fn dead_letter_queue(attributes: Option<&pb::QueueAttributes>) -> Option<&str> {
    let dlq = attributes?
        .redrive_policy
        .as_ref()?
        .dead_letter_queue
        .as_str();
    (!dlq.is_empty()).then_some(dlq)
}

impl Guarded for pb::CreateQueueRequest {
    fn needs(&self) -> Vec<Needs<'_>> {
        let mut needs = vec![Needs::Action(Action::CreateQueue, &self.name)];
        if let Some(dlq) = dead_letter_queue(self.attributes.as_ref()) {
            needs.push(Needs::Action(Action::Send, dlq));
        }
        needs
    }
}

impl Guarded for pb::SetQueueAttributesRequest {
    fn needs(&self) -> Vec<Needs<'_>> {
        let mut needs = vec![Needs::Action(Action::SetAttributes, &self.name)];
        if let Some(dlq) = dead_letter_queue(self.attributes.as_ref()) {
            needs.push(Needs::Action(Action::Send, dlq));
        }
        needs
    }
}

/// A redrive takes messages out of the source and sends them to the destination named. Without
/// one it sends each back to the queue it came from, which could be any queue: the caller must
/// be allowed to send to every queue (a grant on "*", or the admin role).
impl Guarded for pb::StartMessageMoveTaskRequest {
    fn needs(&self) -> Vec<Needs<'_>> {
        let destination = if self.destination.is_empty() {
            "*"
        } else {
            &self.destination
        };
        vec![
            Needs::Action(Action::StartMoveTask, &self.source),
            Needs::Action(Action::Send, destination),
        ]
    }
}

impl Guarded for pb::GetQueueRequest {
    fn needs(&self) -> Vec<Needs<'_>> {
        vec![Needs::Any(&self.name)]
    }
}

/// Listing shows only the queues the caller may do something with; nothing to check first.
impl Guarded for pb::ListQueuesRequest {
    fn needs(&self) -> Vec<Needs<'_>> {
        Vec::new()
    }
}

/// The actions written to the audit log: those that change what a queue is, or empty it.
fn audited(method: &str) -> Option<Action> {
    match method {
        "CreateQueue" => Some(Action::CreateQueue),
        "DeleteQueue" => Some(Action::DeleteQueue),
        "PurgeQueue" => Some(Action::Purge),
        "SetQueueAttributes" | "TagQueue" | "UntagQueue" => Some(Action::SetAttributes),
        "StartMessageMoveTask" => Some(Action::StartMoveTask),
        _ => None,
    }
}

/// Refuses unless `principal` may do what `needs` says.
pub(crate) fn authorize(principal: &Principal, needs: &[Needs<'_>]) -> Result<()> {
    for need in needs {
        let (allowed, action, queue) = match *need {
            Needs::Action(action, queue) => {
                (principal.allows(action, queue), action.as_str(), queue)
            }
            Needs::Any(queue) => (principal.allows_any(queue), "any action", queue),
        };
        if !allowed {
            metrics::PERMISSION_DENIED
                .with_label_values(&[action])
                .inc();
            let what = if matches!(need, Needs::Action(Action::Admin, _)) {
                "manage principals, keys and policies (the admin action)".to_owned()
            } else {
                format!("{action} on queue {queue:?}")
            };
            return Err(Error::PermissionDenied(format!(
                "principal {:?} may not {what}",
                principal.name
            )));
        }
    }
    Ok(())
}

impl QueueServiceImpl {
    /// Runs one RPC inside a span that continues the caller's trace, counts it by gRPC code
    /// and times it. The caller is authenticated and its policy checked first; `work` gets the
    /// caller. Queue administration is written to the audit log with its outcome.
    pub(crate) async fn observed<R, T, Fut>(
        &self,
        method: &'static str,
        request: Request<R>,
        work: impl FnOnce(Caller, R) -> Fut,
    ) -> Result<Response<T>, Status>
    where
        R: QueueName + Guarded,
        Fut: Future<Output = Result<T>>,
    {
        let peer = request.remote_addr();
        let (metadata, extensions, request) = request.into_parts();
        let queue = request.queue_name().to_owned();
        rpc::observe(SERVICE, method, &queue, &metadata, &metrics::RPC, async {
            // The SQS endpoint authenticated the caller by its signature already.
            let identity = match extensions.get::<Authenticated>() {
                Some(Authenticated(identity)) => identity.clone(),
                None => self.auth.authenticate(&metadata, peer).await?,
            };
            let checked = authorize(&identity.principal, &request.needs());
            let outcome = match checked {
                Ok(()) => {
                    let caller = Caller::of(identity.clone(), &metadata, peer)?;
                    work(caller, request).await
                }
                Err(err) => Err(err),
            };
            if let Some(action) = audited(method) {
                audit::record(&identity, action, &queue, &outcome);
            }
            outcome
        })
        .await
    }
}

impl QueueServiceImpl {
    /// A service with the default rate limits, on a frontend alone, admitting callers as
    /// `auth` says.
    pub fn new(catalog: Catalog, backend: Arc<dyn QueueBackend>, auth: Arc<Authenticator>) -> Self {
        metrics::register();
        QueueServiceImpl {
            catalog,
            backend,
            auth,
            encryption: None,
            rates: Arc::new(RateLimiter::new(
                RateLimitOpts::default(),
                Default::default(),
            )),
            bulkheads: Arc::new(Bulkheads::new(BulkheadOpts::default())),
            closing: CancellationToken::new(),
        }
    }

    /// Encrypts the messages of queues with `server_side_encryption` with `encryption`.
    pub fn with_encryption(mut self, encryption: Arc<Encryption>) -> Self {
        self.encryption = Some(encryption);
        self
    }

    /// Refuses attributes asking for encryption this frontend cannot do.
    pub(crate) fn can_encrypt(&self, attributes: &EffectiveAttributes) -> Result<()> {
        if attributes.server_side_encryption && self.encryption.is_none() {
            return Err(Error::FailedPrecondition(
                "server_side_encryption needs a master key, and this frontend has none \
                 (--master-key-file)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Makes the data key of `queue` if it encrypts its messages and has none yet.
    pub(crate) async fn ensure_data_key(&self, queue: &QueueRecord) -> Result<()> {
        match &self.encryption {
            Some(encryption) if queue.attributes.server_side_encryption => {
                encryption.ensure_key(queue.id).await
            }
            _ => Ok(()),
        }
    }

    /// Stores `messages` in `queue`, sealed if it encrypts its messages.
    pub(crate) async fn store(
        &self,
        queue: &QueueRecord,
        mut messages: Vec<NewMessage>,
    ) -> Result<Vec<SentMessage>> {
        match &self.encryption {
            Some(encryption) => encryption.seal(queue, &mut messages).await?,
            None => self.can_encrypt(&queue.attributes)?,
        }
        self.backend.send(queue.id, messages).await
    }

    /// Holds requests to `rates` instead of the default limits.
    pub fn with_rate_limits(mut self, rates: RateLimiter) -> Self {
        self.rates = Arc::new(rates);
        self
    }

    /// Caps work in flight by `bulkheads` instead of the default caps.
    pub fn with_bulkheads(mut self, bulkheads: BulkheadOpts) -> Self {
        self.bulkheads = Arc::new(Bulkheads::new(bulkheads));
        self
    }

    /// Runs quick work (queue administration) in the short-calls bulkhead.
    async fn quick<R: QueueName, T, Fut>(&self, req: R, work: impl FnOnce(R) -> Fut) -> Result<T>
    where
        Fut: Future<Output = Result<T>>,
    {
        let _pass = self.bulkheads.short(req.queue_name())?;
        work(req).await
    }

    /// Ends the Consume streams once `shutdown` is cancelled; [`crate::serve`] calls it.
    pub fn ending_streams_on(mut self, shutdown: CancellationToken) -> Self {
        self.closing = shutdown;
        self
    }

    /// Runs `work` on queue `name`, and once more if the queue's record this frontend had
    /// names a queue that is gone: deleted and perhaps created again under the same name
    /// through another frontend since the record was cached. Then the record is read again,
    /// so no request is served from the old one.
    async fn recreated<T, Fut>(&self, name: &str, work: impl Fn() -> Fut) -> Result<T>
    where
        Fut: Future<Output = Result<T>>,
    {
        match work().await {
            Err(Error::NotFound { what }) if what == "queue" => {
                let fresh = self.catalog.require_fresh(name).await?;
                tracing::debug!(queue = name, queue_id = fresh.record.id, "the cached queue record was of a queue gone since; running again on the fresh one");
                work().await
            }
            other => other,
        }
    }

    pub(crate) async fn queue(&self, field: &str, name: &str) -> Result<QueueRecord> {
        validate::queue_name(field, name)?;
        Ok(self.catalog.require(name).await?.record)
    }
}

#[tonic::async_trait]
impl QueueService for QueueServiceImpl {
    async fn start_message_move_task(
        &self,
        request: Request<pb::StartMessageMoveTaskRequest>,
    ) -> Result<Response<pb::StartMessageMoveTaskResponse>, Status> {
        self.observed("StartMessageMoveTask", request, |_, req| {
            self.quick(req, |req| self.start_message_move_task(req))
        })
        .await
    }

    async fn list_message_move_tasks(
        &self,
        request: Request<pb::ListMessageMoveTasksRequest>,
    ) -> Result<Response<pb::ListMessageMoveTasksResponse>, Status> {
        self.observed("ListMessageMoveTasks", request, |_, req| {
            self.quick(req, |req| self.list_message_move_tasks(req))
        })
        .await
    }

    async fn cancel_message_move_task(
        &self,
        request: Request<pb::CancelMessageMoveTaskRequest>,
    ) -> Result<Response<pb::CancelMessageMoveTaskResponse>, Status> {
        self.observed("CancelMessageMoveTask", request, |_, req| {
            self.quick(req, |req| self.cancel_message_move_task(req))
        })
        .await
    }

    async fn create_queue(
        &self,
        request: Request<pb::CreateQueueRequest>,
    ) -> Result<Response<pb::CreateQueueResponse>, Status> {
        self.observed("CreateQueue", request, |_, req| {
            self.quick(req, |req| self.create_queue(req))
        })
        .await
    }

    async fn get_queue(
        &self,
        request: Request<pb::GetQueueRequest>,
    ) -> Result<Response<pb::GetQueueResponse>, Status> {
        self.observed("GetQueue", request, |_, req| {
            self.quick(req, |req| async move {
                self.recreated(&req.name, || self.get_queue(&req)).await
            })
        })
        .await
    }

    async fn list_queues(
        &self,
        request: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        self.observed("ListQueues", request, |caller, req| {
            self.quick(req, |req| async move {
                self.list_queues(req, &caller.identity().principal).await
            })
        })
        .await
    }

    async fn delete_queue(
        &self,
        request: Request<pb::DeleteQueueRequest>,
    ) -> Result<Response<pb::DeleteQueueResponse>, Status> {
        self.observed("DeleteQueue", request, |_, req| {
            self.quick(req, |req| self.delete_queue(req))
        })
        .await
    }

    async fn set_queue_attributes(
        &self,
        request: Request<pb::SetQueueAttributesRequest>,
    ) -> Result<Response<pb::SetQueueAttributesResponse>, Status> {
        self.observed("SetQueueAttributes", request, |_, req| {
            self.quick(req, |req| self.set_queue_attributes(req))
        })
        .await
    }

    async fn purge_queue(
        &self,
        request: Request<pb::PurgeQueueRequest>,
    ) -> Result<Response<pb::PurgeQueueResponse>, Status> {
        self.observed("PurgeQueue", request, |_, req| {
            self.quick(req, |req| async move {
                self.recreated(&req.name, || self.purge_queue(&req)).await
            })
        })
        .await
    }

    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        self.observed("SendMessage", request, |caller, req| async move {
            self.recreated(&req.queue, || self.send_message(&caller, &req))
                .await
        })
        .await
    }

    async fn send_message_batch(
        &self,
        request: Request<pb::SendMessageBatchRequest>,
    ) -> Result<Response<pb::SendMessageBatchResponse>, Status> {
        self.observed("SendMessageBatch", request, |caller, req| async move {
            self.recreated(&req.queue, || self.send_message_batch(&caller, &req))
                .await
        })
        .await
    }

    async fn receive_message(
        &self,
        request: Request<pb::ReceiveMessageRequest>,
    ) -> Result<Response<pb::ReceiveMessageResponse>, Status> {
        self.observed("ReceiveMessage", request, |caller, req| async move {
            self.recreated(&req.queue, || self.receive_message(&caller, &req))
                .await
        })
        .await
    }

    async fn delete_message(
        &self,
        request: Request<pb::DeleteMessageRequest>,
    ) -> Result<Response<pb::DeleteMessageResponse>, Status> {
        self.observed("DeleteMessage", request, |caller, req| async move {
            self.recreated(&req.queue, || self.delete_message(&caller, &req))
                .await
        })
        .await
    }

    async fn delete_message_batch(
        &self,
        request: Request<pb::DeleteMessageBatchRequest>,
    ) -> Result<Response<pb::DeleteMessageBatchResponse>, Status> {
        self.observed("DeleteMessageBatch", request, |caller, req| async move {
            self.recreated(&req.queue, || self.delete_message_batch(&caller, &req))
                .await
        })
        .await
    }

    async fn change_message_visibility(
        &self,
        request: Request<pb::ChangeMessageVisibilityRequest>,
    ) -> Result<Response<pb::ChangeMessageVisibilityResponse>, Status> {
        self.observed(
            "ChangeMessageVisibility",
            request,
            |caller, req| async move {
                self.recreated(&req.queue, || self.change_message_visibility(&caller, &req))
                    .await
            },
        )
        .await
    }

    async fn change_message_visibility_batch(
        &self,
        request: Request<pb::ChangeMessageVisibilityBatchRequest>,
    ) -> Result<Response<pb::ChangeMessageVisibilityBatchResponse>, Status> {
        self.observed(
            "ChangeMessageVisibilityBatch",
            request,
            |caller, req| async move {
                self.recreated(&req.queue, || {
                    self.change_message_visibility_batch(&caller, &req)
                })
                .await
            },
        )
        .await
    }

    type ConsumeStream = ReceiverStream<Result<pb::ConsumeResponse, Status>>;

    async fn consume(
        &self,
        request: Request<Streaming<pb::ConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        let peer = request.remote_addr();
        let (metadata, _, mut requests) = request.into_parts();
        let start = match requests.message().await? {
            Some(pb::ConsumeRequest {
                request: Some(pb::consume_request::Request::Start(start)),
            }) => Some(start),
            _ => None,
        };
        let queue = start.as_ref().map_or("", |s| s.queue.as_str()).to_owned();
        let consumer = rpc::observe(
            SERVICE,
            "Consume",
            &queue,
            &metadata,
            &metrics::RPC,
            async {
                let start = start.ok_or_else(|| {
                    Error::invalid(
                        "start",
                        "the first request of a Consume stream must be a start",
                    )
                })?;
                let identity = self.auth.authenticate(&metadata, peer).await?;
                // A stream receives and deletes: the caller needs both.
                authorize(
                    &identity.principal,
                    &[
                        Needs::Action(Action::Receive, &start.queue),
                        Needs::Action(Action::Delete, &start.queue),
                    ],
                )?;
                validate::queue_name("start.queue", &start.queue)?;
                let caller = Caller::of(identity, &metadata, peer)?;
                let pass = self.bulkheads.stream(&caller, &start.queue)?;
                let record = self.catalog.require_fresh(&start.queue).await?.record;
                Consumer::new(
                    self.backend.clone(),
                    (self.rates.clone(), caller, pass),
                    self.encryption.clone(),
                    record,
                    &start,
                    self.closing.clone(),
                )
            },
        )
        .await?
        .into_inner();
        Ok(Response::new(ReceiverStream::new(consumer.spawn(requests))))
    }
}

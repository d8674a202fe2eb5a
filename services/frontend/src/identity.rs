//! The public `sluice.v1.IdentityService`: principals, access keys and policies, for callers
//! with the `admin` action (and any caller's own policy). Secrets are made here, sealed under
//! the master key before they are stored, and shown once, in the answer that creates them.
//! Every change is written to the audit log and forgotten by this frontend's cache at once
//! (the others hear of it through the metadata tier's watch).

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;

use sluice_api::identity::{self, AccessKey, Action, IdentityChange, Principal};
use sluice_api::{now_ms, wire, Error, Result};
use sluice_common::rpc;
use sluice_proto::v1 as pb;
use sluice_proto::v1::identity_service_server::IdentityService;
use tonic::{Request, Response, Status};

use crate::audit;
use crate::auth::{self, Authenticator, Identity, ANONYMOUS};
use crate::metrics;
use crate::service::{authorize, Needs};
use crate::sse::Encryption;

const SERVICE: &str = "sluice.v1.IdentityService";
const DEFAULT_LIST: u32 = 100;
const MAX_LIST: u32 = 1000;
const MAX_GRACE_SECONDS: u32 = 7 * 24 * 3600;
/// Attempts at a read-modify-write of a policy that races with other writers.
const CAS_ATTEMPTS: usize = 8;

#[derive(Clone)]
pub struct IdentityServiceImpl {
    auth: Arc<Authenticator>,
    encryption: Option<Arc<Encryption>>,
}

fn principal_to_pb(principal: &Principal) -> pb::Principal {
    let meta = wire::principal_to_pb(principal);
    pb::Principal {
        name: meta.name,
        admin: meta.admin,
        grants: meta
            .grants
            .into_iter()
            .map(|g| pb::PolicyGrant {
                actions: g.actions,
                queues: g.queues,
            })
            .collect(),
        created_at_ms: meta.created_at_ms,
    }
}

fn key_to_pb(key: &AccessKey) -> pb::AccessKeyInfo {
    pb::AccessKeyInfo {
        id: key.id.clone(),
        principal: key.principal.clone(),
        created_at_ms: key.created_at_ms,
        expires_at_ms: key.expires_at_ms,
    }
}

fn list_limit(limit: u32) -> Result<usize> {
    match limit {
        0 => Ok(DEFAULT_LIST as usize),
        1..=MAX_LIST => Ok(limit as usize),
        _ => Err(Error::invalid(
            "limit",
            format!("must be 1 to {MAX_LIST} (0 means {DEFAULT_LIST})"),
        )),
    }
}

/// A name a stored principal may take: `root` and `anonymous` stand for callers the
/// configuration defines.
fn storable_name(field: &str, name: &str) -> Result<()> {
    identity::principal_name(field, name)?;
    if name == identity::ROOT || name == ANONYMOUS {
        return Err(Error::invalid(
            field,
            format!("{name:?} is reserved for the callers the configuration defines"),
        ));
    }
    Ok(())
}

fn principal_not_found(name: &str) -> Error {
    Error::not_found(format!("principal {name:?}"))
}

fn key_not_found(id: &str) -> Error {
    Error::not_found(format!("access key {id:?}"))
}

fn raced(what: &str) -> Error {
    Error::Aborted(format!("{what} changed while this request ran; try again"))
}

impl IdentityServiceImpl {
    pub fn new(auth: Arc<Authenticator>, encryption: Option<Arc<Encryption>>) -> Self {
        IdentityServiceImpl { auth, encryption }
    }

    async fn rotate_master_key(
        &self,
        _: pb::RotateMasterKeyRequest,
    ) -> Result<pb::RotateMasterKeyResponse> {
        let encryption = self.encryption.as_ref().ok_or_else(|| {
            Error::FailedPrecondition(
                "this frontend has no master key (--master-key-file) to rotate to".into(),
            )
        })?;
        let (data_keys, secrets) = encryption.rewrap(self.auth.directory().as_ref()).await?;
        // Cached keys hold the opened secrets, which did not change; forget them anyway so
        // that the next use proves the re-wrapped ones open.
        self.forget(IdentityChange::All);
        let master_key = encryption.master_keys().current().to_owned();
        tracing::info!(master_key = %master_key, data_keys, secrets, "re-wrapped under the current master key");
        Ok(pb::RotateMasterKeyResponse {
            master_key,
            data_keys_rewrapped: data_keys,
            secrets_rewrapped: secrets,
        })
    }

    /// Runs one RPC in its span, counted and timed: authenticates the caller, checks it holds
    /// `admin` (unless `self_service` says the request is about the caller itself), runs
    /// `work`, and audits changes (`operation` and the principal or key `subject`).
    async fn observed<R, T, Fut>(
        &self,
        method: &'static str,
        request: Request<R>,
        work: impl FnOnce(Identity, R) -> Fut,
    ) -> Result<Response<T>, Status>
    where
        R: IdentityRequest,
        Fut: Future<Output = Result<T>>,
    {
        let peer = request.remote_addr();
        let (metadata, _, request) = request.into_parts();
        rpc::observe(SERVICE, method, "", &metadata, &metrics::RPC, async {
            let caller = self.auth.authenticate(&metadata, peer).await?;
            let change = request.change();
            let outcome = if request.about(&caller) {
                Ok(())
            } else {
                authorize(&caller.principal, &[Needs::Action(Action::Admin, "*")])
            };
            let outcome = match outcome {
                Ok(()) => work(caller.clone(), request).await,
                Err(err) => Err(err),
            };
            if let Some((operation, subject)) = change {
                audit::identity(&caller, operation, &subject, &outcome);
            }
            outcome
        })
        .await
    }

    fn forget(&self, change: IdentityChange) {
        self.auth.forget(&change);
    }

    async fn principal(&self, name: &str) -> Result<(Principal, u64)> {
        self.auth
            .directory()
            .principal(name)
            .await?
            .ok_or_else(|| principal_not_found(name))
    }

    async fn create_principal(
        &self,
        req: pb::CreatePrincipalRequest,
    ) -> Result<pb::CreatePrincipalResponse> {
        storable_name("name", &req.name)?;
        let principal = Principal::new(req.name, req.admin, now_ms());
        if self
            .auth
            .directory()
            .put_principal(&principal, None)
            .await?
            .is_none()
        {
            return Err(Error::AlreadyExists {
                what: format!("principal {:?}", principal.name),
            });
        }
        self.forget(IdentityChange::Principal(principal.name.clone()));
        Ok(pb::CreatePrincipalResponse {
            principal: Some(principal_to_pb(&principal)),
        })
    }

    async fn list_principals(
        &self,
        req: pb::ListPrincipalsRequest,
    ) -> Result<pb::ListPrincipalsResponse> {
        let limit = list_limit(req.limit)?;
        if !req.start_after.is_empty() {
            identity::principal_name("start_after", &req.start_after)?;
        }
        let principals = self
            .auth
            .directory()
            .principals(&req.start_after, limit)
            .await?;
        Ok(pb::ListPrincipalsResponse {
            principals: principals.iter().map(principal_to_pb).collect(),
        })
    }

    /// Deletes the principal first, so its keys stop working at once, then its keys.
    async fn delete_principal(
        &self,
        req: pb::DeletePrincipalRequest,
    ) -> Result<pb::DeletePrincipalResponse> {
        storable_name("name", &req.name)?;
        let directory = self.auth.directory();
        let (_, revision) = self.principal(&req.name).await?;
        if !directory.delete_principal(&req.name, revision).await? {
            return Err(raced(&format!("principal {:?}", req.name)));
        }
        self.forget(IdentityChange::Principal(req.name.clone()));
        let mut keys_deleted = 0;
        loop {
            let keys = directory
                .access_keys(Some(&req.name), "", MAX_LIST as usize)
                .await?;
            if keys.is_empty() {
                break;
            }
            for key in keys {
                if let Some((_, revision)) = directory.access_key(&key.id).await? {
                    if directory.delete_access_key(&key.id, revision).await? {
                        keys_deleted += 1;
                    }
                }
                self.forget(IdentityChange::Key(key.id));
            }
        }
        Ok(pb::DeletePrincipalResponse { keys_deleted })
    }

    /// A new key for `principal`, its secret sealed and stored; returns it with the secret.
    async fn new_key(&self, principal: &str) -> Result<(AccessKey, String)> {
        let keys = self.auth.master_keys().ok_or_else(|| {
            Error::FailedPrecondition(
                "this frontend has no master key (--master-key-file), so it cannot keep a \
                 secret"
                    .into(),
            )
        })?;
        let (id, secret) = auth::new_key();
        let key = AccessKey {
            secret: keys.seal(secret.as_bytes(), id.as_bytes()),
            id,
            principal: principal.to_owned(),
            created_at_ms: now_ms(),
            expires_at_ms: None,
        };
        if self
            .auth
            .directory()
            .put_access_key(&key, None)
            .await?
            .is_none()
        {
            // 85 random bits collided: vanishingly rare, and nothing was written.
            return Err(raced(&format!("access key {:?}", key.id)));
        }
        self.forget(IdentityChange::Key(key.id.clone()));
        Ok((key, secret.to_string()))
    }

    async fn create_access_key(
        &self,
        req: pb::CreateAccessKeyRequest,
    ) -> Result<pb::CreateAccessKeyResponse> {
        storable_name("principal", &req.principal)?;
        self.principal(&req.principal).await?;
        let (key, secret) = self.new_key(&req.principal).await?;
        Ok(pb::CreateAccessKeyResponse {
            key: Some(key_to_pb(&key)),
            secret,
        })
    }

    async fn list_access_keys(
        &self,
        req: pb::ListAccessKeysRequest,
    ) -> Result<pb::ListAccessKeysResponse> {
        let limit = list_limit(req.limit)?;
        let principal = (!req.principal.is_empty()).then_some(req.principal.as_str());
        if let Some(principal) = principal {
            identity::principal_name("principal", principal)?;
        }
        if !req.start_after.is_empty() {
            identity::key_id("start_after", &req.start_after)?;
        }
        let keys = self
            .auth
            .directory()
            .access_keys(principal, &req.start_after, limit)
            .await?;
        Ok(pb::ListAccessKeysResponse {
            keys: keys.iter().map(key_to_pb).collect(),
        })
    }

    async fn access_key(&self, id: &str) -> Result<(AccessKey, u64)> {
        identity::key_id("id", id)?;
        self.auth
            .directory()
            .access_key(id)
            .await?
            .ok_or_else(|| key_not_found(id))
    }

    async fn revoke_access_key(
        &self,
        req: pb::RevokeAccessKeyRequest,
    ) -> Result<pb::RevokeAccessKeyResponse> {
        let (_, revision) = self.access_key(&req.id).await?;
        if !self
            .auth
            .directory()
            .delete_access_key(&req.id, revision)
            .await?
        {
            return Err(raced(&format!("access key {:?}", req.id)));
        }
        self.forget(IdentityChange::Key(req.id));
        Ok(pb::RevokeAccessKeyResponse {})
    }

    /// A new key first, so that the principal is never left without one; then the old key goes
    /// at once, or gets its expiry.
    async fn rotate_access_key(
        &self,
        req: pb::RotateAccessKeyRequest,
    ) -> Result<pb::RotateAccessKeyResponse> {
        if req.grace_seconds > MAX_GRACE_SECONDS {
            return Err(Error::invalid(
                "grace_seconds",
                format!("must be 0 to {MAX_GRACE_SECONDS}"),
            ));
        }
        let (mut old, revision) = self.access_key(&req.id).await?;
        if !old.live_at(now_ms()) {
            return Err(Error::FailedPrecondition(format!(
                "access key {:?} has expired: create a new key instead",
                old.id
            )));
        }
        let (key, secret) = self.new_key(&old.principal).await?;
        let directory = self.auth.directory();
        let replaced = if req.grace_seconds == 0 {
            directory.delete_access_key(&old.id, revision).await?
        } else {
            old.expires_at_ms = Some(now_ms() + u64::from(req.grace_seconds) * 1000);
            directory
                .put_access_key(&old, Some(revision))
                .await?
                .is_some()
        };
        self.forget(IdentityChange::Key(old.id.clone()));
        if !replaced {
            return Err(raced(&format!(
                "access key {:?} (the new key {:?} was made and works)",
                old.id, key.id
            )));
        }
        Ok(pb::RotateAccessKeyResponse {
            key: Some(key_to_pb(&key)),
            secret,
            replaced: Some(key_to_pb(&old)),
        })
    }

    /// Changes `name`'s policy with `change` (which says whether it changed anything), by
    /// compare-and-swap on the revision it was read at, again if another write came between.
    async fn change_policy(
        &self,
        name: &str,
        change: impl Fn(&mut Principal) -> bool,
    ) -> Result<Principal> {
        storable_name("principal", name)?;
        for _ in 0..CAS_ATTEMPTS {
            let (mut principal, revision) = self.principal(name).await?;
            if !change(&mut principal) {
                return Ok(principal);
            }
            principal.check()?;
            if self
                .auth
                .directory()
                .put_principal(&principal, Some(revision))
                .await?
                .is_some()
            {
                self.forget(IdentityChange::Principal(name.to_owned()));
                return Ok(principal);
            }
        }
        Err(raced(&format!("principal {name:?}")))
    }

    fn grant_args(actions: &[String], queues: &str) -> Result<BTreeSet<Action>> {
        let actions = wire::actions_from_pb("actions", actions)?;
        identity::check_grant("grant", &actions, queues)?;
        Ok(actions)
    }

    async fn grant(&self, req: pb::GrantRequest) -> Result<pb::GrantResponse> {
        let actions = Self::grant_args(&req.actions, &req.queues)?;
        let principal = self
            .change_policy(&req.principal, |p| p.grant(&actions, &req.queues))
            .await?;
        Ok(pb::GrantResponse {
            principal: Some(principal_to_pb(&principal)),
        })
    }

    async fn revoke(&self, req: pb::RevokeRequest) -> Result<pb::RevokeResponse> {
        let actions = Self::grant_args(&req.actions, &req.queues)?;
        let principal = self
            .change_policy(&req.principal, |p| p.revoke(&actions, &req.queues))
            .await?;
        Ok(pb::RevokeResponse {
            principal: Some(principal_to_pb(&principal)),
        })
    }

    async fn get_policy(
        &self,
        caller: &Identity,
        req: pb::GetPolicyRequest,
    ) -> Result<pb::GetPolicyResponse> {
        let principal = if req.principal.is_empty() || req.principal == caller.name() {
            (*caller.principal).clone()
        } else {
            identity::principal_name("principal", &req.principal)?;
            self.principal(&req.principal).await?.0
        };
        Ok(pb::GetPolicyResponse {
            principal: Some(principal_to_pb(&principal)),
        })
    }
}

/// What an identity request changes, for the audit log, and whether it is about the caller.
trait IdentityRequest {
    /// The operation and the principal or key it changes; `None` for a read.
    fn change(&self) -> Option<(&'static str, String)> {
        None
    }

    /// A request about the caller itself needs no `admin`.
    fn about(&self, _caller: &Identity) -> bool {
        false
    }
}

impl IdentityRequest for pb::ListPrincipalsRequest {}
impl IdentityRequest for pb::ListAccessKeysRequest {}

macro_rules! changes {
    ($($request:ident => $operation:literal, $subject:ident),* $(,)?) => {
        $(impl IdentityRequest for pb::$request {
            fn change(&self) -> Option<(&'static str, String)> {
                Some(($operation, self.$subject.clone()))
            }
        })*
    };
}

changes! {
    CreatePrincipalRequest => "create_principal", name,
    DeletePrincipalRequest => "delete_principal", name,
    CreateAccessKeyRequest => "create_access_key", principal,
    RevokeAccessKeyRequest => "revoke_access_key", id,
    RotateAccessKeyRequest => "rotate_access_key", id,
}

impl IdentityRequest for pb::GrantRequest {
    fn change(&self) -> Option<(&'static str, String)> {
        let subject = format!(
            "{} {} on {}",
            self.principal,
            self.actions.join(","),
            self.queues
        );
        Some(("grant", subject))
    }
}

impl IdentityRequest for pb::RevokeRequest {
    fn change(&self) -> Option<(&'static str, String)> {
        let subject = format!(
            "{} {} on {}",
            self.principal,
            self.actions.join(","),
            self.queues
        );
        Some(("revoke", subject))
    }
}

impl IdentityRequest for pb::RotateMasterKeyRequest {
    fn change(&self) -> Option<(&'static str, String)> {
        Some(("rotate_master_key", "master key".into()))
    }
}

impl IdentityRequest for pb::GetPolicyRequest {
    fn about(&self, caller: &Identity) -> bool {
        self.principal.is_empty() || self.principal == caller.name()
    }
}

#[tonic::async_trait]
impl IdentityService for IdentityServiceImpl {
    async fn create_principal(
        &self,
        request: Request<pb::CreatePrincipalRequest>,
    ) -> Result<Response<pb::CreatePrincipalResponse>, Status> {
        self.observed("CreatePrincipal", request, |_, r| self.create_principal(r))
            .await
    }

    async fn list_principals(
        &self,
        request: Request<pb::ListPrincipalsRequest>,
    ) -> Result<Response<pb::ListPrincipalsResponse>, Status> {
        self.observed("ListPrincipals", request, |_, r| self.list_principals(r))
            .await
    }

    async fn delete_principal(
        &self,
        request: Request<pb::DeletePrincipalRequest>,
    ) -> Result<Response<pb::DeletePrincipalResponse>, Status> {
        self.observed("DeletePrincipal", request, |_, r| self.delete_principal(r))
            .await
    }

    async fn create_access_key(
        &self,
        request: Request<pb::CreateAccessKeyRequest>,
    ) -> Result<Response<pb::CreateAccessKeyResponse>, Status> {
        self.observed("CreateAccessKey", request, |_, r| self.create_access_key(r))
            .await
    }

    async fn list_access_keys(
        &self,
        request: Request<pb::ListAccessKeysRequest>,
    ) -> Result<Response<pb::ListAccessKeysResponse>, Status> {
        self.observed("ListAccessKeys", request, |_, r| self.list_access_keys(r))
            .await
    }

    async fn revoke_access_key(
        &self,
        request: Request<pb::RevokeAccessKeyRequest>,
    ) -> Result<Response<pb::RevokeAccessKeyResponse>, Status> {
        self.observed("RevokeAccessKey", request, |_, r| self.revoke_access_key(r))
            .await
    }

    async fn rotate_access_key(
        &self,
        request: Request<pb::RotateAccessKeyRequest>,
    ) -> Result<Response<pb::RotateAccessKeyResponse>, Status> {
        self.observed("RotateAccessKey", request, |_, r| self.rotate_access_key(r))
            .await
    }

    async fn grant(
        &self,
        request: Request<pb::GrantRequest>,
    ) -> Result<Response<pb::GrantResponse>, Status> {
        self.observed("Grant", request, |_, r| self.grant(r)).await
    }

    async fn revoke(
        &self,
        request: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        self.observed("Revoke", request, |_, r| self.revoke(r))
            .await
    }

    async fn rotate_master_key(
        &self,
        request: Request<pb::RotateMasterKeyRequest>,
    ) -> Result<Response<pb::RotateMasterKeyResponse>, Status> {
        self.observed("RotateMasterKey", request, |_, r| self.rotate_master_key(r))
            .await
    }

    async fn get_policy(
        &self,
        request: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::GetPolicyResponse>, Status> {
        self.observed("GetPolicy", request, |caller, r| async move {
            self.get_policy(&caller, r).await
        })
        .await
    }
}

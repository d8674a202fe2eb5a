//! Who may do what. A principal is a named caller (a service, a team, an operator); it holds
//! access keys (an id and a secret, shaped like AWS's so that the SQS endpoint can verify SigV4
//! signatures with them) and a policy: grants of actions on queue-name patterns, or the admin
//! role. Everything not granted is denied. Secrets are stored sealed under the deployment's
//! master key, never in the clear: the server must recover them to check a signature.

use std::collections::BTreeSet;
use std::fmt;

use async_trait::async_trait;

use crate::{Error, Result};

/// What a caller does to a queue, as policies name it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Send,
    Receive,
    Delete,
    ChangeVisibility,
    Purge,
    CreateQueue,
    DeleteQueue,
    SetAttributes,
    StartMoveTask,
    /// Managing principals, keys, policies and the master key.
    Admin,
}

impl Action {
    pub const ALL: [Action; 10] = [
        Action::Send,
        Action::Receive,
        Action::Delete,
        Action::ChangeVisibility,
        Action::Purge,
        Action::CreateQueue,
        Action::DeleteQueue,
        Action::SetAttributes,
        Action::StartMoveTask,
        Action::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Send => "send",
            Action::Receive => "receive",
            Action::Delete => "delete",
            Action::ChangeVisibility => "change_visibility",
            Action::Purge => "purge",
            Action::CreateQueue => "create_queue",
            Action::DeleteQueue => "delete_queue",
            Action::SetAttributes => "set_attributes",
            Action::StartMoveTask => "start_move_task",
            Action::Admin => "admin",
        }
    }

    /// The action named `name`; `field` names where it came from in the error.
    pub fn parse(field: &str, name: &str) -> Result<Action> {
        Action::ALL
            .into_iter()
            .find(|action| action.as_str() == name)
            .ok_or_else(|| {
                let known: Vec<_> = Action::ALL.iter().map(|a| a.as_str()).collect();
                Error::invalid(
                    field,
                    format!("unknown action {name:?}; one of {}", known.join(", ")),
                )
            })
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Actions allowed on the queues whose names match `queues`, where `*` matches any run of
/// characters (`orders-*`, `*.fifo`, `*`). Admin is granted on `*` only: it names no queue.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Grant {
    pub actions: BTreeSet<Action>,
    pub queues: String,
}

/// The name of the principal the root credentials from the services' configuration stand for.
pub const ROOT: &str = "root";

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Principal {
    pub name: String,
    /// The admin role: every action on every queue.
    #[serde(default)]
    pub admin: bool,
    #[serde(default)]
    pub grants: Vec<Grant>,
    pub created_at_ms: u64,
}

impl Principal {
    pub fn new(name: impl Into<String>, admin: bool, created_at_ms: u64) -> Self {
        Principal {
            name: name.into(),
            admin,
            grants: Vec::new(),
            created_at_ms,
        }
    }

    pub fn allows(&self, action: Action, queue: &str) -> bool {
        self.admin
            || self.grants.iter().any(|grant| {
                grant.actions.contains(&action) && pattern_matches(&grant.queues, queue)
            })
    }

    /// Whether any action is allowed on `queue`: enough to read its attributes and see it
    /// listed.
    pub fn allows_any(&self, queue: &str) -> bool {
        self.admin
            || self
                .grants
                .iter()
                .any(|grant| !grant.actions.is_empty() && pattern_matches(&grant.queues, queue))
    }

    /// Adds `actions` on `queues` to the policy; whether it changed.
    pub fn grant(&mut self, actions: &BTreeSet<Action>, queues: &str) -> bool {
        match self.grants.iter_mut().find(|g| g.queues == queues) {
            Some(grant) => {
                let before = grant.actions.len();
                grant.actions.extend(actions);
                grant.actions.len() != before
            }
            None => {
                self.grants.push(Grant {
                    actions: actions.clone(),
                    queues: queues.to_owned(),
                });
                true
            }
        }
    }

    /// Takes `actions` on exactly the pattern `queues` out of the policy; whether it changed.
    /// A grant left with no action is removed.
    pub fn revoke(&mut self, actions: &BTreeSet<Action>, queues: &str) -> bool {
        let mut changed = false;
        for grant in self.grants.iter_mut().filter(|g| g.queues == queues) {
            let before = grant.actions.len();
            grant.actions.retain(|a| !actions.contains(a));
            changed |= grant.actions.len() != before;
        }
        self.grants.retain(|g| !g.actions.is_empty());
        changed
    }

    /// Checks a principal another service sent before it is stored.
    pub fn check(&self) -> Result<()> {
        principal_name("principal.name", &self.name)?;
        if self.grants.len() > MAX_GRANTS {
            return Err(Error::invalid(
                "principal.grants",
                format!("at most {MAX_GRANTS} grants"),
            ));
        }
        for grant in &self.grants {
            check_grant("principal.grants", &grant.actions, &grant.queues)?;
        }
        Ok(())
    }
}

/// Most grants one policy holds.
pub const MAX_GRANTS: usize = 100;

/// Checks a grant: at least one action, a valid pattern, and admin only on `*`.
pub fn check_grant(field: &str, actions: &BTreeSet<Action>, queues: &str) -> Result<()> {
    if actions.is_empty() {
        return Err(Error::invalid(
            format!("{field}.actions"),
            "name at least one action",
        ));
    }
    queue_pattern(&format!("{field}.queues"), queues)?;
    if actions.contains(&Action::Admin) && queues != "*" {
        return Err(Error::invalid(
            format!("{field}.actions"),
            "admin names no queue: grant it on \"*\"",
        ));
    }
    Ok(())
}

/// Whether queue `name` matches `pattern`, in which `*` stands for any run of characters.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    // No `*`: the whole name.
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

const MAX_NAME_LEN: usize = 64;
const MAX_PATTERN_LEN: usize = 80;

/// A principal's name: 1 to 64 of `A-Z a-z 0-9 _ . @ -`.
pub fn principal_name(field: &str, name: &str) -> Result<()> {
    let valid = (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.@-".contains(c));
    if valid {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!("must be 1 to {MAX_NAME_LEN} characters of A-Z, a-z, 0-9 and _.@-"),
        ))
    }
}

/// A queue-name pattern: a queue name's characters and `*`, 1 to 80 of them.
pub fn queue_pattern(field: &str, pattern: &str) -> Result<()> {
    let valid = (1..=MAX_PATTERN_LEN).contains(&pattern.len())
        && pattern
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.*".contains(c));
    if valid {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!(
                "must be 1 to {MAX_PATTERN_LEN} characters of A-Z, a-z, 0-9, _-. and * (any run)"
            ),
        ))
    }
}

/// Access key ids start with this, so that one is told from other vendors' keys at a glance.
pub const KEY_ID_PREFIX: &str = "SLK";
/// Ids are 20 characters and secrets 40, as AWS's are.
pub const KEY_ID_LEN: usize = 20;
pub const SECRET_LEN: usize = 40;

/// An access key id: 16 to 128 of `A-Z 0-9` (generated ones are `SLK` and 17 more). Root
/// credentials from configuration may be any such id.
pub fn key_id(field: &str, id: &str) -> Result<()> {
    let valid = (16..=128).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
    if valid {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            "must be 16 to 128 characters of A-Z and 0-9",
        ))
    }
}

/// Bytes sealed with AES-256-GCM under one of the master keys: `key` names which, so that a
/// rotation can tell what it still has to re-wrap.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sealed {
    pub key: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// Never prints the ciphertext: logs stay free of key material even sealed.
impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// A nonce is 96 bits; a sealed secret or data key is at most 1 KiB with its tag.
pub const NONCE_LEN: usize = 12;
const MAX_SEALED_LEN: usize = 1024;

impl Sealed {
    pub fn check(&self, field: &str) -> Result<()> {
        if self.key.is_empty() || self.key.len() > 64 {
            return Err(Error::invalid(
                format!("{field}.key"),
                "must name the master key, 1 to 64 characters",
            ));
        }
        if self.nonce.len() != NONCE_LEN {
            return Err(Error::invalid(
                format!("{field}.nonce"),
                format!("must be {NONCE_LEN} bytes"),
            ));
        }
        if self.ciphertext.is_empty() || self.ciphertext.len() > MAX_SEALED_LEN {
            return Err(Error::invalid(
                format!("{field}.ciphertext"),
                format!("must be 1 to {MAX_SEALED_LEN} bytes"),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccessKey {
    pub id: String,
    pub principal: String,
    /// The secret, sealed with the key id as associated data: a sealed secret copied onto
    /// another key does not open.
    pub secret: Sealed,
    pub created_at_ms: u64,
    /// Set when the key was rotated out with a grace period: it stops working then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
}

impl AccessKey {
    pub fn live_at(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_none_or(|at| now_ms < at)
    }

    /// Checks a key another service sent before it is stored.
    pub fn check(&self) -> Result<()> {
        key_id("access_key.id", &self.id)?;
        principal_name("access_key.principal", &self.principal)?;
        self.secret.check("access_key.secret")
    }
}

/// What changed in the identity store, for the caches that must forget it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityChange {
    Principal(String),
    Key(String),
    /// Changes may have been missed (a watch broke): forget everything.
    All,
}

/// Where principals and access keys live: the metadata tier over the network, or the store in
/// the same process (standalone). Writes compare-and-swap on the revision a record was read at.
#[async_trait]
pub trait IdentityDirectory: Send + Sync + 'static {
    async fn principal(&self, name: &str) -> Result<Option<(Principal, u64)>>;

    /// Principals in name order after `start_after` (empty: from the first), at most `limit`.
    async fn principals(&self, start_after: &str, limit: usize) -> Result<Vec<Principal>>;

    /// Stores `principal`: a new one if `revision` is `None`, else only if it is still at
    /// `revision`. The new revision, or `None` if the compare failed.
    async fn put_principal(
        &self,
        principal: &Principal,
        revision: Option<u64>,
    ) -> Result<Option<u64>>;

    /// Deletes the principal if it is still at `revision`; whether it did. Its keys stay until
    /// deleted, and do not authenticate without it.
    async fn delete_principal(&self, name: &str, revision: u64) -> Result<bool>;

    async fn access_key(&self, id: &str) -> Result<Option<(AccessKey, u64)>>;

    /// Keys in id order after `start_after`, at most `limit`; only `principal`'s if given.
    async fn access_keys(
        &self,
        principal: Option<&str>,
        start_after: &str,
        limit: usize,
    ) -> Result<Vec<AccessKey>>;

    /// Stores `key` as `put_principal` stores a principal.
    async fn put_access_key(&self, key: &AccessKey, revision: Option<u64>) -> Result<Option<u64>>;

    async fn delete_access_key(&self, id: &str, revision: u64) -> Result<bool>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_runs_of_any_characters() {
        for (pattern, name, expected) in [
            ("orders-*", "orders-eu", true),
            ("orders-*", "orders-", true),
            ("orders-*", "billing", false),
            ("orders-*", "xorders-eu", false),
            ("*", "", true),
            ("*", "anything", true),
            ("*.fifo", "jobs.fifo", true),
            ("*.fifo", "jobs", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXcYb", false),
            ("a*a", "a", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ] {
            assert_eq!(
                pattern_matches(pattern, name),
                expected,
                "{pattern:?} on {name:?}"
            );
        }
    }

    fn actions(names: &[Action]) -> BTreeSet<Action> {
        names.iter().copied().collect()
    }

    #[test]
    fn a_policy_allows_only_what_it_grants() {
        let mut p = Principal::new("svc", false, 0);
        assert!(!p.allows(Action::Send, "orders-1"), "default deny");
        assert!(p.grant(&actions(&[Action::Send]), "orders-*"));
        assert!(p.allows(Action::Send, "orders-1"));
        assert!(!p.allows(Action::Receive, "orders-1"));
        assert!(!p.allows(Action::Send, "billing"));
        assert!(p.allows_any("orders-1") && !p.allows_any("billing"));
        assert!(!p.grant(&actions(&[Action::Send]), "orders-*"), "no change");
        assert!(p.grant(&actions(&[Action::Receive]), "orders-*"));
        assert_eq!(p.grants.len(), 1, "one grant per pattern");
        assert!(p.revoke(&actions(&[Action::Send, Action::Receive]), "orders-*"));
        assert!(p.grants.is_empty(), "an empty grant is removed");
        let admin = Principal::new("ops", true, 0);
        assert!(admin.allows(Action::Purge, "billing") && admin.allows(Action::Admin, ""));
    }

    #[test]
    fn bad_grants_and_names_are_refused_naming_the_field() {
        let err = check_grant("grant", &BTreeSet::new(), "*").unwrap_err();
        assert!(err.to_string().contains("grant.actions"), "{err}");
        let err = check_grant("grant", &actions(&[Action::Send]), "a/b").unwrap_err();
        assert!(err.to_string().contains("grant.queues"), "{err}");
        let err = check_grant("grant", &actions(&[Action::Admin]), "orders-*").unwrap_err();
        assert!(err.to_string().contains("admin names no queue"), "{err}");
        assert!(principal_name("name", "team-a@example.com").is_ok());
        assert!(principal_name("name", "no spaces").is_err());
        assert!(key_id("id", "SLKABCDEFGHIJKLMNOPQ").is_ok());
        assert!(key_id("id", "slkabcdefghijklmnopq").is_err());
        let err = Action::parse("actions", "explode").unwrap_err();
        assert!(
            err.to_string().contains("unknown action \"explode\""),
            "{err}"
        );
    }

    #[test]
    fn a_key_stops_working_when_it_expires() {
        let mut key = AccessKey {
            id: "SLKABCDEFGHIJKLMNOPQ".into(),
            principal: "svc".into(),
            secret: Sealed {
                key: "k".into(),
                nonce: vec![0; NONCE_LEN],
                ciphertext: vec![1; 56],
            },
            created_at_ms: 1,
            expires_at_ms: None,
        };
        assert!(key.live_at(u64::MAX));
        key.expires_at_ms = Some(100);
        assert!(key.live_at(99) && !key.live_at(100));
        assert!(key.check().is_ok());
        assert!(
            !format!("{:?}", key.secret).contains('1'),
            "no ciphertext in Debug"
        );
    }
}

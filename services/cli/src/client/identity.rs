//! `sluice admin principal|key|grant|revoke|policy`: principals, access keys and policies,
//! through any frontend's `IdentityService` (the `--endpoint` of the client commands), as a
//! caller with the admin action (the root key at first).

use clap::{Args, Subcommand};
use serde_json::json;
use sluice_proto::v1 as pb;

use super::failed;

#[derive(Subcommand)]
pub enum PrincipalCommand {
    /// Make a principal: a caller that access keys stand for. It may do nothing until granted.
    Create {
        name: String,
        /// The admin role: every action on every queue, and managing principals and keys.
        #[arg(long)]
        admin: bool,
    },
    /// List the principals and their policies.
    List {
        /// Principals per request.
        #[arg(long, default_value_t = 100)]
        page_size: u32,
    },
    /// Delete a principal and every access key it holds.
    Delete { name: String },
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Make an access key for PRINCIPAL. Its secret is printed once, here, and never again.
    Create { principal: String },
    /// List access keys (ids, never secrets).
    List {
        /// Only this principal's keys.
        #[arg(long)]
        principal: Option<String>,
    },
    /// Revoke a key: it stops working on every frontend within seconds.
    Revoke { id: String },
    /// Make a new key for the same principal and retire the old one, at once or after --grace.
    Rotate {
        id: String,
        /// Seconds the old key goes on working, 0 to 604800.
        #[arg(long, default_value_t = 0)]
        grace: u32,
    },
}

#[derive(Args)]
pub struct GrantArgs {
    principal: String,
    /// Comma-separated: send, receive, delete, change_visibility, purge, create_queue,
    /// delete_queue, set_attributes, start_move_task, admin.
    #[arg(long, value_delimiter = ',', required = true)]
    actions: Vec<String>,
    /// Queue-name pattern; `*` matches any run of characters (quote it from the shell).
    #[arg(long)]
    queues: String,
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// A principal's role and grants; your own without PRINCIPAL.
    Show { principal: Option<String> },
}

fn principal_json(p: &pb::Principal) -> serde_json::Value {
    let grants: Vec<_> = p
        .grants
        .iter()
        .map(|g| json!({"actions": g.actions, "queues": g.queues}))
        .collect();
    json!({"name": p.name, "admin": p.admin, "grants": grants, "created_at_ms": p.created_at_ms})
}

fn print_principal(json_out: bool, p: &pb::Principal) {
    if json_out {
        println!("{}", principal_json(p));
        return;
    }
    let role = if p.admin {
        " (admin: every action)"
    } else {
        ""
    };
    println!("principal {}{role}", p.name);
    if p.grants.is_empty() && !p.admin {
        println!("  no grants: every action is denied");
    }
    for g in &p.grants {
        println!("  {} on {}", g.actions.join(", "), g.queues);
    }
}

fn key_json(k: &pb::AccessKeyInfo) -> serde_json::Value {
    json!({
        "id": k.id,
        "principal": k.principal,
        "created_at_ms": k.created_at_ms,
        "expires_at_ms": k.expires_at_ms,
    })
}

fn print_key(k: &pb::AccessKeyInfo) {
    let expiry = k
        .expires_at_ms
        .map_or(String::new(), |at| format!("  expires at {at} ms"));
    println!("{}  {}{expiry}", k.id, k.principal);
}

fn print_new_key(json_out: bool, key: &pb::AccessKeyInfo, secret: &str) {
    if json_out {
        println!("{}", json!({"key": key_json(key), "secret": secret}));
        return;
    }
    println!("access key id      {}", key.id);
    println!("secret access key  {secret}");
    println!("principal          {}", key.principal);
    println!(
        "The secret is shown only now: keep it (SLUICE_ACCESS_KEY_ID, SLUICE_SECRET_ACCESS_KEY)."
    );
}

pub async fn principal(
    endpoint: &str,
    json_out: bool,
    command: PrincipalCommand,
) -> anyhow::Result<()> {
    let mut client = super::identity_client(endpoint)?;
    let err = |status| failed(endpoint, status);
    match command {
        PrincipalCommand::Create { name, admin } => {
            let created = client
                .create_principal(pb::CreatePrincipalRequest { name, admin })
                .await
                .map_err(err)?
                .into_inner();
            print_principal(json_out, &created.principal.unwrap_or_default());
        }
        PrincipalCommand::List { page_size } => {
            let mut after = String::new();
            let mut all = Vec::new();
            loop {
                let page = client
                    .list_principals(pb::ListPrincipalsRequest {
                        start_after: after.clone(),
                        limit: page_size,
                    })
                    .await
                    .map_err(err)?
                    .into_inner()
                    .principals;
                let full = page.len() == page_size as usize;
                after = page.last().map(|p| p.name.clone()).unwrap_or_default();
                all.extend(page);
                if !full {
                    break;
                }
            }
            if json_out {
                let listed: Vec<_> = all.iter().map(principal_json).collect();
                println!("{}", json!({ "principals": listed }));
            } else {
                for p in &all {
                    print_principal(false, p);
                }
            }
        }
        PrincipalCommand::Delete { name } => {
            let deleted = client
                .delete_principal(pb::DeletePrincipalRequest { name: name.clone() })
                .await
                .map_err(err)?
                .into_inner();
            if json_out {
                println!(
                    "{}",
                    json!({"deleted": name, "keys_deleted": deleted.keys_deleted})
                );
            } else {
                println!(
                    "deleted principal {name} and {} access key(s)",
                    deleted.keys_deleted
                );
            }
        }
    }
    Ok(())
}

pub async fn key(endpoint: &str, json_out: bool, command: KeyCommand) -> anyhow::Result<()> {
    let mut client = super::identity_client(endpoint)?;
    let err = |status| failed(endpoint, status);
    match command {
        KeyCommand::Create { principal } => {
            let created = client
                .create_access_key(pb::CreateAccessKeyRequest { principal })
                .await
                .map_err(err)?
                .into_inner();
            print_new_key(json_out, &created.key.unwrap_or_default(), &created.secret);
        }
        KeyCommand::List { principal } => {
            const PAGE: u32 = 1000;
            let mut after = String::new();
            let mut all = Vec::new();
            loop {
                let page = client
                    .list_access_keys(pb::ListAccessKeysRequest {
                        principal: principal.clone().unwrap_or_default(),
                        start_after: after.clone(),
                        limit: PAGE,
                    })
                    .await
                    .map_err(err)?
                    .into_inner()
                    .keys;
                let full = page.len() == PAGE as usize;
                after = page.last().map(|k| k.id.clone()).unwrap_or_default();
                all.extend(page);
                if !full {
                    break;
                }
            }
            if json_out {
                let listed: Vec<_> = all.iter().map(key_json).collect();
                println!("{}", json!({ "keys": listed }));
            } else {
                all.iter().for_each(print_key);
            }
        }
        KeyCommand::Revoke { id } => {
            client
                .revoke_access_key(pb::RevokeAccessKeyRequest { id: id.clone() })
                .await
                .map_err(err)?;
            if json_out {
                println!("{}", json!({ "revoked": id }));
            } else {
                println!("revoked access key {id}");
            }
        }
        KeyCommand::Rotate { id, grace } => {
            let rotated = client
                .rotate_access_key(pb::RotateAccessKeyRequest {
                    id,
                    grace_seconds: grace,
                })
                .await
                .map_err(err)?
                .into_inner();
            let replaced = rotated.replaced.unwrap_or_default();
            print_new_key(json_out, &rotated.key.unwrap_or_default(), &rotated.secret);
            if !json_out {
                match replaced.expires_at_ms {
                    Some(at) => println!("replaced {}: it works until {at} ms", replaced.id),
                    None => println!("replaced {}: it no longer works", replaced.id),
                }
            }
        }
    }
    Ok(())
}

/// Grants (`grant` true) or revokes actions on a pattern.
pub async fn policy_change(
    endpoint: &str,
    json_out: bool,
    grant: bool,
    args: GrantArgs,
) -> anyhow::Result<()> {
    let mut client = super::identity_client(endpoint)?;
    let err = |status| failed(endpoint, status);
    let principal = if grant {
        client
            .grant(pb::GrantRequest {
                principal: args.principal,
                actions: args.actions,
                queues: args.queues,
            })
            .await
            .map_err(err)?
            .into_inner()
            .principal
    } else {
        client
            .revoke(pb::RevokeRequest {
                principal: args.principal,
                actions: args.actions,
                queues: args.queues,
            })
            .await
            .map_err(err)?
            .into_inner()
            .principal
    };
    print_principal(json_out, &principal.unwrap_or_default());
    Ok(())
}

pub async fn rotate_master_key(endpoint: &str, json_out: bool) -> anyhow::Result<()> {
    let rotated = super::identity_client(endpoint)?
        .rotate_master_key(pb::RotateMasterKeyRequest {})
        .await
        .map_err(|status| failed(endpoint, status))?
        .into_inner();
    if json_out {
        println!(
            "{}",
            json!({
                "master_key": rotated.master_key,
                "data_keys_rewrapped": rotated.data_keys_rewrapped,
                "secrets_rewrapped": rotated.secrets_rewrapped,
            })
        );
    } else {
        println!(
            "everything is sealed under master key {} now: re-wrapped {} data key(s) and {} \
             secret(s)",
            rotated.master_key, rotated.data_keys_rewrapped, rotated.secrets_rewrapped
        );
    }
    Ok(())
}

pub async fn policy(endpoint: &str, json_out: bool, command: PolicyCommand) -> anyhow::Result<()> {
    let PolicyCommand::Show { principal } = command;
    let shown = super::identity_client(endpoint)?
        .get_policy(pb::GetPolicyRequest {
            principal: principal.unwrap_or_default(),
        })
        .await
        .map_err(|status| failed(endpoint, status))?
        .into_inner();
    print_principal(json_out, &shown.principal.unwrap_or_default());
    Ok(())
}

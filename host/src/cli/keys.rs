//! `sluice keys`: create, list, update and revoke keys, through the admin API
//! when the gateway runs and the store when it is stopped.

use anyhow::bail;
use clap::Subcommand;

use super::admin_client::admin_call;
use super::args::{Target, load_for_tools, out, parse_age};
use crate::keys::NewKey;
use crate::store::{KeyPatch, KeyStatus};

/// `sluice keys …`.
#[derive(Debug, Subcommand)]
pub(super) enum KeysCommand {
    /// Create a key and print it (alone, on its own line) — it is shown only once.
    Create {
        #[command(flatten)]
        target: Target,
        /// Human name.
        #[arg(long)]
        name: String,
        /// Owner.
        #[arg(long, default_value = "")]
        owner: String,
        /// Allowed models, comma-separated (default: all).
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// Allowed client networks (CIDR), comma-separated (default: any).
        #[arg(long, value_delimiter = ',')]
        networks: Vec<String>,
        /// Quota in credits (default: unlimited).
        #[arg(long)]
        quota: Option<i64>,
        /// Expires after this long (e.g. 30d).
        #[arg(long)]
        expires: Option<String>,
        /// Requests per minute.
        #[arg(long)]
        rpm: Option<u32>,
        /// Tokens per minute.
        #[arg(long)]
        tpm: Option<u32>,
    },
    /// List keys.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Change a key's limits, quota, models or status.
    Update {
        #[command(flatten)]
        target: Target,
        /// Key id.
        id: String,
        /// New quota (resets remaining).
        #[arg(long)]
        quota: Option<i64>,
        /// New allowed models, comma-separated.
        #[arg(long, value_delimiter = ',')]
        models: Option<Vec<String>>,
        /// New RPM limit.
        #[arg(long)]
        rpm: Option<u32>,
        /// New TPM limit.
        #[arg(long)]
        tpm: Option<u32>,
        /// New status: active or disabled.
        #[arg(long)]
        status: Option<String>,
    },
    /// Revoke a key (takes effect on the next request).
    Revoke {
        #[command(flatten)]
        target: Target,
        /// Key id.
        id: String,
    },
}

/// Runs a `keys` command.
pub(super) async fn keys(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create {
            target,
            name,
            owner,
            models,
            networks,
            quota,
            expires,
            rpm,
            tpm,
        } => {
            let config = load_for_tools(&target.config)?;
            let expires_at_ms = expires
                .as_deref()
                .map(parse_age)
                .transpose()?
                .map(|ms| crate::keys::now_ms() + ms);
            let spec = NewKey {
                name,
                owner,
                models,
                networks,
                quota,
                expires_at_ms,
                rpm_limit: rpm,
                tpm_limit: tpm,
            };
            let body = serde_json::json!({"name": spec.name, "owner": spec.owner, "models": spec.models, "networks": spec.networks, "quota": spec.quota, "expires_at_ms": spec.expires_at_ms, "rpm_limit": spec.rpm_limit, "tpm_limit": spec.tpm_limit});
            if let Some(created) =
                admin_call(&config, http::Method::POST, "/admin/keys", Some(body)).await?
            {
                return out(created["key"].as_str().unwrap_or_default());
            }
            let store = crate::store::open(config.store.backend, &config.store.path)?;
            let (secret, record) = crate::keys::generate(&spec)?;
            store.create_key(&record)?;
            out(&secret)
        }
        KeysCommand::List { target } => {
            let config = load_for_tools(&target.config)?;
            let keys = match admin_call(&config, http::Method::GET, "/admin/keys", None).await? {
                Some(v) => serde_json::from_value(v["data"].clone())?,
                None => {
                    let store = crate::store::open(config.store.backend, &config.store.path)?;
                    store
                        .list_keys()?
                        .iter()
                        .map(|k| serde_json::to_value(k).unwrap_or_default())
                        .collect::<Vec<serde_json::Value>>()
                }
            };
            out(&format!(
                "{:<22} {:<14} {:<20} {:<9} {:>12}  MODELS",
                "ID", "PREFIX", "NAME", "STATUS", "QUOTA LEFT"
            ))?;
            for k in keys {
                out(&format!(
                    "{:<22} {:<14} {:<20} {:<9} {:>12}  {}",
                    k["id"].as_str().unwrap_or(""),
                    k["prefix"].as_str().unwrap_or(""),
                    k["name"].as_str().unwrap_or(""),
                    k["status"].as_str().unwrap_or(""),
                    k["quota_remaining"]
                        .as_i64()
                        .map_or_else(|| "unlimited".into(), |q| q.to_string()),
                    k["models"]
                        .as_array()
                        .filter(|m| !m.is_empty())
                        .map_or_else(
                            || "*".into(),
                            |m| m
                                .iter()
                                .filter_map(|x| x.as_str())
                                .collect::<Vec<_>>()
                                .join(",")
                        ),
                ))?;
            }
            Ok(())
        }
        KeysCommand::Update {
            target,
            id,
            quota,
            models,
            rpm,
            tpm,
            status,
        } => {
            let status = match status.as_deref() {
                None => None,
                Some("active") => Some(KeyStatus::Active),
                Some("disabled") => Some(KeyStatus::Disabled),
                Some(other) => bail!(
                    "unknown status '{other}' (active or disabled; use `keys revoke` to revoke)"
                ),
            };
            let patch = KeyPatch {
                status,
                models,
                quota: quota.map(Some),
                rpm_limit: rpm.map(Some),
                tpm_limit: tpm.map(Some),
                ..KeyPatch::default()
            };
            change_key(&target, &id, patch).await
        }
        KeysCommand::Revoke { target, id } => {
            change_key(
                &target,
                &id,
                KeyPatch {
                    status: Some(KeyStatus::Revoked),
                    ..KeyPatch::default()
                },
            )
            .await
        }
    }
}

async fn change_key(target: &Target, id: &str, patch: KeyPatch) -> anyhow::Result<()> {
    let config = load_for_tools(&target.config)?;
    let mut body = serde_json::Map::new();
    if let Some(s) = patch.status {
        body.insert("status".into(), serde_json::to_value(s)?);
    }
    if let Some(m) = &patch.models {
        body.insert("models".into(), serde_json::to_value(m)?);
    }
    if let Some(q) = patch.quota {
        body.insert("quota".into(), serde_json::to_value(q)?);
    }
    if let Some(r) = patch.rpm_limit {
        body.insert("rpm_limit".into(), serde_json::to_value(r)?);
    }
    if let Some(t) = patch.tpm_limit {
        body.insert("tpm_limit".into(), serde_json::to_value(t)?);
    }
    let updated = match admin_call(
        &config,
        http::Method::PATCH,
        &format!("/admin/keys/{id}"),
        Some(serde_json::Value::Object(body)),
    )
    .await?
    {
        Some(v) => v,
        None => {
            let store = crate::store::open(config.store.backend, &config.store.path)?;
            serde_json::to_value(store.update_key(id, &patch)?)?
        }
    };
    out(&format!(
        "{} {}",
        updated["id"].as_str().unwrap_or(id),
        updated["status"].as_str().unwrap_or("")
    ))
}

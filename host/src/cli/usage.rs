//! `sluice usage`, `export` and `purge`: reading and pruning usage records.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::admin_client::admin_call;
use super::args::{Target, load_for_tools, out, parse_age};
use crate::store::UsageQuery;

/// Shows recent usage records as a table.
pub(super) async fn usage(
    target: &Target,
    since: &str,
    key: Option<String>,
    limit: usize,
) -> anyhow::Result<()> {
    let config = load_for_tools(&target.config)?;
    let since_ms = crate::keys::now_ms().saturating_sub(parse_age(since)?);
    let mut path = format!("/admin/usage?since_ms={since_ms}&limit={limit}");
    if let Some(k) = &key {
        path.push_str(&format!("&key_id={k}"));
    }
    let records: Vec<crate::store::UsageRecord> =
        match admin_call(&config, http::Method::GET, &path, None).await? {
            Some(v) => serde_json::from_value(v["data"].clone())?,
            None => {
                let store = crate::store::open(config.store.backend, &config.store.path)?;
                store.query_usage(&UsageQuery {
                    since_ms: Some(since_ms),
                    key_id: key,
                    limit: Some(limit),
                    ..UsageQuery::default()
                })?
            }
        };
    out(&format!(
        "{:<38} {:<14} {:<18} {:<12} {:>6} {:>8} {:>8} {:>8} {:>8}",
        "REQUEST", "KEY", "MODEL", "CHANNEL", "STATUS", "PROMPT", "COMPL", "COST", "MS"
    ))?;
    for r in &records {
        out(&format!(
            "{:<38} {:<14} {:<18} {:<12} {:>6} {:>8} {:>8} {:>8} {:>8}{}",
            r.request_id,
            r.key_prefix,
            r.model,
            r.channel_id,
            r.status,
            r.prompt_tokens,
            r.completion_tokens,
            r.cost,
            r.latency_ms,
            if r.partial { " partial" } else { "" }
        ))?;
    }
    out(&format!("{} records", records.len()))
}

/// A progress line on stderr, rewritten in place.
struct Progress {
    what: &'static str,
    done: u64,
    last: std::time::Instant,
}

impl Progress {
    fn new(what: &'static str) -> Self {
        Self {
            what,
            done: 0,
            last: std::time::Instant::now(),
        }
    }

    fn add(&mut self, n: u64) {
        self.done += n;
        if self.last.elapsed() >= Duration::from_millis(200) {
            self.last = std::time::Instant::now();
            eprint!("\r{} {} records…", self.what, self.done);
        }
    }

    fn finish(self) -> u64 {
        eprintln!("\r{} {} records, done.", self.what, self.done);
        self.done
    }
}

/// Exports usage records as JSON lines.
pub(super) async fn export(
    target: &Target,
    output: &Path,
    since: Option<&str>,
) -> anyhow::Result<()> {
    let config = load_for_tools(&target.config)?;
    let since_ms = since
        .map(parse_age)
        .transpose()?
        .map(|age| crate::keys::now_ms().saturating_sub(age));
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(output)
            .with_context(|| format!("cannot create {}", output.display()))?,
    );
    let mut progress = Progress::new("exported");
    let mut before: Option<u64> = None;
    let store = match admin_call(&config, http::Method::GET, "/admin/usage?limit=1", None).await? {
        Some(_) => None,
        None => Some(crate::store::open(
            config.store.backend,
            &config.store.path,
        )?),
    };
    loop {
        let q = UsageQuery {
            since_ms,
            before_seq: before,
            limit: Some(1000),
            ..UsageQuery::default()
        };
        let page: Vec<crate::store::UsageRecord> = match &store {
            Some(store) => store.query_usage(&q)?,
            None => {
                let mut path = String::from("/admin/usage?limit=1000");
                if let Some(s) = since_ms {
                    path.push_str(&format!("&since_ms={s}"));
                }
                if let Some(b) = before {
                    path.push_str(&format!("&before_seq={b}"));
                }
                let v = admin_call(&config, http::Method::GET, &path, None)
                    .await?
                    .context("the gateway stopped during the export")?;
                serde_json::from_value(v["data"].clone())?
            }
        };
        for record in &page {
            serde_json::to_writer(&mut file, record)?;
            file.write_all(b"\n")?;
        }
        progress.add(page.len() as u64);
        match page.last() {
            Some(last) if page.len() == 1000 => before = Some(last.seq),
            _ => break,
        }
    }
    file.flush()?;
    let n = progress.finish();
    out(&format!("{n} records written to {}", output.display()))
}

/// Purges usage records older than an age.
pub(super) async fn purge(target: &Target, older_than: &str) -> anyhow::Result<()> {
    let config = load_for_tools(&target.config)?;
    if admin_call(&config, http::Method::GET, "/admin/usage?limit=1", None)
        .await?
        .is_some()
    {
        bail!(
            "the gateway is running: it purges by itself after store.retention; stop it to purge by hand"
        );
    }
    let cutoff = crate::keys::now_ms().saturating_sub(parse_age(older_than)?);
    let store = crate::store::open(config.store.backend, &config.store.path)?;
    let mut progress = Progress::new("purged");
    let mut folded = 0;
    loop {
        let (records, entries) = store.purge_before(cutoff, 1000)?;
        if records + entries == 0 {
            break;
        }
        progress.add(records as u64);
        folded += entries;
    }
    let n = progress.finish();
    out(&format!(
        "{n} records older than {older_than} deleted; {folded} ledger entries folded into carried balances"
    ))
}

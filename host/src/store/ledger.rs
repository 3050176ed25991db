//! The ledger: one entry for every change to a key's balance — a grant at
//! creation, an admin adjustment, a request's charge or the release of its
//! reservation — written by the backends in the same transaction as the
//! balance it changes. Shapers see log records, never ledger entries.
//! Retention folds purged entries into a per-key carried balance, and
//! [`Auditor`] recomputes every balance from what the ledger holds.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// The settlement of one keyed request: posted to the ledger and the key's
/// balance in the same transaction as the batch's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// Key id.
    pub key_id: String,
    /// The request.
    pub request_id: String,
    /// Credits charged (0 releases the reservation with nothing charged).
    pub cost: i64,
    /// Credits the request had reserved.
    pub reserved: i64,
}

/// What changed a balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LedgerKind {
    /// The quota a key was created with.
    Grant,
    /// The balance a key held when its store was first given a ledger.
    Opening,
    /// An admin set the key's quota.
    Adjust,
    /// A request was charged.
    Charge,
    /// A request's reservation was released with nothing charged.
    Release,
}

/// One ledger entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Sequence number assigned by the store (0 before it is stored).
    #[serde(default)]
    pub seq: u64,
    /// When the store wrote it, Unix ms.
    pub time_ms: u64,
    /// The key.
    pub key_id: String,
    /// What happened.
    pub kind: LedgerKind,
    /// The change to the balance, in credits (a charge is negative).
    pub delta: i64,
    /// The reservation the request held, in credits.
    #[serde(default)]
    pub reserved: i64,
    /// The key's balance after the entry (`None` while it is unlimited).
    pub balance: Option<i64>,
    /// The request charged ("" for grants and adjustments).
    #[serde(default)]
    pub request_id: String,
}

/// A key's running ledger total, and what retention folded into it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerAccount {
    /// The sum of every delta ever posted, purged or not.
    pub total: i64,
    /// The sum of the deltas retention purged.
    pub carried: i64,
    /// How many entries retention purged.
    pub carried_entries: u64,
}

/// Posts balance changes to one key and its account, producing the entries
/// the backend stores with them.
pub struct Posting<'a> {
    /// The key's id.
    pub key_id: &'a str,
    /// The key's remaining quota, which moves (`None` = unlimited).
    pub remaining: &'a mut Option<i64>,
    /// Its account.
    pub account: &'a mut LedgerAccount,
    /// The transaction's time.
    pub time_ms: u64,
}

impl Posting<'_> {
    fn entry(
        &mut self,
        kind: LedgerKind,
        delta: i64,
        reserved: i64,
        request_id: &str,
    ) -> LedgerEntry {
        self.account.total += delta;
        LedgerEntry {
            seq: 0,
            time_ms: self.time_ms,
            key_id: self.key_id.into(),
            kind,
            delta,
            reserved,
            balance: *self.remaining,
            request_id: request_id.into(),
        }
    }

    /// A request's settlement: its charge, or the release of its reservation.
    pub fn charge(&mut self, charge: &Charge) -> LedgerEntry {
        if let Some(remaining) = self.remaining.as_mut() {
            *remaining -= charge.cost;
        }
        let kind = if charge.cost == 0 {
            LedgerKind::Release
        } else {
            LedgerKind::Charge
        };
        self.entry(kind, -charge.cost, charge.reserved, &charge.request_id)
    }

    /// The quota a key starts with (`kind` is a grant, or the opening balance
    /// of a key that predates the ledger); nothing for an unlimited key.
    fn open(&mut self, kind: LedgerKind) -> Option<LedgerEntry> {
        let quota = (*self.remaining)?;
        Some(self.entry(kind, quota, 0, ""))
    }

    /// An admin changed the key from `before` (its remaining quota then);
    /// nothing when the quota did not change.
    pub fn adjust(&mut self, before: Option<i64>) -> Option<LedgerEntry> {
        let after = *self.remaining;
        if after == before {
            return None;
        }
        let delta = match (before, after) {
            (Some(b), Some(a)) => a - b,
            // From unlimited: the ledger's total becomes the new quota.
            (None, Some(a)) => a - self.account.total,
            (_, None) => 0,
        };
        Some(self.entry(LedgerKind::Adjust, delta, 0, ""))
    }
}

/// A batch's charges by key, each key's in batch order: a backend reads and
/// writes each key and its account once per batch, not once per charge.
pub fn charges_by_key(charges: &[Charge]) -> BTreeMap<&str, Vec<&Charge>> {
    let mut grouped: BTreeMap<&str, Vec<&Charge>> = BTreeMap::new();
    for charge in charges {
        grouped.entry(&charge.key_id).or_default().push(charge);
    }
    grouped
}

/// A new account for key `key_id`, whose quota is `quota`, and its first
/// entry (`kind`: a grant, or the opening balance of a key that predates the
/// ledger; none for an unlimited key).
pub fn open_account(
    key_id: &str,
    mut quota: Option<i64>,
    kind: LedgerKind,
    time_ms: u64,
) -> (LedgerAccount, Option<LedgerEntry>) {
    let mut account = LedgerAccount::default();
    let entry = Posting {
        key_id,
        remaining: &mut quota,
        account: &mut account,
        time_ms,
    }
    .open(kind);
    (account, entry)
}

/// What an audit reads, from one consistent snapshot of the store.
#[derive(Debug)]
pub enum Audited {
    /// A key, and its remaining quota (`None` = unlimited).
    Key(String, Option<i64>),
    /// A key's account.
    Account(String, LedgerAccount),
    /// A ledger entry, in sequence order.
    Entry(LedgerEntry),
    /// A usage record's charge.
    Record {
        /// Its request.
        request_id: String,
        /// What it says was charged.
        cost: i64,
    },
}

/// What an audit found.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditReport {
    /// Keys checked.
    pub keys: u64,
    /// Ledger entries read.
    pub entries: u64,
    /// Entries whose log record a shaper dropped or retention purged.
    pub entries_without_record: u64,
    /// Credits charged, over the entries read.
    pub charged: i64,
    /// Every inconsistency, one line each.
    pub mismatches: Vec<String>,
}

#[derive(Default)]
struct KeyTotals {
    sum: i64,
    entries: u64,
}

/// Recomputes every balance from the ledger, one snapshot item at a time:
/// each key's carried balance plus its entries must equal its account's
/// total and (for a limited key) its remaining quota; each entry's balance
/// must equal the running total; each usage record must carry the cost its
/// ledger entry charged. Items come keys first, then accounts, then entries
/// in sequence order, then records.
#[derive(Default)]
pub struct Auditor {
    report: AuditReport,
    keys: Vec<(String, Option<i64>)>,
    accounts: HashMap<String, LedgerAccount>,
    totals: BTreeMap<String, KeyTotals>,
    charged: HashMap<String, i64>,
}

impl Auditor {
    /// Checks one item.
    pub fn observe(&mut self, item: Audited) {
        match item {
            Audited::Key(id, remaining) => self.keys.push((id, remaining)),
            Audited::Account(id, account) => {
                self.accounts.insert(id, account);
            }
            Audited::Entry(entry) => self.entry(entry),
            Audited::Record { request_id, cost } => {
                if let Some(entry_cost) = self.charged.remove(&request_id)
                    && entry_cost != cost
                {
                    self.report.mismatches.push(format!(
                        "request {request_id}: record says {cost} credits, ledger charged {entry_cost}"
                    ));
                }
            }
        }
    }

    fn entry(&mut self, entry: LedgerEntry) {
        let report = &mut self.report;
        report.entries += 1;
        let carried = self.accounts.get(&entry.key_id).map_or(0, |a| a.carried);
        let running = self.totals.entry(entry.key_id.clone()).or_default();
        if running.entries == 0 {
            running.sum = carried;
        }
        running.sum += entry.delta;
        running.entries += 1;
        if let Some(balance) = entry.balance
            && balance != running.sum
        {
            report.mismatches.push(format!(
                "entry {} ({}): balance {balance}, but the ledger totals {}",
                entry.seq, entry.key_id, running.sum
            ));
        }
        if matches!(entry.kind, LedgerKind::Charge | LedgerKind::Release) {
            report.charged -= entry.delta;
            self.charged.insert(entry.request_id, -entry.delta);
        }
    }

    /// The report, once every item was observed.
    pub fn report(mut self) -> AuditReport {
        let report = &mut self.report;
        report.entries_without_record = self.charged.len() as u64;
        for (id, remaining) in &self.keys {
            report.keys += 1;
            let account = self.accounts.get(id).copied().unwrap_or_default();
            let sum = self.totals.get(id).map_or(account.carried, |t| t.sum);
            if sum != account.total {
                report.mismatches.push(format!(
                    "key {id}: carried {} plus its entries is {sum}, but its account totals {}",
                    account.carried, account.total
                ));
            }
            if let Some(remaining) = remaining
                && *remaining != sum
            {
                report.mismatches.push(format!(
                    "key {id}: remaining quota {remaining}, but the ledger totals {sum}"
                ));
            }
        }
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{KeyRecord, conformance};

    fn audit(items: Vec<Audited>) -> AuditReport {
        let mut auditor = Auditor::default();
        for item in items {
            auditor.observe(item);
        }
        auditor.report()
    }

    fn charge(request_id: &str, cost: i64, reserved: i64) -> Charge {
        Charge {
            key_id: "k".into(),
            request_id: request_id.into(),
            cost,
            reserved,
        }
    }

    /// Posts a grant, charges, a release and adjustments, and audits them.
    fn posted() -> (KeyRecord, LedgerAccount, Vec<LedgerEntry>) {
        let mut key = conformance::key("k", Some(100));
        let mut account = LedgerAccount::default();
        let mut entries = Vec::new();
        let mut post = Posting {
            key_id: "k",
            remaining: &mut key.quota_remaining,
            account: &mut account,
            time_ms: 1,
        };
        entries.extend(post.open(LedgerKind::Grant));
        entries.push(post.charge(&charge("a", 30, 40)));
        entries.push(post.charge(&charge("b", 0, 40)));
        *post.remaining = Some(500);
        entries.extend(post.adjust(Some(70)));
        *post.remaining = None;
        entries.extend(post.adjust(Some(500)));
        entries.push(post.charge(&charge("c", 5, 0)));
        *post.remaining = Some(50);
        entries.extend(post.adjust(None));
        for (i, e) in entries.iter_mut().enumerate() {
            e.seq = i as u64 + 1;
        }
        (key, account, entries)
    }

    fn snapshot(key: &KeyRecord, account: LedgerAccount, entries: &[LedgerEntry]) -> Vec<Audited> {
        let mut items = vec![
            Audited::Key(key.id.clone(), key.quota_remaining),
            Audited::Account(key.id.clone(), account),
        ];
        items.extend(entries.iter().cloned().map(Audited::Entry));
        items.push(Audited::Record {
            request_id: "a".into(),
            cost: 30,
        });
        items
    }

    #[test]
    fn a_consistent_ledger_passes() {
        let (key, account, entries) = posted();
        assert_eq!(key.quota_remaining, Some(50));
        assert_eq!(account.total, 50);
        let kinds: Vec<LedgerKind> = entries.iter().map(|e| e.kind).collect();
        use LedgerKind::*;
        assert_eq!(
            kinds,
            [Grant, Charge, Release, Adjust, Adjust, Charge, Adjust]
        );
        let report = audit(snapshot(&key, account, &entries));
        assert_eq!(report.mismatches, Vec::<String>::new());
        assert_eq!(report.entries, 7);
        assert_eq!(report.charged, 35);
        // "b" released nothing and "c" has no record.
        assert_eq!(report.entries_without_record, 2);
    }

    #[test]
    fn folded_entries_still_balance() {
        let (key, mut account, entries) = posted();
        let (purged, kept) = entries.split_at(3);
        for e in purged {
            account.carried += e.delta;
            account.carried_entries += 1;
        }
        let report = audit(snapshot(&key, account, kept));
        assert_eq!(report.mismatches, Vec::<String>::new());
    }

    #[test]
    fn every_kind_of_mismatch_is_reported() {
        let (mut key, account, mut entries) = posted();
        key.quota_remaining = Some(48);
        entries[1].delta = -31;
        let mut items = snapshot(&key, account, &entries);
        items.push(Audited::Record {
            request_id: "c".into(),
            cost: 6,
        });
        let report = audit(items);
        let text = report.mismatches.join("\n");
        assert!(text.contains("remaining quota 48"), "{text}");
        assert!(text.contains("its account totals 50"), "{text}");
        assert!(text.contains("entry 2 (k): balance 70"), "{text}");
        assert!(text.contains("request c: record says 6"), "{text}");
        assert!(
            text.contains("request a: record says 30 credits, ledger charged 31"),
            "{text}"
        );
    }
}

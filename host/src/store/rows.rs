//! How redb rows hold usage records and ledger entries. One append writes a
//! batch's records as **one row** (and each key's ledger entries of the batch
//! as one row): a chunk, keyed by the smallest sequence number in it, each
//! value carrying its own. A batch of 1,024 records is then one B-tree insert
//! instead of 1,024, and the commit copies and rewrites a few large pages
//! instead of a leaf per handful of records.
//!
//! Rows written by earlier versions hold one value each, as JSON or as one
//! compact value, with the row's key as its sequence number; they read as
//! they are, side by side with chunks.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::ledger::LedgerEntry;
use super::{StoreError, UsageRecord};

/// The first byte of a row holding one compact (postcard) value, as written
/// before chunks. A JSON value starts with `{`.
const COMPACT: u8 = 0xC1;

/// The first byte of a chunk: then, per value, its length (u32, little
/// endian) and its sequence number and value in postcard.
const CHUNK: u8 = 0xC2;

/// A redb backend error (the rows' and the backend's).
pub fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::backend("redb", e)
}

/// A value the store numbers: a usage record or a ledger entry.
pub trait Sequenced: Serialize + DeserializeOwned {
    /// Its sequence number (once read back).
    fn seq(&self) -> u64;
    /// Its sequence number, set when it is read back.
    fn seq_mut(&mut self) -> &mut u64;
}

impl Sequenced for UsageRecord {
    fn seq(&self) -> u64 {
        self.seq
    }

    fn seq_mut(&mut self) -> &mut u64 {
        &mut self.seq
    }
}

impl Sequenced for LedgerEntry {
    fn seq(&self) -> u64 {
        self.seq
    }

    fn seq_mut(&mut self) -> &mut u64 {
        &mut self.seq
    }
}

/// Encodes `values`, each with its sequence number, as one chunk into `buf`.
///
/// # Errors
/// When a value cannot be encoded or passes 4 GiB.
pub fn encode_chunk<'a, T: Sequenced + 'a>(
    values: impl IntoIterator<Item = (u64, &'a T)>,
    buf: &mut Vec<u8>,
) -> Result<(), StoreError> {
    buf.clear();
    buf.push(CHUNK);
    for numbered in values {
        let at = buf.len();
        buf.extend_from_slice(&[0; 4]);
        postcard::to_io(&numbered, &mut *buf).map_err(err)?;
        let len = u32::try_from(buf.len() - at - 4).map_err(err)?;
        buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }
    Ok(())
}

/// The values of the row at `key`, in the order written, each with its
/// sequence number.
///
/// # Errors
/// When the row is not one this module (or an earlier version) wrote.
pub fn decode_row<T: Sequenced>(key: u64, bytes: &[u8]) -> Result<Vec<T>, StoreError> {
    let Some((&CHUNK, mut rest)) = bytes.split_first() else {
        let mut value: T = decode(bytes)?;
        *value.seq_mut() = key;
        return Ok(vec![value]);
    };
    let mut values = Vec::new();
    while let Some((len, tail)) = rest.split_first_chunk::<4>() {
        let len = usize::try_from(u32::from_le_bytes(*len)).map_err(err)?;
        let (value, tail) = tail
            .split_at_checked(len)
            .ok_or_else(|| err("a chunk row ends inside a value"))?;
        let (seq, mut value): (u64, T) = postcard::from_bytes(value).map_err(err)?;
        *value.seq_mut() = seq;
        values.push(value);
        rest = tail;
    }
    if rest.is_empty() {
        Ok(values)
    } else {
        Err(err("a chunk row ends inside a length"))
    }
}

/// Decodes a single value: compact or JSON.
///
/// # Errors
/// When it is neither.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&COMPACT, compact)) => postcard::from_bytes(compact).map_err(err),
        _ => serde_json::from_slice(bytes).map_err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, time_ms: u64) -> UsageRecord {
        let mut labels = std::collections::BTreeMap::new();
        labels.insert("team".to_string(), "a\"b".to_string());
        UsageRecord {
            request_id: id.into(),
            time_ms,
            key_id: "k".into(),
            error_kind: Some("upstream".into()),
            prompt_tokens: 12,
            cost: -3,
            ttft_ms: Some(7),
            labels,
            completion: Some("héllo".into()),
            ..UsageRecord::default()
        }
    }

    #[test]
    fn a_chunk_reads_back_its_values_with_their_sequence_numbers() -> Result<(), StoreError> {
        let records = [record("a", 1), record("b", 2), record("c", 3)];
        let mut buf = Vec::new();
        encode_chunk(
            [(7, &records[0]), (9, &records[1]), (12, &records[2])],
            &mut buf,
        )?;
        let back: Vec<UsageRecord> = decode_row(7, &buf)?;
        let seqs: Vec<u64> = back.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [7, 9, 12]);
        for (read, written) in back.iter().zip(&records) {
            assert_eq!(
                UsageRecord {
                    seq: 0,
                    ..read.clone()
                },
                *written
            );
        }
        // An empty chunk is a row with no values.
        encode_chunk::<UsageRecord>([], &mut buf)?;
        assert!(decode_row::<UsageRecord>(1, &buf)?.is_empty());
        Ok(())
    }

    #[test]
    fn a_cut_chunk_is_an_error_not_fewer_values() -> Result<(), StoreError> {
        let records = [record("a", 1), record("b", 2)];
        let mut buf = Vec::new();
        encode_chunk([(1, &records[0]), (2, &records[1])], &mut buf)?;
        for cut in [buf.len() - 1, buf.len() - 20, 3] {
            assert!(
                decode_row::<UsageRecord>(1, &buf[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        Ok(())
    }

    /// Rows of one value, written as JSON or compact by earlier versions,
    /// read as one value numbered by the row's key.
    #[test]
    fn reads_single_json_and_compact_rows_alike() -> Result<(), StoreError> {
        let record = record("req-1", 1_700_000_000_000);
        let json = serde_json::to_vec(&record).map_err(err)?;
        let mut compact = vec![COMPACT];
        postcard::to_io(&record, &mut compact).map_err(err)?;
        assert!(
            compact.len() * 2 < json.len(),
            "{} vs {}",
            compact.len(),
            json.len()
        );
        for bytes in [json, compact] {
            let back: Vec<UsageRecord> = decode_row(42, &bytes)?;
            assert_eq!(
                back,
                vec![UsageRecord {
                    seq: 42,
                    ..record.clone()
                }]
            );
        }
        Ok(())
    }
}

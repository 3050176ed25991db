//! Request ids: time-ordered UUIDv7 strings from a per-thread generator seeded
//! once from the OS, so minting one costs no system call. Ids need to be
//! unique and sortable, not secret.

use std::cell::Cell;

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

/// A per-thread seed: OS randomness, mixed with the thread's stack address and
/// the clock so that a failed `getrandom` still gives distinct streams.
fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    let random = getrandom::fill(&mut bytes).map_or(0, |()| u64::from_le_bytes(bytes));
    let local = 0u8;
    let address = std::ptr::addr_of!(local) as usize as u64;
    random ^ address.rotate_left(32) ^ u64::from(std::process::id()) ^ crate::keys::now_ms()
}

/// SplitMix64: the next 64 pseudo-random bits of this thread's stream.
fn next() -> u64 {
    STATE.with(|state| {
        let s = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

/// A new request id: a lower-case hyphenated UUIDv7.
pub fn new() -> String {
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&next().to_le_bytes());
    random[8..].copy_from_slice(&next().to_le_bytes()[..2]);
    let id = uuid::Builder::from_unix_timestamp_millis(crate::keys::now_ms(), &random).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    id.hyphenated().encode_lower(&mut text).to_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_unique_version_7_and_time_ordered() {
        let ids: Vec<String> = (0..1000).map(|_| super::new()).collect();
        let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        for id in &ids {
            let parsed = uuid::Uuid::parse_str(id).map(|u| u.get_version_num());
            assert_eq!(parsed, Ok(7), "{id}");
        }
        // The first 48 bits are the millisecond clock, so text order is time order.
        assert!(ids[0][..13] <= ids[999][..13]);
    }
}

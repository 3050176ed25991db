//! Counting a text piece by piece, with each thread remembering the counts of
//! the short pieces it has seen. The pre-tokenizer splits text into words
//! and punctuation, and natural text repeats the same few thousand of them:
//! a remembered piece costs one hash lookup instead of the byte-pair
//! encoder's run (and its two allocations). The memory is bounded — pieces
//! up to [`MAX_PIECE`] bytes, at most [`MAX_ENTRIES`] per encoding and
//! thread, forgotten all at once when full — and a count is the encoder's
//! own, so results are exactly the uncached ones.

use std::cell::RefCell;
use std::collections::HashMap;

use foldhash::fast::FixedState;

use crate::Encoding;

/// Longest piece remembered.
const MAX_PIECE: usize = 24;

/// Most pieces remembered per encoding and thread.
const MAX_ENTRIES: usize = 8192;

/// Remembered counts, one map per encoding.
type Memo = [HashMap<Box<[u8]>, u32, FixedState>; 2];

thread_local! {
    static MEMO: RefCell<Memo> = RefCell::new(Default::default());
}

/// Tokens in `text` under `encoding`.
pub fn count(encoding: Encoding, text: &str) -> usize {
    let tokenizer = encoding.tokenizer();
    let text = tokenizer.normalize(text);
    let slot = match encoding {
        Encoding::O200kBase => 0,
        Encoding::Cl100kBase => 1,
    };
    MEMO.with(|memo| {
        let mut memo = memo.borrow_mut();
        let seen = &mut memo[slot];
        tokenizer
            .split(text.as_str())
            .map(|piece| {
                let bytes = piece.as_bytes();
                if bytes.len() > MAX_PIECE {
                    return tokenizer.bpe.count(bytes);
                }
                if let Some(&n) = seen.get(bytes) {
                    return n as usize;
                }
                let n = tokenizer.bpe.count(bytes);
                if seen.len() >= MAX_ENTRIES {
                    seen.clear();
                }
                seen.insert(bytes.into(), u32::try_from(n).unwrap_or(u32::MAX));
                n
            })
            .sum()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_counts_equal_the_encoders() {
        let text = "The quick brown fox jumps over the lazy dog. The dog sleeps; \
                    the fox — naïve, 🦊 — jumps again: 12345 67890 ThisIsAVeryLongIdentifierNameIndeed!";
        for encoding in [Encoding::O200kBase, Encoding::Cl100kBase] {
            let direct = encoding.tokenizer().count(text);
            assert_eq!(count(encoding, text), direct, "{encoding:?}, first");
            assert_eq!(count(encoding, text), direct, "{encoding:?}, remembered");
        }
    }

    #[test]
    fn a_full_memo_is_forgotten_and_counts_stay_exact() {
        let words: String = (0..MAX_ENTRIES + 100).map(|i| format!(" w{i}")).collect();
        let encoding = Encoding::O200kBase;
        assert_eq!(
            count(encoding, &words),
            encoding.tokenizer().count(words.as_str())
        );
        let size = MEMO.with(|memo| memo.borrow()[0].len());
        assert!(size <= MAX_ENTRIES, "{size}");
    }
}

//! A running token count with a byte budget: text is counted exactly until
//! the budget is spent, and the rest is extrapolated at the rate measured so
//! far, so a huge prompt costs a bounded amount of CPU.

use crate::Encoding;

/// Bytes per token assumed for text past the budget when nothing was counted.
const BYTES_PER_TOKEN: u64 = 4;

/// A token count over pieces of text.
#[derive(Debug, Clone)]
pub struct Tally {
    encoding: Encoding,
    budget: usize,
    counted_bytes: usize,
    text_tokens: u64,
    skipped_bytes: u64,
    fixed: u64,
}

impl Tally {
    /// A tally that counts at most `budget` bytes of text exactly.
    pub fn new(encoding: Encoding, budget: usize) -> Self {
        Self {
            encoding,
            budget,
            counted_bytes: 0,
            text_tokens: 0,
            skipped_bytes: 0,
            fixed: 0,
        }
    }

    /// The encoding it counts with.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Adds the tokens of `text`.
    pub fn text(&mut self, text: &str) {
        let room = self.budget - self.counted_bytes;
        let exact = if text.len() <= room {
            text
        } else {
            let mut cut = room;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            self.skipped_bytes += (text.len() - cut) as u64;
            &text[..cut]
        };
        if !exact.is_empty() {
            self.text_tokens += self.encoding.count(exact) as u64;
            self.counted_bytes += exact.len();
        }
    }

    /// Adds tokens that are not text (per-message framing, images, token ids).
    pub fn fixed(&mut self, tokens: u64) {
        self.fixed += tokens;
    }

    /// Bytes of text seen so far, counted or not.
    pub fn bytes(&self) -> u64 {
        self.counted_bytes as u64 + self.skipped_bytes
    }

    /// The count: exact tokens, framing, and the extrapolated remainder.
    pub fn total(&self) -> u64 {
        let extrapolated = match self.counted_bytes {
            0 => self.skipped_bytes.div_ceil(BYTES_PER_TOKEN),
            counted => (self.skipped_bytes * self.text_tokens).div_ceil(counted as u64),
        };
        self.text_tokens + self.fixed + extrapolated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_exactly_within_the_budget() {
        let mut t = Tally::new(Encoding::O200kBase, 1024);
        t.text("Hello world");
        t.fixed(3);
        assert_eq!(t.total(), 5);
        assert_eq!(t.bytes(), 11);
    }

    #[test]
    fn extrapolates_past_the_budget() {
        let text = "Hello world. ".repeat(1000);
        let exact = Encoding::O200kBase.count(&text) as u64;
        let mut t = Tally::new(Encoding::O200kBase, 1300);
        t.text(&text);
        let estimate = t.total();
        assert!(
            estimate.abs_diff(exact) * 50 <= exact,
            "{estimate} vs {exact}"
        );
        assert_eq!(t.bytes(), text.len() as u64);
    }

    #[test]
    fn cuts_on_a_character_boundary() {
        let mut t = Tally::new(Encoding::Cl100kBase, 2);
        t.text("é€");
        assert_eq!(t.bytes(), "é€".len() as u64);
        assert!(t.total() >= 1);
    }

    #[test]
    fn nothing_counted_falls_back_to_bytes() {
        let mut t = Tally::new(Encoding::Cl100kBase, 0);
        t.text("abcdefgh");
        assert_eq!(t.total(), 2);
    }
}

//! What a response generated, counted when the upstream reports no usage. A
//! stream copies its raw events into one buffer, up to a byte budget, and
//! parses them only if it ends without usage, so streams that report usage
//! pay a copy and nothing more; events past the budget are extrapolated from
//! their size. Events are copied, not kept by reference: a kept slice would
//! pin the whole upstream read buffer it came from.

use sluice_meter::{Encoding, Tally, completion_text};

use super::sse;

/// The events of one stream, kept for counting.
#[derive(Debug, Default)]
pub struct Transcript {
    /// The kept events, back to back.
    kept: Vec<u8>,
    /// Where each kept event ends in `kept`.
    ends: Vec<usize>,
    seen_bytes: u64,
    budget: usize,
}

impl Transcript {
    /// A transcript that keeps at most `budget` bytes of events.
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            ..Self::default()
        }
    }

    /// Notes one event the upstream sent.
    pub fn push(&mut self, event: &[u8]) {
        self.seen_bytes += event.len() as u64;
        if self.kept.len() + event.len() <= self.budget {
            self.kept.extend_from_slice(event);
            self.ends.push(self.kept.len());
        }
    }

    /// The completion tokens the events generated: their text counted as
    /// one, scaled up by the bytes of events past the budget.
    pub fn count(&self, encoding: Encoding) -> u32 {
        let mut text = String::new();
        let mut start = 0;
        for &end in &self.ends {
            completion_text(&sse::data_of(&self.kept[start..end]), &mut text);
            start = end;
        }
        let kept = self.kept.len() as u64;
        let tokens = match kept {
            0 => self.seen_bytes.div_ceil(4),
            _ => (encoding.count(&text) as u64 * self.seen_bytes).div_ceil(kept),
        };
        u32::try_from(tokens).unwrap_or(u32::MAX)
    }
}

/// The completion tokens of a whole response body, counting at most
/// `budget` bytes of its text exactly.
pub fn count_body(body: &[u8], encoding: Encoding, budget: usize) -> u32 {
    let mut text = String::new();
    completion_text(body, &mut text);
    let mut tally = Tally::new(encoding, budget);
    tally.text(&text);
    u32::try_from(tally.total()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(text: &str) -> Vec<u8> {
        Vec::from(format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{}}}}}]}}\n\n",
            serde_json::Value::from(text)
        ))
    }

    #[test]
    fn counts_the_streamed_text_not_the_events() {
        let mut t = Transcript::new(1 << 20);
        for word in ["Hello", " world", ", how are you", " today?"] {
            t.push(&chunk(word));
        }
        t.push(b"data: [DONE]\n\n");
        let exact = Encoding::O200kBase.count("Hello world, how are you today?");
        assert_eq!(t.count(Encoding::O200kBase) as usize, exact);
    }

    #[test]
    fn extrapolates_past_the_budget() {
        let mut whole = Transcript::new(1 << 20);
        let mut budgeted = Transcript::new(2000);
        for _ in 0..200 {
            whole.push(&chunk(" token"));
            budgeted.push(&chunk(" token"));
        }
        assert_eq!(whole.count(Encoding::O200kBase), 200);
        assert_eq!(budgeted.count(Encoding::O200kBase), 200);
    }

    #[test]
    fn bodies_count_messages_and_tool_calls() {
        let body = br#"{"choices":[{"message":{"role":"assistant","content":"Hello world"}}]}"#;
        assert_eq!(count_body(body, Encoding::O200kBase, 1024), 2);
    }
}

//! Token counting for Sluice: OpenAI's BPE encodings (`o200k_base`,
//! `cl100k_base`) chosen per model, a [`Tally`] that counts at most a budget of
//! bytes exactly and extrapolates the rest, the prompt of a chat, completion or
//! embedding request counted the way OpenAI bills it, and the generated text of
//! a response or stream chunk.
//!
//! The gateway counts with it at admission (the reservation) and when an
//! upstream reports no usage; the fake upstream counts with it so that its
//! `usage` is what a real provider would report.

mod completion;
mod encoding;
mod pieces;
mod prompt;
mod tally;

pub use completion::completion_text;
pub use encoding::Encoding;
pub use prompt::{PromptKind, prompt_tokens};
pub use tally::Tally;

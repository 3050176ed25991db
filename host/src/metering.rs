//! Metering arithmetic: the tokens of a request by kind (as an upstream's
//! `usage` reports them), their bill at a model's exact rates, the worst case
//! a reservation holds, and the completion cap a remaining balance buys.
//! Every figure is an integer (millionths of a credit per token); a bill is
//! rounded up to whole credits once, at the end.

use serde::{Deserialize, Serialize};

use crate::config::Rates;

/// Millionths of a credit in one credit.
const MICROS: u128 = 1_000_000;

/// Token counts of one request, by kind. `prompt` includes the cached,
/// cache-write and audio prompt tokens; `completion` includes reasoning and
/// audio completion tokens (OpenAI's convention).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tokens {
    /// Prompt tokens, every kind.
    pub prompt: u32,
    /// Completion tokens, every kind.
    pub completion: u32,
    /// Prompt tokens read from the provider's cache.
    pub cached: u32,
    /// Prompt tokens written to the provider's cache.
    pub cache_write: u32,
    /// Completion tokens spent reasoning.
    pub reasoning: u32,
    /// Audio prompt tokens.
    pub audio_prompt: u32,
    /// Audio completion tokens.
    pub audio_completion: u32,
}

impl Tokens {
    /// Prompt plus completion, without overflow.
    pub fn total(&self) -> u64 {
        u64::from(self.prompt) + u64::from(self.completion)
    }
}

/// An OpenAI `usage` object; cache writes as OpenAI-compatible proxies of
/// Anthropic report them.
#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetails>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u32>,
}

#[derive(Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u32>,
    #[serde(default)]
    cache_write_tokens: Option<u32>,
    #[serde(default)]
    audio_tokens: Option<u32>,
}

#[derive(Deserialize)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u32>,
    #[serde(default)]
    audio_tokens: Option<u32>,
}

impl<'de> Deserialize<'de> for Tokens {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = WireUsage::deserialize(d)?;
        let prompt = wire.prompt_tokens_details;
        let completion = wire.completion_tokens_details;
        Ok(Self {
            prompt: wire.prompt_tokens,
            completion: wire.completion_tokens,
            cached: prompt.as_ref().and_then(|p| p.cached_tokens).unwrap_or(0),
            cache_write: prompt
                .as_ref()
                .and_then(|p| p.cache_write_tokens)
                .or(wire.cache_creation_input_tokens)
                .unwrap_or(0),
            audio_prompt: prompt.as_ref().and_then(|p| p.audio_tokens).unwrap_or(0),
            reasoning: completion
                .as_ref()
                .and_then(|c| c.reasoning_tokens)
                .unwrap_or(0),
            audio_completion: completion
                .as_ref()
                .and_then(|c| c.audio_tokens)
                .unwrap_or(0),
        })
    }
}

/// What each kind of token cost, in millionths of a credit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CostSplit {
    /// Uncached prompt tokens (text and audio).
    pub input: u64,
    /// Cached prompt tokens.
    pub cached_input: u64,
    /// Cache-write prompt tokens.
    pub cache_write: u64,
    /// Completion tokens (text, reasoning and audio).
    pub output: u64,
}

impl CostSplit {
    /// Whole credits, rounded up.
    pub fn credits(&self) -> i64 {
        let micros = u128::from(self.input)
            + u128::from(self.cached_input)
            + u128::from(self.cache_write)
            + u128::from(self.output);
        saturate(micros.div_ceil(MICROS))
    }
}

fn saturate(value: u128) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn micros(tokens: u32, rate: u64) -> u64 {
    u64::try_from(u128::from(tokens) * u128::from(rate)).unwrap_or(u64::MAX)
}

/// The bill for `tokens` at `rates`. Each kind is clamped to what its total
/// allows, so an upstream's inconsistent details never bill a token twice.
pub fn bill(rates: &Rates, tokens: &Tokens) -> CostSplit {
    let audio_in = tokens.audio_prompt.min(tokens.prompt);
    let cached = tokens.cached.min(tokens.prompt - audio_in);
    let written = tokens.cache_write.min(tokens.prompt - audio_in - cached);
    let text_in = tokens.prompt - audio_in - cached - written;
    let audio_out = tokens.audio_completion.min(tokens.completion);
    let text_out = tokens.completion - audio_out;
    CostSplit {
        input: micros(text_in, rates.input).saturating_add(micros(audio_in, rates.audio_input)),
        cached_input: micros(cached, rates.cached_input),
        cache_write: micros(written, rates.cache_write),
        output: micros(text_out, rates.output)
            .saturating_add(micros(audio_out, rates.audio_output)),
    }
}

/// The dearest rate a prompt token can be billed at.
fn worst_input(rates: &Rates) -> u128 {
    u128::from(
        rates
            .input
            .max(rates.cache_write)
            .max(rates.audio_input)
            .max(rates.cached_input),
    )
}

/// The dearest rate a completion token can be billed at.
fn worst_output(rates: &Rates) -> u128 {
    u128::from(rates.output.max(rates.audio_output))
}

/// The most a request can cost: every prompt token and every token up to
/// the cap at the dearest rate of its side, in whole credits.
pub fn worst_case(rates: &Rates, prompt: u64, cap: u64) -> i64 {
    let micros = u128::from(prompt) * worst_input(rates) + u128::from(cap) * worst_output(rates);
    saturate(micros.div_ceil(MICROS))
}

/// The largest completion cap whose worst case fits in `available` credits
/// after the prompt; 0 when not even the prompt fits.
pub fn affordable_cap(rates: &Rates, prompt: u64, available: i64) -> u64 {
    let Ok(available) = u128::try_from(available) else {
        return 0;
    };
    let budget = available * MICROS;
    let Some(left) = budget.checked_sub(u128::from(prompt) * worst_input(rates)) else {
        return 0;
    };
    match worst_output(rates) {
        0 => u64::MAX,
        rate => u64::try_from(left / rate).unwrap_or(u64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates() -> Rates {
        Rates {
            input: 2_500_000,
            cached_input: 1_250_000,
            cache_write: 3_125_000,
            output: 10_000_000,
            audio_input: 40_000_000,
            audio_output: 80_000_000,
        }
    }

    #[test]
    fn reads_every_kind_of_token() -> Result<(), serde_json::Error> {
        let t: Tokens = serde_json::from_str(
            r#"{"prompt_tokens":100,"completion_tokens":50,"total_tokens":150,
                "prompt_tokens_details":{"cached_tokens":40,"audio_tokens":5},
                "completion_tokens_details":{"reasoning_tokens":30,"audio_tokens":2}}"#,
        )?;
        assert_eq!(
            t,
            Tokens {
                prompt: 100,
                completion: 50,
                cached: 40,
                cache_write: 0,
                reasoning: 30,
                audio_prompt: 5,
                audio_completion: 2,
            }
        );
        let t: Tokens = serde_json::from_str(
            r#"{"prompt_tokens":10,"prompt_tokens_details":null,"cache_creation_input_tokens":4}"#,
        )?;
        assert_eq!((t.prompt, t.cache_write, t.completion), (10, 4, 0));
        Ok(())
    }

    #[test]
    fn bills_each_kind_at_its_rate() {
        let t = Tokens {
            prompt: 100,
            completion: 50,
            cached: 40,
            cache_write: 10,
            reasoning: 30,
            audio_prompt: 5,
            audio_completion: 2,
        };
        let split = bill(&rates(), &t);
        assert_eq!(split.input, 45 * 2_500_000 + 5 * 40_000_000);
        assert_eq!(split.cached_input, 40 * 1_250_000);
        assert_eq!(split.cache_write, 10 * 3_125_000);
        assert_eq!(split.output, 48 * 10_000_000 + 2 * 80_000_000);
        // 112.5 + 200 + 50 + 31.25 + 480 + 160 = 1033.75 → 1034.
        assert_eq!(split.credits(), 1034);
    }

    #[test]
    fn inconsistent_details_never_bill_twice() {
        let t = Tokens {
            prompt: 10,
            cached: 50,
            cache_write: 50,
            ..Tokens::default()
        };
        let split = bill(&rates(), &t);
        assert_eq!(split.input, 0);
        assert_eq!(split.cached_input, 10 * 1_250_000);
        assert_eq!(split.cache_write, 0);
    }

    #[test]
    fn worst_case_bounds_every_bill_and_caps_fit_the_budget() {
        let r = rates();
        let worst = worst_case(&r, 100, 50);
        let t = Tokens {
            prompt: 100,
            completion: 50,
            audio_prompt: 100,
            audio_completion: 50,
            ..Tokens::default()
        };
        assert!(bill(&r, &t).credits() <= worst);
        let cap = affordable_cap(&r, 100, worst);
        assert_eq!(cap, 50);
        assert!(worst_case(&r, 100, cap + 1) > worst);
        assert_eq!(affordable_cap(&r, 100, 0), 0);
        assert_eq!(affordable_cap(&r, 100, -5), 0);
    }

    #[test]
    fn one_credit_per_token_is_exact() {
        let r = Rates {
            input: 1_000_000,
            cached_input: 1_000_000,
            cache_write: 1_000_000,
            output: 1_000_000,
            audio_input: 1_000_000,
            audio_output: 1_000_000,
        };
        let t = Tokens {
            prompt: 7,
            completion: 3,
            ..Tokens::default()
        };
        assert_eq!(bill(&r, &t).credits(), worst_case(&r, 7, 3));
        assert_eq!(affordable_cap(&r, 7, 10), 3);
    }
}

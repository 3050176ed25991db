//! What counting a prompt costs at admission, at 1 KiB and 100 KiB of chat
//! prompt, against parsing the same body as JSON (what any gateway does with
//! it) measured in the same run. Prints each as a ratio to its baseline.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    missing_docs
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use sluice_meter::{Encoding, PromptKind, Tally, prompt_tokens};

/// A chat body whose messages hold about `kib` KiB of English prose.
fn chat_body(kib: usize) -> Vec<u8> {
    let sentence =
        "The gateway counts every prompt before it reserves quota, so a key can never overspend. ";
    let text: String = sentence.repeat(kib * 1024 / sentence.len() + 1);
    serde_json::to_vec(&serde_json::json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": &text[..kib * 1024]},
        ],
    }))
    .unwrap()
}

/// The gateway's default budget (`metering.max_counted_kib = 64`).
const DEFAULT_BUDGET: usize = 64 * 1024;

fn count(body: &[u8]) -> u64 {
    count_within(body, usize::MAX)
}

fn count_within(body: &[u8], budget: usize) -> u64 {
    let mut tally = Tally::new(Encoding::O200kBase, budget);
    prompt_tokens(PromptKind::Chat, body, &mut tally).unwrap();
    tally.total()
}

fn parse(body: &[u8]) -> usize {
    serde_json::from_slice::<serde_json::Value>(body)
        .unwrap()
        .as_object()
        .map_or(0, serde_json::Map::len)
}

/// Median time of `f` over `runs` runs.
fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn bench(c: &mut Criterion) {
    // Building the encoding is once per process; keep it out of the figures.
    let _ = Encoding::O200kBase.tokenizer();
    for kib in [1, 100] {
        let body = chat_body(kib);
        let runs = if kib == 1 { 2001 } else { 101 };
        let tokens = count(&body);
        let counted = median(runs, || {
            black_box(count(black_box(&body)));
        });
        let parsed = median(runs, || {
            black_box(parse(black_box(&body)));
        });
        println!(
            "prompt {kib} KiB ({tokens} tokens): count {:.1} µs, JSON parse {:.1} µs, ratio {:.1}×",
            counted.as_secs_f64() * 1e6,
            parsed.as_secs_f64() * 1e6,
            counted.as_secs_f64() / parsed.as_secs_f64()
        );
        if body.len() > DEFAULT_BUDGET {
            let estimate = count_within(&body, DEFAULT_BUDGET);
            let budgeted = median(runs, || {
                black_box(count_within(black_box(&body), DEFAULT_BUDGET));
            });
            println!(
                "prompt {kib} KiB within the default 64 KiB budget: {estimate} tokens (exact {tokens}), {:.1} µs, ratio {:.1}×",
                budgeted.as_secs_f64() * 1e6,
                budgeted.as_secs_f64() / parsed.as_secs_f64()
            );
        }
        let mut group = c.benchmark_group(format!("prompt_{kib}kib"));
        group.bench_function("count", |b| b.iter(|| count(black_box(&body))));
        group.bench_function("json_parse", |b| b.iter(|| parse(black_box(&body))));
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

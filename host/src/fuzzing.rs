//! The fuzz targets' bodies: each takes arbitrary bytes, drives one parser
//! that reads bytes from the network, and asserts what must hold for every
//! input. `fuzz/` (a cargo-fuzz workspace of its own) calls them under
//! libFuzzer; the corpus replay test below calls them on every seed of
//! `fuzz/corpus/`, so a crash once found stays fixed.

use bytes::Bytes;

use crate::relay::sse::{SseFramer, data_of, inspect, without};

/// Largest event the framer target holds (small, so the limit is reached).
const MAX_EVENT: usize = 4096;

/// The events of `data` as the relay frames them when the upstream sends it
/// in chunks of `step` bytes; `None` when an event outgrows [`MAX_EVENT`].
fn frame(data: &[u8], step: usize) -> Option<Vec<Bytes>> {
    let mut framer = SseFramer::new(MAX_EVENT);
    let mut events = Vec::new();
    for chunk in data.chunks(step.max(1)) {
        framer
            .push(Bytes::copy_from_slice(chunk), &mut events)
            .ok()?;
    }
    events.extend(framer.finish());
    Some(events)
}

/// The SSE framer: the first byte picks the chunk size. Framing loses no
/// byte but trailing blank space, and cutting the stream anywhere frames it
/// into the same events as reading it whole.
pub fn sse_framer(data: &[u8]) {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let (Some(cut), Some(whole)) = (
        frame(stream, usize::from(step)),
        frame(stream, stream.len()),
    ) else {
        return;
    };
    assert_eq!(cut, whole, "framing depends on where the stream is cut");
    let joined: Vec<u8> = cut.iter().flat_map(|e| e.iter().copied()).collect();
    assert!(stream.starts_with(&joined), "framing changed the bytes");
    assert!(
        stream[joined.len()..].iter().all(u8::is_ascii_whitespace),
        "framing dropped more than trailing blank space"
    );
    for event in &cut {
        usage_tap(event);
    }
}

/// The usage tap on one event: reading it never fails, and removing a
/// `"usage":null` member leaves valid JSON valid.
pub fn usage_tap(event: &[u8]) {
    let info = inspect(event);
    let Some(span) = info.null_usage else {
        return;
    };
    let event = Bytes::copy_from_slice(event);
    let stripped = without(&event, span.clone());
    assert_eq!(stripped.len(), event.len() - span.len());
    let was_json = serde_json::from_slice::<serde_json::Value>(&data_of(&event)).is_ok();
    if was_json {
        let data = data_of(&stripped);
        assert!(
            serde_json::from_slice::<serde_json::Value>(&data).is_ok(),
            "removing usage:null broke {:?} into {:?}",
            String::from_utf8_lossy(&event),
            String::from_utf8_lossy(&data)
        );
    }
}

/// Request parsing: a body is refused or read with a model.
pub fn request_parse(data: &[u8]) {
    if let Ok(parsed) = crate::relay::parse(Bytes::copy_from_slice(data)) {
        assert!(!parsed.model.is_empty());
    }
}

/// The body rewrite: whatever a parsed body asks, the body sent upstream is
/// a JSON object with the channel's model, asks a stream for its usage, and
/// carries the metering's cap. The last byte picks the cap and its field.
pub fn body_rewrite(data: &[u8]) {
    let Some((&knob, body)) = data.split_last() else {
        return;
    };
    // JSON that serde cannot hold (a number out of its range) is forwarded
    // as it came; only what it can read is checked.
    if serde_json::from_slice::<serde_json::Value>(body).is_err() {
        return;
    }
    let Ok(mut parsed) = crate::relay::parse(Bytes::copy_from_slice(body)) else {
        return;
    };
    let field = if knob & 1 == 0 {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    parsed.send_cap = (knob & 2 == 0).then_some((u64::from(knob), field));
    let asked = parsed.model.clone();
    let upstream = if knob & 4 == 0 {
        "renamed-model"
    } else {
        asked.as_str()
    };
    let Ok(sent) = crate::relay::upstream_body(&parsed, upstream) else {
        return;
    };
    let value = serde_json::from_slice::<serde_json::Value>(&sent);
    assert!(
        value.is_ok(),
        "the rewritten body is not JSON ({value:?}): {:?}",
        String::from_utf8_lossy(&sent)
    );
    let Ok(value) = value else {
        return;
    };
    assert_eq!(value["model"], upstream, "{value}");
    if parsed.stream {
        assert_eq!(value["stream_options"]["include_usage"], true, "{value}");
    }
    if let Some((cap, _)) = parsed.send_cap {
        let capped = ["max_completion_tokens", "max_tokens"]
            .iter()
            .any(|f| value[*f] == cap);
        assert!(capped, "{value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A target's name and body.
    type Target = (&'static str, fn(&[u8]));

    /// Each target.
    const TARGETS: [Target; 4] = [
        ("sse_framer", sse_framer),
        ("usage_tap", usage_tap),
        ("request_parse", request_parse),
        ("body_rewrite", body_rewrite),
    ];

    /// The fewest seeds a target's corpus may hold.
    const MIN_SEEDS: usize = 20;

    #[test]
    fn every_seed_of_every_corpus_replays() -> std::io::Result<()> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        for (target, run) in TARGETS {
            let mut seeds = 0;
            for entry in std::fs::read_dir(root.join(target))? {
                let bytes = std::fs::read(entry?.path())?;
                run(&bytes);
                seeds += 1;
            }
            assert!(
                seeds >= MIN_SEEDS,
                "{target}: {seeds} seeds, at least {MIN_SEEDS} wanted"
            );
        }
        Ok(())
    }
}

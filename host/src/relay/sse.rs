//! A small SSE framer for the streaming relay: splits upstream bytes into whole
//! events (each ending in a blank line) up to a configured size
//! (`upstream.max_event_bytes`), so a large event relays intact and an
//! upstream that never ends an event cannot grow a stream's memory without
//! bound; and a cheap reader of the `usage` object.

use std::ops::Range;

use bytes::{Bytes, BytesMut};

use crate::metering::Tokens;

/// Splits a byte stream into SSE events.
#[derive(Debug)]
pub struct SseFramer {
    buf: BytesMut,
    /// Bytes of `buf` already searched for a delimiter (minus an overlap).
    searched: usize,
    /// Largest unfinished event held before the stream is failed.
    max_event_bytes: usize,
}

/// The framer's buffer outgrew its event size limit.
#[derive(Debug, PartialEq, Eq)]
pub struct EventTooLarge;

impl SseFramer {
    /// A framer that holds at most `max_event_bytes` of an unfinished event.
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            searched: 0,
            max_event_bytes,
        }
    }

    /// Feeds `chunk` and appends every completed event (delimiter included) to `out`.
    ///
    /// # Errors
    /// When an unfinished event exceeds the framer's limit.
    pub fn push(&mut self, mut chunk: Bytes, out: &mut Vec<Bytes>) -> Result<(), EventTooLarge> {
        if self.buf.is_empty() {
            // The usual case, one or more whole events per upstream chunk: slice
            // them out of the chunk without copying.
            while let Some(end) = find_event_end(&chunk) {
                out.push(chunk.split_to(end));
            }
        } else {
            self.buf.extend_from_slice(&chunk);
            chunk.clear();
            while let Some(end) =
                find_event_end(&self.buf[self.searched..]).map(|e| e + self.searched)
            {
                out.push(self.buf.split_to(end).freeze());
                self.searched = 0;
            }
        }
        self.buf.extend_from_slice(&chunk);
        self.searched = self.buf.len().saturating_sub(3);
        if self.buf.len() > self.max_event_bytes {
            Err(EventTooLarge)
        } else {
            Ok(())
        }
    }

    /// Whatever is left when the upstream ends (an unterminated last event).
    pub fn finish(&mut self) -> Option<Bytes> {
        self.searched = 0;
        let rest = self.buf.split().freeze();
        (!rest.iter().all(u8::is_ascii_whitespace)).then_some(rest)
    }
}

/// The index just past the first blank-line delimiter (`\n\n`, `\r\n\r\n`, `\r\r`).
fn find_event_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = memchr::memchr2(b'\n', b'\r', &buf[from..]) {
        let i = from + at;
        match (buf[i], buf.get(i + 1)) {
            (b'\n', Some(b'\n')) | (b'\r', Some(b'\r')) => return Some(i + 2),
            (b'\r', Some(b'\n')) if buf.get(i + 2..i + 4) == Some(b"\r\n") => return Some(i + 4),
            _ => from = i + 1,
        }
    }
    None
}

/// What one event means to the relay.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct EventInfo {
    /// The event is the `[DONE]` marker.
    pub done: bool,
    /// The event carries a usage object.
    pub usage: Option<Tokens>,
    /// The event is the usage-only chunk (`choices: []`) added for accounting.
    pub usage_only: bool,
    /// Where the event's `"usage":null` member lies, with the comma that
    /// separates it from a neighbour: upstreams add it to every chunk once
    /// usage is asked for, which a client that did not ask must not see.
    pub null_usage: Option<Range<usize>>,
}

#[derive(serde::Deserialize)]
struct ChunkPeek {
    #[serde(default)]
    choices: Option<Vec<serde::de::IgnoredAny>>,
    #[serde(default)]
    usage: Option<Tokens>,
}

/// The concatenated `data:` payload of an event.
pub fn data_of(event: &[u8]) -> Vec<u8> {
    let mut data = Vec::new();
    for line in event.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(rest) = line.strip_prefix(b"data:") {
            if !data.is_empty() {
                data.push(b'\n');
            }
            data.extend_from_slice(rest.strip_prefix(b" ").unwrap_or(rest));
        }
    }
    data
}

/// Reads an event. JSON is parsed only when the event mentions `"usage"` with a
/// non-null value, so ordinary token chunks cost a byte scan.
pub fn inspect(event: &[u8]) -> EventInfo {
    let Some(at) = unescaped(event, b"\"usage\"") else {
        return EventInfo {
            done: memfind(event, b"[DONE]").is_some() && data_of(event).trim_ascii() == b"[DONE]",
            ..EventInfo::default()
        };
    };
    if let Some(span) = null_member(event, at) {
        return EventInfo {
            null_usage: Some(span),
            ..EventInfo::default()
        };
    }
    match serde_json::from_slice::<ChunkPeek>(&data_of(event)) {
        Ok(peek) => EventInfo {
            usage_only: peek.usage.is_some() && peek.choices.as_ref().is_some_and(Vec::is_empty),
            usage: peek.usage,
            ..EventInfo::default()
        },
        Err(_) => EventInfo::default(),
    }
}

/// The span of the `"usage":null` member whose key starts at `key`, with the
/// comma before it (or, for a first member, after it), when it can be cut out
/// without touching anything else: the event has one `data:` line, the member
/// is on it, and the span stays on it. `None` otherwise (the member is then
/// left in place).
fn null_member(event: &[u8], key: usize) -> Option<Range<usize>> {
    let start = event[..key]
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let mut end = event[key..]
        .iter()
        .position(|b| *b == b'\n')
        .map_or(event.len(), |i| key + i);
    if event[..end].ends_with(b"\r") {
        end -= 1;
    }
    let data_lines = event
        .split(|b| *b == b'\n')
        .filter(|line| line.starts_with(b"data:"))
        .count();
    let line = &event[start..end];
    // A lone CR is a line break to SSE but not to every reader: leave such
    // an event alone.
    if !line.starts_with(b"data:") || data_lines != 1 || line.contains(&b'\r') {
        return None;
    }
    let value = blank_start(blank_start(&event[key + 7..end]).strip_prefix(b":")?);
    if !value.starts_with(b"null") {
        return None;
    }
    let value_end = end - value.len() + 4;
    let before = blank_end(&event[start..key]);
    if before.ends_with(b",") {
        return Some(start + before.len() - 1..value_end);
    }
    Some(
        match blank_start(&event[value_end..end]).strip_prefix(b",") {
            Some(next) => key..end - blank_start(next).len(),
            None => key..value_end,
        },
    )
}

/// `bytes` without leading spaces and tabs.
fn blank_start(bytes: &[u8]) -> &[u8] {
    let n = bytes
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t'))
        .count();
    &bytes[n..]
}

/// `bytes` without trailing spaces and tabs.
fn blank_end(bytes: &[u8]) -> &[u8] {
    let n = bytes
        .iter()
        .rev()
        .take_while(|b| matches!(b, b' ' | b'\t'))
        .count();
    &bytes[..bytes.len() - n]
}

/// `event` without the bytes in `span`.
pub fn without(event: &Bytes, span: Range<usize>) -> Bytes {
    let mut out = Vec::with_capacity(event.len() - span.len());
    out.extend_from_slice(&event[..span.start]);
    out.extend_from_slice(&event[span.end..]);
    Bytes::from(out)
}

fn memfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

/// The first `needle` (which starts with a quote) whose quote is not escaped
/// (preceded by an odd run of backslashes, as inside a key like `"a\"usage"`).
fn unescaped(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find_iter(haystack, needle).find(|&at| {
        let backslashes = haystack[..at]
            .iter()
            .rev()
            .take_while(|b| **b == b'\\')
            .count();
        backslashes % 2 == 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default `upstream.max_event_bytes`.
    const LIMIT: usize = 4 << 20;

    fn frames(chunks: &[&[u8]]) -> Vec<Bytes> {
        let mut framer = SseFramer::new(LIMIT);
        let mut out = Vec::new();
        for c in chunks {
            assert!(framer.push(Bytes::copy_from_slice(c), &mut out).is_ok());
        }
        out.extend(framer.finish());
        out
    }

    #[test]
    fn an_escaped_quote_is_not_the_usage_key() {
        // Found by the usage_tap fuzz target: a key ending in `\"usage` was
        // read as the usage member, and stripping it broke the JSON.
        let event = b"data: {\"a\\\"usage\":null,\"b\":1}\n\n";
        assert_eq!(inspect(event), EventInfo::default());
        let real = b"data: {\"a\\\\\":1,\"usage\":null}\n\n";
        assert!(inspect(real).null_usage.is_some());
    }

    #[test]
    fn usage_null_is_cut_only_from_a_single_data_line() {
        // Found by the usage_tap fuzz target: a member on a comment line, or
        // in JSON spread over data lines, was cut across lines.
        for event in [
            &b": {\"usage\":null,\n\ndata: {\"a\":1}\n\n"[..],
            b"data: {\"a\":1,\ndata: \"usage\":null}\n\n",
            b"data: {\"ch\":3400\r\r,\r\r\"usage\":null}\n\n",
            b"data: {\"usage\":null\r\r,\"b\":1}\r\n\n",
        ] {
            assert_eq!(
                inspect(event).null_usage,
                None,
                "{:?}",
                String::from_utf8_lossy(event)
            );
        }
        let event = Bytes::from_static(b"data: {\"a\":1, \"usage\" : null}\r\n\r\n");
        let span = inspect(&event).null_usage;
        assert_eq!(
            span.map(|span| without(&event, span)),
            Some(Bytes::from_static(b"data: {\"a\":1}\r\n\r\n"))
        );
    }

    #[test]
    fn splits_on_blank_lines_across_chunk_boundaries() {
        let out = frames(&[
            b"data: a\n",
            b"\ndata: b\r\n\r",
            b"\ndata: c\n\n",
            b"data: tail",
        ]);
        assert_eq!(
            out,
            vec![
                Bytes::from_static(b"data: a\n\n"),
                Bytes::from_static(b"data: b\r\n\r\n"),
                Bytes::from_static(b"data: c\n\n"),
                Bytes::from_static(b"data: tail")
            ]
        );
    }

    #[test]
    fn large_events_stay_whole() {
        let big = format!("data: {}\n\n", "x".repeat(1 << 20));
        let chunks: Vec<&[u8]> = big.as_bytes().chunks(1000).collect();
        let out = frames(&chunks);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), big.len());
    }

    #[test]
    fn oversized_events_are_refused_at_the_limit() {
        let mut framer = SseFramer::new(LIMIT);
        let mut out = Vec::new();
        let chunk = Bytes::from(vec![b'x'; 1 << 20]);
        let mut result = Ok(());
        for pushed in 1..=8 {
            result = framer.push(chunk.clone(), &mut out);
            assert_eq!(result.is_err(), pushed > 4, "after {pushed} MiB");
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(EventTooLarge));
    }

    #[test]
    fn finds_null_usage_members_with_their_comma() {
        for (event, expected) in [
            (
                &b"data: {\"choices\":[{\"delta\":{}}],\"usage\":null}\n\n"[..],
                &b"data: {\"choices\":[{\"delta\":{}}]}\n\n"[..],
            ),
            (
                b"data: {\"usage\": null, \"choices\":[]}\n\n",
                b"data: {\"choices\":[]}\n\n",
            ),
            (
                b"data: {\"id\":1 , \"usage\" : null }\n\n",
                b"data: {\"id\":1  }\n\n",
            ),
        ] {
            let info = inspect(event);
            let stripped = info
                .null_usage
                .clone()
                .map(|span| without(&Bytes::copy_from_slice(event), span));
            assert_eq!(stripped, Some(Bytes::copy_from_slice(expected)));
            assert_eq!(info.usage, None);
        }
        assert_eq!(
            inspect(b"data: {\"text\":\"\\\"usage\\\":null\"}\n\n").null_usage,
            None
        );
    }

    #[test]
    fn reads_usage_and_done() {
        let info = inspect(
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n",
        );
        assert_eq!(
            info.usage,
            Some(Tokens {
                prompt: 3,
                completion: 4,
                ..Tokens::default()
            })
        );
        assert!(info.usage_only);
        assert!(inspect(b"data: [DONE]\n\n").done);
        assert!(!inspect(b"data: {\"x\":\"[DONE]\"}\n\n").done);
    }

    /// Property: however a stream of events is cut into chunks, the framer
    /// yields exactly the original events (deterministic pseudo-random cases).
    #[test]
    fn any_chunking_yields_the_same_events() {
        let mut seed: u64 = 0x5eed;
        let mut next = |bound: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            usize::try_from(seed >> 33).unwrap_or(0) % bound.max(1)
        };
        for _ in 0..300 {
            let mut events = Vec::new();
            for _ in 0..1 + next(12) {
                let body: String = (0..next(300))
                    .map(|_| char::from(b'a' + u8::try_from(next(26)).unwrap_or(0)))
                    .collect();
                let delimiter = ["\n\n", "\r\n\r\n", "\r\r"][next(3)];
                events.push(format!("data: {body}{delimiter}"));
            }
            let stream = events.concat();
            let mut cuts: Vec<usize> = (0..next(20)).map(|_| next(stream.len())).collect();
            cuts.push(0);
            cuts.push(stream.len());
            cuts.sort_unstable();
            let chunks: Vec<&[u8]> = cuts
                .windows(2)
                .map(|w| &stream.as_bytes()[w[0]..w[1]])
                .collect();
            let got: Vec<String> = frames(&chunks)
                .iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect();
            assert_eq!(got, events);
        }
    }
}

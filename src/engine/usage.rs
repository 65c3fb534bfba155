//! Usage per account: the `usage` an answer reports (a JSON body's `usage`, or an event stream's
//! `message_start` and `message_delta`), read by a tap on the bytes already passing through to
//! the caller. The tap never changes, holds back or reorders a byte; it only looks.

use serde_json::Value;

/// Tokens and requests, as counted per account, model, day and 5-hour window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    #[serde(default)]
    pub requests: u64,
    #[serde(default)]
    pub input: u64,
    #[serde(default)]
    pub output: u64,
    #[serde(default)]
    pub cache_read: u64,
    #[serde(default)]
    pub cache_write: u64,
}

/// The largest total kept: the largest integer every JSON reader (JavaScript's among them) holds
/// exactly. Totals stop there instead of wrapping around or turning into BigInts.
pub const MAX_TOTAL: u64 = (1 << 53) - 1;
/// The most one answer is believed to have used of any count (a context holds about a million
/// tokens); a server claiming more is not counted for it.
const MAX_PER_ANSWER: u64 = 1 << 32;

impl Counts {
    pub fn add(&mut self, other: &Counts) {
        let sum = |a: u64, b: u64| a.saturating_add(b).min(MAX_TOTAL);
        self.requests = sum(self.requests, other.requests);
        self.input = sum(self.input, other.input);
        self.output = sum(self.output, other.output);
        self.cache_read = sum(self.cache_read, other.cache_read);
        self.cache_write = sum(self.cache_write, other.cache_write);
    }

    /// The counts kept in the pool file (`{ requests, input, output, cacheRead, cacheWrite }`);
    /// a missing or unreadable count is 0.
    pub fn from_stored(kept: &serde_json::Map<String, Value>) -> Counts {
        let n = |k: &str| kept.get(k).and_then(Value::as_u64).unwrap_or(0);
        Counts {
            requests: n("requests"),
            input: n("input"),
            output: n("output"),
            cache_read: n("cacheRead"),
            cache_write: n("cacheWrite"),
        }
    }

    fn from_usage(u: &Value) -> Counts {
        let n = |k: &str| {
            u.get(k)
                .and_then(Value::as_u64)
                .filter(|&n| n <= MAX_PER_ANSWER)
                .unwrap_or(0)
        };
        Counts {
            requests: 0,
            input: n("input_tokens"),
            output: n("output_tokens"),
            cache_read: n("cache_read_input_tokens"),
            cache_write: n("cache_creation_input_tokens"),
        }
    }
}

/// Whether answers are counted: `OAUTH_POOL_USAGE=off` turns the tap off (the benchmarks
/// compare with and without it).
pub fn enabled() -> bool {
    crate::settings::usage_counted()
}

/// Whether an answer carries usage to count, and how: `Some(true)` an event stream, `Some(false)`
/// a JSON message, `None` nothing to count (not a 2xx, another type, or counting is off).
pub fn carried(status: u16, headers: &reqwest::header::HeaderMap) -> Option<bool> {
    if !(200..300).contains(&status) || !enabled() {
        return None;
    }
    let content_type = headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_start().to_ascii_lowercase())
        .unwrap_or_default();
    if content_type.starts_with("text/event-stream") {
        Some(true)
    } else {
        content_type.contains("json").then_some(false)
    }
}

/// A JSON body is kept (to find its `usage`) up to this size; a bigger one is not counted.
const MAX_JSON: usize = 8 * 1024 * 1024;
/// An event-stream line longer than this is skipped (usage lines are a few hundred bytes).
const MAX_LINE: usize = 1024 * 1024;

/// What the tap reads of a message: its `usage`, as a value (counts may be missing or null).
/// Typed so that the rest (the content, most of the bytes) is skipped, not built into a tree.
#[derive(serde::Deserialize)]
struct WithUsage {
    #[serde(default)]
    usage: Option<Value>,
}

/// An event's `type` and where its usage sits (`message.usage` or `usage`).
#[derive(serde::Deserialize)]
struct UsageEvent {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    message: Option<WithUsage>,
    #[serde(default)]
    usage: Option<Value>,
}

/// Whether JSON text is an object (a derived struct would also take an array, by position).
fn is_object(json: &[u8]) -> bool {
    json.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// Watches one answer's bytes. `observe` every chunk as it passes, `finish` at the end (or when
/// the caller stops reading: what was seen until then is what counts).
pub struct UsageTap {
    kind: Kind,
    started: Option<Counts>,
    delta: Option<Counts>,
}

enum Kind {
    Events { line: Vec<u8>, skipping: bool },
    Json { body: Vec<u8>, overflow: bool },
}

impl UsageTap {
    pub fn new(event_stream: bool) -> UsageTap {
        UsageTap {
            kind: if event_stream {
                Kind::Events {
                    line: Vec::new(),
                    skipping: false,
                }
            } else {
                Kind::Json {
                    body: Vec::new(),
                    overflow: false,
                }
            },
            started: None,
            delta: None,
        }
    }

    pub fn observe(&mut self, chunk: &[u8]) {
        let mut lines: Vec<Vec<u8>> = Vec::new();
        match &mut self.kind {
            Kind::Json { body, overflow } => {
                if !*overflow {
                    if body.len() + chunk.len() > MAX_JSON {
                        *overflow = true;
                        body.clear();
                    } else {
                        body.extend_from_slice(chunk);
                    }
                }
            }
            Kind::Events { line, skipping } => {
                for part in chunk.split_inclusive(|b| *b == b'\n') {
                    let ends = part.last() == Some(&b'\n');
                    if !*skipping {
                        if line.len() + part.len() > MAX_LINE {
                            *skipping = true;
                            line.clear();
                        } else {
                            line.extend_from_slice(part);
                        }
                    }
                    if ends {
                        if !*skipping {
                            lines.push(std::mem::take(line));
                        }
                        *skipping = false;
                        line.clear();
                    }
                }
            }
        }
        for l in lines {
            self.event_line(&l);
        }
    }

    fn event_line(&mut self, line: &[u8]) {
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        // Most events carry no usage: skip them without parsing.
        if !data.windows(7).any(|w| w == b"\"usage\"") {
            return;
        }
        if !is_object(data) {
            return;
        }
        let Ok(event) = serde_json::from_slice::<UsageEvent>(data) else {
            return;
        };
        match event.kind.as_deref() {
            Some("message_start") => {
                if let Some(u) = event.message.and_then(|m| m.usage) {
                    self.started = Some(Counts::from_usage(&u));
                }
            }
            Some("message_delta") => {
                if let Some(u) = event.usage {
                    self.delta = Some(Counts::from_usage(&u));
                }
            }
            _ => {}
        }
    }

    /// What the answer reported, or None when it reported nothing readable.
    pub fn finish(&mut self) -> Option<Counts> {
        if let Kind::Json { body, overflow } = &mut self.kind {
            if !*overflow && is_object(body) {
                let parsed = serde_json::from_slice::<WithUsage>(body).ok();
                body.clear();
                let u = parsed.and_then(|m| m.usage)?;
                let mut c = Counts::from_usage(&u);
                c.requests = 1;
                return Some(c);
            }
            return None;
        }
        let start = self.started.take();
        let delta = self.delta.take();
        if start.is_none() && delta.is_none() {
            return None;
        }
        let s = start.unwrap_or_default();
        let d = delta.unwrap_or_default();
        // message_delta's counts are cumulative; newer answers repeat input and cache there.
        Some(Counts {
            requests: 1,
            input: s.input.max(d.input),
            output: s.output.max(d.output),
            cache_read: s.cache_read.max(d.cache_read),
            cache_write: s.cache_write.max(d.cache_write),
        })
    }
}

/// The value of a top-level string field of a JSON object, found by a scan of the first
/// `limit` bytes (clients put `model` first), without parsing the whole request body.
pub fn top_level_string(body: &[u8], key: &str, limit: usize) -> Option<String> {
    let body = &body[..body.len().min(limit)];
    let mut depth = 0i32;
    let mut i = 0;
    let wanted = format!("\"{key}\"");
    while i < body.len() {
        match body[i] {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth -= 1,
            b'"' => {
                let start = i;
                i += 1;
                while i < body.len() && body[i] != b'"' {
                    if body[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                let rest = body.get(i + 1..).unwrap_or_default();
                let colon = rest.iter().position(|b| !b.is_ascii_whitespace());
                // The key, not a value that reads the same ({"system":"model","model":...}).
                let is_key = colon.is_some_and(|c| rest[c] == b':');
                if depth == 1 && is_key && body.get(start..=i) == Some(wanted.as_bytes()) {
                    let value = &rest[colon? + 1..];
                    let q = value.iter().position(|b| !b.is_ascii_whitespace())?;
                    let mut de =
                        serde_json::Deserializer::from_slice(&value[q..]).into_iter::<String>();
                    return de.next().and_then(Result::ok);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_counts_are_not_counted_and_totals_stop_at_the_largest_exact_number() {
        let claimed = serde_json::json!({"input_tokens": u64::MAX, "output_tokens": 5, "cache_read_input_tokens": (1u64 << 33), "cache_creation_input_tokens": -3});
        let c = Counts::from_usage(&claimed);
        assert_eq!(
            (c.input, c.output, c.cache_read, c.cache_write),
            (0, 5, 0, 0)
        );
        let mut total = Counts {
            requests: MAX_TOTAL - 1,
            input: MAX_TOTAL,
            output: u64::MAX,
            ..Counts::default()
        };
        total.add(&Counts {
            requests: 5,
            input: 1,
            output: 1,
            cache_read: 7,
            cache_write: 0,
        });
        assert_eq!(
            (total.requests, total.input, total.output, total.cache_read),
            (MAX_TOTAL, MAX_TOTAL, MAX_TOTAL, 7)
        );
    }

    const STREAM: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":120,\"output_tokens\":1,\"cache_creation_input_tokens\":30,\"cache_read_input_tokens\":400}}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"the word usage appears here\"}}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":57}}\n\n",
    );

    #[test]
    fn an_event_stream_is_counted_whatever_the_chunking() {
        let expected = Counts {
            requests: 1,
            input: 120,
            output: 57,
            cache_read: 400,
            cache_write: 30,
        };
        for size in [1, 2, 7, 64, 4096] {
            let mut tap = UsageTap::new(true);
            for chunk in STREAM.as_bytes().chunks(size) {
                tap.observe(chunk);
            }
            assert_eq!(tap.finish(), Some(expected), "chunks of {size}");
        }
        // Cut after message_start (an aborted stream): what was reported so far.
        let mut tap = UsageTap::new(true);
        tap.observe(&STREAM.as_bytes()[..STREAM.find("event: content_block_delta").unwrap()]);
        assert_eq!(tap.finish().unwrap().output, 1);
    }

    #[test]
    fn a_json_body_is_counted_and_garbage_is_not() {
        let body = br#"{"id":"m","content":[],"usage":{"input_tokens":9,"output_tokens":4,"cache_read_input_tokens":2}}"#;
        let mut tap = UsageTap::new(false);
        for chunk in body.chunks(5) {
            tap.observe(chunk);
        }
        assert_eq!(
            tap.finish(),
            Some(Counts {
                requests: 1,
                input: 9,
                output: 4,
                cache_read: 2,
                cache_write: 0
            })
        );
        let mut tap = UsageTap::new(false);
        tap.observe(b"<html>bad gateway</html>");
        assert_eq!(tap.finish(), None);
        let mut tap = UsageTap::new(true);
        tap.observe(b"data: {\"type\":\"message_start\", \"usage\" broken\n");
        assert_eq!(tap.finish(), None);
    }

    #[test]
    fn only_the_usage_is_read_whatever_else_the_message_holds() {
        // Content of any shape, a null count and fields in any order: only `usage` matters.
        let body = br#"{"content":[{"type":"text","text":"{\"usage\":{\"input_tokens\":99}}"}],"usage":{"output_tokens":7,"input_tokens":3,"cache_creation_input_tokens":null},"stop_reason":null}"#;
        let mut tap = UsageTap::new(false);
        tap.observe(body);
        assert_eq!(
            tap.finish(),
            Some(Counts {
                requests: 1,
                input: 3,
                output: 7,
                ..Counts::default()
            })
        );
        let mut tap = UsageTap::new(false);
        tap.observe(br#"[{"usage":{"input_tokens":1}}]"#);
        assert_eq!(tap.finish(), None, "not a message");
        let mut tap = UsageTap::new(true);
        tap.observe(b"data: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"content\":[],\"usage\":{\"input_tokens\":5}}}\n");
        tap.observe(
            b"data: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"\\\"usage\\\"\"}}\n",
        );
        tap.observe(b"data: {\"usage\":{\"output_tokens\":2},\"type\":\"message_delta\"}\n");
        assert_eq!(
            tap.finish(),
            Some(Counts {
                requests: 1,
                input: 5,
                output: 2,
                ..Counts::default()
            })
        );
    }

    #[test]
    fn the_model_is_found_without_parsing_the_body() {
        let body = br#"{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"{\"model\":\"fake\"}"}]}"#;
        assert_eq!(
            top_level_string(body, "model", 4096).as_deref(),
            Some("claude-sonnet-4-5")
        );
        let nested =
            br#"{"messages":[{"model":"nope"}],"stream":true, "model" : "claude-opus-4-1"}"#;
        assert_eq!(
            top_level_string(nested, "model", 4096).as_deref(),
            Some("claude-opus-4-1")
        );
        assert_eq!(top_level_string(b"{\"x\":1}", "model", 4096), None);
        assert_eq!(top_level_string(b"not json", "model", 4096), None);
        assert_eq!(top_level_string(br#"{"model": 5}"#, "model", 4096), None);
        // A value that reads like the key is not the key.
        assert_eq!(
            top_level_string(
                br#"{"system":"model","model":"claude-opus-4-5"}"#,
                "model",
                4096
            )
            .as_deref(),
            Some("claude-opus-4-5")
        );
    }

    proptest::proptest! {
        #[test]
        fn taps_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512), sse in proptest::prelude::any::<bool>()) {
            let mut tap = UsageTap::new(sse);
            tap.observe(&bytes);
            let _ = tap.finish();
            let _ = top_level_string(&bytes, "model", 512);
        }
    }
}

//! Usage per account: the `usage` an answer reports (a JSON body's `usage`, or an event stream's
//! `message_start` and `message_delta`), read by a tap on the bytes already passing through to
//! the caller. The tap never changes, holds back or reorders a byte; it only looks. And an event
//! stream's opening (`Opening`), read by the same parser before the answer is handed over.

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
    /// A count written as `57.0` (a program that rewrote the file through JavaScript's numbers)
    /// is 57: read as 0, the next count written over it dropped what it held.
    pub fn from_stored(kept: &serde_json::Map<String, Value>) -> Counts {
        let n = |k: &str| {
            kept.get(k)
                .and_then(|v| {
                    v.as_u64().or_else(|| {
                        v.as_f64()
                            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= MAX_TOTAL as f64)
                            .map(|f| f as u64)
                    })
                })
                .map_or(0, |n| n.min(MAX_TOTAL))
        };
        Counts {
            requests: n("requests"),
            input: n("input"),
            output: n("output"),
            cache_read: n("cacheRead"),
            cache_write: n("cacheWrite"),
        }
    }

    /// A count that is not a whole number from 0 to `MAX_PER_ANSWER` is not counted. One written
    /// as `57.0` or `5.7e1` is the number 57 to any JSON reader, so it is.
    fn from_usage(u: &Value) -> Counts {
        let n = |k: &str| {
            u.get(k)
                .and_then(|v| {
                    v.as_u64().or_else(|| {
                        v.as_f64()
                            .filter(|f| {
                                f.fract() == 0.0 && *f >= 0.0 && *f <= MAX_PER_ANSWER as f64
                            })
                            .map(|f| f as u64)
                    })
                })
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

/// Whether an answer carries what the tap reads (usage; a file's or a batch's id), and how:
/// `Some(true)` an event stream, `Some(false)` JSON, `None` nothing (not a 2xx, another type).
/// Whether it is read at all is its sink's (`UsageSink::wanted`).
pub fn carried(status: u16, headers: &reqwest::header::HeaderMap) -> Option<bool> {
    if !(200..300).contains(&status) {
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
/// The most of one event's data kept to be read (a `message_start` is a few hundred bytes); the
/// usage of a bigger event is not counted, its bytes pass all the same.
const MAX_EVENT: usize = 1024 * 1024;
/// An event's data buffer is let go after the event when it grew past this (a long stream keeps
/// no megabyte for one big event).
const KEPT_CAPACITY: usize = 64 * 1024;
/// Field names the tap reads (`data`, `event`) and event names it counts are at most this long.
const MAX_FIELD: usize = 16;
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// What the tap reads of a JSON answer: its `usage`, as a value (counts may be missing or null),
/// and its `id` (a file or a batch just made names itself there). Typed so that the rest (the
/// content, most of the bytes) is skipped, not built into a tree; values, so that an odd type
/// of either loses only that one.
#[derive(serde::Deserialize)]
struct WithUsage {
    #[serde(default)]
    usage: Option<Value>,
    #[serde(default)]
    id: Option<Value>,
}

/// An event's `type` and where its usage sits (`message.usage` or `usage`). The message is a
/// value, not a derived struct: a derived struct also takes an array, by position, and read
/// `"message": [{"input_tokens": 999}]` as a usage no client would see.
#[derive(serde::Deserialize)]
struct UsageEvent {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    message: Option<Value>,
    #[serde(default)]
    usage: Option<Value>,
    #[serde(default)]
    error: Option<Value>,
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
    /// The `error.type` of an `error` event in the stream (`rate_limit_error`,
    /// `overloaded_error`), the first one.
    stream_error: Option<String>,
    /// The top-level `id` of a JSON answer, once `finish` read it.
    id: Option<String>,
}

enum Kind {
    Events(Box<Events>),
    Json { body: Vec<u8>, overflow: bool },
}

/// Where the current line is.
#[derive(Clone, Copy)]
enum Line {
    /// Nothing of it yet: a line end here is the blank line that ends an event.
    Start,
    /// In the field name.
    Field,
    /// Right after the colon (one space there is not part of the value).
    ValueStart(Target),
    Value(Target),
}

#[derive(Clone, Copy)]
enum Target {
    Data,
    Event,
    Skip,
}

/// The event stream as the SSE specification reads it (WHATWG HTML, "Parsing an event stream"):
/// lines end with CRLF, LF or CR, in any mix and cut anywhere between chunks; a BOM may open
/// the stream; an event's `data` lines are joined with LF and the event is dispatched by the
/// blank line after it (one the stream ends before is dropped); a line starting with a colon is
/// a comment; `id`, `retry` and unknown fields are ignored. Only what is read is kept: a field
/// name, an event name, and the data of an event that may carry usage (bounded).
struct Events {
    /// The stream's first bytes while they may still be a BOM.
    opening: Option<Vec<u8>>,
    line: Line,
    /// The last line ended with a CR: an LF first in the next chunk is the rest of its end.
    after_cr: bool,
    field: Vec<u8>,
    field_long: bool,
    /// The event's name (`event:`), when one was given.
    name: Vec<u8>,
    named: bool,
    name_long: bool,
    data: Vec<u8>,
    has_data: bool,
    /// Some of the event's data was not kept (too big, or an event that carries no usage).
    lost: bool,
}

/// What the event parser tells its reader, in stream order.
enum Seen<'a> {
    /// An `event:` line ended: the event's name so far (None: longer than any name read).
    Named(Option<&'a [u8]>),
    /// An event read (`usage_event`) was dispatched: its name and data.
    Read(&'a [u8], &'a [u8]),
    /// An event without a name was dispatched (of type `message`, which no Anthropic event is).
    Unnamed,
}

/// The events read: those that carry usage, named so and of that `type` (both Anthropic SDKs
/// read no message from an event without a name, nor from `ping`), and `error`.
fn usage_event(name: &[u8]) -> bool {
    name == b"message_start" || name == b"message_delta" || name == b"error"
}

impl Events {
    fn new() -> Events {
        Events {
            opening: Some(Vec::with_capacity(BOM.len())),
            line: Line::Start,
            after_cr: false,
            field: Vec::with_capacity(MAX_FIELD),
            field_long: false,
            name: Vec::with_capacity(MAX_FIELD),
            named: false,
            name_long: false,
            data: Vec::new(),
            has_data: false,
            lost: false,
        }
    }

    /// Feeds a chunk; tells `dispatch` each event name as its line ends, and each complete
    /// event that is read (or has no name).
    fn observe(&mut self, mut chunk: &[u8], dispatch: &mut impl FnMut(Seen)) {
        if let Some(held) = &mut self.opening {
            let take = (BOM.len() - held.len()).min(chunk.len());
            held.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if held.len() < BOM.len() && BOM.starts_with(held) {
                return;
            }
            let held = self.opening.take().unwrap_or_default();
            if held != BOM {
                self.feed(&held, dispatch);
            }
        }
        self.feed(chunk, dispatch);
    }

    fn feed(&mut self, mut rest: &[u8], dispatch: &mut impl FnMut(Seen)) {
        while let Some(&first) = rest.first() {
            if self.after_cr {
                self.after_cr = false;
                if first == b'\n' {
                    rest = &rest[1..];
                    continue;
                }
            }
            match memchr::memchr2(b'\n', b'\r', rest) {
                Some(end) => {
                    self.take(&rest[..end]);
                    self.end_line(dispatch);
                    self.after_cr = rest[end] == b'\r';
                    rest = &rest[end + 1..];
                }
                None => {
                    self.take(rest);
                    return;
                }
            }
        }
    }

    /// A piece of the current line (no line end in it).
    fn take(&mut self, mut part: &[u8]) {
        while !part.is_empty() {
            match self.line {
                Line::Start | Line::Field => {
                    self.line = Line::Field;
                    match memchr::memchr(b':', part) {
                        Some(colon) => {
                            self.name_part(&part[..colon]);
                            self.line = Line::ValueStart(self.target());
                            part = &part[colon + 1..];
                        }
                        None => {
                            self.name_part(part);
                            return;
                        }
                    }
                }
                Line::ValueStart(target) => {
                    if part[0] == b' ' {
                        part = &part[1..];
                    }
                    self.line = Line::Value(target);
                }
                Line::Value(target) => {
                    self.value(target, part);
                    return;
                }
            }
        }
    }

    fn name_part(&mut self, part: &[u8]) {
        if self.field.len() + part.len() > MAX_FIELD {
            self.field_long = true;
        } else {
            self.field.extend_from_slice(part);
        }
    }

    /// The field just named: where its value goes.
    fn target(&mut self) -> Target {
        let target = match (self.field_long, self.field.as_slice()) {
            (false, b"data") => Target::Data,
            (false, b"event") => {
                self.name.clear();
                self.name_long = false;
                Target::Event
            }
            _ => Target::Skip,
        };
        self.field.clear();
        self.field_long = false;
        target
    }

    fn value(&mut self, target: Target, part: &[u8]) {
        match target {
            Target::Data => self.keep_data(part),
            Target::Event => {
                if self.name.len() + part.len() > MAX_FIELD {
                    self.name_long = true;
                } else {
                    self.name.extend_from_slice(part);
                }
            }
            Target::Skip => {}
        }
    }

    fn keep_data(&mut self, part: &[u8]) {
        // An event already named otherwise carries no usage: its data is not copied.
        if self.named && (self.name_long || !usage_event(&self.name)) {
            self.lost = true;
        }
        if self.lost {
            return;
        }
        let needed = self.data.len() + part.len();
        if needed > MAX_EVENT {
            self.lost = true;
            self.data = Vec::new();
            return;
        }
        if needed > self.data.capacity() {
            // Grown by doubling as usual, but never past the bound.
            let room = (self.data.capacity() * 2).clamp(needed, MAX_EVENT);
            self.data.reserve_exact(room - self.data.len());
        }
        self.data.extend_from_slice(part);
    }

    fn end_line(&mut self, dispatch: &mut impl FnMut(Seen)) {
        let target = match std::mem::replace(&mut self.line, Line::Start) {
            Line::Start => return self.dispatch(dispatch),
            // A field without a colon: the whole line is its name, its value empty.
            Line::Field => self.target(),
            Line::ValueStart(target) | Line::Value(target) => target,
        };
        match target {
            Target::Data => {
                self.has_data = true;
                self.keep_data(b"\n");
            }
            Target::Event => {
                self.named = true;
                dispatch(Seen::Named(
                    (!self.name_long).then_some(self.name.as_slice()),
                ));
            }
            Target::Skip => {}
        }
    }

    fn dispatch(&mut self, dispatch: &mut impl FnMut(Seen)) {
        if self.has_data && !self.named {
            dispatch(Seen::Unnamed);
        } else if self.has_data
            && !self.lost
            && self.named
            && !self.name_long
            && usage_event(&self.name)
        {
            // The data lines were joined with LF; the last one's is not part of the data.
            let data = self.data.strip_suffix(b"\n").unwrap_or(&self.data);
            dispatch(Seen::Read(&self.name, data));
        }
        self.name.clear();
        self.named = false;
        self.name_long = false;
        self.has_data = false;
        self.lost = false;
        if self.data.capacity() > KEPT_CAPACITY {
            self.data = Vec::new();
        } else {
            self.data.clear();
        }
    }
}

impl UsageTap {
    pub fn new(event_stream: bool) -> UsageTap {
        UsageTap {
            kind: if event_stream {
                Kind::Events(Box::new(Events::new()))
            } else {
                Kind::Json {
                    body: Vec::new(),
                    overflow: false,
                }
            },
            started: None,
            delta: None,
            stream_error: None,
            id: None,
        }
    }

    pub fn observe(&mut self, chunk: &[u8]) {
        match &mut self.kind {
            Kind::Json { body, overflow } => {
                if !*overflow {
                    if body.len() + chunk.len() > MAX_JSON {
                        *overflow = true;
                        // Let go, not cleared: the capacity would stay held to the end.
                        *body = Vec::new();
                    } else {
                        body.extend_from_slice(chunk);
                    }
                }
            }
            Kind::Events(events) => {
                let (started, delta, error) =
                    (&mut self.started, &mut self.delta, &mut self.stream_error);
                events.observe(chunk, &mut |seen| {
                    if let Seen::Read(name, data) = seen {
                        read_event(name, data, started, delta, error);
                    }
                });
            }
        }
    }

    /// The `error.type` of the stream's first `error` event, if it had one.
    pub fn take_stream_error(&mut self) -> Option<String> {
        self.stream_error.take()
    }

    /// The top-level `id` of a JSON answer, read by `finish`.
    pub fn take_id(&mut self) -> Option<String> {
        self.id.take()
    }

    /// What the answer reported, or None when it reported nothing readable.
    pub fn finish(&mut self) -> Option<Counts> {
        if let Kind::Json { body, overflow } = &mut self.kind {
            if !*overflow && is_object(body) {
                let parsed = serde_json::from_slice::<WithUsage>(body).ok();
                *body = Vec::new();
                let (usage, id) = parsed.map_or((None, None), |m| (m.usage, m.id));
                self.id = id.and_then(|v| match v {
                    Value::String(id) => Some(id),
                    _ => None,
                });
                let u = usage?;
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

/// A dispatched `message_start` or `message_delta`: its usage, when the data is one JSON object
/// of the event's own `type`; an `error`: its `error.type`.
fn read_event(
    name: &[u8],
    data: &[u8],
    started: &mut Option<Counts>,
    delta: &mut Option<Counts>,
    error: &mut Option<String>,
) {
    if name == b"error" {
        if error.is_none() {
            *error = error_said(data);
        }
        return;
    }
    if !is_object(data) {
        return;
    }
    let Ok(event) = serde_json::from_slice::<UsageEvent>(data) else {
        return;
    };
    if event.kind.as_deref().map(str::as_bytes) != Some(name) {
        return;
    }
    if name == b"message_start" {
        if let Some(u) = event.message.as_ref().and_then(|m| m.get("usage")) {
            if !u.is_null() {
                *started = Some(Counts::from_usage(u));
            }
        }
    } else if let Some(u) = event.usage {
        *delta = Some(Counts::from_usage(&u));
    }
}

/// The `error.type` of an `error` event's data (`{"type":"error","error":{"type":...}}`), when
/// the data is one JSON object of type `error`.
fn error_said(data: &[u8]) -> Option<String> {
    if !is_object(data) {
        return None;
    }
    let event = serde_json::from_slice::<UsageEvent>(data).ok()?;
    if event.kind.as_deref() != Some("error") {
        return None;
    }
    let kind = event.error.as_ref()?.get("type")?.as_str()?;
    Some(kind.chars().take(64).collect())
}

/// The most of an event stream's opening read before it is handed over without a verdict on
/// it (an opening is a `message_start` of a few hundred bytes, and maybe a `ping`).
pub const OPENING_LIMIT: usize = 64 * 1024;

/// An event stream's opening: its events before the first one of content, read before the
/// answer is handed over. An `error` there came before the caller could have been told anything
/// (Anthropic's rate limit said after its 200 head), so the request may still move to another
/// account, as after a 429 (`verdict::decide`). Complete once content begins (any event but
/// `message_start`, `ping` or `error`; at its name, not its end: its bytes are not held back
/// longer than its name line), once an `error` event is dispatched, or once `OPENING_LIMIT`
/// bytes came without either. The same parser as the usage tap (WHATWG's event stream).
pub struct Opening {
    events: Events,
    read: usize,
    complete: bool,
    said: Option<String>,
}

impl Default for Opening {
    fn default() -> Self {
        Opening::new()
    }
}

impl Opening {
    pub fn new() -> Opening {
        Opening {
            events: Events::new(),
            read: 0,
            complete: false,
            said: None,
        }
    }

    /// Feeds the next chunk of the body; true once the opening is complete (the answer can be
    /// judged; read no more of it).
    pub fn feed(&mut self, chunk: &[u8]) -> bool {
        if self.complete {
            return true;
        }
        let (complete, said) = (&mut self.complete, &mut self.said);
        self.events.observe(chunk, &mut |seen| {
            if *complete {
                return;
            }
            match seen {
                Seen::Read(b"error", data) => {
                    *said = error_said(data);
                    *complete = true;
                }
                Seen::Read(..) | Seen::Named(Some(b"message_start" | b"ping" | b"error")) => {}
                Seen::Named(_) | Seen::Unnamed => *complete = true,
            }
        });
        self.read = self.read.saturating_add(chunk.len());
        self.complete |= self.read >= OPENING_LIMIT;
        self.complete
    }

    /// Whether the opening is complete (`feed` said so).
    pub fn complete(&self) -> bool {
        self.complete
    }

    /// The `error.type` of an `error` event the opening held before any content.
    pub fn said(&self) -> Option<&str> {
        self.said.as_deref()
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
    fn an_error_event_in_the_stream_is_read_the_first_one_and_only_as_sent() {
        let limited = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":\"m\"}}\n\n";
        let overloaded = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}\n\n";
        for size in [1, 3, 4096] {
            let mut tap = UsageTap::new(true);
            let text = format!("{STREAM}{limited}{overloaded}");
            for chunk in text.as_bytes().chunks(size) {
                tap.observe(chunk);
            }
            assert!(tap.finish().is_some(), "usage still counted");
            assert_eq!(tap.take_stream_error().as_deref(), Some("rate_limit_error"));
        }
        // Not an error event: unnamed, named otherwise, of another `type`, not an object, cut
        // before its blank line, or a JSON answer.
        for text in [
            "data: {\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\"}}\n\n",
            "event: ping\ndata: {\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\"}}\n\n",
            "event: error\ndata: {\"type\":\"ping\",\"error\":{\"type\":\"rate_limit_error\"}}\n\n",
            "event: error\ndata: [\"rate_limit_error\"]\n\n",
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\"}}\n",
        ] {
            let mut tap = UsageTap::new(true);
            tap.observe(text.as_bytes());
            tap.finish();
            assert_eq!(tap.take_stream_error(), None, "{text:?}");
        }
        let mut tap = UsageTap::new(false);
        tap.observe(br#"{"type":"error","error":{"type":"rate_limit_error"}}"#);
        tap.finish();
        assert_eq!(
            tap.take_stream_error(),
            None,
            "a JSON body's error is its status's"
        );
    }

    /// What an opening made of `stream` fed in chunks of `size`: whether it completed, and after
    /// how many bytes, and what it said.
    fn opening(stream: &[u8], size: usize) -> (bool, usize, Option<String>) {
        let mut o = Opening::new();
        let mut fed = 0;
        for chunk in stream.chunks(size.max(1)) {
            fed += chunk.len();
            if o.feed(chunk) {
                return (true, fed, o.said().map(str::to_string));
            }
        }
        (o.complete(), fed, o.said().map(str::to_string))
    }

    #[test]
    fn an_opening_ends_at_its_first_content_event_or_its_error_however_it_is_cut() {
        let start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":3}}}\n\n";
        let ping = "event: ping\ndata: {\"type\": \"ping\"}\n\n";
        let limited = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":\"m\"}}\n\n";
        let overloaded = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}\n\n";
        let block =
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0}\n\n";
        let delta = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\"}\n\n";
        // (stream, said, where it completes: the end of this prefix)
        let name_of_block = format!("{start}{ping}event: content_block_start\n");
        let cases: Vec<(String, Option<&str>, Option<String>)> = vec![
            (format!("{start}{ping}{limited}"), Some("rate_limit_error"), Some(format!("{start}{ping}{limited}"))),
            (format!("{start}{limited}{block}"), Some("rate_limit_error"), Some(format!("{start}{limited}"))),
            (format!("{start}{overloaded}"), Some("overloaded_error"), Some(format!("{start}{overloaded}"))),
            // Content first: complete at its name line, and an error after it is not the opening's.
            (format!("{start}{ping}{block}{limited}"), None, Some(name_of_block.clone())),
            (format!("{start}{delta}{limited}"), None, Some(format!("{start}event: content_block_delta\n"))),
            // An event of no name is no opening event either.
            (format!("{start}data: x\n\n{limited}"), None, Some(format!("{start}data: x\n\n"))),
            // Only message_start and pings (comments too): not complete, whatever comes later.
            (format!(": hi\n{start}{ping}{ping}"), None, None),
            // An error event cut before its blank line is no event yet.
            (format!("{start}{}", limited.trim_end()), None, None),
            // The name given last names the event.
            (format!("{start}event: error\nevent: content_block_delta\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"rate_limit_error\"}}}}\n\n"), None, Some(format!("{start}event: error\nevent: content_block_delta\n"))),
            (format!("{start}data: {{\"type\":\"error\",\"error\":{{\"type\":\"rate_limit_error\"}}}}\nevent: error\n\n"), Some("rate_limit_error"), Some(format!("{start}data: {{\"type\":\"error\",\"error\":{{\"type\":\"rate_limit_error\"}}}}\nevent: error\n\n"))),
            // An error event that says nothing readable completes the opening, saying nothing.
            (format!("{start}event: error\ndata: [\"rate_limit_error\"]\n\n"), None, Some(format!("{start}event: error\ndata: [\"rate_limit_error\"]\n\n"))),
        ];
        for (stream, said, until) in cases {
            let variants = [
                (stream.clone(), until.clone()),
                (
                    stream.replace('\n', "\r\n"),
                    // Complete at the CR: its LF goes with the rest.
                    until
                        .as_ref()
                        .map(|u| u.replace('\n', "\r\n").trim_end_matches('\n').to_string()),
                ),
                (
                    stream.replace('\n', "\r"),
                    until.as_ref().map(|u| u.replace('\n', "\r")),
                ),
                (
                    format!("\u{feff}{stream}"),
                    until.as_ref().map(|u| format!("\u{feff}{u}")),
                ),
            ];
            for (text, until) in variants {
                let bytes = text.as_bytes();
                for size in [1, 3, bytes.len()] {
                    let (complete, fed, got) = opening(bytes, size);
                    assert_eq!(got.as_deref(), said, "{text:?} in chunks of {size}");
                    match &until {
                        Some(u) => {
                            assert!(complete, "{text:?} in chunks of {size}");
                            // Completed by the chunk holding the prefix's last byte (a CR line
                            // end is known at the CR).
                            assert!(
                                fed >= u.len() && fed < u.len() + size,
                                "{text:?} in chunks of {size}: at {fed}, not {}",
                                u.len()
                            );
                        }
                        None => assert!(!complete, "{text:?} in chunks of {size}"),
                    }
                }
            }
        }
    }

    #[test]
    fn an_opening_of_no_content_is_bounded() {
        let ping = b"event: ping\ndata: {\"type\": \"ping\"}\n\n";
        let mut o = Opening::new();
        let mut fed = 0;
        while !o.feed(ping) {
            fed += ping.len();
            assert!(fed < OPENING_LIMIT);
        }
        assert_eq!(o.said(), None);
        // Nor does one endless line hold it.
        let mut o = Opening::new();
        assert!(!o.feed(b"data: "));
        assert!(o.feed(&vec![b'x'; OPENING_LIMIT]));
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
        tap.observe(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"content\":[],\"usage\":{\"input_tokens\":5}}}\n\n");
        tap.observe(
            b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"\\\"usage\\\"\"}}\n\n",
        );
        tap.observe(b"event: message_delta\ndata: {\"usage\":{\"output_tokens\":2},\"type\":\"message_delta\"}\n\n");
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

    /// The counts of `stream` fed in `chunks`.
    fn tapped<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Option<Counts> {
        let mut tap = UsageTap::new(true);
        for c in chunks {
            tap.observe(c);
        }
        tap.finish()
    }

    /// Every way of cutting `stream` in two and in three, and one byte at a time.
    fn every_cut(stream: &[u8]) -> Vec<Vec<&[u8]>> {
        let mut cuts = vec![stream.chunks(1).collect()];
        for i in 0..=stream.len() {
            cuts.push(vec![&stream[..i], &stream[i..]]);
            for j in (i..=stream.len()).step_by(7) {
                cuts.push(vec![&stream[..i], &stream[i..j], &stream[j..]]);
            }
        }
        cuts
    }

    const FULL: Counts = Counts {
        requests: 1,
        input: 120,
        output: 57,
        cache_read: 400,
        cache_write: 30,
    };

    #[test]
    fn every_line_end_the_spec_allows_a_bom_and_any_cut_read_the_same() {
        let crlf = STREAM.replace('\n', "\r\n");
        let cr = STREAM.replace('\n', "\r");
        // CR then LF across events, CRLF, and a CR whose LF is the next line's blank.
        let mixed = STREAM
            .replacen("\n\n", "\r\r", 1)
            .replacen('\n', "\r\n", 2)
            .replace("\n\n", "\r\n\n");
        let bom = format!("\u{feff}{}", STREAM.replace("data: ", "data:"));
        let chatty = STREAM.replace(
            "event: ",
            ": a comment\nid: 7\nretry: 1000\nunknown: x\nevent: ",
        );
        // Text of multi-byte characters around the cuts; a data line for each part of the JSON.
        let split = STREAM
            .replace(
                "the word usage appears here",
                "h\u{e9}llo \u{20ac}\u{1d11e}",
            )
            .replace("\"message\":", "\ndata: \"message\":");
        for stream in [STREAM.to_string(), crlf, cr, mixed, bom, chatty, split] {
            for cut in every_cut(stream.as_bytes()) {
                assert_eq!(
                    tapped(cut.iter().copied()),
                    Some(FULL),
                    "{stream:?} cut {:?}",
                    cut.iter().map(|c| c.len()).collect::<Vec<_>>()
                );
            }
        }
    }

    #[test]
    fn only_what_a_client_reads_as_the_event_counts() {
        let start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n";
        let counts = |input, output| {
            Some(Counts {
                requests: 1,
                input,
                output,
                ..Counts::default()
            })
        };
        for (delta, expected) in [
            // Two data lines make one event, the two objects joined by LF: not JSON.
            ("event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":5}}\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}\n\n", counts(10, 1)),
            // The stream ended before the blank line: no event.
            ("event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}\n", counts(10, 1)),
            // No name (the SDKs skip it), a ping's, an error's, another type's.
            ("data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}\n\n", counts(10, 1)),
            ("event: ping\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}\n\n", counts(10, 1)),
            ("event: error\ndata: {\"type\":\"error\",\"usage\":{\"output_tokens\":7}}\n\n", counts(10, 1)),
            ("event: message_delta\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":99}}}\n\n", counts(10, 1)),
            ("event: message_deltas\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}\n\n", counts(10, 1)),
            // The name may come after the data, and the last one given is the name.
            ("data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}\nevent: ping\nevent: message_delta\n\n", counts(10, 7)),
            // A field without a colon: `data` adds an empty line, `event` names it "".
            ("event: message_delta\ndata: {\"type\":\"message_delta\",\ndata\ndata: \"usage\":{\"output_tokens\":7}}\n\n", counts(10, 7)),
            ("event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}\nevent\n\n", counts(10, 1)),
            // A key written with an escape is the same key.
            ("event: message_delta\ndata: {\"type\":\"message_delta\",\"\\u0075sage\":{\"output_tokens\":7}}\n\n", counts(10, 7)),
            // Counts written as floats that are whole numbers are those numbers; others are not.
            ("event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":5.7e1,\"input_tokens\":12.0}}\n\n", counts(12, 57)),
            ("event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":5.5,\"input_tokens\":-12,\"cache_read_input_tokens\":\"9\",\"cache_creation_input_tokens\":1e308}}\n\n", counts(10, 1)),
        ] {
            let stream = format!("{start}{delta}");
            assert_eq!(tapped([stream.as_bytes()]), expected, "{delta:?}");
        }
        // A message given as an array is no message: its "usage" by position is not read.
        let array = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":[{\"input_tokens\":999}]}\n\n";
        assert_eq!(tapped([array.as_bytes()]), None);
        // The last message_start counts, and a message_delta before it is still read.
        let twice = format!("event: message_delta\ndata: {{\"type\":\"message_delta\",\"usage\":{{\"output_tokens\":3}}}}\n\n{start}{}", start.replace("10", "20"));
        assert_eq!(tapped([twice.as_bytes()]), counts(20, 3));
    }

    fn buffers(tap: &UsageTap) -> usize {
        match &tap.kind {
            Kind::Events(e) => e.data.capacity() + e.field.capacity() + e.name.capacity(),
            Kind::Json { body, .. } => body.capacity(),
        }
    }

    #[test]
    fn an_event_too_big_or_a_line_without_end_holds_bounded_memory() {
        let mib = vec![b'x'; 1 << 20];
        // A message_start of 20 MB in one line: not counted, nothing kept, the next event read.
        let mut tap = UsageTap::new(true);
        tap.observe(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":5}},\"pad\":\"");
        for _ in 0..20 {
            tap.observe(&mib);
            assert!(buffers(&tap) <= MAX_EVENT + 64, "{}", buffers(&tap));
        }
        tap.observe(b"\"}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}\n\n");
        assert!(
            buffers(&tap) <= KEPT_CAPACITY + 64,
            "let go after the event"
        );
        assert_eq!(tap.finish().map(|c| (c.input, c.output)), Some((0, 7)));
        // Endless lines of every kind: a data line, a field name, an event name, a comment.
        for opening in [&b"data: "[..], b"", b"event: ", b":"] {
            let mut tap = UsageTap::new(true);
            tap.observe(opening);
            for _ in 0..64 {
                tap.observe(&mib);
            }
            assert!(buffers(&tap) <= MAX_EVENT + 64, "{}", buffers(&tap));
            assert_eq!(tap.finish(), None);
        }
        // Kept in small pieces, an event's data never takes more room than the bound.
        let mut tap = UsageTap::new(true);
        tap.observe(b"event: message_start\ndata: ");
        for _ in 0..1100 {
            tap.observe(&mib[..1000]);
            assert!(
                buffers(&tap) <= MAX_EVENT + 2 * MAX_FIELD,
                "{}",
                buffers(&tap)
            );
        }
        // Content events, named first as the API sends them, are not even copied.
        let mut tap = UsageTap::new(true);
        tap.observe(b"event: content_block_delta\ndata: ");
        tap.observe(&mib);
        assert_eq!(buffers(&tap), 2 * MAX_FIELD);
    }

    /// Lines an event stream is made of, for streams made at random.
    const LINES: &[&str] = &[
        "",
        "",
        "event: message_start",
        "event: message_delta",
        "event:message_delta",
        "event: ping",
        "data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}",
        "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}}",
        "data:{\"type\":\"message_delta\",",
        "data: \"usage\":{\"output_tokens\":4}}",
        "data: h\u{e9}llo \u{1d11e}",
        "data",
        ": comment",
        "id: 1",
        "\u{feff}data: x",
    ];

    proptest::proptest! {
        #[test]
        fn taps_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512), sse in proptest::prelude::any::<bool>()) {
            let mut tap = UsageTap::new(sse);
            tap.observe(&bytes);
            let _ = tap.finish();
            let _ = top_level_string(&bytes, "model", 512);
        }

        #[test]
        fn an_event_stream_reads_the_same_however_it_is_cut(
            lines in proptest::collection::vec((0usize..LINES.len(), 0usize..3), 0..24),
            cuts in proptest::collection::vec(0usize..2048, 0..6),
            bom in proptest::prelude::any::<bool>(),
        ) {
            let mut stream: Vec<u8> = if bom { BOM.to_vec() } else { Vec::new() };
            for (line, end) in lines {
                stream.extend_from_slice(LINES[line].as_bytes());
                stream.extend_from_slice(["\n", "\r", "\r\n"][end].as_bytes());
            }
            let whole = tapped([stream.as_slice()]);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(stream.len())).collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut at = 0;
            for c in cuts {
                pieces.push(&stream[at..c]);
                at = c;
            }
            pieces.push(&stream[at..]);
            proptest::prop_assert_eq!(tapped(pieces), whole);
        }
    }

    #[test]
    fn a_json_answer_names_itself_by_its_top_level_id() {
        let read = |body: &str| {
            let mut tap = UsageTap::new(false);
            tap.observe(body.as_bytes());
            let counts = tap.finish();
            (counts.map(|c| c.output), tap.take_id())
        };
        assert_eq!(
            read(r#"{"id":"file_011abc4def","type":"file"}"#),
            (None, Some("file_011abc4def".to_string()))
        );
        assert_eq!(
            read(r#"{"id":"msg_01x","usage":{"input_tokens":3,"output_tokens":5}}"#),
            (Some(5), Some("msg_01x".to_string()))
        );
        // An id of another type costs neither the id's absence nor the usage.
        assert_eq!(
            read(r#"{"id":7,"usage":{"input_tokens":3,"output_tokens":5}}"#),
            (Some(5), None)
        );
        // Only the top level: a list's entries name theirs inside `data`.
        assert_eq!(read(r#"{"data":[{"id":"file_011abc4def"}]}"#), (None, None));
        let mut events = UsageTap::new(true);
        events.observe(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\"}}\n\n");
        events.finish();
        assert_eq!(events.take_id(), None);
    }
}

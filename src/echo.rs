//! The credential the pool presented upstream, taken back out of what the server answers. A
//! server may echo what it was sent (a debugging proxy, a misconfigured API URL, a hostile
//! one): the answer's headers are cleaned for every caller, and the gateway also cleans the
//! bodies it relays, since its clients hold only the gateway's key, never the pool's tokens.

use std::cell::RefCell;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use memchr::memmem;
use reqwest::header::{HeaderMap, AUTHORIZATION};

use crate::secret::{self, Secret};

/// Shorter values are not hunted in bodies (no credential is this short, and ordinary text
/// would match).
const MIN_SECRET: usize = 16;
const REDACTED: &[u8] = b"[redacted]";

/// The credential a request presented (`authorization: Bearer ...`, `x-api-key`): the values
/// the engine marked sensitive in the headers it sent.
pub fn presented(headers: &HeaderMap) -> Vec<Secret> {
    headers
        .iter()
        .filter(|(_, v)| v.is_sensitive())
        .filter_map(|(name, v)| {
            let v = v.to_str().ok()?;
            let token = if name == AUTHORIZATION {
                v.strip_prefix("Bearer ")?
            } else {
                v
            };
            Some(Secret::new(token))
        })
        .collect()
}

/// The forms a server that echoes what it was sent may give a credential besides its own: in
/// base64 (the standard and the URL alphabet, at each of the three places it can fall among a
/// longer value's groups of three bytes: an echo of the whole request, a header re-encoded) and
/// in hex. Each is the part of the encoding that the credential alone decides, so it is found
/// inside any longer encoded text that holds the credential.
fn reshaped(secret: &Secret) -> Vec<Secret> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    use base64::Engine as _;
    let bytes = secret.expose().as_bytes();
    let mut forms = Vec::with_capacity(8);
    for skip in 0..3.min(bytes.len()) {
        let rest = &bytes[skip..];
        let whole_groups = &rest[..rest.len() - rest.len() % 3];
        forms.push(Secret::new(STANDARD_NO_PAD.encode(whole_groups)));
        forms.push(Secret::new(URL_SAFE_NO_PAD.encode(whole_groups)));
    }
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let hex: String = bytes
        .iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]])
        .map(char::from)
        .collect();
    forms.push(Secret::new(hex.to_ascii_uppercase()));
    forms.push(Secret::new(hex));
    // Its random part alone, the `sk-ant-<kind>-` prefix left out, as a server may quote it.
    if let Some((_, core)) = secret
        .expose()
        .strip_prefix("sk-ant-")
        .and_then(|rest| rest.split_once('-'))
    {
        forms.push(Secret::new(core));
    }
    forms
}

thread_local! {
    /// The last credentials presented on this thread and their forms: one credential serves
    /// request after request, and each answer's head is scrubbed with them.
    static LAST_FORMS: RefCell<(Vec<Secret>, Rc<[Secret]>)> = RefCell::new((Vec::new(), Rc::from([])));
}

/// The presented credentials and their reshaped forms (`reshaped`) long enough not to match
/// ordinary text, each once.
fn with_forms(presented: &[Secret]) -> Rc<[Secret]> {
    LAST_FORMS.with(|last| {
        let mut last = last.borrow_mut();
        if last.0.as_slice() != presented {
            let mut all: Vec<Secret> = presented.to_vec();
            for form in presented.iter().flat_map(reshaped) {
                if form.expose().len() >= MIN_SECRET
                    && !all.iter().any(|a| a.expose() == form.expose())
                {
                    all.push(form);
                }
            }
            *last = (presented.to_vec(), Rc::from(all));
        }
        Rc::clone(&last.1)
    })
}

/// `secret::scrub` of a server's text with the presented secrets and their reshaped forms
/// (base64, hex): a token endpoint's error that quoted the refresh token in base64 came through
/// to messages, `lastError` and the tool's answer.
pub fn scrub_with_forms(text: &str, presented: &[&Secret]) -> String {
    let all = with_reshaped(presented);
    let refs: Vec<&Secret> = all.iter().collect();
    secret::scrub(text, &refs)
}

/// The presented secrets and their reshaped forms (`reshaped`: base64, hex, the random part
/// alone) long enough not to match ordinary text, each once.
pub fn with_reshaped(presented: &[&Secret]) -> Vec<Secret> {
    let mut all: Vec<Secret> = presented.iter().map(|s| (*s).clone()).collect();
    for form in presented.iter().flat_map(|s| reshaped(s)) {
        if form.expose().len() >= MIN_SECRET && !all.iter().any(|a| a.expose() == form.expose()) {
            all.push(form);
        }
    }
    all
}

/// Answer headers with any presented credential in a value scrubbed (`secret::scrub`).
pub fn scrub_headers(headers: &mut Vec<(String, String)>, presented: &[Secret]) {
    let forms = with_forms(presented);
    // A name cannot be rewritten (`[redacted]` is not a token): a header named after the
    // credential is dropped. Names come lower-cased, so the credential is looked for in any case.
    headers.retain(|(name, _)| {
        !forms
            .iter()
            .any(|s| contains_ignoring_case(name.as_bytes(), s.expose().as_bytes()))
    });
    for (_, value) in headers.iter_mut() {
        scrub_known(value, &forms);
    }
    // Lines of one name reach the caller joined (`Headers` joins them with ", "): a credential
    // split over two lines came out whole but for the separator. Such a name goes whole.
    let mut lines: std::collections::HashMap<&str, usize> =
        std::collections::HashMap::with_capacity(headers.len());
    for (name, _) in headers.iter() {
        *lines.entry(name.as_str()).or_default() += 1;
    }
    let split: Vec<String> = lines
        .into_iter()
        .filter(|&(_, count)| count > 1)
        .map(|(name, _)| name.to_string())
        .filter(|name| {
            let joined: String = headers
                .iter()
                .filter(|(n, _)| n == name)
                .flat_map(|(_, v)| v.chars())
                .filter(|c| !matches!(c, ' ' | '\t' | ','))
                .collect();
            forms.iter().any(|s| joined.contains(s.expose()))
        })
        .collect();
    for (name, value) in headers.iter_mut() {
        if split.contains(name) {
            *value = String::from_utf8_lossy(REDACTED).into_owned();
        }
    }
}

/// Whether `needle` is in `haystack`, ASCII case aside (a header name is lower-cased on its way).
pub fn contains_ignoring_case(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && haystack.len() >= needle.len()
        && haystack
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

/// A text of the answer's head (a header value, the status line's reason phrase, which the
/// caller is handed as the server wrote it) with any presented credential scrubbed, in any of
/// its reshaped forms too.
pub fn scrub_text(text: &mut String, presented: &[Secret]) {
    scrub_known(text, &with_forms(presented));
}

fn scrub_known(text: &mut String, forms: &[Secret]) {
    if forms.iter().any(|s| text.contains(s.expose())) {
        let refs: Vec<&Secret> = forms.iter().collect();
        *text = secret::scrub(text, &refs);
    }
    // A value folded over lines (obs-fold, read with a space where the fold was) or spaced out
    // holds the credential with blanks in it: such a value goes whole.
    if text.contains([' ', '\t']) {
        let joined: String = text.chars().filter(|c| !matches!(c, ' ' | '\t')).collect();
        if forms.iter().any(|s| joined.contains(s.expose())) {
            *text = String::from_utf8_lossy(REDACTED).into_owned();
        }
    }
}

/// A body passed on chunk by chunk with every presented credential replaced by `[redacted]`,
/// also one split across chunks. A chunk passes untouched (no copy, no delay) unless it holds a
/// credential or ends with the start of one; only then are those last bytes held until the
/// next chunk tells (an event stream's chunks end with a blank line, never held).
pub struct Redactor {
    secrets: Vec<Secret>,
    held: BytesMut,
    /// Whether an encoder's line breaks are looked through (`Redactor::new`) or not.
    lines: bool,
    /// A bulk body's (`Redactor::bulk`): the credentials as presented, searched alone once
    /// `wide_left` bytes have gone by.
    narrow: Option<Vec<Secret>>,
    wide_left: usize,
}

/// How much of a bulk body is searched for every form of a credential: an echo (of the
/// request, by a debugging proxy or a server at the wrong URL) comes at a body's start.
const BULK_WIDE_BYTES: usize = 1024 * 1024;

impl Redactor {
    pub fn new(presented: Vec<Secret>) -> Self {
        let secrets = with_forms(&presented)
            .iter()
            .filter(|s| s.expose().len() >= MIN_SECRET)
            .cloned()
            .collect();
        Redactor {
            secrets,
            held: BytesMut::new(),
            lines: true,
            narrow: None,
            wide_left: 0,
        }
    }

    /// A redactor for a bulk body (megabytes of a download, a batch's results, or an error page
    /// of unknown length): every form for its first megabyte (`BULK_WIDE_BYTES`), then the
    /// credential as it was sent alone. Every form searched in every chunk, line ends and all,
    /// cost a 64 MB body half again its CPU; the credential alone throughout let an error page
    /// without a length echo it in base64, in hex or without its prefix.
    pub fn bulk(presented: Vec<Secret>) -> Self {
        let narrow = presented
            .iter()
            .filter(|s| s.expose().len() >= MIN_SECRET)
            .cloned()
            .collect();
        Redactor {
            narrow: Some(narrow),
            wide_left: BULK_WIDE_BYTES,
            ..Redactor::new(presented)
        }
    }

    /// What of `chunk` (and of what was held) can be passed on now.
    pub fn pass(&mut self, chunk: Bytes) -> Bytes {
        // Narrowed only with nothing held: what was held is searched whole with the next chunk.
        if self.wide_left == 0 && self.held.is_empty() {
            if let Some(narrow) = self.narrow.take() {
                self.secrets = narrow;
                self.lines = false;
            }
        }
        self.wide_left = self.wide_left.saturating_sub(chunk.len());
        if self.secrets.is_empty() {
            return chunk;
        }
        if self.held.is_empty()
            && !self.holds_secret(&chunk)
            && self.secret_start_at_end(&chunk) == 0
            && !(self.lines && wrapped(&chunk))
        {
            return chunk;
        }
        let mut data = std::mem::take(&mut self.held);
        data.extend_from_slice(&chunk);
        let mut out = self.replaced(&data);
        let mut ends = if self.lines {
            joining_line_ends(&out)
        } else {
            Vec::new()
        };
        if !ends.is_empty() {
            if let Some(replaced) = self.replaced_across_lines(&out, &ends) {
                out = replaced;
                ends = joining_line_ends(&out);
            }
        }
        // Measured on what goes out: a replacement across lines can take in a tail measured
        // before it (a credential whose end repeats its start), and `out` is shorter then.
        let mut keep = self.secret_start_at_end(&out);
        if !ends.is_empty() {
            keep = keep.max(self.wrapped_start_at_end(&out, &ends));
        }
        self.held = out.split_off(out.len() - keep.min(out.len()));
        out.freeze()
    }

    /// `replaced`, looking through the line breaks inside runs of a credential's characters: an
    /// encoder's lines (MIME base64 breaks every 76 characters, PEM every 64) carried an echo
    /// of the whole request past the search for one unbroken run.
    fn replaced_across_lines(&self, data: &[u8], ends: &[(usize, usize)]) -> Option<BytesMut> {
        let (view, at) = unwrapped(data, ends);
        let mut spans: Vec<(usize, usize)> = Vec::new();
        for s in &self.secrets {
            let needle = s.expose().as_bytes();
            let mut from = 0;
            while let Some(found) = memmem::find(&view[from..], needle) {
                let start = from + found;
                let end = start + needle.len();
                spans.push((at[start], at[end - 1] + 1));
                from = end;
            }
        }
        if spans.is_empty() {
            return None;
        }
        spans.sort_unstable();
        let mut out = BytesMut::with_capacity(data.len());
        let mut done = 0;
        for (start, end) in spans {
            if start >= done {
                out.extend_from_slice(&data[done..start]);
                out.extend_from_slice(REDACTED);
            }
            done = done.max(end);
        }
        out.extend_from_slice(&data[done..]);
        Some(out)
    }

    /// `secret_start_at_end` through the line breaks of runs (`replaced_across_lines`): how many
    /// of `data`'s last bytes, breaks included, are the start of a credential.
    fn wrapped_start_at_end(&self, data: &[u8], ends: &[(usize, usize)]) -> usize {
        let (view, at) = unwrapped(data, ends);
        match self.secret_start_at_end(&view) {
            0 => 0,
            k => data.len() - at[view.len() - k],
        }
    }

    /// What was held back when the body ends: the start of a credential that never finished.
    pub fn finish(&mut self) -> Bytes {
        std::mem::take(&mut self.held).freeze()
    }

    fn holds_secret(&self, data: &[u8]) -> bool {
        self.secrets
            .iter()
            .any(|s| memmem::find(data, s.expose().as_bytes()).is_some())
    }

    /// How many of the last bytes of `data` are the start of some credential (not all of it).
    fn secret_start_at_end(&self, data: &[u8]) -> usize {
        let Some(&last) = data.last() else {
            return 0;
        };
        let mut longest = 0;
        for s in &self.secrets {
            let s = s.expose().as_bytes();
            for k in (longest + 1..s.len().min(data.len() + 1)).rev() {
                if s[k - 1] == last && data.ends_with(&s[..k]) {
                    longest = k;
                    break;
                }
            }
        }
        longest
    }

    fn replaced(&self, data: &[u8]) -> BytesMut {
        let mut out = BytesMut::from(data);
        for s in &self.secrets {
            let needle = s.expose().as_bytes();
            if memmem::find(&out, needle).is_none() {
                continue;
            }
            let mut next = BytesMut::with_capacity(out.len());
            let mut rest: &[u8] = &out;
            while let Some(at) = memmem::find(rest, needle) {
                next.extend_from_slice(&rest[..at]);
                next.extend_from_slice(REDACTED);
                rest = &rest[at + needle.len()..];
            }
            next.extend_from_slice(rest);
            out = next;
        }
        out
    }
}

/// The characters of a credential and of its forms: a token's, base64's (both alphabets) and
/// hex's.
fn credential_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_' | b'.')
}

/// Whether a line end in `data` sits inside a run of a credential's characters (or ends `data`
/// after one: the run may go on in the next chunk). An event stream's lines end in `}` and a
/// blank line, and pass without a second look.
fn wrapped(data: &[u8]) -> bool {
    !joining_line_ends(data).is_empty()
}

/// How long the line end at `i` is: a line feed or a carriage return, or one as JSON writes it
/// in a string (`\n`, `\r`: an echo of the request in a JSON field), a backslash that ends
/// `data` perhaps the start of one; 0 where there is none.
fn line_end_at(data: &[u8], i: usize) -> usize {
    match (data[i], data.get(i + 1)) {
        (b'\n' | b'\r', _) => 1,
        (b'\\', Some(b'n' | b'r')) => 2,
        (b'\\', None) => 1,
        _ => 0,
    }
}

/// The line ends of `data` that join two parts of one run, each `(start, end)`: one line end
/// (a blank line ends whatever came before it: an event of an event stream, a paragraph) after
/// at least `MIN_LINE` of a credential's characters (or after all of `data` before it: a line
/// begun in the chunk before), and before another one or the end of `data`.
fn joining_line_ends(data: &[u8]) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut next = 0;
    for i in memchr::memchr3_iter(b'\n', b'\r', b'\\', data) {
        if i < next || line_end_at(data, i) == 0 {
            continue;
        }
        // One line end joins: a line feed, a carriage return, or the two in that order (raw or
        // as JSON writes them). Any longer run is a blank line or no encoder's: a run of
        // carriage returns after a credential's first byte was held whole and searched again
        // with each chunk (its cost the square of its length).
        let mut end = i;
        let mut units = 0;
        let mut lines = 0;
        let mut after_return = false;
        while end < data.len() {
            let n = line_end_at(data, end);
            if n == 0 {
                break;
            }
            let feed = data[end] == b'\n' || (n == 2 && data[end + 1] == b'n');
            if !(units == 0 || (units == 1 && after_return && feed)) {
                lines = 2;
            }
            lines += usize::from(feed);
            after_return = !feed && (data[end] == b'\r' || (n == 2 && data[end + 1] == b'r'));
            units += 1;
            end += n;
        }
        next = end;
        let run = data[..i]
            .iter()
            .rev()
            .take(MIN_LINE)
            .take_while(|b| credential_byte(**b))
            .count();
        // A field name after it (an event stream's `data:`, a header's `name:`) starts no
        // encoder's line: colons are in none.
        let next_run = data[end..]
            .iter()
            .take(MIN_LINE)
            .position(|b| !credential_byte(*b));
        let field_name = next_run.is_some_and(|n| data[end + n] == b':');
        if lines <= 1
            && i > 0
            && (run >= MIN_LINE || run == i)
            && data.get(end).is_none_or(|b| credential_byte(*b))
            && !field_name
        {
            found.push((i, end));
        }
    }
    found
}

/// The shortest line of an encoder that wraps (`joining_line_ends`): PEM's and MIME's are 64
/// and 76.
const MIN_LINE: usize = 16;

/// `data` without the line ends that join runs (`joining_line_ends`), and where each byte left
/// came from.
fn unwrapped(data: &[u8], ends: &[(usize, usize)]) -> (Vec<u8>, Vec<usize>) {
    let mut view = Vec::with_capacity(data.len());
    let mut at = Vec::with_capacity(data.len());
    let mut from = 0;
    for &(start, end) in ends.iter().chain([&(data.len(), data.len())]) {
        view.extend_from_slice(&data[from..start]);
        at.extend(from..start);
        from = end;
    }
    (view, at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    const TOKEN: &str = "fake-access-ECHO-0123456789abcdefghij";

    fn relay(chunks: &[&[u8]]) -> (Vec<u8>, Vec<Bytes>) {
        let mut r = Redactor::new(vec![Secret::new(TOKEN)]);
        let mut out = Vec::new();
        let mut passed = Vec::new();
        for c in chunks {
            let b = r.pass(Bytes::copy_from_slice(c));
            out.extend_from_slice(&b);
            passed.push(b);
        }
        out.extend_from_slice(&r.finish());
        (out, passed)
    }

    #[test]
    fn a_credential_is_replaced_whole_or_split_across_chunks() {
        let body = format!("{{\"echo\":\"Bearer {TOKEN}\",\"again\":\"{TOKEN}\"}}");
        let expected = "{\"echo\":\"Bearer [redacted]\",\"again\":\"[redacted]\"}";
        for cut in 0..=body.len() {
            for cut2 in [cut, (cut + 7).min(body.len()), body.len()] {
                let (a, rest) = body.as_bytes().split_at(cut);
                let (b, c) = rest.split_at(cut2 - cut);
                let (out, _) = relay(&[a, b, c]);
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    expected,
                    "cut at {cut}/{cut2}"
                );
            }
        }
    }

    #[test]
    fn ordinary_chunks_pass_untouched_and_at_once() {
        let events: &[&[u8]] = &[
            b"event: ping\ndata: {}\n\n",
            b"data: fake-access-\n\n",
            b"x",
        ];
        let (out, passed) = relay(events);
        assert_eq!(out, events.concat());
        assert_eq!(&passed[0][..], events[0], "nothing held");
        assert_eq!(
            &passed[1][..],
            events[1],
            "a credential's start mid-chunk is not held"
        );
        // A chunk that ends with a credential's start waits for the next one to tell.
        let (out, passed) = relay(&[b"data: fake-acc", b"ent\n\n"]);
        assert_eq!(out, b"data: fake-accent\n\n");
        assert_eq!(&passed[0][..], b"data: ");
        // Ended there, the held bytes come out at the end.
        let (out, _) = relay(&[b"data: fake-acc"]);
        assert_eq!(out, b"data: fake-acc");
    }

    #[test]
    fn a_credential_echoed_without_its_prefix_is_replaced_in_a_body_and_a_head() {
        // Found by a review: a server quoting the token's random part alone passed it on.
        // Made at run time: no token-shaped literal in the source.
        let core = "Zx9Qw8Er7Ty6Ui5Op4As3Df2Gh1Jk0Lz";
        let token = &["sk", "ant", "oat01", core].join("-");
        let body = format!("{{\"echo\":\"{core}\"}}");
        let (a, b) = body.as_bytes().split_at(body.len() / 2);
        let mut r = Redactor::new(vec![Secret::new(token)]);
        let mut out = r.pass(Bytes::copy_from_slice(a)).to_vec();
        out.extend_from_slice(&r.pass(Bytes::copy_from_slice(b)));
        out.extend_from_slice(&r.finish());
        assert_eq!(String::from_utf8(out).unwrap(), "{\"echo\":\"[redacted]\"}");
        let mut header = format!("t={core}");
        scrub_text(&mut header, &[Secret::new(token)]);
        assert_eq!(header, "t=[redacted]");
        let mut named = vec![(format!("x-{}", core.to_ascii_lowercase()), "1".to_string())];
        scrub_headers(&mut named, &[Secret::new(token)]);
        assert!(named.is_empty());
    }

    #[test]
    fn a_credential_echoed_in_base64_or_hex_is_replaced_wherever_it_falls() {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE};
        use base64::Engine as _;
        for before in ["", "x", "xy", "Authorization: Bearer "] {
            let echoed = format!("{before}{TOKEN}\r\n");
            let hex: String = echoed.bytes().map(|b| format!("{b:02x}")).collect();
            for encoded in [
                STANDARD.encode(&echoed),
                URL_SAFE.encode(&echoed),
                hex.clone(),
                hex.to_ascii_uppercase(),
            ] {
                let body = format!("{{\"request\":\"{encoded}\"}}");
                for cut in [0, body.len() / 2, body.len() - 3] {
                    let (a, b) = body.as_bytes().split_at(cut);
                    let (out, _) = relay(&[a, b]);
                    let out = String::from_utf8(out).unwrap();
                    assert!(
                        out.contains("[redacted]"),
                        "{before:?} {encoded} cut {cut}: {out}"
                    );
                    assert!(!out.contains(&encoded), "{out}");
                }
                let mut header = encoded.clone();
                scrub_text(&mut header, &[Secret::new(TOKEN)]);
                assert!(header.contains("[redacted]"), "{header}");
            }
        }
        // Ordinary encoded text passes as it was.
        let (out, _) = relay(&[STANDARD.encode("an ordinary request body").as_bytes()]);
        assert_eq!(out, STANDARD.encode("an ordinary request body").as_bytes());
    }

    #[test]
    fn a_bulk_body_is_searched_for_every_form_in_its_first_megabyte_then_for_the_credential() {
        use base64::engine::general_purpose::STANDARD;
        use base64::Engine as _;
        // Found by a review: an error page of unknown length (a bulk body) echoing the token in
        // base64, in hex or without its prefix reached the caller under Node.
        let core = "Zx9Qw8Er7Ty6Ui5Op4As3Df2Gh1Jk0Lz";
        let token = ["sk", "ant", "oat01", core].join("-");
        let hex: String = token.bytes().map(|b| format!("{b:02x}")).collect();
        let wrapped = {
            let b64 = STANDARD.encode(format!("Authorization: Bearer {token}\r\n"));
            let (a, b) = b64.split_at(40);
            format!("{a}\n{b}")
        };
        let run = |chunks: &[Vec<u8>]| {
            let mut r = Redactor::bulk(vec![Secret::new(&token)]);
            let mut out = Vec::new();
            for c in chunks {
                out.extend_from_slice(&r.pass(Bytes::copy_from_slice(c)));
            }
            out.extend_from_slice(&r.finish());
            String::from_utf8(out).unwrap()
        };
        for echo in [
            core.to_string(),
            hex.clone(),
            STANDARD.encode(&token),
            wrapped,
        ] {
            let page = format!("<html>404: {echo}</html>");
            let (a, b) = page.as_bytes().split_at(page.len() / 2);
            let out = run(&[a.to_vec(), b.to_vec()]);
            assert!(!out.contains(&echo) && out.contains("[redacted]"), "{out}");
        }
        // Past the first megabyte the credential as presented is still found, split or not.
        let filler = vec![b'.'; BULK_WIDE_BYTES + 10];
        let late = format!("x {token} y");
        let (a, b) = late.as_bytes().split_at(5);
        let out = run(&[filler.clone(), a.to_vec(), b.to_vec()]);
        assert!(!out.contains(&token) && out.ends_with("x [redacted] y"));
        // ...and the forms no longer are: ordinary bytes of a large body are not held or copied.
        let out = run(&[filler, hex.as_bytes().to_vec()]);
        assert!(out.ends_with(&hex));
    }

    #[test]
    fn a_credential_echoed_in_base64_broken_into_lines_is_replaced() {
        use base64::engine::general_purpose::STANDARD;
        use base64::Engine as _;
        let echoed = format!("POST /v1/messages HTTP/1.1\r\nauthorization: Bearer {TOKEN}\r\n\r\n");
        let encoded = STANDARD.encode(&echoed);
        for width in [76, 64, 20] {
            for eol in ["\n", "\r\n", "\\n", "\\r\\n"] {
                let lines: Vec<&str> = encoded
                    .as_bytes()
                    .chunks(width)
                    .map(|c| std::str::from_utf8(c).unwrap())
                    .collect();
                let body = format!("{}{eol}", lines.join(eol));
                for cut in [0, body.len() / 3, body.len() / 2, body.len() - 2] {
                    let (a, b) = body.as_bytes().split_at(cut);
                    let (out, _) = relay(&[a, b]);
                    let out = String::from_utf8(out).unwrap();
                    assert!(
                        out.contains("[redacted]"),
                        "{width} {eol:?} cut {cut}: {out}"
                    );
                    let joined: String = out
                        .replace("\\r", "")
                        .replace("\\n", "")
                        .split(['\r', '\n'])
                        .collect();
                    let decoded = STANDARD
                        .decode(joined.replace("[redacted]", ""))
                        .unwrap_or_default();
                    assert!(
                        !String::from_utf8_lossy(&decoded).contains(&TOKEN[..20]),
                        "{width} {eol:?} cut {cut}: {out}"
                    );
                }
            }
        }
        // Lines of ordinary text pass as they were, and at once.
        let text: &[&[u8]] = &[b"first line\nsecond line\n", b"third\n"];
        let (out, passed) = relay(text);
        assert_eq!(out, text.concat());
        assert_eq!(&passed[0][..], text[0]);
    }

    #[test]
    fn a_header_value_folded_or_spaced_through_a_credential_goes_whole() {
        let (head, tail) = TOKEN.split_at(20);
        for value in [format!("{head} {tail}"), format!("x {head}\t {tail} y")] {
            let mut headers = vec![("x-echo".to_string(), value.clone())];
            scrub_headers(&mut headers, &[Secret::new(TOKEN)]);
            assert_eq!(headers[0].1, "[redacted]", "{value:?}");
        }
        let mut plain = vec![("x-note".to_string(), "a b c".to_string())];
        scrub_headers(&mut plain, &[Secret::new(TOKEN)]);
        assert_eq!(plain[0].1, "a b c");

        // Over two lines of one name, which the caller's `Headers` joins with ", ".
        let mut split = vec![
            ("x-echo".to_string(), head.to_string()),
            ("x-other".to_string(), "kept".to_string()),
            ("x-echo".to_string(), tail.to_string()),
            ("x-list".to_string(), "a".to_string()),
            ("x-list".to_string(), "b".to_string()),
        ];
        scrub_headers(&mut split, &[Secret::new(TOKEN)]);
        let values: Vec<&str> = split.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(values, ["[redacted]", "kept", "[redacted]", "a", "b"]);
    }

    #[test]
    fn a_run_of_line_ends_after_a_credential_s_first_byte_is_passed_on_not_held() {
        // Found by a review: the run was held whole and searched again with every chunk.
        for fill in [&b"\r"[..], b"\\r", b"\n\n", b"\r\r\n"] {
            let mut r = Redactor::new(vec![Secret::new(TOKEN)]);
            let mut out = r.pass(Bytes::from_static(b"{\"t\":\"f")).to_vec();
            let piece = fill.repeat(4096 / fill.len());
            for _ in 0..256 {
                out.extend_from_slice(&r.pass(Bytes::copy_from_slice(&piece)));
                assert!(
                    r.held.len() <= 2 * fill.len(),
                    "{fill:?}: {} held",
                    r.held.len()
                );
            }
            out.extend_from_slice(&r.finish());
            assert_eq!(out.len(), 7 + 256 * piece.len());
        }
        // One line end still joins: a credential broken by it is found.
        let (head, tail) = TOKEN.split_at(20);
        for end in ["\r", "\n", "\r\n", "\\r\\n", "\\n"] {
            let (out, _) = relay(&[format!("x {head}{end}{tail} y").as_bytes()]);
            assert_eq!(String::from_utf8(out).unwrap(), "x [redacted] y", "{end:?}");
        }
        let (out, _) = relay(&[format!("x {head}\r\r{tail} y").as_bytes()]);
        assert!(
            String::from_utf8(out).unwrap().contains(tail),
            "two line ends never join"
        );
    }

    #[test]
    fn a_credential_whose_end_repeats_its_start_is_replaced_across_lines_whole() {
        let key = "abcdefghabcdefghabcdefghabcdefgh";
        let mut r = Redactor::new(vec![Secret::new(key)]);
        for body in [
            "abcdefghabcdefgh\nabcdefghabcdefgh",
            "abcdefghabcdefgh\nabcdefghabcdefgh\n",
        ] {
            let mut out = r.pass(Bytes::copy_from_slice(body.as_bytes())).to_vec();
            out.extend_from_slice(&r.finish());
            let out = String::from_utf8(out).unwrap();
            assert!(out.starts_with("[redacted]"), "{body:?}: {out:?}");
            assert!(!out.contains("abcdefgh"), "{body:?}: {out:?}");
        }
        // An event stream's field names are not a wrapped run's next line.
        let events = b"event: content_block_delta\ndata: {}\n\n";
        assert!(!wrapped(events));
    }

    #[test]
    fn the_forms_remembered_are_those_of_the_credential_presented_now() {
        // The forms are kept from one answer to the next: a credential presented after another
        // is looked for in its own forms, never in the last one's.
        let other = ["sk", "ant", "oat01", "another-credential-of-the-pool"].join("-");
        let other = other.as_str();
        let hex = |t: &str| -> String { t.bytes().map(|b| format!("{b:02x}")).collect() };
        for (now, before) in [(TOKEN, other), (other, TOKEN), (TOKEN, other)] {
            let mut text = format!("{} {}", hex(now), hex(before));
            scrub_text(&mut text, &[Secret::new(now)]);
            assert_eq!(text, format!("[redacted] {}", hex(before)), "{now}");
        }
        let mut text = format!("{} {}", hex(TOKEN), hex(other));
        scrub_text(&mut text, &[Secret::new(TOKEN), Secret::new(other)]);
        assert_eq!(text, "[redacted] [redacted]");
    }

    #[test]
    fn presented_credentials_come_from_the_sensitive_headers() {
        let mut h = HeaderMap::new();
        let mut v = HeaderValue::from_str(&format!("Bearer {TOKEN}")).unwrap();
        v.set_sensitive(true);
        h.insert(AUTHORIZATION, v);
        h.insert(
            "x-other",
            HeaderValue::from_static("public-value-0123456789"),
        );
        let p = presented(&h);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].expose(), TOKEN);
        let mut answer = vec![
            ("x-echo".to_string(), format!("Bearer {TOKEN}")),
            ("request-id".to_string(), "req_0123456789abcdef".to_string()),
        ];
        scrub_headers(&mut answer, &p);
        assert_eq!(answer[0].1, "Bearer [redacted]");
        assert_eq!(answer[1].1, "req_0123456789abcdef");
    }

    #[test]
    fn a_header_named_after_the_credential_is_dropped() {
        let p = vec![Secret::new(TOKEN)];
        let hex: String = TOKEN.bytes().map(|b| format!("{b:02x}")).collect();
        let mut answer = vec![
            (format!("x-{}", TOKEN.to_ascii_lowercase()), "1".to_string()),
            (format!("x-seen-{hex}"), "1".to_string()),
            ("request-id".to_string(), "req_0123456789abcdef".to_string()),
            ("x-fake-access-echo".to_string(), "1".to_string()),
        ];
        scrub_headers(&mut answer, &p);
        let names: Vec<&str> = answer.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["request-id", "x-fake-access-echo"]);
    }
}

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
    let mut all: Vec<Secret> = presented.iter().map(|s| (*s).clone()).collect();
    for form in presented.iter().flat_map(|s| reshaped(s)) {
        if form.expose().len() >= MIN_SECRET && !all.iter().any(|a| a.expose() == form.expose()) {
            all.push(form);
        }
    }
    let refs: Vec<&Secret> = all.iter().collect();
    secret::scrub(text, &refs)
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
}

/// A body passed on chunk by chunk with every presented credential replaced by `[redacted]`,
/// also one split across chunks. A chunk passes untouched (no copy, no delay) unless it holds a
/// credential or ends with the start of one; only then are those last bytes held until the
/// next chunk tells (an event stream's chunks end with a blank line, never held).
pub struct Redactor {
    secrets: Vec<Secret>,
    held: BytesMut,
}

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
        }
    }

    /// What of `chunk` (and of what was held) can be passed on now.
    pub fn pass(&mut self, chunk: Bytes) -> Bytes {
        if self.secrets.is_empty() {
            return chunk;
        }
        if self.held.is_empty()
            && !self.holds_secret(&chunk)
            && self.secret_start_at_end(&chunk) == 0
        {
            return chunk;
        }
        let mut data = std::mem::take(&mut self.held);
        data.extend_from_slice(&chunk);
        let mut out = self.replaced(&data);
        let keep = self.secret_start_at_end(&out);
        self.held = out.split_off(out.len() - keep);
        out.freeze()
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
    fn the_forms_remembered_are_those_of_the_credential_presented_now() {
        // The forms are kept from one answer to the next: a credential presented after another
        // is looked for in its own forms, never in the last one's.
        let other = "sk-ant-oat01-another-credential-of-the-pool";
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

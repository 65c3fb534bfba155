//! Text from the pool file or a server (emails, reasons) in what the pool answers for itself:
//! its 429 and its "no usable account". OpenCode shows those messages in its TUI, a gateway
//! client in a terminal, so an email holding ESC could rewrite the screen and a bidi override
//! make `a@x` read as another. The same rule as `lib/printable.mjs` (the CLI, tool text, toasts).
//! A name is the file's to say, and one can hold a credential (a key pasted into the name prompt
//! before names were checked, a hand edit, another program's file): token shapes are scrubbed
//! first (`secret::scrub_tokens`), so the account is still told by the rest of its name.

use std::fmt::Write;

/// `text` with every character that could move the cursor or reorder the line as a visible
/// escape (`\x1b`, `\n`, `\u202e`), and every `sk-ant-` run as `[redacted]`; a backslash stays,
/// so escaping twice changes nothing.
pub fn printable(text: &str) -> String {
    let text = crate::secret::scrub_tokens(text);
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) => {
                let code = c as u32;
                let _ = if code < 0x100 {
                    write!(out, "\\x{code:02x}")
                } else {
                    write!(out, "\\u{code:04x}")
                };
            }
            c => out.push(c),
        }
    }
    out
}

/// `text` made printable and, when longer than about 480 characters, cut in the middle:
/// its start says what it is and its end is where a message of ours puts its advice. The cut
/// says how long the whole was. For what an error message quotes (an email, a server's reason):
/// a 100 KB email came back whole in `ACCOUNT_NOT_FOUND`, a hostile server's 100 KB error text
/// whole in `STORE_UNAVAILABLE`.
pub fn bounded(text: &str) -> String {
    cut(text, 300, 140)
}

/// A whole message that may quote outside text anywhere in it (`INVALID_ARGUMENT`,
/// `STORE_KEY`): `bounded`, with room for the longest of our own sentences.
pub fn bounded_message(text: &str) -> String {
    cut(text, 600, 240)
}

/// The most of a log line or an event's message (in characters): a name of the pool file can be
/// any length (a hand edit, another program), and each line and event naming it repeated it whole
/// (a name of a million characters wrote 4 MB to stderr for one request). Text already printable
/// (or not meant to be escaped: an event's message) is cut only, at `LINE_HEAD` + `LINE_TAIL`.
const LINE_HEAD: usize = 6000;
const LINE_TAIL: usize = 1000;

/// `text` as it is when it fits in a line's limit, else cut in its middle, the cut said.
pub fn capped(text: String) -> String {
    if text.len() <= LINE_HEAD + LINE_TAIL + 40 {
        return text;
    }
    shortened(text, LINE_HEAD, LINE_TAIL)
}

fn cut(text: &str, head: usize, tail: usize) -> String {
    shortened(printable(text), head, tail)
}

fn shortened(shown: String, head: usize, tail: usize) -> String {
    let count = shown.chars().count();
    // Room for the note of the cut itself: text that fits with it is left whole.
    if count <= head + tail + 40 {
        return shown;
    }
    let start: String = shown.chars().take(head).collect();
    let end: String = shown.chars().skip(count - tail).collect();
    format!(
        "{start}…[{} of {count} characters cut]…{end}",
        count - head - tail
    )
}

/// C0, DEL, C1, the line and paragraph separators, and the bidi controls (embeddings,
/// overrides, isolates, and the marks that reorder what follows them).
fn unsafe_char(c: char) -> bool {
    matches!(
        c as u32,
        0x00..=0x1f
            | 0x7f..=0x9f
            | 0x061c
            | 0x200e
            | 0x200f
            | 0x2028
            | 0x2029
            | 0x202a..=0x202e
            | 0x2066..=0x2069
    )
}

#[cfg(test)]
mod tests {
    use super::{bounded, capped, printable, LINE_HEAD, LINE_TAIL};

    #[test]
    fn a_line_naming_a_name_of_a_million_characters_is_cut_to_a_few_thousand() {
        let fits = format!("account={} rate limited", "a".repeat(5000));
        assert_eq!(capped(fits.clone()), fits);
        let name = format!("{}@x", "é".repeat(1_000_000));
        let line = capped(format!("account={name} rate limited"));
        assert!(
            line.chars().count() < LINE_HEAD + LINE_TAIL + 60,
            "{}",
            line.len()
        );
        assert!(line.starts_with("account=éé") && line.ends_with("@x rate limited"));
        assert!(line.contains("characters cut]"));
    }

    #[test]
    fn control_and_bidi_characters_become_visible_escapes() {
        assert_eq!(
            printable("ev\u{1b}]0;x\u{7}\u{202e}il@x\nnext\\path é"),
            "ev\\x1b]0;x\\x07\\u202eil@x\\nnext\\path é"
        );
        assert_eq!(printable(&printable("a\u{1b}b")), "a\\x1bb");
    }

    #[test]
    fn bounded_text_keeps_its_ends_and_says_how_long_it_was() {
        assert_eq!(bounded("a@x\u{1b}"), "a@x\\x1b");
        let long = format!("start{}end", "é".repeat(100_000));
        let shown = bounded(&long);
        assert!(shown.chars().count() < 520, "{}", shown.len());
        assert!(shown.starts_with("startéé") && shown.ends_with("éééend"));
        assert!(
            shown.contains("[99568 of 100008 characters cut]"),
            "{shown}"
        );
        assert_eq!(bounded(&shown), shown);
    }
}

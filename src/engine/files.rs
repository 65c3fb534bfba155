//! Which file a Messages request refers to in its body: a document or image whose `source` is
//! `{"type":"file","file_id":"file_…"}`, or a `container_upload` block. A file is the account's
//! that uploaded it, and the API answers any other account's message about it with a 404, so
//! such a message goes where the file lives (`Exchange::read_body`).
//!
//! Bodies can be many megabytes: the body is searched for the bytes `"file_id"` first (a
//! `memmem`, no parse, no copy), and parsed only when they are there, borrowing from the body
//! (no tree is built; only an escaped string is unescaped, one at a time, by the parser).

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::headers::is_resource_id;

/// A member named `file_id`, quotes and all. Inside a JSON string a quote is escaped (`\"`), so
/// a person's text that says `"file_id"` does not hold these bytes, and a text that is exactly
/// `file_id` only costs the parse, which reads it as the text it is.
const MEMBER: &[u8] = b"\"file_id\"";

/// The block types whose `file_id` names a file the request needs: a `source` of type `file`
/// (documents, images) and a file uploaded into the code execution container.
const FILE_BLOCKS: &[&str] = &["file", "container_upload"];

/// Whether a request to `path` may refer to files in its body: a message, counting its tokens,
/// or a batch of messages being made.
pub fn may_refer(path: &str) -> bool {
    let path = path.trim_end_matches('/');
    matches!(
        path,
        "/v1/messages" | "/v1/messages/count_tokens" | "/v1/messages/batches"
    )
}

/// The file the body refers to that `known` says this process knows the holder of (the first
/// such), else the first file it refers to at all; `None` when it refers to none, or is no JSON
/// (the API refuses it anyway). A `file_id` counts only as a member of an object whose `type`
/// is one of `FILE_BLOCKS`: the same name in a tool's input, a schema or a person's text is not
/// a file the request needs.
pub fn referred(body: &[u8], known: impl Fn(&str) -> bool) -> Option<String> {
    memchr::memmem::find(body, MEMBER)?;
    let mut found = Found {
        known: &known,
        first: None,
        first_known: None,
    };
    let mut parser = serde_json::Deserializer::from_slice(body);
    // Past serde_json's nesting limit (128) or not JSON: no file is taken from a body the API
    // will refuse.
    Walk { found: &mut found }.deserialize(&mut parser).ok()?;
    found.first_known.or(found.first)
}

struct Found<'k> {
    known: &'k dyn Fn(&str) -> bool,
    first: Option<String>,
    first_known: Option<String>,
}

impl Found<'_> {
    fn offer(&mut self, id: &str) {
        if self.first_known.is_some() {
            return;
        }
        if (self.known)(id) {
            self.first_known = Some(id.to_string());
        } else if self.first.is_none() {
            self.first = Some(id.to_string());
        }
    }
}

/// What a value was, as far as its object cares.
enum Node<'a> {
    /// A string naming a block type of `FILE_BLOCKS`.
    FileTag,
    /// A string of a file id's shape (borrowed from the body when it had no escapes).
    FileId(std::borrow::Cow<'a, str>),
    Other,
}

fn node_of<'a>(text: std::borrow::Cow<'a, str>) -> Node<'a> {
    if FILE_BLOCKS.contains(&text.as_ref()) {
        Node::FileTag
    } else if text.starts_with("file_") && is_resource_id(&text) {
        Node::FileId(text)
    } else {
        Node::Other
    }
}

/// Which member of an object a key names.
enum Key {
    Type,
    FileId,
    Other,
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(KeySeed)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Key;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E>(self, v: &str) -> Result<Key, E> {
        Ok(match v {
            "type" => Key::Type,
            "file_id" => Key::FileId,
            _ => Key::Other,
        })
    }
}

/// Walks one value, offering each file an object of `FILE_BLOCKS` names to `found`.
struct Walk<'f, 'k> {
    found: &'f mut Found<'k>,
}

impl<'de> DeserializeSeed<'de> for Walk<'_, '_> {
    type Value = Node<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Node<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_, '_> {
    type Value = Node<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Node<'de>, E> {
        Ok(Node::Other)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Node<'de>, E> {
        Ok(Node::Other)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Node<'de>, E> {
        Ok(Node::Other)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Node<'de>, E> {
        Ok(Node::Other)
    }
    fn visit_unit<E>(self) -> Result<Node<'de>, E> {
        Ok(Node::Other)
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Node<'de>, E> {
        Ok(node_of(v.into()))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node<'de>, E> {
        // Escaped in the body: only a short one can be a tag or an id worth keeping.
        if v.len() > 128 {
            return Ok(Node::Other);
        }
        Ok(node_of(v.to_string().into()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node<'de>, A::Error> {
        while seq
            .next_element_seed(Walk {
                found: &mut *self.found,
            })?
            .is_some()
        {}
        Ok(Node::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node<'de>, A::Error> {
        let (mut tagged, mut id) = (false, None);
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let node = map.next_value_seed(Walk {
                found: &mut *self.found,
            })?;
            match (key, node) {
                (Key::Type, Node::FileTag) => tagged = true,
                (Key::FileId, Node::FileId(text)) => id = Some(text),
                _ => {}
            }
        }
        if let (true, Some(id)) = (tagged, id) {
            self.found.offer(&id);
        }
        Ok(Node::Other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "file_011CNha8iCJcU1wXNR6q4V8w";
    const B: &str = "file_022DOib9jDKdV2xYOS7r5W9x";

    fn document(id: &str) -> String {
        format!(r#"{{"type":"document","source":{{"type":"file","file_id":"{id}"}},"title":"t"}}"#)
    }

    fn message(blocks: &[String]) -> Vec<u8> {
        format!(
            r#"{{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{{"role":"user","content":[{}]}}]}}"#,
            blocks.join(",")
        )
        .into_bytes()
    }

    fn nothing_known(_: &str) -> bool {
        false
    }

    #[test]
    fn a_document_an_image_or_a_container_upload_names_its_file() {
        assert_eq!(
            referred(&message(&[document(A)]), nothing_known).as_deref(),
            Some(A)
        );
        let image = format!(r#"{{"type":"image","source":{{"file_id":"{A}","type":"file"}}}}"#);
        assert_eq!(
            referred(&message(&[image]), nothing_known).as_deref(),
            Some(A),
            "the type may come after the id"
        );
        let upload = format!(r#"{{"type":"container_upload","file_id":"{B}"}}"#);
        assert_eq!(
            referred(&message(&[upload]), nothing_known).as_deref(),
            Some(B)
        );
        // A batch's requests carry messages too.
        let batch = format!(
            r#"{{"requests":[{{"custom_id":"x","params":{}}}]}}"#,
            String::from_utf8(message(&[document(B)])).unwrap()
        );
        assert_eq!(
            referred(batch.as_bytes(), nothing_known).as_deref(),
            Some(B)
        );
    }

    #[test]
    fn the_first_file_whose_holder_is_known_wins_else_the_first() {
        let body = message(&[document(A), document(B)]);
        assert_eq!(referred(&body, nothing_known).as_deref(), Some(A));
        assert_eq!(referred(&body, |id| id == B).as_deref(), Some(B));
        assert_eq!(referred(&body, |_| true).as_deref(), Some(A));
    }

    #[test]
    fn file_id_said_in_text_a_tool_input_or_a_schema_is_no_file() {
        // A person's text quoting a block: its quotes are escaped, so it is text, not a member.
        let quoted = format!(
            r#"{{"type":"text","text":"send {{\"type\":\"file\",\"file_id\":\"{A}\"}} please"}}"#
        );
        assert_eq!(referred(&message(&[quoted]), nothing_known), None);
        // A text that is exactly the name, and an id given as text.
        let named = format!(r#"{{"type":"text","text":"file_id"}},{{"type":"text","text":"{A}"}}"#);
        assert_eq!(referred(&message(&[named]), nothing_known), None);
        // A tool's input naming a file is the tool's business; a schema's property is no value.
        let tool = format!(
            r#"{{"type":"tool_use","id":"toolu_1","name":"read","input":{{"file_id":"{A}"}}}}"#
        );
        assert_eq!(referred(&message(&[tool]), nothing_known), None);
        let schema = br#"{"tools":[{"name":"t","input_schema":{"type":"object","properties":{"file_id":{"type":"string"}}}}],"messages":[]}"#;
        assert_eq!(referred(schema, nothing_known), None);
        // Not a file id's shape.
        let odd = r#"{"type":"file","file_id":"file-abc"}"#.to_string();
        assert_eq!(referred(&message(&[odd]), nothing_known), None);
    }

    #[test]
    fn escapes_in_values_and_other_keys_are_read_as_json_reads_them() {
        let escaped = format!(
            r#"{{"type":"document","source":{{"t\u0079pe":"fil\u0065","file_id":"{A}","title":"a \"quoted\" name"}}}}"#
        );
        assert_eq!(
            referred(&message(&[escaped]), nothing_known).as_deref(),
            Some(A)
        );
        // The member's own name spelled with an escape is not searched for (no client writes
        // it so): the request goes where it would have gone.
        let hidden = format!(r#"{{"type":"container_upload","file\u005fid":"{A}"}}"#);
        assert_eq!(referred(&message(&[hidden]), nothing_known), None);
    }

    #[test]
    fn a_body_that_is_no_json_or_nests_past_the_limit_names_no_file() {
        let cut = message(&[document(A)]);
        assert_eq!(referred(&cut[..cut.len() - 3], nothing_known), None);
        assert_eq!(referred(b"\"file_id\" is not json", nothing_known), None);
        assert_eq!(referred(&[0xff, 0xfe, b'"'], nothing_known), None);
        let deep = format!("{}{}{}", "[".repeat(200), document(A), "]".repeat(200));
        assert_eq!(referred(deep.as_bytes(), nothing_known), None);
    }

    #[test]
    fn a_body_without_the_member_is_not_parsed() {
        // Not JSON past its start: a parse would fail, the search alone answers.
        let mut body = message(&[r#"{"type":"text","text":"hi"}"#.to_string()]);
        body.extend_from_slice(b"}}}} not json");
        let calls = std::cell::Cell::new(0);
        assert_eq!(
            referred(&body, |_| {
                calls.set(calls.get() + 1);
                true
            }),
            None
        );
        assert_eq!(calls.get(), 0);
    }

    /// The largest allocation this thread made while `LARGEST` was watched (the test binary's
    /// allocator: the system's, watched per thread so that other tests do not count).
    mod watched {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        thread_local! {
            pub static LARGEST: Cell<Option<usize>> = const { Cell::new(None) };
        }

        pub struct Watching;

        unsafe impl GlobalAlloc for Watching {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                note(layout.size());
                System.alloc(layout)
            }
            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                System.dealloc(ptr, layout)
            }
            unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, size: usize) -> *mut u8 {
                note(size);
                System.realloc(ptr, layout, size)
            }
        }

        fn note(size: usize) {
            let _ = LARGEST.try_with(|l| {
                if let Some(max) = l.get() {
                    l.set(Some(max.max(size)));
                }
            });
        }
    }

    #[global_allocator]
    static ALLOCATOR: watched::Watching = watched::Watching;

    #[test]
    fn a_many_megabyte_body_is_read_in_place() {
        // 8 MB of an image's base64 and 700 KB of text with escapes before the file.
        let image = format!(
            r#"{{"type":"image","source":{{"type":"base64","media_type":"image/png","data":"{}"}}}}"#,
            "QUFB".repeat(2 << 20)
        );
        let text = format!(
            r#"{{"type":"text","text":"{}"}}"#,
            "line\\n".repeat(200_000)
        );
        let body = message(&[image, text, document(B)]);
        assert!(body.len() > 8 << 20);
        let watch = |body: &[u8]| {
            watched::LARGEST.with(|l| l.set(Some(0)));
            let found = referred(body, nothing_known);
            let largest = watched::LARGEST
                .with(|l| l.replace(None))
                .unwrap_or_default();
            (found, largest)
        };
        let (found, largest) = watch(&body);
        assert_eq!(found.as_deref(), Some(B));
        // Nothing near the body's size: strings without escapes are borrowed; one with escapes
        // is unescaped into the parser's scratch buffer (reused, one string at a time), here
        // the 600 KB text's, so the largest allocation stays that string's, not the body's.
        assert!(largest <= 1 << 20, "largest allocation {largest} bytes");
        let none = message(&[r#"{"type":"text","text":"hi"}"#.to_string()]);
        assert_eq!(
            watch(&none),
            (None, 0),
            "no member, no parse, no allocation"
        );
    }

    #[test]
    fn only_message_bodies_are_looked_into() {
        for path in [
            "/v1/messages",
            "/v1/messages/",
            "/v1/messages/count_tokens",
            "/v1/messages/batches",
        ] {
            assert!(may_refer(path), "{path}");
        }
        for path in [
            "/v1/files",
            "/v1/messages/batches/msgbatch_01HkcTjaV5uDC8jWR4ZsDV8d",
            "/v1/models",
            "/v1/complete",
            "",
        ] {
            assert!(!may_refer(path), "{path}");
        }
    }
}

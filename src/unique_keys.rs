//! Whether a JSON document names a key twice in one object, at any depth. A parse into a tree
//! keeps the last of two equal keys and drops the other silently; for the pool file that would
//! lose what the first held at the next write (see `Pool::parse`).

use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// `bytes` parsed into a tree as `serde_json::from_slice::<Value>` parses it, refused (`Err` with
/// serde_json's position) when some object names a key twice. One pass: a parse followed by a
/// separate check of the keys read the whole file twice, a third of the time a read of a pool
/// with a month of usage in it took.
pub fn parse(bytes: &[u8]) -> Result<Value, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = UniqueKeys
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| {
            let said = e.to_string();
            // serde_json's words for its depth limit read as if the JSON itself were broken.
            match said.strip_prefix("recursion limit exceeded") {
                Some(at) => format!(
                    "its arrays and objects nest more than {DEPTH_READ} deep{at}, deeper than this version reads"
                ),
                None => said,
            }
        })?;
    Ok(value)
}

/// serde_json's limit on nesting, which keeps a hostile file from exhausting the stack.
const DEPTH_READ: usize = 128;

/// `Err` with serde_json's position when some object in `bytes` names a key twice (or `bytes`
/// is not JSON).
#[cfg(test)]
pub fn check(bytes: &[u8]) -> Result<(), String> {
    parse(bytes).map(|_| ())
}

/// A JSON value in which no object names a key twice, built as serde_json's own `Value` is.
#[derive(Clone, Copy)]
struct UniqueKeys;

impl<'de> DeserializeSeed<'de> for UniqueKeys {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UniqueKeys {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> std::result::Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> std::result::Result<Value, E> {
        Ok(Value::Number(n.into()))
    }
    fn visit_u64<E>(self, n: u64) -> std::result::Result<Value, E> {
        Ok(Value::Number(n.into()))
    }
    fn visit_f64<E>(self, f: f64) -> std::result::Result<Value, E> {
        Ok(Number::from_f64(f).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, s: &str) -> std::result::Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }
    fn visit_string<E>(self, s: String) -> std::result::Result<Value, E> {
        Ok(Value::String(s))
    }
    fn visit_unit<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(Error::custom(format!(
                    "the key {key:?} appears twice in one object"
                )));
            }
            let value = map.next_value_seed(self)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_named_twice_is_found_at_any_depth() {
        let top = check(br#"{"anthropic": [{"email": "a@x"}], "anthropic": []}"#);
        assert!(top.unwrap_err().contains("\"anthropic\" appears twice"));
        let nested =
            check(br#"{"anthropic": [{"email": "a@x", "refresh": "r1", "refresh": "r2"}]}"#);
        assert!(nested.unwrap_err().contains("\"refresh\" appears twice"));
        assert!(check(br#"{"a": [{"a": 1}, {"a": 2}], "x": {"a": {"a": null}}}"#).is_ok());
        assert!(check(b"[1, \"two\", true, null, 2.5]").is_ok());
    }

    /// A file nested past the limit is said to be that, not to be broken JSON.
    #[test]
    fn nesting_past_the_limit_is_said_as_such() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let said = check(deep.as_bytes()).unwrap_err();
        assert!(
            said.starts_with("its arrays and objects nest more than 128 deep at line 1 column"),
            "{said}"
        );
        let within = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(check(within.as_bytes()).is_ok());
    }

    /// The tree is the one serde_json's own parse gives, and so are its refusals.
    #[test]
    fn the_tree_and_the_errors_are_serde_json_s() {
        let docs: [&[u8]; 10] = [
            br#"{"b": [1, -2, 3.5, 1e2, 18446744073709551615, -9223372036854775808, 1.7976931348623157e308], "a": {"z": null, "y": true, "x": "\u00e9\"\n"}}"#,
            b"  [ ]  ",
            b"{}",
            b"\"s\"",
            b"{\"a\": 1} x",
            b"{\"a\": 1,}",
            b"\xEF\xBB\xBF{}",
            b"",
            b"[1e999]",
            b"{\"a\": \"\xff\"}",
        ];
        for doc in docs {
            let ours = parse(doc);
            let theirs = serde_json::from_slice::<Value>(doc).map_err(|e| e.to_string());
            assert_eq!(ours, theirs, "{:?}", String::from_utf8_lossy(doc));
            if let (Ok(a), Ok(b)) = (&ours, &theirs) {
                assert_eq!(
                    serde_json::to_string(a).unwrap(),
                    serde_json::to_string(b).unwrap()
                );
            }
        }
        // serde_json's limit is ours, at the same place.
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let theirs = serde_json::from_slice::<Value>(deep.as_bytes()).unwrap_err();
        let ours = parse(deep.as_bytes()).unwrap_err();
        assert!(
            theirs.to_string().starts_with("recursion limit exceeded"),
            "{theirs}"
        );
        assert!(
            ours.ends_with(&format!(
                "deep at line 1 column {}, deeper than this version reads",
                theirs.column()
            )),
            "{ours}"
        );
    }
}

//! Whether a JSON document names a key twice in one object, at any depth. A parse into a tree
//! keeps the last of two equal keys and drops the other silently; for the pool file that would
//! lose what the first held at the next write (see `Pool::parse`).

use serde::de::{Deserialize, Deserializer, Error, MapAccess, SeqAccess, Visitor};

/// `Err` with serde_json's position when some object in `bytes` names a key twice (or `bytes`
/// is not JSON).
pub fn check(bytes: &[u8]) -> Result<(), String> {
    serde_json::from_slice::<UniqueKeys>(bytes)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A JSON document in which no object names a key twice (the check, at any depth; nothing kept).
struct UniqueKeys;

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(UniqueKeys)
    }
}

impl<'de> Visitor<'de> for UniqueKeys {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }

    fn visit_bool<E>(self, _: bool) -> std::result::Result<Self, E> {
        Ok(self)
    }
    fn visit_i64<E>(self, _: i64) -> std::result::Result<Self, E> {
        Ok(self)
    }
    fn visit_u64<E>(self, _: u64) -> std::result::Result<Self, E> {
        Ok(self)
    }
    fn visit_f64<E>(self, _: f64) -> std::result::Result<Self, E> {
        Ok(self)
    }
    fn visit_str<E>(self, _: &str) -> std::result::Result<Self, E> {
        Ok(self)
    }
    fn visit_unit<E>(self) -> std::result::Result<Self, E> {
        Ok(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Self, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if seen.contains(&key) {
                return Err(Error::custom(format!(
                    "the key {key:?} appears twice in one object"
                )));
            }
            map.next_value::<UniqueKeys>()?;
            seen.insert(key);
        }
        Ok(self)
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
}

//! Strict JSON parsing for request bodies: duplicate keys and excessive nesting are refused
//! instead of being silently resolved, and numbers keep their exact text (FHIR decimals).

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Limits on a parsed document.
#[derive(Debug, Clone, Copy)]
pub struct JsonLimits {
    /// Deepest nesting of objects and arrays allowed.
    pub max_depth: usize,
}

impl Default for JsonLimits {
    fn default() -> Self {
        JsonLimits { max_depth: 64 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("the body is not valid JSON: {0}")]
    Syntax(String),
    #[error("the body repeats the key '{0}' in one object")]
    DuplicateKey(String),
    #[error("the body nests objects and arrays deeper than {0} levels")]
    TooDeep(usize),
}

/// Parses `bytes` as one JSON value, refusing duplicate keys and nesting beyond the limit.
pub fn parse_strict(bytes: &[u8], limits: JsonLimits) -> Result<Value, JsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let mut state = ParseState {
        error: None,
        max_depth: limits.max_depth,
    };
    let result = ValueSeed {
        depth: 0,
        state: &mut state,
    }
    .deserialize(&mut de);
    if let Some(error) = state.error {
        return Err(error);
    }
    let value = result.map_err(|e| JsonError::Syntax(syntax_message(&e)))?;
    de.end()
        .map_err(|e| JsonError::Syntax(syntax_message(&e)))?;
    Ok(value)
}

/// serde_json's messages name a line and column, never the document's content.
fn syntax_message(error: &serde_json::Error) -> String {
    let kind = match error.classify() {
        serde_json::error::Category::Eof => "the document ends too early",
        serde_json::error::Category::Syntax => "malformed JSON",
        serde_json::error::Category::Data => "unexpected JSON value",
        serde_json::error::Category::Io => "unreadable input",
    };
    format!("{kind} at line {} column {}", error.line(), error.column())
}

struct ParseState {
    error: Option<JsonError>,
    max_depth: usize,
}

struct ValueSeed<'s> {
    depth: usize,
    state: &'s mut ParseState,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

// serde_json's arbitrary_precision feature hands numbers to visitors as a one-entry map
// under this private key; it is stable across serde_json 1.x.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number that is not finite"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let depth = self.depth + 1;
        if depth > self.state.max_depth {
            self.state.error = Some(JsonError::TooDeep(self.state.max_depth));
            return Err(serde::de::Error::custom("too deep"));
        }
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(ValueSeed {
            depth,
            state: &mut *self.state,
        })? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let depth = self.depth + 1;
        let mut out = Map::new();
        let mut first = true;
        while let Some(key) = map.next_key::<String>()? {
            if first && key == NUMBER_TOKEN {
                let text: String = map.next_value()?;
                let number: Number = text
                    .parse()
                    .map_err(|_| serde::de::Error::custom("bad number"))?;
                return Ok(Value::Number(number));
            }
            if first && depth > self.state.max_depth {
                self.state.error = Some(JsonError::TooDeep(self.state.max_depth));
                return Err(serde::de::Error::custom("too deep"));
            }
            first = false;
            if out.contains_key(&key) {
                let shown: String = key.chars().take(64).collect();
                self.state.error = Some(JsonError::DuplicateKey(shown));
                return Err(serde::de::Error::custom("duplicate key"));
            }
            let value = map.next_value_seed(ValueSeed {
                depth,
                state: &mut *self.state,
            })?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn keeps_decimal_text_and_order() {
        let v = parse_strict(br#"{"b":1.50,"a":[1,2.000,-0.0]}"#, JsonLimits::default()).unwrap();
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"b":1.50,"a":[1,2.000,-0.0]}"#
        );
    }

    #[test]
    fn refuses_duplicates_depth_and_trailing() {
        assert_eq!(
            parse_strict(br#"{"a":1,"a":2}"#, JsonLimits::default()),
            Err(JsonError::DuplicateKey("a".into()))
        );
        assert!(parse_strict(br#"{"x":{"a":1,"a":2}}"#, JsonLimits::default()).is_err());
        let deep = format!("{}{}", "[".repeat(10), "]".repeat(10));
        assert_eq!(
            parse_strict(deep.as_bytes(), JsonLimits { max_depth: 5 }),
            Err(JsonError::TooDeep(5))
        );
        assert!(parse_strict(deep.as_bytes(), JsonLimits { max_depth: 10 }).is_ok());
        let very_deep = "[".repeat(100_000);
        assert!(parse_strict(very_deep.as_bytes(), JsonLimits::default()).is_err());
        assert!(parse_strict(b"{} x", JsonLimits::default()).is_err());
        assert!(parse_strict(b"{\"a\":", JsonLimits::default()).is_err());
    }
}

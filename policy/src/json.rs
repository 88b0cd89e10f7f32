//! A strict JSON parser for everything that crosses the gateway.
//!
//! `serde_json` accepts inputs that two readers can disagree about: duplicate
//! object keys (last one wins there, first one wins elsewhere), integers beyond
//! what an IEEE double holds, and lone UTF-16 surrogates. An attacker who can
//! make the gateway and the MCP server read one message differently can get a
//! call judged as one thing and executed as another, so this parser refuses all
//! of those and produces a [`serde_json::Value`] only for unambiguous input.
//!
//! Numbers follow I-JSON (RFC 7493): integers must lie within ±(2^53−1), a
//! larger magnitude is accepted only when the literal is exactly a double, and
//! integral values are stored as integers so `1e2` and `100` compare and hash
//! the same.

use serde_json::{Map, Number, Value};
use thiserror::Error;

/// Largest integer an IEEE double represents exactly together with all smaller ones.
pub const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// Bounds applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted input, in bytes.
    pub max_bytes: usize,
    /// Deepest accepted nesting of arrays and objects.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 1024 * 1024,
            max_depth: 64,
        }
    }
}

/// Why an input is not acceptable JSON. Offsets are byte offsets into the input.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JsonError {
    #[error("body is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("invalid UTF-8 at byte {offset}")]
    InvalidUtf8 { offset: usize },
    #[error("invalid JSON at byte {offset}: {what}")]
    Syntax { offset: usize, what: &'static str },
    #[error("duplicate object key {key:?} at byte {offset}")]
    DuplicateKey { key: String, offset: usize },
    #[error("number at byte {offset} cannot be represented exactly (I-JSON)")]
    NumberOutOfRange { offset: usize },
    #[error("nesting deeper than {limit} levels")]
    TooDeep { limit: usize },
}

/// Parses one JSON text under `limits`.
pub fn parse(input: &[u8], limits: Limits) -> Result<Value, JsonError> {
    if input.len() > limits.max_bytes {
        return Err(JsonError::TooLarge {
            size: input.len(),
            limit: limits.max_bytes,
        });
    }
    let text = std::str::from_utf8(input).map_err(|e| JsonError::InvalidUtf8 {
        offset: e.valid_up_to(),
    })?;
    let mut parser = Parser {
        text,
        bytes: text.as_bytes(),
        pos: 0,
        max_depth: limits.max_depth,
    };
    parser.skip_whitespace();
    let value = parser.value(0)?;
    parser.skip_whitespace();
    if parser.pos != parser.bytes.len() {
        return Err(parser.syntax("trailing characters after the JSON value"));
    }
    Ok(value)
}

/// Parses with [`Limits::default`].
pub fn parse_default(input: &[u8]) -> Result<Value, JsonError> {
    parse(input, Limits::default())
}

struct Parser<'a> {
    /// The input, validated as UTF-8 once: strings are sliced from it.
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    max_depth: usize,
}

impl<'a> Parser<'a> {
    fn syntax(&self, what: &'static str) -> JsonError {
        JsonError::Syntax {
            offset: self.pos,
            what,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn expect_literal(&mut self, literal: &'static [u8], value: Value) -> Result<Value, JsonError> {
        if self.bytes[self.pos..].starts_with(literal) {
            self.pos += literal.len();
            Ok(value)
        } else {
            Err(self.syntax("unknown literal"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, JsonError> {
        match self.peek() {
            None => Err(self.syntax("unexpected end of input")),
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.string().map(Value::String),
            Some(b't') => self.expect_literal(b"true", Value::Bool(true)),
            Some(b'f') => self.expect_literal(b"false", Value::Bool(false)),
            Some(b'n') => self.expect_literal(b"null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number().map(Value::Number),
            Some(_) => Err(self.syntax("unexpected character")),
        }
    }

    fn enter(&self, depth: usize) -> Result<(), JsonError> {
        if depth > self.max_depth {
            Err(JsonError::TooDeep {
                limit: self.max_depth,
            })
        } else {
            Ok(())
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, JsonError> {
        self.enter(depth)?;
        self.pos += 1;
        let mut map = Map::new();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Value::Object(map));
        }
        loop {
            self.skip_whitespace();
            if self.peek() != Some(b'"') {
                return Err(self.syntax("expected a string key"));
            }
            let key_offset = self.pos;
            let key = self.string()?;
            self.skip_whitespace();
            if self.peek() != Some(b':') {
                return Err(self.syntax("expected ':' after an object key"));
            }
            self.pos += 1;
            self.skip_whitespace();
            let value = self.value(depth)?;
            match map.entry(key) {
                serde_json::map::Entry::Vacant(vacant) => {
                    vacant.insert(value);
                }
                serde_json::map::Entry::Occupied(occupied) => {
                    return Err(JsonError::DuplicateKey {
                        key: occupied.key().clone(),
                        offset: key_offset,
                    });
                }
            }
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Value::Object(map));
                }
                _ => return Err(self.syntax("expected ',' or '}' in an object")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, JsonError> {
        self.enter(depth)?;
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_whitespace();
            items.push(self.value(depth)?);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(self.syntax("expected ',' or ']' in an array")),
            }
        }
    }

    fn hex4(&mut self) -> Result<u16, JsonError> {
        let digits = self
            .bytes
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.syntax("truncated \\u escape"))?;
        let mut value: u16 = 0;
        for &d in digits {
            let nibble = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return Err(self.syntax("invalid hex digit in \\u escape")),
            };
            value = (value << 4) | u16::from(nibble);
        }
        self.pos += 4;
        Ok(value)
    }

    /// Up to the next quote, backslash or control byte. The input is valid
    /// UTF-8 and every stop is an ASCII byte, so the run is whole characters.
    fn plain_run(&mut self) -> Result<&'a str, JsonError> {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if b == b'"' || b == b'\\' || b < 0x20 {
                break;
            }
            self.pos += 1;
        }
        self.text
            .get(start..self.pos)
            .ok_or(JsonError::InvalidUtf8 { offset: start })
    }

    fn string(&mut self) -> Result<String, JsonError> {
        self.pos += 1; // opening quote
        // Most strings have no escape: one allocation of the right size.
        let first = self.plain_run()?;
        if self.peek() == Some(b'"') {
            let out = first.to_string();
            self.pos += 1;
            return Ok(out);
        }
        let mut out = first.to_string();
        loop {
            match self.peek() {
                None => return Err(self.syntax("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let escaped = self
                        .peek()
                        .ok_or_else(|| self.syntax("unterminated escape"))?;
                    self.pos += 1;
                    match escaped {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => out.push(self.unicode_escape()?),
                        _ => return Err(self.syntax("invalid escape")),
                    }
                    out.push_str(self.plain_run()?);
                }
                Some(_) => return Err(self.syntax("unescaped control character in string")),
            }
        }
    }

    fn unicode_escape(&mut self) -> Result<char, JsonError> {
        let first = self.hex4()?;
        let code = match first {
            0xD800..=0xDBFF => {
                if !self.bytes[self.pos..].starts_with(b"\\u") {
                    return Err(self.syntax("lone high surrogate"));
                }
                self.pos += 2;
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(self.syntax("high surrogate not followed by a low surrogate"));
                }
                0x10000 + ((u32::from(first) - 0xD800) << 10) + (u32::from(second) - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(self.syntax("lone low surrogate")),
            other => u32::from(other),
        };
        char::from_u32(code).ok_or_else(|| self.syntax("invalid code point"))
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<Number, JsonError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.syntax("invalid number")),
        }
        let mut integral = true;
        if self.peek() == Some(b'.') {
            integral = false;
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.syntax("expected digits after the decimal point"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            integral = false;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.syntax("expected digits in the exponent"));
            }
        }
        let literal = std::str::from_utf8(&self.bytes[start..self.pos])
            .map_err(|_| JsonError::InvalidUtf8 { offset: start })?;
        let out_of_range = JsonError::NumberOutOfRange { offset: start };
        if integral {
            let n: i64 = literal.parse().map_err(|_| out_of_range.clone())?;
            return if n.unsigned_abs() > MAX_SAFE_INTEGER as u64 {
                Err(out_of_range)
            } else {
                Ok(Number::from(n))
            };
        }
        let value: f64 = literal.parse().map_err(|_| out_of_range.clone())?;
        // Past 2^53 doubles are sparse integers: a literal between two of them
        // would be read as a different number by a reader with more precision.
        let inexact_large = value.abs() > MAX_SAFE_INTEGER as f64
            && decimal_form(literal) != decimal_form(&format!("{value:e}"));
        if !value.is_finite() || inexact_large {
            return Err(out_of_range);
        }
        number_from_f64(value).ok_or(out_of_range)
    }
}

/// Stores integral doubles in the safe range as integers, so one value has one form.
pub(crate) fn number_from_f64(value: f64) -> Option<Number> {
    if value.fract() == 0.0 && value.abs() <= MAX_SAFE_INTEGER as f64 {
        // Exact: the value is integral and within the safe range.
        #[allow(clippy::cast_possible_truncation)]
        return Some(Number::from(value as i64));
    }
    Number::from_f64(value)
}

/// The mathematical value of a decimal literal as (sign, significant digits, exponent),
/// where value = 0.digits × 10^exponent; zero is (false, "", 0).
fn decimal_form(literal: &str) -> (bool, String, i64) {
    let (negative, rest) = match literal.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, literal),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(i) => (
            &rest[..i],
            rest[i + 1..].parse::<i64>().unwrap_or(i64::MAX / 2),
        ),
        None => (rest, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all_digits: String = int_part.chars().chain(frac_part.chars()).collect();
    let leading_zeros = all_digits.len() - all_digits.trim_start_matches('0').len();
    let significant = all_digits.trim_matches('0');
    if significant.is_empty() {
        return (false, String::new(), 0);
    }
    let point = int_part.len() as i64 - leading_zeros as i64 + exponent;
    (negative, significant.to_string(), point)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    fn ok(input: &str) -> Value {
        parse_default(input.as_bytes()).unwrap()
    }

    fn err(input: &[u8]) -> JsonError {
        parse_default(input).unwrap_err()
    }

    #[test]
    fn parses_ordinary_documents() {
        assert_eq!(
            ok(r#" {"a": [1, -2, 3.5, true, false, null], "b": {"c": "d\u00e9\n"}} "#),
            json!({"a": [1, -2, 3.5, true, false, null], "b": {"c": "dé\n"}})
        );
        assert_eq!(ok("[]"), json!([]));
        assert_eq!(ok("{}"), json!({}));
        assert_eq!(ok(r#""tools\/call""#), json!("tools/call"));
        assert_eq!(ok(r#""\ud83d\ude00""#), json!("😀"));
    }

    #[test]
    fn refuses_duplicate_keys_at_any_depth() {
        assert!(
            matches!(err(br#"{"a":1,"a":2}"#), JsonError::DuplicateKey { key, .. } if key == "a")
        );
        assert!(matches!(
            err(br#"{"x":[{"name":"a","name":"b"}]}"#),
            JsonError::DuplicateKey { key, .. } if key == "name"
        ));
        // Escapes do not hide a duplicate: both keys decode to "name".
        assert!(matches!(
            err(br#"{"name":"a","n\u0061me":"b"}"#),
            JsonError::DuplicateKey { .. }
        ));
    }

    #[test]
    fn refuses_invalid_text() {
        assert!(matches!(
            err(b"{\"a\":\"\xff\"}"),
            JsonError::InvalidUtf8 { offset: 6 }
        ));
        for bad in [
            "",
            "{",
            "[1,]",
            "{\"a\":1,}",
            "01",
            "1.",
            ".5",
            "1e",
            "+1",
            "NaN",
            "Infinity",
            "tru",
            "\"a",
            "\"\\x\"",
            "\"\t\"",
            "{1:2}",
            "[1] [2]",
            "\"\\ud800\"",
            "\"\\udc00\"",
            "\"\\ud800\\u0041\"",
            "'a'",
        ] {
            assert!(parse_default(bad.as_bytes()).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn enforces_limits() {
        let limits = Limits {
            max_bytes: 4,
            max_depth: 2,
        };
        assert_eq!(
            parse(b"[1, 2]", limits),
            Err(JsonError::TooLarge { size: 6, limit: 4 })
        );
        assert_eq!(
            parse(
                b"[[[]]]",
                Limits {
                    max_bytes: 100,
                    ..limits
                }
            ),
            Err(JsonError::TooDeep { limit: 2 })
        );
        assert!(parse(b"[[]]", limits).is_ok());
    }

    #[test]
    fn numbers_follow_i_json() {
        assert_eq!(ok("9007199254740991"), json!(9007199254740991_i64));
        assert_eq!(ok("-9007199254740991"), json!(-9007199254740991_i64));
        for bad in [
            "9007199254740992",
            "-9007199254740993",
            "18446744073709551616",
            "1e400",
            "-1e400",
            "9007199254740993.0",
            "1.00000000000000000001e20",
        ] {
            assert!(
                matches!(
                    parse_default(bad.as_bytes()),
                    Err(JsonError::NumberOutOfRange { .. })
                ),
                "accepted {bad}"
            );
        }
        // One value, one form: integral doubles become integers.
        assert_eq!(ok("1e2"), json!(100));
        assert_eq!(ok("100.0"), json!(100));
        assert_eq!(ok("-0.0"), json!(0));
        assert_eq!(ok("0.1"), json!(0.1));
        assert_eq!(ok("1.10"), json!(1.1));
        assert_eq!(ok("1E-7"), json!(1e-7));
        assert_eq!(ok("1e300"), json!(1e300));
        assert_eq!(ok("1e20"), json!(1e20));
        // Integral values are integers however they are written.
        assert_eq!(ok("0E0"), json!(0));
        // Extra fractional digits round as every double reader rounds them (RFC 8785 §3.2.2).
        assert_eq!(ok("0.30000000000000001"), json!(0.3));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(input in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = parse_default(&input);
        }

        #[test]
        fn agrees_with_serde_json_on_what_it_accepts(input in "[\\[\\]{}\",:0-9a-z .eE+-]{0,24}") {
            if let Ok(ours) = parse_default(input.as_bytes()) {
                let theirs: Value = serde_json::from_str(&input).unwrap();
                // The same values: integral doubles (`0E0`) are read as integers
                // on purpose, so compare what they mean, not how they are held.
                proptest::prop_assert_eq!(
                    crate::canonical::to_canonical_string(&ours),
                    crate::canonical::to_canonical_string(&theirs)
                );
            }
        }

        #[test]
        fn round_trips_generated_values(value in arbitrary_json()) {
            let text = serde_json::to_string(&value).unwrap();
            proptest::prop_assert_eq!(parse_default(text.as_bytes()).unwrap(), value);
        }
    }

    pub(crate) fn arbitrary_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).prop_map(|n| json!(n)),
            (-1e6f64..1e6)
                .prop_filter_map("integral", |f| { (f.fract() != 0.0).then(|| json!(f)) }),
            "\\PC{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map("\\PC{0,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}

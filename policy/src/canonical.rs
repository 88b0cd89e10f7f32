//! RFC 8785 JSON canonicalization (JCS) and the digests built on it.
//!
//! An approval is bound to the digest of the call's canonical `params`, so the
//! same call spelled differently (key order, whitespace, escapes, `1e2` for
//! `100`) digests the same, and any change of meaning digests differently.
//! Input comes from [`crate::json::parse`], which already refused numbers that
//! are not exact doubles; integers here are therefore within 2^53.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Where a canonical form goes: a string, or straight into a digest, so
/// digesting builds no string.
trait Sink {
    fn put(&mut self, text: &str);
}

impl Sink for String {
    fn put(&mut self, text: &str) {
        self.push_str(text);
    }
}

impl Sink for Sha256 {
    fn put(&mut self, text: &str) {
        self.update(text.as_bytes());
    }
}

/// Writes `value` in its RFC 8785 canonical form.
pub fn to_canonical_string(value: &Value) -> String {
    let mut out = String::new();
    write_value(value, &mut out);
    out
}

/// `sha256:` followed by the hex SHA-256 of the canonical form of `value`.
pub fn digest(value: &Value) -> String {
    let mut hasher = Sha256::new();
    write_value(value, &mut hasher);
    prefixed_hex(&hasher.finalize())
}

/// `sha256:` followed by the hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    prefixed_hex(&Sha256::digest(bytes))
}

fn prefixed_hex(digest: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(7 + 2 * digest.len());
    text.push_str("sha256:");
    for byte in digest {
        text.push(char::from(HEX[usize::from(byte >> 4)]));
        text.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    text
}

/// Digest of a call's `params` without the fields that change between two
/// sends of the same call: `_meta` (which carries progress tokens and client
/// bookkeeping). Absent params digest like an empty object.
pub fn params_digest(params: Option<&Value>) -> String {
    match params {
        Some(Value::Object(map)) => digest_without(map, "_meta"),
        Some(value) => digest(value),
        None => sha256_hex(b"{}"),
    }
}

/// [`digest`] of `map` as if it had no member `key`.
pub fn digest_without(map: &serde_json::Map<String, Value>, key: &str) -> String {
    let mut hasher = Sha256::new();
    write_object(map, Some(key), &mut hasher);
    prefixed_hex(&hasher.finalize())
}

fn write_value(value: &Value, out: &mut impl Sink) {
    match value {
        Value::Null => out.put("null"),
        Value::Bool(true) => out.put("true"),
        Value::Bool(false) => out.put("false"),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                write_integer(i128::from(i), out);
            } else if let Some(u) = n.as_u64() {
                write_integer(i128::from(u), out);
            } else {
                let mut text = String::new();
                write_double(n.as_f64().unwrap_or(0.0), &mut text);
                out.put(&text);
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.put("[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.put(",");
                }
                write_value(item, out);
            }
            out.put("]");
        }
        Value::Object(map) => write_object(map, None, out),
    }
}

/// An object's members ordered by their keys' UTF-16 code units (JCS), not
/// by UTF-8 bytes; `skip` leaves one key out.
fn write_object(map: &serde_json::Map<String, Value>, skip: Option<&str>, out: &mut impl Sink) {
    out.put("{");
    let mut first = true;
    let mut member = |key: &str, value: &Value| {
        if skip == Some(key) {
            return;
        }
        if !first {
            out.put(",");
        }
        first = false;
        write_string(key, out);
        out.put(":");
        write_value(value, out);
    };
    // The map is usually in that order already (a BTreeMap orders by bytes,
    // which differs only between U+E000..U+FFFF and supplementary
    // characters): sort only when it is not.
    let in_order = map
        .keys()
        .zip(map.keys().skip(1))
        .all(|(a, b)| utf16_order(a, b).is_lt());
    if in_order {
        for (key, value) in map {
            member(key, value);
        }
    } else {
        let mut keys: Vec<&String> = map.keys().collect();
        keys.sort_by(|a, b| utf16_order(a, b));
        for key in keys {
            if let Some(value) = map.get(key) {
                member(key, value);
            }
        }
    }
    out.put("}");
}

/// The order of `a` and `b` by UTF-16 code units. Bytes decide where the
/// first differing byte of both is below 0xEE (the lead bytes of U+E000 and
/// up, where UTF-8 and UTF-16 orders part).
fn utf16_order(a: &str, b: &str) -> std::cmp::Ordering {
    let differ = a.bytes().zip(b.bytes()).find(|(x, y)| x != y);
    match differ {
        None => a.len().cmp(&b.len()),
        Some((x, y)) if x < 0xEE && y < 0xEE => x.cmp(&y),
        Some(_) => a.encode_utf16().cmp(b.encode_utf16()),
    }
}

fn write_integer(value: i128, out: &mut impl Sink) {
    // i128 covers every i64 and u64; 40 digits and a sign fit.
    let mut digits = [0u8; 41];
    let mut at = digits.len();
    let mut rest = value.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if value < 0 {
        at -= 1;
        digits[at] = b'-';
    }
    out.put(std::str::from_utf8(&digits[at..]).unwrap_or("0"));
}

fn write_string(s: &str, out: &mut impl Sink) {
    out.put("\"");
    // Runs that need no escape go out whole.
    let mut run = 0;
    for (at, byte) in s.bytes().enumerate() {
        let escaped = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            0x0c => "\\f",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..0x20 => "",
            _ => continue,
        };
        out.put(&s[run..at]);
        if escaped.is_empty() {
            out.put(&format!("\\u{byte:04x}"));
        } else {
            out.put(escaped);
        }
        run = at + 1;
    }
    out.put(&s[run..]);
    out.put("\"");
}

/// ECMAScript `Number.prototype.toString` for a finite double, as RFC 8785 requires.
fn write_double(value: f64, out: &mut String) {
    if value == 0.0 || !value.is_finite() {
        out.push('0');
        return;
    }
    if value < 0.0 {
        out.push('-');
    }
    // Rust's `{:e}` gives the shortest round-trip digits, as ECMAScript does.
    let scientific = format!("{:e}", value.abs());
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let k = digits.len() as i64;
    let n = exponent.parse::<i64>().unwrap_or(0) + 1;
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        let (int, frac) = digits.split_at(n as usize);
        out.push_str(int);
        out.push('.');
        out.push_str(frac);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(&digits);
    } else {
        let (first, rest) = digits.split_at(1);
        out.push_str(first);
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        out.push('e');
        out.push(if n > 0 { '+' } else { '-' });
        out.push_str(&(n - 1).abs().to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::parse_default;
    use serde_json::json;

    fn canon(input: &str) -> String {
        to_canonical_string(&parse_default(input.as_bytes()).unwrap())
    }

    #[test]
    fn rfc8785_examples() {
        // Section 3.2.2 of RFC 8785.
        assert_eq!(
            canon(
                r#"{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
                    "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
                    "literals": [null, true, false]}"#
            ),
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
    }

    #[test]
    fn sorts_keys_by_utf16_code_units() {
        // U+1F600 (surrogates D83D DE00) sorts before U+FB33 in UTF-16, after it in UTF-8.
        let value = json!({"\u{fb33}": 1, "😀": 2, "a": 3});
        assert_eq!(
            to_canonical_string(&value),
            "{\"a\":3,\"😀\":2,\"\u{fb33}\":1}"
        );
    }

    #[test]
    fn formats_doubles_like_ecmascript() {
        let cases = [
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (123.456, "123.456"),
            (0.000001, "0.000001"),
            (1e-7, "1e-7"),
            (-1.5, "-1.5"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
        ];
        for (value, expected) in cases {
            let mut out = String::new();
            write_double(value, &mut out);
            assert_eq!(out, expected, "{value}");
        }
    }

    #[test]
    fn spelling_does_not_change_the_digest() {
        let a = parse_default(br#"{"name":"deploy","arguments":{"env":"prod","n":100}}"#).unwrap();
        let b = parse_default(
            br#"{ "arguments" : { "n" : 1e2, "env" : "pr\u006fd" }, "name" : "deploy" }"#,
        )
        .unwrap();
        assert_eq!(digest(&a), digest(&b));
        let c = parse_default(br#"{"name":"deploy","arguments":{"env":"prod","n":101}}"#).unwrap();
        assert_ne!(digest(&a), digest(&c));
    }

    #[test]
    fn params_digest_ignores_meta_only() {
        let plain = json!({"name": "t", "arguments": {"x": 1}});
        let with_meta = json!({"name": "t", "arguments": {"x": 1}, "_meta": {"progressToken": 7}});
        assert_eq!(params_digest(Some(&plain)), params_digest(Some(&with_meta)));
        // `_meta` inside the arguments is the tool's data, not protocol bookkeeping.
        let nested = json!({"name": "t", "arguments": {"x": 1, "_meta": 2}});
        assert_ne!(params_digest(Some(&plain)), params_digest(Some(&nested)));
        assert_eq!(params_digest(None), params_digest(Some(&json!({}))));
        assert!(params_digest(None).starts_with("sha256:"));
    }

    proptest::proptest! {
        #[test]
        fn canonical_form_is_a_fixed_point(value in crate::json::tests::arbitrary_json()) {
            let once = to_canonical_string(&value);
            let reparsed = parse_default(once.as_bytes()).unwrap();
            proptest::prop_assert_eq!(&reparsed, &value);
            proptest::prop_assert_eq!(&to_canonical_string(&reparsed), &once);
            // Digesting streams the same bytes it would have written.
            proptest::prop_assert_eq!(digest(&value), sha256_hex(once.as_bytes()));
        }
    }
}

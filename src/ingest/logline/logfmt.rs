//! logfmt: `key=value key2="quoted \" value" flag` pairs, and the strict test `auto`
//! uses (pairs cover the line as logfmt libraries write it).

use std::collections::BTreeMap;

use serde_json::Value;

/// Logfmt as a whole: every word is a `key=value` pair (the value may be quoted or
/// empty) whose key is a plain name, as logfmt libraries write them. `None` otherwise.
pub fn strict_logfmt_fields(line: &str) -> Option<BTreeMap<String, Value>> {
    // Most text lines fail on their first word: no map built for them.
    let first_word = line.split_whitespace().next()?;
    let (first_key, _) = first_word.split_once('=')?;
    let plain_key = |key: &str| {
        let mut bytes = key.bytes();
        bytes
            .next()
            .is_some_and(|first| first.is_ascii_alphabetic() || first == b'_' || first == b'@')
            && bytes.all(|byte| {
                byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-' | b'/' | b'@')
            })
    };
    if !plain_key(first_key) {
        return None;
    }
    let fields = logfmt_fields(line)?;
    let all_pairs = fields
        .iter()
        .all(|(key, value)| plain_key(key) && !matches!(value, Value::Bool(_)));
    // A repeated key collapses in the map: count the words to be sure every one was a pair.
    let words = count_logfmt_words(line)?;
    (all_pairs && words == fields.len()).then_some(fields)
}

/// The number of words of a logfmt line (quoted values count as part of their word).
fn count_logfmt_words(line: &str) -> Option<usize> {
    let mut words = 0;
    let mut in_word = false;
    let mut quoted = false;
    let mut escaped = false;
    for character in line.chars() {
        if quoted {
            match character {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => quoted = false,
                _ => {}
            }
            continue;
        }
        if character.is_whitespace() {
            in_word = false;
            continue;
        }
        if !in_word {
            words += 1;
            in_word = true;
        }
        if character == '"' {
            quoted = true;
        }
    }
    (!quoted).then_some(words)
}

/// `key=value key2="quoted \" value" flag`; `None` when the line is not logfmt.
pub fn logfmt_fields(line: &str) -> Option<BTreeMap<String, Value>> {
    let mut fields = BTreeMap::new();
    let bytes = line.as_bytes();
    let mut index = 0;
    let mut pairs = 0;
    while index < bytes.len() {
        while index < bytes.len() && bytes[index].is_ascii_whitespace() {
            index += 1;
        }
        if index >= bytes.len() {
            break;
        }
        let key_start = index;
        while index < bytes.len() && bytes[index] != b'=' && !bytes[index].is_ascii_whitespace() {
            if bytes[index] == b'"' {
                return None;
            }
            index += 1;
        }
        let key = &line[key_start..index];
        if index >= bytes.len() || bytes[index] != b'=' {
            fields.insert(key.to_owned(), Value::Bool(true));
            continue;
        }
        index += 1;
        let value = if index < bytes.len() && bytes[index] == b'"' {
            index += 1;
            let mut value = String::new();
            let mut closed = false;
            while index < bytes.len() {
                match bytes[index] {
                    b'\\' if index + 1 < bytes.len() => {
                        let escaped = line[index + 1..].chars().next()?;
                        value.push(match escaped {
                            'n' => '\n',
                            't' => '\t',
                            'r' => '\r',
                            other => other,
                        });
                        index += 1 + escaped.len_utf8();
                    }
                    b'"' => {
                        index += 1;
                        closed = true;
                        break;
                    }
                    _ => {
                        let rest = &line[index..];
                        let character = rest.chars().next()?;
                        value.push(character);
                        index += character.len_utf8();
                    }
                }
            }
            if !closed {
                return None;
            }
            value
        } else {
            let value_start = index;
            while index < bytes.len() && !bytes[index].is_ascii_whitespace() {
                index += 1;
            }
            line[value_start..index].to_owned()
        };
        if key.is_empty() {
            return None;
        }
        fields.insert(key.to_owned(), Value::String(value));
        pairs += 1;
    }
    (pairs > 0).then_some(fields)
}

//! Redis commands and Mongo / Elasticsearch / OpenSearch queries without their values, as
//! Datadog's obfuscator treats them (`../shared/specs/trust.md` §2.4), written here since
//! no crate does it: Redis arguments by a per-command table of which positions are values;
//! JSON-like queries by a scanner that keeps keys, operators (`$gt`) and function names
//! (`ObjectId(…)`) and turns every leaf value into `"?"`. The scanner is not a JSON
//! parser on purpose: Mongo's shell syntax (unquoted keys, single quotes, `ObjectId("…")`)
//! and Elasticsearch's bulk bodies (one document per line) are obfuscated the same way,
//! and text cut in the middle still loses its values.

/// A Redis command line (or several, one per line) with its value arguments as `?`;
/// `None` when nothing changes.
pub fn redis(text: &str) -> Option<String> {
    let mut changed = false;
    let lines: Vec<String> = text
        .lines()
        .map(|line| match redis_command(line) {
            Some(obfuscated) => {
                changed = true;
                obfuscated
            }
            None => line.to_owned(),
        })
        .collect();
    changed.then(|| lines.join("\n"))
}

/// Split a command line into arguments: whitespace apart, `"…"` and `'…'` quoted with
/// backslash escapes (as redis-cli reads them).
fn redis_arguments(line: &str) -> Vec<&str> {
    let bytes = line.as_bytes();
    let mut arguments = Vec::new();
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index].is_ascii_whitespace() {
            index += 1;
            continue;
        }
        let start = index;
        if bytes[index] == b'"' || bytes[index] == b'\'' {
            let quote = bytes[index];
            index += 1;
            while index < bytes.len() && bytes[index] != quote {
                index += if bytes[index] == b'\\' { 2 } else { 1 };
            }
            index = (index + 1).min(bytes.len());
        } else {
            while index < bytes.len() && !bytes[index].is_ascii_whitespace() {
                index += 1;
            }
        }
        arguments.push(&line[start..index.min(line.len())]);
    }
    arguments
}

/// Which arguments (after the command name) of a command are values.
enum Values {
    /// Everything: `AUTH`.
    All,
    /// The argument at this index.
    At(usize),
    /// Everything after the key, as a single `?`.
    AfterKey,
    /// Every second argument from this index: field/value and key/value pairs.
    EveryOther(usize),
    /// `ZADD key [NX|XX] [GT|LT] [CH] [INCR] score member …`: scores and members.
    AfterFlags,
    /// Every third from index 3: `GEOADD key lon lat member …` members.
    EveryThird,
}

fn values_of(command: &str, arguments: &[&str]) -> Option<Values> {
    Some(match command {
        "AUTH" | "MIGRATE" => Values::All,
        "APPEND" | "GETSET" | "LPUSHX" | "RPUSHX" | "SET" | "SETNX" | "SISMEMBER" | "ZRANK"
        | "ZREVRANK" | "ZSCORE" | "PUBLISH" | "GEORADIUSBYMEMBER" => Values::At(1),
        "HSETNX" | "LREM" | "LSET" | "SETBIT" | "SETEX" | "PSETEX" | "SETRANGE" | "ZINCRBY"
        | "SMOVE" | "RESTORE" => Values::At(2),
        "LINSERT" => Values::At(3),
        "GEOHASH" | "GEOPOS" | "GEODIST" | "LPUSH" | "RPUSH" | "SREM" | "ZREM" | "SADD" => {
            Values::AfterKey
        }
        "HSET" | "HMSET" => Values::EveryOther(2),
        "MSET" | "MSETNX" => Values::EveryOther(1),
        "ZADD" => Values::AfterFlags,
        "GEOADD" => Values::EveryThird,
        "CONFIG"
            if arguments
                .first()
                .is_some_and(|sub| sub.eq_ignore_ascii_case("SET")) =>
        {
            Values::At(2)
        }
        _ => return None,
    })
}

fn redis_command(line: &str) -> Option<String> {
    let arguments = redis_arguments(line);
    let (name, rest) = arguments.split_first()?;
    let command = name.to_ascii_uppercase();
    let mut rest: Vec<&str> = rest.to_vec();
    let mut changed = false;
    let mut hide = |argument: &mut &str| {
        if *argument != "?" {
            *argument = "?";
            changed = true;
        }
    };
    match values_of(&command, &rest)? {
        Values::All => {
            if rest.is_empty() {
                return None;
            }
            rest.truncate(1);
            hide(&mut rest[0]);
        }
        Values::At(index) => hide(rest.get_mut(index)?),
        Values::AfterKey => {
            if rest.len() < 2 {
                return None;
            }
            rest.truncate(2);
            hide(&mut rest[1]);
        }
        Values::EveryOther(from) => {
            for argument in rest.iter_mut().skip(from).step_by(2) {
                hide(argument);
            }
        }
        Values::AfterFlags => {
            let flags = rest
                .iter()
                .skip(1)
                .take_while(|argument| {
                    ["NX", "XX", "GT", "LT", "CH", "INCR"]
                        .iter()
                        .any(|flag| argument.eq_ignore_ascii_case(flag))
                })
                .count();
            for argument in rest.iter_mut().skip(1 + flags) {
                hide(argument);
            }
        }
        Values::EveryThird => {
            for argument in rest.iter_mut().skip(3).step_by(3) {
                hide(argument);
            }
        }
    }
    changed.then(|| {
        let mut out = String::from(*name);
        for argument in rest {
            out.push(' ');
            out.push_str(argument);
        }
        out
    })
}

/// What the scanner is inside.
#[derive(Clone, Copy, PartialEq)]
enum Frame {
    /// An object, expecting a key next (else a value).
    Object {
        key_next: bool,
    },
    Array,
    /// A function call's arguments: `ObjectId(…)`.
    Call,
}

/// A JSON-like query with every leaf value as `"?"`; `None` when it has none.
pub fn json(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut stack: Vec<Frame> = Vec::new();
    let mut changed = false;
    let mut index = 0;
    let at_key = |stack: &[Frame]| stack.last() == Some(&Frame::Object { key_next: true });
    while index < bytes.len() {
        let byte = bytes[index];
        match byte {
            b'{' => stack.push(Frame::Object { key_next: true }),
            b'[' => stack.push(Frame::Array),
            b'(' => stack.push(Frame::Call),
            b'}' | b']' | b')' => {
                stack.pop();
            }
            b':' | b',' => {
                if let Some(Frame::Object { key_next }) = stack.last_mut() {
                    *key_next = byte == b',';
                }
            }
            b'"' | b'\'' => {
                let start = index;
                index += 1;
                while index < bytes.len() && bytes[index] != byte {
                    index += if bytes[index] == b'\\' { 2 } else { 1 };
                }
                index = (index + 1).min(bytes.len());
                if at_key(&stack) {
                    out.push_str(&text[start..index]);
                } else {
                    out.push_str("\"?\"");
                    changed = true;
                }
                continue;
            }
            _ if byte.is_ascii_alphanumeric() || b"-+.$_".contains(&byte) => {
                let start = index;
                while index < bytes.len()
                    && (bytes[index].is_ascii_alphanumeric() || b"-+.$_".contains(&bytes[index]))
                {
                    index += 1;
                }
                let next = bytes[index..]
                    .iter()
                    .find(|byte| !byte.is_ascii_whitespace());
                if next == Some(&b'(') || at_key(&stack) {
                    // A function's name, an unquoted key.
                    out.push_str(&text[start..index]);
                } else {
                    out.push_str("\"?\"");
                    changed = true;
                }
                continue;
            }
            _ => {}
        }
        // Structure, whitespace and anything else (a multi-byte character: copied whole).
        let end = index + text[index..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&text[index..end]);
        index = end;
    }
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_values_go_by_command() {
        let cases = [
            ("AUTH hunter2", "AUTH ?"),
            ("auth default s3cret", "auth ?"),
            (
                "SET session:42 \"{\\\"user\\\": \\\"ann\\\"}\" EX 60",
                "SET session:42 ? EX 60",
            ),
            ("SETEX k 10 secret", "SETEX k 10 ?"),
            (
                "HSET user:1 email ann@example.com name Ann",
                "HSET user:1 email ? name ?",
            ),
            ("HMSET h a 1 b 2", "HMSET h a ? b ?"),
            ("MSET k1 v1 k2 v2", "MSET k1 ? k2 ?"),
            ("LPUSH queue job1 job2 job3", "LPUSH queue ?"),
            ("ZADD board NX CH 10 ann 20 bob", "ZADD board NX CH ? ? ? ?"),
            (
                "GEOADD places 13.36 38.11 Palermo 15.08 37.50 Catania",
                "GEOADD places 13.36 38.11 ? 15.08 37.50 ?",
            ),
            ("CONFIG SET requirepass hunter2", "CONFIG SET requirepass ?"),
            ("LINSERT l BEFORE pivot value", "LINSERT l BEFORE pivot ?"),
        ];
        for (command, expected) in cases {
            assert_eq!(redis(command).as_deref(), Some(expected), "{command}");
        }
        // Keys and commands without values stay.
        for command in [
            "GET session:42",
            "DEL a b",
            "CONFIG GET maxmemory",
            "SET onlykey",
            "PING",
        ] {
            assert_eq!(redis(command), None, "{command}");
        }
        assert_eq!(
            redis("GET a\nSET a secret").as_deref(),
            Some("GET a\nSET a ?")
        );
    }

    #[test]
    fn json_queries_keep_their_shape_and_lose_their_values() {
        assert_eq!(
            json(r#"{"find":"users","filter":{"email":"ann@example.com","age":{"$gt":30}},"limit":1}"#)
                .as_deref(),
            Some(r#"{"find":"?","filter":{"email":"?","age":{"$gt":"?"}},"limit":"?"}"#)
        );
        // Mongo's shell syntax.
        assert_eq!(
            json("{ _id: ObjectId('5f1d7a'), tags: ['a', \"b\"], ok: true }").as_deref(),
            Some("{ _id: ObjectId(\"?\"), tags: [\"?\", \"?\"], ok: \"?\" }")
        );
        // An Elasticsearch bulk body: a document per line.
        assert_eq!(
            json("{\"index\":{\"_id\":\"1\"}}\n{\"card\":\"4111 1111 1111 1111\"}\n").as_deref(),
            Some("{\"index\":{\"_id\":\"?\"}}\n{\"card\":\"?\"}\n")
        );
        // Escaped quotes, and text cut in the middle of a value.
        assert_eq!(
            json(r#"{"q":"say \"hi\"","p":"abc"#).as_deref(),
            Some(r#"{"q":"?","p":"?""#)
        );
        assert_eq!(json("{}"), None);
        assert_eq!(
            json(r#"{"ключ":"значение"}"#).as_deref(),
            Some(r#"{"ключ":"?"}"#)
        );
    }
}

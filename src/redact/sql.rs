//! SQL literals out of statements, by a tokenizer (not a regex): string, dollar-quoted,
//! numeric and boolean literals become `?`, comments go (they can hold anything);
//! identifiers, keywords, operators and placeholders (`?`, `$1`, `:name`, `@p1`) stay, so
//! a parameterized statement comes back as it was. Datadog's obfuscator's rules, in short.

/// The statement without its literals; `None` when it has none (nothing to change).
pub fn obfuscate(sql: &str) -> Option<String> {
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut changed = false;
    let mut index = 0;
    // The previous token was an identifier or keyword (then digits continue it: `t1`).
    while index < bytes.len() {
        let byte = bytes[index];
        match byte {
            b'\'' => {
                index = skip_quoted(bytes, index, b'\'');
                out.push('?');
                changed = true;
            }
            b'-' if bytes.get(index + 1) == Some(&b'-') => {
                while index < bytes.len() && bytes[index] != b'\n' {
                    index += 1;
                }
                changed = true;
            }
            b'/' if bytes.get(index + 1) == Some(&b'*') => {
                index += 2;
                while index < bytes.len()
                    && !(bytes[index] == b'*' && bytes.get(index + 1) == Some(&b'/'))
                {
                    index += 1;
                }
                index = (index + 2).min(bytes.len());
                changed = true;
            }
            b'$' if bytes.get(index + 1).is_some_and(u8::is_ascii_digit) => {
                // `$1`: a placeholder.
                let start = index;
                index += 1;
                while index < bytes.len() && bytes[index].is_ascii_digit() {
                    index += 1;
                }
                out.push_str(&sql[start..index]);
            }
            b'$' => match dollar_tag(bytes, index) {
                Some(tag_end) => {
                    let tag = &bytes[index..tag_end];
                    let mut at = tag_end;
                    while at < bytes.len() && !bytes[at..].starts_with(tag) {
                        at += 1;
                    }
                    index = (at + tag.len()).min(bytes.len());
                    out.push('?');
                    changed = true;
                }
                None => {
                    out.push('$');
                    index += 1;
                }
            },
            b'"' | b'`' => {
                // Quoted identifiers stay.
                let end = skip_quoted(bytes, index, byte);
                out.push_str(&sql[index..end]);
                index = end;
            }
            b'0'..=b'9' | b'.' if is_number_start(bytes, index) => {
                index = skip_number(bytes, index);
                out.push('?');
                changed = true;
            }
            _ if byte.is_ascii_alphabetic() || byte == b'_' || byte >= 0x80 => {
                let start = index;
                while index < bytes.len()
                    && (bytes[index].is_ascii_alphanumeric()
                        || bytes[index] == b'_'
                        || bytes[index] >= 0x80)
                {
                    index += 1;
                }
                let word = &sql[start..index];
                if word.eq_ignore_ascii_case("true") || word.eq_ignore_ascii_case("false") {
                    out.push('?');
                    changed = true;
                } else {
                    out.push_str(word);
                }
            }
            _ => {
                // One character (whole, for multi-byte ones).
                let width = sql[index..].chars().next().map_or(1, char::len_utf8);
                out.push_str(&sql[index..index + width]);
                index += width;
            }
        }
    }
    changed.then_some(out)
}

/// Past a quoted run starting at `start` (doubled quotes and backslashes escape).
fn skip_quoted(bytes: &[u8], start: usize, quote: u8) -> usize {
    let mut index = start + 1;
    while index < bytes.len() {
        match bytes[index] {
            b'\\' => index += 2,
            byte if byte == quote => {
                if bytes.get(index + 1) == Some(&quote) {
                    index += 2;
                } else {
                    return index + 1;
                }
            }
            _ => index += 1,
        }
    }
    bytes.len()
}

/// `$tag$` or `$$` at `start`: the index just past it.
fn dollar_tag(bytes: &[u8], start: usize) -> Option<usize> {
    let mut index = start + 1;
    while index < bytes.len() && (bytes[index].is_ascii_alphanumeric() || bytes[index] == b'_') {
        index += 1;
    }
    (bytes.get(index) == Some(&b'$')).then_some(index + 1)
}

/// A number starts here, not inside a word (`t1`) or a placeholder.
fn is_number_start(bytes: &[u8], index: usize) -> bool {
    let previous = index.checked_sub(1).map(|at| bytes[at]);
    let in_word = previous.is_some_and(|byte| {
        byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'$' || byte == b':' || byte == b'@'
    });
    if in_word {
        return false;
    }
    bytes[index].is_ascii_digit() || bytes.get(index + 1).is_some_and(u8::is_ascii_digit)
}

fn skip_number(bytes: &[u8], start: usize) -> usize {
    let mut index = start;
    if bytes[index..].starts_with(b"0x") || bytes[index..].starts_with(b"0X") {
        index += 2;
        while index < bytes.len() && bytes[index].is_ascii_hexdigit() {
            index += 1;
        }
        return index;
    }
    while index < bytes.len()
        && (bytes[index].is_ascii_digit()
            || bytes[index] == b'.'
            || ((bytes[index] == b'e' || bytes[index] == b'E')
                && bytes
                    .get(index + 1)
                    .is_some_and(|next| next.is_ascii_digit() || *next == b'-' || *next == b'+')))
    {
        if bytes[index] == b'e' || bytes[index] == b'E' {
            index += 1;
        }
        index += 1;
    }
    index
}

#[cfg(test)]
mod tests {
    use super::obfuscate;

    #[test]
    fn literals_go_and_the_shape_stays() {
        let cases = [
            (
                "SELECT * FROM users WHERE email = 'ann@example.com' AND id=42",
                "SELECT * FROM users WHERE email = ? AND id=?",
            ),
            (
                "INSERT INTO cards (number, cvv) VALUES ('4111 1111 1111 1111', 123), ('x''y', -1.5e3)",
                "INSERT INTO cards (number, cvv) VALUES (?, ?), (?, -?)",
            ),
            (
                "UPDATE t1 SET paid = TRUE, note = $$secret$$ WHERE k = $tag$a$b$tag$ -- by ann\n",
                "UPDATE t1 SET paid = ?, note = ? WHERE k = ? \n",
            ),
            (
                "SELECT \"Col 1\" FROM `t2` /* password: hunter2 */ WHERE x = 0x1F",
                "SELECT \"Col 1\" FROM `t2`  WHERE x = ?",
            ),
        ];
        for (sql, expected) in cases {
            assert_eq!(obfuscate(sql).as_deref(), Some(expected), "{sql}");
        }
    }

    #[test]
    fn parameterized_statements_are_untouched() {
        for sql in [
            "SELECT * FROM users WHERE id = $1 AND org = $2",
            "SELECT * FROM users WHERE id = ? AND name = :name AND x = @p1",
            "SELECT a_1, t2.col3 FROM t2",
        ] {
            assert_eq!(obfuscate(sql), None, "{sql}");
        }
    }
}

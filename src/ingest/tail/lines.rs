//! Bytes read from a file into records' text: complete lines only (a partial last line is
//! never consumed), `\r\n` and invalid UTF-8 repaired, over-long lines cut and the rest
//! skipped, CRI partial (`P`) lines joined, and plain-text continuation lines (stack
//! traces) joined to the record before them. Pure; the tailer keeps the returned
//! `consumed` as its checkpoint, so whatever is not consumed is read again next time.

use crate::ingest::logline::split_cri;

pub struct LineRules {
    pub max_line_bytes: usize,
    /// Join plain-text continuation lines to the record before them.
    pub multiline: bool,
    /// The file has been idle past the multi-line timeout (or is finished): a pending
    /// record can be closed.
    pub flush_pending: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// File offset of the record's first byte: with the file identity, the record's id.
    pub offset: u64,
    pub text: String,
    pub truncated: bool,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Split {
    pub groups: Vec<Group>,
    /// Bytes of `data` that are done with.
    pub consumed: usize,
    /// Still inside an over-long line whose head was emitted.
    pub skipping: bool,
}

struct Line {
    start: usize,
    end: usize,
    text: String,
    truncated: bool,
}

fn is_continuation(text: &str) -> bool {
    text.starts_with(' ')
        || text.starts_with('\t')
        || text.starts_with("at ")
        || text.starts_with("Caused by")
        || text.starts_with("Traceback")
        || text.starts_with("...")
}

fn to_text(bytes: &[u8]) -> String {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn split(data: &[u8], base: u64, skipping: bool, rules: &LineRules) -> Split {
    let mut lines = Vec::new();
    let mut position = 0;
    let mut skipping = skipping;
    let mut skip_end = 0;
    while position < data.len() {
        let newline = data[position..].iter().position(|byte| *byte == b'\n');
        if skipping {
            match newline {
                Some(index) => {
                    position += index + 1;
                    skip_end = position;
                    skipping = false;
                    continue;
                }
                None => {
                    position = data.len();
                    skip_end = position;
                    break;
                }
            }
        }
        match newline {
            Some(index) => {
                let line = &data[position..position + index];
                let truncated = line.len() > rules.max_line_bytes;
                let kept = &line[..line.len().min(rules.max_line_bytes)];
                lines.push(Line {
                    start: position,
                    end: position + index + 1,
                    text: to_text(kept),
                    truncated,
                });
                position += index + 1;
            }
            None if data.len() - position > rules.max_line_bytes => {
                lines.push(Line {
                    start: position,
                    end: data.len(),
                    text: to_text(&data[position..position + rules.max_line_bytes]),
                    truncated: true,
                });
                skipping = true;
                position = data.len();
                skip_end = position;
            }
            None => break,
        }
    }
    group(lines, base, skipping, skip_end, rules)
}

fn group(lines: Vec<Line>, base: u64, skipping: bool, skip_end: usize, rules: &LineRules) -> Split {
    struct Open {
        start: usize,
        end: usize,
        text: String,
        truncated: bool,
        /// A CRI `P` line: the record continues on the next line whatever it is.
        cri_partial: bool,
        joinable: bool,
    }
    let mut closed: Vec<Group> = Vec::new();
    let mut consumed = skip_end;
    let mut open: Option<Open> = None;
    for line in lines {
        if let Some(current) = open.as_mut() {
            if current.cri_partial {
                if let Some(cri) = split_cri(&line.text) {
                    current.text.push_str(cri.content);
                    current.cri_partial = cri.partial;
                    current.end = line.end;
                    current.truncated |= line.truncated;
                    continue;
                }
            } else if rules.multiline
                && current.joinable
                && !line.truncated
                && is_continuation(&line.text)
            {
                current.text.push('\n');
                current.text.push_str(&line.text);
                current.end = line.end;
                continue;
            }
        }
        if let Some(done) = open.take() {
            consumed = consumed.max(done.end);
            closed.push(Group {
                offset: base + done.start as u64,
                text: done.text,
                truncated: done.truncated,
            });
        }
        let (text, cri_partial) = match split_cri(&line.text) {
            Some(cri) if cri.partial => (
                format!("{} {} F {}", cri.time, cri.stream, cri.content),
                true,
            ),
            _ => (line.text.clone(), false),
        };
        let joinable = !text.trim_start().starts_with('{') && !line.truncated;
        open = Some(Open {
            start: line.start,
            end: line.end,
            text,
            truncated: line.truncated,
            cri_partial,
            joinable,
        });
    }
    if let Some(last) = open {
        let may_continue = last.cri_partial || (rules.multiline && last.joinable && !skipping);
        if !may_continue || (rules.flush_pending && !last.cri_partial) || last.truncated {
            consumed = consumed.max(last.end);
            closed.push(Group {
                offset: base + last.start as u64,
                text: last.text,
                truncated: last.truncated,
            });
        }
    }
    Split {
        groups: closed,
        consumed,
        skipping,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(multiline: bool, flush: bool) -> LineRules {
        LineRules {
            max_line_bytes: 64,
            multiline,
            flush_pending: flush,
        }
    }

    fn texts(split: &Split) -> Vec<&str> {
        split
            .groups
            .iter()
            .map(|group| group.text.as_str())
            .collect()
    }

    #[test]
    fn partial_last_line_is_not_consumed() {
        let data = b"{\"a\":1}\n{\"msg\":\"a\"";
        let split = split(data, 100, false, &rules(true, false));
        assert_eq!(texts(&split), vec!["{\"a\":1}"]);
        assert_eq!(split.groups[0].offset, 100);
        assert_eq!(split.consumed, 8);
    }

    #[test]
    fn crlf_and_invalid_utf8_are_repaired() {
        let data = b"one\r\ntw\xffo\r\n";
        let split = split(data, 0, false, &rules(false, false));
        assert_eq!(texts(&split), vec!["one", "tw\u{fffd}o"]);
        assert_eq!(split.consumed, data.len());
    }

    #[test]
    fn long_lines_are_cut_and_the_rest_skipped_across_reads() {
        let mut data = b"short\n".to_vec();
        data.extend(std::iter::repeat_n(b'x', 100));
        let first = split(&data, 0, false, &rules(false, false));
        assert_eq!(first.groups.len(), 2);
        assert!(first.groups[1].truncated);
        assert_eq!(first.groups[1].text.len(), 64);
        assert!(first.skipping);
        assert_eq!(first.consumed, data.len());
        let second = split(
            b"xxxx\nnext\n",
            data.len() as u64,
            true,
            &rules(false, false),
        );
        assert_eq!(texts(&second), vec!["next"]);
        assert_eq!(second.groups[0].offset, data.len() as u64 + 5);
        assert!(!second.skipping);
    }

    #[test]
    fn stack_traces_join_and_wait_for_the_idle_flush() {
        let data = b"ERROR boom\n\tat a.B(C.java:1)\nCaused by: x\n\t... 3 more\nINFO next\n";
        let open = split(data, 0, false, &rules(true, false));
        assert_eq!(
            texts(&open),
            vec!["ERROR boom\n\tat a.B(C.java:1)\nCaused by: x\n\t... 3 more"]
        );
        assert_eq!(
            open.consumed,
            data.len() - "INFO next\n".len(),
            "last record may still continue"
        );
        let flushed = split(data, 0, false, &rules(true, true));
        assert_eq!(flushed.groups.len(), 2);
        assert_eq!(flushed.consumed, data.len());
    }

    #[test]
    fn json_lines_are_never_joined() {
        let data = b"{\"a\":1}\n  {\"b\":2}\n";
        let split = split(data, 0, false, &rules(true, false));
        assert_eq!(split.groups.len(), 2);
        assert_eq!(split.consumed, data.len());
    }

    #[test]
    fn cri_partial_lines_join_until_the_final_one() {
        let data = b"2023-01-29T08:51:24.968139185Z stdout P first \n2023-01-29T08:51:24.968139186Z stdout F second\n";
        let split = split(data, 0, false, &rules(false, false));
        assert_eq!(
            texts(&split),
            vec!["2023-01-29T08:51:24.968139185Z stdout F first second"]
        );
        assert_eq!(split.consumed, data.len());
        let pending = super::split(&data[..data.len() / 2 + 10], 0, false, &rules(false, true));
        assert!(pending.groups.is_empty());
        assert_eq!(pending.consumed, 0);
    }
}

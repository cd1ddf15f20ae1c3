//! Redaction before anything touches the disk: every span (its name, status message,
//! attributes, event and link attributes, its resource's attributes) and every log record
//! (message and attributes) passes here on every ingest path before the WAL sees it.
//!
//! Built in, on by default: header attributes that carry credentials (`Authorization`,
//! `Cookie`, `Set-Cookie`, `Proxy-Authorization`, `X-Api-Key`) become `REDACTED`; SQL
//! statements (`db.statement`, `db.query.text`) lose their literals (a tokenizer, see
//! [`sql`]), Redis commands their value arguments and Mongo / Elasticsearch / OpenSearch
//! queries their leaf values (by `db.system.name`, see [`nosql`]); URL userinfo becomes `REDACTED:REDACTED` and signed-URL query values
//! `REDACTED` (OpenTelemetry's URL conventions); private key blocks, JWTs, bearer and
//! basic credentials, AWS, GitHub, Slack, Stripe and Google API keys (gitleaks' shapes) and
//! card numbers (an IIN prefix and a valid Luhn sum) become `REDACTED` wherever they
//! appear in a value. Configured rules add key and value patterns, replaced or hashed
//! with a key (equal values stay equal, so they can still be joined on). Ids, and the keys
//! on the allow list, are never touched. A redacted span or record carries
//! `redaction.count`, never what was found; each rule counts its redactions.
//!
//! An OTLP span arrives as bytes and is stored as bytes: [`Redactor::screen`] looks at
//! those bytes once, and only a span it flags is decoded, redacted and encoded again.

pub mod nosql;
pub mod sql;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span as OtlpSpan;
use regex::Regex;

use crate::model::LogRecord;

/// What a redacted value becomes.
pub const REDACTED: &str = "REDACTED";

/// The attribute a redacted span or record carries: how many values were redacted.
pub const COUNT_ATTRIBUTE: &str = "redaction.count";

/// Header names whose values are credentials, as attribute keys end with them
/// (`http.request.header.authorization`) or are them.
const SECRET_HEADERS: [&str; 5] = [
    "authorization",
    "cookie",
    "set-cookie",
    "proxy-authorization",
    "x-api-key",
];

/// Keys the join and the indexes rely on: never redacted.
const ID_KEYS: [&str; 9] = [
    "trace_id",
    "span_id",
    "traceId",
    "spanId",
    "trace.id",
    "span.id",
    "service.name",
    COUNT_ATTRIBUTE,
    TRUNCATED_ATTRIBUTE,
];

/// A configured rule, as `[[redaction.rules]]` gives it.
#[derive(Debug, Clone)]
pub struct RuleConfig {
    pub name: String,
    /// Values of keys matching this (the whole value) are redacted.
    pub key: Option<Regex>,
    /// Matches of this inside any value are redacted.
    pub value: Option<Regex>,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Replace(String),
    /// A keyed hash (BLAKE3 with `redaction.hash_key`), 16 hex digits: equal values stay
    /// equal.
    Hash,
}

#[derive(Debug, Clone, Default)]
pub struct RedactionConfig {
    pub builtin: bool,
    pub rules: Vec<RuleConfig>,
    pub allow_keys: Vec<String>,
    pub hash_key: [u8; 32],
    /// String values longer than this are cut to it (`limits.max_attribute_bytes`);
    /// 0: no limit.
    pub max_value_bytes: usize,
}

/// The attribute a span or record with cut values carries: how many were cut.
pub const TRUNCATED_ATTRIBUTE: &str = "tracelink.truncated.count";

/// A built-in value pattern.
struct Detector {
    name: &'static str,
    pattern: Regex,
    /// What a match becomes (`$n` groups allowed).
    replacement: &'static str,
    /// A further check of a match (Luhn for card numbers).
    valid: Option<fn(&str) -> bool>,
}

pub struct Redactor {
    builtin: bool,
    detectors: Vec<Detector>,
    rules: Vec<RuleConfig>,
    allow_keys: HashSet<String>,
    hash_key: [u8; 32],
    /// Over a span's or record's bytes (with the built-ins on): where a built-in pattern
    /// could start, and the regex that says whether one does.
    screen: Option<(aho_corasick::AhoCorasick, regex::bytes::Regex)>,
    max_value_bytes: usize,
    /// Values cut to `max_value_bytes`.
    pub truncated: AtomicU64,
    /// Redactions per rule name.
    counts: BTreeMap<&'static str, AtomicU64>,
    rule_counts: Vec<AtomicU64>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("builtin", &self.builtin)
            .field("rules", &self.rules.len())
            .finish()
    }
}

impl PartialEq for Redactor {
    fn eq(&self, other: &Self) -> bool {
        self.builtin == other.builtin
            && self.rules.len() == other.rules.len()
            && self.allow_keys == other.allow_keys
    }
}

#[allow(clippy::unwrap_used)] // the built-in patterns are constants, tested to compile
fn builtin_detectors() -> Vec<Detector> {
    let detector = |name, pattern: &str, replacement, valid| Detector {
        name,
        pattern: Regex::new(pattern).unwrap(),
        replacement,
        valid,
    };
    vec![
        detector(
            "private_key",
            r"(?is)-----BEGIN[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----.*?-----END[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----",
            REDACTED,
            None,
        ),
        detector(
            "jwt",
            r"\bey[a-zA-Z0-9_-]{10,}\.ey[a-zA-Z0-9_/\\-]{10,}\.[a-zA-Z0-9_/\\-]*=*",
            REDACTED,
            None,
        ),
        detector(
            "bearer",
            r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}",
            "$1 REDACTED",
            None,
        ),
        detector(
            "url_userinfo",
            r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@",
            "${1}REDACTED:REDACTED@",
            None,
        ),
        detector(
            "signed_url",
            r"(?i)([?&](?:x-amz-signature|x-amz-credential|x-amz-security-token|awsaccesskeyid|signature|sig|x-goog-signature|x-goog-credential)=)[^&#\s]+",
            "${1}REDACTED",
            None,
        ),
        detector(
            "aws_key",
            r"\b(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}\b",
            REDACTED,
            None,
        ),
        detector(
            "github_token",
            r"\b(?:gh[pousr]_[0-9a-zA-Z]{36}|github_pat_[0-9a-zA-Z_]{22,255})\b",
            REDACTED,
            None,
        ),
        detector(
            "slack_token",
            r"\bxox[baprs]-[0-9a-zA-Z-]{10,}",
            REDACTED,
            None,
        ),
        detector(
            "stripe_key",
            r"\b(?:sk|rk)_(?:test|live|prod)_[a-zA-Z0-9]{10,99}\b",
            REDACTED,
            None,
        ),
        detector("gcp_api_key", r"\bAIza[\w-]{35}\b", REDACTED, None),
        detector(
            "card_number",
            r"\b\d(?:[ -]?\d){11,18}\b",
            REDACTED,
            Some(is_card_number),
        ),
    ]
}

/// What the byte screen looks for: every built-in detector's start, the keys the built-in
/// rules act on, and a run of twelve digits.
///
/// No `\b`: in a protobuf the byte before a value is its length, which may be a letter.
const SCREEN: &str = r"(?i)-----BEGIN|ey[a-z0-9_-]{10,}\.ey|(?:bearer|basic)\s|://[^/\s:@]+:[^/\s@]+@|[?&](?:x-amz-|awsaccesskeyid|signature|sig=|x-goog-)|A3T|AKIA|ASIA|ABIA|ACCA|gh[pousr]_|github_pat_|xox[baprs]-|(?:sk|rk)_(?:test|live|prod)_|AIza|authorization|cookie|x-api-key|db\.statement|db\.query\.text|redis\.raw_command|mongodb\.query|elasticsearch\.body|opensearch\.body|\d(?:[ -]?\d){11}";

impl Redactor {
    #[allow(clippy::unwrap_used)] // SCREEN is a constant, tested to compile
    pub fn new(config: RedactionConfig) -> Redactor {
        let detectors = if config.builtin {
            builtin_detectors()
        } else {
            Vec::new()
        };
        let mut counts = BTreeMap::new();
        for name in ["header", "sql", "redis", "json"]
            .into_iter()
            .chain(detectors.iter().map(|detector| detector.name))
        {
            counts.insert(name, AtomicU64::new(0));
        }
        Redactor {
            builtin: config.builtin,
            detectors,
            rule_counts: config.rules.iter().map(|_| AtomicU64::new(0)).collect(),
            rules: config.rules,
            allow_keys: config.allow_keys.into_iter().collect(),
            hash_key: config.hash_key,
            max_value_bytes: config.max_value_bytes,
            truncated: AtomicU64::new(0),
            // Case-sensitive over a lower-cased copy: that keeps aho-corasick's SIMD
            // (Teddy) prefilter, which ASCII case folding would turn off.
            screen: config.builtin.then(|| {
                (
                    aho_corasick::AhoCorasick::builder()
                        .match_kind(aho_corasick::MatchKind::LeftmostFirst)
                        .build(SCREEN_LITERALS)
                        .unwrap(),
                    regex::bytes::Regex::new(SCREEN).unwrap(),
                )
            }),
            counts,
        }
    }

    /// A redactor that changes nothing (built-ins off, no rules).
    pub fn off() -> Redactor {
        Redactor::new(RedactionConfig::default())
    }

    /// Whether anything in these bytes (a span's encoding, say) may need redacting.
    /// `false` is certain; `true` means: decode and look.
    pub fn screen(&self, bytes: &[u8]) -> bool {
        self.screen_within(bytes, false)
    }

    /// [`Redactor::screen`] of a part of bytes that [`Redactor::content_clean`] already
    /// passed (`whole_clean`) or not: a pattern found in a part is found in the whole, so
    /// a clean whole leaves only the part's length to check.
    pub fn screen_within(&self, part: &[u8], whole_clean: bool) -> bool {
        if !self.rules.is_empty() || self.too_long(part.len()) {
            return true;
        }
        !whole_clean && self.content_flagged(part)
    }

    /// Whether no part of these bytes (a whole request) can need redacting for what it
    /// says: no rules, and nothing the built-in screen looks for. One pass over a request
    /// instead of one per span; lengths are still checked per value.
    pub fn content_clean(&self, bytes: &[u8]) -> bool {
        self.rules.is_empty() && !self.content_flagged(bytes)
    }

    fn content_flagged(&self, bytes: &[u8]) -> bool {
        // The literals (one pass over a lower-cased copy, almost never found) before the
        // regex that confirms them; runs of digits by hand.
        let Some((literals, confirm)) = &self.screen else {
            return false;
        };
        // A whole request is screened now, up to `max_request_bytes`: the copy is made a
        // window at a time, so the thread's buffer stays one window long. Windows overlap
        // by one byte less than the longest literal, so a literal across a boundary lies
        // whole in the next window.
        let literal = LOWERED.with(|lowered| {
            let mut lowered = lowered.borrow_mut();
            let mut start = 0;
            loop {
                let end = (start + SCREEN_WINDOW).min(bytes.len());
                lowered.clear();
                lowered.extend_from_slice(&bytes[start..end]);
                lowered.make_ascii_lowercase();
                if literals.is_match(lowered.as_slice()) {
                    return true;
                }
                if end == bytes.len() {
                    return false;
                }
                start = end - (LONGEST_SCREEN_LITERAL - 1);
            }
        });
        (literal && confirm.is_match(bytes)) || has_digit_run(bytes, 12)
    }

    /// Redactions per rule, for `/metrics`.
    pub fn counts(&self) -> Vec<(String, u64)> {
        self.counts
            .iter()
            .map(|(name, count)| ((*name).to_owned(), count.load(Ordering::Relaxed)))
            .chain(
                self.rules
                    .iter()
                    .zip(&self.rule_counts)
                    .map(|(rule, count)| (rule.name.clone(), count.load(Ordering::Relaxed))),
            )
            .collect()
    }

    fn too_long(&self, len: usize) -> bool {
        self.max_value_bytes > 0 && len > self.max_value_bytes
    }

    /// `text` cut to the limit on a character boundary, if it is over it.
    fn cut(&self, text: &mut String) -> u64 {
        if !self.too_long(text.len()) {
            return 0;
        }
        let mut end = self.max_value_bytes;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        self.truncated.fetch_add(1, Ordering::Relaxed);
        1
    }

    fn count(&self, name: &str) {
        if let Some(count) = self.counts.get(name) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The value of `key` redacted, or `None` when it stays as it is.
    pub fn value(&self, key: &str, value: &str) -> Option<String> {
        self.value_in(key, value, None)
    }

    /// A database statement without its values, by the database system (`db.system.name`
    /// of the same attributes), else by its look (a `{` or `[` start: a JSON query).
    fn statement(&self, key: &str, value: &str, system: Option<&str>) -> Option<String> {
        let statement = key == "db.statement" || key == "db.query.text";
        let system = system.map(str::to_ascii_lowercase);
        let system = system.as_deref();
        if key == "redis.raw_command" || (statement && matches!(system, Some("redis" | "valkey"))) {
            let obfuscated = nosql::redis(value);
            if obfuscated.is_some() {
                self.count("redis");
            }
            return obfuscated;
        }
        let json_system = matches!(
            system,
            Some("mongodb" | "elasticsearch" | "opensearch" | "couchdb" | "cosmosdb")
        );
        let looks_json = value.trim_start().starts_with(['{', '[']);
        if matches!(
            key,
            "mongodb.query" | "elasticsearch.body" | "opensearch.body"
        ) || (statement && (json_system || looks_json))
        {
            let obfuscated = nosql::json(value);
            if obfuscated.is_some() {
                self.count("json");
            }
            return obfuscated;
        }
        if statement {
            let obfuscated = sql::obfuscate(value);
            if obfuscated.is_some() {
                self.count("sql");
            }
            return obfuscated;
        }
        None
    }

    /// [`Redactor::value`] among attributes that name their database system.
    fn value_in(&self, key: &str, value: &str, system: Option<&str>) -> Option<String> {
        if self.allow_keys.contains(key) || ID_KEYS.contains(&key) {
            return None;
        }
        if self.builtin {
            let lower = key.to_ascii_lowercase();
            let header = SECRET_HEADERS.iter().any(|header| {
                lower == *header
                    || lower
                        .strip_suffix(header)
                        .is_some_and(|prefix| prefix.ends_with('.') || prefix.ends_with('_'))
            });
            if header && value != REDACTED {
                self.count("header");
                return Some(REDACTED.to_owned());
            }
        }
        let mut current: Option<String> = None;
        if self.builtin {
            current = self.statement(key, value, system);
        }
        for detector in &self.detectors {
            let text = current.as_deref().unwrap_or(value);
            if !detector.pattern.is_match(text) {
                continue;
            }
            let mut hit = false;
            let replaced = detector
                .pattern
                .replace_all(text, |found: &regex::Captures<'_>| {
                    if detector.valid.is_some_and(|valid| !valid(&found[0])) {
                        return found[0].to_owned();
                    }
                    hit = true;
                    let mut out = String::new();
                    found.expand(detector.replacement, &mut out);
                    out
                })
                .into_owned();
            if hit {
                self.count(detector.name);
                current = Some(replaced);
            }
        }
        for (rule, count) in self.rules.iter().zip(&self.rule_counts) {
            let text = current.as_deref().unwrap_or(value);
            if rule
                .key
                .as_ref()
                .is_some_and(|pattern| pattern.is_match(key))
            {
                count.fetch_add(1, Ordering::Relaxed);
                current = Some(self.apply(&rule.action, text));
                continue;
            }
            if let Some(pattern) = &rule.value {
                if pattern.is_match(text) {
                    count.fetch_add(1, Ordering::Relaxed);
                    let replaced = pattern
                        .replace_all(text, |found: &regex::Captures<'_>| {
                            self.apply(&rule.action, &found[0])
                        })
                        .into_owned();
                    current = Some(replaced);
                }
            }
        }
        current
    }

    fn apply(&self, action: &Action, text: &str) -> String {
        match action {
            Action::Replace(replacement) => replacement.clone(),
            Action::Hash => {
                let hash = blake3::keyed_hash(&self.hash_key, text.as_bytes());
                hash.to_hex()[..16].to_owned()
            }
        }
    }

    /// Redact the attributes in place (and cut what is too long); returns how many
    /// values were redacted, counting the cut ones in `cut`.
    pub fn attributes(&self, attributes: &mut [KeyValue], cut: &mut u64) -> u64 {
        let system = attributes
            .iter()
            .find(|attribute| attribute.key == "db.system.name" || attribute.key == "db.system")
            .and_then(
                |attribute| match attribute.value.as_ref()?.value.as_ref()? {
                    any_value::Value::StringValue(system) => Some(system.clone()),
                    _ => None,
                },
            );
        let mut changed = 0;
        for attribute in attributes {
            if let Some(value) = attribute.value.as_mut() {
                changed += self.any_value(&attribute.key, value, cut, system.as_deref());
            }
        }
        changed
    }

    /// Redact one attribute value and cut it when too long: how many redactions.
    fn text(&self, key: &str, text: &mut String, cut: &mut u64, system: Option<&str>) -> u64 {
        let redacted = match self.value_in(key, text, system) {
            Some(redacted) => {
                *text = redacted;
                1
            }
            None => 0,
        };
        *cut += self.cut(text);
        redacted
    }

    /// Redact one string (a name, a message: not cut, their limits are their own).
    fn redact_in_place(&self, key: &str, text: &mut String) -> u64 {
        match self.value(key, text) {
            Some(redacted) => {
                *text = redacted;
                1
            }
            None => 0,
        }
    }

    fn any_value(
        &self,
        key: &str,
        value: &mut AnyValue,
        cut: &mut u64,
        system: Option<&str>,
    ) -> u64 {
        match value.value.as_mut() {
            Some(any_value::Value::StringValue(text)) => self.text(key, text, cut, system),
            // A card number sent as a number is still one.
            Some(any_value::Value::IntValue(number)) => {
                let text = number.to_string();
                match self.value(key, &text) {
                    Some(redacted) if redacted != text => {
                        value.value = Some(any_value::Value::StringValue(redacted));
                        1
                    }
                    _ => 0,
                }
            }
            Some(any_value::Value::ArrayValue(array)) => array
                .values
                .iter_mut()
                .map(|item| self.any_value(key, item, cut, system))
                .sum(),
            Some(any_value::Value::KvlistValue(list)) => self.attributes(&mut list.values, cut),
            _ => 0,
        }
    }

    /// Redact a span in place (its name, status message, attributes, events' and links'
    /// attributes), marking it with `redaction.count` when anything changed.
    pub fn span(&self, span: &mut OtlpSpan) -> u64 {
        let mut cut = 0;
        let mut changed = self.attributes(&mut span.attributes, &mut cut);
        changed += self.redact_in_place("name", &mut span.name);
        if let Some(status) = span.status.as_mut() {
            changed += self.redact_in_place("status.message", &mut status.message);
        }
        for event in &mut span.events {
            changed += self.attributes(&mut event.attributes, &mut cut);
        }
        for link in &mut span.links {
            changed += self.attributes(&mut link.attributes, &mut cut);
        }
        mark(&mut span.attributes, COUNT_ATTRIBUTE, changed);
        mark(&mut span.attributes, TRUNCATED_ATTRIBUTE, cut);
        changed
    }

    /// Redact a resource's attributes in place.
    pub fn resource(&self, resource: &mut Resource) -> u64 {
        let mut cut = 0;
        let changed = self.attributes(&mut resource.attributes, &mut cut);
        mark(&mut resource.attributes, COUNT_ATTRIBUTE, changed);
        mark(&mut resource.attributes, TRUNCATED_ATTRIBUTE, cut);
        changed
    }

    /// Redact a log record in place (message and attributes; its ids and service stay).
    pub fn log(&self, record: &mut LogRecord) -> u64 {
        let mut cut = 0;
        // A line's length is `logs.sources.max_line_bytes`'s to bound.
        let mut changed = self.redact_in_place("message", &mut record.message);
        let system = ["db.system.name", "db.system"]
            .iter()
            .find_map(|key| record.attributes.get(*key)?.as_str().map(str::to_owned));
        for (key, value) in record.attributes.iter_mut() {
            changed += self.json(key, value, &mut cut, system.as_deref());
        }
        for (key, count) in [(COUNT_ATTRIBUTE, changed), (TRUNCATED_ATTRIBUTE, cut)] {
            if count > 0 {
                record
                    .attributes
                    .insert(key.to_owned(), serde_json::json!(count));
            }
        }
        changed
    }

    fn json(
        &self,
        key: &str,
        value: &mut serde_json::Value,
        cut: &mut u64,
        system: Option<&str>,
    ) -> u64 {
        match value {
            serde_json::Value::String(text) => self.text(key, text, cut, system),
            serde_json::Value::Number(number) => {
                let text = number.to_string();
                match self.value(key, &text) {
                    Some(redacted) if redacted != text => {
                        *value = serde_json::Value::String(redacted);
                        1
                    }
                    _ => 0,
                }
            }
            serde_json::Value::Array(items) => items
                .iter_mut()
                .map(|item| self.json(key, item, cut, system))
                .sum(),
            serde_json::Value::Object(fields) => fields
                .iter_mut()
                .map(|(inner, item)| self.json(inner, item, cut, system))
                .sum(),
            _ => 0,
        }
    }
}

/// Say how many values were redacted (or cut), when any were.
fn mark(attributes: &mut Vec<KeyValue>, key: &str, count: u64) {
    if count == 0 {
        return;
    }
    attributes.retain(|attribute| attribute.key != key);
    attributes.push(KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(count as i64)),
        }),
        ..Default::default()
    });
}

thread_local! {
    /// The screen's lower-cased copy of the bytes it looks at, kept between calls.
    static LOWERED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Literals one of which every [`SCREEN`] match but the digit run contains, lower-cased.
/// How much of the bytes the screen lower-cases at a time.
const SCREEN_WINDOW: usize = 64 << 10;

/// The length of the longest of [`SCREEN_LITERALS`].
const LONGEST_SCREEN_LITERAL: usize = {
    let mut longest = 0;
    let mut index = 0;
    while index < SCREEN_LITERALS.len() {
        if SCREEN_LITERALS[index].len() > longest {
            longest = SCREEN_LITERALS[index].len();
        }
        index += 1;
    }
    longest
};

const SCREEN_LITERALS: [&str; 43] = [
    "-----begin",
    ".ey",
    "bearer",
    "basic",
    "://",
    "x-amz-",
    "awsaccesskeyid",
    "signature",
    "sig=",
    "x-goog-",
    "a3t",
    "akia",
    "asia",
    "abia",
    "acca",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "xoxb-",
    "xoxa-",
    "xoxp-",
    "xoxr-",
    "xoxs-",
    "sk_test_",
    "sk_live_",
    "sk_prod_",
    "rk_test_",
    "rk_live_",
    "rk_prod_",
    "aiza",
    "authorization",
    "cookie",
    "x-api-key",
    "db.statement",
    "db.query.text",
    "redis.raw_command",
    "mongodb.query",
    "elasticsearch.body",
    "opensearch.body",
    "private key",
];

/// `digits` digits in a row, single spaces or dashes allowed between them.
///
/// Such a run is made of digits, spaces and dashes only, and is at least `digits` bytes
/// long, so it covers one of every `digits` positions: only the bytes there are looked
/// at, and the stretch of those characters around one that is one is searched. Looking at
/// every byte was most of the screen's time.
fn has_digit_run(bytes: &[u8], digits: usize) -> bool {
    let digits = digits.max(1);
    let in_run = |byte: &u8| byte.is_ascii_digit() || *byte == b' ' || *byte == b'-';
    let mut probe = digits - 1;
    while let Some(byte) = bytes.get(probe) {
        if !in_run(byte) {
            probe += digits;
            continue;
        }
        let start = bytes[..probe]
            .iter()
            .rposition(|byte| !in_run(byte))
            .map_or(0, |at| at + 1);
        let end = bytes[probe..]
            .iter()
            .position(|byte| !in_run(byte))
            .map_or(bytes.len(), |at| probe + at);
        if end - start >= digits && digit_run_within(&bytes[start..end], digits) {
            return true;
        }
        // `bytes[end]` is no part of a run: the next run starts after it.
        probe = end + digits;
    }
    false
}

/// [`has_digit_run`] byte by byte.
fn digit_run_within(bytes: &[u8], digits: usize) -> bool {
    let mut at = 0;
    // Jump from digit to digit, then count the run there.
    while let Some(found) = bytes[at..].iter().position(u8::is_ascii_digit) {
        let mut index = at + found;
        let mut run = 0;
        while index < bytes.len() {
            if bytes[index].is_ascii_digit() {
                run += 1;
                if run >= digits {
                    return true;
                }
                index += 1;
            } else if (bytes[index] == b' ' || bytes[index] == b'-')
                && bytes.get(index + 1).is_some_and(u8::is_ascii_digit)
            {
                index += 1;
            } else {
                break;
            }
        }
        at = index + 1;
        if at >= bytes.len() {
            break;
        }
    }
    false
}

/// A card number: 12–19 digits (spaces and dashes between), a known IIN prefix, and a
/// valid Luhn sum.
fn is_card_number(text: &str) -> bool {
    let digits: Vec<u8> = text
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|digit| digit - b'0')
        .collect();
    if !(12..=19).contains(&digits.len()) {
        return false;
    }
    let prefix = |count: usize| {
        digits[..count]
            .iter()
            .fold(0u32, |value, digit| value * 10 + u32::from(*digit))
    };
    // Datadog's IIN table without the lone `1` (UATP): timestamps in ms, µs and ns are
    // 13, 16 and 19 digits starting with 1, and a tenth of them pass Luhn.
    let known = digits[0] == 4
        || matches!(prefix(2), 34..=39 | 51..=55 | 62 | 65)
        || matches!(prefix(3), 300..=305 | 309 | 636 | 644..=649)
        || matches!(prefix(4), 3528..=3589 | 5019 | 6011)
        || matches!(prefix(6), 222100..=272099 | 500000..=509999 | 560000..=589999 | 600000..=699999);
    if !known {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(index, digit)| {
            let digit = u32::from(*digit);
            if index % 2 == 1 {
                let doubled = digit * 2;
                if doubled > 9 {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                digit
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests;

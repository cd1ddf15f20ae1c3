use super::*;
use proptest::prelude::*;
use prost::Message;

fn builtin() -> Redactor {
    Redactor::new(RedactionConfig {
        builtin: true,
        ..Default::default()
    })
}

/// Secrets of every built-in kind, each in a sentence, with what must not survive.
pub(crate) const SECRETS: [(&str, &str); 11] = [
    ("failed for -----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA75sSecretKeyMaterial0123456789abcdefghijklmnopqrstuvwxyz\n-----END RSA PRIVATE KEY----- !", "MIIEpAIBAAKCAQEA75sSecretKeyMaterial"),
    ("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbm4iLCJpYXQiOjE3MDB9.c2lnbmF0dXJlc2VjcmV0 sent", "eyJzdWIiOiJhbm4iLCJpYXQiOjE3MDB9"),
    ("header was Bearer s3cr3t-T0ken.abcdef ok", "s3cr3t-T0ken.abcdef"),
    ("GET https://ann:hunter2pass@db.example.com/x", "hunter2pass"),
    ("https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIDEXAMPLE%2F2024&X-Amz-Signature=fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024", "fe5f80f77d5fa3beca038a248ff027d0"),
    ("key AKIAIOSFODNN7EXAMPLE leaked", "AKIAIOSFODNN7EXAMPLE"),
    ("gh token ghp_0123456789abcdefghijABCDEFGHIJ012345", "ghp_0123456789abcdefghijABCDEFGHIJ012345"),
    ("slack xoxb-1234567890-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "xoxb-1234567890-1234567890123"),
    ("stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc", "sk_live_4eC39HqLyjWDarjtT1zdp7dc"),
    ("gcp AIzaSyD-1234567890abcdefghijklmnopqrstu", "AIzaSyD-1234567890abcdefghijklmnopqrstu"),
    ("paid with 4111 1111 1111 1111 today", "4111 1111 1111 1111"),
];

#[test]
fn every_built_in_kind_is_redacted_and_says_nothing_of_it() {
    let redactor = builtin();
    for (text, secret) in SECRETS {
        let redacted = redactor
            .value("message", text)
            .unwrap_or_else(|| panic!("{text:?} not redacted"));
        assert!(!redacted.contains(secret), "{redacted:?}");
        assert!(redacted.contains(REDACTED), "{redacted:?}");
    }
    assert_eq!(
        redactor.value("url.full", "https://ann:pw@h/x").as_deref(),
        Some("https://REDACTED:REDACTED@h/x")
    );
    assert_eq!(
        redactor
            .value("http.request.header.authorization", "Token abc")
            .as_deref(),
        Some(REDACTED)
    );
    assert_eq!(
        redactor.value("Cookie", "session=1").as_deref(),
        Some(REDACTED)
    );
    assert_eq!(
        redactor
            .value("db.statement", "SELECT * FROM t WHERE pw = 'x'")
            .as_deref(),
        Some("SELECT * FROM t WHERE pw = ?")
    );
    let counts: BTreeMap<String, u64> = redactor.counts().into_iter().collect();
    assert_eq!(counts["card_number"], 1);
    assert_eq!(counts["header"], 2);
    assert_eq!(counts["sql"], 1);
}

#[test]
fn ordinary_values_and_ids_stay() {
    let redactor = builtin();
    for (key, value) in [
        ("http.route", "/orders/{id}"),
        ("http.url", "https://shop.example.com/cart?item=42"),
        ("uuid", "6f1d2b8e-3c4a-4b1e-9f0a-2d3c4b5a6e7f"),
        ("card", "4111 1111 1111 1112"),
        ("time_ms", "1700000000123"),
        ("time_ns", "1700000000123456789"),
        ("trace_id", "4111111111111111"),
        ("db.statement", "SELECT * FROM t WHERE id = $1"),
        ("message", "basic plan chosen"),
    ] {
        assert_eq!(redactor.value(key, value), None, "{key}={value}");
    }
}

#[test]
fn rules_replace_or_hash_and_the_allow_list_wins() {
    let redactor = Redactor::new(RedactionConfig {
        builtin: true,
        rules: vec![
            RuleConfig {
                name: "emails".into(),
                key: None,
                value: Some(Regex::new(r"[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}").unwrap()),
                action: Action::Hash,
            },
            RuleConfig {
                name: "passwords".into(),
                key: Some(Regex::new(r"(?i)passw").unwrap()),
                value: None,
                action: Action::Replace("***".into()),
            },
        ],
        allow_keys: vec!["support.card".into()],
        hash_key: [7; 32],
        max_value_bytes: 0,
    });
    let first = redactor.value("user", "mail ann@example.com now").unwrap();
    let again = redactor.value("other", "mail ann@example.com now").unwrap();
    assert_eq!(first, again, "equal values stay equal");
    assert!(!first.contains("ann@example.com"));
    let other_key = Redactor::new(RedactionConfig {
        rules: vec![RuleConfig {
            name: "emails".into(),
            key: None,
            value: Some(Regex::new(r"\S+@\S+").unwrap()),
            action: Action::Hash,
        }],
        hash_key: [8; 32],
        ..Default::default()
    });
    assert_ne!(other_key.value("user", "ann@example.com").unwrap(), first);
    assert_eq!(
        redactor.value("db.password", "hunter2").as_deref(),
        Some("***")
    );
    assert_eq!(redactor.value("support.card", "4111 1111 1111 1111"), None);
    let counts: BTreeMap<String, u64> = redactor.counts().into_iter().collect();
    assert_eq!(counts["emails"], 2);
    assert_eq!(counts["passwords"], 1);
}

#[test]
fn spans_and_logs_are_marked_with_how_many_values_went() {
    let redactor = builtin();
    let mut span = OtlpSpan {
        name: "charge 4111111111111111".into(),
        attributes: vec![
            KeyValue {
                key: "card".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::IntValue(4_111_111_111_111_111)),
                }),
                ..Default::default()
            },
            KeyValue {
                key: "http.route".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue("/pay".into())),
                }),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    assert_eq!(redactor.span(&mut span), 2);
    assert_eq!(span.name, "charge REDACTED");
    let count = span
        .attributes
        .iter()
        .find(|attribute| attribute.key == COUNT_ATTRIBUTE)
        .unwrap();
    assert_eq!(
        count.value.as_ref().unwrap().value,
        Some(any_value::Value::IntValue(2))
    );
    let mut record = LogRecord {
        message: "login with Bearer abcdefgh12345".into(),
        attributes: [(
            "user".to_owned(),
            serde_json::json!({"card": "5555 5555 5555 4444", "name": "ann"}),
        )]
        .into(),
        ..LogRecord::default()
    };
    assert_eq!(redactor.log(&mut record), 2);
    assert_eq!(record.message, "login with Bearer REDACTED");
    assert_eq!(record.attributes["user"]["card"], REDACTED);
    assert_eq!(record.attributes["user"]["name"], "ann");
    assert_eq!(record.attributes[COUNT_ATTRIBUTE], 2);
}

#[test]
fn digit_runs_count_digits_with_single_separators() {
    assert!(has_digit_run(b"x4111 1111 1111y", 12));
    assert!(has_digit_run(b"1-2-3-4-5-6-7-8-9-0-1-2", 12));
    assert!(has_digit_run(b"\x00\x0912345678901234", 12));
    assert!(!has_digit_run(b"12345678901", 12));
    assert!(!has_digit_run(b"123456  789012", 12));
    assert!(!has_digit_run(b"123456--789012", 12));
    assert!(!has_digit_run(b"", 12));
}

/// The screen lower-cases a window at a time; a literal across a window's end is still
/// found, wherever it straddles it.
#[test]
fn literals_across_the_screens_windows_are_found() {
    let redactor = builtin();
    let literal = b"ElasticSearch.Body";
    assert!(literal.len() >= LONGEST_SCREEN_LITERAL);
    for window in [
        SCREEN_WINDOW,
        2 * SCREEN_WINDOW - (LONGEST_SCREEN_LITERAL - 1),
    ] {
        for cut in 1..literal.len() {
            let mut bytes = vec![b'.'; 3 * SCREEN_WINDOW];
            bytes[window - cut..window - cut + literal.len()].copy_from_slice(literal);
            assert!(!redactor.content_clean(&bytes), "cut at {cut} of {window}");
        }
    }
    assert!(redactor.content_clean(&vec![b'.'; 3 * SCREEN_WINDOW]));
}

proptest! {
    /// Looking only at every `digits`-th byte finds exactly the runs a look at every
    /// byte finds.
    #[test]
    fn probing_for_digit_runs_misses_none(
        bytes in proptest::collection::vec(
            prop_oneof![4 => b'0'..=b'9', 1 => Just(b' '), 1 => Just(b'-'), 1 => Just(b'a'), 1 => Just(0u8)],
            0..120,
        ),
        digits in 1usize..16,
    ) {
        prop_assert_eq!(has_digit_run(&bytes, digits), digit_run_within(&bytes, digits));
    }
}

#[test]
fn luhn_and_prefixes_decide_what_is_a_card() {
    for card in [
        "4111111111111111",
        "5555-5555-5555-4444",
        "378282246310005",
        "6011111111111117",
    ] {
        assert!(is_card_number(card), "{card}");
    }
    for not in ["4111111111111112", "1234567812345670", "9999999999999995"] {
        assert!(!is_card_number(not), "{not}");
    }
}

proptest! {
    /// The byte screen never lets through what the redactor would change: a value the
    /// redactor changes makes the screen say yes for the span holding it.
    #[test]
    fn the_screen_misses_nothing_the_redactor_finds(
        key in prop_oneof![Just("message".to_owned()), Just("db.statement".to_owned()), Just("http.request.header.cookie".to_owned()), "[a-z.]{1,12}"],
        parts in proptest::collection::vec(prop_oneof![
            Just("Bearer abcdefgh1".to_owned()),
            Just("https://u:p@h".to_owned()),
            Just("4111 1111 1111 1111".to_owned()),
            Just("AKIAIOSFODNN7EXAMPLE".to_owned()),
            Just("eyJhbGciOiJIUzI1.eyJzdWIiOiJhbm4iLC.sig".to_owned()),
            Just("?sig=abc".to_owned()),
            Just("ghp_0123456789abcdefghijABCDEFGHIJ012345".to_owned()),
            Just("xoxb-1234567890-1234567890123".to_owned()),
            Just("sk_live_4eC39HqLyjWDarjtT1zdp7dc".to_owned()),
            Just("AIzaSyD-1234567890abcdefghijklmnopqrstu".to_owned()),
            Just("-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----".to_owned()),
            Just("'x'".to_owned()),
            "[ -~]{0,12}",
            "[0-9 ]{0,20}",
        ], 0..5),
    ) {
        static REDACTOR: std::sync::LazyLock<Redactor> = std::sync::LazyLock::new(builtin);
        let redactor = &*REDACTOR;
        let value = parts.concat();
        let span = OtlpSpan {
            attributes: vec![KeyValue {
                key: key.clone(),
                value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.clone())) }),
                ..Default::default()
            }],
            ..Default::default()
        };
        if redactor.value(&key, &value).is_some() {
            prop_assert!(redactor.screen(&span.encode_to_vec()), "{key}={value:?}");
            // Among clean spans, the request's one pass flags it too.
            let clean = OtlpSpan { name: "GET /orders".into(), ..Default::default() };
            let spans = vec![clean.clone(), span, clean];
            let request = opentelemetry_proto::tonic::trace::v1::ScopeSpans { spans, ..Default::default() };
            prop_assert!(!redactor.content_clean(&request.encode_to_vec()), "{key}={value:?}");
        }
    }
}

#[test]
fn long_attribute_values_are_cut_and_flagged() {
    let redactor = Redactor::new(RedactionConfig {
        max_value_bytes: 8,
        ..Default::default()
    });
    let mut record = LogRecord {
        message: "0123456789abcdef".into(),
        attributes: [(
            "stack".to_owned(),
            serde_json::json!(["short", "a long frame line"]),
        )]
        .into(),
        ..LogRecord::default()
    };
    assert_eq!(redactor.log(&mut record), 0, "nothing redacted");
    assert_eq!(
        record.message, "0123456789abcdef",
        "lines have their own limit"
    );
    assert_eq!(
        record.attributes["stack"],
        serde_json::json!(["short", "a long f"])
    );
    assert_eq!(record.attributes[TRUNCATED_ATTRIBUTE], 1);
    assert!(!record.attributes.contains_key(COUNT_ATTRIBUTE));
}

#[test]
fn statements_are_obfuscated_by_their_database_system() {
    let redactor = builtin();
    let statement = |system: Option<&str>, text: &str| {
        let mut attributes = vec![KeyValue {
            key: "db.query.text".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(text.into())),
            }),
            ..Default::default()
        }];
        if let Some(system) = system {
            attributes.push(KeyValue {
                key: "db.system.name".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(system.into())),
                }),
                ..Default::default()
            });
        }
        redactor.attributes(&mut attributes, &mut 0);
        match &attributes[0].value.as_ref().unwrap().value {
            Some(any_value::Value::StringValue(text)) => text.clone(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(statement(Some("redis"), "SET k 'v'"), "SET k ?");
    // The same text as SQL keeps the key (an identifier) and loses the literal.
    assert_eq!(statement(None, "SET k = 'v'"), "SET k = ?");
    assert_eq!(
        statement(
            Some("elasticsearch"),
            r#"{"query":{"term":{"user":"ann"}}}"#
        ),
        r#"{"query":{"term":{"user":"?"}}}"#
    );
    assert_eq!(
        statement(None, r#"{"filter":{"n":1}}"#),
        r#"{"filter":{"n":"?"}}"#
    );
    assert_eq!(
        redactor.value("redis.raw_command", "AUTH pw").as_deref(),
        Some("AUTH ?")
    );
    let counts: BTreeMap<String, u64> = redactor.counts().into_iter().collect();
    assert_eq!((counts["redis"], counts["json"], counts["sql"]), (2, 2, 1));
}

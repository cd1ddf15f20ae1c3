//! Span names that embed ids become bounded labels: UUIDs, long hex runs and numbers are
//! replaced by placeholders before a name is used as a label value
//! (`GET /orders/12345` → `GET /orders/{id}`).

use std::sync::OnceLock;

use regex::Regex;

fn patterns() -> &'static [(Regex, &'static str); 3] {
    static PATTERNS: OnceLock<[(Regex, &'static str); 3]> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        let compile = |pattern: &str| Regex::new(pattern).expect("static regex is valid");
        [
            (
                compile(r"(?i)\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"),
                "{uuid}",
            ),
            (compile(r"(?i)\b[0-9a-f]*[0-9][0-9a-f]*[a-f][0-9a-f]*\b|\b[0-9a-f]*[a-f][0-9a-f]*[0-9][0-9a-f]*\b"), "{hex}"),
            (compile(r"\b\d{2,}\b"), "{id}"),
        ]
    })
}

/// Replace id-like parts of a span name. Hex runs need 12 or more characters to count.
pub fn normalise_span_name(name: &str) -> String {
    let [(uuid, uuid_placeholder), (hex, hex_placeholder), (number, number_placeholder)] =
        patterns();
    let name = uuid.replace_all(name, *uuid_placeholder);
    let name = hex.replace_all(&name, |captures: &regex::Captures| {
        let found = &captures[0];
        if found.len() >= 12 {
            (*hex_placeholder).to_owned()
        } else {
            found.to_owned()
        }
    });
    number.replace_all(&name, *number_placeholder).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_in_span_names_are_replaced() {
        assert_eq!(normalise_span_name("GET /orders/12345"), "GET /orders/{id}");
        assert_eq!(
            normalise_span_name("GET /users/550e8400-e29b-41d4-a716-446655440000/cart"),
            "GET /users/{uuid}/cart"
        );
        assert_eq!(
            normalise_span_name("fetch blob 4bf92f3577b34da6a3ce929d0e0e4736"),
            "fetch blob {hex}"
        );
        assert_eq!(
            normalise_span_name("GET /api/v2/items"),
            "GET /api/v2/items"
        );
        assert_eq!(normalise_span_name("HTTP GET"), "HTTP GET");
        assert_eq!(normalise_span_name("cafe babe"), "cafe babe");
    }
}

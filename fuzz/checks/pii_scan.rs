//! The PII scanner and the redaction round trip on arbitrary UTF-8.
//!
//! Properties: never panics; spans are sorted, disjoint, non-empty and on char boundaries;
//! re-hydrating the redacted text everywhere restores the input exactly; re-hydrating it as an
//! answer (placeholders inside links kept) gives the same text whole or streamed in chunks,
//! and the input exactly when no placeholder stood in a link.

use std::sync::OnceLock;

use edgeroute::privacy::{redact_text, PrivacyConfig, Scanner};

fn scanner() -> Option<&'static Scanner> {
    static SCANNER: OnceLock<Option<Scanner>> = OnceLock::new();
    SCANNER
        .get_or_init(|| Scanner::new(&PrivacyConfig::default()).ok())
        .as_ref()
}

/// Checks one input.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some(scanner) = scanner() else {
        panic!("the built-in detectors do not compile");
    };
    let spans = scanner.scan(text);
    let mut last = 0;
    for s in &spans {
        assert!(s.start >= last, "spans sorted and disjoint");
        assert!(
            s.start < s.end && s.end <= text.len(),
            "span inside the text"
        );
        assert!(text.is_char_boundary(s.start) && text.is_char_boundary(s.end));
        last = s.end;
    }
    // Redaction removes every span and re-hydration restores the text exactly; as an answer
    // (links keep their placeholders), the same whole or streamed in arbitrary chunks.
    let (redacted, rehydrator) = redact_text(text, scanner);
    assert_eq!(rehydrator.rehydrate_everywhere(&redacted), text);
    let whole = rehydrator.rehydrate(&redacted);
    let mut stream = rehydrator.clone();
    let mut shown = String::new();
    let mut rest = redacted.as_str();
    let mut k = 1;
    while !rest.is_empty() {
        let mut cut = k.min(rest.len());
        while !rest.is_char_boundary(cut) {
            cut += 1;
        }
        shown.push_str(&stream.push(&rest[..cut]));
        rest = &rest[cut..];
        k = k % 7 + 1;
    }
    shown.push_str(&stream.finish());
    assert_eq!(shown, whole, "streamed and whole re-hydration differ");
    if stream.withheld() == 0 {
        assert_eq!(whole, text);
    } else {
        assert_ne!(
            whole, text,
            "placeholders counted as withheld, but none was"
        );
    }
}

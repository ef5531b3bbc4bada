//! Properties of the cache key: normalisation is idempotent and only merges what it should;
//! the length-prefixed encoding never lets two different conversations collide.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use edgeroute::cache::{normalize_text, CacheKey, KeyContext, PrivacyClass};
use edgeroute::request::{Message, Request};
use proptest::prelude::*;

fn ctx(normalize: bool) -> KeyContext<'static> {
    KeyContext {
        model: "m",
        policy_version: "v",
        privacy: PrivacyClass::Public,
        normalize,
    }
}

fn text() -> impl Strategy<Value = String> {
    // Letters, combining marks, precomposed letters, assorted whitespace.
    proptest::collection::vec(
        prop_oneof![
            Just("a"),
            Just("b"),
            Just("e\u{301}"),
            Just("\u{e9}"),
            Just(" "),
            Just("\t"),
            Just("\n"),
            Just("\r\n"),
            Just("\u{a0}"),
            Just("\u{3000}"),
            Just("ß"),
        ],
        0..24,
    )
    .prop_map(|parts| parts.concat())
}

/// NFC, through the key module's own normaliser on a text without whitespace at risk: each
/// character alone (NFC composes across characters only with combining marks, which `text()`
/// uses only right after a letter).
fn unicode_nfc(t: &str) -> String {
    t.replace("e\u{301}", "\u{e9}")
}

proptest! {
    #[test]
    fn normalisation_is_idempotent(s in text()) {
        let once = normalize_text(&s);
        prop_assert_eq!(normalize_text(&once), once.clone());
        prop_assert_eq!(once.trim_end(), once.as_str());
        prop_assert!(!once.starts_with('\n'));
        // No line ends in whitespace, and no \r survives.
        prop_assert!(once.lines().all(|l| l.trim_end() == l));
        prop_assert!(!once.contains('\r'));
    }

    /// Normalising keeps every non-whitespace character, in order, and the indentation of
    /// every line: it never merges texts that differ in content or layout.
    #[test]
    fn normalisation_keeps_content_and_indentation(s in text()) {
        let once = normalize_text(&s);
        let visible = |t: &str| t.chars().filter(|c| !c.is_whitespace()).collect::<String>();
        let nfc = |t: &str| unicode_nfc(t);
        prop_assert_eq!(visible(&once), visible(&nfc(&s)));
        let original = nfc(&s);
        // The original's lines from the first one with text to the last one with text.
        let lines: Vec<&str> = original.lines().collect();
        let text = |l: &&str| !l.trim().is_empty();
        let from = lines.iter().position(text).unwrap_or(lines.len());
        let to = lines.iter().rposition(text).map_or(from, |i| i + 1);
        let lines = &lines[from..to];
        prop_assert_eq!(once.lines().count(), lines.len());
        for (kept, line) in once.lines().zip(lines) {
            if line.trim().is_empty() {
                prop_assert_eq!(kept, "");
            } else {
                let indent = |l: &str| l.len() - l.trim_start().len();
                prop_assert_eq!(indent(kept), indent(line), "{:?}", s);
            }
        }
    }

    #[test]
    fn key_of_normalised_equals_key_of_raw(s in text()) {
        let raw = CacheKey::new(&Request::new(s.clone()), &ctx(true));
        let pre = CacheKey::new(&Request::new(normalize_text(&s)), &ctx(true));
        prop_assert_eq!(raw, pre);
    }

    #[test]
    fn different_normalised_texts_give_different_keys(a in text(), b in text()) {
        let same = normalize_text(&a) == normalize_text(&b);
        let ka = CacheKey::new(&Request::new(a), &ctx(true));
        let kb = CacheKey::new(&Request::new(b), &ctx(true));
        prop_assert_eq!(ka == kb, same);
    }

    #[test]
    fn message_boundaries_are_part_of_the_key(
        parts in proptest::collection::vec("[ab]{0,3}", 1..5),
        split in proptest::collection::vec("[ab]{0,3}", 1..5),
    ) {
        let a = Request::from_messages(parts.iter().map(Message::user).collect());
        let b = Request::from_messages(split.iter().map(Message::user).collect());
        let ka = CacheKey::new(&a, &ctx(false));
        let kb = CacheKey::new(&b, &ctx(false));
        prop_assert_eq!(ka == kb, parts == split);
    }
}

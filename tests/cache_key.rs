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
            Just("\u{a0}"),
            Just("\u{3000}"),
            Just("ß"),
        ],
        0..24,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #[test]
    fn normalisation_is_idempotent(s in text()) {
        let once = normalize_text(&s);
        prop_assert_eq!(normalize_text(&once), once.clone());
        prop_assert!(!once.starts_with(' ') && !once.ends_with(' '));
        prop_assert!(!once.contains("  "));
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

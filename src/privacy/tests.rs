//! Unit tests for the scanner: real detectors, one behaviour per test.

use super::*;

fn scanner() -> Scanner {
    Scanner::new(&PrivacyConfig::default()).unwrap()
}

/// (kind, matched text) pairs, for readable assertions.
fn found(text: &str) -> Vec<(String, String)> {
    scanner()
        .scan(text)
        .into_iter()
        .map(|s| (s.kind.clone(), text[s.start..s.end].to_string()))
        .collect()
}

#[track_caller]
fn one(text: &str, kind: &str, value: &str) {
    exactly(text, &[(kind, value)]);
}

/// `text` holds exactly these (kind, matched text) spans, in order.
#[track_caller]
fn exactly(text: &str, spans: &[(&str, &str)]) {
    let want: Vec<(String, String)> = spans
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(found(text), want, "in {text:?}");
}

#[track_caller]
fn none(text: &str) {
    assert_eq!(found(text), vec![], "in {text:?}");
}

#[test]
fn emails() {
    one(
        "écrivez à jöhn <john.doe+tag@mail.example.co.uk>.",
        "email",
        "john.doe+tag@mail.example.co.uk",
    );
    one("mailto:ops@corp.io", "email", "ops@corp.io");
    one(
        "Grüße — write to jörg@müller.de today",
        "email",
        "jörg@müller.de",
    );
    one(
        "请发邮件到zhang.wei@example.cn。",
        "email",
        "zhang.wei@example.cn",
    );
    none("ping me @here or at user@localhost");
}

#[test]
fn phones_national_and_international() {
    for p in [
        "+1 (415) 555-0132",
        "(415) 555-0132",
        "415-555-0132",
        "415.555.0132",
        "1-800-555-0199",
        "+44 20 7946 0958",
        "+44 (0)20 7946 0958",
        "020 7946 0958",
        "07700 900123",
        "+49 30 12345678",
        "030 12345678",
        "0151 23456789",
        "(030) 1234567",
        "+33 1 23 45 67 89",
        "01 23 45 67 89",
        "06.12.34.56.78",
        "+14155550132",
    ] {
        one(&format!("Tél / call: {p} today"), "phone", p);
    }
}

#[track_caller]
fn no_phone(text: &str) {
    let phones: Vec<_> = found(text)
        .into_iter()
        .filter(|(k, _)| k == "phone")
        .collect();
    assert!(phones.is_empty(), "in {text:?}: {phones:?}");
}

#[test]
fn phones_not_fooled() {
    no_phone("server 192.168.1.20 answered at 2024-03-15 10:30:00");
    no_phone("upgrade to 10.4.1 (build 20240315) from 3.2.1.4567");
    no_phone("Order #4155550132 shipped, invoice 2024-000123, ticket 555-0132");
    no_phone("total 1,234,567.89 EUR on 15.03.2024 or 03/15/2024 12:45");
    no_phone("uuid 550e8400-e29b-41d4-a716-446655440000 sha 9f86d081884c7d659a2feaa0c55ad015");
}

#[test]
fn phone_digits_inside_iban_or_card_are_not_phones() {
    none("IBAN DE89 3704 0044 0532 0130 01 (typo)");
    none("card 4111 1111 1111 1112 declined");
    one(
        "IBAN DE89 3704 0044 0532 0130 00",
        "iban",
        "DE89 3704 0044 0532 0130 00",
    );
}

#[test]
fn credit_cards() {
    one(
        "Visa 4111 1111 1111 1111 exp 12/27",
        "credit_card",
        "4111 1111 1111 1111",
    );
    one(
        "mc: 5555-5555-5555-4444",
        "credit_card",
        "5555-5555-5555-4444",
    );
    one("mc2 2221000000000009.", "credit_card", "2221000000000009");
    one("amex 3782 822463 10005", "credit_card", "3782 822463 10005");
    one(
        "card 4111 1111 1111 1111 12/25",
        "credit_card",
        "4111 1111 1111 1111",
    );
    // Maestro also issues 12-digit cards; 12 digits count only next to a card label.
    one(
        "my Maestro card 5018 1234 5673, thanks",
        "credit_card",
        "5018 1234 5673",
    );
    one("debit card: 675912345674", "credit_card", "675912345674");
    none("order 5018 1234 5673 shipped");
    none("debit card: 411111111113");
    none("not a card 4111 1111 1111 1112");
    none("luhn-valid but no issuer 1234 5678 1234 5670");
    none("mixed separators 4111-1111 1111-1111");
}

#[test]
fn ibans() {
    one(
        "pay to GB82WEST12345698765432 today",
        "iban",
        "GB82WEST12345698765432",
    );
    one(
        "IBAN: FR14 2004 1010 0505 0001 3M02 606 merci",
        "iban",
        "FR14 2004 1010 0505 0001 3M02 606",
    );
    one("NL91ABNA0417164300", "iban", "NL91ABNA0417164300");
    // Typed in lower case: same checks, same span.
    one(
        "my iban is gb82 west 1234 5698 7654 32, thanks",
        "iban",
        "gb82 west 1234 5698 7654 32",
    );
    // Lower case that fails mod-97 (last digit changed) is not an IBAN.
    none("my iban is gb82 west 1234 5698 7654 33, thanks");
    none("GB82WEST12345698765431 and DE00 1234 5678 9012 3456 78");
}

#[test]
fn ssns() {
    one("SSN 536-22-1234.", "us_ssn", "536-22-1234");
    one("social security number: 536221234", "us_ssn", "536221234");
    none("ids 666-12-3456 000-12-3456 912-34-5678 536-00-1234 536-22-0000");
    none("part 536221234 shipped");
}

#[test]
fn ip_addresses() {
    one("from 10.0.0.254:8080 ok", "ip_address", "10.0.0.254");
    one(
        "addr 2001:db8::8a2e:370:7334 up",
        "ip_address",
        "2001:db8::8a2e:370:7334",
    );
    one("[fe80::1]:443", "ip_address", "fe80::1");
    one(
        "mapped ::ffff:192.0.2.128 in",
        "ip_address",
        "::ffff:192.0.2.128",
    );
    none("256.1.1.1 and 1.2.3.4.5 and version 1.2.3.4 and std::io::Result at 12:30:45");
}

#[test]
fn secrets() {
    for s in [
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_1234567890abcdefghijABCDEFGHIJ123456",
        "sk-proj-4f9Qa7Lm2Xc8Vb1Nz6Rt3Yp5Wd0Ke",
        "xoxb-2048-11002233-AbCdEfGhIjKlMnOp",
        "AIzaSyD-1234567890abcdefghijklmnopqrstu",
        "https://hooks.slack.com/services/T0123ABCD/B0456EFGH/aBcDeFgHiJkLmNoPqRsTuVwX",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    ] {
        one(&format!("key: {s} done"), "secret", s);
    }
    one("DB_PASSWORD=\"Xk9#mP2vL!q7\"\n", "secret", "Xk9#mP2vL!q7");
    one(
        "my password is Summer2024!z, don't tell",
        "secret",
        "Summer2024!z",
    );
    let pem =
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA1x\nabc==\n-----END RSA PRIVATE KEY-----";
    one(&format!("key:\n{pem}\nthanks"), "secret", pem);
    one(
        "Authorization: Basic dXNlcjpwYXNzd29yZA==",
        "secret",
        "dXNlcjpwYXNzd29yZA==",
    );
    let pgp = "-----BEGIN PGP PRIVATE KEY BLOCK-----\nlQOYBF0x\n=abcd\n-----END PGP PRIVATE KEY BLOCK-----";
    one(pgp, "secret", pgp);
    none("password: ${DB_PASSWORD} token = process.env.TOKEN max_tokens: 1024");
    none("api_key: YOUR_API_KEY, secret = os.environ['X'], password = getpass(), basic knowledge");
    none("the sk-learn-pipeline-examples repo; your password is incorrect");
}

/// Custom patterns and keywords are not hidden by invisible characters or other scripts'
/// digits either, and a pattern that names non-ASCII characters itself still matches them.
#[test]
fn custom_patterns_and_keywords_see_through_invisible_characters_and_other_digits() {
    let cfg = PrivacyConfig {
        kinds: vec![],
        patterns: vec![
            CustomPattern {
                kind: "employee_id".into(),
                regex: r"EMP-[0-9]{6}".into(),
            },
            CustomPattern {
                kind: "arabic_ref".into(),
                regex: r"مرجع [٠-٩]{4}".into(),
            },
        ],
        keywords: vec![KeywordList {
            kind: "project".into(),
            words: vec!["Bluebird".into(), "red falcon".into()],
        }],
    };
    let s = Scanner::new(&cfg).unwrap();
    let found = |text: &str| -> Vec<(String, String)> {
        s.scan(text)
            .into_iter()
            .map(|x| (x.kind, text[x.start..x.end].to_string()))
            .collect()
    };
    let pair = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
    assert_eq!(
        found("id EMP-\u{663}\u{664}\u{665}\u{666}\u{667}\u{668} ok"),
        pair(
            "employee_id",
            "EMP-\u{663}\u{664}\u{665}\u{666}\u{667}\u{668}"
        )
    );
    assert_eq!(
        found("id EMP-12\u{200b}3456 ok"),
        pair("employee_id", "EMP-12\u{200b}3456")
    );
    assert_eq!(
        found("on Blue\u{ad}bird today"),
        pair("project", "Blue\u{ad}bird")
    );
    assert_eq!(
        found("the red\u{200d} falcon"),
        pair("project", "red\u{200d} falcon")
    );
    assert_eq!(found("انظر مرجع ١٢٣٤ الآن"), pair("arabic_ref", "مرجع ١٢٣٤"));
    // Arabic decimal and thousands separators read as `.` and `,` for the built-in detectors.
    let ip = Scanner::new(&PrivacyConfig::default()).unwrap();
    let text = "الخادم \u{661}\u{669}\u{662}\u{66b}\u{661}\u{666}\u{668}\u{66b}\u{660}\u{66b}\u{661}\u{660}";
    let spans = ip.scan(text);
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert_eq!(spans[0].kind, "ip_address");
}

#[test]
fn custom_patterns_and_keywords() {
    let cfg = PrivacyConfig {
        kinds: vec!["email".into()],
        patterns: vec![CustomPattern {
            kind: "employee_id".into(),
            regex: r"EMP-\d{6}".into(),
        }],
        keywords: vec![KeywordList {
            kind: "project".into(),
            words: vec!["Bluebird".into(), "ärger".into(), "C++".into()],
        }],
    };
    let s = Scanner::new(&cfg).unwrap();
    let text =
        "EMP-123456 on project bluebird (not bluebirds) in c++, ÄRGER mail a@b.co, 415-555-0132";
    let got: Vec<_> = s
        .scan(text)
        .into_iter()
        .map(|x| (x.kind, text[x.start..x.end].to_string()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("employee_id".into(), "EMP-123456".into()),
            ("project".into(), "bluebird".into()),
            ("project".into(), "c++".into()),
            ("project".into(), "ÄRGER".into()),
            ("email".into(), "a@b.co".into()),
        ]
    );
}

#[test]
fn invalid_custom_regex_names_the_kind() {
    let cfg = PrivacyConfig {
        patterns: vec![CustomPattern {
            kind: "badge".into(),
            regex: "(unclosed".into(),
        }],
        ..PrivacyConfig::default()
    };
    let err = Scanner::new(&cfg).unwrap_err().to_string();
    assert!(err.contains("badge") && err.contains("unclosed"), "{err}");
    let cfg = PrivacyConfig {
        kinds: vec!["emial".into()],
        ..PrivacyConfig::default()
    };
    assert!(Scanner::new(&cfg)
        .unwrap_err()
        .to_string()
        .contains("emial"));
}

#[test]
fn disabled_kinds_are_not_reported() {
    let cfg = PrivacyConfig {
        kinds: vec!["phone".into()],
        ..PrivacyConfig::default()
    };
    let s = Scanner::new(&cfg).unwrap();
    let spans = s.scan("a@b.co 415-555-0132, 4111 1111 1111 1111");
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].kind, "phone");
}

#[test]
fn offsets_are_utf8_bytes_sorted_and_disjoint() {
    let text = "日本語のテキスト: a@b.co と 415-555-0132";
    let spans = scanner().scan(text);
    assert_eq!(spans.len(), 2);
    assert_eq!(&text[spans[0].start..spans[0].end], "a@b.co");
    assert!(spans[0].start > text[..spans[0].start].chars().count());
    assert!(spans[0].end <= spans[1].start);
}

#[test]
fn debug_never_shows_text() {
    let text = "a@b.co";
    let s = scanner();
    let spans = s.scan(text);
    let dbg = format!("{spans:?} {s:?}");
    assert!(!dbg.contains("a@b.co"), "{dbg}");
}

#[test]
fn scanner_is_send_sync_clone() {
    fn assert_traits<T: Send + Sync + Clone>() {}
    assert_traits::<Scanner>();
    assert_traits::<Rehydrator>();
}

#[test]
fn labels_decide_ambiguous_numbers() {
    one(
        "Customer service: 1-800-555-0199",
        "phone",
        "1-800-555-0199",
    );
    one("tel 4155550132", "phone", "4155550132");
    none("order number 4155550132");
    none("SKU 415-555-0132, part 415-555-0133");
    none("upgrade to 1.2.3.4 today");
}

#[test]
fn csv_rows_keep_fields_apart() {
    let text = "John,Doe,john@x.com,555-123-4567,123-45-6789,34,4111111111111111";
    let kinds: Vec<String> = found(text).into_iter().map(|(k, _)| k).collect();
    assert_eq!(kinds, ["email", "phone", "us_ssn", "credit_card"]);
}

#[test]
fn non_ascii_right_before_pii() {
    one("电话：+86 138 0013 8000", "phone", "+86 138 0013 8000");
    one("Téléphone:0612345678", "phone", "0612345678");
    one(
        "Карта 4111 1111 1111 1111",
        "credit_card",
        "4111 1111 1111 1111",
    );
    one("メール：taro@example.jp", "email", "taro@example.jp");
    one(
        "IBAN：DE89370400440532013000",
        "iban",
        "DE89370400440532013000",
    );
    one("SSN：536-22-1234", "us_ssn", "536-22-1234");
    one("IP地址192.168.1.1", "ip_address", "192.168.1.1");
    one("Passwort:Geheim123!", "secret", "Geheim123!");
}

/// French typography puts a no-break space before a colon; people paste values after one.
#[test]
fn assigned_secrets_after_unicode_spaces() {
    one("mot de passe\u{a0}: Geheim123!", "secret", "Geheim123!");
    one("my password is\u{a0}2dSAGckA&73", "secret", "2dSAGckA&73");
    one(
        "password\u{202f}=\u{202f}Xk9#mP2vL!q7",
        "secret",
        "Xk9#mP2vL!q7",
    );
    one(
        "Authorization: Bearer\u{a0}dXNlcjpwYXNzd29yZA9x",
        "secret",
        "dXNlcjpwYXNzd29yZA9x",
    );
}

/// Numbers written with Unicode spaces or dashes (French groups IBANs, cards and phones with
/// no-break or narrow no-break spaces; word processors turn `-` into en dashes or non-breaking
/// hyphens) are found like their ASCII spelling, and the span covers the original characters.
#[test]
fn unicode_separators_in_numbers() {
    let text = "Mon IBAN est FR14\u{a0}2004\u{a0}1010\u{a0}0505\u{a0}0001\u{a0}3M02\u{a0}606, \
                ma carte 4111\u{a0}1111\u{a0}1111\u{a0}1111";
    exactly(
        text,
        &[
            (
                "iban",
                "FR14\u{a0}2004\u{a0}1010\u{a0}0505\u{a0}0001\u{a0}3M02\u{a0}606",
            ),
            ("credit_card", "4111\u{a0}1111\u{a0}1111\u{a0}1111"),
        ],
    );
    for sep in [
        '\u{a0}', '\u{202f}', '\u{2007}', '\u{2009}', '\u{2002}', '\u{3000}',
    ] {
        let card = ["4111", "1111", "1111", "1111"].join(&sep.to_string());
        one(&format!("carte : {card}."), "credit_card", &card);
        let iban = format!("DE89{sep}3704{sep}0044{sep}0532{sep}0130{sep}00");
        one(&format!("IBAN {iban} merci"), "iban", &iban);
        let phone = format!("+33{sep}6{sep}12{sep}34{sep}56{sep}78");
        one(&format!("Tél. {phone}"), "phone", &phone);
        let national = format!("06{sep}12{sep}34{sep}56{sep}78");
        one(&format!("portable : {national}"), "phone", &national);
    }
    for dash in ['\u{2010}', '\u{2011}', '\u{2012}', '\u{2013}', '\u{2212}'] {
        let ssn = format!("123{dash}45{dash}6789");
        one(&format!("SSN {ssn}"), "us_ssn", &ssn);
        let card = format!("5555{dash}5555{dash}5555{dash}4444");
        one(&format!("mc: {card}"), "credit_card", &card);
        let phone = format!("415{dash}555{dash}0132");
        one(&format!("call {phone} now"), "phone", &phone);
    }
    one(
        "+44\u{a0}20\u{a0}7946\u{a0}0958",
        "phone",
        "+44\u{a0}20\u{a0}7946\u{a0}0958",
    );
    one(
        "+44 (0)20\u{202f}7946\u{202f}0958",
        "phone",
        "+44 (0)20\u{202f}7946\u{202f}0958",
    );
    one(
        "SSN 536\u{a0}22\u{a0}1234",
        "us_ssn",
        "536\u{a0}22\u{a0}1234",
    );
    // Doubled (or mixed) spaces between digit groups.
    one(
        "card 4111  1111  1111  1111 exp",
        "credit_card",
        "4111  1111  1111  1111",
    );
    one(
        "card 4111 \u{a0}1111\u{a0} 1111   1111 exp",
        "credit_card",
        "4111 \u{a0}1111\u{a0} 1111   1111",
    );
    one(
        "IBAN GB82  WEST  1234  5698  7654  32",
        "iban",
        "GB82  WEST  1234  5698  7654  32",
    );
    one("tel 020  7946  0958", "phone", "020  7946  0958");
    // Multi-byte text around the number: offsets stay bytes of the original text.
    one(
        "Überweisung an DE89\u{202f}3704\u{202f}0044\u{202f}0532\u{202f}0130\u{202f}00 — danke",
        "iban",
        "DE89\u{202f}3704\u{202f}0044\u{202f}0532\u{202f}0130\u{202f}00",
    );
    // The same checks still reject what ASCII separators would not make PII.
    none("pages 10\u{2013}20, prix 1\u{202f}234,56\u{a0}€, not a card 4111\u{a0}1111\u{a0}1111\u{a0}1112");
    none("mixed separators 4111\u{2013}1111\u{a0}1111\u{2013}1111");
    none("ids 666\u{2013}12\u{2013}3456");
}

#[test]
fn unicode_separators_redact_and_rehydrate() {
    let text = "IBAN FR14\u{a0}2004\u{a0}1010\u{a0}0505\u{a0}0001\u{a0}3M02\u{a0}606 et SSN 536\u{2013}22\u{2013}1234";
    let (red, rh) = redact_text(text, &scanner());
    assert_eq!(red, "IBAN <IBAN_1> et SSN <US_SSN_1>");
    assert_eq!(rh.rehydrate(&red), text);
}

#[test]
fn ipv4_with_prefix_length() {
    one("route 10.0.0.1/24 via eth0", "ip_address", "10.0.0.1");
    one(
        "allow 203.0.113.7/32, then deny",
        "ip_address",
        "203.0.113.7",
    );
    one("subnet 192.168.1.0/24.", "ip_address", "192.168.1.0");
    one("net 2001:db8::/64 up", "ip_address", "2001:db8::");
    // Not a prefix length: too large, more digits or another field after it.
    none("see 10.0.0.1/33 and 10.0.0.1/240 and 10.0.0.1/24/7 and 10.0.0.1/2.5");
}

#[test]
fn keyword_phrases_match_across_any_whitespace() {
    let cfg = PrivacyConfig {
        kinds: vec![],
        patterns: vec![],
        keywords: vec![KeywordList {
            kind: "project".into(),
            words: vec!["project x".into(), " red  falcon ".into()],
        }],
    };
    let s = Scanner::new(&cfg).unwrap();
    for text in [
        "about Project   X today",
        "about project\nx today",
        "about project\u{a0}x today",
        "about PROJECT\t\u{202f}X today",
        "the red falcon",
        "the Red\r\nFalcon",
    ] {
        let spans = s.scan(text);
        assert_eq!(spans.len(), 1, "{text:?}");
        let got = spans[0].text(text).unwrap();
        assert!(got.starts_with(['p', 'P', 'r', 'R']), "{text:?}: {got:?}");
        assert!(got.ends_with(['x', 'X', 'n', 'N']), "{text:?}: {got:?}");
    }
    for text in ["projectx", "project xy", "project - x", "redfalcon"] {
        assert!(s.scan(text).is_empty(), "{text:?}");
    }
}

/// Digits of other scripts are read as the numbers they write, next to ASCII digits too.
#[test]
fn other_scripts_digits_are_read_as_numbers() {
    // Arabic-Indic: a US phone number, with a right-to-left mark before it as Arabic text has.
    one(
        "اتصل على \u{200f}\u{664}\u{661}\u{665}-\u{665}\u{665}\u{665}-\u{660}\u{661}\u{663}\u{662} شكرا",
        "phone",
        "\u{664}\u{661}\u{665}-\u{665}\u{665}\u{665}-\u{660}\u{661}\u{663}\u{662}",
    );
    // Persian (Extended Arabic-Indic) card number, and Devanagari SSN with its label.
    one(
        "کارت \u{6f4}\u{6f1}\u{6f1}\u{6f1} \u{6f1}\u{6f1}\u{6f1}\u{6f1} \u{6f1}\u{6f1}\u{6f1}\u{6f1} \u{6f1}\u{6f1}\u{6f1}\u{6f1}",
        "credit_card",
        "\u{6f4}\u{6f1}\u{6f1}\u{6f1} \u{6f1}\u{6f1}\u{6f1}\u{6f1} \u{6f1}\u{6f1}\u{6f1}\u{6f1} \u{6f1}\u{6f1}\u{6f1}\u{6f1}",
    );
    one(
        "SSN \u{96b}\u{969}\u{96c}-\u{968}\u{968}-\u{967}\u{968}\u{969}\u{96a}",
        "us_ssn",
        "\u{96b}\u{969}\u{96c}-\u{968}\u{968}-\u{967}\u{968}\u{969}\u{96a}",
    );
    // Mixed with ASCII digits: one number.
    one(
        "order 4111 1111 \u{661}\u{661}\u{661}\u{661} 1111",
        "credit_card",
        "4111 1111 \u{661}\u{661}\u{661}\u{661} 1111",
    );
    // Mathematical bold digits, as filter-evading text writes them.
    one(
        "card \u{1d7d2}\u{1d7cf}\u{1d7cf}\u{1d7cf} 1111 1111 1111",
        "credit_card",
        "\u{1d7d2}\u{1d7cf}\u{1d7cf}\u{1d7cf} 1111 1111 1111",
    );
    // Numbers of other scripts that are not PII stay clean.
    none("الصفحة \u{661}\u{662} من \u{663}\u{660}، سنة \u{662}\u{660}\u{662}\u{664}");
}

/// Invisible characters inside a number, an address or a label do not hide it.
#[test]
fn invisible_characters_do_not_hide_pii() {
    one(
        "card 4111\u{200b}1111\u{200b}1111\u{200b}1111 ok",
        "credit_card",
        "4111\u{200b}1111\u{200b}1111\u{200b}1111",
    );
    one(
        "IBAN FR14\u{ad}2004\u{ad}1010\u{ad}0505\u{ad}0001\u{ad}3M02\u{ad}606",
        "iban",
        "FR14\u{ad}2004\u{ad}1010\u{ad}0505\u{ad}0001\u{ad}3M02\u{ad}606",
    );
    one(
        "mail ann\u{2060}@exam\u{200d}ple.com now",
        "email",
        "ann\u{2060}@exam\u{200d}ple.com",
    );
    one("pass\u{ad}word: Tr0ub4dor&3xyz", "secret", "Tr0ub4dor&3xyz");
    one("\u{feff}SSN 536-22-1234", "us_ssn", "536-22-1234");
    // An em dash between digits, as "--" autocorrects.
    one(
        "call (415) 555\u{2014}0132 today",
        "phone",
        "(415) 555\u{2014}0132",
    );
}

#[test]
fn fullwidth_digits_and_letters_from_cjk_input_methods() {
    one(
        "カード番号は４１１１　１１１１　１１１１　１１１１です",
        "credit_card",
        "４１１１　１１１１　１１１１　１１１１",
    );
    one(
        "口座 ＤＥ８９ ３７０４ ００４４ ０５３２ ０１３０ ００",
        "iban",
        "ＤＥ８９ ３７０４ ００４４ ０５３２ ０１３０ ００",
    );
    one(
        "メール：ａｎｎ＠ｅｘａｍｐｌｅ．ｃｏｍ",
        "email",
        "ａｎｎ＠ｅｘａｍｐｌｅ．ｃｏｍ",
    );
    one(
        "SSN ５３６－２２－１２３４",
        "us_ssn",
        "５３６－２２－１２３４",
    );
    // Fullwidth text that is not PII stays clean, and mixed widths are one number.
    none("第１２３回 ＡＢＣ大会");
    one(
        "card 4111 1111 １１１１ 1111",
        "credit_card",
        "4111 1111 １１１１ 1111",
    );
}

/// Numbers written with dots or slashes between their groups (cards), dashes (IBANs) or dots
/// (SSNs, next to a label), as forms and other countries write them; one separator throughout.
#[test]
fn numbers_with_dots_slashes_and_dashes() {
    one(
        "card 5500.0000.0000.0004",
        "credit_card",
        "5500.0000.0000.0004",
    );
    one(
        "card 5500/0000/0000/0004",
        "credit_card",
        "5500/0000/0000/0004",
    );
    one(
        "Charge my visa card 4111.1111.1111.1111 today",
        "credit_card",
        "4111.1111.1111.1111",
    );
    one(
        "IBAN DE89-3704-0044-0532-0130-00",
        "iban",
        "DE89-3704-0044-0532-0130-00",
    );
    one("my SSN is 536.22.1234", "us_ssn", "536.22.1234");
    // Mixed separators, a failed checksum, and dotted digits without a label are not these.
    none("card 5500.0000/0000.0004");
    none("card 5500.0000.0000.0005");
    none("IBAN DE89-3704-0044-0532-0130-01");
    none("reference 536.22.1234");
    none("pi is 3.141592653589793238 and the build 2024/01/15");
    // The expiry after a card is still another field.
    one(
        "4111/1111/1111/1111 12/25",
        "credit_card",
        "4111/1111/1111/1111",
    );
}

/// A "not a phone" label must be a whole word: names and words that merely start like one
/// (`partner`, `Vincent`, `Casey`, `Ida`, `Portland`) do not hide the number after them.
#[test]
fn negative_labels_are_whole_words() {
    for text in [
        "Call my partner at 415-555-0132",
        "Vincent: 415-555-0132",
        "VINCENT 415-555-0132",
        "ask Casey, 415-555-0132",
        "Ida: 415-555-0132",
        "Portland office 415-555-0132",
        "Lottie (415) 555-0132",
        "Modelled by Zipporah 415.555.0132",
    ] {
        one(text, "phone", &text[text.find(['4', '(']).unwrap()..]);
    }
    // An address after a word that starts like a version word.
    one("DNS updated: 203.0.113.7", "ip_address", "203.0.113.7");
    one("IP updated to 203.0.113.7", "ip_address", "203.0.113.7");
    // Whole words still count, with plurals, compounds, `_` and camelCase after them, and
    // the German stems still start compounds.
    for text in [
        "order_id: 415-555-0132",
        "orderId 415-555-0132",
        "Order numbers 415-555-0132",
        "IDs: 415-555-0132",
        "Parts 415-555-0132 and 415-555-0133",
        "case_no 415-555-0133",
        "Ticketnummer 415-555-0132",
        "Bestellnummer: 415-555-0132",
        "Rechnungen 415-555-0132",
        "part no. 415-555-0132",
    ] {
        no_phone(text);
    }
    none("update 1.2.3.4, updates: 10.4.1.2, firmware 10.1.2.3");
}

/// Passwords people choose (words, a capital, a year) are secrets, even when they contain a
/// literal such as `true` or `none`, or look CamelCase.
#[test]
fn human_passwords_are_secrets() {
    one("my password is BlueSky2024", "secret", "BlueSky2024");
    one("password: MyDog2015", "secret", "MyDog2015");
    one("pwd=HelloWorld123", "secret", "HelloWorld123");
    one("password: TrueBlue#42", "secret", "TrueBlue#42");
    one("password: Nonexistent9!", "secret", "Nonexistent9!");
    one("Passwort: Xk9(mP2v", "secret", "Xk9(mP2v");
    // Digits standing for letters inside a word: CamelCase, but not a type's digits.
    for pw in [
        "MyP4ssW0rd",
        "P4ssW0rd",
        "SuperS3cret",
        "HelloW0rld",
        "AbC123xYz789QwE",
    ] {
        one(&format!("password: {pw}"), "secret", pw);
    }
    one("api_key=AbC123xYz789QwE", "secret", "AbC123xYz789QwE");
    // A type name stands only unquoted after a `:`: after `=` or ` is `, or quoted, CamelCase
    // with digits is a password.
    for pw in [
        "BlueSky8",
        "HappyDog16",
        "MyPass1Word",
        "LetMeIn1Now",
        "SocketAddrV4",
    ] {
        one(&format!("my password is {pw}"), "secret", pw);
        one(&format!("PASSWORD={pw}"), "secret", pw);
        one(&format!("{{\"password\": \"{pw}\"}}"), "secret", pw);
    }
    // Code still is not.
    none("password: Option<String>, token: Vec<u8>, secret: Arc<Mutex<Token>>");
    none("tokens: AtomicU64, secret: HmacSha256, api_key: SocketAddrV4");
    none("password = get_password(user).await?; secret = sha256(password)");
    none("password: string | null, token: None, secret: true");
}

/// A password or key label may say what the secret is for before its value (`the password for
/// the wifi is`), and `pw` is a label as `pwd` is.
#[test]
fn labels_that_say_what_the_secret_is_for() {
    one("the password for wifi is Zq8kL2mx9", "secret", "Zq8kL2mx9");
    one("my password is: Tr0ub4dor&3", "secret", "Tr0ub4dor&3");
    one(
        "my password for gmail is MyP4ssW0rd!",
        "secret",
        "MyP4ssW0rd!",
    );
    one(
        "my api key for the staging server: 8f7a6c5d4e3b2a19",
        "secret",
        "8f7a6c5d4e3b2a19",
    );
    one(
        "password to log in to the router = Tr0ub4dor&3",
        "secret",
        "Tr0ub4dor&3",
    );
    one(
        "the password for root@db01 is Zq8kL2mx9",
        "secret",
        "Zq8kL2mx9",
    );
    // A URL or `host:port` is one word of it; up to ten words.
    for text in [
        "the password for https://example.com/login is Zq8kL2mx9",
        "password for postgres://db01.internal:5432/app is Zq8kL2mx9",
        "my api key on staging.example.com:8443 = Zq8kL2mx9",
        "the password for the old office wifi in the basement is Zq8kL2mx9",
    ] {
        one(text, "secret", "Zq8kL2mx9");
    }
    // The shortest reading: a later " is " does not carry the value away.
    let later_is = "my password for gmail is MyP4ssW0rd and it is not working";
    one(later_is, "secret", "MyP4ssW0rd");
    one(
        "the password for the wifi is Zq8kL2mx9 which is weird",
        "secret",
        "Zq8kL2mx9",
    );
    // What a key is for may name another secret; "the secret to" is prose, and the password
    // label after it is read.
    one(
        "the api key to my password is Zq8kL2mx9 and it is long",
        "secret",
        "Zq8kL2mx9",
    );
    one(
        "the secret to my password is Zq8kL2mx9 and it is long",
        "secret",
        "Zq8kL2mx9",
    );
    for text in [
        "my pw is hunter2x",
        "PW: hunter2x",
        "{\"pw\": \"hunter2x\"}",
        "PW_PROD=hunter2x",
    ] {
        one(text, "secret", "hunter2x");
    }
    // What follows must still look like a secret, and prose about secrets, tokens and passing
    // is not a label saying what a secret is for.
    none("the password for this account is required; the password for Bob: done");
    none("the password for https://example.com/login is the one from the onboarding email");
    none("the token to use is GPT-4o. The token for GPT-4o is 128k-context");
    none("the tokenizer for GPT-4o is o200k_base; the secret to Python 3.12 is f-strings");
    none("Pass to the next handler: next_handler2; pass on the result: result2");
    // `pw` only as a word of its own.
    none("pwned: yes, pwm: 12, SPW: 3.3V-rail, EXL2 4.0bpw for Llama-3-70B is 35.2GB");
}

/// A password of one dictionary word: after a password label, quoted or said last in its
/// clause after ` is ` or `: `, and not a word prose or code says of a password.
#[test]
fn one_word_passwords_said_as_such() {
    for (text, word) in [
        ("the wifi password is sunshine", "sunshine"),
        ("my password is sunshine and my username is bob", "sunshine"),
        ("My password is Dragon!", "Dragon"),
        ("the password for the wifi is sunshine.", "sunshine"),
        ("password: letmein\nuser: bob", "letmein"),
        ("PWD: monkey", "monkey"),
        ("{\"password\": \"dragon\"}", "dragon"),
        ("password = \"monkey\"", "monkey"),
        ("mot de passe : soleil", "soleil"),
        (
            "the passphrase is swordfish; the door code is separate",
            "swordfish",
        ),
        ("password: letmein \nuser: bob", "letmein"),
        ("my password is sunshine ", "sunshine"),
        ("mot de passe : soleil !", "soleil"),
        ("mot de passe :\u{a0}soleil", "soleil"),
        ("the wifi password is spring", "spring"),
        ("POSTGRES_PASSWORD: sunshine", "sunshine"),
        ("{\"db_password\": \"dragon\"}", "dragon"),
        ("user: bob, password: sunshine", "sunshine"),
        ("the password for this wifi is sunshine", "sunshine"),
        ("the password to log in is sunshine", "sunshine"),
        ("my password is sunshine lol", "sunshine"),
        ("my password is sunshine - can you help?", "sunshine"),
        ("the wifi password is speed", "speed"),
        ("Password is sunshine", "sunshine"),
        ("my new wifi password is sunshine", "sunshine"),
        ("my password is: sunshine", "sunshine"),
    ] {
        one(text, "secret", word);
    }
    // Words said of passwords, clauses that go on, types, participles and other labels.
    for text in [
        "the password is incorrect.",
        "the password is stored in the vault",
        "The password is hashed with bcrypt.",
        "when a private key with a passphrase is loaded.",
        "the password is what? the password is case sensitive",
        "Password: required. Password: hidden",
        "password: Sunshine, pwd: bytes, password: String",
        "password = secret; password = input",
        "passwordHash: bcrypt, passwd:gecos, \"passwd:name\"",
        "my boarding pass is ready; the token is invalid; the secret is patience.",
        "the api key is missing, the password is expiring",
        "the password is \"unterminated",
        // Adjectives, and purposes that are clauses.
        "Your password is irrelevant.",
        "Sharing the password for your account with anyone is forbidden.",
        "Writing the password for the admin account on a sticky note is forbidden.",
        // Prose about passwords, not telling one.
        "Using a strong password is essential. A longer password is better.",
        "The key factor in a password is length.",
        "A strong password is paramount. What matters most in a password is entropy.",
        // Code: fields of objects and arguments, nsswitch.conf, status lines, translations,
        // fixtures, validation rules.
        "db.connect({ host, user, password: pass, database })",
        "login(user: name, password: pass)",
        "{ host, password: hash }, (password: word), {password: word}",
        "{\n  db_password: word\n}",
        "{ id, password: newpass }",
        "case \"password\": break;",
        "passwd: compat\npassword: fail",
        "{\"password\": \"Senha\"}",
        "login(client, password=\"test\")",
        "'password' => 'confirmed'",
        // Quotes never closed, even when a bracket or a full stop follows.
        "(the password is \"dragon)",
        "the password is \"dragon.",
    ] {
        none(text);
    }
}

/// A quoted value runs to its closing quote: `;`, `,` and spaces inside are part of it.
#[test]
fn quoted_assigned_values_run_to_the_closing_quote() {
    one("DB_PASSWORD=\"Xk9#mP2v;L!q7\"\n", "secret", "Xk9#mP2v;L!q7");
    one(
        "{\"password\": \"Xk9#mP2v,L!q7\"}",
        "secret",
        "Xk9#mP2v,L!q7",
    );
    one(
        "password = \"correct horse battery staple\"",
        "secret",
        "correct horse battery staple",
    );
    one("secret: `Xk9 mP2v;q7`", "secret", "Xk9 mP2v;q7");
    // An apostrophe later on the line is not the closing quote of a value that has none.
    one(
        "password: 'Xk9#mP2v is what I use, it's fine",
        "secret",
        "Xk9#mP2v",
    );
    // Messages, labels and descriptions in quotes are not passphrases.
    none("\"password\": \"Enter your password\", \"token\": \"Invalid token, please retry\"");
    none("password_hint = \"must contain 8 characters\", secret_label = 'Mot de passe'");
}

/// `Authorization` headers with any scheme (or none), and URL passwords holding `@` or `:`.
#[test]
fn authorization_headers_and_url_passwords() {
    let key = "9944b09199c62bcf9418ad846dd0e4bbdfc6ee4b";
    for text in [
        format!("Authorization: Token {key}"),
        format!("Authorization: {key}"),
        format!("\"Authorization\": \"ApiKey {key}\""),
        format!("Proxy-Authorization: Digest {key}"),
        format!("Authorization: Token\u{2007}{key}. Thanks"),
    ] {
        one(&text, "secret", key);
    }
    one(
        "postgres://admin:p@ss:w0rd@db:5432/app",
        "secret",
        "p@ss:w0rd",
    );
    one(
        "REDIS_URL=redis://:p4ssw0rd@cache:6379",
        "secret",
        "p4ssw0rd",
    );
    one(
        "https://bob:s3cr3t!x@host.example/?next=a@b",
        "secret",
        "s3cr3t!x",
    );
    one("ftp://bob:Xk9#mP?2@files/x", "secret", "Xk9#mP?2");
    none("Authorization: Bearer ${TOKEN}; the Authorization header is missing");
    none("headers[\"Authorization\"] = f\"Bearer {token}\"; authorization_code=xyz");
    none("see https://example.com/user@host");
}

/// A private key pasted without its END line is still a secret: the BEGIN line and the base64
/// lines after it, up to a blank line, other text or the end.
#[test]
fn pem_keys_without_end_line() {
    let cut = "-----BEGIN OPENSSH PRIVATE KEY-----\n\
               b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n\
               QyNTUxOQAAACBdZXhhbXBsZQ";
    one(&format!("my key:\n{cut}..."), "secret", cut);
    one(&format!("{cut}\n\nwhat is wrong with it?"), "secret", cut);
    let encrypted = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\
                     DEK-Info: AES-128-CBC,3F17F5316E2BAC89\n\n\
                     MIIEpAIBAAKCAQEA1xq2vLjwGZcP0QZ6Rr0gVf1Ajq4zkDl8GZ9OHTxWu9vnBxKp";
    one(encrypted, "secret", encrypted);
    // In a JSON string, as service-account files hold keys.
    let json = r"-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\nMzEfYyjiWA4R4";
    one(&format!("{{\"private_key\": \"{json}"), "secret", json);
    none("-----BEGIN RSA PRIVATE KEY----- is the first line of every key");
    none("-----BEGIN PRIVATE KEY-----\n...");
}

/// Apostrophes belong to an address's local part; quotes around it do not.
#[test]
fn emails_with_apostrophes() {
    one(
        "mail john.o'brien@example.com today",
        "email",
        "john.o'brien@example.com",
    );
    one(
        "write to d’angelo@example.it",
        "email",
        "d’angelo@example.it",
    );
    one("'ann@example.com'", "email", "ann@example.com");
    one("?email=ann@example.com", "email", "ann@example.com");
}

/// A trailing `!` is a macro call only after a name without digits, as before: passwords
/// people choose end in `!` (`summer2024!`). Only a `(` follows lower-case names with digits
/// (`sha256(password`).
#[test]
fn passwords_ending_in_a_bang_are_not_macros() {
    for p in ["summer2024!", "hunter22!", "qwerty123!"] {
        one(&format!("password = {p}"), "secret", p);
    }
    one("token: abc123[xyz]", "secret", "abc123[xyz");
    one("secret = w0rd{x}", "secret", "w0rd{x");
    none("token = quote!; secret: Token![;], api_key = keys[0], password = sha256(pw)");
}

/// A label inside a rejected quoted value is still examined: the scan resumes after the
/// label's head, not after the value.
#[test]
fn labels_inside_a_rejected_quoted_value_are_examined() {
    one(
        "\"token_note\": \"rotated; new password: Xk9#mP2v;L!q7\"",
        "secret",
        "Xk9#mP2v",
    );
    one(
        "secret_hint = 'see the vault, token=Xk9#mP2vL!q7 rotated'",
        "secret",
        "Xk9#mP2vL!q7",
    );
}

/// A quoted value holding an email, a card or an IBAN keeps the rest of it redacted: the
/// higher-priority detection wins its span, the secret keeps what is left of its own.
#[test]
fn a_quoted_secret_around_other_pii_is_not_dropped() {
    exactly(
        "password: \"Xk9#mP2v (ask ann@example.com)\"",
        &[
            ("secret", "Xk9#mP2v (ask"),
            ("email", "ann@example.com"),
            // Symbols are password characters too: every piece left is kept.
            ("secret", ")"),
        ],
    );
    exactly(
        "secret = 'Xk9#mP2v card 4111 1111 1111 1111'",
        &[
            ("secret", "Xk9#mP2v card"),
            ("credit_card", "4111 1111 1111 1111"),
        ],
    );
    exactly(
        "token: \"Xk9#mP2v DE89 3704 0044 0532 0130 00\"",
        &[
            ("secret", "Xk9#mP2v"),
            ("iban", "DE89 3704 0044 0532 0130 00"),
        ],
    );
    // Redacted, nothing of the password goes out.
    let (out, _) = redact_text("password: \"Xk9#mP2v (ask ann@example.com)\"", &scanner());
    assert!(!out.contains("Xk9") && !out.contains("ann@"), "{out}");
}

/// A URL password ends at the `@` before a host and a query string: an address in the query
/// stays an email (`@example.com` went out with the password span over it).
#[test]
fn url_passwords_stop_before_the_query() {
    let password_then_address = [("secret", "pw1234"), ("email", "ann@example.com")];
    exactly(
        "https://bob:pw1234@host.example?notify=ann@example.com",
        &password_then_address,
    );
    exactly(
        "https://bob:pw1234@localhost#to=ann@example.com",
        &password_then_address,
    );
    // Unencoded `#`, `?` and `@` in a password still count.
    one(
        "postgres://admin:ab12@Xyz#34@db.internal:5432/app",
        "secret",
        "ab12@Xyz#34",
    );
    one("ftp://bob:Xk9#mP?2@files/x", "secret", "Xk9#mP?2");
}

/// Unary operators before a call and `->` paths are code, not values.
#[test]
fn calls_after_unary_operators_and_arrows_are_code() {
    none("let has_secret = !secret.is_empty();");
    none("auto token = lexer->next();");
    none("token = *guard.take(); secret = -offset.abs(); password = &self_pw.as_str()");
    none("auto token = Lexer::next(); token = it->second.get()");
    // A password starting with `!` is still one.
    one("password: !Xk9#mP2v", "secret", "!Xk9#mP2v");
}

/// Quoted values with spaces: lower-case words are a passphrase (articles included); Title
/// Case labels and descriptions are not.
#[test]
fn passphrases_vs_labels_and_descriptions() {
    for p in [
        "my dog ate the homework",
        "a purple elephant dances",
        "correct horse battery staple",
    ] {
        one(&format!("password = \"{p}\""), "secret", p);
    }
    none("secret_store = \"AWS Secrets Manager\"");
    none("secret_description: \"Used by CI pipeline\"");
    none("token_label = 'Personal Access Token', secret_name: \"prod db\"");
    none("secret_note = \"used by the ci pipeline\", token_help: 'see the docs'");
}

/// Compound labels in German and past-tense version words.
#[test]
fn more_negative_labels() {
    no_phone("Referenznummer: 030 1234 5678");
    no_phone("Modellnummer 030 1234 5678");
    no_phone("Modell-Nr. 030 1234 5678");
    none("Released 1.2.3.4");
    none("Bumped to 1.2.3.4");
    none("Upgraded to 1.2.3.4");
    // Still phones and addresses.
    one("Modelled by Zipporah 415.555.0132", "phone", "415.555.0132");
    one("DNS updated: 203.0.113.7", "ip_address", "203.0.113.7");
}

/// From a review of the split and URL rules: no part of a password leaks, and the pieces of a
/// split secret are not redacted wherever else their words appear.
#[test]
fn split_secrets_and_url_passwords_leak_nothing() {
    one("redis://:Pa55#w=rd@cache:6379", "secret", "Pa55#w=rd");
    one(
        "postgres://admin:ab12#Xyz@34@db.internal/app",
        "secret",
        "ab12#Xyz@34",
    );
    one("password: !Welcome!", "secret", "!Welcome!");
    one("password: -Dragon!", "secret", "-Dragon!");
    one(
        "password = \"Correct Horse Battery Staple\"",
        "secret",
        "Correct Horse Battery Staple",
    );
    let s = scanner();
    for (text, gone) in [
        ("password: \"ann.lee@corp.io#!\"", "#!"),
        ("token: \"Xk9 ann@corp.io #$%^\"", "#$%^"),
    ] {
        let (out, _) = crate::privacy::redact_text(text, &s);
        assert!(
            !out.contains(gone) && !out.contains("ann"),
            "{text} -> {out}"
        );
    }
    // A letters-only secret is redacted where it appears again, too.
    let text = "redis://:letmein@cache says auth failed; is letmein right?";
    let (out, _) = crate::privacy::redact_text(text, &s);
    assert!(!out.contains("letmein"), "{out}");
    // A password with `@`, `?` and `=` but no host before its `?` is all password.
    one("postgres://admin:Xk9@mP?2=z@db/app", "secret", "Xk9@mP?2=z");
    // Code after a unary operator stays code; a password after one does not.
    none("secret_ok = !matches!(secret, None)");
    none("secret_missing = !secrets[0].is_empty()");
    one("password: !Monkey[1]", "secret", "!Monkey[1");
    // A fifth review: none of these may leak.
    for (text, gone) in [
        ("redis://:пароль@cache failed; is пароль right?", "пароль"),
        ("password: !monkey[1]", "monkey"),
        ("password: -dragon{42}", "dragon"),
        ("password: -Summer!{2024}", "Summer"),
        // A sixth review: a word of a quoted secret, and dotted or capitalised names before
        // `!` or `[`, are secrets; a punctuation-only password is redacted again too.
        (
            "DB_PASSWORD=\"Xk9#mP2v (prod)\" but psql rejected Xk9#mP2v",
            "Xk9",
        ),
        ("password: Hello.World!", "Hello"),
        ("password: Go->Home!", "Home"),
        ("password: Pass.Word[1]", "Pass.Word"),
        (
            "redis://:!#&+=-~!@cache:6379 and the password is !#&+=-~! btw",
            "!#&+=-~!",
        ),
        // A seventh review.
        ("password: -dragon!{42}", "dragon"),
        ("password: !hunter![2]", "hunter"),
        ("password = \"Xk9#mP2v\u{a0}(required)\"", "Xk9"),
    ] {
        let (out, _) = crate::privacy::redact_text(text, &s);
        assert!(!out.contains(gone), "{text} -> {out}");
    }
    for sep in ["#", "?"] {
        exactly(
            &format!("https://bob:pw1234@app.example.com{sep}ann@example.com"),
            &[("secret", "pw1234"), ("email", "ann@example.com")],
        );
    }
}

#[test]
fn street_addresses() {
    let k = "street_address";
    // English: number first, with a town, postcode, state, flat, or a word that introduces it.
    one("I live at 42 Elm Street.", k, "42 Elm Street");
    one(
        "Ship it to 1600 Pennsylvania Avenue NW, Washington, DC 20500 please",
        k,
        "1600 Pennsylvania Avenue NW, Washington, DC 20500",
    );
    one(
        "Send it to 221B Baker St, London NW1 6XE by Friday",
        k,
        "221B Baker St, London NW1 6XE",
    );
    one(
        "new flat: 17 Martin Luther King Jr Blvd, Apt 4B",
        k,
        "17 Martin Luther King Jr Blvd, Apt 4B",
    );
    one(
        "John Smith\n123 Main St.\nSpringfield, IL 62704",
        k,
        "123 Main St.",
    );
    one(
        "The office moved: 350 5th Ave, New York, NY 10118-0110.",
        k,
        "350 5th Ave, New York, NY 10118-0110",
    );
    one(
        "my address is 9 O'Connell Street, Dublin",
        k,
        "9 O'Connell Street, Dublin",
    );
    one(
        "meet me at 12-14 Park Lane in Mayfair",
        k,
        "12-14 Park Lane",
    );
    // German, Dutch: the street, then the number.
    one(
        "Ich wohne in der Hauptstraße 5, 10115 Berlin.",
        k,
        "Hauptstraße 5, 10115 Berlin",
    );
    one(
        "Lieferadresse: Karl-Marx-Allee 33a",
        k,
        "Karl-Marx-Allee 33a",
    );
    one(
        "ons kantoor: Keizersgracht 123, Amsterdam",
        k,
        "Keizersgracht 123, Amsterdam",
    );
    // French, Spanish, Italian, Portuguese.
    one(
        "j'habite au 12 rue de la Paix, 75002 Paris.",
        k,
        "12 rue de la Paix, 75002 Paris",
    );
    one("rendez-vous 8 place d'Italie demain", k, "8 place d'Italie");
    one("vivo en Calle Mayor 5, Madrid", k, "Calle Mayor 5, Madrid");
    one("abito in Via della Spiga 7", k, "Via della Spiga 7");
    one("moro na Rua Augusta 12", k, "Rua Augusta 12");
    // The introducing word right after other scripts' punctuation.
    one("こんにちは、abito in Via Augusta 181", k, "Via Augusta 181");
    // Written the way people type in chat, and the forms of more countries.
    one("i live at 42 elm street", k, "42 elm street");
    // (A town in lower case is not read as one.)
    one("my address is 42 elm st, springfield", k, "42 elm st");
    one(
        "j'habite au 12 Rue de Rivoli, 75001 Paris",
        k,
        "12 Rue de Rivoli, 75001 Paris",
    );
    one(
        "I live at 12 Boulevard Saint-Germain",
        k,
        "12 Boulevard Saint-Germain",
    );
    one(
        "Ich wohne in der Berliner Straße 12, 10115 Berlin",
        k,
        "Berliner Straße 12, 10115 Berlin",
    );
    one(
        "Meine Adresse: Frankfurter Allee 5",
        k,
        "Frankfurter Allee 5",
    );
    one("Wij wonen op Oude Gracht 12", k, "Oude Gracht 12");
    one(
        "Address:42 Elm Street, Springfield, IL 62704",
        k,
        "42 Elm Street, Springfield, IL 62704",
    );
    one(
        "Ship to: 5/123 Smith St, Fitzroy VIC 3065",
        k,
        "5/123 Smith St, Fitzroy VIC 3065",
    );
    one(
        "Ship to 123 Main St, Toronto, ON M5V 2T6",
        k,
        "123 Main St, Toronto, ON M5V 2T6",
    );
    one("I live at 123 N. Main St.", k, "123 N. Main St.");
    one("my apartment is 42 Elm Street", k, "42 Elm Street");
    one("abito in Via dei Mille 5", k, "Via dei Mille 5");
    one("vivo en Calle de los Reyes 5", k, "Calle de los Reyes 5");
    one("Lieferadresse: Parkplatz 12", k, "Parkplatz 12");
    one(
        "My address is 42 Elm Street and my phone is new",
        k,
        "42 Elm Street",
    );
    one("my address is 42 elm st apt 3", k, "42 elm st apt 3");
    one(
        "I live at 42 Elm St Springfield IL 62704",
        k,
        "42 Elm St Springfield IL 62704",
    );
    one("address is 12 Abbey Rd NW8 9AA", k, "12 Abbey Rd NW8 9AA");
    one(
        "my address is 42 Elm Street Springfield IL",
        k,
        "42 Elm Street",
    );
    one(
        "I'm at 42 Elm Street apartment 3",
        k,
        "42 Elm Street apartment 3",
    );
    one("Find restaurants near 42 Elm Street", k, "42 Elm Street");
    one("we moved to 9 oak lane last week", k, "9 oak lane");
    one(
        "My parents' house at 26 Oakwood Drive needs a new roof",
        k,
        "26 Oakwood Drive",
    );
    one(
        "My landlord at 42 Elm Street won't fix the heat",
        k,
        "42 Elm Street",
    );
    one(
        "Visit 1 Infinite Loop, Cupertino, CA 95014",
        k,
        "1 Infinite Loop, Cupertino, CA 95014",
    );
}

#[test]
fn numbers_before_street_words_that_are_not_addresses() {
    none("the top 10 Wall Street banks grew");
    none("3 Main Street businesses closed last year");
    none("In 2019 Court Street was repaved");
    none("We watched 2 Dr Who episodes and 3 Place settings");
    none("section 4 Grove Street Gang mission");
    none("wait 5 minutes on Elm Street");
    none("Spring 2024 release, Chapter 5 Boulevard of Broken Dreams");
    none("upgrade to 2.5 Main Street");
    none("at 10:30 Park Avenue was closed");
    none("Platz 1 in der Liste, Weg 2 ist kürzer");
    none("page 12 rue");
    none("I bought 3 avenue tickets and 2 place cards");
    // Introduced by `to`, but what follows shows it is a count.
    none("the loans went to 3 Wall Street banks");
    // Nouns with a street type's ending, and words that also start other names.
    none("Der Zug fährt von Bahnsteig 3 ab.");
    none("Der FC Bayern steht auf Tabellenplatz 1 der Bundesliga.");
    none("Wir haben Parkplatz 12 reserviert.");
    none("Ihr Sitzplatz 14A ist am Fenster.");
    none("Für den Rückweg 3 Stunden einplanen.");
    none("See Fig. 3 and Illustr. 4");
    none("Iscriviti al Corso di Python 2 oggi");
    none("Connect Via USB 3 to charge");
    none("Via Zoom 3 volte a settimana");
    none("We stayed at the Plaza Hotel 2 nights");
    none("Jules César est mort en 44 av. J.-C.");
    none("J'ai suivi 2 cours de Python cette semaine.");
    none("I sent the draft to 2 Wall Street Journal reporters");
    none("Meet me at 6 Liverpool Street Station");
    none("The Knicks tip off at 7 Madison Square Garden tonight");
    none("The unit was sold to 2 Wall Street and Silicon Valley firms");
    none("Top 10 Wall Street 2024 Rankings");
    none("We need 3 Place Settings for dinner");
    none("went to 3 different road trips");
    // Lower-case streets only after a word that names an address, and not everyday phrases.
    for text in [
        "that is 3 in a row",
        "it is 3 on the way",
        "the trip is 2 hours each way",
        "Travel time is 5 hours by road",
        "it took me from 5 to 10 minutes on the road",
        "I get off work at 5 and drive",
        "I go to bed at 11 and walk",
        "I'll be there at 5 to close",
        "meet me at 5 on main street",
        "see you at 7 at the court",
        "the hotel is 5 min walk",
        "we live 5 min drive from the beach",
        "shipping takes 5 business days by road",
        "Send 2 copies this way",
        "x is 2 times the square",
    ] {
        none(text);
    }
    // Everyday sentences with a number before words that look like a street (a third review).
    for text in [
        // `is` and `for` do not introduce an address on their own.
        "What is 21 Jump Street about?",
        "The fare is 120 One Way.",
        "Tickets for 2 Mulholland Drive, please.",
        "Set the table for 6 Place Settings.",
        // `to` after a number or `back`, `prior`…; a year after a bare lead.
        "The final score was 3 to 1 Loftus Road.",
        "Back to 2 Memory Lane.",
        "From 2008 Wall Street has changed a lot.",
        "Prior to 2008 Wall Street was booming.",
        // An address word only whole (`homework`), and a name that goes on after the street.
        "My homework: derivative of 2 x ln(x).",
        "My office pays for 2 Wall Street Journal subscriptions.",
        // Lower case: quantities and everyday words are not a street's name.
        "My office is a 30 second drive from my house.",
        "I live on a 2 way street.",
        "I live on a farm, need 4 wheel drive.",
        "I live 3 stops down main street.",
        "Can you ship 1 external hard drive to my office?",
        // A room or a `#1` is not a flat.
        "They had 2 Abbey Road #1 hits.",
        // Items of a list under a heading.
        "Shopping:\n2 Milky Way\n1 Rocky Road",
        "Seats:\n2 Front Row",
        // French words that are also types, and names that are not streets.
        "Jules César est mort en 44 av. Jésus-Christ.",
        "J'ai lu 3 bd de Tintin cet été.",
        "Module 2 Cours de Français Avancé.",
        "Order 3 Place Settings, Napkins and Cups.",
        // Numbered roads, blockades, years, counts, articles, weak types with a town.
        "Die Bundesstraße 27 ist wegen Bauarbeiten gesperrt.",
        "Die Berlin-Blockade 1948/49 war ein Wendepunkt.",
        "Calle Ocho 2024 fue un éxito.",
        "Av. Speed 45 km/h.",
        "Ich habe auf der Schlossallee 3 Häuser gebaut.",
        "In der Hauptstraße 3 Geschäfte geschlossen.",
        "Op de Kinkerstraat 3 winkels dicht.",
        "Die Straße 5 Minuten entfernt.",
        "Sitzplatz 45, Fenster",
        "Corso di Inglese 2, Livello",
        "We stayed at the Plaza Hotel 2 nights",
        // Disks, months, counts after a French street.
        "Copy the files to 1 USB Drive.",
        "Switch from 2 Google Drive to Dropbox.",
        "Ship 2 Seagate Hard Drive Enclosures to Berlin.",
        "From 5 March Lane 2 will be closed on the M25.",
        "He won 2 Route du Rhum races.",
        "Play 2 Chemin de Fer hands.",
    ] {
        none(text);
    }
    // A four-digit postcode only after an Australian state: the year stays out.
    one(
        "I visited 42 Main Street, Boston MA 2024",
        "street_address",
        "42 Main Street, Boston MA",
    );
}

#[test]
fn street_address_edges_do_not_panic() {
    // A town followed by capitals that are not a postcode (`AB CD`), cut-off postcodes and
    // ZIP codes, a street at the very end, multi-byte spaces and dashes everywhere.
    for text in [
        "I live at 4 Elm Street, London AB CD",
        "I live at 4 Elm Street, London AB",
        "I live at 4 Elm Street, London A",
        "I live at 4 Elm Street, Springfield, IL 6270",
        "I live at 4 Elm Street, Springfield, IL 62704-",
        "I live at 4 Elm Street, Springfield, IL 62704\u{2013}12",
        "at 4 Elm St.",
        "at 4\u{a0}Elm\u{202f}Street,\u{3000}Köln",
        "Hauptstraße 5\u{2013}",
        "Hauptstraße\u{a0}\u{a0}\u{a0}\u{a0}5",
        "12 rue",
        "12 rue de",
        "12 rue l'",
        "Via 5",
        "5 ",
        "\u{e9}5 Elm Street",
        "4 Elm Street, Apt",
        "4 Elm Street #",
    ] {
        let _ = found(text);
    }
    one(
        "I live at 4 Elm Street, London AB CD",
        "street_address",
        "4 Elm Street, London AB",
    );
}

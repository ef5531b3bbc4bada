//! Checksums and structural rules that turn regex candidates into confident detections.
//!
//! Every function here is pure, allocation-light and total: any input returns a `bool` (or a
//! number), never panics.

/// Luhn (mod 10) check over ASCII digits. Non-digits make the check fail.
pub(crate) fn luhn(digits: &[u8]) -> bool {
    if digits.is_empty() {
        return false;
    }
    let mut sum = 0u32;
    for (i, &b) in digits.iter().rev().enumerate() {
        if !b.is_ascii_digit() {
            return false;
        }
        let mut d = u32::from(b - b'0');
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum % 10 == 0
}

/// Parses up to 6 leading digits as a number (for issuer prefix ranges).
fn prefix(digits: &[u8], n: usize) -> u32 {
    digits.iter().take(n).fold(0u32, |acc, &b| {
        acc * 10 + u32::from(b.wrapping_sub(b'0') % 10)
    })
}

/// True when `digits` (ASCII digits only) has a known card issuer prefix and a length that
/// issuer uses: Visa, Mastercard (51–55 and the 2221–2720 series), Amex, Discover, Diners,
/// JCB, UnionPay, Maestro, Mir.
pub(crate) fn card_issuer_ok(digits: &[u8]) -> bool {
    let len = digits.len();
    let p1 = prefix(digits, 1);
    let p2 = prefix(digits, 2);
    let p3 = prefix(digits, 3);
    let p4 = prefix(digits, 4);
    let p6 = prefix(digits, 6);
    let visa = p1 == 4 && matches!(len, 13 | 16 | 19);
    let mastercard = ((51..=55).contains(&p2) || (2221..=2720).contains(&p4)) && len == 16;
    let amex = (p2 == 34 || p2 == 37) && len == 15;
    let discover =
        (p4 == 6011 || (644..=649).contains(&p3) || p2 == 65 || (622126..=622925).contains(&p6))
            && (16..=19).contains(&len);
    let diners =
        ((300..=305).contains(&p3) || p2 == 36 || p2 == 38 || p2 == 39) && (14..=19).contains(&len);
    let jcb = ((3528..=3589).contains(&p4) && (16..=19).contains(&len))
        || (matches!(p4, 3088 | 3096 | 3112 | 3158 | 3337) && len == 16)
        || ((p4 == 2131 || p4 == 1800) && len == 15);
    let unionpay = p2 == 62 && (16..=19).contains(&len);
    let maestro =
        (p2 == 50 || (56..=58).contains(&p2) || p2 == 67 || p4 == 6304) && (12..=19).contains(&len);
    let mir = (2200..=2204).contains(&p4) && len == 16;
    visa || mastercard || amex || discover || diners || jcb || unionpay || maestro || mir
}

/// True when digit groups (lengths of the separator-delimited groups) look like a card number
/// as people write it: one unbroken run, 4-4-4-4(-3) style groups, or Amex/Diners 4-6-5 / 4-6-4.
pub(crate) fn card_grouping_ok(groups: &[usize]) -> bool {
    match groups {
        [_] => true,
        [4, 6, 5] | [4, 6, 4] => true,
        [init @ .., last] => init.iter().all(|&g| g == 4) && (1..=4).contains(last),
        [] => false,
    }
}

/// IBAN lengths by country code (SWIFT registry).
const IBAN_LENGTHS: &[(&[u8; 2], usize)] = &[
    (b"AD", 24),
    (b"AE", 23),
    (b"AL", 28),
    (b"AT", 20),
    (b"AZ", 28),
    (b"BA", 20),
    (b"BE", 16),
    (b"BG", 22),
    (b"BH", 22),
    (b"BR", 29),
    (b"BY", 28),
    (b"CH", 21),
    (b"CR", 22),
    (b"CY", 28),
    (b"CZ", 24),
    (b"DE", 22),
    (b"DK", 18),
    (b"DO", 28),
    (b"EE", 20),
    (b"EG", 29),
    (b"ES", 24),
    (b"FI", 18),
    (b"FO", 18),
    (b"FR", 27),
    (b"GB", 22),
    (b"GE", 22),
    (b"GI", 23),
    (b"GL", 18),
    (b"GR", 27),
    (b"GT", 28),
    (b"HR", 21),
    (b"HU", 28),
    (b"IE", 22),
    (b"IL", 23),
    (b"IQ", 23),
    (b"IS", 26),
    (b"IT", 27),
    (b"JO", 30),
    (b"KW", 30),
    (b"KZ", 20),
    (b"LB", 28),
    (b"LC", 32),
    (b"LI", 21),
    (b"LT", 20),
    (b"LU", 20),
    (b"LV", 21),
    (b"MC", 27),
    (b"MD", 24),
    (b"ME", 22),
    (b"MK", 19),
    (b"MR", 27),
    (b"MT", 31),
    (b"MU", 30),
    (b"NL", 18),
    (b"NO", 15),
    (b"PK", 24),
    (b"PL", 28),
    (b"PS", 29),
    (b"PT", 25),
    (b"QA", 29),
    (b"RO", 24),
    (b"RS", 22),
    (b"SA", 24),
    (b"SC", 31),
    (b"SE", 24),
    (b"SI", 19),
    (b"SK", 24),
    (b"SM", 27),
    (b"ST", 25),
    (b"SV", 28),
    (b"TL", 23),
    (b"TN", 24),
    (b"TR", 26),
    (b"UA", 29),
    (b"VA", 22),
    (b"VG", 24),
    (b"XK", 20),
];

/// The IBAN length for a country code, if the country uses IBANs.
pub(crate) fn iban_length(country: &[u8]) -> Option<usize> {
    IBAN_LENGTHS
        .iter()
        .find(|(c, _)| c.as_slice() == country)
        .map(|&(_, n)| n)
}

/// ISO 13616 mod-97 check over a compact IBAN (no spaces, upper case). Checks the length table.
pub(crate) fn iban_valid(compact: &[u8]) -> bool {
    if compact.len() < 5 || iban_length(&compact[..2]) != Some(compact.len()) {
        return false;
    }
    if !compact[2..4].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let rotated = compact[4..].iter().chain(&compact[..4]);
    let mut rem = 0u32;
    for &b in rotated {
        match b {
            b'0'..=b'9' => rem = (rem * 10 + u32::from(b - b'0')) % 97,
            b'A'..=b'Z' => rem = (rem * 100 + u32::from(b - b'A') + 10) % 97,
            _ => return false,
        }
    }
    rem == 1
}

/// US SSN rules: area not 000, 666 or 900–999; group not 00; serial not 0000.
pub(crate) fn ssn_valid(area: u32, group: u32, serial: u32) -> bool {
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

/// Shannon entropy in bits per byte.
pub(crate) fn entropy(s: &[u8]) -> f64 {
    if s.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in s {
        counts[usize::from(b)] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// Number of character classes present (lower, upper, digit, other).
pub(crate) fn char_classes(s: &[u8]) -> usize {
    let lower = s.iter().any(u8::is_ascii_lowercase);
    let upper = s.iter().any(u8::is_ascii_uppercase);
    let digit = s.iter().any(u8::is_ascii_digit);
    let other = s.iter().any(|b| !b.is_ascii_alphanumeric());
    [lower, upper, digit, other].iter().filter(|&&x| x).count()
}

/// Placeholders and code references, found anywhere in a value (lower case).
const PLACEHOLDERS: &[&[u8]] = &[
    b"xxxx",
    b"****",
    b"....",
    b"changeme",
    b"your_",
    b"your-",
    b"placeholder",
    b"redacted",
    b"process.env",
    b"os.environ",
    b"getenv",
    b"env(",
    b"env.",
    b"secrets.",
    b"config.",
    b"settings.",
    b"self.",
    b"this.",
    b"request.",
    b"args.",
];

/// Literals and type names that stand where a value would (`None`, `null`, `string | null`,
/// `Option<String>`), found only as whole words: inside a longer word they are part of a
/// password (`TrueBlue#42`, `Nonexistent9!`).
const PLACEHOLDER_WORDS: &[&[u8]] = &[
    b"none",
    b"null",
    b"undefined",
    b"true",
    b"false",
    b"required",
    b"optional",
    b"string",
];

/// Words of sentences and labels, never of a passphrase: a quoted value with spaces holding
/// one is a message, a label or a description (`"Enter your password"`, `"must be 8
/// characters"`, `"used by the CI pipeline"`). See [`PHRASE_WORDS`] for the few a passphrase of
/// words may hold.
const SENTENCE_WORDS: &[&[u8]] = &[
    b"a",
    b"an",
    b"the",
    b"your",
    b"you",
    b"my",
    b"is",
    b"are",
    b"was",
    b"were",
    b"be",
    b"been",
    b"has",
    b"have",
    b"to",
    b"of",
    b"for",
    b"and",
    b"or",
    b"not",
    b"no",
    b"at",
    b"in",
    b"on",
    b"by",
    b"via",
    b"from",
    b"with",
    b"this",
    b"that",
    b"it",
    b"if",
    b"we",
    b"our",
    b"please",
    b"enter",
    b"see",
    b"use",
    b"used",
    b"using",
    b"set",
    b"must",
    b"should",
    b"will",
    b"can",
    b"cannot",
    b"invalid",
    b"incorrect",
    b"wrong",
    b"missing",
    b"expired",
    b"required",
    b"characters",
    b"password",
    b"passwords",
    b"token",
    b"tokens",
    b"secret",
    b"secrets",
    b"key",
    b"keys",
    b"manager",
    b"vault",
    b"description",
    b"here",
    b"votre",
    b"mot",
    b"de",
    b"passe",
    b"le",
    b"la",
    b"ihr",
    b"dein",
    b"passwort",
    b"el",
    b"su",
    b"tu",
];

/// What prose and code say a password is, rather than what it is: its state (`the password is
/// incorrect`, `expired`), what it is like (`weak`, `too`), how it is kept or shown (`hidden`,
/// `hashed`), pronouns and question words (`mine`, `what`), types and fields (`password:
/// text`). A single word after a password label is a password unless it is one of these (or
/// of [`SENTENCE_WORDS`] and [`PLACEHOLDER_WORDS`]). Words separated by spaces.
const SAID_OF_PASSWORDS: &str = "\
    correct valid right fine okay good bad ok same different unique unchanged changed \
    updated reset rotated revoked locked unlocked disabled enabled active inactive \
    accepted rejected verified checked working broken gone lost forgotten unknown known \
    leaked compromised exposed stolen blank empty default temporary permanent expiring \
    pending needed necessary mandatory important useless provided given ready done saved \
    stored kept sent shared generated random randomized weak strong secure insecure safe \
    unsafe long short simple easy hard difficult complex complicated obvious guessable \
    memorable tricky strange weird funny great perfect terrible awful enough too very also \
    still now then just only never always usually probably really currently already again \
    hidden visible shown masked obscured displayed encrypted decrypted hashed salted plain \
    plaintext cleartext protected private public personal confidential sensitive asterisks \
    dots case mine yours his hers ours theirs there what which where when why how \
    something anything nothing everything below above attached included inside unset str \
    text bytes number boolean bool integer float char varchar hash object array list dict \
    map any void nullable field input value param type data nil redact omit skip ignore \
    prompt ask env file typed owned fixed credentials creds senha kennwort wachtwoord \
    passord contrasena motdepasse lozinka haslo heslo salasana jelszo parola parol sifre losenord \
    adgangskode compat files ldap systemd winbind fail error mismatch match matches \
    test example dummy sample demo fake mock foobar break return continue todo fallthrough \
    essential crucial vital better worse best worst risky length lowercase uppercase numeric \
    alphanumeric ascii unicode forbidden geslo parole parool wagwoord";

/// Words a plain purpose phrase may hold that [`SENTENCE_WORDS`] lists: determiners and the
/// prepositions that introduce it.
const PURPOSE_WORDS: &[&[u8]] = &[
    b"the", b"my", b"our", b"your", b"a", b"an", b"this", b"that", b"for", b"to", b"of", b"on",
    b"at", b"in", b"from",
];

/// True when what a password is said to be for (`for the wifi`, `to the staging server`,
/// `for https://example.com/login`; empty when not said) is a plain noun phrase: at most five
/// words, and no sentence word but some determiners and prepositions ([`PURPOSE_WORDS`]: not
/// `with`, `by`, `and`, `is`...). Not `for your account with anyone` (as in `sharing the
/// password for your account with anyone is forbidden`).
pub(crate) fn plain_purpose(phrase: &str) -> bool {
    phrase.split_whitespace().count() <= 5
        && phrase.split_whitespace().all(|w| {
            let lower = w.to_ascii_lowercase();
            let lower = lower.as_bytes();
            PURPOSE_WORDS.contains(&lower) || !SENTENCE_WORDS.contains(&lower)
        })
}

/// True when `word` reads as a password of one dictionary word (`sunshine`, `Dragon`): 4 to
/// 32 ASCII letters, lower-case, Capitalised or upper-case (a CamelCase word is a name in
/// code), not a participle or a name made from a label, and none of the words said of
/// passwords ([`SAID_OF_PASSWORDS`], [`SENTENCE_WORDS`], placeholders). [`looks_like_secret`]
/// leaves such words alone, as they can be any word: the caller decides where one stands for
/// a password.
pub(crate) fn word_password(word: &[u8]) -> bool {
    if !(4..=32).contains(&word.len()) || !word.iter().all(u8::is_ascii_alphabetic) {
        return false;
    }
    let tail = &word[1..];
    let cased = tail.iter().all(u8::is_ascii_lowercase) || word.iter().all(u8::is_ascii_uppercase);
    let lower = word.to_ascii_lowercase();
    let lower = lower.as_slice();
    // A participle (`-ed`, `-ing` after a stem of four letters or more: `loaded`, `confirmed`;
    // not `spring`, `speed`), or a name made from a label (`newpass`, `oldpwd`: code).
    let participle = [&b"ed"[..], b"ing"]
        .iter()
        .any(|end| lower.ends_with(end) && lower.len() >= end.len() + 4);
    let named_after_label = [&b"pass"[..], b"pwd"]
        .iter()
        .any(|l| memchr::memmem::find(lower, l).is_some());
    cased
        && !participle
        && !named_after_label
        && !SAID_OF_PASSWORDS
            .split_ascii_whitespace()
            .any(|w| w.as_bytes() == lower)
        && !SENTENCE_WORDS.contains(&lower)
        && !placeholder(lower)
}

/// True when the lower-cased `value` is or holds a placeholder (`changeme`, `your_key`,
/// `process.env.X`, the word `none`): a stand-in, not a secret.
fn placeholder(lower: &[u8]) -> bool {
    PLACEHOLDERS
        .iter()
        .any(|p| memchr::memmem::find(lower, p).is_some())
        || PLACEHOLDER_WORDS.iter().any(|w| has_word(lower, w))
}

/// Words of [`SENTENCE_WORDS`] that a passphrase of lower-case words may hold (`my dog ate the
/// homework`): without the other sentence words, they do not make a message.
const PHRASE_WORDS: &[&[u8]] = &[b"a", b"an", b"the", b"my"];

/// True when `w` occurs in `lower` as a word of its own: no ASCII letter, digit or `-` on
/// either side (`string|null`, `Option<string>`, but not `string-cheese-42`).
fn has_word(lower: &[u8], w: &[u8]) -> bool {
    let joins = |c: Option<&u8>| c.is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'-');
    memchr::memmem::find_iter(lower, w)
        .any(|i| !joins(i.checked_sub(1).map(|j| &lower[j])) && !joins(lower.get(i + w.len())))
}

/// True when a value with spaces (a quoted one) reads as a passphrase rather than a message, a
/// label or a description. Words only (letters and spaces): at least three, any case, none
/// a sentence word but [`PHRASE_WORDS`] (`correct horse battery staple`, `my dog ate the
/// homework`; not `AWS Secrets Manager`, `Used by CI pipeline`). With digits or symbols
/// (`Xk9 mP2v;q7`): none of its words is one of [`SENTENCE_WORDS`].
fn passphrase(value: &[u8], lower: &[u8]) -> bool {
    let words = || {
        lower
            .split(|c| !c.is_ascii_alphanumeric())
            .filter(|w| !w.is_empty())
    };
    if value.iter().all(|c| c.is_ascii_alphabetic() || *c == b' ') {
        return words().count() >= 3
            && words().all(|w| PHRASE_WORDS.contains(&w) || !SENTENCE_WORDS.contains(&w));
    }
    words().all(|w| !SENTENCE_WORDS.contains(&w))
}

/// Bit widths and digest sizes that type names carry (`HmacSha256`, `Float64`).
const TYPE_NUMBERS: &[&[u8]] = &[b"8", b"16", b"32", b"64", b"128", b"256", b"384", b"512"];

/// True when `value` is a type name (`tokens: AtomicU64`, `secret: SecretString`): short,
/// CamelCase with a hump, no symbols, and any digits the way types carry them: a bit width
/// (`HmacSha256`), or up to three digits next to a capital (`AtomicU64`, `SocketAddrV4`), and
/// always at the end of a word (`Utf8Error`, `Vec3D`). Digits after a word (`BlueSky2024`,
/// `HelloWorld123`) or inside one, standing for letters (`MyP4ssW0rd`, `SuperS3cret`), make a
/// password.
fn type_name(value: &[u8]) -> bool {
    let camel = value.len() < 16
        && value[0].is_ascii_uppercase()
        && value.iter().all(u8::is_ascii_alphanumeric)
        && value
            .windows(2)
            .any(|w| w[0].is_ascii_lowercase() && w[1].is_ascii_uppercase());
    if !camel {
        return false;
    }
    let mut i = 0;
    while let Some(off) = value[i..].iter().position(u8::is_ascii_digit) {
        let start = i + off;
        let len = value[start..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        let end = start + len;
        let capital_next = value[start - 1].is_ascii_uppercase()
            || value.get(end).is_some_and(u8::is_ascii_uppercase);
        let inside_a_word = value.get(end).is_some_and(u8::is_ascii_lowercase);
        if inside_a_word
            || !(TYPE_NUMBERS.contains(&&value[start..end]) || (len <= 3 && capital_next))
        {
            return false;
        }
        i = end;
    }
    true
}

/// True when `value` is a call, a macro, an index or a generic type: an identifier or path
/// followed by `(`, `[`, `{`, `!` or `<` (`getpass()`, `Some(token`, `client.read(path)`,
/// `sha256(password`, `quote!`, `Token![;]`, `secrets[0]`, `Vec<u8>`), possibly after a unary
/// operator (`!secret.is_empty()`, `-offset.abs()`). The parts of a path are joined by `.`,
/// `->` or `::` (`lexer->next()`). The identifier has no digits, except before a `(` when it
/// is all lower case, as function names are: `summer2024!` and `abc123[x]` are passwords, as
/// is `Xk9(mP2v`; and a `<` must open a type (`Vec<u8>`, not `iloveyou<3`).
fn call_or_generic(value: &[u8]) -> bool {
    // A unary operator before a call (`!secret.is_empty()`, `-offset.abs()`); before anything
    // else (`!Welcome!`, `-Dragon!`) it is a password's first character.
    let (value, unary) = match value {
        [b'!' | b'*' | b'&' | b'-', rest @ ..] => (rest, true),
        _ => (value, false),
    };
    let Some(p) = value
        .iter()
        .position(|c| matches!(c, b'!' | b'[' | b'(' | b'{' | b'<'))
    else {
        return false;
    };
    let next = value.get(p + 1).copied();
    // After a unary operator the value is code only with a call in it (`!secret.is_empty()`,
    // `!matches!(x, None)`, `!keys[0].is_empty()`); otherwise the operator is a password's
    // first character (`!Welcome!`, `!monkey[1]`, `-dragon!{42}`).
    if unary && !value.contains(&b'(') {
        return false;
    }
    let opens = match value[p] {
        b'!' => matches!(next, None | Some(b'[' | b'(' | b'{')),
        b'<' => next.is_some_and(|c| c.is_ascii_alphabetic() || matches!(c, b'_' | b'&' | b'\'')),
        _ => true,
    };
    // The identifier with `->` and `::` read as `.`.
    let mut ident = Vec::with_capacity(p);
    let mut i = 0;
    while i < p {
        match &value[i..p] {
            [b'-', b'>', ..] | [b':', b':', ..] => {
                ident.push(b'.');
                i += 2;
            }
            [c, ..] => {
                ident.push(*c);
                i += 1;
            }
            [] => break,
        }
    }
    // A path (`a.b`, `a->b`, `a::b`) is code only before a call: `Hello.World!`, `Go->Home!`
    // and `Pass.Word[1]` are passwords. An index or a block follows a lower-case name
    // (`secrets[0]`), not a capitalised one.
    let lower_start = ident
        .first()
        .is_some_and(|c| c.is_ascii_lowercase() || *c == b'_');
    if (ident.contains(&b'.') && value[p] != b'(')
        || (matches!(value[p], b'[' | b'{') && !lower_start)
    {
        return false;
    }
    let name = |c: &u8| c.is_ascii_alphabetic() || matches!(c, b'_' | b'.');
    let function =
        |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'.');
    opens
        && ident
            .first()
            .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
        && (ident.iter().all(name) || (value[p] == b'(' && ident.iter().all(function)))
}

/// True when `value` looks like a real credential rather than a reference, placeholder or
/// ordinary word: long enough, mixed, high entropy, and not an env/template reference.
pub(crate) fn looks_like_secret(value: &[u8]) -> bool {
    looks_like_secret_after(value, true)
}

/// [`looks_like_secret`], saying whether the value stands where a type name could
/// (`may_be_a_type`): unquoted after a `:` (`tokens: AtomicU64`, `secret: SecretString`).
/// After `=` or ` is `, or in quotes, CamelCase with digits is a password (`my password is
/// HappyDog16`, `"MyPass1Word"`).
pub(crate) fn looks_like_secret_after(value: &[u8], may_be_a_type: bool) -> bool {
    if value.len() < 6 || value.len() > 512 {
        return false;
    }
    let first = value[0];
    if matches!(
        first,
        b'$' | b'%' | b'<' | b'{' | b'[' | b'(' | b'/' | b'~' | b'.' | b'*' | b'&'
    ) {
        return false;
    }
    let lower: Vec<u8> = value.iter().map(u8::to_ascii_lowercase).collect();
    if placeholder(&lower) {
        return false;
    }
    if value.contains(&b' ') && !passphrase(value, &lower) {
        return false;
    }
    // Plain identifiers such as `user_password` or `get_token` are names, not values.
    if value
        .iter()
        .all(|b| b.is_ascii_lowercase() || *b == b'_' || *b == b'.')
        && value.contains(&b'_')
    {
        return false;
    }
    // Rust/C++ paths (`FinishReason::Length`) and a stray `:` from `Type::Variant`.
    if first == b':' || value.windows(2).any(|w| w == b"::") {
        return false;
    }
    // Environment variable names (`api_key_env = "OPENAI_API_KEY"`) name the secret, not hold it.
    if value.contains(&b'_')
        && value
            .iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_')
    {
        return false;
    }
    if may_be_a_type && type_name(value) {
        return false;
    }
    if call_or_generic(value) {
        return false;
    }
    // Code references such as `form.password.data` or `cfg.api_key2` are not values.
    let identifier_path = value.contains(&b'.')
        && value.split(|&c| c == b'.').all(|seg| {
            seg.first()
                .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
                && seg.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
        });
    if identifier_path {
        return false;
    }
    let h = entropy(value);
    let classes = char_classes(value);
    // Short values need a digit or a symbol: `getToken` and `Summer` are words, `hunter2` is not.
    let marked = value.iter().any(|c| !c.is_ascii_alphabetic());
    (classes >= 2 && marked && h >= 2.5) || (value.len() >= 20 && h >= 3.0)
}

pub(crate) fn card_ok(b: &[u8], groups: &[(usize, usize)]) -> bool {
    let Some(first) = groups.first() else {
        return false;
    };
    // One separator character used throughout.
    let sep = groups.get(1).map(|g| &b[first.1..g.0]);
    if groups
        .windows(2)
        .any(|w| Some(&b[w[0].1..w[1].0]) != sep || w[1].0 - w[0].1 != 1)
    {
        return false;
    }
    let lens: Vec<usize> = groups.iter().map(|g| g.1 - g.0).collect();
    let total: usize = lens.iter().sum();
    if !(12..=19).contains(&total) || !card_grouping_ok(&lens) {
        return false;
    }
    let digits: Vec<u8> = groups.iter().flat_map(|g| &b[g.0..g.1]).copied().collect();
    luhn(&digits) && card_issuer_ok(&digits)
}

pub(crate) fn ipv4_ok(t: &[u8]) -> bool {
    t.split(|&c| c == b'.').all(|o| {
        let v = o.iter().fold(0u32, |a, &d| a * 10 + u32::from(d - b'0'));
        !o.is_empty() && v <= 255 && !(o.len() > 1 && o[0] == b'0')
    })
}

pub(crate) fn parens_ok(t: &[u8]) -> bool {
    let open = t.iter().filter(|&&c| c == b'(').count();
    let close = t.iter().filter(|&&c| c == b')').count();
    open == close && open <= 1
}

/// Separator sanity shared by phone formats: no doubled separators (except around a
/// parenthesis), balanced parentheses, at most two separator kinds.
pub(crate) fn phone_shape_ok(t: &[u8]) -> bool {
    if !parens_ok(t) {
        return false;
    }
    let mut kinds = [false; 4];
    let mut prev_sep = false;
    for &c in t {
        let k = match c {
            b' ' => Some(0),
            b'-' => Some(1),
            b'.' => Some(2),
            b'/' => Some(3),
            _ => None,
        };
        match k {
            Some(k) => {
                if prev_sep {
                    return false;
                }
                kinds[k] = true;
                prev_sep = true;
            }
            None => prev_sep = false,
        }
    }
    kinds.iter().filter(|&&k| k).count() <= 2
}

/// Looks like a date at the start (`2024-03-15`, `15.03.2024`, `03/15/24`).
pub(crate) fn date_like(t: &[u8]) -> bool {
    let groups: Vec<&[u8]> = t
        .split(|c| !c.is_ascii_digit())
        .filter(|g| !g.is_empty())
        .collect();
    let seps: Vec<u8> = t.iter().copied().filter(|c| !c.is_ascii_digit()).collect();
    if groups.len() < 3 || seps.len() < 2 || seps[0] != seps[1] || seps[0] == b' ' {
        return false;
    }
    let (a, m, c) = (groups[0].len(), groups[1].len(), groups[2].len());
    // `15.03.24` alone is a date; `06.12.34.56.78` (five pairs) is a French phone number.
    (a == 4 && m <= 2 && c <= 2) || (a <= 2 && m <= 2 && (c == 4 || groups.len() == 3))
}

/// `+CC ...` numbers: E.164 length (8–15 digits) with per-country lengths for the common codes.
pub(crate) fn intl_phone_ok(t: &[u8]) -> bool {
    // `+49 ...` or `0049 ...`.
    let t = t
        .strip_prefix(b"+")
        .or_else(|| t.strip_prefix(b"00"))
        .unwrap_or(t);
    if !phone_shape_ok(t) {
        return false;
    }
    // `(0)` is the national trunk prefix some people write after the country code.
    let trunk = t.windows(3).any(|w| w == b"(0)");
    let digits: Vec<u8> = t.iter().copied().filter(u8::is_ascii_digit).collect();
    let n = digits.len() - usize::from(trunk);
    let cc = |p: &[u8]| digits.starts_with(p);
    if cc(b"1") {
        n == 11
    } else if cc(b"44") {
        (11..=12).contains(&n)
    } else if cc(b"49") {
        (10..=14).contains(&n)
    } else if cc(b"33") {
        n == 11
    } else {
        (8..=15).contains(&n)
    }
}

/// National numbers with a leading trunk `0` (UK, DE, FR and most of Europe): 10–12 digits.
pub(crate) fn national_phone_ok(t: &[u8]) -> bool {
    let digits = t.iter().filter(|c| c.is_ascii_digit()).count();
    // Nine digits only with a bracketed area code (`(040) 558756`).
    let min = if t.first() == Some(&b'(') { 9 } else { 10 };
    if !(min..=12).contains(&digits) || !phone_shape_ok(t) || date_like(t) {
        return false;
    }
    // A `/` only separates the area code (`030/1234567`).
    let slash = t.iter().position(|&c| c == b'/');
    match slash {
        Some(p) => {
            t[..p]
                .iter()
                .all(|c| c.is_ascii_digit() || *c == b'(' || *c == b')')
                && !t[p + 1..].contains(&b'/')
        }
        None => true,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn luhn_known_values() {
        assert!(luhn(b"4111111111111111"));
        assert!(luhn(b"5500000000000004"));
        assert!(luhn(b"378282246310005"));
        assert!(!luhn(b"4111111111111112"));
        assert!(!luhn(b""));
        assert!(!luhn(b"41111x1111111111"));
    }

    #[test]
    fn issuers() {
        assert!(card_issuer_ok(b"4111111111111111"));
        assert!(card_issuer_ok(b"2221000000000009")); // Mastercard 2-series
        assert!(card_issuer_ok(b"2720990000000007"));
        assert!(!card_issuer_ok(b"2721000000000000"));
        assert!(card_issuer_ok(b"378282246310005"));
        assert!(!card_issuer_ok(b"37828224631000")); // Amex is 15 digits
        assert!(card_issuer_ok(b"6011111111111117"));
        assert!(card_issuer_ok(b"3088000000000009")); // legacy JCB
        assert!(card_issuer_ok(b"30000000000004")); // Diners 14
        assert!(card_issuer_ok(b"6304000000000000")); // Maestro
        assert!(!card_issuer_ok(b"1234567812345670"));
        assert!(!card_issuer_ok(b"9111111111111111"));
    }

    #[test]
    fn grouping() {
        assert!(card_grouping_ok(&[16]));
        assert!(card_grouping_ok(&[4, 4, 4, 4]));
        assert!(card_grouping_ok(&[4, 6, 5]));
        assert!(card_grouping_ok(&[4, 4, 4, 4, 3]));
        assert!(!card_grouping_ok(&[4, 4, 4, 4, 2, 2]));
        assert!(!card_grouping_ok(&[3, 3, 4, 4, 2]));
        assert!(!card_grouping_ok(&[]));
    }

    #[test]
    fn iban_checks() {
        assert!(iban_valid(b"DE89370400440532013000"));
        assert!(iban_valid(b"GB82WEST12345698765432"));
        assert!(iban_valid(b"FR1420041010050500013M02606"));
        assert!(iban_valid(b"NL91ABNA0417164300"));
        assert!(!iban_valid(b"DE89370400440532013001")); // checksum
        assert!(!iban_valid(b"DE8937040044053201300")); // length
        assert!(!iban_valid(b"ZZ89370400440532013000")); // country
        assert!(!iban_valid(b"DE"));
    }

    #[test]
    fn ssn_rules() {
        assert!(ssn_valid(123, 45, 6789));
        assert!(!ssn_valid(0, 45, 6789));
        assert!(!ssn_valid(666, 45, 6789));
        assert!(!ssn_valid(901, 45, 6789));
        assert!(!ssn_valid(123, 0, 6789));
        assert!(!ssn_valid(123, 45, 0));
    }

    #[test]
    fn secrets_vs_placeholders() {
        assert!(looks_like_secret(b"Tr0ub4dor&3"));
        assert!(looks_like_secret(b"9f8a7c6b5d4e3f2a1b0c9d8e7f6a5b4c"));
        assert!(!looks_like_secret(b"changeme"));
        assert!(!looks_like_secret(b"${DB_PASSWORD}"));
        assert!(!looks_like_secret(b"process.env.API_KEY"));
        assert!(!looks_like_secret(b"user_password"));
        assert!(!looks_like_secret(b"short"));
        assert!(looks_like_secret(b"hunter2"));
        assert!(!looks_like_secret(b"hunter"));
        assert!(!looks_like_secret(b"1024"));
        assert!(!looks_like_secret(b"form.password.data"));
        assert!(!looks_like_secret(b"userInput.password"));
        assert!(!looks_like_secret(b"getToken"));
        assert!(!looks_like_secret(b"FinishReason::Length"));
        assert!(!looks_like_secret(b":MaxTokens"));
        assert!(!looks_like_secret(b"OPENAI_API_KEY"));
        assert!(!looks_like_secret(b"AtomicU64"));
        assert!(looks_like_secret(b"Summer2024"));
        assert!(looks_like_secret(b"Summer2024!"));
        assert!(looks_like_secret(b"jhKxbM!33"));
        assert!(!looks_like_secret(b"Token![;]"));
        assert!(!looks_like_secret(b"quote_spanned!"));
        assert!(!looks_like_secret(b"&CancellationToken"));
        assert!(looks_like_secret(b"correcthorsebatterystaple"));
    }

    #[test]
    fn human_passwords_vs_code_values() {
        for password in [
            "BlueSky2024",
            "MyDog2015",
            "HelloWorld123",
            "TrueBlue#42",
            "Nonexistent9!",
            "string-cheese-42",
            "Xk9(mP2v",
            "P@ss(w0rd)",
            "iloveyou<3",
            "correct horse battery staple",
        ] {
            assert!(looks_like_secret(password.as_bytes()), "{password}");
        }
        for code in [
            "HmacSha256",
            "BigUint64",
            "SocketAddrV4",
            "AtomicU64",
            "Option<String>",
            "string|null",
            "None",
            "Vec<u8>",
            "get_password(user).await?",
            "client.read(path",
            "sha256(password",
            "Enter your password",
            "must be at least 8 characters",
        ] {
            assert!(!looks_like_secret(code.as_bytes()), "{code}");
        }
    }

    #[test]
    fn bangs_unary_calls_and_phrases() {
        for password in [
            "summer2024!",
            "hunter22!",
            "qwerty123!",
            "abc123[xyz",
            "my dog ate the homework",
            "a purple elephant dances",
            "Xk9 mP2v;q7",
        ] {
            assert!(looks_like_secret(password.as_bytes()), "{password}");
        }
        for code in [
            "!secret.is_empty(",
            "lexer->next(",
            "-offset.abs(",
            "it->second.get(",
            "AWS Secrets Manager",
            "Used by CI pipeline",
            "Personal Access Token",
            "prod db",
            "used by the ci pipeline",
        ] {
            assert!(!looks_like_secret(code.as_bytes()), "{code}");
        }
    }
}

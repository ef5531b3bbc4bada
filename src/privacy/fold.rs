//! Typographic separators folded to ASCII before the number detectors run.
//!
//! People (and word processors, and French typography) write numbers with separators the
//! ASCII-only detectors do not know: `FR14 2004 1010` with no-break spaces (U+00A0, U+202F,
//! U+2007, U+2009 ...), `123–45–6789` with en dashes or non-breaking hyphens, `4111  1111` with
//! two spaces. [`fold`] builds a copy of a digit zone (the text around digits that the number
//! detectors scan) where each such separator is its ASCII equivalent (a space or `-`) and a
//! run of two or more spaces between a digit and a letter or digit becomes one space, with a
//! map back to the original byte offsets. The detectors scan the copy and every span is mapped
//! back, so spans cover the original characters and stay on its char boundaries.
//!
//! Only zones that hold such a separator pay for the copy: the check is a SIMD search for the
//! lead bytes of the folded characters, plus a search for two spaces in a row when the zone
//! scan saw a digit next to two spaces.

/// Spaces folded to `' '`: no-break, figure, thin, narrow no-break and the other Unicode
/// spaces of the General Punctuation block, and the ideographic space.
fn is_space(c: char) -> bool {
    matches!(
        c,
        '\u{00A0}' | '\u{2000}'..='\u{200A}' | '\u{202F}' | '\u{205F}' | '\u{3000}'
    )
}

/// Dashes folded to `'-'`: hyphen, non-breaking hyphen, figure dash, en dash, minus sign, and
/// (see [`is_sentence_dash`]) the em dash and horizontal bar.
fn is_dash(c: char) -> bool {
    matches!(c, '\u{2010}'..='\u{2015}' | '\u{2212}')
}

/// The em dash and horizontal bar are sentence punctuation (`the plan—finally`), folded only
/// between two digits, where a word processor's "--" autocorrection put them (`555—0132`).
fn is_sentence_dash(c: char) -> bool {
    matches!(c, '\u{2014}' | '\u{2015}')
}

/// Byte length of the folded separator (see [`is_space`], [`is_dash`]) that starts at `b[i]`,
/// if one does. Byte patterns, so the digit scan can look next to each digit without decoding.
pub(crate) fn separator_len_at(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i..)? {
        [0xC2, 0xA0, ..] => Some(2),
        [0xE2, 0x80, 0x80..=0x8A | 0x90..=0x95 | 0xAF, ..]
        | [0xE2, 0x81, 0x9F, ..]
        | [0xE2, 0x88, 0x92, ..]
        | [0xE3, 0x80, 0x80, ..] => Some(3),
        _ => None,
    }
}

/// Whether a folded separator ends right before `b[i]`.
pub(crate) fn separator_ends_at(b: &[u8], i: usize) -> bool {
    (i >= 2 && separator_len_at(b, i - 2) == Some(2))
        || (i >= 3 && separator_len_at(b, i - 3) == Some(3))
}

/// The folded copy of a text and the way back to the original offsets.
pub(crate) struct Folded {
    text: String,
    /// `(folded offset, original offset)` where the offset difference changes: from each
    /// point on, `orig = point.1 + (pos - point.0)` until the next point. Starts with `(0, 0)`.
    points: Vec<(usize, usize)>,
}

impl Folded {
    /// The folded text (same characters as the original except the folded separators).
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// The original byte offset of folded offset `pos` (a start or an end). A char boundary of
    /// the folded text maps to a char boundary of the original: a folded separator (one ASCII
    /// byte) maps to the whole original character or run of spaces.
    pub(crate) fn original(&self, pos: usize) -> usize {
        let i = self
            .points
            .partition_point(|p| p.0 <= pos)
            .saturating_sub(1);
        let (f, o) = self.points.get(i).copied().unwrap_or((0, 0));
        o + pos.saturating_sub(f)
    }
}

/// Folds the separators of `text` (see the module docs). `None` when nothing needs folding.
/// `spaced` says whether a digit of `text` is next to two ASCII spaces: when it is not, runs
/// of ASCII spaces need no look (they only fold next to a digit), which keeps indented source
/// code cheap.
pub(crate) fn fold(text: &str, spaced: bool) -> Option<Folded> {
    let b = text.as_bytes();
    // Lead bytes of every folded character: C2 (U+00A0), E2 (U+2000..U+2FFF), E3 (U+3000).
    let mut wide = memchr::memchr3_iter(0xC2, 0xE2, 0xE3, b).peekable();
    let mut doubles = spaced
        .then(|| memchr::memmem::find_iter(b, b"  "))
        .into_iter()
        .flatten()
        .peekable();
    let mut out: Option<Folded> = None;
    // Bytes of `text` before `cursor` are already in `out` (or need no change); candidates
    // before `pos` are decided.
    let mut cursor = 0;
    let mut pos = 0;
    loop {
        while wide.next_if(|&p| p < pos).is_some() {}
        while doubles.next_if(|&p| p < pos).is_some() {}
        let at = match (wide.peek(), doubles.peek()) {
            (Some(&w), Some(&d)) => w.min(d),
            (Some(&w), None) => w,
            (None, Some(&d)) => d,
            (None, None) => break,
        };
        let Some(c) = text.get(at..).and_then(|r| r.chars().next()) else {
            // Not a char boundary (a continuation byte equal to a lead byte cannot occur in
            // UTF-8, but stay total): move on.
            pos = at + 1;
            continue;
        };
        let between_digits = || {
            at.checked_sub(1).is_some_and(|p| b[p].is_ascii_digit())
                && b.get(at + c.len_utf8()).is_some_and(u8::is_ascii_digit)
        };
        if is_dash(c) && (!is_sentence_dash(c) || between_digits()) {
            let f = out.get_or_insert_with(|| start(text, cursor));
            f.text.push_str(&text[cursor..at]);
            f.text.push('-');
            cursor = at + c.len_utf8();
            pos = cursor;
            f.points.push((f.text.len(), cursor));
            continue;
        }
        if c != ' ' && !is_space(c) {
            pos = at + c.len_utf8();
            continue;
        }
        // A run of spaces, ASCII or Unicode, that may have begun with ASCII spaces before `at`.
        let mut run_start = at;
        while run_start > cursor && b[run_start - 1] == b' ' {
            run_start -= 1;
        }
        let mut run_end = run_start;
        let mut chars = 0usize;
        let mut unicode = false;
        while let Some(c) = text.get(run_end..).and_then(|r| r.chars().next()) {
            if c == ' ' {
                run_end += 1;
            } else if is_space(c) {
                run_end += c.len_utf8();
                unicode = true;
            } else {
                break;
            }
            chars += 1;
        }
        let before = run_start.checked_sub(1).map(|i| b[i]);
        let after = b.get(run_end).copied();
        let joins = chars >= 2
            && before.is_some_and(|c| c.is_ascii_alphanumeric())
            && after.is_some_and(|c| c.is_ascii_alphanumeric())
            && (before.is_some_and(|c| c.is_ascii_digit())
                || after.is_some_and(|c| c.is_ascii_digit()));
        if joins {
            let f = out.get_or_insert_with(|| start(text, cursor));
            f.text.push_str(&text[cursor..run_start]);
            f.text.push(' ');
            f.points.push((f.text.len(), run_end));
        } else if unicode {
            let f = out.get_or_insert_with(|| start(text, cursor));
            f.text.push_str(&text[cursor..run_start]);
            let mut i = run_start;
            while let Some(c) = text.get(i..run_end).and_then(|r| r.chars().next()) {
                i += c.len_utf8();
                f.text.push(' ');
                if c != ' ' {
                    f.points.push((f.text.len(), i));
                }
            }
        } else if let Some(f) = out.as_mut() {
            f.text.push_str(&text[cursor..run_end]);
        }
        cursor = run_end;
        pos = run_end;
    }
    let mut f = out?;
    f.text.push_str(&text[cursor..]);
    Some(f)
}

/// Folds the characters that stand for ASCII ones, or for nothing, so that every built-in
/// detector reads them as what they say (see [`form_of`]): fullwidth forms, the decimal digits
/// of other scripts, mathematical letters and digits, letterlike symbols, and invisible format
/// characters (zero-width spaces
/// and joiners, the soft hyphen, direction marks, the byte order mark, variation selectors),
/// which are dropped. `None` when the text has none: ASCII runs are skipped 16 bytes at a time.
pub(crate) fn fold_forms(text: &str) -> Option<Folded> {
    let b = text.as_bytes();
    let mut out: Option<Folded> = None;
    let mut cursor = 0;
    let mut pos = 0;
    while let Some(at) = next_non_ascii(b, pos) {
        if !FORM_LEADS.contains(&b[at]) {
            // Accented Latin, Greek, Cyrillic, CJK ...: nothing to fold, no need to decode.
            pos = at + utf8_len(b[at]);
            continue;
        }
        let Some(c) = text.get(at..).and_then(|r| r.chars().next()) else {
            // A continuation byte: not reached from a char boundary, but stay total.
            pos = at + 1;
            continue;
        };
        pos = at + c.len_utf8();
        let Some(form) = form_of(c) else {
            continue;
        };
        let f = out.get_or_insert_with(|| start(text, cursor));
        f.text.push_str(&text[cursor..at]);
        if let Form::Ascii(a) = form {
            f.text.push(a);
        }
        cursor = pos;
        f.points.push((f.text.len(), cursor));
    }
    let mut f = out?;
    f.text.push_str(&text[cursor..]);
    Some(f)
}

/// What [`fold_forms`] makes of a character.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// Read as this ASCII character.
    Ascii(char),
    /// Invisible: dropped.
    Nothing,
}

/// The first code point (zero) of each run of ten decimal digits read as `0`–`9`: Arabic-Indic,
/// Extended Arabic-Indic (Persian, Urdu), NKo, the Indic scripts (Devanagari to Malayalam),
/// Thai, Lao, Tibetan, Myanmar, Khmer and Mongolian.
const DIGIT_ZEROS: [u32; 18] = [
    0x0660, 0x06F0, 0x07C0, 0x0966, 0x09E6, 0x0A66, 0x0AE6, 0x0B66, 0x0BE6, 0x0C66, 0x0CE6, 0x0D66,
    0x0E50, 0x0ED0, 0x0F20, 0x1040, 0x17E0, 0x1810,
];

/// The UTF-8 lead bytes of every character [`form_of`] folds (U+00AD, U+034F, U+061C,
/// U+0660–U+07C9, U+0966–U+0FFF, U+1040–U+1819, U+200B–U+2069, U+2100–U+214F, U+FE00–U+FF5E,
/// U+1D400–U+1D7FF).
const FORM_LEADS: [u8; 11] = [
    0xC2, 0xCD, 0xD8, 0xD9, 0xDB, 0xDF, 0xE0, 0xE1, 0xE2, 0xEF, 0xF0,
];

/// The length of the UTF-8 sequence that `lead` starts (1 for a stray continuation byte).
fn utf8_len(lead: u8) -> usize {
    match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xFF => 4,
        _ => 1,
    }
}

/// How [`fold_forms`] reads `c`, or `None` to leave it as it is.
fn form_of(c: char) -> Option<Form> {
    let cp = u32::from(c);
    let digit = |d: u32| char::from_digit(d, 10).map(Form::Ascii);
    match cp {
        // Soft hyphen, combining grapheme joiner, Arabic letter mark, Mongolian vowel
        // separator, zero-width space/non-joiner/joiner, left-to-right and right-to-left
        // marks, embeddings and overrides, word joiner and invisible operators, isolates,
        // variation selectors, zero-width no-break space (byte order mark).
        0x00AD
        | 0x034F
        | 0x061C
        | 0x180E
        | 0x200B..=0x200F
        | 0x202A..=0x202E
        | 0x2060..=0x2064
        | 0x2066..=0x2069
        | 0xFE00..=0xFE0F
        | 0xFEFF => Some(Form::Nothing),
        // Arabic decimal and thousands separators, written with Arabic-Indic digits.
        0x066B => Some(Form::Ascii('.')),
        0x066C => Some(Form::Ascii(',')),
        // Fullwidth ASCII: `４１１１`, `ＦＲ１４`, `－`, `＠`.
        0xFF01..=0xFF5E => char::from_u32(cp - 0xFEE0).map(Form::Ascii),
        // Mathematical bold, double-struck, sans-serif (plain and bold) and monospace digits
        // (`𝟒𝟏𝟏𝟏`).
        0x1D7CE..=0x1D7FF => digit((cp - 0x1D7CE) % 10),
        // Mathematical alphanumeric letters (`𝐚𝐧𝐧@𝐞𝐱𝐚𝐦𝐩𝐥𝐞.𝐜𝐨𝐦`, 13 styles) and the letterlike
        // symbols that stand in for the ones missing there (`ℎ`, `ℬ`, `ℯ`, `ℝ`...): whatever
        // Unicode's compatibility decomposition reads as one ASCII letter.
        0x2100..=0x214F | 0x1D400..=0x1D7CB => ascii_compatible(c).map(Form::Ascii),
        0x0660..=0x1819 => DIGIT_ZEROS
            .iter()
            .find(|&&zero| (zero..zero + 10).contains(&cp))
            .and_then(|&zero| digit(cp - zero)),
        _ => None,
    }
}

/// The ASCII letter or digit `c` is a styled form of, by its compatibility decomposition.
fn ascii_compatible(c: char) -> Option<char> {
    let mut parts = (0, None);
    unicode_normalization::char::decompose_compatible(c, |d| {
        parts = (parts.0 + 1, Some(d));
    });
    match parts {
        (1, Some(d)) if d.is_ascii_alphanumeric() => Some(d),
        _ => None,
    }
}

/// The offset of the first non-ASCII byte of `b` at or after `from`.
fn next_non_ascii(b: &[u8], from: usize) -> Option<usize> {
    const HIGH: u128 = u128::from_ne_bytes([0x80; 16]);
    let mut i = from;
    while let Some(chunk) = b.get(i..i + 16) {
        let Ok(word) = <[u8; 16]>::try_from(chunk) else {
            break;
        };
        if u128::from_ne_bytes(word) & HIGH != 0 {
            break;
        }
        i += 16;
    }
    b.get(i..)?.iter().position(|&x| x >= 0x80).map(|p| i + p)
}

/// The folded copy, started with `text[..upto]` (which needs no folding).
fn start(text: &str, upto: usize) -> Folded {
    let mut s = String::with_capacity(text.len());
    s.push_str(&text[..upto]);
    Folded {
        text: s,
        points: vec![(0, 0)],
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_not_copied() {
        for t in [
            "",
            "4111 1111 1111 1111",
            "indented  code  only",
            "x =  (4)",
            "— em dash, ünïcödé, 日本語",
        ] {
            assert!(fold(t, true).is_none(), "{t:?}");
        }
        assert_eq!(fold("日本語\u{3000}", true).unwrap().text(), "日本語 ");
        assert_eq!(fold("a  4", true).unwrap().text(), "a 4");
        // Without a digit next to two spaces, runs of ASCII spaces are not looked at.
        assert!(fold("a  4", false).is_none());
        assert_eq!(
            fold("a  4\u{a0}5 \u{a0}6", false).unwrap().text(),
            "a  4 5 6"
        );
    }

    #[test]
    fn byte_patterns_match_the_folded_characters() {
        for c in '\u{80}'..='\u{3100}' {
            let mut buf = [0u8; 4];
            let e = c.encode_utf8(&mut buf).as_bytes();
            let folded = is_space(c) || is_dash(c);
            assert_eq!(separator_len_at(e, 0), folded.then_some(e.len()), "{c:?}");
            assert_eq!(separator_ends_at(e, e.len()), folded, "{c:?}");
        }
    }

    #[test]
    fn separators_fold_and_map_back() {
        let t =
            "FR14\u{a0}2004\u{202f}1010 \u{2009}0505, 123\u{2013}45\u{2011}6789, 4111  1111 x  y";
        let f = fold(t, true).unwrap();
        assert_eq!(f.text(), "FR14 2004 1010 0505, 123-45-6789, 4111 1111 x  y");
        // Every char boundary of the copy maps to a char boundary of the original, in order,
        // and the folded separators map to the whole original separator.
        assert_maps_in_order(&f, t);
        assert_eq!(
            span(&f, t, "FR14 2004 1010 0505"),
            "FR14\u{a0}2004\u{202f}1010 \u{2009}0505"
        );
        assert_eq!(span(&f, t, "123-45-6789"), "123\u{2013}45\u{2011}6789");
        assert_eq!(span(&f, t, "4111 1111"), "4111  1111");
        assert_eq!(span(&f, t, "x  y"), "x  y");
    }

    /// Every char boundary of the copy maps to a char boundary of the original, in order, and
    /// the copy's end to the original's.
    fn assert_maps_in_order(f: &Folded, t: &str) {
        let mut last = 0;
        for (i, _) in f.text().char_indices().chain([(f.text().len(), ' ')]) {
            let o = f.original(i);
            assert!(t.is_char_boundary(o) && o >= last, "{i} -> {o}");
            last = o;
        }
        assert_eq!(f.original(f.text().len()), t.len());
    }

    /// The original text of the folded text's first `s`.
    fn span<'t>(f: &Folded, t: &'t str, s: &str) -> &'t str {
        let a = f.text().find(s).unwrap();
        &t[f.original(a)..f.original(a + s.len())]
    }

    #[test]
    fn fullwidth_forms_fold_to_ascii_and_map_back() {
        assert!(fold_forms("plain ascii, ünïcödé, 日本語 — “quoted”").is_none());
        let t = "カード４１１１－１１１１ x ＦＲ１４";
        let f = fold_forms(t).unwrap();
        assert_eq!(f.text(), "カード4111-1111 x FR14");
        assert_eq!(span(&f, t, "4111-1111"), "４１１１－１１１１");
        assert_eq!(span(&f, t, "FR14"), "ＦＲ１４");
        assert_eq!(span(&f, t, " x "), " x ");
        assert_eq!(f.original(f.text().len()), t.len());
    }

    #[test]
    fn other_scripts_digits_fold_to_ascii() {
        // Arabic-Indic, Persian, Devanagari, Bengali, Thai, Myanmar, Khmer, mathematical bold
        // and monospace: each 0 to 9.
        for zero in [
            '\u{660}',
            '\u{6f0}',
            '\u{966}',
            '\u{9e6}',
            '\u{e50}',
            '\u{1040}',
            '\u{17e0}',
            '\u{1d7ce}',
            '\u{1d7f6}',
        ] {
            let t: String = (0..10)
                .map(|d| char::from_u32(u32::from(zero) + d).unwrap())
                .collect();
            let f = fold_forms(&t).unwrap();
            assert_eq!(f.text(), "0123456789", "{zero:?}");
            assert_eq!(
                span(&f, &t, "345"),
                t.chars().skip(3).take(3).collect::<String>()
            );
        }
        // Letters and signs of those scripts stay as they are.
        let t = "مرحبا ٤١٥ नमस्ते";
        assert_eq!(fold_forms(t).unwrap().text(), "مرحبا 415 नमस्ते");
    }

    #[test]
    fn invisible_characters_are_dropped_and_spans_cover_them() {
        let t = "\u{200b}4111\u{200b}1111\u{ad}1111\u{2060}1111\u{feff} pass\u{ad}word \u{200e}+33\u{200f}";
        let f = fold_forms(t).unwrap();
        assert_eq!(f.text(), "4111111111111111 password +33");
        // A span starts after the invisible characters before it and covers the ones inside.
        assert_eq!(
            span(&f, t, "4111111111111111"),
            "4111\u{200b}1111\u{ad}1111\u{2060}1111\u{feff}"
        );
        assert_eq!(span(&f, t, "password"), "pass\u{ad}word");
        assert_eq!(f.original(0), "\u{200b}".len());
        // Every char boundary of the copy maps to a char boundary of the original, in order.
        assert_maps_in_order(&f, t);
        // Only invisible characters: an empty copy.
        assert_eq!(fold_forms("\u{200b}\u{200d}").unwrap().text(), "");
    }

    #[test]
    fn em_dash_folds_only_between_digits() {
        let t = "call 555\u{2014}0132 \u{2014} or 555\u{2015}0199\u{2014}x, the plan\u{2014}finally 7\u{2014}";
        let f = fold(t, false).unwrap();
        assert_eq!(
            f.text(),
            "call 555-0132 \u{2014} or 555-0199\u{2014}x, the plan\u{2014}finally 7\u{2014}"
        );
        assert_eq!(span(&f, t, "555-0132"), "555\u{2014}0132");
        assert!(fold("the plan\u{2014}finally, 1990 \u{2014} 2000", false).is_none());
    }

    #[test]
    fn lead_bytes_cover_every_folded_character() {
        let mut folded = 0;
        for c in (0x80..=0x10FFFFu32).filter_map(char::from_u32) {
            let mut buf = [0u8; 4];
            let e = c.encode_utf8(&mut buf).as_bytes();
            assert_eq!(utf8_len(e[0]), e.len(), "{c:?}");
            if form_of(c).is_some() {
                folded += 1;
                assert!(FORM_LEADS.contains(&e[0]), "{c:?}");
            }
        }
        // 180 digits of 18 scripts, 94 fullwidth forms, 50 mathematical digits (5 styles), 40
        // invisible characters, the Arabic decimal and thousands separators, and 684
        // mathematical and letterlike letters and digits read as ASCII by their compatibility
        // decomposition (as Python's unicodedata counts them).
        assert_eq!(folded, 180 + 94 + 50 + 40 + 2 + 684);
    }

    #[test]
    fn non_ascii_search_finds_every_position() {
        let t = "a".repeat(40) + "é" + &"b".repeat(17) + "ü";
        let b = t.as_bytes();
        assert_eq!(next_non_ascii(b, 0), Some(40));
        assert_eq!(next_non_ascii(b, 41), Some(41));
        assert_eq!(next_non_ascii(b, 42), Some(59));
        assert_eq!(next_non_ascii(b, 61), None);
        assert_eq!(next_non_ascii(b, 99), None);
    }
}

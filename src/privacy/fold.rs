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

/// Dashes folded to `'-'`: hyphen, non-breaking hyphen, figure dash, en dash, minus sign.
/// The em dash (U+2014) is sentence punctuation, not a digit separator, and is left alone.
fn is_dash(c: char) -> bool {
    matches!(c, '\u{2010}'..='\u{2013}' | '\u{2212}')
}

/// Byte length of the folded separator (see [`is_space`], [`is_dash`]) that starts at `b[i]`,
/// if one does. Byte patterns, so the digit scan can look next to each digit without decoding.
pub(crate) fn separator_len_at(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i..)? {
        [0xC2, 0xA0, ..] => Some(2),
        [0xE2, 0x80, 0x80..=0x8A | 0x90..=0x93 | 0xAF, ..]
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
        if is_dash(c) {
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

/// Folds fullwidth ASCII forms (U+FF01–U+FF5E: `４１１１`, `ＦＲ１４`, `－`, `＠`), which
/// Chinese and Japanese input methods type, to ASCII, so that the built-in detectors read
/// `４１１１　１１１１…` as the card it is. `None` when the text has none.
pub(crate) fn fold_fullwidth(text: &str) -> Option<Folded> {
    let b = text.as_bytes();
    let mut out: Option<Folded> = None;
    let mut cursor = 0;
    for at in memchr::memchr_iter(0xEF, b) {
        if at < cursor {
            continue;
        }
        let Some(c) = text.get(at..).and_then(|r| r.chars().next()) else {
            continue;
        };
        let Some(ascii) = fullwidth_to_ascii(c) else {
            continue;
        };
        let f = out.get_or_insert_with(|| start(text, cursor));
        f.text.push_str(&text[cursor..at]);
        f.text.push(ascii);
        cursor = at + c.len_utf8();
        f.points.push((f.text.len(), cursor));
    }
    let mut f = out?;
    f.text.push_str(&text[cursor..]);
    Some(f)
}

/// The ASCII character a fullwidth form stands for.
fn fullwidth_to_ascii(c: char) -> Option<char> {
    let cp = u32::from(c);
    (0xFF01..=0xFF5E)
        .contains(&cp)
        .then(|| char::from_u32(cp - 0xFEE0))
        .flatten()
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
        let mut last = 0;
        for (i, _) in f.text().char_indices().chain([(f.text().len(), ' ')]) {
            let o = f.original(i);
            assert!(t.is_char_boundary(o) && o >= last, "{i} -> {o}");
            last = o;
        }
        assert_eq!(f.original(f.text().len()), t.len());
        let span = |s: &str| {
            let a = f.text().find(s).unwrap();
            &t[f.original(a)..f.original(a + s.len())]
        };
        assert_eq!(
            span("FR14 2004 1010 0505"),
            "FR14\u{a0}2004\u{202f}1010 \u{2009}0505"
        );
        assert_eq!(span("123-45-6789"), "123\u{2013}45\u{2011}6789");
        assert_eq!(span("4111 1111"), "4111  1111");
        assert_eq!(span("x  y"), "x  y");
    }

    #[test]
    fn fullwidth_forms_fold_to_ascii_and_map_back() {
        assert!(fold_fullwidth("plain ascii, ünïcödé, 日本語").is_none());
        let t = "カード４１１１－１１１１ x ＦＲ１４";
        let f = fold_fullwidth(t).unwrap();
        assert_eq!(f.text(), "カード4111-1111 x FR14");
        let span = |s: &str| {
            let a = f.text().find(s).unwrap();
            &t[f.original(a)..f.original(a + s.len())]
        };
        assert_eq!(span("4111-1111"), "４１１１－１１１１");
        assert_eq!(span("FR14"), "ＦＲ１４");
        assert_eq!(span(" x "), " x ");
        assert_eq!(f.original(f.text().len()), t.len());
    }
}

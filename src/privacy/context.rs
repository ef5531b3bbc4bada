//! Byte-level facts about the text around a candidate: whether it is glued to a longer token,
//! which label words precede it, where the digits are. Shared by the detectors; pure and
//! total (any offsets inside the text, never a panic).

use super::fold::{separator_ends_at, separator_len_at};

pub(crate) fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// True when `[s, e)` is not glued to a longer token: no word character on either side, no
/// `X-`/`X.`/`X/` code prefix, and no digit group continuing across a separator (the digits
/// inside an IBAN, a card, a date or a version string). `space_joins` also treats a single
/// space between digit groups as joining them.
pub(crate) fn isolated(b: &[u8], s: usize, e: usize, space_joins: bool) -> bool {
    clean_before(b, s, space_joins) && clean_after(b, e, space_joins)
}

pub(crate) fn clean_before(b: &[u8], s: usize, space_joins: bool) -> bool {
    let Some(&c) = s.checked_sub(1).and_then(|i| b.get(i)) else {
        return true;
    };
    let p = if s >= 2 { b[s - 2] } else { b' ' };
    if is_word(c) {
        return false;
    }
    if matches!(c, b'-' | b'.' | b'/' | b'_' | b'+') && is_word(p) || c == b'#' {
        return false;
    }
    // A number right before (`10:30`, `0044 0532...`) joins this one; `mc2 4111...` does not.
    // Commas do not join: CSV rows put unrelated numbers side by side.
    let number_before = s >= 2 && number_ends_at(b, s - 2);
    if c == b':' && number_before {
        return false;
    }
    !(space_joins && c == b' ' && number_before)
}

pub(crate) fn clean_after(b: &[u8], e: usize, space_joins: bool) -> bool {
    let Some(&c) = b.get(e) else {
        return true;
    };
    if is_word(c) {
        return false;
    }
    let number_after = number_starts_at(b, e + 1);
    if matches!(c, b'-' | b'.' | b'/' | b':') && number_after {
        return false;
    }
    !(space_joins && c == b' ' && number_after)
}

/// True when `b[i]` ends a token made only of digits, or an account-number group such as
/// `DE89` or `DBRI` (upper-case letters and digits, the way IBANs are written in groups).
pub(crate) fn number_ends_at(b: &[u8], i: usize) -> bool {
    let Some(&last) = b.get(i) else {
        return false;
    };
    let mut k = i + 1;
    while k > 0 && (b[k - 1].is_ascii_digit() || b[k - 1].is_ascii_uppercase()) {
        k -= 1;
    }
    let token = &b[k..=i];
    if token.is_empty() {
        return false;
    }
    let clean_start = k == 0 || !is_word(b[k - 1]);
    let digits_only = token.iter().all(u8::is_ascii_digit);
    let group =
        token.len() == 4 && (last.is_ascii_digit() || token.iter().all(u8::is_ascii_uppercase));
    clean_start && (digits_only || group)
}

/// True when `b[i]` starts a token made only of digits.
pub(crate) fn number_starts_at(b: &[u8], i: usize) -> bool {
    if !b.get(i).is_some_and(u8::is_ascii_digit) {
        return false;
    }
    let mut k = i;
    while k < b.len() && b[k].is_ascii_digit() {
        k += 1;
    }
    k == b.len() || !is_word(b[k])
}

/// Negative label words for [`context`]: words saying that the number after them is something
/// else (an order number, a version). A negative label matched by mistake hides PII, so these
/// match whole words only (`vin`, not the start of `Vincent`; `part`, not `partner`), unless
/// listed as stems. Positive labels stay prefixes (`tel` in `telephone`): a wrong positive only
/// makes a detection more likely.
pub(crate) struct Negative {
    /// Whole words, each possibly followed by one of [`WORD_ENDINGS`] (`orders`,
    /// `Ticketnummer`), then a word boundary (see [`word_ends_at`]: `order_id`, `orderId`).
    pub words: &'static [&'static [u8]],
    /// Stems, matched at the start of a word whatever follows (`bestell` in `Bestellnummer`).
    pub stems: &'static [&'static [u8]],
}

impl Negative {
    /// No negative labels.
    pub(crate) const NONE: Negative = Negative {
        words: &[],
        stems: &[],
    };
}

/// Endings a whole-word negative label may take: plurals and the number words of compounds
/// (`tickets`, `batches`, `Ticketnummer`, `partno`, `orderid`).
const WORD_ENDINGS: &[&[u8]] = &[
    b"s", b"es", b"nummer", b"number", b"nr", b"no", b"num", b"id",
];

/// Longest label plus ending, in bytes: a label starting further left cannot end later.
const LONGEST_LABEL: usize = 32;

/// True when no letter continues a word at `e`: the text ends, or `b[e]` is not a letter (a
/// digit, `_`, punctuation, space), or it starts a camelCase hump (`orderId`).
fn word_ends_at(b: &[u8], e: usize) -> bool {
    let Some(&c) = b.get(e) else {
        return true;
    };
    if c.is_ascii_alphabetic() {
        return c.is_ascii_uppercase() && e > 0 && b[e - 1].is_ascii_lowercase();
    }
    if c < 0x80 {
        return true;
    }
    // A non-ASCII letter (`Partié`) continues the word; a dash or a symbol does not.
    let rest = &b[e..(e + 4).min(b.len())];
    let valid = match std::str::from_utf8(rest) {
        Ok(t) => t,
        Err(err) => std::str::from_utf8(&rest[..err.valid_up_to()]).unwrap_or_default(),
    };
    !valid.chars().next().is_some_and(char::is_alphabetic)
}

/// End of the whole-word label `w` matched at `p`, with its ending if it has one, when a word
/// boundary follows. A label that ends in a non-letter (`#`, `no.`, `ver `) needs none.
fn word_end(b: &[u8], p: usize, w: &[u8]) -> Option<usize> {
    let e = p + w.len();
    if !w.last().is_some_and(u8::is_ascii_alphabetic) || word_ends_at(b, e) {
        return Some(e);
    }
    WORD_ENDINGS
        .iter()
        .filter(|x| {
            b.get(e..e + x.len())
                .is_some_and(|t| t.eq_ignore_ascii_case(x))
        })
        .map(|x| e + x.len())
        .find(|&x| word_ends_at(b, x))
}

/// Looks back up to `window` bytes from `s` for label words. Returns `Some(true)` when the
/// nearest label is a positive one, `Some(false)` when it is a negative one, `None` when none.
pub(crate) fn context(
    b: &[u8],
    s: usize,
    window: usize,
    pos: &[&[u8]],
    neg: &Negative,
) -> Option<bool> {
    let lo = s.saturating_sub(window);
    // End offset of the last occurrence of any word, matched case-insensitively and only at the
    // start of a word ("server" does not contain the label "ver ").
    let (mut best_pos, mut best_neg) = (0usize, 0usize);
    let mut p = s;
    while p > lo {
        p -= 1;
        if p > 0 && is_word(b[p - 1]) && is_word(b[p]) {
            continue;
        }
        if best_pos.max(best_neg) > p + LONGEST_LABEL {
            break;
        }
        let c = b[p].to_ascii_lowercase();
        let at = |w: &&&[u8]| {
            w.first() == Some(&c) && p + w.len() <= s && b[p..p + w.len()].eq_ignore_ascii_case(w)
        };
        for w in pos.iter().filter(at) {
            best_pos = best_pos.max(p + w.len());
        }
        for w in neg.stems.iter().filter(at) {
            best_neg = best_neg.max(p + w.len());
        }
        for w in neg.words.iter().filter(at) {
            if let Some(e) = word_end(b, p, w) {
                best_neg = best_neg.max(e);
            }
        }
    }
    match (best_pos, best_neg) {
        (0, 0) => None,
        (p, n) => Some(p > n),
    }
}

/// A byte range of the text around digits (see [`digit_zones`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Zone {
    pub start: usize,
    pub end: usize,
    /// How many ASCII digits it holds.
    pub digits: usize,
    /// From its first digit to just past its last one.
    pub first_digit: usize,
    pub past_last_digit: usize,
    /// Whether a digit in it is next to two or more ASCII spaces (`4111  1111`).
    pub spaced: bool,
    /// Whether a digit in it is next to a typographic separator that `fold` turns into ASCII
    /// (`4111\u{a0}1111`, `123\u{2013}45`), possibly after ASCII spaces.
    pub wide: bool,
}

/// Separators right next to the digit `b[d]`: (two or more ASCII spaces, a typographic
/// separator), on either side.
fn separators_around(b: &[u8], d: usize) -> (bool, bool) {
    // Most digits sit between digits, letters or ASCII punctuation: one look at each side.
    let next = b.get(d + 1).copied().unwrap_or(0);
    let prev = d.checked_sub(1).map_or(0, |i| b[i]);
    if next != b' ' && next < 0xC2 && prev != b' ' && prev < 0x80 {
        return (false, false);
    }
    let mut a = d + 1;
    while a < b.len() && a <= d + 8 && b[a] == b' ' {
        a += 1;
    }
    let mut z = d;
    while z > 0 && z + 8 > d && b[z - 1] == b' ' {
        z -= 1;
    }
    let spaced = a - d > 2 || d - z >= 2;
    let wide = (b.get(a).is_some_and(|&c| c >= 0xC2) && separator_len_at(b, a).is_some())
        || (z > 0 && b[z - 1] >= 0x80 && separator_ends_at(b, z));
    (spaced, wide)
}

/// The index of the first ASCII digit in `b` at or after `from`. Eight bytes at a time
/// (most text has few digits: this search is most of the cost of scanning prose), then byte
/// by byte in the word that holds one.
fn next_digit(b: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = u64::MAX / 255;
    // Whether a byte of `x` lies strictly between `m` and `n` (m, n ≤ 127): "hasbetween"
    // from Sean Eron Anderson's Bit Twiddling Hacks, exact for these bounds.
    let has_between = |x: u64, m: u64, n: u64| {
        let low7 = x & (ONES * 127);
        let below_n = (ONES * (127 + n)).wrapping_sub(low7);
        let above_m = low7 + ONES * (127 - m);
        (below_n & !x & above_m & (ONES * 128)) != 0
    };
    let mut i = from;
    while let Some(chunk) = b.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        if has_between(
            u64::from_le_bytes(word),
            u64::from(b'0') - 1,
            u64::from(b'9') + 1,
        ) {
            break;
        }
        i += 8;
    }
    b.get(i..)?
        .iter()
        .position(u8::is_ascii_digit)
        .map(|p| i + p)
}

/// Byte ranges of `b` around its digits: each digit with `margin` bytes either side, merged,
/// widened to UTF-8 character boundaries. Text far from any digit cannot hold a digit-bearing
/// match (or the label words before one), so the digit detectors skip it.
pub(crate) fn digit_zones(b: &[u8], margin: usize) -> Vec<Zone> {
    let mut zones: Vec<Zone> = Vec::new();
    let mut i = 0;
    while let Some(first) = next_digit(b, i) {
        let mut last = first;
        let mut digits = 1;
        let (mut spaced, mut wide) = separators_around(b, first);
        let mut j = first + 1;
        while j < b.len() && j <= last + margin {
            if b[j].is_ascii_digit() {
                last = j;
                digits += 1;
                let (s, w) = separators_around(b, j);
                spaced |= s;
                wide |= w;
            }
            j += 1;
        }
        let mut start = first.saturating_sub(margin);
        while start > 0 && (b[start] & 0xC0) == 0x80 {
            start -= 1;
        }
        let mut end = (last + 1 + margin).min(b.len());
        while end < b.len() && (b[end] & 0xC0) == 0x80 {
            end += 1;
        }
        match zones.last_mut() {
            Some(z) if start <= z.end => {
                z.end = end;
                z.digits += digits;
                z.past_last_digit = last + 1;
                z.spaced |= spaced;
                z.wide |= wide;
            }
            _ => zones.push(Zone {
                start,
                end,
                digits,
                first_digit: first,
                past_last_digit: last + 1,
                spaced,
                wide,
            }),
        }
        i = j;
    }
    zones
}

/// Byte ranges of the maximal digit runs in `[s, e)`.
pub(crate) fn digit_groups(b: &[u8], s: usize, e: usize) -> Vec<(usize, usize)> {
    let mut groups = Vec::new();
    let mut i = s;
    while i < e {
        if b[i].is_ascii_digit() {
            let start = i;
            while i < e && b[i].is_ascii_digit() {
                i += 1;
            }
            groups.push((start, i));
        } else {
            i += 1;
        }
    }
    groups
}

/// Length of a phone extension right after a number (`x123`, ` x123`, ` ext. 123`), or 0.
pub(crate) fn extension_len(b: &[u8], e: usize) -> usize {
    let rest = b.get(e..).unwrap_or_default();
    let lead = usize::from(rest.first() == Some(&b' '));
    let r = &rest[lead..];
    let tag = if r.first().is_some_and(|c| c.eq_ignore_ascii_case(&b'x')) {
        1
    } else if r.len() >= 3 && r[..3].eq_ignore_ascii_case(b"ext") {
        if r.get(3) == Some(&b'.') {
            4
        } else {
            3
        }
    } else {
        return 0;
    };
    let mut j = lead + tag;
    if tag > 1 && rest.get(j) == Some(&b' ') {
        j += 1;
    }
    let d = rest[j..].iter().take_while(|c| c.is_ascii_digit()).count();
    if (1..=5).contains(&d) && !rest.get(j + d).is_some_and(|&c| is_word(c)) {
        j + d
    } else {
        0
    }
}

/// Strips sentence punctuation and brackets around an unquoted assigned value.
pub(crate) fn trim_value(b: &[u8], mut s: usize, mut e: usize) -> (usize, usize) {
    while e > s && matches!(b[e - 1], b'.' | b')' | b']' | b'}' | b'>') {
        e -= 1;
    }
    while s < e && matches!(b[s], b'(' | b'[') {
        s += 1;
    }
    (s, e)
}

/// True when one of `words` starts a word within `window` bytes after `e` (a trailing label,
/// as in `"4111..."  # card number`). Case-insensitive.
pub(crate) fn label_after(b: &[u8], e: usize, window: usize, words: &[&[u8]]) -> bool {
    let hi = (e + window).min(b.len());
    (e..hi).any(|p| {
        (p == 0 || !is_word(b[p - 1]))
            && words
                .iter()
                .any(|w| p + w.len() <= b.len() && b[p..p + w.len()].eq_ignore_ascii_case(w))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_digit_finds_the_first_digit_like_a_byte_by_byte_search() {
        // Every byte value at every offset of a word, after every start: the eight-byte
        // test must neither miss a digit nor stop early on a byte next to '0'..'9'.
        for value in 0..=255u8 {
            for at in 0..20 {
                let mut b = vec![b'x'; 24];
                b[at] = value;
                // Neighbours of the digit range, and bytes with the high bit, elsewhere.
                b[(at + 7) % 24] = b'/';
                b[(at + 13) % 24] = b':';
                b[(at + 17) % 24] = 0xB0;
                for from in 0..=b.len() {
                    let want = b[from..]
                        .iter()
                        .position(u8::is_ascii_digit)
                        .map(|p| from + p);
                    assert_eq!(
                        next_digit(&b, from),
                        want,
                        "byte {value:#x} at {at}, from {from}"
                    );
                }
            }
        }
        assert_eq!(next_digit(b"", 0), None);
        assert_eq!(next_digit(b"abc", 5), None);
    }
}

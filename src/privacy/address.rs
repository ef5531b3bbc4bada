//! Street addresses: a house number and the street it is on, as people write them in English
//! (`42 Elm Street`, `221B Baker St, London NW1 6XE`, `5/123 Smith St, Fitzroy VIC 3065`),
//! German and Dutch (`Hauptstraße 5`, `Berliner Straße 12`, `Keizersgracht 123`), French
//! (`12 rue de la Paix`) and Spanish, Italian or Portuguese (`Calle Mayor 5`, `Rua Augusta 12`).
//!
//! The detector starts from each run of digits the scanner already visits, so text without
//! digits costs nothing, and the bytes next to a number rule most numbers out at once. A
//! number is a house number when a street follows it (or, in the name-first languages, comes
//! before it); the span then takes in what completes the address on the same line: a flat or
//! suite, the town, a state and a postcode.
//!
//! Where a street's words are also ordinary words, one more sign that it is somebody's
//! address is needed: a town, postcode or flat after it; words before it that name an address
//! (`my address is`, `I live at`, `ship to`, `Anschrift:`, `abito in`), or a bare `at`, `to`,
//! `from` or `near`, with the sentence going on as after an address; a line of its own (an
//! envelope, not an item of a list under a heading); or quotes around it and nothing else.
//! That holds for English streets (`Top 10 Wall Street banks`, `6 Liverpool Street Station`,
//! `From 2008 Wall Street has changed`), French types that are other words too (`3 Place
//! Settings`, `2 cours de Python`, `44 av. J.-C.`). German nouns ending in a street type
//! (`Parkplatz 12`, `Rückweg 3`) and names that start with a type word (`Via USB 3`, `Plaza
//! Hotel 2`) need a postcode, quotes, or a word that names an address. English in lower case
//! (`i live at 42 elm street`) needs a word that names an address or living somewhere, and
//! only the street types that are not everyday words (`street`, `road`, `ave`; not `way`,
//! `row`, `walk`).
//!
//! Deliberately missed: streets without a type word (`123 Broadway`, `25 Kensington Gore`,
//! `Am Markt 3`, `Unter den Linden 77`), a town alone after an English street as the only sign
//! (`Mrs Smith, 42 Acacia Avenue, Leeds`), `is` and `for` alone before one (`What is the
//! zoning for 42 Elm Street?`), and names of people.

/// A street address found around one digit run: byte span and confidence.
pub(crate) struct Address {
    pub start: usize,
    pub end: usize,
    pub confidence: f32,
}

/// English street types, written after the name (`Elm Street`, `Elm St.`). Capitalised or
/// upper case; matched whole.
const STREET_TYPES: &[&str] = &[
    "Street",
    "St",
    "Avenue",
    "Ave",
    "Av",
    "Road",
    "Rd",
    "Boulevard",
    "Blvd",
    "Lane",
    "Ln",
    "Drive",
    "Dr",
    "Court",
    "Ct",
    "Place",
    "Pl",
    "Terrace",
    "Ter",
    "Circle",
    "Cir",
    "Highway",
    "Hwy",
    "Parkway",
    "Pkwy",
    "Square",
    "Sq",
    "Way",
    "Close",
    "Crescent",
    "Cres",
    "Row",
    "Mews",
    "Gardens",
    "Grove",
    "Walk",
    "Alley",
    "Trail",
    "Trl",
    "Plaza",
    "Pike",
    "Expressway",
    "Freeway",
    "Loop",
    "Hill",
    "Ridge",
];

/// The street types that also count written in lower case (`elm street`), where the text
/// says an address follows. Not the ones that are everyday words (`way`, `walk`, `row`,
/// `close`, `court`, `square`: `it is 3 on the way`, `that is 3 in a row`).
const LOWERCASE_TYPES: &[&str] = &[
    "street",
    "st",
    "avenue",
    "ave",
    "road",
    "rd",
    "boulevard",
    "blvd",
    "lane",
    "ln",
    "drive",
    "dr",
    "terrace",
    "parkway",
    "pkwy",
    "highway",
    "hwy",
];

/// Words that are not part of a street's name written in lower case (`5 min drive`, `2 hours
/// by road`, `5 business days by road`): a quantity, an article, a preposition.
const NOT_LOWERCASE_NAMES: &[&str] = &[
    "the", "a", "an", "of", "this", "that", "my", "your", "our", "his", "her", "their", "min",
    "mins", "minute", "minutes", "hour", "hours", "hr", "hrs", "mile", "miles", "km", "block",
    "blocks", "day", "days", "week", "weeks", "time", "times", "each", "per", "more", "less",
    "business", "short", "long", "quick", "nice", "easy", "second", "seconds", "wheel", "way",
    "hard", "flash", "test", "up", "down", "past", "stop", "stops", "exit", "exits", "house",
    "houses", "external", "internal", "busy", "one", "two", "three", "four", "few",
];

/// Months: `5 March Lane 2 will be closed` is a date and a traffic lane.
const MONTHS: &[&str] = &[
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// The word before `Drive` that makes it a disk or a campaign: `2 Google Drive`, `1 Samsung
/// Hard Drive`, `2 Blood Drive`.
const DEVICE_WORDS: &[&str] = &[
    "Hard", "Google", "Cloud", "Flash", "Disk", "Network", "Shared", "Thumb", "Pen", "Blood",
    "Test", "State", "One",
];

/// The abbreviated street types, which may take a full stop (`St.`).
const ABBREVIATIONS: &[&str] = &[
    "St", "Ave", "Av", "Rd", "Blvd", "Ln", "Dr", "Ct", "Pl", "Ter", "Cir", "Hwy", "Pkwy", "Sq",
    "Cres", "Trl",
];

/// Compass points after an English street (`Pennsylvania Avenue NW`).
const DIRECTIONS: &[&str] = &["N", "S", "E", "W", "NE", "NW", "SE", "SW"];

/// German and Dutch street types: the end of a one-word street name (`Hauptstraße`,
/// `Karl-Marx-Allee`, `Keizersgracht`; the name longer than the type) or a word of its own
/// after the name (`Berliner Straße`, `Frankfurter Allee`, `Oude Gracht`). Lower case.
const NAME_ENDINGS: &[&str] = &[
    "straße", "strasse", "gasse", "allee", "chaussee", "straat", "laan", "plein", "gracht",
    "singel",
];

/// The same, for types that are also ordinary nouns' endings (`Parkplatz 12`, `Rückweg 3`,
/// `Illustr. 4`, `Blockade`): these need a postcode, quotes, or a word before them that names
/// an address.
const WEAK_NAME_ENDINGS: &[&str] = &["str.", "weg", "platz", "damm", "ufer", "kade"];

/// Street types written before the name, with the number after it (`Calle Mayor 5`,
/// `Rua Augusta 12`). Capitalised.
const TYPES_BEFORE_NAME: &[&str] = &[
    "Calle", "Carrer", "Avenida", "Avda.", "Paseo", "Viale", "Piazza", "Piazzale", "Vicolo", "Rua",
    "Travessa",
];

/// The same, for words that also start other names (`Via USB 3`, `Corso di Python 2`,
/// `Plaza Hotel 2`, `Av. Speed 45`): these need a postcode, quotes, or a word before them that
/// names an address.
const WEAK_TYPES_BEFORE_NAME: &[&str] = &["Via", "Corso", "Plaza", "Largo", "Strada", "Av."];

/// French street types, lower case, after the number (`12 rue de la Paix`); the short ones
/// may take a full stop (`av.`, `bd.`).
const FRENCH_TYPES: &[&str] = &[
    "rue",
    "avenue",
    "av",
    "boulevard",
    "bd",
    "place",
    "chemin",
    "allée",
    "impasse",
    "quai",
    "cours",
    "route",
];

/// Lower-case words that may follow a French street in a sentence (`12 rue de la Paix à
/// Paris`); another one means the number counted something (`2 Route des Vins tours`).
const FRENCH_AFTER_WORDS: &[&str] = &[
    "à", "au", "aux", "en", "et", "dans", "près", "pour", "ce", "cette", "demain", "ou", "chez",
    "avec", "depuis", "est", "sont", "puis", "mais", "qui", "où", "dès", "vers", "sur",
];

/// Small words inside a Romance street name (`de la Paix`, `della Repubblica`, `dei Mille`,
/// `de los Reyes`, `do Ouro`).
const NAME_PARTICLES: &[&str] = &[
    "de", "du", "des", "la", "le", "les", "l'", "d'", "del", "della", "delle", "dello", "dei",
    "degli", "dell'", "di", "da", "al", "alla", "los", "las", "do", "dos", "das", "y", "e",
];

/// Flats, suites and units after the street (`Apt 4B`, `Suite 200`, `#12`).
const UNITS: &[&str] = &[
    "Apt",
    "Apartment",
    "Suite",
    "Ste",
    "Unit",
    "Flat",
    "Fl",
    "Floor",
    "Bldg",
    "Building",
    "apt",
    "apartment",
    "suite",
    "unit",
    "flat",
    "floor",
];

/// Words just before the number that may introduce an address (`I live at`, `ship to`). The
/// last word before the number, lower-cased. Not after a number or one of
/// [`NOT_BEFORE_LEAD`] (`3 to 1`, `back to 2 …`, `prior to 2008 …`).
const LEAD_WORDS: &[&str] = &[
    "at", "to", "from", "near", "address", "addr", "addr.", "adresse", "au",
];

/// Words before a lead word that make it something else: `back to 2 Memory Lane`, `prior to
/// 2008 Wall Street`, `up to 3 …`.
const NOT_BEFORE_LEAD: &[&[u8]] = &[
    b"up",
    b"prior",
    b"back",
    b"due",
    b"sequel",
    b"ode",
    b"compared",
    b"next",
    b"close",
    b"set",
    b"change",
    b"changed",
    b"copy",
    b"copied",
    b"move",
    b"convert",
    b"converted",
];

/// English words within the few before the number that say an address follows (`address:
/// …`, `I moved to …`), lower-cased, matched whole or with an inflection (`lives`, `shipping`;
/// not `homework`).
const LABELS: &[&str] = &[
    "address",
    "addr",
    "live",
    "living",
    "located",
    "reside",
    "ship",
    "deliver",
    "mail",
    "send",
    "moved",
    "move",
    "visit",
    "stay",
    "home",
    "house",
    "office",
    "apartment",
];

/// Inflections a word of [`LABELS`] may carry.
const LABEL_ENDINGS: &[&str] = &["", "s", "es", "d", "ed", "ing", "ping", "ery", "ies"];

/// The same in German, Dutch and the Romance languages, matched at the start of a word
/// (`Lieferadresse` is matched by `liefer`, `wohne` by `wohn`).
const FOREIGN_LABELS: &[&str] = &[
    "anschrift",
    "adres",
    "wohn",
    "liefer",
    "woon",
    "habit",
    "domicil",
    "vivo",
    "abito",
    "moro",
    "resid",
    "direcci",
    "indirizzo",
    "endereço",
];

/// Lower-case words that may follow an address in a sentence (`42 Elm Street in Springfield`,
/// `… is my home`). Any other lower-case word right after the street means the number was a
/// count and the street an adjective: `3 Main Street businesses`.
const AFTER_WORDS: &[&str] = &[
    "last",
    "needs",
    "in",
    "is",
    "and",
    "or",
    "near",
    "was",
    "which",
    "where",
    "with",
    "by",
    "for",
    "on",
    "at",
    "to",
    "from",
    "until",
    "since",
    "but",
    "so",
    "then",
    "next",
    "off",
    "between",
    "behind",
    "opposite",
    "across",
    "just",
    "right",
    "now",
    "tomorrow",
    "today",
    "tonight",
    "yesterday",
    "if",
    "when",
    "because",
    "please",
    "thanks",
    "instead",
    "are",
    "has",
    "have",
    "had",
    "will",
    "would",
    "should",
    "can",
    "could",
    "before",
    "after",
    "around",
    "about",
    "as",
    "again",
    "too",
    "also",
    "first",
    "there",
    "here",
    "every",
    "all",
];

/// The address that the digit run `[ds, de)` of `text` is the house number of, if any.
#[inline]
pub(crate) fn address_at(text: &str, ds: usize, de: usize) -> Option<Address> {
    if de - ds > 5 {
        return None;
    }
    let b = text.as_bytes();
    // Most numbers in prose are neither before a street nor after one: a look at the bytes
    // next to them rules them out before any word is read. First the one byte either side
    // (a space, a comma, a dash, a letter after; a space before), which is all that runs for
    // the digits of a date, a time, an amount or a version.
    let after = b.get(de).copied().unwrap_or(b'.');
    let before = ds.checked_sub(1).map_or(b'.', |i| b[i]);
    let space_or_letter_after = after.is_ascii_alphabetic()
        || matches!(
            after,
            b' ' | b'\t' | b',' | b'-' | b'/' | 0xC2 | 0xE2 | 0xE3
        );
    // The last byte of a space: ASCII, or U+00A0, U+2000–U+200A, U+202F, U+205F, U+3000.
    let space_before_it = matches!(before, b' ' | b'\t' | 0x80..=0x8A | 0x9F | 0xA0 | 0xAF);
    if space_or_letter_after && street_may_follow(b, de) {
        if let Some(a) = number_first(text, ds, de) {
            return Some(a);
        }
    }
    if space_before_it && street_may_precede(b, ds) {
        return name_first(text, ds, de);
    }
    None
}

/// After the house number (and a comma), a space and then a capital, an ordinal (`5th`), a
/// non-ASCII letter, or a French street type.
#[inline]
fn street_may_follow(b: &[u8], de: usize) -> bool {
    let Some(mut i) = house_number_end(b, de) else {
        return false;
    };
    if b.get(i) == Some(&b',') {
        i += 1;
    }
    let Some(next) = one_space(b, i) else {
        return false;
    };
    let Some(&c) = b.get(next) else {
        return false;
    };
    if c.is_ascii_digit() {
        let digits = b[next..].iter().take_while(|c| c.is_ascii_digit()).count();
        return b
            .get(next + digits)
            .is_some_and(|c| matches!(c, b's' | b'n' | b'r' | b't'));
    }
    c.is_ascii_uppercase()
        || c >= 0x80
        || french_type_at(b, next).is_some()
        || (c.is_ascii_lowercase() && lowercase_street_ahead(b, next))
}

/// A lower-case English street type (`street`, `st`, `ave`…) among the next four words from
/// `i`: `i live at 42 elm street` is written so in chat.
fn lowercase_street_ahead(b: &[u8], i: usize) -> bool {
    let mut at = i;
    for _ in 0..4 {
        let n = b[at..]
            .iter()
            .take_while(|c| c.is_ascii_lowercase())
            .count();
        if n == 0 {
            return false;
        }
        let word = &b[at..at + n];
        if LOWERCASE_TYPES.iter().any(|t| t.as_bytes() == word) {
            return true;
        }
        match one_space(b, at + n) {
            Some(next) => at = next,
            None => return false,
        }
    }
    false
}

/// The French street type at `i` (`rue`, `av.`, `Rue`): its end, and whether it was written
/// with a capital.
fn french_type_at(b: &[u8], i: usize) -> Option<(usize, bool)> {
    let capital = b.get(i).is_some_and(u8::is_ascii_uppercase);
    let n = b[i..]
        .iter()
        .enumerate()
        .take_while(|(k, c)| c.is_ascii_lowercase() || **c >= 0x80 || (*k == 0 && capital))
        .count();
    let word = b.get(i..i + n)?;
    // Only the abbreviations take a full stop (`av.`, `bd.`; `3 place. Could…` is a sentence).
    let dot = usize::from(b.get(i + n) == Some(&b'.') && n == 2);
    FRENCH_TYPES
        .iter()
        .any(|t| t.as_bytes().eq_ignore_ascii_case(word) && word[1..] == t.as_bytes()[1..])
        .then_some((i + n + dot, capital))
        .filter(|&(end, _)| !b.get(end).is_some_and(u8::is_ascii_alphanumeric))
}

/// Before the number, a space (or `, `) after a word that starts with a capital or a
/// non-ASCII letter (`Hauptstraße 5`, `Via Roma 10`).
#[inline]
fn street_may_precede(b: &[u8], ds: usize) -> bool {
    let Some(mut j) = space_before(b, ds) else {
        return false;
    };
    if j > 0 && b[j - 1] == b',' {
        j -= 1;
    }
    if j > 0 && b[j - 1] == b'.' {
        j -= 1;
    }
    let start = b[..j]
        .iter()
        .rposition(|c| !(c.is_ascii_alphabetic() || *c >= 0x80 || *c == b'-'))
        .map_or(0, |p| p + 1);
    start < j && (b[start].is_ascii_uppercase() || b[start] >= 0x80)
}

/// `42 Elm Street …`, `12 rue de la Paix …`.
fn number_first(text: &str, ds: usize, de: usize) -> Option<Address> {
    let b = text.as_bytes();
    if !number_starts_here(text, ds) {
        return None;
    }
    let mut i = house_number_end(b, de)?;
    if b.get(i) == Some(&b',') {
        i += 1;
    }
    i = one_space(b, i)?;
    if let Some((street_end, strong)) = french_street(text, i) {
        let town = locality(text, street_end, true);
        let end = town.map_or(street_end, |(e, _)| e);
        let goes_on = || {
            // `2 Route des Vins tours`, `2 Chemin de Fer hands`: a count of something.
            let Some(next) = one_space(b, end) else {
                return true;
            };
            let w = word_end(text, next);
            let word = &text[next..w];
            w == next
                || capitalised(word)
                || FRENCH_AFTER_WORDS.contains(&word)
                || AFTER_WORDS.contains(&word)
        };
        if (strong && goes_on())
            || town.is_some_and(|(_, postcode)| postcode)
            || signed(text, ds, end)
        {
            return Some(Address {
                start: ds,
                end,
                confidence: 0.8,
            });
        }
    }
    let (street_end, lowercase) = match english_street(text, i, false) {
        Some(e) => (e, false),
        // `i live at 42 elm street`: lower case only where a word such as `live`, `address`
        // or `ship` says an address follows (not a bare `at`: `I'll be there at 5 to close`).
        None => (
            english_street(text, i, true).filter(|_| introduced(text, ds) == Intro::Label)?,
            true,
        ),
    };
    let (end, unit) = match unit(text, street_end) {
        Some(e) => (e, true),
        None => (street_end, false),
    };
    let (end, town) = match locality(text, end, false) {
        Some((e, strong)) => (e, strong),
        None => (end, false),
    };
    let signed = if lowercase {
        line_goes_on(text, end)
    } else {
        signed(text, ds, end)
    };
    if !(unit || town || signed) {
        return None;
    }
    let confidence = if unit || town { 0.9 } else { 0.8 };
    Some(Address {
        start: ds,
        end,
        confidence,
    })
}

/// Whether the text around `[start, end)` says it is an address where the street alone does
/// not: it has a line of its own (an envelope), it is a quoted value and nothing else
/// (`contact = "42 Elm Street"`), or words before it introduce an address (`I live at`,
/// `ship to`, `Anschrift:`) and the sentence goes on as after one (see [`Intro`]).
fn signed(text: &str, start: usize, end: usize) -> bool {
    let b = text.as_bytes();
    let own_line = line_start(b, start) && line_end(b, end) && !list_item(text, start);
    own_line
        || quoted_alone(b, start, end)
        || match introduced(text, start) {
            Intro::None => false,
            // `From 2008 Wall Street has changed`: after a bare `at`/`from`, a year is a year.
            Intro::Lead => !year_at(b, start) && line_goes_on(text, end),
            // `My address is 42 Elm Street Springfield IL`: after such a word a capitalised one
            // goes on with the address, unless it names a place of its own (`… 2 Wall Street
            // Journal subscriptions`).
            Intro::Label => {
                line_goes_on(text, end)
                    || one_space(b, end).is_some_and(|next| {
                        let w = word_end(text, next);
                        capitalised(&text[next..]) && !NAMED_PLACES.contains(&&text[next..w])
                    })
            }
        }
}

/// `[start, end)` is a quoted value and nothing else (`contact = "42 Elm Street"`).
fn quoted_alone(b: &[u8], start: usize, end: usize) -> bool {
    start > 0 && matches!(b[start - 1], b'"' | b'\'') && b.get(end) == Some(&b[start - 1])
}

/// The digits at `i` are a year: four of them, from 1800 to 2099.
fn year_at(b: &[u8], i: usize) -> bool {
    let digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
    digits == 4 && matches!(&b[i..i + 2], b"18" | b"19" | b"20")
}

/// Capitalised words after a street that make it part of another name: `Wall Street
/// Journal`, `Madison Square Garden`, `Liverpool Street Station`.
const NAMED_PLACES: &[&str] = &[
    "Journal", "Garden", "Station", "Studios", "Studio", "Hotel", "Theatre", "Theater", "Festival",
    "Hospital", "Games", "Films", "Records", "Market", "Mall", "Tower", "Centre", "Center",
    "Bridge", "Park", "Boys", "Band", "Kids", "Gang", "Blues", "Bar", "Cafe", "Café", "Grill",
    "Diner", "Pub", "Club", "Stadium", "Arena", "Church", "School", "Academy",
];

/// The line holding `start` is an item of a list under a heading (`Shopping:` then `2 Milky
/// Way`, `1 Rocky Road`): going up over other items (lines that start with a digit or a
/// bullet), the first other line ends with `:` and names no address.
fn list_item(text: &str, start: usize) -> bool {
    let mut line_start = text[..start].rfind('\n').map_or(0, |p| p + 1);
    for _ in 0..20 {
        let Some(prev_end) = line_start.checked_sub(1) else {
            return false;
        };
        let prev_start = text[..prev_end].rfind('\n').map_or(0, |p| p + 1);
        let prev = text[prev_start..prev_end].trim();
        if prev.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '*') {
            line_start = prev_start;
            continue;
        }
        return prev.ends_with(':')
            && !prev
                .split(|c: char| !c.is_alphanumeric())
                .any(|w| is_label(w.as_bytes()));
    }
    false
}

/// `Hauptstraße 5`, `Berliner Straße 12`, `Calle Mayor 5`, `Via della Spiga 7`: the street,
/// then the number.
fn name_first(text: &str, ds: usize, de: usize) -> Option<Address> {
    let b = text.as_bytes();
    let number_end = house_number_end(b, de)?;
    if de - ds > 4 {
        return None;
    }
    // A space (or `, `) back to the street's last word.
    let mut j = space_before(b, ds)?;
    if j > 0 && b[j - 1] == b',' {
        j -= 1;
    }
    let (ws, we) = word_before(text, j)?;
    let (start, strong) = match street_type_word(&text[ws..we]) {
        // `Berliner Straße`: the type is a word of its own; the name is the word before.
        Some(strong) => {
            let (ns, ne) = word_before(text, space_before(b, ws)?)?;
            let name = &text[ns..ne];
            (capitalised(name) && !acronym(name) && !ARTICLES.contains(&name))
                .then_some((ns, strong))?
        }
        None => match street_ending(&text[ws..we]) {
            Some(strong) => (ws, strong),
            None => type_before_name(text, ws)?,
        },
    };
    let town = locality(text, number_end, true);
    let end = town.map_or(number_end, |(e, _)| e);
    // `Hauptstraße 3 Geschäfte`, `Kinkerstraat 3 winkels`: a count of something.
    if town.is_none() && counted_after(text, number_end) {
        return None;
    }
    // `Calle Ocho 2024`: a year, unless a postcode and town follow.
    let postcode = town.is_some_and(|(_, p)| p);
    if year_at(b, ds) && !postcode {
        return None;
    }
    // A weak street word (`Sitzplatz 45`, `Via USB 3`) needs a postcode, quotes around it
    // alone, or a word that names an address before it with the sentence going on as after
    // one (`We stayed at the Plaza Hotel 2 nights` does not). A line of its own is a seat on
    // a ticket as often as an address.
    let sure = strong
        || postcode
        || quoted_alone(b, start, end)
        || (introduced(text, start) == Intro::Label && line_goes_on(text, end));
    if !sure {
        return None;
    }
    Some(Address {
        start,
        end,
        confidence: 0.8,
    })
}

/// Articles that are not a street's name (`Die Straße 5 Minuten …`).
const ARTICLES: &[&str] = &[
    "Die", "Der", "Das", "De", "Het", "La", "Le", "El", "Il", "Lo",
];

/// Words after a number that count something: a capitalised (German) noun, or one of these.
const COUNT_WORDS: &[&str] = &[
    "mal", "keer", "veces", "vez", "volte", "fois", "winkels", "huizen", "minuten", "stunden",
    "jahre", "tage", "min", "km", "m", "kg", "euro", "x",
];

/// The number ending at `i` is followed by what it counts (`3 Geschäfte`, `3 winkels`).
fn counted_after(text: &str, i: usize) -> bool {
    let Some(next) = one_space(text.as_bytes(), i) else {
        return false;
    };
    let w = word_end(text, next);
    let word = &text[next..w];
    w > next && ((capitalised(word) && !NOT_TOWN.contains(&word)) || COUNT_WORDS.contains(&word))
}

/// The number starts a token: not glued to a letter, a digit or a code (`v2`, `x=3`, `10:30`,
/// `#5`, `$3`), though a label may be (`Address:42`, `address=42`). Spaces and punctuation of
/// any script may come before it (`こんにちは、`).
fn number_starts_here(text: &str, ds: usize) -> bool {
    let mut before = text[..ds].chars().rev();
    match before.next() {
        None => true,
        Some(':' | '=') => before.next().is_some_and(char::is_alphabetic),
        Some(c) => {
            !c.is_alphanumeric()
                && !matches!(
                    c,
                    '.' | '-'
                        | '/'
                        | '_'
                        | '+'
                        | '#'
                        | '$'
                        | '€'
                        | '£'
                        | '¥'
                        | ':'
                        | '@'
                        | '&'
                        | '='
                )
        }
    }
}

/// End of a house number whose digits end at `de`: `221B`, `12-14`, `5a`. None when the token
/// goes on (`10th`, `3pm`, `2.5`, `5:30`).
fn house_number_end(b: &[u8], de: usize) -> Option<usize> {
    let mut i = de;
    match b.get(i) {
        Some(c) if c.is_ascii_alphabetic() => {
            if b.get(i + 1).is_some_and(|c| c.is_ascii_alphanumeric()) {
                return None;
            }
            i += 1;
        }
        Some(_) if dash_len(b, i).is_some_and(|n| b.get(i + n).is_some_and(u8::is_ascii_digit)) => {
            i += dash_len(b, i).unwrap_or(1);
            let digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
            if digits > 5 {
                return None;
            }
            i += digits;
        }
        // A unit and its building, as Australians write them (`5/123 Smith St`).
        Some(b'/') if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
            let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
            if digits > 5 || space_len(b, i + 1 + digits).is_none() {
                return None;
            }
            i += 1 + digits;
        }
        // A decimal, a time, a thousands group: not a house number.
        Some(b'.' | b':' | b',') if b.get(i + 1).is_some_and(u8::is_ascii_digit) => return None,
        Some(b'%' | b'_' | b'$') => return None,
        _ => {}
    }
    Some(i)
}

/// Byte length of the space at `i`: a space or tab, or one of the Unicode spaces a word
/// processor puts next to numbers (no-break, narrow no-break, figure, thin…).
fn space_len(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i..).unwrap_or_default() {
        [b' ' | b'\t', ..] => Some(1),
        [0xC2, 0xA0, ..] => Some(2),
        [0xE2, 0x80, 0x80..=0x8A | 0xAF, ..] | [0xE2, 0x81, 0x9F, ..] | [0xE3, 0x80, 0x80, ..] => {
            Some(3)
        }
        _ => None,
    }
}

/// Past the one to three spaces at `i` (two spaces after a number are common).
fn one_space(b: &[u8], i: usize) -> Option<usize> {
    let mut at = i;
    for _ in 0..3 {
        match space_len(b, at) {
            Some(n) => at += n,
            None => break,
        }
    }
    (at > i && space_len(b, at).is_none()).then_some(at)
}

/// The start of the one to three spaces ending at `j`, if any.
fn space_before(b: &[u8], j: usize) -> Option<usize> {
    let mut at = j;
    for _ in 0..3 {
        match (1..=3).find(|n| at >= *n && space_len(b, at - n) == Some(*n)) {
            Some(n) => at -= n,
            None => break,
        }
    }
    (at < j).then_some(at)
}

/// Byte length of the dash at `i`: `-`, or the hyphens, en dash and minus sign a word
/// processor writes for it.
fn dash_len(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i..).unwrap_or_default() {
        [b'-', ..] => Some(1),
        [0xE2, 0x80, 0x90..=0x93, ..] | [0xE2, 0x88, 0x92, ..] => Some(3),
        _ => None,
    }
}

/// The word of letters (and inner `'`, `-`) starting at `i`: its end.
fn word_end(text: &str, i: usize) -> usize {
    let mut end = i;
    let mut prev_letter = false;
    for (k, c) in text[i..].char_indices() {
        if c.is_alphabetic() {
            prev_letter = true;
            end = i + k + c.len_utf8();
        } else if (c == '-' || c == '\'' || c == '’') && prev_letter {
            prev_letter = false;
        } else {
            break;
        }
    }
    end
}

/// The word of letters ending at `j` (exclusive), with a trailing `.` of an abbreviation.
fn word_before(text: &str, j: usize) -> Option<(usize, usize)> {
    let head = &text[..j];
    let body = head.strip_suffix('.').unwrap_or(head);
    let mut start = body.len();
    for (k, c) in body.char_indices().rev() {
        // An inner hyphen or apostrophe (`Karl-Marx-Allee`), not a trailing one.
        if c.is_alphabetic() || ((c == '-' || c == '\'') && start < body.len()) {
            start = k;
        } else {
            break;
        }
    }
    (start < body.len() && text[start..].starts_with(char::is_alphabetic)).then_some((start, j))
}

fn capitalised(word: &str) -> bool {
    word.starts_with(|c: char| c.is_uppercase())
}

/// Two or more capitals and nothing else (`USB`, `IBM`): a name, not a street's.
fn acronym(word: &str) -> bool {
    word.len() >= 2 && word.bytes().all(|c| c.is_ascii_uppercase())
}

/// A word of the name of an English street: capitalised (`Elm`, `O'Connor`; any word when
/// `lowercase`), an ordinal (`5th`, `42nd`) or a compass point (`N`, `N.`).
fn name_word(text: &str, i: usize, lowercase: bool) -> Option<usize> {
    let b = text.as_bytes();
    if b.get(i).is_some_and(u8::is_ascii_digit) {
        let digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        let rest = &text[i + digits..];
        let suffix = ["st", "nd", "rd", "th"]
            .into_iter()
            .find(|s| rest.starts_with(s))?;
        let end = i + digits + suffix.len();
        return (digits <= 3 && !b.get(end).is_some_and(u8::is_ascii_alphanumeric)).then_some(end);
    }
    let end = word_end(text, i);
    let word = &text[i..end];
    let lower_name = lowercase
        && word.bytes().all(|c| c.is_ascii_lowercase())
        && !NOT_LOWERCASE_NAMES.contains(&word)
        && !AFTER_WORDS.contains(&word);
    if end == i || !(lower_name || capitalised(word)) {
        return None;
    }
    // `N. Main St.`: a compass point's full stop.
    let compass = DIRECTIONS.contains(&word) && word.len() == 1 && b.get(end) == Some(&b'.');
    Some(end + usize::from(compass))
}

/// An English street from `i`: up to five name words and a street type (`Elm Street`), with a
/// compass point after it (`Avenue NW`). Returns its end. With `lowercase`, the words may be
/// written in lower case (`elm street`).
fn english_street(text: &str, i: usize, lowercase: bool) -> Option<usize> {
    let b = text.as_bytes();
    let mut at = i;
    let mut words = 0;
    let mut street_end = None;
    let most = if lowercase { 4 } else { 6 };
    while words < most {
        let Some(end) = name_word(text, at, lowercase) else {
            break;
        };
        let word = &text[at..end];
        let mut after = end;
        if lowercase && words == 0 && is_street_type(word, true) {
            // `a 2 lane road`: in lower case a street type is not a name.
            return None;
        }
        if words == 0 && (acronym(word) || MONTHS.contains(&word)) {
            // `1 USB Drive`, `2 SSD Drive`, `From 5 March Lane 2 will be closed`.
            return None;
        }
        if words >= 1 && is_street_type(word, lowercase) {
            let before = text[i..at].split_whitespace().next_back().unwrap_or("");
            if word.eq_ignore_ascii_case("drive") && DEVICE_WORDS.contains(&before) {
                // `2 Google Drive`, `1 Samsung Hard Drive`: a disk, not a street.
                return None;
            }
            if b.get(after) == Some(&b'.')
                && ABBREVIATIONS.iter().any(|a| a.eq_ignore_ascii_case(word))
            {
                after += 1;
            }
            street_end = Some(after);
        }
        words += 1;
        match one_space(b, after) {
            Some(next) => at = next,
            None => break,
        }
    }
    let mut end = street_end?;
    if let Some(next) = one_space(b, end) {
        let w = word_end(text, next);
        if w > next
            && DIRECTIONS.contains(&&text[next..w])
            && !b.get(w).is_some_and(u8::is_ascii_alphanumeric)
        {
            end = w;
        }
    }
    Some(end)
}

/// `word` is one of [`STREET_TYPES`] as written there or in upper case (`ST`, `AVE`), or, with
/// `lowercase`, one of [`LOWERCASE_TYPES`]. Without allocating: this runs for every name word.
fn is_street_type(word: &str, lowercase: bool) -> bool {
    let upper = word.len() > 1 && word.bytes().all(|c| c.is_ascii_uppercase());
    STREET_TYPES
        .iter()
        .any(|t| *t == word || (upper && t.eq_ignore_ascii_case(word)))
        || (lowercase && LOWERCASE_TYPES.contains(&word))
}

/// A French street from `i` (`rue de la Paix`, `Rue de Rivoli`): the type, particles, and
/// capitalised words. Returns its end, and whether the street is sure without more signs: a
/// lower-case type other than `cours`, `bd` and `av` (`2 cours de Python`), or a capitalised
/// one before a particle (`Rue de Rivoli`; `3 Place Settings` is not one).
fn french_street(text: &str, i: usize) -> Option<(usize, bool)> {
    let b = text.as_bytes();
    let (type_end, capital) = french_type_at(b, i)?;
    // Types that are also other words: `2 cours de Python` (lessons), `3 bd de Tintin` (comic
    // books), `44 av. Jésus-Christ` (before Christ).
    let written = text[i..type_end].trim_end_matches('.');
    let weak_type = ["cours", "bd", "av"]
        .iter()
        .any(|t| written.eq_ignore_ascii_case(t));
    let mut at = one_space(b, type_end)?;
    let mut end = None;
    let mut particle_first = false;
    for _ in 0..6 {
        let w = word_end(text, at);
        let word = text.get(at..w).filter(|w| !w.is_empty());
        // `l'Église`, `d'Orsay`: the particle is glued to the name.
        let glued = ["l'", "d'", "l’", "d’"]
            .into_iter()
            .find(|p| text[at..].starts_with(p));
        if let Some(p) = glued {
            let name_end = word_end(text, at + p.len());
            let name = &text[at + p.len()..name_end];
            if name.chars().count() >= 2 && capitalised(name) {
                particle_first |= end.is_none();
                end = Some(name_end);
                at = name_end;
            } else {
                break;
            }
        } else if let Some(word) = word {
            // A name word has two letters at least (`av. J.-C.` is a date).
            if capitalised(word) && word.chars().count() >= 2 && !acronym(word) {
                end = Some(w);
            } else if NAME_PARTICLES.contains(&word) && end.is_none() {
                particle_first = true;
            } else {
                break;
            }
            at = w;
        } else {
            break;
        }
        match one_space(b, at) {
            Some(next) => at = next,
            None => break,
        }
    }
    let strong = !weak_type && (!capital || particle_first);
    end.map(|e| (e, strong))
}

/// A German or Dutch street type ending `word` (`Hauptstraße`, `Parkplatz`), longer than it:
/// whether it is a sure one (see [`WEAK_NAME_ENDINGS`]).
fn street_ending(word: &str) -> Option<bool> {
    if !capitalised(word) {
        return None;
    }
    let lower = word.to_lowercase();
    // Numbered roads, not addresses: `Bundesstraße 27`, `Landesstraße 3`.
    if ["bundes", "landes", "kreis", "staats"]
        .iter()
        .any(|p| lower.starts_with(p))
    {
        return None;
    }
    let long_enough =
        |e: &&str| lower.ends_with(*e) && lower.chars().count() >= e.chars().count() + 3;
    if NAME_ENDINGS.iter().any(long_enough) {
        Some(true)
    } else if WEAK_NAME_ENDINGS.iter().any(long_enough) {
        Some(false)
    } else {
        None
    }
}

/// `word` is a German or Dutch street type on its own, capitalised (`Straße` in `Berliner
/// Straße`): whether it is a sure one.
fn street_type_word(word: &str) -> Option<bool> {
    if !capitalised(word) {
        return None;
    }
    let lower = word.to_lowercase();
    if NAME_ENDINGS.contains(&lower.as_str()) {
        Some(true)
    } else if WEAK_NAME_ENDINGS.contains(&lower.as_str()) {
        Some(false)
    } else {
        None
    }
}

/// The start of `Calle Mayor`, `Via della Spiga`: a type word, then particles and capitalised
/// words (three at most), the last of which starts at `ws`. Also whether the type is a sure
/// one (see [`WEAK_TYPES_BEFORE_NAME`]).
fn type_before_name(text: &str, ws: usize) -> Option<(usize, bool)> {
    if !capitalised(&text[ws..]) {
        return None;
    }
    let mut start = ws;
    for _ in 0..3 {
        if acronym(&text[start..word_end(text, start)]) {
            return None;
        }
        let j = space_before(text.as_bytes(), start)?;
        let (ps, pe) = word_before(text, j)?;
        let word = &text[ps..pe];
        if TYPES_BEFORE_NAME.contains(&word) {
            return Some((ps, true));
        }
        if WEAK_TYPES_BEFORE_NAME.contains(&word) {
            return Some((ps, false));
        }
        if !(capitalised(word) || NAME_PARTICLES.contains(&word)) {
            return None;
        }
        start = ps;
    }
    None
}

/// A flat or suite right after the street (`, Apt 4B`, ` Suite 200`, ` #12`): its end.
fn unit(text: &str, i: usize) -> Option<usize> {
    let b = text.as_bytes();
    let mut at = i;
    if b.get(at) == Some(&b',') {
        at += 1;
    }
    at = one_space(b, at)?;
    if b.get(at) == Some(&b'#') {
        at += 1;
    } else {
        let w = word_end(text, at);
        if !UNITS.contains(&&text[at..w]) {
            return None;
        }
        at = w;
        if b.get(at) == Some(&b'.') {
            at += 1;
        }
        if let Some(next) = one_space(b, at) {
            at = next;
        }
    }
    let n = b[at..]
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric() || **c == b'-')
        .count();
    let id = &b[at..at + n];
    ((1..=6).contains(&n)
        && id.iter().any(u8::is_ascii_digit)
        && !b.get(at + n).is_some_and(u8::is_ascii_alphanumeric)
        // `… Abbey Road #1 hits`: a count, not a flat.
        && line_goes_on(text, at + n))
    .then_some(at + n)
}

/// The town, state and postcode after a street on the same line (`, Springfield, IL 62704`,
/// `, London NW1 6XE`, `, Fitzroy VIC 3065`, `, Toronto, ON M5V 2T6`; with `postcode_first`,
/// also `, 75002 Paris` and ` 10115 Berlin`, as French and German addresses write it): its
/// end, and whether it holds a postcode or a state (a town alone is weaker).
fn locality(text: &str, i: usize, postcode_first: bool) -> Option<(usize, bool)> {
    let b = text.as_bytes();
    let comma = b.get(i) == Some(&b',');
    let at = one_space(b, i + usize::from(comma))?;
    let digits = b[at..].iter().take_while(|c| c.is_ascii_digit()).count();
    if postcode_first && (4..=5).contains(&digits) {
        let town = one_space(b, at + digits).and_then(|t| town(text, t));
        return town.map(|e| (e, true));
    }
    if !comma {
        // Without a comma, only what ordinary words are not: a postcode (`Abbey Rd NW8 9AA`),
        // or a town with a state and a postcode (`Elm St Springfield IL 62704`).
        if let Some(e) = postcode(b, at, false) {
            return Some((e, true));
        }
        let town_end = town(text, at)?;
        let (state_end, australian) = state(b, town_end)?;
        let e = postcode(b, one_space(b, state_end)?, australian)?;
        return Some((e, true));
    }
    let town_end = town(text, at)?;
    let mut end = town_end;
    let mut strong = false;
    let mut australian = false;
    // `, IL`, ` VIC`, then ` 62704`, ` 3065`, or a UK or Canadian postcode.
    let mut at = end + usize::from(b.get(end) == Some(&b','));
    if let Some((state_end, au)) = state(b, at) {
        end = state_end;
        strong = true;
        australian = au;
        at = end;
    }
    if let Some(next) = one_space(b, at) {
        if let Some(e) = postcode(b, next, australian) {
            end = e;
            strong = true;
        }
    }
    Some((end, strong))
}

/// Australia's states and territories, after which a postcode has four digits.
const AUSTRALIAN_STATES: &[&[u8]] = &[b"NSW", b"VIC", b"QLD", b"SA", b"WA", b"TAS", b"NT", b"ACT"];

/// A state or province after a space at `i` (`IL`, `ON`, `VIC`): its end, and whether it is
/// Australian.
fn state(b: &[u8], i: usize) -> Option<(usize, bool)> {
    let next = one_space(b, i)?;
    let caps = b[next..]
        .iter()
        .take_while(|c| c.is_ascii_uppercase())
        .count();
    ((2..=3).contains(&caps) && !b.get(next + caps).is_some_and(u8::is_ascii_alphanumeric)).then(
        || {
            (
                next + caps,
                AUSTRALIAN_STATES.contains(&&b[next..next + caps]),
            )
        },
    )
}

/// Capitalised words that start the next sentence rather than go on with a town's or a
/// street's name (`… 75002 Paris Also, …`).
const NOT_TOWN: &[&str] = &[
    "Also", "And", "But", "Then", "Please", "Thanks", "Thank", "The", "I", "We", "My", "It",
    "This", "That", "See", "Call", "Mail", "Email", "Tel", "Phone", "Our", "You", "Your", "He",
    "She", "They",
];

/// One to three capitalised words (`Springfield`, `New York`, `Saint-Étienne`): their end.
fn town(text: &str, at: usize) -> Option<usize> {
    let b = text.as_bytes();
    let mut end = None;
    let mut i = at;
    for _ in 0..3 {
        let w = word_end(text, i);
        let word = &text[i..w];
        let state_like = word.len() <= 3 && word.bytes().all(|c| c.is_ascii_uppercase());
        if w == i
            || !capitalised(word)
            || UNITS.contains(&word)
            || NOT_TOWN.contains(&word)
            || b.get(w).is_some_and(u8::is_ascii_digit)
            || (end.is_some() && state_like)
        {
            break;
        }
        end = Some(w);
        match one_space(b, w) {
            Some(next) if b.get(next).is_some_and(u8::is_ascii_uppercase) => i = next,
            _ => break,
        }
    }
    let e = end?;
    // Capitals alone are a state, not a town: `, IL 62704` is read by the caller.
    (!acronym(&text[at..e]) || e - at > 3).then_some(e)
}

/// A postcode at `i`: a US ZIP code (`62704`, `62704-1234`), a UK postcode (`NW1 6XE`,
/// `SW1A 1AA`), a Canadian one (`M5V 2T6`), or, after an Australian state, four digits
/// (`VIC 3065`).
fn postcode(b: &[u8], i: usize, australian: bool) -> Option<usize> {
    let digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
    let alone = |end: usize| (!b.get(end).is_some_and(u8::is_ascii_alphanumeric)).then_some(end);
    if digits == 5 {
        let mut end = i + 5;
        if let Some(n) = dash_len(b, end) {
            if b[end + n..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .count()
                == 4
            {
                end += n + 4;
            }
        }
        return alone(end);
    }
    if digits == 4 && australian {
        return alone(i + 4);
    }
    let upper = |k: usize| b.get(k).is_some_and(u8::is_ascii_uppercase);
    let digit = |k: usize| b.get(k).is_some_and(u8::is_ascii_digit);
    // Canada: A9A 9A9.
    if upper(i) && digit(i + 1) && upper(i + 2) {
        if let Some(inward) = one_space(b, i + 3) {
            if digit(inward) && upper(inward + 1) && digit(inward + 2) {
                return alone(inward + 3);
            }
        }
    }
    // UK: outward code (A9, A99, AA9, AA99, A9A, AA9A), a space, inward code (9AA).
    let out = b[i..]
        .iter()
        .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        .count();
    let outward = &b[i..i + out];
    let letters = outward
        .iter()
        .take_while(|c| c.is_ascii_uppercase())
        .count();
    if !(2..=4).contains(&out)
        || !(1..=2).contains(&letters)
        || !outward.get(letters).is_some_and(u8::is_ascii_digit)
    {
        return None;
    }
    let inward = one_space(b, i + out)?;
    (digit(inward) && upper(inward + 1) && upper(inward + 2))
        .then_some(inward + 3)
        .and_then(alone)
}

/// What the words before an address say of it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Intro {
    /// Nothing.
    None,
    /// The last word is one that may come before an address: `at`, `to`, `from`, `near`.
    Lead,
    /// One of the five words before it names an address or living somewhere: `address`,
    /// `live`, `ship`, `Anschrift`, `abito`.
    Label,
}

/// Whether `word` (bytes, any case) is an address word: one of [`LABELS`] with one of
/// [`LABEL_ENDINGS`], or one that starts with one of [`FOREIGN_LABELS`].
fn is_label(word: &[u8]) -> bool {
    // Every address word has four letters at least (`addr`, `live`, `wohn`): most words fail
    // here, before the lists are read.
    if word.len() < 4 {
        return false;
    }
    let starts = |l: &str| {
        word.get(..l.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(l.as_bytes()))
    };
    LABELS.iter().any(|l| {
        starts(l)
            && LABEL_ENDINGS
                .iter()
                .any(|e| word[l.len()..].eq_ignore_ascii_case(e.as_bytes()))
    }) || FOREIGN_LABELS.iter().any(|l| starts(l))
}

/// What the words before `start` say (see [`Intro`]), on the same line and within 48 bytes
/// (a long line is not read again for every number on it). Bytes, compared without case and
/// without allocating: this runs for every street-like number.
fn introduced(text: &str, start: usize) -> Intro {
    let mut cut = start.saturating_sub(48);
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    let window = &text[cut..start];
    let window = window.rsplit('\n').next().unwrap_or("");
    let in_word = |c: char| c.is_alphanumeric() || c == '.' || c == '\'';
    let mut rest = window;
    let mut intro = Intro::None;
    for n in 0..5 {
        rest = rest.trim_end_matches(|c: char| !in_word(c));
        if rest.is_empty() {
            break;
        }
        let s = rest
            .char_indices()
            .rev()
            .find(|(_, c)| !in_word(*c))
            .map_or(0, |(k, c)| k + c.len_utf8());
        let word = &rest.as_bytes()[s..];
        if is_label(word) {
            return Intro::Label;
        }
        if n == 0
            && LEAD_WORDS
                .iter()
                .any(|l| l.as_bytes().eq_ignore_ascii_case(word))
        {
            intro = Intro::Lead;
        }
        if n == 1 && intro == Intro::Lead {
            // `3 to 1 Loftus Road`, `back to 2 Memory Lane`: the lead is something else.
            let lower = |w: &[u8]| w.eq_ignore_ascii_case(word);
            if word.iter().all(u8::is_ascii_digit) || NOT_BEFORE_LEAD.iter().any(|w| lower(w)) {
                intro = Intro::None;
            }
        }
        rest = &rest[..s];
    }
    intro
}

/// The address begins its line (after spaces or a list bullet).
fn line_start(b: &[u8], start: usize) -> bool {
    b[..start]
        .iter()
        .rev()
        .take_while(|c| **c != b'\n')
        .all(|c| matches!(c, b' ' | b'\t' | b'-' | b'*'))
}

/// The address ends its line (or the text), maybe with a comma or a full stop.
fn line_end(b: &[u8], end: usize) -> bool {
    let rest = &b[end..];
    let rest = rest
        .strip_prefix(b",")
        .or(rest.strip_prefix(b"."))
        .unwrap_or(rest);
    rest.iter()
        .take_while(|c| **c != b'\n')
        .all(|c| matches!(c, b' ' | b'\t' | b'\r'))
}

/// What follows a street without a town: punctuation, the end, one of [`AFTER_WORDS`] (`and`
/// and `or` not before a capital), a word that starts a sentence, or a negated verb (`won't`);
/// not another word (`3 Main Street businesses`, `6 Liverpool Street Station`, `2 Wall Street
/// and Silicon Valley firms`).
fn line_goes_on(text: &str, end: usize) -> bool {
    let b = text.as_bytes();
    let Some(next) = one_space(b, end) else {
        return true;
    };
    let w = word_end(text, next);
    if w == next {
        return true;
    }
    let word = &text[next..w];
    if NOT_TOWN.contains(&word) || (word.contains('\'') && word.ends_with('t')) {
        // The next sentence, written without a full stop (`… 42 Elm Street Also, …`), or a
        // negated verb (`… at 42 Elm Street won't fix the heat`).
        return true;
    }
    if !AFTER_WORDS.contains(&word) {
        return false;
    }
    if word == "and" || word == "or" {
        if let Some(after) = one_space(b, w) {
            return !capitalised(&text[after..]);
        }
    }
    true
}

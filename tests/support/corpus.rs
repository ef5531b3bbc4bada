//! Labeled PII corpus generator for the privacy scanner's quality test and benchmark.
//!
//! Deterministic (seeded SplitMix64). Each document is a realistic text (chat prompt, email,
//! support ticket, source code, log excerpt) with its gold spans as UTF-8 byte offsets. Non-ASCII
//! text precedes the PII so byte and character offsets differ. About 30% of documents carry no
//! PII at all but are full of hard negatives: Luhn-invalid card-like numbers, IBANs with a
//! broken checksum, SSN-like numbers with forbidden areas, versions, UUIDs, hashes, prices,
//! timestamps, order numbers.
#![allow(dead_code)]

/// One labeled document.
pub struct Doc {
    /// The text.
    pub text: String,
    /// Gold spans: (kind, start byte, end byte).
    pub spans: Vec<(&'static str, usize, usize)>,
    /// Genre, for diagnostics.
    pub genre: &'static str,
}

/// SplitMix64: tiny, deterministic, good enough for test data.
pub struct Rng(std::cell::Cell<u64>);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(std::cell::Cell::new(seed))
    }
    /// Next 64 random bits.
    pub fn next_u64(&self) -> u64 {
        self.0.set(self.0.get().wrapping_add(0x9E37_79B9_7F4A_7C15));
        let mut z = self.0.get();
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
    /// True with probability `p`.
    pub fn chance(&self, p: f64) -> bool {
        (self.next_u64() % 1_000_000) as f64 / 1_000_000.0 < p
    }
    /// One element.
    pub fn pick<T: Copy>(&self, xs: &[T]) -> T {
        xs[(self.next_u64() % xs.len() as u64) as usize]
    }
    /// `n` random digits.
    pub fn digits(&self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'0' + self.range(0, 9) as u8))
            .collect()
    }
    /// `n` random characters from `alphabet`.
    pub fn chars(&self, n: usize, alphabet: &[u8]) -> String {
        (0..n).map(|_| char::from(self.pick(alphabet))).collect()
    }
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const UPPER_NUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const HEX: &[u8] = b"0123456789abcdef";

/// Builds a document while recording spans.
struct Builder {
    text: String,
    spans: Vec<(&'static str, usize, usize)>,
}

impl Builder {
    fn s(&mut self, t: &str) -> &mut Self {
        self.text.push_str(t);
        self
    }
    fn pii(&mut self, p: &Pii) -> &mut Self {
        let start = self.text.len() + p.lead.len();
        self.text.push_str(&p.lead);
        self.text.push_str(&p.value);
        self.spans.push((p.kind, start, start + p.value.len()));
        self.text.push_str(&p.trail);
        self
    }
}

/// A PII value with the words around it that a writer would naturally use.
struct Pii {
    kind: &'static str,
    /// Label text before the value (`"call me at "`).
    lead: String,
    value: String,
    /// Text right after the value (closing quote, nothing...).
    trail: String,
}

const FIRST: &[&str] = &[
    "anna", "jürgen", "li", "maria", "john", "fatima", "olivier", "sofia", "kenji", "priya",
    "lukas", "chloé",
];
const LAST: &[&str] = &[
    "schmidt", "nguyen", "garcia", "smith", "müller", "dubois", "tanaka", "kowalski", "rossi",
    "okafor",
];
const DOMAINS: &[&str] = &[
    "example.com",
    "mail.example.org",
    "corp.example.co.uk",
    "example.de",
    "startup.io",
    "uni-example.fr",
    "example.net",
    "sub.dept.example.com",
];
const NONASCII: &[&str] = &[
    "Grüße aus München! ",
    "こんにちは、",
    "Привет! ",
    "Bonjour, ça va ? ",
    "¡Hola! ",
    "🙂 ",
    "Zürich → São Paulo: ",
    "naïve café résumé — ",
    "你好，",
    "Ελληνικά · ",
    "שלום ",
    "Déjà vu… ",
];

fn ascii_name(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'ü' => 'u',
            'é' => 'e',
            c => c,
        })
        .collect()
}

fn email(r: &Rng) -> String {
    let f = ascii_name(r.pick(FIRST));
    let l = ascii_name(r.pick(LAST));
    let d = r.pick(DOMAINS);
    match r.range(0, 5) {
        0 => format!("{f}.{l}@{d}"),
        1 => format!("{}{l}{}@{d}", &f[..1], r.range(1, 99)),
        2 => format!("{f}+{}@{d}", r.pick(&["news", "work", "test"])),
        3 => format!("{f}_{l}@{d}"),
        4 => format!("{f}.o'{l}@{d}"),
        _ => format!("{}.{}@{d}", f.to_uppercase(), l),
    }
}

fn phone(r: &Rng) -> String {
    let area = format!("{}{}", r.range(2, 9), r.digits(2));
    let exch = format!("{}{}", r.range(2, 9), r.digits(2));
    let line = r.digits(4);
    match r.range(0, 19) {
        0 => format!("({area}) {exch}-{line}"),
        1 => format!("{area}-{exch}-{line}"),
        2 => format!("{area}.{exch}.{line}"),
        3 => format!("+1 {area} {exch} {line}"),
        4 => format!("+1-{area}-{exch}-{line}"),
        5 => format!("+44 20 {} {}", r.digits(4), r.digits(4)),
        6 => format!("07{} {}", r.digits(3), r.digits(6)),
        7 => format!("020 {} {}", r.digits(4), r.digits(4)),
        8 => format!(
            "+49 {} {}",
            r.pick(&["30", "89", "40", "151", "170"]),
            r.digits(r.range(7, 8) as usize)
        ),
        9 => format!(
            "0{} {}",
            r.pick(&["30", "89", "221", "151", "176"]),
            r.digits(r.range(7, 8) as usize)
        ),
        10 => format!(
            "+33 {} {} {} {} {}",
            r.range(1, 7),
            r.digits(2),
            r.digits(2),
            r.digits(2),
            r.digits(2)
        ),
        11 => format!(
            "0{} {} {} {} {}",
            r.range(1, 7),
            r.digits(2),
            r.digits(2),
            r.digits(2),
            r.digits(2)
        ),
        12 => format!(
            "0{}.{}.{}.{}.{}",
            r.range(6, 7),
            r.digits(2),
            r.digits(2),
            r.digits(2),
            r.digits(2)
        ),
        13 => format!("+1{area}{exch}{line}"),
        14 => format!("{area}-{exch}-{line}x{}", r.digits(r.range(2, 4) as usize)),
        15 => format!("001-{area}-{exch}-{line}"),
        16 => format!("+44(0){} {}", r.pick(&["1632", "1865", "113"]), r.digits(6)),
        17 => format!("(0{}) {}", r.pick(&["1632", "6221", "40"]), r.digits(6)),
        18 => format!("0049 {} {}", r.pick(&["30", "89"]), r.digits(8)),
        _ => format!("({area}) {exch}-{line} ext. {}", r.digits(3)),
    }
}

fn luhn_digit(partial: &str) -> u8 {
    // Check digit for `partial` (the digits before it).
    let mut sum = 0u32;
    for (i, b) in partial.bytes().rev().enumerate() {
        let mut d = u32::from(b - b'0');
        if i % 2 == 0 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    ((10 - sum % 10) % 10) as u8
}

/// A card number's digits: valid issuer prefix and Luhn check digit (or broken when `valid` is false).
fn card_digits(r: &Rng, valid: bool) -> String {
    let (prefix, len) = match r.range(0, 6) {
        0 => ("4".to_string(), 16),
        1 => (format!("5{}", r.range(1, 5)), 16),
        2 => (format!("{}", r.range(2221, 2720)), 16),
        3 => (r.pick(&["34", "37"]).to_string(), 15),
        4 => ("6011".to_string(), 16),
        5 => (format!("35{}", r.range(28, 89)), 16),
        _ => ("4".to_string(), 19),
    };
    let body = format!("{prefix}{}", r.digits(len - prefix.len() - 1));
    let check = luhn_digit(&body);
    let check = if valid {
        check
    } else {
        (check + r.range(1, 9) as u8) % 10
    };
    format!("{body}{check}")
}

fn format_card(r: &Rng, d: &str) -> String {
    let sep = r.pick(&["", " ", "-", " "]);
    if sep.is_empty() {
        return d.to_string();
    }
    let cuts: Vec<usize> = if d.len() == 15 {
        vec![4, 10]
    } else {
        (4..d.len()).step_by(4).collect()
    };
    let mut out = String::new();
    let mut last = 0;
    for c in cuts {
        out.push_str(&d[last..c]);
        out.push_str(sep);
        last = c;
    }
    out.push_str(&d[last..]);
    out
}

fn mod97(s: &str) -> u32 {
    s.bytes().fold(0u32, |acc, b| match b {
        b'0'..=b'9' => (acc * 10 + u32::from(b - b'0')) % 97,
        _ => (acc * 100 + u32::from(b - b'A') + 10) % 97,
    })
}

/// An IBAN (compact), with a correct or a deliberately wrong check.
fn iban(r: &Rng, valid: bool) -> String {
    let (cc, bban) = match r.range(0, 7) {
        0 => ("DE", r.digits(18)),
        1 => (
            "GB",
            format!(
                "{}{}",
                r.chars(4, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
                r.digits(14)
            ),
        ),
        2 => (
            "FR",
            format!("{}{}{}", r.digits(10), r.chars(11, UPPER_NUM), r.digits(2)),
        ),
        3 => (
            "NL",
            format!(
                "{}{}",
                r.chars(4, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
                r.digits(10)
            ),
        ),
        4 => ("ES", r.digits(20)),
        5 => (
            "IT",
            format!(
                "{}{}{}",
                r.chars(1, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
                r.digits(10),
                r.chars(12, UPPER_NUM)
            ),
        ),
        6 => ("CH", r.digits(17)),
        _ => ("BE", r.digits(12)),
    };
    let check = 98 - mod97(&format!("{bban}{cc}00"));
    let check = if valid {
        check
    } else {
        (check + r.range(1, 50) as u32) % 97 + 2
    };
    let check = if !valid && check == 98 - mod97(&format!("{bban}{cc}00")) {
        (check + 1) % 97
    } else {
        check
    };
    format!("{cc}{check:02}{bban}")
}

fn group4(s: &str) -> String {
    s.as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap_or(""))
        .collect::<Vec<_>>()
        .join(" ")
}

fn ssn(r: &Rng) -> String {
    let area = loop {
        let a = r.range(1, 899);
        if a != 666 {
            break a;
        }
    };
    format!("{area:03}-{:02}-{:04}", r.range(1, 99), r.range(1, 9999))
}

fn ipv4(r: &Rng) -> String {
    match r.range(0, 3) {
        0 => format!(
            "10.{}.{}.{}",
            r.range(0, 255),
            r.range(0, 255),
            r.range(1, 254)
        ),
        1 => format!("192.168.{}.{}", r.range(0, 255), r.range(1, 254)),
        2 => format!(
            "172.{}.{}.{}",
            r.range(16, 31),
            r.range(0, 255),
            r.range(1, 254)
        ),
        _ => format!(
            "{}.{}.{}.{}",
            r.range(1, 223),
            r.range(0, 255),
            r.range(0, 255),
            r.range(1, 254)
        ),
    }
}

fn ipv6(r: &Rng) -> String {
    let mut g = [0u16; 8];
    g[0] = r.pick(&[0x2001u16, 0xfe80, 0x2a00, 0x2606, 0xfd12]);
    for (i, x) in g.iter_mut().enumerate().skip(1) {
        *x = if (2..=5).contains(&i) && r.chance(0.5) {
            0
        } else {
            r.range(0, 0xffff) as u16
        };
    }
    if g[0] == 0x2001 {
        g[1] = 0xdb8;
    }
    let a = std::net::Ipv6Addr::from(g);
    if r.chance(0.2) {
        g.iter()
            .map(|x| format!("{x:x}"))
            .collect::<Vec<_>>()
            .join(":")
    } else {
        a.to_string()
    }
}

fn b64url(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(B64URL[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

fn strong_password(r: &Rng) -> String {
    let mut p = r.chars(r.range(6, 10) as usize, ALNUM);
    p.push(char::from(r.pick(b"!#%&*@^$")));
    p.push_str(&r.digits(2));
    p
}

/// A password for inside quotes: a strong one with a `;`, `,` or space in its letters.
fn quoted_password(r: &Rng) -> String {
    let p = strong_password(r);
    let letters = p
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(p.len());
    let at = r.range(3, (letters - 3) as u64) as usize;
    format!("{}{}{}", &p[..at], r.pick(&[";", ",", " "]), &p[at..])
}

/// A password as people choose them: two capitalised words and a year or a number.
fn human_password(r: &Rng) -> String {
    const WORDS: &[&str] = &[
        "Blue", "Sky", "Happy", "Tiger", "Sunny", "Dog", "Hello", "World", "Green", "Moon", "True",
        "None",
    ];
    let tail = match r.range(0, 2) {
        0 => r.range(1970, 2025).to_string(),
        1 => "123".to_string(),
        _ => format!("{}!", r.digits(2)),
    };
    format!("{}{}{tail}", r.pick(WORDS), r.pick(WORDS))
}

/// A secret: (value, lead label, trail) in a form people paste.
fn secret(r: &Rng) -> Pii {
    let (lead, value, trail) = match r.range(0, 10) {
        0 => (
            "AWS_ACCESS_KEY_ID=".into(),
            format!("AKIA{}", r.chars(16, UPPER_NUM)),
            String::new(),
        ),
        1 => (
            "token: ".into(),
            format!("ghp_{}", r.chars(36, ALNUM)),
            String::new(),
        ),
        2 => (
            "GITHUB_TOKEN=".into(),
            format!("github_pat_{}_{}", r.chars(22, ALNUM), r.chars(59, ALNUM)),
            String::new(),
        ),
        3 => (
            "OPENAI_API_KEY=\"".into(),
            format!("sk-proj-{}{}", r.chars(30, ALNUM), r.digits(3)),
            "\"".into(),
        ),
        4 => (
            "slack bot token ".into(),
            format!(
                "xoxb-{}-{}-{}",
                r.digits(12),
                r.digits(13),
                r.chars(24, ALNUM)
            ),
            String::new(),
        ),
        5 => match r.range(0, 4) {
            0 => (
                "key=".into(),
                format!("AIza{}", r.chars(35, ALNUM)),
                String::new(),
            ),
            1 => (
                "STRIPE_KEY=".into(),
                format!("sk_live_{}", r.chars(24, ALNUM)),
                String::new(),
            ),
            2 => (
                "gitlab: ".into(),
                format!("glpat-{}", r.chars(20, ALNUM)),
                String::new(),
            ),
            3 => (
                "Authorization: Token ".into(),
                r.chars(40, HEX),
                String::new(),
            ),
            _ => (
                "DATABASE_URL=postgres://admin:".into(),
                format!("{}@{}", r.chars(4, ALNUM), strong_password(r)),
                "@db.internal:5432/app".into(),
            ),
        },
        6 => {
            let header = b64url(br#"{"alg":"HS256","typ":"JWT"}"#);
            let payload =
                b64url(format!(r#"{{"sub":"{}","exp":{}}}"#, r.digits(6), r.digits(10)).as_bytes());
            (
                "Authorization: Bearer ".into(),
                format!("{header}.{payload}.{}", r.chars(43, B64URL)),
                String::new(),
            )
        }
        7 => {
            let body: Vec<String> = (0..r.range(3, 6)).map(|_| r.chars(64, ALNUM)).collect();
            let kind = r.pick(&["RSA ", "EC ", "", "OPENSSH "]);
            let begin = format!("-----BEGIN {kind}PRIVATE KEY-----");
            if r.chance(0.3) {
                // Pasted without its END line, cut off in the middle of a line.
                let cut = r.chars(r.range(20, 39) as usize, ALNUM);
                (
                    "here is the key:\n".into(),
                    format!("{begin}\n{}\n{cut}", body.join("\n")),
                    "...\n".into(),
                )
            } else {
                (
                    "here is the key:\n".into(),
                    format!(
                        "{begin}\n{}\n-----END {kind}PRIVATE KEY-----",
                        body.join("\n")
                    ),
                    "\n".into(),
                )
            }
        }
        8 => {
            let (lead, trail) = r.pick(&[
                ("DB_PASSWORD=\"", "\""),
                ("password = '", "'"),
                ("\"api_key\": \"", "\""),
                ("client_secret: ", ""),
            ]);
            let value = if trail.is_empty() || r.chance(0.5) {
                strong_password(r)
            } else {
                quoted_password(r)
            };
            (lead.to_string(), value, trail.to_string())
        }
        _ => (
            r.pick(&["my password is ", "the password is ", "Passwort: "])
                .to_string(),
            if r.chance(0.5) {
                strong_password(r)
            } else {
                human_password(r)
            },
            String::new(),
        ),
    };
    Pii {
        kind: "secret",
        lead,
        value,
        trail,
    }
}

/// One random PII item with a natural label.
fn pii(r: &Rng) -> Pii {
    let (kind, lead, value): (&'static str, String, String) = match r.range(0, 8) {
        0 => (
            "email",
            r.pick(&["email me at ", "contact: ", "mail ", "From: ", "cc "])
                .to_string(),
            email(r),
        ),
        1 => (
            "phone",
            r.pick(&[
                "call me at ",
                "Tel. ",
                "mobile: ",
                "phone ",
                "WhatsApp ",
                "reach me on ",
                "Telefon: ",
                "téléphone : ",
                "call my partner at ",
                "Vincent: ",
                "ask Casey on ",
            ])
            .to_string(),
            phone(r),
        ),
        2 => {
            let d = card_digits(r, true);
            (
                "credit_card",
                r.pick(&["card number ", "CC: ", "paid with ", "Karte "])
                    .to_string(),
                format_card(r, &d),
            )
        }
        3 => {
            let i = iban(r, true);
            let v = if r.chance(0.5) { group4(&i) } else { i };
            (
                "iban",
                r.pick(&["IBAN: ", "transfer to ", "account ", "IBAN "])
                    .to_string(),
                v,
            )
        }
        4 => (
            "us_ssn",
            r.pick(&["SSN ", "social security number: ", "SSN: ", "my SSN is "])
                .to_string(),
            ssn(r),
        ),
        5 => {
            let v = if r.chance(0.7) { ipv4(r) } else { ipv6(r) };
            (
                "ip_address",
                r.pick(&["from ", "host ", "client IP ", "server at ", "src="])
                    .to_string(),
                v,
            )
        }
        6 => return street_address(r),
        _ => return secret(r),
    };
    Pii {
        kind,
        lead,
        value,
        trail: String::new(),
    }
}

/// A street address in one of the forms people write, with a lead that says it is one when
/// nothing else in it does.
fn street_address(r: &Rng) -> Pii {
    let n = r.range(1, 2500);
    let name = r.pick(&[
        "Elm", "Oak", "Maple", "Baker", "Church", "Mill", "Victoria", "Cedar",
    ]);
    let (lead, value) = match r.range(0, 6) {
        0 => (
            r.pick(&[
                "I live at ",
                "ship to ",
                "my address is ",
                "Address: ",
                "deliver to ",
            ]),
            format!(
                "{n} {name} {}",
                r.pick(&["Street", "St", "Avenue", "Ave", "Road", "Lane", "Drive", "Court"])
            ),
        ),
        1 => (
            r.pick(&["send it to ", "new place: ", "billing: ", ""]),
            format!(
                "{n} {name} {}, {}, {} {}",
                r.pick(&["Street", "Rd", "Blvd", "Way"]),
                r.pick(&["Springfield", "Portland", "New York", "Austin"]),
                r.pick(&["IL", "OR", "NY", "TX"]),
                r.digits(5)
            ),
        ),
        2 => (
            r.pick(&["flat at ", "moved to ", ""]),
            format!(
                "{n}{} {name} {}, {}",
                r.pick(&["", "B", "a"]),
                r.pick(&["Street", "Road", "Gardens"]),
                r.pick(&["Apt 4B", "Flat 2", "Suite 200", "Unit 12"])
            ),
        ),
        3 => (
            r.pick(&["Anschrift: ", "wohne in der ", "Lieferadresse: ", ""]),
            format!(
                "{}{} {}, {} {}",
                r.pick(&["Haupt", "Linden", "Schiller", "Goethe"]),
                r.pick(&["straße", "str.", "weg", "allee"]),
                n % 200 + 1,
                r.digits(5),
                r.pick(&["Berlin", "München", "Köln"])
            ),
        ),
        4 => (
            r.pick(&["j'habite au ", "adresse : ", "livraison au ", ""]),
            format!(
                "{} {} {}, {} {}",
                n % 200 + 1,
                r.pick(&["rue", "avenue", "boulevard", "place"]),
                r.pick(&["de la Paix", "Victor Hugo", "des Lilas", "d'Italie"]),
                r.digits(5),
                r.pick(&["Paris", "Lyon", "Marseille"])
            ),
        ),
        _ => {
            // `Via` also starts other names (`Via USB 3`): it needs words that say an
            // address follows; `Calle` and `Rua` do not.
            let kind = r.pick(&["Calle", "Via", "Rua"]);
            let lead = r.pick(&["vivo en ", "abito in ", "moro na ", ""]);
            (
                if kind == "Via" && lead.is_empty() {
                    "abito in "
                } else {
                    lead
                },
                format!(
                    "{kind} {} {}",
                    r.pick(&["Mayor", "Roma", "Augusta", "della Spiga"]),
                    n % 200 + 1
                ),
            )
        }
    };
    Pii {
        kind: "street_address",
        lead: lead.to_string(),
        value,
        trail: String::new(),
    }
}

/// Text that looks like PII to a naive scanner but is not.
fn hard_negative(r: &Rng) -> String {
    match r.range(0, 20) {
        0 => format!(
            "card-like ref {} (invalid)",
            format_card(r, &card_digits(r, false))
        ),
        1 => format!("IBAN {} was rejected", group4(&iban(r, false))),
        2 => format!(
            "SSN-like id {}-{:02}-{:04}",
            r.pick(&["000", "666", "900", "987"]),
            r.range(1, 99),
            r.range(1, 9999)
        ),
        3 => format!(
            "upgraded to v{}.{}.{} (build {}.{}.{}.{})",
            r.range(0, 20),
            r.range(0, 40),
            r.range(0, 99),
            r.range(1, 30),
            r.range(0, 9),
            r.range(1000, 30000),
            r.range(0, 999)
        ),
        4 => format!(
            "request id {}-{}-4{}-a{}-{}",
            r.chars(8, HEX),
            r.chars(4, HEX),
            r.chars(3, HEX),
            r.chars(3, HEX),
            r.chars(12, HEX)
        ),
        5 => format!("commit {} sha256:{}", r.chars(40, HEX), r.chars(64, HEX)),
        6 => format!(
            "total ${},{:03}.{:02} or €{},{:02}",
            r.range(1, 99),
            r.range(0, 999),
            r.range(0, 99),
            r.range(1, 999),
            r.range(0, 99)
        ),
        7 => format!(
            "at 2024-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            r.range(1, 12),
            r.range(1, 28),
            r.range(0, 23),
            r.range(0, 59),
            r.range(0, 59)
        ),
        8 => format!(
            "on {:02}/{:02}/2024 {:02}:{:02}",
            r.range(1, 12),
            r.range(1, 28),
            r.range(0, 23),
            r.range(0, 59)
        ),
        9 => format!("Order #{} shipped", r.digits(10)),
        10 => format!(
            "order ORD-2024-{} and invoice INV-{}",
            r.digits(6),
            r.digits(8)
        ),
        11 => format!("epoch {}{}", r.range(15, 17), r.digits(8)),
        12 => format!("tracking number {}", r.digits(12)),
        13 => format!(
            "{}.{}.{} dated {:02}.{:02}.{}",
            r.range(1, 9),
            r.range(0, 9),
            r.range(0, 9),
            r.range(1, 28),
            r.range(1, 12),
            r.range(2019, 2025)
        ),
        14 => format!(
            "port {} pid {} took {} ms",
            r.range(1024, 65535),
            r.range(100, 99999),
            r.range(1, 9999)
        ),
        15 => format!(
            "{} {}-{}-{}",
            r.pick(&[
                "order_id:",
                "orderId",
                "Ticketnummer",
                "Parts",
                "Referenznummer:",
                "Modellnummer",
            ]),
            r.range(200, 999),
            r.range(200, 999),
            r.digits(4)
        ),
        16 => r
            .pick(&[
                "password: Option<String>, token: Vec<u8>, secret: HmacSha256",
                "\"password\": \"Enter your password\", \"token\": null",
                "password_hint = \"must contain 8 characters\"",
                "secret = sha256(password)",
                "let has_secret = !secret.is_empty();",
                "auto token = lexer->next();",
                "secret_store = \"AWS Secrets Manager\"",
                "secret_description: \"Used by CI pipeline\"",
            ])
            .to_string(),
        17 => "-----BEGIN RSA PRIVATE KEY----- marks the start of a key".to_string(),
        18 => format!(
            "{} {} {} {}",
            r.pick(&["the top", "another", "In", "only", "we counted"]),
            r.range(2, 2024),
            r.pick(&[
                "Wall Street",
                "Main Street",
                "Park Avenue",
                "Downing Street",
                "Court Road"
            ]),
            r.pick(&[
                "banks",
                "shops were open",
                "was repaved",
                "analysts",
                "stations"
            ])
        ),
        19 => format!("dimensions 1920x1080, ratio 16:9, {}% done", r.range(1, 99)),
        _ => r
            .pick(&[
                "Platz 1 in der Wertung, Weg 2 ist kürzer",
                "see chapter 12 rue and section 3 place",
                "release Spring 2024, page 5 Boulevard",
                "at 10:30 Park Avenue was closed",
            ])
            .to_string(),
    }
}

fn filler(r: &Rng) -> &'static str {
    r.pick(&[
        "Could you help me rewrite this paragraph so it sounds friendlier?",
        "The quarterly report is attached, let me know if anything is unclear.",
        "I tried restarting the app twice but it still crashes on launch.",
        "Summarise the meeting notes below in three bullet points.",
        "Thanks again for the quick turnaround on this!",
        "We are migrating the service to the new cluster next week.",
        "Please keep this between us until the announcement.",
        "Das Meeting wurde auf Donnerstag verschoben.",
        "Merci de confirmer la réception de ce message.",
        "The customer reports that the checkout page is slow.",
    ])
}

fn chat(r: &Rng, items: &[Pii], negs: &[String]) -> Builder {
    let mut b = Builder {
        text: String::new(),
        spans: vec![],
    };
    b.s(r.pick(NONASCII)).s(filler(r)).s(" ");
    for (i, p) in items.iter().enumerate() {
        if i > 0 {
            b.s(r.pick(&[" Also, ", ". ", "; ", "\n"]));
        }
        b.pii(p);
    }
    for n in negs {
        b.s(". ").s(n);
    }
    b.s(". ").s(filler(r));
    b
}

fn email_doc(r: &Rng, items: &[Pii], negs: &[String]) -> Builder {
    let mut b = Builder {
        text: String::new(),
        spans: vec![],
    };
    b.s("Subject: ")
        .s(r.pick(&[
            "Re: Rechnung für März",
            "Fwd: données client",
            "Update — onboarding",
        ]))
        .s("\n\n");
    b.s(r.pick(&[
        "Hallo Frau Müller,\n\n",
        "Bonjour Hélène,\n\n",
        "Hi team,\n\n",
    ]));
    b.s(filler(r)).s("\n");
    for p in items {
        b.s(r.pick(NONASCII)).pii(p).s("\n");
    }
    for n in negs {
        b.s(n).s("\n");
    }
    b.s("\nMit freundlichen Grüßen / Best regards\n")
        .s(r.pick(FIRST));
    b
}

fn ticket(r: &Rng, items: &[Pii], negs: &[String]) -> Builder {
    let mut b = Builder {
        text: String::new(),
        spans: vec![],
    };
    b.s(&format!(
        "[TICKET-{}] Priority: {}\n",
        r.digits(5),
        r.pick(&["high", "low", "médium"])
    ));
    b.s("Reporter notes (übersetzt): ").s(filler(r)).s("\n");
    for p in items {
        b.s("- ").pii(p).s("\n");
    }
    for n in negs {
        b.s("- ").s(n).s("\n");
    }
    b
}

fn code(_r: &Rng, items: &[Pii], negs: &[String]) -> Builder {
    let mut b = Builder {
        text: String::new(),
        spans: vec![],
    };
    b.s("# config — généré automatiquement\n");
    b.s("import os\n\nMAX_TOKENS = 1024\ntimeout_ms = 2500\n");
    for p in items {
        match p.kind {
            "secret" => {
                b.pii(p).s("\n");
            }
            _ => {
                b.s("contact = \"");
                b.pii(&Pii {
                    lead: String::new(),
                    trail: String::new(),
                    kind: p.kind,
                    value: p.value.clone(),
                });
                b.s("\"  # ").s(p.lead.trim()).s("\n");
            }
        }
    }
    for n in negs {
        b.s("# ").s(n).s("\n");
    }
    b.s("def handler(event):\n    return {\"status\": 200, \"version\": \"2.3.1\"}\n");
    b
}

fn log(r: &Rng, items: &[Pii], negs: &[String]) -> Builder {
    let mut b = Builder {
        text: String::new(),
        spans: vec![],
    };
    let ts = || {
        format!(
            "2024-03-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            1 + items.len(),
            10,
            20,
            30,
            400
        )
    };
    for p in items {
        let t = ts();
        b.s(&t).s(" INFO  api::handler — ").pii(p).s("\n");
    }
    for n in negs {
        let t = ts();
        b.s(&t).s(" DEBUG worker ").s(n).s("\n");
    }
    b.s(&ts())
        .s(" WARN  retry 3/5 after 250 ms (requête lente)\n");
    let _ = r;
    b
}

/// Generates `n` labeled documents from `seed`.
pub fn generate(n: usize, seed: u64) -> Vec<Doc> {
    let r = Rng::new(seed);
    (0..n)
        .map(|i| {
            let clean = i % 10 < 3;
            let items: Vec<Pii> = if clean {
                vec![]
            } else {
                (0..r.range(1, 4)).map(|_| pii(&r)).collect()
            };
            let negs: Vec<String> = (0..r
                .range(if clean { 2 } else { 0 }, if clean { 5 } else { 2 }))
                .map(|_| hard_negative(&r))
                .collect();
            let (genre, b) = match r.range(0, 4) {
                0 => ("chat", chat(&r, &items, &negs)),
                1 => ("email", email_doc(&r, &items, &negs)),
                2 => ("ticket", ticket(&r, &items, &negs)),
                3 => ("code", code(&r, &items, &negs)),
                _ => ("log", log(&r, &items, &negs)),
            };
            Doc {
                text: b.text,
                spans: b.spans,
                genre,
            }
        })
        .collect()
}

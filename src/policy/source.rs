//! Locating problems in a policy file: byte offsets → `line:column`, TOML paths → spans, and
//! "did you mean" suggestions.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml_edit::{Item, Table, Value};

use super::Diagnostic;

/// One step of a TOML path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// A table key.
    Key(String),
    /// An array index (0-based).
    Index(usize),
}

/// A TOML path such as `rule[3].when.pii_any`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TomlPath(pub Vec<Seg>);

impl TomlPath {
    /// The empty path (the document root).
    pub fn root() -> Self {
        TomlPath(Vec::new())
    }
    /// This path plus a key.
    pub fn key(&self, k: &str) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Key(k.to_string()));
        TomlPath(v)
    }
    /// This path plus an index.
    pub fn index(&self, i: usize) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Index(i));
        TomlPath(v)
    }
}

impl fmt::Display for TomlPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// The text of a policy file with the span index needed to point at problems.
pub struct SourceMap {
    file: PathBuf,
    src: String,
    doc: Option<toml_edit::Document<String>>,
}

impl SourceMap {
    /// Indexes `src` (parsing failures simply leave no span index).
    pub fn new(file: &Path, src: &str) -> Self {
        SourceMap {
            file: file.to_path_buf(),
            src: src.to_string(),
            doc: toml_edit::Document::parse(src.to_string()).ok(),
        }
    }

    /// The file name.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.src.len());
        let mut start = offset;
        while !self.src.is_char_boundary(start) {
            start -= 1;
        }
        let before = &self.src[..start];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    /// A diagnostic at a byte offset.
    pub fn at_offset(&self, offset: usize, path: &TomlPath, message: String) -> Diagnostic {
        let (line, column) = self.line_col(offset);
        Diagnostic {
            file: self.file.clone(),
            line,
            column,
            path: path.to_string(),
            message,
        }
    }

    /// A diagnostic at the deepest existing element of `path`.
    pub fn at_path(&self, path: &TomlPath, message: String) -> Diagnostic {
        let offset = self.span_of(path).map(|r| r.start).unwrap_or(0);
        self.at_offset(offset, path, message)
    }

    /// A diagnostic at the key of `path` (its name is what is wrong: an unknown key), or at the
    /// deepest existing element when that key is not there.
    pub fn at_key(&self, path: &TomlPath, message: String) -> Diagnostic {
        let offset = self
            .locate(path, true)
            .or_else(|| self.span_of(path))
            .map(|r| r.start)
            .unwrap_or(0);
        self.at_offset(offset, path, message)
    }

    /// `path` ends with a key that is in the document.
    pub fn has_key(&self, path: &TomlPath) -> bool {
        self.locate(path, true).is_some()
    }

    /// The span of the deepest element of `path` that exists in the document: the value for a
    /// scalar or array, the header for a table, the key when the value has no span.
    pub fn span_of(&self, path: &TomlPath) -> Option<Range<usize>> {
        self.locate(path, false)
    }

    /// [`SourceMap::span_of`], or with `key_only` the span of the last key of `path` (`None`
    /// when it does not end with a key that is there).
    fn locate(&self, path: &TomlPath, key_only: bool) -> Option<Range<usize>> {
        let doc = self.doc.as_ref()?;
        let mut key_span = None;
        let mut best = None;
        let mut cur = Node::Table(doc.as_table());
        for seg in &path.0 {
            let next = match (&cur, seg) {
                (Node::Table(t), Seg::Key(k)) => {
                    key_span = t.key(k).and_then(|key| key.span());
                    if let Some(key) = t.key(k) {
                        best = key.span().or(best);
                    }
                    t.get(k).map(Node::Item)
                }
                (Node::Item(item), Seg::Key(k)) => match item {
                    Item::Table(t) => {
                        key_span = t.key(k).and_then(|key| key.span());
                        if let Some(key) = t.key(k) {
                            best = key.span().or(best);
                        }
                        t.get(k).map(Node::Item)
                    }
                    Item::Value(Value::InlineTable(t)) => {
                        key_span = t.get_key_value(k).and_then(|(key, _)| key.span());
                        if let Some((key, _)) = t.get_key_value(k) {
                            best = key.span().or(best);
                        }
                        t.get(k).map(Node::Value)
                    }
                    _ => None,
                },
                (Node::Value(Value::InlineTable(t)), Seg::Key(k)) => {
                    key_span = t.get_key_value(k).and_then(|(key, _)| key.span());
                    t.get(k).map(Node::Value)
                }
                (Node::Item(Item::ArrayOfTables(a)), Seg::Index(i)) => a.get(*i).map(Node::Table),
                (Node::Item(Item::Value(Value::Array(a))), Seg::Index(i))
                | (Node::Value(Value::Array(a)), Seg::Index(i)) => a.get(*i).map(Node::Value),
                _ => None,
            };
            match next {
                Some(n) => {
                    best = n.span().or(best);
                    cur = n;
                }
                None => return if key_only { None } else { best },
            }
            if !matches!(seg, Seg::Key(_)) {
                key_span = None;
            }
        }
        if key_only {
            key_span
        } else {
            best
        }
    }

    /// The TOML path of the deepest element whose span contains `offset`.
    pub fn path_at(&self, offset: usize) -> TomlPath {
        let Some(doc) = self.doc.as_ref() else {
            return TomlPath::root();
        };
        let mut path = TomlPath::root();
        descend_table(doc.as_table(), offset, &mut path);
        path
    }
}

enum Node<'a> {
    Table(&'a Table),
    Item(&'a Item),
    Value(&'a Value),
}

impl Node<'_> {
    fn span(&self) -> Option<Range<usize>> {
        match self {
            Node::Table(t) => t.span(),
            Node::Item(Item::Table(t)) => t.span(),
            Node::Item(i) => i.span(),
            Node::Value(v) => v.span(),
        }
    }
}

fn contains(span: Option<Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|r| r.start <= offset && offset < r.end.max(r.start + 1))
}

fn descend_table(t: &Table, offset: usize, path: &mut TomlPath) {
    // Keys first: an error "at" a key belongs to that key's path.
    for (k, item) in t.iter() {
        let key_span = t.key(k).and_then(|key| key.span());
        if contains(key_span, offset) {
            path.0.push(Seg::Key(k.to_string()));
            return;
        }
        match item {
            Item::ArrayOfTables(a) => {
                for (i, sub) in a.iter().enumerate() {
                    if contains(sub.span(), offset) || table_contains(sub, offset) {
                        path.0.push(Seg::Key(k.to_string()));
                        path.0.push(Seg::Index(i));
                        descend_table(sub, offset, path);
                        return;
                    }
                }
            }
            Item::Table(sub) => {
                if contains(sub.span(), offset) || table_contains(sub, offset) {
                    path.0.push(Seg::Key(k.to_string()));
                    descend_table(sub, offset, path);
                    return;
                }
            }
            Item::Value(v) => {
                if contains(v.span(), offset) {
                    path.0.push(Seg::Key(k.to_string()));
                    return;
                }
            }
            Item::None => {}
        }
    }
}

fn table_contains(t: &Table, offset: usize) -> bool {
    t.iter().any(|(k, item)| {
        contains(t.key(k).and_then(|key| key.span()), offset)
            || match item {
                Item::Table(sub) => contains(sub.span(), offset) || table_contains(sub, offset),
                Item::ArrayOfTables(a) => a
                    .iter()
                    .any(|sub| contains(sub.span(), offset) || table_contains(sub, offset)),
                other => contains(other.span(), offset),
            }
    })
}

/// The candidate closest to `word` (Jaro-Winkler ≥ 0.75 or Levenshtein ≤ 2, ignoring case),
/// if any.
pub fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word = word.to_lowercase();
    candidates
        .into_iter()
        .map(|c| {
            let lower = c.to_lowercase();
            (
                c,
                strsim::jaro_winkler(&word, &lower),
                strsim::levenshtein(&word, &lower),
            )
        })
        .filter(|(_, jw, lev)| *jw >= 0.75 || *lev <= 2)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(c, _, _)| c)
}

/// Adds "did you mean `x`?" to a serde message of the form
/// "unknown field `foo`, expected one of `a`, `b`" (or "unknown variant ...").
pub fn with_suggestion(message: &str) -> String {
    let ticked: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    let is_unknown = message.starts_with("unknown field") || message.starts_with("unknown variant");
    if let (true, Some((found, expected))) = (is_unknown, ticked.split_first()) {
        if let Some(best) = nearest(found, expected.iter().copied()) {
            return format!("{}; did you mean `{best}`?", message.trim_end());
        }
    }
    message.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "name = \"p\"\n\n[[rule]]\nname = \"a\"\nroute = \"local\"\n\n[[rule]]\nname = \"b\"\nroute = \"cloud\"\n[rule.when]\npii_any = [\"email\", \"emial\"]\n";

    #[test]
    fn span_of_nested_array_value() {
        let sm = SourceMap::new(Path::new("p.toml"), SRC);
        let path = TomlPath::root()
            .key("rule")
            .index(1)
            .key("when")
            .key("pii_any")
            .index(1);
        let d = sm.at_path(&path, "bad".into());
        assert_eq!((d.line, d.column), (11, 21));
        assert_eq!(d.path, "rule[1].when.pii_any[1]");
    }

    #[test]
    fn path_at_offset_finds_the_key() {
        let sm = SourceMap::new(Path::new("p.toml"), SRC);
        let offset = SRC.find("pii_any").unwrap();
        assert_eq!(sm.path_at(offset).to_string(), "rule[1].when.pii_any");
    }

    #[test]
    fn suggestion_for_misspelled_field() {
        let m = with_suggestion(
            "unknown field `pii_anyy`, expected one of `pii`, `pii_any`, `pii_all`",
        );
        assert!(m.ends_with("did you mean `pii_any`?"), "{m}");
        let m = with_suggestion("unknown field `zzzzzz`, expected `pii`");
        assert!(!m.contains("did you mean"));
        assert_eq!(nearest("OpenAI", ["openai", "anthropic"]), Some("openai"));
    }

    #[test]
    fn line_col_counts_chars() {
        let sm = SourceMap::new(Path::new("x"), "a = \"é\"\nb = 1");
        assert_eq!(sm.line_col(9), (2, 1));
        assert_eq!(sm.line_col(7), (1, 7));
    }
}

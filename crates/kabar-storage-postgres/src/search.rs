//! Full-text search on PostgreSQL's own text search: a `tsvector` column with a GIN index, matched
//! with `@@ to_tsquery('simple', …)`.
//!
//! The words are normalised here, in Rust, before PostgreSQL sees them: lower-cased, diacritics
//! removed (NFD, combining marks dropped), and split on every character that is not a letter or a
//! digit. So matching does not depend on the database's locale, on the `unaccent` extension (which
//! distributed engines lack) or on the `simple` parser's special tokens (hosts, e-mails, paths),
//! and it behaves as the SQLite backend's `unicode61 remove_diacritics 2` tokenizer: case- and
//! diacritics-insensitive whole words.
//!
//! The query language is the one [`ArchiveQuery::text`](kabar_storage::ArchiveQuery::text)
//! documents: words (all must occur), `word*` prefixes, `"quoted phrases"`. User text never
//! reaches `to_tsquery` as syntax: every operand is a quoted run of letters and digits, joined by
//! operators this module writes (`&`, `<->`, `:*`).

use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

/// The most text of one message that is indexed: PostgreSQL caps a tsvector at 1 MiB, and a
/// longer body still archives (only its tail is not searchable).
const MAX_INDEXED_BYTES: usize = 256 * 1024;

/// Lower-cased, diacritics-free words of `text`, in order.
fn words(text: &str) -> Vec<String> {
    let folded: String = text.chars().flat_map(char::to_lowercase).collect();
    let stripped: String = folded.nfd().filter(|c| !is_combining_mark(*c)).collect();
    stripped.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_owned).collect()
}

/// The text handed to `to_tsvector('simple', …)` for a message body: its words separated by single
/// spaces, so PostgreSQL's positions are word positions (phrase search relies on that).
pub fn index_text(body: &str) -> String {
    let mut out = String::new();
    for w in words(body) {
        if out.len() + w.len() + 1 > MAX_INDEXED_BYTES {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&w);
    }
    out
}

/// Turns the user's search text into a `to_tsquery('simple', …)` argument, or `None` when it has
/// no usable term (such a search matches nothing).
///
/// Terms: `"a phrase"` in double quotes, otherwise whitespace-separated words; a word ending in
/// `*` is a prefix. A term holding several words after normalisation (`don't`, a phrase) becomes
/// a `<->` chain, so its words must be adjacent and in order; terms are joined with `&`.
pub fn tsquery(text: &str) -> Option<String> {
    let mut terms = Vec::new();
    for term in kabar_storage::search_terms(text) {
        let w = words(term.text);
        let Some(last) = w.len().checked_sub(1) else { continue };
        // Only letters and digits inside the quotes: nothing to escape.
        let chain: Vec<String> = w
            .iter()
            .enumerate()
            .map(|(i, word)| if term.prefix && i == last { format!("'{word}':*") } else { format!("'{word}'") })
            .collect();
        terms.push(if chain.len() == 1 { chain.concat() } else { format!("({})", chain.join(" <-> ")) });
    }
    if terms.is_empty() {
        None
    } else {
        Some(terms.join(" & "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_text_folds_case_and_diacritics_and_splits_on_punctuation() {
        assert_eq!(index_text("Crème BRÛLÉE, don't panic!"), "creme brulee don t panic");
        assert_eq!(index_text("  "), "");
        assert_eq!(index_text("日本語 テキスト"), "日本語 テキスト");
        assert_eq!(index_text("a.b@example.com /usr/bin"), "a b example com usr bin");
    }

    #[test]
    fn index_text_is_capped() {
        let long = "word ".repeat(100_000);
        let t = index_text(&long);
        assert!(t.len() <= MAX_INDEXED_BYTES && t.len() > MAX_INDEXED_BYTES - 10, "{}", t.len());
        assert!(t.ends_with("word"));
    }

    #[test]
    fn tsquery_quotes_every_operand() {
        assert_eq!(tsquery("hello world").as_deref(), Some("'hello' & 'world'"));
        assert_eq!(tsquery("  Hello  ").as_deref(), Some("'hello'"));
        assert_eq!(tsquery("wor*").as_deref(), Some("'wor':*"));
        assert_eq!(tsquery("\"good morning\" sun").as_deref(), Some("('good' <-> 'morning') & 'sun'"));
        assert_eq!(tsquery("don't").as_deref(), Some("('don' <-> 't')"));
        assert_eq!(tsquery("foo-ba*").as_deref(), Some("('foo' <-> 'ba':*)"));
        assert_eq!(tsquery("\"unterminated phrase").as_deref(), Some("('unterminated' <-> 'phrase')"));
        assert_eq!(
            tsquery("NEAR(x y) OR -z ^w col:v !a|b").as_deref(),
            Some("('near' <-> 'x') & 'y' & 'or' & 'z' & 'w' & ('col' <-> 'v') & ('a' <-> 'b')")
        );
        assert_eq!(tsquery("BRÛLÉE").as_deref(), Some("'brulee'"));
        assert_eq!(tsquery("*"), None);
        assert_eq!(tsquery("\"\" ** !!! ... ':*"), None);
        assert_eq!(tsquery(""), None);
    }
}

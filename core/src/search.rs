//! Conversation search: how text becomes index terms, and how a query becomes the terms to
//! look up. Both backends store the same rows (one per conversation and term key), so they
//! answer the same queries the same way.
//!
//! - **Words**: a text is split at every character that is not alphanumeric (Unicode: letters
//!   and digits of any script), lower-cased (Unicode), and cut to [`MAX_WORD_CHARS`]
//!   characters, after accent folding (NFKD without the combining diacritical marks, see
//!   [`words`]): `Ana.Lopez@ACME.com` is `ana`, `lopez`, `acme`, `com`; `Zoë` is `zoe`,
//!   `José` `jose`. Index and query go through the same [`words`], so `zoe`, `Zoë` and `ZOË`
//!   all find "Zoë".
//!   (Scripts written without spaces, such as Chinese, give one word per run of characters.)
//! - **Keys**: `w:<word>` for every word of a message, of the subject and of the members'
//!   name, email and external id; `p:<prefix>` for every prefix of
//!   [`MIN_PREFIX_CHARS`]..=[`MAX_PREFIX_CHARS`] characters of the subject's and profiles'
//!   words (not of messages: that would multiply each message's index rows).
//! - **Queries**: every word must be found (AND). The last word also matches as a word prefix
//!   (what an agent typing a name expects): it looks up `w:<word>` or `p:<word>`.
//! - **Limits**: a message indexes its first [`MAX_MESSAGE_WORDS`] distinct words; a query
//!   has 1..=[`MAX_QUERY_WORDS`] words and at most [`MAX_QUERY_CHARS`] characters.

use std::collections::BTreeSet;

use unicode_normalization::UnicodeNormalization;

use crate::ApiError;

/// Longer words are indexed and looked up by their first this many characters.
pub const MAX_WORD_CHARS: usize = 32;
/// Shortest prefix a last query word is matched as.
pub const MIN_PREFIX_CHARS: usize = 2;
/// Longest indexed prefix of a subject or profile word.
pub const MAX_PREFIX_CHARS: usize = 12;
/// Distinct words of one message that are indexed (the first ones).
pub const MAX_MESSAGE_WORDS: usize = 128;
/// Most words in a query.
pub const MAX_QUERY_WORDS: usize = 8;
/// Longest query, in characters.
pub const MAX_QUERY_CHARS: usize = 200;

/// The words of a text, normalised, in order (repeats included).
pub fn words(text: &str) -> impl Iterator<Item = String> {
    let folded = fold(text);
    folded
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase().chars().take(MAX_WORD_CHARS).collect())
        .collect::<Vec<String>>()
        .into_iter()
}

/// Accent and compatibility folding: NFKD (compatibility decomposition: `ﬁ` is `fi`,
/// full-width `Ａ` is `A`, `²` is `2`), without the combining diacritical marks (`é` is `e`,
/// `ë` is `e`, `ñ` is `n`), recomposed (NFC). Only the diacritic blocks are dropped, not every
/// combining mark: the vowel signs of Indic scripts, say, are letters of their words.
fn fold(text: &str) -> String {
    if text.is_ascii() {
        return text.to_owned();
    }
    text.nfkd().filter(|c| !is_diacritic(*c)).nfc().collect()
}

/// The combining diacritical mark blocks (and their extensions and the marks for symbols).
fn is_diacritic(c: char) -> bool {
    matches!(
        c,
        '\u{0300}'..='\u{036F}'
            | '\u{1AB0}'..='\u{1AFF}'
            | '\u{1DC0}'..='\u{1DFF}'
            | '\u{20D0}'..='\u{20FF}'
            | '\u{FE20}'..='\u{FE2F}'
    )
}

/// The index keys of a message's text: its first [`MAX_MESSAGE_WORDS`] distinct words.
pub fn message_keys(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for w in words(text) {
        if seen.len() >= MAX_MESSAGE_WORDS {
            break;
        }
        seen.insert(w);
    }
    seen.into_iter().map(|w| format!("w:{w}")).collect()
}

/// The index keys of fields people look conversations up by (subject, member name, email,
/// external id): every word and its prefixes.
pub fn field_keys<'a>(fields: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for field in fields {
        for w in words(field) {
            let chars: Vec<char> = w.chars().collect();
            for n in MIN_PREFIX_CHARS..=chars.len().min(MAX_PREFIX_CHARS) {
                keys.insert(format!("p:{}", chars[..n].iter().collect::<String>()));
            }
            keys.insert(format!("w:{w}"));
        }
    }
    keys
}

/// A parsed search: each group is the keys one query word may be found under; a conversation
/// matches when it has at least one key of every group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    groups: Vec<Vec<String>>,
}

impl SearchQuery {
    /// Parses what a user typed. Empty, too long or too many words is `invalid_payload`.
    pub fn parse(q: &str) -> Result<Self, ApiError> {
        if q.chars().count() > MAX_QUERY_CHARS {
            return Err(ApiError::invalid(format!(
                "q must be at most {MAX_QUERY_CHARS} characters"
            )));
        }
        let mut list: Vec<String> = Vec::new();
        for w in words(q) {
            if !list.contains(&w) {
                list.push(w);
            }
        }
        if list.is_empty() {
            return Err(ApiError::invalid("q must contain at least one word"));
        }
        if list.len() > MAX_QUERY_WORDS {
            return Err(ApiError::invalid(format!(
                "q must have at most {MAX_QUERY_WORDS} words"
            )));
        }
        let last = list.len() - 1;
        let groups = list
            .into_iter()
            .enumerate()
            .map(|(i, w)| {
                let n = w.chars().count();
                let mut keys = vec![format!("w:{w}")];
                if i == last && (MIN_PREFIX_CHARS..=MAX_PREFIX_CHARS).contains(&n) {
                    keys.push(format!("p:{w}"));
                }
                keys
            })
            .collect();
        Ok(Self { groups })
    }

    /// The key groups, in query order (every group non-empty).
    pub fn groups(&self) -> &[Vec<String>] {
        &self.groups
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_unicode_lowercase_and_split_at_punctuation() {
        let w: Vec<String> = words("Ana.Lopez@ACME.com — Zoë ÉTÉ, user_42!").collect();
        assert_eq!(
            w,
            ["ana", "lopez", "acme", "com", "zoe", "ete", "user", "42"]
        );
        let long = "x".repeat(40);
        assert_eq!(words(&long).next().unwrap().len(), MAX_WORD_CHARS);
    }

    #[test]
    fn accents_are_folded_the_same_at_index_and_query_time() {
        // Precomposed and decomposed forms, any case, and compatibility forms.
        for (text, want) in [
            ("Zoë", "zoe"),
            ("Zoe\u{0308}", "zoe"),
            ("JOSÉ", "jose"),
            ("José", "jose"),
            ("Ñandú", "nandu"),
            ("Crème Brûlée", "creme brulee"),
            ("ﬁle", "file"),
            ("Ｗｉｄｅ", "wide"),
            ("Łódź", "łodz"),
            ("straße", "straße"),
        ] {
            let got: Vec<String> = words(text).collect();
            assert_eq!(got.join(" "), want, "{text:?}");
        }
        // Scripts whose combining marks are letters keep them (Devanagari vowel signs).
        assert_eq!(words("हिंदी").collect::<Vec<_>>(), ["हिंदी"]);
        // A query with or without accents looks up the keys the text was indexed under.
        let indexed = field_keys(["José Zoë"]);
        for q in ["jose zoe", "José Zoë", "JOSE ZO", "josé zoë"] {
            let q = SearchQuery::parse(q).unwrap();
            for group in q.groups() {
                assert!(group.iter().any(|k| indexed.contains(k)), "{group:?}");
            }
        }
        let m = message_keys("Mañana, señor");
        assert!(m.contains("w:manana") && m.contains("w:senor"), "{m:?}");
    }

    #[test]
    fn message_keys_are_distinct_and_capped() {
        let keys = message_keys("Hello hello HELLO world");
        assert_eq!(keys.into_iter().collect::<Vec<_>>(), ["w:hello", "w:world"]);
        let many: String = (0..500).map(|i| format!("w{i} ")).collect();
        assert_eq!(message_keys(&many).len(), MAX_MESSAGE_WORDS);
    }

    #[test]
    fn field_keys_hold_words_and_prefixes() {
        let keys = field_keys(["Zoë Ann"]);
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        assert_eq!(keys, ["p:an", "p:ann", "p:zo", "p:zoe", "w:ann", "w:zoe"]);
    }

    #[test]
    fn queries_match_the_last_word_as_a_prefix() {
        let q = SearchQuery::parse("  Refund  ORD ").unwrap();
        assert_eq!(
            q.groups(),
            [
                vec!["w:refund".to_string()],
                vec!["w:ord".into(), "p:ord".into()]
            ]
        );
        // A one-character last word is matched whole only.
        let q = SearchQuery::parse("a").unwrap();
        assert_eq!(q.groups(), [vec!["w:a".to_string()]]);
        // Repeats count once.
        assert_eq!(SearchQuery::parse("hi HI").unwrap().groups().len(), 1);
    }

    #[test]
    fn bad_queries_are_refused() {
        for q in [
            "",
            "   ",
            "!!! ---",
            &"a".repeat(MAX_QUERY_CHARS + 1),
            "a b c d e f g h i",
        ] {
            let e = SearchQuery::parse(q).unwrap_err();
            assert_eq!(e.code.http_status(), 400, "{q:?}");
        }
        assert!(SearchQuery::parse("a b c d e f g h").is_ok());
    }
}

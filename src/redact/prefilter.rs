//! A literal prefilter in front of the redaction regexes. Every text rule needs one of a few
//! literals to match: a name fragment (the assignment rule; `PRIVATE KEY` of a PEM block has
//! `key`), `bearer`, a token shape's prefix, or `://` with an `@` after it (URL userinfo). An
//! ASCII text holding none of them, in any case, holds nothing to redact: one Aho-Corasick
//! pass says so, and the `RegexSet` is neither run nor, in a short-lived process, even
//! compiled. (A URL without userinfo, `pod://host` or `https://huggingface.co/…`, is no hit.)
//!
//! Only ASCII text is decided here. The rules match without regard to case by Unicode's
//! rules, under which a non-ASCII letter can stand for an ASCII one (`K`, U+212A KELVIN SIGN,
//! is a `k`), so any other text goes to the regexes as before.

use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, packed};

/// The name fragments of the key rule, as in `text::name_fragments!` (a test holds the two
/// to the same list).
pub(super) const NAME_FRAGMENTS: &[&str] =
    &["token", "secret", "pass", "pwd", "key", "cred", "auth", "cookie", "session", "dsn", "conn"];

/// The literals that the other text rules need, one of which is in any match.
pub(super) const RULE_LITERALS: &[&str] = &[
    // Bearer credentials.
    "bearer",
    // Token shapes, by their prefixes.
    "sk-",
    "k_live_",
    "k_test_",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "glpat-",
    "hf_",
    "akia",
    "asia",
    "xox",
    "aiza",
    "npm_",
    "eyj",
];

fn searcher(literals: &[&[&str]]) -> AhoCorasick {
    AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .build(literals.iter().flat_map(|list| list.iter()))
        .unwrap_or_else(|err| panic!("the redaction prefilter's literals are invalid: {err}"))
}

static ANY_RULE: LazyLock<AhoCorasick> = LazyLock::new(|| searcher(&[NAME_FRAGMENTS, RULE_LITERALS]));
static ANY_FRAGMENT: LazyLock<AhoCorasick> = LazyLock::new(|| searcher(&[NAME_FRAGMENTS]));

/// The same literals for SIMD search (Teddy) of a lower-case copy; `None` on a CPU without it.
/// The literals are lower case (a test holds them to it).
static ANY_RULE_PACKED: LazyLock<Option<packed::Searcher>> =
    LazyLock::new(|| packed::Searcher::new(NAME_FRAGMENTS.iter().chain(RULE_LITERALS)));

/// From this length a text is searched by [`ANY_RULE_PACKED`]: on a whole event's JSON
/// (~400 bytes) it takes ~160 ns where the case-insensitive automaton takes ~1,000; on a few
/// bytes the automaton is faster (6 bytes: 18 ns against 29).
const PACKED_FROM_LEN: usize = 64;

/// Whether a text rule could match `text`: false means it certainly cannot.
pub(super) fn may_match_a_rule(text: &str) -> bool {
    !text.is_ascii() || holds_a_rule_literal(text) || may_hold_userinfo(text)
}

/// Whether ASCII `text` holds one of the literals, in any case.
pub(super) fn holds_a_rule_literal(text: &str) -> bool {
    match &*ANY_RULE_PACKED {
        Some(packed) if text.len() >= PACKED_FROM_LEN => packed.find(text.to_ascii_lowercase()).is_some(),
        _ => ANY_RULE.is_match(text),
    }
}

/// The automaton's answer, which [`holds_a_rule_literal`] gives on any text (for a test).
#[cfg(test)]
pub(super) fn holds_a_rule_literal_by_automaton(text: &str) -> bool {
    ANY_RULE.is_match(text)
}

/// Whether redaction would leave every string and every field name in the JSON text `json`
/// as it is: ASCII without escapes and no hit for [`may_match_a_rule`] on the whole text.
/// Each string and name in it is then a substring of it, as decoded, so none can hold a
/// literal either; a secret-like name needs a fragment too. One pass for a whole event.
pub fn json_needs_no_redaction(json: &[u8]) -> bool {
    !json.contains(&b'\\') && std::str::from_utf8(json).is_ok_and(|text| !may_match_a_rule(text))
}

/// URL userinfo needs a `://` and, after it, an `@`.
fn may_hold_userinfo(text: &str) -> bool {
    text.find("://").is_some_and(|scheme_end| text[scheme_end..].contains('@'))
}

/// For an ASCII `name`, whether it holds a name fragment (exactly what `text::NAME_HINT`
/// says of it); `None` for any other name, which the regex decides.
pub(super) fn holds_a_fragment(name: &str) -> Option<bool> {
    name.is_ascii().then(|| ANY_FRAGMENT.is_match(name))
}

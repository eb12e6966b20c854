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

use aho_corasick::AhoCorasick;

/// The name fragments of the key rule, as in `text::name_fragments!` (a test holds the two
/// to the same list).
pub(super) const NAME_FRAGMENTS: &[&str] =
    &["token", "secret", "pass", "pwd", "key", "cred", "auth", "cookie", "session", "dsn", "conn"];

/// The literals that the other text rules need, one of which is in any match.
const RULE_LITERALS: &[&str] = &[
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

/// Whether a text rule could match `text`: false means it certainly cannot.
pub(super) fn may_match_a_rule(text: &str) -> bool {
    !text.is_ascii() || ANY_RULE.is_match(text) || may_hold_userinfo(text)
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

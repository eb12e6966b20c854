//! The text rules, in the order they run: PEM private keys, URL userinfo, token shapes,
//! `Bearer` credentials, then assignments to secret-like names (module doc of `redact`).

use std::borrow::Cow;
use std::ops::Range;
use std::sync::LazyLock;

use regex::{Captures, Regex, RegexSet};

use super::REDACTED;
use super::names::is_secret_name;
use super::prefilter;

/// Authorization schemes whose credential follows them after a space (`Authorization: Basic …`).
const AUTH_SCHEMES: &[&str] = &["bearer", "basic", "token", "digest", "negotiate"];

/// A user name alone in a URL is taken for a token from this length on.
const TOKEN_USER_LEN: usize = 16;

// Each rule's pattern, once: the rule's own regex and the quick check share it.
const PEM: &str =
    r"(?s)-----BEGIN [A-Z0-9 ]*PRIVATE KEY[A-Z ]*-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY[A-Z ]*-----|\z)";
// No word boundary before the scheme: a URL glued to a word (`x=mongodb://u:p@h`, found by
// the fuzzer) still starts where the scheme's letters do.
const URL_USERINFO: &str = r#"[A-Za-z][A-Za-z0-9+.\-]*://([^\s/?#"'<>`]+)@"#;
const TOKEN_SHAPES: &str = concat!(
    r"(?-u:\b)(?:",
    r"sk-[A-Za-z0-9_\-]{20,}",
    r"|[sr]k_(?:live|test)_[A-Za-z0-9]{16,}",
    r"|gh[pousr]_[A-Za-z0-9]{20,}",
    r"|github_pat_[A-Za-z0-9_]{20,}",
    r"|glpat-[A-Za-z0-9_\-]{20,}",
    r"|hf_[A-Za-z0-9]{20,}",
    r"|(?:AKIA|ASIA)[A-Z0-9]{16}(?-u:\b)",
    r"|xox[abposr]-[A-Za-z0-9\-]{10,}",
    r"|AIza[A-Za-z0-9_\-]{35}",
    r"|npm_[A-Za-z0-9]{36}",
    r"|eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*",
    r")"
);
const BEARER: &str = r"(?i)(?-u:\b)(bearer[ \t]+)[A-Za-z0-9\-._~+/]{8,}=*";

/// Fragments of every name the key rule can accept (a unit test holds each word to them):
/// a name or a text without any of them is no secret's name, at the cost of one scan.
macro_rules! name_fragments {
    () => {
        "(?:token|secret|pass|pwd|key|cred|auth|cookie|session|dsn|conn)"
    };
}
pub(super) const NAME_HINT: &str = concat!("(?i)", name_fragments!());
/// A candidate name and its separator; [`is_secret_name`] decides.
const ASSIGNMENT: &str = concat!(
    r#"(?i)(--?|\\?["'])?(?-u:\b)"#,
    r"([a-z0-9_.\-]*",
    name_fragments!(),
    r"[a-z0-9_.\-]*)",
    r#"(?:\\?["'])?\]?([ \t]*[:=][ \t]*|[ \t]+)"#
);
/// [`ASSIGNMENT`]'s groups: a leading `-`/`--` or quote, the name, the separator.
const LEAD_GROUP: usize = 1;
const NAME_GROUP: usize = 2;
const SEP_GROUP: usize = 3;

/// A compiled pattern; the patterns are constants, checked by the unit tests.
pub(super) fn compile(pattern: &str) -> Regex {
    Regex::new(pattern).unwrap_or_else(|err| panic!("redaction pattern {pattern:?} is invalid: {err}"))
}

static ANY_RULE: LazyLock<RegexSet> = LazyLock::new(|| {
    RegexSet::new([PEM, URL_USERINFO, TOKEN_SHAPES, BEARER, ASSIGNMENT])
        .unwrap_or_else(|err| panic!("redaction patterns are invalid: {err}"))
});
static PEM_RE: LazyLock<Regex> = LazyLock::new(|| compile(PEM));
static URL_RE: LazyLock<Regex> = LazyLock::new(|| compile(URL_USERINFO));
static TOKEN_RE: LazyLock<Regex> = LazyLock::new(|| compile(TOKEN_SHAPES));
static BEARER_RE: LazyLock<Regex> = LazyLock::new(|| compile(BEARER));
static ASSIGNMENT_RE: LazyLock<Regex> = LazyLock::new(|| compile(ASSIGNMENT));

/// `text` with every secret the text rules find replaced by [`REDACTED`]; borrowed when
/// there was none.
pub fn redact_text(text: &str) -> Cow<'_, str> {
    if !prefilter::may_match_a_rule(text) || !ANY_RULE.is_match(text) {
        return Cow::Borrowed(text);
    }
    let text = then(Cow::Borrowed(text), |text| PEM_RE.replace_all(text, REDACTED));
    let text = then(text, |text| URL_RE.replace_all(text, |caps: &Captures<'_>| redact_userinfo(caps)));
    let text = then(text, |text| TOKEN_RE.replace_all(text, REDACTED));
    let text = then(text, |text| BEARER_RE.replace_all(text, |caps: &Captures<'_>| format!("{}{REDACTED}", &caps[1])));
    then(text, redact_assignments)
}

/// [`redact_text`] for an owned string, which is kept (not copied) when nothing changed.
pub fn redact_string(text: String) -> String {
    match redact_text(&text) {
        Cow::Borrowed(_) => text,
        Cow::Owned(clean) => clean,
    }
}

/// Whether redaction would change `text`: for identifiers, which are refused rather than
/// rewritten.
pub fn would_change(text: &str) -> bool {
    redact_text(text) != text
}

/// Applies one rule to the output of the last, keeping it borrowed while nothing changed.
fn then<'a>(text: Cow<'a, str>, rule: impl for<'t> Fn(&'t str) -> Cow<'t, str>) -> Cow<'a, str> {
    match text {
        Cow::Borrowed(text) => rule(text),
        Cow::Owned(text) => match rule(&text) {
            Cow::Borrowed(_) => Cow::Owned(text),
            Cow::Owned(changed) => Cow::Owned(changed),
        },
    }
}

fn redact_userinfo(caps: &Captures<'_>) -> String {
    let (whole, userinfo) = (&caps[0], &caps[1]);
    let prefix = &whole[..whole.len() - userinfo.len() - 1];
    // A part that starts with the marker was redacted already (by an earlier rule or call).
    let kept = match userinfo.split_once(':') {
        Some((_, password)) if password.starts_with(REDACTED) => userinfo.to_owned(),
        Some((user, _)) => format!("{user}:{REDACTED}"),
        None if userinfo.len() >= TOKEN_USER_LEN && !userinfo.contains(REDACTED) => REDACTED.to_owned(),
        None => userinfo.to_owned(),
    };
    format!("{prefix}{kept}@")
}

/// The assignment rule. A scan rather than `replace_all`: after a name that is not secret-like
/// the scan goes on right after the name, so `user: password=x` still finds `password`.
fn redact_assignments(text: &str) -> Cow<'_, str> {
    // The values to redact, in order. The scan goes on after each name, not after its value,
    // so that an assignment inside an earlier value (`API_KEY=xDB_PASSWORD = s3cret`) is
    // found too; overlapping values are merged below.
    let mut values: Vec<Range<usize>> = Vec::new();
    let mut pos = 0;
    // One set of capture slots for the whole scan: a candidate costs no allocation.
    let mut slots = ASSIGNMENT_RE.capture_locations();
    let span = |slots: &regex::CaptureLocations, group| slots.get(group).map(|(start, end)| start..end);
    while ASSIGNMENT_RE.captures_read_at(&mut slots, text, pos).is_some() {
        let (Some(name), Some(sep)) = (span(&slots, NAME_GROUP), span(&slots, SEP_GROUP)) else { break };
        // The name is never empty, so the scan always moves on.
        pos = name.end;
        let is_flag = span(&slots, LEAD_GROUP).is_some_and(|lead| text[lead].starts_with('-'));
        let spaced_only = !text[sep.clone()].contains([':', '=']);
        let next = &text[sep.end..];
        // `--auth --verbose` is two flags; `Token::new` is a path, not an assignment.
        let not_a_value = if spaced_only { !is_flag || next.starts_with('-') } else { next.starts_with(':') };
        if not_a_value || !is_secret_name(&text[name.clone()]) {
            continue;
        }
        // Inside a value already redacted, only a separator that reaches past its end can
        // add to it; checking no other keeps the scan linear (`password=password=…`).
        if values.last().is_some_and(|last| name.start < last.end && sep.end < last.end) {
            continue;
        }
        let Some(value) = value_span(text, sep.end) else { continue };
        match values.last_mut() {
            Some(last) if value.start <= last.end => last.end = last.end.max(value.end),
            _ => values.push(value),
        }
    }
    if values.is_empty() {
        return Cow::Borrowed(text);
    }
    let (mut out, mut copied) = (String::with_capacity(text.len()), 0);
    for value in values {
        out.push_str(&text[copied..value.start]);
        out.push_str(REDACTED);
        copied = value.end;
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// Where the value that starts at `at` lies; `None` when there is none or it is redacted.
fn value_span(text: &str, at: usize) -> Option<Range<usize>> {
    let rest = &text[at..];
    let bytes = rest.as_bytes();
    let open = usize::from(bytes.first() == Some(&b'\\'));
    let span = match bytes.get(open) {
        Some(&quote @ (b'"' | b'\'')) => {
            let start = open + 1;
            // An unclosed quote ends with its line.
            let close = rest[start..].find([char::from(quote), '\n']).map_or(rest.len(), |end| start + end);
            // `\"x\"`: the backslash before the closing quote escapes it.
            let end = if close > start && bytes[close - 1] == b'\\' { close - 1 } else { close };
            start..end
        }
        _ => {
            let word_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            let start = if AUTH_SCHEMES.iter().any(|scheme| rest[..word_end].eq_ignore_ascii_case(scheme)) {
                let after = rest[word_end..].trim_start_matches([' ', '\t']);
                if after.is_empty() || after.starts_with(['\n', '\r']) { 0 } else { rest.len() - after.len() }
            } else {
                0
            };
            let end = rest[start..].find(ends_unquoted_value).map_or(rest.len(), |end| start + end);
            start..end
        }
    };
    let value = &rest[span.clone()];
    (!value.is_empty() && !value.starts_with(REDACTED)).then(|| at + span.start..at + span.end)
}

fn ends_unquoted_value(c: char) -> bool {
    c.is_whitespace() || "\"'`,;&)}<>\\".contains(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redact::{KEY_KINDS, SECRET_ENDINGS, SECRET_WORDS};

    #[test]
    fn patterns_compile() {
        for pattern in [PEM, URL_USERINFO, TOKEN_SHAPES, BEARER, ASSIGNMENT, NAME_HINT] {
            assert!(Regex::new(pattern).is_ok(), "{pattern}");
        }
        assert!(!ANY_RULE.is_match("plain text"));
    }

    #[test]
    fn the_assignment_prefilter_covers_every_secret_word() {
        // A word the key rule accepts but the candidate pattern cannot see would never be
        // redacted in text.
        let probes = SECRET_WORDS
            .iter()
            .chain(SECRET_ENDINGS)
            .map(|word| (*word).to_owned())
            .chain(KEY_KINDS.iter().map(|kind| format!("{kind}_key")))
            .chain(["connection_string".to_owned()]);
        for name in probes {
            assert!(is_secret_name(&name), "{name} is secret-like");
            let text = format!("{name}=value1");
            assert_eq!(redact_text(&text), format!("{name}={REDACTED}"), "{name}");
        }
    }

    #[test]
    fn each_text_rule() {
        let cases = [
            ("password: hunter2", format!("password: {REDACTED}")),
            ("run --password x --epochs 3", format!("run --password {REDACTED} --epochs 3")),
            ("run --password=x", format!("run --password={REDACTED}")),
            ("user: password=x", format!("user: password={REDACTED}")),
            (r#"{"token": "abc", "n": 1}"#, format!(r#"{{"token": "{REDACTED}", "n": 1}}"#)),
            (r#"{\"token\": \"abc\"}"#, format!(r#"{{\"token\": \"{REDACTED}\"}}"#)),
            ("Authorization: Basic dXNlcg==", format!("Authorization: Basic {REDACTED}")),
            ("Authorization: Bearer abcdefgh123", format!("Authorization: Bearer {REDACTED}")),
            ("curl -H 'Authorization: Bearer abc'", format!("curl -H 'Authorization: Bearer {REDACTED}'")),
            ("https://user:pass@host/x", format!("https://user:{REDACTED}@host/x")),
            ("redis://:pass@host", format!("redis://:{REDACTED}@host")),
            ("https://abcdefghijklmnopqrst@github.com", format!("https://{REDACTED}@github.com")),
            ("ssh://git@github.com/o/r.git", "ssh://git@github.com/o/r.git".to_owned()),
            ("key sk-proj-abcdefghijklmnopqrstuvwxyz", format!("key {REDACTED}")),
            ("AKIAIOSFODNN7EXAMPLE", REDACTED.to_owned()),
            ("AKIAIOSFODNN7EXAMPLEX", "AKIAIOSFODNN7EXAMPLEX".to_owned()),
            ("xoxb-1234567890-abc", REDACTED.to_owned()),
            ("a eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig b", format!("a {REDACTED} b")),
            ("--auth --verbose", "--auth --verbose".to_owned()),
            ("Token::new(x)", "Token::new(x)".to_owned()),
            ("password: \"abc\nnext", format!("password: \"{REDACTED}\nnext")),
            ("x\n-----BEGIN EC PRIVATE KEY-----\nAAA\n-----END EC PRIVATE KEY-----\ny", format!("x\n{REDACTED}\ny")),
            ("-----BEGIN PRIVATE KEY-----\nAAA", REDACTED.to_owned()),
            ("Password=p;Database=d", format!("Password={REDACTED};Database=d")),
            ("tokens: 1234 max_tokens=5 token_count: 3", "tokens: 1234 max_tokens=5 token_count: 3".to_owned()),
            ("the token expired", "the token expired".to_owned()),
            ("KeyError: 'api_key'", "KeyError: 'api_key'".to_owned()),
            ("mask-abcdefghijklmnopqrstuvwxyz", "mask-abcdefghijklmnopqrstuvwxyz".to_owned()),
            ("password=", "password=".to_owned()),
        ];
        for (text, expected) in cases {
            assert_eq!(redact_text(text), expected, "{text:?}");
        }
    }

    #[test]
    fn the_prefilter_knows_the_name_fragments() {
        assert_eq!(name_fragments!(), format!("(?:{})", prefilter::NAME_FRAGMENTS.join("|")));
    }

    /// ASCII text made of probes near every rule: one of its literals in any case (now and
    /// then cut short), a separator and a value, between plain printable runs.
    fn near_misses() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        const LITERALS: &[&str] = &[
            "token",
            "secret",
            "pass",
            "pwd",
            "key",
            "cred",
            "auth",
            "cookie",
            "session",
            "dsn",
            "conn",
            "bearer",
            "https://user:pw@host",
            "://",
            "sk-",
            "sk_live_",
            "rk_test_",
            "ghp_",
            "gho_",
            "ghu_",
            "ghs_",
            "ghr_",
            "github_pat_",
            "glpat-",
            "hf_",
            "AKIA",
            "ASIA",
            "xoxb-",
            "AIza",
            "npm_",
            "eyJabcdefghij.eyJabcdefghij.",
            "-----BEGIN RSA PRIVATE KEY-----",
        ];
        const SEPARATORS: &[&str] = &["", "", "", " ", "=", ": ", "\t", "@", "\": \"", "_", "-"];
        const VALUES: &[&str] = &["", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJ", "IOSFODNN7EXAMPLE", "x"];
        let cases = proptest::option::weighted(0.5, any::<u64>());
        let literal = (proptest::sample::select(LITERALS), cases, proptest::option::weighted(0.2, any::<usize>()))
            .prop_map(|(literal, cases, cut)| {
                let keep = cut.map_or(literal.len(), |cut| cut % literal.len() + 1);
                let kept = literal.chars().take(keep);
                match cases {
                    None => kept.collect::<String>(),
                    Some(cases) => {
                        kept.enumerate()
                            .map(|(at, c)| {
                                if cases >> (at % 64) & 1 == 1 {
                                    c.to_ascii_uppercase()
                                } else {
                                    c.to_ascii_lowercase()
                                }
                            })
                            .collect()
                    }
                }
            });
        let probe = (literal, proptest::sample::select(SEPARATORS), proptest::sample::select(VALUES))
            .prop_map(|(literal, separator, value)| format!("{literal}{separator}{value}"));
        let piece = prop_oneof![3 => probe, 1 => "[ -~]{0,12}"];
        proptest::collection::vec((piece, any::<bool>()), 0..6).prop_map(|pieces| {
            pieces.into_iter().map(|(piece, spaced)| if spaced { format!(" {piece}") } else { piece }).collect()
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(4096))]
        #[test]
        fn the_prefilter_passes_every_text_a_rule_matches(text in near_misses()) {
            if ANY_RULE.is_match(&text) {
                proptest::prop_assert!(prefilter::may_match_a_rule(&text), "{:?}", text);
            }
            let hint = Regex::new(NAME_HINT).expect("valid");
            proptest::prop_assert_eq!(prefilter::holds_a_fragment(&text), Some(hint.is_match(&text)));
        }
    }

    /// Near misses as a field name and as values: every text cleared as a whole is one
    /// that redaction leaves as it is, and enough are cleared that this says something.
    #[test]
    fn a_json_text_cleared_as_a_whole_holds_nothing_to_redact() {
        use proptest::strategy::{Strategy, ValueTree};
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let (mut cleared, cases) = (0, 4096);
        for _ in 0..cases {
            let (name, text) = (near_misses(), near_misses()).new_tree(&mut runner).expect("a case").current();
            let value = serde_json::json!({ name.clone(): text, "data": {"message": text, "list": [name]} });
            let json = value.to_string();
            if prefilter::json_needs_no_redaction(json.as_bytes()) {
                cleared += 1;
                let mut redacted = value.clone();
                crate::redact::redact_value(&mut redacted);
                assert_eq!(redacted, value, "{json}");
            }
        }
        assert!(cleared > cases / 50, "only {cleared} of {cases} texts were cleared");
    }

    /// Long texts go to the SIMD searcher of a lower-case copy: it finds what the
    /// case-insensitive automaton finds.
    #[test]
    fn the_simd_search_finds_what_the_automaton_finds() {
        use proptest::strategy::{Strategy, ValueTree};
        for literal in prefilter::NAME_FRAGMENTS.iter().chain(prefilter::RULE_LITERALS) {
            assert_eq!(*literal, literal.to_ascii_lowercase(), "the packed search needs lower-case literals");
        }
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let piece = || proptest::prop_oneof![1 => near_misses(), 3 => "[ -~]{0,40}"];
        let (mut hits, cases) = (0, 4096);
        for _ in 0..cases {
            let pieces = (piece(), piece(), piece()).new_tree(&mut runner).expect("a case").current();
            let text = format!("{} {:>64} {}", pieces.0, pieces.1, pieces.2);
            let expected = prefilter::holds_a_rule_literal_by_automaton(&text);
            assert_eq!(prefilter::holds_a_rule_literal(&text), expected, "{text:?}");
            hits += usize::from(expected);
        }
        assert!((cases / 10..cases - cases / 10).contains(&hits), "{hits} of {cases} texts held a literal");
    }

    #[test]
    fn a_json_text_with_a_literal_or_an_escape_is_not_cleared() {
        let cleared = |json: &str| prefilter::json_needs_no_redaction(json.as_bytes());
        assert!(cleared(r#"{"source":"pod://gpu-7","data":{"message":"loss 0.25"}}"#));
        assert!(!cleared(r#"{"data":{"api_key":"abc"}}"#), "a secret-like name");
        assert!(!cleared(r#"{"data":{"message":"sk-abcdefghijklmnopqrstuvwxyz"}}"#), "a token shape");
        assert!(!cleared(r#"{"source":"https://u:p@host"}"#), "userinfo");
        assert!(!cleared(r#"{"data":{"message":"\u0073k-abcdefghijklmnopqrstuvwxyz"}}"#), "an escape");
        assert!(!cleared("{\"data\":{\"message\":\"API_\u{212A}EY=abc\"}}"), "beyond ASCII");
    }

    #[test]
    fn every_token_shape_passes_the_prefilter() {
        // One of each rule's forms that holds no other literal of the prefilter.
        let alnum = "abcdefghijklmnopqrstuvwxyz0123456789";
        let samples = [
            format!("sk-{alnum}"),
            format!("sk_live_{alnum}"),
            format!("rk_test_{alnum}"),
            format!("ghp_{alnum}"),
            format!("gho_{alnum}"),
            format!("ghu_{alnum}"),
            format!("ghs_{alnum}"),
            format!("ghr_{alnum}"),
            format!("github_pat_{alnum}"),
            format!("glpat-{alnum}"),
            format!("hf_{alnum}"),
            "AKIAIOSFODNN7EXAMPLE".to_owned(),
            "ASIAIOSFODNN7EXAMPLE".to_owned(),
            "xoxb-1234567890".to_owned(),
            format!("AIza{}", &alnum[..35]),
            format!("npm_{}", &alnum[..36]),
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig".to_owned(),
            "Bearer abcdefgh12".to_owned(),
            "https://u:p@h".to_owned(),
            "x=mongodb://u:p@h".to_owned(),
        ];
        for sample in samples {
            assert!(would_change(&sample), "{sample}");
        }
    }

    #[test]
    fn a_url_without_userinfo_skips_the_regexes() {
        for text in ["pod://gpu-node-7", "Downloading https://huggingface.co/gpt2/resolve/main/config.json"] {
            assert!(!prefilter::may_match_a_rule(text), "{text}");
        }
        assert!(prefilter::may_match_a_rule("see https://example.com then mail a@b"), "an @ after the scheme");
    }

    #[test]
    fn text_beyond_ascii_goes_to_the_regexes() {
        // U+212A KELVIN SIGN is a `k` to the key rule: `API_\u{212A}EY` names an API key.
        let text = "API_\u{212A}EY=abc123";
        assert!(prefilter::may_match_a_rule(text));
        assert_eq!(redact_text(text), format!("API_\u{212A}EY={REDACTED}"));
        assert_eq!(prefilter::holds_a_fragment("API_\u{212A}EY"), None);
    }

    #[test]
    fn nothing_to_redact_borrows() {
        assert!(matches!(redact_text("loss 0.25 at step 10"), Cow::Borrowed(_)));
        assert!(matches!(redact_text("token_count: 3"), Cow::Borrowed(_)));
        assert!(!would_change("01JD8XQ2M3N4P5Q6R7S8T9V0W1"));
        assert!(would_change("ghp_abcdefghijklmnopqrstuvwxyz0123456789"));
    }

    #[test]
    fn redaction_is_idempotent_on_each_rule() {
        for text in [
            "password: [REDACTED]x",
            "https://u:p@h password=https://u:q@h",
            "AKIAIOSFODNN7EXAMPLE$$ password=AKIAIOSFODNN7EXAMPLE$$",
            "--token --token x",
            "\"password\": \"\\\"",
        ] {
            let once = redact_text(text).into_owned();
            assert_eq!(redact_text(&once), once, "{text:?}");
        }
    }
}

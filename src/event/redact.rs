//! Keeps secrets out of everything that is stored. Secret values become [`REDACTED`].
//!
//! Entry points: [`redact_text`] for one string, [`redact_value`] / [`redact_map`] for JSON.
//! Callers are the choke points where outside data becomes something stored: every event
//! (`event::from_json_object`: context attributes, extensions and `data`), every new run
//! (`Run::queued`: idea, hypothesis, queue), every ideation request (`IdeationRequest::queued`,
//! `IdeationRequest::finish`), an operator's cancel (`store::cancel_run`), and the worker's
//! spool (`emit::stream`).
//!
//! The rules, in the order they run on text:
//! 1. **PEM private keys**: `-----BEGIN … PRIVATE KEY-----` up to its END line (or the end of
//!    the text, for a cut-off traceback) goes whole.
//! 2. **URL userinfo**: `scheme://user:PASSWORD@host` keeps the scheme, user and host and loses
//!    the password; a user alone (`https://TOKEN@github.com`) goes when it is 16 characters or
//!    longer, since services take tokens as user names; short ones (`ssh://git@…`) stay.
//! 3. **Token shapes**: OpenAI/Anthropic `sk-…`, Stripe `sk_live_…`/`rk_live_…`, GitHub
//!    `ghp_ gho_ ghu_ ghs_ ghr_ github_pat_…`, GitLab `glpat-…`, Hugging Face `hf_…`, AWS
//!    `AKIA…`/`ASIA…` key ids, Slack `xox[abposr]-…`, Google `AIza…`, npm `npm_…`, JWTs
//!    (`eyJ….….…`), and `Bearer …` credentials.
//! 4. **Assignments**: `NAME=value`, `name: value`, `--name value`, `--name=value`, JSON-ish
//!    `"name": "value"` (quotes, escaped quotes, `Authorization: Basic …`) where NAME is
//!    secret-like by the key rule below. An unquoted value ends at white space or one of
//!    `"'`,;&)}<>` and backslash.
//!
//! **The key rule** ([`is_secret_name`]), for JSON field names, extension attributes and the
//! names in assignments: the name is split into words at `_ - .`, spaces and camelCase
//! boundaries (`openaiApiKey`, `OPENAI_API_KEY`, `X-Api-Key` are all `openai api key`). It is
//! secret-like when a word is one of [`SECRET_WORDS`] or ends with one of [`SECRET_ENDINGS`]
//! (`authtoken`, `openaiapikey`), when `key`/`keys` follows one of [`KEY_KINDS`] (`api key`,
//! `private key`, `openai key`; a lone `key` is an artifact key), or when it says connection
//! string, unless a word is one of [`NOT_SECRET_WORDS`] (`token_count`, `max_token`,
//! `password_file`: a count or a pointer to a secret, not the secret). `tokens` (plural) is
//! not a secret word, so `max_tokens` and `input_tokens` are counts.
//! In JSON, the key rule takes **string** values (all strings inside an object or array under
//! such a field): numbers, booleans and null stay, so `"token_count": 5` and `"session": 3` are
//! kept; in text every value after a secret-like name goes, whatever it looks like.
//! Every string is also scanned with the text rules, and so are JSON object keys (two keys
//! that redact to the same name keep the later value).
//!
//! Not redacted: secrets without a name or a known shape (`hunter2` on its own, a random
//! string in a field called `note`), numbers under secret-like names, values after a name
//! this rule does not know (`pin: 1234`), and identifiers: an event `id` or a run id that
//! redaction would change is refused instead ([`would_change`]), since rewriting one would
//! merge it with others (a second event would be dropped as a duplicate).
//!
//! Redaction is idempotent, never panics, and costs one scan of a [`RegexSet`] for text that
//! holds nothing secret-like.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::LazyLock;

use regex::{Captures, Regex, RegexSet};
use serde_json::{Map, Value};

pub const REDACTED: &str = "[REDACTED]";

/// Words that make a name secret-like on their own.
pub const SECRET_WORDS: &[&str] = &[
    "token",
    "secret",
    "secrets",
    "password",
    "passwords",
    "passwd",
    "pwd",
    "passphrase",
    "credential",
    "credentials",
    "creds",
    "apikey",
    "apikeys",
    "auth",
    "oauth",
    "authorization",
    "cookie",
    "cookies",
    "session",
    "dsn",
    "connstr",
];

/// Endings that make one unsplit word secret-like (`authtoken`, `openaiapikey`, `dbpassword`):
/// extension attribute names allow no separators.
pub const SECRET_ENDINGS: &[&str] = &[
    "token",
    "secret",
    "password",
    "passwd",
    "passphrase",
    "credential",
    "credentials",
    "apikey",
    "accesskey",
    "privatekey",
    "secretkey",
    "cookie",
];

/// What a `key` is when it is a secret: `api key`, `private key`, a provider's key.
pub const KEY_KINDS: &[&str] = &[
    "api",
    "access",
    "private",
    "secret",
    "ssh",
    "signing",
    "encryption",
    "master",
    "client",
    "service",
    "account",
    "app",
    "auth",
    "session",
    "hmac",
    "webhook",
    "license",
    "deploy",
    "admin",
    "root",
    "storage",
    "subscription",
    "openai",
    "anthropic",
    "gemini",
    "google",
    "cohere",
    "mistral",
    "groq",
    "together",
    "replicate",
    "wandb",
    "hf",
    "huggingface",
    "aws",
    "azure",
    "gcp",
    "stripe",
    "github",
    "slack",
    "pinecone",
    "runpod",
];

/// Words that make a secret-like name a count, a setting or a pointer to a secret instead.
pub const NOT_SECRET_WORDS: &[&str] = &[
    "count",
    "counts",
    "num",
    "number",
    "max",
    "min",
    "total",
    "limit",
    "limits",
    "len",
    "length",
    "size",
    "type",
    "kind",
    "mode",
    "method",
    "scheme",
    "ttl",
    "expiry",
    "expires",
    "expiration",
    "usage",
    "budget",
    "file",
    "path",
    "dir",
    "url",
    "uri",
    "endpoint",
    "name",
    "env",
    "var",
    "field",
    "prefix",
    "hint",
    "provider",
    "enabled",
    "required",
    "format",
];

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
const NAME_HINT: &str = concat!("(?i)", name_fragments!());
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
fn compile(pattern: &str) -> Regex {
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
static NAME_HINT_RE: LazyLock<Regex> = LazyLock::new(|| compile(NAME_HINT));

/// `text` with every secret the text rules find replaced by [`REDACTED`]; borrowed when
/// there was none.
pub fn redact_text(text: &str) -> Cow<'_, str> {
    if !ANY_RULE.is_match(text) {
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

/// Redacts a JSON value in place: by the key rule inside objects, by the text rules in every
/// string (object keys included).
pub fn redact_value(value: &mut Value) {
    walk(value, false);
}

/// [`redact_value`] for an object's fields.
pub fn redact_map(map: &mut Map<String, Value>) {
    walk_map(map, false);
}

/// Redacts one named value (a field, an extension attribute) in place.
pub fn redact_field(name: &str, value: &mut Value) {
    walk(value, is_secret_name(name));
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

/// The key rule (see the module doc): whether a field or variable called `name` holds a secret.
pub fn is_secret_name(name: &str) -> bool {
    if !NAME_HINT_RE.is_match(name) {
        return false;
    }
    let words = words(name);
    if words.iter().any(|word| NOT_SECRET_WORDS.contains(&word.as_str())) {
        return false;
    }
    words.iter().enumerate().any(|(index, word)| {
        let previous = index.checked_sub(1).map(|before| words[before].as_str());
        SECRET_WORDS.contains(&word.as_str())
            || SECRET_ENDINGS.iter().any(|ending| word.ends_with(ending))
            || (matches!(word.as_str(), "key" | "keys") && previous.is_some_and(|kind| KEY_KINDS.contains(&kind)))
            || (matches!(word.as_str(), "string" | "str") && matches!(previous, Some("connection" | "conn")))
    })
}

/// `name` in lower-case words, split at non-alphanumerics and camelCase boundaries
/// (`APIKey` → `api key`, `openaiApiKey` → `openai api key`).
fn words(name: &str) -> Vec<String> {
    let chars: Vec<char> = name.chars().collect();
    let mut words = Vec::new();
    let mut word = String::new();
    for (index, &c) in chars.iter().enumerate() {
        if !c.is_alphanumeric() {
            if !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
            continue;
        }
        if c.is_uppercase() && !word.is_empty() {
            let previous = chars[index - 1];
            let next_is_lower = chars.get(index + 1).is_some_and(|next| next.is_lowercase());
            if !previous.is_uppercase() || next_is_lower {
                words.push(std::mem::take(&mut word));
            }
        }
        word.extend(c.to_lowercase());
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// `secret`: the value sits under a secret-like name, so every string in it goes.
fn walk(value: &mut Value, secret: bool) {
    match value {
        Value::String(text) if secret => {
            if !text.is_empty() && text != REDACTED {
                *text = REDACTED.to_owned();
            }
        }
        Value::String(text) => {
            if let Cow::Owned(clean) = redact_text(text) {
                *text = clean;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| walk(item, secret)),
        Value::Object(map) => walk_map(map, secret),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

fn walk_map(map: &mut Map<String, Value>, secret: bool) {
    if map.keys().any(|name| would_change(name)) {
        // Rare: a secret as a field name. The map is rebuilt with the names redacted.
        let entries = std::mem::take(map);
        for (name, value) in entries {
            map.insert(redact_text(&name).into_owned(), value);
        }
    }
    for (name, value) in map.iter_mut() {
        walk(value, secret || is_secret_name(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
    fn names_split_into_words_in_every_case_style() {
        let cases = [
            ("openaiApiKey", &["openai", "api", "key"][..]),
            ("OPENAI_API_KEY", &["openai", "api", "key"]),
            ("X-Api-Key", &["x", "api", "key"]),
            ("APIKey", &["api", "key"]),
            ("HTTPAuthToken", &["http", "auth", "token"]),
            ("s3Key", &["s3", "key"]),
            ("db.passwd", &["db", "passwd"]),
            ("", &[]),
        ];
        for (name, expected) in cases {
            assert_eq!(words(name), expected, "{name}");
        }
    }

    #[test]
    fn secret_names() {
        for name in [
            "OPENAI_API_KEY",
            "api_key",
            "GITHUB_TOKEN",
            "db-password",
            "aws_secret_access_key",
            "accessToken",
            "openaiApiKey",
            "x-api-key",
            "apikey",
            "authtoken",
            "openaiapikey",
            "Authorization",
            "set-cookie",
            "session_id",
            "dsn",
            "connectionString",
            "privateKey",
            "openai_key",
            "pwd",
        ] {
            assert!(is_secret_name(name), "{name}");
        }
        for name in [
            "key",
            "artifact_key",
            "public_key",
            "sort_key",
            "keyboard",
            "run_id",
            "monkey",
            "max_tokens",
            "num_tokens",
            "token_count",
            "input_tokens",
            "tokens",
            "tokenizer",
            "author",
            "token_type",
            "password_file",
            "api_key_env",
            "secretary",
        ] {
            assert!(!is_secret_name(name), "{name}");
        }
    }

    #[test]
    fn fields_are_redacted_by_name_and_strings_by_the_text_rules() {
        let mut data = json!({
            "key": "runs/r1/plot.png",
            "api_key": "sk-123",
            "token_count": 5,
            "session": 3,
            "message": "export OPENAI_API_KEY=sk-live-abc and PATH=/usr/bin",
            "nested": [{"password": "hunter2", "note": "ok"}],
            "credentials": {"user": "bob", "id": 7},
            "empty_token": "",
        });
        redact_value(&mut data);
        assert_eq!(
            data,
            json!({
                "key": "runs/r1/plot.png",
                "api_key": REDACTED,
                "token_count": 5,
                "session": 3,
                "message": format!("export OPENAI_API_KEY={REDACTED} and PATH=/usr/bin"),
                "nested": [{"password": REDACTED, "note": "ok"}],
                "credentials": {"user": REDACTED, "id": 7},
                "empty_token": "",
            })
        );
    }

    #[test]
    fn field_names_that_are_secrets_are_redacted_too() {
        let mut data = json!({"env": {"ghp_abcdefghijklmnopqrstuvwxyz0123456789": true}});
        redact_value(&mut data);
        assert_eq!(data, json!({"env": {REDACTED: true}}));
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

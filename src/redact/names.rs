//! The key rule: whether a name (a JSON field, an extension attribute, the name in an
//! assignment) is secret-like, by its words.

use std::sync::LazyLock;

use regex::Regex;

use super::prefilter;
use super::text::{NAME_HINT, compile};

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

static NAME_HINT_RE: LazyLock<Regex> = LazyLock::new(|| compile(NAME_HINT));

/// The key rule (see the module doc): whether a field or variable called `name` holds a secret.
pub fn is_secret_name(name: &str) -> bool {
    if !prefilter::holds_a_fragment(name).unwrap_or_else(|| NAME_HINT_RE.is_match(name)) {
        return false;
    }
    let words = words(name);
    let is_secret_word = |index: usize| {
        let word = words[index].as_str();
        let previous = index.checked_sub(1).map(|before| words[before].as_str());
        SECRET_WORDS.contains(&word)
            || SECRET_ENDINGS.iter().any(|ending| word.ends_with(ending))
            || (matches!(word, "key" | "keys") && previous.is_some_and(|kind| KEY_KINDS.contains(&kind)))
            || (matches!(word, "string" | "str") && matches!(previous, Some("connection" | "conn")))
    };
    let Some(last) = (0..words.len()).rev().find(|&index| is_secret_word(index)) else { return false };
    // A qualifier after the secret word makes the name a setting or a pointer (`token_count`,
    // `password_file`, `api_key_env`); before it, only a count word right in front does
    // (`max_token`): `ENV_GITHUB_TOKEN` and `prefix_GITHUB_TOKEN` still name a token.
    let qualified_after = words[last + 1..].iter().any(|word| NOT_SECRET_WORDS.contains(&word.as_str()));
    let counted = last.checked_sub(1).is_some_and(|before| COUNT_WORDS.contains(&words[before].as_str()));
    !(qualified_after || counted)
}

/// The words of [`NOT_SECRET_WORDS`] that make a count of what follows them (`max_token`).
const COUNT_WORDS: &[&str] = &["count", "counts", "num", "number", "max", "min", "total", "limit", "limits"];

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

#[cfg(test)]
mod tests {
    use super::*;

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
            // A qualifier before the secret word does not make it a setting.
            "ENV_GITHUB_TOKEN",
            "prefix_GITHUB_TOKEN",
            "FILE_UPLOAD_TOKEN",
            "url_signing_secret",
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
            "max_token",
            "GITHUB_TOKEN_ENV",
            "token_prefix",
        ] {
            assert!(!is_secret_name(name), "{name}");
        }
    }
}

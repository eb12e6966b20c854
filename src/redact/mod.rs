//! Keeps secrets out of everything that is stored. Secret values become [`REDACTED`].
//!
//! Entry points: [`redact_text`] for one string, [`redact_value`] / [`redact_map`] for JSON.
//! Callers are the choke points where outside data becomes something stored: every event
//! (`event::from_attributes`: context attributes, extensions and `data`), every new run
//! (`Run::queued`: idea, hypothesis, queue), every ideation request (`IdeationRequest::queued`,
//! `IdeationRequest::finish`), an operator's cancel (`store::cancel_run`), and the worker's
//! spool (`emit::stream`). An event read from its text is left as it is when its whole text
//! is cleared at once ([`json_needs_no_redaction`]: ASCII, no escape, no prefilter literal):
//! then no rule could change anything in it.
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
//! Redaction is idempotent, never panics, and costs one Aho-Corasick pass over ASCII text
//! without any of the literals the rules need (most log lines), else one scan of a
//! `RegexSet` for text that holds nothing secret-like.
//!
//! The parts: `names` (the key rule and its word lists), `text` (the text rules), `value`
//! (JSON walked by both) and `prefilter` (the literals in front of the regexes).

mod names;
mod prefilter;
mod text;
mod value;

pub use names::{KEY_KINDS, NOT_SECRET_WORDS, SECRET_ENDINGS, SECRET_WORDS, is_secret_name};
pub use prefilter::json_needs_no_redaction;
pub use text::{redact_string, redact_text, would_change};
pub use value::{redact_field, redact_map, redact_value};

pub const REDACTED: &str = "[REDACTED]";

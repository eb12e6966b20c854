//! Secrets never reach the store: every shape of secret the README names, planted in every
//! field of every input form, through the real paths (event parsing, a real SQLite store in a
//! temp dir, `scientist serve`'s API on a real socket, the `scientist` binary), and then
//! looked for in the store file's bytes and in every answer.

mod common;

#[path = "common/server.rs"]
mod test_server;

use std::path::Path;
use std::process::Command;

use proptest::prelude::*;
use reqwest::StatusCode;
use scientist::event::{self, Event};
use scientist::ideation::NewIdeation;
use scientist::redact::{self, REDACTED};
use scientist::run::NewRun;
use scientist::store::{SqliteStore, Store};
use scientist::time::Timestamp;
use serde_json::{Map, Value, json};
use test_server::TestServer;

// ---------------------------------------------------------------------------------------
// Each shape, one at a time, through event parsing.
// ---------------------------------------------------------------------------------------

fn parse(value: Value) -> Event {
    let Value::Object(object) = value else { panic!("an event is a JSON object") };
    event::from_json_object(object, Timestamp::from_millis(0)).unwrap_or_else(|err| panic!("valid event: {err}"))
}

fn log_event(data: Value) -> Event {
    let mut data = data;
    data["run_id"] = json!("r1");
    parse(json!({"specversion": "1.0", "id": "e1", "source": "pod://p", "type": "ai.run.log", "data": data}))
}

/// The event as stored and served back.
fn stored_text(event: &Event) -> String {
    Value::Object(event.to_json()).to_string()
}

/// Text that carries `secret` in one of the shapes; each must lose it.
const TEXT_SHAPES: &[(&str, &str)] = &[
    ("password: hunter2", "hunter2"),
    ("db Password = hunter3 at login", "hunter3"),
    ("python train.py --password flagvalue1 --epochs 3", "flagvalue1"),
    ("python train.py --password=flagvalue2", "flagvalue2"),
    ("mysql --api-key 'quotedflag3'", "quotedflag3"),
    ("clone https://user:urlpass1@example.com/repo.git", "urlpass1"),
    ("connecting to mongodb://u:mongopass2@db.example:27017/runs", "mongopass2"),
    ("mongodb+srv://admin:srvpass3@cluster0.example.net/?retryWrites=true", "srvpass3"),
    ("redis://:redispass4@cache:6379/0", "redispass4"),
    ("pushed to https://abcdefghijklmnopqrstuvwxyz0123@github.com/org/repo", "abcdefghijklmnopqrstuvwxyz0123"),
    ("curl -H 'Authorization: Bearer bearertok5abcdefgh' https://api", "bearertok5abcdefgh"),
    ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA"),
    ("headers={'Authorization': 'Bearer xyz'}", "xyz'"),
    ("using key sk-abcdefghijklmnopqrstuvwxyz012345", "abcdefghijklmnopqrstuvwxyz012345"),
    ("OpenAI key sk-proj-AbCdEf0123456789_ghIJkl-mnopQR", "AbCdEf0123456789_ghIJkl-mnopQR"),
    ("token ghp_abcdefghijklmnopqrstuvwxyz0123456789 used", "abcdefghijklmnopqrstuvwxyz0123456789"),
    ("oauth gho_ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"),
    ("pat github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuv", "11ABCDEFG0123456789_abcdefghijklmnopqrstuv"),
    ("login hf_AbCdEfGhIjKlMnOpQrStUvWxYz01234567", "AbCdEfGhIjKlMnOpQrStUvWxYz01234567"),
    ("aws AKIAIOSFODNN7EXAMPLE in env", "IOSFODNN7EXAMPLE"),
    ("slack xoxb-1234567890-0987654321-AbCdEfGhIjKl", "1234567890-0987654321-AbCdEfGhIjKl"),
    ("slack xoxp-2234567890-abcdefghij", "2234567890-abcdefghij"),
    (
        "jwt eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    ),
    (
        "key:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAPEMBODY1\nPEMBODY2xyz\n-----END RSA PRIVATE KEY-----\nnext",
        "PEMBODY",
    ),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAPEMCUT", "PEMCUT"),
    (r#"config {"password": "jsonishpass", "user": "bob"}"#, "jsonishpass"),
    (r#"escaped {\"api_key\": \"escapedpass\"}"#, "escapedpass"),
    ("export OPENAI_API_KEY=envvalue123", "envvalue123"),
    ("api-key: dashvalue123", "dashvalue123"),
    ("x-api-key: xapivalue123", "xapivalue123"),
    ("accessToken=camelvalue123", "camelvalue123"),
    ("client = OpenAI(openaiApiKey='kwargvalue123')", "kwargvalue123"),
    ("Server=db;Database=runs;User Id=me;Password=connpass9;", "connpass9"),
    (
        "Traceback (most recent call last):\n  File \"train.py\", line 3, in <module>\n    \
         client = OpenAI(api_key=\"tbsecret1\")\nopenai.AuthenticationError: Incorrect API key provided: \
         sk-tbsecret2abcdefghijklmnopqrst",
        "tbsecret",
    ),
];

#[test]
fn every_text_shape_loses_its_secret() {
    for (text, secret) in TEXT_SHAPES {
        let event = log_event(json!({"message": text}));
        let stored = event.data["message"].as_str().unwrap_or_default().to_owned();
        assert!(!stored.contains(secret), "{text:?} was stored as {stored:?}");
        assert!(stored.contains(REDACTED), "{text:?} was stored as {stored:?}");
    }
}

#[test]
fn secret_field_names_in_every_case_style_lose_their_values() {
    let names = [
        "accessToken",
        "AccessToken",
        "openaiApiKey",
        "OPENAI_API_KEY",
        "openai_api_key",
        "api-key",
        "x-api-key",
        "X-Api-Key",
        "apiKey",
        "APIKey",
        "clientSecret",
        "dbPassword",
        "db.passwd",
        "pwd",
        "Authorization",
        "sessionCookie",
        "set-cookie",
        "dsn",
        "connectionString",
        "privateKey",
        "aws_secret_access_key",
        "AWS_ACCESS_KEY_ID",
        "refresh_token",
        "credentials",
        "auth",
    ];
    for name in names {
        let event = log_event(json!({"message": "hello", "extra": {name: "fieldsecret1"}}));
        let stored = stored_text(&event);
        assert!(!stored.contains("fieldsecret1"), "{name}: {stored}");
    }
    let event = log_event(json!({"message": "m", "credentials": {"user": "bob", "secretish": "nestedsecret2"}}));
    assert!(!stored_text(&event).contains("nestedsecret2"), "a secret field's whole value goes");
}

#[test]
fn counts_and_ordinary_words_are_kept() {
    let data = json!({
        "message": "tokens: 1234, max_tokens=512 and num_tokens: 7; token_count=3 keyboard: qwerty",
        "max_tokens": 1024,
        "num_tokens": 7,
        "token_count": 5,
        "input_tokens": 100,
        "tokens": "1234",
        "key": "runs/r1/plot.png",
        "artifact_key": "runs/r1/model.pt",
        "public_key": "ssh-ed25519 AAAAC3Nza",
        "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "tokenizer": "gpt2",
        "monkey": "banana",
        "author": "alice",
        "url": "https://example.com/a?b=c",
        "git": "ssh://git@github.com/org/repo.git",
        "token_type": "bearer",
        "password_file": "/run/secrets/db",
    });
    let event = log_event(data.clone());
    let mut expected = data.as_object().cloned().unwrap_or_default();
    expected.insert("run_id".into(), json!("r1"));
    assert_eq!(event.data, expected);
}

#[test]
fn context_attributes_lose_their_secrets() {
    let event = parse(json!({
        "specversion": "1.0",
        "id": "e2",
        "source": "https://pod:sourcepass1@pods.example/p1",
        "type": "ai.run.log",
        "subject": "job password=subjectpass2",
        "dataschema": "https://u:schemapass3@schemas.example/log.json",
        "apikey": "extsecret4",
        "authtoken": "extsecret5",
        "note": "export HF_TOKEN=extsecret6",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "data": {"run_id": "r1", "message": "m"},
    }));
    let stored = stored_text(&event);
    for secret in ["sourcepass1", "subjectpass2", "schemapass3", "extsecret4", "extsecret5", "extsecret6"] {
        assert!(!stored.contains(secret), "{secret}: {stored}");
    }
    assert!(stored.contains("0af7651916cd43dd8448eb211c80319c"), "trace context is kept: {stored}");
}

#[test]
fn binary_mode_headers_lose_their_secrets() {
    let headers = [
        ("ce-specversion", "1.0"),
        ("ce-id", "b1"),
        ("ce-source", "pod://p1?token=headersecret1"),
        ("ce-type", "ai.run.log"),
        ("ce-subject", "run/r1"),
        ("ce-apikey", "headersecret2"),
        ("ce-note", "Authorization: Bearer headersecret3abc"),
    ];
    let body = br#"{"message": "password: headersecret4"}"#;
    let event = event::wire::parse_binary(headers, Some("application/json"), body, Timestamp::from_millis(0))
        .expect("valid binary event");
    let stored = stored_text(&event);
    for secret in ["headersecret1", "headersecret2", "headersecret3", "headersecret4"] {
        assert!(!stored.contains(secret), "{secret}: {stored}");
    }
}

#[test]
fn failures_artifacts_and_ideas_lose_their_secrets() {
    let run = |ty: &str, data: Value| {
        let mut data = data;
        data["run_id"] = json!("r1");
        stored_text(&parse(json!({"specversion": "1.0", "id": "f", "source": "s", "type": ty, "data": data})))
    };
    let failed = run(
        "ai.run.failed",
        json!({"code": "EXIT_1", "message": "login failed for postgres://a:failpass1@db/x",
               "traceback": "Traceback:\n  requests.get(url, headers={\"Authorization\": \"Bearer failsecret2abcd\"})\nKeyError: 'x'"}),
    );
    assert!(!failed.contains("failpass1") && !failed.contains("failsecret2"), "{failed}");
    let artifact = run("ai.artifact.detected", json!({"path": "plots/run token=pathsecret3.png"}));
    assert!(!artifact.contains("pathsecret3"), "{artifact}");
    let ideas = parse(json!({"specversion": "1.0", "id": "i", "source": "s", "type": "ai.ideation.generated",
        "data": {"hypothesis_id": "h1", "ideas": [{"Name": "x", "apiKey": "ideasecret4",
                 "Experiment": "call with --token ideasecret5"}]}}));
    let stored = stored_text(&ideas);
    assert!(!stored.contains("ideasecret4") && !stored.contains("ideasecret5"), "{stored}");
    let event::Payload::IdeationGenerated(generated) = ideas.payload else { panic!("ideation payload") };
    assert!(!Value::from(generated.ideas).to_string().contains("ideasecret"), "the typed payload is redacted too");
}

// ---------------------------------------------------------------------------------------
// Operator inputs, through a real store.
// ---------------------------------------------------------------------------------------

/// Every file of the store (the database, its WAL and shared-memory files), as text.
fn store_bytes(dir: &Path) -> String {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read store dir").flatten() {
        if entry.path().is_file() {
            all.extend(std::fs::read(entry.path()).expect("read store file"));
        }
    }
    String::from_utf8_lossy(&all).into_owned()
}

#[tokio::test]
async fn operator_inputs_lose_their_secrets_in_the_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("store.sqlite")).await.expect("open");
    let now = Timestamp::from_millis(0);
    let idea = json!({"title": "t", "config": {"openaiApiKey": "ideasecret1"},
                      "notes": "export HF_TOKEN=hf_ideasecret2abcdefghijklmnop"});
    let new_run = NewRun { hypothesis_id: Some("h1".into()), ..NewRun::new(idea) };
    let run = store.enqueue(new_run, now).await.expect("enqueue");
    let returned = serde_json::to_string(&run).expect("run json");
    let canceled = store.request_cancel(&run.id, "operator", Some("rotated password=cancelsecret3".into()), now);
    let canceled = serde_json::to_string(&canceled.await.expect("cancel")).expect("json");
    let mut input = Map::new();
    input.insert("apiKey".into(), json!("ideationsecret4"));
    input.insert("prompt".into(), json!("use mongodb://u:ideationsecret5@h/db"));
    let new = NewIdeation { id: "req-1".into(), hypothesis_id: "h1".into(), input };
    let request = store.enqueue_ideation(new, now).await.expect("ideation");
    let returned = format!("{returned}{canceled}{}", Value::Object(request.document));
    let bytes = store_bytes(dir.path());
    for secret in ["ideasecret1", "ideasecret2", "cancelsecret3", "ideationsecret4", "ideationsecret5"] {
        assert!(!returned.contains(secret), "{secret} in the answer: {returned}");
        assert!(!bytes.contains(secret), "{secret} in the store file");
    }
    assert!(bytes.contains("rotated password="), "the reason itself is kept");
}

// ---------------------------------------------------------------------------------------
// The property: random canaries, planted everywhere, are found nowhere.
// ---------------------------------------------------------------------------------------

/// Secret-like names as words, rendered in every case style.
const SECRET_NAMES: &[&[&str]] = &[
    &["openai", "api", "key"],
    &["access", "token"],
    &["db", "password"],
    &["client", "secret"],
    &["aws", "secret", "access", "key"],
    &["hf", "token"],
    &["session", "cookie"],
    &["private", "key"],
    &["api", "key"],
    &["auth"],
    &["credentials"],
    &["passwd"],
];

#[derive(Debug, Clone, Copy)]
enum Style {
    Snake,
    Screaming,
    Camel,
    Pascal,
    Kebab,
    Train,
    /// All lower case, no separators: the only style an extension attribute name allows.
    Flat,
}

fn styled(words: &[&str], style: Style) -> String {
    let capital = |word: &str| {
        let mut chars = word.chars();
        chars.next().map(|first| first.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
    };
    match style {
        Style::Snake => words.join("_"),
        Style::Screaming => words.join("_").to_ascii_uppercase(),
        Style::Camel => {
            words.iter().enumerate().map(|(i, word)| if i == 0 { word.to_string() } else { capital(word) }).collect()
        }
        Style::Pascal => words.iter().map(|word| capital(word)).collect(),
        Style::Kebab => words.join("-"),
        Style::Train => words.iter().map(|word| capital(word)).collect::<Vec<_>>().join("-"),
        Style::Flat => words.concat(),
    }
}

/// How a canary is written.
#[derive(Debug, Clone)]
enum Shape {
    /// A field (or, in text, a JSON-ish `"name": "value"`) with a secret-like name.
    Field {
        name: usize,
        style: Style,
    },
    /// An assignment inside text, in one of the forms below.
    Assignment {
        name: usize,
        style: Style,
        form: usize,
    },
    /// `scheme://user:SECRET@host`.
    UrlPassword {
        scheme: usize,
    },
    /// `https://SECRET@host`: a token as the user name.
    UrlUser,
    /// A well-known token prefix before the secret.
    Token {
        prefix: usize,
    },
    /// `AKIA` and 16 upper-case letters and digits.
    AwsKeyId,
    Jwt,
    Bearer,
    Pem,
}

const ASSIGNMENT_FORMS: usize = 7;
const SCHEMES: &[&str] = &["https", "mongodb", "mongodb+srv", "postgres", "redis", "amqp"];
const TOKEN_PREFIXES: &[&str] = &["sk-", "sk-proj-", "ghp_", "gho_", "github_pat_", "hf_", "xoxb-", "xoxp-"];

/// One planted secret: its shape, its random part and unrelated text around it.
#[derive(Debug, Clone)]
struct Canary {
    shape: Shape,
    secret: String,
    before: String,
    after: String,
}

impl Canary {
    fn name(&self) -> Option<String> {
        match self.shape {
            Shape::Field { name, style } | Shape::Assignment { name, style, .. } => {
                Some(styled(SECRET_NAMES[name], style))
            }
            _ => None,
        }
    }

    /// The secret on its own, as a value or in text.
    fn core(&self) -> String {
        let secret = &self.secret;
        match self.shape {
            Shape::Field { .. } => format!("\"{}\": \"{secret}\"", self.name().unwrap_or_default()),
            Shape::Assignment { form, .. } => {
                let name = self.name().unwrap_or_default();
                match form {
                    0 => format!("{name}={secret}"),
                    1 => format!("{name}: {secret}"),
                    2 => format!("--{name} {secret}"),
                    3 => format!("--{name}={secret}"),
                    4 => format!("\"{name}\": \"{secret}\""),
                    5 => format!("{name}='{secret}'"),
                    _ => format!("export {name}=\"{secret}\""),
                }
            }
            Shape::UrlPassword { scheme } => format!("{}://user:{secret}@host.example:5432/db", SCHEMES[scheme]),
            Shape::UrlUser => format!("https://{secret}@github.com/org/repo.git"),
            Shape::Token { prefix } => format!("{}{secret}", TOKEN_PREFIXES[prefix]),
            Shape::AwsKeyId => format!("AKIA{secret}"),
            Shape::Jwt => format!("eyJhbGciOiJIUzI1NiJ9.eyJ{secret}.{secret}"),
            Shape::Bearer => format!("Authorization: Bearer {secret}"),
            Shape::Pem => format!("-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----"),
        }
    }

    /// The canary in free text, with words around it.
    fn text(&self) -> String {
        format!("{} {} {}", self.before, self.core(), self.after)
    }

    /// The same on one line, for an HTTP header.
    fn line(&self) -> String {
        self.text().replace('\n', " ")
    }

    /// The canary as one named field of an object: a secret-like name with the secret as its
    /// value, or an ordinary name with the canary's text.
    fn field(&self, style: Option<Style>) -> (String, Value) {
        match self.shape {
            Shape::Field { name, style: own } => (styled(SECRET_NAMES[name], style.unwrap_or(own)), json!(self.secret)),
            _ => ("note".into(), json!(self.text())),
        }
    }

    fn object(&self) -> Map<String, Value> {
        let (name, value) = self.field(None);
        let mut object = Map::new();
        object.insert(name, value);
        object
    }
}

fn shape() -> impl Strategy<Value = Shape> {
    let names = 0..SECRET_NAMES.len();
    let styles = prop_oneof![
        Just(Style::Snake),
        Just(Style::Screaming),
        Just(Style::Camel),
        Just(Style::Pascal),
        Just(Style::Kebab),
        Just(Style::Train),
        Just(Style::Flat),
    ];
    prop_oneof![
        (names.clone(), styles.clone()).prop_map(|(name, style)| Shape::Field { name, style }),
        (names, styles, 0..ASSIGNMENT_FORMS).prop_map(|(name, style, form)| Shape::Assignment { name, style, form }),
        (0..SCHEMES.len()).prop_map(|scheme| Shape::UrlPassword { scheme }),
        Just(Shape::UrlUser),
        (0..TOKEN_PREFIXES.len()).prop_map(|prefix| Shape::Token { prefix }),
        Just(Shape::AwsKeyId),
        Just(Shape::Jwt),
        Just(Shape::Bearer),
        Just(Shape::Pem),
    ]
}

fn one_of(pieces: &'static [&'static str]) -> impl Strategy<Value = String> + Clone {
    prop::sample::select(pieces).prop_map(str::to_owned)
}

/// Words around a canary: ordinary text, numbers that look like counts, a traceback line.
fn filler() -> impl Strategy<Value = String> {
    let words = prop_oneof![
        one_of(&[
            "loss",
            "tokens: 1234",
            "max_tokens=512",
            "at line 3\n",
            "  File \"train.py\", line 7, in main\n",
            "KeyError: 'x'"
        ]),
        "[a-z]{1,8}",
    ];
    prop::collection::vec(words, 0..4).prop_map(|words| words.join(" "))
}

fn canary() -> impl Strategy<Value = Canary> {
    (shape(), "[A-Za-z0-9]{24,40}", "[A-Z0-9]{16}", filler(), filler()).prop_map(
        |(shape, secret, aws, before, after)| {
            let secret = if matches!(shape, Shape::AwsKeyId) { aws } else { secret };
            Canary { shape, secret, before, after }
        },
    )
}

/// What has to be absent: both ends of the secret, so that a redaction that took only part
/// of it is caught too.
fn leaked(haystack: &str, canary: &Canary) -> bool {
    let secret = &canary.secret;
    let window = secret.len().min(12);
    haystack.contains(&secret[..window]) || haystack.contains(&secret[secret.len() - window..])
}

/// A value that must be found: proof that the field it sits beside reaches the store.
fn control(index: usize) -> String {
    format!("ctl{index}q{}", ulid::Ulid::generate().to_string().to_lowercase())
}

/// Number of canaries one case plants (one per place below), and of controls beside them.
const PLACES: usize = 22;
const CONTROLS: usize = 17;

struct Planted {
    canaries: Vec<Canary>,
    controls: Vec<String>,
    answers: String,
}

fn cloud_event(id: &str, ty: &str, run_id: &str, data: Map<String, Value>) -> Map<String, Value> {
    let mut data = data;
    data.insert("run_id".into(), json!(run_id));
    let Value::Object(object) = json!({"specversion": "1.0", "id": id, "source": "pod://prop", "type": ty,
                                        "subject": format!("run/{run_id}"), "data": data})
    else {
        unreachable!("a literal object")
    };
    object
}

fn with(mut object: Map<String, Value>, name: &str, value: Value) -> Map<String, Value> {
    object.insert(name.into(), value);
    object
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", ulid::Ulid::generate())
}

/// Sends every canary into `server` (and the binary, on the same store file) by one real
/// path each; returns what came back.
async fn plant(server: &TestServer, canaries: &[Canary]) -> Planted {
    let c = |index: usize| &canaries[index];
    let controls: Vec<String> = (0..CONTROLS).map(control).collect();
    let ctl = |index: usize| json!(controls[index]);
    let mut answers = String::new();
    let accepted = |answers: &mut String, (status, answer): (StatusCode, Value), what: &str| {
        assert!(status.is_success(), "{what} was refused: {status} {answer}");
        answers.push_str(&answer.to_string());
    };

    // Runs: created over the API (the idea), by an event, and by `runs create`.
    let run_id = unique("r");
    let mut idea = c(0).object();
    idea.insert("notes".into(), json!(c(1).text()));
    idea.insert("title".into(), ctl(0));
    idea.insert("config".into(), json!({"nested": [c(2).object()], "seed": ctl(1)}));
    let request = json!({"id": run_id, "idea": idea, "hypothesisId": c(3).line(), "priority": 1});
    accepted(&mut answers, server.post_json("/api/runs", &request).await, "POST /api/runs");

    let structured = |object: Map<String, Value>| Value::Object(object).to_string();
    let cloudevents = "application/cloudevents+json";
    let enqueued_run = unique("r");
    let enqueued = cloud_event(
        &unique("e"),
        "ai.run.enqueued",
        &enqueued_run,
        Map::from_iter([("idea".to_owned(), json!({"a": c(4).object(), "b": ctl(2)}))]),
    );
    accepted(
        &mut answers,
        server.post("/api/ingest/event", cloudevents, structured(enqueued)).await,
        "ai.run.enqueued",
    );

    // One structured event: data text and field, extension attributes, source, subject.
    let mut data = c(5).object();
    data.insert("message".into(), json!(format!("{} {}", controls[3], c(6).text())));
    let log = cloud_event(&unique("e"), "ai.run.log", &run_id, data);
    let (name, value) = c(7).field(Some(Style::Flat));
    let log = with(with(log, &name, value), "ctl", ctl(4));
    let log = with(log, "source", json!(format!("pod://{} {}", controls[5], c(8).line())));
    let log = with(log, "subject", json!(format!("{} {}", controls[6], c(9).text())));
    accepted(&mut answers, server.post("/api/ingest/event", cloudevents, structured(log)).await, "structured event");

    // Binary mode: attributes in ce-* headers, data in the body.
    let (name, value) = c(10).field(Some(Style::Flat));
    let value = value.as_str().map(str::to_owned).unwrap_or_default().replace('\n', " ");
    let body = json!({"message": c(11).text(), "level": "info", "ctl": ctl(7)});
    let request = server
        .client()
        .post(server.url("/api/ingest/event"))
        .header("content-type", "application/json")
        .header("ce-specversion", "1.0")
        .header("ce-id", unique("b"))
        .header("ce-source", format!("pod://{} {}", controls[8], c(12).line()))
        .header("ce-type", "ai.run.log")
        .header("ce-subject", format!("run/{run_id}"))
        .header(format!("ce-{name}"), value)
        .header("ce-ctl", controls[9].clone())
        .body(body.to_string());
    accepted(&mut answers, server.send(request).await, "binary event");

    // An NDJSON batch: a failure with a traceback, an artifact path, a metric, ideas.
    let traceback = format!(
        "Traceback (most recent call last):\n  File \"train.py\", line 9, in <module>\n    {}\n{}\nRuntimeError: {}",
        c(13).text(),
        controls[10],
        c(14).text()
    );
    let failed = cloud_event(
        &unique("e"),
        "ai.run.failed",
        &run_id,
        Map::from_iter([
            ("code".to_owned(), json!("EXIT_1")),
            ("message".to_owned(), json!(c(15).text())),
            ("traceback".to_owned(), json!(traceback)),
        ]),
    );
    let artifact = cloud_event(
        &unique("e"),
        "ai.artifact.detected",
        &run_id,
        Map::from_iter([("path".to_owned(), json!(format!("plots/{} {}", controls[11], c(16).line())))]),
    );
    let (name, value) = c(17).field(Some(Style::Flat));
    let mut metric_data = c(18).object();
    metric_data.insert("name".into(), json!(c(18).line()));
    metric_data.insert("value".into(), json!(0.5));
    let metric = with(cloud_event(&unique("e"), "ai.run.stage_metric", &run_id, metric_data), &name, value);
    let metric = with(metric, "ctl", ctl(12));
    let ideas = with(
        cloud_event(
            &unique("e"),
            "ai.ideation.generated",
            &run_id,
            Map::from_iter([
                ("hypothesis_id".to_owned(), json!(unique("h"))),
                ("ideas".to_owned(), json!([{"Name": ctl(13), "Experiment": c(19).text(), "more": c(19).object()}])),
            ]),
        ),
        "subject",
        Value::Null,
    );
    let batch = [failed, artifact, metric, ideas].map(structured).join("\n");
    accepted(&mut answers, server.post("/api/ingest/events", "application/x-ndjson", batch).await, "NDJSON batch");

    // An operator's cancel, with a reason.
    let cancel = json!({"reason": format!("{} {}", controls[14], c(20).text())});
    accepted(&mut answers, server.post_json(&format!("/api/runs/{enqueued_run}/cancel"), &cancel).await, "cancel");

    // `scientist runs create` and `scientist ideation create` on the same store file.
    let files = tempfile::tempdir().expect("temp dir");
    let idea_file = files.path().join("idea.json");
    let mut idea = c(21).object();
    idea.insert("title".into(), ctl(15));
    idea.insert("notes".into(), json!(c(21).text()));
    std::fs::write(&idea_file, Value::Object(idea.clone()).to_string()).expect("write idea");
    let store_file = server.dir().join("store.sqlite");
    let binary = env!("CARGO_BIN_EXE_scientist");
    let output = Command::new(binary)
        .args(["runs", "create", "--json", "--idea"])
        .arg(&idea_file)
        .arg("--store")
        .arg(&store_file)
        .output()
        .expect("run scientist runs create");
    assert!(output.status.success(), "runs create: {}", String::from_utf8_lossy(&output.stderr));
    answers.push_str(&String::from_utf8_lossy(&output.stdout));
    idea.insert("ctl".into(), ctl(16));
    std::fs::write(&idea_file, Value::Object(idea).to_string()).expect("write input");
    let output = Command::new(binary)
        .args(["ideation", "create", "--json", "--hypothesis", "h1", "--input"])
        .arg(&idea_file)
        .arg("--store")
        .arg(&store_file)
        .output()
        .expect("run scientist ideation create");
    assert!(output.status.success(), "ideation create: {}", String::from_utf8_lossy(&output.stderr));
    answers.push_str(&String::from_utf8_lossy(&output.stdout));

    // What reads give back.
    for path in [format!("/api/runs/{run_id}"), format!("/api/runs/{run_id}/events?limit=1000"), "/api/runs".into()] {
        accepted(&mut answers, server.get(&path).await, &path);
    }
    Planted { canaries: canaries.to_vec(), controls, answers }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn planted_canaries_are_found_nowhere(canaries in prop::collection::vec(canary(), PLACES)) {
        let (planted, bytes) = runtime().block_on(async {
            let server = TestServer::start(&[]).await;
            let planted = plant(&server, &canaries).await;
            let bytes = store_bytes(server.dir());
            (planted, bytes)
        });
        for control in &planted.controls {
            prop_assert!(bytes.contains(control.as_str()), "control {control} never reached the store");
        }
        for (place, canary) in planted.canaries.iter().enumerate() {
            prop_assert!(!leaked(&bytes, canary), "place {place}: {:?} is in the store file", canary.core());
            prop_assert!(!leaked(&planted.answers, canary), "place {place}: {:?} came back", canary.core());
        }
    }
}

// ---------------------------------------------------------------------------------------
// The redactor on any input: total, idempotent, and what it leaves has nothing left to find.
// ---------------------------------------------------------------------------------------

/// Text built from the pieces the rules look for, so that near-misses are common.
fn tricky_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        one_of(&[
            "password",
            "API_KEY",
            "accessToken",
            "--token",
            "=",
            ": ",
            " ",
            "\n",
            "\"",
            "'",
            "\\",
            "::",
            "Bearer ",
            "Basic",
            "https://",
            "@",
            "sk-",
            "AKIA",
            "eyJ",
            ".",
            "-----BEGIN RSA PRIVATE KEY-----",
            "-----END RSA PRIVATE KEY-----",
            REDACTED,
        ]),
        "[A-Za-z0-9_-]{1,24}",
        any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
}

fn json_value() -> impl Strategy<Value = Value> {
    let name = prop_oneof![tricky_text(), Just("token".to_owned()), Just("max_tokens".to_owned())];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        tricky_text().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(name.clone(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn any_text_is_redacted_without_panic_and_once_is_enough(text in prop_oneof![any::<String>(), tricky_text()]) {
        let once = redact::redact_text(&text).into_owned();
        let twice = redact::redact_text(&once).into_owned();
        prop_assert_eq!(&twice, &once, "redacting {:?} again changed it", text);
        prop_assert!(!redact::would_change(&once));
    }

    #[test]
    fn any_json_is_redacted_without_panic_and_once_is_enough(value in json_value()) {
        let mut once = value.clone();
        redact::redact_value(&mut once);
        let mut twice = once.clone();
        redact::redact_value(&mut twice);
        prop_assert_eq!(&twice, &once, "redacting {} again changed it", value);
    }
}

#[test]
fn adversarial_megabytes_take_linear_time() {
    // 1 MiB lines made of what the rules look for: a scan that went back over the text for
    // every candidate would take hours here, a linear one milliseconds.
    for (piece, redacted) in [
        ("a:token=x ", true),
        ("key:key:", false),
        ("token", false),
        ("password=", true),
        ("--token ", false),
        ("https://u:", false),
        ("-----BEGIN PRIVATE KEY-----", true),
        ("eyJaaaaaaaaa.", true),
        ("loss 0.25 at step 10\n", false),
    ] {
        let text = piece.repeat((1 << 20) / piece.len());
        let started = std::time::Instant::now();
        let clean = redact::redact_text(&text);
        let took = started.elapsed();
        assert_eq!(clean.contains(REDACTED), redacted, "{piece:?}");
        assert!(took < std::time::Duration::from_secs(20), "{piece:?} took {took:?}");
    }
}

#[tokio::test]
async fn identifiers_that_carry_a_secret_are_refused_not_rewritten() {
    let secret = "ghp_abcdefghijklmnopqrstuvwxyz0123456789";
    let event = |id: &str, run: &str| {
        json!({"specversion": "1.0", "id": id, "source": "s", "type": "ai.run.log", "subject": format!("run/{run}"),
               "data": {"message": "m"}})
    };
    for (input, what) in [(event(secret, "r1"), "an event id"), (event("e1", secret), "a run id")] {
        let err = event::wire::parse_structured(input.to_string().as_bytes(), Timestamp::now()).expect_err(what);
        assert!(err.to_string().contains("looks like a secret"), "{what}: {err}");
        assert!(!err.to_string().contains(secret), "{what}: the refusal repeats the secret: {err}");
    }
    let server = TestServer::start(&[]).await;
    let (status, answer) =
        server.post("/api/ingest/event", "application/cloudevents+json", event(secret, "r1").to_string()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let (status, answer) = server.post_json("/api/runs", &json!({"id": secret, "idea": {}})).await;
    assert!(status.is_client_error(), "{status} {answer}");
    assert!(!answer.to_string().contains(secret), "{answer}");
    assert!(!store_bytes(server.dir()).contains("abcdefghijklmnopqrstuvwxyz"), "nothing was stored");
}

//! Named control planes for operators who talk to several, like `kubectl` contexts:
//! `~/.config/scientist/config.toml` (`SCIENTIST_CONFIG` names another file) holds a server
//! URL and a token file per context. Tokens live in their files, never in the config, in
//! argv or in logs.
//!
//! ```toml
//! current = "prod"                 # used when nothing else says where the runs are
//!
//! [contexts.prod]
//! server = "https://scientist.example.com"
//! token_file = "prod.token"        # relative to this file; ~ is the home directory
//!
//! [contexts.local]
//! server = "http://127.0.0.1:8080" # no token_file: SCIENTIST_TOKEN, or none on loopback
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The operator's config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The context used when none is named and no store or server is given.
    pub current: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
    /// Where it was read from, for messages and relative token files.
    #[serde(skip)]
    path: PathBuf,
}

/// One control plane.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    pub server: String,
    /// A file holding the token (its first line); without one, SCIENTIST_TOKEN is used.
    pub token_file: Option<PathBuf>,
}

/// A context's server and the token read for it.
pub struct Chosen {
    pub name: String,
    pub server: String,
    pub token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the config file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the config file {} is not valid: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("no context {name:?} in {}: {known}", path.display())]
    Unknown { name: String, path: PathBuf, known: String },
    #[error("cannot read the token file {} of context {name:?}: {source}", path.display())]
    Token { name: String, path: PathBuf, source: std::io::Error },
    #[error("the token file {} of context {name:?} is empty: put the token on its first line", path.display())]
    EmptyToken { name: String, path: PathBuf },
}

impl Config {
    /// Where the config is looked for: `SCIENTIST_CONFIG`, else `<config dir>/scientist/config.toml`.
    pub fn default_path() -> Option<PathBuf> {
        match std::env::var_os("SCIENTIST_CONFIG") {
            Some(path) => Some(PathBuf::from(path)),
            None => dirs::config_dir().map(|dir| dir.join("scientist").join("config.toml")),
        }
    }

    /// The config at `path`; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(Error::Read { path: path.to_owned(), source }),
        };
        let mut config: Config =
            toml::from_str(&text).map_err(|err| Error::Invalid { path: path.to_owned(), reason: err.to_string() })?;
        config.path = path.to_owned();
        if let Some(current) = &config.current
            && !config.contexts.contains_key(current)
        {
            return Err(Error::Invalid {
                path: path.to_owned(),
                reason: format!("current = {current:?} names no [contexts.{current}] table"),
            });
        }
        Ok(config)
    }

    /// The context `name`, or the `current` one when no name is given; `None` when neither.
    /// `env_token` stands in for a context without a token file.
    pub fn choose(&self, name: Option<&str>, env_token: Option<String>) -> Result<Option<Chosen>, Error> {
        let Some(name) = name.or(self.current.as_deref()) else { return Ok(None) };
        let context = self.contexts.get(name).ok_or_else(|| Error::Unknown {
            name: name.to_owned(),
            path: self.path.clone(),
            known: match self.contexts.keys().map(String::as_str).collect::<Vec<_>>() {
                names if names.is_empty() => "it defines none (add a [contexts.NAME] table)".into(),
                names => format!("it defines {}", names.join(", ")),
            },
        })?;
        let token = match &context.token_file {
            Some(file) => Some(self.read_token(name, file)?),
            None => env_token,
        };
        Ok(Some(Chosen { name: name.to_owned(), server: context.server.clone(), token }))
    }

    fn read_token(&self, name: &str, file: &Path) -> Result<String, Error> {
        let path = self.resolve(file);
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Token {
            name: name.to_owned(),
            path: path.clone(),
            source,
        })?;
        warn_if_readable_by_others(&path);
        match text.lines().next().map(str::trim) {
            Some(token) if !token.is_empty() => Ok(token.to_owned()),
            _ => Err(Error::EmptyToken { name: name.to_owned(), path }),
        }
    }

    /// `~/…` from the home directory, a relative path from the config file's directory.
    fn resolve(&self, file: &Path) -> PathBuf {
        if let Ok(rest) = file.strip_prefix("~")
            && let Some(home) = dirs::home_dir()
        {
            return home.join(rest);
        }
        match self.path.parent() {
            Some(dir) if file.is_relative() => dir.join(file),
            _ => file.to_owned(),
        }
    }
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(metadata) = std::fs::metadata(path)
        && metadata.permissions().mode() & 0o077 != 0
    {
        crate::notice!(
            warn,
            "warning: the token file {} can be read by other users: `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, text: &str) -> Result<Config, Error> {
        let path = dir.join("config.toml");
        std::fs::write(&path, text).expect("write config");
        Config::load(&path)
    }

    #[test]
    fn a_context_reads_its_token_file_relative_to_the_config() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("prod.token"), "s3cret-token\n# a comment\n").expect("token");
        let text = "current = \"prod\"\n[contexts.prod]\nserver = \"https://a\"\ntoken_file = \"prod.token\"\n\
                    [contexts.dev]\nserver = \"http://127.0.0.1:8080\"\n";
        let config = config(dir.path(), text).expect("valid");
        let current = config.choose(None, Some("env".into())).expect("chosen").expect("the current one");
        assert_eq!((current.name.as_str(), current.server.as_str()), ("prod", "https://a"));
        assert_eq!(current.token.as_deref(), Some("s3cret-token"));
        let dev = config.choose(Some("dev"), Some("env".into())).expect("chosen").expect("dev");
        assert_eq!(dev.token.as_deref(), Some("env"), "no token file: the environment's token");
    }

    #[test]
    fn mistakes_name_the_file_and_the_fix() {
        let dir = tempfile::tempdir().expect("temp dir");
        let unknown = config(dir.path(), "[contexts.prod]\nserver = \"https://a\"\n")
            .expect("valid")
            .choose(Some("staging"), None)
            .err()
            .expect("no such context")
            .to_string();
        assert!(unknown.contains("no context \"staging\"") && unknown.contains("it defines prod"), "{unknown}");
        let dangling = config(dir.path(), "current = \"x\"\n").expect_err("current names nothing").to_string();
        assert!(dangling.contains("[contexts.x]"), "{dangling}");
        let typo = config(dir.path(), "[contexts.a]\nserver = \"h\"\ntoken = \"inline\"\n").expect_err("unknown key");
        assert!(typo.to_string().contains("token"), "{typo}");
        std::fs::write(dir.path().join("empty.token"), "\n").expect("token");
        let empty = config(dir.path(), "[contexts.a]\nserver = \"h\"\ntoken_file = \"empty.token\"\n")
            .expect("valid")
            .choose(Some("a"), None)
            .err()
            .expect("an empty token file")
            .to_string();
        assert!(empty.contains("is empty"), "{empty}");
    }

    #[test]
    fn no_file_is_an_empty_config() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = Config::load(&dir.path().join("missing.toml")).expect("empty");
        assert!(config.choose(None, None).expect("nothing to choose").is_none());
    }
}

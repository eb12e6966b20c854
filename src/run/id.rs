//! `RunId`: a run's id, checked once where it enters from outside.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::redact;

/// Longest run id accepted from outside; ours are 36-character UUIDs.
const MAX_RUN_ID_LEN: usize = 128;

/// A run's id: a UUID for runs we create, any short token for runs named by an emitter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(try_from = "String", into = "String")]
pub struct RunId(String);

impl RunId {
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RunId {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        if value.is_empty() {
            return Err("run id is empty".into());
        }
        if value.len() > MAX_RUN_ID_LEN {
            return Err(format!("run id is {} characters long; the limit is {MAX_RUN_ID_LEN}", value.len()));
        }
        if let Some(bad) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || "-_.:".contains(*c))) {
            return Err(format!("run id {value:?} contains {bad:?}; use letters, digits and - _ . : only"));
        }
        // Paths and URLs read these as "this directory" and "the one above".
        if value == "." || value == ".." {
            return Err(format!("run id {value:?} names a directory in paths and URLs; use a UUID"));
        }
        // Redacting an id would merge runs, so one that carries a secret is refused (and not
        // repeated in the message).
        if redact::would_change(&value) {
            return Err("the run id looks like a secret (a token or a NAME:value pair); use a UUID".into());
        }
        Ok(Self(value))
    }
}

impl FromStr for RunId {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::try_from(value.to_owned())
    }
}

impl From<RunId> for String {
    fn from(value: RunId) -> Self {
        value.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

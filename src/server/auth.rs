//! Bearer-token auth with scopes: tokens compared in constant time; no tokens configured
//! means open (`serve` refuses that on a non-loopback address).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::protocol::http::bearer_token;
use crate::queue::authority::Authority;

/// What a token may do. Pods get `Ingest`; dashboards `Read`; operators `Admin` too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Send events, claim runs, check a claimed run for cancellation.
    Ingest,
    /// Read runs, events, artifacts and stats.
    Read,
    /// Enqueue, reset, cancel, approve and reject runs.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Ingest, Scope::Read, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == text)
            .ok_or_else(|| format!("unknown scope {text:?}: use ingest, read or admin"))
    }
}

/// One accepted token and what it may do.
#[derive(Clone)]
struct Grant {
    token: String,
    scopes: Vec<Scope>,
}

/// The accepted tokens. Cheap to clone.
#[derive(Clone, Default)]
pub struct Tokens(Arc<Vec<Grant>>);

impl Tokens {
    /// Tokens with every scope (`--token`, `SCIENTIST_TOKEN`).
    pub fn new(tokens: Vec<String>) -> Self {
        Self::default().with_full_access(tokens)
    }

    pub fn with_full_access(self, tokens: Vec<String>) -> Self {
        self.with(tokens.into_iter().map(|token| (token, Scope::ALL.to_vec())))
    }

    /// Adds the grants of a token file: one `TOKEN [SCOPE...]` per line, every scope when
    /// none is named; blank lines and `#` comments are skipped.
    pub fn with_token_file(self, text: &str) -> Result<Self, String> {
        let mut grants = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let mut words = line.split_whitespace();
            let Some(token) = words.next().filter(|word| !word.starts_with('#')) else { continue };
            let scopes = words
                .map(str::parse)
                .collect::<Result<Vec<Scope>, String>>()
                .map_err(|reason| format!("line {}: {reason}", number + 1))?;
            grants.push((token.to_owned(), if scopes.is_empty() { Scope::ALL.to_vec() } else { scopes }));
        }
        Ok(self.with(grants))
    }

    fn with(self, grants: impl IntoIterator<Item = (String, Vec<Scope>)>) -> Self {
        let mut all = Arc::unwrap_or_clone(self.0);
        all.extend(
            grants.into_iter().filter(|(token, _)| !token.is_empty()).map(|(token, scopes)| Grant { token, scopes }),
        );
        Self(Arc::new(all))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `presented` is a token with `scope`, and what its events may do. Every token
    /// is compared in full so the time taken says nothing about how much of a token matched.
    fn grants(&self, presented: &str, scope: Scope) -> Result<Authority, ApiError> {
        let matched = self.0.iter().fold(None, |found, grant| {
            let equal = bool::from(grant.token.as_bytes().ct_eq(presented.as_bytes()));
            if equal { Some(grant) } else { found }
        });
        match matched {
            None => Err(ApiError::Unauthorized),
            Some(grant) if grant.scopes.contains(&scope) => {
                Ok(if grant.scopes.contains(&Scope::Admin) { Authority::Admin } else { Authority::Pod })
            }
            Some(_) => Err(ApiError::Forbidden(scope)),
        }
    }
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.0.len())
    }
}

/// Middleware: the request must carry a token with `scope` (when any token is configured).
/// The handler finds what the token's events may do as an [`Authority`] extension.
pub(super) async fn require(
    State((tokens, scope)): State<(Tokens, Scope)>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if tokens.is_empty() {
        request.extensions_mut().insert(Authority::Admin);
        return Ok(next.run(request).await);
    }
    let presented = bearer_token(request.headers()).ok_or(ApiError::Unauthorized)?;
    let authority = tokens.grants(presented, scope)?;
    request.extensions_mut().insert(authority);
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, header};

    use super::*;

    #[test]
    fn token_file_lines_name_their_scopes() {
        let tokens = Tokens::default()
            .with_token_file("# pods\npod-secret ingest\n\nops-secret read admin\nroot-secret\n")
            .expect("valid file");
        assert_eq!(tokens.grants("pod-secret", Scope::Ingest).ok(), Some(Authority::Pod));
        assert!(matches!(tokens.grants("pod-secret", Scope::Read), Err(ApiError::Forbidden(Scope::Read))));
        assert_eq!(tokens.grants("ops-secret", Scope::Admin).ok(), Some(Authority::Admin));
        assert!(matches!(tokens.grants("ops-secret", Scope::Ingest), Err(ApiError::Forbidden(_))));
        assert!(Scope::ALL.into_iter().all(|scope| tokens.grants("root-secret", scope).is_ok()));
        assert!(matches!(tokens.grants("pod-secre", Scope::Ingest), Err(ApiError::Unauthorized)));
    }

    #[test]
    fn the_bearer_scheme_is_matched_in_any_case() {
        let token_of = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().expect("header value"));
            bearer_token(&headers).map(str::to_owned)
        };
        for value in ["Bearer s3cret", "bearer s3cret", "BEARER s3cret", "bEaReR   s3cret "] {
            assert_eq!(token_of(value).as_deref(), Some("s3cret"), "{value:?}");
        }
        for value in ["Basic s3cret", "Bearer", "Bearer   ", "Bearers3cret", "s3cret"] {
            assert_eq!(token_of(value), None, "{value:?}");
        }
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    #[test]
    fn unknown_scopes_are_refused_with_their_line() {
        let err = Tokens::default().with_token_file("a ingest\nb write\n").expect_err("refused");
        assert_eq!(err, "line 2: unknown scope \"write\": use ingest, read or admin");
    }
}

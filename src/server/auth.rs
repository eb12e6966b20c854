//! Bearer-token auth: tokens compared in constant time; no tokens configured means open
//! (`serve` refuses that on a non-loopback address).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use super::error::ApiError;

/// The accepted tokens. Cheap to clone.
#[derive(Clone, Default)]
pub struct Tokens(Arc<Vec<String>>);

impl Tokens {
    pub fn new(tokens: Vec<String>) -> Self {
        Self(Arc::new(tokens.into_iter().filter(|token| !token.is_empty()).collect()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `presented` is one of the tokens. Every token is compared in full so the
    /// time taken says nothing about how much of a token matched.
    fn accepts(&self, presented: &str) -> bool {
        self.0.iter().fold(false, |found, token| found | bool::from(token.as_bytes().ct_eq(presented.as_bytes())))
    }
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.0.len())
    }
}

pub(super) async fn require_token(
    State(tokens): State<Tokens>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if tokens.is_empty() {
        return Ok(next.run(request).await);
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(token) if tokens.accepts(token) => Ok(next.run(request).await),
        _ => Err(ApiError::Unauthorized),
    }
}

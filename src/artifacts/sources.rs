//! The two [`Source`]s a pull reads from: the object store itself (an operator with its
//! credentials), and `serve`'s `GET /api/runs/{id}/artifacts/{key}` with a bearer token,
//! following a redirect to a presigned URL only to http(s) and never with the token to
//! another origin.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use reqwest::{StatusCode, Url, header};

use super::pull::{Fetched, Source, SourceError};
use super::store::{ArtifactStore, run_object};
use crate::run::RunId;

/// A hung server must not hang the pull; a slow link may take as long as it needs.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait for the next bytes of an answer.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Redirects followed for one download (the server's to a presigned URL is one).
const MAX_REDIRECTS: usize = 5;

#[async_trait]
impl Source for ArtifactStore {
    async fn fetch(&self, run_id: &RunId, key: &str) -> Result<Fetched, SourceError> {
        let object = self.read(&run_object(run_id, key)?, None, None).await?;
        let length = object.range.end - object.range.start;
        Ok(Fetched { length: Some(length), body: object.body.map(|chunk| chunk.map_err(SourceError::from)).boxed() })
    }
}

/// `serve`'s API at `base`, with an optional bearer token (from SCIENTIST_TOKEN, never argv).
#[derive(Clone)]
pub struct ApiSource {
    base: Url,
    token: Option<String>,
    http: reqwest::Client,
}

impl std::fmt::Debug for ApiSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiSource").field("base", &self.base.as_str()).finish_non_exhaustive()
    }
}

impl ApiSource {
    /// `base` is the server's root URL, e.g. `http://127.0.0.1:8080`.
    ///
    /// # Errors
    /// `Status` (with status 0) when `base` is not an http(s) URL.
    pub fn new(base: &str, token: Option<String>) -> Result<ApiSource, SourceError> {
        let bad_base = |message: String| SourceError::Status { url: base.to_owned(), status: 0, message };
        let base =
            Url::parse(base).map_err(|err| bad_base(format!("not a URL ({err}): pass --server http://HOST:PORT")))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(bad_base("not an http(s) URL: pass --server http://HOST:PORT".into()));
        }
        // Redirects are followed by hand (`get`), to decide where the token goes.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .build()
            .map_err(|source| SourceError::Http { url: shown(&base), source: source.without_url() })?;
        Ok(ApiSource { base, token: token.filter(|token| !token.is_empty()), http })
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// GETs `url`, following redirects to http(s) only and sending the token only to the
    /// base's origin; a success, or the error its status means.
    async fn get(&self, mut url: Url) -> Result<reqwest::Response, SourceError> {
        for _ in 0..=MAX_REDIRECTS {
            let mut request = self.http.get(url.clone());
            if let Some(token) = self.token.as_deref().filter(|_| url.origin() == self.base.origin()) {
                request = request.bearer_auth(token);
            }
            let response = request
                .send()
                .await
                .map_err(|source| SourceError::Http { url: shown(&url), source: source.without_url() })?;
            let status = response.status();
            if status.is_success() {
                return Ok(response);
            }
            if !status.is_redirection() || status == StatusCode::NOT_MODIFIED {
                return Err(refusal(&url, response).await);
            }
            let location = response.headers().get(header::LOCATION).and_then(|value| value.to_str().ok());
            let location = location.unwrap_or_default().to_owned();
            let redirect = |reason| SourceError::Redirect { url: shown(&url), location: location.clone(), reason };
            let next = url.join(&location).map_err(|_| redirect("not a URL"))?;
            if !matches!(next.scheme(), "http" | "https") {
                return Err(redirect("only http and https are followed"));
            }
            url = next;
        }
        Err(SourceError::Redirect { url: shown(&url), location: String::new(), reason: "too many redirects" })
    }
}

#[async_trait]
impl Source for ApiSource {
    async fn fetch(&self, run_id: &RunId, key: &str) -> Result<Fetched, SourceError> {
        let mut segments = vec!["api", "runs", run_id.as_str(), "artifacts"];
        segments.extend(key.split('/'));
        let url = self.url(&segments);
        let response = self.get(url.clone()).await?;
        let length = response.content_length();
        let shown_url = shown(response.url());
        let body = futures_util::stream::try_unfold(response, move |mut response| {
            let shown_url = shown_url.clone();
            async move {
                match response.chunk().await {
                    Ok(Some(chunk)) => Ok(Some((chunk, response))),
                    Ok(None) => Ok(None),
                    Err(source) => Err(SourceError::Http { url: shown_url, source: source.without_url() }),
                }
            }
        });
        Ok(Fetched { length, body: body.boxed() })
    }
}

/// The error an answer that is not the object means, with the server's own message.
async fn refusal(url: &Url, response: reqwest::Response) -> SourceError {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|body| body["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| text.chars().take(200).collect());
    let url = shown(url);
    match status {
        401 | 403 => SourceError::Refused { url, status, message },
        _ => SourceError::Status { url, status, message },
    }
}

/// `url` without its query: a presigned URL's query is a credential.
fn shown(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

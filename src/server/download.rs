//! Artifact downloads: `GET /api/runs/{id}/artifacts/{*key}` streams the object of one of
//! the run's registered artifacts from the artifact store (never held in memory), whole or
//! one byte range, or redirects to a presigned URL of the object store when `serve` was
//! told to (`--artifact-redirect`, S3 only). Only a key registered for the run, and one of
//! the run's own objects, is ever read.

use std::ops::Range;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use futures_util::TryStreamExt;

use super::AppState;
use super::error::ApiError;
use super::error::extract::Path;
use crate::artifacts::{ArtifactStore, run_object};
use crate::run::RunId;
use crate::store;

/// The route as documented; `{key}` is the rest of the path, slashes included.
pub(super) const PATH: &str = "/api/runs/{id}/artifacts/{key}";

/// Where downloads come from, and whether they are redirected to the object store.
#[derive(Debug, Clone)]
pub struct Downloads {
    pub store: ArtifactStore,
    /// Answer 307 to a presigned URL valid this long instead of streaming (where the store
    /// can presign: S3).
    pub redirect: Option<Duration>,
}

pub(super) async fn artifact(
    State(state): State<AppState>,
    Path((id, key)): Path<(RunId, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let downloads = state.downloads.as_ref().ok_or(ApiError::NoArtifactStore)?;
    // Checked before anything else: a key with `..` is never looked up, let alone opened.
    let object = run_object(&id, &key)?;
    let records = state.store.artifacts(&id).await?;
    let Some(record) = records.into_iter().find(|record| record.key == key) else {
        state.store.get(&id).await?.ok_or_else(|| store::Error::NotFound(id.clone()))?;
        return Err(ApiError::NotFound(format!(
            "run {id} has no artifact {key:?}: `GET /api/runs/{id}/artifacts` (or `scientist runs show {id}`) lists its keys"
        )));
    };
    let etag = record.sha256.as_deref().and_then(|sha256| HeaderValue::from_str(&format!("\"{sha256}\"")).ok());

    if let Some(expires_in) = downloads.redirect
        && let Some(url) = downloads.store.presigned_get(&object, expires_in).await?
    {
        let location =
            HeaderValue::from_str(&url).map_err(|err| ApiError::Internal(format!("presigned URL: {err}")))?;
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::TEMPORARY_REDIRECT;
        response.headers_mut().insert(header::LOCATION, location);
        response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return Ok(response);
    }

    let info = downloads.store.info(&object).await?;
    let range = match headers.get(header::RANGE).and_then(|value| value.to_str().ok()) {
        None => None,
        Some(text) => match parse_range(text, info.size) {
            Ranged::Ignored => None,
            Ranged::Unsatisfiable => return Err(ApiError::RangeNotSatisfiable { size: info.size }),
            Ranged::Bytes(range) => Some(range),
        },
    };
    // The version looked at is the one streamed: its length is promised before it is read.
    let read = downloads.store.read(&object, range.clone(), info.e_tag.as_deref()).await?;
    let content_type = record.content_type.or(read.content_type).unwrap_or_else(|| "application/octet-stream".into());
    let length = read.range.end - read.range.start;

    let mut response = Response::new(Body::from_stream(read.body.map_err(axum::Error::new)));
    let answer = response.headers_mut();
    answer.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    answer.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // The type is the pod's word: a browser must not second-guess it into HTML.
    answer.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if let Ok(value) = HeaderValue::from_str(&content_type) {
        answer.insert(header::CONTENT_TYPE, value);
    }
    if let Some(etag) = etag {
        answer.insert(header::ETAG, etag);
    }
    if range.is_some() {
        let content_range = format!("bytes {}-{}/{}", read.range.start, read.range.end.saturating_sub(1), read.size);
        if let Ok(value) = HeaderValue::from_str(&content_range) {
            answer.insert(header::CONTENT_RANGE, value);
        }
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    Ok(response)
}

/// What a `Range` header asks of an object of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
enum Ranged {
    /// Not one `bytes` range we understand (another unit, several ranges, malformed): the
    /// whole object is sent, as RFC 9110 allows.
    Ignored,
    /// A valid range wholly past the end (or an empty suffix): 416.
    Unsatisfiable,
    /// These bytes (never empty, within the object).
    Bytes(Range<u64>),
}

/// `bytes=a-b`, `bytes=a-` or `bytes=-n` (RFC 9110 §14.1.2); an end past the object is
/// cut to it.
fn parse_range(header: &str, size: u64) -> Ranged {
    let Some(spec) = header.trim().strip_prefix("bytes=") else { return Ranged::Ignored };
    if spec.contains(',') {
        return Ranged::Ignored;
    }
    let Some((first, last)) = spec.trim().split_once('-') else { return Ranged::Ignored };
    let number = |text: &str| {
        (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())).then(|| text.parse::<u64>().ok()).flatten()
    };
    match (first.trim(), last.trim()) {
        ("", suffix) => match number(suffix) {
            None => Ranged::Ignored,
            Some(0) => Ranged::Unsatisfiable,
            Some(_) if size == 0 => Ranged::Unsatisfiable,
            Some(suffix) => Ranged::Bytes(size.saturating_sub(suffix)..size),
        },
        (first, "") => match number(first) {
            None => Ranged::Ignored,
            Some(start) if start >= size => Ranged::Unsatisfiable,
            Some(start) => Ranged::Bytes(start..size),
        },
        (first, last) => match (number(first), number(last)) {
            (Some(start), Some(end)) if start <= end => {
                if start >= size {
                    Ranged::Unsatisfiable
                } else {
                    Ranged::Bytes(start..end.saturating_add(1).min(size))
                }
            }
            _ => Ranged::Ignored,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_byte_ranges_are_read_as_rfc_9110_says() {
        let cases = [
            ("bytes=0-0", Ranged::Bytes(0..1)),
            ("bytes=10-19", Ranged::Bytes(10..20)),
            ("bytes=90-200", Ranged::Bytes(90..100)),
            ("bytes=95-", Ranged::Bytes(95..100)),
            ("bytes=-5", Ranged::Bytes(95..100)),
            ("bytes=-500", Ranged::Bytes(0..100)),
            (" bytes= 1 - 2 ", Ranged::Bytes(1..3)),
            ("bytes=100-", Ranged::Unsatisfiable),
            ("bytes=100-200", Ranged::Unsatisfiable),
            ("bytes=-0", Ranged::Unsatisfiable),
            ("bytes=5-4", Ranged::Ignored),
            ("bytes=0-1,5-6", Ranged::Ignored),
            ("items=0-1", Ranged::Ignored),
            ("bytes=a-b", Ranged::Ignored),
            ("bytes=-", Ranged::Ignored),
            ("bytes=+1-2", Ranged::Ignored),
            ("bytes=99999999999999999999-", Ranged::Ignored),
        ];
        for (header, expected) in cases {
            assert_eq!(parse_range(header, 100), expected, "{header:?}");
        }
    }

    #[test]
    fn an_empty_object_has_no_satisfiable_range() {
        assert_eq!(parse_range("bytes=0-", 0), Ranged::Unsatisfiable);
        assert_eq!(parse_range("bytes=-1", 0), Ranged::Unsatisfiable);
    }
}

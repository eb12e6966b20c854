//! `ApiError`: every error a handler returns, mapped to a status code in one place.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::auth::Scope;
use crate::artifacts::{KeyError, ReadError};
use crate::store;

/// The body of every error answer.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    pub error: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed; the message names the problem and the fix.
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("missing or invalid bearer token: send `Authorization: Bearer <token>`")]
    Unauthorized,
    #[error("this token lacks the `{}` scope this endpoint needs: use a token granted it", .0.as_str())]
    Forbidden(Scope),
    /// The token may call the endpoint, but not send this event (`queue::authority`).
    #[error("{0}")]
    EventForbidden(String),
    /// Not allowed in the object's current state.
    #[error("{0}")]
    Conflict(String),
    /// The handler did not answer within the request timeout.
    #[error(
        "the request was not answered within {0:?} and was cut off: retry it (events already stored are \
         acknowledged as duplicates), and send smaller batches if it keeps happening"
    )]
    Timeout(std::time::Duration),
    /// A bug of ours; the message says what failed.
    #[error("{0}")]
    Internal(String),
    /// Something other than a run that is not there (an artifact); the message names the fix.
    #[error("{0}")]
    NotFound(String),
    /// An artifact download, but this server was started without an artifact store.
    #[error(
        "this server has no artifact store: start `scientist serve` with --artifacts URL (the directory or \
         s3://BUCKET/PREFIX the workers upload to), or read the store directly with `scientist runs pull --artifacts URL`"
    )]
    NoArtifactStore,
    /// A `Range` that lies wholly past the end of the object.
    #[error("the range asked for is outside the object's {size} bytes: ask for bytes within 0-{}", size.saturating_sub(1))]
    RangeNotSatisfiable { size: u64 },
    #[error(transparent)]
    ArtifactKey(#[from] KeyError),
    /// Reading an artifact's object failed (missing, changed midway, or the object store is down).
    #[error(transparent)]
    Artifact(#[from] ReadError),
    /// Not found, not allowed in the run's state, a bad cursor, or the store is down.
    #[error(transparent)]
    Store(#[from] store::Error),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        use store::Error as StoreError;
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::EventForbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::NotFound(_) | ApiError::Artifact(ReadError::Missing { .. }) => StatusCode::NOT_FOUND,
            ApiError::NoArtifactStore => StatusCode::NOT_IMPLEMENTED,
            ApiError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::ArtifactKey(_) => StatusCode::BAD_REQUEST,
            ApiError::Artifact(ReadError::Changed { .. }) => StatusCode::CONFLICT,
            ApiError::Artifact(ReadError::Store { .. }) => StatusCode::BAD_GATEWAY,
            ApiError::Store(StoreError::NotFound(_)) => StatusCode::NOT_FOUND,
            ApiError::Store(
                StoreError::AlreadyExists(_) | StoreError::IdeationExists(_) | StoreError::InvalidTransition { .. },
            ) => StatusCode::CONFLICT,
            ApiError::Store(StoreError::InvalidCursor(_)) => StatusCode::BAD_REQUEST,
            ApiError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The message a client sees: store failures are logged in full, not shown.
    fn message(&self) -> String {
        match self {
            ApiError::Store(err) if self.status() == StatusCode::SERVICE_UNAVAILABLE => {
                tracing::error!(error = ?err, "store error while handling a request");
                "the store is unavailable; nothing was changed, retry the request".to_owned()
            }
            ApiError::Artifact(err @ ReadError::Store { .. }) => {
                tracing::error!(error = %crate::errors::chain(err), "artifact store error while serving a download");
                "the artifact store did not answer as expected; retry the download".to_owned()
            }
            other => other.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (status, Json(ErrorBody { error: self.message() })).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        // RFC 9110: a 416 says how long the object is.
        if let ApiError::RangeNotSatisfiable { size } = self
            && let Ok(value) = header::HeaderValue::from_str(&format!("bytes */{size}"))
        {
            response.headers_mut().insert(header::CONTENT_RANGE, value);
        }
        response
    }
}

/// Extractors whose rejections are `ApiError`s, so every error body is the same JSON shape.
pub(super) mod extract {
    use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};

    use super::ApiError;

    #[derive(axum::extract::FromRequest)]
    #[from_request(via(axum::Json), rejection(ApiError))]
    pub struct Json<T>(pub T);

    #[derive(axum::extract::FromRequestParts)]
    #[from_request(via(axum::extract::Query), rejection(ApiError))]
    pub struct Query<T>(pub T);

    #[derive(axum::extract::FromRequestParts)]
    #[from_request(via(axum::extract::Path), rejection(ApiError))]
    pub struct Path<T>(pub T);

    impl From<JsonRejection> for ApiError {
        fn from(rejection: JsonRejection) -> Self {
            ApiError::BadRequest(format!("{}: send a JSON object as the body", rejection.body_text()))
        }
    }

    impl From<QueryRejection> for ApiError {
        fn from(rejection: QueryRejection) -> Self {
            ApiError::BadRequest(rejection.body_text())
        }
    }

    impl From<PathRejection> for ApiError {
        fn from(rejection: PathRejection) -> Self {
            ApiError::BadRequest(rejection.body_text())
        }
    }
}

//! Errors as RFC 9457 problem details (`application/problem+json`), each with a stable
//! machine-readable `code`. Every subsystem error becomes HTTP here, and only here.

use poem::{http::StatusCode, Response};
use poem_openapi::{payload::Json, types::ToJSON, ApiResponse, Enum, Object};

use crate::{
    imaging::HeaderError, intake::IntakeError, objects::ObjectStoreError, outbound::OutboundError,
    store::StoreError,
};

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// `Retry-After` on a `503`: a dependency that is down, restarting or failing over is
/// usually back within seconds.
pub const UNAVAILABLE_RETRY_AFTER_SECONDS: u64 = 5;

/// A problem detail (RFC 9457). `code` is stable; `detail` is for people and may change.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct Problem {
    /// A URI naming the problem type: `urn:platescore:problem:<code>`.
    #[oai(rename = "type")]
    pub problem_type: String,
    /// A short, human-readable summary of the problem type.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    pub code: ProblemCode,
}

impl poem_openapi::types::Example for Problem {
    fn example() -> Self {
        ApiProblem::new(
            ProblemCode::UrlInvalid,
            "webhook_url: the URL's scheme must be http or https",
        )
        .to_problem()
    }
}

/// Stable machine-readable problem codes. Each has one HTTP status; the table in
/// `docs/api.md` lists them with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Enum)]
#[oai(rename_all = "snake_case")]
pub enum ProblemCode {
    /// 400: the request is malformed in a way no other code names.
    BadRequest,
    /// 400: the body is not valid JSON.
    MalformedJson,
    /// 400: the multipart body is malformed.
    MalformedMultipart,
    /// 400: a path or query parameter does not parse.
    InvalidParameter,
    /// 400: `cursor` is not one this server made.
    InvalidCursor,
    /// 401: the API key is missing, unknown or revoked.
    Unauthorized,
    /// 403: the operation needs an admin key.
    AdminRequired,
    /// 403: only the current API key may rotate (not the previous one, during an overlap).
    CurrentKeyRequired,
    /// 404: no such route.
    NotFound,
    /// 404: no such job for this partner.
    JobNotFound,
    /// 404: the job was erased (`DELETE /jobs/{job_id}`).
    JobErased,
    /// 404: no such webhook endpoint for this partner.
    WebhookNotFound,
    /// 405: the route does not take this method (see `Allow`).
    MethodNotAllowed,
    /// 408: the request's body did not arrive within `http_body_timeout_seconds`; the
    /// connection is closed.
    RequestTimeout,
    /// 409: the job has not finished yet.
    JobNotFinished,
    /// 409: the `client_reference` names another job, asked for with a different request.
    ClientReferenceReused,
    /// 413: the body, or one of its parts, is over the size limit.
    PayloadTooLarge,
    /// 415: the request's content type is not accepted here.
    UnsupportedContentType,
    /// 415: the image is not JPEG, PNG or WebP.
    UnsupportedImageFormat,
    /// 422: the body does not have the documented shape (a missing, unknown or mistyped
    /// field, named in `detail`).
    ValidationFailed,
    /// 422: a multipart enqueue without an `image` part.
    ImageMissing,
    /// 422: the image's header cannot be read.
    ImageUnreadable,
    /// 422: the image has more pixels than allowed.
    ImageTooLarge,
    /// 422: a URL (`image_url`, `webhook_url`, an endpoint's `url`) is not an `http` or
    /// `https` URL with a host.
    UrlInvalid,
    /// 422: the URL's host is private, loopback, link-local or a metadata address.
    UrlForbiddenHost,
    /// 422: `metadata` is not a JSON object, or is too large.
    MetadataInvalid,
    /// 422: `model_id` is malformed.
    ModelIdInvalid,
    /// 422: `model_id` names no model this service offers (`GET /models` lists them).
    ModelUnknown,
    /// 422: an unknown diet tag.
    DietInvalid,
    /// 422: `lang` is not a language tag.
    LangInvalid,
    /// 422: the `Idempotency-Key` header is malformed.
    IdempotencyKeyInvalid,
    /// 409: the `Idempotency-Key` was used before with a different request.
    IdempotencyKeyReused,
    /// 422: `client_reference` is malformed.
    ClientReferenceInvalid,
    /// 409: the partner has as many webhook endpoints as allowed.
    WebhookLimitReached,
    /// 429: over the partner's enqueue rate; retry after `Retry-After` seconds.
    RateLimited,
    /// 429: the partner has as many jobs queued or in progress as allowed.
    QueueFull,
    /// 500: an internal error; it was logged.
    InternalError,
    /// 503: the image store is unavailable; retry after `Retry-After` seconds.
    StorageUnavailable,
    /// 503: the database is unavailable; retry after `Retry-After` seconds.
    DatabaseUnavailable,
    /// 507: the server's disk is full; nothing was written. Retry later.
    StorageFull,
}

impl ProblemCode {
    pub fn status(self) -> StatusCode {
        use ProblemCode::*;
        match self {
            BadRequest | MalformedJson | MalformedMultipart | InvalidParameter | InvalidCursor => {
                StatusCode::BAD_REQUEST
            }
            Unauthorized => StatusCode::UNAUTHORIZED,
            AdminRequired | CurrentKeyRequired => StatusCode::FORBIDDEN,
            NotFound | JobNotFound | JobErased | WebhookNotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            JobNotFinished | ClientReferenceReused | IdempotencyKeyReused | WebhookLimitReached => {
                StatusCode::CONFLICT
            }
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            RateLimited | QueueFull => StatusCode::TOO_MANY_REQUESTS,
            UnsupportedContentType | UnsupportedImageFormat => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ValidationFailed
            | ImageMissing
            | ImageUnreadable
            | ImageTooLarge
            | UrlInvalid
            | UrlForbiddenHost
            | MetadataInvalid
            | ModelIdInvalid
            | ModelUnknown
            | DietInvalid
            | LangInvalid
            | IdempotencyKeyInvalid
            | ClientReferenceInvalid => StatusCode::UNPROCESSABLE_ENTITY,
            InternalError => StatusCode::INTERNAL_SERVER_ERROR,
            StorageUnavailable | DatabaseUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            StorageFull => StatusCode::INSUFFICIENT_STORAGE,
        }
    }

    pub fn as_str(self) -> String {
        match self.to_json() {
            Some(serde_json::Value::String(code)) => code,
            _ => unreachable!("a derived Enum serialises as a string"),
        }
    }
}

/// A problem on its way out: the status, a stable code and a detail.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code:?}: {detail}")]
pub struct ApiProblem {
    pub status: StatusCode,
    pub code: ProblemCode,
    pub detail: String,
}

impl ApiProblem {
    pub fn new(code: ProblemCode, detail: impl Into<String>) -> Self {
        Self::with_status(code.status(), code, detail)
    }

    /// For poem's own errors, whose status (411, 408…) is kept as it was.
    fn with_status(status: StatusCode, code: ProblemCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
        }
    }

    pub fn to_problem(&self) -> Problem {
        Problem {
            problem_type: format!("urn:platescore:problem:{}", self.code.as_str()),
            title: self
                .status
                .canonical_reason()
                .unwrap_or("Error")
                .to_string(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            code: self.code,
        }
    }

    /// An internal failure: logged in full, answered without internals.
    #[track_caller]
    pub fn internal(err: impl std::fmt::Display) -> Self {
        let location = std::panic::Location::caller();
        tracing::error!(%location, error = %err, "internal error");
        Self::new(
            ProblemCode::InternalError,
            "an internal error occurred; it has been logged",
        )
    }
}

impl poem::error::ResponseError for ApiProblem {
    fn status(&self) -> StatusCode {
        self.status
    }

    fn as_response(&self) -> Response {
        problem_response(self)
    }
}

fn problem_response(problem: &ApiProblem) -> Response {
    let body = serde_json::to_vec(&poem_openapi::types::ToJSON::to_json(&problem.to_problem()))
        .unwrap_or_default();
    let mut response = Response::builder()
        .status(problem.status)
        .content_type(PROBLEM_CONTENT_TYPE)
        .body(body);
    if problem.status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            "www-authenticate",
            poem::http::HeaderValue::from_static("Bearer"),
        );
    }
    if problem.status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(
            "retry-after",
            poem::http::HeaderValue::from(UNAVAILABLE_RETRY_AFTER_SECONDS),
        );
    }
    response
}

/// The error responses of the API, as documented in the OpenAPI spec.
#[derive(Debug, ApiResponse)]
pub enum ApiError {
    /// The request is malformed (bad JSON, bad parameter).
    #[oai(status = 400, content_type = "application/problem+json")]
    BadRequest(Json<Problem>),
    /// The API key is missing, unknown or revoked.
    #[oai(status = 401, content_type = "application/problem+json")]
    Unauthorized(Json<Problem>),
    /// The key is valid but may not do this (an admin endpoint).
    #[oai(status = 403, content_type = "application/problem+json")]
    Forbidden(Json<Problem>),
    /// No such job (or endpoint) for this partner.
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
    /// The resource is not in a state that allows this (a job not finished yet).
    #[oai(status = 409, content_type = "application/problem+json")]
    Conflict(Json<Problem>),
    /// The request body is over the size limit.
    #[oai(status = 413, content_type = "application/problem+json")]
    PayloadTooLarge(Json<Problem>),
    /// The content type, or the image format, is not supported.
    #[oai(status = 415, content_type = "application/problem+json")]
    UnsupportedMediaType(Json<Problem>),
    /// The request is well-formed but cannot be accepted (see `code`).
    #[oai(status = 422, content_type = "application/problem+json")]
    UnprocessableEntity(Json<Problem>),
    /// An internal error.
    #[oai(status = 500, content_type = "application/problem+json")]
    Internal(Json<Problem>),
    /// A dependency (database, object store) is unavailable; nothing was written. Retry
    /// after `Retry-After` seconds.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(
        Json<Problem>,
        /// Seconds to wait before trying again.
        #[oai(header = "Retry-After")]
        u64,
    ),
    /// The server's disk is full; nothing was written.
    #[oai(status = 507, content_type = "application/problem+json")]
    InsufficientStorage(Json<Problem>),
}

impl From<ApiProblem> for ApiError {
    fn from(problem: ApiProblem) -> Self {
        let body = Json(problem.to_problem());
        match problem.status.as_u16() {
            400 => Self::BadRequest(body),
            401 => Self::Unauthorized(body),
            403 => Self::Forbidden(body),
            404 => Self::NotFound(body),
            409 => Self::Conflict(body),
            413 => Self::PayloadTooLarge(body),
            415 => Self::UnsupportedMediaType(body),
            422 => Self::UnprocessableEntity(body),
            503 => Self::Unavailable(body, UNAVAILABLE_RETRY_AFTER_SECONDS),
            507 => Self::InsufficientStorage(body),
            _ => Self::Internal(body),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

macro_rules! into_api_error {
    ($($source:ty),*) => {$(
        impl From<$source> for ApiError {
            fn from(err: $source) -> Self {
                ApiProblem::from(err).into()
            }
        }
    )*};
}
into_api_error!(StoreError, ObjectStoreError, IntakeError);

impl From<StoreError> for ApiProblem {
    #[track_caller]
    fn from(err: StoreError) -> Self {
        if err.is_unavailable() {
            tracing::warn!(error = %err, "database unavailable");
            return ApiProblem::new(
                ProblemCode::DatabaseUnavailable,
                "the database is unavailable; retry later",
            );
        }
        if err.is_full() {
            tracing::error!(error = %err, "the database's disk is full");
            return ApiProblem::new(
                ProblemCode::StorageFull,
                "the server's storage is full; nothing was written",
            );
        }
        match err {
            // None is the client's doing: logged, and answered without details.
            StoreError::Db(_)
            | StoreError::MigrationsPending { .. }
            | StoreError::CreateDir { .. }
            | StoreError::PartnerNotFound(_) => ApiProblem::internal(err),
        }
    }
}

impl From<ObjectStoreError> for ApiProblem {
    fn from(err: ObjectStoreError) -> Self {
        tracing::error!(error = %err, "object store failure");
        if err.is_full() {
            return ApiProblem::new(
                ProblemCode::StorageFull,
                "the server's storage is full; nothing was written",
            );
        }
        ApiProblem::new(
            ProblemCode::StorageUnavailable,
            "the image store is unavailable; retry later",
        )
    }
}

impl From<HeaderError> for ApiProblem {
    fn from(err: HeaderError) -> Self {
        let code = match err {
            HeaderError::UnsupportedFormat => ProblemCode::UnsupportedImageFormat,
            HeaderError::Unreadable(_) => ProblemCode::ImageUnreadable,
            HeaderError::TooManyPixels { .. } => ProblemCode::ImageTooLarge,
        };
        ApiProblem::new(code, err.to_string())
    }
}

fn outbound_problem(field: &str, err: OutboundError) -> ApiProblem {
    let code = match err {
        OutboundError::ForbiddenHost(_) => ProblemCode::UrlForbiddenHost,
        _ => ProblemCode::UrlInvalid,
    };
    ApiProblem::new(code, format!("{field}: {err}"))
}

impl From<IntakeError> for ApiProblem {
    fn from(err: IntakeError) -> Self {
        let code = match err {
            IntakeError::Image(e) => return e.into(),
            IntakeError::ImageUrl(e) => return outbound_problem("image_url", e),
            IntakeError::WebhookUrl(e) => return outbound_problem("webhook_url", e),
            IntakeError::Store(e) => return e.into(),
            IntakeError::NotRecorded(_) => ProblemCode::DatabaseUnavailable,
            IntakeError::Objects(e) => return e.into(),
            IntakeError::NoImage => ProblemCode::ImageMissing,
            IntakeError::Metadata(_) => ProblemCode::MetadataInvalid,
            IntakeError::ModelId(_) => ProblemCode::ModelIdInvalid,
            IntakeError::ModelUnknown(_) => ProblemCode::ModelUnknown,
            IntakeError::Diets(_) => ProblemCode::DietInvalid,
            IntakeError::Lang(_) => ProblemCode::LangInvalid,
            IntakeError::IdempotencyKey(_) => ProblemCode::IdempotencyKeyInvalid,
            IntakeError::IdempotencyKeyReused => ProblemCode::IdempotencyKeyReused,
            IntakeError::ClientReference(_) => ProblemCode::ClientReferenceInvalid,
            IntakeError::ClientReferenceReused => ProblemCode::ClientReferenceReused,
            // Enqueue answers it itself, with its headers.
            IntakeError::QueueFull { .. } => ProblemCode::QueueFull,
        };
        ApiProblem::new(code, err.to_string())
    }
}

/// Turns any error that reached the edge of the app into a problem response: errors the
/// handlers built pass through; poem's own (parse errors, unknown routes, auth) get a code.
/// The operation the error came from stays on the response, for the metrics.
pub fn any_error_to_problem(err: poem::Error) -> Response {
    let operation = err.data::<poem_openapi::OperationId>().copied();
    let mut response = problem_for(err);
    if let Some(operation) = operation {
        response.set_data(operation);
    }
    response
}

fn problem_for(err: poem::Error) -> Response {
    if let Some(problem) = err.downcast_ref::<ApiProblem>() {
        return problem_response(problem);
    }
    if err.is_from_response() {
        return err.into_response();
    }
    let status = err.status();
    let code = if err.is::<poem_openapi::error::AuthorizationError>()
        || status == StatusCode::UNAUTHORIZED
    {
        ProblemCode::Unauthorized
    } else if err.is::<poem_openapi::error::ContentTypeError>() {
        ProblemCode::UnsupportedContentType
    } else if err.is::<poem_openapi::error::ParsePathError>()
        || err.is::<poem_openapi::error::ParseParamError>()
    {
        ProblemCode::InvalidParameter
    } else {
        match status {
            StatusCode::NOT_FOUND => ProblemCode::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => ProblemCode::MethodNotAllowed,
            StatusCode::REQUEST_TIMEOUT => ProblemCode::RequestTimeout,
            StatusCode::PAYLOAD_TOO_LARGE => ProblemCode::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ProblemCode::UnsupportedContentType,
            s if s.is_server_error() => {
                return problem_response(&ApiProblem::internal(&err));
            }
            _ => ProblemCode::BadRequest,
        }
    };
    let detail = match code {
        ProblemCode::Unauthorized => {
            "a valid API key is required: `Authorization: Bearer <key>` or `X-API-Key: <key>`"
                .to_string()
        }
        _ => err.to_string(),
    };
    problem_response(&ApiProblem::with_status(status, code, detail))
}

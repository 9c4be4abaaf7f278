//! Errors as RFC 9457 problem details (`application/problem+json`), each with a stable
//! machine-readable `code`. Every subsystem error becomes HTTP here, and only here.

use poem::{http::StatusCode, Response};
use poem_openapi::{payload::Json, ApiResponse, Object};

use crate::{
    imaging::HeaderError, intake::IntakeError, objects::ObjectStoreError, outbound::OutboundError,
    store::StoreError,
};

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// A problem detail (RFC 9457). `code` is stable; `detail` is for people and may change.
#[derive(Debug, Clone, Object)]
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
    /// Stable machine-readable code, e.g. `image_too_large`.
    pub code: String,
}

/// A problem on its way out: the status, a stable code and a detail.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct ApiProblem {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
}

impl ApiProblem {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
        }
    }

    pub fn to_problem(&self) -> Problem {
        Problem {
            problem_type: format!("urn:platescore:problem:{}", self.code),
            title: self
                .status
                .canonical_reason()
                .unwrap_or("Error")
                .to_string(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            code: self.code.to_string(),
        }
    }

    /// An internal failure: logged in full, answered without internals.
    #[track_caller]
    pub fn internal(err: impl std::fmt::Display) -> Self {
        let location = std::panic::Location::caller();
        tracing::error!(%location, error = %err, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
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
    /// A dependency (database, object store) is unavailable; retry later.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>),
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
            503 => Self::Unavailable(body),
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
        ApiProblem::internal(err)
    }
}

impl From<ObjectStoreError> for ApiProblem {
    fn from(err: ObjectStoreError) -> Self {
        tracing::error!(error = %err, "object store failure");
        ApiProblem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            "the image store is unavailable; retry later",
        )
    }
}

impl From<HeaderError> for ApiProblem {
    fn from(err: HeaderError) -> Self {
        let status = match err {
            HeaderError::UnsupportedFormat => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            HeaderError::Unreadable(_) | HeaderError::TooManyPixels { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
        };
        ApiProblem::new(status, err.code(), err.to_string())
    }
}

fn outbound_problem(field: &str, err: OutboundError) -> ApiProblem {
    let code = match err {
        OutboundError::ForbiddenHost(_) => "url_forbidden_host",
        _ => "url_invalid",
    };
    ApiProblem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        code,
        format!("{field}: {err}"),
    )
}

impl From<IntakeError> for ApiProblem {
    fn from(err: IntakeError) -> Self {
        let unprocessable =
            |code, detail: String| ApiProblem::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail);
        match err {
            IntakeError::NoImage => unprocessable("image_missing", err.to_string()),
            IntakeError::BothImageAndUrl => unprocessable("image_ambiguous", err.to_string()),
            IntakeError::Image(e) => e.into(),
            IntakeError::ImageUrl(e) => outbound_problem("image_url", e),
            IntakeError::WebhookUrl(e) => outbound_problem("webhook_url", e),
            IntakeError::Metadata(_) => unprocessable("metadata_invalid", err.to_string()),
            IntakeError::ModelId(_) => unprocessable("model_id_invalid", err.to_string()),
            IntakeError::Diets(_) => unprocessable("diet_invalid", err.to_string()),
            IntakeError::Lang(_) => unprocessable("lang_invalid", err.to_string()),
            IntakeError::IdempotencyKey(_) => {
                unprocessable("idempotency_key_invalid", err.to_string())
            }
            IntakeError::IdempotencyKeyReused => {
                unprocessable("idempotency_key_reused", err.to_string())
            }
            IntakeError::Store(e) => e.into(),
            IntakeError::Objects(e) => e.into(),
        }
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
        "unauthorized"
    } else if err.is::<poem_openapi::error::ContentTypeError>() {
        "unsupported_content_type"
    } else if err.is::<poem_openapi::error::ParsePathError>()
        || err.is::<poem_openapi::error::ParseParamError>()
    {
        "invalid_parameter"
    } else {
        match status {
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_content_type",
            s if s.is_server_error() => {
                return problem_response(&ApiProblem::internal(&err));
            }
            _ => "bad_request",
        }
    };
    let detail = match code {
        "unauthorized" => {
            "a valid API key is required: `Authorization: Bearer <key>` or `X-API-Key: <key>`"
                .to_string()
        }
        _ => err.to_string(),
    };
    problem_response(&ApiProblem::new(status, code, detail))
}

//! Request bodies: JSON whose errors are problem details, a streamed multipart upload that
//! hashes the image as it arrives, and the body-size limit.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use poem::{
    http::StatusCode, Body, Endpoint, IntoResponse, Middleware, Request, RequestBody, Response,
};
use poem_openapi::{
    impl_apirequest_for_payload,
    payload::{ParsePayload, Payload},
    registry::{MetaSchema, MetaSchemaRef, Registry},
    types::ParseFromJSON,
};
use sha2::{Digest, Sha256};

use super::problem::ApiProblem;
use crate::intake::{EnqueueRequest, UploadedImage};

/// A JSON body. Broken JSON is a `400 malformed_json`; JSON of the wrong shape is a
/// `422 validation_failed`, with the field named in the detail.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: poem_openapi::types::Type> Payload for JsonBody<T> {
    const CONTENT_TYPE: &'static str = "application/json";

    fn check_content_type(content_type: &str) -> bool {
        matches!(content_type.parse::<mime::Mime>(), Ok(m) if m.type_() == "application"
            && (m.subtype() == "json" || m.suffix().is_some_and(|s| s == "json")))
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: ParseFromJSON> ParsePayload for JsonBody<T> {
    const IS_REQUIRED: bool = true;

    async fn from_request(_request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let data = body.take()?.into_bytes().await?;
        let value: serde_json::Value = serde_json::from_slice(&data).map_err(|e| {
            ApiProblem::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the body is not valid JSON: {e}"),
            )
        })?;
        if let Some(field) = first_missing_field::<T>(&value) {
            return Err(ApiProblem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                format!("the required field `{field}` is missing"),
            )
            .into());
        }
        T::parse_from_json(Some(value)).map(Self).map_err(|e| {
            ApiProblem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                e.into_message(),
            )
            .into()
        })
    }
}

/// poem-openapi's own message for a missing field does not name it; the schema does.
fn first_missing_field<T: poem_openapi::types::Type>(
    value: &serde_json::Value,
) -> Option<&'static str> {
    let object = value.as_object()?;
    let mut registry = Registry::new();
    T::register(&mut registry);
    let required = match T::schema_ref() {
        MetaSchemaRef::Reference(name) => registry.schemas.get(&name)?.required.clone(),
        MetaSchemaRef::Inline(schema) => schema.required.clone(),
    };
    required
        .into_iter()
        .find(|field| object.get(*field).is_none_or(serde_json::Value::is_null))
}

impl_apirequest_for_payload!(JsonBody<T>, T: ParseFromJSON);

/// The fields of a multipart enqueue. The image is streamed: hashed and gathered chunk by
/// chunk, never spooled to disk; the body limit bounds it.
#[derive(Debug, Default)]
pub struct UploadForm {
    pub image: Option<UploadedImage>,
    pub image_url: Option<String>,
    pub webhook_url: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub model_id: Option<String>,
    pub diets: Vec<String>,
    pub lang: Option<String>,
}

impl UploadForm {
    pub fn into_request(self, idempotency_key: Option<String>) -> EnqueueRequest {
        EnqueueRequest {
            image: self.image,
            image_url: self.image_url,
            webhook_url: self.webhook_url,
            metadata: self.metadata,
            model_id: self.model_id,
            diets: self.diets,
            lang: self.lang,
            idempotency_key,
        }
    }
}

const UPLOAD_FORM_SCHEMA: &str = "EnqueueUploadForm";

/// Text fields are small; this caps each one.
const MAX_TEXT_FIELD_BYTES: usize = 64 * 1024;

fn multipart_problem(err: impl std::fmt::Display) -> ApiProblem {
    ApiProblem::new(
        StatusCode::BAD_REQUEST,
        "malformed_multipart",
        format!("the multipart body is malformed: {err}"),
    )
}

impl Payload for UploadForm {
    const CONTENT_TYPE: &'static str = "multipart/form-data";

    fn check_content_type(content_type: &str) -> bool {
        matches!(content_type.parse::<mime::Mime>(), Ok(m) if m.type_() == mime::MULTIPART && m.subtype() == mime::FORM_DATA)
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Reference(UPLOAD_FORM_SCHEMA.to_string())
    }

    fn register(registry: &mut Registry) {
        let string = |description: &'static str| {
            MetaSchemaRef::Inline(Box::new(MetaSchema {
                description: Some(description),
                ..MetaSchema::new("string")
            }))
        };
        registry.create_schema::<Self, _>(UPLOAD_FORM_SCHEMA.to_string(), |_| MetaSchema {
            rust_typename: Some(std::any::type_name::<Self>()),
            description: Some(
                "An enqueue as `multipart/form-data`. Give exactly one of `image` and `image_url`.",
            ),
            properties: vec![
                (
                    "image",
                    MetaSchemaRef::Inline(Box::new(MetaSchema {
                        description: Some("The photo: JPEG, PNG or WebP bytes."),
                        ..MetaSchema::new_with_format("string", "binary")
                    })),
                ),
                (
                    "image_url",
                    string("`http` or `https` URL of the photo, fetched by a worker."),
                ),
                ("webhook_url", string("Where to POST the result.")),
                (
                    "metadata",
                    string("A JSON object of yours, as text; returned with the job."),
                ),
                (
                    "model_id",
                    string("The model to score with; the current default when absent."),
                ),
                (
                    "diets",
                    string("Diet tags that shape the tips, comma-separated (`vegan,low_sodium`)."),
                ),
                ("lang", string("Language of the tips, e.g. `en`.")),
            ],
            ..MetaSchema::new("object")
        });
    }
}

impl ParsePayload for UploadForm {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let boundary = request
            .content_type()
            .and_then(|ct| multer::parse_boundary(ct).ok())
            .ok_or_else(|| multipart_problem("no boundary in Content-Type"))?;
        let mut multipart = multer::Multipart::new(body.take()?.into_bytes_stream(), boundary);
        let mut form = UploadForm::default();
        while let Some(field) = multipart.next_field().await.map_err(multipart_problem)? {
            let name = field.name().unwrap_or_default().to_string();
            match name.as_str() {
                "image" => {
                    if form.image.is_some() {
                        return Err(multipart_problem("more than one `image` part").into());
                    }
                    form.image = Some(receive_image(field).await?);
                }
                "image_url" => form.image_url = Some(text(field).await?),
                "webhook_url" => form.webhook_url = Some(text(field).await?),
                "model_id" => form.model_id = Some(text(field).await?),
                "diets" => form.diets.push(text(field).await?),
                "lang" => form.lang = Some(text(field).await?),
                "metadata" => {
                    let raw = text(field).await?;
                    let value = serde_json::from_str(&raw).map_err(|e| {
                        ApiProblem::new(
                            StatusCode::BAD_REQUEST,
                            "malformed_json",
                            format!("metadata is not valid JSON: {e}"),
                        )
                    })?;
                    form.metadata = Some(value);
                }
                // Unknown parts are drained and ignored, as unknown JSON fields are.
                _ => drain(field).await?,
            }
        }
        Ok(form)
    }
}

impl_apirequest_for_payload!(UploadForm);

async fn receive_image(mut field: multer::Field<'static>) -> poem::Result<UploadedImage> {
    let mut hasher = Sha256::new();
    let mut bytes = BytesMut::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_problem)? {
        hasher.update(&chunk);
        bytes.extend_from_slice(&chunk);
    }
    Ok(UploadedImage {
        bytes: bytes.freeze(),
        sha256: hasher.finalize().into(),
    })
}

async fn text(mut field: multer::Field<'static>) -> poem::Result<String> {
    let name = field.name().unwrap_or_default().to_string();
    let mut data = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_problem)? {
        if data.len() + chunk.len() > MAX_TEXT_FIELD_BYTES {
            return Err(ApiProblem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the `{name}` part is over {MAX_TEXT_FIELD_BYTES} bytes"),
            )
            .into());
        }
        data.extend_from_slice(&chunk);
    }
    String::from_utf8(data)
        .map(|s| s.trim().to_string())
        .map_err(|_| multipart_problem(format!("the `{name}` part is not UTF-8")).into())
}

async fn drain(mut field: multer::Field<'static>) -> poem::Result<()> {
    while field.chunk().await.map_err(multipart_problem)?.is_some() {}
    Ok(())
}

/// Refuses bodies over `max_bytes` with `413`: at once when `Content-Length` says so,
/// otherwise as soon as the streamed body passes the limit, without reading the rest.
pub struct BodyLimit {
    max_bytes: u64,
}

impl BodyLimit {
    pub fn new(max_bytes: u64) -> Self {
        Self { max_bytes }
    }
}

impl<E: Endpoint> Middleware<E> for BodyLimit {
    type Output = BodyLimitEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        BodyLimitEndpoint {
            inner,
            max_bytes: self.max_bytes,
        }
    }
}

pub struct BodyLimitEndpoint<E> {
    inner: E,
    max_bytes: u64,
}

impl<E: Endpoint> BodyLimitEndpoint<E> {
    fn too_large(&self) -> Response {
        ApiProblem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the request body is over the limit of {} bytes",
                self.max_bytes
            ),
        )
        .into_response()
    }
}

impl IntoResponse for ApiProblem {
    fn into_response(self) -> Response {
        poem::error::ResponseError::as_response(&self)
    }
}

impl<E: Endpoint> Endpoint for BodyLimitEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Self::Output> {
        let declared = req
            .headers()
            .get(poem::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max_bytes) {
            return Ok(self.too_large());
        }
        let tripped = Arc::new(AtomicBool::new(false));
        let max_bytes = self.max_bytes;
        let flag = tripped.clone();
        let mut seen = 0u64;
        let limited = req.take_body().into_bytes_stream().map(move |chunk| {
            let chunk: Bytes = chunk?;
            seen += chunk.len() as u64;
            if seen > max_bytes {
                flag.store(true, Ordering::Relaxed);
                return Err(std::io::Error::other("request body over the size limit"));
            }
            Ok(chunk)
        });
        req.set_body(Body::from_bytes_stream(limited));
        let result = self.inner.call(req).await;
        if tripped.load(Ordering::Relaxed) {
            return Ok(self.too_large());
        }
        result.map(IntoResponse::into_response)
    }
}

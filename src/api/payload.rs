//! Request bodies: JSON whose errors are problem details, a streamed multipart upload that
//! hashes the image as it arrives, and the body-size limit.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, LazyLock, Mutex,
    },
};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use poem::{Body, Endpoint, IntoResponse, Middleware, Request, RequestBody, Response};
use poem_openapi::{
    impl_apirequest_for_payload,
    payload::{ParsePayload, Payload},
    registry::{MetaSchema, MetaSchemaRef, Registry},
    types::{ParseFromJSON, Type},
};
use sha2::{Digest, Sha256};

use super::{
    dto::{
        Diet, HttpUrl, CLIENT_REFERENCE_PATTERN, LANG_PATTERN, MAX_LANG_LENGTH, MODEL_ID_PATTERN,
    },
    problem::{ApiProblem, ProblemCode},
    schema_check,
};
use crate::intake::{EnqueueRequest, ImageSource, UploadedImage};

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
                ProblemCode::MalformedJson,
                format!("the body is not valid JSON: {e}"),
            )
        })?;
        if let Some(problem) = shape_problem::<T>(&value) {
            return Err(problem.into());
        }
        T::parse_from_json(Some(value))
            .map(Self)
            .map_err(|e| ApiProblem::new(ProblemCode::ValidationFailed, e.into_message()).into())
    }
}

/// The body held to its published schema before poem-openapi parses it, field by field,
/// so that each field's problem has its own code (`diet_invalid`, `url_invalid`…) and a
/// detail naming it. poem-openapi alone would let `null` through where the schema forbids
/// it, turn numbers into strings, and word a missing field without its name.
fn shape_problem<T: poem_openapi::types::Type>(value: &serde_json::Value) -> Option<ApiProblem> {
    let object = value.as_object()?;
    let schemas = BodySchema::of::<T>();
    let problem = |code, detail| Some(ApiProblem::new(code, detail));
    for required in schemas.body["required"].as_array().into_iter().flatten() {
        let name = required.as_str().unwrap_or_default();
        if object.get(name).is_none_or(serde_json::Value::is_null) {
            return problem(
                ProblemCode::ValidationFailed,
                format!("the required field `{name}` is missing"),
            );
        }
    }
    let properties = schemas.body["properties"].as_object()?;
    let resolve = |name: &str| schemas.components.get(name).cloned();
    for (name, field) in object {
        let Some(field_schema) = properties.get(name) else {
            continue; // poem-openapi refuses unknown fields, naming them
        };
        if let Err(detail) = schema_check::check_at(name, field, field_schema, &resolve) {
            return problem(field_code(name), detail);
        }
    }
    None
}

/// The code of a problem with one field of a request body.
fn field_code(field: &str) -> ProblemCode {
    match field {
        "image_url" | "webhook_url" | "url" => ProblemCode::UrlInvalid,
        "metadata" => ProblemCode::MetadataInvalid,
        "model_id" => ProblemCode::ModelIdInvalid,
        "diets" => ProblemCode::DietInvalid,
        "lang" => ProblemCode::LangInvalid,
        "client_reference" => ProblemCode::ClientReferenceInvalid,
        _ => ProblemCode::ValidationFailed,
    }
}

/// A body type's schema and the component schemas it refers to, as JSON; made once per type.
struct BodySchema {
    body: serde_json::Value,
    components: HashMap<String, serde_json::Value>,
}

impl BodySchema {
    fn of<T: poem_openapi::types::Type>() -> Arc<Self> {
        static MADE: LazyLock<Mutex<HashMap<&'static str, Arc<BodySchema>>>> =
            LazyLock::new(Default::default);
        let mut made = MADE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        made.entry(std::any::type_name::<T>())
            .or_insert_with(|| {
                let mut registry = Registry::new();
                T::register(&mut registry);
                let components: HashMap<String, serde_json::Value> = registry
                    .schemas
                    .iter()
                    .map(|(name, schema)| {
                        (
                            name.clone(),
                            serde_json::to_value(schema).unwrap_or_default(),
                        )
                    })
                    .collect();
                let body = match T::schema_ref() {
                    MetaSchemaRef::Reference(name) => {
                        components.get(&name).cloned().unwrap_or_default()
                    }
                    MetaSchemaRef::Inline(schema) => {
                        serde_json::to_value(&*schema).unwrap_or_default()
                    }
                };
                Arc::new(Self { body, components })
            })
            .clone()
    }
}

impl_apirequest_for_payload!(JsonBody<T>, T: ParseFromJSON);

/// The fields of a multipart enqueue. The image is streamed: hashed and gathered chunk by
/// chunk into one buffer sized from `Content-Length`, never spooled to disk; the body limit
/// bounds it, and the upload memory budget (`upload_memory`) how many are held at once.
#[derive(Debug, Default)]
pub struct UploadForm {
    pub image: Option<UploadedImage>,
    pub webhook_url: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub model_id: Option<String>,
    pub diets: Vec<String>,
    pub lang: Option<String>,
    pub client_reference: Option<String>,
}

impl UploadForm {
    pub fn into_request(self, idempotency_key: Option<String>) -> EnqueueRequest {
        EnqueueRequest {
            image: self.image.map(ImageSource::Upload),
            webhook_url: self.webhook_url,
            metadata: self.metadata,
            model_id: self.model_id,
            diets: self.diets,
            lang: self.lang,
            idempotency_key,
            client_reference: self.client_reference,
        }
    }
}

const UPLOAD_FORM_SCHEMA: &str = "EnqueueUploadForm";

/// Text fields are small; this caps each one.
const MAX_TEXT_FIELD_BYTES: usize = 64 * 1024;

fn multipart_problem(err: impl std::fmt::Display) -> ApiProblem {
    ApiProblem::new(
        ProblemCode::MalformedMultipart,
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
        Diet::register(registry);
        let text = |description: &'static str, pattern: &str, max_length: usize| {
            MetaSchemaRef::Inline(Box::new(MetaSchema {
                description: Some(description),
                pattern: Some(pattern.to_string()),
                max_length: Some(max_length),
                ..MetaSchema::new("string")
            }))
        };
        let url = |description: &'static str| {
            let mut schema = match HttpUrl::schema_ref() {
                MetaSchemaRef::Inline(schema) => *schema,
                MetaSchemaRef::Reference(_) => MetaSchema::new("string"),
            };
            schema.description = Some(description);
            MetaSchemaRef::Inline(Box::new(schema))
        };
        registry.create_schema::<Self, _>(UPLOAD_FORM_SCHEMA.to_string(), |_| MetaSchema {
            rust_typename: Some(std::any::type_name::<Self>()),
            description: Some(
                "An enqueue as `multipart/form-data`, with the photo's bytes in `image` (to \
                 enqueue by URL, send JSON). Parts not listed here are refused.",
            ),
            properties: vec![
                (
                    "image",
                    MetaSchemaRef::Inline(Box::new(MetaSchema {
                        description: Some("The photo: JPEG, PNG or WebP bytes."),
                        ..MetaSchema::new_with_format("string", "binary")
                    })),
                ),
                ("webhook_url", url("Where to POST the result.")),
                (
                    "metadata",
                    MetaSchemaRef::Inline(Box::new(MetaSchema {
                        description: Some(
                            "A JSON object of yours (a part with JSON text); returned with \
                             the job.",
                        ),
                        additional_properties: Some(Box::new(MetaSchemaRef::Inline(Box::new(
                            MetaSchema::ANY,
                        )))),
                        ..MetaSchema::new("object")
                    })),
                ),
                (
                    "model_id",
                    text(
                        "The model to score with (`GET /models` lists them; another id is `422 model_unknown`); the default model when absent.",
                        MODEL_ID_PATTERN,
                        100,
                    ),
                ),
                (
                    "diets",
                    MetaSchemaRef::Inline(Box::new(MetaSchema {
                        description: Some(
                            "Diet tags that shape the tips: a part per tag, or one part \
                             with tags separated by commas (`vegan,low_sodium`).",
                        ),
                        items: Some(Box::new(Diet::schema_ref())),
                        max_items: Some(8),
                        ..MetaSchema::new("array")
                    })),
                ),
                (
                    "lang",
                    text(
                        "Language of the tips, e.g. `en`.",
                        LANG_PATTERN,
                        MAX_LANG_LENGTH,
                    ),
                ),
                (
                    "client_reference",
                    text(
                        "Your own id for the job, unique among your jobs.",
                        CLIENT_REFERENCE_PATTERN,
                        128,
                    ),
                ),
            ],
            required: vec!["image"],
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
        // The image is most of the body: one buffer of that size, not one doubled as it grows.
        let size_hint = request
            .headers()
            .get(poem::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        let mut multipart = multer::Multipart::new(body.take()?.into_bytes_stream(), boundary);
        let mut form = UploadForm::default();
        while let Some(field) = multipart.next_field().await.map_err(multipart_problem)? {
            let name = field.name().unwrap_or_default().to_string();
            match name.as_str() {
                "image" => {
                    if form.image.is_some() {
                        return Err(multipart_problem("more than one `image` part").into());
                    }
                    form.image = Some(receive_image(field, size_hint).await?);
                }
                "webhook_url" => form.webhook_url = Some(url(field).await?),
                "model_id" => form.model_id = Some(text(field).await?),
                "diets" => form.diets.extend(diet_tags(&text(field).await?)),
                "lang" => form.lang = Some(text(field).await?),
                "client_reference" => form.client_reference = Some(text(field).await?),
                "metadata" => {
                    let raw = text(field).await?;
                    let value = serde_json::from_str(&raw).map_err(|e| {
                        ApiProblem::new(
                            ProblemCode::MalformedJson,
                            format!("metadata is not valid JSON: {e}"),
                        )
                    })?;
                    form.metadata = Some(value);
                }
                // Refused, as unknown JSON fields are, so that a misspelt part is noticed.
                _ => {
                    return Err(ApiProblem::new(
                        ProblemCode::ValidationFailed,
                        format!("unknown part `{name}`"),
                    )
                    .into())
                }
            }
        }
        Ok(form)
    }
}

impl_apirequest_for_payload!(UploadForm);

async fn receive_image(
    mut field: multer::Field<'static>,
    size_hint: usize,
) -> poem::Result<UploadedImage> {
    let mut hasher = Sha256::new();
    let mut bytes = BytesMut::with_capacity(size_hint);
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
                ProblemCode::PayloadTooLarge,
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

/// A URL part, held to the same pattern as URLs in JSON.
async fn url(field: multer::Field<'static>) -> poem::Result<String> {
    let name = field.name().unwrap_or_default().to_string();
    HttpUrl::parse(text(field).await?)
        .map(|url| url.0)
        .map_err(|e| ApiProblem::new(field_code(&name), format!("{name}: {e}")).into())
}

/// A `diets` part: tags separated by commas, or a JSON array of tags (as some client
/// generators send arrays).
fn diet_tags(part: &str) -> Vec<String> {
    match serde_json::from_str::<Vec<String>>(part) {
        Ok(tags) => tags,
        Err(_) => vec![part.to_string()],
    }
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
            ProblemCode::PayloadTooLarge,
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

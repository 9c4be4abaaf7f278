//! The OpenAPI document as published: poem-openapi's, plus what OpenAPI 3.0 and poem cannot
//! say themselves: the webhook events (`x-webhooks`, with their schemas in `components`),
//! the JSON part of a multipart upload, and an example for every schema. The `Allow`
//! header of a `405` is read from the same document.

use std::{collections::BTreeMap, sync::Arc};

use poem::{http::StatusCode, Endpoint, Middleware, Request, Response};
use poem_openapi::{registry::Registry, types::Type, OpenApiService};
use serde_json::{json, Value};

use super::{
    dto::{JobFailedEvent, JobSucceededEvent, WebhookTestEvent},
    Apis,
};

/// Examples of every schema, taken from real responses (`docs/api.md` says how they are
/// refreshed); a test checks each against its schema.
const EXAMPLES: &str = include_str!("examples.json");

/// The events POSTed to partners' webhooks: (event type, schema, what it announces).
const EVENTS: [(&str, &str, &str); 3] = [
    (
        "job.succeeded",
        "JobSucceededEvent",
        "A job has its result.",
    ),
    ("job.failed", "JobFailedEvent", "A job has failed for good."),
    (
        "webhook.test",
        "WebhookTestEvent",
        "Sent by `POST /webhooks/{id}/test`.",
    ),
];

/// The published document.
pub fn document(service: &OpenApiService<Apis, ()>) -> Value {
    let mut spec: Value = serde_json::from_str(&service.spec()).expect("poem writes JSON");
    add_events(&mut spec);
    describe_request_bodies(&mut spec);
    describe_checked_parameters(&mut spec);
    add_links(&mut spec);
    add_examples(&mut spec);
    flatten_ref_annotations(&mut spec);
    spec
}

/// poem writes a described or nullable reference as `allOf: [{$ref}, {description,
/// nullable}]`; some generators (openapi-python-client) drop every schema that holds one.
/// The equivalent `allOf: [{$ref}]` with the annotations beside it suits them all.
fn flatten_ref_annotations(value: &mut Value) {
    match value {
        Value::Object(object) => {
            let annotations = match object.get_mut("allOf").and_then(Value::as_array_mut) {
                Some(all) if all.len() == 2 && all[0].get("$ref").is_some() => match &all[1] {
                    Value::Object(extra)
                        if !extra.contains_key("$ref") && !extra.contains_key("type") =>
                    {
                        let extra = extra.clone();
                        all.truncate(1);
                        Some(extra)
                    }
                    _ => None,
                },
                _ => None,
            };
            if let Some(extra) = annotations {
                object.extend(extra);
            }
            object.values_mut().for_each(flatten_ref_annotations);
        }
        Value::Array(items) => items.iter_mut().for_each(flatten_ref_annotations),
        _ => {}
    }
}

/// OpenAPI links from what creates a resource to what uses it, for clients and for
/// Schemathesis's stateful phase: (operation, status, parameter, value, operations it feeds).
const LINKS: [(&str, &str, &str, &str, &[&str]); 3] = [
    (
        "enqueue",
        "202",
        "job_id",
        "$response.body#/job_id",
        &["get_status", "list_deliveries", "redeliver", "erase_job"],
    ),
    (
        "enqueue_upload",
        "202",
        "job_id",
        "$response.body#/job_id",
        &["get_status", "list_deliveries", "redeliver", "erase_job"],
    ),
    (
        "create_webhook",
        "201",
        "id",
        "$response.body#/id",
        &[
            "update_webhook",
            "delete_webhook",
            "test_webhook",
            "rotate_webhook_secret",
        ],
    ),
];

fn add_links(spec: &mut Value) {
    let Some(paths) = spec["paths"].as_object_mut() else {
        return;
    };
    for operation in paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
    {
        let id = operation["operationId"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        for (source, status, parameter, value, targets) in LINKS {
            if id != source {
                continue;
            }
            let links: serde_json::Map<String, Value> = targets
                .iter()
                .map(|target| {
                    let link = json!({
                        "operationId": target,
                        "parameters": {parameter: value},
                    });
                    (target.to_string(), link)
                })
                .collect();
            if let Some(response) = operation
                .pointer_mut(&format!("/responses/{status}"))
                .and_then(Value::as_object_mut)
            {
                response.insert("links".into(), Value::Object(links));
            }
        }
    }
}

fn add_events(spec: &mut Value) {
    let mut registry = Registry::new();
    JobSucceededEvent::register(&mut registry);
    JobFailedEvent::register(&mut registry);
    WebhookTestEvent::register(&mut registry);
    let schemas = spec["components"]["schemas"]
        .as_object_mut()
        .expect("the document has schemas");
    for (name, schema) in registry.schemas {
        if !schemas.contains_key(&name) {
            let schema = serde_json::to_value(schema).expect("schemas serialise");
            schemas.insert(name, schema);
        }
    }
    let webhooks: serde_json::Map<String, Value> = EVENTS
        .iter()
        .map(|(event, schema, summary)| {
            let operation = json!({
                "post": {
                    "summary": summary,
                    "description": "POSTed to your endpoint, signed per Standard Webhooks \
                        (`webhook-id`, `webhook-timestamp`, `webhook-signature`). Answer \
                        2xx within 15 s. Deduplicate by `webhook-id`: retries and \
                        redeliveries repeat it.",
                    "operationId": format!("on_{}", event.replace('.', "_")),
                    "requestBody": {
                        "required": true,
                        "content": {"application/json": {"schema": {
                            "$ref": format!("#/components/schemas/{schema}")
                        }}}
                    },
                    "responses": {
                        "200": {"description": "Taken (any 2xx will do)."},
                        "410": {"description": "Gone: stop. A registered endpoint is \
                            disabled; a job's own `webhook_url` is not retried."}
                    }
                }
            });
            (event.to_string(), operation)
        })
        .collect();
    spec["x-webhooks"] = Value::Object(webhooks);
}

/// Request bodies are exact: a `metadata` part holds JSON (so generated clients send an
/// object there as JSON), and fields or parts a body does not list are refused.
fn describe_request_bodies(spec: &mut Value) {
    let mut refs = Vec::new();
    if let Some(paths) = spec["paths"].as_object_mut() {
        for operation in paths.values_mut().filter_map(Value::as_object_mut) {
            for operation in operation.values_mut() {
                let Some(content) = operation
                    .pointer_mut("/requestBody/content")
                    .and_then(Value::as_object_mut)
                else {
                    continue;
                };
                for (media, body) in content.iter_mut() {
                    if media == "multipart/form-data" {
                        body["encoding"] = json!({"metadata": {"contentType": "application/json"}});
                    }
                    if let Some(name) = body
                        .pointer("/schema/$ref")
                        .and_then(Value::as_str)
                        .and_then(|r| r.strip_prefix("#/components/schemas/"))
                    {
                        refs.push(name.to_string());
                    }
                }
            }
        }
    }
    for name in refs {
        if let Some(schema) = spec
            .pointer_mut(&format!("/components/schemas/{name}"))
            .and_then(Value::as_object_mut)
        {
            schema.insert("additionalProperties".into(), Value::Bool(false));
        }
    }
}

/// Parameters checked by the handlers, each with its own problem code, rather than by
/// poem-openapi (whose failures are all `invalid_parameter`): their rules.
fn describe_checked_parameters(spec: &mut Value) {
    let rules = [
        (
            "Idempotency-Key",
            json!({"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]{1,255}$"}),
        ),
        (
            "cursor",
            json!({"type": "string", "pattern": super::jobs::CURSOR_PATTERN}),
        ),
    ];
    let Some(paths) = spec["paths"].as_object_mut() else {
        return;
    };
    for operation in paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
    {
        let parameters = operation
            .get_mut("parameters")
            .and_then(Value::as_array_mut);
        for parameter in parameters.into_iter().flatten() {
            for (name, rule) in &rules {
                if parameter["name"] == *name {
                    parameter["schema"] = rule.clone();
                }
            }
        }
    }
}

/// An example on every schema, and on every operation's request and response bodies (the
/// example of the schema each names), where clients and tools look for them.
fn add_examples(spec: &mut Value) {
    let examples: BTreeMap<String, Value> =
        serde_json::from_str(EXAMPLES).expect("src/api/examples.json is JSON");
    if let Some(schemas) = spec
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        for (name, example) in &examples {
            if let Some(schema) = schemas.get_mut(name).and_then(Value::as_object_mut) {
                schema.insert("example".into(), example.clone());
            }
        }
    }
    let Some(paths) = spec.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for operation in paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
    {
        let example_of = |body: &Value| {
            body.pointer("/schema/$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.rsplit('/').next())
                .and_then(|name| examples.get(name))
                .cloned()
        };
        let mut contents: Vec<&mut serde_json::Map<String, Value>> = Vec::new();
        let Some(operation) = operation.as_object_mut() else {
            continue;
        };
        for (key, value) in operation.iter_mut() {
            match key.as_str() {
                "requestBody" => {
                    contents.extend(value.get_mut("content").and_then(Value::as_object_mut))
                }
                "responses" => contents.extend(
                    value
                        .as_object_mut()
                        .into_iter()
                        .flat_map(|responses| responses.iter_mut())
                        .filter(|(status, _)| status.starts_with('2'))
                        .filter_map(|(_, response)| response.get_mut("content"))
                        .filter_map(Value::as_object_mut),
                ),
                _ => {}
            }
        }
        for body in contents
            .into_iter()
            .flat_map(|content| content.values_mut())
        {
            if let Some(example) = example_of(body) {
                if let Some(body) = body.as_object_mut() {
                    body.insert("example".into(), example);
                }
            }
        }
    }
}

/// The methods each path of the document takes, for the `Allow` header of a `405`.
#[derive(Debug, Clone, Default)]
pub struct AllowedMethods {
    routes: Vec<(Vec<String>, String)>,
}

impl AllowedMethods {
    pub fn from_document(spec: &Value) -> Self {
        let mut routes = Vec::new();
        if let Some(paths) = spec["paths"].as_object() {
            for (path, item) in paths {
                let mut methods: Vec<String> = item
                    .as_object()
                    .into_iter()
                    .flat_map(|ops| ops.keys())
                    .map(|m| m.to_ascii_uppercase())
                    .collect();
                if methods.iter().any(|m| m == "GET") {
                    methods.push("HEAD".into());
                }
                methods.sort();
                routes.push((segments(path), methods.join(", ")));
            }
        }
        Self { routes }
    }

    /// The `Allow` value for a path, if the document has it.
    pub fn for_path(&self, path: &str) -> Option<&str> {
        let wanted = segments(path);
        self.routes
            .iter()
            .find(|(template, _)| {
                template.len() == wanted.len()
                    && template
                        .iter()
                        .zip(&wanted)
                        .all(|(t, w)| t.starts_with('{') || t == w)
            })
            .map(|(_, allow)| allow.as_str())
    }
}

fn segments(path: &str) -> Vec<String> {
    path.trim_matches('/')
        .split('/')
        .map(String::from)
        .collect()
}

/// Adds `Allow` to every `405` (RFC 9110 requires it): the document's methods for the path,
/// `GET, HEAD` for the few routes outside it.
pub struct AllowOn405(pub Arc<AllowedMethods>);

impl<E: Endpoint> Middleware<E> for AllowOn405 {
    type Output = AllowOn405Endpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        AllowOn405Endpoint {
            inner,
            allowed: self.0.clone(),
        }
    }
}

pub struct AllowOn405Endpoint<E> {
    inner: E,
    allowed: Arc<AllowedMethods>,
}

impl<E: Endpoint> Endpoint for AllowOn405Endpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Self::Output> {
        let path = req.uri().path().to_string();
        let mut response = self.inner.get_response(req).await;
        if response.status() == StatusCode::METHOD_NOT_ALLOWED {
            let allow = self.allowed.for_path(&path).unwrap_or("GET, HEAD");
            if let Ok(value) = poem::http::HeaderValue::from_str(allow) {
                response
                    .headers_mut()
                    .insert(poem::http::header::ALLOW, value);
            }
        }
        Ok(response)
    }
}

//! What the API sends and receives, one module per resource. These are not entities:
//! `From<…::Model>` builds them.

mod admin;
mod deliveries;
mod health;
mod jobs;
mod keys;
mod models;
mod webhooks;

use std::borrow::Cow;

use chrono::{DateTime, SecondsFormat, Utc};
use poem_openapi::{
    registry::{MetaSchema, MetaSchemaRef},
    types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type},
};
use serde_json::Value;

pub use admin::*;
pub use deliveries::*;
pub use health::*;
pub use jobs::*;
pub use keys::*;
pub use models::*;
pub use webhooks::*;

/// An instant in RFC 3339, always UTC with a `Z`, to the millisecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub DateTime<Utc>);

impl Type for Timestamp {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "string_date-time".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema::new_with_format("string", "date-time")))
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ToJSON for Timestamp {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(
            self.0.to_rfc3339_opts(SecondsFormat::Millis, true),
        ))
    }
}

impl ParseFromJSON for Timestamp {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::String(s)) => {
                Ok(Self(DateTime::parse_from_rfc3339(&s)?.with_timezone(&Utc)))
            }
            other => Err(ParseError::expected_type(other.unwrap_or_default())),
        }
    }
}

/// An `http` or `https` URL, published as `format: uri` with its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl(pub String);

/// An `http` or `https` URL (RFC 3986) whose host is a DNS name or an IPv4 address (IPv6
/// literals are refused), with an optional port, path, query and fragment.
/// The outbound policy still vets the host, and the addresses it resolves to.
pub const HTTP_URL_PATTERN: &str = concat!(
    r"^[Hh][Tt][Tt][Pp][Ss]?://",
    r"(([A-Za-z0-9-]+\.)*[A-Za-z][A-Za-z0-9-]*",
    r"|(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3})",
    r"(:([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?",
    r"(/([A-Za-z0-9._~!$&'()*+,;=:@/-]|%[0-9A-Fa-f]{2})*)?",
    r"(\?([A-Za-z0-9._~!$&'()*+,;=:@/?-]|%[0-9A-Fa-f]{2})*)?",
    r"(#([A-Za-z0-9._~!$&'()*+,;=:@/?-]|%[0-9A-Fa-f]{2})*)?$",
);
const MAX_URL_LENGTH: usize = 2048;

impl HttpUrl {
    /// Checks a URL against the published pattern and length.
    pub fn parse(text: String) -> Result<Self, String> {
        static PATTERN: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
            regex::Regex::new(HTTP_URL_PATTERN).expect("the URL pattern compiles")
        });
        if text.len() > MAX_URL_LENGTH || !PATTERN.is_match(&text) {
            return Err(format!(
                "an http or https URL whose host is a name or an IPv4 address, at most \
                 {MAX_URL_LENGTH} characters"
            ));
        }
        Ok(Self(text))
    }
}

impl Type for HttpUrl {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "string_uri".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema {
            min_length: Some(1),
            max_length: Some(MAX_URL_LENGTH),
            pattern: Some(HTTP_URL_PATTERN.to_string()),
            ..MetaSchema::new_with_format("string", "uri")
        }))
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ToJSON for HttpUrl {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.0.clone()))
    }
}

impl ParseFromJSON for HttpUrl {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::String(s)) => Self::parse(s).map_err(ParseError::custom),
            other => Err(ParseError::expected_type(other.unwrap_or_default())),
        }
    }
}

/// Rounds a probability or score for output: four decimals, and no `f32` noise
/// (`0.495`, not `0.4950000047683716`).
pub fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

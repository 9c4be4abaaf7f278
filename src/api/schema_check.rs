//! Checks a JSON value against a schema of the published document (the JSON Schema subset
//! OpenAPI 3.0 uses): request bodies, so that the server refuses exactly what the spec
//! refuses, each field with its own problem code; and, in the tests, every example.

use std::{
    collections::HashMap,
    sync::{Arc, LazyLock, Mutex},
};

use regex::Regex;
use serde_json::Value;

/// Finds the schema a `$ref` names.
pub type Resolve<'a> = dyn Fn(&str) -> Option<Value> + 'a;

/// Why `value` does not fit `schema`, naming where (`diets[2]`, `request.lang`).
pub fn check(value: &Value, schema: &Value, resolve: &Resolve) -> Result<(), String> {
    check_at("", value, schema, resolve)
}

/// The same, for the value at `path` of a larger document.
pub fn check_at(
    path: &str,
    value: &Value,
    schema: &Value,
    resolve: &Resolve,
) -> Result<(), String> {
    let at = |what: String| {
        if path.is_empty() {
            what
        } else {
            format!("{path}: {what}")
        }
    };
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let name = reference.rsplit('/').next().unwrap_or_default();
        let target = resolve(name).ok_or_else(|| at(format!("unknown schema `{name}`")))?;
        if value.is_null() && schema["nullable"] == true {
            return Ok(());
        }
        return check_at(path, value, &target, resolve);
    }
    if value.is_null() {
        // poem writes a nullable reference as `allOf: [{$ref}, {nullable: true}]`.
        let nullable = schema["nullable"] == true
            || schema["allOf"]
                .as_array()
                .is_some_and(|parts| parts.iter().any(|p| p["nullable"] == true));
        return if nullable {
            Ok(())
        } else {
            Err(at("may not be null".into()))
        };
    }
    for part in schema["allOf"].as_array().into_iter().flatten() {
        check_at(path, value, part, resolve)?;
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            let names: Vec<String> = allowed.iter().map(Value::to_string).collect();
            return Err(at(format!(
                "{} is not one of {}",
                shown(value),
                names.join(", ")
            )));
        }
    }
    match schema["type"].as_str().unwrap_or_default() {
        "string" => check_string(value, schema).map_err(at),
        "integer" if !(value.is_i64() || value.is_u64()) => Err(at("must be an integer".into())),
        "integer" | "number" => check_number(value, schema).map_err(at),
        "boolean" if !value.is_boolean() => Err(at("must be true or false".into())),
        "array" => check_array(path, value, schema, resolve),
        "object" => check_object(path, value, schema, resolve),
        _ => Ok(()),
    }
}

fn check_string(value: &Value, schema: &Value) -> Result<(), String> {
    let text = value.as_str().ok_or("must be a string")?;
    let chars = text.chars().count() as u64;
    if let Some(min) = schema["minLength"].as_u64().filter(|min| chars < *min) {
        return Err(format!("must be at least {min} characters"));
    }
    if let Some(max) = schema["maxLength"].as_u64().filter(|max| chars > *max) {
        return Err(format!("must be at most {max} characters"));
    }
    if let Some(pattern) = schema["pattern"].as_str() {
        if !compiled(pattern)?.is_match(text) {
            return Err(match schema["format"].as_str() {
                Some("uri") => format!(
                    "{} is not an http or https URL whose host is a name or an IPv4 address",
                    shown(value)
                ),
                _ => format!("{} does not match `{pattern}`", shown(value)),
            });
        }
    }
    Ok(())
}

fn check_number(value: &Value, schema: &Value) -> Result<(), String> {
    let number = value.as_f64().ok_or("must be a number")?;
    if let Some(min) = schema["minimum"].as_f64().filter(|min| number < *min) {
        return Err(format!("must be at least {min}"));
    }
    if let Some(max) = schema["maximum"].as_f64().filter(|max| number > *max) {
        return Err(format!("must be at most {max}"));
    }
    Ok(())
}

fn check_array(path: &str, value: &Value, schema: &Value, resolve: &Resolve) -> Result<(), String> {
    let items = value
        .as_array()
        .ok_or_else(|| format!("{path}: must be an array"))?;
    if let Some(min) = schema["minItems"]
        .as_u64()
        .filter(|min| (items.len() as u64) < *min)
    {
        return Err(format!("{path}: must have at least {min} items"));
    }
    if let Some(max) = schema["maxItems"]
        .as_u64()
        .filter(|max| items.len() as u64 > *max)
    {
        return Err(format!("{path}: must have at most {max} items"));
    }
    if let Some(item_schema) = schema.get("items") {
        for (i, item) in items.iter().enumerate() {
            check_at(&format!("{path}[{i}]"), item, item_schema, resolve)?;
        }
    }
    Ok(())
}

fn check_object(
    path: &str,
    value: &Value,
    schema: &Value,
    resolve: &Resolve,
) -> Result<(), String> {
    let object = value
        .as_object()
        .ok_or_else(|| format!("{path}: must be an object"))?;
    let join = |name: &str| {
        if path.is_empty() {
            name.to_string()
        } else {
            format!("{path}.{name}")
        }
    };
    for required in schema["required"].as_array().into_iter().flatten() {
        let name = required.as_str().unwrap_or_default();
        if !object.contains_key(name) {
            return Err(format!("`{}` is required", join(name)));
        }
    }
    let properties = schema["properties"].as_object();
    for (name, field) in object {
        match properties.and_then(|p| p.get(name)) {
            Some(field_schema) => check_at(&join(name), field, field_schema, resolve)?,
            None if schema["additionalProperties"] == false => {
                return Err(format!("`{}` is not a known field", join(name)));
            }
            None => {}
        }
    }
    Ok(())
}

/// A value for a message: JSON, cut short.
fn shown(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(80) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// Patterns compile once.
fn compiled(pattern: &str) -> Result<Arc<Regex>, String> {
    static CACHE: LazyLock<Mutex<HashMap<String, Arc<Regex>>>> = LazyLock::new(Default::default);
    let mut cache = CACHE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(regex) = cache.get(pattern) {
        return Ok(regex.clone());
    }
    let regex = Arc::new(Regex::new(pattern).map_err(|e| format!("bad pattern: {e}"))?);
    cache.insert(pattern.to_string(), regex.clone());
    Ok(regex)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schemas(name: &str) -> Option<Value> {
        (name == "Diet").then(|| json!({"type": "string", "enum": ["vegan", "halal"]}))
    }

    #[test]
    fn values_are_held_to_types_limits_patterns_and_enums() {
        let schema = json!({
            "type": "object",
            "required": ["lang"],
            "additionalProperties": false,
            "properties": {
                "lang": {"type": "string", "pattern": "^[a-z]{2}$", "maxLength": 2},
                "n": {"type": "integer", "minimum": 1, "maximum": 5},
                "note": {"type": "string", "nullable": true},
                "diets": {"type": "array", "maxItems": 2, "items": {"$ref": "#/components/schemas/Diet"}}
            }
        });
        let ok = |v: Value| check(&v, &schema, &schemas);
        assert_eq!(
            ok(json!({"lang": "en", "n": 3, "note": null, "diets": ["vegan"]})),
            Ok(())
        );
        for (bad, why) in [
            (json!({"n": 3}), "`lang` is required"),
            (json!({"lang": "eng"}), "lang: must be at most 2 characters"),
            (
                json!({"lang": "E1"}),
                "lang: \"E1\" does not match `^[a-z]{2}$`",
            ),
            (json!({"lang": 12}), "lang: must be a string"),
            (json!({"lang": "en", "n": 6}), "n: must be at most 5"),
            (json!({"lang": "en", "n": 1.5}), "n: must be an integer"),
            (
                json!({"lang": "en", "diets": ["keto"]}),
                "diets[0]: \"keto\" is not one of \"vegan\", \"halal\"",
            ),
            (
                json!({"lang": "en", "diets": null}),
                "diets: may not be null",
            ),
            (
                json!({"lang": "en", "langg": "en"}),
                "`langg` is not a known field",
            ),
        ] {
            assert_eq!(ok(bad.clone()), Err(why.to_string()), "{bad}");
        }
    }
}

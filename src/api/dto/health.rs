//! Readiness of a node.

use poem_openapi::{Enum, Object};

/// Whether a node, or one of its dependencies, can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum ReadinessState {
    Ok,
    Unavailable,
    /// Shutting down: finishing what it has, taking nothing new.
    Draining,
}

/// Readiness of each dependency.
#[derive(Debug, Clone, Object)]
pub struct Readiness {
    pub status: ReadinessState,
    /// `ok` or `unavailable`.
    pub database: ReadinessState,
    /// `ok` or `unavailable`.
    pub object_store: ReadinessState,
    /// The model runtime in use: `ort-cpu`, `ort-cuda`, `ort-tensorrt` or `tract`; only on
    /// nodes that score.
    #[oai(skip_serializing_if_is_none)]
    pub runtime: Option<String>,
    /// The model version scored with; only on nodes that score.
    #[oai(skip_serializing_if_is_none)]
    pub model_version: Option<String>,
}

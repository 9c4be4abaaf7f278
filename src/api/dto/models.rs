use poem_openapi::Object;

use crate::{
    api::ScoringInfo,
    inference::{ModelCatalogue, ModelEntry},
};

/// A model jobs can name in `model_id`.
#[derive(Debug, Clone, Object)]
pub struct ModelSummary {
    /// What `model_id` takes.
    pub id: String,
    /// Whether jobs without a `model_id` run this model.
    pub default: bool,
    /// The model version results carry when its FP32 file runs (file, class table and
    /// tips); its INT8 file, where a node runs that, has its own.
    pub version: String,
    /// Classes the model tells apart.
    pub classes: u32,
    /// Of those, the classes a head trained on the partner's or our photos adds beside
    /// ImageNet's 1,000; null for ImageNet's alone.
    #[oai(nullable)]
    pub trained_classes: Option<u32>,
    /// Classes that are food, each with a group and a 1–5 score.
    pub food_classes: u32,
    /// Licence of the weights and of the data they were trained on.
    pub licence: String,
    /// The runtime this node scores the model with (`ort-cpu`, `ort-cuda`, `ort-tensorrt`
    /// or `tract`); null on nodes that only take requests, and for a model this node has
    /// not loaded yet (models other than the default load on their first job).
    #[oai(nullable)]
    pub runtime: Option<String>,
    /// The version this node's runtime produces (the INT8 file's where it runs that); null
    /// where `runtime` is.
    #[oai(nullable)]
    pub runtime_version: Option<String>,
}

#[derive(Debug, Clone, Object)]
pub struct ModelList {
    /// The default model's id.
    pub default: String,
    /// Sorted by id.
    pub models: Vec<ModelSummary>,
}

impl ModelList {
    pub fn new(catalogue: &ModelCatalogue, scoring: Option<&ScoringInfo>) -> Self {
        let default = catalogue.default_entry().id.clone();
        let summary = |entry: &ModelEntry| {
            let run = scoring.and_then(|s| s.scorers.loaded(&entry.id));
            ModelSummary {
                id: entry.id.clone(),
                default: entry.id == default,
                version: entry.version.clone(),
                classes: count(entry.classes),
                trained_classes: entry.trained_classes.map(count),
                food_classes: count(entry.food_classes),
                licence: entry.licence.clone(),
                runtime: run.map(|r| r.runtime_name().to_string()),
                runtime_version: run.map(|r| r.model().version.clone()),
            }
        };
        Self {
            models: catalogue.entries().iter().map(summary).collect(),
            default,
        }
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

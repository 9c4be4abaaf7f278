//! The models a node offers: every folder under the models folder that has a
//! `manifest.json`, read once at start (a restart picks up a new folder), and which of them
//! runs when a job names none.

use std::path::{Path, PathBuf};

use super::{
    model::{FoodModel, Precision},
    InferenceError,
};

/// One model folder, checked.
#[derive(Debug, Clone)]
pub struct ModelEntry {
    /// The folder's name; jobs select the model by it.
    pub id: String,
    pub dir: PathBuf,
    /// The FP32 file's model version (file, class table and tips), as results carry it.
    pub version: String,
    /// Classes it tells apart (ImageNet's, then a trained head's).
    pub classes: usize,
    /// Classes of a trained head (`None` for ImageNet's alone).
    pub trained_classes: Option<usize>,
    /// Classes the food table scores.
    pub food_classes: usize,
    pub licence: String,
}

#[derive(Debug, Clone)]
pub struct ModelCatalogue {
    entries: Vec<ModelEntry>,
    default: usize,
}

impl ModelCatalogue {
    /// Loads and checks every model folder under `dir` (sorted by id) and makes `default_id`
    /// the default. A broken folder, an empty catalogue or an unknown default is an error.
    pub fn scan(dir: &Path, default_id: &str) -> Result<Self, InferenceError> {
        let listing = std::fs::read_dir(dir)
            .map_err(|e| InferenceError::Model(format!("{}: {e}", dir.display())))?;
        let mut folders: Vec<PathBuf> = listing
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.join("manifest.json").is_file())
            .collect();
        folders.sort();
        let entries = folders
            .iter()
            .map(|folder| {
                let model = FoodModel::load(folder, Precision::Fp32)?;
                Ok(ModelEntry {
                    id: model.id.clone(),
                    dir: folder.clone(),
                    version: model.version.clone(),
                    classes: model.labels.len(),
                    trained_classes: model.head.map(|h| h.classes),
                    food_classes: model.table.food.len(),
                    licence: model.licence.clone(),
                })
            })
            .collect::<Result<Vec<_>, InferenceError>>()?;
        let default = entries
            .iter()
            .position(|e| e.id == default_id)
            .ok_or_else(|| {
                InferenceError::Model(format!(
                    "the default model {default_id:?} is not among {}'s model folders ({})",
                    dir.display(),
                    entries
                        .iter()
                        .map(|e| e.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        Ok(Self { entries, default })
    }

    pub fn entries(&self) -> &[ModelEntry] {
        &self.entries
    }

    pub fn default_entry(&self) -> &ModelEntry {
        &self.entries[self.default]
    }

    /// The model a job runs: the one it names, or the default. `None` for an unknown id.
    pub fn resolve(&self, id: Option<&str>) -> Option<&ModelEntry> {
        match id {
            None => Some(self.default_entry()),
            Some(id) => self.entries.iter().find(|e| e.id == id),
        }
    }
}

//! The model folder: the ONNX file, its manifest, labels, the food table and the tips.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{preprocess::InputSpec, runtime::ModelFile, tips::TipCatalogue, InferenceError};

#[derive(Debug, Deserialize)]
struct Manifest {
    /// When present, it must equal the folder's name (the id jobs select the model by).
    id: Option<String>,
    version: String,
    file: String,
    sha256: String,
    /// The same network quantised to INT8, for CPUs.
    int8: Option<ManifestFile>,
    input: ManifestInput,
    output: ManifestOutput,
    preprocess: ManifestPreprocess,
    normalisation: ManifestNormalisation,
    /// A trained head grafted beside ImageNet's (`models/food-scorer/train/`).
    head: Option<TrainedHead>,
    #[serde(default)]
    licence: String,
}

/// How much a photo's result comes from the trained head: 0 below `low` cosine similarity to
/// the head's class centroids, 1 from `high`, linear between.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Gate {
    pub low: f32,
    pub high: f32,
}

/// A head trained on the model's pooled features, beside ImageNet's. The output row is
/// ImageNet's logits, then the head's logits, then the photo's similarity to the head's
/// training photos; the result mixes both heads' probabilities by the [`Gate`].
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct TrainedHead {
    /// Index of the head's first class: the number of ImageNet classes before it.
    pub first: usize,
    pub classes: usize,
    /// Index of the similarity in the output row.
    pub similarity: usize,
    pub gate: Gate,
}

impl TrainedHead {
    /// The head's weight in the mixture for this similarity.
    pub fn weight(&self, similarity: f32) -> f32 {
        let Gate { low, high } = self.gate;
        ((similarity - low) / (high - low)).clamp(0.0, 1.0)
    }
}

#[derive(Debug, Deserialize)]
struct ManifestFile {
    version: String,
    file: String,
    sha256: String,
    /// INT8 only: `auto` runs it on ONNX Runtime's CPU provider. Set only once it agrees
    /// with FP32 (`tests/scorer.rs` holds the flag to the agreement).
    #[serde(default)]
    default_on_cpu: bool,
}

/// Which of a model folder's ONNX files runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    Fp32,
    Int8,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fp32 => "fp32",
            Self::Int8 => "int8",
        }
    }
}

#[derive(Debug, Deserialize)]
struct ManifestInput {
    #[serde(default = "default_input_name")]
    name: String,
    height: u32,
    width: u32,
}

fn default_input_name() -> String {
    "input".into()
}

#[derive(Debug, Deserialize)]
struct ManifestOutput {
    classes: usize,
    labels: String,
}

#[derive(Debug, Deserialize)]
struct ManifestPreprocess {
    resize_shorter_side: u32,
}

#[derive(Debug, Deserialize)]
struct ManifestNormalisation {
    mean: [f32; 3],
    std: [f32; 3],
}

/// One ImageNet class that is food, and how healthy it is.
#[derive(Debug, Clone, Deserialize)]
pub struct FoodClass {
    pub index: usize,
    pub label: String,
    pub group: String,
    pub score: u8,
    pub rationale: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HintClass {
    pub index: usize,
    pub label: String,
}

#[derive(Debug, Deserialize)]
struct FoodTableFile {
    version: String,
    food_threshold: f32,
    food: Vec<FoodClass>,
    hint: Vec<HintClass>,
}

/// Which classes are food, their scores, and the food/not-food threshold.
#[derive(Debug)]
pub struct FoodTable {
    pub version: String,
    /// Food plus hint probability mass needed to call a photo food.
    pub food_threshold: f32,
    pub food: HashMap<usize, FoodClass>,
    pub hints: HashSet<usize>,
}

/// Everything needed to turn pixels into a scored result.
#[derive(Debug)]
pub struct FoodModel {
    /// The model folder's name, which jobs select it by.
    pub id: String,
    pub onnx_path: PathBuf,
    /// The ONNX file's SHA-256, checked against the manifest at load.
    pub onnx_sha256: String,
    /// Name of the model's image input.
    pub input_name: String,
    /// Which of the folder's files this is.
    pub precision: Precision,
    /// Model file, food table and tips versions together: stored with every result.
    pub version: String,
    pub input: InputSpec,
    pub labels: Vec<String>,
    pub table: FoodTable,
    pub tips: TipCatalogue,
    /// Values in the model's output row.
    pub outputs: usize,
    pub head: Option<TrainedHead>,
    pub licence: String,
}

fn model_error(path: &Path, message: impl std::fmt::Display) -> InferenceError {
    InferenceError::Model(format!("{}: {message}", path.display()))
}

fn read(path: &Path) -> Result<String, InferenceError> {
    std::fs::read_to_string(path).map_err(|e| model_error(path, e))
}

/// A model's id: its folder's name, which must be a valid `model_id`.
pub fn folder_id(dir: &Path) -> Result<String, InferenceError> {
    dir.file_name()
        .and_then(|name| name.to_str())
        .filter(|name| is_model_id(name))
        .map(str::to_string)
        .ok_or_else(|| {
            model_error(
                dir,
                "the folder's name is not a valid model id (A-Z a-z 0-9 - _ .)",
            )
        })
}

/// 1 to 100 characters of `A-Z a-z 0-9 - _ .`.
pub fn is_model_id(id: &str) -> bool {
    (1..=100).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn read_manifest(dir: &Path) -> Result<Manifest, InferenceError> {
    let path = dir.join("manifest.json");
    serde_json::from_str(&read(&path)?).map_err(|e| model_error(&path, e))
}

impl FoodModel {
    /// Whether the folder's INT8 file is the one to run on ONNX Runtime's CPU provider.
    pub fn int8_is_cpu_default(dir: &Path) -> Result<bool, InferenceError> {
        Ok(read_manifest(dir)?.int8.is_some_and(|f| f.default_on_cpu))
    }

    /// Loads and cross-checks the model folder with the ONNX file of `precision`: its SHA-256
    /// must match the manifest, and every food class's label must match the model's labels.
    pub fn load(dir: &Path, precision: Precision) -> Result<Self, InferenceError> {
        let manifest_path = dir.join("manifest.json");
        let manifest = read_manifest(dir)?;
        let file = match precision {
            Precision::Fp32 => ManifestFile {
                version: manifest.version.clone(),
                file: manifest.file.clone(),
                sha256: manifest.sha256.clone(),
                default_on_cpu: false,
            },
            Precision::Int8 => manifest
                .int8
                .ok_or_else(|| model_error(&manifest_path, "lists no INT8 file (`int8`)"))?,
        };
        let onnx_path = dir.join(&file.file);
        let onnx = std::fs::read(&onnx_path).map_err(|e| model_error(&onnx_path, e))?;
        let actual = hex::encode(Sha256::digest(&onnx));
        if actual != file.sha256 {
            return Err(model_error(
                &onnx_path,
                format!(
                    "SHA-256 {actual} does not match the manifest's {}",
                    file.sha256
                ),
            ));
        }
        let id = folder_id(dir)?;
        if manifest.id.as_ref().is_some_and(|named| *named != id) {
            return Err(model_error(
                &manifest_path,
                format!("id {:?} is not the folder's name {id:?}", manifest.id),
            ));
        }
        let head = manifest.head;
        // Every output but the head's similarity has a label.
        let labelled = match &head {
            None => manifest.output.classes,
            Some(h) => {
                let consistent = h.first + h.classes == h.similarity
                    && h.similarity + 1 == manifest.output.classes
                    && h.first > 0
                    && h.classes > 0
                    && h.gate.low < h.gate.high;
                if !consistent {
                    return Err(model_error(
                        &manifest_path,
                        "`head` must cover the outputs after ImageNet's, then the similarity, with gate low < high",
                    ));
                }
                h.similarity
            }
        };
        let labels_path = dir.join(&manifest.output.labels);
        let labels: Vec<String> = read(&labels_path)?.lines().map(str::to_string).collect();
        if labels.len() != labelled {
            return Err(model_error(
                &labels_path,
                format!("{} labels, expected {labelled}", labels.len()),
            ));
        }

        let table_path = dir.join("food_classes.toml");
        let table: FoodTableFile =
            toml::from_str(&read(&table_path)?).map_err(|e| model_error(&table_path, e))?;
        for (index, label) in table
            .food
            .iter()
            .map(|f| (f.index, &f.label))
            .chain(table.hint.iter().map(|h| (h.index, &h.label)))
        {
            if labels.get(index) != Some(label) {
                return Err(model_error(
                    &table_path,
                    format!("class {index} is {:?}, not {label:?}", labels.get(index)),
                ));
            }
        }
        if let Some(bad) = table.food.iter().find(|f| !(1..=5).contains(&f.score)) {
            return Err(model_error(
                &table_path,
                format!("class {} has score {}, not 1 to 5", bad.index, bad.score),
            ));
        }

        let tips_path = dir.join("tips.toml");
        let tips =
            TipCatalogue::parse(&read(&tips_path)?).map_err(|e| model_error(&tips_path, e))?;

        if manifest.input.height != manifest.input.width {
            return Err(model_error(
                &manifest_path,
                "only square inputs are supported",
            ));
        }
        Ok(Self {
            id,
            onnx_path,
            onnx_sha256: file.sha256,
            input_name: manifest.input.name,
            precision,
            version: format!(
                "{}+classes.{}+tips.{}",
                file.version, table.version, tips.version
            ),
            input: InputSpec {
                size: manifest.input.width,
                resize_shorter: manifest.preprocess.resize_shorter_side,
                mean: manifest.normalisation.mean,
                std: manifest.normalisation.std,
            },
            labels,
            table: FoodTable {
                version: table.version,
                food_threshold: table.food_threshold,
                food: table.food.into_iter().map(|f| (f.index, f)).collect(),
                hints: table.hint.into_iter().map(|h| h.index).collect(),
            },
            tips,
            outputs: manifest.output.classes,
            head,
            licence: manifest.licence,
        })
    }

    /// What a model runtime needs of the ONNX file.
    pub fn file(&self) -> ModelFile<'_> {
        ModelFile {
            path: &self.onnx_path,
            sha256: &self.onnx_sha256,
            input_name: &self.input_name,
            input_size: self.input.size,
        }
    }

    /// The model shipped in `models/food-scorer` of this repository.
    pub fn default_dir() -> PathBuf {
        PathBuf::from("models/food-scorer")
    }
}

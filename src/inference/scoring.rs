//! From logits to a result: probabilities, the food mass, the weighted score, top labels, tips.

use serde::Serialize;

use super::{
    model::FoodModel,
    tips::{DietTag, Tip},
};

/// One of the model's top classes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelProbability {
    pub index: usize,
    pub label: String,
    pub probability: f64,
    /// The food group, when this class is food.
    pub food_group: Option<String>,
}

/// What the scorer concluded about one photo.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoreResult {
    pub is_food: bool,
    /// Healthiness from 1.0 to 5.0: the mean of the food classes' scores weighted by their
    /// probabilities. `None` when the photo is not food.
    pub score: Option<f64>,
    /// `score` rounded to a whole 1 to 5.
    pub rating: Option<u8>,
    /// The probability mass behind the score: the sum over food classes, 0 to 1.
    pub confidence: f64,
    /// Food plus tableware-hint mass, compared with the threshold to decide `is_food`.
    pub food_evidence: f64,
    /// The group with the most probability among the food classes.
    pub food_group: Option<String>,
    /// The five most probable classes.
    pub labels: Vec<LabelProbability>,
    pub tips: Vec<Tip>,
    pub lang: String,
    pub model_version: String,
}

/// Rounds for output, in `f64` so that it serialises without `f32` noise (`0.495`, not
/// `0.4950000047683716`): four decimals are plenty for a probability.
fn round4(x: f32) -> f64 {
    (f64::from(x) * 10_000.0).round() / 10_000.0
}

pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// Class probabilities from the model's output row. With a trained head, ImageNet's and the
/// head's softmaxes are mixed by the head's gate, so a photo unlike the head's training photos
/// keeps ImageNet's reading and one like them takes the head's.
pub fn probabilities(model: &FoodModel, outputs: &[f32]) -> Vec<f32> {
    match &model.head {
        None => softmax(outputs),
        Some(head) => {
            let weight = head.weight(outputs[head.similarity]);
            let imagenet = softmax(&outputs[..head.first]);
            let trained = softmax(&outputs[head.first..head.similarity]);
            imagenet
                .into_iter()
                .map(|p| p * (1.0 - weight))
                .chain(trained.into_iter().map(|p| p * weight))
                .collect()
        }
    }
}

/// Reads a model's output row (`model.outputs` values).
pub fn interpret(model: &FoodModel, outputs: &[f32], diets: &[DietTag], lang: &str) -> ScoreResult {
    let probabilities = probabilities(model, outputs);
    let table = &model.table;

    let mut food_mass = 0.0f32;
    let mut weighted = 0.0f32;
    let mut group_mass: Vec<(&str, f32)> = Vec::new();
    for (index, class) in &table.food {
        let p = probabilities[*index];
        food_mass += p;
        weighted += p * f32::from(class.score);
        match group_mass.iter_mut().find(|(g, _)| *g == class.group) {
            Some((_, mass)) => *mass += p,
            None => group_mass.push((&class.group, p)),
        }
    }
    let hint_mass: f32 = table.hints.iter().map(|&i| probabilities[i]).sum();
    let evidence = food_mass + hint_mass;
    let is_food = evidence >= table.food_threshold && food_mass > 0.0;

    let mut order: Vec<usize> = (0..probabilities.len()).collect();
    order.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]));
    let labels = order
        .iter()
        .take(5)
        .map(|&index| LabelProbability {
            index,
            label: model.labels[index].clone(),
            probability: round4(probabilities[index]),
            food_group: table.food.get(&index).map(|c| c.group.clone()),
        })
        .collect();

    let (score, rating, food_group, tips) = if is_food {
        let score = (weighted / food_mass).clamp(1.0, 5.0);
        let rating = score.round() as u8;
        group_mass.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
        let group = group_mass[0].0.to_string();
        let tips = model.tips.select(&group, rating, diets, lang);
        (
            Some((f64::from(score) * 100.0).round() / 100.0),
            Some(rating),
            Some(group),
            tips,
        )
    } else {
        (None, None, None, Vec::new())
    };

    ScoreResult {
        is_food,
        score,
        rating,
        confidence: round4(food_mass),
        food_evidence: round4(evidence),
        food_group,
        labels,
        tips,
        lang: lang.to_string(),
        model_version: model.version.clone(),
    }
}

//! `platescore eval DIR`: how a model does on labelled photos laid out as `food/<label>/…`
//! and `nonfood/<kind>/…`. Food/not-food recall, specificity and balanced accuracy, the mean
//! score per label, the healthy − indulgent gap, a confusion table of top-1 labels, and one
//! row per photo (`--csv`, or in `--json`).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::score::{collect, progress_bar, score_in_order, Outcome};
use crate::{config::Config, inference::Scorer, startup};

pub struct EvalArgs {
    pub dir: PathBuf,
    pub model: Option<String>,
    pub json: bool,
    pub labels: Option<PathBuf>,
    pub csv: Option<PathBuf>,
}

/// Which labels are healthy and which indulgent, for the gap between their mean scores.
/// A pattern ending in `*` matches every label it begins.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelGroups {
    healthy: Vec<String>,
    indulgent: Vec<String>,
}

fn matches_any(patterns: &[String], label: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => label.starts_with(prefix),
        None => p == label,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Food,
    Nonfood,
}

#[derive(Debug, Serialize)]
struct PhotoRow {
    path: String,
    kind: Kind,
    label: String,
    is_food: Option<bool>,
    score: Option<f64>,
    food_group: Option<String>,
    top_label: Option<String>,
    top_probability: Option<f64>,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct LabelStats {
    label: String,
    kind: Kind,
    photos: usize,
    called_food: usize,
    /// Over the photos called food.
    mean_score: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Gap {
    healthy_mean: Option<f64>,
    healthy_scored: usize,
    indulgent_mean: Option<f64>,
    indulgent_scored: usize,
    gap: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    model: String,
    model_version: String,
    runtime: String,
    photos: usize,
    errors: usize,
    /// Food photos called food.
    food_recall: Option<f64>,
    /// Non-food photos called not food.
    specificity: Option<f64>,
    balanced_accuracy: Option<f64>,
    labels: Vec<LabelStats>,
    gap: Option<Gap>,
    /// Per folder label: the model's top-1 labels and how often.
    confusion: BTreeMap<String, BTreeMap<String, usize>>,
    rows: Vec<PhotoRow>,
}

/// `(kind, label, file)` for every image under `food/<label>/` and `nonfood/<kind>/`.
fn photos(dir: &Path) -> anyhow::Result<Vec<(Kind, String, PathBuf)>> {
    let mut found = Vec::new();
    for (kind, folder) in [(Kind::Food, "food"), (Kind::Nonfood, "nonfood")] {
        let root = dir.join(folder);
        if !root.is_dir() {
            continue;
        }
        let mut labels: Vec<PathBuf> = std::fs::read_dir(&root)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        labels.sort();
        for label_dir in labels {
            let label = label_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let (files, _) = collect(std::slice::from_ref(&label_dir))?;
            found.extend(files.into_iter().map(|f| (kind, label.clone(), f)));
        }
    }
    anyhow::ensure!(
        !found.is_empty(),
        "{} has no photos under food/<label>/ or nonfood/<kind>/",
        dir.display()
    );
    Ok(found)
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| round(values.iter().sum::<f64>() / values.len() as f64))
}

fn round(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

fn ratio(part: usize, whole: usize) -> Option<f64> {
    (whole > 0).then(|| round(part as f64 / whole as f64))
}

fn row(kind: Kind, label: String, path: &Path, outcome: Outcome) -> PhotoRow {
    let path = path.display().to_string();
    match outcome {
        Ok(scored) => {
            let r = scored.result;
            let top = r.labels.first();
            PhotoRow {
                path,
                kind,
                label,
                is_food: Some(r.is_food),
                score: r.score,
                food_group: r.food_group,
                top_label: top.map(|l| l.label.clone()),
                top_probability: top.map(|l| l.probability),
                error: None,
            }
        }
        Err((code, message)) => PhotoRow {
            path,
            kind,
            label,
            is_food: None,
            score: None,
            food_group: None,
            top_label: None,
            top_probability: None,
            error: Some(format!("{code}: {message}")),
        },
    }
}

fn report(scorer: &Scorer, rows: Vec<PhotoRow>, groups: Option<&LabelGroups>) -> Report {
    let scored: Vec<&PhotoRow> = rows.iter().filter(|r| r.error.is_none()).collect();
    let count = |kind: Kind, food: bool| {
        scored
            .iter()
            .filter(|r| r.kind == kind && r.is_food == Some(food))
            .count()
    };
    let (food_hits, food_all) = (
        count(Kind::Food, true),
        count(Kind::Food, true) + count(Kind::Food, false),
    );
    let (nonfood_hits, nonfood_all) = (
        count(Kind::Nonfood, false),
        count(Kind::Nonfood, false) + count(Kind::Nonfood, true),
    );
    let food_recall = ratio(food_hits, food_all);
    let specificity = ratio(nonfood_hits, nonfood_all);
    let balanced_accuracy = match (food_recall, specificity) {
        (Some(a), Some(b)) => Some(round((a + b) / 2.0)),
        _ => None,
    };

    let mut by_label: BTreeMap<(String, bool), Vec<&PhotoRow>> = BTreeMap::new();
    for r in &scored {
        by_label
            .entry((r.label.clone(), r.kind == Kind::Nonfood))
            .or_default()
            .push(r);
    }
    let labels = by_label
        .iter()
        .map(|((label, _), rows)| {
            let scores: Vec<f64> = rows.iter().filter_map(|r| r.score).collect();
            LabelStats {
                label: label.clone(),
                kind: rows[0].kind,
                photos: rows.len(),
                called_food: rows.iter().filter(|r| r.is_food == Some(true)).count(),
                mean_score: mean(&scores),
            }
        })
        .collect();

    let gap = groups.map(|groups| {
        let scores_of = |patterns: &[String]| -> Vec<f64> {
            scored
                .iter()
                .filter(|r| r.kind == Kind::Food && matches_any(patterns, &r.label))
                .filter_map(|r| r.score)
                .collect()
        };
        let healthy = scores_of(&groups.healthy);
        let indulgent = scores_of(&groups.indulgent);
        let (healthy_mean, indulgent_mean) = (mean(&healthy), mean(&indulgent));
        Gap {
            healthy_mean,
            healthy_scored: healthy.len(),
            indulgent_mean,
            indulgent_scored: indulgent.len(),
            gap: healthy_mean.zip(indulgent_mean).map(|(h, i)| round(h - i)),
        }
    });

    let mut confusion: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for r in &scored {
        if let Some(top) = &r.top_label {
            *confusion
                .entry(r.label.clone())
                .or_default()
                .entry(top.clone())
                .or_default() += 1;
        }
    }

    Report {
        model: scorer.model().id.clone(),
        model_version: scorer.model().version.clone(),
        runtime: scorer.runtime_name().to_string(),
        photos: rows.len(),
        errors: rows.len() - scored.len(),
        food_recall,
        specificity,
        balanced_accuracy,
        labels,
        gap,
        confusion,
        rows,
    }
}

fn show(x: Option<f64>, decimals: usize) -> String {
    x.map_or("-".into(), |x| format!("{x:.decimals$}"))
}

fn human(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "model {} ({}), {}: {} photos, {} could not be scored\n",
        report.model, report.model_version, report.runtime, report.photos, report.errors
    );
    let _ = writeln!(
        out,
        "food/not food: balanced accuracy {}, recall {}, specificity {}\n",
        show(report.balanced_accuracy, 3),
        show(report.food_recall, 3),
        show(report.specificity, 3)
    );
    if let Some(gap) = &report.gap {
        let _ = writeln!(
            out,
            "healthy − indulgent: {} ({} over {} scored photos − {} over {})\n",
            show(gap.gap, 2),
            show(gap.healthy_mean, 2),
            gap.healthy_scored,
            show(gap.indulgent_mean, 2),
            gap.indulgent_scored
        );
    }
    let width = report
        .labels
        .iter()
        .map(|l| l.label.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let _ = writeln!(
        out,
        "{:<8} {:<width$} {:>6} {:>6} {:>6}  top-1 labels",
        "kind", "label", "photos", "food", "score"
    );
    for stats in &report.labels {
        let top = report
            .confusion
            .get(&stats.label)
            .map(|tops| {
                let mut tops: Vec<_> = tops.iter().collect();
                tops.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
                tops.iter()
                    .map(|(label, n)| format!("{label} ×{n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let kind = match stats.kind {
            Kind::Food => "food",
            Kind::Nonfood => "nonfood",
        };
        let _ = writeln!(
            out,
            "{kind:<8} {:<width$} {:>6} {:>6} {:>6}  {top}",
            stats.label,
            stats.photos,
            stats.called_food,
            show(stats.mean_score, 2)
        );
    }
    for r in report.rows.iter().filter(|r| r.error.is_some()) {
        let _ = writeln!(
            out,
            "\nnot scored: {} ({})",
            r.path,
            r.error.as_deref().unwrap_or("")
        );
    }
    out
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

fn csv(rows: &[PhotoRow]) -> String {
    let mut out =
        String::from("path,kind,label,is_food,score,food_group,top_label,top_probability,error\n");
    for r in rows {
        let fields = [
            r.path.clone(),
            serde_json::to_value(r.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            r.label.clone(),
            r.is_food.map(|f| f.to_string()).unwrap_or_default(),
            r.score.map(|s| s.to_string()).unwrap_or_default(),
            r.food_group.clone().unwrap_or_default(),
            r.top_label.clone().unwrap_or_default(),
            r.top_probability.map(|p| p.to_string()).unwrap_or_default(),
            r.error.clone().unwrap_or_default(),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

pub async fn run(config: &Config, args: EvalArgs) -> anyhow::Result<()> {
    let groups: Option<LabelGroups> = args
        .labels
        .as_ref()
        .map(|path| -> anyhow::Result<LabelGroups> {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
        })
        .transpose()?;
    let photos = photos(&args.dir)?;
    let scorer = Scorer::load(
        &startup::settings::scorer_for(config, args.model.as_deref())?,
        None,
    )?;
    let progress = progress_bar(photos.len(), !args.json);
    let files = photos.iter().map(|(_, _, f)| f.clone()).collect();
    let mut outcomes = std::pin::pin!(score_in_order(&scorer, files, &[], "en"));
    let mut rows = Vec::with_capacity(photos.len());
    for (kind, label, _) in photos {
        let Some((path, outcome)) = outcomes.next().await else {
            break;
        };
        rows.push(row(kind, label, &path, outcome));
        progress.inc(1);
    }
    progress.finish_and_clear();

    let report = report(&scorer, rows, groups.as_ref());
    if let Some(path) = &args.csv {
        std::fs::write(path, csv(&report.rows))
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", human(&report));
        if let Some(path) = &args.csv {
            println!("\nper-photo rows: {}", path.display());
        }
    }
    Ok(())
}

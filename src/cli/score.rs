//! `platescore score PATH...`: scores files and folders, one JSON line per image on stdout,
//! with a progress bar on stderr when a folder is given.

use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::{
    config::Config,
    inference::{DietTag, Scored, Scorer},
    startup,
};

/// The path first, then the result.
#[derive(serde::Serialize)]
struct ScoredLine<'a> {
    path: &'a str,
    #[serde(flatten)]
    scored: &'a Scored,
}

#[derive(serde::Serialize)]
struct ErrorLine<'a> {
    path: &'a str,
    error: serde_json::Value,
}

const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "mpo"];

/// Files as given, and the images inside folders (recursively, sorted).
pub(super) fn collect(paths: &[PathBuf]) -> std::io::Result<(Vec<PathBuf>, bool)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.path());
        for entry in entries {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out)?;
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
            {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    let mut any_folder = false;
    for path in paths {
        if path.is_dir() {
            any_folder = true;
            walk(path, &mut files)?;
        } else {
            files.push(path.clone());
        }
    }
    Ok((files, any_folder))
}

/// A photo's result, or its error's code and message.
pub(super) type Outcome = Result<Scored, (String, String)>;

/// Scores the files with enough in flight to fill every batch; results come in input order.
pub(super) fn score_in_order<'a>(
    scorer: &'a Scorer,
    files: Vec<PathBuf>,
    diets: &'a [DietTag],
    lang: &'a str,
) -> impl futures_util::Stream<Item = (PathBuf, Outcome)> + 'a {
    let settings = scorer.batcher_settings();
    let in_flight = (settings.max_batch * settings.workers * 2).max(4);
    futures_util::stream::iter(files)
        .map(move |path| async move {
            let outcome = match tokio::fs::read(&path).await {
                Ok(bytes) => scorer
                    .score(bytes.into(), diets, lang)
                    .await
                    .map_err(|e| (e.code().to_string(), e.to_string())),
                Err(e) => Err(("io_error".to_string(), e.to_string())),
            };
            (path, outcome)
        })
        .buffered(in_flight)
}

/// A progress bar on stderr, or a hidden one.
pub(super) fn progress_bar(len: usize, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} images, {per_sec}, eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

pub async fn run(
    config: &Config,
    model: Option<&str>,
    paths: &[PathBuf],
    diets: &[DietTag],
    lang: &str,
) -> anyhow::Result<bool> {
    let (files, any_folder) = collect(paths)?;
    let scorer = Scorer::load(&startup::settings::scorer_for(config, model)?, None)?;
    tracing::info!(runtime = %scorer.runtime_name(), model = %scorer.model().version, images = files.len(), "scoring");
    let progress = progress_bar(files.len(), any_folder);
    let mut lines = std::pin::pin!(score_in_order(&scorer, files, diets, lang));
    let mut all_ok = true;
    while let Some((path, outcome)) = lines.next().await {
        let path = path.display().to_string();
        let line = match outcome {
            Ok(scored) => serde_json::to_string(&ScoredLine {
                path: &path,
                scored: &scored,
            })?,
            Err((code, message)) => {
                all_ok = false;
                serde_json::to_string(&ErrorLine {
                    path: &path,
                    error: json!({ "code": code, "message": message }),
                })?
            }
        };
        progress.suspend(|| println!("{line}"));
        progress.inc(1);
    }
    progress.finish_and_clear();
    Ok(all_ok)
}

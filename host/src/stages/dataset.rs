//! A gated dataset: the accepted set of a finished kiln run (pilot, replay or scale) whose gate
//! passed and whose files still match its manifest, with the pilot config that made it. What
//! `kiln train` trains on and what `kiln testset` keeps its test set apart from.

use std::path::{Path, PathBuf};

use super::pilot::files;
use super::records::Accepted;
use crate::provenance::manifest::{DatasetRecord, Manifest};

/// A finished, gated run's dataset.
pub struct GatedRun {
    /// The run folder.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// The dataset file, relative to the folder.
    pub file: &'static str,
    /// The file's sha256, as the manifest records it (and the file still has).
    pub sha256: String,
    /// The samples.
    pub samples: Vec<Accepted>,
    /// The pilot config the samples were made with (a scale's inherited one), as TOML.
    pub recipe: toml::Table,
    /// Where that config was read from (for messages).
    pub recipe_path: PathBuf,
}

impl GatedRun {
    /// The record of this dataset that a later run keeps.
    pub fn record(&self) -> DatasetRecord {
        DatasetRecord {
            run_id: self.manifest.run_id.clone(),
            run_dir: self.dir.clone(),
            file: self.file.to_string(),
            sha256: self.sha256.clone(),
            records: self.samples.len(),
        }
    }
}

/// Open the dataset of the run in `dir`; the error says why it may not be used.
pub fn open_gated(dir: &Path) -> Result<GatedRun, String> {
    let manifest = Manifest::read(dir).map_err(|e| format!("{e}; only a finished kiln run (pilot, replay or scale) is a dataset"))?;
    let (file, root) = match manifest.stage.as_str() {
        "pilot" | "replay" => (files::ACCEPTED, None),
        "scale" => (super::scale::scale_files::DATASET, Some("pilot_config")),
        other => return Err(format!("is a {other} run; a dataset comes from a pilot, replay or scale run")),
    };
    if manifest.status != "complete" {
        return Err(format!("its run is {}, not complete", manifest.status));
    }
    if !manifest.gate.pass {
        return Err(format!("its gate did not pass ({}); fix the data and run again", manifest.gate.reasons.join("; ")));
    }
    let sha256 = manifest.files.get(file).ok_or_else(|| format!("its manifest lists no {file}"))?.clone();
    manifest.verify_files(dir).map_err(|e| e.to_string())?;
    let samples: Vec<Accepted> = crate::sandbox::read_jsonl(&dir.join(file)).map_err(|e| e.to_string())?;
    if samples.is_empty() {
        return Err(format!("{file} holds no examples"));
    }
    let recipe_path = dir.join(files::CONFIG);
    let text = std::fs::read_to_string(&recipe_path).map_err(|e| format!("cannot read {}: {e}", recipe_path.display()))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| format!("{}: {e}", recipe_path.display()))?;
    let recipe = match root {
        Some(k) => table.get(k).and_then(|v| v.as_table()).cloned().ok_or_else(|| format!("{} has no [{k}]", recipe_path.display()))?,
        None => table,
    };
    Ok(GatedRun { dir: dir.to_path_buf(), manifest, file, sha256, samples, recipe, recipe_path })
}

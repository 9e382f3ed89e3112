//! `marklens enroll`: record marks from image files, folders or a manifest.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use marklens::store::PutOutcome;
use marklens::{EnrollRequest, MarkFields, MarkStatus};
use serde::Deserialize;

use super::{Global, image_files, progress, read_limited};

#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// Image files, folders (searched recursively; mark id = file stem), or a
    /// manifest (.csv or .jsonl) with columns mark_id, file, name, holder,
    /// recordation_number, registration_number, nice_classes ("9;25"), status,
    /// valid_until. Manifest file paths are relative to the manifest.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,

    /// Marks read and recorded per transaction.
    #[arg(long, default_value_t = BATCH, value_name = "N")]
    pub batch: usize,
}

/// One manifest line. Unknown columns are ignored.
#[derive(Debug, Deserialize)]
struct ManifestRow {
    #[serde(alias = "id")]
    mark_id: String,
    #[serde(alias = "image", alias = "path")]
    file: PathBuf,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    holder: Option<String>,
    #[serde(default)]
    recordation_number: Option<String>,
    #[serde(default)]
    registration_number: Option<String>,
    #[serde(default)]
    nice_classes: Option<Classes>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    valid_until: Option<String>,
}

/// Nice classes as `"9;25"` (CSV), `[9, 25]` (JSONL), or a lone number (which is
/// how a CSV cell holding a single class arrives).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Classes {
    One(u8),
    Text(String),
    List(Vec<u8>),
}

/// A mark to enrol, before its image is read.
#[derive(Debug)]
pub struct Entry {
    pub id: String,
    pub file: PathBuf,
    pub fields: MarkFields,
}

impl ManifestRow {
    fn into_entry(self, base: &Path) -> anyhow::Result<Entry> {
        let nice_classes = match self.nice_classes {
            None => Vec::new(),
            Some(Classes::One(class)) => vec![class],
            Some(Classes::List(list)) => list,
            Some(Classes::Text(text)) => text
                .split([';', ',', ' '])
                .filter(|c| !c.trim().is_empty())
                .map(|c| {
                    c.trim()
                        .parse::<u8>()
                        .with_context(|| format!("bad nice class {c:?}"))
                })
                .collect::<anyhow::Result<_>>()?,
        };
        let status = match self.status.as_deref().map(str::trim) {
            None | Some("") => MarkStatus::default(),
            Some(s) => s.parse().map_err(anyhow::Error::msg)?,
        };
        let blank_is_none = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        Ok(Entry {
            id: self.mark_id,
            file: base.join(self.file),
            fields: MarkFields {
                recordation_number: blank_is_none(self.recordation_number),
                registration_number: blank_is_none(self.registration_number),
                name: blank_is_none(self.name),
                holder: blank_is_none(self.holder),
                nice_classes,
                status,
                valid_until: blank_is_none(self.valid_until),
            },
        })
    }
}

/// Reads a CSV or JSONL manifest into entries.
pub fn read_manifest(path: &Path) -> anyhow::Result<Vec<Entry>> {
    let base = path.parent().unwrap_or(Path::new("."));
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read manifest {}", path.display()))?;
    let rows: Vec<(usize, ManifestRow)> = if is_ext(path, "jsonl") {
        text.lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(n, line)| {
                serde_json::from_str(line)
                    .map(|row| (n + 1, row))
                    .with_context(|| format!("{}:{}: bad JSON line", path.display(), n + 1))
            })
            .collect::<anyhow::Result<_>>()?
    } else {
        csv::Reader::from_reader(text.as_bytes())
            .deserialize()
            .enumerate()
            .map(|(n, row)| {
                row.map(|row| (n + 2, row))
                    .with_context(|| format!("{}:{}: bad CSV row", path.display(), n + 2))
            })
            .collect::<anyhow::Result<_>>()?
    };
    rows.into_iter()
        .map(|(line, row)| {
            row.into_entry(base)
                .with_context(|| format!("{}:{line}", path.display()))
        })
        .collect()
}

fn is_ext(path: &Path, ext: &str) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

/// Expands the command-line paths into entries.
pub fn collect_entries(paths: &[PathBuf]) -> anyhow::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for path in paths {
        if path.is_file() && (is_ext(path, "csv") || is_ext(path, "jsonl")) {
            entries.extend(read_manifest(path)?);
            continue;
        }
        if !path.exists() {
            anyhow::bail!("{} does not exist", path.display());
        }
        for file in image_files(path)? {
            let id = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            entries.push(Entry {
                id,
                file,
                fields: MarkFields::default(),
            });
        }
    }
    Ok(entries)
}

/// Counts of what an enrolment run did.
#[derive(Debug, Default)]
pub struct Summary {
    pub created: usize,
    pub replaced: usize,
    pub updated: usize,
    pub unchanged: usize,
    pub failed: Vec<(PathBuf, String)>,
}

/// Marks read and recorded per transaction unless told otherwise.
pub const BATCH: usize = 64;

/// Enrols `entries` with a progress bar; failures are collected, not fatal.
pub fn enroll_entries(
    engine: &marklens::Engine,
    entries: Vec<Entry>,
    batch: usize,
    max_bytes: usize,
) -> Summary {
    let mut seen: HashMap<&str, &Path> = HashMap::new();
    for entry in &entries {
        if let Some(first) = seen.insert(&entry.id, &entry.file) {
            tracing::warn!(
                id = %entry.id,
                first = %first.display(),
                later = %entry.file.display(),
                "duplicate mark id: the later file replaces the earlier one"
            );
        }
    }
    let bar = progress(entries.len(), "enrolling");
    let mut summary = Summary::default();
    let mut entries = entries.into_iter().peekable();
    while entries.peek().is_some() {
        let chunk: Vec<Entry> = entries.by_ref().take(batch.max(1)).collect();
        let mut requests = Vec::with_capacity(chunk.len());
        let mut files = Vec::with_capacity(chunk.len());
        for entry in chunk {
            match read_limited(&entry.file, max_bytes) {
                Ok(image) => {
                    files.push(entry.file);
                    requests.push(EnrollRequest {
                        id: entry.id,
                        fields: entry.fields,
                        image,
                        create_only: false,
                    });
                }
                Err(e) => {
                    summary.failed.push((entry.file, format!("{e:#}")));
                    bar.inc(1);
                }
            }
        }
        for (file, result) in files.into_iter().zip(engine.enroll_many(requests)) {
            match result {
                Ok(PutOutcome::Created) => summary.created += 1,
                Ok(PutOutcome::Replaced) => summary.replaced += 1,
                Ok(PutOutcome::Updated) => summary.updated += 1,
                Ok(PutOutcome::Unchanged) => summary.unchanged += 1,
                Err(e) => summary.failed.push((file, e.to_string())),
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    summary
}

pub fn run(global: &Global, args: EnrollArgs) -> anyhow::Result<ExitCode> {
    let entries = collect_entries(&args.paths)?;
    if entries.is_empty() {
        anyhow::bail!("no image files found in the given paths");
    }
    let engine = global.open()?;
    let started = std::time::Instant::now();
    let total = entries.len();
    let summary = enroll_entries(&engine, entries, args.batch, global.max_image_bytes);
    let secs = started.elapsed().as_secs_f64();
    engine.flush()?;
    for (file, reason) in &summary.failed {
        eprintln!("failed: {}: {reason}", file.display());
    }
    println!(
        "{total} marks in {secs:.1} s ({:.0}/s): {} enrolled, {} replaced, {} updated, \
         {} unchanged, {} failed",
        total as f64 / secs.max(1e-9),
        summary.created,
        summary.replaced,
        summary.updated,
        summary.unchanged,
        summary.failed.len()
    );
    Ok(if summary.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

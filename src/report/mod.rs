//! Screening reports: the results of searching a folder of photos, written as JSON
//! (for programs), CSV (for spreadsheets) or HTML (for an analyst to skim, with every
//! photo beside thumbnails of its best matches).

mod html;

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::decision::Decision;
use crate::engine::{Match, Region, StageTimings};
use crate::store::MarkStatus;

pub use html::write_html;

/// The outcome of screening one photo.
#[derive(Debug, Clone)]
pub struct QueryReport {
    /// The photo, as given (a path).
    pub query: PathBuf,
    pub matches: Vec<Match>,
    /// The search's decision (none when the photo could not be searched).
    pub decision: Option<Decision>,
    pub timings: Option<StageTimings>,
    /// Why the photo could not be searched, if it could not.
    pub error: Option<String>,
}

/// Output formats, chosen by the report file's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
    Html,
}

impl Format {
    pub fn from_path(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "json" => Some(Format::Json),
            "csv" => Some(Format::Csv),
            "html" | "htm" => Some(Format::Html),
            _ => None,
        }
    }
}

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot write report {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("report {path}: unknown format (use .json, .csv or .html)")]
    UnknownFormat { path: PathBuf },
}

/// One match as it appears in JSON reports: the record's fields, flattened.
#[derive(Debug, Serialize)]
struct MatchRow<'a> {
    rank: usize,
    score: f32,
    similarity: f32,
    inliers: u32,
    /// What `score` counts of `inliers` ([`Match::support`]).
    support: u32,
    /// Where in the photo the mark matched ([`crate::engine::Region`]).
    region: Option<&'a Region>,
    /// Where in the mark's recorded image, point for point.
    mark_region: Option<&'a Region>,
    mark_id: &'a str,
    name: Option<&'a str>,
    holder: Option<&'a str>,
    recordation_number: Option<&'a str>,
    registration_number: Option<&'a str>,
    nice_classes: &'a [u8],
    status: MarkStatus,
    valid_until: Option<&'a str>,
}

impl<'a> From<&'a Match> for MatchRow<'a> {
    fn from(m: &'a Match) -> Self {
        let f = &m.record.fields;
        MatchRow {
            rank: m.rank,
            score: m.score,
            similarity: m.similarity,
            inliers: m.inliers,
            support: m.support,
            region: m.region.as_ref(),
            mark_region: m.mark_region.as_ref(),
            mark_id: &m.record.id,
            name: f.name.as_deref(),
            holder: f.holder.as_deref(),
            recordation_number: f.recordation_number.as_deref(),
            registration_number: f.registration_number.as_deref(),
            nice_classes: &f.nice_classes,
            status: f.status,
            valid_until: f.valid_until.as_deref(),
        }
    }
}

#[derive(Debug, Serialize)]
struct QueryRow<'a> {
    query: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    decision: Option<Decision>,
    matches: Vec<MatchRow<'a>>,
    timings_ms: Option<&'a StageTimings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

/// Writes `reports` to `path` in the format its extension names. `mark_image` gives a
/// recorded mark's source image, for HTML thumbnails.
pub fn write(
    path: &Path,
    reports: &[QueryReport],
    mark_image: &dyn Fn(&str) -> Option<Vec<u8>>,
) -> Result<(), ReportError> {
    let format = Format::from_path(path).ok_or_else(|| ReportError::UnknownFormat {
        path: path.to_path_buf(),
    })?;
    let io_err = |source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    };
    // Write beside the target and rename, so a reader never sees half a report.
    let partial = path.with_extension("partial");
    let file = std::fs::File::create(&partial).map_err(io_err)?;
    let mut out = std::io::BufWriter::new(file);
    match format {
        Format::Json => write_json(&mut out, reports),
        Format::Csv => write_csv(&mut out, reports),
        Format::Html => write_html(&mut out, reports, mark_image),
    }
    .and_then(|()| out.flush())
    .map_err(io_err)?;
    drop(out);
    std::fs::rename(&partial, path).map_err(io_err)
}

/// A JSON array with one object per query: `query`, `decision`, `matches`, `timings_ms`, and
/// `error` when the photo could not be searched.
pub fn write_json(out: &mut dyn Write, reports: &[QueryReport]) -> std::io::Result<()> {
    let rows: Vec<QueryRow<'_>> = reports
        .iter()
        .map(|r| QueryRow {
            query: r.query.display().to_string(),
            decision: r.decision,
            matches: r.matches.iter().map(MatchRow::from).collect(),
            timings_ms: r.timings.as_ref(),
            error: r.error.as_deref(),
        })
        .collect();
    serde_json::to_writer_pretty(&mut *out, &rows).map_err(std::io::Error::other)?;
    writeln!(out)
}

const CSV_HEADER: [&str; 19] = [
    "query",
    "decision",
    "rank",
    "score",
    "similarity",
    "inliers",
    "mark_id",
    "name",
    "holder",
    "recordation_number",
    "registration_number",
    "nice_classes",
    "status",
    "valid_until",
    "total_ms",
    "error",
    "region_box",
    "mark_region_box",
    "support",
];

/// One row per match; a query without matches (or that failed) gets one row with
/// empty match columns. The region columns hold the box where the match lined
/// up as `left;top;right;bottom`, in the photo's pixels and in the recorded
/// image's; they and `support` (what the score counts of the inliers) come last,
/// in the order they were added, so that earlier columns keep their places.
pub fn write_csv(out: &mut dyn Write, reports: &[QueryReport]) -> std::io::Result<()> {
    let mut writer = csv::Writer::from_writer(out);
    let csv_err = |e: csv::Error| std::io::Error::other(e.to_string());
    writer.write_record(CSV_HEADER).map_err(csv_err)?;
    for report in reports {
        let query = report.query.display().to_string();
        let total = report
            .timings
            .map(|t| format!("{:.2}", t.total_ms))
            .unwrap_or_default();
        let error = report.error.clone().unwrap_or_default();
        let decision = report.decision.map_or("", Decision::as_str);
        if report.matches.is_empty() {
            let mut row = vec![String::new(); CSV_HEADER.len()];
            row[0] = query;
            row[1] = decision.to_owned();
            row[14] = total;
            row[15] = error;
            writer.write_record(&row).map_err(csv_err)?;
            continue;
        }
        for m in &report.matches {
            let f = &m.record.fields;
            let classes: Vec<String> = f.nice_classes.iter().map(u8::to_string).collect();
            writer
                .write_record([
                    query.as_str(),
                    decision,
                    &m.rank.to_string(),
                    &format!("{:.4}", m.score),
                    &format!("{:.4}", m.similarity),
                    &m.inliers.to_string(),
                    &m.record.id,
                    f.name.as_deref().unwrap_or(""),
                    f.holder.as_deref().unwrap_or(""),
                    f.recordation_number.as_deref().unwrap_or(""),
                    f.registration_number.as_deref().unwrap_or(""),
                    &classes.join(";"),
                    f.status.as_str(),
                    f.valid_until.as_deref().unwrap_or(""),
                    &total,
                    &error,
                    &region_box(m.region.as_ref()),
                    &region_box(m.mark_region.as_ref()),
                    &m.support.to_string(),
                ])
                .map_err(csv_err)?;
        }
    }
    writer.flush()
}

/// A region's box for a CSV cell, to a tenth of a pixel; empty without one.
fn region_box(region: Option<&Region>) -> String {
    region.map_or_else(String::new, |r| {
        let [left, top, right, bottom] = r.bounds;
        format!("{left:.1};{top:.1};{right:.1};{bottom:.1}")
    })
}

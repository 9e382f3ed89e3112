//! `marklens marks list|show|remove`, `marklens info` and `marklens reembed`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use marklens::decision::Calibration;
use marklens::{ListQuery, MarkRecord, MarkStatus};

use super::{Global, progress};

#[derive(Debug, Subcommand)]
pub enum MarksCommand {
    /// List recorded marks in id order.
    List {
        /// Only marks with this status.
        #[arg(long)]
        status: Option<MarkStatus>,
        /// Only marks whose holder contains this text (case-insensitive).
        #[arg(long)]
        holder: Option<String>,
        /// Only marks in this Nice class (repeatable: any of them).
        #[arg(long = "class", value_name = "N")]
        classes: Vec<u8>,
        /// Start after this mark id (pagination).
        #[arg(long, value_name = "ID")]
        after: Option<String>,
        /// At most this many marks (0: all).
        #[arg(long, default_value_t = 0, value_name = "N")]
        limit: usize,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Show one mark's record.
    Show {
        id: String,
        /// Also write its recorded source image to this file.
        #[arg(long, value_name = "FILE")]
        image_out: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove marks; they never appear in a search again.
    Remove {
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
}

pub fn run(global: &Global, command: MarksCommand) -> anyhow::Result<ExitCode> {
    let engine = global.open()?;
    match command {
        MarksCommand::List {
            status,
            holder,
            classes,
            after,
            limit,
            json,
        } => {
            let marks = engine.list(&ListQuery {
                after,
                limit,
                status,
                holder,
                nice_classes: classes,
            })?;
            for mark in &marks {
                if json {
                    println!("{}", serde_json::to_string(mark)?);
                } else {
                    println!("{}", one_line(mark));
                }
            }
            if !json {
                eprintln!("{} mark(s)", marks.len());
            }
        }
        MarksCommand::Show {
            id,
            image_out,
            json,
        } => {
            let mark = engine.get(&id)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&mark)?);
            } else {
                print_record(&mark);
            }
            if let Some(path) = image_out {
                std::fs::write(&path, engine.image(&id)?)?;
                eprintln!("image written to {}", path.display());
            }
        }
        MarksCommand::Remove { ids } => {
            let mut missing = 0;
            for id in &ids {
                match engine.remove(id) {
                    Ok(()) => println!("removed {id}"),
                    Err(marklens::EngineError::NotFound(_)) => {
                        eprintln!("not found: {id}");
                        missing += 1;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            engine.flush()?;
            if missing > 0 {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn one_line(mark: &MarkRecord) -> String {
    let f = &mark.fields;
    format!(
        "{}\t{}\t{}\t{}\t{}",
        mark.id,
        f.name.as_deref().unwrap_or("-"),
        f.holder.as_deref().unwrap_or("-"),
        f.recordation_number.as_deref().unwrap_or("-"),
        f.status
    )
}

fn print_record(mark: &MarkRecord) {
    let f = &mark.fields;
    let classes: Vec<String> = f.nice_classes.iter().map(u8::to_string).collect();
    let rows = [
        ("id", mark.id.clone()),
        ("name", f.name.clone().unwrap_or_default()),
        ("holder", f.holder.clone().unwrap_or_default()),
        (
            "recordation number",
            f.recordation_number.clone().unwrap_or_default(),
        ),
        (
            "registration number",
            f.registration_number.clone().unwrap_or_default(),
        ),
        ("nice classes", classes.join(", ")),
        ("status", f.status.to_string()),
        ("valid until", f.valid_until.clone().unwrap_or_default()),
        (
            "image",
            format!("{} sha256:{}", mark.image_format, mark.image_sha256),
        ),
        ("views", mark.views.to_string()),
        ("created", mark.created_at.clone()),
        ("updated", mark.updated_at.clone()),
    ];
    for (key, value) in rows {
        println!("{key:>20}: {value}");
    }
}

pub fn run_info(global: &Global, json: bool) -> anyhow::Result<ExitCode> {
    let engine = global.open()?;
    let info = engine.info()?;
    let calibration = engine.calibration();
    if json {
        /// The engine's figures with the stored thresholds beside them.
        #[derive(serde::Serialize)]
        struct Out<'a> {
            #[serde(flatten)]
            info: &'a marklens::EngineInfo,
            calibration: &'a Option<Calibration>,
        }
        let out = Out {
            info: &info,
            calibration: &calibration,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows = [
        ("data dir", info.data_dir.display().to_string()),
        ("model", info.model.clone()),
        ("model sha256", info.model_sha256.clone()),
        ("fingerprint", info.fingerprint.clone()),
        ("backend", info.backend.to_string()),
        ("dimensions", info.dim.to_string()),
        ("index", info.index.to_string()),
        ("indexed vectors", info.indexed_vectors.to_string()),
        ("tombstones", info.tombstones.to_string()),
        ("marks", info.marks.to_string()),
        ("vectors", info.vectors.to_string()),
        ("source images", format!("{} bytes", info.image_bytes)),
        ("database", format!("{} bytes", info.database_bytes)),
        ("scoring", marklens::verify::SCORING.to_owned()),
        ("decision", decision_rules(calibration.as_ref())),
    ];
    for (key, value) in rows {
        println!("{key:>16}: {value}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The stored decision thresholds in one line.
fn decision_rules(calibration: Option<&Calibration>) -> String {
    let Some(c) = calibration else {
        return "uncalibrated (see `marklens calibrate`; thresholds fitted for another \
                model or scoring are not used)"
            .to_owned();
    };
    let mut matches = Vec::new();
    if c.match_from.is_finite() {
        matches.push(format!("score >= {:.4}", c.match_from));
    }
    if let Some(m) = c.match_inlier_margin {
        matches.push(format!("inlier margin >= {m}"));
    }
    let matches = if matches.is_empty() {
        "never".to_owned()
    } else {
        matches.join(" or ")
    };
    format!(
        "no match below {:.4}, match when {matches} (fitted on {} + {} photos, {} marks)",
        c.no_match_below, c.recorded, c.unrecorded, c.gallery
    )
}

pub fn run_reembed(global: &Global) -> anyhow::Result<ExitCode> {
    let engine = global.open_allowing_stale()?;
    let done = reembed_stale(&engine)?;
    println!(
        "{done} mark(s) re-embedded with {}",
        engine.embedder().fingerprint()
    );
    Ok(ExitCode::SUCCESS)
}

/// Re-embeds the marks another model made (or an older marklens, without view
/// frames: [`marklens::Engine::reembed_stale`]), with a progress bar, and flushes
/// when there were any (the demo calls this on every start). Returns how many
/// there were.
pub fn reembed_stale(engine: &marklens::Engine) -> anyhow::Result<usize> {
    let bar = progress(0, "embedding");
    let done = engine.reembed_stale(&|done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    if done > 0 {
        engine.flush()?;
    }
    Ok(done)
}

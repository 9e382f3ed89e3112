//! The benchmark report: Markdown for people, JSON for tools, SVG plots.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::retrieval::{EfPoint, Evaluation, GroupResult};
use crate::decision::Calibration;

/// What was measured and where: enough to reproduce the run.
#[derive(Debug, Clone, Serialize)]
pub struct Context {
    pub command: String,
    pub gallery_manifest: Option<String>,
    pub query_manifest: String,
    /// Gallery marks that are real marks / symbol distractors (from the manifest).
    pub real_marks: usize,
    pub distractors: usize,
    pub model: String,
    pub backend: String,
    pub cpu: String,
    pub cores: usize,
}

/// Enrolment done by this run.
#[derive(Debug, Clone, Serialize)]
pub struct Enrolment {
    pub marks: usize,
    pub seconds: f64,
    pub per_second: f64,
}

/// Resident memory of the opened gallery.
#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    /// Seconds to reopen the data directory after enrolling (store, model,
    /// index snapshot): a restart.
    pub open_seconds: Option<f64>,
    /// Growth of the resident set from before the data directory was opened.
    pub rss_bytes: u64,
    pub bytes_per_mark: f64,
    /// Enrolment ran in this process: freed memory the allocator kept counts
    /// too, so the figure is an upper bound.
    pub after_enrolment: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub context: Context,
    pub enrolment: Option<Enrolment>,
    pub memory: Option<Memory>,
    /// The thresholds the served decisions were made with, if any.
    pub calibration: Option<Calibration>,
    /// The query manifest they were fitted on in this run (else: stored earlier).
    pub calibration_manifest: Option<String>,
    pub evaluation: Evaluation,
}

impl BenchReport {
    /// The calibrated decisions: how each group's served searches were called.
    fn decisions_markdown(&self, md: &mut String) {
        let _ = writeln!(md, "## Decisions (match / possible / no match)\n");
        let Some(c) = &self.calibration else {
            let _ = writeln!(
                md,
                "The data directory has no calibration: searches were not decided \
                 (run with --calibration).\n"
            );
            return;
        };
        let source = self
            .calibration_manifest
            .as_deref()
            .map_or("stored in the data directory".to_owned(), |m| {
                format!("fitted on `{m}`")
            });
        let _ = writeln!(
            md,
            "Thresholds {source}: {} photos of recorded marks and {} of unrecorded ones, \
             gallery of {} marks. No match below {:.4} (at most {:.1}% of recorded photos); \
             match from {:.4}{} (at least {:.1}% of calibration matches right).\n",
            c.recorded,
            c.unrecorded,
            c.gallery,
            c.no_match_below,
            c.max_miss * 100.0,
            c.match_from,
            c.match_inlier_margin
                .map(|m| format!(", or with {m} more inliers than any other candidate"))
                .unwrap_or_default(),
            c.min_precision * 100.0
        );
        let _ = writeln!(
            md,
            "| group | queries | match, right | match, wrong | possible | no match |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|");
        let share = |n: usize, of: usize| n as f64 / of.max(1) as f64;
        for t in &self.evaluation.decisions {
            let _ = writeln!(
                md,
                "| {} | {} | {:.3} | {:.3} | {:.3} | {:.3} |",
                t.group,
                t.queries,
                share(t.right_match, t.queries),
                share(t.wrong_match, t.queries),
                share(t.possible, t.queries),
                share(t.no_match, t.queries)
            );
        }
        let _ = writeln!(
            md,
            "\nShares of each group's photos. For `open` (unrecorded marks) \"no match\" \
             is right and any match is wrong: its no-match share is the TPR of the \
             no-match decision at the calibrated threshold, and `all`'s no-match share \
             its FPR.\n"
        );
    }

    /// Writes `report.md`, `report.json`, `recall-by-group.svg` and (with an
    /// index sweep) `recall-vs-latency.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("report.md"), self.markdown())?;
        std::fs::write(
            dir.join("report.json"),
            serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?,
        )?;
        std::fs::write(
            dir.join("recall-by-group.svg"),
            recall_chart(&self.evaluation.groups),
        )?;
        if let Some(sweep) = &self.evaluation.index_sweep {
            std::fs::write(dir.join("recall-vs-latency.svg"), ef_chart(&sweep.points))?;
        }
        Ok(())
    }

    pub fn markdown(&self) -> String {
        let c = &self.context;
        let e = &self.evaluation;
        let mut md = String::new();
        let _ = writeln!(md, "# marklens benchmark\n");
        let _ = writeln!(md, "Command: `{}`\n", c.command);
        let _ = writeln!(
            md,
            "Gallery: {} marks ({} real, {} distractors), {} vectors, index `{}`. \
             Queries: {} ({} open-set), manifest `{}`, knockouts {}.\n",
            e.gallery_marks,
            c.real_marks,
            c.distractors,
            e.gallery_vectors,
            e.index,
            e.queries,
            e.open_set_queries,
            c.query_manifest,
            if e.knockouts {
                "searched"
            } else {
                "not searched"
            }
        );
        let _ = writeln!(
            md,
            "Model `{}` on {}; CPU: {} ({} cores).\n",
            c.model, c.backend, c.cpu, c.cores
        );
        let _ = writeln!(
            md,
            "## Retrieval by the global embedding (exact ranking of the whole gallery)\n"
        );
        retrieval_table(&mut md, &e.groups, |g| &g.exact);
        let _ = writeln!(
            md,
            "\nRelevant: every gallery mark of the query's brand (by mark id when the \
             manifests have no brand). NAR: normalised average rank, 0 is perfect, 0.5 is \
             chance.\n"
        );
        let _ = writeln!(
            md,
            "## Retrieval verified (the exact top {} re-ranked by geometric verification)\n",
            crate::verify::DEPTH
        );
        retrieval_table(&mut md, &e.groups, |g| &g.verified);
        let _ = writeln!(
            md,
            "\n## Retrieval as served (index, verification, top 10)\n"
        );
        retrieval_table(&mut md, &e.groups, |g| &g.served);
        let _ = writeln!(
            md,
            "\nServed MRR and NAR count relevant marks outside the top 10 as ranked last.\n"
        );
        self.decisions_markdown(&mut md);
        let _ = writeln!(md, "## Open set: the \"no match\" decision\n");
        if e.open_set.is_empty() {
            let _ = writeln!(md, "No open-set queries in this run.\n");
        } else {
            let _ = writeln!(
                md,
                "{} photos of recorded marks, {} of unrecorded brands.\n",
                e.open_set[0].recorded, e.open_set[0].unrecorded
            );
            let _ = writeln!(
                md,
                "| scores | target FPR | threshold | TPR | FPR reached |"
            );
            let _ = writeln!(md, "|---|---|---|---|---|");
            let rows = e
                .open_set
                .iter()
                .map(|p| ("verified", p))
                .chain(e.open_set_embedding.iter().map(|p| ("embedding only", p)));
            for (scores, p) in rows {
                let note = if p.resolvable {
                    ""
                } else {
                    " (too few recorded photos to resolve this target)"
                };
                let _ = writeln!(
                    md,
                    "| {scores} | {:.1}% | {:.4} | {:.3} | {:.2}%{note} |",
                    p.target_fpr * 100.0,
                    p.threshold,
                    p.tpr,
                    p.fpr * 100.0
                );
            }
            let _ = writeln!(
                md,
                "\nTPR: share of open-set photos whose top score falls below the threshold; \
                 FPR: share of photos of recorded marks that do. Thresholds here are read off \
                 this query set; a deployed threshold comes from a calibration split.\n"
            );
        }
        let _ = writeln!(md, "## Latency per stage (ms, one photo per call)\n");
        let _ = writeln!(md, "| stage | p50 | p95 | p99 |");
        let _ = writeln!(md, "|---|---|---|---|");
        let s = &e.stages;
        for (name, p) in [
            ("decode", &s.decode),
            ("preprocess", &s.preprocess),
            ("embed", &s.embed),
            ("search", &s.search),
            ("of which verify", &s.verify),
            ("total", &s.total),
        ] {
            let _ = writeln!(
                md,
                "| {name} | {:.2} | {:.2} | {:.2} |",
                p.p50, p.p95, p.p99
            );
        }
        let _ = writeln!(
            md,
            "\nWhole search by the number of views the photo gave (each view is embedded, \
             searched and verified):\n"
        );
        let _ = writeln!(md, "| views | photos | p50 | p95 | p99 |");
        let _ = writeln!(md, "|---|---|---|---|---|");
        for v in &e.latency_by_views {
            let _ = writeln!(
                md,
                "| {} | {} | {:.2} | {:.2} | {:.2} |",
                v.views, v.queries, v.total.p50, v.total.p95, v.total.p99
            );
        }
        if let Some(sweep) = &e.index_sweep {
            let _ = writeln!(md, "\n## Index against exact search\n");
            let _ = writeln!(
                md,
                "hnsw_rs alone over the {} gallery vectors (M = {}, ef_construction = {}): \
                 built in {:.1} s on all cores; searched one query at a time.\n",
                sweep.vectors,
                sweep.params.max_connections,
                sweep.params.ef_construction,
                sweep.build_seconds
            );
            let _ = writeln!(
                md,
                "| ef | recall@10 vs exact | search p50 ms | p99 ms | QPS (1 thread) |"
            );
            let _ = writeln!(md, "|---|---|---|---|---|");
            for p in &sweep.points {
                let _ = writeln!(
                    md,
                    "| {} | {:.4} | {:.3} | {:.3} | {:.0} |",
                    p.ef, p.recall_at_10_vs_exact, p.search_ms.p50, p.search_ms.p99, p.qps
                );
            }
            let _ = writeln!(md, "\n![recall vs latency](recall-vs-latency.svg)");
        }
        let _ = writeln!(md, "\n## Gallery\n");
        match &self.enrolment {
            Some(en) => {
                let _ = writeln!(
                    md,
                    "Enrolled {} marks in {:.1} s: {:.1} marks/s.",
                    en.marks, en.seconds, en.per_second
                );
            }
            None => {
                let _ = writeln!(md, "Reused an enrolled gallery (no enrolment in this run).");
            }
        }
        if let Some(m) = &self.memory {
            if let Some(open) = m.open_seconds {
                let _ = writeln!(
                    md,
                    "Reopening the data directory (a restart) took {open:.2} s."
                );
            }
            let _ = writeln!(
                md,
                "Resident memory grew by {:.1} MiB with the data directory open: {:.1} KiB per \
                 mark, the model's fixed ~80 MiB included (store, index and owner table; \
                 compare two gallery sizes for the marginal cost){}.",
                m.rss_bytes as f64 / (1 << 20) as f64,
                m.bytes_per_mark / 1024.0,
                if m.after_enrolment {
                    "; enrolment ran in this process, so this is an upper bound: rerun on the \
                     enrolled directory for the figure of a plain start"
                } else {
                    ""
                }
            );
        }
        let _ = writeln!(md, "\n![recall by group](recall-by-group.svg)");
        if !e.failures.is_empty() {
            let _ = writeln!(md, "\n## Failed queries\n");
            for (file, err) in &e.failures {
                let _ = writeln!(md, "- `{file}`: {err}");
            }
        }
        md
    }
}

fn retrieval_table(
    md: &mut String,
    groups: &[GroupResult],
    pick: impl Fn(&GroupResult) -> &super::metrics::RetrievalSummary,
) {
    let _ = writeln!(
        md,
        "| group | queries | recall@1 | recall@5 | recall@10 | MRR | NAR |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for g in groups {
        let s = pick(g);
        let _ = writeln!(
            md,
            "| {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.4} |",
            g.group, s.queries, s.recall_at_1, s.recall_at_5, s.recall_at_10, s.mrr, s.nar
        );
    }
}

const W: f64 = 640.0;
const H: f64 = 360.0;
const LEFT: f64 = 56.0;
const BOTTOM: f64 = 48.0;
const TOP: f64 = 36.0;

/// A y axis from `low` to 1: recall charts start at 0, the index chart close to
/// its lowest point so that the differences between `ef` values show.
#[derive(Clone, Copy)]
struct Axis {
    low: f64,
}

impl Axis {
    fn y(self, v: f64) -> f64 {
        let t = ((v - self.low) / (1.0 - self.low)).clamp(0.0, 1.0);
        H - BOTTOM - t * (H - BOTTOM - TOP)
    }
}

fn svg_frame(title: &str, body: &str, axis: Axis, y_label: &str, x_label: &str) -> String {
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>
"#,
        W / 2.0,
        escape(title)
    );
    // y axis low..1 with grid lines
    for i in 0..=5 {
        let v = axis.low + (1.0 - axis.low) * i as f64 / 5.0;
        let y = axis.y(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{v:.2}</text>"##,
            W - 16.0,
            LEFT - 6.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">{}</text>"#,
        (TOP + H - BOTTOM) / 2.0,
        (TOP + H - BOTTOM) / 2.0,
        escape(y_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        (LEFT + W - 16.0) / 2.0,
        H - 8.0,
        escape(x_label)
    );
    s += body;
    s += "</svg>\n";
    s
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Grouped bars: recall@1/5/10 (exact ranking) per query group.
fn recall_chart(groups: &[GroupResult]) -> String {
    const COLOURS: [&str; 3] = ["#1f77b4", "#ff7f0e", "#2ca02c"];
    let n = groups.len().max(1) as f64;
    let slot = (W - 16.0 - LEFT) / n;
    let bar = slot * 0.8 / 3.0;
    let axis = Axis { low: 0.0 };
    let mut body = String::new();
    for (i, g) in groups.iter().enumerate() {
        let x0 = LEFT + i as f64 * slot + slot * 0.1;
        let s = &g.exact;
        for (j, v) in [s.recall_at_1, s.recall_at_5, s.recall_at_10]
            .iter()
            .enumerate()
        {
            let y = axis.y(*v);
            let _ = writeln!(
                body,
                r#"<rect x="{:.1}" y="{y:.1}" width="{bar:.1}" height="{:.1}" fill="{}"><title>{} recall@{}: {v:.3}</title></rect>"#,
                x0 + j as f64 * bar,
                axis.y(0.0) - y,
                COLOURS[j],
                escape(&g.group),
                [1, 5, 10][j]
            );
        }
        let _ = writeln!(
            body,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x0 + 1.5 * bar,
            H - BOTTOM + 16.0,
            escape(&g.group)
        );
    }
    for (j, label) in ["recall@1", "recall@5", "recall@10"].iter().enumerate() {
        let x = W - 250.0 + j as f64 * 80.0;
        let _ = writeln!(
            body,
            r#"<rect x="{x}" y="{}" width="10" height="10" fill="{}"/><text x="{}" y="{}">{label}</text>"#,
            TOP - 12.0,
            COLOURS[j],
            x + 14.0,
            TOP - 3.0
        );
    }
    svg_frame(
        "Recall by query group (exact ranking)",
        &body,
        axis,
        "recall",
        "",
    )
}

/// recall@10 against exact search versus search latency, one point per `ef`.
fn ef_chart(points: &[EfPoint]) -> String {
    let max_ms = points
        .iter()
        .map(|p| p.search_ms.p50)
        .fold(0.0_f64, f64::max)
        .max(1e-3)
        * 1.1;
    let x_of = |ms: f64| LEFT + ms / max_ms * (W - 16.0 - LEFT);
    let lowest = points
        .iter()
        .map(|p| p.recall_at_10_vs_exact)
        .fold(1.0_f64, f64::min);
    let axis = Axis {
        low: ((lowest - 0.02) * 20.0).floor().clamp(0.0, 19.0) / 20.0,
    };
    let mut body = String::new();
    let path: Vec<String> = points
        .iter()
        .map(|p| {
            format!(
                "{:.1},{:.1}",
                x_of(p.search_ms.p50),
                axis.y(p.recall_at_10_vs_exact)
            )
        })
        .collect();
    let _ = writeln!(
        body,
        r##"<polyline points="{}" fill="none" stroke="#1f77b4" stroke-width="2"/>"##,
        path.join(" ")
    );
    for p in points {
        let (x, y) = (x_of(p.search_ms.p50), axis.y(p.recall_at_10_vs_exact));
        let _ = writeln!(
            body,
            r##"<circle cx="{x:.1}" cy="{y:.1}" r="4" fill="#1f77b4"/><text x="{:.1}" y="{:.1}">ef {}</text>"##,
            x + 6.0,
            y + 14.0,
            p.ef
        );
    }
    for i in 0..=4 {
        let ms = max_ms * i as f64 / 4.0;
        let _ = writeln!(
            body,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{ms:.2}</text>"#,
            x_of(ms),
            H - BOTTOM + 16.0
        );
    }
    svg_frame(
        "Index recall@10 against exact search vs search latency",
        &body,
        axis,
        "recall@10 vs exact",
        "search p50 (ms)",
    )
}

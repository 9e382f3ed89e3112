//! The HTML screening report: one self-contained file (thumbnails inlined as data
//! URIs) that an analyst can open, scroll and forward.

use std::io::Write;

use base64::Engine as _;

use super::QueryReport;
use crate::engine::Region;
use crate::imaging::{self, Limits};

const THUMB: u32 = 128;

const STYLE: &str = "
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
h1 { font-size: 1.3rem; }
table { border-collapse: collapse; }
td { border-top: 1px solid #ddd; padding: .6rem; vertical-align: top; }
.query img, .query svg, .match img, .match svg { width: 128px; height: 128px; object-fit: contain;
  background: #fafafa; border: 1px solid #ccc; }
.region { fill: none; stroke: #e0301e; }
.matches { display: flex; gap: .8rem; flex-wrap: wrap; }
.match { width: 140px; font-size: .8rem; }
.score { font-weight: 600; }
.decision { font-weight: 700; text-transform: uppercase; }
.decision.match { color: #0a6b2b; }
.decision.possible { color: #9a6700; }
.decision.no_match { color: #666; }
.top .score { color: #0a6b2b; }
.error { color: #a00; }
.path { font-size: .8rem; word-break: break-all; max-width: 160px; }
";

/// Writes the report as HTML. `mark_image` returns a recorded mark's source image.
pub fn write_html(
    out: &mut dyn Write,
    reports: &[QueryReport],
    mark_image: &dyn Fn(&str) -> Option<Vec<u8>>,
) -> std::io::Result<()> {
    let failed = reports.iter().filter(|r| r.error.is_some()).count();
    writeln!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>marklens screening report</title><style>{STYLE}</style></head><body>"
    )?;
    writeln!(
        out,
        "<h1>marklens screening report</h1><p>{} photos screened, {} unreadable.</p><table>",
        reports.len(),
        failed
    )?;
    for report in reports {
        let query = report.query.display().to_string();
        let query_thumb = std::fs::read(&report.query)
            .ok()
            .and_then(|bytes| thumbnail(&bytes));
        writeln!(out, "<tr><td class=\"query\">")?;
        if let Some(thumb) = query_thumb {
            let region = report.matches.first().and_then(|m| m.region.as_ref());
            picture(
                out,
                &thumb,
                region,
                "query",
                "corners of the best match line up here",
            )?;
        }
        writeln!(out, "<div class=\"path\">{}</div>", escape(&query))?;
        if let Some(t) = &report.timings {
            writeln!(out, "<div class=\"path\">{:.1} ms</div>", t.total_ms)?;
        }
        if let Some(d) = report.decision {
            writeln!(out, "<div class=\"decision {0}\">{0}</div>", d.as_str())?;
        }
        writeln!(out, "</td><td><div class=\"matches\">")?;
        if let Some(error) = &report.error {
            writeln!(out, "<div class=\"error\">{}</div>", escape(error))?;
        } else if report.matches.is_empty() {
            writeln!(out, "<div>no match</div>")?;
        }
        for m in &report.matches {
            let class = if m.rank == 1 { "match top" } else { "match" };
            writeln!(out, "<div class=\"{class}\">")?;
            if let Some(thumb) = mark_image(&m.record.id).and_then(|b| thumbnail(&b)) {
                picture(
                    out,
                    &thumb,
                    m.mark_region.as_ref(),
                    &m.record.id,
                    "of the mark's corners line up with the photo's here",
                )?;
            }
            let f = &m.record.fields;
            writeln!(
                out,
                "<div><span class=\"score\">#{} &middot; {:.3}</span> \
                 <span title=\"cosine similarity, corners that line up\">({:.3}, {} pts)</span></div>\
                 <div>{}</div><div>{}</div><div>{}</div><div>{}</div>",
                m.rank,
                m.score,
                m.similarity,
                m.inliers,
                escape(f.name.as_deref().unwrap_or(&m.record.id)),
                escape(f.holder.as_deref().unwrap_or("")),
                escape(f.recordation_number.as_deref().unwrap_or("")),
                f.status
            )?;
            writeln!(out, "</div>")?;
        }
        writeln!(out, "</div></td></tr>")?;
    }
    writeln!(out, "</table></body></html>")
}

/// `thumb` as an image, or, with a region, as an SVG that outlines the region
/// over it in the image's own pixels; the outline's tooltip is the region's
/// corner count followed by `what`.
fn picture(
    out: &mut dyn Write,
    thumb: &Thumbnail,
    region: Option<&Region>,
    alt: &str,
    what: &str,
) -> std::io::Result<()> {
    let Some(region) = region else {
        return writeln!(out, "<img src=\"{}\" alt=\"{}\">", thumb.uri, escape(alt));
    };
    let [left, top, right, bottom] = region.bounds;
    let stroke = f64::from(thumb.width.max(thumb.height)) / f64::from(THUMB) * 2.0;
    writeln!(
        out,
        "<svg viewBox=\"0 0 {w} {h}\" preserveAspectRatio=\"xMidYMid meet\" \
         role=\"img\" aria-label=\"{alt}, where it matched\">\
         <image href=\"{uri}\" width=\"{w}\" height=\"{h}\"/>\
         <rect class=\"region\" x=\"{left:.1}\" y=\"{top:.1}\" width=\"{:.1}\" \
         height=\"{:.1}\" stroke-width=\"{stroke:.1}\"><title>{} {what}</title></rect></svg>",
        right - left,
        bottom - top,
        region.points.len(),
        alt = escape(alt),
        uri = thumb.uri,
        w = thumb.width,
        h = thumb.height,
    )
}

/// A small JPEG preview as a data URI, and the size of the image it shows.
struct Thumbnail {
    uri: String,
    width: u32,
    height: u32,
}

fn thumbnail(bytes: &[u8]) -> Option<Thumbnail> {
    let decoded = imaging::decode(bytes, &Limits::default()).ok()?;
    let jpeg = imaging::thumbnail_jpeg(&decoded.image, THUMB);
    Some(Thumbnail {
        uri: format!(
            "data:image/jpeg;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(jpeg)
        ),
        width: decoded.image.width(),
        height: decoded.image.height(),
    })
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

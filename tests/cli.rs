//! The `marklens` binary as a user runs it: enrol, search, screen into every report
//! format, list/show/remove, info, and the two model runtimes side by side.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{another_model, fixtures, gallery_subset};

fn marklens(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_marklens"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env_remove("MARKLENS_DATA")
        .output()
        .expect("marklens runs")
}

fn ok(data: &Path, args: &[&str]) -> String {
    let output = marklens(data, args);
    assert!(
        output.status.success(),
        "marklens {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A folder with a few gallery marks copied in, so enrolment takes a folder.
fn small_gallery(dir: &Path) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    gallery_subset(25)
        .into_iter()
        .map(|(id, path)| {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
            id
        })
        .collect()
}

#[test]
fn enroll_search_screen_and_manage_marks() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let ids = small_gallery(&tmp.path().join("marks"));
    let out = ok(
        &data,
        &["enroll", tmp.path().join("marks").to_str().unwrap()],
    );
    assert!(out.contains(&format!("{} enrolled", ids.len())), "{out}");
    // Resumable: a second run records nothing new.
    let out = ok(
        &data,
        &["enroll", tmp.path().join("marks").to_str().unwrap()],
    );
    assert!(out.contains(&format!("{} unchanged", ids.len())), "{out}");

    // search --json: the mark itself ranks first.
    let query = tmp.path().join("marks").join(format!("{}.png", ids[2]));
    let out = ok(
        &data,
        &["search", query.to_str().unwrap(), "--json", "-k", "3"],
    );
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["matches"][0]["record"]["id"], ids[2].as_str());
    assert_eq!(json["matches"].as_array().unwrap().len(), 3);
    assert!(json["timings"]["embed_ms"].as_f64().unwrap() > 0.0);
    // Knockouts are looked for by default; either switch is accepted (the old
    // `--knockouts` too, for scripts), and a plain mark has no knocked-out view
    // to change its answer.
    for switches in [
        &["--no-knockouts"][..],
        &["--knockouts"],
        &["--knockouts", "--no-knockouts"],
    ] {
        let mut args = vec!["search", query.to_str().unwrap(), "--json", "-k", "1"];
        args.extend_from_slice(switches);
        let json: serde_json::Value = serde_json::from_str(&ok(&data, &args)).unwrap();
        assert_eq!(
            json["matches"][0]["record"]["id"],
            ids[2].as_str(),
            "{switches:?}"
        );
    }

    // screen: a folder with photos and a broken file; every format is well formed.
    let photos = tmp.path().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    std::fs::copy(&query, photos.join("clean.png")).unwrap();
    std::fs::copy(
        fixtures().join("bad/truncated.png"),
        photos.join("broken.png"),
    )
    .unwrap();
    for ext in ["json", "csv", "html"] {
        let report = tmp.path().join(format!("report.{ext}"));
        let out = ok(
            &data,
            &[
                "screen",
                photos.to_str().unwrap(),
                "--out",
                report.to_str().unwrap(),
            ],
        );
        assert!(out.contains("2 photos screened"), "{out}");
        assert!(out.contains("1 unreadable"), "{out}");
        let text = std::fs::read_to_string(&report).unwrap();
        match ext {
            "json" => {
                let rows: serde_json::Value = serde_json::from_str(&text).unwrap();
                let rows = rows.as_array().unwrap();
                assert_eq!(rows.len(), 2);
                let broken = rows
                    .iter()
                    .find(|r| r["query"].as_str().unwrap().ends_with("broken.png"))
                    .unwrap();
                assert!(broken["error"].as_str().unwrap().contains("decode"));
                let clean = rows
                    .iter()
                    .find(|r| r["query"].as_str().unwrap().ends_with("clean.png"))
                    .unwrap();
                assert_eq!(clean["matches"][0]["mark_id"], ids[2].as_str());
                assert_eq!(clean["matches"][0]["rank"], 1);
                // Where it matched: a point per inlier.
                let best = &clean["matches"][0];
                assert_eq!(
                    best["region"]["points"].as_array().map(Vec::len),
                    best["inliers"].as_u64().map(|n| n as usize)
                );
                // And where on the mark's recorded image, point for point.
                assert_eq!(
                    best["mark_region"]["points"].as_array().map(Vec::len),
                    best["inliers"].as_u64().map(|n| n as usize)
                );
                assert!(clean["timings_ms"]["total_ms"].as_f64().unwrap() > 0.0);
            }
            "csv" => {
                let mut reader = csv::Reader::from_reader(text.as_bytes());
                let headers = reader.headers().unwrap().clone();
                assert_eq!(&headers[0], "query");
                let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
                assert_eq!(
                    rows.len(),
                    5 + 1,
                    "5 matches for the clean photo, 1 error row"
                );
                assert!(
                    rows.iter()
                        .any(|r| &r[6] == ids[2].as_str() && &r[2] == "1")
                );
                assert!(rows.iter().any(|r| !r[15].is_empty()));
                assert_eq!(&headers[4], "similarity");
                assert_eq!(&headers[5], "inliers");
                // The best match's boxes, in the photo and in the mark's image.
                assert_eq!(&headers[16], "region_box");
                assert_eq!(&headers[17], "mark_region_box");
                assert_eq!(&headers[18], "support");
                let best = rows
                    .iter()
                    .find(|r| &r[2] == "1" && !r[6].is_empty())
                    .unwrap();
                for cell in [&best[16], &best[17]] {
                    let b: Vec<f32> = cell.split(';').map(|v| v.parse().unwrap()).collect();
                    assert!(b.len() == 4 && b[0] < b[2] && b[1] < b[3], "{cell}");
                }
                // What the score counts of the inliers: some, and no more.
                let inliers: u32 = best[5].parse().unwrap();
                let support: u32 = best[18].parse().unwrap();
                assert!(support > 0 && support <= inliers, "{support} of {inliers}");
            }
            _ => {
                assert!(text.starts_with("<!doctype html>"));
                assert!(text.contains("data:image/jpeg;base64,"));
                assert!(text.trim_end().ends_with("</html>"));
                assert!(text.contains(&ids[2]));
                // The clean photo's best match is outlined on its thumbnail,
                // and on the mark's own thumbnail too.
                assert_eq!(text.matches("corners of the best match line up").count(), 1);
                let marks = text.matches("of the mark's corners line up").count();
                assert!(marks >= 1, "{marks} marks outlined");
                assert_eq!(text.matches("<rect class=\"region\"").count(), 1 + marks);
            }
        }
    }

    // marks list / show / remove, info.
    let listed = ok(&data, &["marks", "list", "--json"]);
    assert_eq!(listed.lines().count(), ids.len());
    let shown = ok(&data, &["marks", "show", &ids[0], "--json"]);
    let record: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(record["id"], ids[0].as_str());
    ok(&data, &["marks", "remove", &ids[2]]);
    let missing = marklens(&data, &["marks", "show", &ids[2]]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no mark"));
    let out = ok(&data, &["search", query.to_str().unwrap(), "--json"]);
    assert!(!out.contains(&format!("\"id\": \"{}\"", ids[2])));
    let info: serde_json::Value = serde_json::from_str(&ok(&data, &["info", "--json"])).unwrap();
    assert_eq!(info["marks"], ids.len() - 1);
    assert_eq!(info["dim"], 256);
}

#[test]
fn enroll_from_a_manifest_records_the_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (id, path) = gallery_subset(40).remove(1);
    let manifest = tmp.path().join("marks.jsonl");
    let line = serde_json::json!({
        "mark_id": id, "file": path, "name": "Demo", "holder": "Demo Holder",
        "recordation_number": "R-1", "nice_classes": [9, 25], "status": "suspended",
        "valid_until": "2031-12-31"
    });
    std::fs::write(&manifest, format!("{line}\n")).unwrap();
    ok(&data, &["enroll", manifest.to_str().unwrap()]);
    let shown: serde_json::Value =
        serde_json::from_str(&ok(&data, &["marks", "show", &id, "--json"])).unwrap();
    assert_eq!(shown["holder"], "Demo Holder");
    assert_eq!(shown["status"], "suspended");
    assert_eq!(shown["nice_classes"], serde_json::json!([9, 25]));

    // A manifest line with a bad field is reported with its line number.
    std::fs::write(&manifest, format!("{line}\n{{\"mark_id\": \"x\"}}\n")).unwrap();
    let bad = marklens(&data, &["enroll", manifest.to_str().unwrap()]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains(":2"));
}

#[test]
fn enrolment_failures_are_listed_not_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let marks = tmp.path().join("marks");
    small_gallery(&marks);
    std::fs::copy(fixtures().join("bad/bomb.png"), marks.join("bomb.png")).unwrap();
    let out = marklens(&data, &["enroll", marks.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "partial failure exits 1");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bomb.png") && stderr.contains("pixels"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 failed"));
}

#[test]
fn onnxruntime_and_tract_give_the_same_embedding() {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ort/libonnxruntime.so");
    if !lib.is_file() {
        // .ci/run installs it (models/setup_runtime.sh); without it there is only
        // one backend to compare. CI must never skip this.
        assert!(
            std::env::var_os("CI").is_none(),
            "{} missing in CI",
            lib.display()
        );
        eprintln!(
            "SKIPPED: {} missing; run models/setup_runtime.sh",
            lib.display()
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let image = gallery_subset(30)[3].1.clone();
    let embed = |backend: &str| -> (String, Vec<f32>) {
        let out = ok(
            tmp.path(),
            &["embed", image.to_str().unwrap(), "--backend", backend],
        );
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(json["backend"], backend);
        let vector = json["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        (json["fingerprint"].as_str().unwrap().to_owned(), vector)
    };
    let (fp_ort, ort) = embed("onnxruntime");
    let (fp_tract, tract) = embed("tract");
    assert_eq!(fp_ort, fp_tract, "same model, same vector space");
    assert_eq!(ort.len(), 256);
    // The built-in model computes its convolutions in 8-bit integers, and the two
    // runtimes round their rescaling between layers differently: on gallery marks
    // their vectors agree to a cosine of 0.9976 to 0.9993 (a float model agreed to
    // 1e-4 per value). Another model, or a broken runtime, gives far below this.
    let cosine: f32 = ort.iter().zip(&tract).map(|(a, b)| a * b).sum();
    assert!(cosine > 0.995, "backends' vectors have cosine {cosine}");
}

#[test]
fn serve_answers_the_cli_client_like_local_mode_and_stops_on_sigterm() {
    use std::io::{BufRead, BufReader};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let marks = tmp.path().join("marks");
    let ids = small_gallery(&marks);
    ok(&data, &["enroll", marks.to_str().unwrap()]);
    let query = marks.join(format!("{}.png", ids[4]));
    let local: serde_json::Value =
        serde_json::from_str(&ok(&data, &["search", query.to_str().unwrap(), "--json"])).unwrap();

    let mut server = Command::new(env!("CARGO_BIN_EXE_marklens"))
        .arg("--data-dir")
        .arg(&data)
        .args(["serve", "--addr", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .trim_end_matches(';')
        .to_owned();

    let remote: serde_json::Value = serde_json::from_str(&ok(
        &data,
        &[
            "search",
            query.to_str().unwrap(),
            "--json",
            "--server",
            &url,
        ],
    ))
    .unwrap();
    assert_eq!(
        local["matches"].as_array().unwrap().len(),
        remote["matches"].as_array().unwrap().len()
    );
    for (l, r) in local["matches"]
        .as_array()
        .unwrap()
        .iter()
        .zip(remote["matches"].as_array().unwrap())
    {
        assert_eq!(l["record"], r["record"]);
        assert!((l["score"].as_f64().unwrap() - r["score"].as_f64().unwrap()).abs() < 1e-5);
    }
    let report = tmp.path().join("remote.json");
    ok(
        &data,
        &[
            "screen",
            marks.to_str().unwrap(),
            "--out",
            report.to_str().unwrap(),
            "--server",
            &url,
        ],
    );
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), ids.len());
    for row in rows.as_array().unwrap() {
        let file = Path::new(row["query"].as_str().unwrap());
        let stem = file.file_stem().unwrap().to_str().unwrap();
        assert_eq!(row["matches"][0]["mark_id"], stem);
    }

    // SIGTERM: a clean exit, and the data directory is free again.
    let pid = server.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(server.wait().unwrap().success());
    ok(&data, &["info"]);
}

#[test]
fn calibrate_stores_thresholds_that_search_and_screen_report() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let gallery = fixtures().join("gallery.csv");
    ok(&data, &["enroll", gallery.to_str().unwrap()]);
    let query = fixtures().join("gallery").join("si-adidas.png");
    let out = ok(&data, &["search", query.to_str().unwrap()]);
    assert!(
        out.contains("marklens calibrate"),
        "uncalibrated is said: {out}"
    );
    let info = ok(&data, &["info"]);
    assert!(info.contains("decision: uncalibrated"), "{info}");
    assert!(
        info.contains(&format!("scoring: {}", marklens::verify::SCORING)),
        "{info}"
    );

    let queries = fixtures().join("queries-bench.csv");
    let out = ok(
        &data,
        &[
            "calibrate",
            "--queries",
            queries.to_str().unwrap(),
            "--gallery",
            gallery.to_str().unwrap(),
            "--max-miss",
            "0.05",
            "--min-precision",
            "0.9",
            "--json",
        ],
    );
    let c: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(c["recorded"], 85);
    assert_eq!(c["unrecorded"], 6);
    assert_eq!(c["gallery"], 300);
    // `info` shows what was stored.
    let info: serde_json::Value = serde_json::from_str(&ok(&data, &["info", "--json"])).unwrap();
    assert_eq!(info["calibration"], c);
    let out = ok(&data, &["info"]);
    assert!(
        out.contains("no match below") && out.contains("(fitted on 85 + 6 photos, 300 marks)"),
        "{out}"
    );

    // The stored thresholds decide later searches, in every output.
    let out = ok(&data, &["search", query.to_str().unwrap()]);
    assert!(out.contains("decision: MATCH"), "{out}");
    let out = ok(&data, &["search", query.to_str().unwrap(), "--json"]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["decision"], "match");
    let photos = tmp.path().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    std::fs::copy(&query, photos.join("clean.png")).unwrap();
    let report = tmp.path().join("report.csv");
    ok(
        &data,
        &[
            "screen",
            photos.to_str().unwrap(),
            "--out",
            report.to_str().unwrap(),
        ],
    );
    let csv = std::fs::read_to_string(&report).unwrap();
    assert!(csv.starts_with("query,decision,rank"), "{csv}");
    assert!(csv.lines().nth(1).unwrap().contains(",match,1,"), "{csv}");

    // Bad targets are refused with a clear message.
    let bad = marklens(
        &data,
        &[
            "calibrate",
            "--queries",
            queries.to_str().unwrap(),
            "--max-miss",
            "2",
        ],
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("max_miss"));
}

#[test]
fn the_demo_enrols_calibrates_and_screens() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // A data directory left by an older build: marks embedded by another model.
    // The demo re-embeds them instead of refusing the directory.
    let older = another_model(tmp.path());
    let ids = small_gallery(&tmp.path().join("marks"));
    ok(
        &data,
        &[
            "--model",
            older.to_str().unwrap(),
            "enroll",
            tmp.path().join("marks").to_str().unwrap(),
        ],
    );
    let refused = marklens(&data, &["info"]);
    assert!(!refused.status.success(), "the default model refuses it");

    let report = tmp.path().join("demo.html");
    let out = ok(
        &data,
        &["demo", "--no-serve", "--report", report.to_str().unwrap()],
    );
    assert!(
        out.contains(&format!(
            "re-embedded {} mark(s) recorded by an older model",
            ids.len()
        )),
        "{out}"
    );
    assert!(out.contains("gallery: 300 real marks"), "{out}");
    assert!(
        out.contains("calibrated on 85 photos of recorded marks and 6 of unrecorded ones"),
        "{out}"
    );
    assert!(out.contains("screened 41 photos"), "{out}");
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(
        html.contains("class=\"decision "),
        "decisions are in the report"
    );
    ok(&data, &["info"]);
}

#[test]
fn embed_writes_the_views_a_search_shows_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let photo = fixtures().join("queries/q015_easy.jpg");
    let out_dir = tmp.path().join("views");
    let out = ok(
        tmp.path(),
        &[
            "embed",
            photo.to_str().unwrap(),
            "--views-out",
            out_dir.to_str().unwrap(),
        ],
    );
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let views: Vec<&str> = json["views"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(!views.is_empty() && views.len() <= 3, "{views:?}");
    assert!(views[0].ends_with("q015_easy-view1.png"), "{views:?}");
    let (pw, ph) = image::image_dimensions(&photo).unwrap();
    for view in &views {
        let grey = image::open(view).unwrap();
        assert_eq!(grey.color(), image::ColorType::L8, "{view}: drawn in grey");
        // The mark is cropped out of the photo, not the photo shown whole.
        assert!(grey.width() * grey.height() < pw * ph / 2, "{view}");
    }
    // Leaving out knockouts only means something for the views.
    let refused = marklens(
        tmp.path(),
        &["embed", photo.to_str().unwrap(), "--no-knockouts"],
    );
    assert!(!refused.status.success());
}

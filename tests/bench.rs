//! The benchmark end to end on the committed fixtures: `marklens bench run`
//! (enrol, search, report), the Python peers on its export, and the dataset
//! builder's own unit tests. The Python side is installed by benches/setup.sh
//! from benches/requirements.txt (pip needs only the package registry).

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use common::fixtures;
use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `marklens bench run` on the fixtures into `dir`; returns report.json.
fn bench_fixtures(dir: &Path) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_marklens"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["bench", "run", "--gallery"])
        .arg(fixtures().join("gallery.csv"))
        .arg("--queries")
        .arg(fixtures().join("queries-bench.csv"))
        .arg("--out")
        .arg(dir.join("report"))
        .arg("--export")
        .arg(dir.join("export"))
        .env_remove("MARKLENS_DATA")
        .output()
        .expect("marklens runs");
    assert!(
        output.status.success(),
        "bench run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(dir.join("report/report.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn group<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["evaluation"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == name)
        .unwrap_or_else(|| panic!("group {name} in the report"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("{v} is a number"))
}

#[test]
fn bench_run_reports_every_figure_of_the_fixtures() {
    let tmp = tempfile::tempdir().unwrap();
    let report = bench_fixtures(tmp.path());
    let e = &report["evaluation"];
    assert_eq!(e["gallery_marks"], 300);
    assert_eq!(e["queries"], 91);
    assert_eq!(e["open_set_queries"], 6);
    assert_eq!(e["failures"].as_array().unwrap().len(), 0);
    let names: Vec<&str> = e["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["group"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "clean", "easy", "medium", "hard", "recolour", "reverse", "mirror", "redraw", "remove",
            "all"
        ]
    );
    // Clean copies of gallery marks are found first; the counts add up.
    assert_eq!(f(&group(&report, "clean")["exact"]["recall_at_1"]), 1.0);
    assert_eq!(group(&report, "all")["exact"]["queries"], 85);
    assert_eq!(group(&report, "hard")["exact"]["queries"], 20);
    assert_eq!(group(&report, "mirror")["exact"]["queries"], 6);
    for g in e["groups"].as_array().unwrap() {
        for view in ["exact", "verified", "served"] {
            let s = &g[view];
            assert!(f(&s["recall_at_1"]) <= f(&s["recall_at_5"]));
            assert!(f(&s["recall_at_5"]) <= f(&s["recall_at_10"]));
            assert!((0.0..=1.0).contains(&f(&s["nar"])), "{g}");
        }
        // Verified NAR is a true average rank (verification only reorders the top
        // of the exact ranking); served NAR is an upper bound of it.
        assert!(
            f(&g["verified"]["nar"]) <= f(&g["served"]["nar"]) + 1e-12,
            "{g}"
        );
        // Below the HNSW threshold the index is exact: the served candidates are
        // the exact ones, verified alike.
        for k in ["recall_at_1", "recall_at_5", "recall_at_10"] {
            assert_eq!(g["verified"][k], g["served"][k], "{} {k}", g["group"]);
        }
    }
    // Verification reorders the exact top verify::DEPTH (as far as it verifies
    // them), so it can lift a mark ranked below the 10th into the top 10; on
    // these photos it loses none.
    let all = group(&report, "all");
    assert!(f(&all["verified"]["recall_at_10"]) >= f(&all["exact"]["recall_at_10"]));
    for scores in ["open_set", "open_set_embedding"] {
        let open = e[scores].as_array().unwrap();
        assert_eq!(open.len(), 2);
        for p in open {
            assert!(f(&p["fpr"]) <= f(&p["target_fpr"]));
        }
    }
    let stages = &e["stages"];
    assert!(f(&stages["embed"]["p50"]) > 0.0);
    assert!(f(&stages["total"]["p50"]) >= f(&stages["embed"]["p50"]));
    assert!(f(&stages["verify"]["p50"]) > 0.0);
    assert!(f(&stages["search"]["p50"]) >= f(&stages["verify"]["p50"]));
    // Every searched photo is counted once by its number of views, fewest first.
    let by_views = e["latency_by_views"].as_array().unwrap();
    let counted: u64 = by_views
        .iter()
        .map(|v| v["queries"].as_u64().unwrap())
        .sum();
    let searched = e["queries"].as_u64().unwrap() - e["failures"].as_array().unwrap().len() as u64;
    assert_eq!(counted, searched);
    assert!(
        by_views
            .windows(2)
            .all(|w| w[0]["views"].as_u64() < w[1]["views"].as_u64())
    );
    assert!(by_views.iter().all(|v| v["views"].as_u64().unwrap() >= 1));
    let sweep = e["index_sweep"]["points"].as_array().unwrap();
    assert_eq!(sweep.len(), 5);
    assert!(f(&sweep[4]["recall_at_10_vs_exact"]) >= 0.99);
    assert_eq!(report["enrolment"]["marks"], 300);

    for file in ["report.md", "recall-by-group.svg", "recall-vs-latency.svg"] {
        let text = std::fs::read_to_string(tmp.path().join("report").join(file)).unwrap();
        assert!(text.len() > 200, "{file} is written");
    }
    // One row per view: every mark has one, solid marks a second or third.
    let vectors = e["gallery_vectors"].as_u64().unwrap();
    assert!((300..=900).contains(&vectors), "{vectors} vectors");
    let exported = std::fs::metadata(tmp.path().join("export/gallery.f32")).unwrap();
    assert_eq!(exported.len(), vectors * 256 * 4);
    let queries = std::fs::metadata(tmp.path().join("export/queries.f32")).unwrap();
    assert_eq!(queries.len(), 91 * 256 * 4);

    // A second run reuses the enrolled gallery and gives the same retrieval.
    let again = bench_fixtures(tmp.path());
    assert!(again["enrolment"].is_null());
    assert_eq!(
        again["evaluation"]["groups"],
        report["evaluation"]["groups"]
    );
}

/// `python3` with the benchmark's Python side, installed by benches/setup.sh
/// (pip, from PyPI) into target/bench-py.
fn bench_python() -> Command {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let status = Command::new(root().join("benches/setup.sh"))
        .status()
        .expect("benches/setup.sh runs (python3 with pip is needed)");
    assert!(
        status.success(),
        "benches/setup.sh could not install benches/requirements.txt"
    );
    let mut command = Command::new("python3");
    command.env("PYTHONPATH", root().join("target/bench-py"));
    command
}

#[test]
fn python_peers_run_on_the_export_and_agree_with_marklens() {
    let tmp = tempfile::tempdir().unwrap();
    bench_fixtures(tmp.path());
    let output = bench_python()
        .arg(root().join("benches/peers.py"))
        .arg("--export")
        .arg(tmp.path().join("export"))
        .arg("--report")
        .arg(tmp.path().join("report/report.json"))
        .arg("--gallery")
        .arg(fixtures().join("gallery.csv"))
        .arg("--queries")
        .arg(fixtures().join("queries-bench.csv"))
        .arg("--model")
        .arg(root().join("models/lite0_lw256_int8.onnx"))
        .arg("--out")
        .arg(tmp.path().join("report"))
        .args(["--latency-queries", "20", "--enrol-images", "40"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "peers.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let peers: Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("report/peers.json")).unwrap(),
    )
    .unwrap();
    // The reference computes the same embedding from the same photo. Its numpy
    // port of the mark finding resamples with Pillow, so a crop can differ by a
    // pixel: close, not identical. The quadrant pooling sees where the strokes
    // are, so a crop one pixel off moves the worst photo's vector a little more
    // (0.9899 at worst when the pooling came in). The int8 model rounds each
    // layer's activations to 8 bits, so a pixel's difference in the input moves
    // every vector a little more: mean 0.9967 with it, above 0.998 in float.
    let (min, mean) = (
        f(&peers["reference"]["vector_cosine_min"]),
        f(&peers["reference"]["vector_cosine_mean"]),
    );
    assert!(min > 0.98 && mean > 0.995, "cosine min {min}, mean {mean}");
    assert!(f(&peers["reference"]["latency_ratio_marklens_over_reference"]) > 0.0);
    // pHash finds exact copies and is scored on the same queries.
    assert_eq!(f(&peers["phash"]["clean"]["recall_at_1"]), 1.0);
    assert_eq!(peers["phash"]["all"]["queries"], 85);
    for lib in ["hnswlib", "faiss", "hnsw_rs"] {
        let points = peers["hnsw"][lib]["points"].as_array().unwrap();
        assert_eq!(points.len(), 5, "{lib}");
        assert!(f(&points[4]["recall_at_10_vs_exact"]) >= 0.99, "{lib}");
    }
    let md = std::fs::read_to_string(tmp.path().join("report/peers.md")).unwrap();
    assert!(md.contains("QPS at equal recall"));
}

#[test]
fn dataset_builder_unit_tests_pass() {
    let output = bench_python()
        .args(["-m", "unittest", "-v", "test_dataset"])
        .current_dir(root().join("benches/dataset"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "dataset tests failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

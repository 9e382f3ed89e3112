//! The library API end to end with the real model and runtime: enrol the fixture
//! gallery, search, restart, remove, reject bad input, refuse a foreign model.

mod common;

use common::{another_model, enroll_all, fixtures, gallery, gallery_subset, open, requests};
use marklens::store::PutOutcome;
use marklens::{
    EngineConfig, EngineError, EnrollRequest, IndexChoice, MarkFields, MarkStatus, SearchFilter,
    SearchOptions,
};

fn top1(engine: &marklens::Engine, image: &[u8]) -> (String, f32) {
    let result = engine.search(image, &SearchOptions::default()).unwrap();
    let best = &result.matches[0];
    (best.record.id.clone(), best.score)
}

#[test]
fn every_clean_mark_finds_itself_first_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let marks = gallery();
    assert!(
        marks.len() >= 200,
        "the demo gallery has a few hundred marks"
    );
    let mut before = Vec::new();
    {
        let engine = open(dir.path());
        enroll_all(&engine, &marks);
        for (id, path) in &marks {
            let (found, score) = top1(&engine, &std::fs::read(path).unwrap());
            assert_eq!(&found, id, "clean mark {id} must be its own best match");
            assert!(score > 0.999, "{id} scored {score} against itself");
            before.push((found, score));
        }
        engine.flush().unwrap();
    }
    let engine = open(dir.path());
    assert_eq!(engine.info().unwrap().marks, marks.len());
    for ((_, path), expected) in marks.iter().zip(&before) {
        let after = top1(&engine, &std::fs::read(path).unwrap());
        assert_eq!(&after.0, &expected.0);
        assert!((after.1 - expected.1).abs() < 1e-5);
    }
}

#[test]
fn the_weights_are_real_distinct_marks_are_not_all_alike() {
    // Randomly initialised weights score ~0.99 between any two logos.
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    let marks = gallery_subset(10);
    enroll_all(&engine, &marks);
    let mut scores = Vec::new();
    for (id, path) in &marks {
        let result = engine
            .search(
                &std::fs::read(path).unwrap(),
                &SearchOptions {
                    top_k: marks.len(),
                    ..SearchOptions::default()
                },
            )
            .unwrap();
        scores.extend(
            result
                .matches
                .iter()
                .filter(|m| &m.record.id != id)
                .map(|m| m.score),
        );
    }
    scores.sort_by(f32::total_cmp);
    let median = scores[scores.len() / 2];
    assert!(
        median < 0.8,
        "median cosine between distinct marks is {median}"
    );
}

#[test]
fn removed_marks_never_come_back_even_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let marks = gallery_subset(6);
    let removed: Vec<_> = marks.iter().take(3).cloned().collect();
    {
        let engine = open(dir.path());
        enroll_all(&engine, &marks);
        for (id, _) in &removed {
            engine.remove(id).unwrap();
        }
        assert!(matches!(
            engine.remove(&removed[0].0),
            Err(EngineError::NotFound(_))
        ));
        engine.flush().unwrap();
    }
    let engine = open(dir.path());
    let options = SearchOptions {
        top_k: 100,
        ..SearchOptions::default()
    };
    for (id, path) in &removed {
        let result = engine
            .search(&std::fs::read(path).unwrap(), &options)
            .unwrap();
        assert!(result.matches.iter().all(|m| &m.record.id != id));
        assert!(matches!(engine.get(id), Err(EngineError::NotFound(_))));
    }
    assert_eq!(engine.info().unwrap().marks, marks.len() - removed.len());
}

#[test]
fn hnsw_snapshot_restart_catches_up_with_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let config = || EngineConfig {
        index: IndexChoice::Hnsw,
        ..EngineConfig::new(dir.path())
    };
    let marks = gallery_subset(5);
    let (first, later) = marks.split_at(marks.len() / 2);
    {
        let engine = marklens::Engine::open(config()).unwrap();
        enroll_all(&engine, first);
        engine.flush().unwrap(); // snapshot with `first`
        enroll_all(&engine, later); // no snapshot: a crash here must not lose these
        engine.remove(&first[0].0).unwrap();
    }
    let engine = marklens::Engine::open(config()).unwrap();
    let info = engine.info().unwrap();
    assert_eq!(info.index, "hnsw");
    // Every stored view (one or more per mark) is indexed, the removed mark's not.
    assert_eq!(info.marks, marks.len() - 1);
    assert_eq!(info.indexed_vectors, info.vectors);
    assert!(info.vectors >= marks.len() - 1);
    for (id, path) in &marks[1..] {
        assert_eq!(&top1(&engine, &std::fs::read(path).unwrap()).0, id);
    }
}

#[test]
fn enrolment_is_idempotent_and_same_id_new_image_replaces() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    let marks = gallery_subset(50);
    let outcomes: Vec<_> = engine
        .enroll_many(requests(&marks))
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(outcomes.iter().all(|o| *o == PutOutcome::Created));
    let again: Vec<_> = engine
        .enroll_many(requests(&marks))
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(again.iter().all(|o| *o == PutOutcome::Unchanged));

    // Same id, another mark's image: the record now matches the new image.
    let (id, _) = &marks[0];
    let (_, other_image) = &marks[1];
    let replaced = engine
        .enroll(EnrollRequest {
            id: id.clone(),
            fields: MarkFields::default(),
            image: std::fs::read(other_image).unwrap(),
            create_only: false,
        })
        .unwrap();
    assert_eq!(replaced, PutOutcome::Replaced);
    let info = engine.info().unwrap();
    assert_eq!(info.marks, marks.len());
    assert_eq!(info.indexed_vectors, info.vectors);
    let result = engine
        .search(
            &std::fs::read(other_image).unwrap(),
            &SearchOptions::default(),
        )
        .unwrap();
    let ids: Vec<&str> = result
        .matches
        .iter()
        .take(2)
        .map(|m| m.record.id.as_str())
        .collect();
    assert!(ids.contains(&id.as_str()));
    assert!((result.matches[0].score - result.matches[1].score).abs() < 1e-5);
}

#[test]
fn filters_and_min_score_restrict_results() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    let marks = gallery_subset(20);
    let mut reqs = requests(&marks);
    reqs[0].fields.status = MarkStatus::Expired;
    reqs[0].fields.nice_classes = vec![25];
    reqs[0].fields.holder = Some("Example Holder AG".into());
    for r in engine.enroll_many(reqs) {
        r.unwrap();
    }
    let query = std::fs::read(&marks[0].1).unwrap();
    let only_active = SearchOptions {
        filter: SearchFilter {
            statuses: vec![MarkStatus::Active],
            ..SearchFilter::default()
        },
        ..SearchOptions::default()
    };
    let result = engine.search(&query, &only_active).unwrap();
    assert!(result.matches.iter().all(|m| m.record.id != marks[0].0));
    let class_25 = SearchOptions {
        filter: SearchFilter {
            nice_classes: vec![25],
            holder: Some("example holder".into()),
            ..SearchFilter::default()
        },
        ..SearchOptions::default()
    };
    let result = engine.search(&query, &class_25).unwrap();
    assert_eq!(result.matches.len(), 1);
    assert_eq!(result.matches[0].record.id, marks[0].0);
    let strict = SearchOptions {
        min_score: 0.99,
        ..SearchOptions::default()
    };
    let result = engine.search(&query, &strict).unwrap();
    assert_eq!(result.matches.len(), 1);
    let timings = result.timings;
    assert!(timings.embed_ms > 0.0 && timings.total_ms >= timings.embed_ms);
}

#[test]
fn bad_files_are_clear_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    let bad = fixtures().join("bad");
    // (file, what the error must say); `None`: a valid image despite its oddity.
    let cases = [
        ("truncated.png", Some("decode")),
        ("not_an_image.jpg", Some("unrecognised image format")),
        ("empty.png", Some("empty image")),
        ("bomb.png", Some("40000x40000 pixels")),
        ("header_bomb.png", Some("40000x40000 pixels")),
        ("zero_size.gif", Some("")),
        // The format is sniffed from the bytes, never from the name.
        ("jpeg_named.png", None),
        ("tiny_1x1.png", None),
    ];
    for (file, expected) in cases {
        let bytes = std::fs::read(bad.join(file)).unwrap();
        let outcome = engine.search(&bytes, &SearchOptions::default());
        match (expected, outcome) {
            (None, Ok(_)) => {}
            (Some(text), Err(err)) => {
                assert!(matches!(err, EngineError::Image(_)), "{file}: {err}");
                assert!(err.to_string().contains(text), "{file}: {err}");
            }
            (None, Err(err)) => panic!("{file} should be accepted: {err}"),
            (Some(_), Ok(_)) => panic!("{file} should be rejected"),
        }
    }
    let bad_request = engine.enroll(EnrollRequest {
        id: String::new(),
        fields: MarkFields::default(),
        image: vec![1, 2, 3],
        create_only: false,
    });
    assert!(matches!(bad_request, Err(EngineError::InvalidArgument(_))));
    let bad_k = engine.search(
        &[0u8; 4],
        &SearchOptions {
            top_k: 0,
            ..SearchOptions::default()
        },
    );
    assert!(matches!(bad_k, Err(EngineError::InvalidArgument(_))));
}

#[test]
fn a_store_from_another_model_is_refused_then_reembedded() {
    let dir = tempfile::tempdir().unwrap();
    let marks = gallery_subset(60);
    {
        let engine = open(dir.path());
        enroll_all(&engine, &marks);
    }
    let other = another_model(dir.path());
    let config = || EngineConfig {
        model: Some(other.clone()),
        ..EngineConfig::new(dir.path())
    };
    let refused = marklens::Engine::open(config());
    assert!(matches!(refused, Err(EngineError::ModelMismatch { .. })));

    let engine = marklens::Engine::open(EngineConfig {
        allow_stale_model: true,
        ..config()
    })
    .unwrap();
    assert_eq!(engine.reembed_stale(&|_, _| {}).unwrap(), marks.len());
    drop(engine);
    let engine = marklens::Engine::open(config()).unwrap();
    let (id, path) = &marks[1];
    assert_eq!(&top1(&engine, &std::fs::read(path).unwrap()).0, id);
}

#[test]
fn marks_recorded_without_view_frames_are_reembedded_to_show_their_side() {
    let dir = tempfile::tempdir().unwrap();
    let marks = gallery_subset(20);
    {
        let engine = open(dir.path());
        enroll_all(&engine, &marks);
    }
    // As a store written before frames were kept leaves its views (schema
    // version 3 added the column, empty for the views already there).
    let db = rusqlite::Connection::open(dir.path().join("marks.db")).unwrap();
    db.execute("UPDATE embeddings SET frame = x''", []).unwrap();
    drop(db);
    let (id, path) = &marks[3];
    let photo = std::fs::read(path).unwrap();
    let best = |engine: &marklens::Engine| {
        let found = engine.search(&photo, &SearchOptions::default()).unwrap();
        let best = found.matches.into_iter().next().unwrap();
        assert_eq!(&best.record.id, id);
        assert!(best.region.is_some(), "the photo's side does not need them");
        best.mark_region
    };

    let engine = open(dir.path());
    assert_eq!(best(&engine), None);
    assert_eq!(engine.reembed_stale(&|_, _| {}).unwrap(), marks.len());
    assert!(best(&engine).is_some());
    // Nothing is left to do.
    assert_eq!(engine.reembed_stale(&|_, _| {}).unwrap(), 0);
}

#[test]
fn a_data_directory_is_used_by_one_process_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path());
    let second = marklens::Engine::open(EngineConfig::new(dir.path()));
    assert!(matches!(second, Err(EngineError::Locked { .. })));
}

/// The fixture photos with their answers: (file, expected mark id or "" for a
/// mark that is not recorded).
fn labelled_fixture_photos() -> Vec<marklens::engine::LabelledPhoto> {
    let manifest = std::fs::read_to_string(fixtures().join("queries-bench.csv")).unwrap();
    manifest
        .lines()
        .skip(1)
        .map(|line| {
            let mut cols = line.split(',');
            let file = cols.next().unwrap();
            let expected = cols.next().unwrap();
            marklens::engine::LabelledPhoto {
                image: std::fs::read(fixtures().join(file)).unwrap(),
                right: if expected.is_empty() {
                    Vec::new()
                } else {
                    vec![expected.to_owned()]
                },
            }
        })
        .collect()
}

#[test]
fn calibration_decides_searches_and_survives_restart() {
    use marklens::decision::Decision;
    let dir = tempfile::tempdir().unwrap();
    let marks = gallery();
    let clean = std::fs::read(&marks[0].1).unwrap();
    let photos = labelled_fixture_photos();
    let recorded = photos.iter().filter(|p| !p.right.is_empty()).count();
    let calibration = {
        let engine = open(dir.path());
        enroll_all(&engine, &marks);
        let before = engine.search(&clean, &SearchOptions::default()).unwrap();
        assert_eq!(before.decision, Decision::Uncalibrated);

        let c = engine
            .calibrate(&photos, &SearchOptions::default(), 0.05, 0.9, &|_| {})
            .unwrap();
        assert_eq!(c.fingerprint, engine.info().unwrap().fingerprint);
        assert_eq!(
            (c.recorded, c.unrecorded),
            (recorded, photos.len() - recorded)
        );
        assert_eq!(c.gallery, marks.len());
        assert!(
            c.no_match_below <= c.match_from && c.match_from <= 1.0 + marklens::verify::WEIGHT,
            "{c:?}"
        );
        // A clean copy of a recorded mark is a match.
        let result = engine.search(&clean, &SearchOptions::default()).unwrap();
        assert_eq!(result.decision, Decision::Match);
        // On the photos it was fitted on: at most 5% of the recorded ones are called
        // "no match", and at least 90% of the matches are right. A search returning
        // one match decides as one returning five: every verified rival counts
        // either way.
        let one = SearchOptions {
            top_k: 1,
            ..SearchOptions::default()
        };
        let (mut missed, mut called, mut right) = (0, 0, 0);
        for p in &photos {
            let r = engine.search(&p.image, &SearchOptions::default()).unwrap();
            assert_eq!(engine.search(&p.image, &one).unwrap().decision, r.decision);
            missed += usize::from(!p.right.is_empty() && r.decision == Decision::NoMatch);
            if r.decision == Decision::Match {
                called += 1;
                right += usize::from(p.right.contains(&r.matches[0].record.id));
            }
        }
        assert!(missed * 20 <= recorded, "{missed} of {recorded} missed");
        assert!(
            called > 0 && right * 10 >= called * 9,
            "{right} of {called} matches right"
        );
        // Thresholds made for another model, or on scores made another way, are refused.
        let foreign = marklens::decision::Calibration {
            fingerprint: "another-model".into(),
            ..c.clone()
        };
        let rescored = marklens::decision::Calibration {
            scoring: "another-scoring".into(),
            ..c.clone()
        };
        for refused in [foreign, rescored] {
            assert!(matches!(
                engine.set_calibration(refused),
                Err(EngineError::InvalidArgument(_))
            ));
        }
        c
    };
    let engine = open(dir.path());
    assert_eq!(engine.calibration(), Some(calibration));
    let result = engine.search(&clean, &SearchOptions::default()).unwrap();
    assert_eq!(result.decision, Decision::Match);
}

#[test]
fn a_lead_in_inliers_alone_makes_a_match() {
    use marklens::decision::{Calibration, Decision};
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    let marks = gallery();
    enroll_all(&engine, &marks);
    let clean = std::fs::read(&marks[0].1).unwrap();
    // verify::DEPTH matches hold every verified candidate.
    let all = SearchOptions {
        top_k: marklens::verify::DEPTH,
        ..SearchOptions::default()
    };
    let found = engine.search(&clean, &all).unwrap();
    let best = found.matches[0].inliers;
    let rival = found.matches[1..].iter().map(|m| m.inliers).max().unwrap();
    assert!(best > rival + 10, "{best} inliers against {rival}");
    // No score is a match here: only the margin can make one.
    let by_margin = |margin| Calibration {
        fingerprint: engine.info().unwrap().fingerprint,
        scoring: marklens::verify::SCORING.into(),
        match_from: f32::INFINITY,
        no_match_below: 0.0,
        match_inlier_margin: margin,
        max_miss: 0.01,
        min_precision: 0.99,
        recorded: 1,
        unrecorded: 0,
        gallery: marks.len(),
    };
    for (margin, decision) in [
        (Some(best - rival), Decision::Match),
        (Some(best - rival + 1), Decision::Possible),
        (None, Decision::Possible),
    ] {
        engine.set_calibration(by_margin(margin)).unwrap();
        let result = engine.search(&clean, &SearchOptions::default()).unwrap();
        assert_eq!(result.decision, decision, "margin {margin:?}");
    }
}

#[test]
fn verification_lifts_the_mark_whose_corners_line_up() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    enroll_all(&engine, &gallery());
    let manifest = std::fs::read_to_string(fixtures().join("queries-bench.csv")).unwrap();
    let (mut photos, mut mark_ahead, mut verified_gain) = (0, 0, 0);
    for line in manifest.lines().skip(1) {
        let cols: Vec<&str> = line.splitn(4, ',').collect();
        let (file, expected, level) = (cols[0], cols[1], cols[2]);
        if expected.is_empty() || !["clean", "easy", "medium"].contains(&level) {
            continue;
        }
        let image = std::fs::read(fixtures().join(file)).unwrap();
        let result = engine.search(&image, &SearchOptions::default()).unwrap();
        assert!(result.timings.verify_ms > 0.0);
        assert!(result.timings.verify_ms <= result.timings.search_ms);
        for pair in result.matches.windows(2) {
            assert!(pair[0].score >= pair[1].score, "ranked by score");
        }
        for m in &result.matches {
            assert_eq!(m.score, marklens::verify::fuse(m.similarity, m.support));
            assert!(m.support <= m.inliers, "{}", m.record.id);
            // A region for every verified match, with a corner per inlier.
            let corners = m.region.as_ref().map_or(0, |r| r.points.len());
            assert_eq!(corners, m.inliers as usize, "{}", m.record.id);
        }
        let Some(mark) = result.matches.iter().find(|m| m.record.id == expected) else {
            continue;
        };
        photos += 1;
        let others = result
            .matches
            .iter()
            .filter(|m| m.record.id != expected)
            .map(|m| m.inliers)
            .max()
            .unwrap_or(0);
        mark_ahead += usize::from(mark.inliers > others);
        verified_gain += usize::from(mark.inliers > 0);
    }
    assert!(
        photos >= 50,
        "{photos} photos found their mark in the top 5"
    );
    // The recorded mark's corners line up with the photo's far more often than a
    // lookalike's do.
    assert!(mark_ahead * 10 >= photos * 7, "{mark_ahead} of {photos}");
    assert!(
        verified_gain * 10 >= photos * 9,
        "{verified_gain} of {photos}"
    );

    // A mark recorded with a vector computed elsewhere has no keypoints: it is
    // ranked by similarity alone.
    let (id, path) = &gallery()[0];
    let vector = engine
        .embed(&[&std::fs::read(path).unwrap()])
        .remove(0)
        .unwrap()[0]
        .clone();
    engine
        .enroll_embedded(vec![(
            EnrollRequest {
                id: "imported".into(),
                fields: MarkFields::default(),
                image: b"imported elsewhere".to_vec(),
                create_only: true,
            },
            vector,
        )])
        .unwrap();
    let result = engine
        .search(&std::fs::read(path).unwrap(), &SearchOptions::default())
        .unwrap();
    let imported = result
        .matches
        .iter()
        .find(|m| m.record.id == "imported")
        .unwrap();
    let own = result.matches.iter().find(|m| &m.record.id == id).unwrap();
    assert_eq!(imported.inliers, 0);
    assert_eq!(imported.score, imported.similarity);
    assert!(own.inliers > 0 && own.rank < imported.rank);
}

#[test]
fn the_region_shows_where_the_mark_lies_in_the_photo() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    enroll_all(&engine, &gallery());
    let (id, path) = gallery()
        .into_iter()
        .find(|(id, _)| id == "si-adidas")
        .expect("the fixture gallery has si-adidas");
    // The mark at 300 pixels wide, 520 from the left and 240 from the top of a
    // 1000 x 700 photo of a pale card under light that falls off to the right.
    let mark = image::open(&path).unwrap().to_rgb8();
    let (w, h) = (300, 300 * mark.height() / mark.width());
    let mark = image::imageops::resize(&mark, w, h, image::imageops::FilterType::Triangle);
    let mut photo = image::RgbImage::from_fn(1000, 700, |x, _| {
        let g = 240 - (x * 30 / 1000) as u8;
        image::Rgb([g, g, g - 8])
    });
    for (x, y, px) in mark.enumerate_pixels() {
        if px.0.iter().min() < Some(&200) {
            photo.put_pixel(520 + x, 240 + y, *px);
        }
    }
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
        .encode_image(&photo)
        .unwrap();

    let result = engine.search(&jpeg, &SearchOptions::default()).unwrap();
    let best = &result.matches[0];
    assert_eq!(best.record.id, id);
    let region = best.region.as_ref().expect("the mark verified");
    assert_eq!(region.points.len(), best.inliers as usize);
    let [left, top, right, bottom] = region.bounds;
    let (x0, y0, x1, y1) = (520.0, 240.0, 520.0 + w as f32, 240.0 + h as f32);
    // Within the mark (a corner sits on the ink's edge: a few pixels of slack),
    // and across most of it.
    assert!(
        left >= x0 - 6.0 && top >= y0 - 6.0 && right <= x1 + 6.0 && bottom <= y1 + 6.0,
        "{:?} outside {:?}",
        region.bounds,
        (x0, y0, x1, y1)
    );
    assert!(right - left >= 0.6 * (x1 - x0), "{:?}", region.bounds);
    // The mark's side, in its recorded image's pixels: point for point, each
    // where the paste took it (scaled to 300 pixels wide, moved to 520, 240),
    // within verification's tolerance (3.5% of the view's longer side).
    let recorded = image::open(&path).unwrap();
    let scale = w as f32 / recorded.width() as f32;
    let on_mark = best.mark_region.as_ref().expect("the mark's side");
    assert_eq!(on_mark.points.len(), region.points.len());
    for (p, m) in region.points.iter().zip(&on_mark.points) {
        let went = [520.0 + scale * m[0], 240.0 + scale * m[1]];
        let off = (went[0] - p[0]).hypot(went[1] - p[1]);
        assert!(
            off < 0.05 * w as f32,
            "{m:?} went to {went:?}, found at {p:?}"
        );
    }
    let [ml, mt, mr, mb] = on_mark.bounds;
    let slack = 6.0 / scale;
    assert!(
        ml >= -slack
            && mt >= -slack
            && mr <= recorded.width() as f32 + slack
            && mb <= recorded.height() as f32 + slack,
        "{:?} outside the recorded image",
        on_mark.bounds
    );
    for m in &result.matches {
        assert_eq!(m.region.is_some(), m.inliers > 0, "{}", m.record.id);
        assert_eq!(m.mark_region.is_some(), m.inliers > 0, "{}", m.record.id);
    }
}

/// `mark` (a drawing on white) knocked out of a dark block, as printed on
/// packaging, turned by `degrees` on a pale label: a JPEG photo.
fn knocked_out(mark: &image::RgbImage, degrees: f32) -> Vec<u8> {
    let is_ink = |x: u32, y: u32| mark.get_pixel(x, y).0.iter().min() < Some(&190);
    let (mut x0, mut y0, mut x1, mut y1) = (mark.width(), mark.height(), 0, 0);
    for (x, y, _) in mark.enumerate_pixels() {
        if is_ink(x, y) {
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1));
        }
    }
    let mark = image::imageops::crop_imm(mark, x0, y0, x1 - x0, y1 - y0).to_image();
    let pad = mark.width().max(mark.height()) as f32 * 0.12;
    let (bw, bh) = (
        mark.width() as f32 + 2.0 * pad,
        mark.height() as f32 + 2.0 * pad,
    );
    let side = (bw.max(bh) * 1.6) as u32;
    let (sin, cos) = degrees.to_radians().sin_cos();
    let (paper, ink) = (image::Rgb([236u8, 232, 222]), image::Rgb([40u8, 52, 120]));
    let photo = image::RgbImage::from_fn(side, side, |x, y| {
        // Back from the photo into the block's frame.
        let (dx, dy) = (x as f32 - side as f32 / 2.0, y as f32 - side as f32 / 2.0);
        let (u, v) = (
            cos * dx + sin * dy + bw / 2.0,
            -sin * dx + cos * dy + bh / 2.0,
        );
        if u < 0.0 || v < 0.0 || u >= bw || v >= bh {
            return paper;
        }
        let (mx, my) = ((u - pad).floor(), (v - pad).floor());
        let knocked = mx >= 0.0
            && my >= 0.0
            && (mx as u32) < mark.width()
            && (my as u32) < mark.height()
            && is_ink(mx as u32 + x0, my as u32 + y0);
        if knocked { paper } else { ink }
    });
    let mut bytes = std::io::Cursor::new(Vec::new());
    photo
        .write_to(&mut bytes, image::ImageFormat::Jpeg)
        .unwrap();
    bytes.into_inner()
}

#[test]
fn knockouts_find_marks_knocked_out_of_a_tilted_block() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    let marks = gallery();
    enroll_all(&engine, &marks);
    let (mut plain, mut searched, mut photos) = (0, 0, 0);
    for (id, path) in marks.iter().step_by(25) {
        let mark = image::open(path).unwrap().into_rgb8();
        let photo = knocked_out(&mark, 14.0);
        let found = |knockouts: bool| {
            let options = SearchOptions {
                knockouts,
                ..SearchOptions::default()
            };
            let result = engine.search(&photo, &options).unwrap();
            let first = result.matches[0].record.id == *id;
            (first, result.query_views.len())
        };
        let (off, off_views) = found(false);
        let (on, on_views) = found(true);
        assert!(
            on_views > off_views,
            "{id}: {off_views} -> {on_views} views"
        );
        photos += 1;
        plain += usize::from(off);
        searched += usize::from(on);
    }
    assert!(photos >= 8, "{photos} photos");
    // The knocked-out view finds most marks first, more than the block alone.
    assert!(searched * 10 >= photos * 7, "{searched} of {photos} found");
    assert!(searched > plain, "{plain} -> {searched} of {photos}");
}

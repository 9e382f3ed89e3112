//! The calibrated decision returned with every search: match, possible match or
//! no match.
//!
//! An officer at a counter needs a verdict, not a cosine. The verdict comes from
//! thresholds on the best match's score and inlier margin, chosen on labelled photos of marks that are
//! recorded and of marks that are not (the benchmark's calibration split, or an
//! operator's own photos), never on the photos a figure is reported for:
//!
//! - below `no_match_below`, the photo is reported as showing no recorded mark. The
//!   threshold lets through all but `max_miss` (1%) of the photos of recorded marks;
//! - at or above `match_from`, the best match is reported as a match. The threshold
//!   is the lowest at which at least `min_precision` (99%) of the calibration photos
//!   scoring that high had their mark ranked first;
//! - the best match is also a match when at least `match_inlier_margin` more of its
//!   corners line up with the photo than any other verified candidate's, chosen the
//!   same way. The score alone rarely reaches 99% precision: a wrong mark can come
//!   close in cosine and carry a few chance inliers, but it seldom leads every rival
//!   by dozens, while a right mark found on a clear photo usually does. Under a
//!   filter (Nice class, status, holder) the rivals are the marks that pass it;
//! - in between, a possible match, for the officer to look at.
//!
//! Scores depend on the model and on the gallery (more marks, higher scores for
//! unrecorded photos), so a calibration names the vector space it was made in and
//! the gallery size, and is redone when either changes much.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a search concludes about its best match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The best match is the mark in the photo, at the calibrated precision.
    Match,
    /// The best match may be the mark; a person should look.
    Possible,
    /// No recorded mark is in the photo, or none passed the search's filters.
    NoMatch,
    /// The engine has no calibration for its model; only scores are given.
    Uncalibrated,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Match => "match",
            Decision::Possible => "possible",
            Decision::NoMatch => "no_match",
            Decision::Uncalibrated => "uncalibrated",
        }
    }
}

/// Share of photos of recorded marks that may be called "no match" (1% FPR of the
/// "no match" decision).
pub const DEFAULT_MAX_MISS: f64 = 0.01;
/// Share of "match" decisions that must have the right mark first.
pub const DEFAULT_MIN_PRECISION: f64 = 0.99;

/// What a search's decision rests on.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Evidence {
    /// Score of the best match (`None`: nothing came back).
    pub top_score: Option<f32>,
    /// How many more inliers the best match has than its strongest rival, the
    /// other verified candidate with the most (0 when it has no more; all of its
    /// own when nothing else was verified).
    pub inlier_margin: u32,
}

impl Evidence {
    /// The evidence for `best` (score, inliers) against the inliers of every other
    /// verified candidate. Not the runner-up by score: the score counts the
    /// support (inliers less those chance accounts for) up to
    /// [`crate::verify::CAP`], so a lower-scored rival may have more inliers.
    pub fn new(best: Option<(f32, u32)>, rivals: impl IntoIterator<Item = u32>) -> Evidence {
        let rival = rivals.into_iter().max().unwrap_or(0);
        Evidence {
            top_score: best.map(|(score, _)| score),
            inlier_margin: best.map_or(0, |(_, inliers)| inliers.saturating_sub(rival)),
        }
    }
}

/// One labelled calibration photo after search.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Labelled {
    /// What its search found.
    pub evidence: Evidence,
    /// The photo shows a recorded mark.
    pub recorded: bool,
    /// The best match is that mark (always false for unrecorded photos).
    pub top_correct: bool,
}

/// Thresholds for the decision, and what they rest on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// The vector space (model fingerprint) the scores belong to.
    pub fingerprint: String,
    /// How the scores were made from similarities and verification
    /// ([`crate::verify::SCORING`]); empty in calibrations stored before it was
    /// recorded, which therefore match no scoring.
    #[serde(default)]
    pub scoring: String,
    /// A best score at or above this is a match; infinite when no score reached
    /// the precision (stored as `null`).
    #[serde(with = "score_or_never")]
    pub match_from: f32,
    /// A best score below this is no match.
    pub no_match_below: f32,
    /// A best match with at least this many more inliers than its strongest rival
    /// is a match too (scoring at least `no_match_below`). `None`: no margin reached the
    /// precision.
    #[serde(default)]
    pub match_inlier_margin: Option<u32>,
    /// The targets the thresholds were chosen for.
    pub max_miss: f64,
    pub min_precision: f64,
    /// Photos of recorded and of unrecorded marks used.
    pub recorded: usize,
    pub unrecorded: usize,
    /// Marks in the gallery when calibrated.
    pub gallery: usize,
}

/// JSON has no infinity: serde_json would write an infinite `match_from` as
/// `null` and then refuse to read it back, losing the calibration on restart.
/// "Never" is stored as `null` on purpose and read back as infinite.
mod score_or_never {
    use super::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(score: &f32, to: S) -> Result<S::Ok, S::Error> {
        score.is_finite().then_some(*score).serialize(to)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(from: D) -> Result<f32, D::Error> {
        Ok(Option::<f32>::deserialize(from)?.unwrap_or(f32::INFINITY))
    }
}

/// Why a calibration could not be made.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CalibrationError {
    #[error("calibration needs photos of recorded marks; none were given")]
    NoRecorded,
    #[error("target {name} = {value} is outside (0, 1)")]
    Target { name: &'static str, value: f64 },
}

impl Calibration {
    /// Chooses thresholds on `photos` for the given targets.
    ///
    /// `no_match_below` is the `max_miss` quantile of the recorded photos' best
    /// scores; `match_from` is the lowest best score at which the photos scoring at
    /// least that much reach `min_precision`, and never below `no_match_below`. If
    /// no score reaches the precision, no score alone makes a match.
    /// `match_inlier_margin` is then the lowest inlier margin at which the photos
    /// called a match by either rule still reach `min_precision`.
    pub fn fit(
        photos: &[Labelled],
        max_miss: f64,
        min_precision: f64,
        fingerprint: &str,
        gallery: usize,
    ) -> Result<Calibration, CalibrationError> {
        for (name, value) in [("max_miss", max_miss), ("min_precision", min_precision)] {
            if !(value > 0.0 && value < 1.0) {
                return Err(CalibrationError::Target { name, value });
            }
        }
        let mut recorded: Vec<f32> = photos
            .iter()
            .filter(|p| p.recorded)
            .map(|p| p.evidence.top_score.unwrap_or(f32::NEG_INFINITY))
            .collect();
        if recorded.is_empty() {
            return Err(CalibrationError::NoRecorded);
        }
        recorded.sort_by(f32::total_cmp);
        // At most floor(max_miss * n) recorded photos score below the threshold.
        let misses = (max_miss * recorded.len() as f64).floor() as usize;
        let no_match_below = recorded[misses.min(recorded.len() - 1)];

        let mut ranked: Vec<(f32, bool)> = photos
            .iter()
            .filter_map(|p| {
                p.evidence
                    .top_score
                    .map(|s| (s, p.recorded && p.top_correct))
            })
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
        let match_from = lowest_precise(&ranked, (0, 0), min_precision)
            .unwrap_or(f32::INFINITY)
            .max(no_match_below);
        Ok(Calibration {
            fingerprint: fingerprint.to_owned(),
            scoring: crate::verify::SCORING.to_owned(),
            match_from,
            no_match_below,
            match_inlier_margin: inlier_margin(photos, match_from, no_match_below, min_precision),
            max_miss,
            min_precision,
            recorded: recorded.len(),
            unrecorded: photos.iter().filter(|p| !p.recorded).count(),
            gallery,
        })
    }

    /// The decision for a search that found `evidence`.
    pub fn decide(&self, evidence: Evidence) -> Decision {
        let by_margin = self
            .match_inlier_margin
            .is_some_and(|m| evidence.inlier_margin >= m);
        match evidence.top_score {
            Some(s) if s >= self.match_from => Decision::Match,
            Some(s) if s >= self.no_match_below && by_margin => Decision::Match,
            Some(s) if s >= self.no_match_below => Decision::Possible,
            _ => Decision::NoMatch,
        }
    }
}

/// The lowest inlier margin at which the photos called a match, by it or by a
/// score of at least `match_from`, reach `min_precision` (among photos scoring at
/// least `no_match_below`); `None` if none does.
fn inlier_margin(
    photos: &[Labelled],
    match_from: f32,
    no_match_below: f32,
    min_precision: f64,
) -> Option<u32> {
    let right = |p: &Labelled| p.recorded && p.top_correct;
    let scored = |p: &&Labelled| p.evidence.top_score.is_some_and(|s| s >= no_match_below);
    let by_score = |p: &Labelled| p.evidence.top_score.is_some_and(|s| s >= match_from);
    // (right, called) among the photos the score already calls a match.
    let mut by_score_alone = (0usize, 0usize);
    let mut rest: Vec<(u32, bool)> = Vec::new();
    for p in photos.iter().filter(scored) {
        if by_score(p) {
            by_score_alone.0 += usize::from(right(p));
            by_score_alone.1 += 1;
        } else if p.evidence.inlier_margin > 0 {
            rest.push((p.evidence.inlier_margin, right(p)));
        }
    }
    rest.sort_by_key(|&(margin, _)| std::cmp::Reverse(margin));
    lowest_precise(&rest, by_score_alone, min_precision)
}

/// The lowest threshold at which the photos called a match reach `min_precision`.
/// `ranked` holds the further photos a threshold would call, highest value first,
/// each with whether its best match is right; `(right, called)` counts the photos
/// called a match whatever the threshold. Photos with equal values go in together.
/// `None` if no threshold reaches the precision.
fn lowest_precise<T: PartialOrd + Copy>(
    ranked: &[(T, bool)],
    (mut right, mut called): (usize, usize),
    min_precision: f64,
) -> Option<T> {
    let mut lowest = None;
    for (n, &(value, correct)) in ranked.iter().enumerate() {
        right += usize::from(correct);
        called += 1;
        let last_of_tie = ranked.get(n + 1).is_none_or(|next| next.0 < value);
        if last_of_tie && right as f64 >= min_precision * called as f64 {
            lowest = Some(value);
        }
    }
    lowest
}

/// The decision under an optional calibration.
pub fn decide(calibration: Option<&Calibration>, evidence: Evidence) -> Decision {
    calibration.map_or(Decision::Uncalibrated, |c| c.decide(evidence))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(score: f32) -> Evidence {
        Evidence {
            top_score: Some(score),
            inlier_margin: 0,
        }
    }

    fn recorded(score: f32, correct: bool) -> Labelled {
        Labelled {
            evidence: scored(score),
            recorded: true,
            top_correct: correct,
        }
    }

    fn unrecorded(score: f32) -> Labelled {
        Labelled {
            evidence: scored(score),
            recorded: false,
            top_correct: false,
        }
    }

    fn with_margin(mut photo: Labelled, inlier_margin: u32) -> Labelled {
        photo.evidence.inlier_margin = inlier_margin;
        photo
    }

    #[test]
    fn no_match_threshold_misses_at_most_the_target_share() {
        // 200 recorded photos scoring 0.500..0.699; 1% may be missed: 2 of them.
        let photos: Vec<_> = (0..200)
            .map(|i| recorded(0.5 + i as f32 / 1000.0, true))
            .collect();
        let c = Calibration::fit(&photos, 0.01, 0.99, "m", 10).unwrap();
        let missed = photos
            .iter()
            .filter(|p| c.decide(p.evidence) == Decision::NoMatch)
            .count();
        assert_eq!(missed, 2);
        assert_eq!(c.recorded, 200);
    }

    #[test]
    fn match_threshold_reaches_the_precision() {
        // High scores are right, a band of wrong answers sits at 0.80-0.84, two
        // unrecorded photos score 0.86: 100 right of 101 is under 99.5%, so the
        // match threshold must sit above them.
        let mut photos: Vec<_> = (0..100)
            .map(|i| recorded(0.87 + i as f32 / 1000.0, true))
            .collect();
        photos.extend((0..5).map(|i| recorded(0.80 + i as f32 / 100.0, false)));
        photos.extend([unrecorded(0.86), unrecorded(0.861)]);
        photos.extend((0..50).map(|i| unrecorded(0.3 + i as f32 / 1000.0)));
        let c = Calibration::fit(&photos, 0.01, 0.995, "m", 10).unwrap();
        assert_eq!(c.match_from, 0.87);
        assert_eq!(c.decide(scored(0.95)), Decision::Match);
        assert_eq!(c.decide(scored(0.83)), Decision::Possible);
        assert_eq!(c.decide(scored(0.2)), Decision::NoMatch);
        assert_eq!(c.decide(Evidence::default()), Decision::NoMatch);
        assert_eq!(c.unrecorded, 52);
    }

    #[test]
    fn never_a_match_when_no_score_is_precise_enough() {
        let photos = vec![recorded(0.9, false), recorded(0.8, true), unrecorded(0.95)];
        let c = Calibration::fit(&photos, 0.01, 0.99, "m", 3).unwrap();
        assert_eq!(c.match_from, f32::INFINITY);
        assert_eq!(c.decide(scored(1.0)), Decision::Possible);
    }

    #[test]
    fn bad_targets_and_empty_input_are_refused() {
        assert_eq!(
            Calibration::fit(&[unrecorded(0.5)], 0.01, 0.99, "m", 1),
            Err(CalibrationError::NoRecorded)
        );
        assert!(matches!(
            Calibration::fit(&[recorded(0.5, true)], 0.0, 0.99, "m", 1),
            Err(CalibrationError::Target { .. })
        ));
        assert_eq!(decide(None, scored(0.9)), Decision::Uncalibrated);
    }

    #[test]
    fn an_inlier_margin_makes_a_match_where_the_score_cannot() {
        // Scores say nothing: right and wrong answers all score 0.60-0.69. Right
        // answers lead their rivals by 30-79 inliers, wrong ones by at most 12,
        // except one wrong answer with a margin of 40 among 50 right ones above it.
        let mut photos: Vec<_> = (0..50)
            .map(|i| with_margin(recorded(0.6 + i as f32 / 1000.0, true), 30 + i))
            .collect();
        photos.extend(
            (0..30).map(|i| with_margin(recorded(0.65 + i as f32 / 1000.0, false), i % 13)),
        );
        photos.push(with_margin(unrecorded(0.69), 40));
        photos.extend((0..30).map(|i| with_margin(unrecorded(0.61 + i as f32 / 1000.0), i % 9)));
        let c = Calibration::fit(&photos, 0.01, 0.98, "m", 10).unwrap();
        assert_eq!(c.match_from, f32::INFINITY);
        // 50 right and 1 wrong from 30 up: 98.0%; from 13 down wrong ones join.
        assert_eq!(c.match_inlier_margin, Some(30));
        let margin = |m| Evidence {
            top_score: Some(0.65),
            inlier_margin: m,
        };
        assert_eq!(c.decide(margin(30)), Decision::Match);
        assert_eq!(c.decide(margin(29)), Decision::Possible);
        // Below the no-match threshold no margin makes a match.
        let weak = Evidence {
            top_score: Some(c.no_match_below - 0.01),
            inlier_margin: 100,
        };
        assert_eq!(c.decide(weak), Decision::NoMatch);
        // At 99.5% the wrong answer at 40 cannot be outweighed: the margin must
        // clear it.
        let strict = Calibration::fit(&photos, 0.01, 0.995, "m", 10).unwrap();
        assert_eq!(strict.match_inlier_margin, Some(41));
    }

    #[test]
    fn the_margin_is_over_the_strongest_rival() {
        let e = Evidence::new(Some((0.9, 80)), [12, 70, 3]);
        assert_eq!((e.top_score, e.inlier_margin), (Some(0.9), 10));
        assert_eq!(Evidence::new(Some((0.9, 5)), [12]).inlier_margin, 0);
        assert_eq!(Evidence::new(Some((0.9, 5)), []).inlier_margin, 5);
        assert_eq!(Evidence::new(None, [7]), Evidence::default());
    }

    #[test]
    fn a_calibration_that_never_matches_by_score_survives_storage() {
        let photos = vec![
            with_margin(recorded(0.9, true), 60),
            with_margin(recorded(0.8, false), 2),
            unrecorded(0.95),
        ];
        let c = Calibration::fit(&photos, 0.01, 0.99, "m", 3).unwrap();
        assert_eq!(c.match_from, f32::INFINITY);
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains(r#""match_from":null"#), "{json}");
        let back: Calibration = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn calibrations_stored_before_the_margin_rule_still_parse() {
        // Reading one must not fail, so that the engine can tell why it does not
        // apply (no scoring is recorded) rather than call it unreadable.
        let old = r#"{"fingerprint":"m","match_from":1.1,"no_match_below":0.4,
            "max_miss":0.01,"min_precision":0.99,"recorded":10,"unrecorded":5,"gallery":3}"#;
        let c: Calibration = serde_json::from_str(old).unwrap();
        assert_eq!(c.scoring, "");
        assert_eq!(c.match_inlier_margin, None);
        let e = Evidence {
            top_score: Some(0.5),
            inlier_margin: 1000,
        };
        assert_eq!(c.decide(e), Decision::Possible);
    }
}

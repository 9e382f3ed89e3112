//! The calibrated decision returned with every search: match, possible match or
//! no match.
//!
//! An officer at a counter needs a verdict, not a cosine. The verdict comes from two
//! score thresholds on the best match, chosen on labelled photos of marks that are
//! recorded and of marks that are not (the benchmark's calibration split, or an
//! operator's own photos), never on the photos a figure is reported for:
//!
//! - below `no_match_below`, the photo is reported as showing no recorded mark. The
//!   threshold lets through all but `max_miss` (1%) of the photos of recorded marks;
//! - at or above `match_from`, the best match is reported as a match. The threshold
//!   is the lowest at which at least `min_precision` (99%) of the calibration photos
//!   scoring that high had their mark ranked first;
//! - in between, a possible match, for the officer to look at.
//!
//! Scores depend on the model and on the gallery (more marks, higher scores for
//! unrecorded photos), so a calibration names the vector space it was made in and
//! the gallery size, and is redone when either changes much.

use serde::{Deserialize, Serialize};

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

/// One labelled calibration photo after search.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Labelled {
    /// Score of the best match (`None`: nothing came back).
    pub top_score: Option<f32>,
    /// The photo shows a recorded mark.
    pub recorded: bool,
    /// The best match is that mark (always false for unrecorded photos).
    pub top_correct: bool,
}

/// Score thresholds for the decision, and what they rest on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// The vector space (model fingerprint) the scores belong to.
    pub fingerprint: String,
    /// A best score at or above this is a match.
    pub match_from: f32,
    /// A best score below this is no match.
    pub no_match_below: f32,
    /// The targets the thresholds were chosen for.
    pub max_miss: f64,
    pub min_precision: f64,
    /// Photos of recorded and of unrecorded marks used.
    pub recorded: usize,
    pub unrecorded: usize,
    /// Marks in the gallery when calibrated.
    pub gallery: usize,
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
    /// no score reaches the precision, nothing is ever called a match.
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
            .map(|p| p.top_score.unwrap_or(f32::NEG_INFINITY))
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
            .filter_map(|p| p.top_score.map(|s| (s, p.recorded && p.top_correct)))
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut right = 0usize;
        let mut match_from = f32::INFINITY;
        for (n, (score, correct)) in ranked.iter().enumerate() {
            right += usize::from(*correct);
            let last_of_tie = ranked.get(n + 1).is_none_or(|next| next.0 < *score);
            if last_of_tie && right as f64 >= min_precision * (n + 1) as f64 {
                match_from = *score;
            }
        }
        Ok(Calibration {
            fingerprint: fingerprint.to_owned(),
            match_from: match_from.max(no_match_below),
            no_match_below,
            max_miss,
            min_precision,
            recorded: recorded.len(),
            unrecorded: photos.iter().filter(|p| !p.recorded).count(),
            gallery,
        })
    }

    /// The decision for a search whose best match scored `top` (`None`: no match
    /// came back at all).
    pub fn decide(&self, top: Option<f32>) -> Decision {
        match top {
            Some(s) if s >= self.match_from => Decision::Match,
            Some(s) if s >= self.no_match_below => Decision::Possible,
            _ => Decision::NoMatch,
        }
    }
}

/// The decision under an optional calibration.
pub fn decide(calibration: Option<&Calibration>, top: Option<f32>) -> Decision {
    calibration.map_or(Decision::Uncalibrated, |c| c.decide(top))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(score: f32, correct: bool) -> Labelled {
        Labelled {
            top_score: Some(score),
            recorded: true,
            top_correct: correct,
        }
    }

    fn unrecorded(score: f32) -> Labelled {
        Labelled {
            top_score: Some(score),
            recorded: false,
            top_correct: false,
        }
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
            .filter(|p| c.decide(p.top_score) == Decision::NoMatch)
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
        assert_eq!(c.decide(Some(0.95)), Decision::Match);
        assert_eq!(c.decide(Some(0.83)), Decision::Possible);
        assert_eq!(c.decide(Some(0.2)), Decision::NoMatch);
        assert_eq!(c.decide(None), Decision::NoMatch);
        assert_eq!(c.unrecorded, 52);
    }

    #[test]
    fn never_a_match_when_no_score_is_precise_enough() {
        let photos = vec![recorded(0.9, false), recorded(0.8, true), unrecorded(0.95)];
        let c = Calibration::fit(&photos, 0.01, 0.99, "m", 3).unwrap();
        assert_eq!(c.match_from, f32::INFINITY);
        assert_eq!(c.decide(Some(1.0)), Decision::Possible);
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
        assert_eq!(decide(None, Some(0.9)), Decision::Uncalibrated);
    }
}

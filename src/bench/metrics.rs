//! Retrieval metrics: recall@k, mean reciprocal rank, normalised average rank,
//! and the open-set "no match" operating points.
//!
//! Pure functions over ranks and scores, so the known answers of small
//! hand-made cases pin them down (see the tests below).

use serde::Serialize;

use crate::service::stats::percentile;

/// What one query gave: where its relevant marks ranked, and its best score.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryOutcome {
    /// 1-based ranks of every relevant mark in the full ranking of the gallery;
    /// empty for an open-set query (its mark is not recorded).
    pub relevant_ranks: Vec<usize>,
    /// Score of the rank-1 mark: what a "no match" decision thresholds.
    pub top_score: f32,
}

impl QueryOutcome {
    /// The best (smallest) rank of a relevant mark, if the query has any.
    pub fn first_rank(&self) -> Option<usize> {
        self.relevant_ranks.iter().copied().min()
    }

    pub fn is_open_set(&self) -> bool {
        self.relevant_ranks.is_empty()
    }
}

/// Summary of the closed-set queries of one group (a level or a variant kind).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RetrievalSummary {
    pub queries: usize,
    pub recall_at_1: f64,
    pub recall_at_5: f64,
    pub recall_at_10: f64,
    /// Mean reciprocal rank of the first relevant mark.
    pub mrr: f64,
    /// Normalised average rank (Müller et al.): 0 is perfect, 0.5 is chance.
    pub nar: f64,
}

/// Fraction of queries whose first relevant mark ranks within `k`.
pub fn recall_at(outcomes: &[&QueryOutcome], k: usize) -> f64 {
    mean(outcomes.iter().map(|o| {
        if o.first_rank().is_some_and(|r| r <= k) {
            1.0
        } else {
            0.0
        }
    }))
}

/// Mean of 1 / (rank of the first relevant mark).
pub fn mrr(outcomes: &[&QueryOutcome]) -> f64 {
    mean(
        outcomes
            .iter()
            .map(|o| o.first_rank().map_or(0.0, |r| 1.0 / r as f64)),
    )
}

/// Normalised average rank of one query over a gallery of `gallery` marks:
/// `(sum of relevant ranks - n(n+1)/2) / (N n)`, 0 when the n relevant marks
/// take the first n places.
pub fn nar(ranks: &[usize], gallery: usize) -> f64 {
    let n = ranks.len() as f64;
    if n == 0.0 || gallery == 0 {
        return 0.0;
    }
    let sum: f64 = ranks.iter().map(|&r| r as f64).sum();
    (sum - n * (n + 1.0) / 2.0) / (gallery as f64 * n)
}

/// All closed-set metrics of a group of queries; open-set queries are ignored.
pub fn summarise(outcomes: &[&QueryOutcome], gallery: usize) -> RetrievalSummary {
    let closed: Vec<&QueryOutcome> = outcomes
        .iter()
        .copied()
        .filter(|o| !o.is_open_set())
        .collect();
    RetrievalSummary {
        queries: closed.len(),
        recall_at_1: recall_at(&closed, 1),
        recall_at_5: recall_at(&closed, 5),
        recall_at_10: recall_at(&closed, 10),
        mrr: mrr(&closed),
        nar: mean(closed.iter().map(|o| nar(&o.relevant_ranks, gallery))),
    }
}

/// One operating point of the "no match" decision: a search says "no match"
/// when its top score is below `threshold`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpenSetPoint {
    /// Target false-positive rate: recorded marks wrongly called "no match".
    pub target_fpr: f64,
    pub threshold: f32,
    /// Fraction of open-set queries called "no match" at that threshold.
    pub tpr: f64,
    /// The false-positive rate actually reached (at most the target).
    pub fpr: f64,
    /// Whether the recorded queries are enough to tell this target apart: with
    /// fewer than 1 / target of them, the only threshold that keeps within it is
    /// "below every recorded score", whatever the target.
    pub resolvable: bool,
    /// Scores on each side, for reading the figure.
    pub recorded: usize,
    pub unrecorded: usize,
}

/// The highest threshold whose false-positive rate on `recorded` (top scores
/// of queries whose mark is in the gallery) stays at or below `target_fpr`, and
/// the share of `unrecorded` (open-set top scores) it rejects.  `None` without
/// scores on either side.
pub fn open_set_point(
    recorded: &[f32],
    unrecorded: &[f32],
    target_fpr: f64,
) -> Option<OpenSetPoint> {
    if recorded.is_empty() || unrecorded.is_empty() {
        return None;
    }
    let mut sorted = recorded.to_vec();
    sorted.sort_by(f32::total_cmp);
    // At most `allowed` recorded scores may fall strictly below the threshold.
    let allowed = (target_fpr * sorted.len() as f64 + 1e-9).floor() as usize;
    let threshold = sorted[allowed.min(sorted.len() - 1)];
    let below = |scores: &[f32]| scores.iter().filter(|&&s| s < threshold).count() as f64;
    Some(OpenSetPoint {
        target_fpr,
        threshold,
        tpr: below(unrecorded) / unrecorded.len() as f64,
        fpr: below(recorded) / recorded.len() as f64,
        resolvable: allowed >= 1,
        recorded: recorded.len(),
        unrecorded: unrecorded.len(),
    })
}

/// Percentiles (nearest rank) of a sample, in the sample's unit.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

impl Percentiles {
    pub fn of(sample: &[f64]) -> Percentiles {
        let mut sorted = sample.to_vec();
        sorted.sort_by(f64::total_cmp);
        Percentiles {
            p50: percentile(&sorted, 0.50),
            p95: percentile(&sorted, 0.95),
            p99: percentile(&sorted, 0.99),
        }
    }
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { 0.0 } else { sum / n as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(ranks: &[usize], top: f32) -> QueryOutcome {
        QueryOutcome {
            relevant_ranks: ranks.to_vec(),
            top_score: top,
        }
    }

    #[test]
    fn recall_and_mrr_on_a_hand_made_case() {
        // first relevant ranks 1, 3, 12 and 2; one open-set query (ignored).
        let all = [
            q(&[1], 0.9),
            q(&[3, 7], 0.8),
            q(&[12], 0.7),
            q(&[5, 2], 0.8),
            q(&[], 0.4),
        ];
        let refs: Vec<&QueryOutcome> = all.iter().collect();
        let s = summarise(&refs, 100);
        assert_eq!(s.queries, 4);
        assert_eq!(s.recall_at_1, 0.25);
        assert_eq!(s.recall_at_5, 0.75);
        assert_eq!(s.recall_at_10, 0.75);
        let expected_mrr = (1.0 + 1.0 / 3.0 + 1.0 / 12.0 + 0.5) / 4.0;
        assert!((s.mrr - expected_mrr).abs() < 1e-12);
    }

    #[test]
    fn nar_is_zero_when_perfect_and_near_one_when_last() {
        assert_eq!(nar(&[1], 10), 0.0);
        assert_eq!(nar(&[2, 1, 3], 10), 0.0);
        // one relevant mark at the last of 11 places: (11 - 1) / 11
        assert!((nar(&[11], 11) - 10.0 / 11.0).abs() < 1e-12);
        // two relevant marks at ranks 3 and 5 of 10: (8 - 3) / 20
        assert!((nar(&[3, 5], 10) - 0.25).abs() < 1e-12);
        assert_eq!(nar(&[], 10), 0.0);
    }

    #[test]
    fn open_set_threshold_keeps_false_positives_within_target() {
        // 100 recorded queries scoring 0.50..0.99, open set scoring 0.30..0.69.
        let recorded: Vec<f32> = (0..100).map(|i| 0.50 + i as f32 * 0.005).collect();
        let unrecorded: Vec<f32> = (0..40).map(|i| 0.30 + i as f32 * 0.01).collect();
        let p = open_set_point(&recorded, &unrecorded, 0.01).unwrap();
        // one recorded score (0.50) may fall below: the threshold is the second, 0.505
        assert!((p.threshold - 0.505).abs() < 1e-6);
        assert!((p.fpr - 0.01).abs() < 1e-12);
        // open-set scores below 0.505: 0.30 .. 0.50 -> 21 of 40
        assert!((p.tpr - 21.0 / 40.0).abs() < 1e-12);
        assert!(p.resolvable);
        assert_eq!((p.recorded, p.unrecorded), (100, 40));
        // 0.1% of 100 recorded queries is below one query: not resolvable.
        let fine = open_set_point(&recorded, &unrecorded, 0.001).unwrap();
        assert!(!fine.resolvable);
        assert_eq!(fine.fpr, 0.0);
        assert!(fine.tpr <= p.tpr);
        assert!(open_set_point(&[], &unrecorded, 0.01).is_none());
    }
}

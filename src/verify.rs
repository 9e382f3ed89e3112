//! Geometric verification: does a candidate mark share the photo's parts, laid
//! out the same way?
//!
//! The global embedding finds the right mark among the first few dozen candidates
//! far more often than at the first place: lookalikes (another shield, another leaf)
//! score as high as the mark itself. Verification re-ranks those candidates by
//! evidence the embedding does not weigh: corners of the photo's views
//! ([`Keypoints`]) matched by descriptor to corners of the candidate's views, and
//! how many of those matches one similarity transform (turn, scale, shift)
//! carries onto each other. A lookalike's matches scatter; the mark's line up.
//!
//! 1. Matching: each photo corner's nearest candidate corner by Hamming distance,
//!    kept when clearly nearer than the second nearest ([`RATIO`]).
//! 2. Consensus: a similarity transform is proposed from each of [`TRIALS`] pairs
//!    of matches (drawn from a fixed seed, so a search is repeatable), within
//!    plausible scales, and scored by the matches it carries within [`TOLERANCE`]
//!    whose corners' orientations also differ by its turn, within [`TURN`]
//!    degrees; the best count is the candidate's `inliers`.
//! 3. Support: the inliers less the share [`CHANCE`] of the matches they were
//!    drawn from. A candidate whose corners match the photo's by the hundred
//!    (a busy drawing, a grid of dots) lines up a few of them by chance; the
//!    mark lines up most of its few.
//! 4. Fusion: the candidate's score becomes its cosine similarity plus
//!    [`WEIGHT`] times its support (capped at [`CAP`]) over [`CAP`].
//!
//! The engine verifies candidates in order of similarity, and stops early where
//! that cannot change the first place: a candidate more than [`WEIGHT`] below the
//! best similarity is never verified, and past the first [`RIVALS`], neither is
//! one whose similarity plus [`WEIGHT`] does not beat the best fused score so far
//! (nor can any after it). So most photos verify a handful of candidates, and
//! those whose mark sits deep in the list (an occluded mark, ranked 40th by
//! cosine) can still be reached at [`DEPTH`]. The decision's inlier margin is
//! taken over the verified candidates, which always include the first
//! [`RIVALS`] within reach.
//!
//! The constants were chosen on the calibration split only (docs/benchmarks.md).

use crate::imaging::Keypoints;
#[cfg(target_arch = "x86_64")]
use crate::imaging::keypoints::WORDS;
use crate::seeded::SplitMix;
use std::ops::Range;

/// Names the scoring: which candidates are verified, how their inliers are
/// counted and how they are fused. A fused score, and a threshold calibrated on
/// fused scores, mean the same only under the same scoring, so a calibration
/// records it ([`crate::decision::Calibration::scoring`]). It spells out the
/// constants below (a test holds it to them); a change to the consensus itself
/// must change its version.
pub const SCORING: &str = "consensus-v3 ratio=0.9 trials=300 tolerance=0.035 turn=20 span=0.05 scales=0.5..2 chance=0.05 depth=60 rivals=10 weight=0.3 cap=30";

/// How deep in the list by cosine a candidate may be and still be verified.
pub const DEPTH: usize = 60;
/// How many of the first candidates (within reach) are verified whatever the
/// best fused score: the decision's inlier margin is taken over them, and a
/// lookalike that shares the mark's parts usually ranks among them.
pub const RIVALS: usize = 10;
/// A match is kept when its distance is below this share of the second best's.
/// Looser than 0.85 since [`CHANCE`] discounts the extra matches it lets
/// through: at 0.9 alone, mirrored marks lost to lookalikes' chance inliers.
const RATIO: f32 = 0.9;
/// Proposals tried per view pair.
const TRIALS: usize = 300;
/// A match agrees with a transform when it lands this close, in units of the
/// view's longer side.
const TOLERANCE: f32 = 0.035;
/// A match agrees with a transform only when the turn between its two corners'
/// orientations is within this many degrees of the transform's turn. A chance
/// match's corners point anywhere; the mark's turn with the view. 10 to 20
/// degrees gave the same recall on the calibration split, 30 and 45 less.
const TURN: f32 = 20.0;
/// Two matches propose a transform only when this far apart in the photo view
/// (closer, the turn and scale they imply are noise).
const MIN_SPAN: f32 = 0.05;
/// Plausible scales between a photo view and a mark view (both are cropped to
/// their ink, so the scale is near 1 unless the crop caught more or less).
const SCALES: (f32, f32) = (0.5, 2.0);
/// The share of a view pair's matches that a transform is taken to carry by
/// chance, and which the support leaves out. 0.03 to 0.08 ranked alike on the
/// calibration split.
const CHANCE: f32 = 0.05;
/// Support beyond this adds nothing: past it, the candidate is verified.
pub const CAP: u32 = 30;
/// Score added by a fully verified candidate.
pub const WEIGHT: f32 = 0.3;

/// Past the rivals, candidates are verified this many at a time (in parallel)
/// between looks at the bound: a fixed number, so that a search verifies the
/// same candidates on any machine.
const STEP: usize = 4;

/// Verifies candidates with `similarities` (best first) as far as that can change
/// the first place (see the module's documentation), calling `verify` on
/// consecutive ranges of them for their support ([`Agreement::support`]).
/// Returns the support of the verified candidates, a prefix of the list.
pub fn bounded<E>(
    similarities: &[f32],
    mut verify: impl FnMut(Range<usize>) -> Result<Vec<u32>, E>,
) -> Result<Vec<u32>, E> {
    let reach = similarities
        .first()
        .map_or(f32::NEG_INFINITY, |s| s - WEIGHT);
    let within = similarities
        .iter()
        .take(DEPTH)
        .take_while(|s| **s >= reach)
        .count();
    let mut support: Vec<u32> = Vec::with_capacity(within);
    let mut best = f32::NEG_INFINITY;
    while support.len() < within {
        let at = support.len();
        // Sorted by similarity: once one candidate cannot beat the best fused
        // score, none after it can.
        if at >= RIVALS && similarities[at] + WEIGHT <= best {
            break;
        }
        let end = within.min(if at < RIVALS { RIVALS } else { at + STEP });
        let found = verify(at..end)?;
        debug_assert_eq!(found.len(), end - at, "one count per candidate");
        for (similarity, &n) in similarities[at..end].iter().zip(&found) {
            best = best.max(fuse(*similarity, n));
        }
        support.extend(found);
    }
    Ok(support)
}

/// The fused score of a candidate with cosine similarity `similarity` and
/// `support` ([`Agreement::support`]).
pub fn fuse(similarity: f32, support: u32) -> f32 {
    similarity + WEIGHT * support.min(CAP) as f32 / CAP as f32
}

/// The matches one similarity transform carries between the photo's and the
/// candidate's views that [`agreement`] picks.
pub fn inliers(photo: &[Keypoints], candidate: &[Keypoints]) -> u32 {
    agreement(photo, candidate).map_or(0, |a| a.inliers())
}

/// What verified a candidate, to show where it matched: the pair of views (the
/// photo's, the candidate's) whose corners agreed best, and those corners on
/// each side.
#[derive(Debug, Clone, PartialEq)]
pub struct Agreement {
    /// Index of the photo's view.
    pub view: usize,
    /// The photo's corners that the transform carried onto the candidate's, in
    /// the view's keypoint units ([`Keypoints::points`]).
    pub points: Vec<[f32; 2]>,
    /// Index of the candidate's view.
    pub mark_view: usize,
    /// The candidate's corners, one for each of `points` in the same order, in
    /// its view's keypoint units.
    pub mark_points: Vec<[f32; 2]>,
    /// How many descriptor matches the two views gave (the inliers' pool).
    pub matches: u32,
}

impl Agreement {
    /// How many corners agreed: the candidate's inliers.
    pub fn inliers(&self) -> u32 {
        self.points.len() as u32
    }

    /// The inliers less those [`CHANCE`] accounts for among the matches
    /// (rounded, at least 0): what the fused score counts.
    pub fn support(&self) -> u32 {
        support(self.inliers(), self.matches)
    }
}

/// `inliers` less [`CHANCE`] of `matches`, rounded, at least 0.
fn support(inliers: u32, matches: u32) -> u32 {
    (inliers as f32 - CHANCE * matches as f32).max(0.0).round() as u32
}

/// The corners behind [`inliers`] (as many as it counts), from the first pair of
/// views that gives the most support (then the most inliers); `None` when no
/// transform carries any.
pub fn agreement(photo: &[Keypoints], candidate: &[Keypoints]) -> Option<Agreement> {
    let mut best: Option<Agreement> = None;
    for (view, p) in photo.iter().enumerate() {
        for (mark_view, c) in candidate.iter().enumerate() {
            let pairs = matches(p, c);
            let (count, Some(transform)) = consensus(&pairs, p, c) else {
                continue;
            };
            let strength = (support(count, pairs.len() as u32), count);
            if best
                .as_ref()
                .is_some_and(|b| (b.support(), b.inliers()) >= strength)
            {
                continue;
            }
            let (points, mark_points) = pairs
                .iter()
                .filter(|&&(i, j)| {
                    transform.carries(p.points[i], c.points[j], turn_between(p, i, c, j))
                })
                .map(|&(i, j)| (p.points[i], c.points[j]))
                .unzip();
            best = Some(Agreement {
                view,
                points,
                mark_view,
                mark_points,
                matches: pairs.len() as u32,
            });
        }
    }
    best
}

/// A similarity transform `q = s·p + t` of points taken as complex numbers.
#[derive(Debug, Clone, Copy)]
struct Similarity {
    s: (f32, f32),
    t: (f32, f32),
    /// `cos(TURN) · |s|`: a match's turn `(cos, sin)` agrees with the
    /// transform's when its dot product with `s` reaches this.
    reach: f32,
}

impl Similarity {
    fn new(s: (f32, f32), t: (f32, f32)) -> Similarity {
        let reach = TURN.to_radians().cos() * (s.0 * s.0 + s.1 * s.1).sqrt();
        Similarity { s, t, reach }
    }

    /// Whether the transform takes `p` within [`TOLERANCE`] of `q`, and turns
    /// as the match's corners do (`turn`: the cosine and sine of the mark
    /// corner's orientation less the photo corner's) within [`TURN`].
    #[inline(always)]
    fn carries(&self, [x0, y0]: [f32; 2], [x1, y1]: [f32; 2], [c, d]: [f32; 2]) -> bool {
        let (s, t) = (self.s, self.t);
        let x = s.0 * x0 - s.1 * y0 + t.0 - x1;
        let y = s.0 * y0 + s.1 * x0 + t.1 - y1;
        (x * x + y * y < TOLERANCE * TOLERANCE) & (c * s.0 + d * s.1 >= self.reach)
    }
}

/// The turn from photo corner `i` to mark corner `j`, as its cosine and sine.
#[inline(always)]
fn turn_between(a: &Keypoints, i: usize, b: &Keypoints, j: usize) -> [f32; 2] {
    let (sin, cos) = (b.turn(j) - a.turn(i)).sin_cos();
    [cos, sin]
}

/// Index pairs (photo, candidate) of descriptor matches that pass the ratio test.
fn matches(a: &Keypoints, b: &Keypoints) -> Vec<(usize, usize)> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vpopcntdq")
    {
        // SAFETY: the CPU has the instructions the function is compiled for.
        return unsafe { matches_avx512(a, b) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("popcnt") {
        // SAFETY: the CPU has the instruction the function is compiled for.
        return unsafe { matches_popcnt(a, b) };
    }
    matches_portable(a, b)
}

/// [`matches`] with the hardware population count: the Hamming distances are
/// most of verification's time, and the baseline x86-64 target counts bits in
/// software.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
fn matches_popcnt(a: &Keypoints, b: &Keypoints) -> Vec<(usize, usize)> {
    matches_portable(a, b)
}

/// [`matches`] eight candidate corners at a time, on CPUs that count bits in
/// 512-bit registers: the candidate's descriptors are laid out word by word, and
/// each lane keeps the nearest and second nearest distance it has seen. Same
/// result as [`matches_portable`], ties included (the nearest is the first in
/// the candidate's order). On the test split it took verification from p50 5.9
/// to 3.5 ms (docs/benchmarks.md, seventh round); matching four photo corners
/// per sweep took a candidate from 118 to 91 microseconds (thirteenth round).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vpopcntdq")]
fn matches_avx512(a: &Keypoints, b: &Keypoints) -> Vec<(usize, usize)> {
    use std::arch::x86_64::*;
    const LANES: usize = 8;
    /// Added to the distance of padding lanes: above any real distance (at most
    /// 256), so padding is never nearest nor second nearest.
    const PAD: u64 = 1 << 20;
    /// Photo corners matched per sweep over the candidate's corners.
    const BLOCK: usize = 4;
    let n = b.descriptors.len();
    if n < 2 {
        return Vec::new();
    }
    let width = n.div_ceil(LANES) * LANES;
    let mut columns = vec![0u64; WORDS * width];
    for (j, e) in b.descriptors.iter().enumerate() {
        for (w, word) in e.iter().enumerate() {
            columns[w * width + j] = *word;
        }
    }
    let mut padding = vec![0u64; width];
    padding[n..].fill(PAD);
    let load = |v: &[u64], at: usize| {
        let lanes = &v[at..at + LANES];
        // SAFETY: `lanes` holds eight u64, the 64 bytes read; unaligned loads are allowed.
        unsafe { _mm512_loadu_si512(lanes.as_ptr().cast()) }
    };
    let mut out = Vec::new();
    // BLOCK photo corners share each sweep over the candidate's columns: one
    // load of a column serves all of them, and their independent minima keep
    // the core busy. A short last block repeats its last corner.
    for first in (0..a.descriptors.len()).step_by(BLOCK) {
        let count = BLOCK.min(a.descriptors.len() - first);
        let query: [[__m512i; WORDS]; BLOCK] = std::array::from_fn(|k| {
            a.descriptors[first + k.min(count - 1)].map(|word| _mm512_set1_epi64(word as i64))
        });
        let mut best = [_mm512_set1_epi64(-1); BLOCK];
        let mut second = [_mm512_set1_epi64(-1); BLOCK];
        let mut at = [_mm512_setzero_si512(); BLOCK];
        let mut index = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
        let step = _mm512_set1_epi64(LANES as i64);
        for j in (0..width).step_by(LANES) {
            let pad = load(&padding, j);
            let column: [__m512i; WORDS] = std::array::from_fn(|w| load(&columns, w * width + j));
            for k in 0..BLOCK {
                let mut h = pad;
                for w in 0..WORDS {
                    let x = _mm512_xor_si512(column[w], query[k][w]);
                    h = _mm512_add_epi64(h, _mm512_popcnt_epi64(x));
                }
                // Per lane, as the portable loop: nearer than the nearest moves
                // the nearest to second; otherwise the second keeps the smaller.
                let nearer = _mm512_cmplt_epu64_mask(h, best[k]);
                second[k] =
                    _mm512_mask_blend_epi64(nearer, _mm512_min_epu64(second[k], h), best[k]);
                best[k] = _mm512_mask_blend_epi64(nearer, best[k], h);
                at[k] = _mm512_mask_blend_epi64(nearer, at[k], index);
            }
            index = _mm512_add_epi64(index, step);
        }
        for k in 0..count {
            let (mut bests, mut seconds, mut ats) = ([0u64; LANES], [0u64; LANES], [0u64; LANES]);
            // SAFETY: each array is 64 bytes; unaligned stores are allowed.
            unsafe {
                _mm512_storeu_si512(bests.as_mut_ptr().cast(), best[k]);
                _mm512_storeu_si512(seconds.as_mut_ptr().cast(), second[k]);
                _mm512_storeu_si512(ats.as_mut_ptr().cast(), at[k]);
            }
            // The nearest over all lanes (the first in order among equals); the
            // second nearest is the smallest of what remains: every lane's
            // second, and every other lane's nearest.
            let lane = (0..LANES)
                .min_by_key(|&l| (bests[l], ats[l]))
                .expect("eight lanes");
            let second = (0..LANES)
                .filter(|&l| l != lane)
                .map(|l| bests[l])
                .chain(seconds)
                .min()
                .expect("eight lanes");
            if clearly_nearest(bests[lane], second) {
                out.push((first + k, ats[lane] as usize));
            }
        }
    }
    out
}

/// The ratio test: the nearest corner is kept when its distance is clearly below
/// the second nearest's.
#[inline(always)]
fn clearly_nearest(best: u64, second: u64) -> bool {
    (best as f32) < RATIO * second as f32
}

#[inline(always)]
fn matches_portable(a: &Keypoints, b: &Keypoints) -> Vec<(usize, usize)> {
    if b.len() < 2 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (i, d) in a.descriptors.iter().enumerate() {
        let (mut best, mut second, mut at) = (u32::MAX, u32::MAX, 0);
        for (j, e) in b.descriptors.iter().enumerate() {
            let h = (d[0] ^ e[0]).count_ones()
                + (d[1] ^ e[1]).count_ones()
                + (d[2] ^ e[2]).count_ones()
                + (d[3] ^ e[3]).count_ones();
            if h < best {
                (second, best, at) = (best, h, j);
            } else if h < second {
                second = h;
            }
        }
        if clearly_nearest(u64::from(best), u64::from(second)) {
            out.push((i, at));
        }
    }
    out
}

/// The most matches one similarity transform carries within [`TOLERANCE`], and
/// the first transform tried that carries them (`None` when none carries any).
///
/// Points are complex numbers, so a similarity is `q = s·p + t`: two matches fix
/// `s = (q1 - q2) / (p1 - p2)` and `t`.
fn consensus(pairs: &[(usize, usize)], a: &Keypoints, b: &Keypoints) -> (u32, Option<Similarity>) {
    if pairs.len() < 3 {
        return (0, None);
    }
    // Coordinates in separate arrays: the count over every match, in each
    // trial, is then a plain loop the compiler vectorises (a candidate verified
    // in 85 rather than 91 microseconds, same counts).
    let photo =
        |axis: usize| -> Vec<f32> { pairs.iter().map(|&(i, _)| a.points[i][axis]).collect() };
    let mark =
        |axis: usize| -> Vec<f32> { pairs.iter().map(|&(_, j)| b.points[j][axis]).collect() };
    let (px, py, qx, qy) = (photo(0), photo(1), mark(0), mark(1));
    let (tc, ts): (Vec<f32>, Vec<f32>) = pairs
        .iter()
        .map(|&(i, j)| {
            let [c, s] = turn_between(a, i, b, j);
            (c, s)
        })
        .unzip();
    let n = pairs.len();
    let mut rng = SplitMix::new(0x7665_7269_6679 ^ n as u64);
    let mut best = (0, None);
    for _ in 0..TRIALS {
        let (i, j) = (rng.below(n), rng.below(n));
        let dp = (px[i] - px[j], py[i] - py[j]);
        let dq = (qx[i] - qx[j], qy[i] - qy[j]);
        let span2 = dp.0 * dp.0 + dp.1 * dp.1;
        if i == j || span2 < MIN_SPAN * MIN_SPAN {
            continue;
        }
        // s = dq / dp
        let s = (
            (dq.0 * dp.0 + dq.1 * dp.1) / span2,
            (dq.1 * dp.0 - dq.0 * dp.1) / span2,
        );
        let scale = (s.0 * s.0 + s.1 * s.1).sqrt();
        if scale <= SCALES.0 || scale >= SCALES.1 {
            continue;
        }
        let t = (
            qx[i] - (s.0 * px[i] - s.1 * py[i]),
            qy[i] - (s.0 * py[i] + s.1 * px[i]),
        );
        let transform = Similarity::new(s, t);
        // A proposal whose own matches turn otherwise than it does is noise.
        if !(transform.carries([px[i], py[i]], [qx[i], qy[i]], [tc[i], ts[i]])
            && transform.carries([px[j], py[j]], [qx[j], qy[j]], [tc[j], ts[j]]))
        {
            continue;
        }
        let agree: u32 = px
            .iter()
            .zip(&py)
            .zip(qx.iter().zip(&qy))
            .zip(tc.iter().zip(&ts))
            .map(|(((&x0, &y0), (&x1, &y1)), (&c, &d))| {
                u32::from(transform.carries([x0, y0], [x1, y1], [c, d]))
            })
            .sum();
        if agree > best.0 {
            best = (agree, Some(transform));
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma};

    /// A drawing of random strokes from `seed`: distinct seeds, distinct marks.
    fn scribble(seed: u64, side: u32) -> GrayImage {
        let mut rng = SplitMix::new(seed);
        let mut img = GrayImage::from_pixel(side, side, Luma([255]));
        for _ in 0..20 {
            let x0 = rng.below(side as usize * 3 / 4) as u32;
            let y0 = rng.below(side as usize * 3 / 4) as u32;
            let w = side / 12 + rng.below(side as usize / 4) as u32;
            let h = side / 12 + rng.below(side as usize / 4) as u32;
            for y in y0..(y0 + h).min(side) {
                for x in x0..(x0 + w).min(side) {
                    img.put_pixel(x, y, Luma([0]));
                }
            }
        }
        img
    }

    /// `img` shrunk by `scale` and shifted onto a larger white canvas.
    fn moved(img: &GrayImage, scale: f32, shift: u32) -> GrayImage {
        let (w, h) = img.dimensions();
        let small = image::imageops::resize(
            img,
            (w as f32 * scale) as u32,
            (h as f32 * scale) as u32,
            image::imageops::FilterType::Triangle,
        );
        let mut out = GrayImage::from_pixel(w, h, Luma([255]));
        image::imageops::replace(&mut out, &small, i64::from(shift), i64::from(shift / 2));
        out
    }

    #[test]
    fn the_same_drawing_moved_verifies_and_another_does_not() {
        let mark = Keypoints::of(&scribble(1, 240));
        let photo = [Keypoints::of(&moved(&scribble(1, 240), 0.9, 12))];
        let other = Keypoints::of(&scribble(2, 240));
        let same = inliers(&photo, std::slice::from_ref(&mark));
        let different = inliers(&photo, std::slice::from_ref(&other));
        assert!(same >= 12, "same drawing: {same} inliers");
        assert!(different * 3 < same, "other drawing: {different} vs {same}");
        // The best view pair counts.
        assert_eq!(inliers(&photo, &[other, mark]), same);
        // Deterministic.
        assert_eq!(inliers(&photo, &[Keypoints::of(&scribble(1, 240))]), same);
    }

    #[test]
    fn nothing_to_match_gives_no_inliers() {
        let mark = [Keypoints::of(&scribble(3, 200))];
        assert_eq!(inliers(&[], &mark), 0);
        assert_eq!(inliers(&mark, &[]), 0);
        assert_eq!(inliers(&[Keypoints::default()], &mark), 0);
        assert_eq!(agreement(&[Keypoints::default()], &mark), None);
        assert_eq!(agreement(&mark, &[]), None);
    }

    #[test]
    fn the_agreement_is_the_inliers_corners_in_the_view_that_gave_them() {
        // The drawing shrunk to 0.9 and shifted by (12, 6) pixels on a
        // 240-pixel canvas, as the photo's second view: its agreeing corners are its own,
        // as many as the inliers, and lie where the drawing's corners went.
        let drawing = scribble(1, 240);
        let mark = [Keypoints::of(&scribble(2, 240)), Keypoints::of(&drawing)];
        let moved_view = Keypoints::of(&moved(&drawing, 0.9, 12));
        let photo = [Keypoints::of(&scribble(3, 240)), moved_view.clone()];
        let found = agreement(&photo, &mark).expect("the drawing agrees");
        assert_eq!(found.view, 1);
        assert_eq!(found.inliers(), inliers(&photo, &mark));
        assert!(found.points.len() >= 12, "{}", found.points.len());
        // The drawing covers 12..228 across and 6..222 down, of 240.
        let inside = |p: &[f32; 2]| (0.03..=0.97).contains(&p[0]) && (0.0..=0.95).contains(&p[1]);
        assert!(
            found
                .points
                .iter()
                .all(|p| moved_view.points.contains(p) && inside(p))
        );
        // On the mark's side: its second view, one corner per photo corner, each
        // near where the move takes it (0.9 times as far out, 12 and 6 pixels
        // on): within the tolerance of a transform that is itself fitted to
        // within the tolerance.
        assert_eq!(found.mark_view, 1);
        assert_eq!(found.mark_points.len(), found.points.len());
        for (p, m) in found.points.iter().zip(&found.mark_points) {
            assert!(mark[1].points.contains(m));
            let went = [0.9 * m[0] + 12.0 / 240.0, 0.9 * m[1] + 6.0 / 240.0];
            let off = (went[0] - p[0]).hypot(went[1] - p[1]);
            assert!(
                off < 2.0 * TOLERANCE,
                "{m:?} went to {went:?}, found at {p:?}"
            );
        }
    }

    #[test]
    fn a_match_whose_corners_turn_otherwise_than_the_transform_does_not_count() {
        // Twenty distinct corners laid out on a grid, matched to themselves: the
        // identity carries all of them. Turn the orientation of every other one
        // on the mark's side by a quarter: in place, but not turned with the
        // transform, so those no longer agree.
        let mut photo = random_descriptors(11, 20);
        for (i, p) in photo.points.iter_mut().enumerate() {
            *p = [0.1 + 0.2 * (i % 5) as f32, 0.1 + 0.25 * (i / 5) as f32];
        }
        photo.angles = (0..20).map(|i| (i * 13) as u8).collect();
        assert_eq!(
            inliers(std::slice::from_ref(&photo), std::slice::from_ref(&photo)),
            20
        );
        let mut mark = photo.clone();
        for a in mark.angles.iter_mut().step_by(2) {
            *a = a.wrapping_add(64);
        }
        assert_eq!(inliers(&[photo], &[mark]), 10);
    }

    fn random_descriptors(seed: u64, n: usize) -> Keypoints {
        let mut rng = SplitMix::new(seed);
        let mut k = Keypoints::default();
        for _ in 0..n {
            k.points.push([0.5, 0.5]);
            k.angles.push(0);
            k.descriptors.push(std::array::from_fn(|_| rng.next_u64()));
        }
        k
    }

    /// `d` with its first `bits` bits flipped: that far from `d` in Hamming distance.
    fn flipped(
        mut d: [u64; crate::imaging::keypoints::WORDS],
        bits: u32,
    ) -> [u64; crate::imaging::keypoints::WORDS] {
        d[0] ^= (1u64 << bits) - 1;
        d
    }

    /// Twenty photo corners, each planted among random candidate corners (about
    /// 128 bits from anything) at chosen distances, in the same or another lane of
    /// eight: (offset in the corner's slot of 16, distance). Ties and
    /// second-nearest corners on either side of the ratio decide the matches.
    fn planted() -> (Keypoints, Keypoints, Vec<(usize, usize)>) {
        const CASES: [&[(usize, u32)]; 6] = [
            &[(0, 3)],          // alone: kept
            &[(0, 3), (8, 3)],  // tied in the same lane: dropped
            &[(0, 3), (1, 3)],  // tied across lanes: dropped
            &[(0, 3), (1, 4)],  // second nearest in another lane, 3 < 0.9 x 4: kept
            &[(0, 9), (9, 10)], // 9 >= 0.9 x 10, across lanes: dropped
            &[(0, 6), (8, 8)],  // 6 < 0.9 x 8, same lane: kept
        ];
        let a = random_descriptors(1, 20);
        // Not a multiple of eight: the last lanes are padding.
        let mut b = random_descriptors(2, 16 * 20 + 5);
        let mut kept = Vec::new();
        for (i, d) in a.descriptors.iter().enumerate() {
            let case = CASES[i % CASES.len()];
            for &(offset, bits) in case {
                b.descriptors[16 * i + offset] = flipped(*d, bits);
            }
            if matches!(i % CASES.len(), 0 | 3 | 5) {
                kept.push((i, 16 * i));
            }
        }
        (a, b, kept)
    }

    #[test]
    fn the_ratio_test_keeps_clear_nearest_corners_only() {
        let (a, b, kept) = planted();
        assert_eq!(matches_portable(&a, &b), kept);
        assert_eq!(matches(&a, &b), kept);
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_wide_matcher_finds_what_the_portable_one_finds() {
        if !(std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vpopcntdq"))
        {
            eprintln!("this CPU lacks AVX-512 VPOPCNTDQ: the 512-bit matcher is not compared");
            return;
        }
        let (a, b, _) = planted();
        // SAFETY: the CPU has the instructions (checked above).
        assert_eq!(unsafe { matches_avx512(&a, &b) }, matches_portable(&a, &b));
        // Every candidate size around the lane width, photo sizes that leave a
        // short last block, and a full-size pair.
        for (m, n) in [
            (5, 0),
            (5, 1),
            (5, 2),
            (1, 9),
            (3, 9),
            (6, 16),
            (7, 17),
            (40, 7),
            (40, 8),
            (40, 9),
            (400, 400),
        ] {
            let a = random_descriptors(m as u64, m);
            let mut b = random_descriptors(n as u64 + 100, n);
            for (j, d) in b.descriptors.iter_mut().enumerate().step_by(2) {
                if let Some(q) = a.descriptors.get(j) {
                    *d = flipped(*q, 3);
                }
            }
            let portable = matches_portable(&a, &b);
            // SAFETY: as above.
            assert_eq!(unsafe { matches_avx512(&a, &b) }, portable, "{m} x {n}");
            assert!(n < 7 || !portable.is_empty(), "{m} x {n}: nothing matched");
        }
    }

    #[test]
    fn the_scoring_names_its_constants() {
        assert_eq!(
            SCORING,
            format!(
                "consensus-v3 ratio={RATIO} trials={TRIALS} tolerance={TOLERANCE} turn={TURN} \
                 span={MIN_SPAN} scales={}..{} chance={CHANCE} depth={DEPTH} rivals={RIVALS} \
                 weight={WEIGHT} cap={CAP}",
                SCALES.0, SCALES.1
            )
        );
    }

    #[test]
    fn support_leaves_out_what_chance_lines_up_among_the_matches() {
        let agreement = |inliers: usize, matches: u32| Agreement {
            view: 0,
            points: vec![[0.5, 0.5]; inliers],
            mark_view: 0,
            mark_points: vec![[0.5, 0.5]; inliers],
            matches,
        };
        // Ten inliers out of ten matches: all of them count.
        assert_eq!(agreement(10, 10).support(), 10);
        // The same ten out of two hundred matches: chance accounts for half.
        assert_eq!(agreement(10, 200).support(), 0);
        assert_eq!(agreement(10, 100).support(), 5);
        // Never below nothing.
        assert_eq!(agreement(3, 400).support(), 0);
        // The raw count, which the regions show point for point, is untouched.
        assert_eq!(agreement(10, 200).inliers(), 10);
        // So a mark whose few matches line up outranks one whose many scatter.
        let (few, many) = (agreement(12, 20).support(), agreement(14, 160).support());
        assert!(fuse(0.6, few) > fuse(0.6, many), "{few} vs {many}");
    }

    #[test]
    fn a_real_match_keeps_its_support() {
        // A drawing verified against itself moved: nearly every match is an
        // inlier, so the support is most of the inliers.
        let photo = Keypoints::of(&moved(&scribble(7, 240), 0.8, 12));
        let mark = Keypoints::of(&scribble(7, 240));
        let found = agreement(std::slice::from_ref(&photo), std::slice::from_ref(&mark))
            .expect("the drawing verifies");
        assert!(found.matches >= found.inliers());
        assert!(
            found.support() as f32 >= 0.9 * found.inliers() as f32,
            "{} inliers of {} matches, support {}",
            found.inliers(),
            found.matches,
            found.support()
        );
    }

    /// What [`bounded`] verifies of `similarities` when candidate `i` has
    /// `support[i]` support, and the ranges it asked for.
    fn run_bounded(similarities: &[f32], support: &[u32]) -> (Vec<u32>, Vec<Range<usize>>) {
        let mut asked = Vec::new();
        let found = bounded::<()>(similarities, |range| {
            asked.push(range.clone());
            Ok(support[range].to_vec())
        })
        .expect("no error");
        (found, asked)
    }

    #[test]
    fn bounded_verification_keeps_the_first_place_of_verifying_everything_within_reach() {
        let mut rng = SplitMix::new(11);
        let mut stopped_early = 0;
        for case in 0..2000 {
            let n = 1 + rng.below(90);
            let mut similarities: Vec<f32> = (0..n)
                .map(|_| 0.2 + rng.below(700) as f32 / 1000.0)
                .collect();
            similarities.sort_by(|a, b| b.total_cmp(a));
            // Mostly weak evidence, now and then a deep candidate that verifies.
            let inliers: Vec<u32> = (0..n)
                .map(|_| match rng.below(10) {
                    0 => 20 + rng.below(40) as u32,
                    _ => rng.below(12) as u32,
                })
                .collect();
            let (found, asked) = run_bounded(&similarities, &inliers);
            assert_eq!(asked.first().map(|r| r.start), (n > 0).then_some(0));
            assert!(
                asked.windows(2).all(|w| w[0].end == w[1].start),
                "{asked:?}"
            );
            let reach = similarities[0] - WEIGHT;
            let within = similarities
                .iter()
                .take(DEPTH)
                .take_while(|s| **s >= reach)
                .count();
            assert!(found.len() <= within, "case {case}: beyond reach or depth");
            assert!(
                found.len() >= within.min(RIVALS),
                "case {case}: rivals skipped"
            );
            stopped_early += usize::from(found.len() < within);
            let score = |i: usize| fuse(similarities[i], found.get(i).copied().unwrap_or(0));
            let bounded_best = (0..n).map(score).fold(f32::NEG_INFINITY, f32::max);
            let full_best = (0..within)
                .map(|i| fuse(similarities[i], inliers[i]))
                .chain(similarities.iter().copied())
                .fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(bounded_best, full_best, "case {case}");
        }
        assert!(
            stopped_early > 500,
            "the bound stopped {stopped_early} of 2000 early"
        );
    }

    #[test]
    fn a_verified_first_place_stops_verification_after_the_rivals() {
        let similarities: Vec<f32> = (0..50).map(|i| 0.9 - i as f32 * 0.002).collect();
        let mut inliers = vec![3; 50];
        inliers[0] = CAP;
        let (found, asked) = run_bounded(&similarities, &inliers);
        assert_eq!(found.len(), RIVALS);
        assert_eq!(asked, vec![0..RIVALS]);
    }

    #[test]
    fn weak_evidence_is_verified_down_to_the_depth_in_steps() {
        let similarities: Vec<f32> = (0..DEPTH + 20).map(|i| 0.8 - i as f32 * 0.001).collect();
        let (found, asked) = run_bounded(&similarities, &vec![0; DEPTH + 20]);
        assert_eq!(found.len(), DEPTH);
        assert_eq!(asked[0], 0..RIVALS);
        assert!(asked[1..].iter().all(|r| r.len() <= STEP), "{asked:?}");
        // Nothing further than WEIGHT below the best is verified.
        let far = [0.9, 0.9 - WEIGHT - 0.01];
        assert_eq!(run_bounded(&far, &[0, 0]).0.len(), 1);
        assert!(run_bounded(&[], &[]).0.is_empty());
    }

    #[test]
    fn fusion_adds_at_most_the_weight() {
        assert_eq!(fuse(0.5, 0), 0.5);
        assert!((fuse(0.5, CAP / 2) - (0.5 + WEIGHT / 2.0)).abs() < 1e-6);
        assert_eq!(fuse(0.5, CAP * 3), fuse(0.5, CAP));
    }
}

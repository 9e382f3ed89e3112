//! Local features of a view: corners and their binary descriptors, for checking
//! that a candidate mark and a photo share not just an overall look but the same
//! parts in the same layout ([`crate::verify`]).
//!
//! The global embedding ranks marks by how alike they look as a whole, and marks
//! that merely look alike (two shields, two leaves) crowd the top of the ranking.
//! Corners of the same drawing sit in the same places relative to each other
//! whatever the photo did to it, which a lookalike's corners do not.
//!
//! Each view is scaled so its longer side is [`SIDE`] pixels, then to [`LEVELS`]
//! smaller sizes a factor [`LEVEL_SCALE`] apart (views are cropped to their ink, but
//! a blurred photo's corners show at a coarser scale than the clean mark's: on the
//! calibration split one scale alone gave a quarter of the gain). On each level:
//!
//! 1. FAST-9 corners (imageproc) are kept where they are the strongest within
//!    [`NMS_RADIUS`], the strongest of those up to the level's share of
//!    [`MAX_POINTS`] (shares shrink with the level, as in ORB);
//! 2. each corner's orientation is the direction of its patch's intensity
//!    centroid, as in ORB, so that a view turned a quarter (uprighting leaves that
//!    ambiguity) still matches;
//! 3. its descriptor is [`BITS`] brightness comparisons between point pairs of a
//!    fixed, seeded pattern turned to that orientation (in [`ANGLE_BINS`] steps,
//!    as in ORB), each point the mean of the 5 x 5 pixels around it (read off an
//!    integral image of the level padded with white, so that corners at the
//!    view's edge get whole patches).
//!
//! Positions are kept in units of the view's longer side, so they compare across
//! views of any size.

use image::{GrayImage, Luma};
use imageproc::{corners::corners_fast9, integral_image::integral_image, suppress::local_maxima};
use rayon::prelude::*;

use super::normalise::resize_grey;
use crate::seeded::SplitMix;

/// Names the algorithm and its parameters in the model fingerprint: keypoints are
/// stored with each view's vector, so any change here must change this tag.
pub const VERSION: &str = "fast9-rbrief256-v5";
/// Longer side of the view the features are found on, in pixels.
pub const SIDE: u32 = 192;
/// Levels of the scale pyramid.
const LEVELS: i32 = 6;
/// Ratio of the sides of one level and the next.
const LEVEL_SCALE: f32 = 1.2;
/// White border added around the view so corners at its edge get whole patches.
const PAD: u32 = 24;
/// How far from a corner its descriptor reads: the turned pattern's reach plus
/// the 5 x 5 mean around each point. The white border is at least this wide, so
/// every read of a corner found in the view falls inside the padded image.
const REACH: i32 = 21;
const _: () = assert!(PAD as i32 > REACH);
/// Orientations the pattern is turned to, evenly spaced.
const ANGLE_BINS: usize = 30;
/// FAST-9 threshold: the brightness step (of 255) a corner's arc must show.
const FAST_THRESHOLD: u8 = 10;
/// Radius, in pixels, within which only the strongest corner is kept.
const NMS_RADIUS: u32 = 2;
/// Most corners kept per view.
pub const MAX_POINTS: usize = 400;
/// Radius of the patch a corner's orientation is measured on.
const ORIENT_RADIUS: i32 = 12;
/// Reach of the descriptor's test points from the corner, in pixels.
const PATCH_RADIUS: f32 = 13.0;
/// Descriptor length in bits.
pub const BITS: usize = 256;
/// Descriptor length in 64-bit words.
pub const WORDS: usize = BITS / 64;

/// The corners of one view and their descriptors.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Keypoints {
    /// Corner positions, in units of the view's longer side from its top left.
    pub points: Vec<[f32; 2]>,
    /// One descriptor per point.
    pub descriptors: Vec<[u64; WORDS]>,
    /// One orientation per point, in 256ths of a turn ([`Keypoints::turn`]): a
    /// corner and the corner it matches differ by the turn between their views,
    /// which verification checks.
    pub angles: Vec<u8>,
}

/// Bytes per stored point: two 16-bit coordinates, the orientation and the
/// descriptor.
const POINT_BYTES: usize = 5 + 8 * WORDS;
/// Fixed-point scale and offset of stored coordinates, which lie in `0..=1`; the
/// offset leaves headroom on both sides.
const COORD_SCALE: f32 = 16384.0;
const COORD_OFFSET: f32 = 1.0;

impl Keypoints {
    /// Finds the keypoints of an upright view.
    pub fn of(view: &GrayImage) -> Keypoints {
        let base = resize_grey(view, SIDE);
        // Each level's share of the points, a factor 1/LEVEL_SCALE fewer per level.
        let factor = 1.0 / LEVEL_SCALE;
        let first = MAX_POINTS as f32 * (1.0 - factor) / (1.0 - factor.powi(LEVELS));
        // Levels are independent: found in parallel, joined in level order.
        let levels: Vec<Keypoints> = (0..LEVELS)
            .into_par_iter()
            .map(|level| {
                let side = (SIDE as f32 / LEVEL_SCALE.powi(level)).round() as u32;
                let image = if level == 0 {
                    base.clone()
                } else {
                    resize_grey(&base, side)
                };
                let budget = (first * factor.powi(level)).round() as usize;
                detect(&image, budget)
            })
            .collect();
        let mut out = Keypoints::default();
        for level in levels {
            out.points.extend(level.points);
            out.descriptors.extend(level.descriptors);
            out.angles.extend(level.angles);
        }
        out
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Point `i`'s orientation in radians, `0..TAU`.
    pub fn turn(&self, i: usize) -> f32 {
        f32::from(self.angles[i]) * std::f32::consts::TAU / 256.0
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The stored form: per point, x and y as fixed-point `u16`, the
    /// orientation byte, then the descriptor words, all little-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len() * POINT_BYTES);
        for ((p, d), a) in self.points.iter().zip(&self.descriptors).zip(&self.angles) {
            for v in p {
                let q = ((v + COORD_OFFSET) * COORD_SCALE)
                    .round()
                    .clamp(0.0, 65535.0) as u16;
                out.extend_from_slice(&q.to_le_bytes());
            }
            out.push(*a);
            for word in d {
                out.extend_from_slice(&word.to_le_bytes());
            }
        }
        out
    }

    /// Reads the stored form back; `None` if its length is not whole points.
    pub fn from_bytes(bytes: &[u8]) -> Option<Keypoints> {
        if !bytes.len().is_multiple_of(POINT_BYTES) {
            return None;
        }
        let mut out = Keypoints::default();
        for chunk in bytes.chunks_exact(POINT_BYTES) {
            let coord = |i: usize| {
                f32::from(u16::from_le_bytes([chunk[i], chunk[i + 1]])) / COORD_SCALE - COORD_OFFSET
            };
            out.points.push([coord(0), coord(2)]);
            out.angles.push(chunk[4]);
            let mut d = [0u64; WORDS];
            for (w, word) in d.iter_mut().enumerate() {
                let at = 5 + 8 * w;
                *word = u64::from_le_bytes(chunk[at..at + 8].try_into().expect("8 bytes"));
            }
            out.descriptors.push(d);
        }
        Some(out)
    }
}

/// The descriptor's test pairs at each of the [`ANGLE_BINS`] turns, made once.
static PATTERNS: std::sync::LazyLock<Vec<Pattern>> = std::sync::LazyLock::new(turned_patterns);

/// The `budget` strongest corners of one pyramid level, with positions in units
/// of the level's longer side.
fn detect(level: &GrayImage, budget: usize) -> Keypoints {
    let mut corners = local_maxima(&corners_fast9(level, FAST_THRESHOLD), NMS_RADIUS);
    // Strongest first; ties in reading order, so the result is deterministic.
    let order = |a: &imageproc::corners::Corner, b: &imageproc::corners::Corner| {
        b.score
            .total_cmp(&a.score)
            .then((a.y, a.x).cmp(&(b.y, b.x)))
    };
    if corners.len() > budget && budget > 0 {
        corners.select_nth_unstable_by(budget - 1, order);
    }
    corners.truncate(budget);
    corners.sort_unstable_by(order);

    let mut padded = GrayImage::from_pixel(
        level.width() + 2 * PAD,
        level.height() + 2 * PAD,
        Luma([255]),
    );
    image::imageops::replace(&mut padded, level, i64::from(PAD), i64::from(PAD));
    let sums = integral_image::<_, u32>(&padded);
    let side = level.width().max(level.height()) as f32;
    let mut out = Keypoints::default();
    for c in corners {
        let (x, y) = ((c.x + PAD) as i32, (c.y + PAD) as i32);
        let angle = orientation(&padded, x, y);
        out.points.push([c.x as f32 / side, c.y as f32 / side]);
        out.angles.push(angle_byte(angle));
        out.descriptors
            .push(describe(&sums, x, y, &PATTERNS[angle_bin(angle)]));
    }
    out
}

/// The direction from a corner to its patch's intensity centroid, with ink
/// (dark) weighing most: ink is what a mark is drawn in. The corner is at least
/// [`REACH`] from the border, beyond the patch.
fn orientation(image: &GrayImage, x: i32, y: i32) -> f32 {
    let (mut mx, mut my) = (0i64, 0i64);
    let r2 = ORIENT_RADIUS * ORIENT_RADIUS;
    let width = image.width() as usize;
    let pixels = image.as_raw();
    for dy in -ORIENT_RADIUS..=ORIENT_RADIUS {
        let row = (y + dy) as usize * width;
        for dx in -ORIENT_RADIUS..=ORIENT_RADIUS {
            if dx * dx + dy * dy > r2 {
                continue;
            }
            let ink = 255 - i64::from(pixels[row + (x + dx) as usize]);
            mx += i64::from(dx) * ink;
            my += i64::from(dy) * ink;
        }
    }
    (my as f32).atan2(mx as f32)
}

/// The test pairs turned to one orientation: integer offsets (x0, y0, x1, y1).
type Pattern = [[i32; 4]; BITS];

/// An angle in radians as the nearest 256th of a turn.
fn angle_byte(angle: f32) -> u8 {
    ((angle / std::f32::consts::TAU * 256.0).round() as i64).rem_euclid(256) as u8
}

/// The orientation's nearest of the [`ANGLE_BINS`] turns.
fn angle_bin(angle: f32) -> usize {
    let step = std::f32::consts::TAU / ANGLE_BINS as f32;
    ((angle / step).round() as i64).rem_euclid(ANGLE_BINS as i64) as usize
}

/// The descriptor of the corner at (x, y): one bit per test pair, set when the
/// pair's first point is darker than its second. `sums` is the padded level's
/// integral image; the corner is at least [`REACH`] from its border.
fn describe(
    sums: &image::ImageBuffer<Luma<u32>, Vec<u32>>,
    x: i32,
    y: i32,
    pattern: &Pattern,
) -> [u64; WORDS] {
    // Sum of the 5 x 5 pixels centred on (px, py): integral image entry (i, j)
    // holds the sum of the pixels left of column i and above row j.
    let width = sums.width() as usize;
    let cells = sums.as_raw();
    let mean = |px: i32, py: i32| {
        let at = |i: i32, j: i32| cells[j as usize * width + i as usize];
        at(px + 3, py + 3) + at(px - 2, py - 2) - at(px - 2, py + 3) - at(px + 3, py - 2)
    };
    let mut d = [0u64; WORDS];
    for (i, t) in pattern.iter().enumerate() {
        if mean(x + t[0], y + t[1]) < mean(x + t[2], y + t[3]) {
            d[i / 64] |= 1 << (i % 64);
        }
    }
    d
}

/// The descriptor's test pairs at each of the [`ANGLE_BINS`] turns.
fn turned_patterns() -> Vec<Pattern> {
    let base = pattern();
    (0..ANGLE_BINS)
        .map(|b| {
            let (sin, cos) = (std::f32::consts::TAU * b as f32 / ANGLE_BINS as f32).sin_cos();
            let turn = |px: f32, py: f32| {
                (
                    (cos * px - sin * py).round() as i32,
                    (sin * px + cos * py).round() as i32,
                )
            };
            let mut out = [[0; 4]; BITS];
            for (o, t) in out.iter_mut().zip(&base) {
                let (a, b) = (turn(t[0], t[1]), turn(t[2], t[3]));
                *o = [a.0, a.1, b.0, b.1];
            }
            out
        })
        .collect()
}

/// The descriptor's test pairs: offsets drawn from a Gaussian around the corner
/// (as in BRIEF's best pattern), clamped to the patch, from a fixed seed so every
/// build describes alike.
fn pattern() -> [[f32; 4]; BITS] {
    let mut rng = SplitMix::new(0x6d61_726b_6c65_6e73);
    let sigma = f64::from(PATCH_RADIUS) / 2.0;
    let mut gaussian = move || {
        // Box-Muller
        let (u, v) = (rng.unit().max(f64::MIN_POSITIVE), rng.unit());
        let g = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos() * sigma;
        g.clamp(-f64::from(PATCH_RADIUS), f64::from(PATCH_RADIUS)) as f32
    };
    let mut out = [[0.0; 4]; BITS];
    for t in &mut out {
        *t = [gaussian(), gaussian(), gaussian(), gaussian()];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An "F" of thick strokes: corners at every stroke end and joint, and no
    /// symmetry, so its keypoints pin down position and turn.
    fn letter_f(side: u32) -> GrayImage {
        let mut img = GrayImage::from_pixel(side, side, Luma([255]));
        let s = side as f32;
        let mut fill = |x0: f32, y0: f32, x1: f32, y1: f32| {
            for y in (y0 * s) as u32..(y1 * s) as u32 {
                for x in (x0 * s) as u32..(x1 * s) as u32 {
                    img.put_pixel(x, y, Luma([0]));
                }
            }
        };
        fill(0.1, 0.1, 0.3, 0.9);
        fill(0.1, 0.1, 0.9, 0.3);
        fill(0.1, 0.45, 0.7, 0.6);
        img
    }

    #[test]
    fn finds_the_corners_of_a_drawing_and_none_on_a_blank() {
        let k = Keypoints::of(&letter_f(200));
        assert!(k.len() >= 8, "{} corners", k.len());
        assert!(k.len() <= MAX_POINTS);
        for p in &k.points {
            assert!((-0.05..1.05).contains(&p[0]) && (-0.05..1.05).contains(&p[1]));
        }
        let blank = GrayImage::from_pixel(120, 80, Luma([255]));
        assert!(Keypoints::of(&blank).is_empty());
    }

    #[test]
    fn positions_do_not_depend_on_the_view_size() {
        let small = Keypoints::of(&letter_f(128));
        let large = Keypoints::of(&letter_f(512));
        // Each corner of the small view has one in the large view within a few
        // pixels (at SIDE), with a close descriptor.
        let mut close = 0;
        for (p, d) in small.points.iter().zip(&small.descriptors) {
            let near = large.points.iter().zip(&large.descriptors).any(|(q, e)| {
                let dist = ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2)).sqrt();
                let hamming: u32 = d.iter().zip(e).map(|(a, b)| (a ^ b).count_ones()).sum();
                dist < 3.0 / SIDE as f32 && hamming < 64
            });
            close += usize::from(near);
        }
        assert!(close * 10 >= small.len() * 8, "{close} of {}", small.len());
    }

    #[test]
    fn a_quarter_turn_keeps_descriptors_close() {
        let view = letter_f(200);
        let turned = image::imageops::rotate90(&view);
        let a = Keypoints::of(&view);
        let b = Keypoints::of(&turned);
        let best: Vec<u32> = a
            .descriptors
            .iter()
            .map(|d| {
                b.descriptors
                    .iter()
                    .map(|e| d.iter().zip(e).map(|(x, y)| (x ^ y).count_ones()).sum())
                    .min()
                    .unwrap_or(BITS as u32)
            })
            .collect();
        let near = best.iter().filter(|&&h| h < 64).count();
        assert!(
            near * 10 >= a.len() * 6,
            "{near} of {} within 64 bits",
            a.len()
        );
        // The corners' orientations turned with the view: a quarter turn
        // clockwise is 64 of 256 (y grows downwards). The corner nearest each
        // of the F's, where a quarter turn takes it, carries it.
        let mut turns: Vec<i32> = Vec::new();
        for (i, p) in a.points.iter().enumerate() {
            // rotate90 takes (x, y) of a square to (1 - y, x).
            let went = [1.0 - p[1], p[0]];
            let j = (0..b.len())
                .min_by(|&j, &k| {
                    let d = |q: &[f32; 2]| (q[0] - went[0]).hypot(q[1] - went[1]);
                    d(&b.points[j]).total_cmp(&d(&b.points[k]))
                })
                .unwrap();
            let q = b.points[j];
            if (q[0] - went[0]).hypot(q[1] - went[1]) < 0.01 {
                turns.push((i32::from(b.angles[j]) - i32::from(a.angles[i])).rem_euclid(256));
            }
        }
        turns.sort_unstable();
        assert!(turns.len() >= 8, "{} corners found again", turns.len());
        let median = turns[turns.len() / 2];
        assert!(
            (60..=68).contains(&median),
            "turned by {median} of 256: {turns:?}"
        );
    }

    #[test]
    fn bytes_round_trip() {
        let k = Keypoints::of(&letter_f(160));
        let back = Keypoints::from_bytes(&k.to_bytes()).unwrap();
        assert_eq!(back.descriptors, k.descriptors);
        assert_eq!(back.angles, k.angles);
        for (p, q) in k.points.iter().zip(&back.points) {
            assert!((p[0] - q[0]).abs() < 1e-4 && (p[1] - q[1]).abs() < 1e-4);
        }
        assert!(Keypoints::from_bytes(&[0; POINT_BYTES + 1]).is_none());
        assert_eq!(Keypoints::from_bytes(&[]).unwrap(), Keypoints::default());
    }
}

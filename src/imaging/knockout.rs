//! A mark knocked out of a solid block, found by the holes it leaves in the ink.
//!
//! Packaging often prints a mark as a negative: a block of colour with the mark
//! left unprinted. [`super::normalise`] finds the block as the ink, so its first
//! view is a dark shape with the mark as white holes, which the model does not
//! take for the mark. When the block fills its own ink box, the box's edge gives
//! it away; when the block is tilted, or the crop also holds a label edge or a
//! shadow, it does not. This module looks at the shape of the ink instead: the
//! largest piece of ink, with its holes filled, is a block when it is nearly
//! convex, mostly ink and holed. The box around its holes is then where the mark
//! is, and searches look there too, as a further view (unless switched off).

use imageproc::geometry::convex_hull;
use imageproc::point::Point;

/// Smallest share of all the ink the block must hold: a block carries the crop,
/// not one part of a larger mark.
const MIN_SHARE: f64 = 0.5;
/// Smallest share of the filled block that is ink: below it the piece is an
/// outline (a ring, a frame) around a mark, not a block.
const MIN_INK: f64 = 0.3;
/// Smallest share of the filled block that is holes: fewer holes carry no mark.
const MIN_HOLES: f64 = 0.02;
/// Smallest solidity (filled area over its convex hull's) of a block: labels,
/// badges and discs are convex; the outline of an ordinary mark is not.
const MIN_SOLIDITY: f64 = 0.9;
/// Smallest longer side of the holes' box, as a share of the block's: a
/// knocked-out mark fills its block, the counter of a bold letter or the eyes of
/// a face do not (searching those would cost a view and find little).
const MIN_SPAN: f64 = 0.65;
/// Narrowest ink frame left around the holes' box on every side, as a share of
/// the block's longer side: a block is solid all round its mark, while holes
/// reaching the edge belong to a drawing (and would repeat the first view).
const MIN_FRAME: f64 = 0.04;

/// The box `(x0, y0, x1, y1)` (work pixels, exclusive ends) around the holes of
/// the largest piece of ink when that piece is a holed block, or `None`.
/// `ink` is the work copy's ink mask, row by row, `width` pixels a row.
pub(super) fn holes_box(ink: &[bool], width: u32) -> Option<(f64, f64, f64, f64)> {
    let w = width as usize;
    let h = ink.len() / w.max(1);
    if w == 0 || h == 0 {
        return None;
    }
    let total = ink.iter().filter(|i| **i).count();
    // The largest piece of ink, its pixels joined by sides or corners (the first
    // in reading order among equals).
    let mut seen = vec![false; w * h];
    let mut largest = Vec::new();
    for start in 0..w * h {
        if ink[start] && !seen[start] {
            let piece = flood(start, (w, h), true, |i| ink[i], &mut seen);
            if piece.len() > largest.len() {
                largest = piece;
            }
        }
    }
    let size = largest.len();
    if size == 0 || (size as f64) < MIN_SHARE * total as f64 {
        return None;
    }
    let mut in_block = vec![false; w * h];
    for &i in &largest {
        in_block[i] = true;
    }
    // What the border reaches without crossing the block, joined by sides only
    // (the dual of the block's eight-way joins). The rest is enclosed: holes.
    let outside = from_border((w, h), |i| !in_block[i]);
    let (w, h) = (w as u32, h as u32);
    let at = |x: u32, y: u32| (y * w + x) as usize;
    let is_hole = |x: u32, y: u32| !in_block[at(x, y)] && !outside[at(x, y)];
    let mut holes = Extent::empty(w, h);
    let mut filled = Extent::empty(w, h);
    let mut corners = Vec::new();
    for y in 0..h {
        let mut row: Option<(u32, u32)> = None;
        for x in 0..w {
            let hole = is_hole(x, y);
            if hole {
                holes.add(x, y);
            }
            if hole || in_block[at(x, y)] {
                filled.add(x, y);
                row = Some(row.map_or((x, x), |(a, _)| (a, x)));
            }
        }
        if let Some((a, b)) = row {
            let (a, b, y) = (i64::from(a), i64::from(b) + 1, i64::from(y));
            corners.extend([(a, y), (a, y + 1), (b, y), (b, y + 1)].map(|(x, y)| Point::new(x, y)));
        }
    }
    let area = filled.count as f64;
    if (size as f64) < MIN_INK * area || (holes.count as f64) < MIN_HOLES * area {
        return None;
    }
    if area < MIN_SOLIDITY * polygon_area(&convex_hull(corners)) {
        return None;
    }
    let side = f64::from(filled.side());
    let frame = (holes.x0 - filled.x0)
        .min(holes.y0 - filled.y0)
        .min(filled.x1 - holes.x1)
        .min(filled.y1 - holes.y1);
    if f64::from(holes.side()) < MIN_SPAN * side || f64::from(frame) < MIN_FRAME * side {
        return None;
    }
    Some((
        f64::from(holes.x0),
        f64::from(holes.y0),
        f64::from(holes.x1),
        f64::from(holes.y1),
    ))
}

/// A count of pixels and the box around them (exclusive ends).
struct Extent {
    count: usize,
    x0: u32,
    y0: u32,
    x1: u32,
    y1: u32,
}

impl Extent {
    fn empty(w: u32, h: u32) -> Extent {
        Extent {
            count: 0,
            x0: w,
            y0: h,
            x1: 0,
            y1: 0,
        }
    }

    fn add(&mut self, x: u32, y: u32) {
        self.count += 1;
        self.x0 = self.x0.min(x);
        self.y0 = self.y0.min(y);
        self.x1 = self.x1.max(x + 1);
        self.y1 = self.y1.max(y + 1);
    }

    /// The longer side of the box.
    fn side(&self) -> u32 {
        (self.x1 - self.x0).max(self.y1 - self.y0)
    }
}

/// The pixels of a `w` by `h` image reached from its border through pixels that
/// `pass`, joined by sides.
pub(super) fn from_border((w, h): (usize, usize), pass: impl Fn(usize) -> bool) -> Vec<bool> {
    let mut reached = vec![false; w * h];
    let border = (0..w)
        .flat_map(|x| [x, (h - 1) * w + x])
        .chain((0..h).flat_map(|y| [y * w, y * w + w - 1]));
    for b in border {
        if pass(b) && !reached[b] {
            flood(b, (w, h), false, &pass, &mut reached);
        }
    }
    reached
}

/// Marks and returns the pixels reached from `start` through pixels that `pass`,
/// joined by sides, or also by corners when `corners`; `seen` records them.
fn flood(
    start: usize,
    (w, h): (usize, usize),
    corners: bool,
    pass: impl Fn(usize) -> bool,
    seen: &mut [bool],
) -> Vec<usize> {
    const SIDES: [(isize, isize); 4] = [(1, 0), (-1, 0), (0, 1), (0, -1)];
    const DIAGONALS: [(isize, isize); 4] = [(1, 1), (1, -1), (-1, 1), (-1, -1)];
    let steps = SIDES
        .iter()
        .chain(if corners { &DIAGONALS[..] } else { &[] });
    let mut reached = vec![start];
    seen[start] = true;
    let mut next = 0;
    while let Some(&i) = reached.get(next) {
        next += 1;
        let (x, y) = ((i % w) as isize, (i / w) as isize);
        for (dx, dy) in steps.clone() {
            let (nx, ny) = (x + dx, y + dy);
            if nx < 0 || ny < 0 || nx >= w as isize || ny >= h as isize {
                continue;
            }
            let j = ny as usize * w + nx as usize;
            if !seen[j] && pass(j) {
                seen[j] = true;
                reached.push(j);
            }
        }
    }
    reached
}

/// Area of a simple polygon given by its vertices in order (shoelace formula).
fn polygon_area(points: &[Point<i64>]) -> f64 {
    let twice: i64 = points
        .iter()
        .zip(points.iter().cycle().skip(1))
        .map(|(p, q)| p.x * q.y - q.x * p.y)
        .sum();
    twice.unsigned_abs() as f64 / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `size` square mask drawn by `ink(x, y)`.
    fn mask(size: u32, ink: impl Fn(u32, u32) -> bool) -> Vec<bool> {
        (0..size * size).map(|i| ink(i % size, i / size)).collect()
    }

    #[test]
    fn a_holed_block_gives_the_box_of_its_holes() {
        let m = mask(64, |x, y| {
            let block = (10..50).contains(&x) && (12..52).contains(&y);
            let bar = (16..44).contains(&x) && (18..46).contains(&y);
            block && !bar
        });
        assert_eq!(holes_box(&m, 64), Some((16.0, 18.0, 44.0, 46.0)));
    }

    #[test]
    fn a_tilted_block_is_still_a_block() {
        // A square turned by about 20 degrees (its ink box's edge is mostly ground).
        let (c, s) = (20f64.to_radians().cos(), 20f64.to_radians().sin());
        let m = mask(100, |x, y| {
            let (dx, dy) = (f64::from(x) - 50.0, f64::from(y) - 50.0);
            let (u, v) = (c * dx + s * dy, -s * dx + c * dy);
            let block = u.abs() < 30.0 && v.abs() < 30.0;
            let hole = u.abs() < 12.0 && v.abs() < 24.0;
            block && !hole
        });
        let (x0, y0, x1, y1) = holes_box(&m, 100).expect("a block");
        assert!(x0 > 20.0 && y0 > 20.0 && x1 < 80.0 && y1 < 80.0);
    }

    #[test]
    fn small_holes_and_holes_at_the_edge_are_not_a_knockout() {
        // The counter of a bold letter: too small a share of its block.
        let counter = mask(64, |x, y| {
            let block = (10..50).contains(&x) && (10..50).contains(&y);
            block && !((24..36).contains(&x) && (24..36).contains(&y))
        });
        assert_eq!(holes_box(&counter, 64), None);
        // Holes reaching within a pixel of the block's edge: a drawing in outline.
        let drawing = mask(64, |x, y| {
            let block = (10..50).contains(&x) && (10..50).contains(&y);
            block && !((11..49).contains(&x) && (12..30).contains(&y))
        });
        assert_eq!(holes_box(&drawing, 64), None);
    }

    #[test]
    fn outlines_solid_shapes_and_scattered_ink_are_not_blocks() {
        // A thin frame: mostly hole.
        let frame = mask(64, |x, y| {
            let outer = (8..56).contains(&x) && (8..56).contains(&y);
            let inner = (11..53).contains(&x) && (11..53).contains(&y);
            outer && !inner
        });
        assert_eq!(holes_box(&frame, 64), None);
        // A solid square: no holes.
        let solid = mask(64, |x, y| (8..56).contains(&x) && (8..56).contains(&y));
        assert_eq!(holes_box(&solid, 64), None);
        // An L-shaped piece with a hole: far from convex.
        let ell = mask(64, |x, y| {
            let l = ((4..24).contains(&x) && (4..60).contains(&y))
                || ((4..60).contains(&x) && (40..60).contains(&y));
            l && !((10..16).contains(&x) && (10..20).contains(&y))
        });
        assert_eq!(holes_box(&ell, 64), None);
        // Three holed blocks side by side: none holds half of the ink.
        let three = mask(90, |x, y| {
            let b = |x0: u32| (x0..x0 + 20).contains(&x) && (30..50).contains(&y);
            let hole = |x0: u32| (x0 + 8..x0 + 12).contains(&x) && (38..42).contains(&y);
            (b(2) && !hole(2)) || (b(34) && !hole(34)) || (b(66) && !hole(66))
        });
        assert_eq!(holes_box(&three, 90), None);
        assert_eq!(holes_box(&[], 1), None);
    }
}

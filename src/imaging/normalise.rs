//! Finding the mark in an image and redrawing it the way marks are recorded.
//!
//! A handheld photo shows a mark printed on a label or a box, under uneven light,
//! framed loosely; a recorded mark is a clean drawing on a plain ground. An
//! ImageNet embedding of the two differs more because of the label, the light and
//! the framing than because of the mark. [`normalise`] removes most of that
//! difference before the model sees either image:
//!
//! 1. the ground is modelled as a smooth colour field, a quadratic surface per
//!    channel fitted to the image border (robustly, so ink touching the border does
//!    not drag it), which follows light gradients and vignetting. When the ring
//!    shows a label's edge and the table around it, the ground is fitted to the
//!    label alone and the table is ground too ([`ground_and_table`]);
//! 2. each pixel's ink strength is its colour distance from the ground there;
//! 3. Otsu's threshold on that distance separates ink from ground, and the crop is
//!    the box around the ink (trimmed of stray specks) with a small margin;
//! 4. the crop is redrawn as ink strength, dark on white;
//! 5. the redrawn crop is turned square to the frame ([`upright`]);
//! 6. a crop that is a solid block (a label seen whole, or a mark knocked out of
//!    a block of colour, see [`super::knockout`]) is looked inside again;
//! 7. on a mid-tone ground (a brown box) white is ground too, as it is on a
//!    recorded mark ([`whites_to_ground`]).
//!
//! The same function runs on enrolled marks and on photos, so both meet in one
//! space. Colour and polarity are dropped on purpose: a recoloured or
//! contrast-reversed copy of a mark is still the mark.

use image::{GrayImage, ImageBuffer, Luma, Pixel, RgbImage};

use super::frame::Frame;
use super::knockout::{from_border, holes_box};
use super::upright::upright;

/// Longest side of the image views are looked for in: a larger photo (a phone's
/// 12 megapixels) is shrunk to it first. Looking past white and inside blocks
/// works on the whole image pixel by pixel: on 9-megapixel photos, finding the
/// views took 97 ms at the median and 307 ms at p95 at full size, 16 and 32 ms
/// shrunk. A mark spanning a third of the frame still gets a full view, one
/// spanning a fifth about the model's 224 pixels.
const IMAGE_SIDE: u32 = 1024;
/// Side of the working copy on which the ground is fitted and the ink is found.
const WORK_SIDE: u32 = 128;
/// Longest side of a view: above the model's 224-pixel input and the keypoints'
/// 192, so the detail they use survives, while a large crop is not redrawn,
/// turned upright and resampled pixel by pixel at full size.
pub(super) const VIEW_SIDE: u32 = 320;
/// Width of the border ring the ground is fitted to, as a fraction of the work side.
const RING: f64 = 0.04;
/// Share of ring pixels (the farthest from the first fit) left out of the refit.
const REFIT_DROP: f64 = 0.2;
/// Lowest ink threshold, in RGB distance: below it, texture and noise pass as ink.
const MIN_THRESHOLD: f32 = 20.0;
/// Share of ink pixels ignored on each side when boxing the ink (specks, noise).
const TRIM: f64 = 0.005;
/// Margin around the ink box, as a fraction of its longer side.
const MARGIN: f64 = 0.06;
/// Ink strength that maps to black: this quantile of the ink pixels' distances.
const INK_QUANTILE: f64 = 0.9;
/// Mean ink strength along the inside edge of the ink box above which the crop is
/// taken for a solid block that may carry a mark (see [`edge_share`]).
const BLOCK_SHARE: f64 = 0.6;
/// Edge of a block left out when looking inside it, as a fraction of its longer
/// side (its outline and any bleed).
const BLOCK_EDGE: f64 = 0.04;
/// Smallest block side, in image pixels, worth looking inside.
const MIN_BLOCK_SIDE: u32 = 24;
/// Least colour difference (RGB distance) between the two colours of the border
/// ring for them to be taken for a table and a label (see [`ground_and_table`]).
const TABLE_CONTRAST: f32 = 40.0;
/// Least share of the border ring each of the table and the label must hold.
const TABLE_MIN_SHARE: f64 = 0.1;
/// Fewest corners of the working copy the table must reach. A label shifted
/// against the frame leaves the table along one side, two corners; a mark that
/// runs off its image (a recorded mark cropped tight) reaches no corner or all
/// of them, and then as the one colour of the ring.
const TABLE_MIN_CORNERS: usize = 2;
/// Most of the working copy a table may cover: more, and the "label" is a mark.
const TABLE_MAX_COVER: f64 = 0.5;
/// Grey levels (luma, 0-255) of a ground on which white is looked past as well
/// ([`whites_to_ground`]): on a darker one white print is the mark; on a lighter
/// one white is the ground already.
const MID_TONE: (f64, f64) = (80.0, 200.0);
/// Share of the ink nearer white than a mid-tone ground from which the view with
/// white kept is searched too: white may then be the print itself (a white mark
/// on a brown box), which looking past white would lose.
const WHITE_INK: f64 = 0.35;
/// Most views of one image: the mark, and up to two more: blocks looked inside (a
/// label seen whole, then a block knocked out on it), or the first pass kept
/// beside a view with white looked past.
pub const MAX_VIEWS: usize = 3;

/// The views of `image` the model sees, at most [`MAX_VIEWS`]: first the mark
/// found, cropped and redrawn as dark ink on white. When that crop is mostly ink,
/// it is a solid block: a label seen whole against a table, or a block of colour
/// with the mark knocked out of it, as printed on packaging. The photo is then
/// cropped to the inside of the block and searched again, which finds what is
/// printed on (or knocked out of) the block, as a further view. With `knockouts`,
/// a block that does not fill its crop (tilted, or beside a label's edge) is
/// also known by its shape, and its holes are searched ([`super::knockout`]).
/// That is for photos only (searches look unless told not to): a recorded mark
/// is drawn plainly, and a photo pays a view for it about one time in eight.
///
/// On a mid-tone ground (a brown box, a grey card) white is looked past too
/// ([`whites_to_ground`]): the white drawn in a mark, or glare, stands out from
/// such a ground as ink, where on a recorded mark's white it is ground. That view
/// replaces the first; the first is kept beside it when much of its ink is white.
///
/// An image with no ink at all (a blank page) is redrawn whole. Each view is
/// turned upright ([`upright`]) and given in grey, ink strength dark on white.
pub fn views(image: &RgbImage, knockouts: bool) -> Vec<GrayImage> {
    framed_views(image, knockouts)
        .into_iter()
        .map(|(view, _)| view)
        .collect()
}

/// [`views`], each with the [`Frame`] that takes its pixels back to where they
/// lie in `image`.
pub fn framed_views(image: &RgbImage, knockouts: bool) -> Vec<(GrayImage, Frame)> {
    let bounded;
    let (image, unbound) = if image.width().max(image.height()) > IMAGE_SIDE {
        bounded = downscale(image, IMAGE_SIDE);
        let back = Frame::scale(
            f64::from(image.width()) / f64::from(bounded.width()),
            f64::from(image.height()) / f64::from(bounded.height()),
        );
        (&bounded, back)
    } else {
        (image, Frame::IDENTITY)
    };
    let mut found = normalise(image, knockouts).unwrap_or_else(|| Found::whole(image));
    let looked_past = found.mid_tone.take().and_then(|(ground, share)| {
        let past = normalise(&whites_to_ground(image, &ground), knockouts)?;
        Some((past, share))
    });
    let (first, beside) = match looked_past {
        Some((past, share)) => (past, (share >= WHITE_INK).then_some(found)),
        None => (found, None),
    };
    let mut out = Vec::with_capacity(MAX_VIEWS);
    let mut next = first.block_inside();
    out.push(first.upright(&unbound));
    out.extend(beside.map(|b| b.upright(&unbound)));
    while let Some((x0, y0, x1, y1)) = next {
        if out.len() == MAX_VIEWS {
            break;
        }
        let zoomed = image::imageops::crop_imm(image, x0, y0, x1 - x0, y1 - y0).to_image();
        let Some(inner) = normalise(&zoomed, knockouts) else {
            break;
        };
        next = inner
            .block_inside()
            .map(|b| (b.0 + x0, b.1 + y0, b.2 + x0, b.3 + y0));
        let to_image = Frame::shift(f64::from(x0), f64::from(y0)).then(&unbound);
        out.push(inner.upright(&to_image));
    }
    out
}

/// A redrawn crop and where its ink lies.
struct Found {
    /// The crop redrawn as ink strength on white.
    view: GrayImage,
    /// Where the view's pixels lie in the image searched.
    to_image: Frame,
    /// The ink box (without the margin) in the view's pixels.
    ink_in_view: (u32, u32, u32, u32),
    /// The same box in the pixels of the image searched.
    ink_in_image: (u32, u32, u32, u32),
    /// The box around the holes of the ink when it is a holed block and that was
    /// asked for, in the pixels of the image searched.
    holes_in_image: Option<(u32, u32, u32, u32)>,
    /// The ground the ink was told from when it is a mid tone, and the share of
    /// the ink nearer white than it ([`whites_to_ground`]).
    mid_tone: Option<(Ground, f64)>,
}

impl Found {
    fn whole(image: &RgbImage) -> Found {
        let small = downscale(image, WORK_SIDE);
        let ground = Ground::fit(&small);
        let (w, h) = image.dimensions();
        let view = redraw(image, &ground, None, MIN_THRESHOLD, (0, 0, w, h));
        Found {
            ink_in_view: (0, 0, view.width(), view.height()),
            to_image: view_frame(&view, (0, 0, w, h)),
            view,
            ink_in_image: (0, 0, w, h),
            holes_in_image: None,
            mid_tone: None,
        }
    }

    /// The view turned upright ([`upright`]), with the frame that takes its
    /// pixels to the image searched and then through `onward`.
    fn upright(self, onward: &Frame) -> (GrayImage, Frame) {
        let (view, back) = upright(self.view);
        (view, back.then(&self.to_image).then(onward))
    }

    /// Where to look inside a block, in the image's pixels, when big enough to
    /// search: the ink box inset by [`BLOCK_EDGE`] if the box is mostly ink along
    /// its edge, else the box around the holes of a holed block, if sought.
    fn block_inside(&self) -> Option<(u32, u32, u32, u32)> {
        let b = if edge_share(&self.view, self.ink_in_view) > BLOCK_SHARE {
            let (x0, y0, x1, y1) = self.ink_in_image;
            let inset = (BLOCK_EDGE * f64::from((x1 - x0).max(y1 - y0))).round() as u32;
            (
                x0 + inset,
                y0 + inset,
                x1.saturating_sub(inset),
                y1.saturating_sub(inset),
            )
        } else {
            self.holes_in_image?
        };
        (b.2 >= b.0 + MIN_BLOCK_SIDE && b.3 >= b.1 + MIN_BLOCK_SIDE).then_some(b)
    }
}

/// Finds the mark in `image` and redraws its box as ink strength on white; `None`
/// if nothing in it stands out from the ground. With `knockouts`, also looks for
/// a holed block in the ink ([`holes_box`]).
fn normalise(image: &RgbImage, knockouts: bool) -> Option<Found> {
    let small = downscale(image, WORK_SIDE);
    let (ground, table) = ground_and_table(&small);
    let (sw, sh) = small.dimensions();
    let distance: Vec<f32> = small
        .enumerate_pixels()
        .map(|(x, y, px)| match &table {
            Some(t) if t.covers(x, y) => 0.0,
            _ => ground.distance(px.0, coord(x, sw), coord(y, sh)),
        })
        .collect();
    // The table is not part of what is split into ink and ground.
    let threshold = match &table {
        Some(t) => otsu(&t.off(&distance)),
        None => otsu(&distance),
    }
    .max(MIN_THRESHOLD);
    let inner = ink_box(&distance, sw, threshold)?;
    let (w, h) = image.dimensions();
    let scale = f64::from(w) / f64::from(sw);
    let outer = scale_box(with_margin(inner), scale, w, h);
    let ink = scale_box(inner, scale, w, h);
    let holes_in_image = knockouts
        .then(|| {
            let mask: Vec<bool> = distance.iter().map(|d| *d > threshold).collect();
            holes_box(&mask, sw)
        })
        .flatten()
        .map(|b| scale_box(with_margin(b), scale, w, h));
    let view = redraw(image, &ground, table.as_ref(), threshold, outer);
    // The ink box in the view's pixels: the view may be the crop shrunk.
    let to_view = f64::from(view.width()) / f64::from(outer.2 - outer.0);
    let ink_in_view = scale_box(
        (
            f64::from(ink.0 - outer.0),
            f64::from(ink.1 - outer.1),
            f64::from(ink.2.min(outer.2) - outer.0),
            f64::from(ink.3.min(outer.3) - outer.1),
        ),
        to_view,
        view.width(),
        view.height(),
    );
    Some(Found {
        to_image: view_frame(&view, outer),
        view,
        ink_in_view,
        ink_in_image: ink,
        holes_in_image,
        mid_tone: ground.is_mid_tone().then(|| {
            let share = white_share(&small, &ground, &distance, threshold);
            (ground, share)
        }),
    })
}

/// The frame of a view redrawn from the box `b` of an image: each view pixel
/// spans the box's share of the view's side.
fn view_frame(view: &GrayImage, b: (u32, u32, u32, u32)) -> Frame {
    Frame::scale(
        f64::from(b.2 - b.0) / f64::from(view.width()),
        f64::from(b.3 - b.1) / f64::from(view.height()),
    )
    .then(&Frame::shift(f64::from(b.0), f64::from(b.1)))
}

/// Mean ink strength (0 white .. 1 black) of `image` along the inside edge of
/// the box `b` (a band [`BLOCK_EDGE`] of its longer side wide). A block is ink
/// along its whole edge; a mark touches its box only here and there.
fn edge_share(image: &GrayImage, b: (u32, u32, u32, u32)) -> f64 {
    let band = ((BLOCK_EDGE * f64::from((b.2 - b.0).max(b.3 - b.1))).round() as u32).max(1);
    let inside =
        |x: u32, y: u32| x >= b.0 + band && x + band < b.2 && y >= b.1 + band && y + band < b.3;
    let (mut sum, mut n) = (0.0, 0usize);
    for y in b.1..b.3 {
        for x in b.0..b.2 {
            if !inside(x, y) {
                sum += 1.0 - f64::from(image.get_pixel(x, y)[0]) / 255.0;
                n += 1;
            }
        }
    }
    sum / n.max(1) as f64
}

/// The pixel centre's position across the image, from -0.5 to 0.5, so that a
/// ground fitted on the small copy applies to the full image unchanged.
fn coord(i: u32, n: u32) -> f64 {
    (f64::from(i) + 0.5) / f64::from(n) - 0.5
}

/// Shrinks `image` so its longer side is at most `side` (antialiased).
fn downscale(image: &RgbImage, side: u32) -> RgbImage {
    shrink(image, side, fast_image_resize::PixelType::U8x3)
}

/// [`downscale`] for a grey image.
pub(super) fn downscale_grey(image: &GrayImage, side: u32) -> GrayImage {
    shrink(image, side, fast_image_resize::PixelType::U8)
}

/// Shrinks an 8-bit image whose pixels are `pixel_type` so its longer side is at
/// most `side`.
fn shrink<P: Pixel<Subpixel = u8>>(
    image: &ImageBuffer<P, Vec<u8>>,
    side: u32,
    pixel_type: fast_image_resize::PixelType,
) -> ImageBuffer<P, Vec<u8>> {
    let (w, h) = image.dimensions();
    if w.max(h) <= side {
        return image.clone();
    }
    resample(image, side, pixel_type)
}

/// Scales a greyscale image, up or down, so its longer side is `side`.
pub(super) fn resize_grey(image: &GrayImage, side: u32) -> GrayImage {
    let (w, h) = image.dimensions();
    if w.max(h) == side {
        return image.clone();
    }
    resample(image, side, fast_image_resize::PixelType::U8)
}

/// Resamples an 8-bit image so its longer side is `side`: a triangle filter
/// stretched to the scale, antialiased when shrinking, bilinear when enlarging
/// (SIMD, about 10x faster than `image`'s).
pub(super) fn resample<P: Pixel<Subpixel = u8>>(
    image: &ImageBuffer<P, Vec<u8>>,
    side: u32,
    pixel_type: fast_image_resize::PixelType,
) -> ImageBuffer<P, Vec<u8>> {
    let (w, h) = image.dimensions();
    resample_box(image, (0, 0, w, h), side, pixel_type)
}

/// [`resample`] of the box `(x0, y0, x1, y1)` of `image` (exclusive ends), read
/// in place.
fn resample_box<P: Pixel<Subpixel = u8>>(
    image: &ImageBuffer<P, Vec<u8>>,
    (x0, y0, x1, y1): (u32, u32, u32, u32),
    side: u32,
    pixel_type: fast_image_resize::PixelType,
) -> ImageBuffer<P, Vec<u8>> {
    use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, images::ImageRef};
    let (w, h) = (x1 - x0, y1 - y0);
    let scale = f64::from(side) / f64::from(w.max(h));
    let tw = ((f64::from(w) * scale).round() as u32).max(1);
    let th = ((f64::from(h) * scale).round() as u32).max(1);
    let source = ImageRef::new(image.width(), image.height(), image.as_raw(), pixel_type)
        .expect("buffer matches its dimensions");
    let mut target = fast_image_resize::images::Image::new(tw, th, pixel_type);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .crop(f64::from(x0), f64::from(y0), f64::from(w), f64::from(h));
    fast_image_resize::Resizer::new()
        .resize(&source, &mut target, &options)
        .expect("same pixel type, non-empty images");
    ImageBuffer::from_raw(tw, th, target.into_vec()).expect("buffer matches its dimensions")
}

/// The ground colour as a quadratic surface per channel over (u, v) in
/// [-0.5, 0.5]²: `c0 + c1 u + c2 v + c3 u² + c4 v² + c5 uv`.
struct Ground {
    coef: [[f64; 6]; 3],
}

impl Ground {
    /// Fits the surface to the border ring of `image`, then refits without the
    /// ring pixels farthest from the first fit (ink or a table at the border).
    fn fit(image: &RgbImage) -> Ground {
        Ground::fit_samples(&ring_samples(image))
    }

    /// Fits the surface to `samples` (basis and colour), then refits without the
    /// share [`REFIT_DROP`] farthest from the first fit.
    fn fit_samples(samples: &[([f64; 6], [u8; 3])]) -> Ground {
        let mut coef = [[0.0; 6]; 3];
        for (c, out) in coef.iter_mut().enumerate() {
            let all: Vec<usize> = (0..samples.len()).collect();
            let first = least_squares(samples, c, &all);
            // Each residual once, not once per comparison of the sort.
            let residual: Vec<f64> = samples
                .iter()
                .map(|(b, px)| (dot6(&first, b) - f64::from(px[c])).abs())
                .collect();
            let mut order = all.clone();
            order.sort_by(|a, b| residual[*a].total_cmp(&residual[*b]));
            let keep = ((1.0 - REFIT_DROP) * order.len() as f64).ceil() as usize;
            *out = least_squares(samples, c, &order[..keep.max(6).min(order.len())]);
        }
        Ground { coef }
    }

    /// The ground's colour at (u, v).
    fn colour(&self, u: f64, v: f64) -> [f64; 3] {
        let b = basis(u, v);
        self.coef.map(|c| dot6(&c, &b))
    }

    /// Whether the ground at the image's centre is a mid tone (a brown box, a
    /// grey card): white drawn in a mark then stands out from it as ink, where
    /// on the white of a recorded mark it is ground.
    fn is_mid_tone(&self) -> bool {
        let [r, g, b] = self.colour(0.0, 0.0);
        (MID_TONE.0..=MID_TONE.1).contains(&(0.299 * r + 0.587 * g + 0.114 * b))
    }

    /// RGB distance of `px` from the ground at (u, v).
    fn distance(&self, px: [u8; 3], u: f64, v: f64) -> f32 {
        self.distance_at(px, &basis(u, v))
    }

    /// [`distance`](Self::distance) at a point given by its basis.
    fn distance_at(&self, px: [u8; 3], b: &[f64; 6]) -> f32 {
        let sq: f64 = (0..3)
            .map(|c| (f64::from(px[c]) - dot6(&self.coef[c], b)).powi(2))
            .sum();
        sq.sqrt() as f32
    }
}

/// Share of the ink pixels of the working copy `small` (`distance` over
/// `threshold`) nearer white than the ground.
fn white_share(small: &RgbImage, ground: &Ground, distance: &[f32], threshold: f32) -> f64 {
    let (w, h) = small.dimensions();
    let (mut ink, mut white) = (0usize, 0usize);
    for ((x, y, px), d) in small.enumerate_pixels().zip(distance) {
        if *d > threshold {
            ink += 1;
            white += usize::from(nearer_white(px.0, ground.colour(coord(x, w), coord(y, h))));
        }
    }
    white as f64 / ink.max(1) as f64
}

/// Whether `px` is nearer white than the ground colour `g`.
fn nearer_white(px: [u8; 3], g: [f64; 3]) -> bool {
    let p = px.map(f64::from);
    let from = |c: [f64; 3]| (0..3).map(|k| (p[k] - c[k]).powi(2)).sum::<f64>();
    from([255.0; 3]) < from(g)
}

/// `image` with every pixel nearer white than the ground there painted in the
/// ground's colour: the white of a mark drawn on a mid-tone ground is taken for
/// ground, as it is on the white of a recorded mark.
fn whites_to_ground(image: &RgbImage, ground: &Ground) -> RgbImage {
    let (w, h) = image.dimensions();
    let mut out = image.clone();
    for (x, y, px) in out.enumerate_pixels_mut() {
        let g = ground.colour(coord(x, w), coord(y, h));
        if nearer_white(px.0, g) {
            px.0 = g.map(|c| c.round().clamp(0.0, 255.0) as u8);
        }
    }
    out
}

/// Width of the border ring of a `w` by `h` working copy, in pixels.
fn ring_width(w: u32, h: u32) -> u32 {
    ((RING * f64::from(w.max(h))).round() as u32).max(2)
}

/// The border ring's pixels as least-squares samples: basis at the pixel, colour.
fn ring_samples(image: &RgbImage) -> Vec<([f64; 6], [u8; 3])> {
    let (w, h) = image.dimensions();
    let ring = ring_width(w, h);
    image
        .enumerate_pixels()
        .filter(|(x, y, _)| in_ring(*x, *y, w, h, ring))
        .map(|(x, y, px)| (basis(coord(x, w), coord(y, h)), px.0))
        .collect()
}

/// Whether (x, y) lies in the border ring `ring` pixels wide.
fn in_ring(x: u32, y: u32, w: u32, h: u32, ring: u32) -> bool {
    x < ring || y < ring || x + ring >= w || y + ring >= h
}

/// Where a table shows around a label, in work pixels.
struct Table {
    mask: Vec<bool>,
    width: u32,
    height: u32,
}

impl Table {
    fn covers(&self, x: u32, y: u32) -> bool {
        self.mask[(y * self.width + x) as usize]
    }

    /// The values of `per_pixel` (one per work pixel) where the table is not.
    fn off(&self, per_pixel: &[f32]) -> Vec<f32> {
        per_pixel
            .iter()
            .zip(&self.mask)
            .filter(|(_, on)| !**on)
            .map(|(v, _)| *v)
            .collect()
    }

    /// Whether the table covers the full-image pixel (x, y) of an image `w` by `h`.
    fn covers_scaled(&self, x: u32, y: u32, w: u32, h: u32) -> bool {
        let sx = (u64::from(x) * u64::from(self.width) / u64::from(w)) as u32;
        let sy = (u64::from(y) * u64::from(self.height) / u64::from(h)) as u32;
        self.covers(sx.min(self.width - 1), sy.min(self.height - 1))
    }
}

/// The ground of the working copy `small`, and the table around a label that
/// fills the frame, if one shows.
///
/// A label photographed turned, and framed loosely, reaches the frame's edges
/// along its sides but leaves the table in the corners. The border ring then
/// holds two colours, and one surface fitted to both shades the label like ink:
/// the view becomes the mark on a grey tilted square. When the ring holds two
/// colours that differ by [`TABLE_CONTRAST`], each on at least
/// [`TABLE_MIN_SHARE`] of it, the one that also covers more of the inside is the
/// label. The ground is fitted to the label's part of the ring alone, and the
/// table is what is nearer the table's colour than the label's ground, reached
/// from the frame's edge (a mark printed in the table's colour is enclosed by
/// the label and stays). It must reach [`TABLE_MIN_CORNERS`] of the corners and
/// cover at most [`TABLE_MAX_COVER`]; else the ring's two colours were something else
/// (a mark that runs off its image), and the ground is fitted to the whole ring.
fn ground_and_table(small: &RgbImage) -> (Ground, Option<Table>) {
    let samples = ring_samples(small);
    let everywhere = Ground::fit_samples(&samples);
    // A ring one smooth surface explains (a plain ground under a light gradient)
    // holds no table.
    let off = samples
        .iter()
        .filter(|(b, px)| everywhere.distance_at(*px, b) > TABLE_CONTRAST / 2.0)
        .count();
    if (off as f64) < TABLE_MIN_SHARE * samples.len() as f64 {
        return (everywhere, None);
    }
    match find_table(small, &samples) {
        Some((ground, table)) => (ground, Some(table)),
        None => (everywhere, None),
    }
}

/// The label's ground and the table around it, if the ring's two colours are a
/// table and a label (see [`ground_and_table`]).
fn find_table(small: &RgbImage, samples: &[([f64; 6], [u8; 3])]) -> Option<(Ground, Table)> {
    let colours: Vec<[f32; 3]> = samples.iter().map(|(_, px)| px.map(f32::from)).collect();
    let (centres, second) = two_means(&colours);
    let share = second.iter().filter(|s| **s).count() as f64 / second.len() as f64;
    if rgb_distance(centres[0], centres[1]) < TABLE_CONTRAST
        || !(TABLE_MIN_SHARE..=1.0 - TABLE_MIN_SHARE).contains(&share)
    {
        return None;
    }
    let (w, h) = small.dimensions();
    let ring = ring_width(w, h);
    // The label is the colour that also covers more of the inside.
    let half = rgb_distance(centres[0], centres[1]) / 2.0;
    let mut inside = [0usize; 2];
    for (x, y, px) in small.enumerate_pixels() {
        if !in_ring(x, y, w, h, ring) {
            let c = px.0.map(f32::from);
            for (k, centre) in centres.iter().enumerate() {
                if rgb_distance(c, *centre) < half {
                    inside[k] += 1;
                }
            }
        }
    }
    let label = usize::from(inside[1] > inside[0]);
    let on_label: Vec<([f64; 6], [u8; 3])> = samples
        .iter()
        .zip(&second)
        .filter(|(_, s)| usize::from(**s) == label)
        .map(|(sample, _)| *sample)
        .collect();
    let ground = Ground::fit_samples(&on_label);
    let table_colour = centres[1 - label];
    let table_like: Vec<bool> = small
        .enumerate_pixels()
        .map(|(x, y, px)| {
            rgb_distance(px.0.map(f32::from), table_colour)
                < ground.distance(px.0, coord(x, w), coord(y, h))
        })
        .collect();
    let reached = from_border((w as usize, h as usize), |i| table_like[i]);
    let mask = dilate(&reached, w, h);
    let table = Table {
        mask,
        width: w,
        height: h,
    };
    let corners = [(0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1)]
        .iter()
        .filter(|(x, y)| table.covers(*x, *y))
        .count();
    let cover = table.mask.iter().filter(|m| **m).count() as f64 / table.mask.len() as f64;
    (corners >= TABLE_MIN_CORNERS && cover <= TABLE_MAX_COVER).then_some((ground, table))
}

/// Two colour clusters of `colours` (k-means, k = 2, started from the two
/// colours farthest apart found by a double sweep), and which cluster each
/// colour fell in (`true` for the second).
fn two_means(colours: &[[f32; 3]]) -> ([[f32; 3]; 2], Vec<bool>) {
    let farthest = |from: [f32; 3]| {
        colours
            .iter()
            .copied()
            .max_by(|a, b| rgb_distance(*a, from).total_cmp(&rgb_distance(*b, from)))
            .unwrap_or(from)
    };
    let b = farthest(mean_colour(colours.iter()).unwrap_or_default());
    let mut centres = [farthest(b), b];
    let mut second = vec![false; colours.len()];
    for _ in 0..10 {
        for (s, c) in second.iter_mut().zip(colours) {
            *s = rgb_distance(*c, centres[1]) < rgb_distance(*c, centres[0]);
        }
        for (k, centre) in centres.iter_mut().enumerate() {
            let members = colours
                .iter()
                .zip(&second)
                .filter(|(_, s)| usize::from(**s) == k);
            if let Some(m) = mean_colour(members.map(|(c, _)| c)) {
                *centre = m;
            }
        }
    }
    (centres, second)
}

fn mean_colour<'a>(colours: impl Iterator<Item = &'a [f32; 3]>) -> Option<[f32; 3]> {
    let (mut sum, mut n) = ([0.0f64; 3], 0usize);
    for c in colours {
        for k in 0..3 {
            sum[k] += f64::from(c[k]);
        }
        n += 1;
    }
    (n > 0).then(|| sum.map(|s| (s / n as f64) as f32))
}

fn rgb_distance(a: [f32; 3], b: [f32; 3]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

/// `mask` grown by one pixel (8-connected): covers the label's blurred edge.
fn dilate(mask: &[bool], w: u32, h: u32) -> Vec<bool> {
    let (w, h) = (w as i64, h as i64);
    (0..mask.len() as i64)
        .map(|i| {
            let (x, y) = (i % w, i / w);
            (-1..=1).any(|dy| {
                (-1..=1).any(|dx| {
                    let (nx, ny) = (x + dx, y + dy);
                    (0..w).contains(&nx) && (0..h).contains(&ny) && mask[(ny * w + nx) as usize]
                })
            })
        })
        .collect()
}

fn basis(u: f64, v: f64) -> [f64; 6] {
    [1.0, u, v, u * u, v * v, u * v]
}

fn dot6(a: &[f64; 6], b: &[f64; 6]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Least-squares coefficients of channel `c` over the samples `rows`, through the
/// normal equations (6 unknowns, well conditioned on a ring around the image).
fn least_squares(samples: &[([f64; 6], [u8; 3])], c: usize, rows: &[usize]) -> [f64; 6] {
    let mut a = [[0.0f64; 7]; 6];
    for &i in rows {
        let (b, px) = &samples[i];
        for r in 0..6 {
            for k in 0..6 {
                a[r][k] += b[r] * b[k];
            }
            a[r][6] += b[r] * f64::from(px[c]);
        }
    }
    for (r, row) in a.iter_mut().enumerate() {
        row[r] += 1e-9; // keeps a degenerate ring (a 1-pixel image) solvable
    }
    solve6(a)
}

/// Solves a 6x6 system given as an augmented matrix, by Gaussian elimination with
/// partial pivoting.
fn solve6(mut a: [[f64; 7]; 6]) -> [f64; 6] {
    for col in 0..6 {
        let pivot = (col..6)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .expect("non-empty range");
        a.swap(col, pivot);
        let p = a[col][col];
        if p.abs() < 1e-15 {
            continue;
        }
        let pivot_row = a[col];
        for (r, row) in a.iter_mut().enumerate() {
            if r != col {
                let f = row[col] / p;
                for (v, pv) in row.iter_mut().zip(&pivot_row).skip(col) {
                    *v -= f * pv;
                }
            }
        }
    }
    let mut x = [0.0; 6];
    for (r, xr) in x.iter_mut().enumerate() {
        if a[r][r].abs() >= 1e-15 {
            *xr = a[r][6] / a[r][r];
        }
    }
    x
}

/// Otsu's threshold over `values`: the cut of a 128-bin histogram that maximises
/// the between-class variance.
fn otsu(values: &[f32]) -> f32 {
    const BINS: usize = 128;
    let (lo, hi) = values
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        return hi;
    }
    let width = (hi - lo) / BINS as f32;
    let mut hist = [0u32; BINS];
    for &v in values {
        hist[(((v - lo) / width) as usize).min(BINS - 1)] += 1;
    }
    let total = values.len() as f64;
    let centre = |i: usize| f64::from(lo) + (i as f64 + 0.5) * f64::from(width);
    let mean_all: f64 = (0..BINS)
        .map(|i| f64::from(hist[i]) * centre(i))
        .sum::<f64>()
        / total;
    let (mut w0, mut m0, mut best, mut cut) = (0.0, 0.0, -1.0, 0);
    for (i, &n) in hist.iter().enumerate() {
        w0 += f64::from(n) / total;
        m0 += f64::from(n) * centre(i) / total;
        let w1 = 1.0 - w0;
        if w0 <= 0.0 || w1 <= 1e-12 {
            continue;
        }
        let between = (mean_all * w0 - m0).powi(2) / (w0 * w1);
        if between > best {
            best = between;
            cut = i;
        }
    }
    centre(cut) as f32
}

/// The box `(x0, y0, x1, y1)` (exclusive ends, in work pixels, fractional) around
/// the pixels over `threshold`, trimmed of stray specks; `None` if there are too
/// few.
pub(super) fn ink_box(
    distance: &[f32],
    width: u32,
    threshold: f32,
) -> Option<(f64, f64, f64, f64)> {
    let w = width as usize;
    let h = distance.len() / w.max(1);
    // Ink pixels counted per column and per row: the quantiles below are read
    // off these counts, as they would be off the sorted coordinates.
    let (mut columns, mut rows) = (vec![0usize; w], vec![0usize; h]);
    for (i, _) in distance.iter().enumerate().filter(|(_, d)| **d > threshold) {
        columns[i % w] += 1;
        rows[i / w] += 1;
    }
    let n: usize = columns.iter().sum();
    if n < 10 {
        return None;
    }
    let at = |counts: &[usize], q: f64| {
        let k = (q * (n - 1) as f64).round() as usize;
        let mut seen = 0;
        let i = counts
            .iter()
            .position(|c| {
                seen += c;
                seen > k
            })
            .expect("k is below the total count");
        i as f64
    };
    let (x0, x1) = (at(&columns, TRIM), at(&columns, 1.0 - TRIM) + 1.0);
    let (y0, y1) = (at(&rows, TRIM), at(&rows, 1.0 - TRIM) + 1.0);
    Some((x0, y0, x1, y1))
}

/// The box `b` grown on every side by [`MARGIN`] of its longer side: a crop
/// around ink, so the model sees the ink's outline whole.
pub(super) fn with_margin(b: (f64, f64, f64, f64)) -> (f64, f64, f64, f64) {
    let m = MARGIN * (b.2 - b.0).max(b.3 - b.1);
    (b.0 - m, b.1 - m, b.2 + m, b.3 + m)
}

/// A work-pixel box scaled by `scale` to full-image pixels and clamped to it;
/// never empty.
pub(super) fn scale_box(
    b: (f64, f64, f64, f64),
    scale: f64,
    w: u32,
    h: u32,
) -> (u32, u32, u32, u32) {
    let clamp = |v: f64, n: u32| (v * scale).round().clamp(0.0, f64::from(n)) as u32;
    let (x0, y0) = (clamp(b.0, w).min(w - 1), clamp(b.1, h).min(h - 1));
    let (x1, y1) = (clamp(b.2, w).max(x0 + 1), clamp(b.3, h).max(y0 + 1));
    (x0, y0, x1, y1)
}

/// The box of `image` redrawn as ink strength: ground white, strong ink black,
/// its longer side at most [`VIEW_SIDE`]. A table, if given, is ground.
///
/// A larger box is shrunk before it is redrawn, not after: the colour distance
/// is the costly step, and the model and the keypoints only ever see the view
/// at 224 and 192 pixels.
fn redraw(
    image: &RgbImage,
    ground: &Ground,
    table: Option<&Table>,
    threshold: f32,
    b: (u32, u32, u32, u32),
) -> GrayImage {
    let (w, h) = image.dimensions();
    let (x0, y0, x1, y1) = b;
    let (cw, ch) = (x1 - x0, y1 - y0);
    let shrunk = (cw.max(ch) > VIEW_SIDE)
        .then(|| resample_box(image, b, VIEW_SIDE, fast_image_resize::PixelType::U8x3));
    // The view's pixels are read from `source` at an offset.
    let (source, ox, oy) = shrunk.as_ref().map_or((image, x0, y0), |s| (s, 0, 0));
    let (vw, vh) = shrunk.as_ref().map_or((cw, ch), |s| s.dimensions());
    // Where the centre of view pixel (x, y) lies in the image, in pixels.
    let (sx, sy) = (f64::from(cw) / f64::from(vw), f64::from(ch) / f64::from(vh));
    let mut distance = Vec::with_capacity((vw * vh) as usize);
    for y in 0..vh {
        let iy = f64::from(y0) + (f64::from(y) + 0.5) * sy;
        for x in 0..vw {
            let ix = f64::from(x0) + (f64::from(x) + 0.5) * sx;
            let on_table = table.is_some_and(|t| t.covers_scaled(ix as u32, iy as u32, w, h));
            let px = source.get_pixel(ox + x, oy + y).0;
            distance.push(if on_table {
                0.0
            } else {
                ground.distance(px, ix / f64::from(w) - 0.5, iy / f64::from(h) - 0.5)
            });
        }
    }
    let mut ink: Vec<f32> = distance
        .iter()
        .copied()
        .filter(|d| *d > threshold)
        .collect();
    let full = if ink.is_empty() {
        threshold
    } else {
        let k = ((INK_QUANTILE * (ink.len() - 1) as f64).round() as usize).min(ink.len() - 1);
        *ink.select_nth_unstable_by(k, f32::total_cmp).1
    };
    // Half the threshold maps to white, so faint ink edges fade rather than vanish.
    let zero = threshold * 0.5;
    let span = (full.max(threshold + 1.0) - zero).max(1.0);
    GrayImage::from_fn(vw, vh, |x, y| {
        let d = distance[(y * vw + x) as usize];
        let strength = ((d - zero) / span).clamp(0.0, 1.0);
        Luma([255 - round_u8(f64::from(strength * 255.0))])
    })
}

/// `v.round().clamp(0.0, 255.0) as u8`, inline: without SSE4.1 in the target,
/// `round` is a libm call, and the views' per-pixel loops call this.
pub(super) fn round_u8(v: f64) -> u8 {
    let v = v.clamp(0.0, 255.0);
    let t = v as u8;
    if v - f64::from(t) >= 0.5 { t + 1 } else { t }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;
    use std::path::Path;

    /// A `size` square of `ground` with a `mark` rectangle at (x0, y0)-(x1, y1).
    fn card(size: u32, ground: [u8; 3], mark: [u8; 3], b: (u32, u32, u32, u32)) -> RgbImage {
        RgbImage::from_fn(size, size, |x, y| {
            if (b.0..b.2).contains(&x) && (b.1..b.3).contains(&y) {
                Rgb(mark)
            } else {
                Rgb(ground)
            }
        })
    }

    fn mark(image: &RgbImage) -> GrayImage {
        views(image, true).remove(0)
    }

    #[test]
    fn crops_to_the_mark_with_a_margin() {
        let out = mark(&card(
            256,
            [200, 180, 150],
            [20, 40, 160],
            (100, 60, 160, 200),
        ));
        // The mark is 60x140; the crop adds 6% of 140 on each side (about 8 px).
        let (w, h) = out.dimensions();
        assert!((70..=84).contains(&w), "width {w}");
        assert!((150..=164).contains(&h), "height {h}");
        assert_eq!(out.get_pixel(w / 2, h / 2), &Luma([0]), "ink is black");
        assert_eq!(out.get_pixel(1, 1), &Luma([255]), "ground is white");
    }

    #[test]
    fn polarity_and_colour_do_not_matter() {
        let dark_on_light = mark(&card(128, [240, 240, 240], [10, 10, 10], (30, 40, 90, 80)));
        let light_on_dark = mark(&card(128, [10, 10, 10], [240, 240, 240], (30, 40, 90, 80)));
        let red_on_blue = mark(&card(128, [30, 60, 200], [220, 30, 30], (30, 40, 90, 80)));
        assert_eq!(dark_on_light, light_on_dark);
        assert_eq!(dark_on_light, red_on_blue);
    }

    #[test]
    fn follows_a_light_gradient_across_the_ground() {
        // The ground darkens from 250 to 130 left to right; the mark is a dark bar.
        let image = RgbImage::from_fn(200, 200, |x, y| {
            if (80..120).contains(&x) && (50..150).contains(&y) {
                Rgb([20, 20, 20])
            } else {
                let g = 250 - (x * 120 / 199) as u8;
                Rgb([g, g, g])
            }
        });
        let (w, h) = mark(&image).dimensions();
        assert!(
            (40..=56).contains(&w),
            "width {w}: the gradient was taken for ink"
        );
        assert!((100..=116).contains(&h), "height {h}");
    }

    #[test]
    fn a_blank_image_is_kept_whole() {
        let blank = RgbImage::from_pixel(50, 30, Rgb([255, 255, 255]));
        let out = mark(&blank);
        assert_eq!(out.dimensions(), (50, 30));
        assert!(out.pixels().all(|p| p.0 == [255]));
        let tiny = RgbImage::from_pixel(1, 1, Rgb([3, 4, 5]));
        assert_eq!(mark(&tiny).dimensions(), (1, 1));
    }

    #[test]
    fn inside_a_block_the_knocked_out_mark_is_found() {
        // A dark block with a light bar knocked out of it, and the bar printed plainly.
        let bar = (70, 60, 90, 140);
        let block = RgbImage::from_fn(200, 200, |x, y| {
            let in_block = (40..160).contains(&x) && (40..160).contains(&y);
            let in_bar = (bar.0..bar.2).contains(&x) && (bar.1..bar.3).contains(&y);
            Rgb(if in_block && !in_bar {
                [30, 30, 120]
            } else {
                [235, 230, 220]
            })
        });
        let block_views = views(&block, false);
        assert_eq!(block_views.len(), 2, "a block is looked inside");
        let plain_views = views(&card(200, [235, 230, 220], [30, 30, 120], bar), true);
        assert_eq!(plain_views.len(), 1, "nothing is printed on the bar");
        let (inside, plain) = (&block_views[1], &plain_views[0]);
        let (iw, ih) = inside.dimensions();
        let (pw, ph) = plain.dimensions();
        assert!(
            iw.abs_diff(pw) <= 3 && ih.abs_diff(ph) <= 3,
            "{iw}x{ih} vs {pw}x{ph}"
        );
        assert_eq!(inside.get_pixel(iw / 2, ih / 2), &Luma([0]));
        // An outline is not a block.
        let outline = RgbImage::from_fn(200, 200, |x, y| {
            let frame = (40..160).contains(&x) && (40..160).contains(&y);
            let inner = (44..156).contains(&x) && (44..156).contains(&y);
            Rgb(if frame && !inner {
                [30, 30, 120]
            } else {
                [235, 230, 220]
            })
        });
        assert_eq!(views(&outline, true).len(), 1);
    }

    #[test]
    fn a_tilted_block_is_looked_inside_by_its_holes() {
        // A block turned by 20 degrees (its ink box's edge is mostly paper) with a
        // bar knocked out; the view inside is the bar, upright, dark on white.
        let (c, s) = (20f64.to_radians().cos(), 20f64.to_radians().sin());
        let image = RgbImage::from_fn(300, 300, |x, y| {
            let (dx, dy) = (f64::from(x) - 150.0, f64::from(y) - 150.0);
            let (u, v) = (c * dx + s * dy, -s * dx + c * dy);
            let block = u.abs() < 80.0 && v.abs() < 60.0;
            let bar = u.abs() < 60.0 && v.abs() < 30.0;
            Rgb(if block && !bar {
                [25, 110, 40]
            } else {
                [238, 232, 220]
            })
        });
        assert_eq!(views(&image, false).len(), 1, "only when asked");
        let v = views(&image, true);
        assert_eq!(v.len(), 2, "the block is looked inside");
        let (w, h) = v[1].dimensions();
        assert!(2 * w > 3 * h, "the bar lies flat: {w}x{h}");
        assert_eq!(v[1].get_pixel(w / 2, h / 2), &Luma([0]), "the bar is ink");
    }

    /// A `table`, a pale label on it, a dark block on the label, a bar knocked out.
    fn label_with_block(table: [u8; 3]) -> RgbImage {
        RgbImage::from_fn(300, 300, |x, y| {
            let on = |a: u32, b: u32| (a..b).contains(&x) && (a..b).contains(&y);
            let bar = (130..170).contains(&x) && (110..190).contains(&y);
            Rgb(if bar {
                [240, 236, 225]
            } else if on(100, 200) {
                [20, 20, 20]
            } else if on(40, 260) {
                [240, 236, 225]
            } else {
                table
            })
        })
    }

    /// `image` enlarged `factor` times, each pixel a block.
    fn enlarged(image: &RgbImage, factor: u32) -> RgbImage {
        RgbImage::from_fn(image.width() * factor, image.height() * factor, |x, y| {
            *image.get_pixel(x / factor, y / factor)
        })
    }

    /// Where `frame` takes the view's point at (`fx`, `fy`) of its width and height.
    fn back(view: &GrayImage, frame: &Frame, fx: f64, fy: f64) -> [f64; 2] {
        frame.apply([fx * f64::from(view.width()), fy * f64::from(view.height())])
    }

    fn near(got: [f64; 2], want: [f64; 2], within: f64) -> bool {
        (got[0] - want[0]).abs() <= within && (got[1] - want[1]).abs() <= within
    }

    #[test]
    fn frames_take_each_view_back_to_where_it_lies_in_the_image() {
        // A crop: the view's corners go to the mark's box with its margin.
        let image = card(256, [200, 180, 150], [20, 40, 160], (100, 60, 160, 200));
        let (view, frame) = &framed_views(&image, true)[0];
        let margin = MARGIN * 140.0;
        assert!(near(
            back(view, frame, 0.0, 0.0),
            [100.0 - margin, 60.0 - margin],
            3.0
        ));
        assert!(near(
            back(view, frame, 1.0, 1.0),
            [160.0 + margin, 200.0 + margin],
            3.0
        ));
        // Turned upright: the bar's centre and its ends go back to the tilted
        // bar's (the label and the bar are centred at 150, 150, turned 25
        // degrees; the bar is 140 long).
        let (view, frame) = &framed_views(&tilted_label([60, 60, 64]), false)[0];
        assert!(2 * view.width() > 3 * view.height(), "the bar lies flat");
        assert!(near(back(view, frame, 0.5, 0.5), [150.0, 150.0], 3.0));
        let (c, s) = (25f64.to_radians().cos(), 25f64.to_radians().sin());
        let ends = [
            [150.0 - 70.0 * c, 150.0 - 70.0 * s],
            [150.0 + 70.0 * c, 150.0 + 70.0 * s],
        ];
        let (x0, x1) = (back(view, frame, 0.0, 0.5), back(view, frame, 1.0, 0.5));
        let [a, b] = if x0[0] < x1[0] { [x0, x1] } else { [x1, x0] };
        assert!(
            near(a, ends[0], 12.0) && near(b, ends[1], 12.0),
            "{a:?} {b:?} {ends:?}"
        );
        // Inside a block, of a photo larger than views are looked for in: the bar
        // knocked out of the block is at 130..170 x 110..190, ten times larger.
        let large = enlarged(&label_with_block([70, 45, 25]), 10);
        let views = framed_views(&large, false);
        let (view, frame) = views.last().expect("views");
        assert!(near(back(view, frame, 0.5, 0.5), [1500.0, 1500.0], 15.0));
        let (top_left, bottom_right) = (back(view, frame, 0.0, 0.0), back(view, frame, 1.0, 1.0));
        assert!(near(top_left, [1300.0, 1100.0], 80.0), "{top_left:?}");
        assert!(
            near(bottom_right, [1700.0, 1900.0], 80.0),
            "{bottom_right:?}"
        );
    }

    #[test]
    fn a_large_photo_gives_the_views_of_its_small_copy_bounded_in_size() {
        // A 3,000-pixel photo of the mid-tone label: white looked past, the label
        // kept beside, the block looked inside, as at 300 pixels.
        for table in [[140, 90, 50], [70, 45, 25]] {
            let small = views(&label_with_block(table), false);
            let large = views(&enlarged(&label_with_block(table), 10), false);
            assert_eq!(large.len(), small.len());
            for (l, s) in large.iter().zip(&small) {
                let (lw, lh) = l.dimensions();
                assert!(lw.max(lh) <= VIEW_SIDE, "{lw}x{lh}");
                let (la, sa) = (
                    f64::from(lw) / f64::from(lh),
                    f64::from(s.width()) / f64::from(s.height()),
                );
                assert!(
                    (la / sa - 1.0).abs() < 0.1,
                    "aspect {la:.2} against {sa:.2}"
                );
                assert_eq!(
                    l.get_pixel(lw / 2, lh / 2),
                    s.get_pixel(s.width() / 2, s.height() / 2)
                );
            }
        }
    }

    #[test]
    fn a_label_seen_whole_is_looked_inside_twice() {
        let v = views(&label_with_block([70, 45, 25]), false);
        assert_eq!(v.len(), MAX_VIEWS);
        let (w, h) = v[2].dimensions();
        assert!((40..=56).contains(&w) && (80..=100).contains(&h), "{w}x{h}");
        // On a mid-tone table the pale label is looked past like white paper: the
        // block is the first view. (Much of the first pass's ink, the label, was
        // white, so that pass is searched too.) The block's inside comes last.
        let v = views(&label_with_block([140, 90, 50]), false);
        assert_eq!(v.len(), MAX_VIEWS);
        let (w, h) = v[0].dimensions();
        assert!(
            (100..=120).contains(&w) && (100..=120).contains(&h),
            "{w}x{h}"
        );
        let (w, h) = v[1].dimensions();
        assert!(
            (220..=270).contains(&w) && (220..=270).contains(&h),
            "{w}x{h}: the label"
        );
        let (w, h) = v[2].dimensions();
        assert!((40..=56).contains(&w) && (80..=100).contains(&h), "{w}x{h}");
    }

    #[test]
    fn a_table_along_one_side_is_seen_past() {
        // A label shifted down in the frame: the table shows along the top only,
        // reaching two corners. Taken for ink, it would widen the crop from the
        // bar (4:1) to the frame (about 1:1) and draw a band across the view.
        let image = RgbImage::from_fn(300, 300, |x, y| {
            let colour = if y < 40 {
                [70, 55, 40]
            } else if (90..210).contains(&x) && (150..180).contains(&y) {
                [30, 30, 30]
            } else {
                [236, 232, 222]
            };
            Rgb(colour)
        });
        let small = downscale(&image, WORK_SIDE);
        assert!(ground_and_table(&small).1.is_some(), "the band is a table");
        let view = &views(&image, false)[0];
        let aspect = f64::from(view.width()) / f64::from(view.height());
        assert!(
            (3.0..5.0).contains(&aspect),
            "{aspect}: the view is the bar"
        );
    }

    /// A pale label turned by 25 degrees on a table, framed so that its sides
    /// reach the frame and the table shows in the corners, with a dark bar printed
    /// on it along the label's long axis.
    fn tilted_label(table: [u8; 3]) -> RgbImage {
        let (c, s) = (25f64.to_radians().cos(), 25f64.to_radians().sin());
        RgbImage::from_fn(300, 300, |x, y| {
            let (dx, dy) = (f64::from(x) - 150.0, f64::from(y) - 150.0);
            let (u, v) = (c * dx + s * dy, -s * dx + c * dy);
            let colour = if u.abs() < 70.0 && v.abs() < 20.0 {
                [30, 30, 30]
            } else if u.abs() < 135.0 && v.abs() < 135.0 {
                [236, 232, 222]
            } else {
                table
            };
            // Light falls off across the scene, by 40 from left to right.
            let shade = (40.0 * (dx + 150.0) / 300.0) as u8;
            Rgb(colour.map(|c| c.saturating_sub(shade)))
        })
    }

    #[test]
    fn a_label_against_the_frame_is_seen_past_the_table() {
        // Fixture photos of wide marks on square labels shifted against two sides
        // of the frame, the table showing along the other two: the first view has
        // the recorded mark's shape, not the label's (which gave views about 1:1).
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
        let aspect = |view: &GrayImage| view.width() as f64 / view.height() as f64;
        for (photo, mark) in [
            ("queries/q015_easy.jpg", "si-sony"),
            ("queries-bench/b042_redraw.jpg", "logos-airbnb"),
        ] {
            let read = |path: &str| {
                let bytes = std::fs::read(dir.join(path)).unwrap();
                crate::imaging::decode(&bytes, &Default::default())
                    .unwrap()
                    .image
            };
            let image = read(photo);
            let small = downscale(&image, WORK_SIDE);
            assert!(ground_and_table(&small).1.is_some(), "{photo}: no table");
            let want = aspect(&views(&read(&format!("gallery/{mark}.png")), false)[0]);
            let got = aspect(&views(&image, false)[0]);
            assert!(
                (0.8..1.25).contains(&(got / want)),
                "{photo}: {got:.2} vs {want:.2}"
            );
        }
        // On a table the label's colour, nothing is told apart: the ring is one colour.
        let small = downscale(&tilted_label([236, 232, 222]), WORK_SIDE);
        assert!(ground_and_table(&small).1.is_none());
    }

    #[test]
    fn a_mark_in_the_table_colour_is_kept() {
        // The table colour printed on the label, enclosed by it, is not table.
        let table = [60, 60, 64];
        let mut image = tilted_label(table);
        for y in 140..160 {
            for x in 100..200 {
                image.put_pixel(x, y, Rgb(table));
            }
        }
        let small = downscale(&image, WORK_SIDE);
        let (_, found) = ground_and_table(&small);
        let found = found.expect("a table shows in the corners");
        let (w, h) = image.dimensions();
        assert!(found.covers_scaled(2, 2, w, h));
        assert!(!found.covers_scaled(150, 150, w, h));
    }

    /// A brown box (cardboard) with a `block` colour square and a `bar` colour
    /// bar drawn in it, or only the bar when `block` is `None`.
    fn on_cardboard(block: Option<[u8; 3]>, bar: [u8; 3]) -> RgbImage {
        RgbImage::from_fn(200, 200, |x, y| {
            let in_block = (50..150).contains(&x) && (50..150).contains(&y);
            let in_bar = (90..110).contains(&x) && (65..135).contains(&y);
            Rgb(match (in_bar, in_block, block) {
                (true, _, _) => bar,
                (false, true, Some(colour)) => colour,
                _ => [190, 150, 105],
            })
        })
    }

    #[test]
    fn white_drawn_in_a_mark_on_a_brown_box_is_ground() {
        // A blue square with a white bar drawn in it: on a recorded mark's white
        // the bar is ground, and so it is on the box.
        let v = views(&on_cardboard(Some([30, 30, 120]), [245, 245, 245]), false);
        let (w, h) = v[0].dimensions();
        assert!(v[0].get_pixel(w / 2, h / 2)[0] > 200, "the bar is ground");
        assert!(v[0].get_pixel(w / 6, h / 2)[0] < 60, "the square is ink");
    }

    #[test]
    fn white_print_on_a_brown_box_is_still_searched() {
        // A white bar printed on the box, with a small dark dot under it: looking
        // past white leaves the dot, and the view that keeps white, bar and dot,
        // is searched beside it.
        let mut image = on_cardboard(None, [245, 245, 245]);
        for y in 145..155 {
            for x in 95..105 {
                image.put_pixel(x, y, Rgb([20, 20, 20]));
            }
        }
        let v = views(&image, false);
        assert_eq!(v.len(), 2, "the view that keeps white is searched too");
        let (w, h) = v[0].dimensions();
        assert!(w.max(h) < 30, "{w}x{h}: the first view is the dot");
        let (w, h) = v[1].dimensions();
        assert!(
            w < h && v[1].get_pixel(w / 2, h / 2)[0] < 60,
            "the bar is ink"
        );
    }

    #[test]
    fn otsu_splits_two_clusters() {
        let mut v = vec![5.0f32; 100];
        v.extend(std::iter::repeat_n(100.0, 50));
        let t = otsu(&v);
        assert!(t > 5.0 && t < 100.0, "{t}");
    }
}

//! Turning a found mark square to the frame again.
//!
//! A handheld photo is rarely square to the label: tilts of 10 to 30 degrees are
//! common, and an ImageNet embedding is not rotation invariant. On the calibration
//! split, before this step, medium photos tilted under 8 degrees were found at rank
//! 1 about 84% of the time, those tilted 15 to 25 degrees 58%.
//!
//! Marks are drawn square to the page: straight strokes, text baselines, the
//! outline of a block and the edges of the label run along two perpendicular
//! axes. Their direction, modulo 90 degrees, is the four-fold circular mean of the
//! gradient directions weighted by gradient strength (a four-fold structure
//! tensor). When that mean is clear, the view is rotated by it so those axes are
//! horizontal and vertical again; a round mark has no clear axis and is left as
//! it is. Enrolled marks pass through the same step, so a drawing whose own axes
//! are tilted is turned the same way on both sides.
//!
//! Only tilts within 45 degrees can be told apart this way; a photo turned by a
//! quarter or a half turn stays so (phones record that in EXIF, applied on decode).

use image::{GrayImage, Luma};

use super::frame::Frame;
use super::normalise::{downscale_grey, ink_box, round_u8, scale_box, with_margin};

/// Side of the copy on which the tilt is measured.
const SKEW_SIDE: u32 = 128;
/// Clarity (length of the four-fold mean of unit gradient directions, weighted by
/// strength: 0 for no preferred axis, 1 for all edges on two perpendicular axes)
/// below which a view is left as it is.
const MIN_CLARITY: f64 = 0.15;
/// Tilts smaller than this, in degrees, are left alone (not worth a resampling).
const MIN_TILT_DEG: f64 = 1.0;
/// Ink strength, 0..=255, above which a pixel counts when re-cropping the rotated view.
const CROP_INK: f32 = 32.0;

/// `view` (dark ink on white) rotated so its dominant axes are horizontal and
/// vertical, then cropped to its ink again; unchanged when it has no clear axis
/// or is already square to the frame. Views are at most
/// [`VIEW_SIDE`](super::normalise::VIEW_SIDE) pixels, which bounds the rotation's
/// per-pixel work.
///
/// Also returns the [`Frame`] that takes the result's pixels back to `view`'s.
pub(super) fn upright(view: GrayImage) -> (GrayImage, Frame) {
    match tilt(&downscale_grey(&view, SKEW_SIDE)) {
        Some(angle) if angle.abs().to_degrees() >= MIN_TILT_DEG => {
            let (turned, back) = rotate(&view, -angle);
            let (cropped, (x0, y0)) = crop_to_ink(turned);
            (cropped, Frame::shift(x0, y0).then(&back))
        }
        _ => (view, Frame::IDENTITY),
    }
}

/// The tilt of the dominant axes of `view` in radians, in (-pi/4, pi/4]
/// (positive: the axes are turned clockwise on screen), or `None` when no axis
/// stands out.
fn tilt(view: &GrayImage) -> Option<f64> {
    let (w, h) = view.dimensions();
    if w < 3 || h < 3 {
        return None;
    }
    let at = |x: u32, y: u32| f64::from(view.get_pixel(x, y)[0]);
    let (mut c, mut s, mut total) = (0.0, 0.0, 0.0);
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            // Sobel; y grows downwards, so a positive angle is clockwise on screen.
            let gx = at(x + 1, y - 1) + 2.0 * at(x + 1, y) + at(x + 1, y + 1)
                - at(x - 1, y - 1)
                - 2.0 * at(x - 1, y)
                - at(x - 1, y + 1);
            let gy = at(x - 1, y + 1) + 2.0 * at(x, y + 1) + at(x + 1, y + 1)
                - at(x - 1, y - 1)
                - 2.0 * at(x, y - 1)
                - at(x + 1, y - 1);
            let square = gx * gx + gy * gy;
            if square > 0.0 {
                // cos 4θ and sin 4θ of the gradient's angle θ by doubling it
                // twice, without trigonometry: this loop runs for every pixel.
                let strength = square.sqrt();
                let (c2, s2) = ((gx * gx - gy * gy) / square, 2.0 * gx * gy / square);
                c += strength * (c2 * c2 - s2 * s2);
                s += strength * 2.0 * c2 * s2;
                total += strength;
            }
        }
    }
    (total > 0.0 && c.hypot(s) / total >= MIN_CLARITY).then(|| s.atan2(c) / 4.0)
}

/// `view` rotated by `angle` radians (positive: clockwise on screen) about its
/// centre, on a canvas big enough to hold all of it, white where nothing maps;
/// and the [`Frame`] that takes the canvas's pixels back to the view's.
fn rotate(view: &GrayImage, angle: f64) -> (GrayImage, Frame) {
    let (w, h) = view.dimensions();
    let (sin, cos) = angle.sin_cos();
    let (fw, fh) = (f64::from(w), f64::from(h));
    let ow = (fw * cos.abs() + fh * sin.abs()).ceil() as u32;
    let oh = (fw * sin.abs() + fh * cos.abs()).ceil() as u32;
    let (cx, cy) = (fw / 2.0, fh / 2.0);
    let (ocx, ocy) = (f64::from(ow) / 2.0, f64::from(oh) / 2.0);
    let pixels = view.as_raw();
    let stride = w as usize;
    // Bilinear between pixel centres; outside the view is white.
    let sample = |x: f64, y: f64| -> f64 {
        let (x, y) = (x - 0.5, y - 0.5);
        let (x0, y0) = (floor(x), floor(y));
        let (fx, fy) = (x - x0, y - y0);
        let [a, b, c, d] = if x0 >= 0.0 && y0 >= 0.0 && x0 + 1.0 < fw && y0 + 1.0 < fh {
            let i = y0 as usize * stride + x0 as usize;
            [
                pixels[i],
                pixels[i + 1],
                pixels[i + stride],
                pixels[i + stride + 1],
            ]
            .map(f64::from)
        } else {
            let px = |xi: f64, yi: f64| -> f64 {
                if xi < 0.0 || yi < 0.0 || xi >= fw || yi >= fh {
                    255.0
                } else {
                    f64::from(pixels[yi as usize * stride + xi as usize])
                }
            };
            [
                px(x0, y0),
                px(x0 + 1.0, y0),
                px(x0, y0 + 1.0),
                px(x0 + 1.0, y0 + 1.0),
            ]
        };
        let top = a * (1.0 - fx) + b * fx;
        let bottom = c * (1.0 - fx) + d * fx;
        top * (1.0 - fy) + bottom * fy
    };
    let turned = GrayImage::from_fn(ow, oh, |x, y| {
        // The inverse rotation takes each output pixel back into the view.
        let (dx, dy) = (f64::from(x) + 0.5 - ocx, f64::from(y) + 0.5 - ocy);
        let sx = cos * dx + sin * dy + cx;
        let sy = -sin * dx + cos * dy + cy;
        Luma([round_u8(sample(sx, sy))])
    });
    let back = Frame::shift(-ocx, -ocy)
        .then(&Frame::turn(-angle))
        .then(&Frame::shift(cx, cy));
    (turned, back)
}

/// `x.floor()` for `x` well within `i64`, inline: without SSE4.1 in the
/// target, `f64::floor` is a libm call, and this runs for every output pixel.
fn floor(x: f64) -> f64 {
    let t = x as i64 as f64;
    if t > x { t - 1.0 } else { t }
}

/// `view` cropped to the box around its ink, with the usual margin, and where
/// the crop's top left lies in `view`.
fn crop_to_ink(view: GrayImage) -> (GrayImage, (f64, f64)) {
    let (w, h) = view.dimensions();
    let strength: Vec<f32> = view.pixels().map(|p| 255.0 - f32::from(p[0])).collect();
    let Some(ink) = ink_box(&strength, w, CROP_INK) else {
        return (view, (0.0, 0.0));
    };
    let (cx0, cy0, cx1, cy1) = scale_box(with_margin(ink), 1.0, w, h);
    let crop = image::imageops::crop_imm(&view, cx0, cy0, cx1 - cx0, cy1 - cy0).to_image();
    (crop, (f64::from(cx0), f64::from(cy0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A white `size` square with a black bar drawn across its middle, and a
    /// shorter bar across it, turned by `angle` radians.
    fn cross(size: u32, angle: f64) -> GrayImage {
        let flat = GrayImage::from_fn(size, size, |x, y| {
            let (x, y) = (x as i64 - size as i64 / 2, y as i64 - size as i64 / 2);
            let bar = y.abs() < 6 && x.abs() < 50;
            let post = x.abs() < 4 && (-30..10).contains(&y);
            Luma([if bar || post { 0 } else { 255 }])
        });
        rotate(&flat, angle).0
    }

    #[test]
    fn measures_the_tilt_of_straight_strokes() {
        for deg in [-30.0f64, -12.0, 0.0, 7.0, 20.0, 38.0] {
            let got = tilt(&cross(160, deg.to_radians())).expect("a cross has clear axes");
            assert!(
                (got.to_degrees() - deg).abs() < 1.5,
                "turned {deg} degrees, measured {}",
                got.to_degrees()
            );
        }
    }

    #[test]
    fn turns_a_tilted_mark_square_again() {
        let (turned, _) = upright(cross(160, 18f64.to_radians()));
        let left = tilt(&turned).expect("still a cross");
        assert!(left.to_degrees().abs() < 1.5, "left {}", left.to_degrees());
        // Cropped back to the ink: the bar spans most of the width.
        assert!(
            turned.width() < 130,
            "cropped to the ink, got {}",
            turned.width()
        );
    }

    #[test]
    fn a_round_mark_is_left_alone() {
        let ring = GrayImage::from_fn(120, 120, |x, y| {
            let r = (f64::from(x) - 60.0).hypot(f64::from(y) - 60.0);
            Luma([if (30.0..40.0).contains(&r) { 0 } else { 255 }])
        });
        assert_eq!(tilt(&ring), None);
        assert_eq!(upright(ring.clone()).0, ring);
    }

    #[test]
    fn inline_floor_and_round_agree_with_the_library() {
        // Steps of 1/64 hit every half exactly, where rounding is decided.
        for i in -64 * 300..=64 * 300 {
            let x = f64::from(i) / 64.0;
            assert_eq!(floor(x), x.floor(), "{x}");
            assert_eq!(round_u8(x), x.round().clamp(0.0, 255.0) as u8, "{x}");
        }
        assert_eq!(round_u8(f64::NAN), 0);
    }

    #[test]
    fn a_blank_view_is_left_alone() {
        let blank = GrayImage::from_pixel(50, 40, Luma([255]));
        assert_eq!(upright(blank.clone()).0, blank);
    }
}

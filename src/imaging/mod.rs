//! Image decoding and preprocessing: bytes in, a model-ready tensor out.
//!
//! Everything that enters marklens as pixels passes through here, whether it is a
//! recorded mark being enrolled or a photo being searched, so both sides of a match
//! see exactly the same transformation. The decoder is hardened for input from the
//! field: the byte size, the declared pixel count and the decoder's allocations are
//! all bounded *before* any pixel is decoded, so a hostile or corrupt file yields an
//! [`ImageError`] rather than a panic or an out-of-memory kill.

mod frame;
pub mod keypoints;
mod knockout;
pub mod normalise;
mod upright;

use std::io::Cursor;

use fast_image_resize::PixelType;
use image::{
    DynamicImage, GrayImage, ImageBuffer, ImageDecoder, ImageFormat, ImageReader, Pixel, Rgb,
    RgbImage,
};
use ndarray::Array4;

pub use frame::Frame;
pub use keypoints::Keypoints;

/// Bounds applied to every image before and during decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest encoded file accepted, in bytes.
    pub max_bytes: usize,
    /// Largest width x height accepted, as declared by the file header.
    pub max_pixels: u64,
    /// Largest single allocation the decoder may make, in bytes.
    pub max_alloc: u64,
}

impl Default for Limits {
    /// 32 MiB files, 50 megapixels, 512 MiB of decoder memory: generous for phone
    /// photos (a 48 MP sensor fits), far below what would hurt the server.
    fn default() -> Self {
        Limits {
            max_bytes: 32 << 20,
            max_pixels: 50_000_000,
            max_alloc: 512 << 20,
        }
    }
}

/// Why an image was refused.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("empty image (0 bytes)")]
    Empty,
    #[error("image is {size} bytes, over the limit of {max} bytes")]
    TooManyBytes { size: usize, max: usize },
    #[error("image is {width}x{height} pixels, over the limit of {max} pixels")]
    TooManyPixels { width: u32, height: u32, max: u64 },
    #[error("image has a zero dimension ({width}x{height})")]
    ZeroSized { width: u32, height: u32 },
    #[error("unrecognised image format (accepted: JPEG, PNG, WebP, GIF, BMP)")]
    UnknownFormat,
    #[error("unsupported image format {0:?} (accepted: JPEG, PNG, WebP, GIF, BMP)")]
    UnsupportedFormat(ImageFormat),
    #[error("cannot decode {format:?} image: {reason}")]
    Decode { format: ImageFormat, reason: String },
}

/// The formats marklens accepts. Everything else is refused before decoding.
const ACCEPTED: [ImageFormat; 5] = [
    ImageFormat::Jpeg,
    ImageFormat::Png,
    ImageFormat::WebP,
    ImageFormat::Gif,
    ImageFormat::Bmp,
];

/// A decoded image, upright and opaque, with the format it came in.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub image: RgbImage,
    pub format: ImageFormat,
}

/// Decodes `bytes` into an upright RGB image.
///
/// The format is sniffed from the content, never from a file name. EXIF orientation
/// is applied (phones store portrait shots sideways) and any alpha channel is
/// flattened onto white, which is how a mark on a transparent background is printed.
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Decoded, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    if bytes.len() > limits.max_bytes {
        return Err(ImageError::TooManyBytes {
            size: bytes.len(),
            max: limits.max_bytes,
        });
    }
    let format = image::guess_format(bytes).map_err(|_| ImageError::UnknownFormat)?;
    if !ACCEPTED.contains(&format) {
        return Err(ImageError::UnsupportedFormat(format));
    }
    let decode_err = |e: image::ImageError| ImageError::Decode {
        format,
        reason: e.to_string(),
    };

    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_alloc = Some(limits.max_alloc);
    reader.limits(decoder_limits);
    let mut decoder = reader.into_decoder().map_err(decode_err)?;

    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(ImageError::ZeroSized { width, height });
    }
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(ImageError::TooManyPixels {
            width,
            height,
            max: limits.max_pixels,
        });
    }
    // A broken EXIF block must not reject an otherwise good photo: fall back to upright.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut dynamic = DynamicImage::from_decoder(decoder).map_err(decode_err)?;
    dynamic.apply_orientation(orientation);

    Ok(Decoded {
        image: flatten_onto_white(dynamic),
        format,
    })
}

/// Composites any alpha channel onto a white ground and returns 8-bit RGB.
fn flatten_onto_white(image: DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.into_rgb8();
    }
    let rgba = image.into_rgba8();
    let mut out = RgbImage::new(rgba.width(), rgba.height());
    for (dst, src) in out.pixels_mut().zip(rgba.pixels()) {
        let a = u32::from(src[3]);
        let blend = |c: u8| ((u32::from(c) * a + 255 * (255 - a) + 127) / 255) as u8;
        *dst = Rgb([blend(src[0]), blend(src[1]), blend(src[2])]);
    }
    out
}

/// What of an image the model is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// The whole image, as it came.
    Whole,
    /// The mark found in the image, redrawn as ink on white, plus the negative
    /// of a solid block, each turned square to the frame ([`normalise::views`]):
    /// one to three views per image.
    Mark,
}

impl Framing {
    /// Names the framing and its algorithm's version in the model fingerprint:
    /// any change to what the model is shown must change this tag.
    pub fn tag(self) -> &'static str {
        match self {
            Framing::Whole => "whole",
            Framing::Mark => "mark-v5",
        }
    }
}

/// How a model wants its input: what of the image it sees, then a square of `size`
/// pixels, normalised per channel as `(pixel - mean) / std` on the 0..=255 scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preprocess {
    pub framing: Framing,
    pub size: u32,
    /// The finest detail the model is shown, as a side in pixels: the square is
    /// resampled to it before it is enlarged to `size` (`size` or more: no
    /// low-pass). A photo's mark arrives blurred, shaken and compressed, a
    /// recorded mark sharp; shown both at the same coarser detail, the model
    /// compares their shapes rather than their sharpness.
    pub detail: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// What an image gives the search: the model input and, for each of its views,
/// the local features that verify a candidate ([`keypoints`]).
#[derive(Debug, Clone)]
pub struct Input {
    /// `[views, 3, size, size]`, one row per view.
    pub tensor: Array4<f32>,
    /// One entry per row of `tensor`.
    pub keypoints: Vec<Keypoints>,
    /// One entry per row of `tensor`: takes a position in its keypoints' units
    /// (the view's longer side) to the image's pixels.
    pub frames: Vec<Frame>,
}

impl Preprocess {
    /// What the model is shown of `image`, one grey image per view: the whole
    /// image, or the views its framing finds ([`normalise::views`]);
    /// `knockouts` also looks for marks knocked out of tilted blocks.
    pub fn views(&self, image: &RgbImage, knockouts: bool) -> Vec<GrayImage> {
        match self.framing {
            Framing::Whole => vec![DynamicImage::ImageRgb8(image.clone()).into_luma8()],
            Framing::Mark => normalise::views(image, knockouts),
        }
    }

    /// The model input and keypoints of one image, one view per entry its framing
    /// gives ([`Preprocess::views`]). The whole image keeps its colour for the
    /// model; a found view is grey.
    pub fn input(&self, image: &RgbImage, knockouts: bool) -> Input {
        let (views, frames, tensor) = match self.framing {
            Framing::Whole => (
                self.views(image, knockouts),
                vec![Frame::IDENTITY],
                self.tensor(&[image]),
            ),
            Framing::Mark => {
                let (views, frames): (Vec<GrayImage>, Vec<Frame>) =
                    normalise::framed_views(image, knockouts)
                        .into_iter()
                        .unzip();
                let tensor = self.batch(&views.iter().collect::<Vec<_>>(), PixelType::U8);
                (views, frames, tensor)
            }
        };
        let frames = views
            .iter()
            .zip(frames)
            .map(|(view, frame)| {
                let side = f64::from(view.width().max(view.height()));
                Frame::scale(side, side).then(&frame)
            })
            .collect();
        Input {
            tensor,
            keypoints: views.iter().map(Keypoints::of).collect(),
            frames,
        }
    }

    /// The model input for `images`: a `[N, 3, size, size]` tensor.
    ///
    /// Each image is first padded to a square with white (marks vary widely in
    /// aspect ratio and must not be distorted), then resampled to the input size.
    pub fn tensor(&self, images: &[&RgbImage]) -> Array4<f32> {
        self.batch(images, PixelType::U8x3)
    }

    /// [`Preprocess::tensor`] for RGB or grey images (`pixel_type` says which).
    /// A grey image fills the three channels with its one: the same tensor as
    /// its RGB copy gives, bit for bit, for a third of the resampling.
    fn batch<P: Pixel<Subpixel = u8>>(
        &self,
        images: &[&ImageBuffer<P, Vec<u8>>],
        pixel_type: PixelType,
    ) -> Array4<f32> {
        let side = self.size as usize;
        let plane = side * side;
        let mut batch = Array4::<f32>::zeros((images.len(), 3, side, side));
        let data = batch.as_slice_mut().expect("a fresh array is contiguous");
        let scale = self.std.map(|s| 1.0 / s);
        let channels = usize::from(P::CHANNEL_COUNT);
        for (image, slot) in images.iter().zip(data.chunks_exact_mut(3 * plane)) {
            let resized = self.resize(image, pixel_type);
            let (r, rest) = slot.split_at_mut(plane);
            let (g, b) = rest.split_at_mut(plane);
            for (i, px) in resized.chunks_exact(channels).enumerate() {
                let [pr, pg, pb] = [0, 1, 2].map(|c| f32::from(px[c.min(channels - 1)]));
                r[i] = (pr - self.mean[0]) * scale[0];
                g[i] = (pg - self.mean[1]) * scale[1];
                b[i] = (pb - self.mean[2]) * scale[2];
            }
        }
        batch
    }

    /// Pads `image` to a white square and resamples it to the input size through
    /// the `detail` side; returns the packed bytes.
    fn resize<P: Pixel<Subpixel = u8>>(
        &self,
        image: &ImageBuffer<P, Vec<u8>>,
        pixel_type: PixelType,
    ) -> Vec<u8> {
        let mut square = pad_to_square(image);
        for side in [self.detail.min(self.size), self.size] {
            if square.width() != side {
                square = normalise::resample(&square, side, pixel_type);
            }
        }
        square.into_raw()
    }
}

/// Centres `image` on a white square whose side is its longer side.
fn pad_to_square<P: Pixel<Subpixel = u8>>(
    image: &ImageBuffer<P, Vec<u8>>,
) -> ImageBuffer<P, Vec<u8>> {
    let (w, h) = image.dimensions();
    if w == h {
        return image.clone();
    }
    let side = w.max(h);
    let white = *P::from_slice(&[255; 4][..usize::from(P::CHANNEL_COUNT)]);
    let mut square = ImageBuffer::from_pixel(side, side, white);
    image::imageops::replace(
        &mut square,
        image,
        i64::from((side - w) / 2),
        i64::from((side - h) / 2),
    );
    square
}

/// Encodes a small JPEG preview of `image` whose longer side is at most `max_side`.
/// Used for report thumbnails.
pub fn thumbnail_jpeg(image: &RgbImage, max_side: u32) -> Vec<u8> {
    let (w, h) = image.dimensions();
    let scale = f64::from(max_side) / f64::from(w.max(h));
    let thumb = if scale < 1.0 {
        let tw = ((f64::from(w) * scale).round() as u32).max(1);
        let th = ((f64::from(h) * scale).round() as u32).max(1);
        image::imageops::thumbnail(image, tw, th)
    } else {
        image.clone()
    };
    let mut out = Vec::new();
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80);
    // Encoding an in-memory RGB buffer into a Vec cannot fail.
    thumb
        .write_with_encoder(encoder)
        .expect("JPEG encoding into memory");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_bytes(image: &DynamicImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn transparent_pixels_become_white() {
        let mut rgba = image::RgbaImage::new(2, 1);
        rgba.put_pixel(0, 0, image::Rgba([0, 0, 0, 0]));
        rgba.put_pixel(1, 0, image::Rgba([10, 20, 30, 255]));
        let decoded = decode(
            &png_bytes(&DynamicImage::ImageRgba8(rgba)),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(decoded.image.get_pixel(0, 0), &Rgb([255, 255, 255]));
        assert_eq!(decoded.image.get_pixel(1, 0), &Rgb([10, 20, 30]));
    }

    #[test]
    fn limits_are_enforced_before_decoding() {
        let bytes = png_bytes(&DynamicImage::new_rgb8(100, 100));
        let tight = Limits {
            max_pixels: 99 * 100,
            ..Limits::default()
        };
        assert!(matches!(
            decode(&bytes, &tight),
            Err(ImageError::TooManyPixels {
                width: 100,
                height: 100,
                ..
            })
        ));
        let small = Limits {
            max_bytes: 10,
            ..Limits::default()
        };
        assert!(matches!(
            decode(&bytes, &small),
            Err(ImageError::TooManyBytes { .. })
        ));
        assert!(matches!(
            decode(&[], &Limits::default()),
            Err(ImageError::Empty)
        ));
        assert!(matches!(
            decode(b"hello, not an image", &Limits::default()),
            Err(ImageError::UnknownFormat)
        ));
    }

    #[test]
    fn truncated_file_is_an_error_not_a_panic() {
        let bytes = png_bytes(&DynamicImage::new_rgb8(64, 64));
        let err = decode(&bytes[..bytes.len() / 2], &Limits::default()).unwrap_err();
        assert!(matches!(err, ImageError::Decode { .. }), "{err}");
    }

    #[test]
    fn a_grey_view_gives_the_tensor_of_its_rgb_copy_bit_for_bit() {
        let pre = Preprocess {
            framing: Framing::Mark,
            size: 224,
            detail: 112,
            mean: [123.675, 116.28, 103.53],
            std: [58.395, 57.12, 57.375],
        };
        // Wide, tall, at the input size, and enlarged; a gradient with an edge.
        let views: Vec<GrayImage> = [(300, 180), (97, 260), (224, 224), (40, 64)]
            .into_iter()
            .map(|(w, h)| {
                GrayImage::from_fn(w, h, |x, y| {
                    image::Luma([if x > w / 2 {
                        20
                    } else {
                        ((x * 7 + y * 3) % 256) as u8
                    }])
                })
            })
            .collect();
        let rgb: Vec<RgbImage> = views
            .iter()
            .map(|v| DynamicImage::ImageLuma8(v.clone()).into_rgb8())
            .collect();
        let want = pre.tensor(&rgb.iter().collect::<Vec<_>>());
        let got = pre.batch(&views.iter().collect::<Vec<_>>(), PixelType::U8);
        assert_eq!(got.shape(), want.shape());
        assert!(
            got.iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
    }

    #[test]
    fn detail_below_the_input_size_smooths_what_is_finer_than_it() {
        // One-pixel stripes at the input size: kept as they are without a coarser
        // detail, averaged to mid-grey through half the side.
        let stripes = GrayImage::from_fn(32, 32, |x, _| {
            image::Luma([if x % 2 == 0 { 0 } else { 255 }])
        });
        let shown = |detail| {
            let pre = Preprocess {
                framing: Framing::Mark,
                size: 32,
                detail,
                mean: [0.0; 3],
                std: [1.0; 3],
            };
            pre.batch(&[&stripes], PixelType::U8)
        };
        let sharp = shown(32);
        assert_eq!(sharp[[0, 0, 5, 10]], 0.0);
        assert_eq!(sharp[[0, 0, 5, 11]], 255.0);
        let coarse = shown(16);
        assert_eq!(coarse.shape(), [1, 3, 32, 32]);
        // Away from the edges, where the first and last stripe weigh alone.
        let inside = coarse.slice(ndarray::s![0, .., .., 4..28]);
        assert!(
            inside.iter().all(|&p| (p - 127.5).abs() < 2.0),
            "{:?}",
            coarse.slice(ndarray::s![0, 0, 5, ..])
        );
    }

    #[test]
    fn tensor_is_normalised_and_padded_white() {
        // A 2:1 black bar: after padding, the top and bottom quarters are white.
        let image = RgbImage::from_pixel(64, 32, Rgb([0, 0, 0]));
        let pre = Preprocess {
            framing: Framing::Whole,
            size: 16,
            detail: 16,
            mean: [127.0; 3],
            std: [128.0; 3],
        };
        let tensor = pre.tensor(&[&image, &image]);
        assert_eq!(tensor.shape(), [2, 3, 16, 16]);
        let white = (255.0 - 127.0) / 128.0;
        let black = (0.0 - 127.0) / 128.0;
        assert!((tensor[[1, 0, 0, 8]] - white).abs() < 1e-6);
        assert!((tensor[[1, 2, 8, 8]] - black).abs() < 1e-6);
    }
}

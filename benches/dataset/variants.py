"""Infringing variants of a mark: what a counterfeiter changes to dodge a match.

Each function takes the rendered mark (RGBA, cropped to its ink) and a seeded
generator, and returns the altered mark and the parameters it drew.  The
result is then photographed at the easy level, so a variant query measures
the alteration, not the camera.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter, ImageOps
from scipy import ndimage

from markdata import needs_dark_ground
from photo import photograph

VARIANTS = ["recolour", "reverse", "mirror", "redraw", "remove"]


def r3(x: float) -> float:
    return round(float(x), 3)


def recolour(rgba: Image.Image, r: np.random.Generator) -> tuple[Image.Image, dict]:
    """Rotate the hue; grey or black ink gets a saturated colour instead."""
    a = np.asarray(rgba, dtype=np.float32)
    hsv = np.asarray(rgba.convert("RGB").convert("HSV"), dtype=np.float32)
    ink = a[..., 3] > 128
    shift = r.uniform(60, 300)
    if not ink.any() or hsv[..., 1][ink].mean() < 40:
        colour = np.array(Image.new("HSV", (1, 1), (int(r.uniform(0, 255)), 220, 200))
                          .convert("RGB"), dtype=np.float32)[0, 0]
        lum = a[..., :3].mean(axis=2, keepdims=True) / 255.0
        rgb = colour * (1 - lum) + 255 * lum
        return _with_alpha(rgb, a), {"variant": "recolour", "ink": [int(v) for v in colour]}
    hsv[..., 0] = (hsv[..., 0] + shift * 255 / 360) % 256
    rgb = np.asarray(Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB"), np.float32)
    return _with_alpha(rgb, a), {"variant": "recolour", "hue_shift_deg": r3(shift)}


def reverse(rgba: Image.Image, r: np.random.Generator) -> tuple[Image.Image, dict]:
    """Contrast reversal: the mark knocked out of a solid block of its ink
    colour (a negative), as printed on packaging.

    A mark drawn on a plate of its own (a disc or tile of one tone holding a
    glyph of another) is not knocked out whole: that would leave a blank hole
    of the plate's outline, with nothing of the mark in it.  Its two tones swap
    instead: the plate is knocked out and the glyph stays in the block's colour.
    """
    a = np.asarray(rgba, dtype=np.float32)
    ink = a[..., 3] > 128
    colour = a[..., :3][ink].mean(axis=0) if ink.any() else np.zeros(3, np.float32)
    if colour.mean() > 200:  # near-white ink: a dark block
        colour = np.array([30, 30, 34], np.float32)
    glyph = plate_glyph(a)
    pad = int(0.12 * max(rgba.size))
    w, h = rgba.size[0] + 2 * pad, rgba.size[1] + 2 * pad
    block = np.empty((h, w, 4), np.float32)
    block[..., :3] = colour
    block[..., 3] = 255
    alpha = np.zeros((h, w), np.float32)
    knocked = a[..., 3] / 255.0 if glyph is None else a[..., 3] / 255.0 * (1 - glyph)
    alpha[pad:pad + rgba.size[1], pad:pad + rgba.size[0]] = knocked
    paper = r.uniform(235, 255)
    block[..., :3] = block[..., :3] * (1 - alpha[..., None]) + paper * alpha[..., None]
    return Image.fromarray(block.round().astype(np.uint8), "RGBA"), {
        "variant": "reverse", "block": [int(v) for v in colour], "pad": r3(pad / max(w, h)),
        "plate": glyph is not None}


def plate_glyph(a: np.ndarray) -> np.ndarray | None:
    """How much each pixel of a mark (RGBA, float) belongs to the glyph on its
    plate, from 0 to 1, or None when the mark is not a glyph on a plate.

    The ink's colours are split in two along their main axis (Otsu).  The mark
    is a plate when the two tones are clearly apart, the lesser holds 1-50% of
    the ink, and at least 60% of it lies inside the greater's outline."""
    ink = a[..., 3] > 128
    if ink.sum() < 100:
        return None
    rgb = a[..., :3][ink]
    mean = rgb.mean(axis=0)
    _, _, vt = np.linalg.svd(rgb - mean, full_matrices=False)
    proj = (a[..., :3] - mean) @ vt[0]
    if np.ptp(proj[ink]) < 80:  # one tone
        return None
    t = _otsu(proj[ink])
    lo, hi = ink & (proj <= t), ink & (proj > t)
    major, minor = (lo, hi) if lo.sum() >= hi.sum() else (hi, lo)
    if not 0.01 <= minor.sum() / ink.sum() <= 0.5:
        return None
    m_major, m_minor = proj[major].mean(), proj[minor].mean()
    if abs(m_minor - m_major) < 80:  # the tones are not clearly apart
        return None
    inside = ndimage.binary_fill_holes(major)
    if (inside & minor).sum() < 0.6 * minor.sum():
        return None
    weight = np.clip((proj - m_major) / (m_minor - m_major), 0, 1)
    return np.where(inside, weight, 0.0)


def _otsu(values: np.ndarray) -> float:
    """The threshold that best splits `values` in two (Otsu, 256 bins)."""
    hist, edges = np.histogram(values, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    return float(centres[np.argmax(w0 * w1 * (m0 - m1) ** 2)])


def mirror(rgba: Image.Image, r: np.random.Generator) -> tuple[Image.Image, dict]:
    """Left-right mirror image (sometimes upside down as well)."""
    flip = r.random() < 0.2
    out = ImageOps.mirror(rgba)
    return (ImageOps.flip(out) if flip else out), {"variant": "mirror", "also_vertical": bool(flip)}


def redraw(rgba: Image.Image, r: np.random.Generator) -> tuple[Image.Image, dict]:
    """A slight redraw: smooth warp, stretch of up to 13%, strokes 1-3 px
    thicker or thinner (at a 256 px mark)."""
    scale = 256 / max(rgba.size)
    base = rgba.resize((max(8, round(rgba.width * scale)), max(8, round(rgba.height * scale))),
                       Image.Resampling.LANCZOS)
    stretch = r.uniform(-0.13, 0.13)
    w = max(8, round(base.width * (1 + stretch)))
    h = max(8, round(base.height / (1 + stretch)))
    base = base.resize((w, h), Image.Resampling.BICUBIC)
    pad = 8
    arr = np.zeros((h + 2 * pad, w + 2 * pad, 4), np.float32)
    arr[pad:pad + h, pad:pad + w] = np.asarray(base, np.float32)
    amp = r.uniform(1.5, 4.0)
    yy, xx = np.mgrid[0:arr.shape[0], 0:arr.shape[1]].astype(np.float32)
    dx = amp * np.sin(2 * np.pi * yy / arr.shape[0] * r.uniform(0.5, 1.5) + r.uniform(0, 6.3))
    dy = amp * np.sin(2 * np.pi * xx / arr.shape[1] * r.uniform(0.5, 1.5) + r.uniform(0, 6.3))
    warped = np.stack([ndimage.map_coordinates(arr[..., c], [yy + dy, xx + dx], order=1)
                       for c in range(4)], axis=-1)
    img = Image.fromarray(np.clip(warped, 0, 255).round().astype(np.uint8), "RGBA")
    stroke = int(r.integers(1, 4)) * (1 if r.random() < 0.5 else -1)
    size = 2 * abs(stroke) + 1
    alpha = img.getchannel("A").filter(
        ImageFilter.MaxFilter(size) if stroke > 0 else ImageFilter.MinFilter(size))
    # every pixel takes the colour of the nearest old ink, so new ink matches
    px = np.asarray(img, np.uint8)
    _, (iy, ix) = ndimage.distance_transform_edt(px[..., 3] <= 128, return_indices=True)
    img = Image.fromarray(np.dstack([px[iy, ix, :3], np.asarray(alpha)]), "RGBA")
    bbox = img.getchannel("A").getbbox() or (0, 0, img.width, img.height)
    return img.crop(bbox), {"variant": "redraw", "stretch": r3(stretch), "warp_px": r3(amp),
                            "stroke_px": stroke}


def remove(rgba: Image.Image, r: np.random.Generator) -> tuple[Image.Image, dict]:
    """Element removal: erase one connected part holding 3-45% of the ink
    (the part closest to 20% when none fits)."""
    a = np.asarray(rgba, dtype=np.uint8).copy()
    ink = a[..., 3] > 128
    labels, n = ndimage.label(ink)
    total = max(1, int(ink.sum()))
    if n < 2:  # one piece: cut away a band across it instead
        frac = r.uniform(0.15, 0.35)
        band = max(1, int(frac * a.shape[0]))
        y = int(r.uniform(0, a.shape[0] - band))
        a[y:y + band, :, 3] = 0
        share = 1 - (a[..., 3] > 128).sum() / total
        return _crop(a), {"variant": "remove", "component": None, "band": [y, band],
                          "ink_removed": r3(share)}
    sizes = ndimage.sum(ink, labels, index=np.arange(1, n + 1)) / total
    ok = [i for i, s in enumerate(sizes) if 0.03 <= s <= 0.45]
    pick = ok[int(r.integers(len(ok)))] if ok else int(np.argmin(np.abs(sizes - 0.2)))
    mask = ndimage.binary_dilation(labels == pick + 1, iterations=2)
    a[mask, 3] = 0
    return _crop(a), {"variant": "remove", "component": int(pick), "ink_removed": r3(sizes[pick])}


def make_variant(kind: str, rgba: Image.Image, r: np.random.Generator) -> tuple[Image.Image, dict]:
    return {"recolour": recolour, "reverse": reverse, "mirror": mirror, "redraw": redraw,
            "remove": remove}[kind](rgba, r)


def query_photo(rgba: Image.Image, level: str, variant: str, seed: int) -> tuple[bytes, dict]:
    """One query: the mark (altered first when `variant` names one) photographed
    at `level`, as JPEG bytes, with every parameter drawn from `seed`."""
    r = np.random.default_rng(seed)
    params: dict = {}
    if variant:
        rgba, params = make_variant(variant, rgba, r)
    img, photo = photograph(rgba, needs_dark_ground(rgba), level, int(r.integers(0, 2**32)))
    params.update(photo)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=params["jpeg_quality"])
    return buf.getvalue(), params


def _with_alpha(rgb: np.ndarray, a: np.ndarray) -> Image.Image:
    out = np.concatenate([np.clip(rgb, 0, 255), a[..., 3:4]], axis=2)
    return Image.fromarray(out.round().astype(np.uint8), "RGBA")


def _crop(a: np.ndarray) -> Image.Image:
    img = Image.fromarray(a, "RGBA")
    bbox = img.getchannel("A").point(lambda v: 255 if v > 8 else 0).getbbox()
    return img.crop(bbox) if bbox else img

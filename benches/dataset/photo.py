"""Simulated handheld inspection photos of a mark, and infringing variants.

The protocol of shared/notes/data.md: a mark printed on a textured label, laid
on a table, photographed with perspective, light, blur, colour shift, noise and
JPEG, at three levels (easy / medium / hard).  Everything is drawn from one
seeded generator and every sampled parameter is returned, so a photo is
byte-reproducible from its seed and described fully by its manifest line.
(Infringing variants of the mark itself are in variants.py.)
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from markdata import fit

QUERY_SIZE = 384

LEVELS = {
    "easy": dict(
        mark_frac=(0.45, 0.70), occl_p=0.0, occl_cov=(0.05, 0.15), jitter=0.03, rot=10,
        light=0.10, glare_p=0.0, frame=(1.3, 1.7), defocus=(0.0, 0.8), motion=(0, 0),
        wb=0.05, gamma=0.05, sat=0.10, resample=(1.0, 1.0), noise=(1, 3), jpeg=(85, 95),
    ),
    "medium": dict(
        mark_frac=(0.35, 0.65), occl_p=0.3, occl_cov=(0.05, 0.15), jitter=0.08, rot=25,
        light=0.25, glare_p=0.2, frame=(1.1, 1.5), defocus=(0.5, 1.5), motion=(0, 5),
        wb=0.12, gamma=0.10, sat=0.20, resample=(0.6, 1.0), noise=(3, 8), jpeg=(60, 85),
    ),
    "hard": dict(
        mark_frac=(0.30, 0.60), occl_p=0.6, occl_cov=(0.10, 0.25), jitter=0.15, rot=45,
        light=0.40, glare_p=0.5, frame=(0.9, 1.3), defocus=(1.0, 2.5), motion=(3, 11),
        wb=0.20, gamma=0.15, sat=0.30, resample=(0.35, 0.7), noise=(6, 14), jpeg=(30, 60),
    ),
}

LABEL = 560  # label side in scene pixels
SCENE = 2 * LABEL  # the table the label lies on


def smooth_noise(r: np.random.Generator, h: int, w: int, cells_y: int, cells_x: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a random grid scaled up bicubically."""
    grid = r.uniform(-1, 1, (cells_y, cells_x)).astype(np.float32)
    img = Image.fromarray(grid, mode="F").resize((w, h), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(img), -1, 1)


def substrate(r: np.random.Generator, kind: str, n: int) -> np.ndarray:
    """An n x n float RGB label texture, values 0..255."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    if kind == "paper":
        base = np.array([243, 240, 232]) + r.uniform(-6, 6, 3)
        shade = 4 * smooth_noise(r, n, n, 6, 6) + r.normal(0, 2.5, (n, n))
    elif kind == "cardboard":
        base = np.array([190, 150, 105]) + r.uniform(-12, 12, 3)
        fibres = smooth_noise(r, n, n, n // 3, 12)  # stretched along x
        shade = 10 * smooth_noise(r, n, n, 5, 5) + 8 * fibres + r.normal(0, 4, (n, n))
    elif kind == "fabric":
        base = np.array([228, 226, 220]) + r.uniform(-10, 10, 3)
        period = r.uniform(5, 8)
        weave = np.sin(2 * np.pi * xx / period) * np.sin(2 * np.pi * yy / period)
        shade = 9 * weave + 4 * smooth_noise(r, n, n, 8, 8) + r.normal(0, 3, (n, n))
    elif kind == "plastic":
        base = np.array([236, 238, 240]) + r.uniform(-8, 8, 3)
        ang = r.uniform(0, 2 * np.pi)
        ramp = (np.cos(ang) * xx + np.sin(ang) * yy) / n
        shade = 14 * np.exp(-(((ramp - r.uniform(0.2, 0.8)) / 0.12) ** 2)) + r.normal(0, 1.5, (n, n))
    elif kind == "dark_fabric":
        base = np.array([38, 38, 44]) + r.uniform(-6, 6, 3)
        period = r.uniform(5, 8)
        weave = np.sin(2 * np.pi * xx / period) * np.sin(2 * np.pi * yy / period)
        shade = 6 * weave + 3 * smooth_noise(r, n, n, 8, 8) + r.normal(0, 2, (n, n))
    elif kind == "dark_plastic":
        base = np.array([28, 29, 32]) + r.uniform(-4, 4, 3)
        ang = r.uniform(0, 2 * np.pi)
        ramp = (np.cos(ang) * xx + np.sin(ang) * yy) / n
        shade = 12 * np.exp(-(((ramp - r.uniform(0.2, 0.8)) / 0.12) ** 2)) + r.normal(0, 1.5, (n, n))
    else:
        raise ValueError(kind)
    return np.clip(base[None, None, :] + shade[..., None], 0, 255).astype(np.float32)


def table(r: np.random.Generator, kind: str, n: int) -> np.ndarray:
    """The surface behind the label."""
    yy = np.mgrid[0:n, 0:n][0].astype(np.float32)
    if kind == "wood":
        base = np.array([150, 105, 65]) + r.uniform(-20, 20, 3)
        warp = 25 * smooth_noise(r, n, n, 4, 4)
        grain = np.sin(2 * np.pi * (yy + warp) / r.uniform(14, 30))
        shade = 14 * grain + 10 * smooth_noise(r, n, n, n // 4, 6) + r.normal(0, 3, (n, n))
    elif kind == "steel":
        base = np.array([150, 155, 160]) + r.uniform(-15, 15, 3)
        shade = 6 * smooth_noise(r, n, n, 3, n // 4) + r.normal(0, 4, (n, n))
    else:  # "desk": plain dark grey laminate
        base = np.array([70, 72, 76]) + r.uniform(-12, 12, 3)
        shade = 6 * smooth_noise(r, n, n, 5, 5) + r.normal(0, 3, (n, n))
    return np.clip(base[None, None, :] + shade[..., None], 0, 255).astype(np.float32)


def homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """3x3 H with dst ~ H @ src for 4 point pairs."""
    a, b = [], []
    for (x, y), (u, v) in zip(src, dst):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        b += [u, v]
    h = np.linalg.solve(np.array(a, dtype=np.float64), np.array(b, dtype=np.float64))
    return np.append(h, 1).reshape(3, 3)


def apply_h(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    p = np.c_[pts, np.ones(len(pts))] @ h.T
    return p[:, :2] / p[:, 2:]


def warp(arr: np.ndarray, h: np.ndarray, n: int) -> np.ndarray:
    """Warp a float image (H, W, C) with homography h into an n x n canvas."""
    inv = np.linalg.inv(h)
    inv = inv / inv[2, 2]
    coeffs = tuple(inv.flatten()[:8])
    chans = []
    for c in range(arr.shape[2]):
        im = Image.fromarray(np.ascontiguousarray(arr[..., c]), mode="F")
        chans.append(np.asarray(im.transform((n, n), Image.Transform.PERSPECTIVE, coeffs,
                                             Image.Resampling.BILINEAR)))
    return np.stack(chans, axis=-1)


def gaussian(arr: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a float image (H, W, C), edges replicated."""
    if sigma <= 0:
        return arr
    rad = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-rad, rad + 1) / sigma) ** 2)
    k = (k / k.sum()).astype(np.float32)
    out = arr.astype(np.float32)
    for axis in (0, 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (rad, rad)
        p = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for i, w in enumerate(k):
            acc += w * np.take(p, np.arange(i, i + n), axis=axis)
        out = acc
    return out


def motion_blur(arr: np.ndarray, length: int, angle: float) -> np.ndarray:
    """Average of `length` copies shifted along a line (edges replicated)."""
    if length < 2:
        return arr
    pad = length
    p = np.pad(arr, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    acc = np.zeros_like(arr)
    h, w = arr.shape[:2]
    for t in np.linspace(-(length - 1) / 2, (length - 1) / 2, length):
        dx, dy = int(round(t * np.cos(angle))), int(round(t * np.sin(angle)))
        acc += p[pad + dy:pad + dy + h, pad + dx:pad + dx + w]
    return acc / length


def r3(x: float) -> float:
    return round(float(x), 3)


def photograph(rgba: Image.Image, dark: bool, level: str, seed: int) -> tuple[Image.Image, dict]:
    """Simulate a handheld photo of a mark (RGBA, cropped to its ink) printed
    on a label; `dark` picks a dark label for near-white ink.  Returns the
    384x384 RGB image (before JPEG) and every sampled parameter."""
    cfg = LEVELS[level]
    r = np.random.default_rng(seed)
    P: dict = {}

    # 1. substrate label
    kinds = ["dark_fabric", "dark_plastic"] if dark else ["paper", "cardboard", "fabric", "plastic"]
    P["label"] = kinds[int(r.integers(len(kinds)))]
    label = substrate(r, P["label"], LABEL)

    # 2. print the mark with slight ink bleed, ink takes the texture
    P["mark_frac"] = r3(r.uniform(*cfg["mark_frac"]))
    ink = fit(rgba, round(P["mark_frac"] * LABEL))
    ink_a = np.asarray(ink, dtype=np.float32)
    mw, mh = ink.size
    P["offset"] = [r3(r.uniform(-0.04, 0.04)), r3(r.uniform(-0.04, 0.04))]
    x0 = int((LABEL - mw) / 2 + P["offset"][0] * LABEL)
    y0 = int((LABEL - mh) / 2 + P["offset"][1] * LABEL)
    P["bleed"] = r3(r.uniform(0.4, 1.0))
    P["ink_density"] = r3(r.uniform(0.88, 0.98))
    alpha = np.zeros((LABEL, LABEL, 1), np.float32)
    colour = np.zeros((LABEL, LABEL, 3), np.float32)
    alpha[y0:y0 + mh, x0:x0 + mw, 0] = ink_a[..., 3] / 255.0
    colour[y0:y0 + mh, x0:x0 + mw] = ink_a[..., :3] * (ink_a[..., 3:] / 255.0)  # premultiplied
    alpha = gaussian(alpha, P["bleed"])
    colour = gaussian(colour, P["bleed"])
    colour = colour / np.maximum(alpha, 1e-4)
    texture = label.mean(axis=2, keepdims=True) / max(1.0, float(label.mean()))
    a = np.clip(alpha * P["ink_density"], 0, 1)
    label = label * (1 - a) + np.clip(colour * (0.85 + 0.15 * texture), 0, 255) * a

    # 3. occluder: tape strip or sticker over part of the mark's box
    P["occluder"] = None
    if r.random() < cfg["occl_p"]:
        cov = r.uniform(*cfg["occl_cov"])
        kind = "tape" if r.random() < 0.5 else "sticker"
        if kind == "tape":  # full-width strip of height cov * mark height
            th = max(2, int(cov * mh))
            ty = y0 + int(r.uniform(0, mh - th))
            box = (x0 - 20, ty, x0 + mw + 20, ty + th)
            tint, opacity = np.array([235, 225, 190]), 0.55
        else:  # square sticker of area cov * mark box
            s = max(2, min(int(np.sqrt(cov * mw * mh)), mw, mh))  # fits a long, thin mark
            sx, sy = x0 + int(r.uniform(0, mw - s)), y0 + int(r.uniform(0, mh - s))
            box = (sx, sy, sx + s, sy + s)
            white_sticker = r.random() < 0.5
            tint = np.array([250, 250, 246]) if white_sticker else np.array([250, 214, 60])
            opacity = 0.97
        bx0, by0 = max(0, box[0]), max(0, box[1])
        bx1, by1 = min(LABEL, box[2]), min(LABEL, box[3])
        label[by0:by1, bx0:bx1] = label[by0:by1, bx0:bx1] * (1 - opacity) + tint * opacity
        P["occluder"] = {"kind": kind, "coverage": r3(cov), "box": [int(v) for v in box]}

    # 4. pose: rotation + corner jitter, on a table
    P["table"] = ["wood", "steel", "desk"][int(r.integers(3))]
    scene = table(r, P["table"], SCENE)
    P["rotation_deg"] = r3(r.uniform(-cfg["rot"], cfg["rot"]))
    th = np.deg2rad(P["rotation_deg"])
    src = np.array([[0, 0], [LABEL, 0], [LABEL, LABEL], [0, LABEL]], np.float64)
    c = np.array([SCENE / 2, SCENE / 2])
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    jitter = r.uniform(-cfg["jitter"], cfg["jitter"], (4, 2)) * LABEL
    dst = (src - LABEL / 2) @ rot.T + c + jitter
    P["corner_jitter"] = [[r3(v / LABEL) for v in row] for row in jitter]
    h = homography(src, dst)
    warped = warp(np.concatenate([label, np.ones((LABEL, LABEL, 1), np.float32)], axis=2), h, SCENE)
    cover = warped[..., 3:4]
    shadow = gaussian(np.roll(cover, (6, 4), axis=(0, 1)), 5.0)  # soft drop shadow
    scene = scene * (1 - 0.35 * shadow)
    scene = scene * (1 - cover) + warped[..., :3] * cover

    # 6. framing: crop around the projected mark (side = ratio x mark side)
    quad = apply_h(h, np.array([[x0, y0], [x0 + mw, y0], [x0 + mw, y0 + mh], [x0, y0 + mh]], np.float64))
    lo, hi = quad.min(axis=0), quad.max(axis=0)
    mark_side = float(max(hi - lo))
    P["frame_ratio"] = r3(r.uniform(*cfg["frame"]))
    side = P["frame_ratio"] * mark_side
    slack = max(0.0, (P["frame_ratio"] - 1) / 2) * mark_side * 0.5
    P["frame_shift"] = [r3(r.uniform(-1, 1)), r3(r.uniform(-1, 1))]
    cx, cy = (lo + hi) / 2 + np.array(P["frame_shift"]) * slack
    # keep the crop inside the scene (it always is for the levels used here)
    cx = float(np.clip(cx, side / 2, SCENE - side / 2))
    cy = float(np.clip(cy, side / 2, SCENE - side / 2))
    box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    # the box around the mark's projected ink in the photo, in its pixels: where
    # a search should show the mark was found (benches/regions.py)
    at = QUERY_SIZE / side
    P["mark_box"] = [round(float(v), 1) for v in
                     ((lo[0] - box[0]) * at, (lo[1] - box[1]) * at,
                      (hi[0] - box[0]) * at, (hi[1] - box[1]) * at)]
    img = Image.fromarray(np.clip(scene, 0, 255).astype(np.uint8))
    img = img.resize((QUERY_SIZE, QUERY_SIZE), Image.Resampling.LANCZOS, box=box)
    f = np.asarray(img, dtype=np.float32)

    # 5. light: gradient x vignette, maybe a glare blob
    n = QUERY_SIZE
    yy, xx = (np.mgrid[0:n, 0:n].astype(np.float32) / (n - 1)) - 0.5
    P["light_gradient"] = r3(r.uniform(0, cfg["light"]))
    P["light_angle_deg"] = r3(r.uniform(0, 360))
    ga = np.deg2rad(P["light_angle_deg"])
    ramp = (np.cos(ga) * xx + np.sin(ga) * yy) / np.sqrt(0.5) * 0.5 + 0.5  # 0..1
    P["vignette"] = r3(r.uniform(0, cfg["light"]))
    light = (1 - P["light_gradient"] * ramp) * (1 - P["vignette"] * (xx**2 + yy**2) / 0.5)
    f = f * light[..., None]
    P["glare"] = None
    if r.random() < cfg["glare_p"]:
        gx, gy = r.uniform(0.15, 0.85), r.uniform(0.15, 0.85)  # centre
        gs, gi = r.uniform(0.05, 0.15), r.uniform(0.3, 0.7)  # size, strength
        blob = gi * np.exp(-(((xx + 0.5 - gx) ** 2 + (yy + 0.5 - gy) ** 2) / (2 * gs**2)))
        f = f + (255 - f) * blob[..., None]
        P["glare"] = {"x": r3(gx), "y": r3(gy), "sigma": r3(gs), "intensity": r3(gi)}

    # 7. defocus and motion blur
    P["defocus_sigma"] = r3(r.uniform(*cfg["defocus"]))
    f = gaussian(f, P["defocus_sigma"])
    P["motion_px"] = int(r.integers(cfg["motion"][0], cfg["motion"][1] + 1))
    P["motion_angle_deg"] = r3(r.uniform(0, 180))
    f = motion_blur(f, P["motion_px"], np.deg2rad(P["motion_angle_deg"]))

    # 8. white balance, gamma, saturation
    P["wb_gain"] = [r3(1 + r.uniform(-cfg["wb"], cfg["wb"])) for _ in range(3)]
    f = f * np.array(P["wb_gain"], np.float32)
    P["gamma"] = r3(1 + r.uniform(-cfg["gamma"], cfg["gamma"]))
    f = 255 * (np.clip(f, 0, 255) / 255) ** P["gamma"]
    P["saturation"] = r3(1 + r.uniform(-cfg["sat"], cfg["sat"]))
    grey = f.mean(axis=2, keepdims=True)
    f = grey + (f - grey) * P["saturation"]

    # 9. down-then-up resampling and sensor noise
    P["resample"] = r3(r.uniform(*cfg["resample"]))
    img = Image.fromarray(np.clip(f, 0, 255).round().astype(np.uint8))
    if P["resample"] < 0.999:
        k = max(16, round(n * P["resample"]))
        img = img.resize((k, k), Image.Resampling.BILINEAR).resize((n, n), Image.Resampling.BICUBIC)
    P["noise_sigma"] = r3(r.uniform(*cfg["noise"]))
    f = np.asarray(img, dtype=np.float32) + r.normal(0, P["noise_sigma"], (n, n, 3)).astype(np.float32)
    img = Image.fromarray(np.clip(f, 0, 255).round().astype(np.uint8))

    # 10. JPEG quality (applied by the caller)
    P["jpeg_quality"] = int(r.integers(cfg["jpeg"][0], cfg["jpeg"][1] + 1))
    return img, P

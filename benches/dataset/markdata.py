"""Real trademark marks from pinned npm packages: fetching, loading, rendering.

Shared by the fixture builder (fixtures/build_fixtures.py) and the benchmark
dataset builder (benches/dataset/build.py), so both draw marks the same way.

Marks come from npm tarballs fetched with ``npm pack NAME@VERSION`` and checked
against the registry's integrity hash; SVG is rasterised with resvg (PyPI
``resvg-py``).  Every random choice is drawn from a generator seeded from
strings (:func:`seed_of`), so outputs are byte-reproducible.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import resvg_py
from PIL import Image

RENDER_SIZE = 768  # SVGs are rendered into this box, then cropped / scaled
GALLERY_SIZE = 256
GALLERY_MARGIN = 0.10  # free border on each side, fraction of the side
WHITE = (255, 255, 255)
DARK_GROUND = (34, 34, 38)  # ground for marks whose ink is near-white

# Licences of marks we accept (an icon without a licence of its own falls under
# its package's).  Non-commercial, no-derivatives, custom and copyleft-software
# licences (GPL family, MPL) are skipped.
FREE_LICENCES = {
    "CC0-1.0",
    "MIT",
    "Apache-2.0",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "CC-BY-3.0",
    "CC-BY-4.0",
    "CC-BY-SA-2.5",
    "CC-BY-SA-3.0",
    "CC-BY-SA-4.0",
}


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------


def seed_of(master: str, *parts: object) -> int:
    """A stable 32-bit seed from strings (Python's hash() is salted)."""
    text = ":".join([master, *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


def rng_of(master: str, *parts: object) -> np.random.Generator:
    return np.random.default_rng(seed_of(master, *parts))

def norm_slug(name: str) -> str:
    """Brand key used to find the same brand in both sets."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def save_png(img: Image.Image, path: Path) -> None:
    """Save as a small, alpha-free 8-bit palette PNG.  The palette is exact
    when the image has at most 256 colours (mono marks always do); otherwise
    a 256-colour median-cut palette without dithering (multi-colour marks
    with gradients), which looks lossless at this size."""
    img = img.convert("RGB")
    arr = np.asarray(img).astype(np.uint32)
    packed = (arr[..., 0] << 16) | (arr[..., 1] << 8) | arr[..., 2]
    colours, index = np.unique(packed, return_inverse=True)
    if len(colours) <= 256:
        pal = Image.fromarray(index.reshape(img.height, img.width).astype(np.uint8), mode="P")
        rgb = np.stack([(colours >> 16) & 255, (colours >> 8) & 255, colours & 255], axis=1)
        pal.putpalette(rgb.astype(np.uint8).flatten().tolist())
    else:
        pal = img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    pal.save(path, format="PNG", optimize=True)


# --------------------------------------------------------------------------
# Fetching the packages
# --------------------------------------------------------------------------


def fetch_npm(name: str, version: str, integrity: str, cache: Path) -> Path:
    """`npm pack NAME@VERSION` into the cache, verify the registry's integrity
    hash, extract it.  Returns the extracted `package/` folder."""
    cache.mkdir(parents=True, exist_ok=True)
    stem = name.lstrip("@").replace("/", "-") + f"-{version}"
    tgz = cache / f"{stem}.tgz"
    if not tgz.exists():
        subprocess.run(
            ["npm", "pack", f"{name}@{version}", "--pack-destination", str(cache)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    algo, b64 = integrity.split("-", 1)
    digest = base64.b64encode(hashlib.new(algo, tgz.read_bytes()).digest()).decode()
    if digest != b64:
        raise SystemExit(f"integrity mismatch for {tgz}")
    out = cache / stem
    if not (out / "package").exists():
        with tarfile.open(tgz) as tf:
            tf.extractall(out, filter="data")
    return out / "package"


# --------------------------------------------------------------------------
# Mark sources
# --------------------------------------------------------------------------

@dataclass
class Mark:
    mark_id: str  # "si-adidas" / "logos-android"
    source_set: str  # "simple-icons" / "logos"
    name: str  # brand title
    svg: str  # standalone SVG
    licence: str
    source_url: str = ""
    key: str = ""  # normalised brand slug
    extra: dict = field(default_factory=dict)


def load_simple_icons(pkg: Path) -> tuple[dict[str, Mark], dict[str, str]]:
    """Usable simple-icons marks by slug, and the titles of all entries by
    normalised slug."""
    data = json.loads((pkg / "data" / "simple-icons.json").read_text())
    titles = {norm_slug(e["slug"]): e["title"] for e in data}
    marks = {}
    for entry in sorted(data, key=lambda e: e["slug"]):
        lic = (entry.get("license") or {}).get("type", "CC0-1.0")
        if lic not in FREE_LICENCES:
            continue  # non-free, unknown or custom licence
        svg = (pkg / "icons" / f"{entry['slug']}.svg").read_text()
        # The path has no fill of its own: colour the whole mark in the brand hex.
        svg = svg.replace("<svg ", f'<svg fill="#{entry["hex"]}" ', 1)
        marks[entry["slug"]] = Mark(
            mark_id=f"si-{entry['slug']}",
            source_set="simple-icons",
            name=entry["title"],
            svg=svg,
            licence=lic,
            source_url=entry.get("source", ""),
            key=norm_slug(entry["slug"]),
            extra={"hex": entry["hex"]},
        )
    return marks, titles


def iconify_to_svg(icons: dict, name: str) -> str:
    """Standalone SVG of an Iconify icon (aliases resolved, transforms applied)."""
    aliases = icons.get("aliases", {})
    props: dict = {}
    while name in aliases:  # alias chain: child properties win
        alias = aliases[name]
        props = {**{k: v for k, v in alias.items() if k != "parent"}, **props}
        name = alias["parent"]
    icon = {**icons["icons"][name]}
    # Flips toggle, rotations add up along an alias chain.
    for flip in ("hFlip", "vFlip"):
        icon[flip] = bool(icon.get(flip, False)) ^ bool(props.get(flip, False))
    icon["rotate"] = (icon.get("rotate", 0) + props.get("rotate", 0)) % 4
    for k in ("width", "height", "left", "top"):
        if k in props:
            icon[k] = props[k]

    left, top = icon.get("left", icons.get("left", 0)), icon.get("top", icons.get("top", 0))
    width = icon.get("width", icons.get("width", 16))
    height = icon.get("height", icons.get("height", 16))
    body = icon["body"]

    transforms = []
    if icon["hFlip"]:
        transforms.append(f"translate({2 * left + width} 0) scale(-1 1)")
    if icon["vFlip"]:
        transforms.append(f"translate(0 {2 * top + height}) scale(1 -1)")
    if transforms:
        body = f'<g transform="{" ".join(transforms)}">{body}</g>'
    if icon["rotate"]:
        cx, cy = left + width / 2, top + height / 2
        body = f'<g transform="rotate({90 * icon["rotate"]} {cx} {cy})">{body}</g>'
        if icon["rotate"] % 2:  # quarter turn: the box swaps its sides
            left, top = cx - height / 2, cy - width / 2
            width, height = height, width
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="{left} {top} {width} {height}">{body}</svg>'
    )


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------

def render_rgba(mark: Mark, size: int = RENDER_SIZE, keep: bool = True) -> Image.Image | None:
    """Render the mark into a `size` box and crop to its ink.  None when
    nothing visible is drawn.  With `keep`, the result is cached on the mark
    (builders of large galleries pass False to bound memory)."""
    if "rgba" in mark.extra:
        return mark.extra["rgba"]
    try:
        png = resvg_py.svg_to_bytes(svg_string=mark.svg, width=size, height=size)
    except ValueError:
        return None
    img = Image.open(io.BytesIO(bytes(png))).convert("RGBA")
    bbox = img.getchannel("A").point(lambda a: 255 if a > 8 else 0).getbbox()
    if bbox is None or min(bbox[2] - bbox[0], bbox[3] - bbox[1]) < 8:
        return None
    img = img.crop(bbox)
    if keep:
        mark.extra["rgba"] = img
    return img


def needs_dark_ground(rgba: Image.Image) -> bool:
    """True when most of the ink is near-white (it would vanish on white)."""
    a = np.asarray(fit(rgba, 256), dtype=np.float32)
    ink = a[..., 3] > 128
    if not ink.any():
        return False
    rgb = a[..., :3][ink] / 255.0
    lum = rgb @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
    return float((lum > 0.85).mean()) > 0.6


def fit(rgba: Image.Image, box: int) -> Image.Image:
    """Scale an RGBA mark so that its longer side is `box` pixels."""
    w, h = rgba.size
    s = box / max(w, h)
    return rgba.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS)


def gallery_image(mark: Mark, rgba: Image.Image | None = None) -> Image.Image:
    """The 256x256 RGB gallery picture: mark fitted inside a 10% margin."""
    rgba = rgba if rgba is not None else render_rgba(mark)
    ground = DARK_GROUND if mark.extra["dark"] else WHITE
    inner = round(GALLERY_SIZE * (1 - 2 * GALLERY_MARGIN))
    small = fit(rgba, inner)
    off = ((GALLERY_SIZE - small.width) // 2, (GALLERY_SIZE - small.height) // 2)
    if mark.source_set == "simple-icons":
        # One ink colour: blend it with the ground by coverage alone, so the
        # picture has at most 256 colours and stores as an exact palette PNG.
        ink = np.frombuffer(bytes.fromhex(mark.extra["hex"]), dtype=np.uint8).astype(np.float32)
        a = np.asarray(small.getchannel("A"), dtype=np.float32)[..., None] / 255.0
        canvas = np.empty((GALLERY_SIZE, GALLERY_SIZE, 3), np.float32)
        canvas[:] = ground
        canvas[off[1]:off[1] + small.height, off[0]:off[0] + small.width] = (
            np.array(ground, np.float32) * (1 - a) + ink * a
        )
        return Image.fromarray(canvas.round().astype(np.uint8))
    canvas = Image.new("RGBA", (GALLERY_SIZE, GALLERY_SIZE), ground + (255,))
    canvas.alpha_composite(small, off)
    return canvas.convert("RGB")


def shape_signature(rgba: Image.Image) -> tuple[float, np.ndarray]:
    """Aspect ratio and a 24x24 colour thumbnail of the cropped mark on white:
    two marks with (nearly) equal signatures are copies of each other."""
    flat = Image.new("RGBA", rgba.size, WHITE + (255,))
    flat.alpha_composite(rgba)
    thumb = flat.convert("RGB").resize((24, 24), Image.Resampling.BOX)
    return float(np.log(rgba.width / rgba.height)), np.asarray(thumb, dtype=np.float32) / 255.0


def same_shape(a: tuple[float, np.ndarray], b: tuple[float, np.ndarray]) -> bool:
    return abs(a[0] - b[0]) < 0.05 and float(np.abs(a[1] - b[1]).mean()) < 0.02


# --------------------------------------------------------------------------

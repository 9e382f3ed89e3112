"""Unit tests of the dataset builder that need no npm package: run with
`python -m unittest discover -s benches/dataset` (tests/bench.rs does)."""

from __future__ import annotations

import io
import unittest

import numpy as np
from PIL import Image

from build import OPEN_PERCENT, brand_key, is_open, split_of
from markdata import Mark, gallery_image, render_rgba
from photo import LEVELS, photograph
from twins import WHOLE, groups, signature, twin_pairs
from variants import VARIANTS, make_variant

# Two ink parts (a ring and a bar) so that element removal has a part to take.
SVG = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 100 60">'
       '<circle cx="30" cy="30" r="22" fill="none" stroke="#c8102e" stroke-width="9"/>'
       '<rect x="62" y="10" width="30" height="40" fill="#003da5"/></svg>')


def mark() -> Mark:
    return Mark(mark_id="t", source_set="test", name="t", svg=SVG, licence="CC0-1.0")


def jpeg(seed: int, level: str) -> tuple[bytes, dict]:
    img, params = photograph(render_rgba(mark(), size=256, keep=False), False, level, seed)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=params["jpeg_quality"])
    return buf.getvalue(), params


class PhotoTest(unittest.TestCase):
    def test_same_seed_gives_identical_bytes_and_other_seeds_do_not(self):
        for level in LEVELS:
            a, pa = jpeg(7, level)
            b, pb = jpeg(7, level)
            c, _ = jpeg(8, level)
            self.assertEqual(a, b, level)
            self.assertEqual(pa, pb, level)
            self.assertNotEqual(a, c, level)

    def test_parameters_stay_within_their_level(self):
        for level, cfg in LEVELS.items():
            for seed in range(5):
                _, p = jpeg(seed, level)
                self.assertLessEqual(abs(p["rotation_deg"]), cfg["rot"])
                self.assertTrue(cfg["jpeg"][0] <= p["jpeg_quality"] <= cfg["jpeg"][1])
                self.assertTrue(cfg["frame"][0] <= p["frame_ratio"] <= cfg["frame"][1] + 1e-3)
                if cfg["occl_p"] == 0:
                    self.assertIsNone(p["occluder"])
                # The mark lies in the photo, framed by the level's ratio.
                x0, y0, x1, y1 = p["mark_box"]
                self.assertTrue(0 <= x0 < x1 <= 384 and 0 <= y0 < y1 <= 384, p["mark_box"])
                side = max(x1 - x0, y1 - y0)
                self.assertAlmostEqual(384 / side, p["frame_ratio"], delta=0.02 * p["frame_ratio"])


class VariantTest(unittest.TestCase):
    def test_every_variant_alters_the_mark_reproducibly(self):
        base = render_rgba(mark(), size=256, keep=False)
        for kind in VARIANTS:
            a, pa = make_variant(kind, base, np.random.default_rng(3))
            b, pb = make_variant(kind, base, np.random.default_rng(3))
            self.assertEqual(pa["variant"], kind)
            self.assertEqual(pa, pb)
            self.assertEqual(a.tobytes(), b.tobytes())
            same_size = a.size == base.size
            self.assertFalse(same_size and a.tobytes() == base.tobytes(), f"{kind} changed nothing")

    def test_element_removal_takes_a_part_of_the_ink(self):
        base = render_rgba(mark(), size=256, keep=False)
        _, p = make_variant("remove", base, np.random.default_rng(0))
        self.assertTrue(0.03 <= p["ink_removed"] <= 0.6, p)

    def test_the_negative_of_a_glyph_on_a_plate_keeps_the_glyph(self):
        # A white bar on a blue tile: knocked out whole, the tile would leave a
        # blank hole; its negative is a paper tile with the bar in the block's colour.
        plate = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 100 100">'
                 '<rect width="100" height="100" fill="#1040c0"/>'
                 '<rect x="20" y="40" width="60" height="20" fill="#ffffff"/></svg>')
        rgba = render_rgba(Mark(mark_id="p", source_set="test", name="p", svg=plate,
                                licence="CC0-1.0"), size=256, keep=False)
        img, p = make_variant("reverse", rgba, np.random.default_rng(0))
        self.assertTrue(p["plate"], p)
        grey = np.asarray(img.convert("L"), np.float32)
        h, w = grey.shape
        self.assertGreater(grey[h // 2 - 60, w // 2], 200, "the tile is knocked out to paper")
        self.assertLess(grey[h // 2, w // 2], 120, "the bar keeps the block's colour")
        self.assertLess(grey[2, 2], 120, "the block surrounds the tile")
        # Two tones side by side, neither on the other: knocked out whole.
        _, p = make_variant("reverse", render_rgba(mark(), size=256, keep=False),
                            np.random.default_rng(0))
        self.assertFalse(p["plate"], p)


class SplitTest(unittest.TestCase):
    def test_brand_keys_join_variants_of_one_brand(self):
        self.assertEqual(brand_key("github-icon"), "github")
        self.assertEqual(brand_key("react-original-wordmark"), "react")
        self.assertEqual(brand_key("square-github"), "github")
        self.assertEqual(brand_key("500px-logo-1"), "500px")
        self.assertEqual(brand_key("1panel-dark"), "1panel")

    def test_splits_and_open_set_follow_the_brand_alone(self):
        brands = [f"brand{i}" for i in range(3000)]
        splits = [split_of(b) for b in brands]
        self.assertEqual(splits, [split_of(b) for b in brands])
        share = {s: splits.count(s) / len(brands) for s in ("train", "calibration", "test")}
        self.assertAlmostEqual(share["train"], 0.6, delta=0.04)
        self.assertAlmostEqual(share["calibration"], 0.2, delta=0.04)
        self.assertAlmostEqual(share["test"], 0.2, delta=0.04)
        held = sum(is_open(b) for b in brands) / len(brands)
        self.assertAlmostEqual(held, OPEN_PERCENT / 100, delta=0.03)


def picture(body: str, viewbox: str = "0 0 100 100"):
    """A gallery picture of an SVG body, on the white ground."""
    m = Mark(mark_id="t", source_set="test", name="t", licence="CC0-1.0",
             svg=f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="{viewbox}">{body}</svg>')
    m.extra["dark"] = False
    return gallery_image(m, render_rgba(m, size=256, keep=False))


# Marks on the same round plate, whose rim holds most of the edges: a white dot,
# and a white square of the dot's size.
PLATE = '<circle cx="50" cy="50" r="48" fill="{}"/>'
DOT = '<circle cx="50" cy="50" r="9" fill="#ffffff"/>'
SQUARE = '<rect x="41" y="41" width="18" height="18" fill="#ffffff"/>'


class TwinTest(unittest.TestCase):
    def test_a_recoloured_copy_is_a_twin_and_another_symbol_on_the_plate_is_not(self):
        sigs = [signature(picture(PLATE.format("#c8102e") + DOT)),  # the mark
                signature(picture(PLATE.format("#1040c0") + DOT)),  # recoloured
                signature(picture(PLATE.format("#c8102e") + SQUARE)),  # the centre differs
                signature(picture(f'<g transform="scale(2 1)">{PLATE.format("#c8102e")}{DOT}</g>',
                                  "0 0 200 100"))]  # stretched to twice the width
        self.assertGreater(sigs[0].whole @ sigs[2].whole, WHOLE, "only the centre tells them apart")
        # Across two lists every pair counts, a picture with itself too.
        self.assertEqual(twin_pairs([sigs[1]], sigs), [(0, 0), (0, 1)])
        self.assertEqual(twin_pairs([None], sigs), [])
        self.assertEqual(twin_pairs(sigs), [(0, 1)])

    def test_a_blank_picture_has_no_signature(self):
        self.assertIsNone(signature(Image.new("RGB", (256, 256), "white")))

    def test_groups_join_keys_transitively_under_the_smallest(self):
        keys = ["visa", "ccvisa", "visa", "amex", "c", "clanguage"]
        g = groups(keys, [(0, 1), (4, 5), (1, 2)])
        self.assertEqual(g, {"visa": "ccvisa", "ccvisa": "ccvisa", "amex": "amex",
                             "c": "c", "clanguage": "c"})


if __name__ == "__main__":
    unittest.main()

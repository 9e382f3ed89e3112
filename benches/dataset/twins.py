"""Twin marks: gallery pictures of different brand keys that show the same mark.

A brand key comes from an icon's name, so the same mark drawn by two sets under
two names gets two keys: cryptocurrency-color "ada" and token-branded "cardano",
"codeproject" and "codeproject-ai-server", "visa" and cib's "cc-visa".  Judged by
key alone, a photo of the Cardano mark answered with the other set's copy is wrong,
a held-out "unrecorded" Visa photo has its mark in the gallery, and a mark can
sit in train under one key and in test under the other.

Twins are found from the pictures alone, with no model, so that the rule cannot
favour what marklens finds:

- crop each picture to what differs from its ground, and take the grey edge
  strength (polarity and colour drop out: a recoloured or reversed copy has the
  same edges), on a 64 x 64 grid;
- two pictures are twins when their aspect ratios agree, their whole edge maps
  correlate at `WHOLE` or more, and so do their centres (the middle half of the
  width and of the height) at `INNER` or more
  (the centre check keeps two different symbols on the same round plate apart;
  a centre with no edges at all never matches).

Marks that differ by colour only are twins by this rule, as the benchmark's
recolour variant already treats them.  The thresholds were set by eye on random
samples of pairs, before any search was scored with them; of 40 random pairs
at these thresholds, one was two different marks (two words on the same
gradient plate), the rest one mark recoloured, redrawn by another set, or put
on a plate (docs/benchmarks.md, twenty-fifth round).
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

WHOLE = 0.93
INNER = 0.90
ASPECT = 0.2  # largest difference of log(width / height)
GRID = 64


class Signature:
    """Edge maps of one picture, zero-mean and unit-length (`None` if flat)."""

    def __init__(self, aspect: float, whole: np.ndarray, inner: np.ndarray | None):
        self.aspect = aspect
        self.whole = whole
        self.inner = inner


def unit(v: np.ndarray) -> np.ndarray | None:
    v = v - v.mean()
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-3 else None


def signature(img: Image.Image) -> Signature | None:
    """A gallery picture's signature, or None when nothing stands out from its
    ground."""
    img = img.convert("RGB")
    a = np.asarray(img).astype(np.int16)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    ground = np.median(border, axis=0)
    ys, xs = np.nonzero(np.abs(a - ground).max(axis=2) > 24)
    if len(ys) < 16:
        return None
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    box = (max(x0 - 2, 0), max(y0 - 2, 0), x1 + 2, y1 + 2)
    f = np.asarray(img.convert("L").crop(box).resize((GRID + 2, GRID + 2), Image.BILINEAR),
                   dtype=np.float32)
    edges = np.hypot(f[1:-1, 2:] - f[1:-1, :-2], f[2:, 1:-1] - f[:-2, 1:-1])
    edges = gaussian_filter(edges, 1.0)
    whole = unit(edges.reshape(GRID // 2, 2, GRID // 2, 2).mean(axis=(1, 3)).ravel())
    if whole is None:
        return None
    q = GRID // 4
    inner = unit(edges[q:GRID - q, q:GRID - q].ravel())
    return Signature(float(np.log((x1 - x0) / (y1 - y0))), whole, inner)


class _Stack:
    """Signatures with a centre, stacked for matrix products."""

    def __init__(self, sigs: list[Signature | None]):
        self.idx = [i for i, s in enumerate(sigs) if s is not None and s.inner is not None]
        dim = (GRID // 2) ** 2
        self.whole = np.array([sigs[i].whole for i in self.idx], np.float32).reshape(-1, dim)
        self.inner = np.array([sigs[i].inner for i in self.idx], np.float32).reshape(-1, dim)
        self.aspect = np.array([sigs[i].aspect for i in self.idx])


def twin_pairs(sigs: list[Signature | None],
               others: list[Signature | None] | None = None) -> list[tuple[int, int]]:
    """Index pairs of twin pictures: (i, j) with i < j within `sigs`, or, given
    `others`, (i in `sigs`, j in `others`)."""
    a = _Stack(sigs)
    b = a if others is None else _Stack(others)
    if not a.idx or not b.idx:
        return []
    pairs = []
    for start in range(0, len(a.idx), 1000):
        sims = a.whole[start:start + 1000] @ b.whole.T
        for k, row in enumerate(sims):
            i = start + k
            for j in np.nonzero(row >= WHOLE)[0]:
                if others is None and j <= i:
                    continue
                if abs(a.aspect[i] - b.aspect[j]) <= ASPECT and a.inner[i] @ b.inner[j] >= INNER:
                    pairs.append((a.idx[i], b.idx[int(j)]))
    return pairs


def groups(keys: list[str], pairs: list[tuple[int, int]]) -> dict[str, str]:
    """Brand key -> group key, given each picture's brand key and the twin
    pairs of pictures: keys joined by a pair, transitively, share the smallest
    key of their group."""
    parent = {k: k for k in keys}

    def root(k: str) -> str:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for i, j in pairs:
        a, b = root(keys[i]), root(keys[j])
        if a != b:
            parent[max(a, b)] = min(a, b)
    return {k: root(k) for k in keys}

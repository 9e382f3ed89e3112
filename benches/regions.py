#!/usr/bin/env python3
"""Does a match's region show where the mark is in the photo?

Reads a `marklens screen --out REPORT.json` report of a benchmark query folder
and that folder's queries.csv, whose params give each photo's `mark_box` (the
box around the mark's ink as the photo shows it, benches/dataset/photo.py). For
every photo whose first match is its own mark and carries a region, it measures

- inside: the share of the region's points within the mark's box, grown by
  TOLERANCE of the box's longer side (a corner sits on the ink's edge, and the
  photo's blur moves it);
- span: the region's box area over the mark's box area (how much of the mark
  the agreeing corners cover).

With GALLERY_CSV (the gallery manifest the store was enrolled from), it checks
the mark's side of the same matches too (`mark_region`, in the recorded image's
pixels, one corner for each of the photo's):

- on the image: the share of the mark's points within its recorded image;
- turn: the turn of the least-squares similarity that takes the mark's points
  onto the photo's, against the turn the photo was taken at (`rotation_deg`).
  Both sides' view frames undo each view's own turn upright, so a frame that
  lost a step shows here as a turn off by that step. The corners' perspective
  jitter (up to 8% of the label at medium level) leaves a few degrees. A mark
  that looks the same turned by a half or a quarter turn (three dots in a row,
  a cross) may line up either way, and so may a mirrored one (the mirror
  variant flips it), so the turn is also given up to a quarter turn.

Usage: benches/regions.py REPORT.json QUERIES_CSV [GALLERY_CSV]
No third-party packages: runs on the machine's Python alone.
"""

import cmath
import csv
import json
import math
import statistics
import struct
import sys
from pathlib import Path

TOLERANCE = 0.05


def image_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG, from its header."""
    with path.open("rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG")
    return struct.unpack(">II", head[16:24])


def turn_degrees(source: list, target: list) -> float:
    """The turn of the least-squares similarity taking `source` onto `target`
    (points as [x, y], y down: positive is clockwise on screen)."""
    p = [complex(x, y) for x, y in source]
    q = [complex(x, y) for x, y in target]
    pm, qm = sum(p) / len(p), sum(q) / len(q)
    s = sum((b - qm) * (a - pm).conjugate() for a, b in zip(p, q))
    return math.degrees(cmath.phase(s))


def mark_side(entries: list, truth: dict, gallery: Path) -> None:
    """The checks of the mark's side (see the module's documentation)."""
    files = {}
    with gallery.open(newline="") as f:
        for row in csv.DictReader(f):
            files[row["mark_id"]] = gallery.parent / row["file"]
    shown, on_image, offs = 0, [], []
    for name, best in entries:
        side = best.get("mark_region")
        if not side:
            continue
        shown += 1
        w, h = image_size(files[best["mark_id"]])
        points = side["points"]
        on_image.append(sum(0 <= x <= w and 0 <= y <= h for x, y in points) / len(points))
        if len(points) >= 3:
            turn = turn_degrees(points, best["region"]["points"])
            offs.append(abs((turn - truth[name][2] + 180) % 360 - 180))
    print(f"with the mark's side: {shown} of {len(entries)}")
    if not shown:
        return
    print(f"mark's points on its recorded image: mean {statistics.fmean(on_image):.3f}; "
          f"all on it in {sum(s == 1.0 for s in on_image) / shown:.1%} of photos")
    quarter = [min(o % 90, 90 - o % 90) for o in offs]
    print(f"turn, mark's points onto the photo's, against the photo's ({len(offs)} photos): "
          f"off by median {statistics.median(offs):.1f} degrees; within 10 degrees in "
          f"{sum(o <= 10 for o in offs) / len(offs):.1%}, and up to a quarter turn in "
          f"{sum(o <= 10 for o in quarter) / len(offs):.1%}")


def main() -> None:
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    report, queries = Path(sys.argv[1]), Path(sys.argv[2])
    truth = {}
    with queries.open(newline="") as f:
        for row in csv.DictReader(f):
            params = json.loads(row["params"]) if row["params"] else {}
            if row["expected_mark_id"] and "mark_box" in params:
                truth[Path(row["file"]).name] = (
                    row["expected_mark_id"],
                    params["mark_box"],
                    params.get("rotation_deg", 0.0),
                )
    found, located, inside, spans, all_inside = 0, 0, [], [], 0
    entries = []
    for entry in json.loads(report.read_text()):
        name = Path(entry["query"]).name
        if name not in truth or not entry.get("matches"):
            continue
        expected, (x0, y0, x1, y1), _ = truth[name]
        best = entry["matches"][0]
        if best["mark_id"] != expected:
            continue
        found += 1
        region = best.get("region")
        if not region:
            continue
        located += 1
        entries.append((name, best))
        grow = TOLERANCE * max(x1 - x0, y1 - y0)
        points = region["points"]
        share = sum(
            x0 - grow <= x <= x1 + grow and y0 - grow <= y <= y1 + grow for x, y in points
        ) / len(points)
        inside.append(share)
        all_inside += share == 1.0
        left, top, right, bottom = region["bounds"]
        spans.append((right - left) * (bottom - top) / ((x1 - x0) * (y1 - y0)))
    if not located:
        sys.exit("no first match with a region among the photos of known marks")
    print(f"photos whose first match is their mark: {found}; with a region: {located}")
    print(f"points inside the mark's box (+{TOLERANCE:.0%}): median {statistics.median(inside):.3f}, "
          f"mean {statistics.fmean(inside):.3f}; all inside in {all_inside / located:.1%} of photos")
    q = statistics.quantiles(spans, n=4)
    print(f"region box over mark box, area: median {statistics.median(spans):.2f} "
          f"(quartiles {q[0]:.2f} / {q[2]:.2f})")
    if len(sys.argv) == 4:
        mark_side(entries, truth, Path(sys.argv[3]))


if __name__ == "__main__":
    main()

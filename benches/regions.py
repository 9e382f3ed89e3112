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

Usage: benches/regions.py REPORT.json QUERIES_CSV
No third-party packages: runs on the machine's Python alone.
"""

import csv
import json
import statistics
import sys
from pathlib import Path

TOLERANCE = 0.05


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    report, queries = Path(sys.argv[1]), Path(sys.argv[2])
    truth = {}
    with queries.open(newline="") as f:
        for row in csv.DictReader(f):
            params = json.loads(row["params"]) if row["params"] else {}
            if row["expected_mark_id"] and "mark_box" in params:
                truth[Path(row["file"]).name] = (row["expected_mark_id"], params["mark_box"])
    found, located, inside, spans, all_inside = 0, 0, [], [], 0
    for entry in json.loads(report.read_text()):
        name = Path(entry["query"]).name
        if name not in truth or not entry.get("matches"):
            continue
        expected, (x0, y0, x1, y1) = truth[name]
        best = entry["matches"][0]
        if best["mark_id"] != expected:
            continue
        found += 1
        region = best.get("region")
        if not region:
            continue
        located += 1
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


if __name__ == "__main__":
    main()

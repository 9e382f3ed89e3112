#!/usr/bin/env python3
"""Build the marklens benchmark dataset: a gallery of real marks (plus symbol
distractors) and seeded handheld-photo queries with brand-disjoint splits.

  build.py gallery --out DIR [--distractors N]
      DIR/gallery/<set>/<id>.png   256x256 PNG per mark, as the fixtures
      DIR/gallery-real.csv         real marks only (enrolment manifest)
      DIR/gallery-full.csv         real marks + distractors
      DIR/heldout.csv              real marks kept OUT of the gallery (open set)
      DIR/MANIFEST.sha256          checksums of the three manifests

  build.py queries --data DIR --split test --out QDIR [--per-level N] ...
      QDIR/<level or variant>/<n>.jpg and QDIR/queries.csv

  build.py twins --data DIR --queries QDIR [QDIR ...]
      DIR/gallery-{real,full}-twins.csv and QDIR/queries-twins.csv: the same
      rows with brand keys joined where two keys show the same mark, and without
      distractors that show a real or held-out mark (twins.py);
      QDIR/queries-twins-unseen.csv: without photos whose mark has a twin in the
      train split (training saw it under the other key)

Sources (pinned, fetched with `npm pack`, integrity-checked): simple-icons in
brand colours, and brand sets of @iconify/json (logos, devicon, cib, fa7-brands,
bxl, streamline-logos, token-branded, cryptocurrency-color, selfhst); symbol
distractors come from the non-brand sets of @iconify/json whose licence is
free for commercial use (non-commercial and copyleft-software sets skipped).

Brands: a mark's brand key is its icon name with variant suffixes (-icon,
-wordmark, -dark, ...) stripped and normalised; marks sharing a key are the
same brand across sets (simple-icons "github" and logos "github-icon"), and a
query counts every mark of its brand as relevant.  Splits are drawn from a
hash of the brand key alone, so train / calibration / test never share a brand
and the builder and the query generator agree without shared state:
  60% train, 20% calibration, 20% test; and 12% of brands (any split) are
  kept out of the gallery as the open set ("no match" expected).

Dedup: identical SVG bodies, then identical perceptual hash (pHash of the
gallery picture, grey) with the same aspect ratio; the first in set order wins.
Distractors that name a brand (tabler "brand-github", jam "github") are left
out after dedup.

Everything is seeded from strings: rerunning gives byte-identical files with
the pinned packages of benches/requirements.txt.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

from markdata import (
    FREE_LICENCES,
    Mark,
    fetch_npm,
    gallery_image,
    iconify_to_svg,
    load_simple_icons,
    needs_dark_ground,
    norm_slug,
    render_rgba,
    rng_of,
    save_png,
    seed_of,
)
from twins import Signature, groups, signature, twin_pairs
from variants import VARIANTS, query_photo

MASTER = "marklens-bench-v1"

SIMPLE_ICONS = ("simple-icons", "16.37.0",
                "sha512-8mCJIhpMYOL9g13GW59EiL3sVXJnTEKGCTZFaekl9UQ3Qo0SwVjnLaJ82QiaH8BKBdouEDzrHMXIWh8cBIy48A==")
ICONIFY = ("@iconify/json", "2.2.535",
           "sha512-nAV60ACUSHwnsb6fsp+letHlNkrwO4vzBtcC6B4EDHErQQfezk7E3nJdnwJjve6OCfMNO0uVT5Vrgna9/NCmXw==")

# Brand sets of @iconify/json, in priority order for dedup (prefix, id prefix).
BRAND_SETS = [
    ("logos", "logos"), ("devicon", "devicon"), ("cib", "cib"), ("fa7-brands", "fab"),
    ("bxl", "bxl"), ("streamline-logos", "stl"), ("token-branded", "tok"),
    ("cryptocurrency-color", "cc"), ("selfhst", "sh"),
]
# Sets that copy or recolour another brand set, or are brand sets under a
# non-free licence: never used, not even as distractors.
NOT_DISTRACTORS = {"simple-icons", "thesvg", "thesvg-color", "token", "cryptocurrency",
                   "arcticons", "brandico", "entypo-social", "nonicons", "cbi"}
DISTRACTOR_CATEGORIES = {"UI 24px", "UI 16px / 32px", "UI Other / Mixed Grid", "Material",
                         "Thematic", "UI Multicolor"}

VARIANT_SUFFIX = re.compile(
    r"-(icon|icons|dark|light|vertical|horizontal|wordmark|alt|mono|plain|original|line|colored|"
    r"color|solid|block|background|square|circle|logo|text|symbol|filled|outline|\d+)$")

# Symbol sets hold brand logos too (tabler "brand-github", jam "github"): such a
# distractor would be a second, unlabelled copy of a real brand.
BRANDISH = re.compile(r"(^|-)(brand|brands|logo|logos)(-|$)")

SPLITS = (("train", 60), ("calibration", 80), ("test", 100))
OPEN_PERCENT = 12

COLUMNS = ["mark_id", "file", "name", "holder", "brand", "source_set", "source_version",
           "licence", "kind", "split", "sha256"]


def brand_key(name: str) -> str:
    name = re.sub(r"^square-", "", name)
    while True:
        stripped = VARIANT_SUFFIX.sub("", name)
        if stripped == name or not stripped:
            return norm_slug(name)
        name = stripped


def is_brandish(name: str, brands: set[str]) -> bool:
    """A distractor that names a brand: kept out of the gallery."""
    return bool(BRANDISH.search(name)) or brand_key(re.sub(r"^(brand|logo)-", "", name)) in brands


def split_of(brand: str) -> str:
    u = seed_of(MASTER, "split", brand) % 100
    return next(name for name, upper in SPLITS if u < upper)


def is_open(brand: str) -> bool:
    return seed_of(MASTER, "open", brand) % 100 < OPEN_PERCENT


@dataclass
class Entry:
    mark: Mark
    brand: str
    kind: str  # "mark" / "distractor"
    version: str
    sub: str  # gallery subfolder


def iconify_sets(pkg: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((pkg / "json").glob("*.json"))}


MANIFESTS = ("gallery-real.csv", "gallery-full.csv", "heldout.csv")


def write_manifest(path: Path, rows: list[dict], columns: list[str] = COLUMNS) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def write_checksums(out: Path) -> str:
    """Writes MANIFEST.sha256 over the three manifests; returns its text."""
    text = "".join(f"{hashlib.sha256((out / f).read_bytes()).hexdigest()}  {f}\n"
                   for f in MANIFESTS)
    (out / "MANIFEST.sha256").write_text(text)
    return text


def refilter(out: Path, cache: Path) -> None:
    """Applies the distractor rule to an existing gallery's manifests (what a
    fresh build writes now), without rendering again."""
    brands = {e.brand for e in real_marks(cache)}
    path = out / "gallery-full.csv"
    rows = read_rows(path)
    kept = [r for r in rows if r["kind"] != "distractor" or not is_brandish(r["name"], brands)]
    write_manifest(path, kept)
    sums = write_checksums(out)
    print(f"dropped {len(rows) - len(kept)} brand-like distractors; {len(kept)} marks remain")
    print(sums, end="")


def real_marks(cache: Path) -> list[Entry]:
    """Every candidate real mark, in dedup priority order."""
    si_pkg = fetch_npm(*SIMPLE_ICONS, cache)
    si, titles = load_simple_icons(si_pkg)
    hexes = {m.key: m.extra["hex"] for m in si.values()}
    out = [Entry(m, m.key, "mark", SIMPLE_ICONS[1], "si") for m in si.values()]
    sets = iconify_sets(fetch_npm(*ICONIFY, cache))
    for prefix, idp in BRAND_SETS:
        data = sets[prefix]
        lic = data["info"]["license"]["spdx"]
        if lic not in FREE_LICENCES:
            continue
        for name in sorted(data["icons"]):
            if data["icons"][name].get("hidden"):
                continue
            brand = brand_key(name)
            svg = iconify_to_svg(data, name)
            if "currentColor" in svg:  # mono mark: ink in the brand colour when known
                svg = svg.replace("currentColor", f"#{hexes.get(brand, '000000')}")
            m = Mark(mark_id=f"{idp}-{name}", source_set=prefix,
                     name=titles.get(brand) or name.replace("-", " ").title(),
                     svg=svg, licence=lic, key=brand)
            out.append(Entry(m, brand, "mark", ICONIFY[1], idp))
    return out


def distractors(cache: Path, count: int) -> list[Entry]:
    """A seeded sample of `count` symbol icons, coloured like printed marks."""
    sets = iconify_sets(fetch_npm(*ICONIFY, cache))
    pool = []
    for prefix, data in sets.items():
        info = data.get("info", {})
        lic = info.get("license", {}).get("spdx")
        if (prefix in NOT_DISTRACTORS or lic not in FREE_LICENCES
                or info.get("category") not in DISTRACTOR_CATEGORIES):
            continue
        pool += [(prefix, n) for n in sorted(data["icons"]) if not data["icons"][n].get("hidden")]
    order = rng_of(MASTER, "distractors").permutation(len(pool))
    out = []
    for i in order[:count]:
        prefix, name = pool[i]
        data = sets[prefix]
        r = rng_of(MASTER, "ink", prefix, name)
        ink = "#000000" if r.random() < 0.4 else "#%02x%02x%02x" % tuple(
            int(v) for v in r.integers(0, 200, 3))
        svg = iconify_to_svg(data, name).replace("currentColor", ink)
        m = Mark(mark_id=f"x-{prefix}-{name}", source_set=prefix, name=name,
                 svg=svg, licence=data["info"]["license"]["spdx"], key=f"x-{prefix}-{name}")
        out.append(Entry(m, m.key, "distractor", ICONIFY[1], f"x/{prefix}"))
    return out


def render_entry(e: Entry) -> tuple[bytes, str] | None:
    """(PNG bytes, dedup key) of one gallery picture, or None if blank.
    Rendered at 384 px (real marks) or 256 px (distractors): the picture's
    mark is 205 px, and resvg time grows with the area."""
    rgba = render_rgba(e.mark, size=384 if e.kind == "mark" else 256, keep=False)
    if rgba is None:
        return None
    e.mark.extra["dark"] = needs_dark_ground(rgba)
    img = gallery_image(e.mark, rgba)
    aspect = round(float(np.log(rgba.width / rgba.height)), 1)
    key = f"{imagehash.phash(img.convert('L'), hash_size=8)}:{aspect}"
    buf = io.BytesIO()
    save_png(img, buf)
    return buf.getvalue(), key


def cmd_gallery(args: argparse.Namespace) -> None:
    out: Path = args.out
    entries = real_marks(args.cache)
    n_real_candidates = len(entries)
    entries += distractors(args.cache, args.distractors)
    seen_body: set[str] = set()
    seen_shape: set[str] = set()
    rows = {"real": [], "full": [], "heldout": []}
    dropped = 0
    brands = {e.brand for e in entries if e.kind == "mark"}
    todo = []
    for e in entries:
        body = hashlib.sha256(e.mark.svg.encode()).hexdigest()
        if body in seen_body:
            dropped += 1
            continue
        seen_body.add(body)
        todo.append(e)
    with Pool(args.jobs) as pool:
        for k, (e, res) in enumerate(zip(todo, pool.imap(render_entry, todo, chunksize=16))):
            if k % 2000 == 0:
                print(f"  {k}/{len(todo)}", file=sys.stderr, flush=True)
            if res is None:
                dropped += 1
                continue
            png, shape = res
            if shape in seen_shape:
                dropped += 1
                continue
            seen_shape.add(shape)
            # After dedup, so that the rule does not change which copy survives.
            if e.kind == "distractor" and is_brandish(e.mark.name, brands):
                dropped += 1
                continue
            held = e.kind == "mark" and is_open(e.brand)
            rel = f"{'heldout' if held else 'gallery'}/{e.sub}/{e.mark.mark_id}.png"
            path = out / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists() or path.read_bytes() != png:
                path.write_bytes(png)
            row = {
                "mark_id": e.mark.mark_id, "file": rel, "name": e.mark.name,
                "holder": f"{e.mark.name} (benchmark)", "brand": e.brand,
                "source_set": e.mark.source_set, "source_version": e.version,
                "licence": e.mark.licence, "kind": e.kind,
                "split": split_of(e.brand) if e.kind == "mark" else "",
                "sha256": hashlib.sha256(png).hexdigest(),
            }
            if held:
                rows["heldout"].append(row)
                continue
            rows["full"].append(row)
            if e.kind == "mark":
                rows["real"].append(row)
    for name, file in zip(("real", "full", "heldout"), MANIFESTS):
        write_manifest(out / file, rows[name])
    sums = write_checksums(out)
    real = rows["real"]
    print(f"candidates: {n_real_candidates} real, {len(entries) - n_real_candidates} distractors; "
          f"dropped {dropped} (blank or duplicate)")
    print(f"gallery: {len(real)} real marks "
          f"({len({r['brand'] for r in real})} brands) + "
          f"{len(rows['full']) - len(real)} distractors = {len(rows['full'])}; "
          f"held out (open set): {len(rows['heldout'])}")
    print(sums, end="")


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def query_job(job: tuple) -> tuple[bytes, dict]:
    """Photograph one mark, re-rendered from its SVG."""
    svg, level, variant, seed = job
    mark = Mark(mark_id="", source_set="", name="", svg=svg, licence="")
    return query_photo(render_rgba(mark, size=512, keep=False), level, variant, seed)


def cmd_queries(args: argparse.Namespace) -> None:
    data: Path = args.data
    gallery = [r for r in read_rows(data / "gallery-real.csv") if r["split"] == args.split]
    heldout = [r for r in read_rows(data / "heldout.csv") if r["split"] == args.split]
    svgs = {e.mark.mark_id: e.mark.svg for e in real_marks(args.cache)}

    def sample(rows: list[dict], n: int, tag: str) -> list[dict]:
        idx = rng_of(MASTER, "sample", args.split, tag).permutation(len(rows))[:n]
        return [rows[i] for i in sorted(idx)]

    jobs = []  # (row, level, variant)
    for level in args.levels:
        jobs += [(row, level, "") for row in sample(gallery, args.per_level, level)]
    for variant in VARIANTS:
        jobs += [(row, "easy", variant) for row in sample(gallery, args.per_variant, variant)]
    jobs += [(row, "medium", "open") for row in sample(heldout, args.open, "open")]
    out: Path = args.out
    work = []
    for n, (row, level, variant) in enumerate(jobs, start=1):
        seed = seed_of(MASTER, "query", args.split, row["mark_id"], n, level, variant)
        work.append((svgs[row["mark_id"]], level, "" if variant == "open" else variant, seed))
    qrows = []
    with Pool(args.jobs) as pool:
        for n, ((row, level, variant), (jpg, params)) in enumerate(
                zip(jobs, pool.imap(query_job, work, chunksize=4)), start=1):
            if n % 200 == 0:
                print(f"  {n}/{len(jobs)}", file=sys.stderr, flush=True)
            kind = variant or level
            rel = f"{kind}/q{n:05d}.jpg"
            (out / kind).mkdir(parents=True, exist_ok=True)
            (out / rel).write_bytes(jpg)
            params["source_mark"] = row["mark_id"]
            qrows.append({
                "file": rel,
                "expected_mark_id": "" if variant == "open" else row["mark_id"],
                "brand": row["brand"],
                "level": level,
                "variant": variant,
                "split": args.split,
                "seed": work[n - 1][3],
                "params": json.dumps(params, separators=(",", ":"), sort_keys=True),
            })
    if not qrows:
        raise SystemExit(f"no queries: the {args.split} split has no marks to photograph")
    write_manifest(out / "queries.csv", qrows, list(qrows[0]))
    digest = hashlib.sha256((out / "queries.csv").read_bytes()).hexdigest()
    print(f"queries: {len(qrows)} ({args.split} split) -> {out}/queries.csv sha256 {digest}")


def signature_job(path: Path) -> Signature | None:
    return signature(Image.open(path))


def cmd_twins(args: argparse.Namespace) -> None:
    """Writes the manifests again with twin brand keys joined: relevance by
    group; distractors that are a real or held-out mark's twin left out of the
    gallery (a second, unlabelled copy of a brand, as the name rule means to
    drop); open-set photos whose mark has a twin in the gallery left out (their
    brand is, in effect, recorded)."""
    data: Path = args.data
    real = read_rows(data / "gallery-real.csv")
    marks = real + read_rows(data / "heldout.csv")
    full = read_rows(data / "gallery-full.csv")
    distractors = [r for r in full if r["kind"] == "distractor"]
    with Pool(args.jobs) as pool:
        sigs = pool.map(signature_job, [data / r["file"] for r in marks + distractors],
                        chunksize=64)
    mark_sigs, distractor_sigs = sigs[:len(marks)], sigs[len(marks):]
    pairs = twin_pairs(mark_sigs)
    copies = {distractors[j]["mark_id"] for _, j in twin_pairs(mark_sigs, distractor_sigs)}
    group = groups([r["brand"] for r in marks], pairs)
    joined = [(marks[i], marks[j]) for i, j in pairs if marks[i]["brand"] != marks[j]["brand"]]
    cross = sum(a["split"] != b["split"] for a, b in joined)
    sizes = Counter(group.values())
    print(f"{len(marks)} real marks: {len(joined)} twin pairs across brand keys, "
          f"{cross} of them across splits; {sum(n > 1 for n in sizes.values())} groups of "
          f"several keys, largest {max(sizes.values(), default=0)}; {len(copies)} of "
          f"{len(distractors)} distractors are a mark's twin, left out")
    recorded = {group[r["brand"]] for r in real}
    trained = {group[r["brand"]] for r in marks if r["split"] == "train"}
    for name, rows in (("gallery-real", real),
                       ("gallery-full", [r for r in full if r["mark_id"] not in copies])):
        write_manifest(data / f"{name}-twins.csv",
                       [{**r, "brand": group.get(r["brand"], r["brand"])} for r in rows])
    for qdir in args.queries:
        rows = read_rows(qdir / "queries.csv")
        kept = []
        for r in rows:
            r["brand"] = group.get(r["brand"], r["brand"])
            if r["expected_mark_id"] or r["brand"] not in recorded:
                kept.append(r)
        unseen = [r for r in kept if r["split"] == "train" or r["brand"] not in trained]
        for name, out in (("queries-twins.csv", kept), ("queries-twins-unseen.csv", unseen)):
            write_manifest(qdir / name, out, list(rows[0]))
        print(f"{qdir}: {len(rows) - len(kept)} open-set photos left out (a twin is recorded), "
              f"{len(kept)} photos -> queries-twins.csv; {len(kept) - len(unseen)} more whose "
              f"twin is in the train split left out -> queries-twins-unseen.csv")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=Path("target/dataset-cache"),
                    help="where npm tarballs are downloaded and unpacked")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes")
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gallery", help="render the gallery and its manifests")
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--distractors", type=int, default=0,
                   help="symbol icons added as distractors (before dedup)")
    q = sub.add_parser("queries", help="generate photo queries of one split")
    q.add_argument("--data", type=Path, required=True, help="a gallery folder")
    q.add_argument("--out", type=Path, required=True)
    q.add_argument("--split", choices=[s for s, _ in SPLITS], default="test")
    q.add_argument("--levels", nargs="+", default=["medium", "hard"],
                   choices=["easy", "medium", "hard"])
    q.add_argument("--per-level", type=int, default=500, help="photos per level")
    q.add_argument("--per-variant", type=int, default=100, help="photos per variant kind")
    q.add_argument("--open", type=int, default=300, help="photos of held-out (open-set) brands")
    t = sub.add_parser("twins", help="join brand keys that show the same mark")
    t.add_argument("--data", type=Path, required=True, help="a gallery folder")
    t.add_argument("--queries", type=Path, nargs="+", default=[], help="query folders")
    f = sub.add_parser("refilter", help="apply the current distractor rule to a built gallery")
    f.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.cmd == "refilter":
        refilter(args.out, args.cache)
        return
    {"gallery": cmd_gallery, "queries": cmd_queries, "twins": cmd_twins}[args.cmd](args)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Learns the marklens projection head: a learned whitening (Radenovic et al.,
"Fine-tuning CNN Image Retrieval with No Human Annotation", TPAMI 2018, section
"learned whitening") of the frozen EfficientNet-Lite0 features, from synthetic
photo / clean-mark pairs of the TRAINING split only, and appends it to the
backbone as ONNX nodes.

    features = MatMul(L2normalise(lite0(x)) - mean, P)      # [N, DIM]

marklens L2-normalises the output again. The head does two things at once:
it down-weights the directions in which a photo of a mark differs from its clean
drawing (label, light, pose, blur: the "intra-class" covariance is whitened),
and keeps the DIM directions in which different marks differ most (PCA of the
whitened gallery), which also shrinks the vectors 5x for the index.

Data recipe (all made by the benchmark tools, all from the training split):
1. benches/dataset/build.py gallery ...           (the real marks; splits by brand hash)
2. benches/dataset/build.py --jobs 1 queries --split train --per-level 700 \
       --per-variant 100 --open 0 --out DATA/queries-train
3. marklens --data-dir DB bench run --gallery DATA/gallery-real.csv \
       --queries DATA/queries-train/queries.csv --out OUT --export OUT/vectors
   (run with the base model: pass `--model models/efficientnet_lite0.onnx`
   so the vectors are the backbone's, not an earlier head's)
4. this script: --vectors OUT/vectors --gallery DATA/gallery-real.csv

Only gallery marks whose split is `train` are used (for the mean and the PCA),
and only query photos of train brands (for the pair differences), so no
calibration or test brand is ever seen. The fit is closed-form (eigen-
decompositions in float64); there is no randomness, so no seed is needed and
the output is byte-identical for the same input.
"""
import argparse
import csv
import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent


def read_f32(path: Path, dim: int) -> np.ndarray:
    return np.fromfile(path, dtype="<f4").reshape(-1, dim).astype(np.float64)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def fit(gallery: np.ndarray, diffs: np.ndarray, dim: int, shrink: float):
    """mean, projection [D, dim]: whiten the pair differences, then PCA."""
    mean = gallery.mean(axis=0)
    cs = diffs.T @ diffs / len(diffs)
    # Shrinkage towards a scaled identity: there are fewer pairs than dimensions.
    cs = (1 - shrink) * cs + shrink * np.trace(cs) / len(cs) * np.eye(len(cs))
    ev, evec = np.linalg.eigh(cs)
    p1 = evec @ np.diag(ev ** -0.5) @ evec.T
    y = (gallery - mean) @ p1
    cd = y.T @ y / len(y)
    ev2, evec2 = np.linalg.eigh(cd)
    order = np.argsort(ev2)[::-1][:dim]
    return mean, p1 @ evec2[:, order]


def append_head(base: Path, out: Path, mean: np.ndarray, proj: np.ndarray) -> None:
    model = onnx.load(str(base))
    g = model.graph
    feat = g.output[0].name
    raw = feat + "_backbone"
    for node in g.node:
        node.output[:] = [raw if o == feat else o for o in node.output]
    g.initializer.extend([
        numpy_helper.from_array(mean.astype(np.float32)[None, :], "head_mean"),
        numpy_helper.from_array(proj.astype(np.float32), "head_projection"),
    ])
    g.node.extend([
        helper.make_node("ReduceL2", [raw], ["head_norm"], axes=[1], keepdims=1),  # opset 17
        helper.make_node("Div", [raw, "head_norm"], ["head_unit"]),
        helper.make_node("Sub", ["head_unit", "head_mean"], ["head_centred"]),
        helper.make_node("MatMul", ["head_centred", "head_projection"], [feat]),
    ])
    del g.output[:]
    g.output.extend([helper.make_tensor_value_info(feat, TensorProto.FLOAT, ["N", proj.shape[1]])])
    onnx.checker.check_model(model)
    out.write_bytes(model.SerializeToString())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors", type=Path, required=True, help="`bench run --export` folder")
    ap.add_argument("--gallery", type=Path, required=True, help="gallery manifest with a split column")
    ap.add_argument("--base", type=Path, default=HERE / "efficientnet_lite0.onnx")
    ap.add_argument("--out", type=Path, default=HERE / "lite0_lw256.onnx")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--shrink", type=float, default=0.4)
    ap.add_argument("--in-dim", type=int, default=1280)
    args = ap.parse_args()

    with open(args.gallery, newline="") as fh:
        rows = list(csv.DictReader(fh))
    split = {r["mark_id"]: r["split"] for r in rows}
    brand = {r["mark_id"]: r["brand"] for r in rows}
    ids = (args.vectors / "gallery.ids").read_text().split("\n")[:-1]
    gal = read_f32(args.vectors / "gallery.f32", args.in_dim)
    train_rows = [i for i, m in enumerate(ids) if split.get(m) == "train"]
    by_mark: dict[str, list[int]] = {}
    for i in train_rows:
        by_mark.setdefault(ids[i], []).append(i)

    qmeta = list(csv.DictReader(open(args.vectors / "queries.tsv"), delimiter="\t"))
    qvec = read_f32(args.vectors / "queries.f32", args.in_dim)
    diffs = []
    for q, v in zip(qmeta, qvec):
        m = q["expected_mark_id"]
        if split.get(m) != "train" or m not in by_mark:
            continue  # not a train photo: never used
        g = gal[by_mark[m]]
        diffs.append(v - g[np.argmax(g @ v)])  # the mark's closest view
    diffs = np.array(diffs)
    train = gal[train_rows]
    print(f"fit on {len(train)} train gallery vectors ({len(by_mark)} marks, "
          f"{len({brand[m] for m in by_mark})} brands) and {len(diffs)} train photo pairs")
    mean, proj = fit(train, diffs, args.dim, args.shrink)
    append_head(args.base, args.out, mean, proj)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) sha256 {digest}")


if __name__ == "__main__":
    main()

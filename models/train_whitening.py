#!/usr/bin/env python3
"""Learns the marklens projection head from synthetic photo / clean-mark pairs
of the TRAINING split only, on top of the frozen EfficientNet-Lite0 features,
and appends it to the backbone as ONNX nodes.

    pooled   = [GeM over window w of lite0's last 7x7 map, unit length] for w in WINDOWS
    features = MatMul(L2normalise(concat(pooled)) - mean, P)      # [N, DIM]

marklens L2-normalises the output again. The pooling (`regional_gem`) replaces
the backbone's global average: generalised-mean pooling over the whole map and
over four overlapping quadrants, 5 x 1280 = 6400 values. P is learned in two
stages:

1. learned whitening (Radenovic et al., "Fine-tuning CNN Image Retrieval with No
   Human Annotation", TPAMI 2018), closed form: the directions in which a photo
   of a mark differs from its clean drawing (label, light, pose, blur: the
   "intra-class" covariance) are whitened so they stop counting, and the DIM
   directions in which different marks differ most (PCA of the whitened gallery)
   are kept, which also shrinks the vectors 5x for the index;
2. a contrastive fine-tune from there (`refine`): each training photo against
   every training gallery vector, a few epochs of Adam.

Data recipe (all made by the benchmark tools, all from the training split):
1. benches/dataset/build.py gallery ...           (the real marks; splits by brand hash)
2. two photo sets of training marks (more photos, not more marks, is what helps):
     benches/dataset/build.py --jobs 1 queries --split train --per-level 700 \
         --per-variant 100 --open 0 --out DATA/queries-train
     benches/dataset/build.py --jobs 2 queries --split train --per-level 1600 \
         --per-variant 260 --open 0 --out DATA/queries-train2
3. this script with --pooled-base POOLED.onnx (the backbone with the pooling,
   no head), then for each set Q: marklens --model POOLED.onnx --index exact \
       --data-dir DB bench run --gallery DATA/gallery-real.csv \
       --queries DATA/Q/queries.csv --out OUT/Q --export OUT/Q/vectors
   (the pooled backbone's vectors, not an earlier head's; one DB serves both sets)
4. this script: --vectors OUT/queries-train/vectors OUT/queries-train2/vectors \
       --gallery DATA/gallery-real.csv

Only gallery marks whose split is `train` are used (for the mean, the PCA and
the negatives), and only query photos of train brands (for the pairs), so no
calibration or test brand is ever seen. Shrinkage, temperature, step and epochs
were chosen on the calibration split. Everything runs in float64 and the batch
order is seeded (`--seed`): the output is byte-identical from run to run.
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


def read_exports(gallery: Path, dirs: list[Path], read) -> tuple:
    """What both training scripts start from: the split and brand of every
    mark of the gallery manifest, and the `bench run --export` folders `dirs`
    (the gallery's ids and vectors from the first, the photos' vectors and
    metadata from all), each .f32 file read by `read`. A folder exported from
    another gallery than the first is refused: its photos would be paired
    with the wrong rows."""
    with open(gallery, newline="") as fh:
        rows = list(csv.DictReader(fh))
    split = {r["mark_id"]: r["split"] for r in rows}
    brand = {r["mark_id"]: r["brand"] for r in rows}
    ids = (dirs[0] / "gallery.ids").read_text().split("\n")[:-1]
    meta, photos = [], []
    for d in dirs:
        if (d / "gallery.ids").read_text().split("\n")[:-1] != ids:
            raise SystemExit(f"{d} was exported from another gallery than {dirs[0]}")
        with open(d / "queries.tsv", newline="") as fh:
            meta += list(csv.DictReader(fh, delimiter="\t"))
        photos.append(read(d / "queries.f32"))
    return split, brand, ids, read(dirs[0] / "gallery.f32"), np.concatenate(photos), meta


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


def refine(mean, proj, gallery, brands, photos, pairs, args):
    """Fine-tunes the projection so each photo's vector is nearest its own mark.

    The loss is a softmax cross-entropy (InfoNCE, temperature `--tau`) of each
    photo against every train gallery vector at once: the mark's closest view is
    the positive, the other views of the photo's brand are left out, everything
    else is a negative. Gradients are written out by hand (numpy, float64, through
    both L2 normalisations) and applied with Adam. Starting from the learned
    whitening, a few epochs are enough; more overfit the training photos.
    """
    rng = np.random.default_rng(args.seed)
    xg = unit(gallery) - mean
    xq = unit(photos[[i for i, _, _ in pairs]]) - mean
    pos = np.array([j for _, j, _ in pairs])
    own = np.array([b for _, _, b in pairs])
    w = proj.copy()
    step = args.lr * np.abs(proj).mean()  # Adam's step, relative to the weights' scale
    m1, m2, t = np.zeros_like(w), np.zeros_like(w), 0
    for epoch in range(args.epochs):
        total = 0.0
        order = rng.permutation(len(pairs))
        for start in range(0, len(order), args.batch):
            b = order[start:start + args.batch]
            rows = np.arange(len(b))
            zq, zg = xq[b] @ w, xg @ w
            nq, ng = np.linalg.norm(zq, axis=1, keepdims=True), np.linalg.norm(zg, axis=1, keepdims=True)
            yq, yg = zq / nq, zg / ng
            logits = yq @ yg.T / args.tau
            same = brands[None, :] == own[b][:, None]
            same[rows, pos[b]] = False
            logits[same] = -np.inf
            logits -= logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(axis=1, keepdims=True)
            total -= np.log(p[rows, pos[b]]).sum()
            p[rows, pos[b]] -= 1.0
            p /= len(b) * args.tau
            dq, dg = p @ yg, p.T @ yq
            dq = (dq - yq * (yq * dq).sum(1, keepdims=True)) / nq
            dg = (dg - yg * (yg * dg).sum(1, keepdims=True)) / ng
            grad = xq[b].T @ dq + xg.T @ dg
            t += 1
            m1 = 0.9 * m1 + 0.1 * grad
            m2 = 0.999 * m2 + 0.001 * grad * grad
            w -= step * (m1 / (1 - 0.9 ** t)) / (np.sqrt(m2 / (1 - 0.999 ** t)) + 1e-12)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {total / len(pairs):.4f}")
    return w


# Pooling windows over the backbone's 7 x 7 map (rows and columns, end exclusive):
# the whole map, then four overlapping 4 x 4 quadrants, which keep a coarse layout
# of where the mark's strokes are.
WINDOWS = [(0, 7, 0, 7), (0, 4, 0, 4), (0, 4, 3, 7), (3, 7, 0, 4), (3, 7, 3, 7)]
GEM_P = 3.0
GEM_EPS = 1e-6  # activations are clamped to this before the power: ReLU6 gives zeros


def regional_gem(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replaces the backbone's global average pool by GeM (p = 3) over `WINDOWS`,
    each window's vector L2-normalised, concatenated: [N, 1280 * len(WINDOWS)].

    GeM (Radenovic et al.) weighs the strongest activations more than a mean does;
    the quadrants let the head tell marks apart by where their parts are (views
    are turned upright first, so the layout is stable).
    """
    g = model.graph
    last = g.node[-1]
    if last.op_type != "ReduceMean":
        raise SystemExit("the base does not end in a global average pool")
    fmap, feat = last.input[0], last.output[0]
    g.node.remove(last)
    g.initializer.extend([
        numpy_helper.from_array(np.array([GEM_EPS], np.float32), "gem_eps"),
        numpy_helper.from_array(np.array([GEM_P], np.float32), "gem_p"),
        numpy_helper.from_array(np.array([1 / GEM_P], np.float32), "gem_root"),
        numpy_helper.from_array(np.array([2, 3], np.int64), "gem_axes"),
    ])
    nodes = [
        helper.make_node("Max", [fmap, "gem_eps"], ["gem_clamped"]),
        helper.make_node("Pow", ["gem_clamped", "gem_p"], ["gem_powered"]),
    ]
    parts = []
    for k, (r0, r1, c0, c1) in enumerate(WINDOWS):
        g.initializer.extend([
            numpy_helper.from_array(np.array([r0, c0], np.int64), f"gem_w{k}_start"),
            numpy_helper.from_array(np.array([r1, c1], np.int64), f"gem_w{k}_end"),
        ])
        nodes += [
            helper.make_node("Slice", ["gem_powered", f"gem_w{k}_start", f"gem_w{k}_end", "gem_axes"],
                             [f"gem_w{k}_map"]),
            helper.make_node("ReduceMean", [f"gem_w{k}_map"], [f"gem_w{k}_mean"], axes=[2, 3], keepdims=0),
            helper.make_node("Pow", [f"gem_w{k}_mean", "gem_root"], [f"gem_w{k}"]),
            helper.make_node("ReduceL2", [f"gem_w{k}"], [f"gem_w{k}_norm"], axes=[1], keepdims=1),
            helper.make_node("Div", [f"gem_w{k}", f"gem_w{k}_norm"], [f"gem_w{k}_unit"]),
        ]
        parts.append(f"gem_w{k}_unit")
    nodes.append(helper.make_node("Concat", parts, [feat], axis=1))
    g.node.extend(nodes)
    width = g.output[0].type.tensor_type.shape.dim[1].dim_value * len(WINDOWS)
    del g.output[:]
    g.output.extend([helper.make_tensor_value_info(feat, TensorProto.FLOAT, ["N", width])])
    onnx.checker.check_model(model)
    return model


def append_head(model: onnx.ModelProto, out: Path, mean: np.ndarray, proj: np.ndarray) -> None:
    """Appends the head to `model` (the pooled backbone) and writes it to `out`."""
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
    ap.add_argument("--vectors", type=Path, nargs="+",
                    help="`bench run --export` folders (one gallery, any number of query sets)")
    ap.add_argument("--gallery", type=Path, help="gallery manifest with a split column")
    ap.add_argument("--base", type=Path, default=HERE / "efficientnet_lite0.onnx")
    ap.add_argument("--pooled-base", type=Path, metavar="OUT",
                    help="only write the base with the head's pooling (regional GeM) to OUT, "
                         "the model to export the training vectors with, and stop")
    ap.add_argument("--out", type=Path, default=HERE / "lite0_lw256.onnx")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--shrink", type=float, default=0.4)
    ap.add_argument("--epochs", type=int, default=2, help="contrastive fine-tuning epochs (0: whitening only)")
    ap.add_argument("--tau", type=float, default=0.1, help="softmax temperature of the fine-tuning")
    ap.add_argument("--lr", type=float, default=3e-2, help="Adam step, as a share of the mean |weight|")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0, help="order of the fine-tuning batches")
    args = ap.parse_args()
    pooled = regional_gem(onnx.load(str(args.base)))
    if args.pooled_base:
        args.pooled_base.write_bytes(pooled.SerializeToString())
        print(f"wrote {args.pooled_base}: {args.base.name} with regional GeM pooling")
        return
    if not args.vectors or not args.gallery:
        ap.error("--vectors and --gallery are required (unless --pooled-base)")
    args.in_dim = pooled.graph.output[0].type.tensor_type.shape.dim[1].dim_value

    split, brand, ids, gal, qvec, qmeta = read_exports(args.gallery, args.vectors,
                                                       lambda path: read_f32(path, args.in_dim))
    train_rows = [i for i, m in enumerate(ids) if split.get(m) == "train"]
    by_mark: dict[str, list[int]] = {}
    for i in train_rows:
        by_mark.setdefault(ids[i], []).append(i)

    row_of = {i: k for k, i in enumerate(train_rows)}
    pairs = []  # (photo, its mark's closest train gallery row, brand)
    for n, (q, v) in enumerate(zip(qmeta, qvec)):
        m = q["expected_mark_id"]
        if split.get(m) != "train" or m not in by_mark:
            continue  # not a train photo: never used
        views = by_mark[m]
        pairs.append((n, row_of[views[int(np.argmax(gal[views] @ v))]], brand[m]))
    train = gal[train_rows]
    diffs = np.array([qvec[i] - train[j] for i, j, _ in pairs])
    print(f"fit on {len(train)} train gallery vectors ({len(by_mark)} marks, "
          f"{len({brand[m] for m in by_mark})} brands) and {len(diffs)} train photo pairs")
    mean, proj = fit(train, diffs, args.dim, args.shrink)
    if args.epochs:
        brands = np.array([brand[ids[i]] for i in train_rows])
        proj = refine(mean, proj, train, brands, qvec, pairs, args)
    append_head(pooled, args.out, mean, proj)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) sha256 {digest}")


if __name__ == "__main__":
    main()

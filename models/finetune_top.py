#!/usr/bin/env python3
"""Fine-tunes the top of the marklens model (the backbone's last block, its last
convolution and the projection head) on synthetic photo / clean-mark pairs of the
TRAINING split only, and writes the model with the new weights.

Why: the head learned by train_whitening.py only re-weighs the 6400 pooled
values the ImageNet backbone gives; the backbone's last block (block 15) and
its last 1x1 convolution (320 -> 1280 channels, just before the pooling) decide
what those values are. Training them with the head lets the features themselves
follow what tells a photographed mark from its lookalikes (calibration split,
16,676 marks, the photo's first view, exact, float: recall@1 0.761 -> 0.841 on
30,200 training photos in three epochs, 0.830 in two; 0.827 on 25,200, 0.817
on 16,400, 0.790 on 6,400; the last convolution and head alone: 0.779; then
two more epochs from block 14: 0.852; two more from block 14 on 10,000 new
photos: 0.857; models/README.md).

How: the model is cut at the input of block 15 (7 x 7 x 192, the last part of
the backbone that is not trained), and `bench run --export` writes that tensor
for every gallery view and every training photo, as marklens preprocesses them.
This script then runs block 15, the last convolution, the regional GeM pooling
and the projection in JAX on those cached tensors and trains the chosen parts
(`--train`) with a softmax cross-entropy of each photo against its mark's
closest view and a set of candidate negatives computed afresh at every step:
the batch's positives, each photo's hardest negatives by the previous epoch's
vectors (`--hard`), and random training views up to `--cands`. (Negatives
from a stale bank let the fresh vectors drift away from it together, which
lowers the loss and wrecks retrieval; measured, recall@1 fell to 0.62.)
The photo's own brand is never a negative. Adam with steps relative to each
weight tensor's mean magnitude, float32, seeded batch order.

`--first-block 12` to `14` cuts earlier and runs those blocks too. Their
inputs are 7 x 7 x 192 as well, so the exports are the same size, but each cut
needs exports of its own. From any cut the JAX tail matches the ONNX graph to
2e-7; from block 15 it computes the same bytes as before the option existed.
From block 14 a step at the default sizes needs about 35 GB (its 5 x 5
depthwise's backward pass); `--cands 1024` fits in 14.5 GB (12.2 s a step).

Recipe (all made by the benchmark tools, all from the training split):
1. the model to fine-tune (train_whitening.py's output, `--base`), and the
   model cut before block 15 (or `--first-block N`'s block, given again in step 3):
     python3 models/finetune_top.py --base HEAD.onnx --cut CUT.onnx
2. for each training photo set Q (train_whitening.py's two sets and four more,
   models/README.md "The fine-tuned top"):
     marklens --model CUT.onnx --index exact --data-dir DB bench run \\
         --gallery DATA/gallery-real.csv --queries DATA/Q/queries.csv \\
         --no-index-sweep --no-knockouts --out OUT/Q --export OUT/Q/vectors
3. python3 models/finetune_top.py --base HEAD.onnx \\
       --vectors OUT/Q*/vectors --gallery DATA/gallery-real.csv
   (writes models/lite0_lw256.onnx; the committed model is a second run of
   one more epoch from that one, `--base` it, `--epochs 1 --seed 2`, then a
   third run from that, `--base` it, `--first-block 14 --cands 1024` on the
   block-14 cut's exports of the same sets, then a fourth like it, `--seed 4`,
   on a seventh set alone; then quantize_int8.py)

Only gallery marks whose split is `train` are used and only photos of train
brands, so no calibration or test brand is ever seen. The learning rates and
epochs were chosen on the calibration split (`--eval`, a calibration export,
only prints recall). Needs numpy, onnx==1.23.2 and jax==0.10.2 (its CPU wheels, from PyPI).
"""
import argparse
import csv
import hashlib
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from train_whitening import GEM_EPS, GEM_P, WINDOWS, read_exports  # the pooling this script must reproduce

HERE = Path(__file__).resolve().parent
LAST_BLOCK = 15  # the backbone's last block; its first trained block is `--first-block`
FIRST_BLOCKS = range(12, LAST_BLOCK + 1)  # the blocks that read a 7 x 7 x 192 tensor
SIDE, CHANNELS = 7, 192  # the input of blocks 12 to 15 alike, so exports of either cut read the same
FLAT = SIDE * SIDE * CHANNELS
BLOCK = ["expand_w", "expand_b", "dw_w", "dw_b", "project_w", "project_b"]
# Trainable groups -> parameter names (a block's are prefixed with its name).
GROUPS = {
    **{f"block{b}": [f"block{b}.{k}" for k in BLOCK] for b in FIRST_BLOCKS},
    "conv": ["head_w", "head_b"],
    "proj": ["proj_p"],
}


def blocks(p: dict) -> list[str]:
    """The blocks whose parameters `p` holds, in the order the graph runs them."""
    return sorted({k.split(".")[0] for k in p if k.startswith("block")})


def cut_at(base: onnx.ModelProto, first: int) -> str:
    """The ONNX tensor block `first` reads (its expansion's input)."""
    return next(n.input[0] for n in base.graph.node if n.output[0] == f"block{first}.expand.conv")


def cut(base: onnx.ModelProto, first: int) -> onnx.ModelProto:
    """The backbone up to block `first`'s input, flattened, with a trailing 1.

    marklens L2-normalises every model output; the trailing constant is how
    this script recovers the tensor's scale (row / its last value), which the
    block's biases and clips depend on."""
    g = base.graph
    at = cut_at(base, first)
    nodes = []
    for n in g.node:
        nodes.append(n)
        if n.output[0] == at:
            break
    used = {i for n in nodes for i in n.input}
    inits = [i for i in g.initializer if i.name in used] + [
        numpy_helper.from_array(np.array([0, -1], np.int64), "cut_shape"),
        numpy_helper.from_array(np.array([0], np.int64), "cut_start"),
        numpy_helper.from_array(np.array([1], np.int64), "cut_end"),
        numpy_helper.from_array(np.zeros((1, 1), np.float32), "cut_zero"),
        numpy_helper.from_array(np.ones((1, 1), np.float32), "cut_one"),
    ]
    nodes += [
        helper.make_node("Reshape", [at, "cut_shape"], ["cut_flat"]),
        # a column of ones as long as the batch
        helper.make_node("Slice", ["cut_flat", "cut_start", "cut_end", "cut_end"], ["cut_first"]),
        helper.make_node("Mul", ["cut_first", "cut_zero"], ["cut_zeros"]),
        helper.make_node("Add", ["cut_zeros", "cut_one"], ["cut_ones"]),
        helper.make_node("Concat", ["cut_flat", "cut_ones"], ["features"], axis=1),
    ]
    out = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", FLAT + 1])
    graph = helper.make_graph(nodes, f"lite0_block{first}_input", list(g.input), [out], inits)
    model = helper.make_model(graph, opset_imports=base.opset_import)
    model.ir_version = base.ir_version
    onnx.checker.check_model(model)
    return model


def read_params(base: onnx.ModelProto, first: int) -> dict:
    """Blocks `first` to the last, the last convolution and the projection,
    laid out for `embed` (NHWC, weights as right-hand matrices)."""
    w = {i.name: numpy_helper.to_array(i) for i in base.graph.initializer}
    p = {}
    for b in range(first, LAST_BLOCK + 1):
        n = f"block{b}"
        p |= {
            f"{n}.expand_w": w[f"{n}.expand.weight"][:, :, 0, 0].T, f"{n}.expand_b": w[f"{n}.expand.bias"],
            f"{n}.dw_w": w[f"{n}.depthwise.weight"][:, 0].transpose(1, 2, 0), f"{n}.dw_b": w[f"{n}.depthwise.bias"],
            f"{n}.project_w": w[f"{n}.project.weight"][:, :, 0, 0].T, f"{n}.project_b": w[f"{n}.project.bias"],
        }
    p |= {
        "head_w": w["head.weight"][:, :, 0, 0].T, "head_b": w["head.bias"],
        "proj_mean": w["head_mean"][0], "proj_p": w["head_projection"],
    }
    return {k: jnp.asarray(np.ascontiguousarray(v), jnp.float32) for k, v in p.items()}


def write_params(base: onnx.ModelProto, p: dict, out: Path) -> None:
    """Writes `base` with its initializers replaced by the trained values."""
    a = {k: np.asarray(v, np.float32) for k, v in p.items()}
    new = {
        "head.weight": a["head_w"].T[:, :, None, None], "head.bias": a["head_b"],
        "head_mean": a["proj_mean"][None, :], "head_projection": a["proj_p"],
    }
    for n in blocks(a):
        new |= {
            f"{n}.expand.weight": a[f"{n}.expand_w"].T[:, :, None, None], f"{n}.expand.bias": a[f"{n}.expand_b"],
            f"{n}.depthwise.weight": a[f"{n}.dw_w"].transpose(2, 0, 1)[:, None],
            f"{n}.depthwise.bias": a[f"{n}.dw_b"],
            f"{n}.project.weight": a[f"{n}.project_w"].T[:, :, None, None], f"{n}.project.bias": a[f"{n}.project_b"],
        }
    for init in base.graph.initializer:
        if init.name in new:
            init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(new[init.name]), init.name))
    onnx.checker.check_model(base)
    out.write_bytes(base.SerializeToString())


def block(p: dict, n: str, x):
    """One inverted-residual block, NHWC: 1x1 expansion, k x k depthwise (same
    padding), 1x1 projection, and the residual sum when the shapes allow it
    (blocks 12 to 14; block 15 widens 192 -> 320)."""
    h = jnp.clip(x @ p[f"{n}.expand_w"] + p[f"{n}.expand_b"], 0, 6)
    k = p[f"{n}.dw_w"].shape[0]
    hp = jnp.pad(h, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
    d = sum(hp[:, i:i + SIDE, j:j + SIDE, :] * p[f"{n}.dw_w"][i, j] for i in range(k) for j in range(k))
    d = jnp.clip(d + p[f"{n}.dw_b"], 0, 6)
    y = d @ p[f"{n}.project_w"] + p[f"{n}.project_b"]
    return x + y if y.shape == x.shape else y


def embed(p: dict, x):
    """The blocks in `p`, the last convolution, regional GeM and the
    projection: the ONNX graph's tail, NHWC. Returns unit vectors."""
    for n in blocks(p):
        x = block(p, n, x)
    f = jnp.clip(x @ p["head_w"] + p["head_b"], 0, 6)
    f = jnp.maximum(f, GEM_EPS) ** GEM_P
    parts = []
    for r0, r1, c0, c1 in WINDOWS:
        g = jnp.mean(f[:, r0:r1, c0:c1, :], axis=(1, 2)) ** (1 / GEM_P)
        parts.append(g / jnp.linalg.norm(g, axis=1, keepdims=True))
    z = jnp.concatenate(parts, axis=1)
    z = (z / jnp.linalg.norm(z, axis=1, keepdims=True) - p["proj_mean"]) @ p["proj_p"]
    return z / jnp.linalg.norm(z, axis=1, keepdims=True)


_embed = jax.jit(embed)


def embed_all(p: dict, x: np.ndarray, chunk: int = 512) -> np.ndarray:
    return np.concatenate([np.asarray(_embed(p, jnp.asarray(x[i:i + chunk]))) for i in range(0, len(x), chunk)])


def read_cut(path: Path) -> np.ndarray:
    """A `bench run --export` file of the cut model -> NHWC block-15 inputs."""
    v = np.fromfile(path, dtype="<f4").reshape(-1, FLAT + 1)
    return np.ascontiguousarray((v[:, :FLAT] / v[:, FLAT:]).reshape(-1, CHANNELS, SIDE, SIDE).transpose(0, 2, 3, 1))


def recall(p: dict, gx: np.ndarray, ids: list, brand: dict, export: Path) -> str:
    """Exact recall@1 / @10 per group of a calibration export, the photo's first
    view, a mark scored by its best view, any mark of the photo's brand right."""
    qx = read_cut(export / "queries.f32")
    with open(export / "queries.tsv", newline="") as fh:
        meta = list(csv.DictReader(fh, delimiter="\t"))
    marks = sorted(set(ids))
    index = {m: k for k, m in enumerate(marks)}
    row_mark = np.array([index[m] for m in ids])
    order = np.argsort(row_mark, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(row_mark[order])) + 1]
    best = np.maximum.reduceat(embed_all(p, qx) @ embed_all(p, gx).T[:, order], starts, axis=1)
    mark_brand = np.array([brand[m] for m in marks])
    ranks: dict[str, list[int]] = {}
    for q, m in enumerate(meta):
        if m["expected_mark_id"]:
            r = 1 + int((best[q] > best[q, mark_brand == m["brand"]].max()).sum())
            ranks.setdefault(m["group"], []).append(r)
            ranks.setdefault("all", []).append(r)
    return " ".join(f"{g} {np.mean(np.array(r) <= 1):.3f}/{np.mean(np.array(r) <= 10):.3f}"
                    for g, r in sorted(ranks.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, required=True, help="the model to fine-tune (train_whitening.py's)")
    ap.add_argument("--first-block", type=int, default=LAST_BLOCK, choices=FIRST_BLOCKS,
                    help="the first block run here: the cut is at its input, and the exports must be of that cut")
    ap.add_argument("--cut", type=Path, metavar="OUT",
                    help="only write the base cut before --first-block to OUT, the model to export with, and stop")
    ap.add_argument("--vectors", type=Path, nargs="+", help="`bench run --export` folders of the cut model")
    ap.add_argument("--gallery", type=Path, help="gallery manifest with split and brand columns")
    ap.add_argument("--eval", type=Path, help="a calibration-split export: print its recall after each epoch")
    ap.add_argument("--out", type=Path, default=HERE / "lite0_lw256.onnx")
    ap.add_argument("--train", help=f"parts to train, of {','.join(GROUPS)} (default: every block run here, conv, proj)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--cands", type=int, default=3072, help="candidate views per step (positives first)")
    ap.add_argument("--hard", type=int, default=8, help="hardest negatives per photo among the candidates")
    ap.add_argument("--tau", type=float, default=0.1, help="softmax temperature")
    ap.add_argument("--lr-conv", type=float, default=1e-3, help="Adam step of convolutions, share of mean |w|")
    ap.add_argument("--lr-proj", type=float, default=3e-2, help="Adam step of the projection, share of mean |w|")
    ap.add_argument("--seed", type=int, default=0, help="batch order and random candidates")
    args = ap.parse_args()
    base = onnx.load(str(args.base))
    if args.cut:
        onnx.save(cut(base, args.first_block), str(args.cut))
        print(f"wrote {args.cut}: {args.base.name} cut at {cut_at(base, args.first_block)}")
        return
    if not args.vectors or not args.gallery:
        ap.error("--vectors and --gallery are required (unless --cut)")
    run = [f"block{b}" for b in range(args.first_block, LAST_BLOCK + 1)] + ["conv", "proj"]
    groups = args.train.split(",") if args.train else run
    if unknown := [g for g in groups if g not in run]:
        ap.error(f"--train: {', '.join(unknown)} not among the parts run from block {args.first_block}: {','.join(run)}")

    split, brand, ids, gx, qx, meta = read_exports(args.gallery, args.vectors, read_cut)
    train_rows = np.array([i for i, m in enumerate(ids) if split.get(m) == "train"])
    tg = gx[train_rows]
    views_of: dict[str, list[int]] = {}
    for k, i in enumerate(train_rows):
        views_of.setdefault(ids[i], []).append(k)
    keep = [n for n, m in enumerate(meta) if m["expected_mark_id"] in views_of]  # train photos only
    qx = qx[keep]
    marks = [meta[n]["expected_mark_id"] for n in keep]
    codes = {b: k for k, b in enumerate(sorted({brand[ids[i]] for i in train_rows}))}
    view_brand = np.array([codes[brand[ids[i]]] for i in train_rows])
    photo_brand = np.array([codes[brand[m]] for m in marks])
    print(f"{len(qx)} train photos, {len(tg)} train gallery views ({len(views_of)} marks)", flush=True)

    params = read_params(base, args.first_block)
    if args.eval:
        print(f"[base] {recall(params, gx, ids, brand, args.eval)}", flush=True)
    trained = [k for g in groups for k in GROUPS[g]]
    print(f"training {', '.join(groups)}", flush=True)
    step = {k: (args.lr_proj if k == "proj_p" else args.lr_conv) * float(jnp.abs(params[k]).mean()) for k in trained}

    def loss(tp, fp, xq, xc, mask, pos):
        p = {**fp, **tp}
        logits = jnp.where(mask, -jnp.inf, embed(p, xq) @ embed(p, xc).T / args.tau)
        return -jax.nn.log_softmax(logits, axis=1)[jnp.arange(len(pos)), pos].mean()

    grad = jax.jit(jax.value_and_grad(loss))
    rng = np.random.default_rng(args.seed)
    m1 = {k: jnp.zeros_like(params[k]) for k in trained}
    m2 = {k: jnp.zeros_like(params[k]) for k in trained}
    t = 0
    for epoch in range(args.epochs):
        started, total = time.time(), 0.0
        bank, qe = embed_all(params, tg), embed_all(params, qx)
        pos = np.array([views_of[m][int(np.argmax(bank[views_of[m]] @ qe[n]))] for n, m in enumerate(marks)])
        order = rng.permutation(len(qx))
        for s in range(0, len(order) - args.batch + 1, args.batch):
            b = order[s:s + args.batch]
            sims = qe[b] @ bank.T
            sims[view_brand[None, :] == photo_brand[b][:, None]] = -9
            hard = np.argsort(-sims, axis=1)[:, :args.hard].ravel()
            cand = list(dict.fromkeys([int(i) for i in pos[b]] + [int(i) for i in hard]))[:args.cands]
            seen = set(cand)
            cand += [int(i) for i in rng.permutation(len(tg)) if int(i) not in seen][:args.cands - len(cand)]
            cand = np.array(cand)
            at = {c: k for k, c in enumerate(cand.tolist())}
            pos_at = np.array([at[int(i)] for i in pos[b]])
            mask = view_brand[cand][None, :] == photo_brand[b][:, None]
            mask[np.arange(len(b)), pos_at] = False
            tp = {k: params[k] for k in trained}
            fp = {k: v for k, v in params.items() if k not in trained}
            value, g = grad(tp, fp, jnp.asarray(qx[b]), jnp.asarray(tg[cand]), jnp.asarray(mask), jnp.asarray(pos_at))
            total += float(value) * len(b)
            t += 1
            for k in trained:
                m1[k] = 0.9 * m1[k] + 0.1 * g[k]
                m2[k] = 0.999 * m2[k] + 0.001 * g[k] ** 2
                params[k] = params[k] - step[k] * (m1[k] / (1 - 0.9 ** t)) / (jnp.sqrt(m2[k] / (1 - 0.999 ** t)) + 1e-12)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {total / len(order):.4f} ({time.time() - started:.0f} s)", flush=True)
        # written after every epoch: a stopped run leaves its last whole epoch
        write_params(base, params, args.out)
        digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
        print(f"wrote {args.out} ({args.out.stat().st_size} bytes) sha256 {digest}", flush=True)
        if args.eval:
            print(f"[epoch {epoch + 1}] {recall(params, gx, ids, brand, args.eval)}", flush=True)


if __name__ == "__main__":
    main()

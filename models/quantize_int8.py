#!/usr/bin/env python3
"""Quantises the marklens model's backbone to 8-bit integers and writes the
model marklens runs (`lite0_lw256_int8.onnx`) from the float one
(`lite0_lw256.onnx`, written by train_whitening.py).

Why: the backbone's convolutions are most of a search's embedding time. With
8-bit weights and activations ONNX Runtime runs them on the CPU's integer
dot-product instructions (AVX-512 VNNI here): about half the time per view,
for retrieval within a photo or two of the float model's (models/README.md).

What is quantised: the backbone's convolutions from block 3 on (static QDQ:
weights int8 per output channel, activations uint8 per tensor, ranges from the
minimum and maximum seen, averaged over calibration batches). Two parts stay in
float:
- the stem and blocks 0 to 2, at 112 and 56 px: their few channels carry the
  fine detail, and one 8-bit range per tensor costs it. With them in int8 the
  vectors agreed with the float model's to a median cosine of 0.977; with them
  in float, 0.996, for a tenth more time;
- the head after the last convolution (the regional GeM pooling's cubes and
  roots, the normalisation and the projection): cubing amplifies rounding, and
  it is a small share of the time.

Calibration inputs, TRAINING split only, as marklens preprocesses them
(`cargo run --release --example model_inputs`, see that file):
1. every 20th training mark of the gallery:
     model_inputs DATA/gallery-real.csv train 20 OUT/gallery-train.f32
2. 200 photos of training marks:
     benches/dataset/build.py --jobs 1 queries --data DATA --split train \
         --per-level 100 --per-variant 0 --open 0 --out OUT/photos-train
     model_inputs OUT/photos-train/queries.csv - 1 OUT/photos-train.f32
3. this script:
     python3 models/quantize_int8.py --inputs OUT/gallery-train.f32 OUT/photos-train.f32

Needs numpy, onnx==1.23.2 and onnxruntime==1.32.0 (its quantisation tools).
The same inputs give the same bytes.
"""

import argparse
import hashlib
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

HERE = Path(__file__).resolve().parent
SIDE = 224
BATCH = 20
# The stem and the blocks at 112 and 56 px, kept in float (see above).
FLOAT_BLOCKS = ("stem.", "block0.", "block1.", "block2.")


class Batches(CalibrationDataReader):
    """Feeds the calibration views in fixed batches, in file order."""

    def __init__(self, views: np.ndarray):
        self.views = views
        self.at = 0

    def get_next(self):
        if self.at >= len(self.views):
            return None
        batch = self.views[self.at:self.at + BATCH]
        self.at += BATCH
        return {"input": batch}


def load_views(paths: list[Path]) -> np.ndarray:
    views = [np.fromfile(p, dtype="<f4").reshape(-1, 3, SIDE, SIDE) for p in paths]
    return np.ascontiguousarray(np.concatenate(views))


def float_nodes(model: onnx.ModelProto) -> list[str]:
    """Names the nodes that stay in float: the high-resolution blocks
    (FLOAT_BLOCKS, named by export_lite0.py) and every node after the backbone's
    last convolution (the head), naming unnamed nodes first."""
    nodes = model.graph.node
    for i, node in enumerate(nodes):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    last_conv = max(i for i, n in enumerate(nodes) if n.op_type == "Conv")
    early = [n.name for n in nodes if n.name.startswith(FLOAT_BLOCKS)]
    return early + [n.name for n in nodes[last_conv + 1:]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", type=Path, nargs="+", required=True,
                    help="calibration views written by the model_inputs example")
    ap.add_argument("--model", type=Path, default=HERE / "lite0_lw256.onnx")
    ap.add_argument("--out", type=Path, default=HERE / "lite0_lw256_int8.onnx")
    args = ap.parse_args()

    views = load_views(args.inputs)
    model = onnx.load(args.model)
    keep = float_nodes(model)
    with tempfile.TemporaryDirectory() as tmp:
        named = Path(tmp) / "named.onnx"
        onnx.save(model, named)
        quantize_static(
            named, args.out, Batches(views),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=keep,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"CalibMovingAverage": True},
        )
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"{len(views)} calibration views, {len(keep)} nodes kept in float -> {args.out} sha256 {digest}")


if __name__ == "__main__":
    main()

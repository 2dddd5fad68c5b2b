#!/usr/bin/env bash
# The GPU checks of the acceleration work, as one prepared run for a device machine:
#   here:      bash scripts/device_wheels.sh
#   on the GPU: bash scripts/device_check.sh      (carry .whl; results under $OUT; ~7 min,
#               inside one run call of at most 600 s)
# GPU tests (tensorrt ones skip where tensorrt is not installed), then the Wan VAE alone
# (diffusers vs FastWanVAE, TFLOP/s), the 1.3B benchmark (random weights, 480x640) for the
# windows in BENCH_WINDOWS (fast VAE, CUDA graphs and fp8 rows included), the accuracy per
# precision on the embedded model, then the streaming benchmark (a 30 Hz source -> the
# pipelined worker -> outputs, eager vs the fast CUDA path; STREAM_SETTINGS, STREAM_EAGER, STREAM_FAST).
# Time budget of the 600 s call: tests ~120 s, VAE <= 60 s, backends <= BENCH_SECONDS (180),
# precision <= 60 s, streaming <= 120 s; every benchmark rewrites its result file as it goes.
# PYTHON overrides python3.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/device}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/dvd-site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/dvd-site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# DDS on loopback: the profile alone (LOCALHOST would add sockets on 0.0.0.0, docs/ros.md).
export FASTDDS_DEFAULT_PROFILES_FILE="$PWD/config/fastdds_localhost.xml"
unset ROS_AUTOMATIC_DISCOVERY_RANGE
nvidia-smi > "$OUT/gpu.txt" 2>&1
"$PY" -c "import torch, diffusers; print('torch', torch.__version__, 'cuda',
torch.cuda.is_available(), 'diffusers', diffusers.__version__)" 2>&1 | tee "$OUT/versions.txt"
"$PY" -m pytest -q -p no:cacheprovider -rs test/test_backends.py test/test_precision.py \
  test/test_folding.py test/test_fast_vae.py test/test_cuda_graphs.py test/test_scaled_fp8.py \
  test/test_transfer.py 2>&1 | tee "$OUT/pytest.log"
status=${PIPESTATUS[0]}
if "$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
  timeout 60 "$PY" benchmarks/bench_fast_vae.py --device cuda --windows 9,25 \
    --out "$OUT/fast_vae_cuda.md" 2>&1 | tee "$OUT/fast_vae.log"
  timeout "${BENCH_SECONDS:-180}" "$PY" benchmarks/bench_backends.py --device cuda \
    --windows "${BENCH_WINDOWS:-9,25}" --repeats 3 \
    --backends "${BENCH_BACKENDS:-torch,torch-no-graphs,torch-diffusers-vae,torch:fp8,\
torch-unfolded,onnxruntime,tensorrt:bf16,torch-compile}" \
    --out "$OUT/backends_cuda.md" 2>&1 | tee "$OUT/bench.log"
  timeout 60 "$PY" benchmarks/bench_precision.py --device cuda \
    --out "$OUT/precision_cuda.md" 2>&1 | tee "$OUT/precision.log"
  timeout "${STREAM_SECONDS:-120}" "$PY" benchmarks/bench_stream_gpu.py --device cuda \
    --settings "${STREAM_SETTINGS:-9/4,9/2,25/8,auto}" --seconds 5 --sequential 9/4 \
    --eager-options "${STREAM_EAGER:-cuda_graphs=false,fast_vae=false}" \
    --fast-options "${STREAM_FAST:-cuda_graphs=true,fast_vae=true}" \
    --out "$OUT/stream_cuda.md" 2>&1 | tee "$OUT/stream.log"
else
  echo 'no CUDA GPU: benchmark skipped' | tee "$OUT/bench.log"
fi
exit "$status"

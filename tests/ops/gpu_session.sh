#!/usr/bin/env bash
# One GPU-machine session for the kernels: build, CUDA tests + benchmarks through the
# harness (evidence JSON), compute-sanitizer memcheck over the ops CUDA tests, summary last.
# Usage (repo root, on the GPU machine): bash tests/ops/gpu_session.sh [quick|final]
set -o pipefail
MODE=${1:-quick}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
t0=$(date +%s)
python3 -c "from gpt_engine.ops import _ext; _ext.load(); print('extension built')" 2>&1 | tail -30 | tee "$OUT/build.txt" || exit 1
echo "build: $(( $(date +%s) - t0 )) s"
if [ "$MODE" = quick ]; then
  timeout 300 python3 -m pytest -p gates.pytest_plugin --no-evidence -q -m "cuda and not benchmark" tests/ops -x 2>&1 | tail -40
  timeout 300 python3 -m gates.gpu tests/ops -m benchmark 2>&1 | tail -80
  SAN_K=${SAN_K:-vs_float64 or strided or kv_append or prefill_then_decode}
else
  timeout 420 python3 -m gates.gpu 2>&1 | tail -40
  # the memory-growth test counts allocations, which the sanitizer's own bookkeeping changes
  SAN_K=${SAN_K:-not memory_growth}
fi
t1=$(date +%s)
timeout ${SAN_TIMEOUT:-200} compute-sanitizer --tool memcheck --error-exitcode 9 --log-file "$OUT/memcheck.txt" \
  python3 -m pytest -p gates.pytest_plugin --no-evidence -q -m "cuda and not benchmark" tests/ops -k "$SAN_K" 2>&1 | tail -3
echo "compute-sanitizer memcheck exit: $? ($(( $(date +%s) - t1 )) s)"; tail -2 "$OUT/memcheck.txt"
[ -f "$OUT/gpu-summary.txt" ] && cat "$OUT/gpu-summary.txt"

#!/usr/bin/env bash
# GPU-machine call (repo root, .whl carried) for attention decode v6 (tests/bench/ab_patches/
# attn-v6-cluster.patch): a row group's 2..16 splits launched as one thread-block cluster that
# merges them in shared memory, instead of the fp32 workspace and the reduce launch.
#   OUT=$OUT timeout 590 bash tests/bench/attn_v6_call.sh
# Order: the patch, the build (~180 s cold), the v6 tests (every bound against float64, a
# sequence's bits alone and in its batch), then `explore_decode.py cluster` (the benchmark's T 1k
# and 4k cases at the bounds 1 (never: v5), 8 and 16 against SDPA, and the decode graph's 16
# splits on the benchmark models' heads), then the rest of the attention tests.
# Prediction: ~1.5-2.5 us less a call wherever the bound takes the split count (the reduce
# launch's ~2 us, docs/kernels/decode.md v10, less a cluster barrier and the DSMEM reads), so
# GT-018's weakest case, B4 H32 T1024 (20.6 us, 0.849 of SDPA at e61d691), to ~18-19 us.
# Outcome (session 37, H100, with the bounds 1 / 8 / 16): 0.4-1.1 us less at 1,024 keys (B4 H32
# 20.29 -> 19.50 us, 0.893 of SDPA), even at 4,096; 16 lost up to 45% on 64 / 8 heads, so the
# patch now holds the bound 8 only (docs/kernels/attention.md, v6). The patch lands with heavy +
# light evidence at its commit; this call is only needed again to re-measure.
set -o pipefail
. tests/bench/gpu_env.sh attn-v6-call.log
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
T="timeout -s INT -k 10"
git apply tests/bench/ab_patches/attn-v6-cluster.patch && echo "attn-v6-cluster applied" || exit 1
build_ext 10
$T 90 python3 -m pytest -p gates.pytest_plugin --no-evidence -q -m cuda tests/ops/test_attention_decode.py -k cluster 2>&1 | tail -4
echo "## explore_decode.py cluster (us; graph replays)"
$T 150 python3 tests/ops/explore_decode.py cluster
$T 120 python3 -m pytest -p gates.pytest_plugin --no-evidence -q -m cuda tests/ops/test_attention_decode.py tests/ops/test_attention_sinks.py -k "not bandwidth and not cluster" 2>&1 | tail -4
echo "call: $(( $(date +%s) - t0 )) s after the wheels"

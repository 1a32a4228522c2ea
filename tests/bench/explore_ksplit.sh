#!/usr/bin/env bash
# Exploration (branch qgemv-ksplit), one GPU call: the packed GEMV with two warps per row pair
# (default) against one (GPT_ENGINE_QGEMV_KSPLIT=1): the packed-GEMV tests, the GEMV alone, an
# Nsight Compute profile of both (NCU_RUNS=1), the graph-captured decode step, and tg128 of the
# files in E2E through `gpt-engine bench`.
set -o pipefail
. tests/bench/gpu_env.sh ab.log
DEADLINE=${DEADLINE:-560}
left() { echo $(( DEADLINE - ($(date +%s) - t0) )); }
MODELS=${MODELS:-gpt2-1.5b-MXFP4 gpt2-1.5b-Q8_0 gpt2-124m-MXFP4}
(python3 -c "
import sys
from gpt_engine import benchmodels as b
for s in sys.argv[1:]:
    shape, q = s.rsplit('-', 1); print(b.ensure('$M', shape, q))
" $MODELS > /tmp/ks-models.txt 2>&1) &
P1=$!
build_ext
timeout 150 python3 -m pytest -p gates.pytest_plugin --no-evidence -p no:cacheprovider -q -x -m cuda --tb=short -rf \
  tests/ops/test_linear_q.py -k "not bandwidth and not benchmark" 2>&1 | grep -vE "^\.|^$|^SKIPPED" | tail -15
echo "tests: $(( $(date +%s) - t0 )) s"
SH=${SH:-1x1600x6400,1x768x3072,1x1600x1600,1x6400x1600,2x1600x6400,4x1600x6400,8x1600x6400}
for v in "" 1; do
  echo "== GEMV alone KSPLIT=${v:-default}"
  GPT_ENGINE_QGEMV_KSPLIT=$v timeout 120 python3 tests/bench/explore_gemv.py --quant --types Q8_0,MXFP4,Q4_K --shapes $SH 2>&1 | grep -v "^$"
done
echo "gemv: $(( $(date +%s) - t0 )) s"
wait $P1; cat /tmp/ks-models.txt; echo "models: $(( $(date +%s) - t0 )) s"
for rep in 1 2; do
  for f in $MODELS; do
    for v in "" 1; do
      [ "$(left)" -lt 120 ] && break 3
      echo "== step $f KSPLIT=${v:-default}"
      GPT_ENGINE_QGEMV_KSPLIT=$v EXPLORE_NO_PROFILE=1 timeout 60 python3 tests/bench/explore_decode_step.py "$M/$f.gguf" 2>&1 | grep -E "graph step"
    done
  done
done
# tg128 through the public API, halves on / off alternated, for the files in E2E
for F in ${E2E:-}; do
  for v in "" 1 "" 1; do
    [ "$(left)" -lt 40 ] && break 2
    echo "== bench $F KSPLIT=${v:-default}"
    GPT_ENGINE_QGEMV_KSPLIT=$v timeout 60 python3 -m gpt_engine.cli bench "$M/$F.gguf" -p 0 -n 128 -r 3 --device cuda 2>&1 \
      | grep -E "tg128" | grep -v "^bench:" | head -1
  done
done
NCU=$(which ncu 2>/dev/null || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
echo "NCU=$NCU"
if [ -n "${NCU_RUNS:-}" ] && [ -n "$NCU" ] && [ "$(left)" -gt 60 ]; then
  for v in 1 ""; do
    GPT_ENGINE_QGEMV_KSPLIT=$v timeout $(( $(left) / 2 )) $NCU --clock-control none -k regex:gemv --launch-count 20 \
      --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats --section LaunchStats \
      --section MemoryWorkloadAnalysis --section SourceCounters python3 tests/bench/profile_gemv_ncu.py > "$OUT/ncu-ksplit${v:-2}.txt" 2>&1
    echo "ncu KSPLIT=${v:-default} rc $?"
    grep -E "gemv|Duration|DRAM Throughput|Warp Cycles Per Issued|Achieved Occupancy|No Eligible" "$OUT/ncu-ksplit${v:-2}.txt" | head -60
  done
fi
echo "total: $(( $(date +%s) - t0 )) s"

#!/usr/bin/env bash
# The warm call after tests/bench/ab_patches_call.sh, on the same machine (its extension build and
# benchmark models are reused): what landing the patches needs beyond call 1's tests and A/Bs, and
# what the next versions need to know.
#   1. compute-sanitizer memcheck on the new kernels' CUDA tests: the MoE decode v7.1 / v7.2
#      (test_decode_v7_matches_v3 at the 20b shape), decode attention v5's tiles
#      (test_decode_every_group_tile_vs_float64) and the dense GEMV's ring rule (the QKV shape
#      under each mode, the long rows on either kernel, the one-batch rows on every kernel).
#   2. ncu on the MoE expert kernels, v7 then v7.2 (tests/bench/profile_moe_ncu.py): the pipes'
#      utilisation (v7.2's premise: the integer ALU pipe bounds the dot-product loop) and the
#      warps' stall reasons.
#   3. With STEP_NCU=1: the 20b decode step kernel by kernel (tests/bench/profile_step_ncu.py;
#      each kernel alone, no PDL, grouped by kernel and bytes read), to split the QKV product's
#      time from the head's (docs/gpt_oss.md: which of the two is slow).
# The same patches as call 1 are applied, so the build directory (named by the sources' hash)
# is the one call 1 built. Repo root, .whl carried:
#   OUT=$OUT timeout 595 bash tests/bench/ab_patches_call2.sh
set -o pipefail
bash tests/bench/ab_patches_apply.sh || exit 1
. tests/bench/gpu_env.sh call2.log
build_ext 3
T="timeout -s INT -k 10"
OUT=$OUT bash tests/bench/memcheck_decode.sh  # (its own log, memcheck.log)
for v in 7 72; do
  MOE_VERSIONS=$v $T 90 ncu --clock-control none -k regex:moe_ --launch-skip 4 --launch-count 2 \
    --section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats --section Occupancy \
    --print-details all python3 tests/bench/profile_moe_ncu.py > "/tmp/ncu-moe-$v.txt" 2>&1
  echo "ncu moe v$v exit $?"
  grep -E "moe_|Duration|Pipe|pipe|Issue Slots|Issued Warp|DRAM Throughput|Stall|stall|Warp Cycles" \
    "/tmp/ncu-moe-$v.txt" | head -60
done
if [ "${STEP_NCU:-0}" = 1 ]; then
  GPT_ENGINE_DEVICE_LOOP=0 $T 240 ncu --clock-control none --profile-from-start off --csv \
    --metrics gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,smsp__issue_active.avg.pct_of_peak_sustained_active,sm__warps_active.avg.pct_of_peak_sustained_active,launch__grid_size,launch__waves_per_multiprocessor,dram__bytes_read.sum \
    python3 tests/bench/profile_step_ncu.py "$M/gpt-oss-20b-MXFP4.gguf" > /tmp/ncu-step.csv 2> /tmp/ncu-step.err
  echo "ncu step exit $?"; tail -3 /tmp/ncu-step.err
  python3 tests/bench/profile_step_ncu.py --summary /tmp/ncu-step.csv
fi
echo "call: $(( $(date +%s) - t0 )) s after the wheels"

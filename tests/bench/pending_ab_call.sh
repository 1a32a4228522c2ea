#!/usr/bin/env bash
# One cold GPU-machine call for what waits after session 30 (written then; no GPU time was left):
#   1. tests/bench/ab_patches/qgemv-zip.patch, the packed GEMV v3.3 (csrc/linear_q_impl.cuh's
#      header): MXFP4 decoded in the nibbles' order as the MoE decode v7.2 does (9 operations per
#      8 codes instead of 13), the activations staged in that order; the same bits as v3;
#      ext.qgemv_zip_force(1) turns it on, the default stays v3. Compiled for sm_90a here (no
#      spills; 119 registers at M = 1 against 126), never run.
#   2. the candidates that session 29 measured on an H100 with attention v4 and left off, again
#      with attention v5 on (main since 56e6efc): MoE decode v7.2 (-0.9% of the 20b step then)
#      and the dense ring modes 8 / 13 (v20's bulk copies; -0.8% / -1.2%).
# Most decisive first (each step has its own limit; the caller's outer limit cuts the tail):
# the build (its objects do not come back: EXT_SAVE=0, the tree is patched); compute-sanitizer
# memcheck on the v3.3 same-bits tests; the whole packed-GEMV test file with the patch; the MXFP4
# GEMVs alone under QGEMV_ZIP 0 / 1 (explore_gemv.py --quant, bits compared); the GPT-2 1.5B and
# 124M MXFP4 steps under QGEMV_ZIP 0 / 1 in one process each; the 20b step under MOE_VERSIONS and
# GEMV_RING; the MoE same-bits tests. ~500 s cold (the MXFP4 file compiles twice the kernels).
# Repo root, .whl carried:   OUT=$OUT timeout 590 bash tests/bench/pending_ab_call.sh
# If v3.3 wins in the steps: apply the patch here, set g_qgemv_zip's default to 1 (csrc/linear_q.cu)
# and the hook's doc, commit, then the evidence calls (gpu_session.sh heavy, then light) at that
# commit. If it loses, delete the patch and record the numbers in docs/kernels/quant.md.
set -o pipefail
if git apply --reverse --check tests/bench/ab_patches/qgemv-zip.patch 2>/dev/null; then
  echo "qgemv-zip.patch: already applied"
else
  git apply tests/bench/ab_patches/qgemv-zip.patch || { echo "qgemv-zip.patch does not apply"; exit 1; }
fi
export SHAPES="gpt2-1.5b:MXFP4 gpt2-124m:MXFP4 gpt-oss-20b:MXFP4"
. tests/bench/gpu_env.sh pending-ab-call.log
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
(bash tests/bench/gen_models.sh > /tmp/models.txt 2>&1) &
MODELS_PID=$!
build_ext 10
T="timeout -s INT -k 10"
$T 90 compute-sanitizer --tool memcheck --error-exitcode 3 \
  python3 -m pytest -p gates.pytest_plugin --no-evidence -q -rf -m cuda --tb=short \
  tests/ops/test_linear_q.py -k "zip_same_bits and float16 and (6400 or 2880)" > /tmp/mc.txt 2>&1
echo "memcheck exit $? (3: errors found)"; grep -E "ERROR SUMMARY|passed|failed|error" /tmp/mc.txt | tail -8
$T 150 python3 -m pytest -p gates.pytest_plugin --no-evidence -q -rf -m cuda --tb=short \
  tests/ops/test_linear_q.py -k "not bandwidth" > /tmp/t.txt 2>&1
echo "packed GEMV tests exit $?"; grep -vE "^\.|^$" /tmp/t.txt | tail -15
QGEMV_ZIP="0 1" $T 60 python3 tests/bench/explore_gemv.py --quant --types MXFP4 \
  --shapes 1x1600x6400,1x6400x1600,1x4800x1600,1x1600x1600,1x4096x4096,1x2880x2880,4x1600x6400
wait $MODELS_PID; cat /tmp/models.txt
for f in gpt2-1.5b-MXFP4 gpt2-124m-MXFP4; do
  QGEMV_ZIP="0 1" ROUNDS=5 $T 60 python3 tests/bench/explore_decode_step.py "$M/$f.gguf" | sed "s/^/$f /"
done
MOE_VERSIONS="7 72" GEMV_RING="0 8 13" ROUNDS=3 $T 100 \
  python3 tests/bench/explore_decode_step.py "$M/gpt-oss-20b-MXFP4.gguf" | sed "s/^/gpt-oss-20b /"
$T 60 python3 -m pytest -p gates.pytest_plugin --no-evidence -q -rf -m cuda --tb=short \
  tests/ops/test_moe.py -k "v7_matches" > /tmp/t2.txt 2>&1
echo "moe tests exit $?"; grep -vE "^\.|^$" /tmp/t2.txt | tail -6
echo "call: $(( $(date +%s) - t0 )) s after the wheels"

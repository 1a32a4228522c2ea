#!/usr/bin/env bash
# One GPU-machine call for what waits after session 31 (written then, no GPU time left). Run it
# FIRST in the next session (cold: one build of the patched tree, ~140 s), before the evidence
# calls: if v21 wins it lands first and the evidence (gpu_session.sh heavy, then light) is taken
# once, of the code that ships. What it does, most decisive first:
#   1. compute-sanitizer memcheck on the MoE decode v7.2 kernels, the default since session 31
#      (csrc/moe.cu; same bits as v7, measured -1.1% of the 20b step) and never memchecked; on the
#      patched build (the patch does not touch csrc/moe.cu or anything it includes).
#   2. tests/bench/ab_patches/fused-mlp.patch (written in session 31 by a helper, never run): GPT-2's
#      decode MLP (LN2, up, GELU, down, residual) as ONE kernel, csrc/mlp_fused.cu (v21 in
#      docs/kernels/decode.md's table; v15, the same product, lost in session 18: 35.4 against
#      19.4 us). Off unless ext.mlp_fused_force(1 | 2 | 3) picks a grid plan. Its header says what
#      must be checked first: a hang in the last blocks' spin (the first test runs the smallest case
#      alone under a short limit), then the bits (same bits over 20 calls and graph replays), then
#      memcheck, then the speed: the kernel alone (explore_mlp_fused.py) and the 1.5B / 124M graph
#      steps under MLP_FUSED 0 / 1 / 2 / 3 in one process each.
#   3. OP=gelu tests/ops/explore_elementwise.py: launch shapes of the one-input map for the fp16
#      tanh GELU against torch on this card (gelu_tanh.fp16 0.99x torch on two H100s: gate1's only
#      missed bar there); the winner, if one beats today's 256 x 4 by more than the spread, goes
#      into csrc/elementwise.cuh.
# Repo root, .whl carried:   OUT=$OUT timeout 590 bash tests/bench/pending_ab_call.sh
# Each step has its own limit; the outer limit cuts the tail. Order: the build, v21's hang check,
# its tests, the steps A/B, memcheck on MoE v7.2, memcheck on v21, v21 alone, the GELU shapes.
# If v21 wins the 1.5B step by more than ~1% with the same greedy tokens: apply the patch, turn the
# hook's default on for the winning plan (csrc, the Python rule in ops/mlp_fused.py), count its
# workspace in memory_estimate, commit, then the evidence calls. If it loses: record the numbers in
# docs/kernels/decode.md's v21 row and delete the patch.
set -o pipefail
export SHAPES="gpt2-1.5b gpt2-124m"
if git apply --reverse --check tests/bench/ab_patches/fused-mlp.patch 2>/dev/null; then
  echo "fused-mlp.patch: already applied"
else
  git apply tests/bench/ab_patches/fused-mlp.patch || { echo "fused-mlp.patch does not apply"; exit 1; }
fi
. tests/bench/gpu_env.sh pending-ab-call.log
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
T="timeout -s INT -k 10"
PYT="python3 -m pytest -p gates.pytest_plugin --no-evidence -q -rf -m cuda --tb=short"
(bash tests/bench/gen_models.sh > /tmp/models.txt 2>&1) &
MODELS_PID=$!
build_ext 10

echo "## v21 (fused-mlp.patch): the smallest case alone, then its tests"
$T 60 $PYT -x tests/ops/test_mlp_fused.py -k "vs_float64 and torch.float16 and 64-256" > /tmp/t0.txt 2>&1
rc=$?; echo "smallest case exit $rc (124 or 130: the limit: a hang?)"; grep -vE "^\.|^$" /tmp/t0.txt | tail -8
if [ $rc = 124 ] || [ $rc = 130 ]; then
  echo "again without PDL"; GPTE_NO_PDL=1 $T 60 $PYT -x tests/ops/test_mlp_fused.py \
    -k "vs_float64 and torch.float16 and 64-256" 2>&1 | grep -vE "^\.|^$" | tail -6
  exit 1
fi
$T 120 $PYT tests/ops/test_mlp_fused.py > /tmp/t1.txt 2>&1
echo "fused MLP tests exit $?"; grep -vE "^\.|^$" /tmp/t1.txt | tail -12

echo "## v21 in the graph step (MLP_FUSED 0: today's two GEMVs; 1 / 2 / 3: the grid plans)"
wait $MODELS_PID; cat /tmp/models.txt
for f in gpt2-1.5b-F16 gpt2-124m-F16; do
  MLP_FUSED="0 1 2 3" ROUNDS=5 $T 100 python3 tests/bench/explore_decode_step.py "$M/$f.gguf" | sed "s/^/$f /"
done

echo "## memcheck: MoE decode v7.2 (the default), then v21"
$T 100 compute-sanitizer --tool memcheck --error-exitcode 3 $PYT tests/ops/test_moe.py \
  -k "v7_matches and torch.float16" > /tmp/mc_moe.txt 2>&1
echo "memcheck exit $? (3: errors found)"; grep -E "ERROR SUMMARY|passed|failed|error" /tmp/mc_moe.txt | tail -6
$T 100 compute-sanitizer --tool memcheck --error-exitcode 3 $PYT tests/ops/test_mlp_fused.py \
  -k "(torch.float16 and (64-256 or 72-288 or 768-3072)) or hook" > /tmp/mc_mlp.txt 2>&1
echo "memcheck exit $? (3: errors found)"; grep -E "ERROR SUMMARY|passed|failed|error" /tmp/mc_mlp.txt | tail -6

echo "## v21 alone against the two GEMVs"
$T 60 python3 tests/bench/explore_mlp_fused.py

echo "## gelu_tanh launch shapes (OP=gelu)"
OP=gelu $T 100 python3 tests/ops/explore_elementwise.py 0 3 4 5 11 12 13 19 21 22 23
echo "call: $(( $(date +%s) - t0 )) s after the wheels"

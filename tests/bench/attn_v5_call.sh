#!/usr/bin/env bash
# One cold GPU-machine call for decode attention v5 turned on: it applies
# tests/bench/ab_patches/attn-v5-on.patch (csrc/attention_decode.cu kMinHeadBlocks 1 -> 32:
# gpt-oss's group tile 8 -> 2, Llama-1b's and SmolLM2's 4 -> 1, and the rule test's table) to the
# tree it runs in. Written in session 29 after that session's warm A/B on an H100
# (docs/kernels/runs/20261205-s29-ab-short-h100.log: the 20b graph step 2,268 -> 2,115 us with the
# tile forced to 2, Llama-1b 1,065 -> 1,013 us at 1); that session's device time ran out (five
# failed machine starts) before this call could run, so the patch waits for it.
# What that A/B did not cover, most decisive first (the caller's outer limit cuts the tail):
# compute-sanitizer memcheck on the tile tests (never run on them); each tile alone from T = 128
# to 32,768 (tests/ops/explore_decode.py tiles: the long-context cost that
# docs/kernels/attention.md's v5 notes left to measure); the attention, sink and gpt-oss CUDA
# tests with the rule on; the steps with the rule (ATTN_TILES 0) against v4's tiles (8 for
# gpt-oss, 4 for Llama-1b) in one process; `gpt-engine bench` tg128 on the 20b and Llama-1b
# files; the Llama model CUDA tests. ~450 s cold in all (build ~110 s).
# Repo root, .whl carried:   OUT=$OUT timeout 450 bash tests/bench/attn_v5_call.sh
# If it passes: `git apply tests/bench/ab_patches/attn-v5-on.patch` here, commit, then the evidence
# calls (gpu_session.sh ops / rest) at that commit. Or commit the patch first and run this call on
# that commit (it then finds the patch applied and says so), so that the evidence calls can follow
# on the same warm machine with the build this call made (a machine idles out 30 s after a call).
set -o pipefail
if git apply --reverse --check tests/bench/ab_patches/attn-v5-on.patch 2>/dev/null; then
  echo "attn-v5-on.patch: already applied"
else
  git apply tests/bench/ab_patches/attn-v5-on.patch || { echo "attn-v5-on.patch does not apply"; exit 1; }
fi
export SHAPES="gpt-oss-20b:MXFP4 llama-1b"
. tests/bench/gpu_env.sh attn-v5-call.log
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
(bash tests/bench/gen_models.sh > /tmp/models.txt 2>&1) &
MODELS_PID=$!
build_ext 10
T="timeout -s INT -k 10"
# most decisive first, each step with its own limit; the caller's outer limit cuts the tail
$T 75 compute-sanitizer --tool memcheck --error-exitcode 3 \
  python3 -m pytest -p gates.pytest_plugin --no-evidence -q -rf -m cuda --tb=short \
  tests/ops/test_attention_decode.py -k "(every_group_tile and 200) or group_tile_rule" > /tmp/mc.txt 2>&1
echo "memcheck exit $? (3: errors found)"; grep -E "ERROR SUMMARY|passed|failed|error" /tmp/mc.txt | tail -8
$T 60 python3 tests/ops/explore_decode.py tiles
$T 80 python3 -m pytest -p gates.pytest_plugin --no-evidence -q -rf -m cuda --tb=short \
  tests/ops/test_attention_decode.py tests/ops/test_attention_sinks.py tests/test_model_gpt_oss_cuda.py \
  -k "not bandwidth" > /tmp/t.txt 2>&1
echo "tests exit $?"; grep -vE "^\.|^$" /tmp/t.txt | tail -15
wait $MODELS_PID; cat /tmp/models.txt
ATTN_TILES="0 8" ROUNDS=3 $T 60 python3 tests/bench/explore_decode_step.py "$M/gpt-oss-20b-MXFP4.gguf" | sed "s/^/gpt-oss-20b /"
for f in gpt-oss-20b-MXFP4 llama-1b-F16; do
  $T 45 python3 -m gpt_engine.cli bench "$M/$f.gguf" --device cuda -p 0 -n 128 -r 3 2>&1 | grep -vE "^bench: "
done
ATTN_TILES="0 4" ROUNDS=3 $T 40 python3 tests/bench/explore_decode_step.py "$M/llama-1b-F16.gguf" | sed "s/^/llama-1b /"
$T 60 python3 -m pytest -p gates.pytest_plugin --no-evidence -q -rf -m cuda --tb=short tests/test_model_cuda.py tests/test_cuda_graph.py \
  -k "llama" > /tmp/t2.txt 2>&1
echo "llama model tests exit $?"; grep -vE "^\.|^$" /tmp/t2.txt | tail -8
echo "call: $(( $(date +%s) - t0 )) s after the wheels"

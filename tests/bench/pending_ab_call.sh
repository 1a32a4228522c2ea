#!/usr/bin/env bash
# One GPU-machine call for what still waits after session 35: where the 1.5B step's fused LayerNorm
# spends its ~4 us a call (docs/kernels/decode.md, v22c: not in its weight / bias loads). Main's
# tree plus tests/bench/ab_patches/norm-split.patch, applied on the GPU machine only (a csrc edit
# would stale the GPU evidence of gate1 and gate2, which CI enforces; docs/harness.md). The patch
# adds a runtime mask to the dense GEMV (ext.linear_explore_norm; wrong results, timing only):
#   1 the whole norm off (session 34's "norm off" column, the reference), 128 the statistics off
#   (mean 0, rstd 1; the normalize loop kept), 256 the normalize loop off (the statistics kept),
#   512 LayerNorm's mean pass off (one pass, as RMSNorm: what a one-pass statistics could save),
#   384 both statistics and loop (against 1: what the one barrier left costs).
# On RMSNorm (Llama ~1B, gpt-oss) 512 changes nothing: a noise check.
# Prediction: if 128 takes most of 1's saving at 1.5B, the statistics' reductions and barriers are
# the cost (next: fewer barriers, the two passes' reductions in one); if 256 does, the loop's
# shared-memory round trips behind its stores; if neither alone but 384 does, the barriers
# between them.
# Repo root, .whl carried:   OUT=$OUT timeout 590 bash tests/bench/pending_ab_call.sh
# (~150-210 s cold build, ~50 s models in parallel, ~30 s a file.) If an H200 comes, the evidence
# of main on the card the issues name is worth more than this (H200 evidence is stale since
# session 33): gpu_session.sh heavy, then light, at main's commit (docs/harness.md).
set -o pipefail
export SHAPES="gpt-oss-20b:MXFP4 gpt2-124m gpt2-1.5b llama-1b"
. tests/bench/gpu_env.sh pending-ab-call.log
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
T="timeout -s INT -k 10"
(bash tests/bench/gen_models.sh > /tmp/models.txt 2>&1) &
MODELS_PID=$!
git apply --reverse --check tests/bench/ab_patches/norm-split.patch 2>/dev/null ||
  git apply tests/bench/ab_patches/norm-split.patch || echo "norm-split.patch does not apply"
build_ext 10
wait $MODELS_PID; cat /tmp/models.txt
echo "## the steps with parts of the fused norm off (1 all, 128 statistics, 256 normalize loop, 512 mean pass, 384 both)"
for f in gpt2-1.5b-F16 gpt2-124m-F16 llama-1b-F16 gpt-oss-20b-MXFP4; do
  NORM_SPLIT="0 1 128 256 512 384" ROUNDS=3 $T 70 python3 tests/bench/explore_decode_step.py "$M/$f.gguf" | sed "s/^/$f /"
done
echo "call: $(( $(date +%s) - t0 )) s after the wheels"

#!/usr/bin/env bash
# One GPU-machine call for what still waits after session 32 (main's tree, one build; step 1c
# applies tests/bench/ab_patches/gemv-chain.patch on the GPU machine):
#   1. OP=gelu tests/ops/explore_elementwise.py: the tanh GELU's launch shapes against torch. On an
#      H100 it decides GT-013's launch shape (gelu_tanh 0.99x torch there, gate1's one missed bar);
#      on the H200 (session 32) 256 x 1 led today's 256 x 4 by 2.2% in one timing, and the bar is met.
#   1b. gpt-oss-20b's graph step kernel by kernel IN the graph (explore_decode_step.py's profiler
#      mode, any card): which of the QKV's ~20 us alone (ncu, session 32) survive the PDL overlap.
#   1c. tests/bench/explore_gemv_chain.py (any card; added by tests/bench/ab_patches/gemv-chain.patch,
#      applied on the GPU machine only: a code file added under tests/ stales the GPU evidence of
#      every story that records a helper module there, gates/verdict.py `added`, and gate1 and gate2
#      are enforced): a chain of the GPT-2 step's products in ONE
#      persistent kernel (a loader warp streaming weights ahead across dependencies, consumers
#      waiting on per-product counters; gemv_chain.cu) against the engine's one launch per product
#      in a graph: the first measurement of the decode megakernel's premise (docs/kernels/decode.md,
#      "Why the remaining gap").
#   2. On an H200 only: the dense GEMV's v19 / v20 candidates (ext.linear_ring_force 4 / 5 / 8 and
#      their sums 12 / 13, off by default), never A/B'd on that card. Two H100 runs put them under
#      1% (session 29: 20b step -1.2% under 13; session 32: +0.1%, end to end +0.4%). The 20b graph
#      step under each rule, the 20b end to end under 0 / 13 / 8, the dense models' steps.
#      compute-sanitizer on those rules is tests/bench/memcheck_decode.sh (read its header first:
#      the profiler-based tests cannot run under it).
# Repo root, .whl carried:   OUT=$OUT timeout 590 bash tests/bench/pending_ab_call.sh
# A rule that wins the 20b step by more than ~1% end to end on the H200, with no loss over 0.5% on
# a dense model, becomes the default (csrc/linear.cu's g_linear_ring_mode), then the evidence calls.
# gate1 and gate2 are enforced in CI since session 32: a change under csrc/ lands only together with
# GPU evidence of its own commit (docs/harness.md, CI).
# Session 33 ran steps 1, 1b and 1c on an H100 (docs/kernels/runs/20261205-s33-device-calls.log):
# 256 x 1 moved into elementwise.cuh (commit 037576d); the in-graph profile only bounds the PDL
# overlap; the chain's premise refuted there (docs/kernels/decode.md). This script now runs the
# chain (step 1 below, any card; the H200 is the card the issues name), the dense steps with each
# fused piece off (step 1b, tests/bench/ab_patches/step-pieces.patch, any card) and, on an H200
# only, the ring A/B (steps 2-4), which has still not run there. The numbered steps above are
# session 32's.
set -o pipefail
export SHAPES="gpt-oss-20b:MXFP4 gpt2-124m gpt2-1.5b llama-1b"
. tests/bench/gpu_env.sh pending-ab-call.log
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
T="timeout -s INT -k 10"
(bash tests/bench/gen_models.sh > /tmp/models.txt 2>&1) &
MODELS_PID=$!
# step-pieces.patch (exploration hooks, off unless set: step 5) goes in before the one build; a
# later evidence call on this machine then rebuilds linear.cu and bindings.cpp from main's tree
git apply --reverse --check tests/bench/ab_patches/step-pieces.patch 2>/dev/null ||
  git apply tests/bench/ab_patches/step-pieces.patch || echo "step-pieces.patch does not apply"
build_ext 10
wait $MODELS_PID; cat /tmp/models.txt
echo "## 1. the persistent GEMV chain on this card (tests/bench/gemv_chain.cu; session 33 on an H100:"
echo "##    0.85-0.99x the per-launch graph, waits off 13-20% ahead; docs/kernels/decode.md)"
git apply --reverse --check tests/bench/ab_patches/gemv-chain.patch 2>/dev/null ||
  git apply tests/bench/ab_patches/gemv-chain.patch || echo "gemv-chain.patch does not apply"
CHAINS="gpt2-1.5b updown-1.5b gpt2-124m" CONFIGS="8x25600 4x51200" $T 120 python3 tests/bench/explore_gemv_chain.py
echo "## 1b. the dense steps with their fused pieces off in turn (step-pieces.patch; wrong results, timing"
echo "##     only): 1 norm, 2 bias, 4 GELU, 8 residual, 16 the attention launch; docs/kernels/decode.md"
echo "##     puts ~15 us a layer of the 1.5B step beyond its products' stream (session 33, H100s)"
for f in gpt2-1.5b-F16 gpt2-124m-F16 llama-1b-F16; do
  STEP_SKIP="0 1 2 4 8 16 15 31" ROUNDS=3 $T 90 python3 tests/bench/explore_decode_step.py "$M/$f.gguf" | sed "s/^/$f /"
done
nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 || { echo "not an H200: the ring A/B is for the H200"; exit 0; }

echo "## 2. gpt-oss-20b graph step under each ring rule"
GEMV_RING="0 5 8 13 4 12 3" ROUNDS=${ROUNDS:-3} $T 120 python3 tests/bench/explore_decode_step.py \
  "$M/gpt-oss-20b-MXFP4.gguf"

echo "## 3. gpt-oss-20b end to end"
HOOK=linear_ring_force SETTINGS="0 13 8" $T 100 python3 tests/bench/e2e_hook_ab.py "$M/gpt-oss-20b-MXFP4.gguf"

echo "## 4. the dense models' steps"
for f in gpt2-1.5b-F16 llama-1b-F16 gpt2-124m-F16; do
  GEMV_RING="0 8 4 12" ROUNDS=3 $T 60 python3 tests/bench/explore_decode_step.py "$M/$f.gguf" | sed "s/^/$f /"
done

echo "call: $(( $(date +%s) - t0 )) s after the wheels"

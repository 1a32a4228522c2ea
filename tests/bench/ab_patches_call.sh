#!/usr/bin/env bash
# One cold GPU-machine call for the patches in tests/bench/ab_patches written in session 24, applied
# in order: build-split-by-type (the dense and packed GEMV instantiations compiled one weight type
# per file, so the build's longest file is ~1 min instead of ~185 s: the build time printed below
# is its measurement; no kernel's source changes: the PTX of all 90 packed kernels and of 55 of the
# 60 dense ones is identical, the other 5, M = 8 / 16 with bf16, are scheduled differently; the
# linear tests below check them), attn-group-tile-by-grid (decode attention v5,
# docs/kernels/attention.md: query heads per block halved while a short sequence's grid has fewer
# than 32 blocks; gpt-oss 8 -> 2), gemv-ring-rule-hook (ext.linear_ring_force: which kernel
# gpt-oss's QKV and head take, to A/B in the PDL step; the default is unchanged) and comment-mends
# (moe.cu's routing-v4 comment and a test docstring rewrapped: hashed sources, so they wait for
# the csrc change that needs new evidence anyway). Then: the build (its objects come back,
# EXT_SAVE), the decode-attention, sink, linear and gpt-oss CUDA tests, each tile alone
# (explore_decode.py tiles) and in the model's own step (ATTN_TILES A/B on the gpt-oss, Llama-1b
# and SmolLM2 files; GEMV_RING on gpt-oss's), `gpt-engine bench` tg128 on the 20b file. ~420 s
# cold with the split build (~570 s without).
# Repo root, .whl carried:
#   OUT=$OUT timeout 595 bash tests/bench/ab_patches_call.sh
# If kept: apply the patches here, commit, and run gpu_session.sh ops / rest warm with the commit's
# full sha written out (the device copy's git HEAD is not this machine's: session 24's first
# evidence call recorded the wrong commit through `git rev-parse HEAD` there; CI's evidence audit
# rejects such a run, so it only costs the call).
set -o pipefail
for p in build-split-by-type attn-group-tile-by-grid gemv-ring-rule-hook comment-mends; do
  f=tests/bench/ab_patches/$p.patch
  if command -v git >/dev/null; then git apply "$f"; else patch -p1 -s --dry-run < "$f" && patch -p1 -s < "$f"; fi \
    || { echo "patch $p does not apply"; exit 1; }
done
export SHAPES="gpt-oss-20b:MXFP4 llama-1b smollm2-135m"
. tests/bench/gpu_env.sh attn-call.log
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
(bash tests/bench/gen_models.sh > /tmp/models.txt 2>&1) &
MODELS_PID=$!
build_ext 10
bash tests/bench/ext_cache.sh save
T="timeout -s INT -k 10"
$T 200 python3 -m pytest -p gates.pytest_plugin --no-evidence -q -rf -m cuda --tb=short \
  tests/ops/test_attention_decode.py tests/ops/test_attention_sinks.py tests/ops/test_linear.py \
  tests/ops/test_linear_q.py tests/ops/test_linear_qkv.py tests/test_model_gpt_oss_cuda.py -k "not bandwidth" \
  > /tmp/t.txt 2>&1  # (the GEMV benchmarks run in the evidence call)
echo "tests exit $?"; grep -vE "^\.|^$" /tmp/t.txt | tail -30
$T 90 python3 tests/ops/explore_decode.py tiles
wait $MODELS_PID; cat /tmp/models.txt
GEMV_RING="0 1 2" ATTN_TILES="0 8 4 1" ROUNDS=5 $T 100 python3 tests/bench/explore_decode_step.py \
  "$M/gpt-oss-20b-MXFP4.gguf" | sed "s/^/gpt-oss-20b /"
for f in llama-1b-F16 smollm2-135m-F16; do
  ATTN_TILES="0 8 4 1" ROUNDS=5 $T 80 python3 tests/bench/explore_decode_step.py "$M/$f.gguf" | sed "s/^/$f /"
done
$T 60 python3 -m gpt_engine.cli bench "$M/gpt-oss-20b-MXFP4.gguf" --device cuda -p 0 -n 128 -r 3 2>&1 | grep -vE "^bench: "
echo "call: $(( $(date +%s) - t0 )) s after the wheels"

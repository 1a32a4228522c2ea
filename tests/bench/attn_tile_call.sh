#!/usr/bin/env bash
# One cold GPU-machine call for tests/bench/ab_patches/attn-group-tile-by-grid.patch (decode
# attention v5, docs/kernels/attention.md: query heads per block halved while a short
# sequence's grid has fewer than 32 blocks; gpt-oss 8 -> 2). Applies it, builds (its objects come
# back, EXT_SAVE), runs the decode-attention, sink and gpt-oss CUDA tests, each tile alone
# (explore_decode.py tiles) and each in the model's own step (ATTN_TILES A/B on the gpt-oss,
# Llama-1b and SmolLM2 files), then `gpt-engine bench` tg128 on the 20b file. ~500 s cold.
# Repo root, .whl carried:
#   OUT=$OUT timeout 595 bash tests/bench/attn_tile_call.sh
# If kept: apply the patch here, commit, and run gpu_session.sh ops / rest warm with the commit's
# full sha written out (the device copy's git HEAD is not this machine's: session 24's first
# evidence call recorded the wrong commit through `git rev-parse HEAD` there).
set -o pipefail
p=tests/bench/ab_patches/attn-group-tile-by-grid.patch
if command -v git >/dev/null; then git apply "$p"; else patch -p1 -s --dry-run < "$p" && patch -p1 -s < "$p"; fi \
  || { echo "patch does not apply"; exit 1; }
export SHAPES="gpt-oss-20b:MXFP4 llama-1b smollm2-135m"
. tests/bench/gpu_env.sh attn-call.log
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
(bash tests/bench/gen_models.sh > /tmp/models.txt 2>&1) &
MODELS_PID=$!
build_ext 10
bash tests/bench/ext_cache.sh save
T="timeout -s INT -k 10"
$T 150 python3 -m pytest -p gates.pytest_plugin --no-evidence -q -rf -m cuda --tb=short \
  tests/ops/test_attention_decode.py tests/ops/test_attention_sinks.py tests/test_model_gpt_oss_cuda.py > /tmp/t.txt 2>&1
echo "tests exit $?"; grep -vE "^\.|^$" /tmp/t.txt | tail -30
$T 90 python3 tests/ops/explore_decode.py tiles
wait $MODELS_PID; cat /tmp/models.txt
for f in gpt-oss-20b-MXFP4 llama-1b-F16 smollm2-135m-F16; do
  ATTN_TILES="0 8 4 1" ROUNDS=5 $T 80 python3 tests/bench/explore_decode_step.py "$M/$f.gguf" | sed "s/^/$f /"
done
$T 60 python3 -m gpt_engine.cli bench "$M/gpt-oss-20b-MXFP4.gguf" --device cuda -p 0 -n 128 -r 3 2>&1 | grep -vE "^bench: "
echo "call: $(( $(date +%s) - t0 )) s after the wheels"

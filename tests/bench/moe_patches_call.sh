#!/usr/bin/env bash
# One cold GPU-machine call for the three stacked MoE patches in tests/bench/ab_patches, written
# without device time (session 23) and applied here in order: moe-v8-ring-gate-up-24-row-down
# (experts v8), moe-route-v4-hold-push (routing v4), moe-one-quantizer (stage_codes on the packed
# GEMV's quantize8_v3). Then: the build (its objects come back for the evidence calls, EXT_SAVE),
# the MoE and gpt-oss CUDA tests, the expert kernels alone (explore_moe_decode.py: v3, v6.1, v7,
# v8), the 20b step A/B (experts v8 / v7, routing v4 / v3) and `gpt-engine bench` tg128 on the 20b
# file. ~470 s on a cold machine (session 22's call of the same shape: 459 s). Repo root, .whl
# carried:
#   OUT=$OUT timeout 595 bash tests/bench/moe_patches_call.sh
# If the patches are kept: apply them here, commit, and run gpu_session.sh ops / rest warm (same
# csrc, so the same build). Sanitizers (memcheck, racecheck) on the v8 / routing v4 tests then fit
# in front of the ops call: compute-sanitizer --tool racecheck python3 -m pytest ... -k "..."
set -o pipefail
apply() {  # git apply is all or nothing; patch(1) is checked first where git is missing
  if command -v git >/dev/null; then git apply "$1"; else patch -p1 -s --dry-run < "$1" && patch -p1 -s < "$1"; fi
}
for p in moe-v8-ring-gate-up-24-row-down moe-route-v4-hold-push moe-one-quantizer; do
  apply "tests/bench/ab_patches/$p.patch" || { echo "patch $p does not apply"; exit 1; }
done
export SHAPES=gpt-oss-20b:MXFP4
. tests/bench/gpu_env.sh moe-call.log
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
(bash tests/bench/gen_models.sh > /tmp/models.txt 2>&1) &
MODELS_PID=$!
t0=$(date +%s)
build_ext 10
bash tests/bench/ext_cache.sh save
T="timeout -s INT -k 10"
$T 130 python3 -m pytest -p gates.pytest_plugin --no-evidence -q -rf -m cuda --tb=short \
  tests/ops/test_moe.py tests/test_model_gpt_oss_cuda.py > /tmp/t.txt 2>&1
echo "tests exit $?"; grep -vE "^\.|^$" /tmp/t.txt | tail -30
$T 90 python3 tests/bench/explore_moe_decode.py
wait $MODELS_PID; cat /tmp/models.txt
MOE_VERSIONS="8 8r3 7r3" ROUNDS=5 $T 120 python3 tests/bench/explore_decode_step.py "$M/gpt-oss-20b-MXFP4.gguf"
$T 60 python3 -m gpt_engine.cli bench "$M/gpt-oss-20b-MXFP4.gguf" --device cuda -p 0 -n 128 -r 3 2>&1 | grep -vE "^bench: "
echo "call: $(( $(date +%s) - t0 )) s after the wheels"

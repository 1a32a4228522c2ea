#!/usr/bin/env bash
# One GPU-machine call for what still waits after session 34: the v22b A/B (main's tree plus
# tests/bench/ab_patches/step-pieces.patch applied on the GPU machine only: a code file added under
# tests/ or a csrc edit would stale the GPU evidence of gate1 and gate2, which CI enforces;
# docs/harness.md). Session 34 measured the pieces (bits 1-31) and v22 (bit 32) on an H100
# (docs/kernels/decode.md, "What the chain says about the rest of the 1.5B step"); v22b (bit 64:
# the dense GEMV copies its norm weight / bias into shared memory with cp.async after its first
# weight loads, before the PDL wait, and prefetches its first pair's bias lines into L1) was
# written after that call and has not run:
#   1b. the graph steps of GPT-2 1.5B, gpt-oss-20b, GPT-2 124M and Llama ~1B under 0 / 64 / 32 / 1
#      (1 = the norm off: the most v22b could save);
#   1c. the dense GEMV tests (tests/ops/test_linear.py) with v22b forced on in-process, then the
#      same greedy ids under 0 / 64 / 32 (124M, Llama ~1B, gpt-oss-20b: the ring kernel's stash);
#   1d. tg128 through the public API, 0 against 64, alternated (1.5B, 124M, gpt-oss-20b).
#   QUICK=1: 1b for the 1.5B and 124M only (a call with little device time left).
# Repo root, .whl carried:   OUT=$OUT timeout 590 bash tests/bench/pending_ab_call.sh
# tests/bench/ab_patches/v22b-land.patch is v22b as main would carry it: on by default, with a
# test/bench hook (ext.linear_consts_early_force 1 / 0, CONSTS_EARLY="1 0" in explore_decode_step.py)
# and test_gemv_norm_copy_same_bits (tests/ops/test_linear.py: the same bits either way, v3 and the
# ring kernel, aligned and unaligned norm vectors). With little device time, a shorter road than
# this script: `git apply` it at the repository root, commit, evidence_preflight.py, then one cold
# call `gpu_session.sh heavy` followed in the same command by the step A/B
# (CONSTS_EARLY="1 0" ROUNDS=3 explore_decode_step.py on the 1.5B and 124M files, which heavy writes),
# and one warm call `gpu_session.sh light` followed by `HOOK=linear_consts_early_force SETTINGS="1 0"
# e2e_hook_ab.py` on the 1.5B, 124M and gpt-oss files. If any step is slower by more than 0.5% with
# it on, revert the commit: main's earlier evidence then matches the tree again.
# step-pieces.patch edits csrc, so an evidence call on the same warm machine as this script
# rebuilds from the committed tree first.
# (The H200-only ring A/B of v19 / v20, GEMV_RING="0 5 8 13 4 12 3" explore_decode_step.py on the
# 20b file, is left out for device time; two H100 runs put it under 1%. The persistent chain,
# gemv-chain.patch, is out: refuted on an H100, docs/kernels/decode.md.)
set -o pipefail
# QUICK=1 (a call with little device time left): the 1.5B and 124M steps under 0 / 64 / 1 only
if [ "${QUICK:-0}" = 1 ]; then export SHAPES="gpt2-124m gpt2-1.5b"; else export SHAPES="gpt-oss-20b:MXFP4 gpt2-124m gpt2-1.5b llama-1b"; fi
. tests/bench/gpu_env.sh pending-ab-call.log
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
T="timeout -s INT -k 10"
(bash tests/bench/gen_models.sh > /tmp/models.txt 2>&1) &
MODELS_PID=$!
# step-pieces.patch (exploration hooks, off unless STEP_SKIP sets them: step 1b) goes in before the one build
git apply --reverse --check tests/bench/ab_patches/step-pieces.patch 2>/dev/null ||
  git apply tests/bench/ab_patches/step-pieces.patch || echo "step-pieces.patch does not apply"
build_ext 10
wait $MODELS_PID; cat /tmp/models.txt
echo "## 1b. the steps: v22b (64), v22 (32), and the norm off (1)"
if [ "${QUICK:-0}" = 1 ]; then STEPS="gpt2-1.5b-F16 gpt2-124m-F16" SKIPS="0 64 1"
else STEPS="gpt2-1.5b-F16 gpt-oss-20b-MXFP4 gpt2-124m-F16 llama-1b-F16" SKIPS="0 64 32 1"; fi
for f in $STEPS; do
  STEP_SKIP="$SKIPS" ROUNDS=3 $T 70 python3 tests/bench/explore_decode_step.py "$M/$f.gguf" | sed "s/^/$f /"
done
[ "${QUICK:-0}" = 1 ] && exit 0
echo "## 1c. v22b (bit 64: the norm weight / bias copied to shared memory after the first weight loads, the"
echo "##     first pair's bias lines into L1): the dense GEMV tests with it forced on, then the same ids"
$T 150 python3 - <<'PY'
import pytest
from gpt_engine.ops import _ext
ext = _ext.load()
assert ext.linear_explore_skip(64) == 64
rc = pytest.main(["-q", "-x", "-p", "no:cacheprovider", "-p", "gates.pytest_plugin", "--no-evidence", "tests/ops/test_linear.py", "-k", "not bandwidth"])
print("dense GEMV tests with v22b forced on: exit", int(rc))
PY
$T 90 python3 - "$M/gpt2-124m-F16.gguf" "$M/llama-1b-F16.gguf" "$M/gpt-oss-20b-MXFP4.gguf" <<'PY'
import sys, gpt_engine
from gpt_engine.ops import _ext
ext = _ext.load()
for path in sys.argv[1:]:
    m = gpt_engine.load(path, device="cuda")
    outs = {}
    for mask in (0, 64, 32, 0):
        ext.linear_explore_skip(mask)
        m._decoders.clear()
        outs.setdefault(mask, []).append(m.generate(list(range(100, 132)), max_new_tokens=64, stop_at_eos=False).token_ids)
    ext.linear_explore_skip(0)
    print(path.rsplit("/", 1)[-1], "ids over 64 tokens equal to the default's: v22b", outs[64][0] == outs[0][0],
          "v22", outs[32][0] == outs[0][0], "default twice", outs[0][0] == outs[0][1])
PY
echo "## 1d. end to end through the public API, alternated: default (0), v22b (64)"
for f in gpt2-1.5b-F16 gpt2-124m-F16 gpt-oss-20b-MXFP4; do
  HOOK=linear_explore_skip SETTINGS="0 64" ROUNDS=3 $T 100 python3 tests/bench/e2e_hook_ab.py "$M/$f.gguf"
done
echo "call: $(( $(date +%s) - t0 )) s after the wheels"

#!/usr/bin/env bash
# One GPU-machine session for the decode path (repo root, on the GPU machine; .whl carried):
#   quick:   build, the decode-path CUDA tests (TESTS=...), the decode-step exploration (EXPLORE=1),
#            `gpt-engine bench` on each F16 shape (BENCH=0 skips it)
#   ops:     build, `python -m gates.gpu tests/ops` (the kernels: evidence + log), models written
#   rest:    `python -m gates.gpu tests --ignore=tests/ops` (models, decode loop, end-to-end benchmarks)
# For ops/rest export GPT_ENGINE_GIT_COMMIT=<the full sha of the commit being run> first, written
# out: `git rev-parse HEAD` on the GPU machine named an older commit than the tree it ran (session
# 24; `python -m gates evidence` rejects such a run: its file hashes are not that commit's). Call
# from a clean tree: since session 26 the audit compares the run's whole source tree with the
# commit's, so an uncommitted edit or an untracked file anywhere sources live (docs and notes
# included; dot-folders, build/ and ignored files are not sources) makes the run not count. No
# GPT_ENGINE_* / GPTE_* setting may be exported for ops/rest either (gates/audit.py ENGINE_ENV_OK
# lists the harness's own, which gpu_env.sh sets). Check here first, at the commit the call names:
# `python tests/bench/evidence_preflight.py` (exit 0: nothing in the tree would be refused).
# The built extension comes back as $OUT/ext-<hash>.tgz.part-*; copied into .extcache/ and
# carried, it spares the next cold machine the ~4-minute build (tests/bench/ext_cache.sh).
# Everything printed goes to $OUT/session.log too; bench results to $OUT/bench.json.
# Benchmark models are written once into $GPT_ENGINE_BENCH_MODELS (kept while the machine is warm).
# Time: tests/ops took 200-263 s in sessions 19-24 and 321 s in session 26 (1,333 tests); rest
# 182-264 s. Keep GATES_TIMEOUT at the defaults (420 / 540) or above: session 26's 330 s cut the
# ops run as its log was being written. GATES_TIMEOUT is the gates run's own limit, and `timeout` puts that run in a process group
# of its own, so an outer `timeout` around this script that fires first kills the script but NOT
# the gates run, which then competes with the next call's (session 21 lost two evidence calls so).
# Keep the outer limit above the build + GATES_TIMEOUT. A build seeded from .extcache is ~30 s when
# csrc is unchanged, ~100-180 s for one changed .cu file, ~290 s when a header many files include
# changed (quant_blocks.cuh, linear_common.cuh): then build first in a call of its own
# (`TESTS=... BENCH=0 bash tests/bench/gpu_session.sh quick`, EXT_SAVE=1) and run ops/rest warm.
# Test runs get SIGINT at their limit (timeout -s INT, then KILL 20 s later): pytest then stops
# and still prints its summary of what ran; a plain timeout's SIGTERM left no verdict at all
# (session 21, a 150 s limit on six test files).
set -o pipefail
MODE=${1:-quick}
. tests/bench/gpu_env.sh session.log
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
# (GPT_ENGINE_O200K_FILE, the gpt-oss vocabulary: gpu_env.sh)
# shape[:type] (type F16 when absent); every model the benchmarks load, written while the extension builds
SHAPES=${SHAPES:-gpt2-124m gpt2-1.5b smollm2-135m llama-1b}
(SHAPES="$SHAPES" bash tests/bench/gen_models.sh > /tmp/models.txt 2>&1) &
MODELS_PID=$!
t0=$(date +%s)  # the build's time, not the wheels' and the models' start
build_ext 20  # a cold machine reuses an earlier one's objects with the same csrc (.extcache carried)
# EXT_SAVE=0: do not send the built objects back ($OUT/ext-<hash>.tgz.part-*: ext_cache.sh)
[ "${EXT_SAVE:-1}" = 1 ] && bash tests/bench/ext_cache.sh save
if [ "$MODE" = quick ]; then
  timeout -s INT -k 20 ${TEST_TIMEOUT:-300} python3 -m pytest -p gates.pytest_plugin --no-evidence -q -rf -m cuda --tb=short \
    ${TESTS:-tests/ops/test_linear.py tests/ops/test_linear_qkv.py tests/ops/test_qkv_rope.py tests/ops/test_sample_greedy.py tests/ops/test_opcheck.py \
    tests/test_sampling.py tests/test_cuda_graph.py tests/test_model_cuda.py tests/ops/test_gpt2_block.py} \
    > /tmp/quick-tests.txt 2>&1
  echo "tests exit $?"; grep -vE "^\.|^$" /tmp/quick-tests.txt | tail -150
elif [ "$MODE" = ops ]; then
  timeout ${GATES_TIMEOUT:-420} python3 -m gates.gpu tests/ops > /tmp/gates.txt 2>&1; echo "gates.gpu exit $?"
  grep -E "^(FAILED|ERROR)" /tmp/gates.txt | head -30; cat "$OUT/gpu-summary.txt"
  wait $MODELS_PID; cat /tmp/models.txt
  exit 0
else
  wait $MODELS_PID; cat /tmp/models.txt
  timeout ${GATES_TIMEOUT:-540} python3 -m gates.gpu tests --ignore=tests/ops > /tmp/gates.txt 2>&1; echo "gates.gpu exit $?"
  grep -E "^(FAILED|ERROR)" /tmp/gates.txt | head -30; cat "$OUT/gpu-summary.txt"
  # CLI_BENCH=1: `gpt-engine bench` on the 124M file in the same run, beside the end-to-end test's
  # figure (the two use the same timing code, bench.time_decode)
  [ -n "$CLI_BENCH" ] && timeout 60 python3 -m gpt_engine.cli bench "$GPT_ENGINE_BENCH_MODELS/gpt2-124m-F16.gguf" \
    --device cuda -r 5 2>&1 | grep -vE "^bench: "
  exit 0
fi
wait $MODELS_PID; cat /tmp/models.txt
if [ -n "$EXPLORE" ]; then
  timeout 200 python3 tests/bench/explore_decode_step.py $M/gpt2-124m-F16.gguf $M/gpt2-1.5b-F16.gguf $M/llama-1b-F16.gguf
fi
[ "${BENCH:-1}" = 0 ] && exit 0  # BENCH=0: tests (and exploration) only
mkdir -p /tmp/bench
for s in $SHAPES; do
  s=${s%%:*}  # the quick bench reads the F16 files
  timeout 120 python3 -m gpt_engine.cli bench "$M/$s-F16.gguf" --device cuda -r ${REPS:-3} --json \
    > "/tmp/bench/$s.json" 2> "/tmp/bench/$s.err" || tail -3 "/tmp/bench/$s.err"
done
python3 - <<'PY'
import json, glob, os
from gpt_engine import bench
out = {}
for f in sorted(glob.glob("/tmp/bench/*.json")):
    try:
        r = json.load(open(f)); out[r["model"]] = r
        print(bench.format_table(r).split("\n\n")[0].split("\n", 2)[-1])
    except Exception as e:
        print(f, "no result:", e)
json.dump(out, open(os.environ["OUT"] + "/bench.json", "w"), indent=1)
PY

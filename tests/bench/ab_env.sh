#!/usr/bin/env bash
# One GPU call that A/Bs a decode-path switch read from the environment (exploration, not
# evidence): build, the CUDA tests in TESTS, then per model in MODELS (shape-type names of
# benchmodels files) the graph-captured step (tests/bench/explore_decode_step.py) and, for the
# models in E2E, `gpt-engine bench` tg128 through the public API, each with AB_VAR unset (the
# default) and with AB_VAR=$AB_OFF, alternated, same run. Used for the short-sequence attention
# graph (AB_VAR=GPT_ENGINE_ATTN_SHORT_KEYS, docs/kernels/decode.md v10) and the one-launch decode
# layers (AB_VAR=GPT_ENGINE_DECODE_LAYERS on branch decode-layers-v1, v12). Repo root on the GPU machine, .whl carried;
# everything printed goes to $OUT/ab.log.
set -o pipefail
. tests/bench/gpu_env.sh ab.log
AB_VAR=${AB_VAR:-GPT_ENGINE_ATTN_SHORT_KEYS}
AB_OFF=${AB_OFF:-0}
build_ext
MODELS=${MODELS-gpt2-124m-F16 gpt2-1.5b-F16 llama-1b-F16 gpt2-1.5b-Q8_0 gpt2-1.5b-MXFP4 gpt-oss-20b-MXFP4}
E2E=${E2E:-}
TESTS=${TESTS-tests/ops/test_attention_decode.py tests/ops/test_attention_sinks.py tests/test_cuda_graph.py tests/ops/test_gpt2_block.py}
(python3 -c "
import sys
from gpt_engine import benchmodels as b
for s in sys.argv[1:]:
    shape, q = s.rsplit('-', 1); print(b.ensure('$M', shape, q))
" $MODELS > /tmp/ab-models.txt 2>&1) &
MODELS_PID=$!
[ -n "$TESTS" ] && timeout -s INT -k 20 ${TEST_TIMEOUT:-240} python3 -m pytest -p gates.pytest_plugin --no-evidence -p no:cacheprovider -q -m cuda --tb=short -rf \
  $TESTS -k "not bandwidth and not benchmark" 2>&1 | grep -vE "^\.|^$|^SKIPPED" | tail -40
echo "tests: $(( $(date +%s) - t0 )) s"
if [ -n "${SAN:-}" ]; then  # pytest arguments to run under compute-sanitizer memcheck
  t1=$(date +%s)
  timeout ${SAN_TIMEOUT:-150} compute-sanitizer --tool memcheck --error-exitcode 9 --log-file "$OUT/memcheck.txt" \
    python3 -m pytest -p gates.pytest_plugin --no-evidence -p no:cacheprovider -q $SAN 2>&1 | tail -3
  echo "compute-sanitizer memcheck exit: $? ($(( $(date +%s) - t1 )) s)"; tail -3 "$OUT/memcheck.txt"
fi
wait $MODELS_PID; cat /tmp/ab-models.txt
for f in $MODELS; do
  for v in "" "$AB_OFF"; do
    echo "== step $f $AB_VAR=${v:-default}"
    env $([ -n "$v" ] && echo "$AB_VAR=$v") timeout 90 python3 tests/bench/explore_decode_step.py "$M/$f.gguf" 2>&1 \
      | grep -E "graph step|attention|decode_|kernel time" | head -8
  done
done
# tg128 of model file $1 through `gpt-engine bench` after a $2-token prefill (0: none); the
# environment it runs in is the caller's
tg128() {
  timeout 120 python3 -m gpt_engine.cli bench "$M/$1.gguf" -p "$2" -n 128 -r 3 --device cuda 2>&1 \
    | grep -E "tg128" | grep -v "^bench:" | head -2
}
for f in $E2E; do
  for v in "" "$AB_OFF" "" "$AB_OFF"; do
    echo "== bench $f $AB_VAR=${v:-default}"
    if [ -n "$v" ]; then (export "$AB_VAR=$v"; tg128 "$f" 0); else tg128 "$f" 0; fi
  done
done
# PREFILL_AB=1: the same code through `gpt-engine bench` with and without a 512-token prefill
# timed before the decode (-p 512 / -p 0, alternated), for the files in E2E: the end-to-end test
# times pp512 first, the A/B above runs -p 0
if [ -n "${PREFILL_AB:-}" ]; then
  for f in $E2E; do
    for pp in 0 512 0 512; do
      echo "== bench $f -p $pp"
      tg128 "$f" "$pp"
    done
  done
fi
echo "total: $(( $(date +%s) - t0 )) s"

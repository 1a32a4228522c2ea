#!/usr/bin/env bash
# The next GPU session's A/Bs for branch onecopy, each measured in one run (repo root on the GPU
# machine, .whl carried; everything printed goes to $OUT/ab.log). Exploration, not evidence.
#   explore (~8 min cold, ~5 warm): build, then
#     1. reserved memory in GT-044's request, weights stacked on the host (default) vs on the GPU
#        (GPTE_AB_STACK_ON_GPU=1, as on main): tests/bench/explore_memory_reserved.py;
#     2. the short attention graph on vs off (GPT_ENGINE_ATTN_SHORT_KEYS=0) on the files where main's
#        evidence lost speed against the run before (1.5B MXFP4 and Q8_0, gpt-oss-20b);
#     3. the one readback copy per step (default) vs two (GPTE_AB_TWO_COPIES=1): `gpt-engine bench`
#        tg128 of GPT-2 124M F16, alternating A B A B.
#   tests (~3 min warm): the CUDA tests of what the branch touches, under the harness plugin.
# Back to back on a warm machine (it is released after 30 s idle) the build is reused.
set -o pipefail
MODE=${1:-explore}
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
exec > >(tee -a "$OUT/ab.log") 2>&1
export PYTHONUNBUFFERED=1
export GPT_ENGINE_BENCH_MODELS=${GPT_ENGINE_BENCH_MODELS:-/tmp/gpt-engine-bench-models}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD
[ -f .whl/o200k_base.tiktoken.gz ] && export GPT_ENGINE_O200K_FILE=$PWD/.whl/o200k_base.tiktoken.gz
M=$GPT_ENGINE_BENCH_MODELS
t0=$(date +%s)
python3 -c "from gpt_engine.ops import _ext; _ext.load(); print('extension built')" 2>&1 | tail -2
echo "build: $(( $(date +%s) - t0 )) s"
if [ "$MODE" = tests ]; then
  timeout ${TEST_TIMEOUT:-300} python3 -m pytest -p gates.pytest_plugin --no-evidence -p no:cacheprovider -q -m cuda \
    --tb=short -rf tests/test_weight_loading_cuda.py tests/test_memory_budget_cuda.py tests/test_cuda_graph.py \
    tests/test_model_cuda.py tests/test_model_gpt_oss_cuda.py -s 2>&1 | grep -vE "^\.|^$|^SKIPPED" | tail -40
  echo "total: $(( $(date +%s) - t0 )) s"; exit 0
fi
MODELS="llama-1b-Q8_0 gpt2-1.5b-MXFP4 gpt2-124m-F16 gpt2-1.5b-Q8_0 gpt-oss-20b-MXFP4"
python3 -c "
import sys
from gpt_engine import benchmodels as b
for s in sys.argv[1:]:
    shape, q = s.rsplit('-', 1); print(b.ensure('$M', shape, q), flush=True)
" $MODELS > /tmp/ab-models.txt 2>&1 &
MODELS_PID=$!
wait_for() { until grep -q "$1" /tmp/ab-models.txt 2>/dev/null || ! kill -0 $MODELS_PID 2>/dev/null; do sleep 2; done; }
wait_for llama-1b-Q8_0; wait_for gpt2-1.5b-MXFP4
for f in llama-1b-Q8_0 gpt2-1.5b-MXFP4; do
  for s in "" 1; do
    echo "== reserved $f GPTE_AB_STACK_ON_GPU=${s:-unset}"
    GPTE_AB_STACK_ON_GPU=$s timeout 90 python3 tests/bench/explore_memory_reserved.py "$M/$f.gguf" 2>&1 | tail -12
  done
done
wait_for gpt2-124m-F16
for rep in 1 2; do
  for c in "" 1; do
    echo "== bench gpt2-124m-F16 GPTE_AB_TWO_COPIES=${c:-unset} (round $rep)"
    GPTE_AB_TWO_COPIES=$c timeout 90 python3 -m gpt_engine.cli bench "$M/gpt2-124m-F16.gguf" --device cuda -r 5 2>&1 | grep -E "tg128|pp512|host"
  done
done
wait $MODELS_PID; cat /tmp/ab-models.txt
for f in gpt2-1.5b-MXFP4 gpt2-1.5b-Q8_0 gpt-oss-20b-MXFP4; do
  for sk in "" 0; do
    echo "== step $f GPT_ENGINE_ATTN_SHORT_KEYS=${sk:-default}"
    GPT_ENGINE_ATTN_SHORT_KEYS=$sk timeout 120 python3 tests/bench/explore_decode_step.py "$M/$f.gguf" 2>&1 \
      | grep -E "graph step|attention|decode_|kernel time" | head -8
  done
done
echo "total: $(( $(date +%s) - t0 )) s"

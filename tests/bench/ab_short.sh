#!/usr/bin/env bash
# One GPU call for the one-split short-sequence attention (docs/kernels/decode.md, v10): build,
# the CUDA tests it touches, then the graph step of each model in MODELS (shape-type names of
# benchmodels files) with the short graph (default) and without it (GPT_ENGINE_ATTN_SHORT_KEYS=0),
# same run. Exploration, not evidence. Repo root on the GPU machine, .whl carried; everything printed goes to $OUT/ab.log.
set -o pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
exec > >(tee -a "$OUT/ab.log") 2>&1
export PYTHONUNBUFFERED=1
export GPT_ENGINE_BENCH_MODELS=${GPT_ENGINE_BENCH_MODELS:-/tmp/gpt-engine-bench-models}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >/dev/null 2>&1 || exit 1
export PYTHONPATH=/tmp/site:$PWD
M=$GPT_ENGINE_BENCH_MODELS
t0=$(date +%s)
python3 -c "from gpt_engine.ops import _ext; _ext.load(); print('extension built')" 2>&1 | tail -3
echo "build: $(( $(date +%s) - t0 )) s"
MODELS=${MODELS:-gpt2-124m-F16 gpt2-1.5b-F16 llama-1b-F16 gpt2-1.5b-Q8_0 gpt2-1.5b-MXFP4 gpt-oss-20b-MXFP4}
(python3 -c "
import sys
from gpt_engine import benchmodels as b
for s in sys.argv[1:]:
    shape, q = s.rsplit('-', 1); print(b.ensure('$M', shape, q))
" $MODELS > /tmp/ab-models.txt 2>&1) &
MODELS_PID=$!
timeout ${TEST_TIMEOUT:-240} python3 -m pytest -p gates.pytest_plugin --no-evidence -p no:cacheprovider -q -m cuda --tb=short -rf \
  tests/ops/test_attention_decode.py tests/ops/test_attention_sinks.py tests/test_cuda_graph.py tests/ops/test_gpt2_block.py \
  -k "not bandwidth and not benchmark" 2>&1 | grep -vE "^\.|^$|^SKIPPED" | tail -40
echo "tests: $(( $(date +%s) - t0 )) s"
wait $MODELS_PID; cat /tmp/ab-models.txt
for f in $MODELS; do
  for sk in "" 0; do
    echo "== step $f GPT_ENGINE_ATTN_SHORT_KEYS=${sk:-default}"
    GPT_ENGINE_ATTN_SHORT_KEYS=$sk timeout 90 python3 tests/bench/explore_decode_step.py "$M/$f.gguf" 2>&1 \
      | grep -E "graph step|attention|decode_|kernel time" | head -8
  done
done
echo "total: $(( $(date +%s) - t0 )) s"

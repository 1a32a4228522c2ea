#!/usr/bin/env bash
# One GPU-machine session for the decode path (repo root, on the GPU machine; .whl carried):
#   quick: build, the decode-path CUDA tests, `gpt-engine bench` on the four F16 shapes
#   final: build, `python -m gates.gpu` (every CUDA test and benchmark, evidence + log), bench table
# Benchmark models are written once into $GPT_ENGINE_BENCH_MODELS (kept while the machine is warm).
set -o pipefail
MODE=${1:-quick}
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export GPT_ENGINE_BENCH_MODELS=${GPT_ENGINE_BENCH_MODELS:-/tmp/gpt-engine-bench-models}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
SHAPES=${SHAPES:-gpt2-124m gpt2-1.5b smollm2-135m llama-1b}
(python3 -c "
import sys, time
from gpt_engine import benchmodels as b
for s in sys.argv[1:]:
    t = time.time(); p = b.ensure('$GPT_ENGINE_BENCH_MODELS', s, 'F16'); print(p, round(time.time() - t, 1), 's')
" $SHAPES > "$OUT/models.txt" 2>&1) &
MODELS_PID=$!
t0=$(date +%s)
python3 -c "from gpt_engine.ops import _ext; _ext.load(); print('extension built')" > "$OUT/build.txt" 2>&1
tail -5 "$OUT/build.txt"; echo "build: $(( $(date +%s) - t0 )) s"
if [ "$MODE" = quick ]; then
  timeout ${TEST_TIMEOUT:-300} python3 -m pytest -p gates.pytest_plugin --no-evidence -q -rf -m cuda \
    ${TESTS:-tests/ops/test_linear.py tests/ops/test_qkv_rope.py tests/ops/test_sample_greedy.py tests/ops/test_opcheck.py \
    tests/test_sampling.py tests/test_cuda_graph.py tests/test_model_cuda.py tests/ops/test_gpt2_block.py} \
    > "$OUT/quick-tests.txt" 2>&1
  echo "tests exit $?"; grep -E "passed|failed|FAILED|Error" "$OUT/quick-tests.txt" | tail -40
else
  timeout ${GATES_TIMEOUT:-480} python3 -m gates.gpu 2>&1 | tail -15
fi
wait $MODELS_PID; cat "$OUT/models.txt"
for s in $SHAPES; do
  timeout 120 python3 -m gpt_engine.cli bench "$GPT_ENGINE_BENCH_MODELS/$s-F16.gguf" --device cuda -r ${REPS:-3} --json \
    > "$OUT/bench-$s.json" 2> "$OUT/bench-$s.err" || tail -3 "$OUT/bench-$s.err"
done
python3 - <<'EOF'
import json, glob, os
from gpt_engine import bench
for f in sorted(glob.glob(os.environ["OUT"] + "/bench-*.json")):
    try:
        print(bench.format_table(json.load(open(f))).split("\n\n")[0].split("\n", 2)[-1])
    except Exception as e:
        print(f, "no result:", e)
EOF

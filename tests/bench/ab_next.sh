#!/usr/bin/env bash
# One GPU call for the kernels waiting for a measurement (exploration, not evidence): build, their
# CUDA tests, then each A/B with both sides in this run. Repo root on the GPU machine, .whl carried;
# everything printed goes to $OUT/ab.log. PHASES picks the parts (default: all, in this order):
#   tests   the new kernels' CUDA tests
#   micro   argmax v1/v2, dequantize block shapes, packed GEMV staging v2/v3, MoE decode v3/v6,
#           MoE prefill (all experts on every token vs the grouped GEMM)
#   e2e     `gpt-engine bench` through the public API, each switch off and on
set -o pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
exec > >(tee -a "$OUT/ab.log") 2>&1
export PYTHONUNBUFFERED=1
export GPT_ENGINE_BENCH_MODELS=${GPT_ENGINE_BENCH_MODELS:-/tmp/gpt-engine-bench-models}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >/dev/null 2>&1 || exit 1
export PYTHONPATH=/tmp/site:$PWD
[ -f .whl/o200k_base.tiktoken.gz ] && export GPT_ENGINE_O200K_FILE=$PWD/.whl/o200k_base.tiktoken.gz
PHASES=${PHASES:-tests micro e2e}
M=$GPT_ENGINE_BENCH_MODELS
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
# ab VAR VALUE CMD...: CMD with VAR=VALUE, or with VAR unset when VALUE is empty (C++ getenv
# counts an empty value as set)
ab() {
  local var=$1 val=$2; shift 2
  stamp "== $var=${val:-unset}: $*"
  if [ -z "$val" ]; then env -u "$var" "$@"; else env "$var=$val" "$@"; fi
}
MODELS=${MODELS:-gpt2-124m:F16 gpt2-1.5b:Q8_0 gpt2-1.5b:MXFP4 gpt-oss-20b:MXFP4}
(python3 -c "
import sys, time
from gpt_engine import benchmodels as b
for s in sys.argv[1:]:
    shape, _, q = s.partition(':')
    t = time.time(); p = b.ensure('$M', shape, q or 'F16'); print(p, round(time.time() - t, 1), 's')
" $MODELS > /tmp/ab-models.txt 2>&1) &
MODELS_PID=$!
python3 -c "from gpt_engine.ops import _ext; _ext.load(); print('extension built')" 2>&1 | tail -3
stamp "build done"
has() { case " $PHASES " in *" $1 "*) return 0;; esac; return 1; }

if has tests; then
  timeout ${TEST_TIMEOUT:-240} python3 -m pytest -p gates.pytest_plugin --no-evidence -p no:cacheprovider -q -m cuda \
    --tb=short -rf -k "not bandwidth and not benchmark" ${TESTS:-tests/ops/test_sample_greedy.py tests/ops/test_dequant_shapes.py tests/ops/test_moe_grouped.py tests/ops/test_moe.py tests/ops/test_linear_q_stage.py tests/test_model_gpt_oss_cuda.py} 2>&1 \
    | grep -vE "^\.|^$|^SKIPPED" | tail -40
  stamp "tests done"
fi

if has micro; then
  ab GPTE_AB_MOE_V3 "" timeout 120 python3 tests/bench/explore_moe_decode.py
  ab GPT_ENGINE_MOE_GROUPED_GEMM "" timeout 150 python3 tests/bench/explore_moe_prefill.py 512
  ab GPTE_AB_ARGMAX_V1 "" timeout 80 python3 tests/bench/time_argmax.py --rounds 1
  for st in 2 ""; do
    ab GPTE_AB_GEMVQ_STAGE "$st" timeout 120 python3 tests/bench/explore_gemv.py --quant --types MXFP4,Q8_0,Q4_K \
      --shapes 1x1600x6400,1x6400x1600,1x4096x4096,1x2880x2880,1x1600x1600
  done
  for sh in "" 1 2 3; do
    ab GPTE_DEQUANT_SHAPE "$sh" timeout 60 python3 tests/bench/explore_dequant.py 2>&1 | grep -vE "done$|^$"
  done
  stamp "micro done"
fi

if has e2e; then
  wait $MODELS_PID; cat /tmp/ab-models.txt
  B="timeout 150 python3 -m gpt_engine.cli bench --device cuda"
  flt() { grep -vE "^bench: "; }
  G=$M/gpt-oss-20b-MXFP4.gguf
  # today's kernels, then the new ones: the 20b file's pp512 (grouped GEMM) and tg64 (MoE v6)
  stamp "== 20b: MoE v3, prefill all experts"
  env -u GPT_ENGINE_MOE_GROUPED_GEMM GPTE_AB_MOE_V3=1 $B $G -p 512 -n 64 -r 2 2>&1 | flt
  stamp "== 20b: MoE v6, grouped GEMM"
  env -u GPTE_AB_MOE_V3 GPT_ENGINE_MOE_GROUPED_GEMM=1 $B $G -p 512 -n 64 -r 2 2>&1 | flt
  for st in 2 ""; do
    for q in Q8_0 MXFP4; do ab GPTE_AB_GEMVQ_STAGE "$st" $B $M/gpt2-1.5b-$q.gguf -p 0 -n 128 -r 3 2>&1 | flt; done
  done
  for v in 1 ""; do ab GPTE_AB_ARGMAX_V1 "$v" $B $M/gpt2-124m-F16.gguf -p 0 -n 128 -r 5 2>&1 | flt; done
  stamp "== 124M with pp512 before tg (as the end-to-end test runs it)"
  $B $M/gpt2-124m-F16.gguf -p 512 -n 128 -r 5 2>&1 | flt
fi
stamp "total"

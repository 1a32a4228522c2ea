#!/usr/bin/env bash
# Session 6's same-run A/Bs (repo root on the GPU machine, .whl carried; output in $OUT/ab.log).
# Exploration, not evidence. Temporary switches (each removed after its measurement; the raw
# outputs are in docs/kernels/runs/20261202-s6-ab*.log): GPTE_AB_GEMV_OLD (v3/v6 instead of the
# split GEMV v11), GPTE_AB_TWO_COPIES, GPTE_AB_DEQUANT_V1 (explore_dequant.py --ab), GPTE_AB_MOE_V3.
#   bash tests/bench/ab_s6.sh gemv     GEMV alone + linear tests + decode steps + one copy + memory
#   bash tests/bench/ab_s6.sh kernels  MoE decode kernels v5 vs v3: tests, kernels alone, gpt-oss step
set -o pipefail
MODE=${1:-gemv}
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
exec > >(tee -a "$OUT/ab.log") 2>&1
export PYTHONUNBUFFERED=1
export GPT_ENGINE_BENCH_MODELS=${GPT_ENGINE_BENCH_MODELS:-/tmp/gpt-engine-bench-models}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD
[ -f .whl/o200k_base.tiktoken.gz ] && export GPT_ENGINE_O200K_FILE=$PWD/.whl/o200k_base.tiktoken.gz
M=$GPT_ENGINE_BENCH_MODELS
t0=$(date +%s)
el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
python3 -c "from gpt_engine.ops import _ext; _ext.load(); print('extension built')" 2>&1 | tail -2
el build done
if [ "$MODE" = gemv ]; then
  MODELS="gpt2-124m-F16 gpt2-1.5b-F16"
else
  MODELS="${AB_MODELS:-}"  # the gpt-oss-20b file (12 GB) only when the steps are asked for
fi
python3 -c "
import sys
from gpt_engine import benchmodels as b
for s in sys.argv[1:]:
    shape, q = s.rsplit('-', 1); print(b.ensure('$M', shape, q), flush=True)
" $MODELS > /tmp/ab-models.txt 2>&1 &
MODELS_PID=$!
wait_for() { until grep -q "$1" /tmp/ab-models.txt 2>/dev/null || ! kill -0 $MODELS_PID 2>/dev/null; do sleep 2; done; }
# a switch set to a value, or absent from the environment (an empty value would still be "set")
ab() { local k=$1 v=$2; shift 2; if [ -n "$v" ]; then env "$k=$v" "$@"; else env -u "$k" "$@"; fi; }
PYT="python3 -m pytest -p gates.pytest_plugin --no-evidence -p no:cacheprovider -q -m cuda --tb=short -rf"
if [ "$MODE" = gemv ]; then
  for old in 1 ""; do
    el "== explore_gemv --m1 GPTE_AB_GEMV_OLD=${old:-unset}"
    ab GPTE_AB_GEMV_OLD "$old" timeout 100 python3 tests/bench/explore_gemv.py --m1 2>&1
  done
  el "== linear tests (v11)"
  timeout 120 $PYT tests/ops/test_linear.py -k "not bandwidth" 2>&1 | tail -5
  wait_for gpt2-1.5b-F16
  for f in gpt2-124m-F16 gpt2-1.5b-F16 gpt2-124m-F16; do
    for old in 1 ""; do
      el "== step $f GPTE_AB_GEMV_OLD=${old:-unset}"
      ab GPTE_AB_GEMV_OLD "$old" timeout 60 python3 tests/bench/explore_decode_step.py "$M/$f.gguf" 2>&1 \
        | grep -E "graph step|gemv|kernel time" | head -7
    done
  done
  [ -n "$SKIP_BENCH" ] || for c in "" 1 "" 1; do
    el "== bench gpt2-124m-F16 GPTE_AB_TWO_COPIES=${c:-unset}"
    GPTE_AB_TWO_COPIES=$c timeout 45 python3 -m gpt_engine.cli bench "$M/gpt2-124m-F16.gguf" --device cuda -r 5 2>&1 | grep -E "tg128|pp512|host"
  done
  [ -n "$SKIP_BENCH" ] || el "== explore_dequant --ab (v1 vs v2, same process)"
  [ -n "$SKIP_BENCH" ] || timeout 90 python3 tests/bench/explore_dequant.py --ab 2>&1 | tail -30
else
  el "== MoE tests (v5 vs v3, reference)"
  timeout 200 $PYT tests/ops/test_moe.py 2>&1 | tail -5
  el "== explore_moe_decode (v5 and v3 graphs in one run)"
  timeout 120 python3 tests/bench/explore_moe_decode.py 2>&1 | tail -16
  wait $MODELS_PID; cat /tmp/ab-models.txt
  [ -n "$AB_MODELS" ] && for v in 1 "" 1 ""; do
    el "== step gpt-oss-20b GPTE_AB_MOE_V3=${v:-unset}"
    ab GPTE_AB_MOE_V3 "$v" timeout 90 python3 tests/bench/explore_decode_step.py "$M/gpt-oss-20b-MXFP4.gguf" 2>&1 \
      | grep -E "graph step|moe|kernel time" | head -8
  done
fi
wait $MODELS_PID 2>/dev/null
el total

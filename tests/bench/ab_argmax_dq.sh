#!/usr/bin/env bash
# Branch argmax-dq's same-run A/Bs (repo root on the GPU machine, after the extension is built;
# .whl carried as for gpu_session.sh). Exploration, not evidence. ~2 minutes:
#   1. the CUDA tests of both changes: sample_greedy v2 (v1 in a child process through
#      GPTE_AB_ARGMAX_V1) and the dequantize block shapes (one child per GPTE_DEQUANT_SHAPE value)
#   2. tests/bench/explore_dequant.py once per GPTE_DEQUANT_SHAPE value: unset (2x256), 1 (1x256),
#      2 (2x128), 3 (4x128); us per call and ratio to the run's own copy at 5 shapes x 2 types
#   3. tests/bench/time_argmax.py: the argmax alone, v1 against v2, 1x50257 and 1x201088 fp32
# Both switches are TEMPORARY (read once per process). Everything printed goes to
# $OUT/ab_argmax_dq.log too; `grep SUMMARY` gives one line per measurement.
set -o pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
exec > >(tee -a "$OUT/ab_argmax_dq.log") 2>&1
export PYTHONUNBUFFERED=1
if [ -d .whl ] && [ ! -d /tmp/site ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >/dev/null 2>&1
fi
export PYTHONPATH=/tmp/site:$PWD
t0=$(date +%s)
el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
NOAB="env -u GPTE_AB_ARGMAX_V1 -u GPTE_DEQUANT_SHAPE"
$NOAB python3 -c "from gpt_engine.ops import _ext; _ext.load(); print('extension loaded')" 2>&1 | tail -2
el "== 1. CUDA tests: sample_greedy (v2; v1 in a child), dequantize shapes (a child per shape)"
$NOAB timeout 120 python3 -m pytest -p gates.pytest_plugin --no-evidence -p no:cacheprovider -q -m cuda --tb=short -rf \
  tests/ops/test_sample_greedy.py tests/ops/test_dequant_shapes.py > /tmp/ab-argmax-dq-tests.txt 2>&1
rc=$?
grep -vE "^\.|^$|^SKIPPED" /tmp/ab-argmax-dq-tests.txt | tail -40
echo "SUMMARY tests (exit $rc): $(tail -1 /tmp/ab-argmax-dq-tests.txt)"
for shape in unset 1 2 3; do
  el "== 2. explore_dequant GPTE_DEQUANT_SHAPE=$shape"
  if [ "$shape" = unset ]; then
    $NOAB timeout 60 python3 tests/bench/explore_dequant.py 2>&1 | grep -vE "done$|^$"
  else
    env -u GPTE_AB_ARGMAX_V1 GPTE_DEQUANT_SHAPE=$shape timeout 60 python3 tests/bench/explore_dequant.py 2>&1 \
      | grep -vE "done$|^$"
  fi
done
el "== 3. argmax alone, v1 vs v2 (a child per version and round)"
$NOAB timeout 80 python3 tests/bench/time_argmax.py --rounds ${ARGMAX_ROUNDS:-2} 2>&1
el total

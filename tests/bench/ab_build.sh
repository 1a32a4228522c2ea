#!/usr/bin/env bash
# One GPU call that A/Bs a kernel-file change by building twice in one run (exploration, not
# evidence): the tree as it is (A), then with the files of $AB_FILES (default tests/bench/ab_files/,
# same relative names under csrc/) copied over csrc/, or the patch $AB_PATCH applied with
# `git apply` (e.g. tests/bench/ab_patches/*.patch), as build B (ext_seed.py recompiles only what
# differs).
# For each build: the CUDA tests in TESTS (B only unless TESTS_A=1), the command in RUN (run with
# LABEL=A or B; e.g. an explore script), and `gpt-engine bench` on each file of MODELS
# (benchmodels shape:type names) with BENCH_ARGS. Repo root on the GPU machine, .whl carried;
# everything printed goes to $OUT/ab.log.
set -o pipefail
. tests/bench/gpu_env.sh ab.log
MODELS=${MODELS:-}
AB_FILES=${AB_FILES:-tests/bench/ab_files}
(SHAPES="$MODELS" bash tests/bench/gen_models.sh > /tmp/models.txt 2>&1) &
MODELS_PID=$!
one() {
  export LABEL=$1
  echo "=== build $LABEL"; build_ext 3
  if [ "$LABEL" = B ] || [ -n "${TESTS_A:-}" ]; then
    [ -n "${TESTS:-}" ] && timeout -s INT -k 20 ${TEST_TIMEOUT:-200} python3 -m pytest -p gates.pytest_plugin --no-evidence \
      -p no:cacheprovider -q -m cuda --tb=short -rf $TESTS -k "not bandwidth and not benchmark" 2>&1 \
      | grep -vE "^\.|^$|^SKIPPED" | tail -30
  fi
  [ -n "${RUN:-}" ] && (eval "$RUN")
  wait $MODELS_PID 2>/dev/null
  for m in $MODELS; do
    t=${m#*:}; [ "$t" = "$m" ] && t=F16  # shape[:type], F16 when no type
    f="$M/${m%%:*}-$t.gguf"
    echo "--- bench $LABEL $f"
    timeout 120 python3 -m gpt_engine.cli bench "$f" --device cuda ${BENCH_ARGS:--p 512 -n 0 -r 5} 2>&1 | grep -vE "^bench: "
  done
}
one A
cat /tmp/models.txt
[ -d "$AB_FILES" ] && (cd "$AB_FILES" && find . -type f) | while read -r f; do cp "$AB_FILES/$f" "csrc/$f"; echo "B: csrc/$f"; done
if [ -n "${AB_PATCH:-}" ]; then git apply "$AB_PATCH" && echo "B: $AB_PATCH applied" || { echo "B: $AB_PATCH does not apply"; exit 1; }; fi
t0=$(date +%s)
one B
echo "total: $SECONDS s"

#!/usr/bin/env bash
# Writes the benchmark models of SHAPES (shape[:type], as gpu_session.sh takes them) into
# $GPT_ENGINE_BENCH_MODELS in three parallel processes, grouped so that a quantized file follows
# its own F16 file in one process: 47 s on the H200 machine in session 16 against ~90 s in one.
# Run after gpu_env.sh is sourced (PYTHONPATH, the models' folder).
gen() {
  python3 -c "
import sys, time
from gpt_engine import benchmodels as b
for s in sys.argv[1:]:
    shape, _, q = s.partition(':')
    t = time.time(); p = b.ensure('${GPT_ENGINE_BENCH_MODELS:?}', shape, q or 'F16'); print(p, round(time.time() - t, 1), 's')
" "$@"
}
a=() b=() c=()
for s in $SHAPES; do
  case ${s%%:*} in
    gpt2-1.5b) a+=("$s") ;;
    gpt2-124m|gpt-oss-*) c+=("$s") ;;
    *) b+=("$s") ;;
  esac
done
t=$(date +%s)
{ [ ${#a[@]} -gt 0 ] && gen "${a[@]}"; } & { [ ${#b[@]} -gt 0 ] && gen "${b[@]}"; } & { [ ${#c[@]} -gt 0 ] && gen "${c[@]}"; } &
wait
echo "models: $(( $(date +%s) - t )) s"

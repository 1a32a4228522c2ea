#!/usr/bin/env bash
# One GPU call that times a change against main from the tree that would land it, so that the
# evidence call which follows finds the machine warm and already holding the landing build
# (session 42: the A/B, heavy and light fit one session's device time only so).
# Here:   git diff main HEAD -- csrc gpt_engine > .whl/land.patch   (on the landing branch; .whl is
#         ignored and carried)
# There:  OUT=$OUT timeout 580 bash tests/bench/land_ab.sh .whl/land.patch
# (the engine's code, csrc and gpt_engine, goes back to main's; tests/bench stays the landing
# tree's, so its timing script must run main's build as well under STATS=1)
# main's code (the diff reversed) is built and its graph steps timed, then the landing code is
# rebuilt on the same machine (only the changed files: ext_seed) and timed the same way, or under
# LAND_HOOK (e.g. 'FOLD=1' or 'FOLD=1 0': a hook of the landing build, each value its own graph).
# STEPS names the models (bench-model files, gen_models.sh's names); 3 rounds of 100 replays each.
# E2E (bench-model files, default none) adds each file's tg128 through the public API after each
# build's steps (tests/bench/e2e_hook_ab.py, 3 rounds, same-run roofline), main's under
# E2E_MAIN's hook and setting (default linear_stats_force 1, a no-op), the landing build's under
# E2E_LAND's (default the same): what a user gets, beside the steps (session 43).
set -o pipefail
D=${1:?usage: land_ab.sh DIFF (git diff main HEAD -- csrc gpt_engine)}
export SHAPES=${SHAPES:-"gpt-oss-20b:MXFP4 gpt2-124m gpt2-1.5b llama-1b gpt2-1.5b:Q8_0"}
S=${STEPS:-"gpt2-1.5b-F16 gpt2-124m-F16 llama-1b-F16 gpt-oss-20b-MXFP4 gpt2-1.5b-Q8_0"}
. tests/bench/gpu_env.sh land-ab.log
t_call=$t0
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
e2e() {  # e2e HOOK SETTING LABEL: each E2E file's tg128 through the public API under one setting
  for f in $E2E; do
    HOOK=$1 SETTINGS=$2 ROUNDS=3 timeout -s INT -k 10 90 python3 tests/bench/e2e_hook_ab.py "$M/$f.gguf" | sed "s/^/$3 /"
  done
}
(bash tests/bench/gen_models.sh > /tmp/models.txt 2>&1) &
MODELS_PID=$!
git apply -R "$D" && echo "main's code in place" || exit 1
build_ext 3
wait $MODELS_PID; cat /tmp/models.txt
echo "## main: the steps"
steps main 70 STATS=1  # (v23's default: a no-op setting; steps: gpu_env.sh)
e2e ${E2E_MAIN:-linear_stats_force 1} main
git apply "$D" && echo "the landing code back" || exit 1
t0=$(date +%s); build_ext 3
echo "## landing tree: the steps"
steps land 70 "${LAND_HOOK:-STATS=1}"
e2e ${E2E_LAND:-linear_stats_force 1} land
echo "call: $(( $(date +%s) - t_call )) s"

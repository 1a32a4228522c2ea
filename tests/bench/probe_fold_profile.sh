#!/usr/bin/env bash
# GPU machine, repo root, .whl carried (session 40):  OUT=$OUT timeout 590 bash tests/bench/probe_fold_profile.sh
# Why v27 (tests/bench/ab_patches/v27-fold.patch) lost at GPT-2 1.5B in PART=12 (H100, session
# 40: main 2,016.8 us a step, v27 fold 2,071.1, v27 with its hook off 2,035.8; Llama ~1B 970.7 /
# 964.5 / 987.2): the profiler's time of every kernel of one decode step, by its place in the
# step (median over 20 replays), for main, then for v27 with the fold on (1) and off (0) in one
# build. Written to $OUT/fold-profile-<label>-<model>.json; compared on the CPU machine.
# Exploration, not evidence: main's tree plus the patch on the GPU machine only. (The profiling
# Python was inline here when it ran; it now lives in tests/bench/step_places.sh, unchanged but for
# the output name's prefix, PLACES_PREFIX.)
set -o pipefail
export SHAPES="gpt2-1.5b"  # (Llama ~1B dropped: the device time left)
. tests/bench/gpu_env.sh probe-fold-profile.log
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
(bash tests/bench/gen_models.sh > /tmp/models.txt 2>&1) &
MODELS_PID=$!
. tests/bench/step_places.sh
export PLACES_PREFIX=fold-profile
build_ext 3
wait $MODELS_PID; cat /tmp/models.txt
for f in gpt2-1.5b-F16; do step_places main - "$M/$f.gguf"; done
git apply tests/bench/ab_patches/v27-fold.patch && echo "v27-fold applied" || exit 1
t0=$(date +%s); build_ext 3
for f in gpt2-1.5b-F16; do
  for v in 1 0; do step_places v27 "$v" "$M/$f.gguf"; done
done
git apply -R tests/bench/ab_patches/v27-fold.patch
echo "call: $(( $(date +%s) - t0 )) s since v27's build began"

#!/usr/bin/env bash
# GPU-machine calls for what waits (repo root, .whl carried), one PART a call, models kept while
# the machine is warm:  PART=N OUT=$OUT timeout 590 bash tests/bench/pending_ab_call.sh
# What the next session should do first (rewritten in session 52). Main = a2b7f7f's code (v30 +
# v31 + v32 with heavy + light H100 evidence at 30f60c4). Sessions 50-51 built v33 (a tensor-core
# GEMV for every M) on branches that were LOST with session 51's checkout: only main survives a
# session, so unlanded work now lives on main as a patch. Session 52 rewrote it as
# tests/bench/ab_patches/v33-engine.patch (csrc/linear_mma.cu: v33 for the norm-free products,
# v33n for the norm-fused ones, hooks ext.linear_mma_force / linear_mma_norm_force, on by default;
# tests/ops/test_linear_mma.py; csrc/mma_sync.cuh, the mma.sync helpers attention_prefill.cu and
# moe_grouped.cu now share with it; CPU-checked only). So:
#   0. Locally: git checkout -b v33-engine; git apply tests/bench/ab_patches/v33-engine.patch;
#      commit (csrc + tests only). On an H100 (H200 fine for A/Bs only), cold ~90 s + build ~221 s:
#        PART=32 OUT=$OUT timeout 590 bash tests/bench/pending_ab_call.sh   (~500 s: build, tests)
#      then on the same warm machine PART=33 (~300 s: the decision A/B end to end: v33 on / off and
#      the 1.5B's one-row settings at B = 1 and 16, Llama on / off, v33n's share at B = 16), then
#      the evidence (heavy + light, ~630 s) if the defaults hold. PART=34 (~350 s: the CUDA-graph
#      tests, the shapes alone, 124M and B = 8) only if time is left; the evidence runs the tests.
#      Budget: cold 90 + PART=32 ~530 + PART=33 ~300 + evidence ~630 = ~1,550 of 1,800 s.
#      docs/kernels/decode.md "Sessions 51 and 52" has the predictions.
#   1. If the tests pass and B = 16 wins with B = 1 within +-1%: keep the defaults (or pick the
#      setting PART=33 names), commit, evidence heavy + light at that commit (below), merge to main,
#      fresh-clone CI. If a test fails: fix locally, refresh the patch on main
#      (git diff main -- csrc tests/ops tests/bench/explore_gemv.py tests/bench/emulate_gemv_mma_engine.py
#      > tests/bench/ab_patches/v33-engine.patch), commit it there.
#   2. Packed v33 after that: weights repacked for 16-byte copies and fp16 x (quant.md "Session 50":
#      the probe's 4-8-byte copies lose 30-60% at one row; its fp16 forms NMSE ~5e-15).
# Evidence commands (repo root, .whl carried, a warm machine):
#        export OUT GPT_ENGINE_GIT_COMMIT=<full sha: git rev-parse HEAD> EXT_SAVE=0
#        timeout 590 bash tests/bench/gpu_session.sh heavy       (session 50: 273 s warm)
#        (light: the same exports plus SHAPES="gpt2-124m gpt2-1.5b smollm2-135m llama-1b
#        gpt2-124m:Q8_0 gpt2-124m:MXFP4 gpt2-1.5b:Q8_0 gpt2-1.5b:MXFP4 gpt2-1.5b:Q4_K_M
#        gpt-oss-20b:MXFP4"; GATES_TIMEOUT=370 timeout 590 bash tests/bench/gpu_session.sh light;
#        session 50: 359 s)
#      then commit the files with `git add -f`, `python -m gates gate gate3 --no-run` (no stale cuda
#      line), fast-forward main, fresh-clone CI. An H200 fails GT-015's tie ~95% of the time until a
#      person decides tests/bench/ab_patches/proposal-at-ceiling-bars.patch: on an H200 run A/Bs only
#      (check nvidia-smi first).
#   PART=28 (the probe, gemv-mma.patch) takes ~30 s on a machine with the extension built:
#        git apply tests/bench/ab_patches/gemv-mma.patch; PYTHONPATH=/tmp/site python3
#        tests/bench/explore_gemv_mma.py; git apply -R tests/bench/ab_patches/gemv-mma.patch
# Session 49's order (kept for its record): PART=26 (v32 1 vs 0 at batch 1-16, v31 1 vs 2 at batch
# 8, ring 0 vs v3 32 at batch 16; ran in session 50, all kept), then heavy + light, then PART=28.
# Device time: session 42 lost 766 of its 1,800 s to 9 calls that found no machine (H100 and H200;
# 15-180 s each), session 43 830 s to 11, session 44 1,487 s to 24 (nothing ran), session 45 571 s
# to 7 before two light runs ran; session 46 had 2 refused calls, then 4 ran (a call naming
# nvidia-h200 got an H100 both times; each cold start held ~170-210 s besides the run); session
# 47 lost 271 s to 3 refused nvidia-h100-x1 calls, then a call naming nvidia-h200 got an H100
# (cold start ~90 s) and 3 calls ran on it (heavy, light, PART=23); session 48 ran 3 calls on one
# H100 (heavy 447 s, light 357 s, PART=24 163 s: 1,074 s held with the cold start), then one
# refused nvidia-h100-x1 call cost 100 s, and a call naming nvidia-h200 got an H100 again (PART=25,
# cold, 310 s); session 49 lost 451 s to 3 refused calls (h100-x1, then h200 twice), then an H100
# started (PART=26's call cost 554 s: 466 s running) and PART=27 cost 447 s (cut in its ncu export); a
# last call with 335 s left was refused ("too little time to start") and still cost 180 s. After a
# refusal wait the minutes it names; `status` shows none_now. Below ~450 s left, do not call.
# Session 50: the first call (nvidia-h200) was refused (91 s), the second cost 15 s, a third was
# refused with "no new device machine is lent at present" (paused ~30 min); then one call naming
# nvidia-h200 got an H100 and four calls ran on it warm: PART=26 (476 s, cold build 181 s), heavy
# (273 s), light (359 s), PART=28 (31 s); 353 s left unused.
# Session 36's order (PART=6, 7, 9, landing v23, then 5 and 8) ran in session 37: v23 landed,
# v25 lost and failed 2 tests (dropped), PART=9 was not run (docs/kernels/decode.md, "Session 37").
# PART=1 (session 36, done): where the 1.5B step's fused LayerNorm
# spends its ~4 us a call (docs/kernels/decode.md, v22c: not in its weight / bias loads). Main's
# tree plus tests/bench/ab_patches/norm-split.patch, applied on the GPU machine only (a csrc edit
# would stale the GPU evidence of gate1 and gate2, which CI enforces; docs/harness.md). The patch
# adds a runtime mask to the dense GEMV (ext.linear_explore_norm; wrong results, timing only):
#   1 the whole norm off (session 34's "norm off" column, the reference), 128 the statistics off
#   (mean 0, rstd 1; the normalize loop kept), 256 the normalize loop off (the statistics kept),
#   512 LayerNorm's mean pass off (one pass, as RMSNorm: what a one-pass statistics could save),
#   384 both statistics and loop (against 1: what the one barrier left costs).
# PART=2 (session 36, done): v23 (tests/bench/ab_patches/v23-land.patch, docs/kernels/decode.md): the LayerNorm
# statistics in one pass shifted by the row's first value (16-bit activations), every thread
# holding the statistics itself, and 2-3 fewer barriers per norm-fused call. Built and timed
# against main in the same call (main rebuilt last, timed by the same loop with a no-op hook):
# STATS="1 0" (0: v2.1's two passes, with v23's barriers removed: the same bits as main), and the
# dense GEMV tests with it. Prediction: whatever PART=1's 512 and 128 columns say the mean pass
# and the barriers cost; if they cost nothing, v23 does nothing. Land it (git apply, commit,
# evidence heavy + light at that commit) only if no step is slower than main by more than 0.5%.
# Repo root, .whl carried:   PART=1 OUT=$OUT timeout 590 bash tests/bench/pending_ab_call.sh
# (~150-210 s cold build, ~50 s models in parallel, ~30 s a file.) If an H200 comes, the evidence
# of main on the card the issues name is worth more than this (H200 evidence is stale since
# session 33): gpu_session.sh heavy, then light, at main's commit (docs/harness.md).
set -o pipefail
export SHAPES="gpt-oss-20b:MXFP4 gpt2-124m gpt2-1.5b llama-1b"
# PART=14 times the packed files (written already where an evidence run warmed the machine)
case "${PART:-1}" in 14|21|22) export SHAPES="gpt2-1.5b:Q8_0 gpt2-1.5b:MXFP4 gpt2-124m:MXFP4 gpt2-1.5b:Q4_K_M";; esac
case "${PART:-1}" in 23) export SHAPES="gpt2-1.5b:Q8_0 gpt2-1.5b:MXFP4";; esac
case "${PART:-1}" in 24) export SHAPES="gpt2-1.5b:Q8_0 gpt2-1.5b gpt2-1.5b:MXFP4";; esac
case "${PART:-1}" in 32|33|34) export SHAPES="gpt2-1.5b llama-1b gpt2-124m";; esac
case "${PART:-1}" in 25) export SHAPES="gpt2-1.5b llama-1b";; 26|27) export SHAPES="gpt2-1.5b gpt2-1.5b:Q8_0 llama-1b gpt2-124m";; 28) export SHAPES="gpt2-124m";; esac
case "${PART:-1}" in 15|19) export SHAPES="$SHAPES gpt2-1.5b:Q8_0";; esac
# PART=21 on a short budget: ONLY="gpt2-1.5b:Q8_0 gpt2-1.5b:MXFP4" writes and times those files
# alone, NOTESTS=1 skips the tests (session 44: ~330 s of device time left after refusals)
[ -n "${ONLY:-}" ] && export SHAPES="$ONLY"
. tests/bench/gpu_env.sh pending-ab-call.log
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
T="timeout -s INT -k 10"
(bash tests/bench/gen_models.sh > /tmp/models.txt 2>&1) &
MODELS_PID=$!
t_call=$t0  # (PART=2 resets t0 so build_ext times main's rebuild)
S="gpt2-1.5b-F16 gpt2-124m-F16 llama-1b-F16 gpt-oss-20b-MXFP4"
case "${PART:-1}" in 15|19) S="$S gpt2-1.5b-Q8_0";; esac  # (v29 reads the packed GEMV's bias early too)
# the packed parts' files are their SHAPES (all typed: shape:TYPE names shape-TYPE.gguf)
{ [ -n "${ONLY:-}" ] || [ "${PART:-1}" = 14 ] || [ "${PART:-1}" = 21 ] || [ "${PART:-1}" = 22 ] || [ "${PART:-1}" = 23 ]; } && S=$(echo "$SHAPES" | tr ':' '-')
[ "${PART:-1}" = 24 ] && S="gpt2-1.5b-Q8_0 gpt2-1.5b-F16 gpt2-1.5b-MXFP4"
[ "${PART:-1}" = 25 ] && S="gpt2-1.5b-F16 llama-1b-F16"
case "${PART:-1}" in 26|27) S="gpt2-1.5b-F16 gpt2-1.5b-Q8_0 llama-1b-F16 gpt2-124m-F16";; 28|32|33|34) S="";; esac
# PART=3 and 4 (session 36, done; not kept): v24-probe.patch = v23 plus ext.linear_norm_load_force, how the normalize loop
# reads the norm weight / bias (0 v23, 1 L2 evict_last, 2 16-byte loads, 3 both); PART=1 found that
# loop 284 of the norm's 387 us at 1.5B (~2.9 us a call). Prediction: if 2 or 3 takes most of it,
# the cost was the loop's 4 dependent rounds of global loads (misses after the step's weights).
# PART=5 (written in session 36): phase-probe.patch on v23 (v23 applied first where main lacks it):
# every block of the dense v3 GEMV records when it reaches each phase (wait released, x staged,
# statistics, normalize loop, first group's dot products, end) inside the replayed step;
# tests/bench/explore_phase_probe.py prints the medians per product shape. Prediction: at 1.5B the
# QKV and up products' normalize phase (loop + barrier) is ~2-3 us a block, and a call's time from
# its input being ready to its last block's end is ~2.9 us longer than the same shape without a
# norm (the 1600 x 1600 output projection is the reference: same K, no norm).
# PART=6 / 7 (written in session 36): v23 alone, then v23 + v25 (the M = 1 row summed as it is
# loaded, in 8-element chunks; the statistics' shared-memory pass and one barrier gone, every
# path in the new order: docs/kernels/decode.md, v25). Prediction: ~0.5-1 us a norm-fused call,
# 1.5B -50..-100 us, 124M -12..-25, Llama ~1B -15..-30, gpt-oss a few us.
main_then() {  # main_then PATCH LABEL TIMEOUT VAR=SETTINGS: main's four steps (a no-op setting of
  # v23's hook), then PATCH applied, rebuilt on the same machine and its steps under VAR's settings
  echo "## main: the four steps (STATS=1: v23's default, a no-op setting of its hook)"
  steps main 50 STATS="1"
  take "$1"
  t0=$(date +%s); build_ext 3
  echo "## $2: the four steps ($4)"
  steps "$2" "$3" "$4"
}
# Each PART's patches, applied in order. A *-land patch that does not apply is taken as on main
# already (the stacks run on whatever main holds by then); a probe that does not apply stops the call.
take() {
  for p in "$@"; do
    if git apply --check "tests/bench/ab_patches/$p.patch" 2>/dev/null; then
      git apply "tests/bench/ab_patches/$p.patch" && echo "$p applied"
    elif [ "${p%-land}" != "$p" ]; then
      echo "$p does not apply: taken as on main already"
    else
      echo "$p does not apply"; exit 1
    fi
  done
}
# v29, then v29b, each where main does not hold it yet (neither is a *-land patch: as probes, take
# stops the call when one does not apply)
take_v29b() {
  grep -q bias_pair csrc/linear_common.cuh || take v29-bias-early
  grep -q v29b csrc/linear_impl.cuh || take v29b-ring-late
}
# packed_tests LIMIT: the packed and QKV GEMV tests on this tree, 8 workers (no evidence)
packed_tests() {
  $T "$1" python3 -m pytest -p gates.pytest_plugin --no-evidence -q -rfE -n ${PAR:-8} -m "cuda and not benchmark" tests/ops/test_linear_q.py \
    tests/ops/test_linear_qkv.py 2>&1 | tail -8
}
# the dense, packed and QKV GEMV tests on this tree, 8 workers (no evidence)
gemv_tests() {
  echo "## $1's GEMV tests (dense, packed, QKV)"
  $T 300 python3 -m pytest -p gates.pytest_plugin --no-evidence -q -rfE -n ${PAR:-8} -m "cuda and not benchmark" \
    tests/ops/test_linear.py tests/ops/test_linear_q.py tests/ops/test_linear_qkv.py 2>&1 | tail -8
}
# (the probe on a tree with v25: phase-probe-v25.patch, whose "x" phase holds the statistics)
PROBE=phase-probe; grep -q load_row_stats csrc/linear_common.cuh && PROBE=phase-probe-v25
case "${PART:-1}" in
  1) take norm-split;; 2|6) take v23-land;; 3) take v24-probe;; 4) take v24b-probe;;
  5) take v23-land $PROBE;; 7) take v23-land v25-land;; 9) take v23-land v25-land v26-land;; 8|10|11|12|15) ;; 13) take v27-fold;; 16) take v29-bias-early;;
  17) take split-mxfp4-land; take_v29b;;
  19) take split-mxfp4-land;;
  20) take split-mxfp4-land; take_v29b;;
  18) take split-mxfp4-land; take_v29b; take v27b-on-v29b;;
  14) grep -q fold_constants gpt_engine/ops/linear.py || take v27-fold;;
  21) take v28-qfold;;
  22) take v28b-qfold;;
  23) grep -q qgemv_fold_force csrc/bindings.cpp || { echo "PART=23 runs on branch v28b-land (v28b in the tree)"; exit 1; };;
  24|25|26|27|28) ;;
  32|33|34) grep -q linear_mma_force csrc/bindings.cpp || take v33-engine;;
  *) echo "PART=$PART: not a part (1-28, 32-34)"; exit 2;;
esac
build_ext 10
wait $MODELS_PID; cat /tmp/models.txt
if [ "${PART:-1}" = 1 ]; then
  echo "## the steps with parts of the fused norm off (1 all, 128 statistics, 256 normalize loop, 512 mean pass, 384 both)"
  steps norm-split 70 NORM_SPLIT="0 1 128 256 512 384"
elif [ "$PART" = 12 ]; then
  # PART=12 (written in session 37): main's steps, then main + v27 (the norm folded into the dense
  # GEMV's epilogue) rebuilt on the same machine and timed under its hook (1 the fold, 0 v23's loop
  # in the same build), then its tests
  main_then v27-fold v27 70 FOLD="1 0"  # (1 the fold, 0 v23's normalize loop in the same build)
elif [ "$PART" = 15 ]; then
  # PART=15 (written in session 40): main's five steps, then v29-bias-early.patch (the bias read
  # before each pair's dot products) rebuilt on the same machine and its five steps (no hook: the
  # same STATS=1 no-op for both); its tests are PART=16
  main_then v29-bias-early v29 50 STATS="1"
elif [ "$PART" = 19 ]; then
  # PART=19 (written in session 41): main's five steps, then v29 + v29b (the ring kernel's bias read
  # late again) rebuilt on the same machine and its five steps (STATS=1, a no-op for both)
  echo "## main: the five steps"
  steps main 50 STATS="1"
  grep -q bias_pair csrc/linear_common.cuh || take v29-bias-early
  take v29b-ring-late
  t0=$(date +%s); build_ext 3
  echo "## v29 + v29b: the five steps"
  steps v29b 50 STATS="1"
elif [ "$PART" = 20 ]; then
  # PART=20 (written in session 41): on the machine PART=19 built v29 + v29b on, the dense, packed
  # and QKV GEMV tests, 8 workers (no evidence)
  gemv_tests "v29 + v29b"
elif [ "$PART" = 17 ]; then
  # PART=17 (written in session 40, rebased in session 41): main (with v29 + v29b, applied here where
  # they have not landed), then v27b-on-v29b.patch (v27's fold with C / D read before the dot
  # products, the fold a template parameter; the ring kernel's bias late as v29b's) rebuilt on the
  # same machine and timed under its hook (1 the fold, 0 the normalize loop in the same build)
  main_then v27b-on-v29b v27b 70 FOLD="1 0"
elif [ "$PART" = 16 ]; then
  # PART=16 (written in session 40): on the machine PART=15 built v29 on (its build is found
  # again), the dense, packed and QKV GEMV tests with v29, 8 workers (no evidence)
  gemv_tests v29
  # then where v29's time went, kernel by place (tests/bench/step_places.sh; ~25 s a run): v29's
  # 1.5B step, then main's (its build found again on this machine); compare on the CPU machine
  # with PERIOD=5 step_places_compare. PLACES=0 skips this (and main's rebuild) when device time is short
  [ "${PLACES:-1}" = 0 ] && exit 0
  . tests/bench/step_places.sh
  step_places v29 - "$M/${PLACES_MODEL:-gpt2-1.5b-F16}.gguf"  # (PLACES_MODEL=gpt-oss-20b-MXFP4 for gpt-oss)
  git apply -R tests/bench/ab_patches/v29-bias-early.patch && t0=$(date +%s) && build_ext 3
  step_places main - "$M/${PLACES_MODEL:-gpt2-1.5b-F16}.gguf"
elif [ "$PART" = 13 ] || [ "$PART" = 18 ]; then
  # PART=18 (written in session 40): the same as PART=13 with v29 + v29b + v27b applied.
  # PART=13 (written in session 37, widened in session 38): on the machine PART=12 built v27 on,
  # every CUDA test that is not a benchmark, with v27, in parallel as gpu_session.sh's `split` runs
  # them (no evidence): v27's regression check over the whole suite, and the first GPU run of that
  # parallel selection. Whatever fails runs again alone: a test that passes alone failed for sharing
  # the card (mend the test or keep it out of the parallel half before `split` carries evidence).
  WHAT=v27; [ "$PART" = 18 ] && WHAT="v29 + v29b + v27b"
  echo "## every CUDA test that is not a benchmark, $WHAT applied, -n ${PAR:-8} (no evidence)"
  t1=$(date +%s)
  OMP_NUM_THREADS=2 $T 360 python3 -m pytest -p gates.pytest_plugin --no-evidence -q -rfE -n ${PAR:-8} \
    -m "cuda and not benchmark" tests > /tmp/par.txt 2>&1
  echo "exit $? after $(( $(date +%s) - t1 )) s"; tail -3 /tmp/par.txt
  grep -E "^(FAILED|ERROR) " /tmp/par.txt | sed -E 's/^(FAILED|ERROR) //; s/ - .*//' | sort -u | head -40 > /tmp/failed.txt
  if [ -s /tmp/failed.txt ]; then
    echo "## the $(wc -l < /tmp/failed.txt) failures again, one process"; cat /tmp/failed.txt
    mapfile -t F < /tmp/failed.txt
    $T 240 python3 -m pytest -p gates.pytest_plugin --no-evidence -q -rfE "${F[@]}" 2>&1 | tail -20
  fi
elif [ "$PART" = 14 ]; then
  # PART=14 (written in session 38): main with v27 (landed, or applied here), then v28-qfold.patch
  # (the packed GEMV's v3.4: the same fold, docs/kernels/quant.md) rebuilt on the same machine and
  # timed on the packed files under QFOLD="1 0" (1 the fold, 0 v3.3's staging in the same build),
  # then its packed GEMV tests. Prediction: -5% to -6% of the 1.5B Q8_0 / MXFP4 steps (~1 us a
  # norm-fused call, 97 a step), 124M MXFP4 -3..-5%, Q4_K_M the same lever on its Q4_K / Q6_K rows.
  main_then v28-qfold v28 70 QFOLD="1 0"
  echo "## v28's packed GEMV tests"
  packed_tests 300
elif [ "$PART" = 21 ]; then
  # PART=21 (session 44): PART=14 in one build, for a cold machine (two builds and main's steps do
  # not fit one call there): v28 (rebased on v27b) applied before the only build, its packed steps
  # under QFOLD="1 0" (1 v3.4's fold, 0 v3.3's staging in the same build: the same kernel with the
  # fold off at run time, not main's code), then its packed GEMV tests. The same prediction.
  steps v28 70 QFOLD="1 0"
  [ -n "${NOTESTS:-}" ] && exit 0
  echo "## v28's packed GEMV tests"
  packed_tests 240
elif [ "$PART" = 22 ]; then
  # PART=22 (session 46): PART=21 with v28b-qfold.patch (v28, plus v3.4b: the fold's row statistics
  # summed by the staging as it codes the units, per warp into shared memory before its last
  # barrier, instead of v3.4's second read of the row from global memory in every warp's
  # epilogue). One build; QFOLD="1 0" (0: v3.3's staging in the same build), then the packed tests.
  steps v28b 70 QFOLD="1 0"
  [ -n "${NOTESTS:-}" ] && exit 0
  echo "## v28b's packed GEMV tests"
  packed_tests 240
elif [ "$PART" = 23 ]; then
  # PART=23 (session 46, on branch v28b-land, v28b in the tree): the 1.5B Q8_0 / MXFP4 steps at
  # batch 16 and 4 (explore_decode_step.py BATCH: generate_batch's decoder, so the packed GEMV's
  # MT = 16 and 4 kernels), v3.4b's fold on and off in the same build (QFOLD="1 0"). v3.4b raised
  # MT = 16's registers from ~203 to 232-254 (CI's ptxas check, no spills, one block per SM
  # either way); PART=22 timed batch 1 only. Prediction: batch 4 about batch 1's -4..-5%;
  # batch 16 smaller, perhaps none, if the register count costs the main loop.
  for b in 16 4; do BATCH=$b steps v28b-b$b 150 QFOLD="1 0"; done
elif [ "$PART" = 24 ]; then
  # PART=24 (session 47, main with v28b): PART=23 timed the 1.5B Q8_0 batch-16 step at 17.9 ms
  # (batch 1: 1.64 ms), 11x for 16x the tokens, where the weights are read once either way. Which
  # kernels hold it (the profile of each file's batch-16 step, F16 the reference), and whether one
  # dequantization to fp16 plus the dense GEMV beats the packed GEMV at batch 16 and 4
  # (QGEMV_MAX_ROWS="16 0": 0 sends every packed product there). Prediction: the packed GEMV's
  # MT = 16 kernel is most of the step; the dequantized route ~3-4 ms a step (3.2 GB of fp16
  # written and read back, ~0.8 GB of Q8_0 read: ~2.4 ms at copy, plus the step's other work).
  # On branch qchunk (ops.linear.packed_gemv_rows: rows that do not fit go in slices, so 1.5B's
  # down product at batch 16 is two calls of 8 instead of the dequantized weight), also
  # QGEMV_SLICES="1 0": the slices against the dequantized route, in the same process.
  S="gpt2-1.5b-Q8_0"; BATCH=16 steps qrows-b16 120 QGEMV_MAX_ROWS="16 0"
  SL=; grep -q "def packed_gemv_rows" gpt_engine/ops/linear.py && SL=1
  [ -n "$SL" ] && BATCH=16 steps slices-b16 120 QGEMV_SLICES="1 0"
  echo "## the packed Q8_0 GEMV alone at M = 1-16 on the 1.5B shapes (no norm; 16 x 6,400 wide: slices or dequantized)"
  $T 150 python3 tests/bench/explore_gemv.py --quant --types Q8_0 --shapes \
    1x1600x1600,4x1600x1600,8x1600x1600,16x1600x1600,1x6400x1600,4x6400x1600,16x6400x1600,1x1600x6400,8x1600x6400,16x1600x6400
  for f in gpt2-1.5b-Q8_0 gpt2-1.5b-F16; do
    BATCH=16 $T 120 python3 tests/bench/explore_decode_step.py "$M/$f.gguf" | sed "s/^/b16 $f /"
  done
  S="gpt2-1.5b-MXFP4"; BATCH=16 steps qrows-b16 120 QGEMV_MAX_ROWS="16 0"
  [ -n "$SL" ] && BATCH=16 steps slices-b16 120 QGEMV_SLICES="1 0"
  S="gpt2-1.5b-Q8_0"; BATCH=4 steps qrows-b4 120 QGEMV_MAX_ROWS="16 0"
  BATCH=4 EXPLORE_NO_PROFILE=1 $T 120 python3 tests/bench/explore_decode_step.py "$M/gpt2-1.5b-F16.gguf" | sed "s/^/b4 F16 /"
elif [ "$PART" = 25 ]; then
  # PART=25 (session 48, branch batch-ring): PART=24 put 89% of the 1.5B F16 batch-16 step in v3's
  # MT = 16 calls (the step 10.2x batch 1's). v3 loads a batch of chunks, then computes with it;
  # at M = 16 the compute is as long as the loads, and nothing overlaps them. v30 (the hook's bit
  # 16): M >= 2 on the ring kernel wherever its staged rows fit (at 1.5B every product but the
  # 6,400-wide down product at M = 16). Prediction: batch 16's step -40..-70% (the dot products
  # overlap the stream; what is left is their issue time), batch 4 -10..-30%, batch 1 unchanged
  # (the bit does not touch M = 1: the same graph twice, within noise).
  # (Ran at 35cad78, where 0 was v3 for every M >= 2; since v30 became the rule for M 9-16, the
  # same comparison is GEMV_RING="32 0".)
  S="gpt2-1.5b-F16 llama-1b-F16"
  for b in 16 4; do BATCH=$b steps ring-b$b 120 GEMV_RING="0 16"; done
  S="gpt2-1.5b-F16"; BATCH=1 steps ring-b1 120 GEMV_RING="0 16"
  echo "## v30's dense GEMV tests (bit 16 under the tests' hook)"
  $T 200 python3 -m pytest -p gates.pytest_plugin --no-evidence -q -rfE -n ${PAR:-8} -m "cuda and not benchmark" \
    tests/ops/test_linear.py tests/ops/test_linear_qkv.py 2>&1 | tail -8
elif [ "$PART" = 26 ]; then
  # PART=26 (session 48, branch batch-ring: v30 the rule for MT = 16; v31 v3's fold statistics once
  # per block past 4 rows; v32 the reduce-scatter epilogue at 8-16 rows, on by default since
  # session 49). Each A/B end to end through the public API (tests/bench/e2e_batch.py:
  # load(device="cuda"), then generate_batch of B sequences, 128 tokens each, by the wall clock,
  # against the same-run weight-bytes roofline and the model's batch-1 generate()), a model per
  # setting.
  # v32 first: if the batch-16 GEMV is bound by its epilogue's instruction fetch (the ring kernel's
  # MT = 16 SASS is ~117k instructions, a pair's per-row epilogue tens of KB of them, run once per
  # pair), batch 16 -30..-60% a token; if not, a few percent (the epilogue is ~1/4 of a K = 1,600
  # pair's instructions). Batch 1 and 4 untouched (MT < 8). Session 49's ncu: the 16-row ring
  # kernel 97 -> 37 us with it, so it is the default now; turn it off if the step says otherwise.
  # (session 49: each setting its own model and graphs, reps interleaved; the spread printed)
  E="$M/gpt2-1.5b-F16.gguf $M/gpt2-1.5b-Q8_0.gguf"
  HOOK=linear_scatter_force VALUES="1 0" REPS=4 $T 250 python3 tests/bench/e2e_batch.py $E
  # v31 at batch 8 (1 v31, 2 the per-pair statistics as before; at 1.5B every norm-fused MT = 8
  # call is v3 over two 1,280-wide tiles, each pair's epilogue taking 8 rows' statistics from
  # global memory). Prediction: -20..-40% a token at batch 8.
  HOOK=linear_fold_force VALUES="1 2" BATCHES="8" REPS=3 $T 120 python3 tests/bench/e2e_batch.py \
    "$M/gpt2-1.5b-F16.gguf" "$M/llama-1b-F16.gguf"
  echo "## v30 + v31 + v32's GEMV tests (dense, QKV, and the packed GEMV's v32 test)"
  $T 200 python3 -m pytest -p gates.pytest_plugin --no-evidence -q -rfE -n ${PAR:-8} -m "cuda and not benchmark" \
    tests/ops/test_linear.py tests/ops/test_linear_qkv.py "tests/ops/test_linear_q.py::test_packed_gemv_scatter_epilogue_same_bits" 2>&1 | tail -6
  # batch 16 on the ring (0, v30) against v3 (32): does the ring still win with v32 in both? (and
  # 124M's K = 768 / 3,072 on the ring)
  HOOK=linear_ring_force VALUES="0 32" BATCHES="16" REPS=3 $T 120 python3 tests/bench/e2e_batch.py \
    "$M/gpt2-1.5b-F16.gguf" "$M/llama-1b-F16.gguf" "$M/gpt2-124m-F16.gguf"
elif [ "$PART" = 32 ]; then
  # PART=32 (session 52): v33 + v33n as the engine's dense GEMV (tests/bench/ab_patches/v33-engine.patch:
  # csrc/linear_mma.cu, its hooks and tests; CPU-checked only: nvcc sm_90a, 18 kernels, no
  # spills, 40-98 registers; the v33n staging's CPU twin; two helpers' reviews with numpy emulations
  # of the lanes and of v33n's staging found no bug). Session 51's branch v33-norm (the same design) was lost with its
  # checkout; this is its rewrite. The tests: v33's own (bits across M, oracle per epilogue and x
  # mode, the rule, the A/B settings, hard rows, QKV), then the dense and QKV suites (the CUDA-core
  # kernels' tests with v33 off by the fixture cuda_core_gemv; test_linear_fused / model_shapes
  # both ways). Prediction: all pass.
  echo "## v33-engine's GEMV tests"
  $T 300 python3 -m pytest -p gates.pytest_plugin --no-evidence -q -rfE -n ${PAR:-8} -m "cuda and not benchmark" \
    tests/ops/test_linear_mma.py tests/ops/test_linear.py tests/ops/test_linear_qkv.py 2>&1 | tail -14
elif [ "$PART" = 33 ]; then
  # PART=33 (session 52; after PART=32 on the same warm machine, no rebuild): the decision A/B,
  # end to end through the public API (tests/bench/e2e_batch.py: a model per setting, reps
  # interleaved). v33 against the CUDA-core kernels (linear_mma_force 1 vs 0), with the 1.5B's
  # one-row question in the same run: PART=29's +45 us a step with v33 (norm-free products only).
  # Guesses, each a setting: 2 (the down products, K = 4 N, back on the CUDA-core ring kernel:
  # PART=28's probe was slowest against ops on 1600 x 6400), 5 (24 KiB of buffers a block instead
  # of 96, leaving room for the next kernel's blocks under PDL), 6 (x copied once a block instead
  # of by every warp at every step). Then v33n's share at 16 rows (linear_mma_norm_force 1 vs 0;
  # 3: v33n but not the fp32 LM head, which at 16 rows re-reads x in each of its 3,142 blocks).
  # Predictions: B = 16 -60..-75% a step against off (PART=29's -52% from the norm-free products,
  # then v33n's products); B = 1 within +-3% of off, and one of 2 / 5 / 6 recovers >= 30 us of
  # the 1.5B's 45 if the loss is still there. Pick the defaults from this, then evidence.
  HOOK=linear_mma_force VALUES="1 0 2 5 6" BATCHES="1 16" REPS=3 $T 260 python3 tests/bench/e2e_batch.py \
    "$M/gpt2-1.5b-F16.gguf"
  HOOK=linear_mma_force VALUES="1 0" BATCHES="1 16" REPS=3 $T 100 python3 tests/bench/e2e_batch.py \
    "$M/llama-1b-F16.gguf"
  HOOK=linear_mma_norm_force VALUES="1 0 3" BATCHES="16" REPS=3 $T 120 python3 tests/bench/e2e_batch.py \
    "$M/gpt2-1.5b-F16.gguf"
elif [ "$PART" = 34 ]; then
  # PART=34 (session 52; lower priority than the evidence): the graph-vs-eager and transformers
  # greedy tests on v33's numbers (argmax near-ties could flip; the evidence runs them too), each
  # GEMV shape alone at 1 and 16 rows, v33 (1) against the CUDA-core kernels (0) (graphs of
  # back-to-back calls on distinct weights, tests/bench/explore_gemv.py), and v33 on / off at
  # B = 1, 8, 16 on 124M and at B = 8 on the 1.5B.
  echo "## the CUDA-graph tests on v33"
  $T 150 python3 -m pytest -p gates.pytest_plugin --no-evidence -q -rfE -n ${PAR:-8} -m "cuda and not benchmark" \
    tests/test_cuda_graph.py 2>&1 | tail -6
  GEMV_HOOK=linear_mma_force GEMV_RING="1 0" $T 120 python3 tests/bench/explore_gemv.py --ms 1,16 \
    --dense-shapes 768x768,2304x768,1600x1600,4800x1600,6400x1600,1600x6400,50257x1600
  HOOK=linear_mma_force VALUES="1 0" BATCHES="1 8 16" REPS=3 $T 120 python3 tests/bench/e2e_batch.py \
    "$M/gpt2-124m-F16.gguf"
  HOOK=linear_mma_force VALUES="1 0" BATCHES="8" REPS=3 $T 80 python3 tests/bench/e2e_batch.py \
    "$M/gpt2-1.5b-F16.gguf"
elif [ "$PART" = 28 ]; then
  # PART=28 (session 49): the v33 probe (tests/bench/ab_patches/gemv-mma.patch: gemv_mma.cu and
  # explore_gemv_mma.py, applied here only). A tensor-core GEMV for every M (batch rows as the
  # mma's A operand, 8 weight rows as its B), against ops.linear and cuBLAS at M = 1-16 on seven
  # decode shapes, with each row's bits at M = 1, 3, 8 and 16 compared. Predictions: every row's
  # bits the same at every M (the tensor core computes each output from its own row and column);
  # at M = 16 within ~1.5x of cuBLAS (8.6 us at 4800 x 1600); at M = 1 within 10% of ops.linear
  # (7.95 us there). If M = 1 is much slower, the gap is the probe's load pipeline (one batch of U
  # steps a warp, no PDL), not the tensor cores. Then Q8_0 on the int8 tensor cores
  # (mma.m16n8k32.s8, one block a step; x quantized beforehand) against the engine's packed Q8_0
  # GEMV: predictions the same bits at every M, M = 16 within 2x of M = 1, and M = 1 at >= 0.5 of
  # copy where the engine's is ~0.35. Then MXFP4 the same way on GT-033's four bar shapes (the
  # engine's packed MXFP4 GEMV is at 0.18-0.38 of copy there; the bar is 0.7).
  # Session 50 added (CPU-checked only: nvcc sm_90a no spills; a lane-by-lane emulation of the new
  # kernel equal to the direct product in fp64): a row "Mp" under each M, every probe configuration
  # launched with PDL (first weights before griddepcontrol.wait, as the engine's kernels), so the
  # M = 1 comparison with ops is like for like; and MXFP4 configurations ending in x2, on the fp16
  # tensor cores with x as it is (no quantization of x; a code becomes an fp16 by bit placement).
  # Predictions: PDL takes ~1-1.5 us off a small shape's M = 1 call (768 x 768 to 1600 x 1600) and
  # little off 4096 x 4096; the x2 forms within 10% of the int8 forms' times at M = 1 (the decode
  # is ~9 instructions a word against ~16-30), so an engine form needs no quantized x.
  take gemv-mma
  $T 400 python3 tests/bench/explore_gemv_mma.py
  # the probe's files out of the tree again, so that an evidence run on this machine next sees
  # the branch's tree alone
  git apply -R tests/bench/ab_patches/gemv-mma.patch && echo "gemv-mma reverted"
elif [ "$PART" = 27 ]; then
  # PART=27 (session 48; on the machine PART=26 built): PART=25's ring kernel took the 1.5B
  # batch-16 step only from 19.7 to 16.7 ms: the batch-16 GEMV is not waiting on its loads.
  # Arithmetic (docs/kernels/decode.md, "Batch 16"): at full issue its ~19 instructions per chunk
  # pair and row would take ~1 ms a step; 16.7 ms is ~0.25 instructions a clock per SM. Which
  # stall holds it: each kernel alone, then ncu's warp states and SASS samples.
  echo "## the dense GEMV alone at M = 1, 4, 8, 16 (no norm): v3 at M = 16 (32), the rule (0: v30), every M >= 2 on the ring (16)"
  GEMV_RING="32 0 16" $T 150 python3 tests/bench/explore_gemv.py --ms 1,4,8,16 \
    --dense-shapes 1600x1600,4800x1600,1600x6400,50257x1600
  echo "## ncu: 4800 x 1600 LayerNorm at M = 16 (v3, ring, packed Q8_0) and M = 1 (v3)"
  CFG=batch $T 240 ncu --clock-control none -k regex:gemv --set full --import-source no \
    -o /tmp/gemvb -f python3 tests/bench/profile_gemv_ncu.py > /tmp/ncu-gemvb.txt 2>&1
  echo "ncu exit $?"; tail -5 /tmp/ncu-gemvb.txt
  ncu -i /tmp/gemvb.ncu-rep --page details --print-details all > "$OUT/gemvb-ncu-details.txt" 2>&1
  ncu -i /tmp/gemvb.ncu-rep --page source --print-source sass --csv > /tmp/gemvb-sass.csv 2>&1
  gzip -c /tmp/gemvb-sass.csv > "$OUT/gemvb-ncu-sass.csv.gz"; ls -l "$OUT"
  grep -E "gemv|Duration|Stall|stall|Warp Cycles|Issued|Eligible|Active Warps|Bank" "$OUT/gemvb-ncu-details.txt" | head -90
  # each kernel's stall reasons per issued instruction (v32's question: is no_instruction, the
  # instruction fetch, what the 16-row epilogue waits on?)
  ncu -i /tmp/gemvb.ncu-rep --page raw --csv \
    --metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio > "$OUT/gemvb-stalls.csv" 2>&1 || true
  python3 - "$OUT/gemvb-stalls.csv" <<'PY' || true
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
head = next((i for i, r in enumerate(rows) if any("Kernel Name" in c for c in r)), None)
if head is None:
    sys.exit(print("no stall table:", rows[:3]))
names = rows[head]
k = names.index("Kernel Name")
for r in rows[head + 2:]:
    vals = sorted(((float(v), n.split("stalled_")[1].split("_per")[0]) for n, v in zip(names, r)
                   if "stalled_" in n and v.replace(".", "", 1).isdigit()), reverse=True)
    print(r[k][:60], " ".join(f"{n} {v:.2f}" for v, n in vals[:6]))
PY
  # the batch-16 steps kernel by kernel without PDL (GPTE_NO_PDL=1: with it a kernel's time
  # includes its wait on the previous one, so PART=24's per-kernel times overlapped)
  for f in gpt2-1.5b-F16 gpt2-1.5b-Q8_0; do
    BATCH=16 GPTE_NO_PDL=1 $T 120 python3 tests/bench/explore_decode_step.py "$M/$f.gguf" | sed "s/^/b16 no-PDL $f /" | tail -9
  done
elif [ "$PART" = 11 ]; then
  # PART=11 (written in session 37): the split counts under v6's cluster merge (main with v6 landed)
  grep -q attention_decode_cluster_force csrc/bindings.cpp || { echo "v6 is not on main"; exit 1; }
  echo "## explore_decode.py: forced split counts, the heuristic's, SDPA (us; graph replays)"
  $T 300 python3 tests/ops/explore_decode.py
elif [ "$PART" = 10 ]; then
  # PART=10 (written in session 37): main, then main + v26 (the normalize loop 4 elements an
  # iteration with 8-byte norm-vector loads; docs/kernels/decode.md, v26 and "Session 37")
  main_then v26-land v26 50 STATS="1"
  $T 120 python3 -m pytest -p gates.pytest_plugin --no-evidence -q -m cuda tests/ops/test_linear.py tests/ops/test_linear_qkv.py 2>&1 | tail -3
elif [ "$PART" = 8 ]; then
  # ncu on main's dense GEMV at 1.5B's norm-fused shapes and the 1600 x 1600 output projection
  # (tests/bench/profile_gemv_ncu.py CFG=norm; each kernel alone, no PDL): the stall samples per
  # SASS instruction, to see which instructions of the staging the warps wait on. Files under $OUT.
  echo "## ncu: dense GEMV, 6400 / 4800 x 1600 LayerNorm and 1600 x 1600 (2 calls each, all 6 profiled)"
  CFG=norm $T 300 ncu --clock-control none -k regex:gemv_kernel --set full --import-source no \
    -o /tmp/gemv -f python3 tests/bench/profile_gemv_ncu.py > /tmp/ncu-gemv.txt 2>&1
  echo "ncu exit $?"; tail -5 /tmp/ncu-gemv.txt
  ncu -i /tmp/gemv.ncu-rep --page details --print-details all > "$OUT/gemv-ncu-details.txt" 2>&1
  echo "details exit $?"
  ncu -i /tmp/gemv.ncu-rep --page source --print-source sass --csv > "$OUT/gemv-ncu-sass.csv" 2>&1
  echo "source page exit $? ($(wc -l < "$OUT/gemv-ncu-sass.csv") lines)"
  grep -E "gemv_kernel|Duration|Stall|stall|Warp Cycles|Issued" "$OUT/gemv-ncu-details.txt" | head -60
elif [ "$PART" = 6 ] || [ "$PART" = 7 ] || [ "$PART" = 9 ]; then
  L=$(case $PART in 6) echo v23;; 7) echo v25;; *) echo v26;; esac)
  echo "## $L: the four steps (STATS=1: v23's default, a no-op setting of its hook)"
  steps $L 50 STATS="1"
  [ "$PART" != 6 ] && $T 120 python3 -m pytest -p gates.pytest_plugin --no-evidence -q -m cuda tests/ops/test_linear.py tests/ops/test_linear_qkv.py 2>&1 | tail -3
elif [ "$PART" = 5 ]; then
  echo "## phase probe (v23 + phase-probe.patch): per-block phase times in the replayed step"
  for f in gpt2-1.5b-F16 gpt2-124m-F16 llama-1b-F16; do
    $T 120 python3 tests/bench/explore_phase_probe.py "$M/$f.gguf"
  done
elif [ "$PART" = 4 ]; then
  # v24b: v23 plus the 16-byte norm loads as a loop of its own (v23's loop untouched for 0: call 3's
  # probe made its mode 0 355 us slower than v23 at 1.5B, the v22b trap again)
  echo "## v24b probe: the steps under NORM_LOAD 0 (v23) 1 (16-byte norm loads)"
  steps v24b 50 NORM_LOAD="0 1"
  $T 120 python3 -m pytest -p gates.pytest_plugin --no-evidence -q -m cuda tests/ops/test_linear.py -k "norm_load or stats_one_pass or norm" 2>&1 | tail -3
elif [ "$PART" = 3 ]; then
  echo "## v24 probe: the steps under NORM_LOAD 0 (v23) 1 (evict_last) 2 (16-byte) 3 (both)"
  steps v24 60 NORM_LOAD="0 1 2 3"
  $T 120 python3 -m pytest -p gates.pytest_plugin --no-evidence -q -m cuda tests/ops/test_linear.py tests/ops/test_linear_qkv.py 2>&1 | tail -3
else
  echo "## v23: the steps under STATS 1 (one pass) and 0 (two passes, v23's barriers)"
  steps v23 50 STATS="1 0"
  $T 90 python3 -m pytest -p gates.pytest_plugin --no-evidence -q -m cuda tests/ops/test_linear.py tests/ops/test_linear_qkv.py 2>&1 | tail -3
  git apply --reverse tests/bench/ab_patches/v23-land.patch && echo "main's csrc again"
  t0=$(date +%s); build_ext 3
  steps main 40 QGEMV_ZIP=1  # a no-op hook on these files: the same timing loop
fi
echo "call: $(( $(date +%s) - t_call )) s after the wheels"

#!/usr/bin/env bash
# GPU machine, repo root, .whl carried (session 40):  OUT=$OUT timeout 590 bash tests/bench/probe_fold_profile.sh
# Why v27 (tests/bench/ab_patches/v27-fold.patch) lost at GPT-2 1.5B in PART=12 (H100, session
# 40: main 2,016.8 us a step, v27 fold 2,071.1, v27 with its hook off 2,035.8; Llama ~1B 970.7 /
# 964.5 / 987.2): the profiler's time of every kernel of one decode step, by its place in the
# step (median over 20 replays), for main, then for v27 with the fold on (1) and off (0) in one
# build. Written to $OUT/fold-profile-<label>-<model>.json; compared on the CPU machine.
# Exploration, not evidence: main's tree plus the patch on the GPU machine only.
set -o pipefail
export SHAPES="gpt2-1.5b"  # (Llama ~1B dropped: the device time left)
. tests/bench/gpu_env.sh probe-fold-profile.log
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
(bash tests/bench/gen_models.sh > /tmp/models.txt 2>&1) &
MODELS_PID=$!
cat > /tmp/probe_fold.py <<'EOF'
"""probe_fold.py LABEL FOLD MODEL.gguf: one decode step's kernels by place (FOLD '-': no hook)."""
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, "tests/bench")
import explore_decode_step as eds  # noqa: E402

import gpt_engine  # noqa: E402
from gpt_engine.ops import _ext  # noqa: E402

label, fold, path = sys.argv[1:4]
if fold != "-":
    assert _ext.load().linear_fold_force(int(fold)) == int(fold)
m = gpt_engine.load(path, device="cuda")
m.generate(list(range(100, 132)), max_new_tokens=4, stop_at_eos=False)
dec = m._decoders[(1, True)]
st = dec.state
start = [t.clone() for t in (st.ids, st.pos, st.lens, st.status)]


def rewind():
    for t, s in zip((st.ids, st.pos, st.lens, st.status), start):
        t.copy_(s)


dec.graphs.clear()
rewind()
g = dec._graph("greedy", short=st.short_keys > 0)
times = []
for _ in range(5):
    rewind()
    times.append(eds.replay_us(g.replay))
R = 20
rewind()
CUDA = torch.profiler.ProfilerActivity.CUDA
with torch.profiler.profile(activities=[CUDA]) as prof:
    for _ in range(R):
        g.replay()
    torch.cuda.synchronize()
ev = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
ev.sort(key=lambda e: e.time_range.start)
n = len(ev) // R
dur = [getattr(e, "device_time_total", None) or e.cuda_time_total for e in ev]
med = [statistics.median(dur[r * n + i] for r in range(R)) for i in range(n)]
# the gap from a kernel's start to the next one's start: what it holds the stream for (PDL overlaps)
starts = [e.time_range.start for e in ev]
gap = [statistics.median(starts[r * n + i + 1] - starts[r * n + i] for r in range(R - 1)) for i in range(n)]
name = os.path.basename(path).removesuffix(".gguf")
out = {"label": label, "fold": fold, "model": name, "step_us": statistics.median(times), "steps": times,
       "events": len(ev), "per_step": n, "names": [e.name for e in ev[:n]], "us": med, "start_gap_us": gap}
json.dump(out, open(f"{os.environ['OUT']}/fold-profile-{label}{fold if fold != '-' else ''}-{name}.json", "w"))
print(f"{label} fold {fold} {name}: step {out['step_us']:.1f} us, {n} kernels a step "
      f"({len(ev)} events), kernel sum {sum(med):.1f} us")
EOF
T="timeout -s INT -k 10"
build_ext 3
wait $MODELS_PID; cat /tmp/models.txt
for f in gpt2-1.5b-F16; do $T 60 python3 /tmp/probe_fold.py main - "$M/$f.gguf"; done
git apply tests/bench/ab_patches/v27-fold.patch && echo "v27-fold applied" || exit 1
t0=$(date +%s); build_ext 3
for f in gpt2-1.5b-F16; do
  for v in 1 0; do $T 60 python3 /tmp/probe_fold.py v27 "$v" "$M/$f.gguf"; done
done
git apply -R tests/bench/ab_patches/v27-fold.patch
echo "call: $(( $(date +%s) - t0 )) s since v27's build began"

# Sourced (after tests/bench/gpu_env.sh) by the GPU-machine scripts that time a decode step kernel
# by kernel (written in session 40 for probe_fold_profile.sh): writes /tmp/step_places.py, which
# loads a model, captures its short greedy decode graph, times it (5 rounds of 100 replays) and
# profiles 20 replays, and writes every kernel's median duration and the median gap from its
# start to the next kernel's start, by its place in the step, to
# $OUT/$PLACES_PREFIX-<label>[<fold>]-<model>.json (PLACES_PREFIX: "places" unless set). Under PDL
# a kernel's duration includes its wait on the one before; the sum of the gaps is the step.
#   step_places LABEL FOLD MODEL.gguf   (FOLD '-': no hook)
step_places() { timeout -s INT -k 10 "${PLACES_TIMEOUT:-60}" python3 /tmp/step_places.py "$@"; }
cat > /tmp/step_places.py <<'EOF'
"""step_places.py LABEL FOLD MODEL.gguf: one decode step's kernels by place (FOLD '-': no hook;
0 / 1: ext.linear_fold_force, on a build that has it)."""
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, "tests/bench")
import explore_decode_step as eds  # noqa: E402

from gpt_engine.ops import _ext  # noqa: E402

label, fold, path = sys.argv[1:4]
if fold != "-":
    assert _ext.load().linear_fold_force(int(fold)) == int(fold)
m, dec, rewind = eds.load_step(path)
st = dec.state

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
json.dump(out, open(f"{os.environ['OUT']}/{os.environ.get('PLACES_PREFIX', 'places')}-{label}{fold if fold != '-' else ''}-{name}.json", "w"))
print(f"{label} fold {fold} {name}: step {out['step_us']:.1f} us, {n} kernels a step "
      f"({len(ev)} events), kernel sum {sum(med):.1f} us")
EOF
# On either machine, after sourcing: step_places_compare A.json B.json ... prints, per kernel
# name (and, with PERIOD=n, per place modulo n from the first GEMV: GPT-2's layer is 5 kernels),
# the summed durations and gaps of each file, so a change's cost lands on the kernels it touched.
step_places_compare() { python3 /tmp/step_places_compare.py "$@"; }
cat > /tmp/step_places_compare.py <<'EOF'
"""step_places_compare.py A.json B.json ...: step_places' files side by side (same step, same places)."""
import json
import os
import re
import sys

runs = [json.load(open(f)) for f in sys.argv[1:]]
n = runs[0]["per_step"]
if any(r["per_step"] != n for r in runs):
    sys.exit("the files have different kernel counts a step: not the same step")


def short(name: str) -> str:
    m = re.search(r"(\w+)(<[^()]*>)?\(", name)
    return (m.group(1) + (m.group(2) or "")) if m else name[:60]


names = [short(x) for x in runs[0]["names"]]
period = int(os.environ.get("PERIOD", "0"))
first = next((i for i, x in enumerate(names) if "gemv" in x), 0)
groups: dict[str, list[int]] = {}
for i, nm in enumerate(names):
    key = nm[:60]
    if period and first <= i < first + period * ((n - first) // period):
        key = f"[{(i - first) % period}] {key}"
    groups.setdefault(key, []).append(i)
print("steps (us): " + "  ".join(f"{r['label']}{r['fold'] if r['fold'] != '-' else ''} {r['step_us']:.1f}" for r in runs))
print(f"{'kernel':<66}{'n':>4} | " + " ".join(f"{'dur':>8}" for _ in runs) + " | " + " ".join(f"{'gap':>8}" for _ in runs))
for key, idx in groups.items():
    d = [sum(r["us"][i] for i in idx) for r in runs]
    g = [sum(r["start_gap_us"][i] for i in idx) for r in runs]
    print(f"{key:<66}{len(idx):>4} | " + " ".join(f"{v:8.1f}" for v in d) + " | " + " ".join(f"{v:8.1f}" for v in g))
print(f"{'all':<66}{n:>4} | " + " ".join(f"{sum(r['us']):8.1f}" for r in runs) + " | "
      + " ".join(f"{sum(r['start_gap_us']):8.1f}" for r in runs))
EOF

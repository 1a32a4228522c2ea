"""Where a decode step's time goes, on the GPU machine (exploration, not evidence): per model,
one graph-captured decode step timed by replaying it (CUDA events, 100 replays), and the
profiler's per-kernel GPU times over 20 replays. (The GEMV alone, per model width, is the
benchmark tests/ops/test_linear.py::test_gemv_bandwidth.)

    python tests/bench/explore_decode_step.py [MODEL.gguf ...]

MOE_VERSIONS="7 7r3" (gpt-oss files): instead, an A/B of the MoE kernels in the model's own
step: for each version (ext.moe_ab_force: 3, 6, 61 = v6.1, 7 = v7, 71 = v7.1,
72 = v7.2, the default; a suffix r3 also forces the routing kernel v3, ext.moe_route_ab_force, else the
default v4) the short greedy graph is captured anew, then the graphs are replayed in turn, 100
replays each, ROUNDS (default 5) times; medians per version.

ATTN_TILES="0 8 2 1" (any file): the same A/B for the decode attention's group tile (query heads
per block, ext.attention_decode_tile_force; 0: the shape's rule, csrc/attention_decode.cu).
GEMV_RING="0 1 2 3" (any file): the same for the dense GEMV's ring-kernel rule (ext.linear_ring_force:
0 the default, 1 v3 everywhere below K = 4096, 2 the ring kernel for gpt-oss's head only, v3 for
its QKV, 3 as 0 and v3 also for the long rows whose pairs fit one round: gpt-oss's output
projection, GPT-2 1.5B's and Llama-1b's down products; 4 v3 with 12 chunks per lane, one batch per
pair, for rows of 257-384 chunks: gpt-oss's QKV and head, GPT-2 124M's 768 x 3072; 5 the same for
the head only).
QGEMV_ZIP="0 1" (packed files): the same for the packed GEMV's MXFP4 code order
(ext.qgemv_zip_force: 0 v3's; 1 v3.3's, the same bits, the default; csrc/linear_q_impl.cuh).
STATS="1 0" (any file): the same for the dense GEMV's LayerNorm statistics (ext.linear_stats_force:
1 one pass shifted by the row's first value, v23, the default; 0 two passes, v2.1's bits;
csrc/linear_common.cuh).
FOLD="1 0" (any file with dense norm-fused products): the same for v27's norm folded into the dense
GEMV's epilogue (ext.linear_fold_force: 1 the default, 0 v23's normalize loop; csrc/linear_common.cuh).
QFOLD="1 0" (packed files): the same for the packed GEMV's norm fold (ext.qgemv_fold_force: 1 v3.4,
the default, 0 v3.3's staging; csrc/linear_q_impl.cuh).
SCATTER="1 0" (any file, with BATCH 5-16): the decode GEMVs' epilogue at 8 and 16 rows
(ext.linear_scatter_force: 1 v32's reduce-scatter, the default since session 49; 0 a warp_sum per sum; the same bits).
BATCH=16 (any file, default 1): every timing above on the decoder for that many sequences (the
same 32-token prompt each, generate_batch), so an A/B covers the M = BATCH kernels (the packed
GEMV's MT = 16 at 9-16); its attention reads the same key range as batch 1's.
QGEMV_MAX_ROWS="16 0" (packed files): the largest batch the packed GEMV takes; a product with more rows
first dequantizes its weight into a scratch matrix of x's dtype, then runs the dense GEMV on it
(linear.packed_gemv_ok answering False; 16 is the default, 0 never the packed GEMV).
QGEMV_SLICES="1 0" (packed files, where ops.linear has packed_gemv_rows): rows whose activation codes
do not fit the packed GEMV's shared memory at once in slices of rows, one call each (1, the
default), or on the dequantized weight as before slices (0).
HEAD_CUBLAS="0 1": dense products of >= 1 GiB (gpt-oss's untied 201,088 x 2,880 head) on the GEMV
kernel (0) or on cuBLAS (1: our norm ops, F.linear, then fp32; linear.CUBLAS_MIN_BYTES).
"""
from __future__ import annotations

import os
import statistics
import sys

import torch

import gpt_engine


# the extension's test hooks an A/B can alternate: (environment variable, label, ext setter, the
# hook's default setting), each described in the module doc
EXT_HOOKS = [
    ("ATTN_TILES", "attention tile", "attention_decode_tile_force", 0),
    ("GEMV_RING", "gemv ring rule", "linear_ring_force", 0),
    ("QGEMV_ZIP", "qgemv zip", "qgemv_zip_force", 1),
    ("STATS", "layernorm stats one pass (v23)", "linear_stats_force", 1),
    ("FOLD", "norm fold (v27)", "linear_fold_force", 1),
    ("QFOLD", "packed norm fold (v3.4)", "qgemv_fold_force", 1),
    ("SCATTER", "scatter epilogue (v32)", "linear_scatter_force", 1),
]


def replay_us(fn, n=100) -> float:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(n):
        fn()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / n * 1e3


def hook_ab(dec, rewind, name: str, settings: list[str], force, reset) -> None:
    """The short greedy step captured once per setting of a test/bench hook (force(setting) sets
    it, reset() lifts it), then the graphs replayed in turn, ROUNDS times; medians."""
    graphs = {}
    try:
        for v in settings:
            force(v)
            dec.graphs.clear()
            rewind()
            graphs[v] = dec._graph("greedy", short=dec.state.short_keys > 0)
    finally:
        reset()
    times = {v: [] for v in settings}
    for _ in range(int(os.environ.get("ROUNDS", "5"))):
        for v, g in graphs.items():
            rewind()
            times[v].append(replay_us(g.replay))
    for v, ts in times.items():
        print(f"{name} {v}: graph step median {statistics.median(ts):.1f} us  ({' '.join(f'{t:.1f}' for t in ts)})")
    dec.graphs.clear()


def moe_force(ext, v: str) -> None:
    """ "7", or "7r3": experts v7 and the routing kernel v3."""
    experts, _, route = v.partition("r")
    assert ext.moe_ab_force(int(experts), 0) == int(experts)
    assert ext.moe_route_ab_force(int(route or 4)) == int(route or 4)


def moe_reset(ext) -> None:
    ext.moe_ab_force(0, 0)
    ext.moe_route_ab_force(0)


def load_step(path: str):
    """The model at path on the GPU, its greedy decoder for BATCH sequences (default 1; warmed by a
    32-token prompt each and 4 new tokens), and rewind(), which puts the decode state back where
    the warm-up left it (also tests/bench/step_places.sh's loader)."""
    m = gpt_engine.load(path, device="cuda")
    batch = int(os.environ.get("BATCH", "1"))
    prompt = list(range(100, 132))
    try:  # a build whose GEMVs skip their wait (branch explore-s12) decodes garbage; time it anyway
        if batch == 1:
            m.generate(prompt, max_new_tokens=4, stop_at_eos=False)
        else:
            m.generate_batch([prompt] * batch, max_new_tokens=4, stop_at_eos=False)
    except Exception as e:  # noqa: BLE001
        print(f"generate: {e}")
    dec = m._decoders[(batch, True)]
    st = dec.state
    # each replay advances the position: every timing starts from the same one, so the
    # attention reads 37 to ~160 keys (the short graph's range) whichever graph runs
    start = [t.clone() for t in (st.ids, st.pos, st.lens, st.status)]

    def rewind():
        for t, s in zip((st.ids, st.pos, st.lens, st.status), start):
            t.copy_(s)
    return m, dec, rewind


def step_breakdown(path: str) -> None:
    m, dec, rewind = load_step(path)
    st = dec.state
    from gpt_engine.ops import _ext
    versions = os.environ.get("MOE_VERSIONS", "").split()
    heads = os.environ.get("HEAD_CUBLAS", "").split()
    qrows = os.environ.get("QGEMV_MAX_ROWS", "").split()
    slices = os.environ.get("QGEMV_SLICES", "").split()
    if versions:
        ext = _ext.load()
        hook_ab(dec, rewind, "moe", versions, lambda v: moe_force(ext, v), lambda: moe_reset(ext))
    ran = bool(versions or heads or qrows or slices)
    for var, label, setter, default in EXT_HOOKS:
        settings = os.environ.get(var, "").split()
        if settings:
            ran = True
            force = getattr(_ext.load(), setter)
            hook_ab(dec, rewind, label, settings,
                    lambda v, force=force, var=var: force(int(v)) == int(v) or sys.exit(f"{var} {v}: not a setting"),
                    lambda force=force, default=default: force(default))
    if heads:
        from gpt_engine.ops import linear_module as lin
        hook_ab(dec, rewind, "head on cuBLAS", heads,
                lambda v: setattr(lin, "CUBLAS_MIN_BYTES", 1 << 30 if v == "1" else None),
                lambda: setattr(lin, "CUBLAS_MIN_BYTES", None))
    if qrows:
        from gpt_engine.ops import linear_module as lin
        packed_ok = lin.packed_gemv_ok

        def limit(v):  # lin's kernels and linear_qkv call lin.packed_gemv_ok by its module name
            setattr(lin, "packed_gemv_ok", lambda w, q, dt, m, k: m <= int(v) and packed_ok(w, q, dt, m, k))
        hook_ab(dec, rewind, "packed GEMV max rows", qrows, limit, lambda: setattr(lin, "packed_gemv_ok", packed_ok))
    if slices:
        from gpt_engine.ops import linear_module as lin
        sliced = lin.packed_gemv_rows

        def whole(w, q, dt, m, k):  # before slices: all m rows in one call, or the dequantized weight
            return m if 0 < m <= lin.GEMV_MAX_ROWS and lin.packed_gemv_ok(w, q, dt, m, k) else 0
        hook_ab(dec, rewind, "packed rows in slices", slices,
                lambda v: setattr(lin, "packed_gemv_rows", sliced if v == "1" else whole),
                lambda: setattr(lin, "packed_gemv_rows", sliced))
    if ran:
        return
    graphs = [("greedy", dec._graph("greedy"))]
    if st.short_keys:
        graphs.append(("greedy:short", dec._graph("greedy", short=True)))
    for name, g in graphs:
        rewind()
        t = replay_us(g.replay)
        print(f"\n## {path.split('/')[-1]}: graph step {t:.1f} us ({1e6 / t:.0f} tok/s) [{name}], "
              f"capacity {st.capacity}, splits {st.splits}, short_keys {st.short_keys}")
    if os.environ.get("EXPLORE_NO_PROFILE"):
        return
    rewind()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            g.replay()
        torch.cuda.synchronize()
    rows = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            name = e.name[:60]
            r = rows.setdefault(name, [0, 0.0])
            r[0] += 1
            r[1] += e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
    total = sum(r[1] for r in rows.values())
    print(f"{'kernel':<62}{'calls/step':>11}{'us/call':>9}{'us/step':>9}{'share':>7}")
    for name, (n, us) in sorted(rows.items(), key=lambda kv: -kv[1][1])[:12]:
        print(f"{name:<62}{n / 20:>11.1f}{us / n:>9.2f}{us / 20:>9.1f}{us / total:>7.1%}")
    print(f"kernel time per step {total / 20:.1f} us of {t:.1f} us replay")
    del m, dec, g
    torch.cuda.empty_cache()


if __name__ == "__main__":
    for p in sys.argv[1:]:
        step_breakdown(p)

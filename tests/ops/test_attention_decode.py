"""Decode attention over the KV cache (GT-018), MHA/GQA (GT-019), prefill + decode = full (GT-020)."""
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gpt_engine import ops
from gpt_engine.ops import attention_decode_module as mod
from gpt_engine.ops import attention_prefill_module as prefill_mod

from ._bench import free, gbps, graphed, mark, nbytes
from ._util import DEVICES, HAS_CUDA, TOL_NAME, assert_nmse, f64, randn

# (B, Hq, Hkv, S, D, lens): ragged lengths, odd lengths, one key, a full cache, GQA groups 1..8
CASES = [(1, 1, 1, 16, 64, [1]), (2, 12, 12, 300, 64, [300, 7]), (3, 8, 2, 1000, 64, [999, 1, 513]),
         (1, 16, 2, 4100, 64, [4097]), (2, 9, 3, 77, 128, [77, 40]), (1, 4, 4, 50, 32, [33]),
         (4, 32, 4, 2048, 64, [2048, 1500, 1024, 3])]


@pytest.mark.story("GT-018", "GT-019")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_decode_vs_float64(device, dtype, case):
    b, hq, hkv, s, d, lens = case
    q = randn((b, hq, d), dtype, device)
    kc, vc = randn((b, hkv, s, d), dtype, device), randn((b, hkv, s, d), dtype, device)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=device)
    out = ops.attention_decode(q, kc, vc, seq_lens, d ** -0.5)
    assert out.shape == q.shape and out.dtype == dtype
    ref = mod.reference(*f64(q, kc, vc), seq_lens.cpu(), d ** -0.5)
    assert_nmse(out, ref, "nmse_attention" if dtype != torch.float32 else TOL_NAME[dtype])


@pytest.mark.story("GT-018", "GT-020")
def test_decode_reference_matches_sdpa():
    q, kc, vc = torch.randn(2, 6, 16, dtype=torch.float64), torch.randn(2, 2, 40, 16, dtype=torch.float64), \
        torch.randn(2, 2, 40, 16, dtype=torch.float64)
    lens = torch.tensor([40, 13])
    out = mod.reference(q, kc, vc, lens, 0.25)
    for i, n in enumerate(lens.tolist()):
        sd = F.scaled_dot_product_attention(q[i, :, None], kc[i, :, :n], vc[i, :, :n], scale=0.25, enable_gqa=True)
        assert_nmse(out[i], sd[:, 0], "nmse_float64_same_math")


@pytest.mark.story("GT-018", "GT-019")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")
@pytest.mark.parametrize("splits", [1, 3, 7, 64, 1024])
def test_decode_forced_splits(splits):
    """Any split count gives the same answer: the kernel rounds each split up to whole 64-key
    steps, so with many splits most are empty (a 1000-key cache over 1024 splits leaves
    1008 of them without a key) and the merge must skip them; ragged lengths, GQA 4:1."""
    from gpt_engine.ops import _ext
    b, hq, hkv, s, d, lens = 3, 8, 2, 1000, 64, [1000, 1, 333]
    q = randn((b, hq, d), torch.float16, "cuda")
    kc, vc = randn((b, hkv, s, d), torch.float16, "cuda"), randn((b, hkv, s, d), torch.float16, "cuda")
    seq_lens = torch.tensor(lens, dtype=torch.int32, device="cuda")
    out = torch.full_like(q, float("nan"))
    _ext.load().attention_decode(q, kc, vc, seq_lens, out, 0.125, splits)
    assert_nmse(out, mod.reference(*f64(q, kc, vc), seq_lens.cpu(), 0.125), "nmse_attention")


@pytest.mark.story("GT-018")
def test_max_splits_mirrors_the_kernel():
    """max_splits (the memory estimate's bound on the split workspaces) is the kernel's: its
    constants are attention_decode.cu's, read from the source (no GPU needed)."""
    src = (Path(__file__).resolve().parents[2] / "csrc" / "attention_decode.cu").read_text()
    assert int(re.search(r"\bkMaxSplits = (\d+);", src).group(1)) == mod.MAX_SPLITS
    assert int(re.search(r"\bkSplitAlign = (\d+);", src).group(1)) == mod.SPLIT_KEYS
    assert [mod.max_splits(s) for s in (1, 64, 65, 512, 65536, 65537, 1 << 20)] == [1, 1, 2, 8, 1024, 1024, 1024]


@pytest.mark.story("GT-018")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")
@pytest.mark.parametrize("hq,hkv", [(1, 1), (8, 2), (64, 8)])
@pytest.mark.parametrize("s", [1, 512, 4096, 131072])
def test_splits_for_within_max_splits(hq, hkv, s):
    assert 1 <= mod.splits_for(hq, hkv, s) <= mod.max_splits(s)


@pytest.mark.story("GT-020", "GT-018", "GT-019")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("hq,hkv", [(4, 4), (8, 2)])
def test_prefill_then_decode_equals_full_forward(device, hq, hkv):
    """Prefill 37 tokens into the cache, decode 12 more one at a time: every output matches
    the float64 reference of causal attention over all 49 tokens at once."""
    b, t, p, d, s = 2, 49, 37, 64, 64
    q, k, v = randn((b, t, hq, d), torch.float16, device), randn((b, t, hkv, d), torch.float16, device), \
        randn((b, t, hkv, d), torch.float16, device)
    kc = torch.full((b, hkv, s, d), float("nan"), dtype=torch.float16, device=device)
    vc = kc.clone()
    outs = [ops.attention_prefill(q[:, :p], k[:, :p], v[:, :p], 0.125)]
    ops.kv_append(kc, vc, k[:, :p], v[:, :p], 0)
    for i in range(p, t):
        ops.kv_append(kc, vc, k[:, i:i + 1], v[:, i:i + 1], i)
        lens = torch.full((b,), i + 1, dtype=torch.int64, device=device)
        outs.append(ops.attention_decode(q[:, i], kc, vc, lens, 0.125)[:, None])
    full = prefill_mod.reference(*f64(q, k, v), 0.125)
    assert_nmse(torch.cat(outs, dim=1), full, "nmse_attention")


@pytest.mark.story("GT-018")
@pytest.mark.parametrize("device", DEVICES)
def test_decode_bad_inputs(device):
    q = torch.randn(2, 4, 64, device=device)
    kc = torch.randn(2, 2, 10, 64, device=device)
    with pytest.raises(ops.OpError, match="seq_lens holds 11"):
        ops.attention_decode(q, kc, kc, torch.tensor([3, 11], device=device), 0.125)
    with pytest.raises(ops.OpError, match="seq_lens holds 0"):
        ops.attention_decode(q, kc, kc, torch.tensor([0, 1], device=device), 0.125)
    with pytest.raises(ops.OpError, match="seq_lens has dtype"):
        ops.attention_decode(q, kc, kc, torch.tensor([1.0, 2.0], device=device), 0.125)
    with pytest.raises(ops.OpError, match="not a multiple"):
        ops.attention_decode(torch.randn(2, 3, 64, device=device), kc, kc, torch.tensor([1, 2], device=device), 0.125)


@mark("GT-018")
@pytest.mark.parametrize("t", [1024, 4096, 16384, 32768])
@pytest.mark.parametrize("h", [12, 16, 32, 64])
@pytest.mark.parametrize("b", [1, 4, 8])
def test_decode_bandwidth(bench, b, h, t):
    """One query token per sequence vs a full cache of t keys, d = 64, fp16. Bandwidth on the
    K + V bytes read; SDPA gets the same cache as [B, H, T, D] and q as [B, H, 1, D]. Both are
    timed as CUDA graph replays (decode runs as graph replays); eager times in params."""
    d = 64
    kc, vc = (torch.randn(b, h, t, d, device="cuda", dtype=torch.float16) for _ in range(2))
    q = torch.randn(b, h, d, device="cuda", dtype=torch.float16)
    lens = torch.full((b,), t, dtype=torch.int32, device="cuda")
    kv_bytes = nbytes(kc, vc)
    q4 = q[:, :, None]
    ours = lambda: ops.attention_decode(q, kc, vc, lens, d ** -0.5)  # noqa: E731
    sdpa = lambda: F.scaled_dot_product_attention(q4, kc, vc)  # noqa: E731
    t_eager, t_sdpa_eager = bench.cuda_time(ours), bench.cuda_time(sdpa)
    tk, t_sdpa = bench.cuda_time(graphed(ours)), bench.cuda_time(graphed(sdpa))
    bench.record(f"attention_decode.fp16.B{b}.H{h}.T{t}", gbps(kv_bytes, tk), "GB/s", kind="bandwidth",
                 references={"sdpa": gbps(kv_bytes, t_sdpa)},
                 params={"B": b, "H": h, "T": t, "D": d, "kv_bytes": kv_bytes, "time_s": tk, "sdpa_time_s": t_sdpa,
                         "cuda_graph": True, "eager_time_s": t_eager, "sdpa_eager_time_s": t_sdpa_eager})
    del kc, vc
    free()


@pytest.mark.story("GT-018", "GT-019")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")
@pytest.mark.parametrize("short_keys", [1, 64, 256])
@pytest.mark.parametrize("case", [(3, 8, 2, 600, 64, [256, 1, 65]), (2, 12, 12, 300, 64, [300, 64]),
                                  (2, 9, 3, 77, 128, [77, 40])], ids=str)
def test_decode_short_sequences_take_one_split(short_keys, case):
    """short_keys (docs/kernels/decode.md, v10): a sequence with at most short_keys keys is
    attended by one split that writes its own output; the others keep `splits`. Every output
    equals the float64 reference; the sequences that are short enough get, bit for bit, the
    same output with the reduce launch left out (what the decode loop's short graph runs)."""
    from gpt_engine.ops import _ext
    b, hq, hkv, s, d, lens = case
    q = randn((b, hq, d), torch.float16, "cuda")
    kc, vc = randn((b, hkv, s, d), torch.float16, "cuda"), randn((b, hkv, s, d), torch.float16, "cuda")
    seq_lens = torch.tensor(lens, dtype=torch.int32, device="cuda")
    ext = _ext.load()
    full = torch.full_like(q, float("nan"))
    ext.attention_decode(q, kc, vc, seq_lens, full, 0.125, 8, None, 0, short_keys, True)
    assert_nmse(full, mod.reference(*f64(q, kc, vc), seq_lens.cpu(), 0.125), "nmse_attention")
    short = [i for i, n in enumerate(lens) if n <= short_keys]
    no_reduce = torch.full_like(q, float("nan"))
    ext.attention_decode(q, kc, vc, seq_lens, no_reduce, 0.125, 8, None, 0, short_keys, False)
    assert torch.equal(no_reduce[short], full[short])


# (B, Hq, Hkv, S, D, lens, window): gpt-oss's heads (64 on 8) short, in the window and past it,
# with sinks, split over a long full layer, and split with sinks over a window longer than one
# split (the reduce adds the sinks); groups 4 and 8 split or not; D = 128; a group of 3 (a tile of
# 4 then has an empty head)
TILE_CASES = [(1, 64, 8, 200, 64, [130], 128), (2, 64, 8, 4100, 64, [4097, 200], 128), (1, 64, 8, 4100, 64, [4097], 0),
              (1, 64, 8, 4100, 64, [4097], 1024), (3, 8, 2, 1000, 64, [999, 1, 513], 0),
              (1, 16, 2, 4100, 64, [4097], 0), (2, 16, 2, 77, 128, [77, 40], 0), (2, 9, 3, 300, 64, [300, 5], 0)]


@pytest.mark.story("GT-019")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")
@pytest.mark.parametrize("tile", [1, 2, 4, 8])
@pytest.mark.parametrize("case", TILE_CASES, ids=str)
def test_decode_every_group_tile_vs_float64(tile, case):
    """Every group tile (query heads per block: the rule picks one from the shape, the test hook
    forces each) gives the float64 reference's output, with sinks and a window where the case has
    one, split or in one split; the one-split sequences get the same bits without the reduce."""
    from gpt_engine.ops import _ext
    b, hq, hkv, s, d, lens, window = case
    q = randn((b, hq, d), torch.float16, "cuda")
    kc, vc = randn((b, hkv, s, d), torch.float16, "cuda"), randn((b, hkv, s, d), torch.float16, "cuda")
    seq_lens = torch.tensor(lens, dtype=torch.int32, device="cuda")
    sinks = torch.linspace(-5.0, 5.0, hq, device="cuda") if window else None
    ref = mod.reference(*f64(q, kc, vc), seq_lens.cpu(), d ** -0.5, None if sinks is None else sinks.cpu(), window)
    ext = _ext.load()
    try:
        assert ext.attention_decode_tile_force(tile) == tile
        assert ext.attention_decode_group_tile(hq, hkv) == tile
        full = torch.full_like(q, float("nan"))
        ext.attention_decode(q, kc, vc, seq_lens, full, d ** -0.5, 0, sinks, window, 256, True)
        assert_nmse(full, ref, "nmse_attention")
        short = [i for i, n in enumerate(lens) if min(n, window or n) <= 256]
        no_reduce = torch.full_like(q, float("nan"))
        if len(short) == b:
            ext.attention_decode(q, kc, vc, seq_lens, no_reduce, d ** -0.5, 0, sinks, window, 256, False)
            assert torch.equal(no_reduce, full)
    finally:
        ext.attention_decode_tile_force(0)


@pytest.mark.story("GT-019")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")
def test_decode_group_tile_rule():
    """The rule (csrc/attention_decode.cu, pick_group_tile): the group rounded up to a power of two
    (at most 8), halved while one sequence's one-split grid (Hkv x ceil(group / tile) blocks) is
    under kMinHeadBlocks (32, v5); the hook's force wins until it is lifted."""
    from gpt_engine.ops import _ext
    ext = _ext.load()
    assert ext.attention_decode_tile_force(0) == 0
    # (Hq, Hkv) -> tile: GPT-2 (MHA), gpt-oss, Llama-1b, SmolLM2, groups of 8 on 16 and of 16 on 8
    # kv heads, groups of 8 on 32 kv heads
    rule = {(25, 25): 1, (64, 8): 2, (32, 8): 1, (9, 3): 1, (128, 16): 4, (128, 8): 4, (256, 32): 8}
    assert {k: ext.attention_decode_group_tile(*k) for k in rule} == rule
    try:
        assert ext.attention_decode_tile_force(8) == 8 and ext.attention_decode_group_tile(64, 8) == 8
        assert ext.attention_decode_tile_force(3) == 8  # not a tile: nothing changes
    finally:
        ext.attention_decode_tile_force(0)
    assert ext.attention_decode_group_tile(64, 8) == 2


# (B, Hq, Hkv, S, D, lens, window, dtype): MHA and gpt-oss's heads with sinks and a window, a
# group of 3, D = 128, bf16, ragged batches with a short sequence among long ones
CLUSTER_CASES = [(4, 32, 32, 1024, 64, [1024, 1000, 3, 700], 0, torch.float16),
                 (2, 64, 8, 4100, 64, [4097, 200], 128, torch.float16),
                 (1, 64, 8, 4100, 64, [4097], 1024, torch.bfloat16),
                 (3, 9, 3, 2000, 128, [2000, 1, 1999], 0, torch.float16),
                 (2, 12, 12, 1100, 64, [1100, 257], 0, torch.bfloat16)]


@pytest.mark.story("GT-018", "GT-019")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")
@pytest.mark.parametrize("splits", [2, 3, 8, 9])
@pytest.mark.parametrize("case", CLUSTER_CASES, ids=str)
def test_decode_cluster_merge_vs_float64(splits, case):
    """v6: a row group's 2..8 splits launched as one thread-block cluster merge in shared memory
    (no workspace, no reduce launch). Under each bound of the hook (1: always the reduce; 8) and
    past it (9 splits) every output equals the float64 reference, with sinks and a window where the case has one and
    the short sequences in one split; a sequence's output has the same bits alone as in its batch
    (the path depends on the split count only)."""
    from gpt_engine.ops import _ext
    b, hq, hkv, s, d, lens, window, dtype = case
    q = randn((b, hq, d), dtype, "cuda")
    kc, vc = randn((b, hkv, s, d), dtype, "cuda"), randn((b, hkv, s, d), dtype, "cuda")
    seq_lens = torch.tensor(lens, dtype=torch.int32, device="cuda")
    sinks = torch.linspace(-5.0, 5.0, hq, device="cuda") if window else None
    ref = mod.reference(*f64(q, kc, vc), seq_lens.cpu(), d ** -0.5, None if sinks is None else sinks.cpu(), window)
    ext = _ext.load()
    outs = {}
    try:
        for bound in (1, 8):
            assert ext.attention_decode_cluster_force(bound) == bound
            out = torch.full_like(q, float("nan"))
            ext.attention_decode(q, kc, vc, seq_lens, out, d ** -0.5, splits, sinks, window, 256, True)
            assert_nmse(out, ref, "nmse_attention")
            alone = torch.full_like(q[:1], float("nan"))
            ext.attention_decode(q[:1], kc[:1], vc[:1], seq_lens[:1], alone, d ** -0.5, splits, sinks, window, 256,
                                 True)
            assert torch.equal(alone, out[:1])
            outs[bound] = out
    finally:
        ext.attention_decode_cluster_force(0)
    assert ext.attention_decode_cluster_force(0) == 8
    if splits > 8:  # past the bound both runs took the reduce
        assert torch.equal(outs[1], outs[8])


@pytest.mark.story("GT-018")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")
def test_decode_cluster_bound_hook():
    """The hook takes 0 (the default, 8), 1 (never) and 8; any other value changes nothing."""
    from gpt_engine.ops import _ext
    ext = _ext.load()
    try:
        assert ext.attention_decode_cluster_force(0) == 8
        assert ext.attention_decode_cluster_force(1) == 1
        assert ext.attention_decode_cluster_force(16) == 1
        assert ext.attention_decode_cluster_force(8) == 8
    finally:
        ext.attention_decode_cluster_force(0)


@pytest.mark.story("GT-018")
@pytest.mark.parametrize("device", DEVICES)
def test_decode_without_reduce_refuses_long_sequences(device):
    """reduce=False is valid only when every sequence takes one split: a longer sequence, or
    short_keys = 0, gets a clear error instead of an output nobody wrote."""
    q = torch.randn(2, 4, 64, device=device)
    kc = torch.randn(2, 2, 300, 64, device=device)
    lens = torch.tensor([3, 257], device=device)
    with pytest.raises(ops.OpError, match="seq_lens holds 257 with reduce=False"):
        ops.attention_decode(q, kc, kc, lens, 0.125, 0, None, 0, 256, False)
    with pytest.raises(ops.OpError, match="reduce=False needs short_keys > 0"):
        ops.attention_decode(q, kc, kc, lens, 0.125, 0, None, 0, 0, False)
    ok = ops.attention_decode(q, kc, kc, lens, 0.125, 0, None, 0, 257, False)
    assert_nmse(ok, mod.reference(*f64(q, kc, kc), lens.cpu(), 0.125), "nmse_attention")

"""Token + position embedding gather-add (GT-008)."""
import pytest
import torch

from gpt_engine import ops

from ._bench import free, gbps, graphed, mark, nbytes
from ._util import DEVICES, DTYPES, TOL_NAME, assert_nmse, f64, randn


@pytest.mark.story("GT-008")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("b,t,v,p,c", [(1, 1, 5, 3, 1), (2, 7, 50, 16, 33), (3, 17, 1000, 64, 768),
                                       (1, 5, 300, 9, 1023), (2, 4, 100, 8, 1600)], ids=str)
def test_embedding_vs_float64(device, dtype, b, t, v, p, c):
    ids = torch.randint(0, v, (b, t), device=device)
    pos = torch.randint(0, p, (b, t), device=device)
    wte, wpe = randn((v, c), dtype, device), randn((p, c), dtype, device)
    out = ops.embedding(ids, pos, wte, wpe)
    assert out.shape == (b, t, c) and out.dtype == dtype
    wte64, wpe64 = f64(wte, wpe)
    ref = wte64[ids.cpu()] + wpe64[pos.cpu()]  # plain indexing in float64 as the oracle
    assert_nmse(out, ref, TOL_NAME[dtype])


@pytest.mark.story("GT-008")
@pytest.mark.parametrize("device", DEVICES)
def test_embedding_bad_ids_and_positions(device):
    wte, wpe = torch.randn(10, 4, device=device), torch.randn(6, 4, device=device)
    ok = torch.zeros(1, 3, dtype=torch.long, device=device)
    with pytest.raises(ops.OpIndexError, match="ids holds 10"):
        ops.embedding(torch.tensor([[1, 10, 2]], device=device), ok, wte, wpe)
    with pytest.raises(ops.OpIndexError, match="ids holds -1"):
        ops.embedding(torch.tensor([[-1, 0, 2]], device=device), ok, wte, wpe)
    with pytest.raises(ops.OpIndexError, match="pos holds 6"):
        ops.embedding(ok, torch.tensor([[0, 6, 1]], device=device), wte, wpe)
    with pytest.raises(ops.OpError, match="ids has dtype"):
        ops.embedding(ok.int(), ok, wte, wpe)
    with pytest.raises(ops.OpError, match="wpe has shape"):
        ops.embedding(ok, ok, wte, torch.randn(6, 5, device=device))


@mark("GT-008")
def test_embedding_bandwidth(bench):
    """128 x 1024 tokens, GPT-2 XL width (C = 1600) over a 50257-row table, fp16: 420 MB written
    (sizes: tests/ops/_bench.py). Bytes: each gathered wte row read once, the output written once, the 1024 wpe rows read
    once. Timed as CUDA graph replays (both sides); eager times, with the host check's sync,
    in params."""
    b, t, v, p, c = 128, 1024, 50257, 1024, 1600
    ids = torch.randint(0, v, (b, t), device="cuda")
    pos = torch.arange(t, device="cuda").expand(b, t).contiguous()
    wte = torch.randn(v, c, device="cuda", dtype=torch.float16)
    wpe = torch.randn(p, c, device="cuda", dtype=torch.float16)
    moved = 2 * b * t * c * 2 + nbytes(wpe) + nbytes(ids, pos)
    ours = lambda: ops.embedding(ids, pos, wte, wpe)  # noqa: E731
    plain = lambda: wte[ids] + wpe[pos]  # noqa: E731
    # eager: includes the op's host check of the bad-index flag (one sync per call)
    # ours and torch alternate rep by rep: a ratio of near-equal times (tests/ops/_bench.py)
    t_eager, t_torch_eager = bench.cuda_time_pair(ours, plain)
    # graph replay, as the decode loop runs it (the kernel's NaN rows guard bad indices there)
    tk, t_torch = bench.cuda_time_pair(graphed(ours), graphed(plain))
    bench.record("embedding.fp16", gbps(moved, tk), "GB/s", kind="bandwidth",
                 references={"torch": gbps(moved, t_torch)},
                 params={"tokens": b * t, "n_embd": c, "vocab": v, "bytes": moved, "time_s": tk,
                         "torch_time_s": t_torch, "cuda_graph": True, "eager_time_s": t_eager,
                         "torch_eager_time_s": t_torch_eager})
    free()

"""One GPT-2 block from our ops vs HF transformers' GPT2Block on the same weights (GT-016),
and prefill + decode steps through the block equal one full forward (GT-020)."""
import pytest
import torch

from . import _gpt2_block as blk
from ._bench import graphed, mark
from ._util import DEVICES, TOL_NAME, assert_nmse, randn

transformers = pytest.importorskip("transformers")


def _hf_block(n_embd, n_head):
    cfg = transformers.GPT2Config(n_embd=n_embd, n_head=n_head, n_inner=4 * n_embd, n_positions=1024,
                                  activation_function="gelu_new", resid_pdrop=0.0, attn_pdrop=0.0,
                                  embd_pdrop=0.0, layer_norm_epsilon=1e-5, attn_implementation="eager")
    block = transformers.models.gpt2.modeling_gpt2.GPT2Block(cfg, layer_idx=0).eval()
    with torch.no_grad():  # HF initialises LN to (1, 0) and biases to 0: randomise everything
        for p in block.parameters():
            p.copy_(torch.randn_like(p) * (0.02 if p.dim() == 2 else 0.1))
        for ln in (block.ln_1, block.ln_2):
            ln.weight.add_(1.0)
    return block


def _hf_forward64(block, x):
    """HF's block in float64 on the CPU with an explicit additive causal mask."""
    b64 = block.double()
    t = x.shape[1]
    mask = torch.full((t, t), float("-inf"), dtype=torch.float64).triu(1)[None, None]
    with torch.no_grad():
        out = b64(x.to("cpu", torch.float64), attention_mask=mask)
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.story("GT-016")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_gpt2_block_matches_hf(device, dtype):
    n_embd, n_head, b, t = (768, 12, 2, 67) if device == "cuda" else (128, 4, 2, 19)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    hf = _hf_block(n_embd, n_head)
    w = blk.BlockWeights.from_hf(hf, dtype, device)
    x = randn((b, t, n_embd), dtype, device)
    out = blk.prefill(x, w, n_head, 1e-5)
    ref = _hf_forward64(hf, x)
    # fp16/bf16: every op rounds its output, so the bound is the block-level one
    assert_nmse(out, ref, TOL_NAME[dtype] if dtype == torch.float32 else f"nmse_block_{str(dtype)[6:]}")


@pytest.mark.story("GT-020", "GT-016")
@pytest.mark.parametrize("device", DEVICES)
def test_gpt2_block_prefill_then_decode_equals_full(device):
    n_embd, n_head, b, t, p = (768, 12, 2, 40, 29) if device == "cuda" else (128, 4, 2, 13, 9)
    dtype = torch.float16 if device == "cuda" else torch.float32
    hf = _hf_block(n_embd, n_head)
    w = blk.BlockWeights.from_hf(hf, dtype, device)
    x = randn((b, t, n_embd), dtype, device)
    d = n_embd // n_head
    kc = torch.full((b, n_head, 64, d), float("nan"), dtype=dtype, device=device)
    vc = kc.clone()
    outs = [blk.prefill(x[:, :p], w, n_head, 1e-5, kc, vc)]
    for i in range(p, t):
        lens = torch.full((b,), i + 1, dtype=torch.int32, device=device)
        outs.append(blk.decode_step(x[:, i:i + 1], w, n_head, 1e-5, kc, vc, i, lens))
    ref = _hf_forward64(hf, x)  # one full forward over all t tokens
    assert_nmse(torch.cat(outs, 1), ref, TOL_NAME[dtype] if dtype == torch.float32 else "nmse_block_float16")


@mark("GT-016")
def test_gpt2_block_decode_step_time(bench):
    """A GPT-2 small block (768 wide, 12 heads) decode step at batch 1, position 1023 of a
    1024-slot cache, fp16: our ops vs the same step in plain torch. Both are captured in a
    CUDA graph (decode runs as graph replays; this removes Python dispatch from both sides);
    un-graphed times are kept in params."""
    n_embd, n_head, s = 768, 12, 1024
    hf = _hf_block(n_embd, n_head)
    w = blk.BlockWeights.from_hf(hf, torch.float16, "cuda")
    x = torch.randn(1, 1, n_embd, device="cuda", dtype=torch.float16)
    caches = [torch.randn(1, n_head, s, n_embd // n_head, device="cuda", dtype=torch.float16) for _ in range(2)]
    caches += [c.clone() for c in caches]  # the same cache contents for both steps
    lens = torch.full((1,), s, dtype=torch.int32, device="cuda")
    ours = lambda: blk.decode_step(x, w, n_head, 1e-5, caches[0], caches[1], s - 1, lens)  # noqa: E731
    plain = lambda: blk.torch_decode_step(x, w, n_head, 1e-5, caches[2], caches[3], s - 1)  # noqa: E731
    # both compute the same function: check before timing
    assert_nmse(ours(), plain(), "nmse_block_float16")
    t_eager, t_torch_eager = bench.cuda_time(ours), bench.cuda_time(plain)
    t = bench.cuda_time(graphed(ours))
    t_torch = bench.cuda_time(graphed(plain))
    bench.record("gpt2_block_decode.fp16", t * 1e6, "us", kind="time", references={"torch": t_torch * 1e6},
                 params={"n_embd": n_embd, "n_head": n_head, "batch": 1, "position": s - 1, "cuda_graph": True,
                         "eager_time_s": t_eager, "torch_eager_time_s": t_torch_eager})

"""One GPT-2 block as the engine runs it (gpt_engine/models/gpt2.py's ``block``: the fused
linear op, qkv_rope, the attention kernels) vs HF transformers' GPT2Block on the same weights
(GT-016), and prefill + decode steps through the block equal one full forward (GT-020). The
decode-step benchmark times that same model code, graph-captured as the engine replays it,
against the same step in plain torch."""
from types import SimpleNamespace

import gguf
import pytest
import torch
import torch.nn.functional as F

from gpt_engine import ops
from gpt_engine.kv_cache import KVCache
from gpt_engine.models import gpt2
from gpt_engine.models.attention import HeadLayout, attend_decode, attend_tokens
from gpt_engine.qweight import QWeight

from ._bench import graphed, mark
from ._util import DEVICES, TOL_NAME, assert_nmse, randn

transformers = pytest.importorskip("transformers")
_QT = {torch.float32: gguf.GGMLQuantizationType.F32, torch.float16: gguf.GGMLQuantizationType.F16,
       torch.bfloat16: gguf.GGMLQuantizationType.BF16}


def _qweight(t: torch.Tensor, dtype, device) -> QWeight:
    """A (out, in) weight as the GGUF would hold it in dtype's own type."""
    d = t.detach().to(device=device, dtype=dtype).contiguous()
    return QWeight(d.view(torch.uint8).reshape(d.shape[0], -1), _QT[dtype], tuple(d.shape))


def layer_from_hf(block, dtype, device) -> dict:
    """The engine's layer dict from HF's block (Conv1D keeps (in, out): transposed)."""
    g = lambda t: t.detach().to(device=device, dtype=dtype).contiguous()  # noqa: E731
    a, m = block.attn, block.mlp
    return {"ln1": ops.Norm("layernorm", g(block.ln_1.weight), g(block.ln_1.bias), 1e-5),
            "qkv_w": _qweight(a.c_attn.weight.T, dtype, device), "qkv_b": g(a.c_attn.bias),
            "o_w": _qweight(a.c_proj.weight.T, dtype, device), "o_b": g(a.c_proj.bias),
            "ln2": ops.Norm("layernorm", g(block.ln_2.weight), g(block.ln_2.bias), 1e-5),
            "up_w": _qweight(m.c_fc.weight.T, dtype, device), "up_b": g(m.c_fc.bias),
            "down_w": _qweight(m.c_proj.weight.T, dtype, device), "down_b": g(m.c_proj.bias)}


def _heads(n_embd, n_head):
    return HeadLayout(n_head, n_head, n_embd // n_head, (n_embd // n_head) ** -0.5)


def prefill(x, L, heads, cache=None):
    """x [B, T, C] -> [B, T, C] through gpt2.block; fills the cache's first T slots when given."""
    b, t, c = x.shape
    pos = torch.arange(t, device=x.device).expand(b, t).reshape(-1).contiguous()
    out = gpt2.block(L, x.reshape(b * t, c),
                     lambda h, w, bias, n: attend_tokens(heads, h, w, bias, n, cache, 0, b, 0, pos))
    return out.view(b, t, c)


def decode_state(cache, pos, b, device):
    """What attend_decode reads (a DecodeState's fields) for layer 0 of ``cache``."""
    return SimpleNamespace(cache=cache, pos=torch.full((b,), pos, dtype=torch.long, device=device),
                           lens=torch.zeros(b, dtype=torch.int32, device=device),
                           status=torch.zeros(1, dtype=torch.int32, device=device), splits=0,
                           short_keys=0, reduce=True)


def decode_step(x, L, heads, st):
    """x [B, 1, C], the token at st.pos -> [B, 1, C], as the decode graph runs it."""
    b, _, c = x.shape
    return gpt2.block(L, x.reshape(b, c), lambda h, w, bias, n: attend_decode(heads, h, w, bias, n, st, 0)).view(b, 1, c)


def torch_decode_step(x, L, n_head, eps, k_cache, v_cache, pos):
    """The same step written with plain torch ops (F.layer_norm, SDPA, F.gelu)."""
    b, t, c = x.shape
    d = c // n_head
    w = {k: (v.dense(x.dtype) if isinstance(v, QWeight) else v) for k, v in L.items()}
    h = F.layer_norm(x, (c,), w["ln1"].weight, w["ln1"].bias, eps)
    q, k, v = F.linear(h, w["qkv_w"], w["qkv_b"]).view(b, t, 3, n_head, d).unbind(2)
    k_cache[:, :, pos:pos + 1] = k.transpose(1, 2)
    v_cache[:, :, pos:pos + 1] = v.transpose(1, 2)
    a = F.scaled_dot_product_attention(q.transpose(1, 2), k_cache[:, :, :pos + 1], v_cache[:, :, :pos + 1])
    x = x + F.linear(a.transpose(1, 2).reshape(b, t, c), w["o_w"], w["o_b"])
    m = F.gelu(F.linear(F.layer_norm(x, (c,), w["ln2"].weight, w["ln2"].bias, eps), w["up_w"], w["up_b"]),
               approximate="tanh")
    return x + F.linear(m, w["down_w"], w["down_b"])


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
    L = layer_from_hf(hf, dtype, device)
    x = randn((b, t, n_embd), dtype, device)
    out = prefill(x, L, _heads(n_embd, n_head))
    ref = _hf_forward64(hf, x)
    # fp16/bf16: every op rounds its output, so the bound is the block-level one
    assert_nmse(out, ref, TOL_NAME[dtype] if dtype == torch.float32 else f"nmse_block_{str(dtype)[6:]}")


@pytest.mark.story("GT-020", "GT-016")
@pytest.mark.parametrize("device", DEVICES)
def test_gpt2_block_prefill_then_decode_equals_full(device):
    n_embd, n_head, b, t, p = (768, 12, 2, 40, 29) if device == "cuda" else (128, 4, 2, 13, 9)
    dtype = torch.float16 if device == "cuda" else torch.float32
    hf = _hf_block(n_embd, n_head)
    L = layer_from_hf(hf, dtype, device)
    heads = _heads(n_embd, n_head)
    x = randn((b, t, n_embd), dtype, device)
    cache = KVCache(1, b, n_head, 64, n_embd // n_head, dtype, device)
    cache.k.fill_(float("nan"))
    cache.v.fill_(float("nan"))
    outs = [prefill(x[:, :p], L, heads, cache)]
    for i in range(p, t):
        with ops.device_checked():
            outs.append(decode_step(x[:, i:i + 1], L, heads, decode_state(cache, i, b, device)))
    ref = _hf_forward64(hf, x)  # one full forward over all t tokens
    assert_nmse(torch.cat(outs, 1), ref, TOL_NAME[dtype] if dtype == torch.float32 else "nmse_block_float16")


@mark("GT-016")
def test_gpt2_block_decode_step_time(bench):
    """A GPT-2 small block (768 wide, 12 heads) decode step at batch 1, position 1023 of a
    1024-slot cache, fp16: models/gpt2.py's block (what the engine replays) vs the same step in
    plain torch. Both are captured in a CUDA graph (decode runs as graph replays; this removes
    Python dispatch from both sides); un-graphed times are kept in params."""
    n_embd, n_head, s = 768, 12, 1024
    hf = _hf_block(n_embd, n_head)
    L = layer_from_hf(hf, torch.float16, "cuda")
    heads = _heads(n_embd, n_head)
    x = torch.randn(1, 1, n_embd, device="cuda", dtype=torch.float16)
    cache = KVCache(1, 1, n_head, s, n_embd // n_head, torch.float16, "cuda")
    cache.k.normal_()
    cache.v.normal_()
    plain_k, plain_v = cache.k[0].clone(), cache.v[0].clone()  # the same cache contents for both steps
    st = decode_state(cache, s - 1, 1, "cuda")

    def ours():
        with ops.device_checked():
            return decode_step(x, L, heads, st)
    plain = lambda: torch_decode_step(x, L, n_head, 1e-5, plain_k, plain_v, s - 1)  # noqa: E731
    # both compute the same function: check before timing
    assert_nmse(ours(), plain(), "nmse_block_float16")
    # ours and torch alternate rep by rep: a ratio of near-equal times (tests/ops/_bench.py)
    t_eager, t_torch_eager = bench.cuda_time_pair(ours, plain)
    t, t_torch = bench.cuda_time_pair(graphed(ours), graphed(plain))
    bench.record("gpt2_block_decode.fp16", t * 1e6, "us", kind="time", references={"torch": t_torch * 1e6},
                 params={"n_embd": n_embd, "n_head": n_head, "batch": 1, "position": s - 1, "cuda_graph": True,
                         "eager_time_s": t_eager, "torch_eager_time_s": t_torch_eager})

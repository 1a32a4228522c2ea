"""One GPT-2 block assembled from our ops (prefill and one decode step), and the same
decode step in plain torch (the benchmark's reference). Test helper only."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gpt_engine import ops


@dataclass
class BlockWeights:
    """nn.Linear layout (out, in), as the GGUF loader delivers them."""
    ln1_w: torch.Tensor
    ln1_b: torch.Tensor
    qkv_w: torch.Tensor
    qkv_b: torch.Tensor
    proj_w: torch.Tensor
    proj_b: torch.Tensor
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor
    up_w: torch.Tensor
    up_b: torch.Tensor
    down_w: torch.Tensor
    down_b: torch.Tensor

    @classmethod
    def from_hf(cls, block, dtype, device):
        """HF Conv1D keeps weights as (in, out); transpose to (out, in)."""
        g = lambda t: t.detach().to(device=device, dtype=dtype).contiguous()  # noqa: E731
        a, m = block.attn, block.mlp
        return cls(g(block.ln_1.weight), g(block.ln_1.bias), g(a.c_attn.weight.T), g(a.c_attn.bias),
                   g(a.c_proj.weight.T), g(a.c_proj.bias), g(block.ln_2.weight), g(block.ln_2.bias),
                   g(m.c_fc.weight.T), g(m.c_fc.bias), g(m.c_proj.weight.T), g(m.c_proj.bias))


def _attn_in(x, w, n_head, eps):
    b, t, c = x.shape
    h = ops.layernorm(x, w.ln1_w, w.ln1_b, eps)
    qkv = F.linear(h, w.qkv_w, w.qkv_b).view(b, t, 3, n_head, c // n_head)
    return qkv.unbind(2)  # q, k, v: strided views [B, T, H, D]


def _attn_out_and_mlp(x, attn, w, eps):
    b, t, c = x.shape
    a = F.linear(attn.reshape(b, t, c), w.proj_w, w.proj_b)
    h, n = ops.add_layernorm(a, x, w.ln2_w, w.ln2_b, eps)
    return ops.residual_add(h, ops.ffn(n, w.up_w, w.up_b, w.down_w, w.down_b, "tanh"))


def prefill(x, w, n_head, eps, k_cache=None, v_cache=None):
    """x: [B, T, C] -> [B, T, C]; fills the caches' first T slots when given."""
    q, k, v = _attn_in(x, w, n_head, eps)
    if k_cache is not None:
        ops.kv_append(k_cache, v_cache, k, v, 0)
    attn = ops.attention_prefill(q, k, v, q.shape[-1] ** -0.5)
    return _attn_out_and_mlp(x, attn, w, eps)


def decode_step(x, w, n_head, eps, k_cache, v_cache, pos, seq_lens):
    """x: [B, 1, C], the token at position `pos`; seq_lens = pos + 1 (device tensor)."""
    q, k, v = _attn_in(x, w, n_head, eps)
    ops.kv_append(k_cache, v_cache, k, v, pos)
    attn = ops.attention_decode(q[:, 0], k_cache, v_cache, seq_lens, q.shape[-1] ** -0.5)
    return _attn_out_and_mlp(x, attn[:, None], w, eps)


def torch_decode_step(x, w, n_head, eps, k_cache, v_cache, pos):
    """The same step written with plain torch ops (F.layer_norm, SDPA, F.gelu)."""
    b, t, c = x.shape
    d = c // n_head
    h = F.layer_norm(x, (c,), w.ln1_w, w.ln1_b, eps)
    q, k, v = F.linear(h, w.qkv_w, w.qkv_b).view(b, t, 3, n_head, d).unbind(2)
    k_cache[:, :, pos:pos + 1] = k.transpose(1, 2)
    v_cache[:, :, pos:pos + 1] = v.transpose(1, 2)
    a = F.scaled_dot_product_attention(q.transpose(1, 2), k_cache[:, :, :pos + 1], v_cache[:, :, :pos + 1])
    x = x + F.linear(a.transpose(1, 2).reshape(b, t, c), w.proj_w, w.proj_b)
    m = F.gelu(F.linear(F.layer_norm(x, (c,), w.ln2_w, w.ln2_b, eps), w.up_w, w.up_b), approximate="tanh")
    return x + F.linear(m, w.down_w, w.down_b)

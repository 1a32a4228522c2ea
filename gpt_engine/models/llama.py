"""Llama (what SmolLM2 uses): RMSNorm, rotary position embedding, grouped-query
attention, SwiGLU MLP; LM head tied to the token embedding when the file has no
``output.weight``.

RoPE convention: llama.cpp's converter permutes the rows of attn_q/attn_k so that
each rotary pair is adjacent (convert_hf_to_gguf.py, LlamaModel.permute), and
llama.cpp rotates pairs (x[2i], x[2i+1]) ("normal" rope mode). We read the GGUF
rows as stored, so we rotate adjacent pairs too; transformers un-permutes the rows
instead and rotates halves. Both give the same attention scores."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..kv_cache import KVCache
from ..qweight import QWeight
from .attention import attend, one_token_at_a_time


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * weight.float()).to(x.dtype)


def rope_tables(positions: torch.Tensor, rope_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [T, rope_dim/2] for integer positions [T]; inv_freq as in the RoFormer
    paper and HF's default rope: theta^(-2i/rope_dim)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, rope_dim, 2, dtype=torch.float64, device=positions.device) / rope_dim))
    ang = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    return ang.cos().float(), ang.sin().float()


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of the first 2*cos.shape[-1] dims of x [B, T, H, D]."""
    n = cos.shape[-1] * 2
    xf = x.float()
    pairs = xf[..., :n].reshape(*x.shape[:-1], n // 2, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    rot = torch.stack((a * c - b * s, a * s + b * c), dim=-1).reshape(*x.shape[:-1], n)
    return torch.cat((rot, xf[..., n:]), dim=-1).to(x.dtype)


class Llama:
    def __init__(self, f, cfg, device: torch.device, dtype: torch.dtype):
        self.cfg, self.device, self.dtype = cfg, device, dtype

        def w(name: str) -> QWeight:
            return QWeight.from_gguf(f, name, device)

        self.embd = w("token_embd.weight")
        self.layers = []
        for i in range(cfg.n_layer):
            p = f"blk.{i}."
            self.layers.append({
                "attn_norm": w(p + "attn_norm.weight").dense(dtype),
                "q": w(p + "attn_q.weight"), "k": w(p + "attn_k.weight"), "v": w(p + "attn_v.weight"),
                "o": w(p + "attn_output.weight"),
                "ffn_norm": w(p + "ffn_norm.weight").dense(dtype),
                "gate": w(p + "ffn_gate.weight"), "up": w(p + "ffn_up.weight"), "down": w(p + "ffn_down.weight"),
            })
        self.norm = w("output_norm.weight").dense(dtype)
        self.head = self.embd if cfg.tied_output else w("output.weight")

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        c = self.cfg
        return KVCache(c.n_layer, batch, c.n_head_kv, max_len, c.head_dim, self.dtype, self.device)

    def forward(self, ids: torch.Tensor, cache: KVCache | None = None, last_only: bool = False) -> torch.Tensor:
        """ids [B, T] -> logits [B, T, V] (or [B, 1, V] with last_only), float32."""
        c = self.cfg
        B, T = ids.shape
        start = cache.reserve(T) if cache is not None else 0
        if cache is not None and start > 0 and T > 1:
            return one_token_at_a_time(self.forward, ids, cache, last_only)
        cos, sin = rope_tables(torch.arange(start, start + T, device=self.device), c.rope_dim, c.rope_theta)
        x = self.embd.rows(ids, self.dtype)
        scale = 1.0 / math.sqrt(c.head_dim)
        dt = self.dtype
        for i, L in enumerate(self.layers):
            h = rmsnorm(x, L["attn_norm"], c.norm_eps)
            q = F.linear(h, L["q"].dense(dt)).reshape(B, T, c.n_head, c.head_dim)
            k = F.linear(h, L["k"].dense(dt)).reshape(B, T, c.n_head_kv, c.head_dim)
            v = F.linear(h, L["v"].dense(dt)).reshape(B, T, c.n_head_kv, c.head_dim).contiguous()
            q, k = rope(q, cos, sin).contiguous(), rope(k, cos, sin).contiguous()
            a = attend(q, k, v, cache, i, start, scale)
            x = x + F.linear(a.reshape(B, T, c.n_head * c.head_dim), L["o"].dense(dt))
            h = rmsnorm(x, L["ffn_norm"], c.norm_eps)
            g = F.linear(h, L["gate"].dense(dt))
            u = F.linear(h, L["up"].dense(dt))
            x = x + F.linear(F.silu(g) * u, L["down"].dense(dt))
        if cache is not None:
            cache.length = start + T
        if last_only:
            x = x[:, -1:]
        x = rmsnorm(x, self.norm, c.norm_eps)
        return F.linear(x, self.head.dense(dt)).float()

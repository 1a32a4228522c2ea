"""GPT-2: learned absolute positions, pre-LayerNorm blocks, fused QKV, multi-head
attention, tanh-GELU MLP, LM head tied to the token embedding when the file has
no ``output.weight``. Tensor names follow gguf-py's MODEL_TENSOR table for
MODEL_ARCH.GPT2; linear weights are (out, in) as GGUF stores them."""
from __future__ import annotations

import math

import torch

from .. import ops
from ..kv_cache import KVCache
from ..qweight import QWeight
from .attention import attend, one_token_at_a_time

_DENSE = {"F32", "F16"}


class GPT2:
    def __init__(self, f, cfg, device: torch.device, dtype: torch.dtype):
        self.cfg, self.device, self.dtype = cfg, device, dtype

        def w(name: str) -> QWeight:
            return QWeight.from_gguf(f, name, device)

        def small(name: str) -> torch.Tensor:  # norms and biases: tiny, dense at load
            return w(name).dense(dtype)

        self.wte, self.wpe = w("token_embd.weight"), w("position_embd.weight")
        self.layers = []
        for i in range(cfg.n_layer):
            p = f"blk.{i}."
            self.layers.append({
                "ln1_w": small(p + "attn_norm.weight"), "ln1_b": small(p + "attn_norm.bias"),
                "qkv_w": w(p + "attn_qkv.weight"), "qkv_b": small(p + "attn_qkv.bias"),
                "o_w": w(p + "attn_output.weight"), "o_b": small(p + "attn_output.bias"),
                "ln2_w": small(p + "ffn_norm.weight"), "ln2_b": small(p + "ffn_norm.bias"),
                "up_w": w(p + "ffn_up.weight"), "up_b": small(p + "ffn_up.bias"),
                "down_w": w(p + "ffn_down.weight"), "down_b": small(p + "ffn_down.bias"),
            })
        self.lnf_w, self.lnf_b = small("output_norm.weight"), small("output_norm.bias")
        self.head = self.wte if cfg.tied_output else w("output.weight")

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        c = self.cfg
        return KVCache(c.n_layer, batch, c.n_head, max_len, c.head_dim, self.dtype, self.device)

    def _embed(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        if self.wte.qtype.name in _DENSE and self.wpe.qtype.name in _DENSE:
            return ops.embedding(ids, pos, self.wte.dense(self.dtype), self.wpe.dense(self.dtype))
        return ops.residual_add(self.wte.rows(ids, self.dtype), self.wpe.rows(pos, self.dtype))

    def forward(self, ids: torch.Tensor, cache: KVCache | None = None, last_only: bool = False) -> torch.Tensor:
        """ids [B, T] -> logits [B, T, V] (or [B, 1, V] with last_only), float32.
        With a cache, the T tokens follow the cached ones; without, it is one full
        causal forward from position 0."""
        c = self.cfg
        B, T = ids.shape
        start = cache.reserve(T) if cache is not None else 0
        if cache is not None and start > 0 and T > 1:
            return one_token_at_a_time(self.forward, ids, cache, last_only)
        pos = torch.arange(start, start + T, device=self.device).expand(B, T)
        x = self._embed(ids, pos)
        scale = 1.0 / math.sqrt(c.head_dim)
        h = ops.layernorm(x, self.layers[0]["ln1_w"], self.layers[0]["ln1_b"], c.norm_eps)
        for i, L in enumerate(self.layers):
            qkv = torch.nn.functional.linear(h, L["qkv_w"].dense(self.dtype), L["qkv_b"])
            q, k, v = (t.reshape(B, T, c.n_head, c.head_dim).contiguous() for t in qkv.split(c.n_embd, dim=-1))
            a = attend(q, k, v, cache, i, start, scale)
            a = torch.nn.functional.linear(a.reshape(B, T, c.n_embd), L["o_w"].dense(self.dtype), L["o_b"])
            x, h = ops.add_layernorm(a, x, L["ln2_w"], L["ln2_b"], c.norm_eps)
            m = ops.ffn(h, L["up_w"].dense(self.dtype), L["up_b"], L["down_w"].dense(self.dtype),
                        L["down_b"], "tanh")
            if i + 1 < len(self.layers):
                nxt = self.layers[i + 1]
                x, h = ops.add_layernorm(m, x, nxt["ln1_w"], nxt["ln1_b"], c.norm_eps)
            else:
                x = ops.residual_add(m, x)
        if cache is not None:
            cache.length = start + T
        if last_only:
            x = x[:, -1:]
        x = ops.layernorm(x.contiguous(), self.lnf_w, self.lnf_b, c.norm_eps)
        return torch.nn.functional.linear(x, self.head.dense(self.dtype)).float()

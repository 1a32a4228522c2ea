"""GPT-2: learned absolute positions, pre-LayerNorm blocks, fused QKV, multi-head
attention, tanh-GELU MLP, LM head tied to the token embedding when the file has
no ``output.weight``. Tensor names follow gguf-py's MODEL_TENSOR table for
MODEL_ARCH.GPT2; linear weights are (out, in) as GGUF stores them.

Every product goes through ``ops.linear`` with the block's LayerNorms fused in front of the
product that follows them and bias, GELU and residual adds in its epilogue: per block, the
QKV product (LN1 fused; in decode the head split and the KV append too), the attention, the
output projection (+ residual), the MLP up product (LN2 fused, GELU) and the down product
(+ residual). ``block()`` is that sequence; the
full forward, prefill, the host-positioned step and the graph-captured decode step all run it.
"""
from __future__ import annotations

import math

import torch

from .. import ops
from ..ops._common import capturing, direct_on_cpu
from ..kv_cache import KVCache
from ..qweight import QWeight
from .attention import HeadLayout, attend_decode, attend_tokens, one_token_at_a_time

_DENSE = {"F32", "F16"}


def block(L: dict, x: torch.Tensor, attn) -> torch.Tensor:
    """One GPT-2 block on x [ntok, C] (the residual stream); attn(x, weights, bias, norm) -> [ntok, C]
    does the QKV product (LN1 fused) and the attention."""
    x = ops.linear(attn(x, [L["qkv_w"]], L["qkv_b"], L["ln1"]), L["o_w"], L["o_b"], residual=x)
    h = ops.linear(x, L["up_w"], L["up_b"], norm=L["ln2"], act="gelu_tanh")
    return ops.linear(h, L["down_w"], L["down_b"], residual=x)


class GPT2:
    def __init__(self, f, cfg, device: torch.device, dtype: torch.dtype):
        self.cfg, self.device, self.dtype = cfg, device, dtype

        def w(name: str) -> QWeight:
            return QWeight.from_gguf(f, name, device)

        def small(name: str) -> torch.Tensor:  # norms and biases: tiny, dense at load
            return w(name).dense(dtype)

        def ln(prefix: str) -> ops.Norm:
            return ops.Norm("layernorm", small(prefix + ".weight"), small(prefix + ".bias"), cfg.norm_eps)

        self.wte, self.wpe = w("token_embd.weight"), w("position_embd.weight")
        # 1024 x C: converted once to the model dtype instead of on every lookup
        self.wpe_dense = self.wpe.dense(dtype) if self.wpe.qtype.name in _DENSE else None
        self.layers = []
        for i in range(cfg.n_layer):
            p = f"blk.{i}."
            self.layers.append({
                "ln1": ln(p + "attn_norm"),
                "qkv_w": w(p + "attn_qkv.weight"), "qkv_b": small(p + "attn_qkv.bias"),
                "o_w": w(p + "attn_output.weight"), "o_b": small(p + "attn_output.bias"),
                "ln2": ln(p + "ffn_norm"),
                "up_w": w(p + "ffn_up.weight"), "up_b": small(p + "ffn_up.bias"),
                "down_w": w(p + "ffn_down.weight"), "down_b": small(p + "ffn_down.bias"),
            })
        self.lnf = ln("output_norm")
        self.head = self.wte if cfg.tied_output else w("output.weight")
        self.heads = HeadLayout(cfg.n_head, cfg.n_head, cfg.head_dim, 1.0 / math.sqrt(cfg.head_dim))

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        c = self.cfg
        return KVCache(c.n_layer, batch, c.n_head, max_len, c.head_dim, self.dtype, self.device)

    def _embed(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        if self.wte.qtype.name in _DENSE and self.wpe_dense is not None:
            embed = direct_on_cpu(ops.embedding, ops.embedding_module.reference, ids)
            return embed(ids, pos, self.wte.dense(self.dtype), self.wpe_dense)
        checked = not capturing()  # prompt ids were checked on the host; a decode step's come from its sampler
        if self.wpe_dense is not None:  # the token row and its position row summed in the lookup's kernel
            return self.wte.rows(ids, self.dtype, checked=checked, add=self.wpe_dense, add_ids=pos)
        tok = self.wte.rows(ids, self.dtype, checked=checked)
        add = direct_on_cpu(ops.residual_add, ops.residual_add_module.reference, tok)
        return add(tok, self.wpe.rows(pos, self.dtype, checked=checked))

    def forward(self, ids: torch.Tensor, cache: KVCache | None = None, last_only: bool = False,
                at: torch.Tensor | None = None) -> torch.Tensor:
        """ids [B, T] -> logits [B, T, V] (or [B, 1, V] with last_only), float32.
        With a cache, the T tokens follow the cached ones; without, it is one full
        causal forward from position 0."""
        c = self.cfg
        B, T = ids.shape
        start = cache.reserve(T) if cache is not None else 0
        if cache is not None and start > 0 and T > 1:
            return one_token_at_a_time(self.forward, ids, cache, last_only)
        pos = torch.arange(start, start + T, device=self.device).expand(B, T)
        x = self._embed(ids, pos).reshape(B * T, c.n_embd)
        flat = pos.reshape(-1).contiguous()
        for i, L in enumerate(self.layers):
            x = block(L, x, lambda h, w, b, n, i=i: attend_tokens(self.heads, h, w, b, n, cache, i, B, start, flat))
        if cache is not None:
            cache.length = start + T
        x = x.view(B, T, c.n_embd)
        if at is not None:  # logits of position at[0] only (a device index: prefill of a padded prompt)
            x = x.index_select(1, at)
        elif last_only:
            x = x[:, -1:]
        return ops.linear(x.contiguous(), self.head, norm=self.lnf, float_out=True)

    def decode_logits(self, st) -> torch.Tensor:
        """One decode step for st.batch sequences at device positions st.pos (a DecodeState):
        logits [B, V] float32; k/v appended, st.lens set. Nothing here reads the device."""
        B = st.ids.shape[0]
        x = self._embed(st.ids.view(B, 1), st.pos.view(B, 1)).view(B, self.cfg.n_embd)
        for i, L in enumerate(self.layers):
            x = block(L, x, lambda h, w, b, n, i=i: attend_decode(self.heads, h, w, b, n, st, i))
        return ops.linear(x, self.head, norm=self.lnf, float_out=True)

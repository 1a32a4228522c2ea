"""Llama (what SmolLM2 uses): RMSNorm, rotary position embedding, grouped-query
attention, SwiGLU MLP; LM head tied to the token embedding when the file has no
``output.weight``.

RoPE convention: llama.cpp's converter permutes the rows of attn_q/attn_k so that
each rotary pair is adjacent (convert_hf_to_gguf.py, LlamaModel.permute), and
llama.cpp rotates pairs (x[2i], x[2i+1]) ("normal" rope mode). We read the GGUF
rows as stored, so we rotate adjacent pairs too; transformers un-permutes the rows
instead and rotates halves. Both give the same attention scores.

Layout of the products: q, k and v weights are stacked into one [q; k; v] weight and gate and
up into one [gate; up] weight at load (same bytes, one product each; kept separate when a
mixed-type file gives them different types), RMSNorms are fused in front of the product that
follows them, SwiGLU and the residual adds are epilogues. The RoPE tables are built once.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import ops
from ..errors import ModelError
from ..ops._common import capturing
from ..kv_cache import KVCache
from ..ops.qkv_rope import ROPE_MODES
from ..qweight import QWeight
from . import cpu_decode
from .attention import HeadLayout, attend_decode, attend_tokens, one_token_at_a_time


def rope_tables(positions: torch.Tensor, rope_dim: int, theta: float,
                freq_factors: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [T, rope_dim/2] for integer positions [T]; inv_freq as in the RoFormer
    paper and HF's default rope: theta^(-2i/rope_dim). freq_factors [rope_dim/2] (a file's
    ``rope_freqs.weight``, written by llama.cpp's converter for Llama 3.1's "llama3" rope scaling):
    each inverse frequency divided by its factor, as llama.cpp's rope applies the tensor
    (ggml_rope_ext's freq_factors) and as transformers computes the llama3 frequencies."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, rope_dim, 2, dtype=torch.float64, device=positions.device) / rope_dim))
    if freq_factors is not None:
        inv_freq = inv_freq / freq_factors.to(device=positions.device, dtype=torch.float64)
    ang = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    return ang.cos().float(), ang.sin().float()


def rope_factors(f, path) -> torch.Tensor | None:
    """The file's per-pair RoPE frequency factors (``rope_freqs.weight``, float64 [rope_dim/2]),
    or None; check_tensors has checked its shape. A factor that is not a finite number > 0 would
    make every angle meaningless: refused."""
    if "rope_freqs.weight" not in f.tensors:
        return None
    factors = QWeight.from_gguf(f, "rope_freqs.weight", "cpu").dense(torch.float32).double().reshape(-1)
    if not (torch.isfinite(factors).all() and (factors > 0).all()):
        raise ModelError(f"{path}: rope_freqs.weight holds a factor that is not a finite number > 0")
    return factors


def _stacked(weights: list[QWeight], device: torch.device) -> list[QWeight]:
    """``weights`` (memory-mapped, on the CPU) as one stacked weight on the GPU (one product, one
    launch), stacked on the host and uploaded once: a stack made on the GPU would leave its parts'
    freed blocks in the allocator's segments, reserved memory that memory_estimate() does not count.
    On the CPU the separate memory-mapped weights stay: stacking would copy them into process
    memory for no speed."""
    if device.type == "cpu":
        return weights
    try:
        return [QWeight.stack_rows(weights).to(device)]
    except ValueError:  # types differ (e.g. a Q4_K_M file with attn_v in Q6_K)
        return [w.to(device) for w in weights]


def block(L: dict, x: torch.Tensor, attn) -> torch.Tensor:
    """One Llama block on x [ntok, C] (the residual stream); attn(x, weights, bias, norm) ->
    [ntok, Hq D] does the QKV product (RMSNorm fused), RoPE, the KV append and the attention."""
    x = ops.linear(attn(x, L["qkv"], None, L["attn_norm"]), L["o"], residual=x)
    if len(L["gate_up"]) == 1:
        h = ops.linear(x, L["gate_up"][0], norm=L["ffn_norm"], act="swiglu")
    else:
        gu = ops.linear_module.linear_cat(x, L["gate_up"], L["ffn_norm"])  # one product call on the CPU
        g, u = gu.split([w.raw.shape[0] for w in L["gate_up"]], dim=-1)
        h = (F.silu(g.float()) * u.float()).to(x.dtype)
    return ops.linear(h, L["down"], residual=x)


class Llama:
    def __init__(self, f, cfg, device: torch.device, dtype: torch.dtype):
        self.cfg, self.device, self.dtype = cfg, device, dtype

        def w(name: str) -> QWeight:
            return QWeight.from_gguf(f, name, device)

        def host(name: str) -> QWeight:  # a part of a stack: uploaded once, stacked (_stacked)
            return QWeight.from_gguf(f, name, "cpu")

        def rms(name: str) -> ops.Norm:
            return ops.Norm("rmsnorm", w(name).dense(dtype), None, cfg.norm_eps)

        self.embd = w("token_embd.weight")
        self.layers = []
        for i in range(cfg.n_layer):
            p = f"blk.{i}."
            self.layers.append({
                "attn_norm": rms(p + "attn_norm.weight"),
                "qkv": _stacked([host(p + "attn_q.weight"), host(p + "attn_k.weight"), host(p + "attn_v.weight")],
                                device),
                "o": w(p + "attn_output.weight"),
                "ffn_norm": rms(p + "ffn_norm.weight"),
                "gate_up": _stacked([host(p + "ffn_gate.weight"), host(p + "ffn_up.weight")], device),
                "down": w(p + "ffn_down.weight"),
            })
        self.norm = rms("output_norm.weight")
        self.head = self.embd if cfg.tied_output else w("output.weight")
        cos, sin = rope_tables(torch.arange(cfg.n_ctx, device=device), cfg.rope_dim, cfg.rope_theta,
                               rope_factors(f, f.path))
        self._lean = None  # _cpu_products()
        self.heads = HeadLayout(cfg.n_head, cfg.n_head_kv, cfg.head_dim, 1.0 / math.sqrt(cfg.head_dim),
                                ROPE_MODES["adjacent"], cfg.rope_dim, cos, sin)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        c = self.cfg
        return KVCache(c.n_layer, batch, c.n_head_kv, max_len, c.head_dim, self.dtype, self.device)

    def forward(self, ids: torch.Tensor, cache: KVCache | None = None, last_only: bool = False,
                at: torch.Tensor | None = None) -> torch.Tensor:
        """ids [B, T] -> logits [B, T, V] (or [B, 1, V] with last_only), float32."""
        c = self.cfg
        B, T = ids.shape
        start = cache.reserve(T) if cache is not None else 0
        if cache is not None and start > 0 and T > 1:
            return one_token_at_a_time(self.forward, ids, cache, last_only)
        x = self.embd.rows(ids, self.dtype, checked=not capturing()).reshape(B * T, c.n_embd)
        lean = self._cpu_products() if cache is not None and start > 0 and T == 1 else None
        if lean is not None:  # a float32 CPU decode step (cpu_decode.block): the same values, fewer ops
            for i, L in enumerate(self.layers):
                x = cpu_decode.block(L, lean[i], x, self.heads, cache.k[i], cache.v[i], start)
        else:
            pos = torch.arange(start, start + T, device=self.device).expand(B, T).reshape(-1).contiguous()
            for i, L in enumerate(self.layers):
                x = block(L, x, lambda h, w, b, n, i=i: attend_tokens(self.heads, h, w, b, n, cache, i, B, start, pos))
        if cache is not None:
            cache.length = start + T
        x = x.view(B, T, c.n_embd)
        if at is not None:  # logits of position at[0] only (a device index: prefill of a padded prompt)
            x = x.index_select(1, at)
        elif last_only:
            x = x[:, -1:]
        return ops.linear(x.contiguous(), self.head, norm=self.norm, float_out=True)

    def _cpu_products(self):
        """Per layer (q/k/v, o, gate/up, down) as packed-kernel products (cpu_decode.block), built on
        first use; None where the model is not float32 on the CPU or a matrix is not read packed."""
        if self._lean is None:
            self._lean = False
            if torch.device(self.device).type == "cpu" and self.dtype == torch.float32:
                self._lean = cpu_decode.layer_products(self.layers) or False
        return self._lean or None

    def decode_logits(self, st) -> torch.Tensor:
        """One decode step for st.batch sequences at device positions st.pos (a DecodeState):
        logits [B, V] float32; k/v appended, st.lens set. Nothing here reads the device."""
        B = st.ids.shape[0]
        x = self.embd.rows(st.ids, self.dtype, checked=False, status=st.status).view(B, self.cfg.n_embd)
        for i, L in enumerate(self.layers):
            x = block(L, x, lambda h, w, b, n, i=i: attend_decode(self.heads, h, w, b, n, st, i))
        return ops.linear(x, self.head, norm=self.norm, float_out=True)

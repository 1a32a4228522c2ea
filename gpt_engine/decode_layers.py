"""Every transformer block of a batch-1 GPU decode step in one persistent launch
(csrc/decode_layers.cu), and the plan that launch reads.

The per-op step launches about six kernels per layer and each pays a fixed ~2-3 us in which no
weight byte moves (docs/kernels/decode.md); this launch walks every layer's products and
attention itself, loading weights ahead across the waits between them. It computes the same
bits as the per-op path (same kernels' arithmetic, same order), so it replaces that path in
``Model.decode_logits`` wherever it applies and changes no number: a batch-1 step, fp16
activations, every layer's products F16 with the stacked QKV (and, for Llama, stacked gate/up)
weight, a head dimension of 64 or 128 with 1 or 3-4 query heads per KV head. Everything else
(other batch sizes, dtypes, weight types, GPT-OSS) keeps the per-op path.

The plan is built once per ``DecodeState``: per layer, the four products' arguments exactly as
``ops.linear`` / ``ops.linear_qkv`` would launch them (built by the same C++ checks) and the
attention's, with every intermediate in its own buffer per layer. ``GPT_ENGINE_DECODE_LAYERS=0``
turns the launch off (the per-op step runs): for A/B timing and for the equality tests.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from . import ops
from .ops import _ext
from .ops.linear import ACTS, NORMS

ENV = "GPT_ENGINE_DECODE_LAYERS"
F16 = 1  # ggml type id
RING_BYTES = 160 * 1024  # csrc/decode_layers.cu kRingBytes
SMEM_MAX = 200 * 1024    # csrc/decode_layers.cu kSmemMax: the ring plus the staged fp32 input row


@dataclass(frozen=True)
class LayerProducts:
    """One block's products in the order the kernel runs them, as the model's own ``block`` calls
    ``ops.linear``: QKV (norm1 fused), output (+ residual), up (norm2 fused, act), down (+ residual)."""
    norm1: ops.Norm
    qkv: object            # QWeight, the stacked [q; k; v]
    qkv_b: torch.Tensor | None
    o: object
    o_b: torch.Tensor | None
    norm2: ops.Norm
    up: object             # GPT-2: up; Llama: the stacked [gate; up]
    up_b: torch.Tensor | None
    act: str               # "gelu_tanh" or "swiglu"
    down: object
    down_b: torch.Tensor | None


def enabled() -> bool:
    return os.environ.get(ENV, "1") != "0"


def _dense(w) -> torch.Tensor | None:
    """The F16 weight as an fp16 [N, K] view of its raw bytes, or None for any other type."""
    if int(w.qtype) != F16:
        return None
    return w.raw.view(torch.float16).view(w.raw.shape[0], -1)


def heads_served(head_dim: int, n_head: int, n_head_kv: int) -> bool:
    """csrc/decode_layers.cu decode_layers_supported: head dim 64 or 128, and a query-head group
    whose attention tile (attention_decode_impl.cuh pick_group_tile: 1, 2, 4, 8) is 1 or 4."""
    if n_head_kv < 1 or n_head % n_head_kv:
        return False
    group = n_head // n_head_kv
    tile = 1 if group <= 1 else 2 if group <= 2 else 4 if group <= 4 else 8
    return head_dim in (64, 128) and tile in (1, 4)


def k_served(k: int) -> bool:
    """A product's input width the kernel stages: whole 16-byte chunks, and the fp32 row beside
    the ring within the kernel's shared memory."""
    return k % 8 == 0 and RING_BYTES + k * 4 <= SMEM_MAX


def _why_not(products: list[LayerProducts], heads, dtype: torch.dtype, batch: int) -> str | None:
    if batch != 1:
        return "batch > 1"
    if dtype != torch.float16:
        return f"activations {dtype}"
    if not heads_served(heads.head_dim, heads.n_head, heads.n_head_kv):
        return f"head dim {heads.head_dim} with {heads.n_head // heads.n_head_kv} query heads per KV head"
    for p in products:
        for w in (p.qkv, p.o, p.up, p.down):
            if _dense(w) is None:
                return f"{w.name} is {w.qtype.name}"
            if not k_served(_dense(w).shape[1]):
                return f"{w.name}: K = {_dense(w).shape[1]}"
    return None


PLAN_BYTES_BOUND = 1024  # one layer's plan (4 LinearArgs + AttnArgs: ~900 bytes), for estimates without the extension


def held_bytes(n_layer: int, n_embd: int, n_head: int, head_dim: int, up_out: int, splits: int,
               block_bytes) -> int:
    """Device bytes a DecodeLayers holds (memory_estimate's ``decode_layers`` term): the per-layer
    intermediates in fp16, the split workspaces in fp32, the plan and the barrier counter, each one
    allocation rounded by ``block_bytes`` (the caching allocator's block size)."""
    q = n_head * head_dim
    sizes = [(n_layer + 1) * n_embd * 2, n_layer * n_embd * 2, n_layer * q * 2, n_layer * q * 2,
             n_layer * up_out * 2, n_layer * n_head * splits * head_dim * 4, n_layer * n_head * splits * 2 * 4,
             n_layer * PLAN_BYTES_BOUND, 8]
    return sum(block_bytes(s) for s in sizes)


class DecodeLayers:
    """The plan and buffers of one DecodeState (batch 1); ``run(x)`` takes the embedded token
    [1, C] and returns the last layer's output [1, C] (a buffer of this object)."""

    def __init__(self, products: list[LayerProducts], heads, st, n_embd: int):
        ext = _ext.load()
        dev = st.pos.device
        L, C = len(products), n_embd
        H, Hkv, D = heads.n_head, heads.n_head_kv, heads.head_dim
        up_out = _dense(products[0].up).shape[0] // (2 if products[0].act == "swiglu" else 1)
        f16 = dict(dtype=torch.float16, device=dev)
        f32 = dict(dtype=torch.float32, device=dev)
        self.xin = torch.zeros(L + 1, 1, C, **f16)   # layer l's input; xin[L] the output
        self.xmid = torch.zeros(L, 1, C, **f16)      # after the attention's residual add
        self.q = torch.zeros(L, 1, H, D, **f16)
        self.att = torch.zeros(L, 1, H * D, **f16)
        self.h = torch.zeros(L, 1, up_out, **f16)
        self.ws_o = torch.zeros(L, H * st.splits * D, **f32)
        self.ws_ml = torch.zeros(L, H * st.splits * 2, **f32)
        self.counter = torch.zeros(1, dtype=torch.int64, device=dev)  # grid barrier arrivals: only grows
        self.n_layer, self.head_dim, self.group = L, D, H // Hkv
        parts = []
        for i, p in enumerate(products):
            n1, n2 = p.norm1, p.norm2
            parts.append(ext.linear_qkv_plan(
                self.xin[i], _dense(p.qkv), p.qkv_b, n1.weight, n1.bias, self.q[i], NORMS[n1.kind], float(n1.eps),
                st.pos, heads.cos, heads.sin, st.cache.k[i], st.cache.v[i], st.lens, st.status, H, Hkv,
                heads.rope_mode, heads.rope_dim))
            parts.append(ext.linear_plan(self.att[i], _dense(p.o), p.o_b, self.xin[i], None, None, self.xmid[i],
                                         0, 0, 1e-5))
            parts.append(ext.linear_plan(self.xmid[i], _dense(p.up), p.up_b, None, n2.weight, n2.bias, self.h[i],
                                         NORMS[n2.kind], ACTS[p.act], float(n2.eps)))
            parts.append(ext.linear_plan(self.h[i], _dense(p.down), p.down_b, self.xmid[i], None, None,
                                         self.xin[i + 1], 0, 0, 1e-5))
            parts.append(ext.attention_plan(self.q[i], st.cache.k[i], st.cache.v[i], st.lens, self.att[i],
                                            self.ws_o[i], self.ws_ml[i], st.splits, float(heads.scale),
                                            st.short_keys))
        plans = torch.cat(parts)
        if plans.numel() != L * ext.decode_layer_plan_bytes():
            raise RuntimeError(f"decode_layers: plan has {plans.numel()} bytes, expected "
                               f"{L} x {ext.decode_layer_plan_bytes()}")
        self.plans = plans.to(dev)
        self.max_k = max(max(_dense(p.qkv).shape[1], _dense(p.o).shape[1], _dense(p.up).shape[1],
                             _dense(p.down).shape[1]) for p in products)
        # the weights, norms and biases the plan points into: held here so they outlive it
        self._keep = products

    def run(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        _ext.load().decode_layers(self.plans, self.n_layer, x, self.counter, self.head_dim, self.group, self.max_k)
        return self.xin[self.n_layer]


def build(net, st) -> DecodeLayers | None:
    """The one-launch layers for DecodeState st of model net, or None where they do not apply
    (the per-op step runs)."""
    if not enabled() or st.pos.device.type != "cuda" or not _ext.available():
        return None
    products_of = getattr(net, "decode_products", None)
    if products_of is None:
        return None
    products = products_of()
    if products is None or _why_not(products, net.heads, net.dtype, st.batch) is not None:
        return None
    return DecodeLayers(products, net.heads, st, net.cfg.n_embd)

"""gpt-oss (OpenAI's open-weight mixture of experts) from its GGUF file: the CPU reference.

Per layer (llama.cpp src/models/openai-moe.cpp; transformers models/gpt_oss/modeling_gpt_oss.py):
  x += attn_output(attention(rope(q), rope(k), v; sinks, window)), q/k/v/o with biases,
       q/k/v from RMSNorm(x; attn_norm)
  x += moe(RMSNorm(x; post_attention_norm))
then RMSNorm(output_norm) and the untied ``output`` head. RMSNorm is computed in fp32.

Attention: grouped-query heads, one learned **sink** logit per head appended to every row of
scores before the softmax (it takes probability mass and brings no value), and on sliding
layers (``ModelConfig.is_sliding``: the even ones) a query at position p sees keys in
(p - window, p]. RoPE rotates the two halves of each head (llama.cpp's NEOX mode; the converter
does not permute q/k for gpt-oss), with YaRN frequencies (``yarn_inv_freq``): ``ops.qkv_rope``
/ ``ops.linear_qkv`` in their neox mode, reading cos/sin tables over the whole context built
once (``set_rope``).

Products go through ``ops.linear`` (docs/gpt_oss.md, "The GPU path"): attn_norm is fused in
front of the QKV product (q, k and v stacked into one weight on the GPU) and output_norm in
front of the head; biases and the residual adds are epilogues. RMSNorm is computed in fp32 and
rounded once; a fused norm's weight is held in the activation dtype (``ops.linear`` takes it so).

MoE: router logits = linear(h) + bias; the top-k experts per token, weighted by a softmax over
those k logits only; expert e computes down_e(swiglu_oai(gate_e(h), up_e(h))), each projection
with its bias. Expert stacks stay in their file encoding (MXFP4 for real files) and only the
rows of the experts a token picked are dequantized, one matrix at a time. On the GPU a step of
many tokens (prefill) takes ``grouped_experts`` instead: every expert once for all tokens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import gguf
import torch
import torch.nn.functional as F

from .. import ops, quants
from ..kv_cache import KVCache
from ..qweight import QWeight, _is_view, cache_policy, cpu_cache_budget, dense_cache_bytes, lookup_only, packed_product
from ..ops._common import capturing, direct_on_cpu
from ..ops.dequantize import cuda_supported as dequantize_on_device
from ..ops.linear import rmsnorm_reference as rmsnorm
from ..ops.moe import kernel_supports as moe_kernel_supports
from ..ops.moe_grouped import kernel_supports as moe_grouped_supports
from ..ops.moe_grouped import transient_bytes as moe_grouped_transient_bytes
from ..ops.qkv_rope import ROPE_MODES

# The clamped SwiGLU of gpt-oss: OpenAI's reference (gpt_oss/torch/model.py, swiglu: alpha 1.702,
# limit 7.0), transformers GptOssConfig (swiglu_alpha, swiglu_limit), llama.cpp build_moe_ffn for
# LLM_FFN_SWIGLU_OAI_MOE (alpha = 1.702f, limit = 7.0f).
SWIGLU_ALPHA = 1.702
SWIGLU_LIMIT = 7.0

_Q = gguf.GGMLQuantizationType

# RoPE on the two halves of each head (pairs i, i + d/2): llama.cpp's NEOX mode, which the
# gpt-oss converter leaves q/k in (no row permutation).
ROPE_MODE = ROPE_MODES["neox"]

# Steps of at least this many tokens on the GPU take grouped_experts (every expert read once)
# instead of ops.moe_experts (each token reads its k chosen experts). Bytes per layer of the 20b
# shape: the kernel reads M x 4 x 3 expert matrices of 4.4 MB MXFP4 (53 MB per token); the
# grouped path reads all 32 x 3 once (423 MB) and writes + reads them back as fp16 (2 x 1.6 GB),
# ~3.6 GB: equal at M ~ 68. The graph-captured prefill pads to multiples of 128 tokens.
MOE_GROUPED_MIN_TOKENS = 64
# Tokens per pass over the experts in grouped_experts: bounds its activations (the fp32 sums
# and the per-expert [rows, F] temporaries) for long prompts, at one more read of the experts
# per 2048 tokens.
MOE_GROUPED_MAX_ROWS = 2048
# The many-token MoE on the GPU takes ops.moe_grouped (a grouped GEMM over the chosen pairs only,
# MXFP4 read directly) where its kernel supports the shape: 0.94 against grouped_experts' 3.22 ms
# per gpt-oss-20b layer at 512 tokens (H200, same run, docs/gpt_oss.md). False selects
# grouped_experts, which the tests compare it with.
MOE_GROUPED_GEMM = True


def swiglu_oai(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """gate clamped above at 7, up clamped to [-7, 7]; gate * sigmoid(1.702 gate) * (up + 1)."""
    g = gate.clamp(max=SWIGLU_LIMIT)
    u = up.clamp(min=-SWIGLU_LIMIT, max=SWIGLU_LIMIT)
    return g * torch.sigmoid(SWIGLU_ALPHA * g) * (u + 1)


# --------------------------------------------------------------------------- rope

def yarn_inv_freq(head_dim: int, theta: float, yarn, round_ends: bool = False) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [head_dim/2] (float64) and the cos/sin factor.

    Without scaling: theta^(-2i/d). With YaRN (arXiv:2309.00071, "NTK-by-parts", section 3.2) as
    OpenAI's reference and transformers' _compute_yarn_parameters compute it for gpt-oss
    (``truncate: false`` in its config): the dimension where a frequency completes ``beta``
    rotations over the original context is d * ln(L / (2 pi beta)) / (2 ln theta); between the
    dims of beta_fast and beta_slow the frequency ramps linearly from theta^(-2i/d) (kept) to
    theta^(-2i/d) / factor (interpolated). The ramp ends are NOT rounded: llama.cpp
    (ggml_rope_yarn_corr_dims) floors/ceils them, which shifts a few mid frequencies (docs/gpt_oss.md
    gives the logit difference; ``round_ends=True`` computes llama.cpp's variant). As
    transformers and llama.cpp, the ends are clamped to [0, d - 1]."""
    i = torch.arange(0, head_dim // 2, dtype=torch.float64)
    extrapolated = theta ** (-2.0 * i / head_dim)
    if yarn is None:
        return extrapolated, 1.0

    def corr_dim(rotations: float) -> float:
        return head_dim * math.log(yarn.original_context / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = corr_dim(yarn.beta_fast), corr_dim(yarn.beta_slow)
    if round_ends:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0.0), min(high, head_dim - 1.0)
    if low == high:
        high += 0.001  # transformers' guard against a zero-width ramp
    ramp = ((i - low) / (high - low)).clamp(0, 1)  # 0: keep the original frequency, 1: interpolate
    inv_freq = extrapolated * (1 - ramp) + (extrapolated / yarn.factor) * ramp
    return inv_freq, yarn.attention_factor


def rope_tables(positions: torch.Tensor, inv_freq: torch.Tensor, factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [T, d/2] (float32) for integer positions [T], both scaled by the YaRN factor."""
    ang = positions.to(torch.float64)[:, None] * inv_freq.to(positions.device)[None, :]
    return (ang.cos() * factor).float(), (ang.sin() * factor).float()



# --------------------------------------------------------------------------- attention

def sink_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sinks: torch.Tensor, qpos: torch.Tensor,
                   window: int | None, scale: float) -> torch.Tensor:
    """Causal attention with per-head sinks and an optional sliding window, in fp32.

    q [B, T, Hq, d] at absolute positions ``qpos`` ([T], or [B, T] when each sequence is at its
    own position); k/v [B, Hkv, S, d] hold positions 0..S-1 (the cache layout; rows past a
    query's position are masked, whatever they hold); sinks [Hq]. Query head h reads kv head
    h // (Hq / Hkv). Returns [B, T, Hq, d] in q's dtype."""
    B, T, Hq, _ = q.shape
    groups = Hq // k.shape[1]
    qh = q.float().transpose(1, 2)                                   # [B, Hq, T, d]
    kh = k.float().repeat_interleave(groups, dim=1)                  # [B, Hq, S, d]
    vh = v.float().repeat_interleave(groups, dim=1)
    scores = (qh @ kh.transpose(-1, -2)) * scale                     # [B, Hq, T, S]
    qp = qpos.reshape(-1, 1, T, 1)                                   # [B or 1, 1, T, 1]
    kp = torch.arange(k.shape[2], device=q.device)
    allowed = kp <= qp
    if window is not None:
        allowed &= kp > qp - window
    scores = scores.masked_fill(~allowed, float("-inf"))
    sink = sinks.float().reshape(1, Hq, 1, 1).expand(B, Hq, T, 1)
    p = torch.softmax(torch.cat((scores, sink), dim=-1), dim=-1)[..., :-1]
    return (p @ vh).transpose(1, 2).to(q.dtype)


# --------------------------------------------------------------------------- weights

# How each tensor is held (one table for the loader and the memory estimate): "raw" stays in
# its file encoding as a QWeight, "fp32" is read as float32 (post_attention_norm, sinks, the
# router: the converter writes them F32 and they feed fp32 math outside ops.linear), "act" is
# converted to the activation dtype (the biases added to projections, and the two norms fused
# into ops.linear, which takes its norm weight in x's dtype).
def held_as(name: str) -> str:
    if name.endswith(".bias") and ".ffn_gate_inp." not in name:
        return "act"
    if name == "output_norm.weight" or name.endswith(".attn_norm.weight"):
        return "act"
    if name.endswith(("_norm.weight", ".attn_sinks.weight", ".ffn_gate_inp.weight", ".ffn_gate_inp.bias")):
        return "fp32"
    return "raw"


class ExpertStack:
    """One projection of every expert: weight [E, rows, cols] in its file encoding, bias [E, rows]."""

    def __init__(self, weight: QWeight, bias: torch.Tensor):
        self.weight, self.bias = weight, bias
        self.n_expert, self.rows, self.cols = weight.shape

    def matrix(self, e: int, dtype: torch.dtype) -> torch.Tensor:
        """Expert e's [rows, cols] matrix: only its rows' bytes are dequantized (on CUDA by the
        dequantize kernel, straight into ``dtype``: the same values as the float32 route)."""
        raw = self.weight.raw[e * self.rows:(e + 1) * self.rows]
        if raw.is_cuda and dtype in (torch.float32, torch.float16, torch.bfloat16) and \
                dequantize_on_device(raw, self.weight.qtype):
            return ops.dequantize_rows(raw, int(self.weight.qtype), None, dtype, None).view(self.rows, self.cols)
        return quants.dequantize(raw, self.weight.qtype).reshape(self.rows, self.cols).to(dtype)

    def __call__(self, x: torch.Tensor, e: int) -> torch.Tensor:
        return F.linear(x, self.matrix(e, x.dtype), self.bias[e])


def reference_experts(h: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor, L) -> torch.Tensor:
    """The MoE after the routing, the reference way: each chosen expert on the tokens that chose
    it (h [M, C], chosen/weights [M, k]); weighted outputs summed in fp32 in ascending expert
    order, rounded once to h's dtype. Picks the experts on the host (torch.unique): eager only."""
    out = torch.zeros(h.shape, dtype=torch.float32, device=h.device)
    for e in torch.unique(chosen).tolist():
        tok, slot = torch.where(chosen == e)
        x = h[tok]
        y = L.down(swiglu_oai(L.gate(x, e), L.up(x, e)), e)
        out.index_add_(0, tok, y.float() * weights[tok, slot, None])
    return out.to(h.dtype)


def grouped_experts(h: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor, L,
                    max_rows: int = MOE_GROUPED_MAX_ROWS) -> torch.Tensor:
    """``reference_experts`` without a host sync and with each expert read once per ``max_rows``
    tokens, for many tokens (the GPU prefill; runs anywhere). Every expert e in turn is
    dequantized once (one matrix alive at a time) and computed for all tokens; its output is
    weighted by column e of a dense [M, E] routing matrix, zero where a token did not choose e,
    and masked there (an unchosen expert's output may overflow: 0 * inf is NaN). Same math and
    the same fp32 summation order per token as the reference (ascending experts, + 0 for the
    unchosen); E x the expert FLOPs, which a GPU at M >= 64 has to spare (docs/gpt_oss.md)."""
    m = h.shape[0]
    idx = chosen.long()
    dense_w = torch.zeros((m, L.gate.n_expert), dtype=torch.float32, device=h.device).scatter_(1, idx, weights)
    picked = torch.zeros((m, L.gate.n_expert), dtype=torch.bool, device=h.device).scatter_(1, idx, True)
    out = torch.zeros(h.shape, dtype=torch.float32, device=h.device)
    for s in range(0, m, max_rows):
        x, acc = h[s:s + max_rows], out[s:s + max_rows]
        for e in range(L.gate.n_expert):
            y = L.down(swiglu_oai(L.gate(x, e), L.up(x, e)), e)
            # y * w promotes y to fp32 exactly, then one fp32 product: y.float() * w in one kernel
            acc.add_(torch.where(picked[s:s + max_rows, e:e + 1], y * dense_w[s:s + max_rows, e:e + 1], 0.0))
    return out.to(h.dtype)


def grouped_gemm_experts(h: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, L, residual: torch.Tensor | None,
                         max_rows: int = MOE_GROUPED_MAX_ROWS) -> torch.Tensor:
    """``reference_experts`` (+ residual) through ops.moe_grouped on the layer's MXFP4 stacks:
    only the chosen (token, expert) pairs are computed; ``max_rows`` tokens per call bound its
    temporaries (ops.moe_grouped.transient_bytes) for long prompts."""
    def call(s: int, e: int) -> torch.Tensor:
        return ops.moe_grouped(h[s:e], ids[s:e], weights[s:e], L.gate.weight.raw, L.gate.bias, L.up.weight.raw,
                               L.up.bias, L.down.weight.raw, L.down.bias,
                               None if residual is None else residual[s:e])
    m = h.shape[0]
    if m <= max_rows:
        return call(0, m)
    return torch.cat([call(s, min(m, s + max_rows)) for s in range(0, m, max_rows)])


def _qkv_weights(weights: list[QWeight], biases: list[torch.Tensor],
                 device: torch.device) -> tuple[list[QWeight], list[torch.Tensor]]:
    """[q; k; v] (memory-mapped weights, on the CPU) as one weight and one bias on the GPU (one
    product; ops.linear_qkv needs it), the weights stacked on the host and uploaded once (a stack
    made on the GPU leaves its parts' freed blocks in the allocator's segments); separate on the
    CPU, where stacking would copy the memory-mapped weights for no speed, and where the types
    differ."""
    if device.type == "cpu":
        return weights, biases
    try:
        return [QWeight.stack_rows(weights).to(device)], [torch.cat(biases)]
    except ValueError:
        return [w.to(device) for w in weights], biases


@dataclass
class Layer:
    attn_norm: ops.Norm          # fused in front of the QKV product
    qkv: list[QWeight]           # [q; k; v] stacked (GPU), or [q, k, v]
    qkv_bias: list[torch.Tensor]  # one bias per entry of qkv
    o: QWeight
    o_bias: torch.Tensor
    sinks: torch.Tensor
    post_norm: torch.Tensor      # fp32: ops.moe_norm_route (or rms_norm) takes it as fp32
    router: torch.Tensor
    router_bias: torch.Tensor
    gate: ExpertStack
    up: ExpertStack
    down: ExpertStack
    window: int | None  # sliding window of this layer, None on full-attention layers


class GptOss:
    def __init__(self, f, cfg, device: torch.device, dtype: torch.dtype):
        self.cfg, self.device, self.dtype = cfg, device, dtype

        def w(name: str):
            kind = held_as(name)
            q = QWeight.from_gguf(f, name, device)
            return q if kind == "raw" else q.dense(torch.float32 if kind == "fp32" else dtype)

        def norm(name: str) -> ops.Norm:
            return ops.Norm("rmsnorm", w(name), None, cfg.norm_eps)

        self.embd = w("token_embd.weight")
        self.layers: list[Layer] = []
        for i in range(cfg.n_layer):
            p = f"blk.{i}."
            qkv, qkv_bias = _qkv_weights([QWeight.from_gguf(f, p + f"attn_{t}.weight", "cpu") for t in "qkv"],
                                         [w(p + f"attn_{t}.bias") for t in "qkv"], device)
            self.layers.append(Layer(
                attn_norm=norm(p + "attn_norm.weight"), qkv=qkv, qkv_bias=qkv_bias,
                o=w(p + "attn_output.weight"), o_bias=w(p + "attn_output.bias"),
                sinks=w(p + "attn_sinks.weight"),
                post_norm=w(p + "post_attention_norm.weight"),
                router=w(p + "ffn_gate_inp.weight"), router_bias=w(p + "ffn_gate_inp.bias"),
                gate=ExpertStack(w(p + "ffn_gate_exps.weight"), w(p + "ffn_gate_exps.bias")),
                up=ExpertStack(w(p + "ffn_up_exps.weight"), w(p + "ffn_up_exps.bias")),
                down=ExpertStack(w(p + "ffn_down_exps.weight"), w(p + "ffn_down_exps.bias")),
                window=cfg.sliding_window if cfg.is_sliding(i) else None,
            ))
        self.norm = norm("output_norm.weight")
        self.head = w("output.weight")
        self.set_rope(*yarn_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.yarn))
        # The GPU path (docs/gpt_oss.md): attention through the flash kernels with sinks and the
        # window, the MoE through ops.moe_route / ops.moe_experts (no host sync: the decode step
        # is graph-capturable), prefill MoE through grouped_experts. Expert stacks in another
        # encoding than MXFP4 (test files) or sizes the kernels do not serve keep the reference
        # MoE for few tokens, which picks experts on the host.
        self.on_gpu = device.type == "cuda"
        L0 = self.layers[0] if self.layers else None
        self.moe_kernels = self.on_gpu and L0 is not None and all(
            st.weight.qtype == _Q.MXFP4 for L in self.layers for st in (L.gate, L.up, L.down)) and \
            moe_kernel_supports(cfg.n_embd, L0.gate.rows, cfg.n_expert_used, dtype)
        self._file = f

    def set_rope(self, inv_freq: torch.Tensor, factor: float) -> None:
        """The RoPE frequencies and YaRN factor, and the fp32 cos/sin tables [n_ctx, d/2] that
        ops.qkv_rope / linear_qkv read by position, built once on the device (the decode graph
        reads them at device-held positions)."""
        self.inv_freq, self.rope_factor = inv_freq.to(self.device), factor
        pos = torch.arange(self.cfg.n_ctx, device=self.device)
        self.rope_cos, self.rope_sin = rope_tables(pos, self.inv_freq, factor)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        c = self.cfg
        return KVCache(c.n_layer, batch, c.n_head_kv, max_len, c.head_dim, self.dtype, self.device)

    def memory_estimate(self, n_ctx: int | None = None) -> dict:
        return estimate_memory(self._file, self.cfg, self.dtype, n_ctx, device=self.device.type)

    def bytes_read_per_token(self) -> int:
        """Weight bytes one decode step reads here (``bench`` computes MBU from it): on the GPU the
        file's bytes (``bytes_read_per_token``); on the CPU with the dense cache on, the non-expert
        matrices are read from their dense copies in the activation dtype."""
        cached = self.device.type == "cpu" and cache_policy(self._file).enabled(self.dtype)
        return bytes_read_per_token(self._file, self.cfg, self.dtype if cached else None)

    # ------------------------------------------------------------------ forward
    def forward(self, ids: torch.Tensor, cache: KVCache | None = None, last_only: bool = False,
                at: torch.Tensor | None = None) -> torch.Tensor:
        """ids [B, T] -> logits [B, T, V] (or [B, 1, V] with last_only; position at[0] only with
        ``at``, a device index), float32. With a cache, the T tokens continue what it holds (any
        T: the attention takes absolute positions)."""
        c = self.cfg
        B, T = ids.shape
        start = cache.reserve(T) if cache is not None else 0
        pos = torch.arange(start, start + T, device=self.device)
        tok_pos = pos.expand(B, T).reshape(-1).contiguous()  # ops.qkv_rope: one position per token
        x = self.embd.rows(ids, self.dtype, checked=not capturing()).reshape(B * T, c.n_embd)
        for i, L in enumerate(self.layers):
            kc, vc = (cache.k[i], cache.v[i]) if cache is not None else (None, None)
            rope = direct_on_cpu(ops.qkv_rope, ops.qkv_rope_module.reference, x)
            q, k, v = rope(self.project_qkv(x, L), tok_pos, self.rope_cos, self.rope_sin, kc, vc, None, None,
                           c.n_head, c.n_head_kv, T, ROPE_MODE, c.head_dim)
            a = self.attend_tokens(q, k, v, L, i, B, T, start, pos, cache)
            x = ops.linear(a.reshape(B * T, -1), L.o, L.o_bias, residual=x)
            x = self.ffn(x, L)
        if cache is not None:
            cache.length = start + T
        x = x.view(B, T, c.n_embd)
        if at is not None:
            x = x.index_select(1, at)
        elif last_only:
            x = x[:, -1:]
        return ops.linear(x.contiguous(), self.head, norm=self.norm, float_out=True)

    def decode_logits(self, st) -> torch.Tensor:
        """One decode step for st.batch sequences, each at its own position st.pos (a
        cuda_graph.DecodeState): logits [B, V] float32; k/v written at st.pos, st.lens set (by
        the QKV op of every layer). On the GPU with MXFP4 experts nothing here reads the device
        (graph-capturable: one linear_qkv launch per layer, decode attention kernel over
        st.lens, routing and experts on the device); on the CPU the MoE picks its experts on
        the host."""
        B = st.ids.shape[0]
        c = self.cfg
        x = self.embd.rows(st.ids, self.dtype, checked=not self.on_gpu, status=st.status).reshape(B, c.n_embd)
        scale = 1.0 / math.sqrt(c.head_dim)
        for i, L in enumerate(self.layers):
            q = self.qkv_decode(x, L, st, i)                                   # [B, Hq, d]
            kc, vc = st.cache.k[i], st.cache.v[i]
            if self.on_gpu:
                a = ops.attention_decode(q, kc, vc, st.lens, scale, st.splits, L.sinks, L.window or 0,
                                         st.short_keys, st.reduce)
            else:
                a = sink_attention(q[:, None], kc, vc, L.sinks, st.pos[:, None], L.window, scale)
            x = ops.linear(a.reshape(B, -1), L.o, L.o_bias, residual=x)
            x = self.ffn(x, L)
        return ops.linear(x, self.head, norm=self.norm, float_out=True)

    def project_qkv(self, x: torch.Tensor, L: Layer) -> torch.Tensor:
        """[ntok, (Hq + 2 Hkv) d] = attn_norm(x) @ [q; k; v].T + bias: one ops.linear with the
        norm fused, or (separate weights) the norm once and three products."""
        if len(L.qkv) == 1:
            return ops.linear(x, L.qkv[0], L.qkv_bias[0], norm=L.attn_norm)
        return torch.cat(ops.linear_module.linear_each(x, L.qkv, L.attn_norm, L.qkv_bias), dim=-1)

    def qkv_decode(self, x: torch.Tensor, L: Layer, st, layer: int) -> torch.Tensor:
        """q [B, Hq, d] of one token per sequence at st.pos, rotated; k/v appended at st.pos,
        st.lens = pos + 1, a position outside the cache flagged in st.status. One
        ops.linear_qkv launch with the stacked weight."""
        c = self.cfg
        args = (st.pos, self.rope_cos, self.rope_sin, st.cache.k[layer], st.cache.v[layer], st.lens, st.status,
                c.n_head, c.n_head_kv)
        if len(L.qkv) == 1:
            return ops.linear_qkv(x, L.qkv[0], L.qkv_bias[0], L.attn_norm, *args, ROPE_MODE, c.head_dim)
        q, _, _ = ops.qkv_rope(self.project_qkv(x, L), *args, 1, ROPE_MODE, c.head_dim)
        return q

    def attend_tokens(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, L: Layer, layer: int, B: int, T: int,
                      start: int, pos: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        """Attention of T new tokens per sequence at positions pos = start..start+T-1 (host
        known): q [B*T, Hq, d], k/v [B*T, Hkv, d] rotated (and already in the cache, if any)
        -> [B, T, Hq, d]. A whole prompt on the GPU takes the prefill kernel; otherwise
        sink_attention over the cache."""
        c = self.cfg
        scale = 1.0 / math.sqrt(c.head_dim)
        q = q.view(B, T, c.n_head, c.head_dim)
        k, v = (t.view(B, T, c.n_head_kv, c.head_dim) for t in (k, v))
        if self.on_gpu and start == 0:
            return ops.attention_prefill(q, k, v, scale, L.sinks, L.window or 0)
        if cache is None:
            keys, values = k.transpose(1, 2), v.transpose(1, 2)
        else:
            keys, values = cache.k[layer][:, :, :start + T], cache.v[layer][:, :, :start + T]
        return sink_attention(q, keys, values, L.sinks, pos, L.window, scale)

    def ffn(self, x: torch.Tensor, L: Layer) -> torch.Tensor:
        """x + moe(RMSNorm(x; post_attention_norm)), the residual fused where the op takes it.
        On the GPU the norm is the reference's formula (fp32, x * rsqrt(mean(x^2) + eps) * w,
        rounded once): for few tokens inside ops.moe_norm_route's kernel, else torch's rms_norm
        on the fp32 row."""
        eps = self.cfg.norm_eps
        if self.on_gpu:
            flat = x.reshape(-1, x.shape[-1]).contiguous()
            if getattr(self, "moe_kernels", False) and flat.shape[0] < MOE_GROUPED_MIN_TOKENS:
                # few tokens: the norm runs inside the routing kernel (one launch instead of four)
                h, ids, w = ops.moe_norm_route(flat, L.post_norm, eps, L.router, L.router_bias, self.cfg.n_expert_used)
                return GptOss._experts_kernel(h, ids, w, L, flat).reshape(x.shape)
            h = F.rms_norm(x.float(), (x.shape[-1],), L.post_norm, eps).to(x.dtype)
        else:
            h = rmsnorm(x, L.post_norm, eps)
        return self.moe(h, L, residual=x)

    @staticmethod
    def _experts_kernel(h: torch.Tensor, ids: torch.Tensor, w: torch.Tensor, L: Layer,
                        residual: torch.Tensor | None) -> torch.Tensor:
        """ops.moe_experts on the layer's MXFP4 stacks: [M, C] (+ residual)."""
        return ops.moe_experts(h, ids, w, L.gate.weight.raw, L.gate.bias, L.up.weight.raw, L.up.bias,
                               L.down.weight.raw, L.down.bias, residual)

    def moe(self, h: torch.Tensor, L: Layer, residual: torch.Tensor | None = None) -> torch.Tensor:
        """Top-k routing, then each chosen expert on the tokens that chose it (+ residual).
        On the GPU nothing reads the device: few tokens take ops.moe_experts (MXFP4 stacks),
        many take grouped_experts; elsewhere the reference loop."""
        k = self.cfg.n_expert_used
        flat = h.reshape(-1, h.shape[-1])
        res = residual.reshape(flat.shape) if residual is not None else None
        grouped = getattr(self, "on_gpu", False) and flat.shape[0] >= MOE_GROUPED_MIN_TOKENS
        if getattr(self, "moe_kernels", False) and not grouped:
            ids, w = ops.moe_route(flat.contiguous(), L.router, L.router_bias, k)
            return GptOss._experts_kernel(flat.contiguous(), ids, w, L, res).reshape(h.shape)
        if grouped:
            ids, w = ops.moe_route(flat.contiguous(), L.router, L.router_bias, k)
            if MOE_GROUPED_GEMM and getattr(self, "moe_kernels", False) and \
                    moe_grouped_supports(flat.shape[1], L.gate.rows, flat.dtype, L.gate.n_expert):
                return grouped_gemm_experts(flat.contiguous(), ids, w, L, res).reshape(h.shape)
            out = grouped_experts(flat, ids, w, L)
        else:
            logits = F.linear(flat.float(), L.router, L.router_bias)           # [N, E], fp32
            top, chosen = torch.topk(logits, k, dim=-1)                          # [N, k]
            weights = torch.softmax(top, dim=-1)                                 # over the k chosen only
            out = reference_experts(flat, chosen, weights, L)
        out = out if res is None else res + out
        return out.reshape(h.shape)


# --------------------------------------------------------------------------- memory

def _el(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _dequant_bytes_per_value(qtype, dtype: torch.dtype, expert: bool) -> int:
    """Temporary bytes per value when a weight is made dense in ``dtype``: QWeight.dense views
    F32-as-fp32 and F16-as-fp16 (no copy) and converts F16 directly; everything else (and every
    expert slice but F32) goes through quants.dequantize's float32 output, then to ``dtype``."""
    el = _el(dtype)
    if qtype == _Q.F32 or (qtype == _Q.F16 and not expert):
        native = torch.float32 if qtype == _Q.F32 else torch.float16
        return 0 if dtype == native else el
    return 4 + (0 if dtype == torch.float32 else el)


def _dense_cached(name: str, t, tensors, dtype: torch.dtype) -> bool:
    """Whether the CPU dense cache keeps a ``dtype`` copy of this tensor once it has been used:
    a "raw" matrix that ``QWeight.dense`` converts (not a zero-copy view), not a lookup-only
    table, not an expert stack (``ExpertStack`` dequantizes one expert at a time, uncached), and
    not a matrix whose float32 product reads its packed blocks (``qweight.packed_product``)."""
    return (held_as(name) == "raw" and "_exps." not in name and not lookup_only(name, tensors)
            and not _is_view(t.qtype, dtype) and not packed_product(t.qtype, t.shape, dtype))


def rope_table_bytes(cfg) -> int:
    """The fp32 cos and sin tables [n_ctx, head_dim / 2] (``GptOss.set_rope``)."""
    return 2 * cfg.n_ctx * (cfg.head_dim // 2) * 4


def grouped_moe_bytes(f, cfg, dtype: torch.dtype, rows: int) -> int:
    """Temporaries of ``grouped_experts`` on ``rows`` tokens (at most one pass): the fp32 sums
    [rows, C] with their rounded copy, the dense routing weights and mask [rows, E], one expert
    matrix dequantized on the device straight into ``dtype``, and the larger of the two phases
    of one expert: gate, up and the clamped-SwiGLU temporaries (5 x [rows, F] in dtype), or the
    SwiGLU output and down's output in dtype with its weighted fp32 copies (y * w and the masked
    one: 2 x [rows, C] fp32)."""
    el = _el(dtype)
    c, e = cfg.n_embd, cfg.n_expert
    n_ff = cfg.n_ff_expert
    matrix = max(int(torch.Size(f.tensors[f"blk.0.ffn_{k}_exps.weight"].shape).numel()) // e
                 for k in ("gate", "up", "down"))
    per_row = c * (4 + el) + e * (4 + 1) + max(5 * n_ff * el, (n_ff + c) * el + 2 * c * 4)
    return rows * per_row + matrix * el


def estimate_memory(f, cfg, dtype: torch.dtype, n_ctx: int | None = None, device: str = "cpu") -> dict:
    """Bytes to run gpt-oss, from the file's tensor table (``f.tensors``: name -> shape, qtype,
    nbytes), as ``GptOss`` holds things:

    * weights: "raw" tensors at their file size (experts stay MXFP4), "fp32" ones at 4 bytes,
      biases and the fused norms at the activation dtype's size (``held_as``), plus the fp32
      RoPE cos/sin tables over the model's context (``rope_table_bytes``);
    * dense_cache (CPU only): when the model's dense copies fit the CPU cache budget
      (``qweight.cache_policy``; the decision counts every tensor), the ``dtype`` copies of the
      non-expert matrices that are not views (``_dense_cached``); 0 on the GPU;
    * kv_cache: keys and values for ``n_ctx`` positions in every layer (``KVCache``; sliding
      layers keep full length too);
    * transient: the larger of a one-token step's (the largest matrix dequantized at once: one
      expert's rows, or a non-expert matrix whose file type is not the activation dtype;
      MXFP4/quantized types pass through float32; plus the logits row in the activation dtype
      and in float32) and, on the GPU, a prompt's grouped MoE at min(n_ctx,
      MOE_GROUPED_MAX_ROWS) tokens (``grouped_moe_bytes``).
    """
    n_ctx = n_ctx or cfg.n_ctx
    el = _el(dtype)
    weights = 0
    biggest = 0
    for name, t in f.tensors.items():
        numel = int(torch.Size(t.shape).numel())
        kind = held_as(name)
        weights += t.nbytes if kind == "raw" else numel * (4 if kind == "fp32" else el)
        if kind == "raw" and name != "token_embd.weight":  # the embedding is read by rows only
            expert = "_exps." in name
            at_once = numel // t.shape[0] if expert else numel
            biggest = max(biggest, at_once * _dequant_bytes_per_value(t.qtype, dtype, expert))
    dense = 0
    if device == "cpu" and dense_cache_bytes(f.tensors, dtype) <= cpu_cache_budget():
        dense = sum(t.n_elements * el for name, t in f.tensors.items() if _dense_cached(name, t, f.tensors, dtype))
    weights += rope_table_bytes(cfg)
    kv = 2 * cfg.n_layer * cfg.n_head_kv * cfg.head_dim * n_ctx * el
    transient = biggest + cfg.vocab_size * (el + 4)
    if device == "cuda":
        rows = min(n_ctx, MOE_GROUPED_MAX_ROWS)
        if MOE_GROUPED_GEMM and moe_grouped_supports(cfg.n_embd, cfg.n_ff_expert, dtype, cfg.n_expert):
            grouped = moe_grouped_transient_bytes(rows, cfg.n_expert_used, cfg.n_embd, cfg.n_ff_expert,
                                                  cfg.n_expert, dtype)
        else:
            grouped = grouped_moe_bytes(f, cfg, dtype, rows)
        transient = max(transient, grouped)
    return {"weights": weights, "dense_cache": dense, "kv_cache": kv, "transient": transient,
            "total": weights + dense + kv + transient, "n_ctx": n_ctx, "device": device,
            "dtype": str(dtype).replace("torch.", ""), "bytes_read_per_token": bytes_read_per_token(f, cfg)}


def bytes_read_per_token(f, cfg, dense_dtype: torch.dtype | None = None) -> int:
    """Weight bytes a one-token decode step must read: every non-expert tensor (the embedding:
    one row), and k of the E experts of each stack. The figure MBU is computed from. With
    ``dense_dtype`` (the CPU dense cache is on), the matrices it caches count at their dense size."""
    total = 0
    for name, t in f.tensors.items():
        if name == "token_embd.weight":
            total += t.nbytes // t.shape[0]
        elif "_exps." in name:
            total += t.nbytes * cfg.n_expert_used // cfg.n_expert
        elif dense_dtype is not None and _dense_cached(name, t, f.tensors, dense_dtype):
            total += t.n_elements * _el(dense_dtype)
        else:
            total += t.nbytes
    return total


def tensor_layout(f, cfg) -> dict:
    """The MoE tensors as ``gpt-engine inspect`` shows them: each expert projection's shape
    (torch order [E, rows, cols]), file type(s) and bytes over all layers and for one expert of
    one layer, the router's, and the weight bytes of one decode step (``bytes_read_per_token``)."""
    def over_layers(suffix: str) -> dict:
        ts = [f.tensors[f"blk.{i}.{suffix}"] for i in range(cfg.n_layer)]
        return {"shape": list(ts[0].shape), "type": "+".join(sorted({t.qtype.name for t in ts})),
                "bytes": sum(t.nbytes for t in ts)}

    experts = {}
    for kind in ("gate", "up", "down"):
        e = over_layers(f"ffn_{kind}_exps.weight")
        e["bytes_per_expert"] = f.tensors[f"blk.0.ffn_{kind}_exps.weight"].nbytes // cfg.n_expert
        e["bias_type"] = over_layers(f"ffn_{kind}_exps.bias")["type"]
        experts[kind] = e
    router = over_layers("ffn_gate_inp.weight")
    router["bias_type"] = over_layers("ffn_gate_inp.bias")["type"]
    expert_bytes = sum(e["bytes"] for e in experts.values())
    total = sum(t.nbytes for t in f.tensors.values())
    return {"experts": experts, "router": router, "expert_bytes": expert_bytes,
            "other_bytes": total - expert_bytes, "bytes_read_per_token": bytes_read_per_token(f, cfg)}

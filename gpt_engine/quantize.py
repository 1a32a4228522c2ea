"""Float weights -> GGUF block bytes, for every type the engine reads.

F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and MXFP4 go through gguf-py's own quantizers
(``gguf.quants.quantize``: ports of ggml's reference quantizers). gguf-py has none for the
K-quants, so Q4_K, Q5_K and Q6_K are ours, written from the block layouts in ggml-common.h
(the same layouts ``gpt_engine.quants`` decodes):

- Q4_K / Q5_K: super-blocks of 256 = 8 sub-blocks of 32; value = (d * sc_j) * q - (dmin * m_j)
  with q in [0, 15] / [0, 31], 6-bit sc_j and m_j, fp16 d and dmin.
- Q6_K: super-blocks of 256 = 16 sub-blocks of 16; value = (d * sc_j) * (q - 32), q in [0, 63],
  int8 sc_j, fp16 d.

Our K-quantizer is simpler than ggml's ``quantize_row_q4_K_ref`` & co.: ggml searches each
sub-block's scale and offset over ~20 candidates with importance weights (``make_qkx2_quants``,
``make_qx_quants``); we start from the sub-block's range and refine scale and offset by two
rounds of least squares on the chosen codes, then quantize the sub-block scales to 6 (8) bits
and re-pick every code against the stored scales. It is validated by decoding with gguf-py
(tests/test_quantize.py): its error is below gguf-py's Q4_1 / Q5_1 / Q5_0 on the same data.
Expect files from llama.cpp's quantizer to be slightly better than ours, never worse.
"""
from __future__ import annotations

import numpy as np
import torch
from gguf.constants import GGML_QUANT_SIZES, QK_K, GGMLQuantizationType

from .errors import GGUFError
from .quants import qtype_of

Q = GGMLQuantizationType
K_QUANTS = (Q.Q4_K, Q.Q5_K, Q.Q6_K)
_REFINE_ROUNDS = 2  # least-squares rounds; a third changed NMSE by < 0.5% on Gaussian data
_FP16_MAX = 65504.0


def quantize(x, qtype) -> np.ndarray:
    """``x`` (float array, last dim = rows of whole blocks) -> uint8 ``[..., bytes per row]``,
    the bytes a GGUF tensor of type ``qtype`` holds (what ``gpt_engine.dequantize`` reads)."""
    t = qtype_of(qtype)
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    a = np.ascontiguousarray(a, dtype=np.float32)
    bs, ts = GGML_QUANT_SIZES[t]
    if a.ndim == 0 or a.shape[-1] == 0 or a.shape[-1] % bs:
        raise GGUFError(f"quantize: row length {a.shape[-1] if a.ndim else 0} is not a positive multiple "
                        f"of the {t.name} block size {bs}")
    if not np.isfinite(a).all():
        raise GGUFError(f"quantize: {t.name} input holds NaN or inf")
    byte_shape = (*a.shape[:-1], a.shape[-1] // bs * ts)
    if t in K_QUANTS:
        blocks = torch.from_numpy(a.reshape(-1, QK_K))
        out = _q6_k(blocks) if t == Q.Q6_K else _q4_5_k(blocks, 15 if t == Q.Q4_K else 31)
        return out.numpy().reshape(byte_shape)
    import gguf

    return np.ascontiguousarray(gguf.quants.quantize(a, t)).view(np.uint8).reshape(byte_shape)


def _f16_bytes(v: torch.Tensor) -> torch.Tensor:
    """float32 [n] -> fp16 rounded, as [n, 2] little-endian bytes."""
    return v.to(torch.float16).view(torch.uint8).reshape(-1, 2)


def _f16_round(v: torch.Tensor) -> torch.Tensor:
    if (v.abs() > _FP16_MAX).any():
        raise GGUFError(f"quantize: a super-block scale {float(v.abs().max()):.3g} exceeds fp16's range")
    return v.to(torch.float16).float()


def _affine_codes(x, scale, offset, nmax):
    """q = round((x + offset) / scale) in [0, nmax]; q = 0 where scale is 0."""
    inv = torch.where(scale > 0, 1.0 / scale.clamp_min(1e-30), torch.zeros_like(scale))
    return torch.round((x + offset) * inv).clamp_(0, nmax)


def _q4_5_k(x: torch.Tensor, nmax: int) -> torch.Tensor:
    """[n, 256] float32 -> [n, 144] Q4_K (nmax 15) or [n, 176] Q5_K (nmax 31) bytes."""
    n = x.shape[0]
    xs = x.reshape(n, 8, 32)
    # start: the sub-block's range, offset clipped at 0 (the format subtracts dmin*m >= 0)
    lo = xs.amin(-1, keepdim=True).clamp_max(0.0)
    scale = (xs.amax(-1, keepdim=True) - lo) / nmax
    offset = -lo
    for _ in range(_REFINE_ROUNDS):
        # least squares x ~ a*q - b for the current codes; keep b >= 0 and a > 0
        q = _affine_codes(xs, scale, offset, nmax)
        sq, sqq = q.sum(-1, keepdim=True), (q * q).sum(-1, keepdim=True)
        sx, sqx = xs.sum(-1, keepdim=True), (q * xs).sum(-1, keepdim=True)
        det = 32 * sqq - sq * sq
        ok = det > 0
        a = torch.where(ok, (32 * sqx - sq * sx) / torch.where(ok, det, 1.0), scale)
        c = torch.where(ok, (sqq * sx - sq * sqx) / torch.where(ok, det, 1.0), -offset)
        a0 = sqx / sqq.clamp_min(1e-30)  # offset forced to 0
        a = torch.where(c > 0, a0, a)
        c = c.clamp_max(0.0)
        good = ok & (a > 0)
        scale = torch.where(good, a, scale)
        offset = torch.where(good, -c, offset)
    scale, offset = scale.reshape(n, 8), offset.reshape(n, 8)
    # 6-bit sub-block scales and offsets against fp16 super-block factors
    d = _f16_round(scale.amax(-1) / 63)
    dmin = _f16_round(offset.amax(-1) / 63)
    sc = torch.where(d[:, None] > 0, torch.round(scale / d.clamp_min(1e-30)[:, None]), 0.0).clamp_(0, 63)
    mn = torch.where(dmin[:, None] > 0, torch.round(offset / dmin.clamp_min(1e-30)[:, None]), 0.0).clamp_(0, 63)
    # re-pick every code against what the decoder will compute: (d*sc)*q - (dmin*m)
    step = (d[:, None] * sc)[..., None]
    off = (dmin[:, None] * mn)[..., None]
    q = _affine_codes(xs, step, off, nmax).to(torch.uint8)  # [n, 8, 32]
    sc, mn = sc.to(torch.uint8), mn.to(torch.uint8)
    # scales[12]: bytes 0-3 = sc0-3 | top 2 bits of sc4-7 in bits 6-7; bytes 4-7 = the same for
    # the mins; bytes 8-11 = low nibble sc4-7 | low nibble m4-7 << 4 (ggml get_scale_min_k4)
    packed = torch.cat((sc[:, :4] | ((sc[:, 4:] >> 4) << 6), mn[:, :4] | ((mn[:, 4:] >> 4) << 6),
                        (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4)), dim=1)
    lo4 = (q & 0x0F).reshape(n, 4, 2, 32)
    qs = (lo4[:, :, 0] | (lo4[:, :, 1] << 4)).reshape(n, 128)  # sub-block 2i low, 2i+1 high nibbles
    parts = [_f16_bytes(d), _f16_bytes(dmin), packed]
    if nmax == 31:
        # qh[l] bit j = bit 4 of value l of sub-block j
        hi = ((q >> 4) & 1).to(torch.int32)
        qh = (hi << torch.arange(8, dtype=torch.int32)[None, :, None]).sum(1).to(torch.uint8)
        parts.append(qh)
    parts.append(qs)
    return torch.cat(parts, dim=1).contiguous()


def _q6_k(x: torch.Tensor) -> torch.Tensor:
    """[n, 256] float32 -> [n, 210] Q6_K bytes."""
    n = x.shape[0]
    xs = x.reshape(n, 16, 16)
    # start: the largest-magnitude value maps to code -32 (the extra negative level)
    idx = xs.abs().argmax(-1, keepdim=True)
    s = torch.gather(xs, -1, idx) / -32
    for _ in range(_REFINE_ROUNDS):
        inv = torch.where(s != 0, 1.0 / torch.where(s != 0, s, 1.0), torch.zeros_like(s))
        q = torch.round(xs * inv).clamp_(-32, 31)
        sqq = (q * q).sum(-1, keepdim=True)
        s = torch.where(sqq > 0, (q * xs).sum(-1, keepdim=True) / sqq.clamp_min(1e-30), s)
    s = s.reshape(n, 16)
    d = _f16_round(s.abs().amax(-1) / 127)
    sc = torch.where(d[:, None] > 0, torch.round(s / d.clamp_min(1e-30)[:, None]), 0.0).clamp_(-128, 127)
    step = (d[:, None] * sc)[..., None]
    inv = torch.where(step != 0, 1.0 / torch.where(step != 0, step, 1.0), torch.zeros_like(step))
    q = (torch.round(xs * inv).clamp_(-32, 31) + 32).to(torch.uint8).reshape(n, 256)
    # ql: value h*128 + k*64 + b has its low nibble in ql[h*64 + b] (k = 0 low, 1 high nibble);
    # qh: value h*128 + 32*s + l has its top 2 bits at bits 2s..2s+1 of qh[h*32 + l]
    lo = (q & 0x0F).reshape(n, 2, 2, 64)
    ql = (lo[:, :, 0] | (lo[:, :, 1] << 4)).reshape(n, 128)
    hi = (q >> 4).reshape(n, 2, 4, 32).to(torch.int32)
    qh = (hi << (2 * torch.arange(4, dtype=torch.int32))[None, None, :, None]).sum(2).to(torch.uint8)
    scales = sc.to(torch.int8).view(torch.uint8)
    return torch.cat((ql, qh.reshape(n, 64), scales, _f16_bytes(d)), dim=1).contiguous()

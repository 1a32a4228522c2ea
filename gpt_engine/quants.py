"""Dequantization of GGUF tensor types in vectorised torch (float32 out).

Block sizes and bytes per block come from ``gguf.constants.GGML_QUANT_SIZES`` (gguf-py's copy
of ggml's type traits table). The bit layouts follow ggml's reference dequantizers
(ggml/src/ggml-quants.c, ``dequantize_row_*``); every type here is tested bit-for-bit against
``gguf.quants.dequantize``. Arithmetic is done in float32 in the same order as ggml/gguf-py
(no fused multiply-add), so results are bit-identical, not merely close.

MXFP4 (see docs/mxfp4.md): a block is one E8M0 scale byte then 16 bytes of E2M1 nibbles,
element j in the low nibble of byte j and element j+16 in the high nibble. ggml keeps the
E2M1 values doubled (integers 0..12) and multiplies by *half* the E8M0 scale, which is exact.
"""
from __future__ import annotations

import numbers
import warnings

import numpy as np
import torch
from gguf.constants import GGML_QUANT_SIZES, QK_K, GGMLQuantizationType

from .errors import GGUFError

Q = GGMLQuantizationType
SUPPORTED = (Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.MXFP4)

# E2M1 code -> value x 2 (OCP MX v1.0 table for FP4 E2M1; ggml's kvalues_mxfp4 stores them
# doubled so that they are integers). Code 8 is -0: it decodes to 0 * scale, i.e. +0, as in ggml.
_MXFP4_DOUBLED = torch.tensor([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], dtype=torch.float32)
# byte -> (doubled value of its low nibble, of its high nibble)
_MXFP4_PAIRS = torch.stack((_MXFP4_DOUBLED[torch.arange(256) & 15], _MXFP4_DOUBLED[torch.arange(256) >> 4]), dim=1)


_MXFP4_PAIRS_BY_DEVICE: dict = {}


def _mxfp4_pairs_on(device: torch.device) -> torch.Tensor:
    """The lookup table on ``device``, copied there once: a host-to-device copy cannot happen
    inside a captured CUDA graph (the first use is an uncaptured warm-up)."""
    if torch.device(device).type == "cpu":
        return _MXFP4_PAIRS
    src, t = _MXFP4_PAIRS_BY_DEVICE.get(device, (None, None))
    if src is not _MXFP4_PAIRS:  # first use, or the table was replaced (a test's mutation)
        t = _MXFP4_PAIRS.to(device)
        _MXFP4_PAIRS_BY_DEVICE[device] = (_MXFP4_PAIRS, t)
    return t


def qtype_of(qtype) -> GGMLQuantizationType:
    """A GGMLQuantizationType from itself, its name or its id; unsupported types are refused by name."""
    try:
        if isinstance(qtype, str):
            t = Q[qtype.upper()]
        elif isinstance(qtype, numbers.Integral) and not isinstance(qtype, bool):
            t = Q(int(qtype))
        else:  # 2.5 or True would otherwise pass int() as type 2 (Q4_0) or 1 (F16)
            raise TypeError(qtype)
    except (KeyError, ValueError, TypeError):
        raise GGUFError(f"unknown ggml type {qtype!r}; supported: {', '.join(t.name for t in SUPPORTED)}") from None
    if t not in SUPPORTED:
        raise GGUFError(f"ggml type {t.name} is not supported; supported: {', '.join(s.name for s in SUPPORTED)}")
    return t


def block_size(qtype) -> int:
    return GGML_QUANT_SIZES[qtype_of(qtype)][0]


def type_size(qtype) -> int:
    return GGML_QUANT_SIZES[qtype_of(qtype)][1]


def row_nbytes(n_elements: int, qtype) -> int:
    """Bytes of one row of ``n_elements`` values; the row must be whole blocks."""
    t = qtype_of(qtype)
    bs, ts = GGML_QUANT_SIZES[t]
    n = int(n_elements)
    if n <= 0 or n % bs:
        raise GGUFError(f"row length {n} is not a positive multiple of the {t.name} block size {bs}")
    return n // bs * ts


def tensor_nbytes(shape, qtype) -> int:
    """Bytes of a tensor of torch-order ``shape`` (last dim = row). Python ints: no overflow."""
    shape = tuple(int(d) for d in shape)
    if not shape or any(d <= 0 for d in shape):
        raise GGUFError(f"tensor shape {shape} must have at least one dimension, all > 0")
    n = row_nbytes(shape[-1], qtype)
    for d in shape[:-1]:
        n *= d
    return n


def _as_uint8(data) -> torch.Tensor:
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise GGUFError(f"dequantize: data must be uint8 raw bytes, got numpy {data.dtype}")
        if not data.flags.writeable:
            # A read-only map (zero-copy): torch warns about non-writable arrays; we only read.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                return torch.from_numpy(data)
        return torch.from_numpy(data)
    if isinstance(data, torch.Tensor):
        if data.dtype != torch.uint8:
            raise GGUFError(f"dequantize: data must be uint8 raw bytes, got torch {data.dtype}")
        return data
    raise GGUFError(f"dequantize: data must be a uint8 numpy array or torch tensor, got {type(data).__name__}")


def _f16(b: torch.Tensor) -> torch.Tensor:
    """[..., 2] little-endian fp16 bytes -> float32 [...] (exact conversion)."""
    return b.contiguous().view(torch.float16).squeeze(-1).float()


def _e8m0_half(e: torch.Tensor) -> torch.Tensor:
    """E8M0 byte -> 2^(e-127) / 2 as float32, bit patterns as ggml_e8m0_to_fp32_half (ggml-impl.h).

    e = 0 and 1 give the subnormals 2^-128 and 2^-127; e >= 2 gives exponent field e - 1.
    0xFF is *not* special-cased here (it gives 2^127), unlike the OCP spec's NaN: we match ggml.
    """
    e = e.to(torch.int32)
    bits = torch.where(e < 2, torch.bitwise_left_shift(torch.full_like(e, 0x00200000), e), (e - 1) << 23)
    return bits.view(torch.float32)


def _nibbles(qs: torch.Tensor, groups: int, width: int) -> torch.Tensor:
    """[n, groups*width] bytes -> [n, groups, 2, width] nibbles: low nibbles first, then high."""
    q = qs.reshape(qs.shape[0], groups, 1, width)
    return torch.cat((q & 0x0F, q >> 4), dim=2)


def _bits32(qh: torch.Tensor) -> torch.Tensor:
    """[n, 4] bytes of a little-endian uint32 -> [n, 32] of its bits 0..31 (0 or 1, uint8).

    Bit i of the word is bit i % 8 of byte i // 8 (ggml reads ``qh`` with memcpy into a
    uint32_t on little-endian hosts; gguf-py views the 4 bytes as ``<u4``)."""
    shifts = torch.arange(8, dtype=torch.uint8, device=qh.device)
    return ((qh[:, :, None] >> shifts) & 1).reshape(qh.shape[0], 32)


def _k_scale_min(sc_bytes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, 12] packed bytes -> (scales [n, 8], mins [n, 8]), 6-bit each (ggml get_scale_min_k4).

    Bytes 0-3 low 6 bits = scales 0-3, bytes 4-7 = mins 0-3, bytes 8-11 nibbles = low 4 bits
    of scales (low nibble) and mins (high nibble) 4-7, whose top 2 bits sit in bits 6-7 of
    bytes 0-3 (scales) and 4-7 (mins). Shared by Q4_K and Q5_K."""
    b = sc_bytes.reshape(sc_bytes.shape[0], 3, 4)
    a, m, c = b[:, 0], b[:, 1], b[:, 2]
    sc = torch.cat((a & 0x3F, (c & 0x0F) | ((a >> 2) & 0x30)), dim=-1)
    mn = torch.cat((m & 0x3F, (c >> 4) | ((m >> 2) & 0x30)), dim=-1)
    return sc, mn


def _nibbles_into(out: torch.Tensor, qs: torch.Tensor) -> torch.Tensor:
    """Write low nibbles of [n, 16] bytes to out[:, 0] and high nibbles to out[:, 1] (out [n, 2, 16])."""
    out[:, 0].copy_(qs & 0x0F)
    out[:, 1].copy_(qs >> 4)
    return out


def _blocks(raw: torch.Tensor, t: GGMLQuantizationType) -> torch.Tensor:
    """[n_blocks, type_size] uint8 -> [n_blocks, block_size] float32.

    In-place steps keep ggml's order of float32 operations (one rounding each, no FMA):
    Q8_0 q*d, Q4_0 (q-8)*d, Q5_0 (q-16)*d, Q4_1/Q5_1 q*d+m, MXFP4 v*d, Q4_K/Q5_K
    (d*sc)*q-(dmin*m), Q6_K (d*sc)*q.
    """
    n = raw.shape[0]
    if t == Q.Q8_0:
        d = _f16(raw[:, 0:2])
        return raw.view(torch.int8)[:, 2:].float().mul_(d[:, None])
    if t == Q.Q4_0:
        d = _f16(raw[:, 0:2])
        out = _nibbles_into(torch.empty(n, 2, 16, device=raw.device), raw[:, 2:])
        return out.sub_(8).mul_(d[:, None, None]).view(n, 32)
    if t == Q.Q4_1:
        d = _f16(raw[:, 0:2])
        m = _f16(raw[:, 2:4])
        out = _nibbles_into(torch.empty(n, 2, 16, device=raw.device), raw[:, 4:])
        return out.mul_(d[:, None, None]).add_(m[:, None, None]).view(n, 32)
    if t == Q.MXFP4:
        d = _e8m0_half(raw[:, 0])
        # one lookup per byte: (value of its low nibble, value of its high nibble)
        pairs = torch.index_select(_mxfp4_pairs_on(raw.device), 0, raw[:, 1:].reshape(-1).long())
        out = torch.empty(n, 2, 16, device=raw.device)
        torch.mul(pairs.view(n, 16, 2).transpose(1, 2), d[:, None, None], out=out)
        return out.view(n, 32)
    if t == Q.Q5_0:
        # {f16 d, u8 qh[4], u8 qs[16]}: element j = low nibble of qs[j] | bit j of qh << 4,
        # element j+16 = high nibble of qs[j] | bit j+16 of qh << 4; value (q - 16) * d.
        d = _f16(raw[:, 0:2])
        q = _nibbles(raw[:, 6:22], 1, 16).reshape(n, 32) | (_bits32(raw[:, 2:6]) << 4)
        return q.float().sub_(16).mul_(d[:, None])
    if t == Q.Q5_1:
        # {f16 d, f16 m, u8 qh[4], u8 qs[16]}: q as Q5_0, value q * d + m (two roundings).
        d = _f16(raw[:, 0:2])
        m = _f16(raw[:, 2:4])
        q = _nibbles(raw[:, 8:24], 1, 16).reshape(n, 32) | (_bits32(raw[:, 4:8]) << 4)
        return q.float().mul_(d[:, None]).add_(m[:, None])
    if t in (Q.Q4_K, Q.Q5_K):
        # Q4_K {f16 d, f16 dmin, u8 scales[12], u8 qs[128]};
        # Q5_K {f16 d, f16 dmin, u8 scales[12], u8 qh[32], u8 qs[128]} (ggml-common.h).
        # Sub-block j (32 values) of a 256-value super-block: low nibbles of qs[32(j/2)..] for
        # even j, high nibbles for odd j; Q5_K adds bit j of qh[l] as bit 4 of value l.
        # value = (d * sc_j) * q - (dmin * m_j).
        d = _f16(raw[:, 0:2])
        dmin = _f16(raw[:, 2:4])
        sc, mn = _k_scale_min(raw[:, 4:16])
        dd = (d[:, None] * sc.float()).reshape(n, 8, 1)
        dm = (dmin[:, None] * mn.float()).reshape(n, 8, 1)
        q = _nibbles(raw[:, -128:], 4, 32).reshape(n, 8, 32)
        if t == Q.Q5_K:
            shifts = torch.arange(8, dtype=torch.uint8, device=raw.device).reshape(1, 8, 1)
            q = q | (((raw[:, 16:48].reshape(n, 1, 32) >> shifts) & 1) << 4)
        return (dd * q.float() - dm).reshape(n, QK_K)
    if t == Q.Q6_K:
        ql = raw[:, 0:128]
        qh = raw[:, 128:192]
        scales = raw[:, 192:208].contiguous().view(torch.int8).float()
        d = _f16(raw[:, 208:210])
        dd = (d[:, None] * scales).reshape(n, 16, 1)
        lo = _nibbles(ql, 2, 64).reshape(n, 8, 32)
        h = qh.reshape(n, 2, 1, 32)
        hi = torch.cat([(h >> s) & 0x03 for s in (0, 2, 4, 6)], dim=2).reshape(n, 8, 32)
        q = (lo | (hi << 4)).to(torch.int8) - 32
        return (dd * q.reshape(n, 16, 16).float()).reshape(n, QK_K)
    raise GGUFError(f"dequantize: no block decoder for {t.name}")  # unreachable: qtype_of filters


def dequantize(data, qtype) -> torch.Tensor:
    """Raw GGUF bytes -> float32 values.

    ``data``: uint8 numpy array or torch tensor whose last dim is the raw bytes of one row
    (whole blocks). Returns ``[..., n_elements]`` float32 on the same device. For F32 data
    that is suitably aligned the result is a view of ``data`` (as gguf-py's ``dequantize``).
    """
    t = qtype_of(qtype)
    raw = _as_uint8(data)
    if raw.dim() == 0:
        raise GGUFError("dequantize: data must have at least one dimension (the row bytes)")
    bs, ts = GGML_QUANT_SIZES[t]
    row_bytes = raw.shape[-1]
    if row_bytes % ts:
        raise GGUFError(f"dequantize: row of {row_bytes} bytes is not a whole number of {t.name} blocks of {ts} bytes")
    lead = tuple(raw.shape[:-1])
    n_out = row_bytes // ts * bs
    if t in (Q.F32, Q.F16, Q.BF16):
        raw = raw.contiguous()
        if t == Q.F32:
            try:
                return raw.view(torch.float32)
            except RuntimeError:  # storage offset not 4-byte aligned: copy first
                return raw.clone().view(torch.float32)
        if t == Q.F16:
            return raw.view(torch.float16).float()
        # BF16 is the top half of a float32 (ggml_bf16_to_fp32); torch's bf16->fp32 is that shift
        return raw.view(torch.bfloat16).float()
    blocks = raw.reshape(-1, ts)
    out = _blocks(blocks, t)
    return out.reshape(*lead, n_out)


def check_ids(ids: torch.Tensor, n: int, what: str) -> None:
    """A clear error for ids outside [0, n) (on a GPU a device sync: only where the caller asked
    for the check)."""
    if ids.numel():
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= n:
            raise GGUFError(f"{what} out of range [0, {n}): min {lo}, max {hi}")


def dequantize_rows(data2d, qtype, row_ids: torch.Tensor) -> torch.Tensor:
    """Dequantize only rows ``row_ids`` of a [rows, row_bytes] tensor (embedding lookups).

    Only the selected rows' bytes are read (index_select on the byte view), so a memory-mapped
    embedding table is not touched elsewhere. Returns [*row_ids.shape, n_elements] float32.
    """
    raw = _as_uint8(data2d)
    if raw.dim() != 2:
        raise GGUFError(f"dequantize_rows: data must be 2-D [rows, row_bytes], got shape {tuple(raw.shape)}")
    ids = torch.as_tensor(row_ids, dtype=torch.long, device=raw.device)
    check_ids(ids, raw.shape[0], "dequantize_rows: row id")
    picked = raw.index_select(0, ids.reshape(-1))
    out = dequantize(picked, qtype)
    if out.data_ptr() == picked.data_ptr():
        out = out.clone()
    return out.reshape(*ids.shape, out.shape[-1])


def dequantize_tensor(f, name: str, dtype: torch.dtype = torch.float32, device="cpu") -> torch.Tensor:
    """A GGUF tensor as a dense torch tensor of its torch-order shape (a fresh copy)."""
    ti = f.tensor_info(name)
    out = dequantize(f.tensor_data(name), ti.qtype)
    if ti.qtype == Q.F32:
        out = out.clone()  # never hand out a view into the file map
    out = out.reshape(ti.shape)
    return out.to(device=device, dtype=dtype)

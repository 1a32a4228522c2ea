"""A CPU emulation of csrc/dequant.cu v2 (a desk check, not a test; written where no GPU was at
hand): the launcher's splitting into launches, the grid's piece indices, and for MXFP4 and Q8_0
every integer and fp32 operation of the kernel (aligned 4-byte words that must start inside the
weight, funnel shifts, __byte_perm with its 3-bit selectors, the 2^23 float trick, the fp32
product), checked bit for bit against gguf.quants.dequantize (fp32, fp16, bf16) on edge blocks
and random weights, with rows by id (bad ids: NaN rows, status), small launch limits (several
launches per matrix), every MXFP4 scale byte and a sweep of Q8_0 fp16 scales. Also checks FastDiv
over the divisors K / 8 and the generic types' quad mapping. Mirrors the kernel by hand: update it
with the kernel.

    python tests/bench/emulate_dequant.py
"""
import pathlib
import sys

import gguf
import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # the repo root
from tests.ops.test_linear_q import edge_blocks  # noqa: E402

Q = gguf.GGMLQuantizationType
M32 = 0xFFFFFFFF
THREADS, UNROLL = 256, 2


def byte_perm(x, y, s):  # CUDA __byte_perm: 3 bits per selector nibble
    x = np.asarray(x, np.uint64); y = np.asarray(y, np.uint64); s = np.asarray(s, np.uint64)
    both = x | (y << np.uint64(32))
    r = np.zeros(np.broadcast(x, y, s).shape, np.uint64)
    for n in range(4):
        idx = (s >> np.uint64(4 * n)) & np.uint64(7)
        r |= ((both >> (idx * np.uint64(8))) & np.uint64(0xFF)) << np.uint64(8 * n)
    return r


def funnel_r(lo, hi, sh):  # __funnelshift_r: shift masked to 0..31
    lo = np.asarray(lo, np.uint64); hi = np.asarray(hi, np.uint64); sh = np.asarray(sh, np.uint64) & np.uint64(31)
    return ((hi << np.uint64(32) | lo) >> sh) & np.uint64(M32)


def e8m0_half(e):
    e = np.asarray(e, np.uint64)
    bits = np.where(e < 2, np.uint64(0x00200000) << e, (e - np.uint64(1)) << np.uint64(23)) & np.uint64(M32)
    return bits.astype(np.uint32).view(np.float32)


def f16_bits(b):
    return np.asarray(b, np.uint16).view(np.float16).astype(np.float32)


def mxfp4_biased(c):
    c = np.asarray(c, np.uint64)
    mag = c & np.uint64(0x07070707)
    t = mag | (mag >> np.uint64(4))
    sel = (t & np.uint64(0xFF)) | ((t >> np.uint64(8)) & np.uint64(0xFF00))
    pos = byte_perm(0x83828180, 0x8C888684, sel)
    neg = byte_perm(0x7D7E7F80, 0x74787A7C, sel)
    sm = (((c >> np.uint64(3)) & np.uint64(0x01010101)) * np.uint64(0xFF)) & np.uint64(M32)
    return ((pos & ~sm) | (neg & sm)) & np.uint64(M32)


def codes4_biased(c):
    out = []
    for k in range(4):
        bits = byte_perm(c, 0x4B000000, 0x7440 | k).astype(np.uint32).view(np.float32)
        out.append((bits - np.float32(8388608.0 + 128)).astype(np.float32))
    return out


class Mem:
    """The weight bytes as the kernel sees them: 4-byte aligned words, every word read must start
    inside the buffer (a word starting past the end could be on an unmapped page)."""
    def __init__(self, raw: np.ndarray):
        self.b = raw.reshape(-1)
        self.n = self.b.size
        pad = np.zeros((self.n + 3) // 4 * 4 + 8, np.uint8)
        pad[:self.n] = self.b
        self.w = pad.view("<u4").astype(np.uint64)
        self.p8 = pad

    def word(self, idx, mask=None):
        idx = np.asarray(idx, np.int64)
        m = np.ones(idx.shape, bool) if mask is None else mask
        assert (idx[m] * 4 < self.n).all(), "word read past the end of the weight"
        return np.where(m, self.w[np.where(m, idx, 0)], 0).astype(np.uint64)

    def u8(self, off):
        off = np.asarray(off, np.int64); assert (off < self.n).all(); return self.p8[off].astype(np.uint64)

    def u16(self, off):
        off = np.asarray(off, np.int64); assert (off % 2 == 0).all() and (off + 1 < self.n).all()
        return self.p8[off].astype(np.uint64) | (self.p8[off + 1].astype(np.uint64) << np.uint64(8))


def load_piece(T, mem, blk, sub):
    blk = np.asarray(blk, np.int64); sub = np.asarray(sub, np.int64)
    if T == Q.MXFP4:
        scale = mem.u8(blk); off = blk + 1 + 8 * (sub & 1)
    else:
        scale = mem.u16(blk); off = blk + 2 + 8 * sub
    p = off >> 2
    sh = (off & 3) * 8
    a0 = mem.word(p); a1 = mem.word(p + 1); a2 = mem.word(p + 2, sh != 0)
    if T == Q.MXFP4:
        sh = sh | ((sub >> 1) << 5)
    return a0, a1, a2, scale, sh


def decode_piece(T, raw):
    a0, a1, a2, scale, sh = raw
    s5 = sh & 31
    q = [funnel_r(a0, a1, s5), funnel_r(a1, a2, s5)]
    s = e8m0_half(scale) if T == Q.MXFP4 else f16_bits(scale)
    v = []
    for h in range(2):
        if T == Q.MXFP4:
            c = mxfp4_biased((q[h] >> ((sh >> 5) * 4).astype(np.uint64)) & np.uint64(0x0F0F0F0F))
        else:
            c = q[h] ^ np.uint64(0x80808080)
        for wq in codes4_biased(c):
            v.append((wq * s).astype(np.float32))  # numpy float32 product: IEEE RN, no contraction
    return np.stack(v, -1)  # [pieces, 8]


def fastdiv_params(d):
    l = 0
    while (1 << l) < d:
        l += 1
    return ((1 << 32) * ((1 << l) - d)) // d + 1, l


def fastdiv(n, m, l):
    n = np.asarray(n, np.uint64)
    return (((n * np.uint64(m)) >> np.uint64(32)) + n) >> np.uint64(l)  # the sum < 2^32 (asserted by caller)


def grid_pieces(n):
    """Every (g) the launch of n pieces touches, in kernel order, with the g < n guard."""
    blocks = -(-n // (THREADS * UNROLL))
    b = np.arange(blocks, dtype=np.int64)[:, None, None]
    u = np.arange(UNROLL, dtype=np.int64)[None, :, None]
    t = np.arange(THREADS, dtype=np.int64)[None, None, :]
    g = (b * (THREADS * UNROLL) + t + u * THREADS).reshape(-1)
    assert g.max() < 2**32
    return g[g < n]


def run(T, raw_rows, N, K, ids, nrows, max_pieces):
    """The launcher + kernels: returns the fp32 output [nrows, K] (NaN rows for bad ids) and status."""
    QK, TS = gguf.GGML_QUANT_SIZES[T]
    ppb, shift = QK // 8, (2 if QK == 32 else 5)
    mem = Mem(raw_rows)
    out = np.full(nrows * K, np.float32(12345.0), np.float32)  # poison: every value must be written
    written = np.zeros(nrows * K // 8, np.int64)
    status = 0
    if ids is None and nrows <= N:
        total = nrows * (K // 8)
        for p0 in range(0, total, max_pieces):
            n = min(total - p0, max_pieces)
            wofs = p0 // ppb * TS; oofs = p0 * 8
            assert wofs % 4 == 0 and p0 % ppb == 0
            g = grid_pieces(n)
            blk = wofs + (g >> shift) * TS
            sub = g & (ppb - 1)
            v = decode_piece(T, load_piece(T, mem, blk, sub))
            idx = (oofs // 8 + g)
            written[idx] += 1
            out.reshape(-1, 8)[idx] = v
    else:
        ppr = K // 8
        rpl = max(1, max_pieces // ppr)
        m, l = fastdiv_params(ppr)
        row_bytes = K // QK * TS
        for r0 in range(0, nrows, rpl):
            rows = min(nrows - r0, rpl); n = rows * ppr
            g = grid_pieces(n)
            assert g.max() < 2**31
            r = fastdiv(g, m, l).astype(np.int64)
            assert (r == g // ppr).all()
            c = g - r * ppr
            src = ids[r0 + r] if ids is not None else r0 + r
            ok = (src >= 0) & (src < N)
            v = np.full((g.size, 8), np.nan, np.float32)
            if ok.any():
                blk = src[ok] * row_bytes + (c[ok] >> shift) * TS
                v[ok] = decode_piece(T, load_piece(T, mem, blk, c[ok] & (ppb - 1)))
            if (~ok).any():
                status |= 1
            idx = (r0 * K) // 8 + g
            written[idx] += 1
            out.reshape(-1, 8)[idx] = v
    assert (written == 1).all(), "every piece written exactly once"
    return out.reshape(nrows, K), status


def to_dtype(x32, dt):
    return torch.from_numpy(x32).to(dt)


def check(T, n, k, rng, max_pieces=1 << 30, edge=True):
    QK, TS = gguf.GGML_QUANT_SIZES[T]
    name = T.name
    if edge:
        raw = edge_blocks(name, n * (k // QK), rng).reshape(n, -1)
    else:
        w = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
        raw = np.ascontiguousarray(gguf.quants.quantize(w, T)).reshape(n, -1)
    ref = gguf.quants.dequantize(raw, T).astype(np.float32).reshape(n, k)
    out, st = run(T, raw, n, k, None, n, max_pieces)
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        a, b = to_dtype(out, dt), to_dtype(ref, dt)
        assert torch.equal(a, b) or (torch.isnan(a) == torch.isnan(b)).all() and torch.equal(
            torch.nan_to_num(a, 7.0), torch.nan_to_num(b, 7.0)), (name, n, k, dt, int((a != b).sum()))
    assert st == 0
    # rows by id, with bad ids
    ids = np.array([5 % n, 0, n - 1, -1, n, 5 % n, n // 2], np.int64)
    out2, st2 = run(T, raw, n, k, ids, ids.size, max_pieces)
    good = (ids >= 0) & (ids < n)
    assert np.array_equal(out2[good].view(np.uint32), ref[ids[good]].view(np.uint32)), (name, "ids")
    assert np.isnan(out2[~good]).all() and st2 == 1
    # ids null, nrows > N (NaN rows past N, status)
    out3, st3 = run(T, raw, n, k, None, n + 2, max_pieces)
    assert np.array_equal(out3[:n].view(np.uint32), ref.view(np.uint32)) and np.isnan(out3[n:]).all() and st3 == 1
    return raw.nbytes


def main():
    rng = np.random.default_rng(1)
    for T in (Q.MXFP4, Q.Q8_0):
        for (n, k) in [(1, 32), (1, 64), (3, 32), (37, 768), (5, 2880), (7, 4096), (130, 96), (1, 32 * 300),
                       (33, 1600), (600, 32)]:
            for edge in (True, False):
                check(T, n, k, rng, edge=edge)
            # several launches: every part offset (w by p0 / (QK / 8) * TS, out by 8 p0)
            for mp in (1 << 5, 1 << 9, 1 << 12):
                check(T, n, k, rng, max_pieces=mp)
        print(T.name, "ok")
    # NaN / Inf / subnormal sweep for MXFP4: every scale byte with every code nibble pattern
    raw = np.zeros((256, 17), np.uint8)
    raw[:, 0] = np.arange(256)
    raw[:, 1:] = (np.arange(16) | (np.arange(16)[::-1] << 4)).astype(np.uint8)
    ref = gguf.quants.dequantize(raw, Q.MXFP4).astype(np.float32).reshape(256, 32)
    out, _ = run(Q.MXFP4, raw, 256, 32, None, 256, 1 << 30)
    assert np.array_equal(out.view(np.uint32), ref.view(np.uint32)), "scale sweep"
    # Q8_0: every fp16 scale bit pattern that is finite, times every int8
    d = np.arange(0, 65536, 7, dtype=np.uint32).astype(np.uint16)
    d = d[np.isfinite(d.view(np.float16))]
    raw = np.zeros((d.size, 34), np.uint8)
    raw[:, :2] = d.view(np.uint8).reshape(-1, 2)
    raw[:, 2:] = ((np.arange(d.size)[:, None] * 32 + np.arange(32)[None, :]) % 256).astype(np.uint8)
    ref = gguf.quants.dequantize(raw, Q.Q8_0).astype(np.float32).reshape(d.size, 32)
    out, _ = run(Q.Q8_0, raw, d.size, 32, None, d.size, 1 << 30)
    assert np.array_equal(out.view(np.uint32), ref.view(np.uint32)), "q8 scale sweep"
    print("scale sweeps ok")
    # FastDiv: every divisor K / 8 for K = 32 .. 2^20 step 32 (and a few huge), n at the row edges and random
    for d in list(range(4, 1 << 17, 4)) + [(1 << 30) - 4, 1 << 30, 3 * (1 << 27), 1, 2, 3, 7]:
        m, l = fastdiv_params(d)
        assert 0 < m < (1 << 32)
        top = (1 << 30) + 1024
        ns = [0, 1, d - 1, d, d + 1, top - 1, top]
        ns += [q * d + r for q in (1, 2, top // d - 1, top // d) for r in (-1, 0, 1) if 0 <= q * d + r <= top]
        ns = np.array(ns + list(np.random.default_rng(d).integers(0, top, 64)), np.uint64)
        assert ((ns * np.uint64(m) >> np.uint64(32)) + ns < np.uint64(1 << 32)).all()
        assert (fastdiv(ns, m, l) == ns // np.uint64(d)).all(), d
    print("fastdiv ok")
    # the generic types: piece sub's two decode4 calls (j, i) equal v1's quads of the same values
    for QK in (32, 256):
        for sub in range(QK // 8):
            for h in range(2):
                c = 8 * sub + 4 * h
                assert (sub >> 2, 2 * (sub & 3) + h) == (c >> 5, (c & 31) >> 2)
    print("generic mapping ok")


if __name__ == "__main__":
    main()

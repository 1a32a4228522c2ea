"""CPU emulation of the MoE decode v7.2's input order (exploration, not a test of the CUDA code;
the CUDA test is tests/ops/test_moe.py::test_decode_v7_matches_v3, which asserts v7.2 = v7 bit for
bit): prmt as the PTX ISA defines it (selector bits 0-2 pick a byte of {b, a}, bit 3 gives that
byte's sign), csrc/quant_blocks.cuh's mxfp4_biased8 (natural order) and mxfp4_biased8_zip (the
nibbles' own order), and quantize8_v3<true>'s zip store (each part's exchange with lane ^ 16).
On random groups of 16 qs bytes and 32 16-bit activation codes, the dp4a sums over the high and
the low planes must be the same integers in both orders, and the natural order's codes must be
128 + ggml's doubled E2M1 values.

    python tests/bench/emulate_moe_zip.py
"""
from __future__ import annotations

import random

MASK = 0xFFFFFFFF
T0, T1 = 0x03020100, 0x0C080604  # doubled E2M1 magnitudes 0 1 2 3 | 4 6 8 12
E2M1_DOUBLED = [0, 1, 2, 3, 4, 6, 8, 12]


def prmt(a: int, b: int, sel: int) -> int:
    src = [(a >> (8 * i)) & 0xFF for i in range(4)] + [(b >> (8 * i)) & 0xFF for i in range(4)]
    out = 0
    for k in range(4):
        n = (sel >> (4 * k)) & 0xF
        v = src[n & 7]
        if n & 8:  # sign mode
            v = 0xFF if v & 0x80 else 0
        out |= v << (8 * k)
    return out


def lookups(q: int) -> tuple[int, int]:
    """128 + P - N per byte, in the nibbles' order (mxfp4_biased8_zip's ua, ub)."""
    qn = q ^ 0x88888888
    pa, pb = prmt(T0, T1, q), prmt(T0, T1, q >> 16)
    na, nb = prmt(T0, T1, qn), prmt(T0, T1, qn >> 16)
    return (pa + 0x80808080 - na) & MASK, (pb + 0x80808080 - nb) & MASK


def biased8(q: int) -> tuple[int, int]:
    ua, ub = lookups(q)
    return prmt(ua, ub, 0x6420), prmt(ua, ub, 0x7531)  # values 4i..4i+3, 16+4i..19+4i


def words(bs: list[int]) -> list[int]:
    return [bs[i] | bs[i + 1] << 8 | bs[i + 2] << 16 | bs[i + 3] << 24 for i in range(0, len(bs), 4)]


def signed(v: int) -> int:
    return v - 256 if v > 127 else v


def dot(codes: list[int], planes: list[int], x_signed: bool) -> int:
    """sum of dp4a(codes[i], planes[i]): unsigned codes against a signed (hi) or unsigned (lo) plane"""
    s = 0
    for c, x in zip(codes, planes):
        for k in range(4):
            xb = (x >> (8 * k)) & 0xFF
            s += ((c >> (8 * k)) & 0xFF) * (signed(xb) if x_signed else xb)
    return s


def zip_planes(plane: list[int]) -> list[int]:
    """quantize8_v3<true>'s store of one plane (32 bytes, value order): regions 0 and 2 as words"""
    part = {p: words(plane[8 * p:8 * p + 8]) for p in range(4)}  # part p: values 8p..8p+7
    region = {0: [0] * 16, 2: [0] * 16}
    for p in range(4):
        low = p < 2
        got = part[p ^ 2][1] if p ^ 2 < 2 else part[p ^ 2][0]  # what lane ^ 16 sends
        a, b = (part[p][0], got) if low else (got, part[p][1])
        off = (p >> 1) * 8
        for k, w in enumerate((prmt(a, b, 0x5140), prmt(a, b, 0x7362))):
            for j in range(4):
                region[2 * (p & 1)][off + 4 * k + j] = (w >> (8 * j)) & 0xFF
    return words(region[0]) + words(region[2])


def main() -> None:
    rng = random.Random(1)
    for _ in range(3000):
        qs = [rng.getrandbits(32) for _ in range(4)]  # value v: low nibble of byte v % 16 (v < 16), else high
        x = [rng.randint(-32767, 32767) for _ in range(32)]
        hi, lo = [(c >> 8) & 0xFF for c in x], [c & 0xFF for c in x]
        nat = [0] * 8
        for i in range(4):
            nat[i], nat[i + 4] = biased8(qs[i])
        zipped = [w for i in range(4) for w in lookups(qs[i])]
        want = (dot(nat, words(hi), True), dot(nat, words(lo), False))
        got = (dot(zipped, zip_planes(hi), True), dot(zipped, zip_planes(lo), False))
        assert got == want, (got, want)
        values = []
        for v in range(32):
            byte = (qs[(v % 16) // 4] >> (8 * (v % 4))) & 0xFF
            nib = byte & 0xF if v < 16 else byte >> 4
            values.append(128 + (-1 if nib & 8 else 1) * E2M1_DOUBLED[nib & 7])
        assert [(w >> (8 * k)) & 0xFF for w in nat for k in range(4)] == values
    print("ok: the zip order gives the natural order's integer sums on 3000 random groups")


if __name__ == "__main__":
    main()

"""GT-000: each MXFP4 fact in docs/mxfp4.md, pinned against gguf-py (not against our code).

gguf-py's ``gguf.quants.dequantize`` is bit-exact with ggml's C reference, so what it decodes
is what llama.cpp reads. Each test builds blocks by hand from the documented layout and checks
gguf-py's decoding of them.
"""
from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as QT

# OCP MX v1.0, section 5.3.3 (FP4 E2M1): sign, 2 exponent bits (bias 1), 1 mantissa bit;
# codes 0..7 are 0, 0.5, 1, 1.5, 2, 3, 4, 6 and codes 8..15 the same with the sign set.
E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def decode(blocks: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return gguf.quants.dequantize(blocks.astype(np.uint8), QT.MXFP4)


def block(scale: int, codes: list[int]) -> np.ndarray:
    """One 17-byte block from 32 codes per the documented layout (j low nibble, j+16 high)."""
    assert len(codes) == 32
    b = np.zeros(17, dtype=np.uint8)
    b[0] = scale
    for j in range(16):
        b[1 + j] = codes[j] | (codes[j + 16] << 4)
    return b


@pytest.mark.story("GT-000")
def test_type_id_and_block_size():
    assert int(QT.MXFP4) == 39
    assert QT(39).name == "MXFP4"
    assert GGML_QUANT_SIZES[QT.MXFP4] == (32, 17)  # 32 values in 1 scale byte + 16 nibble bytes


@pytest.mark.story("GT-000")
def test_e2m1_values_including_negatives():
    # scale byte 127 = 2^0: each code decodes to its E2M1 value
    out = decode(block(127, list(range(16)) * 2)[None])[0]
    expected = E2M1 + [-v for v in E2M1]
    assert out[:16].tolist() == expected
    assert out[16:].tolist() == expected
    assert out[8] == 0.0  # code 8 (-0) decodes to zero


@pytest.mark.story("GT-000")
def test_nibble_layout_low_is_j_high_is_j_plus_16():
    # element j = low nibble of byte j, element j + 16 = high nibble of byte j
    b = np.zeros(17, dtype=np.uint8)
    b[0] = 127
    b[1 + 3] = 0x7 | (0x2 << 4)  # byte 3: low code 7 (6.0), high code 2 (1.0)
    out = decode(b[None])[0]
    assert out[3] == 6.0 and out[3 + 16] == 1.0
    assert np.count_nonzero(out) == 2
    # not the HF gpt-oss packing (which puts element 2i low and 2i+1 high)
    assert out[7] == 0.0 and out[6] == 0.0


@pytest.mark.story("GT-000")
@pytest.mark.parametrize("e", [1, 2, 100, 126, 127, 128, 200, 254])
def test_e8m0_scale_is_two_to_the_e_minus_127(e):
    out = decode(block(e, [2] * 32)[None])[0]  # code 2 = 1.0
    assert (out == np.float32(2.0 ** (e - 127))).all()


@pytest.mark.story("GT-000")
def test_scale_byte_0x00_is_two_to_minus_127():
    out = decode(block(0x00, [2, 1, 7] + [0] * 29)[None])[0]
    assert out[0] == np.float32(2.0**-127)  # subnormal in float32, kept exactly
    assert out[1] == np.float32(2.0**-128)
    assert out[2] == np.float32(6 * 2.0**-127)


@pytest.mark.story("GT-000")
def test_scale_byte_0xff_in_ggml_is_two_to_128_not_nan():
    # OCP MX v1.0 defines E8M0 0xFF as NaN. ggml (ggml_e8m0_to_fp32_half) and gguf-py do not
    # special-case it: it scales by 2^128, so 0.5 -> 2^127, |v| >= 1 -> +-inf, 0 -> 0; no NaN.
    # The engine matches ggml (bit-exactness with gguf-py is the contract); docs/mxfp4.md says so.
    out = decode(block(0xFF, [1, 2, 9, 0, 8] + [0] * 27)[None])[0]
    assert out[0] == np.float32(2.0**127)
    assert np.isposinf(out[1])
    assert out[2] == -np.float32(2.0**127)
    assert out[3] == 0.0 and out[4] == 0.0
    assert not np.isnan(out).any()


@pytest.mark.story("GT-000")
def test_ggml_stores_doubled_values_with_a_half_scale():
    # gguf-py's table is the E2M1 values times two, used with half the E8M0 scale; the product
    # is the same exact number (powers of two times small integers).
    assert list(gguf.quants.MXFP4.kvalues) == [int(2 * v) for v in E2M1] + [int(-2 * v) for v in E2M1]
    half = gguf.quants.MXFP4.e8m0_to_fp32_half(np.arange(2, 255, dtype=np.uint8).reshape(-1, 1))
    assert (half.ravel() == (2.0 ** (np.arange(2, 255) - 127) / 2).astype(np.float32)).all()

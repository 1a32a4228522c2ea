"""Torch dequantization vs gguf-py's ``gguf.quants.dequantize`` (the independent oracle).

"Bit-exact" here: identical float32 bit patterns at every position where the oracle is not
NaN, and NaN exactly where the oracle is NaN. NaN sign/payload bits are not compared: IEEE 754
leaves NaN payload propagation to the implementation, and numpy and torch already differ
between their own scalar and vectorised fp16->fp32 paths (observed: 0x7fffffff vs 0xff8c6000
for the same fp16 NaN input), so pinning them would test the CPU's code path, not the format.
"""
from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as QT

from gpt_engine.errors import GGUFError
from gpt_engine.gguf_file import GGUFFile
from gpt_engine.quants import (
    SUPPORTED,
    dequantize,
    dequantize_rows,
    dequantize_tensor,
    row_nbytes,
    tensor_nbytes,
)


def oracle(raw: np.ndarray, qtype) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.asarray(gguf.quants.dequantize(raw, qtype), dtype=np.float32)


def assert_bit_exact(ours: torch.Tensor, ref: np.ndarray) -> None:
    assert ours.dtype == torch.float32
    mine = ours.detach().cpu().numpy()
    assert mine.shape == ref.shape, (mine.shape, ref.shape)
    nan_ref = np.isnan(ref)
    assert np.array_equal(np.isnan(mine), nan_ref), "NaN positions differ"
    a = mine.view(np.uint32)[~nan_ref]
    b = ref.view(np.uint32)[~nan_ref]
    bad = np.nonzero(a != b)[0]
    assert bad.size == 0, f"{bad.size} values differ; first: ours {a[bad[0]]:#010x} ref {b[bad[0]]:#010x}"


def random_blocks(rng, qtype, lead=(3,), n_blocks=5) -> np.ndarray:
    _, ts = GGML_QUANT_SIZES[qtype]
    return rng.integers(0, 256, (*lead, n_blocks * ts), dtype=np.uint8)


@pytest.mark.story("GT-029", "GT-030", "GT-006")
@pytest.mark.parametrize("qtype", SUPPORTED, ids=lambda t: t.name)
def test_random_blocks_bit_exact(qtype):
    rng = np.random.default_rng(int(qtype) + 100)
    for lead, n_blocks in [((), 1), ((1,), 3), ((7,), 5), ((2, 3), 2), ((64,), 16)]:
        raw = random_blocks(rng, qtype, lead, n_blocks)
        ref = oracle(raw, qtype)
        assert_bit_exact(dequantize(raw, qtype), ref)
        # torch input and name input give the same
        assert_bit_exact(dequantize(torch.from_numpy(raw.copy()), qtype.name), ref)


@pytest.mark.story("GT-029", "GT-030")
@pytest.mark.parametrize("qtype", SUPPORTED, ids=lambda t: t.name)
def test_realistic_values_bit_exact(qtype):
    # Random bytes mostly give huge/NaN scales; also check well-scaled data, quantized by gguf-py
    # where it can, by our K-quantizer (gpt_engine.quantize) where gguf-py cannot.
    from gpt_engine.quantize import quantize

    rng = np.random.default_rng(7)
    bs, ts = GGML_QUANT_SIZES[qtype]
    x = rng.standard_normal((4, 2 * max(bs, 32) if bs > 1 else 64)).astype(np.float32)
    raw = quantize(x, qtype)
    assert raw.dtype == np.uint8 and raw.shape == (4, x.shape[1] // bs * ts)
    ref = oracle(raw, qtype)
    assert np.isfinite(ref).all()
    assert_bit_exact(dequantize(raw, qtype), ref)


@pytest.mark.story("GT-029", "GT-030")
def test_mxfp4_every_scale_byte_and_every_nibble():
    # 256 blocks: block e has scale byte e (0x00 .. 0xFF incl. 0x00, 0x01, 0xFE, 0xFF) and all 16
    # codes in both nibble positions, so every (scale, code) pair incl. -0 (code 8) and max (7, 15).
    raw = np.zeros((256, 17), dtype=np.uint8)
    raw[:, 0] = np.arange(256)
    codes = np.arange(16, dtype=np.uint8)
    raw[:, 1:17] = codes | (codes[::-1] << 4)
    ref = oracle(raw, QT.MXFP4)
    assert_bit_exact(dequantize(raw, QT.MXFP4), ref)
    assert_bit_exact(dequantize(raw.reshape(-1), QT.MXFP4), ref.reshape(-1))


@pytest.mark.story("GT-030")
def test_mxfp4_edge_values_pinned_by_oracle():
    # What gguf-py gives for the edges (bit-exactness with it is the contract): facts asserted on
    # the oracle's own output, then ours compared to it.
    raw = np.zeros((4, 17), dtype=np.uint8)
    raw[0, 0], raw[0, 1] = 0x00, 0x02  # smallest scale, value 1.0 -> 2^-127 (subnormal)
    raw[1, 0], raw[1, 1] = 0xFF, 0x01  # largest scale byte, value 0.5 -> 2^127 (no NaN in ggml)
    raw[2, 0], raw[2, 1] = 0xFF, 0x02  # 1.0 x 2^128 overflows float32 -> inf
    raw[3, 0], raw[3, 1] = 0x7F, 0x8F  # scale 1: low nibble 0xF = -6, high nibble 0x8 = -0
    ref = oracle(raw, QT.MXFP4)
    assert ref[0, 0] == np.float32(2.0**-127)
    assert ref[1, 0] == np.float32(2.0**127)
    assert np.isposinf(ref[2, 0])
    assert ref[3, 0] == -6.0 and ref[3, 16] == 0.0
    ours = dequantize(raw, QT.MXFP4)
    assert_bit_exact(ours, ref)
    assert not torch.isnan(ours).any()


@pytest.mark.story("GT-030")
def test_negative_zero_and_max_nibbles_other_formats():
    # F16/BF16 -0.0 and the largest finite values; Q4_0/Q4_1/Q8_0 extreme quants
    f16 = np.array([[-0.0, 65504.0, -65504.0, 6e-8]], dtype=np.float16).view(np.uint8)
    assert_bit_exact(dequantize(f16, QT.F16), oracle(f16, QT.F16))
    assert torch.signbit(dequantize(f16, QT.F16)[0, 0])
    bf = np.array([[0x8000, 0x7F7F, 0xFF7F, 0x0001]], dtype=np.uint16).view(np.uint8)
    assert_bit_exact(dequantize(bf, QT.BF16), oracle(bf, QT.BF16))
    for qt in (QT.Q4_0, QT.Q4_1, QT.Q8_0):
        _, ts = GGML_QUANT_SIZES[qt]
        raw = np.full((3, ts), 0xFF, dtype=np.uint8)
        raw[:, 0:2] = np.array([1.0, -0.0, 65504.0], dtype=np.float16).view(np.uint8).reshape(3, 2)
        if qt == QT.Q4_1:
            raw[:, 2:4] = np.array([-0.0, 0.0, -65504.0], dtype=np.float16).view(np.uint8).reshape(3, 2)
        assert_bit_exact(dequantize(raw, qt), oracle(raw, qt))


# Where each block format keeps its fp16 fields (byte offsets), from the block structs in
# ggml-common.h: Q8_0 {d, qs}, Q4_0 {d, qs}, Q4_1 {d, m, qs}, Q5_0 {d, qh, qs},
# Q5_1 {d, m, qh, qs}, Q4_K {d, dmin, scales, qs}, Q5_K {d, dmin, scales, qh, qs},
# Q6_K {ql, qh, scales, d}. Every other byte is quants or packed sub-block scales.
FP16_FIELDS = {QT.Q8_0: (0,), QT.Q4_0: (0,), QT.Q4_1: (0, 2), QT.Q5_0: (0,), QT.Q5_1: (0, 2),
               QT.Q4_K: (0, 2), QT.Q5_K: (0, 2), QT.Q6_K: (208,)}
# fp16 edges: +-0, smallest subnormal, smallest normal, 1, largest finite (both signs), +-inf, NaN
EDGE_F16 = np.array([0x0000, 0x8000, 0x0001, 0x0400, 0x3C00, 0x7BFF, 0xFBFF, 0x7C00, 0xFC00, 0x7E00],
                    dtype=np.uint16)
# quant/scale byte patterns: all 0 (lowest code; K-quant 6-bit scales and mins 0), all 1s (highest
# code; 6-bit scales 63; int8 -1), single nibbles, alternating bits, int8 -128 and 127
EDGE_BYTES = (0x00, 0xFF, 0x0F, 0xF0, 0xAA, 0x55, 0x80, 0x7F)


@pytest.mark.story("GT-030", "GT-042")
@pytest.mark.parametrize("qtype", list(FP16_FIELDS), ids=lambda t: t.name)
def test_block_formats_edge_values_bit_exact(qtype):
    # every combination of edge fp16 scales (each field) with every edge byte pattern for the rest
    _, ts = GGML_QUANT_SIZES[qtype]
    fields = FP16_FIELDS[qtype]
    combos = np.array(np.meshgrid(*([np.arange(len(EDGE_F16))] * len(fields)), np.arange(len(EDGE_BYTES)),
                                  indexing="ij")).reshape(len(fields) + 1, -1).T
    raw = np.empty((len(combos), ts), dtype=np.uint8)
    for i, c in enumerate(combos):
        raw[i] = EDGE_BYTES[c[-1]]
        for off, k in zip(fields, c[:-1]):
            raw[i, off:off + 2] = EDGE_F16[k:k + 1].view(np.uint8)
    ref = oracle(raw, qtype)
    assert np.isnan(ref).any() and np.isinf(ref).any() and (ref == 0).any()  # the edges are reached
    assert_bit_exact(dequantize(raw, qtype), ref)
    assert_bit_exact(dequantize(raw.reshape(-1), qtype), ref.reshape(-1))  # one long row


@pytest.mark.story("GT-006")
def test_reader_and_dequantizer_support_the_same_types():
    from gpt_engine.gguf_file import SUPPORTED_TYPES

    assert SUPPORTED_TYPES == frozenset(SUPPORTED)
    # every type people meet in Q4_K_M / Q5_K_M / Q8_0 / MXFP4 files
    assert {t.name for t in SUPPORTED} == {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                                           "Q4_K", "Q5_K", "Q6_K", "MXFP4"}


@pytest.mark.story("GT-030")
def test_odd_tensor_sizes_mxfp4():
    rng = np.random.default_rng(11)
    for shape in [(1, 1), (3, 7), (5, 1, 3), (17, 2)]:  # lead dims x blocks per row
        raw = rng.integers(0, 256, (*shape[:-1], shape[-1] * 17), dtype=np.uint8)
        raw[..., ::17] = rng.integers(100, 140, raw[..., ::17].shape)  # realistic scales
        out = dequantize(raw, QT.MXFP4)
        assert tuple(out.shape) == (*shape[:-1], shape[-1] * 32)
        assert_bit_exact(out, oracle(raw, QT.MXFP4))


@pytest.mark.story("GT-006")
@pytest.mark.parametrize("qtype", SUPPORTED, ids=lambda t: t.name)
def test_byte_sizes_from_block_table(qtype):
    # oracle: gguf-py's own shape conversion (quant_shape_to_byte_shape) on the same table
    bs, ts = GGML_QUANT_SIZES[qtype]
    for shape in [(bs,), (3, 4 * bs), (2, 5, 7 * bs)]:
        byte_shape = gguf.quants.quant_shape_to_byte_shape(shape, qtype)
        assert row_nbytes(shape[-1], qtype) == byte_shape[-1]
        assert tensor_nbytes(shape, qtype) == int(np.prod(byte_shape))
    # huge shapes: exact Python ints, no wraparound
    assert tensor_nbytes((2**40, 2**40, bs * 2**20), qtype) == 2**80 * 2**20 * ts
    if bs > 1:
        with pytest.raises(GGUFError, match=f"block size {bs}"):
            row_nbytes(bs + 1, qtype)
    with pytest.raises(GGUFError):
        tensor_nbytes((0, bs), qtype)


@pytest.mark.story("GT-006")
def test_unknown_and_unsupported_types_refused_by_name():
    raw = np.zeros((1, 34), dtype=np.uint8)
    with pytest.raises(GGUFError, match="Q3_K is not supported"):
        dequantize(raw, QT.Q3_K)
    with pytest.raises(GGUFError, match="unknown ggml type 'Q9_9'"):
        dequantize(raw, "Q9_9")
    with pytest.raises(GGUFError, match="unknown ggml type 123"):
        dequantize(raw, 123)
    with pytest.raises(GGUFError, match="not a whole number of Q8_0 blocks"):
        dequantize(np.zeros((1, 35), dtype=np.uint8), "Q8_0")
    with pytest.raises(GGUFError, match="uint8"):
        dequantize(np.zeros((1, 34), dtype=np.int8), "Q8_0")


@pytest.mark.story("GT-024", "GT-030")
@pytest.mark.parametrize("qtype", [QT.Q8_0, QT.MXFP4, QT.Q4_K, QT.F16])
def test_dequantize_rows_reads_selected_rows(qtype):
    rng = np.random.default_rng(5)
    table = random_blocks(rng, qtype, (50,), 2)
    ids = torch.tensor([[3, 0, 49], [3, 7, 7]])
    ref = oracle(table, qtype)[ids.numpy()]
    assert_bit_exact(dequantize_rows(table, qtype, ids), ref)
    with pytest.raises(GGUFError, match="out of range"):
        dequantize_rows(table, qtype, torch.tensor([50]))


@pytest.mark.story("GT-006", "GT-030")
def test_dequantize_tensor_from_file(tmp_path):
    rng = np.random.default_rng(9)
    p = tmp_path / "t.gguf"
    w = gguf.GGUFWriter(str(p), "llama")
    made = {}
    for name, shape, qt in [("a", (3, 64), QT.MXFP4), ("b", (2, 2, 32), QT.Q8_0), ("c", (5,), QT.F32), ("d", (2, 256), QT.Q6_K)]:
        bs, ts = GGML_QUANT_SIZES[qt]
        byte_shape = (*shape[:-1], shape[-1] // bs * ts)
        raw = rng.integers(0, 256, byte_shape, dtype=np.uint8)
        if qt == QT.MXFP4:
            raw[..., ::17] = 127
        w.add_tensor(name, raw, raw_shape=byte_shape, raw_dtype=qt)
        made[name] = (shape, qt, raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with GGUFFile(p) as f:
        for name, (shape, qt, raw) in made.items():
            out = dequantize_tensor(f, name)
            assert tuple(out.shape) == shape
            assert_bit_exact(out, oracle(raw, qt).reshape(shape))
        c = dequantize_tensor(f, "c")
        c += 1  # a fresh tensor: the file's bytes are untouched
        assert_bit_exact(dequantize_tensor(f, "c"), oracle(made["c"][2], QT.F32))
        assert dequantize_tensor(f, "a", dtype=torch.float16).dtype == torch.float16


@pytest.mark.story("GT-006", "GT-030")
def test_read_only_input_is_read_in_place_without_warnings():
    # a read-only map (the reader's fallback) must be dequantized without copying or warning
    import warnings

    raw = random_blocks(np.random.default_rng(13), QT.F32, (4,), 8)
    raw.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = dequantize(raw, QT.F32)
        q = random_blocks(np.random.default_rng(14), QT.MXFP4, (2,), 3)
        q.flags.writeable = False
        assert_bit_exact(dequantize(q, QT.MXFP4), oracle(q, QT.MXFP4))
    assert out.data_ptr() == raw.__array_interface__["data"][0]  # F32: a view, as gguf-py's
    assert_bit_exact(out, oracle(raw, QT.F32))
